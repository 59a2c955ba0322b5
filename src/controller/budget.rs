//! The TokenBudget controller.

use std::sync::Arc;

use futures::FutureExt;
use jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    core::DeserializeGuard,
    runtime::{Controller, controller::Action},
};

use super::{Context, Error, RESYNC, apply_status, conditions, instrumented};
use crate::{
    api::{TokenBudget, TokenBudgetStatus},
    validate,
};

const CONTROLLER: &str = "tokenbudget";

/// The status a budget should have. Pure: the budget and the time in, the status out.
/// Fields that accounting owns are carried over unchanged.
pub fn desired_status(tb: &TokenBudget, now: Timestamp) -> TokenBudgetStatus {
    let existing = tb.status.clone().unwrap_or_default();
    let generation = tb.metadata.generation;
    let ready = match validate::budget(&tb.spec) {
        Ok(()) => conditions::Desired::new("Ready", true, "Reconciled", "the budget is valid"),
        Err(e) => conditions::Desired::new("Ready", false, "InvalidSpec", e.to_string()),
    };
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
    let status = desired_status(tb, ctx.clock.now());
    if tb.status.as_ref() != Some(&status) {
        let api: Api<TokenBudget> = Api::namespaced(ctx.client.clone(), &ns);
        apply_status(&api, &tb.name_any(), &status).await?;
        let old = tb.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
        super::announce_not_ready(&ctx, tb, old, &status.conditions).await;
    }
    Ok(Action::requeue(RESYNC))
}

/// Builds the controller for the TokenBudgets in `api`'s scope.
pub fn controller(api: Api<DeserializeGuard<TokenBudget>>) -> Controller<DeserializeGuard<TokenBudget>> {
    super::guarded_controller(api)
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
