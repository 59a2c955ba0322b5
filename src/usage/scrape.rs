//! Scraping one pod's metrics endpoint: one shared HTTP client with keep-alive, a global cap on
//! concurrent scrapes, a deadline on the whole exchange (so an endpoint that accepts and never
//! answers, or trickles a byte a second, fails at its timeout), and a cap on the body size.

use std::{sync::Arc, time::Duration};

use http_body_util::{BodyExt, Empty};
use hyper::{
    Request, StatusCode, Uri,
    body::{Body, Bytes},
    header,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::sync::Semaphore;

use super::parse::{Extractor, ParseError, Usage};

/// The default cap on a metrics body: above it the scrape fails, the operator stays up.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The default cap on scrapes in flight at once, over all pods.
pub const DEFAULT_MAX_CONCURRENT: usize = 64;

/// Why one scrape failed. Each is reported on the binding (ScrapeHealthy) and in an Event
/// naming the pod; none of them touches the usage already counted.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("invalid target {0}")]
    Target(String),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("HTTP status {0}")]
    Status(StatusCode),
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the body failed: {0}")]
    Body(String),
    #[error("unparsable metrics: {0}")]
    Parse(#[from] ParseError),
}

impl ScrapeError {
    /// A short, stable label for metrics and condition reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            ScrapeError::Target(_) => "target",
            ScrapeError::Connect(_) => "connect",
            ScrapeError::Timeout(_) => "timeout",
            ScrapeError::Status(_) => "status",
            ScrapeError::TooLarge { .. } => "too_large",
            ScrapeError::Body(_) => "body",
            ScrapeError::Parse(_) => "parse",
        }
    }
}

/// Where and how to scrape one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `http://IP:PORT/path`.
    pub url: String,
    /// The deadline for the whole exchange: connect, headers and body.
    pub timeout: Duration,
}

impl Target {
    /// The URL of a pod's endpoint; IPv6 addresses are bracketed.
    pub fn http(ip: &str, port: u16, path: &str, timeout: Duration) -> Self {
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        Self {
            url: format!("http://{host}:{port}{path}"),
            timeout,
        }
    }
}

/// The shared scraper. Cheap to clone.
#[derive(Clone)]
pub struct Scraper {
    client: Client<HttpConnector, Empty<Bytes>>,
    in_flight: Arc<Semaphore>,
    max_body_bytes: usize,
}

impl Default for Scraper {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_BODY_BYTES)
    }
}

impl Scraper {
    pub fn new(max_concurrent: usize, max_body_bytes: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        // Each kept-alive connection keeps its read buffer, which hyper doubles whenever a read
        // fills it: 1,000 idle connections grew to ~100 MiB (benches/scrape_cycle.rs). 16 KiB
        // keeps them at ~45 MiB for a few percent more CPU per cycle; headers of a metrics
        // endpoint fit in it easily.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(2)
            .http1_max_buf_size(16 * 1024)
            .build(connector);
        Self {
            client,
            in_flight: Arc::new(Semaphore::new(max_concurrent.max(1))),
            max_body_bytes,
        }
    }

    /// Fetches the body of `target`, within its deadline and the size cap.
    pub async fn fetch(&self, target: &Target) -> Result<Bytes, ScrapeError> {
        let uri: Uri = target
            .url
            .parse()
            .map_err(|e| ScrapeError::Target(format!("{}: {e}", target.url)))?;
        let _permit = self.in_flight.acquire().await.expect("the semaphore is never closed");
        tokio::time::timeout(target.timeout, self.exchange(uri))
            .await
            .map_err(|_| ScrapeError::Timeout(target.timeout))?
    }

    /// Fetches and extracts the token usage of `target`.
    pub async fn scrape(&self, target: &Target, extractor: &Extractor) -> Result<Usage, ScrapeError> {
        let body = self.fetch(target).await?;
        Ok(extractor.extract(&body)?)
    }

    async fn exchange(&self, uri: Uri) -> Result<Bytes, ScrapeError> {
        let request = Request::get(uri)
            .header(
                header::ACCEPT,
                "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=1",
            )
            .header(
                header::USER_AGENT,
                concat!("tokenbudget-operator/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| ScrapeError::Target(e.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| ScrapeError::Connect(error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(ScrapeError::Status(response.status()));
        }
        let limit = self.max_body_bytes;
        let mut body = response.into_body();
        if body.size_hint().lower() > limit as u64 {
            return Err(ScrapeError::TooLarge { limit });
        }
        let mut buffer = Vec::with_capacity(body.size_hint().exact().map_or(64 * 1024, |n| n as usize));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ScrapeError::Body(error_chain(&e)))?;
            if let Ok(data) = frame.into_data() {
                if buffer.len() + data.len() > limit {
                    return Err(ScrapeError::TooLarge { limit });
                }
                buffer.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(buffer))
    }
}

