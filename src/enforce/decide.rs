//! The decision: from the budget, its usage, the workloads as they are and the time, the
//! changes that bring each workload to what the budget wants of it. Pure, so that every rule
//! of enforcement and restore is unit-tested here.

use std::{collections::BTreeMap, time::Duration};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{ANNOTATIONS, BUDGET, PACED_REPLICAS, PAUSED_REPLICAS, REMAINING_TOKENS, STATE, SUSPENDED};
use crate::api::{BudgetPhase, EnforcedWorkload, EnforcementAction, WorkloadKind};

/// What the decision needs to know of the budget.
#[derive(Clone, Debug)]
pub struct Budget<'a> {
    pub name: &'a str,
    pub action: EnforcementAction,
    pub grace_period: Duration,
    pub freeze_quota: bool,
    /// `spec.computeQuota.hard`, when the budget has a quota.
    pub quota: Option<&'a BTreeMap<String, Quantity>>,
    pub phase: BudgetPhase,
    /// When the budget became exhausted (the Exhausted condition's lastTransitionTime).
    pub exhausted_since: Option<Timestamp>,
    /// Tokens left, when there is a token limit.
    pub remaining_tokens: Option<u64>,
    pub limit_tokens: Option<u64>,
    /// The budget is being deleted: undo everything.
    pub deleting: bool,
    /// Pacing engaged with `action: ScaleReplicas`: what its bound Deployments and
    /// StatefulSets without an autoscaler run.
    pub pacing: Option<PaceTarget>,
}

/// What pacing asks of the replicas of a workload (see [`paced_count`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PaceTarget {
    /// The published pace, in hundredths.
    pub pace: u32,
    /// `spec.pacing.minReplicas`.
    pub min_replicas: i32,
}

/// A workload as it is now: bound to the budget, or carrying the budget's annotations from
/// an earlier binding.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
    pub resource_version: Option<String>,
    pub annotations: BTreeMap<String, String>,
    /// Deployments and StatefulSets: `spec.replicas` (1 when unset).
    pub replicas: Option<i32>,
    /// Jobs and CronJobs: `spec.suspend`.
    pub suspended: Option<bool>,
    /// Named by a binding of this budget now.
    pub bound: bool,
    /// A HorizontalPodAutoscaler targets it: pacing leaves its replicas to the autoscaler.
    pub autoscaled: bool,
    /// Another budget that holds the workload: its `tokenbudget.io/budget` annotation names
    /// that budget, which exists and binds it through one of its valid bindings. The workload
    /// is left to that budget. An annotation alone holds nothing.
    pub held_by: Option<String>,
    pub pods: Vec<Pod>,
    /// CronJobs: the Jobs it controls that no other budget binds, and that are not workloads
    /// of this budget themselves. Suspending a CronJob stops new Jobs, not the running ones:
    /// enforcement suspends these with it.
    pub runs: Vec<Run>,
}

/// A Job a CronJob controls (a run of it).
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub name: String,
    pub resource_version: Option<String>,
    pub annotations: BTreeMap<String, String>,
    /// `spec.suspend`.
    pub suspended: bool,
    /// Complete or Failed: nothing left to stop.
    pub finished: bool,
}

/// A pod of a workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Pod {
    pub name: String,
    pub annotations: BTreeMap<String, String>,
}

/// Annotation changes as a JSON merge patch wants them: a value sets, `None` removes.
pub type AnnotationPatch = BTreeMap<String, Option<String>>;

/// One write to a workload. Steps run in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Annotate(AnnotationPatch),
    /// Through the scale subresource (Deployments, StatefulSets).
    Scale(i32),
    /// `spec.suspend` (Jobs, CronJobs).
    Suspend(bool),
}

/// A transition worth an Event on the budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub reason: &'static str,
    pub message: String,
}

/// The changes to one workload and its pods.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadPlan {
    pub kind: WorkloadKind,
    pub name: String,
    /// The version the decision was made on: writes are conditional on it, so a change by
    /// someone else in between is a conflict and a fresh decision, never a lost update.
    pub resource_version: Option<String>,
    pub steps: Vec<Step>,
    pub pods: Vec<(String, AnnotationPatch)>,
    pub notice: Option<Notice>,
}

/// A workload pacing runs on fewer replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paced {
    /// `kind/name`.
    pub workload: String,
    pub replicas: i32,
    /// The count the restore brings back.
    pub original: i32,
}

/// The `Enforced` condition, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The whole decision for one budget.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Only workloads with something to change.
    pub workloads: Vec<WorkloadPlan>,
    /// `status.enforced`.
    pub enforced: Vec<EnforcedWorkload>,
    pub condition: Verdict,
    /// The `hard` limits the budget's ResourceQuota should have; `None`: it should not exist.
    pub quota: Option<BTreeMap<String, Quantity>>,
    /// When the decision changes by itself (the end of the grace period).
    pub wake_at: Option<Timestamp>,
    /// The workloads pacing runs on fewer replicas.
    pub paced: Vec<Paced>,
    /// The bound Deployments and StatefulSets pacing leaves to their autoscaler.
    pub autoscaled: Vec<String>,
}

/// Decides what every workload should look like now.
pub fn decide(budget: &Budget, workloads: &[Workload], now: Timestamp) -> Plan {
    let stance = Stance::of(budget, now);
    let mut plans = Vec::new();
    let mut enforced = Vec::new();
    let mut claimed_elsewhere = Vec::new();
    let mut paced = Vec::new();
    let mut autoscaled = Vec::new();
    for w in workloads {
        match &w.held_by {
            // Another budget enforces on it: one owner per workload, never a tug of war.
            Some(owner) if owner != budget.name => {
                if w.bound {
                    claimed_elsewhere.push(format!("{} (by budget {owner})", label(w)));
                }
            }
            _ => {
                let (plan, entry, paced_to) = plan_workload(budget, &stance, w);
                if let Some((replicas, original)) = paced_to {
                    paced.push(Paced {
                        workload: label(w),
                        replicas,
                        original,
                    });
                }
                if budget.pacing.is_some() && w.bound && w.autoscaled && w.replicas.is_some() {
                    autoscaled.push(label(w));
                }
                plans.extend(plan);
                enforced.extend(entry);
                for run in &w.runs {
                    let (plan, entry) = plan_run(budget, &stance, w, run);
                    plans.extend(plan);
                    enforced.extend(entry);
                }
            }
        }
    }
    let bound_count = workloads.iter().filter(|w| w.bound).count();
    let condition = verdict(budget, &stance, &enforced, bound_count, &claimed_elsewhere);
    Plan {
        workloads: plans,
        enforced,
        condition,
        quota: desired_quota(budget, stance.exhausted),
        wake_at: stance
            .grace_end
            .filter(|end| budget.action == EnforcementAction::ScaleDown && now < *end),
        paced,
        autoscaled,
    }
}

/// What the budget asks of its workloads now: the same for every one of them.
struct Stance {
    /// The budget is exhausted (and not being deleted).
    exhausted: bool,
    /// When the grace period of an exhausted budget ends.
    grace_end: Option<Timestamp>,
    /// Bound workloads are scaled down (or suspended) now: exhausted, `ScaleDown`, and the
    /// grace period is over.
    scale_down: bool,
    /// Bound workloads carry the operator's annotations (`Annotate` or `ScaleDown`).
    annotate: bool,
    /// The value of the state annotation.
    state: &'static str,
    exhausted_since: Option<Timestamp>,
    now: Timestamp,
}

impl Stance {
    fn of(budget: &Budget, now: Timestamp) -> Self {
        let exhausted = budget.phase == BudgetPhase::Exhausted && !budget.deleting;
        let grace_end = budget
            .exhausted_since
            .and_then(|t| t.checked_add(budget.grace_period).ok())
            .filter(|_| exhausted);
        let scale_down =
            exhausted && budget.action == EnforcementAction::ScaleDown && grace_end.is_none_or(|end| now >= end);
        let annotate = matches!(
            budget.action,
            EnforcementAction::Annotate | EnforcementAction::ScaleDown
        ) && !budget.deleting;
        let state = match budget.phase {
            BudgetPhase::Exhausted => "exhausted",
            BudgetPhase::Warning => "warning",
            BudgetPhase::Active => "ok",
        };
        Self {
            exhausted,
            grace_end,
            scale_down,
            annotate,
            state,
            exhausted_since: budget.exhausted_since,
            now,
        }
    }

