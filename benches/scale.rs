//! The whole operator at scale: one process (the operator binary, watching every namespace)
//! against a real API server holding `--pods` (10,000) agent pods across `--namespaces` (100)
//! namespaces, in Deployments of `--per-deployment` (10) pods, each Deployment bound to a
//! budget of its own (1,000 budgets and bindings). Every pod's agent is a real HTTP endpoint on
//! loopback (`benches/support/agents.rs`: 127.42.x.y:19464, the ~35 KB OpenTelemetry
//! exposition of `scrape_cycle`), served by a thread of this bench.
//!
//! The bench plays the kubelet (the controller-manager creates the pods; the bench sets their
//! status: Running, the endpoint's IP) and measures the operator process from outside, through
//! `/proc/PID` and its `/metrics`, in phases:
//!
//! 1. **caches**: the operator started with every pod, workload and budget present and no
//!    binding: its resident memory once its caches have synced (what the watches cost);
//! 2. **first count**: the bindings created; the time until every binding has scraped all its
//!    pods;
//! 3. **idle** (`--window` seconds, after two more cycles of every budget): the counters do
//!    not move. CPU-s per cycle and per pod,
//!    status writes per minute (0 expected), peak RSS;
//! 4. **spending** (`--window` seconds): every endpoint's counter grows at each scrape, so every
//!    cycle changes every budget. The same figures, and how long a budget waits from the end of
//!    its scrapes to its status write (`tokenbudget_cycle_status_delay_seconds`).
//!
//! Needs `KUBECONFIG` pointing at a cluster where it may install the CRDs and create namespaces
//! (the testbed: `hack/testbed.sh up; eval "$(hack/testbed.sh env)"`), and nothing else
//! running there. The pods are created by the controller-manager, which takes minutes for
//! 10,000 at its default rate of 20 requests a second: start the testbed with
//! `TESTBED_CM_QPS=200 hack/testbed.sh up` for a faster start.
//!
//! Run: `cargo bench --bench scale`
//! Options: `--pods 10000 --namespaces 100 --per-deployment 10 --interval 30s --window 120
//! --keep-alive 90s --source scrape` (`--keep-alive`: the operator's `--scrape-keep-alive`,
//! default its own; `--source prometheus`: the bindings read a stand-in Prometheus,
//! `benches/support/prometheus.rs`, that answers for every pod from counters of its own);
//! `--pods 1000 --namespaces 10` for the 1,000-pod figure.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams},
};
use tokenbudget::api::{BudgetBinding, TokenBudget};

#[path = "support/agents.rs"]
mod agents;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/procfs.rs"]
mod procfs;
#[path = "support/prometheus.rs"]
mod standin;

use common::{Operator, TestNamespace, binding, budget, create, deployment, run_pod, total_of};

/// The agents' port: one socket on every address serves them all, so not the usual 9464,
/// which the agents of tests running beside the bench may hold on some addresses.
const AGENT_PORT: u16 = 19464;

struct Options {
    pods: usize,
    namespaces: usize,
    per_deployment: usize,
    interval: String,
    window: Duration,
    /// The operator's `--scrape-keep-alive`; `None`: its default.
    keep_alive: Option<String>,
    /// The bindings read a stand-in Prometheus (`metrics.source: Prometheus`) instead of
    /// scraping the agents.
    prometheus: bool,
}

fn parse_args() -> Options {
    let mut options = Options {
        pods: 10_000,
        namespaces: 100,
        per_deployment: 10,
        interval: "30s".into(),
        window: Duration::from_secs(120),
        keep_alive: None,
        prometheus: false,
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
            "--bench" => {}
            "--pods" => options.pods = number("--pods", args.next()),
            "--namespaces" => options.namespaces = number("--namespaces", args.next()),
            "--per-deployment" => options.per_deployment = number("--per-deployment", args.next()),
            "--interval" => options.interval = args.next().expect("--interval needs a duration"),
            "--window" => options.window = Duration::from_secs(number("--window", args.next()) as u64),
            "--keep-alive" => options.keep_alive = Some(args.next().expect("--keep-alive needs a duration")),
            "--source" => {
                options.prometheus = match args.next().as_deref() {
                    Some("scrape") => false,
                    Some("prometheus") => true,
                    _ => panic!("--source scrape|prometheus"),
                }
            }
            other => panic!(
                "unknown argument {other:?}; options: --pods N --namespaces N --per-deployment N --interval 30s --window SECONDS --keep-alive 90s --source scrape|prometheus"
            ),
        }
    }
    assert!(
        options.pods.is_multiple_of(options.namespaces * options.per_deployment),
        "--pods must be a multiple of --namespaces x --per-deployment"
    );
    assert!(options.pods <= 250 * 256, "at most {} pods", 250 * 256);
    options
}

