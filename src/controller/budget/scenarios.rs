//! Scenario tests: whole reconciles of a budget against a mocked API server, asserting every
//! request in order, and that there is none more.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::api::apps::v1::Deployment;
use kube::{core::DeserializeGuard, runtime::controller::Action};
use serde_json::json;

use super::{CONTROLLER, reconcile};
use crate::{
    api::{BudgetBinding, BudgetPhase, TokenBudget, TokenBudgetStatus},
    conditions,
    controller::{
        Context, Error, RESYNC, error_policy,
        fixtures::{NOW, Objects, deployment, now, settle},
        state::BindingRef,
        status::WRITE_FAILED,
    },
    enforce::FINALIZER,
};

const LIMITED: &str = "limits: {tokens: 1000}";
const SCALE_DOWN: &str = "{limits: {tokens: 1000}, enforcement: {action: ScaleDown}}";

fn guard(tb: &TokenBudget) -> Arc<DeserializeGuard<TokenBudget>> {
    Arc::new(DeserializeGuard(Ok(tb.clone())))
}

fn status(yaml: &str) -> TokenBudgetStatus {
    serde_yaml::from_str(yaml).expect("a status fixture")
}

/// A condition's (status, reason, message).
fn condition<'a>(status: &'a TokenBudgetStatus, type_: &str) -> (&'a str, &'a str, &'a str) {
    let c = conditions::find(&status.conditions, type_).unwrap_or_else(|| panic!("no {type_} condition"));
    (&c.status, &c.reason, &c.message)
}

fn annotations(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(String::from)))
        .collect()
}

/// A new budget gets the finalizer first (so that its deletion will restore its workloads),
/// then its first status, in one server-side apply.
#[tokio::test]
async fn a_new_budget_gets_its_finalizer_then_its_status() {
    let tb = TokenBudget::test(LIMITED);
    let (ctx, mut api) = Context::test(Objects {
        budgets: vec![tb.clone()],
        ..Default::default()
    });
    let server = tokio::spawn({
        let tb = tb.clone();
        async move {
            let finalizers = api.finalizers_patched(&tb).await;
            let status = api.budget_status_applied(&tb).await;
            api.done().await;
            (finalizers, status)
        }
    });
    let (action, (finalizers, status)) = settle(ctx, async |ctx| reconcile(guard(&tb), ctx).await, server).await;

    assert_eq!(finalizers, [FINALIZER]);
    assert_eq!(status.phase, Some(BudgetPhase::Active));
    let used = status.used.as_ref().expect("status.used");
    assert_eq!((used.tokens, used.input, used.output), (0, 0, 0));
    assert_eq!((status.remaining_tokens, status.percent_used), (Some(1000), Some(0)));
    assert_eq!(status.period_start.as_deref(), Some("2026-11-01T00:00:00+00:00"));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        condition(&status, "Ready"),
        ("True", "Reconciled", "the budget is valid")
    );
    assert_eq!(condition(&status, "Exhausted").0, "False");
    assert_eq!(condition(&status, "Enforced").1, "NotExhausted");
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.last_transition_time.0 == now() && c.observed_generation == Some(1)),
        "every condition is new, at the test clock's time: {:?}",
        status.conditions
    );
    let ledger = status.accounting.as_ref().expect("the ledger is persisted with used");
    assert_eq!(ledger.period_start, "2026-11-01T00:00:00Z");
    // No binding: nothing to scrape, so the budget looks again at the resync.
    assert_eq!(action.expect("the reconcile succeeds"), Action::requeue(RESYNC));
}

