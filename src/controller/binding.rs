//! The BudgetBinding controller.

use std::{collections::HashMap, sync::Arc};

use futures::FutureExt;
use jiff::Timestamp;
use kube::{
    Api, Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        Controller,
        controller::Action,
        reflector::ObjectRef,
        watcher::{self},
    },
};

use super::{
    Context, Error, RESYNC, events,
    state::{BindingRef, BindingUsage, BudgetRef},
    status,
};
use crate::{
    api::{BudgetBinding, BudgetBindingStatus, TokenBudget},
    conditions::{self, Status},
    usage::account,
    validate,
};

const CONTROLLER: &str = "budgetbinding";

#[cfg(test)]
mod scenarios;

/// The status a binding should have, given whether its budget exists and what the budget's
/// last accounting cycle saw of it. Pure. This controller is the only writer of a binding's
/// status, and the accounting cycle hands its findings over in memory: the usage fields and
/// `ScrapeHealthy` then appear and go exactly with the binding counting (valid, its budget
/// found). Server-side apply would merge a second manager's conditions (the list is keyed by
/// `type`), but each writer would then have to clear the other's fields on every transition.
pub fn desired_status(
    bb: &BudgetBinding,
    budget: Option<&TokenBudget>,
    usage: Option<&BindingUsage>,
    now: Timestamp,
) -> BudgetBindingStatus {
    let existing = bb.status.clone().unwrap_or_default();
    let generation = bb.metadata.generation;
    let name = &bb.spec.budget_ref.name;
    let ns = bb.namespace().unwrap_or_default();
    let budget_found = match budget {
        Some(_) => conditions::Desired::new(
            "BudgetFound",
            Status::True,
            "BudgetFound",
            format!("TokenBudget {name:?} exists"),
        ),
        None => conditions::Desired::new(
            "BudgetFound",
            Status::False,
            "BudgetNotFound",
            format!("TokenBudget {name:?} not found in namespace {ns:?}; usage is not counted until it exists"),
        ),
    };
    let valid = validate::binding(&bb.spec);
    let ready = match (&valid, budget) {
        (Err(e), _) => conditions::Desired::new("Ready", Status::False, "InvalidSpec", e.to_string()),
        (Ok(_), None) => {
            conditions::Desired::new("Ready", Status::False, "BudgetNotFound", budget_found.message.clone())
        }
        (Ok(_), Some(_)) => conditions::Desired::new(
            "Ready",
            Status::True,
            "Reconciled",
            format!("charging TokenBudget {name:?}"),
        ),
    };
    let mut desired = vec![ready, budget_found];
    // Usage only while the binding counts: valid, with its budget, and scraped at least once
    // by that budget.
    let usage = usage.filter(|u| budget.is_some() && valid.is_ok() && u.budget == *name);
    if let Some(u) = usage {
        desired.push(account::scrape_condition(&u.report));
    }
    let status = BudgetBindingStatus {
        budget: Some(name.clone()),
        since: Some(charging_since(bb, &existing, now)),
        workloads: usage.map(|u| u.report.workloads as i64),
        pods: usage.map(|u| u.report.pods as i64),
        scraped_pods: usage.map(|u| u.report.scraped_pods as i64),
        last_scrape_time: usage.map(|u| timestamp(u.scraped_at)),
        used_tokens: usage.map(|u| i64::try_from(u.report.used_tokens).unwrap_or(i64::MAX)),
        conditions: conditions::merge(&existing.conditions, &desired, generation, now),
        observed_generation: generation,
    };
    keep_scrape_time_when_idle(&existing, status)
}

