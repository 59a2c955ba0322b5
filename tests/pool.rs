//! Pools end to end, on the real API server: a ClusterTokenBudget over team budgets in two
//! namespaces it selects, and a third namespace it does not select. Agents spend; every token
//! counts once in its team's budget and once in the pool (the pool is the sum, to the token);
//! the pool running out scales both teams' workloads down (the pool's action, although the
//! teams' own budgets only annotate) and raising its limit restores them; the namespace not
//! selected is refused and never counted, however much it spends; a second budget of a team
//! naming the pool is refused (its tokens would count twice); a team budget deleted
//! mid-period leaves its tokens in the pool; an operator restart keeps everything exact.
//!
//! Pools need an operator over all namespaces, which reconciles whatever else is in the
//! cluster: the tests hold [`SERIAL`] for their whole length.

mod common;

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use common::*;
use jiff::{RoundMode, SignedDuration, Timestamp, TimestampRound, Unit};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use tokenbudget::{
    api::{BudgetPhase, ClusterTokenBudget, EnforcementAction, ParentRef, TokenBudget},
    clock::ManualClock,
    enforce::{PAUSED_REPLICAS, STATE},
};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A pool of the test's own (cluster-scoped, so removed when dropped), selecting the
/// namespaces labelled `pool.tokenbudget.io/test=<its name>`.
struct Pool {
    name: String,
    api: Api<ClusterTokenBudget>,
}

impl Pool {
    async fn new(client: &kube::Client, tokens: i64) -> Self {
        Self::selecting(client, tokens, "pool.tokenbudget.io/test").await
    }

    /// A pool selecting the namespaces whose label `key` is its name.
    async fn selecting(client: &kube::Client, tokens: i64, key: &str) -> Self {
        Self::with_period(client, tokens, key, "Monthly").await
    }

    async fn with_period(client: &kube::Client, tokens: i64, key: &str, reset: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "pool-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let api: Api<ClusterTokenBudget> = Api::all(client.clone());
        let ctb: ClusterTokenBudget = serde_json::from_value(serde_json::json!({
            "apiVersion": "tokenbudget.io/v1alpha1",
            "kind": "ClusterTokenBudget",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {"matchLabels": {key: name}},
                "limits": {"tokens": tokens},
                "period": {"reset": reset},
                "thresholds": [50],
                "pricing": [{"model": "gpt-4o-mini", "input": "0.15", "output": "0.60"}],
                "enforcement": {"action": "ScaleDown"},
            },
        }))
        .unwrap();
        create(&api, ctb).await;
        Self { name, api }
    }

    async fn wait(&self, what: &str, cond: impl Fn(&ClusterTokenBudget) -> bool) -> ClusterTokenBudget {
        wait_for(&self.api, &self.name, what, cond).await
    }

    async fn set_limit(&self, tokens: i64) {
        let patch = serde_json::json!({"spec": {"limits": {"tokens": tokens}}});
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("the pool's limit raised");
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = kubectl(
            &[
                "delete",
                "clustertokenbudget",
                &self.name,
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        );
    }
}

fn departed(ctb: &ClusterTokenBudget) -> Option<i64> {
    ctb.status.as_ref()?.departed.as_ref().map(|d| d.used.tokens)
}

fn children(ctb: &ClusterTokenBudget) -> Option<i64> {
    ctb.status.as_ref()?.children
}

/// Sets (or, with `None`, removes) label `key` of namespace `ns`.
async fn label(client: &kube::Client, ns: &str, key: &str, value: Option<&str>) {
    let patch = serde_json::json!({"metadata": {"labels": {key: value}}});
    Api::<Namespace>::all(client.clone())
        .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("namespace labelled");
}

fn used(ctb: &ClusterTokenBudget) -> Option<i64> {
    ctb.status.as_ref()?.used.as_ref().map(|u| u.tokens)
}

fn share(tb: &TokenBudget) -> Option<i64> {
    tb.status.as_ref()?.parent.as_ref().map(|p| p.used.tokens)
}

fn own(tb: &TokenBudget) -> Option<i64> {
    tb.status.as_ref()?.used.as_ref().map(|u| u.tokens)
}

fn condition<'a>(tb: &'a TokenBudget, type_: &str) -> Option<(&'a str, &'a str)> {
    let c = tb.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.as_str(), c.reason.as_str()))
}

