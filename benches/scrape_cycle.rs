//! One accounting cycle of the operator, end to end over loopback TCP: 1,000 agent endpoints,
//! each serving the same ~35 KB exposition of ~210 samples (the OpenTelemetry GenAI token
//! histogram of 2 models, HTTP server duration histograms, process and runtime metrics). A
//! measured cycle is the operator's own code, as a budget's reconcile runs it: the plan
//! (`usage::cycle::plan`, resolving a binding over a snapshot of 1,000 pods of one Deployment),
//! the scrapes (`controller::scrapes::scrape`: every target at once, the scraper's semaphore
//! capping concurrency, each scrape timed in the operator's metrics) and the fold into the
//! budget's account (`usage::cycle::fold`).
//!
//! Three kinds of process, all this binary:
//!
//! - the coordinator (no mode flag, what `cargo bench` runs) starts the server, then one fresh
//!   measuring process per concurrency value, one after the other, and prints the table;
//! - `--serve`: the 1,000 endpoints, 127.42.x.y:9464 (Linux routes all of 127/8 to `lo`), on a
//!   multi-threaded tokio runtime with **one** worker, so that it takes as little as possible
//!   of the CPU the measured process runs on; HTTP/1.1 keep-alive, a pre-rendered `Bytes` body;
//! - `--measure C`: builds `Scraper::new(C, 16 MiB)`, all C slots for the pods' one namespace,
//!   on a default multi-threaded runtime (one worker per CPU, as `#[tokio::main]` in the
//!   operator), waits until every endpoint answers
//!   (that first cycle opens the connections and is reported as "cold"), runs warm-up cycles,
//!   then the measured ones; every result must be the expected usage or the bench panics.
//!   Its own CPU time (utime + stime of `/proc/self/stat`) and peak RSS (`VmHWM` of
//!   `/proc/self/status`) are therefore the scraper's alone, without the server's, and a fresh
//!   process per concurrency value keeps one run's peak out of the next.
//!
//! After the measured cycles the measuring process also times fetching alone (`Scraper::fetch`,
//! same cycles without parsing) and parsing alone (the extractor over 1,000 bodies, one
//! thread), to show where the CPU of a cycle goes.
//!
//! The children read their stdin until EOF and exit then, so they cannot outlive the
//! coordinator however it ends; the coordinator also kills them from a drop guard (panics).
//!
//! Run: `cargo bench --bench scrape_cycle`
//! Options: `cargo bench --bench scrape_cycle -- --endpoints 1000 --warmup 2 --cycles 10 --concurrency 64,256`;
//! `--dump` prints the exposition and exits.

