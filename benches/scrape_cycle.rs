//! One accounting cycle of the operator, end to end over loopback TCP: 1,000 agent endpoints,
//! each serving the same ~35 KB exposition of ~210 samples (the OpenTelemetry GenAI token
//! histogram of 2 models, HTTP server duration histograms, process and runtime metrics). A
//! measured cycle is the operator's own code, as a budget's reconcile runs it: the plan
//! (`usage::cycle::plan`, resolving a binding over a namespace of 1,000 pods of one Deployment),
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
    io::{BufRead, BufReader, Write as _},
    process::{Child, ChildStdout, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use jiff::Timestamp;
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::Pod,
};
use tokenbudget::{
    api::BudgetBindingSpec,
    controller::scrapes,
    metrics::Metrics,
    usage::{
        Usage,
        account::Account,
        cycle::{self, Binding, Times},
        scrape::{ScrapeError, Scraper, Target},
    },
    validate::{self, ValidBinding},
    workloads::{Lists, Namespace},
};

#[path = "support/agents.rs"]
mod agents;
use agents::{PORT, address, exit_with_parent, exposition, sample_count, serve};
#[path = "support/procfs.rs"]
mod procfs;
use procfs::{clock_ticks, status_mib};

/// (user, system) CPU time of this process so far, in clock ticks.
fn cpu_ticks() -> (u64, u64) {
    procfs::cpu_ticks("self").expect("/proc/self/stat")
}
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

// ---------------------------------------------------------------------------------------------
// The measuring process
// ---------------------------------------------------------------------------------------------

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
        let rss_before = status_mib("self", "VmRSS");
        // Every pod is in one namespace: its share is every slot, so that `concurrency` scrapes
        // are in flight (the operator's default share is a quarter).
        // Connections kept alive (the operator's --scrape-keep-alive 90s), as measured before
        // the default became 0s: the cheapest scrape in CPU.
        let scraper = Scraper::new(concurrency, MAX_BODY_BYTES)
            .with_share(concurrency)
            .with_keep_alive(Duration::from_secs(90));
        let metrics = Metrics::new();
        let mut account = Account::open("bench", None);
        account.begin_period(cluster.now);
        let is_expected = |u: &Usage| *u == expected;
        let targets: Vec<Target> = cycle::plan(
            &cluster.bindings(),
            &cluster.objects,
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
        let rss_cold = status_mib("self", "VmRSS");
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
        let peak = status_mib("self", "VmHWM");
        let rss_end = status_mib("self", "VmRSS");

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
    objects: Namespace,
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
            objects: Lists {
                deployments: vec![Arc::new(deployment)],
                replica_sets: vec![Arc::new(replica_set)],
                pods,
                ..Default::default()
            }
            .namespace("bench"),
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
        let plan = cycle::plan(&bindings, &self.objects, account.ledger().bound(), self.times());
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
    let server_cpu = |pid: u32| procfs::cpu_s(&pid.to_string());

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