    /// `status.enforced[].since`: `start`, else when the budget became exhausted, else now.
    fn since(&self, start: Option<Timestamp>) -> String {
        start.or(self.exhausted_since).unwrap_or(self.now).to_string()
    }
}

/// The operator's annotations a workload should carry, by key.
type Wanted = BTreeMap<&'static str, String>;

/// The writes to a workload besides its annotations, and the notice they are worth.
#[derive(Default)]
struct Writes {
    /// Before the annotations: a restore scales back up before it forgets the count.
    before: Vec<Step>,
    /// After them: a scale-down records the count to restore before it scales to 0.
    after: Vec<Step>,
    notice: Option<Notice>,
    /// Paced: the count it runs, and the original.
    paced: Option<(i32, i32)>,
}

/// The changes to one workload of this budget and its pods (`None`: nothing to change), its
/// `status.enforced` entry, and the count pacing runs it on (with the original).
fn plan_workload(
    budget: &Budget,
    stance: &Stance,
    w: &Workload,
) -> (Option<WorkloadPlan>, Option<EnforcedWorkload>, Option<(i32, i32)>) {
    let bound = w.bound && !budget.deleting;
    let enforce = bound && stance.scale_down;
    let pace = budget.pacing.filter(|_| bound && !w.autoscaled);
    let mut want = wanted_annotations(budget, stance, w, bound);
    let Writes {
        before,
        after,
        notice,
        paced,
    } = match w.replicas {
        Some(current) => replica_writes(w, current, enforce, pace, &mut want),
        None => suspend_writes(w, enforce, &mut want),
    };
    let entry = enforced_entry(budget, stance, w, bound);
    let pods = pod_patches(w, &want);
    // A paced workload is this budget's while paced, whatever the enforcement action: the
    // budget annotation (on the workload only) makes another budget binding it leave it alone,
    // and this budget find it again to restore it once its binding is gone.
    if paced.is_some() {
        want.entry(BUDGET).or_insert_with(|| budget.name.to_string());
    }

    let patch = diff(&w.annotations, &want);
    let mut steps = before;
    if !patch.is_empty() {
        steps.push(Step::Annotate(patch));
    }
    steps.extend(after);
    let plan = (!steps.is_empty() || !pods.is_empty()).then(|| WorkloadPlan {
        kind: w.kind,
        name: w.name.clone(),
        resource_version: w.resource_version.clone(),
        steps,
        pods,
        notice,
    });
    (plan, entry, paced)
}

/// The budget, state and remaining-tokens annotations a workload should carry: all of them
/// while it is bound to a budget that annotates, none otherwise.
fn wanted_annotations(budget: &Budget, stance: &Stance, w: &Workload, bound: bool) -> Wanted {
    let mut want = Wanted::new();
    if bound && stance.annotate {
        want.insert(BUDGET, budget.name.to_string());
        want.insert(STATE, stance.state.to_string());
        if let Some(remaining) = budget.remaining_tokens {
            want.insert(
                REMAINING_TOKENS,
                remaining_annotation(w, stance.state, remaining, budget.limit_tokens),
            );
        }
    }
    want
}

/// Deployments and StatefulSets: while enforced, scaled to 0 with the count to restore in an
/// annotation; while paced, scaled to [`paced_count`] of that count, recorded the same way
/// (and the paced count beside it); afterwards, scaled back to the count to restore.
///
/// The operator itself only ever sets 0 (enforcement) or the paced count: any other count
/// was asked for by someone else (a `kubectl scale`, a GitOps sync), and becomes the count to
/// restore, as with enforcement alone.
fn replica_writes(w: &Workload, current: i32, enforce: bool, pace: Option<PaceTarget>, want: &mut Wanted) -> Writes {
    let label = label(w);
    let paused = recorded_replicas(w);
    let ours = is_ours(w, current);
    let original = original_replicas(w, current);
    let mut writes = Writes::default();
    if enforce {
        want.insert(PAUSED_REPLICAS, original.to_string());
        if current != 0 {
            writes.after.push(Step::Scale(0));
            writes.notice = Some(Notice {
                reason: "ScaledDown",
                // A count other than the one recorded was set by someone else. The recorded
                // count itself may be the operator's own scale-down that did not happen after
                // its annotation was written (a conflict, a lost leadership): nothing to blame.
                message: match paused {
                    Some(p) if p != current && !ours => format!(
                        "{label} was scaled to {current} by someone else while the budget is exhausted: \
                         scaled to 0 again ({current} is what the restore brings back)"
                    ),
                    _ => format!("scaled {label} from {current} to 0 replicas: the budget is exhausted"),
                },
            });
        }
        return writes;
    }
    if let Some(pace) = pace {
        let desired = paced_count(original, pace);
        if desired < original {
            want.insert(PAUSED_REPLICAS, original.to_string());
            want.insert(PACED_REPLICAS, desired.to_string());
            writes.paced = Some((desired, original));
            if current != desired {
                writes.after.push(Step::Scale(desired));
                writes.notice = Some(Notice {
                    reason: "Paced",
                    message: format!(
                        "scaled {label} from {current} to {desired} of its {original} replicas: pace {}",
                        crate::usage::pacing::format_pace(pace.pace)
                    ),
                });
            }
            return writes;
        }
    }
    if paused.is_some() {
        let target = if ours { original } else { current };
        if current != target {
            writes.before.push(Step::Scale(target));
        }
        writes.notice = Some(Notice {
            reason: "Restored",
            message: format!("restored {label} to {target} replicas"),
        });
    }
    writes
}

/// The count to restore recorded on `w`: a replica count, never below 0. Anyone who can edit
/// the workload can write the annotation: a negative count would be a scale the API server
/// refuses at every cycle (and a budget that cannot finish its deletion), so it reads as none.
fn recorded_replicas(w: &Workload) -> Option<i32> {
    w.annotations
        .get(PAUSED_REPLICAS)
        .and_then(|p| p.parse::<i32>().ok())
        .filter(|p| *p >= 0)
}

/// Whether `current` is a count the operator set: 0 (enforcement) or the paced count, while it
/// records a count to restore.
fn is_ours(w: &Workload, current: i32) -> bool {
    let paced = w.annotations.get(PACED_REPLICAS).and_then(|p| p.parse::<i32>().ok());
    w.annotations.contains_key(PAUSED_REPLICAS) && (current == 0 || Some(current) == paced)
}

/// The count a restore brings back: the one recorded while the current count is the
/// operator's, the current one otherwise.
fn original_replicas(w: &Workload, current: i32) -> i32 {
    let paused = recorded_replicas(w);
    match paused {
        Some(p) if is_ours(w, current) => p,
        _ => current,
    }
}

/// The replicas a paced workload runs: `floor(original × pace)`, at least `minReplicas` (or
/// the original, when that is fewer), at most the original. With one workload, the pace being
/// the sustainable rate over the full rate, this is `floor(sustainable rate / rate per
/// replica)`.
pub fn paced_count(original: i32, pace: PaceTarget) -> i32 {
    let scaled = i64::from(original) * i64::from(pace.pace) / 100;
    let floor = pace.min_replicas.min(original).max(0);
    i32::try_from(scaled).unwrap_or(original).clamp(floor, original.max(0))
}

/// The capacity the pacing forecast samples: the replicas the paceable workloads (bound
/// Deployments and StatefulSets without an autoscaler, not held by another budget) run, over
/// their original counts; 1 when there are none.
pub fn capacity(budget: &str, workloads: &[Workload]) -> f64 {
    let (running, original) = workloads
        .iter()
        .filter(|w| w.bound && !w.autoscaled && w.held_by.as_deref().is_none_or(|b| b == budget))
        .filter_map(|w| Some((w.replicas?, original_replicas(w, w.replicas?))))
        .fold((0i64, 0i64), |(r, o), (current, original)| {
            (r + i64::from(current), o + i64::from(original))
        });
    if original <= 0 {
        1.0
    } else {
        (running as f64 / original as f64).min(1.0)
    }
}

