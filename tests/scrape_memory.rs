//! What the scraper holds of the bodies it reads, measured as the growth of this process's
//! peak resident memory (`VmHWM`) while it scrapes 16 fat endpoints at once: 8 whose token
//! counter runs on for 15 MiB without a newline, and 8 that serve 15 MiB of comment lines
//! before a good counter. A scraper that buffered bodies would hold 16 times 15 MiB; one that
//! parses as the body streams holds a line at most per scrape. Alone in its file, so that no
//! other test's memory counts; no cluster needed.

use std::{net::SocketAddr, time::Duration};

use tokenbudget::{
    api::{MetricsFormat, TokenType},
    usage::{
        Extractor,
        scrape::{Scraper, Target},
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const FAT_MIB: usize = 15;
const START: &str = "gen_ai_client_inference_usage_output_tokens_total{gen_ai_request_model=\"m\"} 7\n";
const COUNTER: &str = "gen_ai_client_inference_usage_input_tokens_total{gen_ai_request_model=\"m\"} 42\n";
static RUN_ON: [u8; 64 * 1024] = [b'x'; 64 * 1024];
static COMMENTS: &[u8; 64] = b"# padding padding padding padding padding padding padding paddi\n";

/// An endpoint on loopback answering each request with `FAT_MIB` MiB: a counter whose value
/// runs on (`fine` false), or comment lines and then a good counter (`fine` true).
async fn fat_endpoint(fine: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream, fine));
        }
    });
    address
}

async fn answer(mut stream: TcpStream, fine: bool) {
    let mut request = [0u8; 4096];
    let _ = stream.read(&mut request).await;
    let (opening, closing) = match fine {
        true => (START.to_string(), COUNTER),
        false => (format!("{START}{}", COUNTER.trim_end().trim_end_matches("42")), ""),
    };
    let length = opening.len() + (FAT_MIB << 20) + closing.len();
    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n{opening}");
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let comments = COMMENTS.repeat(1024);
    let piece: &[u8] = if fine { &comments } else { &RUN_ON };
    for _ in 0..FAT_MIB * 16 {
        if stream.write_all(piece).await.is_err() {
            return;
        }
    }
    let _ = stream.write_all(closing.as_bytes()).await;
}

/// This process's peak resident memory so far, in MiB.
fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kb / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_fat_bodies_at_once_are_never_held() {
    let endpoints = [fat_endpoint(false).await, fat_endpoint(true).await];
    let target = |address: SocketAddr| {
        Target::http(
            &address.ip().to_string(),
            address.port(),
            "/metrics",
            Duration::from_secs(30),
        )
    };
    let scraper = Scraper::new(64, 16 * 1024 * 1024);
    let extractor = Extractor::new(MetricsFormat::OpenTelemetry, &[]);
    // One of each first, so that what every scrape sets up once is in the baseline.
    for address in endpoints {
        let _ = scraper.scrape(&target(address), &extractor).await;
    }
    let before = peak_mib();
    let targets: Vec<Target> = (0..16).map(|i| target(endpoints[i % 2])).collect();
    let results = futures::future::join_all(targets.iter().map(|t| scraper.scrape(t, &extractor))).await;
    let grown = peak_mib() - before;
    println!("peak RSS {before:.1} MiB before the 16 fat scrapes, grown by {grown:.1} MiB during them");

    for (i, result) in results.iter().enumerate() {
        match i % 2 {
            0 => {
                let reason = result.as_ref().unwrap_err().to_string();
                assert!(reason.len() < 200, "a reason of {} bytes", reason.len());
            }
            _ => assert_eq!(
                result.as_ref().unwrap().get("m", TokenType::Input),
                Some(42),
                "scrape {i}"
            ),
        }
    }
    // A scraper that held the bodies would grow by 16 x 15 MiB.
    assert!(grown < 32.0, "peak RSS grew by {grown:.1} MiB while scraping");
}
