//! Agent endpoints for the benches: thousands of them on loopback addresses, each serving the
//! same ~35 KB exposition of ~210 samples (the OpenTelemetry GenAI token histogram of 2 models,
//! HTTP server duration histograms, process and runtime metrics), as the Python OpenTelemetry
//! SDK's Prometheus exporter writes it. Used by `scrape_cycle` (a server process of its own)
//! and `scale` (a thread of the bench, with spending endpoints).
#![allow(dead_code)]

use std::{
    convert::Infallible,
    fmt::Write as _,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{Response, body::Bytes, header, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokenbudget::{
    api::MetricsFormat,
    usage::{Extractor, Usage},
};
use tokio::net::TcpListener;

/// The port of every endpoint.
pub const PORT: u16 = 9464;

/// Endpoint `i`: 127.42.0.1 ..= 127.42.0.250, 127.42.1.1, ...
pub fn address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 42, (i / 250) as u8, (i % 250 + 1) as u8)
}

// ---------------------------------------------------------------------------------------------
// The exposition
// ---------------------------------------------------------------------------------------------

/// OpenTelemetry's default explicit buckets for `gen_ai.client.token.usage`.
const TOKEN_BUCKETS: [&str; 14] = [
    "1.0",
    "4.0",
    "16.0",
    "64.0",
    "256.0",
    "1024.0",
    "4096.0",
    "16384.0",
    "65536.0",
    "262144.0",
    "1048576.0",
    "4194304.0",
    "16777216.0",
    "67108864.0",
];

/// OpenTelemetry's default buckets for `http.server.request.duration`.
const HTTP_BUCKETS: [&str; 14] = [
    "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1.0", "2.5", "5.0", "7.5", "10.0",
];

/// (model, input tokens, output tokens, calls): what every endpoint reports.
const MODELS: [(&str, u64, u64, u64); 2] = [
    ("gpt-4o-mini", 18_342_217, 4_021_186, 9_412),
    ("gpt-4o", 2_912_334, 650_021, 1_377),
];

/// Cumulative bucket counts for `count` observations over `buckets` bounds: a smooth ramp that
/// reaches `count` at the last bound, deterministic.
fn ramp(count: u64, i: usize, buckets: usize) -> u64 {
    let x = (i + 1) as u64;
    count * x * x / (buckets as u64 * buckets as u64)
}

