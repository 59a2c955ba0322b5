//! Announce: what the reconcile tells others once the status is written. Events on the budget
//! for transitions (enforcement, Ready, thresholds, exhaustion, a new period), Events on the
//! bindings for pods that newly fail to scrape, and the cycle's findings handed to the
//! binding controller. Each Event is sent once per transition, not once per reconcile.

use kube::{ResourceExt, runtime::events::EventType};

use super::observe::Cycle;
use crate::{
    api::{TokenBudget, TokenBudgetStatus},
    conditions,
    controller::{Context, events, state::BindingRef},
    enforce::decide::Notice,
};

/// Publishes the Events of one reconcile. `old` and `new` are the status before and after
/// (the same when nothing was written).
pub async fn announce(
    ctx: &Context,
    tb: &TokenBudget,
    old: &TokenBudgetStatus,
    new: &TokenBudgetStatus,
    notices: &[Notice],
    cycle: Option<&Cycle<'_>>,
) {
    for notice in notices {
        ctx.publish(tb, EventType::Normal, notice.reason, notice.message.clone())
            .await;
    }
    events::announce_not_ready(ctx, tb, &old.conditions, &new.conditions).await;
    usage_transitions(ctx, tb, old, new).await;
    pacing_transitions(ctx, tb, old, new).await;
    if let Some(cycle) = cycle {
        if cycle.period_reset {
            let note = format!(
                "a new period began at {}: usage starts again from zero",
                cycle.window.period_start()
            );
            ctx.publish(tb, EventType::Normal, "PeriodReset", note).await;
        }
        let namespace = tb.metadata.namespace.as_deref().unwrap_or_default();
        ctx.metrics.observe_cycle(namespace, &tb.name_any(), cycle.started_at);
        ctx.binding_usage.hand_over(
            namespace,
            &tb.name_any(),
            &cycle.bindings,
            cycle.started_at,
            cycle.account.term(),
        );
        ctx.binding_usage.forget_missing(&ctx.cluster.bindings);
        scrape_failures(ctx, namespace, cycle).await;
    }
}

/// Events for a phase that got worse: a threshold crossed, the budget exhausted.
async fn usage_transitions(ctx: &Context, tb: &TokenBudget, old: &TokenBudgetStatus, new: &TokenBudgetStatus) {
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

/// Events when pacing engages (`Pacing`) or releases (`OnTrack`): when the Paced condition's
/// status changes, not at every step of the pace.
async fn pacing_transitions(ctx: &Context, tb: &TokenBudget, old: &TokenBudgetStatus, new: &TokenBudgetStatus) {
    let Some(now) = conditions::find(&new.conditions, "Paced") else {
        return;
    };
    let was = conditions::find(&old.conditions, "Paced").map(|c| c.status.as_str());
    match (was, now.status.as_str()) {
        (Some("True"), "True") => {}
        (_, "True") => ctx.publish(tb, EventType::Warning, "Pacing", now.message.clone()).await,
        (Some("True"), _) => ctx.publish(tb, EventType::Normal, "OnTrack", now.message.clone()).await,
        _ => {}
    }
}

/// Events for the pods of a cycle that newly failed to scrape, on their binding.
async fn scrape_failures(ctx: &Context, namespace: &str, cycle: &Cycle<'_>) {
    for report in &cycle.bindings {
        let binding: BindingRef = BindingRef::new(&report.name).within(namespace);
        let Some(current) = ctx.cluster.bindings.get(&binding) else {
            continue;
        };
        for problem in report.problems.iter().filter(|p| p.new) {
            let note = format!("pod {}: {}", problem.pod, problem.reason);
            ctx.publish(current.as_ref(), EventType::Warning, "ScrapeFailed", note)
                .await;
        }
    }
}
