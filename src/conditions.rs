//! Standard `metav1.Condition`s, computed so that `lastTransitionTime` only moves on a real
//! transition (a change of status), never on a rewrite of the same state, with messages of at
//! most [`MAX_MESSAGE_BYTES`] whatever they quote.

use std::fmt::Display;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The longest condition message the operator writes, in bytes. The lists in a message
/// (failing pods, unpriced models) stop before it with "and N more" ([`bounded_list`]); any
/// other message is cut at it, so that what pods serve never grows a status.
pub const MAX_MESSAGE_BYTES: usize = 1024;

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
            message: cut(&d.message, MAX_MESSAGE_BYTES),
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

/// `text`, or its start up to a character boundary and "…", in at most `max_bytes`.
pub fn cut(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    const ELLIPSIS: &str = "…";
    let mut end = max_bytes.saturating_sub(ELLIPSIS.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &text[..end])
}

/// The first items (at most `max_items`) joined by `separator`, then "and N more" for the
/// rest, in at most `max_bytes`: as many items as fit whole, or the first one cut when not
/// even it fits. Only the items shown are formatted.
pub fn bounded_list<T: Display>(items: &[T], separator: &str, max_items: usize, max_bytes: usize) -> String {
    let more = |n: usize| format!("and {n} more");
    // Room for "; and N more" after the items shown, whatever N turns out to be.
    let reserve = separator.len() + more(items.len()).len();
    let mut list = String::new();
    let mut shown = 0;
    for item in items.iter().take(max_items) {
        let item = item.to_string();
        let sep = if shown == 0 { "" } else { separator };
        let last = shown + 1 == items.len();
        let room = max_bytes.saturating_sub(list.len() + sep.len() + if last { 0 } else { reserve });
        if item.len() > room {
            if shown == 0 {
                list.push_str(&cut(&item, room));
                shown = 1;
            }
            break;
        }
        list.push_str(sep);
        list.push_str(&item);
        shown += 1;
    }
    if shown < items.len() {
        if shown > 0 {
            list.push_str(separator);
        }
        list.push_str(&more(items.len() - shown));
    }
    list
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

    #[test]
    fn a_message_is_cut_at_the_limit_on_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let merged = merge(
            &[],
            &[Desired::new("Ready", Status::False, "InvalidSpec", long)],
            None,
            ts("2026-11-01T00:00:00Z"),
        );
        let message = &merged[0].message;
        assert!(message.len() <= MAX_MESSAGE_BYTES, "{}", message.len());
        assert!(message.ends_with("é…"), "{message}");
        assert_eq!(cut("short", 5), "short");
        assert_eq!(cut("abcdef", 5), "ab…");
    }

    #[test]
    fn a_list_shows_what_fits_and_counts_the_rest() {
        let items: Vec<String> = (1..=8).map(|i| format!("pod-{i}: {}", "x".repeat(90))).collect();
        let list = bounded_list(&items, "; ", 5, 1024);
        assert!(list.starts_with("pod-1: "), "{list}");
        assert!(list.ends_with("; and 3 more"), "{list}");
        assert_eq!(list.matches("pod-").count(), 5);

        // Only as many as fit: 300 bytes hold two items and "and 6 more".
        let list = bounded_list(&items, "; ", 5, 300);
        assert!(list.len() <= 300, "{}", list.len());
        assert_eq!(list.matches("pod-").count(), 2, "{list}");
        assert!(list.ends_with("; and 6 more"), "{list}");

        // One item longer than the limit is cut, and the rest still counted.
        let huge = vec!["y".repeat(5000), "z".into()];
        let list = bounded_list(&huge, "; ", 5, 1024);
        assert!(list.len() <= 1024, "{}", list.len());
        assert!(list.ends_with("…; and 1 more"), "{list}");

        assert_eq!(bounded_list(&["a", "b"], ", ", 5, 1024), "a, b");
        assert_eq!(bounded_list(&["a", "b", "c"], ", ", 2, 1024), "a, b, and 1 more");
        assert_eq!(bounded_list::<&str>(&[], ", ", 5, 1024), "");
    }
}
