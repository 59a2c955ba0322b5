//! Writes to the API server while nothing happens: 100 budgets, each with a binding and one
//! agent pod that spends nothing, left idle for a minute against a real API server.
//!
//! The bench starts the operator binary (`tokenbudget-operator --namespace <its own>`, the
//! binary cargo builds for it: with `cargo bench`, the bench profile, which inherits `release`)
//! and creates, for each of `--budgets` (100):
//!
//! - a TokenBudget `budget-N` with room for 10^9 tokens (it never runs out);
//! - a Deployment `agent-N` of one replica; the bench plays the kubelet for its pod: an
//!   `agent-sim` on a loopback address of its own, and the pod's status patched to Running;
//! - a BudgetBinding `binding-N` of `agent-N` to `budget-N`, scraping every `--interval` (5s).
//!
//! It lets them settle: every binding has scraped its pod, then every budget has run two more
//! accounting cycles (`tokenbudget_last_cycle_timestamp_seconds`). Then, for `--idle` (60s),
//! the agents spend nothing and the bench counts:
//!
//! - the operator's own count of its status writes, `tokenbudget_status_writes_total` by kind;
//! - every change of a budget's or a binding's `resourceVersion`, from a watch of each kind
//!   opened at the resource version listed when the window begins (whoever wrote);
//! - to show that the operator was not idle itself: its reconciles and scrapes in the window.
//!
//! and prints the writes per minute (0 expected: an unchanged status is never written).
//!
//! Needs `KUBECONFIG` pointing at a cluster where it may install the CRDs and create a
//! namespace (the testbed: `export TESTBED_DIR=$PWD/.testbed; hack/testbed.sh up; eval
//! "$(hack/testbed.sh env)"`).
//!
//! Run: `cargo bench --bench idle_writes`
//! Options: `--budgets N` (100), `--interval 5s` (the bindings' scrape interval), `--idle 60`
//! (seconds of the window).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, ObjectList, WatchEvent, WatchParams},
    runtime::wait::await_condition,
};
use serde::de::DeserializeOwned;
use tokenbudget::api::{BudgetBinding, TokenBudget};

// The integration tests' helpers: the namespace, the operator, the kubelet's part.
#[path = "../tests/common/mod.rs"]
mod common;
use common::{
    Agent, Operator, Tenant, agent_ip, binding, budget, create, deployment, pods_of, run_pod, total_of as total, within,
};

struct Options {
    budgets: usize,
    interval: String,
    idle: Duration,
}

fn parse_args() -> Options {
    let mut options = Options {
        budgets: 100,
        interval: "5s".into(),
        idle: Duration::from_secs(60),
    };
    let mut args = std::env::args().skip(1);
    let number = |flag: &str, value: Option<String>| -> u64 {
        value
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{flag} needs a number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // `cargo bench` passes `--bench` to every bench binary.
            "--bench" => {}
            "--budgets" => options.budgets = number("--budgets", args.next()) as usize,
            "--interval" => options.interval = args.next().expect("--interval needs a duration such as 5s"),
            "--idle" => options.idle = Duration::from_secs(number("--idle", args.next())),
            other => panic!("unknown argument {other:?}; options: --budgets N --interval 5s --idle SECONDS"),
        }
    }
    tokenbudget::validate::parse_duration(&options.interval).unwrap_or_else(|e| panic!("--interval: {e}"));
    assert!(
        (1..=1000).contains(&options.budgets),
        "--budgets must be between 1 and 1000"
    );
    options
}

fn main() {
    let options = parse_args();
    common::bench_requires_a_cluster("idle_writes");
    // One thread: the bench mostly waits, and the operator under test needs the CPUs.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(bench(&options));
}

/// The oldest last accounting cycle over the budgets (Unix seconds), once every budget has one.
fn oldest_cycle(operator: &Operator, budgets: usize) -> Option<f64> {
    let metrics = operator.metrics();
    let cycles: Vec<f64> = metrics
        .iter()
        .filter(|(series, _)| series.starts_with("tokenbudget_last_cycle_timestamp_seconds{"))
        .map(|(_, v)| *v)
        .collect();
    (cycles.len() == budgets).then(|| cycles.into_iter().fold(f64::INFINITY, f64::min))
}

/// Waits until every budget's last accounting cycle began after `after` (Unix seconds).
async fn every_budget_cycled_after(operator: &Operator, budgets: usize, after: f64) {
    within(
        async {
            while oldest_cycle(operator, budgets).is_none_or(|oldest| oldest <= after) {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        },
        "every budget to run an accounting cycle",
    )
    .await;
}

fn unix_now() -> f64 {
    jiff::Timestamp::now().as_millisecond() as f64 / 1000.0
}

/// What one kind's watch saw in the window: the changes per object, and for each change the
/// status fields that differ from the version before.
#[derive(Default)]
struct Changes {
    per_object: BTreeMap<String, u64>,
    fields: Vec<String>,
}

/// Counts the changes of objects of `api` (any write that moves a `resourceVersion`,
/// creations and deletions too) after the listing `before`, for `window`.
async fn count_changes<K>(api: Api<K>, before: ObjectList<K>, window: Duration) -> Changes
where
    K: Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug + Send + 'static,
{
    let resource_version = before
        .metadata
        .resource_version
        .clone()
        .expect("a list's resourceVersion");
    let mut last: BTreeMap<String, serde_json::Value> = before
        .items
        .iter()
        .map(|o| (o.name_any(), serde_json::to_value(o).expect("serializable")))
        .collect();
    let mut changes = Changes::default();
    let params = WatchParams::default().timeout(window.as_secs() as u32 + 30);
    let stream = api
        .watch(&params, &resource_version)
        .await
        .expect("a watch")
        .take_until(tokio::time::sleep(window));
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.try_next().await.expect("the watch goes on") {
        match event {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                let name = o.name_any();
                *changes.per_object.entry(name.clone()).or_default() += 1;
                let now = serde_json::to_value(&o).expect("serializable");
                let old = last.get(&name).cloned().unwrap_or_default();
                for field in ["spec", "status"] {
                    let (a, b) = (&old[field], &now[field]);
                    let keys: std::collections::BTreeSet<&String> = a
                        .as_object()
                        .into_iter()
                        .chain(b.as_object())
                        .flat_map(|m| m.keys())
                        .collect();
                    for key in keys {
                        if a.get(key) != b.get(key) {
                            changes
                                .fields
                                .push(format!("{name}: {field}.{key}: {} -> {}", a[key], b[key]));
                        }
                    }
                }
                last.insert(name, now);
            }
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("the watch failed: {e:?}"),
        }
    }
    changes
}