/// A team: a namespace (labelled for `pool`, or not), a Deployment `agent` of one pod whose
/// kubelet the test plays, a budget `team` drawing from the pool with a large limit of its own
/// and only annotating, and a binding.
async fn team(test: &str, pool: &Pool, selected: bool) -> Tenant {
    let mut t = Tenant::new(test).await;
    if selected {
        let label = serde_json::json!({"metadata": {"labels": {"pool.tokenbudget.io/test": pool.name}}});
        Api::<Namespace>::all(t.client.clone())
            .patch(&t.ns.name, &PatchParams::default(), &Patch::Merge(&label))
            .await
            .expect("namespace labelled");
    }
    create(&t.deployments, deployment("agent").replicas(1)).await;
    t.run_pods("agent", 1).await;
    let mut tb = budget("team")
        .tokens(1_000_000)
        .action(EnforcementAction::Annotate)
        .build();
    tb.spec.parent_ref = Some(ParentRef {
        name: pool.name.clone(),
    });
    create(&t.budgets, tb).await;
    create(&t.bindings, binding("agent", "team").deployment("agent")).await;
    wait_scraped(&t.bindings, "agent", 1).await;
    t
}

#[tokio::test]
async fn a_pool_counts_its_teams_tokens_once_enforces_on_them_all_and_keeps_what_departed_teams_spent() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    ensure_crds(&client).await;
    let pool = Pool::new(&client, 10_000).await;
    let mut operator = Operator::start_all_namespaces();
    operator.wait_ready().await;
    let a = team("pool-a", &pool, true).await;
    let mut b = team("pool-b", &pool, true).await;
    let c = team("pool-not-selected", &pool, false).await;

    // Selection: `a` and `b` are accepted, `c` is refused and never counted.
    for t in [&a, &b] {
        wait_for(&t.budgets, "team", "ParentAccepted", |tb| {
            condition(tb, "ParentAccepted") == Some(("True", "Accepted"))
        })
        .await;
    }
    wait_for(&c.budgets, "team", "ParentAccepted=False, NamespaceNotSelected", |tb| {
        condition(tb, "ParentAccepted") == Some(("False", "NamespaceNotSelected"))
    })
    .await;
    pool.wait("two children", |p| {
        p.status.as_ref().and_then(|s| s.children) == Some(2)
    })
    .await;

    // Spending: each token once in its team and once in the pool, to the token. `c` spends
    // far beyond the pool's limit: it neither counts nor exhausts anyone.
    c.agents[0].spend("gpt-4o-mini", 50_000, 0);
    a.agents[0].spend("gpt-4o-mini", 1000, 200);
    b.agents[0].spend("gpt-4o-mini", 300, 100);
    wait_for(&c.budgets, "team", "c's own tokens counted", |tb| {
        own(tb) == Some(50_000)
    })
    .await;
    wait_for(&a.budgets, "team", "a's 1200 tokens", |tb| own(tb) == Some(1200)).await;
    wait_for(&b.budgets, "team", "b's 400 tokens", |tb| own(tb) == Some(400)).await;
    let p = pool.wait("the pool at 1600 tokens", |p| used(p) == Some(1600)).await;
    wait_for(&a.budgets, "team", "a's share of 1200", |tb| share(tb) == Some(1200)).await;
    wait_for(&b.budgets, "team", "b's share of 400", |tb| share(tb) == Some(400)).await;
    let status = p.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(BudgetPhase::Active));
    let shares: Vec<_> = status
        .shares
        .iter()
        .map(|s| (s.namespace.as_str(), s.used.tokens))
        .collect();
    assert_eq!(shares, [(a.ns.name.as_str(), 1200), (b.ns.name.as_str(), 400)]);
    // Cost at the pool's prices: 1300 input at 0.15, 300 output at 0.60 per million.
    assert_eq!(status.used.as_ref().unwrap().cost.as_deref(), Some("0.000375"));
    let tc = c.budgets.get("team").await.unwrap();
    assert_eq!(share(&tc), None, "a refused budget has no share");
    assert_ne!(phase(&tc), Some(BudgetPhase::Exhausted));

    // A second budget of team `b` naming the pool, over the same workload, is refused: the
    // pool would count b's tokens twice.
    let mut second = budget("second").tokens(1_000_000).build();
    second.spec.parent_ref = Some(ParentRef {
        name: pool.name.clone(),
    });
    create(&b.budgets, second).await;
    create(&b.bindings, binding("second", "second").deployment("agent")).await;
    wait_for(
        &b.budgets,
        "second",
        "ParentAccepted=False, AnotherChildInNamespace",
        |tb| condition(tb, "ParentAccepted") == Some(("False", "AnotherChildInNamespace")),
    )
    .await;
    wait_scraped(&b.bindings, "second", 1).await;
    b.agents[0].spend("gpt-4o-mini", 100, 0);
    wait_for(&b.budgets, "second", "b's tokens in the second budget", |tb| {
        own(tb) == Some(100)
    })
    .await;
    wait_for(&b.budgets, "team", "b's share of 500", |tb| share(tb) == Some(500)).await;
    pool.wait("the pool at 1700 tokens, b's once", |p| used(p) == Some(1700))
        .await;

    // The pool runs out: both teams' workloads go to 0 (the pool's ScaleDown), `c`'s stays.
    a.agents[0].spend("gpt-4o-mini", 8300, 0);
    pool.wait("the pool exhausted at 10000", |p| {
        used(p) == Some(10_000) && p.status.as_ref().and_then(|s| s.phase) == Some(BudgetPhase::Exhausted)
    })
    .await;
    for t in [&a, &b] {
        let tb = wait_for(&t.budgets, "team", "exhausted by the pool", |tb| {
            condition(tb, "Exhausted") == Some(("True", "ParentExhausted"))
        })
        .await;
        assert_eq!(phase(&tb), Some(BudgetPhase::Exhausted));
        assert!(own(&tb).unwrap() < 1_000_000, "the team's own limit is not reached");
        let d = wait_for(&t.deployments, "agent", "the team's Deployment scaled to 0", |d| {
            d.spec.replicas == Some(0)
        })
        .await;
        assert_eq!(annotation(&d.metadata, PAUSED_REPLICAS), Some("1"));
        assert_eq!(annotation(&d.metadata, STATE), Some("exhausted"));
    }
    let d = c.deployments.get("agent").await.unwrap();
    assert_eq!(d.spec.replicas, Some(1), "the namespace not selected is untouched");
    assert_eq!(annotation(&d.metadata, STATE), Some("ok"));

    // The pool raised: both restored exactly.
    pool.set_limit(1_000_000).await;
    for t in [&a, &b] {
        let d = wait_for(&t.deployments, "agent", "the team's Deployment restored to 1", |d| {
            d.spec.replicas == Some(1) && annotation(&d.metadata, PAUSED_REPLICAS).is_none()
        })
        .await;
        assert_eq!(annotation(&d.metadata, STATE), Some("ok"));
        wait_for(&t.budgets, "team", "room again", |tb| {
            condition(tb, "Exhausted") == Some(("False", "WithinLimits"))
        })
        .await;
    }

    // The restored Deployment's new pod runs, with a new agent (the old pod's is gone).
    b.run_pods("agent", 1).await;

    // Team `a` deleted mid-period: its 9500 tokens stay in the pool, kept as departed.
    delete(&a.budgets, "team").await;
    wait_gone(&a.budgets, "team", "a's budget gone (its finalizer released)").await;
    let p = pool
        .wait("a's share kept as departed", |p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.children == Some(1) && s.departed.is_some())
        })
        .await;
    let status = p.status.as_ref().unwrap();
    assert_eq!(used(&p), Some(10_000), "no token vanished");
    assert_eq!(status.departed.as_ref().unwrap().used.tokens, 9500);
    assert_eq!(status.departed.as_ref().unwrap().children[0].namespace, a.ns.name);

    // The operator restarted: nothing counted twice, nothing lost.
    drop(operator);
    operator = Operator::start_all_namespaces();
    operator.wait_ready().await;
    b.agents.last().unwrap().spend("gpt-4o-mini", 7, 3);
    wait_for(&b.budgets, "team", "b's share of 510", |tb| share(tb) == Some(510)).await;
    let p = pool.wait("the pool at 10010 tokens", |p| used(p) == Some(10_010)).await;
    assert_eq!(p.status.unwrap().departed.unwrap().used.tokens, 9500);
    assert!(operator.running());
    assert!(!operator.logs().contains("panicked"), "{}", operator.logs());
}

