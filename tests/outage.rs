//! The control plane goes away in the middle of a run: the testbed's API server is stopped for
//! 30 s, then its etcd (`hack/testbed.sh stop|start apiserver|etcd`, data kept). Agents keep
//! spending meanwhile. The operator process lives through both, keeps scraping, and once the
//! API answers again every token is in the status, counted once; a workload it scaled down for
//! an exhausted budget stays down, nothing is restored, and enforcement works again.
//!
//! While the API server is down every watch has failed: the operator says so
//! (`tokenbudget_watch_synced` 0 for each resource, `tokenbudget_enforcement_held_total`
//! rising), keeps counting, and decides nothing until every watch has listed again; then the
//! gauges are back to 1.
//!
//! This stops the API server every test uses. `cargo test` runs test binaries one after
//! another, and this binary has one test (the scenarios in sequence), so nothing else talks to
//! the testbed meanwhile.

mod common;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use kube::api::{Patch, PatchParams};
use tokenbudget::{
    api::{BudgetPhase, EnforcementAction::ScaleDown, TokenBudget},
    enforce::PAUSED_REPLICAS,
};

/// How long each component stays down.
const OUTAGE: Duration = Duration::from_secs(30);

/// The testbed whose kubeconfig is `KUBECONFIG`, driven through `hack/testbed.sh`.
struct Testbed {
    script: PathBuf,
    dir: PathBuf,
}

impl Testbed {
    /// The testbed of `TESTBED_DIR` (as `hack/test.sh` sets it; the script's default
    /// otherwise), which must be the cluster of `KUBECONFIG`: this test stops only what it can
    /// start again.
    fn of_kubeconfig() -> Self {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let dir = std::env::var_os("TESTBED_DIR").map_or_else(|| repo.join(".testbed"), PathBuf::from);
        let ours = std::fs::canonicalize(dir.join("kubeconfig")).ok();
        let theirs = std::fs::canonicalize(kubeconfig()).ok();
        assert!(
            ours.is_some() && ours == theirs,
            "tests/outage.rs stops and starts the API server of hack/testbed.sh: KUBECONFIG ({}) must be \
             the kubeconfig of the testbed in TESTBED_DIR ({})",
            kubeconfig(),
            dir.display()
        );
        Self {
            script: repo.join("hack/testbed.sh"),
            dir,
        }
    }

    fn command(&self, action: &str, component: &str) -> Command {
        let mut command = Command::new(&self.script);
        command.args([action, component]).env("TESTBED_DIR", &self.dir);
        command
    }

    async fn run(&self, action: &str, component: &str) {
        let mut command = self.command(action, component);
        let status = tokio::task::spawn_blocking(move || command.status())
            .await
            .expect("the script runs")
            .expect("the script starts");
        assert!(status.success(), "hack/testbed.sh {action} {component}: {status}");
    }

    /// Stops `component` (`apiserver` or `etcd`); it is started again by
    /// [`Stopped::start`], or when the guard is dropped (a failed test leaves no testbed down).
    async fn stop(&self, component: &'static str) -> Stopped<'_> {
        let stopped = Stopped {
            testbed: self,
            component,
            down: true,
        };
        self.run("stop", component).await;
        stopped
    }
}

struct Stopped<'a> {
    testbed: &'a Testbed,
    component: &'static str,
    down: bool,
}

impl Stopped<'_> {
    /// Starts the component again; returns once the API server answers `/readyz`.
    async fn start(mut self) {
        self.testbed.run("start", self.component).await;
        self.down = false;
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if self.down {
            let _ = self.testbed.command("start", self.component).status();
        }
    }
}

fn used(tb: &TokenBudget) -> i64 {
    tb.status
        .as_ref()
        .and_then(|s| s.used.as_ref())
        .map_or(-1, |u| u.tokens)
}

impl Tenant {
    fn operator(&mut self) -> &mut Operator {
        self.operator.as_mut().expect("an operator")
    }

    /// The operator's series `name` of budget `budget`.
    fn budget_metric(&mut self, name: &str, budget: &str) -> Option<f64> {
        let series = format!("{name}{{name=\"{budget}\",namespace=\"{}\"}}", self.ns.name);
        self.operator().metric(&series)
    }

