//! Enforcement next to the rest of the cluster: a HorizontalPodAutoscaler on a workload the
//! operator scales down, and an operator watching every namespace, where a workload of the
//! same name and labels in a namespace without a budget must stay untouched.
//!
//! The second test starts an operator over all namespaces, which would also reconcile the
//! budgets of any other test of this binary running beside it: the tests here take
//! [`SERIAL`] for their whole length, so they never overlap.

mod common;

use std::time::Instant;

use common::*;
use k8s_openapi::{
    api::{apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscalerCondition},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, ListParams, PostParams},
};
use tokenbudget::{
    api::{BudgetPhase, EnforcementAction::ScaleDown, TokenBudget, WorkloadKind},
    enforce::{BUDGET, PAUSED_REPLICAS, STATE},
};

/// Held by every test of this file from start to end: see the module comment.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The operator's annotations on an object (there should be none on a workload it does not own).
fn ours(meta: &ObjectMeta) -> Vec<String> {
    meta.annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("tokenbudget.io/"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

fn used_tokens(tb: &TokenBudget) -> Option<i64> {
    Some(tb.status.as_ref()?.used.as_ref()?.tokens)
}

/// The budgets of these tests: one threshold, at 50%, and scale-down when exhausted.
fn scaling(name: &str, tokens: i64) -> BudgetBuilder {
    budget(name).tokens(tokens).thresholds(&[50]).action(ScaleDown)
}

impl Tenant {
    /// Creates Deployment `name` (labels `app: name`, `team: research`).
    async fn deploy(&self, name: &str, replicas: i32) -> Deployment {
        create(&self.deployments, deployment(name).replicas(replicas)).await
    }

    async fn bind(&self, budget: BudgetBuilder, binding: BindingBuilder) {
        create(&self.budgets, budget).await;
        create(&self.bindings, binding).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 1. HorizontalPodAutoscaler

/// autoscaling/v2 HorizontalPodAutoscalers, written as the YAML a user would apply.
fn hpa_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "autoscaling".into(),
        version: "v2".into(),
        api_version: "autoscaling/v2".into(),
        kind: "HorizontalPodAutoscaler".into(),
        plural: "horizontalpodautoscalers".into(),
    };
    Api::namespaced_with(client.clone(), ns, &resource)
}

fn hpa(target: &str, min: i32, max: i32) -> DynamicObject {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": target},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": min,
            "maxReplicas": max,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}
            }}]
        }
    }))
    .unwrap()
}

fn hpa_conditions(hpa: &DynamicObject) -> Vec<HorizontalPodAutoscalerCondition> {
    hpa.data
        .pointer("/status/conditions")
        .filter(|c| !c.is_null())
        .cloned()
        .map(|c| serde_json::from_value(c).expect("HPA conditions parse"))
        .unwrap_or_default()
}

/// (status, reason) of one HPA condition.
fn hpa_condition(hpa: &DynamicObject, type_: &str) -> Option<(String, String)> {
    hpa_conditions(hpa)
        .into_iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason.unwrap_or_default()))
}

fn hpa_replicas(hpa: &DynamicObject) -> (Option<i64>, Option<i64>) {
    let field = |f: &str| hpa.data.pointer(&format!("/status/{f}")).and_then(|v| v.as_i64());
    // autoscaling/v2 omits a currentReplicas of 0 from a status it has written.
    let current = hpa
        .data
        .pointer("/status")
        .map(|_| field("currentReplicas").unwrap_or(0));
    (current, field("desiredReplicas"))
}

/// One line per condition, for the test's output (and the docs).
fn show_hpa(stage: &str, hpa: &DynamicObject, started: Instant) {
    println!("[{:>5.1}s] HPA {stage}:", started.elapsed().as_secs_f64());
    let (current, desired) = hpa_replicas(hpa);
    println!("    currentReplicas={current:?} desiredReplicas={desired:?}");
    for c in hpa_conditions(hpa) {
        println!(
            "    {} {} {}: {}",
            c.type_,
            c.status,
            c.reason.unwrap_or_default(),
            c.message.unwrap_or_default()
        );
    }
}

