//! Compute: from the validated spec, the observed usage and workloads, and the time, the
//! budget's desired status and its enforcement plan. Pure (no I/O); the one thing it changes
//! is the account's memory of since when the budget is exhausted. The conditions are merged
//! once, in [`status`], after the enforcement writes, whose failures the `Enforced` condition
//! reports.

use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;

use super::{
    act::Acted,
    observe::{Cycle, Observed},
};
use crate::{
    api::{BudgetPhase, EnforcementAction, PacingAction, TokenBudget, TokenBudgetStatus},
    conditions::{self, Desired, Status},
    controller::{RESYNC, pool::Parent},
    enforce::{
        decide::{self, PaceTarget, Plan},
        observe,
    },
    usage::{
        account,
        pacing::{Pacer, Published, Reading},
    },
    validate::{SpecErrors, ValidBudget, ValidPacing},
};

/// The budget as it should be, before the enforcement writes.
pub struct Intent {
    /// The status without its conditions merged.
    pub status: TokenBudgetStatus,
    pub conditions: Vec<Desired>,
    /// The changes to the workloads and the quota; `None` for an invalid spec, which
    /// changes nothing until it is fixed, and for a decision held.
    pub plan: Option<Plan>,
    /// Since when the budget is exhausted, as enforcement measures it.
    pub exhausted_since: Option<Timestamp>,
    /// Whether enforcement took no decision because the view was stale: what it last decided
    /// (the `Enforced` condition, `enforced`, `computeQuota`) stays as it is.
    pub held: bool,
}

/// The desired status and plan of a live budget. A grace period runs from when the budget
/// became exhausted: the earlier of what its status says and what its account remembers, so
/// that it ends on time even while status writes fail.
pub fn intent(
    tb: &TokenBudget,
    spec: &Result<ValidBudget, SpecErrors>,
    observed: &mut Observed,
    parent: Option<&Parent>,
    now: Timestamp,
) -> Intent {
    let existing = tb.status.clone().unwrap_or_default();
    let ready = ready_condition(spec);
    let (Ok(spec), Some(cycle)) = (spec, &mut observed.cycle) else {
        // Invalid: only Ready says so; the usage last counted stays as it was.
        return Intent {
            status: existing,
            conditions: vec![ready],
            plan: None,
            exhausted_since: None,
            held: false,
        };
    };
    let (mut status, usage_conditions) = account::usage_status(spec, &cycle.account, &cycle.window);
    let mut conditions = vec![ready];
    conditions.extend(usage_conditions);
    let drawn = within_pool(&mut status, &mut conditions, spec, parent, cycle.account.share());
    let persisted = conditions
        .iter()
        .find(|c| c.type_ == "Exhausted" && c.status == Status::True)
        .map(|c| conditions::since(&existing.conditions, c, now));
    // Remembered even when nothing is decided: a grace period runs on.
    let exhausted_since = cycle.account.exhausted_since(persisted);
    if !observed.view.is_current() {
        // A store may be behind (a binding deleted, a workload scaled meanwhile): the usage is
        // counted, but nothing is decided until every watch has listed again.
        status.enforced = existing.enforced;
        status.compute_quota = existing.compute_quota;
        status.pacing = existing.pacing;
        return Intent {
            status,
            conditions,
            plan: None,
            exhausted_since,
            held: true,
        };
    }
    let workloads = observe::workloads(&observed.objects, &cycle.bound, &tb.name_any(), &observed.holds);
    let forecast = forecast(spec, &tb.name_any(), cycle, &status, &workloads, now);
    let own_remaining = status.remaining_tokens.map(|r| u64::try_from(r).unwrap_or(0));
    let budget = decide::Budget {
        name: &tb.name_any(),
        action: drawn.action,
        grace_period: drawn.grace_period,
        freeze_quota: spec.freeze_quota,
        quota: spec.quota.as_ref(),
        phase: status.phase.unwrap_or(BudgetPhase::Active),
        exhausted_since,
        // What the agents read: the fewer of the budget's and its pool's tokens left.
        remaining_tokens: match (own_remaining, drawn.pool_remaining) {
            (Some(own), Some(pool)) => Some(own.min(pool)),
            (own, pool) => own.or(pool),
        },
        limit_tokens: spec.limit_tokens,
        deleting: false,
        pacing: forecast.as_ref().and_then(|(published, pacing)| {
            (published.engaged() && pacing.action == PacingAction::ScaleReplicas).then_some(PaceTarget {
                pace: published.pace,
                min_replicas: pacing.min_replicas,
            })
        }),
    };
    let plan = decide::decide(&budget, &workloads, now);
    status.enforced = plan.enforced.clone();
    if let Some((published, pacing)) = &forecast {
        status.pacing = Some(published.status());
        conditions.push(published.condition(&pacing_note(published, pacing.action, &plan)));
    }
    Intent {
        status,
        conditions,
        plan: Some(plan),
        exhausted_since,
        held: false,
    }
}