/// Jobs and CronJobs: while enforced, suspended and marked as suspended by the operator;
/// afterwards resumed, but only if the operator suspended them.
fn suspend_writes(w: &Workload, enforce: bool, want: &mut Wanted) -> Writes {
    let suspended = w.suspended == Some(true);
    toggle_suspend(&label(w), &w.annotations, suspended, enforce, want)
}

/// The writes that keep a Job or CronJob (`label`) suspended while `enforce`, marked as the
/// operator's doing, and that resume it afterwards only if the mark says the operator
/// suspended it. One suspended by someone else is never marked, so never resumed.
fn toggle_suspend(
    label: &str,
    annotations: &BTreeMap<String, String>,
    suspended: bool,
    enforce: bool,
    want: &mut Wanted,
) -> Writes {
    let ours = annotations.get(SUSPENDED).is_some_and(|v| v == "true");
    let mut writes = Writes::default();
    if enforce {
        if !suspended {
            want.insert(SUSPENDED, "true".into());
            writes.after.push(Step::Suspend(true));
            writes.notice = Some(Notice {
                reason: "ScaledDown",
                message: format!("suspended {label}: the budget is exhausted"),
            });
        } else if ours {
            want.insert(SUSPENDED, "true".into());
        }
    } else if ours {
        if suspended {
            writes.before.push(Step::Suspend(false));
        }
        writes.notice = Some(Notice {
            reason: "Restored",
            message: format!("resumed {label}"),
        });
    }
    writes
}

/// The changes to a run of a CronJob `cron` (a Job it controls), and its `status.enforced`
/// entry. While the CronJob is suspended by enforcement, its unfinished runs are suspended too
/// (and marked, as any Job the operator suspends); otherwise, and once a run has finished
/// (nothing left to stop), a run the operator suspended is resumed. A run someone else
/// suspended is left as it is. Only the suspend mark is ever written on a run: the CronJob and
/// the pods carry the budget's other annotations.
fn plan_run(
    budget: &Budget,
    stance: &Stance,
    cron: &Workload,
    run: &Run,
) -> (Option<WorkloadPlan>, Option<EnforcedWorkload>) {
    let enforce = cron.bound && !budget.deleting && stance.scale_down && !run.finished;
    let label = format!("{} (a run of {})", label_of(WorkloadKind::Job, &run.name), label(cron));
    let mut want = Wanted::new();
    let Writes {
        before, after, notice, ..
    } = toggle_suspend(&label, &run.annotations, run.suspended, enforce, &mut want);
    let mut steps = before;
    let have = run.annotations.get(SUSPENDED);
    let new = want.get(SUSPENDED);
    if have != new {
        steps.push(Step::Annotate([(SUSPENDED.to_string(), new.cloned())].into()));
    }
    steps.extend(after);
    // Listed while the operator keeps it suspended.
    let entry = want.contains_key(SUSPENDED).then(|| EnforcedWorkload {
        kind: WorkloadKind::Job,
        name: run.name.clone(),
        action: "Suspend".into(),
        since: stance.since(stance.grace_end),
    });
    let plan = (!steps.is_empty()).then(|| WorkloadPlan {
        kind: WorkloadKind::Job,
        name: run.name.clone(),
        resource_version: run.resource_version.clone(),
        steps,
        pods: Vec::new(),
        notice,
    });
    (plan, entry)
}

/// The `status.enforced` entry of a workload bound to an exhausted budget: scaled down (or
/// suspended) since the grace period ended, or only annotated (or, for action `None`, what
/// would be) since the budget became exhausted.
fn enforced_entry(budget: &Budget, stance: &Stance, w: &Workload, bound: bool) -> Option<EnforcedWorkload> {
    if !bound || !stance.exhausted {
        return None;
    }
    Some(if stance.scale_down {
        let action = match w.kind {
            WorkloadKind::Deployment | WorkloadKind::StatefulSet => "ScaleDown",
            WorkloadKind::Job | WorkloadKind::CronJob => "Suspend",
        };
        entry(w, action, stance.since(stance.grace_end))
    } else {
        let action = match budget.action {
            EnforcementAction::None => "None",
            _ => "Annotate",
        };
        entry(w, action, stance.since(None))
    })
}

/// The annotation patches of a workload's pods: the workload's own annotations, without the
/// ones that only a workload carries.
fn pod_patches(w: &Workload, want: &Wanted) -> Vec<(String, AnnotationPatch)> {
    let mut pod_want = want.clone();
    pod_want.remove(PAUSED_REPLICAS);
    pod_want.remove(PACED_REPLICAS);
    pod_want.remove(SUSPENDED);
    w.pods
        .iter()
        .filter_map(|p| {
            let patch = diff(&p.annotations, &pod_want);
            (!patch.is_empty()).then(|| (p.name.clone(), patch))
        })
        .collect()
}

/// The `hard` limits the budget's ResourceQuota should have: the budget's own, with `pods: 0`
/// while it is exhausted and freezes the quota; none while the budget is deleted.
fn desired_quota(budget: &Budget, exhausted: bool) -> Option<BTreeMap<String, Quantity>> {
    budget.quota.filter(|_| !budget.deleting).map(|hard| {
        let mut hard = hard.clone();
        if budget.freeze_quota && exhausted {
            hard.insert("pods".into(), Quantity("0".into()));
        }
        hard
    })
}

/// `kind/name`, as messages name a workload.
fn label(w: &Workload) -> String {
    label_of(w.kind, &w.name)
}

fn label_of(kind: WorkloadKind, name: &str) -> String {
    format!("{}/{name}", kind.as_str())
}

fn entry(w: &Workload, action: &str, since: String) -> EnforcedWorkload {
    EnforcedWorkload {
        kind: w.kind,
        name: w.name.clone(),
        action: action.into(),
        since,
    }
}

/// The remaining-tokens annotation. It is refreshed when the state changes, when the budget
/// runs out, and otherwise only when it moved by at least 1% of the limit: pods can read it,
/// but a write to every pod at every scrape would load the API server for no one's benefit.
fn remaining_annotation(w: &Workload, state: &str, remaining: u64, limit: Option<u64>) -> String {
    let step = limit.map_or(1, |l| (l / 100).max(1));
    let previous = w.annotations.get(REMAINING_TOKENS).and_then(|r| r.parse::<u64>().ok());
    match previous {
        Some(p)
            if w.annotations.get(STATE).map(String::as_str) == Some(state)
                && p.abs_diff(remaining) < step
                && (remaining > 0 || p == 0) =>
        {
            p.to_string()
        }
        _ => remaining.to_string(),
    }
}

/// The merge patch that turns the operator's annotations in `have` into `want`. Annotations
/// of anyone else are never in it.
fn diff(have: &BTreeMap<String, String>, want: &BTreeMap<&str, String>) -> AnnotationPatch {
    ANNOTATIONS
        .iter()
        .filter_map(|key| {
            let (old, new) = (have.get(*key), want.get(*key));
            (old != new).then(|| (key.to_string(), new.cloned()))
        })
        .collect()
}