/// A budget whose status is what the reconcile computes is not written at all: the second
/// reconcile, on the status the first wrote, makes no request.
#[tokio::test]
async fn an_unchanged_budget_is_not_written_again() {
    let tb = TokenBudget::test(LIMITED).finalized(&[]);
    let (ctx, mut api) = Context::test(Objects {
        budgets: vec![tb.clone()],
        ..Default::default()
    });
    let (written_tx, written_rx) = futures::channel::oneshot::channel();
    let server = tokio::spawn({
        let tb = tb.clone();
        async move {
            let status = api.budget_status_applied(&tb).await;
            written_tx.send(status).expect("the test waits for the status");
            // The second reconcile: nothing at all.
            api.done().await;
        }
    });
    let ((first, second), ()) = settle(
        ctx,
        async |ctx| {
            let first = reconcile(guard(&tb), ctx.clone()).await;
            let written = written_rx.await.expect("the first reconcile wrote a status");
            let mut updated = tb.clone().with_status(written);
            updated.metadata.resource_version = Some("8".into());
            let second = reconcile(guard(&updated), ctx).await;
            (first, second)
        },
        server,
    )
    .await;
    assert_eq!(first.expect("the first reconcile succeeds"), Action::requeue(RESYNC));
    assert_eq!(second.expect("the second reconcile succeeds"), Action::requeue(RESYNC));
}

/// An operator that restarts (its accounts in memory lost) resumes from the status it wrote,
/// and finds nothing to write either.
#[tokio::test]
async fn a_restarted_operator_does_not_rewrite_the_status_it_wrote() {
    let tb = TokenBudget::test(LIMITED).finalized(&[]);
    let (ctx, mut api) = Context::test(Objects {
        budgets: vec![tb.clone()],
        ..Default::default()
    });
    let server = tokio::spawn({
        let tb = tb.clone();
        async move {
            let status = api.budget_status_applied(&tb).await;
            api.done().await;
            status
        }
    });
    let (_, written) = settle(ctx, async |ctx| reconcile(guard(&tb), ctx).await, server).await;

    let tb = tb.with_status(written);
    let (ctx, api) = Context::test(Objects {
        budgets: vec![tb.clone()],
        ..Default::default()
    });
    let (action, ()) = settle(
        ctx,
        async |ctx| reconcile(guard(&tb), ctx).await,
        tokio::spawn(api.done()),
    )
    .await;
    assert_eq!(action.expect("the reconcile succeeds"), Action::requeue(RESYNC));
}

/// The persisted ledger of a budget of 1,000 tokens that has counted 1,200, already past its
/// 80% threshold.
const OVER_THE_LIMIT: &str = "
phase: Warning
conditions:
  - {type: ThresholdReached, status: 'True', reason: ThresholdReached, message: 80% of the budget is used,
     lastTransitionTime: '2026-11-20T08:00:00Z', observedGeneration: 1}
accounting:
  periodStart: '2026-11-01T00:00:00Z'
  models: [{model: gpt-4o-mini, input: 900, output: 300}]
  workloads: [{kind: Deployment, name: summarizer, tokens: 1200}]
  bindings: [{name: summarizer, tokens: 1200}]
";

/// The stores of a ScaleDown budget over its limit, and its Deployment with 2 replicas.
fn exhausted() -> (TokenBudget, Deployment, Objects) {
    let tb = TokenBudget::test(SCALE_DOWN)
        .finalized(&[])
        .with_status(status(OVER_THE_LIMIT));
    let summarizer = deployment("summarizer", 2, "41", &[]);
    let objects = Objects {
        budgets: vec![tb.clone()],
        bindings: vec![BudgetBinding::test("research", "summarizer").charging()],
        deployments: vec![summarizer.clone()],
    };
    (tb, summarizer, objects)
}