/// The pacing forecast of this cycle, when `spec.pacing` is set: the account's pacer takes
/// the cycle's reading (the capacity the paceable workloads run at, for ScaleReplicas) and
/// says what is published.
fn forecast<'a>(
    spec: &'a ValidBudget,
    name: &str,
    cycle: &mut Cycle,
    status: &TokenBudgetStatus,
    workloads: &[decide::Workload],
    now: Timestamp,
) -> Option<(Published, &'a ValidPacing)> {
    let Some(pacing) = spec.pacing.as_ref() else {
        // Without spec.pacing there is nothing to remember: set again, it starts afresh.
        *cycle.account.pacer_mut() = Pacer::default();
        return None;
    };
    let capacity = match pacing.action {
        PacingAction::ScaleReplicas => decide::capacity(name, workloads),
        PacingAction::None => 1.0,
    };
    let reading = Reading {
        now,
        resets_at: cycle.window.end.as_ref().map(|end| end.timestamp()),
        tokens: cycle.account.ledger().used_tokens(spec.token_types.as_deref()),
        cost: (status.used.as_ref())
            .and_then(|u| u.cost.as_deref())
            .and_then(|c| c.parse().ok())
            .unwrap_or(0.0),
        limit_tokens: spec.limit_tokens,
        limit_cost: spec.limit_cost.and_then(|c| c.to_string().parse().ok()),
        capacity,
    };
    let published = cycle.account.pacer_mut().observe(&reading, pacing.window).clone();
    Some((published, pacing))
}

/// What the Paced condition adds to its message while pacing is engaged: the replicas
/// ScaleReplicas runs, the workloads it leaves to their autoscaler, or that only agents pace.
fn pacing_note(published: &Published, action: PacingAction, plan: &Plan) -> String {
    if !published.engaged() {
        return String::new();
    }
    if action == PacingAction::None {
        return "agents read status.pacing; no replicas changed (pacing.action None)".into();
    }
    let paced: Vec<String> = (plan.paced.iter())
        .map(|p| format!("{} at {} of {} replicas", p.workload, p.replicas, p.original))
        .collect();
    let mut parts = Vec::new();
    if !paced.is_empty() {
        parts.push(conditions::bounded_list(&paced, ", ", 5, 400));
    }
    if !plan.autoscaled.is_empty() {
        parts.push(format!(
            "left to their HorizontalPodAutoscaler: {} (lower its maxReplicas by hand, or let the agents read the pace)",
            conditions::bounded_list(&plan.autoscaled, ", ", 5, 300)
        ));
    }
    parts.join("; ")
}

/// How the budget enforces, with its pool: the action and grace period that apply, and the
/// pool's tokens left.
struct Drawn {
    action: EnforcementAction,
    grace_period: Duration,
    pool_remaining: Option<u64>,
}

/// The budget within its pool: `status.parent` (its share, and the pool as seen), the
/// ParentAccepted condition and, when the pool that accepts it is used up or past a
/// threshold, the budget's own phase and conditions as if it were itself (reasons
/// ParentExhausted, ParentThresholdReached). The budget's own limits stay an inner cap. The
/// action: the pool's when the pool alone puts the budget in its phase, the budget's own when
/// its own usage does, the stricter of both (and the shorter grace period) when both do.
fn within_pool(
    status: &mut TokenBudgetStatus,
    conditions: &mut Vec<Desired>,
    spec: &ValidBudget,
    parent: Option<&Parent>,
    share: Option<&crate::usage::pool::Share>,
) -> Drawn {
    let own = Drawn {
        action: spec.action,
        grace_period: spec.grace_period,
        pool_remaining: None,
    };
    let Some(parent) = parent else { return own };
    status.parent = parent.share_status(share);
    conditions.extend(parent.condition.clone());
    let Some(pool) = &parent.accepted else { return own };
    let own_phase = status.phase.unwrap_or(BudgetPhase::Active);
    let pool_phase = pool.phase.unwrap_or(BudgetPhase::Active);
    let name = &parent.name;
    let pool_remaining = pool.remaining_tokens.map(|r| u64::try_from(r).unwrap_or(0));
    if rank(pool_phase) > rank(own_phase) {
        let replace = |conditions: &mut Vec<Desired>, desired: Desired| {
            conditions.retain(|c| c.type_ != desired.type_);
            conditions.push(desired);
        };
        if pool_phase == BudgetPhase::Exhausted {
            replace(
                conditions,
                Desired::new(
                    "Exhausted",
                    Status::True,
                    "ParentExhausted",
                    format!(
                        "the ClusterTokenBudget {name} (the pool this budget draws from) is used up for this period"
                    ),
                ),
            );
        }
        if own_phase == BudgetPhase::Active {
            let percent = pool.percent_used.unwrap_or_default();
            replace(
                conditions,
                Desired::new(
                    "ThresholdReached",
                    Status::True,
                    "ParentThresholdReached",
                    format!("{percent}% of the ClusterTokenBudget {name} is used, past one of its thresholds"),
                ),
            );
        }
        status.phase = Some(pool_phase);
        return Drawn {
            action: pool.spec.action,
            grace_period: pool.spec.grace_period,
            pool_remaining,
        };
    }
    if rank(pool_phase) == rank(own_phase) && own_phase != BudgetPhase::Active {
        return Drawn {
            action: stricter(spec.action, pool.spec.action),
            grace_period: spec.grace_period.min(pool.spec.grace_period),
            pool_remaining,
        };
    }
    Drawn { pool_remaining, ..own }
}