/// An error with its sources, which is where hyper keeps the useful part ("connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MetricsFormat, TokenType};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    /// A one-connection-at-a-time HTTP server on loopback that answers every request with
    /// what `respond` writes. Returns its address.
    async fn serve<F, Fut>(respond: F) -> std::net::SocketAddr
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let respond = Arc::new(respond);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let respond = respond.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = stream.read(&mut request).await;
                    respond(stream).await;
                });
            }
        });
        address
    }

    fn target(address: std::net::SocketAddr, timeout_ms: u64) -> Target {
        Target::http(
            &address.ip().to_string(),
            address.port(),
            "/metrics",
            Duration::from_millis(timeout_ms),
        )
    }

    fn otel() -> Extractor {
        Extractor::new(MetricsFormat::OpenTelemetry, &[])
    }

    async fn respond_with(mut stream: tokio::net::TcpStream, body: &'static str) {
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body.as_bytes()).await;
    }

    #[tokio::test]
    async fn scrapes_a_real_exposition() {
        let address = serve(|s| {
            respond_with(
                s,
                "# TYPE gen_ai_client_token_usage histogram\n\
             gen_ai_client_token_usage_sum{gen_ai_token_type=\"input\",gen_ai_request_model=\"m\"} 120\n\
             gen_ai_client_token_usage_sum{gen_ai_token_type=\"output\",gen_ai_request_model=\"m\"} 30\n",
            )
        })
        .await;
        let usage = Scraper::default()
            .scrape(&target(address, 2000), &otel())
            .await
            .unwrap();
        assert_eq!(usage.get("m", TokenType::Input), Some(120));
        assert_eq!(usage.get("m", TokenType::Output), Some(30));
    }

    #[tokio::test]
    async fn an_endpoint_that_never_answers_times_out() {
        let address = serve(|stream| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(stream);
        })
        .await;
        let err = Scraper::default().fetch(&target(address, 300)).await.unwrap_err();
        assert!(matches!(err, ScrapeError::Timeout(_)), "{err}");
    }

    #[tokio::test]
    async fn a_trickling_endpoint_times_out_on_the_whole_exchange() {
        let address = serve(|mut stream| async move {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                .await;
            for _ in 0..1000 {
                if stream.write_all(b"#").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let err = Scraper::default().fetch(&target(address, 400)).await.unwrap_err();
        assert!(matches!(err, ScrapeError::Timeout(_)), "{err}");
    }

    #[tokio::test]
    async fn bodies_over_the_cap_fail_whether_announced_or_not() {
        let announced = serve(|mut stream| async move {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 104857600\r\n\r\n")
                .await;
            let _ = stream.write_all(&[b'#'; 64 * 1024]).await;
        })
        .await;
        let scraper = Scraper::new(4, 1024 * 1024);
        let err = scraper.fetch(&target(announced, 2000)).await.unwrap_err();
        assert!(matches!(err, ScrapeError::TooLarge { limit: 1048576 }), "{err}");

        // Chunked, no length: the cap applies while reading, without buffering 100 MiB.
        let chunked = serve(|mut stream| async move {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            let chunk = [b'#'; 65536];
            for _ in 0..1600 {
                let head = format!("{:x}\r\n", chunk.len());
                if stream.write_all(head.as_bytes()).await.is_err()
                    || stream.write_all(&chunk).await.is_err()
                    || stream.write_all(b"\r\n").await.is_err()
                {
                    return;
                }
            }
            let _ = stream.write_all(b"0\r\n\r\n").await;
        })
        .await;
        let err = scraper.fetch(&target(chunked, 5000)).await.unwrap_err();
        assert!(matches!(err, ScrapeError::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn garbage_and_errors_are_reported_not_counted() {
        let garbage = serve(|s| respond_with(s, "\u{1}\u{2}garbage{{{\n")).await;
        let err = Scraper::default()
            .scrape(&target(garbage, 2000), &otel())
            .await
            .unwrap_err();
        assert!(matches!(err, ScrapeError::Parse(_)), "{err}");

        let status = serve(|mut stream| async move {
            let _ = stream
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await;
        })
        .await;
        let err = Scraper::default().fetch(&target(status, 2000)).await.unwrap_err();
        assert_eq!(err.kind(), "status");

        // Nothing listens on this port.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let err = Scraper::default().fetch(&target(closed, 2000)).await.unwrap_err();
        assert!(matches!(err, ScrapeError::Connect(_)), "{err}");
        assert!(err.to_string().contains("refused"), "{err}");
    }

    #[tokio::test]
    async fn concurrency_is_capped() {
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (i, p) = (in_flight.clone(), peak.clone());
        let address = serve(move |stream| {
            let (i, p) = (i.clone(), p.clone());
            async move {
                let now = i.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                p.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                i.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                respond_with(stream, "").await;
            }
        })
        .await;
        let scraper = Scraper::new(3, 1024);
        let scrapes = (0..12).map(|_| {
            let scraper = scraper.clone();
            async move { scraper.fetch(&target(address, 5000)).await }
        });
        for result in futures::future::join_all(scrapes).await {
            result.unwrap();
        }
        assert!(
            peak.load(std::sync::atomic::Ordering::SeqCst) <= 3,
            "more than 3 scrapes at once"
        );
    }

    #[test]
    fn ipv6_targets_are_bracketed() {
        assert_eq!(
            Target::http("fd00::1", 9464, "/metrics", Duration::ZERO).url,
            "http://[fd00::1]:9464/metrics"
        );
    }
}