/// Since when the binding charges its budget (`status.since`): kept while `budgetRef` names
/// the budget the status does; the binding's creation the first time (nothing else can have
/// counted its pods), or a status written before `since` existed; and `now` when `budgetRef`
/// changed, so that the new budget does not count what the old one did (accounting rule 3).
fn charging_since(bb: &BudgetBinding, existing: &BudgetBindingStatus, now: Timestamp) -> String {
    let created = || bb.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0).to_string();
    let since = existing.since.as_deref().map(str::parse::<Timestamp>);
    match (&existing.budget, since) {
        (Some(budget), Some(Ok(since))) if *budget == bb.spec.budget_ref.name => since.to_string(),
        (Some(budget), None) if *budget == bb.spec.budget_ref.name => created(),
        (None, _) => created(),
        // Moved to another budget, or a `since` that is no time (written by hand). Start times
        // are whole seconds, and a pod that started in the second of `since` counts whole:
        // the next whole second, so that a pod the old budget counted never does.
        (Some(_), _) => Timestamp::from_second(now.as_second() + 1).unwrap_or(now).to_string(),
    }
}

/// `lastScrapeTime`: the scrape time to the second.
fn timestamp(t: Timestamp) -> String {
    t.round(jiff::Unit::Second).unwrap_or(t).to_string()
}

/// A cycle that changed nothing else leaves `lastScrapeTime` as it was: an idle binding is
/// never written, so nothing that watches bindings (GitOps tools, say) wakes every cycle. The
/// time of each budget's latest cycle is the metric `tokenbudget_last_cycle_timestamp_seconds`.
fn keep_scrape_time_when_idle(existing: &BudgetBindingStatus, mut status: BudgetBindingStatus) -> BudgetBindingStatus {
    if existing.last_scrape_time.is_some() && status.last_scrape_time.is_some() {
        let fresh = std::mem::replace(&mut status.last_scrape_time, existing.last_scrape_time.clone());
        if status != *existing {
            status.last_scrape_time = fresh;
        }
    }
    status
}

async fn reconcile(guard: Arc<DeserializeGuard<BudgetBinding>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Ok(bb) = &guard.0 else {
        return status::report_unreadable(guard.as_ref(), &ctx).await;
    };
    let ns = bb.namespace().ok_or(Error::NoNamespace)?;
    let budgets: Api<TokenBudget> = Api::namespaced(ctx.client.clone(), &ns);
    // A direct read, not a cache: the budget watch that triggered us may be ahead of any store.
    let budget = budgets.get_opt(&bb.spec.budget_ref.name).await?;
    let usage = ctx
        .binding_usage
        .get(&BindingRef::from_obj(guard.as_ref()), ctx.leadership.term());
    let new = desired_status(bb, budget.as_ref(), usage.as_ref(), ctx.clock.now());
    if bb.status.as_ref() != Some(&new) {
        let api = Api::<BudgetBinding>::namespaced(ctx.client.clone(), &ns);
        if bb.status.as_ref().and_then(|s| s.since.as_ref()) == new.since.as_ref() {
            status::apply(&ctx, &api, bb, &new).await?;
        } else {
            // A new `since` is computed from this copy of the binding: written only if it is
            // still the latest, so that a reconcile of an older copy cannot move it again.
            status::apply_unchanged(&ctx, &api, bb, &new).await?;
        }
        let old = bb.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
        events::announce_not_ready(&ctx, bb, old, &new.conditions).await;
    }
    Ok(Action::requeue(RESYNC))
}