use std::{
    convert::Infallible,
    fmt::Write as _,
    io::{BufRead, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{Response, body::Bytes, header, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::Pod,
};
use tokenbudget::{
    api::{BudgetBindingSpec, MetricsFormat},
    controller::scrapes,
    metrics::Metrics,
    usage::{
        Extractor, Usage,
        account::Account,
        cycle::{self, Binding, Times},
        scrape::{ScrapeError, Scraper, Target},
    },
    validate::{self, ValidBinding},
    workloads::Snapshot,
};
use tokio::net::TcpListener;

const PORT: u16 = 9464;
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(5);

/// The goals for one cycle over 1,000 endpoints.
const GOAL_WALL_S: f64 = 1.0;
const GOAL_CPU_S: f64 = 0.15;
const GOAL_RSS_MIB: f64 = 64.0;

/// The columns of the table, one row per concurrency value (printed by the measuring process).
const TABLE_HEADER: &str = "concurrency cold ms  min ms  med ms  max ms CPU-s med user/sys mean peak MiB   goals met";

struct Options {
    endpoints: usize,
    warmup: usize,
    cycles: usize,
    concurrency: Vec<usize>,
}

enum Mode {
    Coordinate,
    Serve,
    Measure(usize),
    Dump,
}

fn parse_args() -> (Mode, Options) {
    let mut mode = Mode::Coordinate;
    let mut options = Options {
        endpoints: 1000,
        warmup: 2,
        cycles: 10,
        concurrency: vec![64, 256],
    };
    let mut args = std::env::args().skip(1);
    let number = |flag: &str, value: Option<String>| -> usize {
        value
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("{flag} needs a positive number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // `cargo bench` passes `--bench` to every bench binary.
            "--bench" => {}
            "--serve" => mode = Mode::Serve,
            "--dump" => mode = Mode::Dump,
            "--measure" => mode = Mode::Measure(number("--measure", args.next())),
            "--endpoints" => options.endpoints = number("--endpoints", args.next()),
            "--warmup" => {
                options.warmup = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--warmup needs a number")
            }
            "--cycles" => options.cycles = number("--cycles", args.next()),
            "--concurrency" => {
                let list = args.next().unwrap_or_default();
                options.concurrency = list
                    .split(',')
                    .map(|c| number("--concurrency", Some(c.to_owned())))
                    .collect();
            }
            other => {
                panic!("unknown argument {other:?}; options: --endpoints N --warmup N --cycles N --concurrency A,B")
            }
        }
    }
    assert!(options.endpoints <= 250 * 256, "at most {} endpoints", 250 * 256);
    (mode, options)
}

fn main() {
    let (mode, options) = parse_args();
    match mode {
        Mode::Coordinate => coordinate(&options),
        Mode::Serve => serve(options.endpoints),
        Mode::Measure(concurrency) => measure(&options, concurrency),
        Mode::Dump => print!("{}", exposition().0),
    }
}

/// Endpoint `i`: 127.42.0.1 ..= 127.42.0.250, 127.42.1.1, ...
fn address(i: usize) -> Ipv4Addr {
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
fn exposition() -> (String, Usage) {
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
fn sample_count(body: &str) -> usize {
    body.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count()
}

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// Exits this process once stdin is closed, i.e. when the coordinator is gone.
fn exit_with_parent() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
}

fn serve(endpoints: usize) {
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
            tokio::spawn(accept(listener, body.clone()));
        }
        println!("ready");
        let _ = std::io::stdout().flush();
        std::future::pending::<()>().await;
    });
}

async fn accept(listener: TcpListener, body: Bytes) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("scrape_cycle server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_request| {
                let response = Response::builder()
                    .header(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
                    .body(Full::new(body.clone()))
                    .expect("a valid response");
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The measuring process
// ---------------------------------------------------------------------------------------------

/// Clock ticks per second of `/proc/self/stat` (`getconf CLK_TCK`, 100 on Linux).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// (user, system) CPU time of this process so far, in clock ticks.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The command name (field 2) is in parentheses and may hold spaces: count after its end.
    let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 of the whole line are utime and stime; `rest` starts at field 3.
    let field = |n: usize| fields[n - 3].parse::<u64>().expect("a tick count");
    (field(14), field(15))
}

/// A `kB` line of `/proc/self/status` (VmRSS, VmHWM), in MiB.
fn status_mib(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/self/status"));
    kib / 1024.0
}

/// The targets whose result is an error or fails `ok`: (url, what went wrong).
fn wrong<'a, T>(
    targets: &'a [Target],
    results: &[Result<T, ScrapeError>],
    ok: impl Fn(&T) -> bool,
) -> Vec<(&'a str, String)> {
    targets
        .iter()
        .zip(results)
        .filter_map(|(t, r)| match r {
            Ok(v) if ok(v) => None,
            Ok(_) => Some((t.url.as_str(), "unexpected result".to_owned())),
            Err(e) => Some((t.url.as_str(), e.to_string())),
        })
        .collect()
}

fn fail(what: &str, wrong: &[(impl std::fmt::Display, String)]) -> ! {
    panic!(
        "{what}: {} of the targets failed, first: {} {}",
        wrong.len(),
        wrong[0].0,
        wrong[0].1
    );
}