/// Two ordinary edits in the middle of a period: the team moves its budget to another pool
/// (its own edit), then the cluster admin takes its namespace out of that pool's selection.
/// What the team spent under each pool stays in that pool, to the token; what it spends
/// afterwards counts only where it draws from then, and never twice.
#[tokio::test]
async fn a_team_that_moves_to_another_pool_or_leaves_the_selection_leaves_its_tokens_where_they_were_spent() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    ensure_crds(&client).await;
    let first = Pool::new(&client, 1_000_000).await;
    let second = Pool::selecting(&client, 1_000_000, "pool.tokenbudget.io/second").await;
    let operator = Operator::start_all_namespaces();
    operator.wait_ready().await;
    let a = team("pool-move", &first, true).await;
    label(&client, &a.ns.name, "pool.tokenbudget.io/second", Some(&second.name)).await;

    a.agents[0].spend("gpt-4o-mini", 1000, 0);
    first.wait("the first pool at 1000", |p| used(p) == Some(1000)).await;

    // The team names the second pool: the first keeps the 1000 as departed.
    let patch = serde_json::json!({"spec": {"parentRef": {"name": second.name}}});
    a.budgets
        .patch("team", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("parentRef changed");
    wait_for(&a.budgets, "team", "a share of the second pool", |tb| {
        tb.status
            .as_ref()
            .and_then(|s| s.parent.as_ref())
            .is_some_and(|p| p.name == second.name)
            && condition(tb, "ParentAccepted") == Some(("True", "Accepted"))
    })
    .await;
    first
        .wait("the first pool keeps the 1000 as departed", |p| {
            used(p) == Some(1000) && departed(p) == Some(1000) && children(p) == Some(0)
        })
        .await;

    a.agents[0].spend("gpt-4o-mini", 200, 0);
    wait_for(&a.budgets, "team", "a's own 1200", |tb| own(tb) == Some(1200)).await;
    second.wait("the second pool at 200", |p| used(p) == Some(200)).await;
    wait_for(&a.budgets, "team", "a's share of 200", |tb| share(tb) == Some(200)).await;

    // The namespace taken out of the second pool's selection: it keeps the 200.
    label(&client, &a.ns.name, "pool.tokenbudget.io/second", None).await;
    wait_for(&a.budgets, "team", "ParentAccepted=False, NamespaceNotSelected", |tb| {
        condition(tb, "ParentAccepted") == Some(("False", "NamespaceNotSelected"))
    })
    .await;
    second
        .wait("the second pool keeps the 200 as departed", |p| {
            used(p) == Some(200) && departed(p) == Some(200) && children(p) == Some(0)
        })
        .await;
    a.agents[0].spend("gpt-4o-mini", 50, 0);
    wait_for(&a.budgets, "team", "a's own 1250", |tb| own(tb) == Some(1250)).await;
    let (p1, p2) = (
        first.api.get(&first.name).await.unwrap(),
        second.api.get(&second.name).await.unwrap(),
    );
    assert_eq!(
        (used(&p1), used(&p2)),
        (Some(1000), Some(200)),
        "neither pool counts the 50"
    );
    assert!(!operator.logs().contains("panicked"), "{}", operator.logs());
}