/// Builds the controller: the BudgetBindings in `bindings`' scope, plus a watch on TokenBudgets
/// that wakes the bindings referring to a budget when it appears, changes or goes away.
///
/// `wake_budgets` hears the budget of every binding that is created, deleted or whose spec
/// changes, or whose status names a budget (`budget` and `since`, with which the budget
/// begins counting it) anew; its other status writes, every cycle, do not count: they would
/// start the next cycle at once. It hears them after the binding store has seen the change.
pub fn controller(
    bindings: Api<DeserializeGuard<BudgetBinding>>,
    budgets: Api<DeserializeGuard<TokenBudget>>,
    health: super::sync::WatchHealth,
    wake_budgets: futures::channel::mpsc::UnboundedSender<BudgetRef>,
) -> Controller<DeserializeGuard<BudgetBinding>> {
    // Each binding's generation, budget and status (`budget`, `since`) as last seen: a binding
    // that moves to another budget wakes the one it left too, which stops counting its pods
    // at once.
    type Seen = (Option<i64>, Option<BudgetRef>, Option<(String, String)>);
    let mut seen: HashMap<BindingRef, Seen> = HashMap::new();
    let controller = super::guarded_controller(bindings, health, move |event| {
        use kube::runtime::watcher::Event;
        let (guard, deleted) = match event {
            Event::Apply(g) | Event::InitApply(g) => (g, false),
            Event::Delete(g) => (g, true),
            Event::Init | Event::InitDone => return,
        };
        let key = BindingRef::from_obj(guard);
        let ns = guard.namespace().unwrap_or_default();
        let budget = guard
            .0
            .as_ref()
            .ok()
            .map(|bb| BudgetRef::new(&bb.spec.budget_ref.name).within(&ns));
        let generation = guard.meta().generation;
        let charging = guard.0.as_ref().ok().and_then(|bb| {
            let status = bb.status.as_ref()?;
            Some((status.budget.clone()?, status.since.clone()?))
        });
        let before = if deleted {
            seen.remove(&key)
        } else {
            seen.insert(key, (generation, budget.clone(), charging.clone()))
        };
        if !deleted
            && before
                .as_ref()
                .is_some_and(|(g, _, c)| *g == generation && *c == charging)
        {
            return;
        }
        let left = before.and_then(|(_, b, _)| b).filter(|b| Some(b) != budget.as_ref());
        for budget in budget.into_iter().chain(left) {
            let _ = wake_budgets.unbounded_send(budget);
        }
    });
    let index = controller.store();
    controller.watches(
        budgets,
        watcher::Config::default(),
        move |tb: DeserializeGuard<TokenBudget>| {
            let ns = tb.namespace();
            let name = tb.name_any();
            index
                .state()
                .into_iter()
                .filter(|guard| {
                    guard
                        .0
                        .as_ref()
                        .is_ok_and(|bb| bb.namespace() == ns && bb.spec.budget_ref.name == name)
                })
                .map(|guard| ObjectRef::from_obj(guard.as_ref()))
                .collect::<Vec<_>>()
        },
    )
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    controller: Controller<DeserializeGuard<BudgetBinding>>,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    super::run_controller(CONTROLLER, controller, ctx, shutdown, |bb, ctx| {
        reconcile(bb, ctx).boxed()
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const BINDING: &str = "apiVersion: tokenbudget.io/v1alpha1\nkind: BudgetBinding\n\
        metadata: {name: s, namespace: agents, generation: 2}\n\
        spec: {budgetRef: {name: research}, workloads: [{kind: Deployment, name: summarizer}]}";
    const BUDGET: &str = "apiVersion: tokenbudget.io/v1alpha1\nkind: TokenBudget\n\
        metadata: {name: research, namespace: agents}\nspec: {limits: {tokens: 10}}";

    fn now() -> Timestamp {
        "2026-11-28T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn missing_budget_is_a_condition_not_an_error() {
        let bb: BudgetBinding = serde_yaml::from_str(BINDING).unwrap();
        let status = desired_status(&bb, None, None, now());
        let found = conditions::find(&status.conditions, "BudgetFound").unwrap();
        assert_eq!(
            (found.status.as_str(), found.reason.as_str()),
            ("False", "BudgetNotFound")
        );
        assert!(found.message.contains("\"research\""));
        assert!(!conditions::is_true(&status.conditions, "Ready"));
        assert_eq!(status.budget.as_deref(), Some("research"));
        assert_eq!(status.observed_generation, Some(2));
    }

    #[test]
    fn budget_found_flips_when_the_budget_appears() {
        let mut bb: BudgetBinding = serde_yaml::from_str(BINDING).unwrap();
        bb.status = Some(desired_status(&bb, None, None, now()));
        let tb: TokenBudget = serde_yaml::from_str(BUDGET).unwrap();
        let later: Timestamp = "2026-11-28T12:05:00Z".parse().unwrap();
        let status = desired_status(&bb, Some(&tb), None, later);
        assert!(conditions::is_true(&status.conditions, "BudgetFound"));
        assert!(conditions::is_true(&status.conditions, "Ready"));
        let found = conditions::find(&status.conditions, "BudgetFound").unwrap();
        assert_eq!(found.last_transition_time.0, later);
    }

    #[test]
    fn an_idle_cycle_leaves_the_scrape_time_and_a_change_moves_it() {
        let mut bb: BudgetBinding = serde_yaml::from_str(BINDING).unwrap();
        let tb: TokenBudget = serde_yaml::from_str(BUDGET).unwrap();
        let usage = |tokens: u64, at: &str| BindingUsage {
            budget: "research".into(),
            report: account::BindingReport {
                name: "s".into(),
                pods: 1,
                scraped_pods: 1,
                used_tokens: tokens,
                ..Default::default()
            },
            scraped_at: at.parse().unwrap(),
            term: 0,
        };
        bb.status = Some(desired_status(
            &bb,
            Some(&tb),
            Some(&usage(5, "2026-11-28T12:00:00Z")),
            now(),
        ));
        let idle = desired_status(&bb, Some(&tb), Some(&usage(5, "2026-11-28T12:00:15Z")), now());
        assert_eq!(Some(&idle), bb.status.as_ref(), "nothing to write");
        let busy = desired_status(&bb, Some(&tb), Some(&usage(9, "2026-11-28T12:00:30Z")), now());
        assert_eq!(busy.last_scrape_time.as_deref(), Some("2026-11-28T12:00:30Z"));
        assert_eq!(busy.used_tokens, Some(9));
    }

    #[test]
    fn an_invalid_binding_is_not_ready_even_with_its_budget() {
        let mut bb: BudgetBinding = serde_yaml::from_str(BINDING).unwrap();
        bb.spec.metrics.timeout = "1m".into();
        let tb: TokenBudget = serde_yaml::from_str(BUDGET).unwrap();
        let status = desired_status(&bb, Some(&tb), None, now());
        let ready = conditions::find(&status.conditions, "Ready").unwrap();
        assert_eq!(ready.reason, "InvalidSpec");
        assert!(conditions::is_true(&status.conditions, "BudgetFound"));
    }

    #[test]
    fn a_binding_charges_since_its_creation_and_a_moved_one_since_the_move() {
        let mut bb: BudgetBinding = serde_yaml::from_str(BINDING).unwrap();
        bb.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-11-01T00:00:00Z".parse().unwrap(),
        ));
        let since = |bb: &BudgetBinding| desired_status(bb, None, None, now()).since;
        // New: since its creation; nothing else counted its pods.
        assert_eq!(since(&bb).as_deref(), Some("2026-11-01T00:00:00Z"));
        // Kept while it charges the same budget, whatever else changes.
        bb.status = Some(desired_status(&bb, None, None, now()));
        bb.spec.workloads.clear();
        assert_eq!(since(&bb).as_deref(), Some("2026-11-01T00:00:00Z"));
        // Moved to another budget: since the next whole second.
        bb.spec.budget_ref.name = "other".into();
        assert_eq!(since(&bb).as_deref(), Some("2026-11-28T12:00:01Z"));
        // A status written before `since` existed: since its creation.
        bb.spec.budget_ref.name = "research".into();
        bb.status.as_mut().unwrap().since = None;
        assert_eq!(since(&bb).as_deref(), Some("2026-11-01T00:00:00Z"));
        // A `since` that is no time, written by hand: as for a move.
        bb.status.as_mut().unwrap().since = Some("yesterday".into());
        assert_eq!(since(&bb).as_deref(), Some("2026-11-28T12:00:01Z"));
    }
}