/// An exhausted budget annotates its Deployment (the count to restore first), then scales it
/// to 0 on the version the annotation left, then writes its status, then tells: ScaledDown and
/// Exhausted, but not ThresholdReached again.
#[tokio::test]
async fn an_exhausted_budget_annotates_then_scales_down_then_writes_status() {
    let (tb, summarizer, objects) = exhausted();
    let (ctx, mut api) = Context::test(objects);
    let server = tokio::spawn({
        let tb = tb.clone();
        async move {
            let annotated = api.deployment_annotated(&summarizer, "41").await;
            let replicas = api.deployment_scaled(&summarizer, "42").await;
            let status = api.budget_status_applied(&tb).await;
            let scaled = api.event_posted("ScaledDown").await;
            let exhausted = api.event_posted("Exhausted").await;
            api.done().await;
            (annotated, replicas, status, [scaled, exhausted])
        }
    });
    let ((action, handed_over), (annotated, replicas, status, events)) = settle(
        ctx,
        async |ctx| {
            let action = reconcile(guard(&tb), ctx.clone()).await;
            let binding: BindingRef = BindingRef::new("summarizer").within("agents");
            (action, ctx.binding_usage.get(&binding, 0))
        },
        server,
    )
    .await;

    assert_eq!(
        annotated,
        annotations(&[
            ("tokenbudget.io/budget", Some("research")),
            ("tokenbudget.io/paused-replicas", Some("2")),
            ("tokenbudget.io/remaining-tokens", Some("0")),
            ("tokenbudget.io/state", Some("exhausted")),
        ])
    );
    assert_eq!(replicas, 0);

    assert_eq!(status.phase, Some(BudgetPhase::Exhausted));
    assert_eq!(status.used.as_ref().map(|u| u.tokens), Some(1200));
    assert_eq!((status.remaining_tokens, status.percent_used), (Some(0), Some(120)));
    assert_eq!(
        condition(&status, "Exhausted"),
        ("True", "LimitReached", "the budget is used up for this period")
    );
    assert_eq!(
        condition(&status, "Enforced"),
        ("True", "ScaledDown", "scaled to 0: Deployment/summarizer")
    );
    let threshold = conditions::find(&status.conditions, "ThresholdReached").unwrap();
    assert_eq!(
        threshold.last_transition_time.0,
        "2026-11-20T08:00:00Z".parse().unwrap(),
        "a condition that did not change keeps its transition time"
    );
    let enforced: Vec<_> = status
        .enforced
        .iter()
        .map(|e| (e.name.as_str(), e.action.as_str(), e.since.as_str()))
        .collect();
    assert_eq!(enforced, [("summarizer", "ScaleDown", NOW)]);
    assert_eq!(
        status.accounting.as_ref().map(|a| a.models.len()),
        Some(1),
        "the ledger goes on"
    );

    let [scaled, exhausted] = events;
    assert_eq!(
        scaled["note"],
        "scaled Deployment/summarizer from 2 to 0 replicas: the budget is exhausted"
    );
    assert_eq!(
        (&scaled["type"], &exhausted["type"]),
        (&json!("Normal"), &json!("Warning"))
    );
    for event in [&scaled, &exhausted] {
        assert_eq!(
            (&event["regarding"]["kind"], &event["regarding"]["name"]),
            (&json!("TokenBudget"), &json!("research"))
        );
    }

    let usage = handed_over.expect("the cycle's findings are handed to the binding controller");
    assert_eq!((usage.report.workloads, usage.report.pods), (1, 0));
    assert_eq!(usage.report.used_tokens, 1200);
    // The binding's scrape interval (15s by default) is the next cycle.
    assert_eq!(
        action.expect("the reconcile succeeds"),
        Action::requeue(Duration::from_secs(15))
    );
}

/// Makes the context's view stale: its pods watch listed, then failed.
fn stale(ctx: &Context) {
    let pods = ctx.cluster.watches.register("pods");
    pods.observe::<()>(&Ok(kube::runtime::watcher::Event::InitDone));
    pods.observe::<()>(&Err(kube::runtime::watcher::Error::NoResourceVersion));
}