fn main() {
    let options = parse_args();
    common::bench_requires_a_cluster("scale");
    // The agents' endpoints, on a runtime of their own with one worker.
    let spending = Arc::new(agents::Spending {
        step: 100,
        ..Default::default()
    });
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("the agents' runtime");
    server
        .block_on(agents::listen(options.pods, AGENT_PORT, spending.clone()))
        .unwrap_or_else(|e| panic!("the agents listen on port {AGENT_PORT} (another run of the bench?): {e}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // The stand-in Prometheus, beside the agents, when the bindings read it.
    let prometheus = options.prometheus.then(|| {
        server
            .block_on(standin::listen(spending.clone()))
            .expect("the stand-in Prometheus listens")
    });
    runtime.block_on(bench(&options, &spending, prometheus));
    drop(server);
}

/// The operator process, seen from outside.
struct Process(u32);

impl Process {
    /// CPU seconds used so far (user + system).
    fn cpu_s(&self) -> f64 {
        procfs::cpu_s(&self.0.to_string()).expect("/proc/PID/stat")
    }

    /// A `/proc/PID/status` line in MiB (`VmRSS`, `VmHWM`).
    fn mib(&self, key: &str) -> f64 {
        procfs::status_mib(&self.0.to_string(), key)
    }
}

/// The figures of one window.
struct Window {
    cpu_s: f64,
    cycles: f64,
    scrapes: f64,
    writes: f64,
    delays: Vec<(f64, f64)>,
    peak_mib: f64,
}

async fn bench(options: &Options, spending: &agents::Spending, prometheus: Option<std::net::SocketAddr>) {
    let started = Instant::now();
    let client = common::client().await;
    common::ensure_crds(&client).await;
    let per_ns = options.pods / options.namespaces / options.per_deployment;
    let budgets = options.pods / options.per_deployment;
    println!(
        "scale: {} pods in {} namespaces, {budgets} Deployments of {} pods, each bound to a budget of its own; interval {}; scrape keep-alive {}",
        options.pods,
        options.namespaces,
        options.per_deployment,
        options.interval,
        options.keep_alive.as_deref().unwrap_or("the operator's default")
    );
    if prometheus.is_some() {
        println!("the bindings read a stand-in Prometheus (metrics.source: Prometheus), not the agents");
    }
    let mut namespaces = Vec::new();
    for _ in 0..options.namespaces {
        namespaces.push(TestNamespace::new(&client, "scale").await);
    }
    let names: Vec<String> = namespaces.iter().map(|n| n.name.clone()).collect();
    create_workloads(&client, &names, per_ns, options.per_deployment).await;
    let pods = wait_pods(&client, &names, options.pods).await;
    println!(
        "{} pods created by the controller-manager after {:.0?}",
        pods.len(),
        started.elapsed()
    );
    run_agents(&client, &pods).await;
    println!("every pod Running with its agent after {:.0?}", started.elapsed());

    let mut args: Vec<String> = Vec::new();
    if let Some(idle) = &options.keep_alive {
        args.extend(["--scrape-keep-alive".into(), idle.clone()]);
    }
    if let Some(address) = prometheus {
        args.extend(["--prometheus-url".into(), format!("http://{address}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let operator = Operator::spawn(&args, "scale", &[("RUST_LOG", "info")]);
    let process = Process(operator.child.id());
    operator.wait_ready().await;
    // Its pod and workload caches too: the metric says when every watch has listed.
    wait_until("every watch listed", Duration::from_secs(600), || {
        let m = operator.metrics();
        total_of(&m, "tokenbudget_watch_synced", "") >= 8.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let caches_mib = process.mib("VmRSS");
    println!("1. caches: RSS {caches_mib:.1} MiB with every object cached and no binding");

    let bound = Instant::now();
    stream::iter(names.iter().flat_map(|ns| (0..per_ns).map(move |j| (ns.clone(), j))))
        .for_each_concurrent(16, |(ns, j)| {
            let api: Api<BudgetBinding> = Api::namespaced(client.clone(), &ns);
            let interval = options.interval.clone();
            async move {
                let bb = binding(&format!("agent-{j}"), &format!("budget-{j}"))
                    .deployment(&format!("agent-{j}"))
                    .port(AGENT_PORT.into())
                    .interval(&interval)
                    .timeout("5s");
                let bb = if prometheus.is_some() { bb.via_prometheus() } else { bb };
                create(&api, bb).await;
            }
        })
        .await;
    let per = options.per_deployment as i64;
    let all: Api<BudgetBinding> = Api::all(client.clone());
    loop {
        let list = all.list(&ListParams::default()).await.expect("bindings");
        let done = list
            .items
            .iter()
            .filter(|bb| bb.status.as_ref().and_then(|s| s.scraped_pods) == Some(per))
            .count();
        if done == budgets {
            break;
        }
        assert!(
            bound.elapsed() < Duration::from_secs(1800),
            "{done} of {budgets} bindings scraped"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "2. first count: every binding scraped all its pods {:.1?} after the bindings were created; RSS {:.1} MiB",
        bound.elapsed(),
        process.mib("VmRSS")
    );

    // Settled: two more cycles of every budget, after which an unchanged status is not
    // written again.
    let interval = tokenbudget::validate::parse_duration(&options.interval).unwrap();
    tokio::time::sleep(2 * interval + Duration::from_secs(2)).await;
    let idle = window(&operator, &process, options.window).await;
    report("3. idle", &idle, options);
    spending.on.store(true, Ordering::Relaxed);
    // One interval for every budget to see the counters move, then the window.
    tokio::time::sleep(interval).await;
    let busy = window(&operator, &process, options.window).await;
    report("4. spending", &busy, options);
    spending.on.store(false, Ordering::Relaxed);
    let used = Api::<TokenBudget>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("budgets")
        .items
        .iter()
        .filter(|tb| tb.metadata.namespace.as_ref().is_some_and(|ns| names.contains(ns)))
        .filter(|tb| {
            tb.status
                .as_ref()
                .and_then(|s| s.used.as_ref())
                .is_some_and(|u| u.tokens > 0)
        })
        .count();
    assert_eq!(used, budgets, "every budget counted the spending");
    println!("peak RSS of the whole run (VmHWM): {:.1} MiB", process.mib("VmHWM"));

    // Clean up while the operator runs, so that it releases the budgets' finalizers.
    for ns in &names {
        let api: Api<TokenBudget> = Api::namespaced(client.clone(), ns);
        let _ = api
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
    }
    loop {
        let left = Api::<TokenBudget>::all(client.clone())
            .list(&ListParams::default())
            .await
            .expect("budgets")
            .items
            .len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(operator);
    println!(
        "done after {:.0?}; the namespaces are deleted in the background",
        started.elapsed()
    );
}

/// Per namespace, `per_ns` budgets and Deployments of `replicas` pods.
async fn create_workloads(client: &Client, names: &[String], per_ns: usize, replicas: usize) {
    stream::iter(names.iter().flat_map(|ns| (0..per_ns).map(move |j| (ns.clone(), j))))
        .for_each_concurrent(16, |(ns, j)| {
            let budgets: Api<TokenBudget> = Api::namespaced(client.clone(), &ns);
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
            async move {
                create(&budgets, budget(&format!("budget-{j}")).tokens(1_000_000_000_000)).await;
                create(
                    &deployments,
                    deployment(&format!("agent-{j}")).replicas(replicas as i32),
                )
                .await;
            }
        })
        .await;
}

/// Waits until the controller-manager has created `count` pods in `names`; returns them as
/// (namespace, name), sorted.
async fn wait_pods(client: &Client, names: &[String], count: usize) -> Vec<(String, String)> {
    let started = Instant::now();
    loop {
        let mut pods = Vec::new();
        for ns in names {
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            let list = api.list_metadata(&ListParams::default()).await.expect("pods");
            pods.extend(
                list.items
                    .into_iter()
                    .filter_map(|p| Some((ns.clone(), p.metadata.name?))),
            );
        }
        if pods.len() == count {
            pods.sort();
            return pods;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "{} of {count} pods after 30 minutes",
            pods.len()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Plays the kubelet: pod `i` runs the agent at endpoint `i`.
async fn run_agents(client: &Client, pods: &[(String, String)]) {
    stream::iter(pods.iter().enumerate())
        .for_each_concurrent(32, |(i, (ns, name))| {
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            async move { run_pod(&api, name, &agents::address(i).to_string(), 0).await }
        })
        .await;
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Measures the operator over `length`.
async fn window(operator: &Operator, process: &Process, length: Duration) -> Window {
    let before = operator.metrics();
    let cpu = process.cpu_s();
    let mut peak_mib: f64 = 0.0;
    let end = Instant::now() + length;
    while Instant::now() < end {
        peak_mib = peak_mib.max(process.mib("VmRSS"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cpu_s = process.cpu_s() - cpu;
    let after = operator.metrics();
    let delta = |name: &str, labels: &str| total_of(&after, name, labels) - total_of(&before, name, labels);
    let delays = buckets(&after, "tokenbudget_cycle_status_delay_seconds_bucket")
        .into_iter()
        .zip(buckets(&before, "tokenbudget_cycle_status_delay_seconds_bucket"))
        .map(|((le, a), (_, b))| (le, a - b))
        .collect();
    Window {
        cpu_s,
        cycles: delta("tokenbudget_reconcile_total", "controller=\"tokenbudget\""),
        scrapes: delta("tokenbudget_scrapes_total", "result=\"ok\""),
        writes: delta("tokenbudget_status_writes_total", ""),
        delays,
        peak_mib,
    }
}

/// A histogram's cumulative buckets: (upper bound, count), in order.
fn buckets(metrics: &BTreeMap<String, f64>, name: &str) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|(series, value)| {
            let le = series.strip_prefix(name)?.strip_prefix("{le=\"")?.strip_suffix("\"}")?;
            Some((if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? }, *value))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The upper bound of the bucket that holds quantile `q`.
fn quantile(delays: &[(f64, f64)], q: f64) -> f64 {
    let total = delays.last().map_or(0.0, |(_, c)| *c);
    delays
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map_or(f64::NAN, |(le, _)| *le)
}

fn report(phase: &str, w: &Window, options: &Options) {
    let minutes = options.window.as_secs_f64() / 60.0;
    let budgets = (options.pods / options.per_deployment) as f64;
    let rounds = w.cycles / budgets;
    println!(
        "{phase}: {:.0} s window, {:.0} budget cycles ({rounds:.1} per budget), {:.0} scrapes ok",
        options.window.as_secs_f64(),
        w.cycles,
        w.scrapes
    );
    println!(
        "   CPU {:.1} s = {:.2} CPU-s per round of every budget, {:.3} ms per pod scraped; status writes {:.0}/min; peak RSS {:.1} MiB",
        w.cpu_s,
        w.cpu_s / rounds.max(1e-9),
        w.cpu_s * 1000.0 / w.scrapes.max(1.0),
        w.writes / minutes,
        w.peak_mib
    );
    let written = w.delays.last().map_or(0.0, |(_, c)| *c);
    if written > 0.0 {
        println!(
            "   from a cycle's scrapes to its status written ({written:.0} writes): p50 <= {}s, p99 <= {}s",
            quantile(&w.delays, 0.5),
            quantile(&w.delays, 0.99)
        );
    }
}
