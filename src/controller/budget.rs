//! The TokenBudget controller.

use std::sync::Arc;

use futures::FutureExt;
use jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{Controller, controller::Action},
};

use std::time::Duration;

use kube::runtime::{events::EventType, reflector::ObjectRef};

use super::{Context, Error, RESYNC, accounting, apply_status, conditions, enforcement, instrumented};
use crate::{
    api::{TokenBudget, TokenBudgetStatus},
    enforce, validate,
};

const CONTROLLER: &str = "tokenbudget";

/// The status a budget should have before accounting. Pure: the budget and the time in, the
/// status out. Fields that accounting owns are carried over unchanged.
pub fn desired_status(tb: &TokenBudget, now: Timestamp) -> TokenBudgetStatus {
    let existing = tb.status.clone().unwrap_or_default();
    let generation = tb.metadata.generation;
    let ready = ready_condition(tb);
    TokenBudgetStatus {
        conditions: conditions::merge(&existing.conditions, &[ready], generation, now),
        observed_generation: generation,
        ..existing
    }
}

async fn reconcile(guard: Arc<DeserializeGuard<TokenBudget>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Ok(tb) = &guard.0 else {
        return super::report_unreadable(guard.as_ref(), &ctx).await;
    };
    let ns = tb.namespace().ok_or(Error::NoNamespace)?;
    let now = ctx.clock.now();
    if tb.metadata.deletion_timestamp.is_some() {
        return cleanup(tb, &ctx, now).await;
    }
    if ctx.accounting.is_some() && !tb.finalizers().iter().any(|f| f == enforce::FINALIZER) {
        let mut finalizers = tb.finalizers().to_vec();
        finalizers.push(enforce::FINALIZER.into());
        set_finalizers(&ctx, tb, finalizers).await?;
    }
    let mut status = desired_status(tb, now);
    let mut requeue = RESYNC;
    let mut cycle = None;
    let mut boundary = None;
    let mut wake_at = None;
    if let Some(accounting) = &ctx.accounting
        && validate::budget(&tb.spec).is_ok()
    {
        forget_deleted_budgets(accounting, &ctx);
        let Some(report) = accounting::cycle(
            tb,
            &accounting.cluster,
            &accounting.scraper,
            &accounting.accounts,
            &ctx.metrics,
            now,
        )
        .await
        else {
            // The caches have not synced: never account on a partial view.
            return Ok(Action::requeue(Duration::from_secs(1)));
        };
        let (usage, usage_conditions) = accounting::with_account(&accounting.accounts, tb, |account| {
            accounting::usage_status(&tb.spec, &account.ledger, &report.window, account.burn_rate(), now)
        })
        .expect("the cycle leaves an account");
        let scraped = std::time::Instant::now();
        let mut desired: Vec<conditions::Desired> = vec![ready_condition(tb)];
        desired.extend(usage_conditions);
        let existing = tb.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
        status = TokenBudgetStatus {
            conditions: conditions::merge(existing, &desired, tb.metadata.generation, now),
            observed_generation: tb.metadata.generation,
            ..usage
        };
        let view = enforcement::View {
            snapshot: &report.snapshot,
            bound: &report.bound,
        };
        let outcome = enforcement::enforce(&ctx, view, tb, &status, false, now, scraped).await;
        desired.push(outcome.condition);
        status.conditions = conditions::merge(existing, &desired, tb.metadata.generation, now);
        status.enforced = outcome.enforced;
        status.compute_quota = outcome.compute_quota;
        requeue = report
            .bindings
            .iter()
            .map(|b| b.interval)
            .min()
            .unwrap_or(RESYNC)
            .max(Duration::from_secs(1));
        boundary = report.window.end.as_ref().map(|end| end.timestamp());
        wake_at = outcome.wake_at;
        ctx.metrics
            .observe_budget(&ns, &tb.name_any(), &status, tb.spec.limits.tokens);
        cycle = Some(report);
    }
    let old = tb.status.clone().unwrap_or_default();
    if tb.status.as_ref() != Some(&status) {
        let api: Api<TokenBudget> = Api::namespaced(ctx.client.clone(), &ns);
        apply_status(&api, &tb.name_any(), &status).await?;
        super::announce_not_ready(&ctx, tb, &old.conditions, &status.conditions).await;
        announce_usage_transitions(&ctx, tb, &old, &status).await;
    }
    if let Some(report) = cycle {
        if report.period_reset {
            let note = format!(
                "a new period began at {}: usage starts again from zero",
                report.window.period_start()
            );
            ctx.publish(tb, EventType::Normal, "PeriodReset", note).await;
        }
        if let Some(accounting) = &ctx.accounting {
            accounting.hand_over(&ns, &report);
        }
        super::binding::announce_scrape_failures(&ctx, &ns, &report).await;
    }
    if let Some(end) = boundary {
        // Measured now, not from the cycle's start: the requeue counts from here, and a cycle
        // lasts up to its slowest scrape.
        requeue = requeue.min(wake_for_boundary(ctx.clock.now(), end));
    }
    if let Some(at) = wake_at {
        // The end of a grace period, or a retry after a conflict.
        requeue = requeue.min(wake_for_boundary(ctx.clock.now(), at));
    }
    Ok(Action::requeue(requeue))
}

