//! Enforcement: what a budget does to the workloads bound to it.
//!
//! [`decide`] is pure: the budget, its usage, the workloads as they are now and the clock go
//! in; the changes that bring every workload (and the budget's ResourceQuota) to its desired
//! state come out. [`act`] applies only those changes, in an order that never loses what the
//! operator changed: the replica count to restore is written on the workload *before* it is
//! scaled down, and removed only *after* it is scaled back up.
//!
//! Everything the operator remembers about a workload lives on the workload itself, in its
//! annotations, so a restarted operator (or a deleted budget's cleanup) knows exactly what to
//! undo.

pub mod act;
pub mod decide;
pub mod observe;

/// The budget a workload (or pod) is charged to.
pub const BUDGET: &str = "tokenbudget.io/budget";
/// `ok`, `warning` or `exhausted`.
pub const STATE: &str = "tokenbudget.io/state";
/// Tokens left this period, when the budget has a token limit.
pub const REMAINING_TOKENS: &str = "tokenbudget.io/remaining-tokens";
/// The replica count a restore brings back.
pub const PAUSED_REPLICAS: &str = "tokenbudget.io/paused-replicas";
/// While pacing runs a Deployment or StatefulSet on fewer replicas: the count it set (the
/// count to restore is in [`PAUSED_REPLICAS`]). A count other than this one was set by
/// someone else.
pub const PACED_REPLICAS: &str = "tokenbudget.io/paced-replicas";
/// `"true"` when the operator suspended a Job or CronJob (and so must resume it). A Job the
/// user suspended is never resumed by the operator.
pub const SUSPENDED: &str = "tokenbudget.io/suspended";

/// Every annotation the operator writes. Nothing else on a workload or pod is ever changed,
/// except its replica count or `suspend`.
pub const ANNOTATIONS: [&str; 6] = [
    BUDGET,
    STATE,
    REMAINING_TOKENS,
    PAUSED_REPLICAS,
    PACED_REPLICAS,
    SUSPENDED,
];

/// The finalizer that makes a deleted budget restore its workloads before it goes.
pub const FINALIZER: &str = "tokenbudget.io/restore-workloads";

/// The name of the ResourceQuota a budget owns in its namespace.
pub fn quota_name(budget: &str) -> String {
    format!("tokenbudget-{budget}")
}