/// The same exhausted budget while a watch has failed and not listed again: its usage is
/// counted and written, and announced, but no workload is touched, and the `Enforced`
/// condition stays as last decided. The budget is held, to be woken when the view is current.
#[tokio::test]
async fn an_exhausted_budget_on_a_stale_view_counts_but_decides_nothing() {
    let (tb, _, objects) = exhausted();
    let decided = "
  - {type: Enforced, status: 'False', reason: NotExhausted, message: 'the budget has room: nothing is enforced',
     lastTransitionTime: '2026-11-20T07:00:00Z', observedGeneration: 1}";
    let tb = tb.with_status(status(&OVER_THE_LIMIT.replace(
        "observedGeneration: 1}\n",
        &format!("observedGeneration: 1}}{decided}\n"),
    )));
    let (ctx, mut api) = Context::test(objects);
    stale(&ctx);
    let server = tokio::spawn({
        let tb = tb.clone();
        async move {
            let status = api.budget_status_applied(&tb).await;
            let exhausted = api.event_posted("Exhausted").await;
            api.done().await;
            (status, exhausted)
        }
    });
    let ((action, held), (status, _)) = settle(
        ctx,
        async |ctx| {
            let action = reconcile(guard(&tb), ctx.clone()).await;
            (action, ctx.metrics.enforcement_held.get())
        },
        server,
    )
    .await;

    assert_eq!(status.phase, Some(BudgetPhase::Exhausted));
    assert_eq!(status.used.as_ref().map(|u| u.tokens), Some(1200));
    let enforced = conditions::find(&status.conditions, "Enforced").expect("the Enforced condition kept");
    assert_eq!(
        (enforced.reason.as_str(), enforced.last_transition_time.0),
        ("NotExhausted", "2026-11-20T07:00:00Z".parse().unwrap())
    );
    assert!(status.enforced.is_empty());
    assert_eq!(held, 1);
    assert_eq!(
        action.expect("the reconcile succeeds"),
        Action::requeue(Duration::from_secs(15))
    );
}

/// A deleted budget restores nothing on a stale view either: no request at all, and it looks
/// again soon.
#[tokio::test]
async fn a_deleted_budget_waits_for_a_current_view_to_restore() {
    let tb = TokenBudget::test(SCALE_DOWN)
        .finalized(&[])
        .deleted()
        .with_status(status("phase: Exhausted"));
    let (ctx, api) = Context::test(Objects {
        budgets: vec![tb.clone()],
        ..Default::default()
    });
    stale(&ctx);
    let server = tokio::spawn(api.done());
    let (action, ()) = settle(ctx, async |ctx| reconcile(guard(&tb), ctx).await, server).await;
    assert_eq!(action.expect("the cleanup waits"), Action::requeue(super::SOON));
}

/// A deleted budget restores what it changed, in the order that never loses the count: the
/// replicas back first, then its annotations removed; then (an Event) it lets go of its
/// finalizer, and of nobody else's.
#[tokio::test]
async fn a_deleted_budget_restores_then_removes_its_finalizer() {
    let tb = TokenBudget::test(SCALE_DOWN)
        .finalized(&["example.com/keep"])
        .deleted()
        .with_status(status("phase: Exhausted"));
    let summarizer = deployment(
        "summarizer",
        0,
        "50",
        &[
            ("tokenbudget.io/budget", "research"),
            ("tokenbudget.io/state", "exhausted"),
            ("tokenbudget.io/remaining-tokens", "0"),
            ("tokenbudget.io/paused-replicas", "2"),
            ("example.com/owner", "team-a"),
        ],
    );
    let (ctx, mut api) = Context::test(Objects {
        budgets: vec![tb.clone()],
        bindings: vec![BudgetBinding::test("research", "summarizer").charging()],
        deployments: vec![summarizer.clone()],
    });
    let server = tokio::spawn({
        let tb = tb.clone();
        async move {
            // A quota the status never recorded is looked for too: there is none.
            api.no_quota_read("research").await;
            let replicas = api.deployment_scaled(&summarizer, "50").await;
            let annotated = api.deployment_annotated(&summarizer, "51").await;
            let restored = api.event_posted("Restored").await;
            let finalizers = api.finalizers_patched(&tb).await;
            api.done().await;
            (replicas, annotated, restored, finalizers)
        }
    });
    let (action, (replicas, annotated, restored, finalizers)) =
        settle(ctx, async |ctx| reconcile(guard(&tb), ctx).await, server).await;

    assert_eq!(replicas, 2, "the count before the scale-down");
    assert_eq!(
        annotated,
        annotations(&[
            ("tokenbudget.io/budget", None),
            ("tokenbudget.io/paused-replicas", None),
            ("tokenbudget.io/remaining-tokens", None),
            ("tokenbudget.io/state", None),
        ]),
        "the operator's annotations removed, and nobody else's"
    );
    assert_eq!(restored["note"], "restored Deployment/summarizer to 2 replicas");
    assert_eq!(finalizers, ["example.com/keep"]);
    assert_eq!(action.expect("the cleanup succeeds"), Action::await_change());
}

