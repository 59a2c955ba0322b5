//! Enforcement inside the budget reconcile: observe the workloads from the reflector stores,
//! decide (pure, `crate::enforce::decide`), act on the differences, report.

use std::{collections::BTreeSet, time::Duration};

use jiff::Timestamp;
use kube::{ResourceExt, runtime::events::EventType};

use super::{
    Context, conditions,
    workloads::{self, Snapshot},
};
use crate::{
    api::{
        BudgetBindingSpec, BudgetPhase, EnforcedWorkload, QuotaUsage, TokenBudget, TokenBudgetStatus, WorkloadKind,
        WorkloadSelector,
    },
    enforce::{
        self,
        act::{self, ActError},
        decide::{self, Budget, Step},
    },
    validate,
};

/// What enforcement adds to the budget's status and requeue.
pub struct Outcome {
    pub enforced: Vec<EnforcedWorkload>,
    pub condition: conditions::Desired,
    pub compute_quota: Option<QuotaUsage>,
    /// Reconcile again by then (the end of a grace period, or a retry after a conflict).
    pub wake_at: Option<Timestamp>,
    /// Every write succeeded.
    pub complete: bool,
}

/// Decides and acts for one budget. `status` is the budget's new usage status (phase,
/// remaining tokens, conditions already merged). With `deleting`, everything is undone.
/// The caller has checked that the stores have synced.
pub async fn enforce(
    ctx: &Context,
    view: View<'_>,
    tb: &TokenBudget,
    status: &TokenBudgetStatus,
    deleting: bool,
    now: Timestamp,
    scraped: std::time::Instant,
) -> Outcome {
    let ns = tb.namespace().unwrap_or_default();
    let name = tb.name_any();
    let observed = observe(&view, &name);
    let exhausted_since = conditions::find(&status.conditions, "Exhausted")
        .filter(|c| c.status == "True")
        .map(|c| c.last_transition_time.0);
    let budget = Budget {
        name: &name,
        action: tb.spec.enforcement.action,
        grace_period: validate::parse_duration(&tb.spec.enforcement.grace_period).unwrap_or(Duration::ZERO),
        freeze_quota: tb.spec.enforcement.freeze_quota,
        quota: tb.spec.compute_quota.as_ref().map(|q| &q.hard),
        phase: status.phase.unwrap_or(BudgetPhase::Active),
        exhausted_since,
        remaining_tokens: status.remaining_tokens.map(|r| u64::try_from(r).unwrap_or(0)),
        limit_tokens: tb.spec.limits.tokens.map(|l| u64::try_from(l).unwrap_or(0)),
        deleting,
    };
    let plan = decide::decide(&budget, &observed, now);

    let mut failures: Vec<String> = Vec::new();
    let mut retry = false;
    let mut note = |e: ActError| {
        if matches!(e, ActError::Conflict(_)) {
            retry = true;
        }
        tracing::warn!(budget = %name, namespace = %ns, error = %e, "enforcement");
        failures.push(e.to_string());
    };

    // The quota first: it is frozen before workloads are scaled down, and thawed before they
    // are scaled back up (so their new pods are not refused).
    let mut compute_quota = None;
    let had_quota = tb.status.as_ref().is_some_and(|s| s.compute_quota.is_some());
    if plan.quota.is_some() || had_quota || deleting {
        match act::sync_quota(&ctx.client, tb, plan.quota.as_ref()).await {
            Ok(Some(q)) => {
                compute_quota = Some(QuotaUsage {
                    name: enforce::quota_name(&name),
                    hard: q.hard.unwrap_or_default(),
                    used: q.used.unwrap_or_default(),
                })
            }
            Ok(None) => {
                compute_quota = plan.quota.clone().map(|hard| QuotaUsage {
                    name: enforce::quota_name(&name),
                    hard,
                    used: Default::default(),
                })
            }
            Err(e) => note(e),
        }
    }

    // Every workload's own writes first (the scale-downs are what stop the spending), then
    // the pods' annotations, then the Events: a budget with many workloads or pods does not
    // delay one scale-down behind another's pod writes.
    let mut done = Vec::new();
    for w in &plan.workloads {
        match act::apply_steps(&ctx.client, &ns, w).await {
            Ok(()) => {
                let action = w.steps.iter().find_map(|s| match s {
                    Step::Scale(0) => Some("scale_down"),
                    Step::Suspend(true) => Some("suspend"),
                    Step::Scale(_) | Step::Suspend(false) => Some("restore"),
                    Step::Annotate(_) => None,
                });
                if let Some(action) = action {
                    if action != "restore" {
                        ctx.metrics.enforcement_latency.observe(scraped.elapsed().as_secs_f64());
                    }
                    ctx.metrics.enforcement_actions.with_label_values(&[action]).inc();
                }
                done.push(w);
            }
            Err(e) => note(e),
        }
    }
    for w in &done {
        if let Err(e) = act::annotate_pods(&ctx.client, &ns, w).await {
            note(e);
        }
    }
    for w in done {
        if let Some(notice) = &w.notice {
            ctx.publish(tb, EventType::Normal, notice.reason, notice.message.clone())
                .await;
        }
    }
    if !failures.is_empty() {
        ctx.metrics.enforcement_failures.inc_by(failures.len() as u64);
    }

    let mut condition = conditions::Desired::new(
        "Enforced",
        plan.condition.status,
        plan.condition.reason,
        plan.condition.message,
    );
    if !failures.is_empty() {
        condition.message = format!("{}; not done yet: {}", condition.message, failures.join("; "));
    }
    let complete = failures.is_empty();
    let retry_at = retry.then(|| now + jiff::SignedDuration::from_millis(500));
    Outcome {
        enforced: plan.enforced,
        condition,
        compute_quota,
        wake_at: [plan.wake_at, retry_at].into_iter().flatten().min(),
        complete,
    }
}