/// `kubectl tokenbudget report --pool` of the pool's one ended hour, on the real pool: by child
/// (the default with --pool), each team's row is what its agent spent, to the token and the
/// exact cost at the pool's prices (a: 1,000 input at 0.15 and 100 output at 0.60 per million,
/// 0.00021; b: 300 input, 0.000045), and the rows add up to the entry (1,400 tokens,
/// 0.000255 USD), with nothing left for "(other)". A pool that does not exist is an error.
fn report_of_the_pool_adds_up(pool: &str, team_a: &str, team_b: &str) {
    let plugin = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-tokenbudget"))
            .arg("report")
            .args(args)
            .env("KUBECONFIG", kubeconfig())
            .output()
            .expect("the plugin runs")
    };
    let report = |args: &[&str]| -> String {
        let out = plugin(&[&["--pool", pool], args].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).expect("UTF-8");
        eprintln!("$ kubectl tokenbudget report --pool {pool} {}\n{text}", args.join(" "));
        text
    };
    let csv = |args: &[&str]| -> Vec<Vec<String>> {
        let text = report(&[args, &["-o", "csv"]].concat());
        let mut rows: Vec<Vec<String>> = text
            .lines()
            .skip(1)
            .map(|line| line.trim_end_matches('\r').split(',').map(String::from).collect())
            .collect();
        rows.sort();
        rows
    };
    let row = |fields: &[&str]| -> Vec<String> { fields.iter().map(|f| f.to_string()).collect() };
    let by_child = [
        row(&[team_a, "team", "USD", "1", "1100", "0.00021"]),
        row(&[team_b, "team", "USD", "1", "300", "0.000045"]),
    ];
    assert_eq!(csv(&[]), by_child);
    assert_eq!(csv(&["--by", "child", "--last", "1"]), by_child);
    assert_eq!(
        csv(&["--by", "model"]),
        [row(&["gpt-4o-mini", "USD", "1300", "100", "1400", "0.000255"])]
    );
    // The table's TOTAL line says the same.
    let table = report(&[]);
    let total: Vec<&str> = table
        .lines()
        .find(|line| line.starts_with("TOTAL"))
        .expect("a TOTAL line")
        .split_whitespace()
        .collect();
    assert_eq!(total[total.len() - 3..], ["1,400", "0.000255", "USD"], "{table}");

    let missing = format!("{pool}-missing");
    let out = plugin(&["--pool", &missing]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("error: ClusterTokenBudget {missing:?} not found\n")
    );
}

