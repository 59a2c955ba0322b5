//! Act: the enforcement writes of a plan. The quota first (frozen before workloads are scaled
//! down, thawed before they are scaled back up, so their new pods are not refused); then each
//! workload's own writes (the scale-downs are what stop the spending); then the pods'
//! annotations, so that a budget with many pods does not delay one scale-down behind another
//! workload's pod writes. A failed write is reported, never fatal: the others still happen.

use std::time::Instant;

use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use super::Lifecycle;
use crate::{
    api::{QuotaUsage, TokenBudget},
    conditions::Desired,
    controller::Context,
    enforce::{
        self,
        act::{self, ActError},
        decide::{Notice, Plan, Step, WorkloadPlan},
    },
};

/// What the writes of a plan achieved.
#[derive(Debug, Default)]
pub struct Acted {
    /// What could not be written, worded for the `Enforced` condition.
    pub failures: Vec<String>,
    /// A write met a conflict: decide again soon, on the newer version.
    pub conflict: bool,
    /// The budget's ResourceQuota as it is now, for `status.computeQuota`.
    pub compute_quota: Option<QuotaUsage>,
    /// The transitions of the workloads written, for Events.
    pub notices: Vec<Notice>,
}

impl Acted {
    /// Every write succeeded.
    pub fn complete(&self) -> bool {
        self.failures.is_empty()
    }

    /// The `Enforced` condition: the plan's verdict, and what is not done yet.
    pub fn condition(&self, plan: &Plan) -> Desired {
        let verdict = &plan.condition;
        let mut message = verdict.message.clone();
        if !self.complete() {
            message = format!("{message}; not done yet: {}", self.failures.join("; "));
        }
        Desired::new("Enforced", verdict.status.into(), verdict.reason, message)
    }

    /// When to decide again: the end of a grace period, or a retry after a conflict.
    pub fn wake_at(&self, plan: &Plan, now: Timestamp) -> Option<Timestamp> {
        let retry = self.conflict.then(|| now + SignedDuration::from_millis(500));
        [plan.wake_at, retry].into_iter().flatten().min()
    }

    fn failed(&mut self, tb: &TokenBudget, error: ActError) {
        self.conflict |= matches!(error, ActError::Conflict(_));
        tracing::warn!(budget = %tb.name_any(), error = %error, "enforcement");
        self.failures.push(error.to_string());
    }
}

/// Applies `plan` to the budget's quota, workloads and pods. `answered` is when the usage that
/// led to the plan was in, for the enforcement-latency metric.
pub async fn act(ctx: &Context, tb: &TokenBudget, plan: &Plan, lifecycle: Lifecycle, answered: Instant) -> Acted {
    let mut acted = Acted::default();
    sync_quota(ctx, tb, plan, lifecycle, &mut acted).await;
    let namespace = tb.namespace().unwrap_or_default();
    let mut written = Vec::new();
    for workload in &plan.workloads {
        match act::apply_steps(&ctx.client, &namespace, workload).await {
            Ok(()) => {
                count(ctx, workload, answered);
                written.push(workload);
            }
            Err(e) => acted.failed(tb, e),
        }
    }
    for workload in &written {
        if let Err(e) = act::annotate_pods(&ctx.client, &namespace, workload).await {
            acted.failed(tb, e);
        }
    }
    acted.notices = written.iter().filter_map(|w| w.notice.clone()).collect();
    if !acted.complete() {
        ctx.metrics.enforcement_failures.inc_by(acted.failures.len() as u64);
    }
    acted
}

/// Brings the budget's ResourceQuota to the plan's, when it has or had one (or the budget is
/// going: a quota the status never recorded is deleted too).
async fn sync_quota(ctx: &Context, tb: &TokenBudget, plan: &Plan, lifecycle: Lifecycle, acted: &mut Acted) {
    let had_quota = tb.status.as_ref().is_some_and(|s| s.compute_quota.is_some());
    if plan.quota.is_none() && !had_quota && lifecycle == Lifecycle::Live {
        return;
    }
    let name = enforce::quota_name(&tb.name_any());
    match act::sync_quota(&ctx.client, tb, plan.quota.as_ref()).await {
        Ok(Some(quota)) => {
            acted.compute_quota = Some(QuotaUsage {
                name,
                hard: quota.hard.unwrap_or_default(),
                used: quota.used.unwrap_or_default(),
            })
        }
        Ok(None) => {
            acted.compute_quota = plan.quota.clone().map(|hard| QuotaUsage {
                name,
                hard,
                used: Default::default(),
            })
        }
        Err(e) => acted.failed(tb, e),
    }
}

/// Counts a workload's enforcement action, and how long after the scrapes a stop came.
fn count(ctx: &Context, workload: &WorkloadPlan, answered: Instant) {
    let action = workload.steps.iter().find_map(|s| match s {
        Step::Scale(0) => Some("scale_down"),
        Step::Suspend(true) => Some("suspend"),
        Step::Scale(_) | Step::Suspend(false) => Some("restore"),
        Step::Annotate(_) => None,
    });
    if let Some(action) = action {
        if action != "restore" {
            ctx.metrics
                .enforcement_latency
                .observe(answered.elapsed().as_secs_f64());
        }
        ctx.metrics.enforcement_actions.with_label_values(&[action]).inc();
    }
}