/// The body every endpoint serves, as the Python OpenTelemetry SDK's Prometheus exporter
/// (with the openai-v2 instrumentation and a typical HTTP server) writes it, and the usage the
/// operator must read from it.
pub fn exposition() -> (String, Usage) {
    let mut out = String::with_capacity(40 * 1024);
    let w = &mut out;
    let _ = writeln!(
        w,
        "# HELP target_info Target metadata\n# TYPE target_info gauge\n\
         target_info{{service_name=\"support-agent\",service_namespace=\"agents\",service_version=\"1.8.3\",\
         telemetry_sdk_language=\"python\",telemetry_sdk_name=\"opentelemetry\",telemetry_sdk_version=\"1.27.0\",\
         k8s_pod_name=\"support-agent-7c9f8d6b5-x2x7q\",k8s_namespace_name=\"agents\"}} 1.0"
    );

    // The token histogram: 2 models x input/output, 14 buckets + +Inf, _count, _sum = 68 samples.
    let _ = writeln!(
        w,
        "# HELP gen_ai_client_token_usage Measures number of input and output tokens used\n\
         # TYPE gen_ai_client_token_usage histogram"
    );
    let mut expected_body = String::new();
    for (model, input, output, calls) in MODELS {
        for (token_type, sum) in [("input", input), ("output", output)] {
            let labels = format!(
                "gen_ai_operation_name=\"chat\",gen_ai_request_model=\"{model}\",\
                 gen_ai_response_model=\"{model}-2024-08-06\",gen_ai_system=\"openai\",\
                 gen_ai_token_type=\"{token_type}\""
            );
            for (i, le) in TOKEN_BUCKETS.iter().enumerate() {
                let c = ramp(calls, i, TOKEN_BUCKETS.len());
                let _ = writeln!(w, "gen_ai_client_token_usage_bucket{{{labels},le=\"{le}\"}} {c}");
            }
            let _ = writeln!(w, "gen_ai_client_token_usage_bucket{{{labels},le=\"+Inf\"}} {calls}");
            let _ = writeln!(w, "gen_ai_client_token_usage_count{{{labels}}} {calls}");
            let _ = writeln!(w, "gen_ai_client_token_usage_sum{{{labels}}} {sum}.0");
            let _ = writeln!(
                expected_body,
                "gen_ai_client_token_usage_sum{{gen_ai_request_model=\"{model}\",gen_ai_token_type=\"{token_type}\"}} {sum}"
            );
        }
    }

    // HTTP server: request duration for 7 (method, route, status) series, 17 samples each.
    let _ = writeln!(
        w,
        "# HELP http_server_request_duration_seconds Duration of HTTP server requests.\n\
         # TYPE http_server_request_duration_seconds histogram"
    );
    let series = [
        ("POST", "/v1/tasks", "201", 10_789u64),
        ("GET", "/v1/tasks/{id}", "200", 48_112),
        ("GET", "/v1/tasks/{id}", "404", 213),
        ("POST", "/v1/tasks/{id}/cancel", "200", 388),
        ("GET", "/v1/tasks/{id}/events", "200", 9_950),
        ("GET", "/healthz", "200", 33_020),
        ("POST", "/v1/tasks", "500", 17),
    ];
    for (n, (method, route, status, count)) in series.into_iter().enumerate() {
        let labels = format!(
            "http_request_method=\"{method}\",http_response_status_code=\"{status}\",http_route=\"{route}\",url_scheme=\"http\""
        );
        for (i, le) in HTTP_BUCKETS.iter().enumerate() {
            let c = ramp(count, i, HTTP_BUCKETS.len());
            let _ = writeln!(
                w,
                "http_server_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {c}"
            );
        }
        let _ = writeln!(
            w,
            "http_server_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(w, "http_server_request_duration_seconds_count{{{labels}}} {count}");
        let _ = writeln!(
            w,
            "http_server_request_duration_seconds_sum{{{labels}}} {}.{:03}",
            count / 7 + n as u64,
            (count * 37) % 1000
        );
    }
    let _ = writeln!(
        w,
        "# HELP http_server_active_requests Number of active HTTP server requests.\n\
         # TYPE http_server_active_requests gauge\n\
         http_server_active_requests{{http_request_method=\"GET\",url_scheme=\"http\"}} 3.0\n\
         http_server_active_requests{{http_request_method=\"POST\",url_scheme=\"http\"}} 1.0\n\
         http_server_active_requests{{http_request_method=\"PUT\",url_scheme=\"http\"}} 0.0\n\
         http_server_active_requests{{http_request_method=\"DELETE\",url_scheme=\"http\"}} 0.0"
    );

    // Process and runtime metrics, as prometheus_client's default collectors write them.
    let _ = writeln!(
        w,
        "# HELP python_gc_objects_collected_total Objects collected during gc\n\
         # TYPE python_gc_objects_collected_total counter\n\
         python_gc_objects_collected_total{{generation=\"0\"}} 48213.0\n\
         python_gc_objects_collected_total{{generation=\"1\"}} 9127.0\n\
         python_gc_objects_collected_total{{generation=\"2\"}} 611.0\n\
         # HELP python_gc_objects_uncollectable_total Uncollectable objects found during GC\n\
         # TYPE python_gc_objects_uncollectable_total counter\n\
         python_gc_objects_uncollectable_total{{generation=\"0\"}} 0.0\n\
         python_gc_objects_uncollectable_total{{generation=\"1\"}} 0.0\n\
         python_gc_objects_uncollectable_total{{generation=\"2\"}} 0.0\n\
         # HELP python_gc_collections_total Number of times this generation was collected\n\
         # TYPE python_gc_collections_total counter\n\
         python_gc_collections_total{{generation=\"0\"}} 2210.0\n\
         python_gc_collections_total{{generation=\"1\"}} 200.0\n\
         python_gc_collections_total{{generation=\"2\"}} 18.0\n\
         # HELP python_info Python platform information\n\
         # TYPE python_info gauge\n\
         python_info{{implementation=\"CPython\",major=\"3\",minor=\"12\",patchlevel=\"7\",version=\"3.12.7\"}} 1.0\n\
         # HELP process_virtual_memory_bytes Virtual memory size in bytes.\n\
         # TYPE process_virtual_memory_bytes gauge\n\
         process_virtual_memory_bytes 1.207975936e+09\n\
         # HELP process_resident_memory_bytes Resident memory size in bytes.\n\
         # TYPE process_resident_memory_bytes gauge\n\
         process_resident_memory_bytes 2.01801728e+08\n\
         # HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n\
         # TYPE process_start_time_seconds gauge\n\
         process_start_time_seconds 1.72611854171e+09\n\
         # HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
         # TYPE process_cpu_seconds_total counter\n\
         process_cpu_seconds_total 1843.27\n\
         # HELP process_open_fds Number of open file descriptors.\n\
         # TYPE process_open_fds gauge\n\
         process_open_fds 41.0\n\
         # HELP process_max_fds Maximum number of open file descriptors.\n\
         # TYPE process_max_fds gauge\n\
         process_max_fds 1.048576e+06"
    );

    let usage = Extractor::new(MetricsFormat::OpenTelemetry, &[])
        .extract(expected_body.as_bytes())
        .expect("the expected usage parses");
    (out, usage)
}

/// Samples (non-comment, non-blank lines) of an exposition.
pub fn sample_count(body: &str) -> usize {
    body.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count()
}

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// Exits this process once stdin is closed, i.e. when the coordinator is gone.
pub fn exit_with_parent() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
}