/// The `Enforced` condition: what is enforced on which workloads, or why nothing is.
fn verdict(
    budget: &Budget,
    stance: &Stance,
    enforced: &[EnforcedWorkload],
    bound: usize,
    claimed_elsewhere: &[String],
) -> Verdict {
    let names = |action: &str| {
        enforced
            .iter()
            .filter(|e| e.action == action)
            .map(|e| format!("{}/{}", e.kind.as_str(), e.name))
            .collect::<Vec<_>>()
    };
    let mut v = if !stance.exhausted {
        Verdict {
            status: false,
            reason: "NotExhausted",
            message: "the budget has room: nothing is enforced".into(),
        }
    } else if bound == 0 {
        Verdict {
            status: false,
            reason: "NoWorkloads",
            message: "the budget is exhausted, but no workload is bound to it".into(),
        }
    } else {
        match budget.action {
            EnforcementAction::None => Verdict {
                status: false,
                reason: "DryRun",
                message: format!(
                    "enforcement.action is None, so nothing is changed; Annotate would mark {} exhausted, \
                     ScaleDown would also scale them down",
                    names("None").join(", ")
                ),
            },
            EnforcementAction::Annotate => Verdict {
                status: true,
                reason: "Annotated",
                message: format!("annotated exhausted: {}", names("Annotate").join(", ")),
            },
            EnforcementAction::ScaleDown if !stance.scale_down => Verdict {
                status: true,
                reason: "GracePeriod",
                message: format!(
                    "annotated exhausted: {}; scaled down at {} unless the budget has room again",
                    names("Annotate").join(", "),
                    stance.grace_end.map(|t| t.to_string()).unwrap_or_default()
                ),
            },
            EnforcementAction::ScaleDown => {
                let mut parts = Vec::new();
                let scaled = names("ScaleDown");
                let suspended = names("Suspend");
                if !scaled.is_empty() {
                    parts.push(format!("scaled to 0: {}", scaled.join(", ")));
                }
                if !suspended.is_empty() {
                    parts.push(format!("suspended: {}", suspended.join(", ")));
                }
                Verdict {
                    status: true,
                    reason: "ScaledDown",
                    message: parts.join("; "),
                }
            }
        }
    };
    if !claimed_elsewhere.is_empty() {
        v.message
            .push_str(&format!("; left to another budget: {}", claimed_elsewhere.join(", ")));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-11-28T12:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    fn budget(phase: BudgetPhase, action: EnforcementAction) -> Budget<'static> {
        Budget {
            name: "research",
            action,
            grace_period: Duration::ZERO,
            freeze_quota: false,
            quota: None,
            phase,
            exhausted_since: (phase == BudgetPhase::Exhausted).then(|| "2026-11-28T11:00:00Z".parse().unwrap()),
            remaining_tokens: Some(if phase == BudgetPhase::Exhausted { 0 } else { 400 }),
            limit_tokens: Some(1000),
            deleting: false,
            pacing: None,
        }
    }

    /// A workload from YAML: `kind`, `name`, optional `annotations`, `replicas`, `suspended`,
    /// `bound` (default true), `pods` (names) and a CronJob's `runs` (`{name, suspended,
    /// finished, annotations}`).
    fn workload(yaml: &str) -> Workload {
        #[derive(serde::Deserialize)]
        struct Fixture {
            kind: WorkloadKind,
            name: String,
            #[serde(default)]
            annotations: BTreeMap<String, String>,
            replicas: Option<i32>,
            suspended: Option<bool>,
            bound: Option<bool>,
            #[serde(default)]
            autoscaled: bool,
            /// Whether the budget its annotation names holds it (default true).
            held: Option<bool>,
            #[serde(default)]
            pods: Vec<String>,
            #[serde(default)]
            runs: Vec<RunFixture>,
        }
        #[derive(serde::Deserialize)]
        struct RunFixture {
            name: String,
            #[serde(default)]
            suspended: bool,
            #[serde(default)]
            finished: bool,
            #[serde(default)]
            annotations: BTreeMap<String, String>,
        }
        let f: Fixture = serde_yaml::from_str(yaml).expect("fixture parses");
        let held_by = f
            .annotations
            .get(BUDGET)
            .filter(|owner| *owner != "research" && f.held.unwrap_or(true))
            .cloned();
        Workload {
            kind: f.kind,
            name: f.name,
            resource_version: Some("7".into()),
            annotations: f.annotations,
            replicas: f.replicas,
            suspended: f.suspended,
            bound: f.bound.unwrap_or(true),
            autoscaled: f.autoscaled,
            held_by,
            pods: f
                .pods
                .into_iter()
                .map(|name| Pod {
                    name,
                    annotations: BTreeMap::new(),
                })
                .collect(),
            runs: f
                .runs
                .into_iter()
                .map(|r| Run {
                    name: r.name,
                    resource_version: Some("5".into()),
                    annotations: r.annotations,
                    suspended: r.suspended,
                    finished: r.finished,
                })
                .collect(),
        }
    }

    fn set(pairs: &[(&str, &str)]) -> AnnotationPatch {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.to_string())))
            .collect()
    }

    fn steps(plan: &Plan, name: &str) -> Vec<Step> {
        plan.workloads
            .iter()
            .find(|w| w.name == name)
            .map(|w| w.steps.clone())
            .unwrap_or_default()
    }

    #[test]
    fn an_active_budget_marks_its_workloads_and_pods_ok() {
        let w = workload("{kind: Deployment, name: a, replicas: 2, pods: [a-1, a-2]}");
        let plan = decide(&budget(BudgetPhase::Active, EnforcementAction::Annotate), &[w], now());
        let want = set(&[(BUDGET, "research"), (REMAINING_TOKENS, "400"), (STATE, "ok")]);
        assert_eq!(steps(&plan, "a"), [Step::Annotate(want.clone())]);
        assert_eq!(
            plan.workloads[0].pods,
            [("a-1".into(), want.clone()), ("a-2".into(), want)]
        );
        assert!(plan.enforced.is_empty());
        assert_eq!(plan.condition.reason, "NotExhausted");
        assert_eq!(plan.workloads[0].notice, None);
    }

    #[test]
    fn a_workload_already_as_wanted_gets_no_write() {
        let w = workload(
            "{kind: Deployment, name: a, replicas: 2, annotations: \
             {tokenbudget.io/budget: research, tokenbudget.io/state: ok, tokenbudget.io/remaining-tokens: '400'}}",
        );
        let plan = decide(&budget(BudgetPhase::Active, EnforcementAction::Annotate), &[w], now());
        assert!(plan.workloads.is_empty(), "{plan:?}");
    }

    #[test]
    fn remaining_tokens_is_refreshed_only_when_it_moves_by_one_percent() {
        let mut b = budget(BudgetPhase::Active, EnforcementAction::Annotate);
        let w = workload(
            "{kind: Deployment, name: a, annotations: \
             {tokenbudget.io/budget: research, tokenbudget.io/state: ok, tokenbudget.io/remaining-tokens: '405'}}",
        );
        assert!(decide(&b, std::slice::from_ref(&w), now()).workloads.is_empty());
        b.remaining_tokens = Some(395);
        assert_eq!(
            steps(&decide(&b, std::slice::from_ref(&w), now()), "a"),
            [Step::Annotate(set(&[(REMAINING_TOKENS, "395")]))]
        );
    }

    #[test]
    fn a_crossed_threshold_marks_warning() {
        let w = workload(
            "{kind: StatefulSet, name: s, annotations: \
             {tokenbudget.io/budget: research, tokenbudget.io/state: ok, tokenbudget.io/remaining-tokens: '400'}}",
        );
        let plan = decide(&budget(BudgetPhase::Warning, EnforcementAction::ScaleDown), &[w], now());
        assert_eq!(steps(&plan, "s"), [Step::Annotate(set(&[(STATE, "warning")]))]);
        assert!(plan.enforced.is_empty());
    }

    #[test]
    fn annotate_marks_exhausted_and_touches_nothing_else() {
        let w = workload("{kind: Deployment, name: a, replicas: 3}");
        let plan = decide(
            &budget(BudgetPhase::Exhausted, EnforcementAction::Annotate),
            &[w],
            now(),
        );
        assert_eq!(
            steps(&plan, "a"),
            [Step::Annotate(set(&[
                (BUDGET, "research"),
                (REMAINING_TOKENS, "0"),
                (STATE, "exhausted")
            ]))]
        );
        assert_eq!(plan.enforced[0].action, "Annotate");
        assert_eq!(plan.enforced[0].since, "2026-11-28T11:00:00Z");
        assert_eq!((plan.condition.status, plan.condition.reason), (true, "Annotated"));
    }

    #[test]
    fn action_none_changes_nothing_but_says_what_would_happen() {
        let w = workload("{kind: Deployment, name: a, replicas: 3, pods: [a-1]}");
        let plan = decide(&budget(BudgetPhase::Exhausted, EnforcementAction::None), &[w], now());
        assert!(plan.workloads.is_empty(), "{plan:?}");
        assert_eq!(plan.enforced[0].action, "None");
        assert_eq!((plan.condition.status, plan.condition.reason), (false, "DryRun"));
        assert!(
            plan.condition.message.contains("Deployment/a"),
            "{}",
            plan.condition.message
        );
    }

    #[test]
    fn action_none_removes_what_an_earlier_action_wrote() {
        let w = workload(
            "{kind: Deployment, name: a, annotations: {tokenbudget.io/budget: research, tokenbudget.io/state: ok, other: x}}",
        );
        let plan = decide(&budget(BudgetPhase::Active, EnforcementAction::None), &[w], now());
        let removed: AnnotationPatch = [(BUDGET.to_string(), None), (STATE.to_string(), None)].into();
        assert_eq!(steps(&plan, "a"), [Step::Annotate(removed)]);
    }

    #[test]
    fn scale_down_records_the_count_then_scales_to_zero() {
        let w = workload("{kind: Deployment, name: a, replicas: 3}");
        let plan = decide(
            &budget(BudgetPhase::Exhausted, EnforcementAction::ScaleDown),
            &[w],
            now(),
        );
        assert_eq!(
            steps(&plan, "a"),
            [
                Step::Annotate(set(&[
                    (BUDGET, "research"),
                    (PAUSED_REPLICAS, "3"),
                    (REMAINING_TOKENS, "0"),
                    (STATE, "exhausted")
                ])),
                Step::Scale(0)
            ]
        );
        assert_eq!(plan.workloads[0].notice.as_ref().unwrap().reason, "ScaledDown");
        assert_eq!(plan.enforced[0].action, "ScaleDown");
        assert_eq!(plan.condition.reason, "ScaledDown");
        assert_eq!(plan.condition.message, "scaled to 0: Deployment/a");
    }

    #[test]
    fn a_scaled_down_workload_stays_as_it_is() {
        let w = workload(
            "{kind: Deployment, name: a, replicas: 0, annotations: {tokenbudget.io/budget: research, \
             tokenbudget.io/state: exhausted, tokenbudget.io/remaining-tokens: '0', tokenbudget.io/paused-replicas: '3'}}",
        );
        let plan = decide(
            &budget(BudgetPhase::Exhausted, EnforcementAction::ScaleDown),
            &[w],
            now(),
        );
        assert!(plan.workloads.is_empty(), "{plan:?}");
        assert_eq!(plan.enforced.len(), 1);
    }

    #[test]
    fn a_manual_scale_up_while_exhausted_is_undone_and_remembered() {
        let w = workload(
            "{kind: Deployment, name: a, replicas: 4, annotations: {tokenbudget.io/budget: research, \
             tokenbudget.io/state: exhausted, tokenbudget.io/remaining-tokens: '0', tokenbudget.io/paused-replicas: '2'}}",
        );
        let plan = decide(
            &budget(BudgetPhase::Exhausted, EnforcementAction::ScaleDown),
            &[w],
            now(),
        );
        assert_eq!(
            steps(&plan, "a"),
            [Step::Annotate(set(&[(PAUSED_REPLICAS, "4")])), Step::Scale(0)]
        );
        let notice = plan.workloads[0].notice.as_ref().unwrap();
        assert!(notice.message.contains("by someone else"), "{}", notice.message);
    }

    #[test]
    fn a_scale_down_interrupted_after_its_annotation_blames_nobody() {
        // The count recorded is the count it has: the operator's own scale-down, annotated,
        // that did not happen (a conflict on the scale, a lost leadership).
        let w = workload(
            "{kind: Deployment, name: a, replicas: 2, annotations: {tokenbudget.io/budget: research, \
             tokenbudget.io/state: exhausted, tokenbudget.io/remaining-tokens: '0', tokenbudget.io/paused-replicas: '2'}}",
        );
        let plan = decide(
            &budget(BudgetPhase::Exhausted, EnforcementAction::ScaleDown),
            &[w],
            now(),
        );
        assert_eq!(steps(&plan, "a"), [Step::Scale(0)]);
        let notice = plan.workloads[0].notice.as_ref().unwrap();
        assert_eq!(
            notice.message,
            "scaled Deployment/a from 2 to 0 replicas: the budget is exhausted"
        );
    }

    #[test]
    fn restore_scales_back_first_and_forgets_afterwards() {
        let w = workload(
            "{kind: Deployment, name: a, replicas: 0, annotations: {tokenbudget.io/budget: research, \
             tokenbudget.io/state: exhausted, tokenbudget.io/remaining-tokens: '0', tokenbudget.io/paused-replicas: '3'}}",
        );
        let plan = decide(&budget(BudgetPhase::Active, EnforcementAction::ScaleDown), &[w], now());
        let mut patch = set(&[(REMAINING_TOKENS, "400"), (STATE, "ok")]);
        patch.insert(PAUSED_REPLICAS.into(), None);
        assert_eq!(steps(&plan, "a"), [Step::Scale(3), Step::Annotate(patch)]);
        assert_eq!(plan.workloads[0].notice.as_ref().unwrap().reason, "Restored");
        assert!(plan.enforced.is_empty());
    }

    #[test]
    fn restore_keeps_a_count_someone_set_after_the_pause() {
        let w = workload(
            "{kind: StatefulSet, name: s, replicas: 5, annotations: {tokenbudget.io/budget: research, \
             tokenbudget.io/state: exhausted, tokenbudget.io/paused-replicas: '3'}}",
        );
        let plan = decide(&budget(BudgetPhase::Active, EnforcementAction::ScaleDown), &[w], now());
        assert!(!steps(&plan, "s").contains(&Step::Scale(3)));
        assert_eq!(
            plan.workloads[0].notice.as_ref().unwrap().message,
            "restored StatefulSet/s to 5 replicas"
        );
    }

    #[test]
    fn the_grace_period_annotates_first_and_wakes_at_its_end() {
        let mut b = budget(BudgetPhase::Exhausted, EnforcementAction::ScaleDown);
        b.grace_period = Duration::from_secs(7200);
        let w = workload("{kind: Deployment, name: a, replicas: 3}");
        let plan = decide(&b, std::slice::from_ref(&w), now());
        assert!(!steps(&plan, "a").contains(&Step::Scale(0)));
        assert_eq!(plan.condition.reason, "GracePeriod");
        assert_eq!(plan.wake_at, Some("2026-11-28T13:00:00Z".parse().unwrap()));
        assert_eq!(plan.enforced[0].action, "Annotate");

        let later = decide(&b, &[w], "2026-11-28T13:00:00Z".parse().unwrap());
        assert_eq!(steps(&later, "a").last(), Some(&Step::Scale(0)));
        assert_eq!(later.enforced[0].since, "2026-11-28T13:00:00Z");
        assert_eq!(later.wake_at, None);
    }

    #[test]
    fn jobs_are_suspended_and_resumed_only_if_the_operator_suspended_them() {
        let b = budget(BudgetPhase::Exhausted, EnforcementAction::ScaleDown);
        let job = workload("{kind: Job, name: j, suspended: false}");
        let users = workload("{kind: CronJob, name: c, suspended: true}");
        let plan = decide(&b, &[job, users], now());
        assert_eq!(steps(&plan, "j").last(), Some(&Step::Suspend(true)));
        assert!(matches!(&steps(&plan, "j")[0], Step::Annotate(p) if p.get(SUSPENDED) == Some(&Some("true".into()))));
        assert!(!steps(&plan, "c").iter().any(|s| matches!(s, Step::Suspend(_))));
        assert_eq!(plan.condition.message, "suspended: Job/j, CronJob/c");

        let room = budget(BudgetPhase::Active, EnforcementAction::ScaleDown);
        let ours = workload(
            "{kind: Job, name: j, suspended: true, annotations: {tokenbudget.io/budget: research, tokenbudget.io/suspended: 'true'}}",
        );
        let theirs =
            workload("{kind: CronJob, name: c, suspended: true, annotations: {tokenbudget.io/budget: research}}");
        let plan = decide(&room, &[ours, theirs], now());
        assert_eq!(steps(&plan, "j")[0], Step::Suspend(false));
        assert!(!steps(&plan, "c").iter().any(|s| matches!(s, Step::Suspend(_))));
    }

    fn plan_of<'a>(plan: &'a Plan, name: &str) -> &'a WorkloadPlan {
        plan.workloads
            .iter()
            .find(|w| w.name == name)
            .unwrap_or_else(|| panic!("a plan for {name}: {plan:?}"))
    }

    fn mark(value: Option<&str>) -> Step {
        Step::Annotate([(SUSPENDED.to_string(), value.map(String::from))].into())
    }

    #[test]
    fn the_running_jobs_of_a_suspended_cron_job_are_suspended_with_it() {
        let b = budget(BudgetPhase::Exhausted, EnforcementAction::ScaleDown);
        let cron = workload(
            "{kind: CronJob, name: nightly, suspended: false, runs: [\
               {name: nightly-1}, \
               {name: nightly-2, suspended: true}, \
               {name: nightly-0, finished: true}]}",
        );
        let plan = decide(&b, &[cron], now());
        // The CronJob first (no new runs), then its running Job; each marked before it is
        // suspended, so that a restart in between still knows what to resume.
        let names: Vec<_> = plan.workloads.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["nightly", "nightly-1"]);
        let run = plan_of(&plan, "nightly-1");
        assert_eq!(run.kind, WorkloadKind::Job);
        assert_eq!(run.resource_version.as_deref(), Some("5"));
        assert_eq!(run.steps, [mark(Some("true")), Step::Suspend(true)]);
        assert!(run.pods.is_empty(), "the CronJob's plan annotates the pods of its runs");
        let notice = run.notice.as_ref().unwrap();
        assert_eq!(
            (notice.reason, notice.message.as_str()),
            (
                "ScaledDown",
                "suspended Job/nightly-1 (a run of CronJob/nightly): the budget is exhausted"
            )
        );
        // Suspended by someone else, or finished: not the budget's doing, nothing listed.
        let enforced: Vec<_> = plan
            .enforced
            .iter()
            .map(|e| (e.kind, e.name.as_str(), e.action.as_str()))
            .collect();
        assert_eq!(
            enforced,
            [
                (WorkloadKind::CronJob, "nightly", "Suspend"),
                (WorkloadKind::Job, "nightly-1", "Suspend")
            ]
        );
        assert_eq!(plan.condition.message, "suspended: CronJob/nightly, Job/nightly-1");
    }

    #[test]
    fn a_run_stays_suspended_while_the_budget_is_exhausted_and_a_resumed_one_is_suspended_again() {
        let b = budget(BudgetPhase::Exhausted, EnforcementAction::ScaleDown);
        let enforced_cron = |runs: &str| {
            workload(&format!(
                "{{kind: CronJob, name: nightly, suspended: true, annotations: {{tokenbudget.io/budget: research, \
                 tokenbudget.io/state: exhausted, tokenbudget.io/remaining-tokens: '0', tokenbudget.io/suspended: 'true'}}, \
                 runs: {runs}}}"
            ))
        };
        let kept =
            enforced_cron("[{name: nightly-1, suspended: true, annotations: {tokenbudget.io/suspended: 'true'}}]");
        let plan = decide(&b, &[kept], now());
        assert!(plan.workloads.is_empty(), "{plan:?}");
        assert_eq!(plan.enforced.len(), 2);

        // Someone resumed it: suspended again (it is still the operator's to resume).
        let resumed = enforced_cron("[{name: nightly-1, annotations: {tokenbudget.io/suspended: 'true'}}]");
        let plan = decide(&b, &[resumed], now());
        assert_eq!(steps(&plan, "nightly-1"), [Step::Suspend(true)]);

        // A run the CronJob created just before it was suspended: suspended at the next decision.
        let late = enforced_cron("[{name: nightly-2}]");
        let plan = decide(&b, &[late], now());
        assert_eq!(steps(&plan, "nightly-2"), [mark(Some("true")), Step::Suspend(true)]);
    }

    #[test]
    fn restore_resumes_only_the_runs_the_operator_suspended() {
        let room = budget(BudgetPhase::Active, EnforcementAction::ScaleDown);
        let cron = workload(
            "{kind: CronJob, name: nightly, suspended: true, annotations: {tokenbudget.io/budget: research, \
             tokenbudget.io/state: exhausted, tokenbudget.io/remaining-tokens: '0', tokenbudget.io/suspended: 'true'}, runs: [\
               {name: ours, suspended: true, annotations: {tokenbudget.io/suspended: 'true', keep: me}}, \
               {name: theirs, suspended: true}, \
               {name: finished, suspended: true, finished: true, annotations: {tokenbudget.io/suspended: 'true'}}, \
               {name: resumed-by-hand, annotations: {tokenbudget.io/suspended: 'true'}}]}",
        );
        let plan = decide(&room, &[cron], now());
        assert_eq!(steps(&plan, "nightly")[0], Step::Suspend(false));
        // Resumed first, the mark removed afterwards: a restart in between resumes it again.
        assert_eq!(steps(&plan, "ours"), [Step::Suspend(false), mark(None)]);
        assert_eq!(
            plan_of(&plan, "ours").notice.as_ref().unwrap().message,
            "resumed Job/ours (a run of CronJob/nightly)"
        );
        // A run that finished while suspended: resumed as it was (the job controller starts
        // nothing for a finished Job).
        assert_eq!(steps(&plan, "finished"), [Step::Suspend(false), mark(None)]);
        assert_eq!(steps(&plan, "resumed-by-hand"), [mark(None)]);
        assert!(
            !plan.workloads.iter().any(|w| w.name == "theirs"),
            "suspended by someone else: left as it is"
        );
        assert!(plan.enforced.is_empty());
    }

    #[test]
    fn a_run_that_finished_while_suspended_is_given_back_at_once() {
        let b = budget(BudgetPhase::Exhausted, EnforcementAction::ScaleDown);
        let cron = workload(
            "{kind: CronJob, name: nightly, suspended: true, annotations: {tokenbudget.io/budget: research, \
             tokenbudget.io/state: exhausted, tokenbudget.io/remaining-tokens: '0', tokenbudget.io/suspended: 'true'}, runs: [\
               {name: done, suspended: true, finished: true, annotations: {tokenbudget.io/suspended: 'true'}}]}",
        );
        let plan = decide(&b, &[cron], now());
        assert_eq!(steps(&plan, "done"), [Step::Suspend(false), mark(None)]);
        assert_eq!(plan.enforced.len(), 1, "only the CronJob: {:?}", plan.enforced);
    }

    #[test]
    fn runs_are_left_alone_without_scale_down() {
        let run = "runs: [{name: nightly-1}]";
        for (phase, action) in [
            (BudgetPhase::Exhausted, EnforcementAction::Annotate),
            (BudgetPhase::Exhausted, EnforcementAction::None),
            (BudgetPhase::Warning, EnforcementAction::ScaleDown),
        ] {
            let cron = workload(&format!("{{kind: CronJob, name: nightly, suspended: false, {run}}}"));
            let plan = decide(&budget(phase, action), &[cron], now());
            assert!(steps(&plan, "nightly-1").is_empty(), "{action:?} {phase:?}: {plan:?}");
        }
        // And during the grace period.
        let mut b = budget(BudgetPhase::Exhausted, EnforcementAction::ScaleDown);
        b.grace_period = Duration::from_secs(7200);
        let cron = workload(&format!("{{kind: CronJob, name: nightly, suspended: false, {run}}}"));
        assert!(steps(&decide(&b, &[cron], now()), "nightly-1").is_empty());
    }

    #[test]
    fn the_runs_of_an_unbound_or_deleted_budgets_cron_job_are_resumed() {
        let cron = |bound: bool| {
            workload(&format!(
                "{{kind: CronJob, name: nightly, suspended: true, bound: {bound}, annotations: {{tokenbudget.io/budget: research, \
                 tokenbudget.io/suspended: 'true'}}, runs: [{{name: ours, suspended: true, annotations: {{tokenbudget.io/suspended: 'true'}}}}]}}"
            ))
        };
        let exhausted = budget(BudgetPhase::Exhausted, EnforcementAction::ScaleDown);
        let plan = decide(&exhausted, &[cron(false)], now());
        assert_eq!(steps(&plan, "ours"), [Step::Suspend(false), mark(None)]);
        let mut deleting = exhausted.clone();
        deleting.deleting = true;
        let plan = decide(&deleting, &[cron(true)], now());
        assert_eq!(steps(&plan, "ours"), [Step::Suspend(false), mark(None)]);
    }

    #[test]
    fn the_runs_of_a_cron_job_another_budget_holds_are_left_to_it() {
        let cron = workload(
            "{kind: CronJob, name: nightly, suspended: false, annotations: {tokenbudget.io/budget: other}, \
             runs: [{name: nightly-1}]}",
        );
        let plan = decide(
            &budget(BudgetPhase::Exhausted, EnforcementAction::ScaleDown),
            &[cron],
            now(),
        );
        assert!(plan.workloads.is_empty(), "{plan:?}");
    }

    #[test]
    fn an_unbound_workload_is_restored_and_cleaned() {
        let w = workload(
            "{kind: Deployment, name: a, replicas: 0, bound: false, pods: [], annotations: {tokenbudget.io/budget: research, \
             tokenbudget.io/state: exhausted, tokenbudget.io/paused-replicas: '2', keep: me}}",
        );
        let plan = decide(
            &budget(BudgetPhase::Exhausted, EnforcementAction::ScaleDown),
            &[w],
            now(),
        );
        let removed: AnnotationPatch = [
            (BUDGET.to_string(), None),
            (PAUSED_REPLICAS.to_string(), None),
            (STATE.to_string(), None),
        ]
        .into();
        assert_eq!(steps(&plan, "a"), [Step::Scale(2), Step::Annotate(removed)]);
        assert!(plan.enforced.is_empty());
        assert_eq!(plan.condition.reason, "NoWorkloads");
    }

    #[test]
    fn a_deleted_budget_undoes_everything() {
        let mut b = budget(BudgetPhase::Exhausted, EnforcementAction::ScaleDown);
        b.deleting = true;
        b.quota = Some(&EMPTY);
        let mut w = workload(
            "{kind: StatefulSet, name: s, replicas: 0, pods: [s-0], annotations: {tokenbudget.io/budget: research, \
             tokenbudget.io/state: exhausted, tokenbudget.io/paused-replicas: '1'}}",
        );
        w.pods[0].annotations = [(STATE.to_string(), "exhausted".to_string())].into();
        let plan = decide(&b, &[w], now());
        assert_eq!(steps(&plan, "s")[0], Step::Scale(1));
        assert_eq!(
            plan.workloads[0].pods,
            [("s-0".to_string(), [(STATE.to_string(), None)].into())]
        );
        assert_eq!(plan.quota, None);
    }

    static EMPTY: BTreeMap<String, Quantity> = BTreeMap::new();

    #[test]
    fn a_workload_of_another_budget_is_left_to_it() {
        let w = workload(
            "{kind: Deployment, name: a, replicas: 3, annotations: {tokenbudget.io/budget: other, tokenbudget.io/paused-replicas: '3'}}",
        );
        let plan = decide(
            &budget(BudgetPhase::Exhausted, EnforcementAction::ScaleDown),
            &[w],
            now(),
        );
        assert!(plan.workloads.is_empty());
        assert!(
            plan.condition.message.contains("Deployment/a (by budget other)"),
            "{}",
            plan.condition.message
        );
    }

    #[test]
    fn an_annotation_naming_a_budget_that_does_not_hold_the_workload_lifts_nothing() {
        let w = workload(
            "{kind: Deployment, name: a, replicas: 3, held: false, \
              annotations: {tokenbudget.io/budget: ghost, tokenbudget.io/paused-replicas: '3'}}",
        );
        let plan = decide(
            &budget(BudgetPhase::Exhausted, EnforcementAction::ScaleDown),
            &[w],
            now(),
        );
        let steps = &plan.workloads[0].steps;
        let Step::Annotate(patch) = &steps[0] else {
            panic!("annotated first: {steps:?}")
        };
        assert_eq!(patch.get(BUDGET), Some(&Some("research".to_string())));
        assert_eq!(steps[1], Step::Scale(0));
        assert!(!plan.condition.message.contains("ghost"), "{}", plan.condition.message);
        assert_eq!(plan.enforced.len(), 1);
    }

    #[test]
    fn freeze_quota_sets_pods_to_zero_only_while_exhausted() {
        let hard: BTreeMap<String, Quantity> = [
            ("pods".to_string(), Quantity("20".into())),
            ("requests.cpu".to_string(), Quantity("8".into())),
        ]
        .into();
        let mut b = budget(BudgetPhase::Exhausted, EnforcementAction::Annotate);
        b.quota = Some(&hard);
        assert_eq!(decide(&b, &[], now()).quota.as_ref(), Some(&hard));
        b.freeze_quota = true;
        let frozen = decide(&b, &[], now()).quota.unwrap();
        assert_eq!(frozen["pods"], Quantity("0".into()));
        assert_eq!(frozen["requests.cpu"], Quantity("8".into()));
        b.phase = BudgetPhase::Warning;
        assert_eq!(decide(&b, &[], now()).quota.as_ref(), Some(&hard));
    }

    #[test]
    fn a_budget_without_token_limit_writes_no_remaining_tokens() {
        let mut b = budget(BudgetPhase::Active, EnforcementAction::Annotate);
        b.remaining_tokens = None;
        let plan = decide(&b, &[workload("{kind: Job, name: j}")], now());
        assert_eq!(
            steps(&plan, "j"),
            [Step::Annotate(set(&[(BUDGET, "research"), (STATE, "ok")]))]
        );
    }

    /// A budget with room whose pacing is engaged at `pace` (hundredths), at least 2 replicas;
    /// no other enforcement, so only pacing's annotations show.
    fn paced(pace: Option<u32>) -> Budget<'static> {
        Budget {
            pacing: pace.map(|pace| PaceTarget { pace, min_replicas: 2 }),
            ..budget(BudgetPhase::Active, EnforcementAction::None)
        }
    }

    /// A Deployment `a` at `replicas`, with `annotations` (YAML pairs, may be empty).
    fn deployment(replicas: i32, annotations: &str) -> Workload {
        workload(&format!(
            "{{kind: Deployment, name: a, replicas: {replicas}, annotations: {{{annotations}}}}}"
        ))
    }

    fn paced_entry(replicas: i32, original: i32) -> Paced {
        Paced {
            workload: "Deployment/a".into(),
            replicas,
            original,
        }
    }

    const PACED_10_TO_6: &str =
        "tokenbudget.io/budget: research, tokenbudget.io/paused-replicas: '10', tokenbudget.io/paced-replicas: '6'";
    /// What a release removes from a workload paced without other enforcement.
    fn released() -> AnnotationPatch {
        [BUDGET, PACED_REPLICAS, PAUSED_REPLICAS]
            .map(|k| (k.to_string(), None))
            .into()
    }

    #[test]
    fn pacing_records_the_original_count_then_runs_that_fraction_of_it() {
        let plan = decide(&paced(Some(60)), &[deployment(10, "")], now());
        assert_eq!(
            steps(&plan, "a"),
            [
                Step::Annotate(set(&[
                    (BUDGET, "research"),
                    (PACED_REPLICAS, "6"),
                    (PAUSED_REPLICAS, "10")
                ])),
                Step::Scale(6)
            ]
        );
        let notice = plan.workloads[0].notice.as_ref().unwrap();
        assert_eq!(notice.reason, "Paced");
        assert_eq!(
            notice.message,
            "scaled Deployment/a from 10 to 6 of its 10 replicas: pace 0.60"
        );
        assert_eq!(plan.paced, [paced_entry(6, 10)]);
        assert!(plan.enforced.is_empty(), "pacing is no enforcement: {plan:?}");
        assert_eq!(plan.condition.reason, "NotExhausted");
    }

    #[test]
    fn the_paced_count_is_floored_kept_above_the_minimum_and_never_above_the_original() {
        let at = |original, pace| paced_count(original, PaceTarget { pace, min_replicas: 2 });
        assert_eq!(at(10, 65), 6);
        assert_eq!(at(10, 5), 2, "at least minReplicas");
        assert_eq!(at(1, 5), 1, "never above the original");
        assert_eq!(at(0, 50), 0);
        assert_eq!(at(10, 100), 10);
        // Fewer than minReplicas to start with: not paced at all.
        assert!(
            decide(&paced(Some(10)), &[deployment(2, "")], now())
                .workloads
                .is_empty()
        );
    }

    #[test]
    fn a_paced_workload_stays_and_follows_the_pace_from_its_original_count() {
        let plan = decide(&paced(Some(60)), &[deployment(6, PACED_10_TO_6)], now());
        assert!(plan.workloads.is_empty(), "{plan:?}");
        assert_eq!(plan.paced, [paced_entry(6, 10)]);
        // The pace moves a step up: 8 of the 10, not 80% of the 6 it runs.
        let plan = decide(&paced(Some(80)), &[deployment(6, PACED_10_TO_6)], now());
        assert_eq!(
            steps(&plan, "a"),
            [Step::Annotate(set(&[(PACED_REPLICAS, "8")])), Step::Scale(8)]
        );
    }

    #[test]
    fn a_count_set_by_hand_while_paced_is_the_new_original() {
        let plan = decide(&paced(Some(60)), &[deployment(8, PACED_10_TO_6)], now());
        assert_eq!(
            steps(&plan, "a"),
            [
                Step::Annotate(set(&[(PACED_REPLICAS, "4"), (PAUSED_REPLICAS, "8")])),
                Step::Scale(4)
            ]
        );
        // Released: the count set by hand stays.
        let plan = decide(&paced(None), &[deployment(8, PACED_10_TO_6)], now());
        assert_eq!(steps(&plan, "a"), [Step::Annotate(released())]);
    }

    #[test]
    fn release_scales_back_to_the_original_first_and_forgets_afterwards() {
        let plan = decide(&paced(None), &[deployment(6, PACED_10_TO_6)], now());
        assert_eq!(steps(&plan, "a"), [Step::Scale(10), Step::Annotate(released())]);
        let notice = plan.workloads[0].notice.as_ref().unwrap();
        assert_eq!(notice.message, "restored Deployment/a to 10 replicas");
        assert!(plan.paced.is_empty());
    }

    #[test]
    fn exhaustion_wins_over_pacing_and_room_again_returns_to_the_paced_count() {
        let exhausted = Budget {
            pacing: Some(PaceTarget {
                pace: 60,
                min_replicas: 2,
            }),
            ..budget(BudgetPhase::Exhausted, EnforcementAction::ScaleDown)
        };
        let w = workload(&format!(
            "{{kind: Deployment, name: a, replicas: 6, annotations: {{\
             tokenbudget.io/state: exhausted, tokenbudget.io/remaining-tokens: '0', {PACED_10_TO_6}}}}}"
        ));
        let plan = decide(&exhausted, &[w], now());
        assert_eq!(
            steps(&plan, "a"),
            [
                Step::Annotate([(PACED_REPLICAS.to_string(), None)].into()),
                Step::Scale(0)
            ]
        );
        let notice = plan.workloads[0].notice.as_ref().unwrap();
        assert_eq!(
            notice.message,
            "scaled Deployment/a from 6 to 0 replicas: the budget is exhausted"
        );
        // Room again (a raised limit) while pacing is still engaged: the paced count, not all 10.
        let plan = decide(
            &paced(Some(60)),
            &[deployment(0, "tokenbudget.io/paused-replicas: '10'")],
            now(),
        );
        assert_eq!(
            steps(&plan, "a"),
            [
                Step::Annotate(set(&[(BUDGET, "research"), (PACED_REPLICAS, "6")])),
                Step::Scale(6)
            ]
        );
    }

    #[test]
    fn an_autoscaled_workload_is_left_to_its_autoscaler() {
        let mut w = deployment(10, "");
        w.autoscaled = true;
        let plan = decide(&paced(Some(60)), &[w.clone()], now());
        assert!(plan.workloads.is_empty(), "{plan:?}");
        assert_eq!(plan.autoscaled, ["Deployment/a"]);
        // One that was paced before its autoscaler came is restored.
        w.annotations = deployment(6, PACED_10_TO_6).annotations;
        w.replicas = Some(6);
        let plan = decide(&paced(Some(60)), &[w], now());
        assert_eq!(steps(&plan, "a")[0], Step::Scale(10));
    }

    /// With `enforcement.action: None` (or Annotate before it wrote them) nothing else marks a
    /// paced workload as this budget's: without the budget annotation, a deleted binding
    /// leaves it paced for good (the budget no longer finds it), and a second budget binding
    /// it reads the paced count as "ours" and restores it (or paces it to its own pace) each
    /// cycle while this one paces it again: a tug of war. Pacing claims the workload with the
    /// budget annotation (not its pods) for as long as it is paced.
    #[test]
    fn pacing_claims_the_workload_it_paces_and_lets_it_go_on_release() {
        let mut w = deployment(10, "");
        w.pods = vec![Pod {
            name: "a-1".into(),
            annotations: BTreeMap::new(),
        }];
        let plan = decide(&paced(Some(60)), &[w], now());
        assert_eq!(
            steps(&plan, "a"),
            [
                Step::Annotate(set(&[
                    (BUDGET, "research"),
                    (PACED_REPLICAS, "6"),
                    (PAUSED_REPLICAS, "10")
                ])),
                Step::Scale(6)
            ]
        );
        assert!(plan.workloads[0].pods.is_empty(), "{plan:?}");
        // Unbound (its binding deleted): found by its annotation, restored, let go.
        let claimed = format!("tokenbudget.io/budget: research, {PACED_10_TO_6}");
        let mut w = deployment(6, &claimed);
        w.bound = false;
        let plan = decide(&paced(Some(60)), &[w], now());
        assert_eq!(
            steps(&plan, "a"),
            [
                Step::Scale(10),
                Step::Annotate(
                    [
                        (BUDGET.to_string(), None),
                        (PACED_REPLICAS.to_string(), None),
                        (PAUSED_REPLICAS.to_string(), None)
                    ]
                    .into()
                )
            ]
        );
        // Another budget binding it leaves it to this one.
        let other = Budget {
            name: "other",
            ..paced(None)
        };
        let mut w = deployment(6, &claimed);
        w.held_by = Some("research".into());
        assert!(decide(&other, &[w], now()).workloads.is_empty());
    }

    #[test]
    fn a_negative_count_to_restore_is_never_scaled_to() {
        for budget in [paced(None), paced(Some(60))] {
            let plan = decide(&budget, &[deployment(0, "tokenbudget.io/paused-replicas: '-3'")], now());
            assert!(
                plan.workloads
                    .iter()
                    .flat_map(|w| &w.steps)
                    .all(|s| !matches!(s, Step::Scale(n) if *n < 0)),
                "{plan:?}"
            );
        }
    }

    #[test]
    fn capacity_is_the_replicas_run_over_the_original_counts() {
        let stateful = workload("{kind: StatefulSet, name: s, replicas: 2}");
        let mut autoscaled = workload("{kind: Deployment, name: h, replicas: 7}");
        autoscaled.autoscaled = true;
        let job = workload("{kind: Job, name: j, suspended: false}");
        let workloads = [deployment(6, PACED_10_TO_6), stateful, autoscaled, job];
        assert_eq!(capacity("research", &workloads), 8.0 / 12.0);
        assert_eq!(capacity("research", &[]), 1.0);
    }
}