#[tokio::test]
async fn hpa_stops_while_its_deployment_is_scaled_down_and_works_again_after_the_restore() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let mut t = Tenant::new("hpa-interplay").await;
    // The HPA first: its controller looks at an HPA one sync period (15 s by default) after
    // it appears and every period after that, whatever else happens, so everything below
    // usually runs inside its first period and the test waits for two of its visits, not
    // three (when setup is slower, the first wait below takes one period more).
    t.deploy("agent", 2).await;
    let hpas = hpa_api(&t.client, &t.ns.name);
    hpas.create(&PostParams::default(), &hpa("agent", 2, 4))
        .await
        .expect("HPA created");
    let _operator = Operator::start(&t.ns.name);
    t.run_pods("agent", 2).await;
    t.bind(
        scaling("research", 1000),
        binding("agents", "research").deployment("agent"),
    )
    .await;
    // Marked ok, and both pods' counters read once: what they spend now counts.
    wait_for(&t.deployments, "agent", "the Deployment marked ok", |d| {
        annotation(&d.metadata, STATE) == Some("ok")
    })
    .await;
    wait_scraped(&t.bindings, "agents", 2).await;

    // Exhausted: scaled to 0 through the scale subresource, 2 kept for the restore.
    t.agents[0].spend("gpt-4o-mini", 800, 300);
    let d = wait_for(&t.deployments, "agent", "the Deployment scaled to 0", |d| {
        d.spec.replicas == Some(0)
    })
    .await;
    assert_eq!(annotation(&d.metadata, PAUSED_REPLICAS), Some("2"));
    println!("[{:>5.1}s] Deployment scaled to 0", started.elapsed().as_secs_f64());

    // The HPA sees a target at 0 replicas and stands aside: it does not scale it back up
    // to its minReplicas (2), which would undo the enforcement.
    let h = wait_for(&hpas, "agent", "the HPA's ScalingActive=False ScalingDisabled", |h| {
        hpa_condition(h, "ScalingActive") == Some(("False".into(), "ScalingDisabled".into()))
    })
    .await;
    show_hpa("while the budget is exhausted", &h, started);
    assert_eq!(
        hpa_condition(&h, "AbleToScale"),
        Some(("True".into(), "SucceededGetScale".into()))
    );
    assert_eq!(hpa_replicas(&h), (Some(0), Some(0)));
    let d = t.deployments.get("agent").await.unwrap();
    assert_eq!(d.spec.replicas, Some(0), "the HPA must leave a Deployment at 0 alone");
    assert_eq!(annotation(&d.metadata, PAUSED_REPLICAS), Some("2"));

    // Room again: restored to 2, and at its next visit the HPA works on it again. With no
    // metrics server on the testbed it then fails to read CPU (FailedGetResourceMetric), which
    // is the HPA back at work: it only reads metrics for a target it scales.
    set_token_limit(&t.budgets, "research", 1_000_000).await;
    let d = wait_for(&t.deployments, "agent", "the Deployment restored to 2", |d| {
        d.spec.replicas == Some(2) && annotation(&d.metadata, PAUSED_REPLICAS).is_none()
    })
    .await;
    assert_eq!(annotation(&d.metadata, STATE), Some("ok"));
    println!("[{:>5.1}s] Deployment restored to 2", started.elapsed().as_secs_f64());
    let h = wait_for(&hpas, "agent", "the HPA to act on the Deployment again", |h| {
        hpa_condition(h, "ScalingActive").is_some_and(|(_, reason)| reason != "ScalingDisabled")
            && hpa_replicas(h).0 != Some(0)
    })
    .await;
    show_hpa("after the restore", &h, started);
    assert_eq!(
        hpa_condition(&h, "AbleToScale"),
        Some(("True".into(), "SucceededGetScale".into()))
    );
    assert_eq!(hpa_replicas(&h).0, Some(2));
    // Nobody fights over the count: the HPA (min 2) and the operator both leave it at 2.
    let d = t.deployments.get("agent").await.unwrap();
    assert_eq!(d.spec.replicas, Some(2));
    pods_of(&t.pods, "agent", 2).await;
    let tb = t.budgets.get("research").await.unwrap();
    assert_eq!(phase(&tb), Some(BudgetPhase::Active));
    assert!(tb.status.as_ref().is_some_and(|s| s.enforced.is_empty()), "{tb:?}");
    println!("[{:>5.1}s] done", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// 2. Namespace isolation

/// Every TokenBudget outside `mine`: (namespace/name, being deleted).
async fn other_budgets(client: &Client, mine: &[&str]) -> Vec<(String, bool)> {
    let all: Api<TokenBudget> = Api::all(client.clone());
    let mut found: Vec<(String, bool)> = all
        .list(&ListParams::default())
        .await
        .expect("budgets listed")
        .items
        .into_iter()
        .filter(|tb| !mine.contains(&tb.namespace().unwrap_or_default().as_str()))
        .map(|tb| {
            (
                format!("{}/{}", tb.namespace().unwrap_or_default(), tb.name_any()),
                tb.metadata.deletion_timestamp.is_some(),
            )
        })
        .collect();
    found.sort();
    found
}

/// Asserts that the operator never touched Deployment `agent` of `t` nor its pods: the same
/// spec generation and replicas, the same pods, none of the operator's annotations, no Event
/// of the operator in the namespace.
async fn assert_untouched(t: &Tenant, before: &Deployment, pods_before: &[String], stage: &str) {
    let d = t.deployments.get("agent").await.unwrap();
    assert_eq!(
        d.spec.replicas,
        Some(2),
        "{stage}: replicas of the Deployment in the other namespace"
    );
    assert_eq!(
        d.metadata.generation, before.metadata.generation,
        "{stage}: its spec was changed"
    );
    assert_eq!(
        ours(&d.metadata),
        Vec::<String>::new(),
        "{stage}: Deployment annotations"
    );
    let pods = pods_of(&t.pods, "agent", pods_before.len()).await;
    assert_eq!(pods, pods_before, "{stage}: its pods were replaced");
    for name in &pods {
        let pod = t.pods.get(name).await.unwrap();
        assert_eq!(
            ours(&pod.metadata),
            Vec::<String>::new(),
            "{stage}: annotations of pod {name}"
        );
    }
    let events = t.events.list(&ListParams::default()).await.unwrap();
    let from_operator: Vec<_> = events
        .items
        .iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("tokenbudget-operator"))
        .map(|e| format!("{:?}: {:?}", e.reason, e.note))
        .collect();
    assert!(from_operator.is_empty(), "{stage}: Events there: {from_operator:?}");
}