struct Cycle {
    wall: Duration,
    user: u64,
    system: u64,
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn measure(options: &Options, concurrency: usize) {
    exit_with_parent();
    let ticks = clock_ticks();
    let (body_len, expected) = {
        let (body, usage) = exposition();
        (body.len(), usage)
    };
    // As the operator's `#[tokio::main]`: one worker per CPU.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let cluster = Cluster::new(options.endpoints);
        let rss_before = status_mib("VmRSS");
        // Every pod is in one namespace: its share is every slot, so that `concurrency` scrapes
        // are in flight (the operator's default share is a quarter).
        let scraper = Scraper::new(concurrency, MAX_BODY_BYTES).with_share(concurrency);
        let metrics = Metrics::new();
        let mut account = Account::open("bench", None);
        account.begin_period(cluster.now);
        let is_expected = |u: &Usage| *u == expected;
        let targets: Vec<Target> = cycle::plan(
            &cluster.bindings(),
            &cluster.snapshot,
            account.ledger().bound(),
            cluster.times(),
        )
        .scrapes
        .into_iter()
        .map(|s| s.target)
        .collect();
        let extractor = cluster.binding.extractor.clone();

        // Until every endpoint answers; the first complete cycle opens all connections.
        let deadline = Instant::now() + Duration::from_secs(30);
        let cold = loop {
            let start = Instant::now();
            let wrong = cluster.cycle(&scraper, &metrics, &mut account, is_expected).await;
            let elapsed = start.elapsed();
            if wrong.is_empty() {
                break elapsed;
            }
            if Instant::now() > deadline {
                fail("endpoints not ready after 30 s", &wrong);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let rss_cold = status_mib("VmRSS");
        for _ in 0..options.warmup {
            let wrong = cluster.cycle(&scraper, &metrics, &mut account, is_expected).await;
            if !wrong.is_empty() {
                fail("warm-up cycle", &wrong);
            }
        }

        let mut cycles = Vec::with_capacity(options.cycles);
        for _ in 0..options.cycles {
            let (u0, s0) = cpu_ticks();
            let start = Instant::now();
            let wrong = cluster.cycle(&scraper, &metrics, &mut account, is_expected).await;
            let wall = start.elapsed();
            let (u1, s1) = cpu_ticks();
            cycles.push(Cycle {
                wall,
                user: u1 - u0,
                system: s1 - s0,
            });
            if !wrong.is_empty() {
                fail("measured cycle", &wrong);
            }
        }
        let peak = status_mib("VmHWM");
        let rss_end = status_mib("VmRSS");

        // Fetching alone: each body dropped as soon as it is read, as `scrape` does after parsing.
        let mut fetches = Vec::with_capacity(options.cycles);
        for _ in 0..options.cycles {
            let (u0, s0) = cpu_ticks();
            let start = Instant::now();
            let scraper = &scraper;
            let fetch = |t| async move { scraper.fetch(t).await.map(|b| b.len()) };
            let results = futures::future::join_all(targets.iter().map(fetch)).await;
            let wall = start.elapsed();
            let (u1, s1) = cpu_ticks();
            fetches.push(Cycle {
                wall,
                user: u1 - u0,
                system: s1 - s0,
            });
            let wrong = wrong(&targets, &results, |n: &usize| *n == body_len);
            if !wrong.is_empty() {
                fail("fetch-only cycle", &wrong);
            }
        }

        // Parsing alone: the extractor over one body per endpoint, on this thread.
        let body = scraper.fetch(&targets[0]).await.expect("a body");
        let (u0, s0) = cpu_ticks();
        let start = Instant::now();
        for _ in 0..options.cycles * options.endpoints {
            let usage = extractor.extract(std::hint::black_box(&body)).expect("parses");
            assert!(is_expected(&usage), "parse-only: unexpected usage");
        }
        let parse_wall = start.elapsed().as_secs_f64() / options.cycles as f64;
        let (u1, s1) = cpu_ticks();
        let parse_cpu = (u1 + s1 - u0 - s0) as f64 / ticks / options.cycles as f64;

        let summary = |cycles: &[Cycle]| {
            let mut walls: Vec<f64> = cycles.iter().map(|c| c.wall.as_secs_f64() * 1e3).collect();
            walls.sort_by(f64::total_cmp);
            let mut cpus: Vec<f64> = cycles.iter().map(|c| (c.user + c.system) as f64 / ticks).collect();
            cpus.sort_by(f64::total_cmp);
            let n = cycles.len() as f64;
            let user = cycles.iter().map(|c| c.user).sum::<u64>() as f64 / ticks / n;
            let system = cycles.iter().map(|c| c.system).sum::<u64>() as f64 / ticks / n;
            (walls, median(&cpus), user, system)
        };
        let (walls, cpu, user, system) = summary(&cycles);
        let (fetch_walls, fetch_cpu, fetch_user, fetch_system) = summary(&fetches);
        let verdict = |ok: bool| if ok { "yes" } else { "NO" };
        println!(
            "{concurrency:>11} {:>7.0} {:>7.1} {:>7.1} {:>7.1} {:>9.3} {:>6.3}/{:<6.3} {:>8.1}   wall {} CPU {} RSS {}",
            cold.as_secs_f64() * 1e3,
            walls[0],
            median(&walls),
            walls[walls.len() - 1],
            cpu,
            user,
            system,
            peak,
            verdict(walls[walls.len() - 1] < GOAL_WALL_S * 1e3),
            verdict(cpu < GOAL_CPU_S),
            verdict(peak < GOAL_RSS_MIB),
        );
        println!(
            "{:>11} fetch only: wall median {:.1} ms, CPU {:.3} s/cycle (user {:.3}, sys {:.3}); \
             parse only: {:.3} CPU-s ({:.3} s wall, 1 thread) per {} bodies",
            "",
            median(&fetch_walls),
            fetch_cpu,
            fetch_user,
            fetch_system,
            parse_cpu,
            parse_wall,
            options.endpoints
        );
        println!(
            "{:>11} memory: resident {rss_before:.1} MiB before the scraper, {rss_cold:.1} MiB after the first \
             cycle, {rss_end:.1} MiB after the measured ones (peak {peak:.1})",
            ""
        );
        let _ = std::io::stdout().flush();
    });
}

/// What the operator's stores would hold: one Deployment whose ReplicaSet owns one running
/// pod per endpoint (its IP the endpoint's address), and one binding naming the Deployment.
struct Cluster {
    snapshot: Snapshot,
    binding: ValidBinding,
    now: Timestamp,
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

impl Cluster {
    fn new(endpoints: usize) -> Self {
        let owned_by = |kind: &str, uid: &str| serde_json::json!([{"apiVersion": "apps/v1", "kind": kind, "name": "agent", "uid": uid, "controller": true}]);
        let deployment: Deployment = from_json(serde_json::json!({
            "metadata": {"name": "agent", "namespace": "bench", "uid": "deployment"},
        }));
        let replica_set: ReplicaSet = from_json(serde_json::json!({
            "metadata": {"name": "agent-1", "namespace": "bench", "uid": "replicaset",
                         "ownerReferences": owned_by("Deployment", "deployment")},
        }));
        let pods = (0..endpoints)
            .map(|i| {
                let pod: Pod = from_json(serde_json::json!({
                    "metadata": {"name": format!("agent-1-{i}"), "namespace": "bench", "uid": format!("pod-{i}"),
                                 "ownerReferences": owned_by("ReplicaSet", "replicaset")},
                    "spec": {"containers": [{"name": "agent", "ports": [{"name": "metrics", "containerPort": PORT}]}]},
                    "status": {"phase": "Running", "podIP": address(i).to_string(),
                               "startTime": "2026-11-30T00:00:00Z",
                               "containerStatuses": [{"name": "agent", "restartCount": 0, "ready": true,
                                                      "image": "agent", "imageID": "agent"}]},
                }));
                Arc::new(pod)
            })
            .collect();
        let spec: BudgetBindingSpec = from_json(serde_json::json!({
            "budgetRef": {"name": "bench"},
            "workloads": [{"kind": "Deployment", "name": "agent"}],
            "metrics": {"port": "metrics", "timeout": format!("{}s", TIMEOUT.as_secs())},
        }));
        Self {
            snapshot: Snapshot {
                deployments: vec![Arc::new(deployment)],
                replica_sets: vec![Arc::new(replica_set)],
                pods,
                ..Default::default()
            },
            binding: validate::binding(&spec).expect("a valid binding"),
            now: "2026-11-30T12:00:00Z".parse().expect("a timestamp"),
        }
    }