async fn bench(options: &Options) {
    let n = options.budgets;
    let mut s = Tenant::new("idle-writes").await;
    // The operator's default log level: a benchmark does not pay for debug logging.
    s.operator = Some(Operator::start_with_env(&s.ns.name, &[("RUST_LOG", "info")]));
    let operator = s.operator.as_ref().expect("started");
    operator.wait_ready().await;
    println!(
        "idle writes: {n} budgets, each with 1 binding (interval {}) and 1 agent pod; namespace {}",
        options.interval, s.ns.name
    );

    let started = Instant::now();
    for i in 0..n {
        create(&s.budgets, budget(&format!("budget-{i}")).tokens(1_000_000_000)).await;
        create(&s.deployments, deployment(&format!("agent-{i}")).replicas(1)).await;
    }
    for i in 0..n {
        let pod = pods_of(&s.pods, &format!("agent-{i}"), 1).await.remove(0);
        let agent = Agent::start(&agent_ip(), &[]);
        run_pod(&s.pods, &pod, &agent.ip, 0).await;
        s.agents.push(agent);
    }
    for i in 0..n {
        let bb = binding(&format!("binding-{i}"), &format!("budget-{i}"))
            .deployment(&format!("agent-{i}"))
            .interval(&options.interval)
            .timeout("1s");
        create(&s.bindings, bb).await;
    }
    // Settled: every pod scraped, then two more cycles of every budget.
    within(
        async {
            loop {
                let list = s.bindings.list(&ListParams::default()).await.expect("bindings");
                let scraped = list
                    .items
                    .iter()
                    .filter(|bb| bb.status.as_ref().and_then(|st| st.scraped_pods) == Some(1))
                    .count();
                if scraped == n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        },
        "every binding to scrape its pod",
    )
    .await;
    let operator = s.operator.as_ref().expect("started");
    for _ in 0..2 {
        every_budget_cycled_after(operator, n, unix_now()).await;
    }
    println!("settled after {:.1?}", started.elapsed());

    // The window.
    let budgets = s.budgets.list(&ListParams::default()).await.expect("budgets");
    let bindings = s.bindings.list(&ListParams::default()).await.expect("bindings");
    let before = operator.metrics();
    let (budget_changes, binding_changes) = tokio::join!(
        count_changes::<TokenBudget>(s.budgets.clone(), budgets, options.idle),
        count_changes::<BudgetBinding>(s.bindings.clone(), bindings, options.idle),
    );
    let after = operator.metrics();
    let delta = |name: &str, labels: &str| total(&after, name, labels) - total(&before, name, labels);

    let minutes = options.idle.as_secs_f64() / 60.0;
    let per_minute = |count: f64| count / minutes;
    let written_budgets = delta("tokenbudget_status_writes_total", "kind=\"TokenBudget\"");
    let written_bindings = delta("tokenbudget_status_writes_total", "kind=\"BudgetBinding\"");
    let changed_budgets: u64 = budget_changes.per_object.values().sum();
    let changed_bindings: u64 = binding_changes.per_object.values().sum();
    println!(
        "window: {:?} idle; the operator ran {} budget reconciles ({}/min), {} binding reconciles, {} scrapes ({} ok)",
        options.idle,
        delta("tokenbudget_reconcile_total", "controller=\"tokenbudget\""),
        per_minute(delta("tokenbudget_reconcile_total", "controller=\"tokenbudget\"")),
        delta("tokenbudget_reconcile_total", "controller=\"budgetbinding\""),
        delta("tokenbudget_scrapes_total", ""),
        delta("tokenbudget_scrapes_total", "result=\"ok\""),
    );
    println!(
        "status writes (tokenbudget_status_writes_total): TokenBudget {written_budgets}, BudgetBinding {written_bindings}: \
         {:.1} writes/min",
        per_minute(written_budgets + written_bindings)
    );
    println!(
        "resourceVersion changes watched: TokenBudget {changed_budgets}, BudgetBinding {changed_bindings}: {:.1} writes/min",
        per_minute((changed_budgets + changed_bindings) as f64)
    );
    for (kind, changes) in [("TokenBudget", &budget_changes), ("BudgetBinding", &binding_changes)] {
        if !changes.per_object.is_empty() {
            println!("  changed {kind}s: {:?}", changes.per_object);
            for field in &changes.fields {
                println!("    {field}");
            }
        }
    }

    // Clean up while the operator runs, so that it releases the budgets' finalizers.
    s.budgets
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("the budgets deleted");
    within(
        async {
            for i in 0..n {
                let name = format!("budget-{i}");
                await_condition(s.budgets.clone(), &name, |o: Option<&TokenBudget>| o.is_none())
                    .await
                    .expect("watching a budget go");
            }
        },
        "the budgets to be gone",
    )
    .await;
}