/// A status write the server refuses fails the reconcile: it is reported (a Ready=False
/// condition written alone, a Warning Event), but no transition is announced (nothing is
/// announced that was not recorded), and the error policy retries with a growing backoff.
#[tokio::test]
async fn a_refused_status_write_fails_the_reconcile_and_backs_off() {
    let tb = TokenBudget::test(LIMITED).finalized(&[]);
    let (ctx, mut api) = Context::test(Objects {
        budgets: vec![tb.clone()],
        ..Default::default()
    });
    let server = tokio::spawn({
        let tb = tb.clone();
        async move {
            api.budget_status_refused(&tb, 500, "InternalError").await;
            api.budget_conditions_patched(&tb, None).await;
            api.event_posted(WRITE_FAILED).await;
            api.done().await;
        }
    });
    let ((error, backoff, counted), ()) = settle(
        ctx,
        async |ctx| {
            let guard = guard(&tb);
            let error = reconcile(guard.clone(), ctx.clone())
                .await
                .expect_err("a refused status write is an error");
            let backoff = [1, 2].map(|_| error_policy(CONTROLLER, guard.clone(), &error, ctx.clone()));
            let counted = ctx
                .metrics
                .reconcile_errors
                .with_label_values(&[CONTROLLER, "api"])
                .get();
            (error, backoff, counted)
        },
        server,
    )
    .await;

    assert!(
        matches!(&error, Error::Kube(kube::Error::Api(s)) if s.code == 500),
        "{error}"
    );
    assert_eq!(
        backoff,
        [
            Action::requeue(Duration::from_secs(1)),
            Action::requeue(Duration::from_secs(2))
        ]
    );
    assert_eq!(counted, 2);
}

/// The status of a budget that was Ready, with a threshold crossed.
const READY: &str = "
phase: Warning
conditions:
  - {type: Ready, status: 'True', reason: Reconciled, message: the budget is valid,
     lastTransitionTime: '2026-11-01T08:00:00Z', observedGeneration: 1}
  - {type: ThresholdReached, status: 'True', reason: ThresholdReached, message: 80% of the budget is used,
     lastTransitionTime: '2026-11-20T08:00:00Z', observedGeneration: 1}
";

