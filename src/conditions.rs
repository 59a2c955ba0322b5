//! Standard `metav1.Condition`s, computed so that `lastTransitionTime` only moves on a real
//! transition (a change of status), never on a rewrite of the same state.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
}

impl Status {
    /// As `metav1.Condition` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
        }
    }
}

impl From<bool> for Status {
    fn from(holds: bool) -> Self {
        if holds { Status::True } else { Status::False }
    }
}

/// A condition as a reconcile wants it, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: Status,
    pub reason: &'static str,
    pub message: String,
}

impl Desired {
    pub fn new(type_: &'static str, status: Status, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// The full list of conditions for the desired ones: each keeps its `lastTransitionTime` from
/// `existing` when its status did not change, and gets `now` when it did (or is new).
pub fn merge(existing: &[Condition], desired: &[Desired], generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| Condition {
            type_: d.type_.to_string(),
            status: d.status.as_str().to_string(),
            reason: d.reason.to_string(),
            message: d.message.clone(),
            observed_generation: generation,
            last_transition_time: Time(since(existing, d, now)),
        })
        .collect()
}

/// Since when `desired` holds, once merged into `existing`: its `lastTransitionTime` when
/// its status did not change, `now` when it did (or is new).
pub fn since(existing: &[Condition], desired: &Desired, now: Timestamp) -> Timestamp {
    existing
        .iter()
        .find(|c| c.type_ == desired.type_ && c.status == desired.status.as_str())
        .map_or(now, |c| c.last_transition_time.0)
}

/// The condition of this type, if any.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of this type is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let t0 = ts("2026-11-01T00:00:00Z");
        let t1 = ts("2026-11-02T00:00:00Z");
        let first = merge(
            &[],
            &[Desired::new("Ready", Status::False, "BudgetNotFound", "missing")],
            Some(1),
            t0,
        );
        assert_eq!(first[0].last_transition_time, Time(t0));

        // Same status, new message and reason: the transition time stays.
        let same = merge(
            &first,
            &[Desired::new("Ready", Status::False, "InvalidSpec", "bad")],
            Some(2),
            t1,
        );
        assert_eq!(same[0].last_transition_time, Time(t0));
        assert_eq!(same[0].reason, "InvalidSpec");
        assert_eq!(same[0].observed_generation, Some(2));

        // A real transition gets the new time.
        let flipped = merge(
            &same,
            &[Desired::new("Ready", Status::True, "Reconciled", "ok")],
            Some(2),
            t1,
        );
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert!(is_true(&flipped, "Ready"));
        assert!(!is_true(&flipped, "BudgetFound"));
    }
}