pub fn serve(endpoints: usize) {
    exit_with_parent();
    // One worker: the server needs little CPU, and every core it does not take is the
    // measured process's.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let body = Bytes::from(exposition().0);
        let mut listeners = Vec::with_capacity(endpoints);
        for i in 0..endpoints {
            let at = SocketAddr::from((address(i), PORT));
            match TcpListener::bind(at).await {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    eprintln!("scrape_cycle server: cannot listen on {at}: {e} (another run of this bench?)");
                    std::process::exit(1);
                }
            }
        }
        for listener in listeners {
            tokio::spawn(accept(listener, body.clone(), |_| Some(None)));
        }
        println!("ready");
        let _ = std::io::stdout().flush();
        std::future::pending::<()>().await;
    });
}

/// Endpoints whose token counters grow while `on`: each answer then adds `step` input tokens
/// of the model `bench-spend` to its endpoint's counter, a sample appended to the exposition
/// (and kept, unchanged, once `on` is off).
#[derive(Default)]
pub struct Spending {
    pub on: AtomicBool,
    pub step: u64,
}

/// An endpoint's own counter of [`Spending`].
struct Spender {
    spending: Arc<Spending>,
    spent: AtomicU64,
}

impl Spender {
    /// The body of one answer: the exposition, and the spent tokens once there are any.
    fn body(&self, exposition: &Bytes) -> Bytes {
        let spent = if self.spending.on.load(Ordering::Relaxed) {
            self.spent.fetch_add(self.spending.step, Ordering::Relaxed) + self.spending.step
        } else {
            self.spent.load(Ordering::Relaxed)
        };
        if spent == 0 {
            return exposition.clone();
        }
        let mut body = Vec::with_capacity(exposition.len() + 128);
        body.extend_from_slice(exposition);
        let _ = writeln!(
            body,
            "gen_ai_client_token_usage_sum{{gen_ai_request_model=\"bench-spend\",gen_ai_token_type=\"input\"}} {spent}.0"
        );
        Bytes::from(body)
    }
}

/// Serves `endpoints` endpoints (`address(i)`, `port`) on the current tokio runtime, spending
/// as `spending` says; returns once they listen. One socket, on every address, serves them
/// all, each connection as the endpoint it was made to: a listener per endpoint would take
/// 10,000 of the process's open files besides the 10,000 connections.
pub async fn listen(endpoints: usize, port: u16, spending: Arc<Spending>) -> std::io::Result<()> {
    assert!(
        (0..endpoints).all(|i| index(address(i)) == Some(i)),
        "index inverts address"
    );
    let body = Bytes::from(exposition().0);
    let spenders: Arc<Vec<Arc<Spender>>> = Arc::new(
        (0..endpoints)
            .map(|_| {
                Arc::new(Spender {
                    spending: spending.clone(),
                    spent: AtomicU64::new(0),
                })
            })
            .collect(),
    );
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).await?;
    // The endpoint is the address the connection was made to; any other is refused.
    tokio::spawn(accept(listener, body, move |stream| {
        match stream.local_addr().ok()?.ip() {
            std::net::IpAddr::V4(ip) => index(ip).and_then(|i| spenders.get(i).cloned()).map(Some),
            _ => None,
        }
    }));
    Ok(())
}

/// The `i` of `address(i)`.
fn index(ip: Ipv4Addr) -> Option<usize> {
    let [a, b, c, d] = ip.octets();
    ((a, b) == (127, 42) && (1..=250).contains(&d)).then(|| c as usize * 250 + d as usize - 1)
}

/// Serves each connection `listener` accepts as `endpoint` says: `None` refuses it, `Some`
/// serves it, spending with the spender it holds, if any.
async fn accept(
    listener: TcpListener,
    body: Bytes,
    endpoint: impl Fn(&tokio::net::TcpStream) -> Option<Option<Arc<Spender>>> + Send + 'static,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("agents: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Some(spender) = endpoint(&stream) {
            tokio::spawn(serve_connection(stream, body.clone(), spender));
        }
    }
}

/// Answers every request of one connection with `body`, and spends if `spender` says so.
async fn serve_connection(stream: tokio::net::TcpStream, body: Bytes, spender: Option<Arc<Spender>>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |_request| {
        let body = match &spender {
            Some(spender) => spender.body(&body),
            None => body.clone(),
        };
        let response = Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(body))
            .expect("a valid response");
        async move { Ok::<_, Infallible>(response) }
    });
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
