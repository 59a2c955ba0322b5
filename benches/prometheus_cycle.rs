//! One accounting cycle of a binding that reads Prometheus (`metrics.source: Prometheus`),
//! end to end over loopback TCP: the operator's own code as a budget's reconcile runs it, the
//! plan (`usage::cycle::plan` over a namespace of N pods of one Deployment), the query and the
//! reading of its answer (`controller::prometheus::answers`: one POST, the JSON answer, one
//! `cycle::Answer` per pod) and the fold into the budget's account (`usage::cycle::fold`).
//! The counterpart of `benches/scrape_cycle.rs`, which scrapes the same number of pods.
//!
//! The Prometheus is a stand-in, a child process (this binary with `--serve`) that answers
//! every query as Prometheus 2.42 does for the operator's query: a matrix of 5 series per pod
//! (`up` and the `gen_ai_client_token_usage_sum` series of 2 models and 2 token types), each
//! with the samples of the lookback at the scrape interval, the newest one second old and the
//! counters one higher at every query, so that each cycle counts something. Its CPU is its
//! own, so the CPU measured (utime + stime of this process) is the operator's alone.
//!
//! Run: `cargo bench --bench prometheus_cycle`
//! Options: `cargo bench --bench prometheus_cycle -- --pods 1000 --samples 8 --warmup 2 --cycles 10`
//! (`--samples`: samples per series in the answer, the lookback over the scrape interval:
//! 8 for the default 2-minute lookback at 15 s).

use std::{
    convert::Infallible,
    io::{BufRead, BufReader, Write as _},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Full};
use hyper::{Response, body::Bytes, header, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::Pod,
};
use tokenbudget::{
    api::{BudgetBindingSpec, TokenType},
    controller::prometheus::{self, Prometheus, PrometheusConfig},
    metrics::Metrics,
    usage::{
        account::Account,
        cycle::{self, Answer, Binding, Times},
        scrape::Scraper,
    },
    validate::{self, ValidBinding},
    workloads::{Lists, Namespace},
};
use tokio::net::TcpListener;

#[path = "support/procfs.rs"]
mod procfs;
use procfs::clock_ticks;

const SCRAPE_INTERVAL_S: f64 = 15.0;
const MODELS: [&str; 2] = ["gpt-4o-mini", "claude-sonnet"];

#[derive(Clone, Copy)]
struct Options {
    pods: usize,
    samples: usize,
    warmup: usize,
    cycles: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut options = Options {
        pods: 1000,
        samples: 8,
        warmup: 2,
        cycles: 10,
    };
    let mut serve = false;
    let mut i = 0;
    while i < args.len() {
        let value = || args.get(i + 1).and_then(|v| v.parse::<usize>().ok());
        match args[i].as_str() {
            "--serve" => serve = true,
            "--pods" => options.pods = value().expect("--pods N"),
            "--samples" => options.samples = value().expect("--samples N"),
            "--warmup" => options.warmup = value().expect("--warmup N"),
            "--cycles" => options.cycles = value().expect("--cycles N"),
            // `cargo bench` passes `--bench`; anything else is not ours either.
            _ => {
                i += 1;
                continue;
            }
        }
        i += if args[i] == "--serve" { 1 } else { 2 };
    }
    if serve {
        self::serve(&options);
    } else {
        measure(&options);
    }
}

fn pod_name(i: usize) -> String {
    format!("agent-1-{i}")
}

// ---------------------------------------------------------------------------------------------
// The stand-in Prometheus
// ---------------------------------------------------------------------------------------------