#[tokio::test]
async fn an_operator_over_all_namespaces_enforces_a_selector_only_in_its_bindings_namespace() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    // Two namespaces, each with Deployment `agent` labelled `team: research`, 2 pods each
    // with an agent. Only `a` has a budget and a binding that selects `team: research`.
    let mut a = Tenant::new("isolation-bound").await;
    let mut b = Tenant::new("isolation-free").await;
    a.deploy("agent", 2).await;
    let b_deployment = b.deploy("agent", 2).await;
    a.run_pods("agent", 2).await;
    let b_pods = b.run_pods("agent", 2).await;

    // Other namespaces may still hold budgets: those of earlier test binaries (their
    // namespaces are deleted, but wait for the budgets' finalizers, which only a running
    // operator removes) or of runs that were killed. This operator reconciles them too;
    // everything below looks only at `a` and `b`, so they cannot change the outcome.
    let mine = [a.ns.name.as_str(), b.ns.name.as_str()];
    let leftovers = other_budgets(&a.client, &mine).await;
    println!(
        "budgets in other namespaces before: {} ({} being deleted)",
        leftovers.len(),
        leftovers.iter().filter(|(_, deleting)| *deleting).count()
    );
    let operator = Operator::start_all_namespaces();
    operator.wait_ready().await;

    let team = binding("team", "research").selecting(WorkloadKind::Deployment, &[("team", "research")]);
    a.bind(scaling("research", 1000), team).await;
    // The selector matches one workload and its 2 pods, all in `a`, and all read once (so what
    // they spend from now on counts).
    let bb = wait_for(&a.bindings, "team", "both pods of the binding scraped", |bb| {
        bb.status.as_ref().and_then(|s| s.scraped_pods) == Some(2)
    })
    .await;
    let status = bb.status.unwrap();
    assert_eq!((status.workloads, status.pods), (Some(1), Some(2)), "{status:?}");

    // `b`'s agents spend first and far more than the limit; then `a` just exhausts the
    // budget. Only `a`'s tokens count.
    b.agents[0].spend("gpt-4o-mini", 5000, 5000);
    b.agents[1].spend("gpt-4o-mini", 5000, 5000);
    a.agents[0].spend("gpt-4o-mini", 800, 300);
    let tb = wait_for(&a.budgets, "research", "phase Exhausted", |tb| {
        phase(tb) == Some(BudgetPhase::Exhausted)
    })
    .await;
    assert_eq!(used_tokens(&tb), Some(1100), "only the bound namespace's tokens count");
    let d = wait_for(&a.deployments, "agent", "the Deployment in `a` scaled to 0", |d| {
        d.spec.replicas == Some(0)
    })
    .await;
    assert_eq!(annotation(&d.metadata, PAUSED_REPLICAS), Some("2"));
    assert_eq!(annotation(&d.metadata, BUDGET), Some("research"));
    pods_of(&a.pods, "agent", 0).await;
    // The status is written after every write of the cycle: by now anything done to `b`
    // would be visible.
    let tb = wait_for(&a.budgets, "research", "status.enforced written", |tb| {
        tb.status.as_ref().is_some_and(|s| !s.enforced.is_empty())
    })
    .await;
    let enforced: Vec<_> = tb
        .status
        .as_ref()
        .unwrap()
        .enforced
        .iter()
        .map(|e| format!("{}/{} {}", e.kind.as_str(), e.name, e.action))
        .collect();
    assert_eq!(enforced, ["Deployment/agent ScaleDown"]);
    assert_untouched(&b, &b_deployment, &b_pods, "while exhausted").await;
    println!("[{:>5.1}s] exhausted, `b` untouched", started.elapsed().as_secs_f64());

    // Room again: `a` comes back, `b` still untouched.
    set_token_limit(&a.budgets, "research", 1_000_000).await;
    let d = wait_for(&a.deployments, "agent", "the Deployment in `a` restored to 2", |d| {
        d.spec.replicas == Some(2) && annotation(&d.metadata, PAUSED_REPLICAS).is_none()
    })
    .await;
    assert_eq!(annotation(&d.metadata, STATE), Some("ok"));
    wait_for(&a.budgets, "research", "nothing enforced any more", |tb| {
        phase(tb) == Some(BudgetPhase::Active) && tb.status.as_ref().is_some_and(|s| s.enforced.is_empty())
    })
    .await;
    wait_event(&a.events, "a Restored Event", |e| {
        e.reason.as_deref() == Some("Restored")
    })
    .await;
    assert_untouched(&b, &b_deployment, &b_pods, "after the restore").await;
    println!("[{:>5.1}s] restored, `b` untouched", started.elapsed().as_secs_f64());

    // What the operator did meanwhile to the leftovers (for the record, not asserted).
    let after = other_budgets(&a.client, &mine).await;
    let released: Vec<_> = leftovers
        .iter()
        .filter(|(key, _)| !after.iter().any(|(k, _)| k == key))
        .map(|(key, _)| key.as_str())
        .collect();
    println!(
        "budgets in other namespaces after: {} ({} being deleted); gone meanwhile: {released:?}",
        after.len(),
        after.iter().filter(|(_, deleting)| *deleting).count()
    );
}