fn rank(phase: BudgetPhase) -> u8 {
    match phase {
        BudgetPhase::Active => 0,
        BudgetPhase::Warning => 1,
        BudgetPhase::Exhausted => 2,
    }
}

/// The stricter of two actions: None < Annotate < ScaleDown.
fn stricter(a: EnforcementAction, b: EnforcementAction) -> EnforcementAction {
    let rank = |a: EnforcementAction| match a {
        EnforcementAction::None => 0,
        EnforcementAction::Annotate => 1,
        EnforcementAction::ScaleDown => 2,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// The plan of a budget being deleted: every workload still carrying its marks restored (none
/// is bound any more), its quota deleted. The spec plays no part but for its action, which
/// words the condition; it need not even be valid.
pub fn restore_plan(tb: &TokenBudget, observed: &Observed, now: Timestamp) -> Plan {
    let name = tb.name_any();
    let budget = decide::Budget {
        name: &name,
        action: tb.spec.enforcement.action,
        grace_period: Duration::ZERO,
        freeze_quota: false,
        quota: None,
        phase: tb.status.as_ref().and_then(|s| s.phase).unwrap_or(BudgetPhase::Active),
        exhausted_since: None,
        remaining_tokens: None,
        limit_tokens: None,
        deleting: true,
        pacing: None,
    };
    let workloads = observe::workloads(&observed.objects, &Default::default(), &name, &Default::default());
    decide::decide(&budget, &workloads, now)
}

/// The status to write: the intent with what the writes achieved, and every condition merged
/// once into the existing ones. `Exhausted` dates from when the budget became exhausted, even
/// if the status could not say so then (its writes failed).
pub fn status(tb: &TokenBudget, intent: Intent, acted: Option<&Acted>, now: Timestamp) -> TokenBudgetStatus {
    let Intent {
        mut status,
        mut conditions,
        plan,
        exhausted_since,
        held,
    } = intent;
    if let (Some(plan), Some(acted)) = (plan, acted) {
        conditions.push(acted.condition(&plan));
        status.compute_quota = acted.compute_quota.clone();
    }
    let existing = tb.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    status.conditions = conditions::merge(existing, &conditions, tb.metadata.generation, now);
    if let Some(since) = exhausted_since
        && let Some(exhausted) = status
            .conditions
            .iter_mut()
            .find(|c| c.type_ == "Exhausted" && c.status == "True")
    {
        exhausted.last_transition_time.0 = exhausted.last_transition_time.0.min(since);
    }
    if held {
        status.conditions.extend(
            existing
                .iter()
                .filter(|c| c.type_ == "Enforced" || c.type_ == "Paced")
                .cloned(),
        );
    }
    status.observed_generation = tb.metadata.generation;
    status
}

/// When to reconcile again, measured from `now` (after the writes: a cycle lasts up to its
/// slowest scrape): the bindings' shortest interval, the end of the period, the end of a
/// grace period or a retry, whichever comes first; at least a second apart.
pub fn requeue(cycle: Option<&Cycle>, plan_wake: Option<Timestamp>, now: Timestamp) -> Duration {
    let Some(cycle) = cycle else {
        return RESYNC;
    };
    let interval = cycle
        .bindings
        .iter()
        .map(|b| b.interval)
        .min()
        .unwrap_or(RESYNC)
        .max(Duration::from_secs(1));
    let boundary = cycle.window.end.as_ref().map(|end| end.timestamp());
    [boundary, plan_wake]
        .into_iter()
        .flatten()
        .map(|at| wake_for_boundary(now, at))
        .fold(interval, Duration::min)
}

/// How long from `now` until the cycle that starts the period after `end`: 50 ms past the
/// boundary itself, not at the next scrape after it. A boundary already passed wakes at once.
pub fn wake_for_boundary(now: Timestamp, end: Timestamp) -> Duration {
    Duration::try_from(now.duration_until(end)).unwrap_or(Duration::ZERO) + Duration::from_millis(50)
}

fn ready_condition(spec: &Result<ValidBudget, SpecErrors>) -> Desired {
    match spec {
        Ok(_) => Desired::new("Ready", Status::True, "Reconciled", "the budget is valid"),
        Err(e) => Desired::new("Ready", Status::False, "InvalidSpec", e.to_string()),
    }
}