/// The answers an API server gives a status too large to keep: its request limit (413), a
/// validation of the size (422), etcd's own limit (500); the 422 quotes at length what it
/// refused, as the API server does for a big invalid object.
fn too_large_answers() -> [(u16, &'static str, String); 3] {
    let quoted: String = (0..5000)
        .map(|i| format!("* status.accounting.pods[{i}]: Too long: may not be longer than 1572864\n"))
        .collect();
    [
        (
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728".into(),
        ),
        (
            422,
            "Invalid",
            format!("TokenBudget.tokenbudget.io \"research\" is invalid: {quoted}"),
        ),
        (500, "InternalError", "etcdserver: request is too large".into()),
    ]
}

/// A status the API server refuses for its size is reported on the budget: Ready=False,
/// reason StatusWriteFailed, written alone (a merge patch of the conditions, which keeps the
/// others as they were), a Warning Event, both bounded whatever the server quotes; and the
/// failure counted by reason. The reconcile still fails, to be retried.
#[tokio::test]
async fn a_status_too_large_to_write_is_reported_by_condition_event_and_metric() {
    for (code, reason, message) in too_large_answers() {
        let tb = TokenBudget::test(LIMITED).finalized(&[]).with_status(status(READY));
        let (ctx, mut api) = Context::test(Objects {
            budgets: vec![tb.clone()],
            ..Default::default()
        });
        let server = tokio::spawn({
            let tb = tb.clone();
            async move {
                api.budget_status_refused_saying(&tb, code, reason, &message).await;
                let conditions = api.budget_conditions_patched(&tb, None).await;
                let event = api.event_posted(WRITE_FAILED).await;
                api.done().await;
                (conditions, event)
            }
        });
        let ((result, failures), (conditions, event)) = settle(
            ctx,
            async |ctx| {
                let result = reconcile(guard(&tb), ctx.clone()).await;
                let failures = |reason: &str| {
                    ctx.metrics
                        .status_write_failures
                        .with_label_values(&["TokenBudget", reason])
                        .get()
                };
                (result, [failures("too_large"), failures("api"), failures("invalid")])
            },
            server,
        )
        .await;

        assert!(
            matches!(&result, Err(Error::Kube(kube::Error::Api(s))) if s.code == code),
            "{code}: {result:?}"
        );
        assert_eq!(failures, [1, 0, 0], "{code}: counted once, as too_large");
        let ready = conditions::find(&conditions, "Ready").expect("Ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", WRITE_FAILED));
        assert_eq!(ready.last_transition_time.0, now(), "Ready changed now");
        assert!(
            ready
                .message
                .starts_with("the status is too large for the API server and is not written"),
            "{code}: {}",
            ready.message
        );
        assert!(ready.message.contains(&format!("({code} {reason})")) || ready.message.ends_with('…'));
        assert!(
            ready.message.len() <= conditions::MAX_MESSAGE_BYTES,
            "{code}: {}",
            ready.message.len()
        );
        let threshold = conditions::find(&conditions, "ThresholdReached").expect("kept");
        assert_eq!(
            threshold,
            conditions::find(&tb.status.as_ref().unwrap().conditions, "ThresholdReached").unwrap(),
            "the other conditions are written as they were"
        );
        assert_eq!(conditions.len(), 2);

        assert_eq!(event["type"], "Warning");
        assert_eq!(event["regarding"]["name"], "research");
        let note = event["note"].as_str().expect("a note");
        assert_eq!(note, ready.message, "{code}");
    }
}

/// A write that fails again, on a budget that says so already, is counted but not reported
/// again: no second condition write, no second Event.
#[tokio::test]
async fn a_status_write_that_fails_again_is_reported_once() {
    let (code, reason, message) = too_large_answers().into_iter().next().unwrap();
    let tb = TokenBudget::test(LIMITED).finalized(&[]).with_status(status(READY));
    let (ctx, mut api) = Context::test(Objects {
        budgets: vec![tb.clone()],
        ..Default::default()
    });
    let (written_tx, written_rx) = futures::channel::oneshot::channel();
    let server = tokio::spawn({
        let tb = tb.clone();
        async move {
            api.budget_status_refused_saying(&tb, code, reason, &message).await;
            let conditions = api.budget_conditions_patched(&tb, None).await;
            api.event_posted(WRITE_FAILED).await;
            written_tx.send(conditions).expect("the test waits for the conditions");
            // The retry, on the budget that says StatusWriteFailed: only the write again.
            let reported = tb.clone();
            api.budget_status_refused_saying(&reported, code, reason, &message)
                .await;
            api.done().await;
        }
    });
    let (failures, ()) = settle(
        ctx,
        async |ctx| {
            reconcile(guard(&tb), ctx.clone()).await.expect_err("refused");
            let mut status = tb.status.clone().unwrap();
            status.conditions = written_rx.await.expect("the conditions were written");
            let reported = tb.clone().with_status(status);
            reconcile(guard(&reported), ctx.clone())
                .await
                .expect_err("refused again");
            ctx.metrics
                .status_write_failures
                .with_label_values(&["TokenBudget", "too_large"])
                .get()
        },
        server,
    )
    .await;
    assert_eq!(failures, 2);
}

