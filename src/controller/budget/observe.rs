//! Observe: what the budget reconcile knows before it decides. The namespace's workloads
//! from the stores and, for a valid budget, one accounting cycle: the period, the plan of
//! scrapes, the scrapes, and the answers folded into the budget's account.

use std::{collections::BTreeSet, time::Instant};

use jiff::Timestamp;
use kube::ResourceExt;

use crate::{
    api::{BudgetBinding, TokenBudget},
    controller::{
        Context, prometheus,
        state::{BudgetRef, Lease},
        sync::View,
    },
    enforce::{self, observe::Holds},
    usage::{
        account::BindingReport,
        cycle::{self, Binding, Freshness, Times},
        period::PeriodWindow,
    },
    validate::{self, ValidBinding, ValidBudget},
    workloads::{Namespace, WorkloadId},
};

/// What the reconcile of one budget observed.
pub struct Observed<'a> {
    /// The budget's namespace: its workloads and their pods.
    pub objects: Namespace,
    /// The workloads of the namespace that other budgets hold.
    pub holds: Holds,
    /// The accounting cycle, for a valid budget.
    pub cycle: Option<Cycle<'a>>,
    /// What the stores were worth: enforcement decides only on a current view.
    pub view: View,
}

/// One accounting cycle of a budget.
pub struct Cycle<'a> {
    /// The budget's account, back in the cache when this is dropped.
    pub account: Lease<'a>,
    pub window: PeriodWindow,
    /// Whether this cycle began a new period.
    pub period_reset: bool,
    /// What the cycle saw of each valid binding, by name.
    pub bindings: Vec<BindingReport>,
    /// The workloads the valid bindings name.
    pub bound: BTreeSet<WorkloadId>,
    /// When the cycle began, on the operator's clock.
    pub started_at: Timestamp,
    /// When the answers were in: enforcement latency counts from here.
    pub answered: Instant,
}

/// Observes the budget's namespace and, when `spec` is valid, runs its accounting cycle.
/// `None` until every store has listed: never account or enforce on a partial view. On a
/// stale view (a watch failed and has not listed again) the cycle counts but forgets nothing,
/// and [`Observed::view`] tells the caller not to decide.
pub async fn observe<'a>(
    ctx: &'a Context,
    tb: &TokenBudget,
    spec: Option<&ValidBudget>,
    now: Timestamp,
) -> Option<Observed<'a>> {
    let view = ctx.cluster.view();
    let freshness = match view {
        View::NotListed => return None,
        View::Stale(_) => Freshness::Stale,
        View::Current => Freshness::Current,
    };
    let namespace = tb.namespace().unwrap_or_default();
    let objects = ctx.cluster.namespace(&namespace);
    let (holds, cycle) = match spec {
        Some(spec) => (
            holds(ctx, tb, &objects),
            Some(account(ctx, tb, spec, &objects, now, freshness).await),
        ),
        None => Default::default(),
    };
    Some(Observed {
        objects,
        holds,
        cycle,
        view,
    })
}

/// The workloads of the namespace that other budgets hold: annotated with the name of a
/// budget that exists and binds them through one of its valid bindings.
fn holds(ctx: &Context, tb: &TokenBudget, objects: &Namespace) -> Holds {
    let namespace = tb.namespace().unwrap_or_default();
    let name = tb.name_any();
    let exists = |budget: &str| ctx.budgets.get(&BudgetRef::new(budget).within(&namespace)).is_some();
    let others: Vec<(BudgetBinding, ValidBinding)> = ctx
        .cluster
        .bindings_in(&namespace, |budget| budget != name && exists(budget))
        .into_iter()
        .filter_map(|binding| {
            let valid = validate::binding(&binding.spec).ok()?;
            Some((binding, valid))
        })
        .collect();
    let others: Vec<(&str, &ValidBinding)> = others
        .iter()
        .map(|(binding, valid)| (binding.spec.budget_ref.name.as_str(), valid))
        .collect();
    enforce::observe::holds(objects, &name, &others)
}

/// One accounting cycle: the period, the plan, the scrapes, the fold.
async fn account<'a>(
    ctx: &'a Context,
    tb: &TokenBudget,
    spec: &ValidBudget,
    objects: &Namespace,
    now: Timestamp,
    freshness: Freshness,
) -> Cycle<'a> {
    ctx.accounts.forget_missing(&ctx.budgets, &ctx.metrics);
    let origin = tb.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let mut account = ctx.accounts.lease(tb, ctx.leadership.term());
    let window = account.window(spec, now, origin);
    // The period that ended goes into the history, written with the new period's ledger.
    let period_reset = account.roll_over(spec, &window, now);

    let bindings = valid_bindings(ctx, tb);
    let bindings: Vec<Binding> = bindings
        .iter()
        .filter_map(|(binding, valid)| {
            Some(Binding {
                name: binding.metadata.name.as_deref().unwrap_or_default(),
                since: charging_since(binding, &tb.name_any())?,
                spec: valid,
            })
        })
        .collect();
    let times = Times {
        now,
        budget_created: origin,
    };
    let plan = cycle::plan(&bindings, objects, account.ledger().bound(), times);
    let bound = plan.bound.clone();
    let answers = prometheus::answers(
        &ctx.scraper,
        ctx.prometheus.as_ref(),
        &ctx.metrics,
        &bindings,
        &plan.scrapes,
        &tb.namespace().unwrap_or_default(),
        now,
    )
    .await;
    let answered = Instant::now();
    let reports = cycle::fold(
        &mut account,
        &bindings,
        plan,
        answers,
        spec.token_types.as_deref(),
        now,
        freshness,
    );
    Cycle {
        account,
        window,
        period_reset,
        bindings: reports,
        bound,
        started_at: now,
        answered,
    }
}

/// Since when `binding` charges the budget `budget`, as its status says; `None` until its
/// status names the budget: a binding just created, or moved here from another budget, is
/// counted once the binding controller has written since when (accounting rule 3), which
/// wakes the budget. A status written before `since` existed dates from the binding's creation.
fn charging_since(binding: &BudgetBinding, budget: &str) -> Option<Timestamp> {
    let status = binding.status.as_ref()?;
    if status.budget.as_deref() != Some(budget) {
        return None;
    }
    match &status.since {
        Some(since) => since.parse().ok(),
        None => binding.metadata.creation_timestamp.as_ref().map(|t| t.0),
    }
}

/// The budget's bindings whose spec is valid, by name. An invalid binding charges nothing
/// (its own status says why).
fn valid_bindings(ctx: &Context, tb: &TokenBudget) -> Vec<(BudgetBinding, ValidBinding)> {
    let namespace = tb.namespace().unwrap_or_default();
    ctx.cluster
        .bindings_of(&namespace, &tb.name_any())
        .into_iter()
        .filter_map(|binding| {
            let valid = validate::binding(&binding.spec).ok()?;
            Some((binding, valid))
        })
        .collect()
}