/// What enforcement sees of the budget's namespace.
pub struct View<'a> {
    pub snapshot: &'a Snapshot,
    /// The workloads its valid bindings name now.
    pub bound: &'a BTreeSet<workloads::WorkloadId>,
}

/// The workloads of the budget as they are now: every workload its bindings name, and every
/// workload still annotated with its name (from a binding or entry since removed), with their
/// pods. The snapshot holds the budget's own namespace only.
fn observe(view: &View, budget: &str) -> Vec<decide::Workload> {
    let (snapshot, bound) = (view.snapshot, view.bound);
    let mut all = bound.clone();
    all.extend(
        snapshot
            .workload_metas()
            .filter(|(_, meta)| {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(enforce::BUDGET))
                    .is_some_and(|b| b == budget)
            })
            .map(|(kind, meta)| workloads::WorkloadId {
                kind,
                name: meta.name.clone().unwrap_or_default(),
            }),
    );

    // Their pods, through the same ownership rules as accounting.
    let by_name = BudgetBindingSpec {
        budget_ref: crate::api::BudgetRef { name: budget.into() },
        workloads: all
            .iter()
            .map(|id| WorkloadSelector {
                kind: id.kind,
                name: Some(id.name.clone()),
                selector: None,
            })
            .collect(),
        metrics: Default::default(),
    };
    let resolution = workloads::resolve(&by_name, snapshot);

    all.into_iter()
        .filter_map(|id| {
            let (meta, replicas, suspended) = match id.kind {
                WorkloadKind::Deployment => snapshot
                    .deployments
                    .iter()
                    .find(|o| o.metadata.name.as_deref() == Some(&id.name))
                    .map(|o| (o.metadata.clone(), Some(o.spec.replicas.unwrap_or(1)), None))?,
                WorkloadKind::StatefulSet => snapshot
                    .stateful_sets
                    .iter()
                    .find(|o| o.metadata.name.as_deref() == Some(&id.name))
                    .map(|o| (o.metadata.clone(), Some(o.spec.replicas.unwrap_or(1)), None))?,
                WorkloadKind::Job => snapshot
                    .jobs
                    .iter()
                    .find(|o| o.metadata.name.as_deref() == Some(&id.name))
                    .map(|o| {
                        let suspended = o.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
                        (o.metadata.clone(), None, Some(suspended))
                    })?,
                WorkloadKind::CronJob => snapshot
                    .cron_jobs
                    .iter()
                    .find(|o| o.metadata.name.as_deref() == Some(&id.name))
                    .map(|o| (o.metadata.clone(), None, Some(o.spec.suspend.unwrap_or(false))))?,
            };
            let pods = resolution
                .pods
                .iter()
                .filter(|p| p.workload == id && p.pod.metadata.deletion_timestamp.is_none())
                .map(|p| decide::Pod {
                    name: p.pod.name_any(),
                    annotations: p.pod.metadata.annotations.clone().unwrap_or_default(),
                })
                .collect();
            Some(decide::Workload {
                bound: bound.contains(&id),
                kind: id.kind,
                name: id.name,
                resource_version: meta.resource_version,
                annotations: meta.annotations.unwrap_or_default(),
                replicas,
                suspended,
                pods,
            })
        })
        .collect()
}
