//! Scenario tests: whole reconciles of a binding against a mocked API server, asserting every
//! request in order, and that there is none more.

use std::{sync::Arc, time::Duration};

use kube::{core::DeserializeGuard, runtime::controller::Action};
use serde_json::json;

use super::{desired_status, reconcile};
use crate::{
    api::{BudgetBinding, BudgetBindingStatus, TokenBudget},
    conditions,
    controller::{
        Context, RESYNC,
        fixtures::{NAMESPACE, NOW, Objects, now, settle},
    },
    usage::account::BindingReport,
};

fn guard(bb: &BudgetBinding) -> Arc<DeserializeGuard<BudgetBinding>> {
    Arc::new(DeserializeGuard(Ok(bb.clone())))
}

/// A condition's (status, reason).
fn condition<'a>(status: &'a BudgetBindingStatus, type_: &str) -> (&'a str, &'a str) {
    let c = conditions::find(&status.conditions, type_).unwrap_or_else(|| panic!("no {type_} condition"));
    (&c.status, &c.reason)
}

/// What the budget's last cycle saw of the binding: one workload, two pods, 1,200 tokens.
fn hand_over(ctx: &Context) {
    let report = BindingReport {
        name: "summarizer".into(),
        workloads: 1,
        pods: 2,
        scraped_pods: 2,
        used_tokens: 1200,
        interval: Duration::from_secs(15),
        ..Default::default()
    };
    ctx.binding_usage.hand_over(NAMESPACE, "research", &[report], now(), 0);
}

/// The binding reads its budget from the API server (not a cache), finds it, and writes a
/// status that says so, with what the budget's last cycle saw of it. No Event: it is Ready.
#[tokio::test]
async fn a_binding_whose_budget_exists_is_ready_and_shows_its_usage() {
    let bb = BudgetBinding::test("research", "summarizer");
    let tb = TokenBudget::test("limits: {tokens: 1000}");
    let (ctx, mut api) = Context::test(Objects::default());
    hand_over(&ctx);
    let server = tokio::spawn({
        let bb = bb.clone();
        async move {
            api.budget_read("research", Some(&tb)).await;
            let status = api.binding_status_applied(&bb).await;
            api.done().await;
            status
        }
    });
    let (action, status) = settle(ctx, async |ctx| reconcile(guard(&bb), ctx).await, server).await;

    assert_eq!(condition(&status, "BudgetFound"), ("True", "BudgetFound"));
    assert_eq!(condition(&status, "Ready"), ("True", "Reconciled"));
    assert_eq!(condition(&status, "ScrapeHealthy"), ("True", "Scraped"));
    assert_eq!(status.budget.as_deref(), Some("research"));
    assert_eq!(
        (status.workloads, status.pods, status.scraped_pods, status.used_tokens),
        (Some(1), Some(2), Some(2), Some(1200))
    );
    assert_eq!(status.last_scrape_time.as_deref(), Some(NOW));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(action.expect("the reconcile succeeds"), Action::requeue(RESYNC));
}

/// A binding whose budget does not exist (404) is not an error: its status says
/// BudgetNotFound, shows no usage (it counts nothing), and a Warning Event says why.
#[tokio::test]
async fn a_binding_whose_budget_is_missing_says_budget_not_found() {
    let bb = BudgetBinding::test("research", "summarizer");
    let (ctx, mut api) = Context::test(Objects::default());
    hand_over(&ctx);
    let server = tokio::spawn({
        let bb = bb.clone();
        async move {
            api.budget_read("research", None).await;
            let status = api.binding_status_applied(&bb).await;
            let event = api.event_posted("BudgetNotFound").await;
            api.done().await;
            (status, event)
        }
    });
    let (action, (status, event)) = settle(ctx, async |ctx| reconcile(guard(&bb), ctx).await, server).await;

    assert_eq!(condition(&status, "BudgetFound"), ("False", "BudgetNotFound"));
    assert_eq!(condition(&status, "Ready"), ("False", "BudgetNotFound"));
    assert!(conditions::find(&status.conditions, "ScrapeHealthy").is_none());
    assert_eq!(
        (status.workloads, status.used_tokens, status.last_scrape_time),
        (None, None, None),
        "a binding without its budget counts nothing"
    );
    assert_eq!(event["type"], "Warning");
    assert_eq!(
        (&event["regarding"]["kind"], &event["regarding"]["name"]),
        (&json!("BudgetBinding"), &json!("summarizer"))
    );
    assert_eq!(action.expect("a missing budget is no error"), Action::requeue(RESYNC));
}

/// A binding whose status is already what the reconcile computes (written an hour ago) is
/// only read from.
#[tokio::test]
async fn a_binding_with_a_current_status_is_not_written() {
    let tb = TokenBudget::test("limits: {tokens: 1000}");
    let bb = BudgetBinding::test("research", "summarizer");
    let an_hour_ago = now() - jiff::SignedDuration::from_hours(1);
    let bb = bb
        .clone()
        .with_status(desired_status(&bb, Some(&tb), None, an_hour_ago));
    let (ctx, mut api) = Context::test(Objects::default());
    let server = tokio::spawn(async move {
        api.budget_read("research", Some(&tb)).await;
        api.done().await;
    });
    let (action, ()) = settle(ctx, async |ctx| reconcile(guard(&bb), ctx).await, server).await;
    assert_eq!(action.expect("the reconcile succeeds"), Action::requeue(RESYNC));
}