/// When even the conditions cannot be written, the Event still tells, and both failures are
/// counted.
#[tokio::test]
async fn a_status_write_failure_is_told_by_an_event_when_no_condition_can_be_written() {
    let tb = TokenBudget::test(LIMITED).finalized(&[]).with_status(status(READY));
    let (ctx, mut api) = Context::test(Objects {
        budgets: vec![tb.clone()],
        ..Default::default()
    });
    let server = tokio::spawn({
        let tb = tb.clone();
        async move {
            api.budget_status_refused_saying(&tb, 422, "Invalid", "status.used: Invalid value")
                .await;
            api.budget_conditions_patched(&tb, Some(500)).await;
            let event = api.event_posted(WRITE_FAILED).await;
            api.done().await;
            event
        }
    });
    let ((result, failures), event) = settle(
        ctx,
        async |ctx| {
            let result = reconcile(guard(&tb), ctx.clone()).await;
            let failures = |reason: &str| {
                ctx.metrics
                    .status_write_failures
                    .with_label_values(&["TokenBudget", reason])
                    .get()
            };
            (result, [failures("invalid"), failures("api")])
        },
        server,
    )
    .await;
    assert!(matches!(&result, Err(Error::Kube(kube::Error::Api(s))) if s.code == 422));
    assert_eq!(failures, [1, 1]);
    assert_eq!(
        event["note"],
        "the status could not be written: status.used: Invalid value (422 Invalid)"
    );
    assert_eq!(event["type"], "Warning");
}

/// Someone changed the Deployment since the decision: its annotation write meets a conflict,
/// nothing more is written to it (no scale-down on a stale decision), the reconcile itself
/// succeeds, its status says what is not done yet, and it decides again within a second.
#[tokio::test]
async fn a_conflict_on_the_workload_is_reported_and_retried_soon() {
    let (tb, summarizer, objects) = exhausted();
    let (ctx, mut api) = Context::test(objects);
    let server = tokio::spawn({
        let tb = tb.clone();
        async move {
            api.deployment_annotation_conflict(&summarizer, "41").await;
            let status = api.budget_status_applied(&tb).await;
            // No ScaledDown: nothing was scaled.
            api.event_posted("Exhausted").await;
            api.done().await;
            status
        }
    });
    let ((action, failures), status) = settle(
        ctx,
        async |ctx| {
            let action = reconcile(guard(&tb), ctx.clone()).await;
            (action, ctx.metrics.enforcement_failures.get())
        },
        server,
    )
    .await;

    assert_eq!(status.phase, Some(BudgetPhase::Exhausted));
    let (enforced, _, message) = condition(&status, "Enforced");
    assert_eq!(enforced, "True");
    assert!(
        message.ends_with("not done yet: Deployment/summarizer changed while it was being updated; retrying"),
        "{message}"
    );
    assert_eq!(failures, 1);
    // 500 ms to the retry, plus the 50 ms every wake-up waits past its moment.
    assert_eq!(
        action.expect("a failed enforcement write does not fail the reconcile"),
        Action::requeue(Duration::from_millis(550))
    );
}