/// A full hour some hours ahead of the wall clock: the operator's clock lives around it, after
/// every real timestamp of the test.
fn boundary() -> Timestamp {
    let hour = TimestampRound::new().smallest(Unit::Hour).mode(RoundMode::Ceil);
    (Timestamp::now() + SignedDuration::from_hours(2)).round(hour).unwrap()
}

/// Whether the team's share is of the pool's period starting at `start`, with its share of
/// the period before kept in `ended`.
fn rolled_over(tb: &TokenBudget, start: Timestamp) -> bool {
    tb.status
        .as_ref()
        .and_then(|s| s.parent.as_ref())
        .is_some_and(|p| p.period_start.parse::<Timestamp>().ok() == Some(start) && p.ended.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_ended_period_is_recorded_once_with_its_teams_exact_totals() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    ensure_crds(&client).await;
    let boundary = boundary();
    let clock = ManualClock::new(boundary - SignedDuration::from_mins(10));
    let pool = Pool::with_period(&client, 1_000_000, "pool.tokenbudget.io/test", "Hourly").await;
    let operator = InProcessOperator::start_all_namespaces(&client, Arc::new(clock.clone())).await;
    let a = team("pool-history-a", &pool, true).await;
    let b = team("pool-history-b", &pool, true).await;

    a.agents[0].spend("gpt-4o-mini", 1000, 100);
    b.agents[0].spend("gpt-4o-mini", 300, 0);
    let p = pool.wait("the pool at 1400", |p| used(p) == Some(1400)).await;
    assert!(p.status.unwrap().history.is_empty(), "no period has ended yet");

    // The boundary passes: each team's next cycle starts its share of the new hour and keeps
    // its final share of the old one; the pool writes one entry of the old hour.
    clock.set(boundary + SignedDuration::from_secs(1));
    for t in [&a, &b] {
        wait_for(&t.budgets, "team", "the share rolled over", |tb| {
            rolled_over(tb, boundary)
        })
        .await;
    }
    let p = pool
        .wait("one entry of the ended hour", |p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.history.len() == 1 && s.history[0].used.tokens == 1400 && s.last_period.is_some())
        })
        .await;
    assert_eq!(used(&p), Some(0), "the new hour starts from zero");
    let status = p.status.unwrap();
    let entry = &status.history[0];
    assert_eq!(
        entry.period_start.parse::<Timestamp>().ok(),
        Some(boundary - SignedDuration::from_hours(1))
    );
    assert_eq!(entry.period_end.parse::<Timestamp>().ok(), Some(boundary));
    assert_eq!((entry.used.input, entry.used.output), (1300, 100));
    // 1,300 input at 0.15 and 100 output at 0.60 per million.
    assert_eq!(entry.used.cost.as_deref(), Some("0.000255"));
    assert_eq!(entry.currency, "USD");
    assert_eq!(entry.models.len(), 1);
    let children: Vec<_> = entry
        .children
        .iter()
        .map(|c| (c.namespace.as_str(), c.tokens))
        .collect();
    assert_eq!(children, [(a.ns.name.as_str(), 1100), (b.ns.name.as_str(), 300)]);
    report_of_the_pool_adds_up(&pool.name, &a.ns.name, &b.ns.name);

    // What is spent now counts in the new hour; the entry stays as it is, once.
    a.agents[0].spend("gpt-4o-mini", 7, 0);
    let later = pool.wait("the new hour at 7", |p| used(p) == Some(7)).await;
    assert_eq!(later.status.unwrap().history, status.history);
    operator.stop().await;
}