/// The answer to the operator's query at `now`, the `query`-th one: what Prometheus 2.42
/// writes for a matrix (sample times in seconds with milliseconds, values as strings).
fn answer(options: &Options, now: f64, query: u64) -> String {
    let mut out = String::with_capacity(options.pods * 5 * (250 + options.samples * 26));
    out.push_str(r#"{"status":"success","data":{"resultType":"matrix","result":["#);
    let mut first = true;
    // `,"values":[...]}`: the samples of one series, closing it.
    let samples = |out: &mut String, value: &dyn Fn(usize) -> u64| {
        out.push_str(r#","values":["#);
        for k in 0..options.samples {
            let age = 1.0 + SCRAPE_INTERVAL_S * (options.samples - 1 - k) as f64;
            if k > 0 {
                out.push(',');
            }
            out.push_str(&format!("[{:.3},\"{}\"]", now - age, value(k)));
        }
        out.push_str("]}");
    };
    for i in 0..options.pods {
        let pod = pod_name(i);
        let common = format!(
            r#""instance":"10.1.{}.{}:9464","job":"agents","namespace":"bench","pod":"{pod}""#,
            i / 250,
            i % 250
        );
        if !first {
            out.push(',');
        }
        first = false;
        // `up` is 1 at every sample.
        out.push_str(&format!(r#"{{"metric":{{"__name__":"up",{common}}}"#));
        samples(&mut out, &|_| 1);
        for model in MODELS {
            for kind in ["input", "output"] {
                out.push_str(&format!(
                    r#",{{"metric":{{"__name__":"gen_ai_client_token_usage_sum","gen_ai_request_model":"{model}","gen_ai_token_type":"{kind}",{common}}}"#
                ));
                // Counters one higher at every query (and at every sample of it).
                let value = |k: usize| 1_000 * (i as u64 + 1) + query * options.samples as u64 + k as u64;
                samples(&mut out, &value);
            }
        }
    }
    out.push_str("]}}");
    out
}

fn serve(options: &Options) {
    // Ends with the coordinator: it holds this process's stdin.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let options = Arc::new(*options);
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        println!("{}", listener.local_addr().expect("an address"));
        let _ = std::io::stdout().flush();
        let queries = Arc::new(AtomicU64::new(0));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (options, queries) = (options.clone(), queries.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let (options, queries) = (options.clone(), queries.clone());
                    async move {
                        // The query, read whole as Prometheus reads it (an unread body would
                        // reset the connection).
                        let _ = request.into_body().collect().await;
                        let now = Timestamp::now().as_millisecond() as f64 / 1000.0;
                        let body = answer(&options, now, queries.fetch_add(1, Ordering::Relaxed));
                        let response = Response::builder()
                            .header(header::CONTENT_TYPE, "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .expect("a response");
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The measuring process
// ---------------------------------------------------------------------------------------------

/// (user + system) CPU time of this process so far, in clock ticks.
fn cpu_ticks() -> u64 {
    let (user, system) = procfs::cpu_ticks("self").expect("/proc/self/stat");
    user + system
}

fn peak_rss_mib() -> f64 {
    procfs::status_mib("self", "VmHWM")
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

/// One Deployment whose ReplicaSet owns `pods` running pods, and one binding that reads them
/// from Prometheus.
fn cluster(pods: usize) -> (Namespace, ValidBinding) {
    let owned_by = |kind: &str, uid: &str| serde_json::json!([{"apiVersion": "apps/v1", "kind": kind, "name": "agent", "uid": uid, "controller": true}]);
    let deployment: Deployment = from_json(serde_json::json!({
        "metadata": {"name": "agent", "namespace": "bench", "uid": "deployment"},
    }));
    let replica_set: ReplicaSet = from_json(serde_json::json!({
        "metadata": {"name": "agent-1", "namespace": "bench", "uid": "replicaset",
                     "ownerReferences": owned_by("Deployment", "deployment")},
    }));
    let pods = (0..pods)
        .map(|i| {
            let pod: Pod = from_json(serde_json::json!({
                "metadata": {"name": pod_name(i), "namespace": "bench", "uid": format!("pod-{i}"),
                             "ownerReferences": owned_by("ReplicaSet", "replicaset")},
                "spec": {"containers": [{"name": "agent", "ports": [{"name": "metrics", "containerPort": 9464}]}]},
                "status": {"phase": "Running", "podIP": format!("10.1.{}.{}", i / 250, i % 250),
                           "startTime": "2026-01-01T00:00:00Z",
                           "containerStatuses": [{"name": "agent", "restartCount": 0, "ready": true,
                                                  "image": "agent", "imageID": "agent"}]},
            }));
            Arc::new(pod)
        })
        .collect();
    let spec: BudgetBindingSpec = from_json(serde_json::json!({
        "budgetRef": {"name": "bench"},
        "workloads": [{"kind": "Deployment", "name": "agent"}],
        "metrics": {"source": "Prometheus", "port": "metrics", "timeout": "10s"},
    }));
    let objects = Lists {
        deployments: vec![Arc::new(deployment)],
        replica_sets: vec![Arc::new(replica_set)],
        pods,
        ..Default::default()
    }
    .namespace("bench");
    (objects, validate::binding(&spec).expect("a valid binding"))
}

/// One cycle of the operator's code: plan, query, fold. Every pod must answer its 4 counters.
async fn one_cycle(
    account: &mut Account,
    bindings: &[Binding<'_>],
    objects: &Namespace,
    client: &Prometheus,
    scraper: &Scraper,
    metrics: &Metrics,
) {
    let now = Timestamp::now();
    let times = Times {
        now,
        budget_created: "2026-01-01T00:00:00Z".parse().unwrap(),
    };
    let plan = cycle::plan(bindings, objects, account.ledger().bound(), times);
    let answers = prometheus::answers(scraper, Some(client), metrics, bindings, &plan.scrapes, "bench", now).await;
    let bad = answers
        .results
        .iter()
        .filter(|r| !matches!(r, Ok(Answer::Sampled { usage, .. }) if usage.len() == 4))
        .count();
    assert_eq!(
        bad,
        0,
        "{bad} of {} pods without their 4 counters; the first answer: {:?}",
        answers.results.len(),
        answers.results.first()
    );
    cycle::fold(account, bindings, plan, answers, None, now, cycle::Freshness::Current);
}

fn measure(options: &Options) {
    let exe = std::env::current_exe().expect("the bench binary");
    let mut server = Command::new(exe)
        .args([
            "--serve",
            "--pods",
            &options.pods.to_string(),
            "--samples",
            &options.samples.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the stand-in Prometheus");
    let mut address = String::new();
    BufReader::new(server.stdout.take().expect("piped"))
        .read_line(&mut address)
        .expect("its address");
    let address = address.trim().to_string();
    let ticks = clock_ticks();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let body_len = answer(options, 0.0, 0).len();
    runtime.block_on(async {
        let (objects, spec) = cluster(options.pods);
        let config = PrometheusConfig {
            url: format!("http://{address}"),
            bearer_token_file: None,
            ca: None,
            lookback: prometheus::DEFAULT_LOOKBACK,
        };
        let client = Prometheus::new(&config, 64 * 1024 * 1024).expect("a client");
        let scraper = Scraper::default();
        let metrics = Metrics::new();
        let mut account = Account::open("bench", None);
        account.begin_period("2026-01-01T00:00:00Z".parse().unwrap());
        let bindings = vec![Binding {
            name: "bench",
            since: "2026-01-01T00:00:00Z".parse().unwrap(),
            spec: &spec,
        }];
        for _ in 0..=options.warmup {
            one_cycle(&mut account, &bindings, &objects, &client, &scraper, &metrics).await;
        }
        let before = account.ledger().tokens(TokenType::Input);
        let mut walls = Vec::new();
        let mut cpus = Vec::new();
        for _ in 0..options.cycles {
            let (c0, start) = (cpu_ticks(), Instant::now());
            one_cycle(&mut account, &bindings, &objects, &client, &scraper, &metrics).await;
            walls.push(start.elapsed().as_secs_f64() * 1e3);
            cpus.push((cpu_ticks() - c0) as f64 / ticks);
            // Prometheus's next sample is a few milliseconds newer at least.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let counted = account.ledger().tokens(TokenType::Input) - before;
        // Each cycle, each pod's 2 input counters went up by `samples`.
        let expected = (options.cycles * options.pods * 2 * options.samples) as u64;
        assert_eq!(counted, expected, "every cycle counts every pod's increase, once");
        walls.sort_by(f64::total_cmp);
        cpus.sort_by(f64::total_cmp);
        let median = |v: &[f64]| v[v.len() / 2];
        println!(
            "prometheus cycle: {} pods, 5 series each, {} samples per series: answer of {:.1} MB; {} warm-up + {} measured cycles; {} CPUs",
            options.pods,
            options.samples,
            body_len as f64 / 1e6,
            options.warmup,
            options.cycles,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        println!(
            "wall ms min/median/max {:.1}/{:.1}/{:.1}; CPU-s per cycle median {:.3} (min {:.3}, max {:.3}); peak RSS {:.1} MiB",
            walls[0],
            median(&walls),
            walls[walls.len() - 1],
            median(&cpus),
            cpus[0],
            cpus[cpus.len() - 1],
            peak_rss_mib(),
        );
    });
    let _ = server.kill();
    let _ = server.wait();
}
