//! The operator binary against a real API server: conditions, observedGeneration, Events,
//! endpoints and a clean shutdown.

mod common;

use common::*;
use kube::api::{Patch, PatchParams};
use tokenbudget::api::{BudgetBinding, MetricsEndpoint, TokenBudget};

fn condition<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<(&'a str, &'a str)> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

fn binding_condition<'a>(bb: &'a BudgetBinding, type_: &str) -> Option<(&'a str, &'a str)> {
    condition(
        bb.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default(),
        type_,
    )
}

fn budget_condition<'a>(tb: &'a TokenBudget, type_: &str) -> Option<(&'a str, &'a str)> {
    condition(
        tb.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default(),
        type_,
    )
}

#[tokio::test]
async fn binding_finds_its_budget_when_it_is_created_and_loses_it_when_deleted() {
    let t = Tenant::new("budget-found").await;
    let operator = Operator::start(&t.ns.name);

    let bb = binding("summarizer", "research")
        .deployment("summarizer")
        .metrics(MetricsEndpoint::default());
    create(&t.bindings, bb).await;
    let bb = wait_for(&t.bindings, "summarizer", "BudgetFound=False", |bb| {
        binding_condition(bb, "BudgetFound") == Some(("False", "BudgetNotFound"))
    })
    .await;
    assert_eq!(binding_condition(&bb, "Ready"), Some(("False", "BudgetNotFound")));
    let status = bb.status.as_ref().unwrap();
    assert_eq!(status.budget.as_deref(), Some("research"));
    assert_eq!(status.observed_generation, bb.metadata.generation);

    // The missing budget is also an Event on the binding.
    wait_event(&t.events, "a BudgetNotFound Event", |e| {
        e.reason.as_deref() == Some("BudgetNotFound")
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("summarizer")
    })
    .await;

    create(&t.budgets, budget("research").tokens(1000)).await;
    let bb = wait_for(&t.bindings, "summarizer", "BudgetFound=True", |bb| {
        binding_condition(bb, "BudgetFound") == Some(("True", "BudgetFound"))
    })
    .await;
    assert_eq!(binding_condition(&bb, "Ready"), Some(("True", "Reconciled")));

    delete(&t.budgets, "research").await;
    wait_for(
        &t.bindings,
        "summarizer",
        "BudgetFound=False after the budget is deleted",
        |bb| binding_condition(bb, "BudgetFound") == Some(("False", "BudgetNotFound")),
    )
    .await;
    drop(operator);
}

#[tokio::test]
async fn an_invalid_budget_is_not_ready_until_fixed() {
    let t = Tenant::new("invalid-spec").await;
    let _operator = Operator::start(&t.ns.name);

    // The schema accepts this (CEL has no time zone database), but the operator cannot tell
    // when a period of this zone starts.
    create(&t.budgets, budget("money").tokens(1000).timezone("Mars/Olympus_Mons")).await;
    let tb = wait_for(&t.budgets, "money", "Ready=False", |tb| {
        budget_condition(tb, "Ready") == Some(("False", "InvalidSpec"))
    })
    .await;
    let message = &tb.status.as_ref().unwrap().conditions[0].message;
    assert!(message.contains("spec.period.timezone"), "{message}");
    assert_eq!(tb.status.as_ref().unwrap().observed_generation, Some(1));

    let fix = serde_json::json!({"spec": {"period": {"timezone": "Europe/Berlin"}}});
    t.budgets
        .patch("money", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .expect("patched");
    let tb = wait_for(&t.budgets, "money", "Ready=True", |tb| {
        budget_condition(tb, "Ready") == Some(("True", "Reconciled"))
    })
    .await;
    assert_eq!(tb.status.as_ref().unwrap().observed_generation, Some(2));
}

#[tokio::test]
async fn endpoints_answer_and_sigterm_stops_cleanly() {
    let t = Tenant::new("endpoints").await;
    let mut operator = Operator::start(&t.ns.name);
    operator.wait_ready().await;
    assert_eq!(operator.get("/healthz").expect("healthz").0, 200);

    create(&t.budgets, budget("b").tokens(10)).await;
    wait_for(&t.budgets, "b", "Ready", |tb| budget_condition(tb, "Ready").is_some()).await;
    let (code, metrics) = operator.get("/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("tokenbudget_reconcile_total{controller=\"tokenbudget\"}"),
        "{metrics}"
    );
    assert_eq!(operator.get("/nope").expect("404").0, 404);

    let pid = operator.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = within(
        async {
            loop {
                if let Some(status) = operator.child.try_wait().expect("wait") {
                    return status;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        },
        "the operator to exit after SIGTERM",
    )
    .await;
    assert!(status.success(), "exit status {status}; log:\n{}", operator.logs());
    assert!(operator.logs().contains("SIGTERM received"), "{}", operator.logs());
}

#[tokio::test]
async fn the_operator_refuses_to_start_without_a_cluster() {
    let dir = std::env::temp_dir().join(format!("tb-no-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    // A kubeconfig pointing at a port where nothing listens.
    let port = free_port().port();
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{port}'}}}}]\n\
             contexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\nusers: [{{name: u, user: {{token: x}}}}]\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenbudget-operator"))
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("operator runs");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("tokenbudget-operator: cannot list tokenbudgets.tokenbudget.io"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}