    fn times(&self) -> Times {
        Times {
            now: self.now,
            budget_created: "2026-11-01T00:00:00Z".parse().expect("a timestamp"),
        }
    }

    fn bindings(&self) -> Vec<Binding<'_>> {
        vec![Binding {
            name: "bench",
            since: "2026-11-01T00:00:00Z".parse().expect("a timestamp"),
            spec: &self.binding,
        }]
    }

    /// One accounting cycle, the operator's code from plan to fold; the scrapes whose result
    /// is an error or fails `ok`.
    async fn cycle(
        &self,
        scraper: &Scraper,
        metrics: &Metrics,
        account: &mut Account,
        ok: impl Fn(&Usage) -> bool,
    ) -> Vec<(String, String)> {
        let bindings = self.bindings();
        let plan = cycle::plan(&bindings, &self.snapshot, account.ledger().bound(), self.times());
        let answers = scrapes::scrape(scraper, metrics, &plan.scrapes, self.now).await;
        let targets: Vec<Target> = plan.scrapes.iter().map(|s| s.target.clone()).collect();
        let ok = |answer: &cycle::Answer| matches!(answer, cycle::Answer::Scraped(usage) if ok(usage));
        let wrong = wrong(&targets, &answers.results, ok)
            .into_iter()
            .map(|(url, why)| (url.to_owned(), why))
            .collect();
        cycle::fold(
            account,
            &bindings,
            plan,
            answers,
            None,
            self.now,
            cycle::Freshness::Current,
        );
        wrong
    }
}

// ---------------------------------------------------------------------------------------------
// The coordinator
// ---------------------------------------------------------------------------------------------

/// A child process killed (and reaped) when dropped, also when unwinding from a panic.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The soft limit on open files, from `/proc/self/limits`.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

fn coordinate(options: &Options) {
    let needed = 2 * options.endpoints + 256;
    if let Some(limit) = open_files_limit().filter(|&l| l < needed) {
        panic!("the open files limit is {limit}, the server needs about {needed}: raise it (ulimit -n {needed})");
    }
    let exe = std::env::current_exe().expect("the bench binary");
    let (body, _) = exposition();
    let started = Instant::now();
    let mut server = Guard(
        Command::new(&exe)
            .args(["--serve", "--endpoints", &options.endpoints.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the server"),
    );
    let mut ready = String::new();
    let mut stdout: BufReader<ChildStdout> = BufReader::new(server.0.stdout.take().expect("piped"));
    let _ = stdout.read_line(&mut ready);
    assert_eq!(ready.trim(), "ready", "the server did not start (see its error above)");
    let server_cpu = |pid: u32| -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        Some((f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?) as f64 / clock_ticks())
    };

    let mut load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.truncate(load.trim_end().len());
    println!(
        "scrape cycle: {} endpoints (127.42.x.y:{PORT}), each {} bytes, {} samples; {} warm-up + {} measured cycles; \
         {} CPUs; load average {load}",
        options.endpoints,
        body.len(),
        sample_count(&body),
        options.warmup,
        options.cycles,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "goals per cycle: wall < {GOAL_WALL_S} s, CPU < {GOAL_CPU_S} s, peak RSS < {GOAL_RSS_MIB} MiB \
         (Prometheus 2.42 on the same targets: 0.76 CPU-s, 740 MB)"
    );
    println!();
    println!("{TABLE_HEADER}");
    for &concurrency in &options.concurrency {
        let mut measuring = Guard(
            Command::new(&exe)
                .args([
                    "--measure",
                    &concurrency.to_string(),
                    "--endpoints",
                    &options.endpoints.to_string(),
                    "--warmup",
                    &options.warmup.to_string(),
                    "--cycles",
                    &options.cycles.to_string(),
                ])
                .stdin(Stdio::piped())
                .spawn()
                .expect("start a measuring process"),
        );
        // `Child::wait` closes the child's stdin, which tells it the coordinator is gone: keep it.
        let _stdin = measuring.0.stdin.take();
        let status = measuring.0.wait().expect("wait for the measuring process");
        assert!(
            status.success(),
            "the measuring process (concurrency {concurrency}) failed: {status}"
        );
    }
    println!();
    println!(
        "cold: the first cycle, opening the connections; CPU-s: user + system of the measuring process; \
         server process CPU over the whole run: {:.2} s in {:.1} s",
        server_cpu(server.0.id()).unwrap_or(f64::NAN),
        started.elapsed().as_secs_f64()
    );
    drop(server);
}
