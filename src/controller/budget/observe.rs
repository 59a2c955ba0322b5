//! Observe: what the budget reconcile knows before it decides. The namespace's workloads
//! from the stores and, for a valid budget, one accounting cycle: the period, the plan of
//! scrapes, the scrapes, and the answers folded into the budget's account.

use std::{collections::BTreeSet, sync::Arc, time::Instant};

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
        Some(spec) => {
            let cycle = account(ctx, tb, spec, &objects, now, freshness).await;
            (holds(ctx, tb, &objects, &cycle.bound), Some(cycle))
        }
        None => Default::default(),
    };
    Some(Observed {
        objects,
        holds,
        cycle,
        view,
    })
}

/// What other budgets hold of the workloads the budget looks at: those its valid bindings
/// bind (`bound`) and those annotated with its name.
fn holds(ctx: &Context, tb: &TokenBudget, objects: &Namespace, bound: &BTreeSet<WorkloadId>) -> Holds {
    let name = tb.name_any();
    let mut candidates = bound.clone();
    candidates.extend(enforce::observe::marked_by(objects, &name));
    let others = OtherBudgets {
        ctx,
        namespace: tb.namespace().unwrap_or_default(),
        name: name.clone(),
    };
    enforce::observe::holds(objects, &name, &candidates, &others)
}

/// The other budgets of a budget's namespace, and their bindings, from the stores.
struct OtherBudgets<'a> {
    ctx: &'a Context,
    namespace: String,
    /// The budget asking.
    name: String,
}

impl OtherBudgets<'_> {
    fn exists(&self, budget: &str) -> bool {
        budget != self.name
            && (self.ctx.budgets)
                .get(&BudgetRef::new(budget).within(&self.namespace))
                .is_some()
    }

    fn valid(bindings: Vec<BudgetBinding>) -> Vec<ValidBinding> {
        (bindings.iter())
            .filter_map(|binding| validate::binding(&binding.spec).ok())
            .collect()
    }
}

impl enforce::observe::Others for OtherBudgets<'_> {
    fn of(&self, budget: &str) -> Vec<ValidBinding> {
        if !self.exists(budget) {
            return Vec::new();
        }
        Self::valid(self.ctx.cluster.bindings_of(&self.namespace, budget))
    }

    fn all(&self) -> Vec<ValidBinding> {
        Self::valid(self.ctx.cluster.bindings_in(&self.namespace, |b| self.exists(b)))
    }
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

    // Each subject label of the budget is read from every binding's series.
    let labels: Vec<&str> = spec.subjects.iter().map(|s| s.label.as_str()).collect();
    account.ledger_mut().set_subject_labels(labels.iter().copied());
    let mut bindings = valid_bindings(ctx, tb);
    if !labels.is_empty() {
        for (_, valid) in &mut bindings {
            valid.extractor = Arc::new(valid.extractor.with_subjects(&labels));
        }
    }
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