/// A deleted budget restores every workload it changed, deletes its quota, and only then
/// lets go of its finalizer.
async fn cleanup(tb: &TokenBudget, ctx: &Context, now: Timestamp) -> Result<Action, Error> {
    if !tb.finalizers().iter().any(|f| f == enforce::FINALIZER) {
        return Ok(Action::await_change());
    }
    if let Some(accounting) = &ctx.accounting {
        if !accounting.cluster.synced() {
            // Never decide on a partial view: an empty cache would restore nothing.
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        let status = tb.status.clone().unwrap_or_default();
        // Deleting: every workload still carrying the budget's marks is restored; none is bound.
        let snapshot = accounting.cluster.snapshot(&tb.namespace().unwrap_or_default());
        let view = enforcement::View {
            snapshot: &snapshot,
            bound: &Default::default(),
        };
        let outcome = enforcement::enforce(ctx, view, tb, &status, true, now, std::time::Instant::now()).await;
        if !outcome.complete {
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
    }
    let finalizers = tb
        .finalizers()
        .iter()
        .filter(|f| *f != enforce::FINALIZER)
        .cloned()
        .collect();
    set_finalizers(ctx, tb, finalizers).await?;
    Ok(Action::await_change())
}

/// Sets the budget's finalizers, conditional on the version read.
async fn set_finalizers(ctx: &Context, tb: &TokenBudget, finalizers: Vec<String>) -> Result<(), Error> {
    let api: Api<TokenBudget> = Api::namespaced(ctx.client.clone(), &tb.namespace().ok_or(Error::NoNamespace)?);
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": tb.resource_version()},
    });
    api.patch_metadata(&tb.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// How long from `now` until the cycle that starts the period after `end`: 50 ms past the
/// boundary itself, not at the next scrape after it. A boundary already passed wakes at once.
pub fn wake_for_boundary(now: Timestamp, end: Timestamp) -> Duration {
    Duration::try_from(now.duration_until(end)).unwrap_or(Duration::ZERO) + Duration::from_millis(50)
}

fn ready_condition(tb: &TokenBudget) -> conditions::Desired {
    match validate::budget(&tb.spec) {
        Ok(()) => conditions::Desired::new("Ready", true, "Reconciled", "the budget is valid"),
        Err(e) => conditions::Desired::new("Ready", false, "InvalidSpec", e.to_string()),
    }
}

/// Events for a phase that got worse: a threshold crossed, the budget exhausted.
async fn announce_usage_transitions(ctx: &Context, tb: &TokenBudget, old: &TokenBudgetStatus, new: &TokenBudgetStatus) {
    let was = |t: &str| conditions::find(&old.conditions, t).map(|c| (c.status.clone(), c.message.clone()));
    for type_ in ["ThresholdReached", "Exhausted"] {
        if let Some(c) = conditions::find(&new.conditions, type_)
            && c.status == "True"
            && was(type_) != Some((c.status.clone(), c.message.clone()))
        {
            ctx.publish(tb, EventType::Warning, type_, c.message.clone()).await;
        }
    }
}

/// Drops the accounts and metric series of budgets that no longer exist.
fn forget_deleted_budgets(accounting: &super::Accounting, ctx: &Context) {
    let store = &accounting.budgets;
    for key in accounting.accounts.retain(|key| {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        store.get(&ObjectRef::new(name).within(ns)).is_some()
    }) {
        let (ns, name) = key.split_once('/').unwrap_or(("", &key));
        ctx.metrics.forget_budget(ns, name);
    }
}

/// Builds the controller for the TokenBudgets in `api`'s scope.
/// `deleted` hears `namespace/name` of every budget deleted, to forget its account and series.
pub fn controller(
    api: Api<DeserializeGuard<TokenBudget>>,
    deleted: futures::channel::mpsc::UnboundedSender<String>,
) -> Controller<DeserializeGuard<TokenBudget>> {
    super::guarded_controller(api, move |event| {
        if let kube::runtime::watcher::Event::Delete(obj) = event {
            let _ = deleted.unbounded_send(super::key_of(obj));
        }
    })
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    controller: Controller<DeserializeGuard<TokenBudget>>,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let stream = controller.graceful_shutdown_on(shutdown).run(
        |tb, ctx| instrumented(CONTROLLER, tb, ctx, |tb, ctx| reconcile(tb, ctx).boxed()),
        |tb, e, ctx| super::error_policy(CONTROLLER, tb, e, ctx),
        ctx,
    );
    super::drain(CONTROLLER, stream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(yaml: &str) -> TokenBudget {
        serde_yaml::from_str(yaml).expect("fixture parses")
    }

    const NOW: &str = "2026-11-28T12:00:00Z";

    #[test]
    fn a_valid_budget_is_ready_and_records_its_generation() {
        let tb = budget(
            "apiVersion: tokenbudget.io/v1alpha1\nkind: TokenBudget\nmetadata: {name: b, namespace: n, generation: 3}\nspec: {limits: {tokens: 10}}",
        );
        let status = desired_status(&tb, NOW.parse().unwrap());
        assert_eq!(status.observed_generation, Some(3));
        assert!(conditions::is_true(&status.conditions, "Ready"));
        assert_eq!(status.conditions[0].observed_generation, Some(3));
    }

    #[test]
    fn an_invalid_budget_says_why_and_keeps_its_usage() {
        let tb = budget(
            "apiVersion: tokenbudget.io/v1alpha1\nkind: TokenBudget\nmetadata: {name: b, namespace: n, generation: 1}\n\
             spec: {limits: {cost: '5'}}\nstatus: {used: {tokens: 42, input: 40, output: 2}}",
        );
        let status = desired_status(&tb, NOW.parse().unwrap());
        let ready = conditions::find(&status.conditions, "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InvalidSpec"));
        assert!(ready.message.contains("spec.limits.cost"), "{}", ready.message);
        assert_eq!(status.used.unwrap().tokens, 42);
    }

    #[test]
    fn the_boundary_wakes_the_budget_just_after_it() {
        let end: Timestamp = "2026-11-28T13:00:00Z".parse().unwrap();
        let at = |t: &str| wake_for_boundary(t.parse().unwrap(), end);
        assert_eq!(at("2026-11-28T12:59:58Z"), Duration::from_millis(2050));
        assert_eq!(at("2026-11-28T13:00:00Z"), Duration::from_millis(50));
        // A cycle that outlasted the boundary: the next one at once, not as long again later.
        assert_eq!(at("2026-11-28T13:00:03Z"), Duration::from_millis(50));
    }

    #[test]
    fn reconciling_twice_changes_nothing() {
        let mut tb = budget(
            "apiVersion: tokenbudget.io/v1alpha1\nkind: TokenBudget\nmetadata: {name: b, namespace: n, generation: 1}\nspec: {limits: {tokens: 10}}",
        );
        let first = desired_status(&tb, NOW.parse().unwrap());
        tb.status = Some(first.clone());
        let later = desired_status(&tb, "2026-11-28T13:00:00Z".parse().unwrap());
        assert_eq!(first, later, "an unchanged budget must not cause a status write");
    }
}
