//! `tokenbudget-operator release`, the Helm chart's pre-delete hook, run as the real binary
//! against the real API server: budgets exhausted, their workloads scaled to 0 and suspended,
//! their quota frozen; the operator stopped; then every workload comes back exactly, the
//! finalizers go, the budgets and bindings stay, and deleting the CRDs completes.
//!
//! One test: its last part releases every namespace and deletes the CRDs, which no other test
//! of this binary may see.

mod common;

use common::*;
use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        batch::v1::{CronJob, Job},
        core::v1::ResourceQuota,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{Api, ResourceExt, api::ListParams};
use tokenbudget::{
    api::{
        BudgetPhase,
        EnforcementAction::{Annotate, ScaleDown},
        TokenBudget, WorkloadKind,
    },
    enforce::{FINALIZER, PAUSED_REPLICAS, STATE, SUSPENDED},
};

/// Runs `tokenbudget-operator release ARGS` as the chart's hook does; returns its exit status
/// and its log.
async fn release(args: &[&str]) -> (bool, String) {
    kubeconfig();
    let out = within(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tokenbudget-operator"))
            .arg("release")
            .args(args)
            .env("RUST_LOG", "info")
            .output(),
        "tokenbudget-operator release",
    )
    .await
    .expect("tokenbudget-operator release runs");
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// No `tokenbudget.io/*` annotation left on the object.
fn unmarked(meta: &kube::api::ObjectMeta) -> bool {
    meta.annotations
        .iter()
        .flatten()
        .all(|(k, _)| !k.starts_with("tokenbudget.io/"))
}

fn has_finalizer(tb: &TokenBudget) -> bool {
    tb.finalizers().iter().any(|f| f == FINALIZER)
}

/// Waits until `tenant`'s budget `name` is exhausted and enforced on `count` workloads.
async fn wait_enforced(tenant: &Tenant, name: &str, count: usize) -> TokenBudget {
    wait_for(&tenant.budgets, name, "exhausted and enforced", |tb| {
        phase(tb) == Some(BudgetPhase::Exhausted)
            && tb.status.as_ref().is_some_and(|s| {
                s.enforced.len() == count
                    && s.enforced
                        .iter()
                        .all(|e| e.action == "ScaleDown" || e.action == "Suspend")
            })
    })
    .await
}

#[tokio::test]
async fn release_restores_every_workload_keeps_the_budgets_and_lets_the_crds_go() {
    // Namespace `a`: the chart installed with watchNamespace=a. An exhausted ScaleDown budget
    // with a frozen quota holds a Deployment of 2, a Job and a CronJob; a budget with room
    // annotates a Deployment; the operator's own Deployment stands beside them.
    let mut a = Tenant::new("release-a").await.with_operator();
    let jobs: Api<Job> = a.api();
    let cron_jobs: Api<CronJob> = a.api();
    let quotas: Api<ResourceQuota> = a.api();
    create(&a.deployments, deployment("summarizer").replicas(2)).await;
    create(&a.deployments, deployment("chat")).await;
    create(&jobs, job("batch")).await;
    // Suspended by its owner: a restore must leave it suspended.
    create(&jobs, job("held").suspended()).await;
    create(&cron_jobs, cron_job("nightly")).await;
    let stateful_sets: Api<StatefulSet> = a.api();
    create(&stateful_sets, statefulset("indexer")).await;
    create(&a.deployments, deployment("operator")).await;
    a.run_pods("summarizer", 2).await;
    let research = budget("research")
        .tokens(100)
        .action(ScaleDown)
        .compute_quota(&[("pods", "20")])
        .freeze_quota();
    create(&a.budgets, research).await;
    create(&a.budgets, budget("roomy").tokens(1_000_000).action(Annotate)).await;
    let bound = binding("research", "research")
        .deployment("summarizer")
        .named(WorkloadKind::Job, "batch")
        .named(WorkloadKind::Job, "held")
        .named(WorkloadKind::StatefulSet, "indexer")
        .named(WorkloadKind::CronJob, "nightly");
    create(&a.bindings, bound).await;
    create(&a.bindings, binding("chat", "roomy").deployment("chat")).await;
    // Namespace `b`: another release of the chart, with its own operator.
    let mut b = Tenant::new("release-b").await.with_operator();
    create(&b.deployments, deployment("agent")).await;
    b.run_pods("agent", 1).await;
    create(&b.budgets, budget("other").tokens(100).action(ScaleDown)).await;
    create(&b.bindings, binding("agent", "other").deployment("agent")).await;

    // The Job's pod stays Pending (no kubelet runs it): the two of the Deployment are scraped.
    wait_for(&a.bindings, "research", "both summarizer pods scraped", |bb| {
        bb.status.as_ref().is_some_and(|s| s.scraped_pods == Some(2))
    })
    .await;
    wait_scraped(&b.bindings, "agent", 1).await;
    a.agents[0].spend("gpt-4o-mini", 150, 0);
    b.agents[0].spend("gpt-4o-mini", 150, 0);
    let exhausted = wait_enforced(&a, "research", 5).await;
    wait_enforced(&b, "other", 1).await;
    wait_for(&quotas, "tokenbudget-research", "the quota frozen", |q| {
        quota_pods(q) == Some("0")
    })
    .await;
    wait_for(&a.deployments, "chat", "chat annotated ok", |d| {
        annotation(&d.metadata, STATE) == Some("ok")
    })
    .await;
    let summarizer = a.deployments.get("summarizer").await.unwrap();
    assert_eq!(summarizer.spec.replicas, Some(0));
    assert_eq!(annotation(&summarizer.metadata, PAUSED_REPLICAS), Some("2"));
    assert_eq!(jobs.get("batch").await.unwrap().spec.unwrap().suspend, Some(true));
    assert_eq!(cron_jobs.get("nightly").await.unwrap().spec.suspend, Some(true));
    assert_eq!(stateful_sets.get("indexer").await.unwrap().spec.replicas, Some(0));

    // The operator of `a` stops (what scaling its Deployment to 0 does in a cluster); `release`
    // scales the stand-in Deployment `operator` to 0 and waits for its pods.
    drop(a.operator.take());
    pods_of(&a.pods, "operator", 1).await;
    // The chart's hook for namespace `a`: its operator is the Deployment `operator` there.
    let release_a = [
        "--namespace",
        &a.ns.name,
        "--operator-deployment",
        "operator",
        "--operator-namespace",
        &a.ns.name,
        "--timeout",
        "60",
    ];
    let (ok, log) = release(&release_a).await;
    assert!(ok, "release failed:\n{log}");
    assert!(log.contains("the operator is stopped"), "{log}");

    // Everything restored exactly, as a deleted budget's cleanup does.
    let summarizer = a.deployments.get("summarizer").await.unwrap();
    assert_eq!(summarizer.spec.replicas, Some(2));
    assert!(unmarked(&summarizer.metadata), "{:?}", summarizer.metadata.annotations);
    let chat = a.deployments.get("chat").await.unwrap();
    assert_eq!(chat.spec.replicas, Some(1));
    assert!(unmarked(&chat.metadata), "{:?}", chat.metadata.annotations);
    let batch = jobs.get("batch").await.unwrap();
    assert_eq!(batch.spec.as_ref().unwrap().suspend, Some(false));
    assert_eq!(annotation(&batch.metadata, SUSPENDED), None);
    let held = jobs.get("held").await.unwrap();
    assert_eq!(
        held.spec.as_ref().unwrap().suspend,
        Some(true),
        "the owner's suspended Job"
    );
    let indexer = stateful_sets.get("indexer").await.unwrap();
    assert_eq!(indexer.spec.replicas, Some(1));
    assert!(unmarked(&indexer.metadata), "{:?}", indexer.metadata.annotations);
    let nightly = cron_jobs.get("nightly").await.unwrap();
    assert_eq!(nightly.spec.suspend, Some(false));
    assert!(unmarked(&nightly.metadata));
    assert!(
        quotas.get_opt("tokenbudget-research").await.unwrap().is_none(),
        "the quota is deleted"
    );
    for pod in a
        .pods
        .list(&ListParams::default().labels("app=summarizer"))
        .await
        .unwrap()
    {
        assert!(
            unmarked(&pod.metadata),
            "pod {}: {:?}",
            pod.name_any(),
            pod.metadata.annotations
        );
    }
    // The operator's Deployment is at 0 and its pods are gone.
    let operator = a.deployments.get("operator").await.unwrap();
    assert_eq!(operator.spec.replicas, Some(0));
    pods_of(&a.pods, "operator", 0).await;
    // The budgets and bindings stay, with their status, without the finalizer.
    for name in ["research", "roomy"] {
        let tb = a.budgets.get(name).await.unwrap();
        assert!(!has_finalizer(&tb), "{name} keeps its finalizer");
        assert!(tb.metadata.deletion_timestamp.is_none());
    }
    let research = a.budgets.get("research").await.unwrap();
    let used = |tb: &TokenBudget| tb.status.as_ref().and_then(|s| s.used.clone());
    assert_eq!(used(&research), used(&exhausted), "the usage is kept");
    assert_eq!(phase(&research), Some(BudgetPhase::Exhausted));
    assert_eq!(a.bindings.list(&ListParams::default()).await.unwrap().items.len(), 2);
    wait_event(&a.events, "a Restored Event for the Deployment", |e| {
        e.reason.as_deref() == Some("Restored")
            && e.note.as_deref().is_some_and(|n| n.contains("Deployment/summarizer"))
    })
    .await;

    // Namespace `b` is another release's: untouched.
    let agent = b.deployments.get("agent").await.unwrap();
    assert_eq!(agent.spec.replicas, Some(0));
    assert!(has_finalizer(&b.budgets.get("other").await.unwrap()));

    // Uninstalled twice (the hook runs again after a failure): nothing left to do, nothing
    // changes.
    let (ok, log) = release(&release_a).await;
    assert!(ok, "a second release failed:\n{log}");
    assert!(log.contains("budgets=0"), "{log}");
    let summarizer = a.deployments.get("summarizer").await.unwrap();
    assert_eq!(summarizer.spec.replicas, Some(2));

    // A release of every namespace (the chart without watchNamespace); its operator's
    // Deployment is gone already: nothing to stop.
    drop(b.operator.take());
    let (ok, log) = release(&[
        "--operator-deployment",
        "gone",
        "--operator-namespace",
        &b.ns.name,
        "--timeout",
        "60",
    ])
    .await;
    assert!(ok, "release of every namespace failed:\n{log}");
    assert!(log.contains("nothing to stop"), "{log}");
    let agent = b.deployments.get("agent").await.unwrap();
    assert_eq!(agent.spec.replicas, Some(1));
    assert!(unmarked(&agent.metadata));
    assert!(!has_finalizer(&b.budgets.get("other").await.unwrap()));

    // With no finalizer left anywhere, deleting the CRDs completes (no operator runs).
    let crds: Api<CustomResourceDefinition> = Api::all(a.client.clone());
    for name in ["tokenbudgets.tokenbudget.io", "budgetbindings.tokenbudget.io"] {
        delete(&crds, name).await;
    }
    for name in ["tokenbudgets.tokenbudget.io", "budgetbindings.tokenbudget.io"] {
        wait_gone(&crds, name, &format!("the CRD {name} to be deleted")).await;
    }
    // Without the CRDs, release has nothing to do, and says so.
    let (ok, log) = release(&["--timeout", "30"]).await;
    assert!(ok, "release without CRDs failed:\n{log}");
    assert!(log.contains("nothing to release"), "{log}");
    // Back for whatever runs next on this testbed.
    ensure_crds(&a.client).await;
}