/// A ScaleDown budget with a grace period of 10 minutes, exhausted, whose status writes all
/// fail (too large for etcd): its status never comes to say since when it is exhausted, yet
/// the grace period runs from when the operator first saw it, and the scale-down comes when
/// it is over. What the status would say (refused) names that time, and dates `Exhausted`
/// from the start.
#[tokio::test]
async fn the_grace_period_ends_on_time_while_status_writes_fail() {
    let tb = TokenBudget::test("{limits: {tokens: 1000}, enforcement: {action: ScaleDown, gracePeriod: 10m}}")
        .finalized(&[])
        .with_status(status(OVER_THE_LIMIT));
    let summarizer = deployment("summarizer", 2, "41", &[]);
    let clock = crate::clock::ManualClock::new(now());
    let (ctx, mut api) = Context::test_with_clock(
        Objects {
            budgets: vec![tb.clone()],
            bindings: vec![BudgetBinding::test("research", "summarizer").charging()],
            deployments: vec![summarizer.clone()],
        },
        clock.clone(),
    );
    let (reported_tx, reported_rx) = futures::channel::oneshot::channel();
    let server = tokio::spawn({
        let tb = tb.clone();
        async move {
            const ETCD: &str = "etcdserver: request is too large";
            // At 12:00: annotated exhausted; the status refused; reported.
            let annotated = api.deployment_annotated(&summarizer, "41").await;
            api.budget_status_refused_saying(&tb, 500, "InternalError", ETCD).await;
            let conditions = api.budget_conditions_patched(&tb, None).await;
            api.event_posted(WRITE_FAILED).await;
            reported_tx.send(conditions).expect("the test waits for the conditions");
            // At 12:05, on the budget that says the write failed: annotated again (the
            // store has not seen the first write), the status refused again, nothing more.
            let mut reported = tb.clone();
            reported.metadata.resource_version = Some("8".into());
            api.deployment_annotated(&summarizer, "41").await;
            let midway = api
                .budget_status_refused_saying(&reported, 500, "InternalError", ETCD)
                .await;
            // At 12:10: the grace period is over: scaled down.
            api.deployment_annotated(&summarizer, "41").await;
            let replicas = api.deployment_scaled(&summarizer, "42").await;
            let over = api
                .budget_status_refused_saying(&reported, 500, "InternalError", ETCD)
                .await;
            api.done().await;
            (annotated, midway, replicas, over)
        }
    });
    let (failures, (annotated, midway, replicas, over)) = settle(
        ctx,
        async |ctx| {
            reconcile(guard(&tb), ctx.clone())
                .await
                .expect_err("the status is refused");
            let mut status = tb.status.clone().unwrap();
            status.conditions = reported_rx.await.expect("the conditions were written");
            let mut reported = tb.clone().with_status(status);
            reported.metadata.resource_version = Some("8".into());
            for minutes in [5, 5] {
                clock.advance(jiff::SignedDuration::from_mins(minutes));
                reconcile(guard(&reported), ctx.clone())
                    .await
                    .expect_err("the status is refused");
            }
            ctx.metrics
                .status_write_failures
                .with_label_values(&["TokenBudget", "too_large"])
                .get()
        },
        server,
    )
    .await;

    assert_eq!(annotated.get("tokenbudget.io/state"), Some(&Some("exhausted".into())));
    assert_eq!(
        condition(&midway, "Enforced"),
        (
            "True",
            "GracePeriod",
            "annotated exhausted: Deployment/summarizer; scaled down at 2026-11-28T12:10:00Z unless the budget has room again"
        ),
        "at 12:05, the end of the grace period has not moved"
    );
    assert_eq!(replicas, 0, "scaled down at 12:10");
    assert_eq!(
        condition(&over, "Enforced"),
        ("True", "ScaledDown", "scaled to 0: Deployment/summarizer")
    );
    let exhausted = conditions::find(&over.conditions, "Exhausted").expect("Exhausted");
    assert_eq!(
        (exhausted.status.as_str(), exhausted.last_transition_time.0),
        ("True", now()),
        "exhausted since 12:00, when the operator saw it, not since the write that succeeds"
    );
    assert_eq!(failures, 3);
}