    /// Every series of `tokenbudget_watch_synced`: (resource, value).
    fn watches_synced(&mut self) -> Vec<(String, f64)> {
        let metrics = self.operator().get("/metrics").expect("the operator's metrics").1;
        metrics
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("tokenbudget_watch_synced{resource=\"")?;
                let (resource, value) = rest.split_once("\"} ")?;
                Some((resource.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }

    fn enforcement_actions(&mut self, action: &str) -> u64 {
        let series = format!("tokenbudget_enforcement_actions_total{{action=\"{action}\"}}");
        self.operator().metric(&series).map_or(0, |v| v as u64)
    }
}

/// What one outage showed.
struct Outcome {
    /// Tokens spent while the component was down.
    spent: i64,
    /// Of those, the tokens the operator had counted (its metric) before the component came back.
    counted_during: i64,
    /// From the API server answering again to the budget's status showing every token.
    resumed: Duration,
    /// From the API server answering again to every watch current again.
    resynced: Duration,
}

/// Stops `component` for [`OUTAGE`] while the agents of budget `counted` spend, starts it
/// again and waits until the status shows exactly `*spent` plus what was spent meanwhile.
async fn outage(testbed: &Testbed, s: &mut Tenant, component: &'static str, spent: &mut i64) -> Outcome {
    let before = *spent;
    let stopped = testbed.stop(component).await;
    let down = Instant::now();
    let mut counted_during = 0;
    let mut round = 0;
    while down.elapsed() < OUTAGE {
        // Agents are processes of their own: they keep spending, whatever the API server does.
        let tokens = 100 + round;
        s.agents[round as usize % 2].spend("gpt-4o-mini", tokens, 1);
        *spent += tokens as i64 + 1;
        round += 1;
        // The operator keeps its cycles going without an API server (retrying at most every
        // 10 s): the scrapes do not need it, and its metric is set from each cycle before the
        // status write that fails. (Without etcd, that write hangs until the API server gives
        // up on it.) The next spend once this one is counted, or the outage is over.
        while down.elapsed() < OUTAGE {
            let counted = s.budget_metric("tokenbudget_used_tokens", "counted").unwrap_or(0.0) as i64;
            counted_during = counted - before;
            if counted == *spent {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(s.operator().running(), "the operator exited while {component} was down");
    }
    let held = s.operator().metric("tokenbudget_enforcement_held_total").unwrap_or(0.0);
    let synced = s.watches_synced();
    if component == "apiserver" {
        // Every watch failed when the API server went: no store counts as current, and the
        // budgets' cycles (which went on counting) took no decision.
        assert_eq!(synced.len(), 9, "one series per watched resource: {synced:?}");
        assert!(
            synced.iter().all(|(_, v)| *v == 0.0),
            "watches still current without an API server: {synced:?}"
        );
        assert!(
            held > 0.0,
            "no reconcile held its decision while the API server was down"
        );
    }
    println!("{component} down: watches synced {synced:?}, {held} reconciles held");
    stopped.start().await;
    let back = Instant::now();
    let total = *spent;
    wait_for(
        &s.budgets,
        "counted",
        &format!("every one of {total} tokens in the status"),
        |tb| used(tb) == total,
    )
    .await;
    let resumed = back.elapsed();
    // Each watch lists again, and says so.
    within(
        async {
            while s.watches_synced().iter().any(|(_, v)| *v != 1.0) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
        "every watch current again",
    )
    .await;
    let resynced = back.elapsed();
    assert!(
        s.operator().running(),
        "the operator exited after {component} came back"
    );
    // The binding's status too (the binding controller reads the budget from the API).
    wait_for(&s.bindings, "counted", "the binding's usage", |bb| {
        bb.status.as_ref().and_then(|st| st.used_tokens) == Some(total)
    })
    .await;
    Outcome {
        spent: total - before,
        counted_during,
        resumed,
        resynced,
    }
}

#[tokio::test]
async fn the_operator_lives_through_outages_of_the_api_server_and_etcd_and_loses_no_token() {
    let testbed = Testbed::of_kubeconfig();
    let mut s = Tenant::new("outage").await.with_operator();
    s.operator().wait_ready().await;

    // A budget that counts, two agents spending for it.
    create(&s.budgets, budget("counted").tokens(1_000_000_000)).await;
    create(&s.bindings, binding("counted", "counted").deployment("spender")).await;
    create(&s.deployments, deployment("spender").replicas(2)).await;
    s.run_pods("spender", 2).await;
    // A budget exhausted before the outages, its Deployment scaled down.
    create(&s.budgets, budget("exhausted").tokens(100).action(ScaleDown)).await;
    create(&s.bindings, binding("exhausted", "exhausted").deployment("paused")).await;
    create(&s.deployments, deployment("paused").replicas(2)).await;
    s.run_pods("paused", 2).await;
    wait_scraped(&s.bindings, "counted", 2).await;
    wait_scraped(&s.bindings, "exhausted", 2).await;
    s.agents[2].spend("gpt-4o-mini", 150, 0);
    wait_for(&s.budgets, "exhausted", "phase Exhausted", |tb| {
        phase(tb) == Some(BudgetPhase::Exhausted)
    })
    .await;
    wait_for(&s.deployments, "paused", "the Deployment scaled to 0", |d| {
        d.spec.replicas == Some(0) && annotation(&d.metadata, PAUSED_REPLICAS) == Some("2")
    })
    .await;
    pods_of(&s.pods, "paused", 0).await;
    // Their pods are gone: the kubelet stops their agents.
    s.agents.truncate(2);

    let mut spent = 0;
    s.agents[0].spend("gpt-4o-mini", 1000, 0);
    spent += 1000;
    wait_for(&s.budgets, "counted", "the first tokens counted", |tb| {
        used(tb) == spent
    })
    .await;
    let scale_downs = s.enforcement_actions("scale_down");

    for (undone, component) in ["apiserver", "etcd"].into_iter().enumerate() {
        // The replicas kept for the restore: 2, then one more for each scale-up undone.
        let paused = 2 + undone as i32;
        let outcome = outage(&testbed, &mut s, component, &mut spent).await;
        println!(
            "{component} down for {OUTAGE:?}: {} tokens spent meanwhile, {} of them counted before it came back; \
             the status had all {spent} {:?} after the API server answered again, every watch current after {:?}",
            outcome.spent, outcome.counted_during, outcome.resumed, outcome.resynced
        );
        assert!(outcome.spent > 0);
        if component == "apiserver" {
            assert!(
                outcome.counted_during > 0,
                "nothing counted while the API server was down"
            );
        }
        // A reconcile that failed because the API server was unavailable retries within 10 s
        // (then one cycle of 1 s): not after the minutes its backoff could have reached. With
        // room for a loaded machine.
        assert!(
            outcome.resumed < Duration::from_secs(25),
            "the status took {:?} to catch up after {component} came back",
            outcome.resumed
        );

        // Still exhausted, still scaled down: nothing was restored, nothing else scaled.
        let tb = s.budgets.get("exhausted").await.expect("the budget");
        assert_eq!(phase(&tb), Some(BudgetPhase::Exhausted));
        assert_eq!(used(&tb), 150);
        let d = s.deployments.get("paused").await.expect("the Deployment");
        assert_eq!(d.spec.replicas, Some(0), "restored after the {component} outage");
        assert_eq!(
            annotation(&d.metadata, PAUSED_REPLICAS),
            Some(paused.to_string().as_str())
        );
        assert_eq!(s.enforcement_actions("restore"), 0);
        assert_eq!(
            s.enforcement_actions("scale_down"),
            scale_downs + undone as u64,
            "scaled down again"
        );

        // Enforcement works again: a scale-up by hand (a GitOps sync, say) is undone at once.
        let paused = paused + 1;
        s.deployments
            .patch_scale(
                "paused",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"replicas": paused}})),
            )
            .await
            .expect("scaled up by hand");
        let wanted = paused.to_string();
        wait_for(&s.deployments, "paused", "the scale-up undone", |d| {
            d.spec.replicas == Some(0) && annotation(&d.metadata, PAUSED_REPLICAS) == Some(wanted.as_str())
        })
        .await;
    }
    assert_eq!(s.enforcement_actions("restore"), 0);
}
