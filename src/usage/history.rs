//! The periods a budget has ended, for chargeback: `status.history`. Pure: the entries are
//! made from a budget's account when its period ends (`usage::account`), and kept here as a
//! list keyed by the instant each period started, newest first, at most [`HISTORY_LIMIT`].
//!
//! Exactly once: an entry is made when the ledger moves to another period, from the ledger's
//! totals of the period it leaves, and is written in the same status write as the ledger of
//! the new period (`status.accounting.periodStart` says which period the persisted totals
//! belong to). A status written before the move has the old period's totals and no entry for
//! it; one written after has the entry and the new period's totals. Should a period be ended
//! twice all the same (`spec.period` changed and changed back, so that the ledger comes back
//! to a period already recorded), the second entry adds to the first: no period is listed
//! twice, and nothing counted is dropped.

use jiff::Timestamp;
use rust_decimal::Decimal;

use super::pricing::{self, format_money};
use crate::api::{HISTORY_LIMIT, HISTORY_TOP, ModelUsage, PeriodSummary, UsedTokens, WorkloadUsage};

/// The instant a history entry's period started; `None` for a string that is no RFC 3339
/// time (a hand-edited status).
fn started(entry: &PeriodSummary) -> Option<Timestamp> {
    entry.period_start.parse().ok()
}

/// Adds `entry` to `history` (newest first): merged into the entry of the same period start
/// (the same instant, whatever offset it is written with) if there is one, else inserted in
/// order; then the oldest beyond [`HISTORY_LIMIT`] are dropped.
pub fn record(history: &mut Vec<PeriodSummary>, entry: PeriodSummary) {
    let at = started(&entry);
    match history.iter_mut().find(|e| started(e) == at) {
        Some(existing) => merge(existing, entry),
        None => history.push(entry),
    }
    order(history);
}

/// The history as the status holds it, put in order: newest first, one entry per period
/// start (later duplicates merged into the first), at most [`HISTORY_LIMIT`]. A history the
/// operator wrote is in order already and comes back unchanged.
pub fn normalized(history: &[PeriodSummary]) -> Vec<PeriodSummary> {
    let mut kept: Vec<PeriodSummary> = Vec::with_capacity(history.len().min(HISTORY_LIMIT));
    for entry in history {
        match kept.iter_mut().find(|e| started(e) == started(entry)) {
            Some(existing) => merge(existing, entry.clone()),
            None => kept.push(entry.clone()),
        }
    }
    order(&mut kept);
    kept
}

/// Newest first (an entry whose start cannot be read last), at most [`HISTORY_LIMIT`].
fn order(history: &mut Vec<PeriodSummary>) {
    // `None` orders before any `Some`: reversed, it comes last.
    history.sort_by_key(|e| std::cmp::Reverse(started(e)));
    history.truncate(HISTORY_LIMIT);
}

/// `into` and `other`, the same period ended twice, as one entry: the totals added, the
/// listed models and workloads added by name and listed again by cost, then tokens. A model
/// or workload listed in only one of the two counts only that one's part: what the two lists
/// leave out stays in `used` minus the listed ones, so the totals still add up.
fn merge(into: &mut PeriodSummary, other: PeriodSummary) {
    if other.period_end.parse::<Timestamp>().ok() > into.period_end.parse::<Timestamp>().ok() {
        into.period_end = other.period_end;
    }
    into.currency = other.currency;
    into.used = UsedTokens {
        tokens: into.used.tokens.saturating_add(other.used.tokens),
        input: into.used.input.saturating_add(other.used.input),
        output: into.used.output.saturating_add(other.used.output),
        cost: add_money(into.used.cost.as_deref(), other.used.cost.as_deref()),
    };
    for model in other.models {
        match into.models.iter_mut().find(|m| m.model == model.model) {
            Some(m) => {
                m.input = m.input.saturating_add(model.input);
                m.output = m.output.saturating_add(model.output);
                m.cost = add_money(m.cost.as_deref(), model.cost.as_deref());
            }
            None => into.models.push(model),
        }
    }
    for workload in other.workloads {
        match into
            .workloads
            .iter_mut()
            .find(|w| (w.kind, &w.name) == (workload.kind, &workload.name))
        {
            Some(w) => {
                w.tokens = w.tokens.saturating_add(workload.tokens);
                w.cost = add_money(w.cost.as_deref(), workload.cost.as_deref());
            }
            None => into.workloads.push(workload),
        }
    }
    into.models = top_models(std::mem::take(&mut into.models).into_iter().map(|m| {
        let cost = money(m.cost.as_deref());
        (m, cost)
    }));
    into.workloads = top_workloads(std::mem::take(&mut into.workloads).into_iter().map(|w| {
        let cost = money(w.cost.as_deref());
        (w, cost)
    }));
}

/// The amount of a money string of the status; 0 for none (or one that cannot be read).
fn money(amount: Option<&str>) -> Decimal {
    amount.and_then(|a| pricing::parse_money(a).ok()).unwrap_or_default()
}

/// The sum of two money strings; `None` when neither is there.
fn add_money(a: Option<&str>, b: Option<&str>) -> Option<String> {
    if a.is_none() && b.is_none() {
        return None;
    }
    Some(format_money(money(a).saturating_add(money(b))))
}

/// The [`HISTORY_TOP`] largest models, by cost (`None`, unpriced, as 0), then tokens, then
/// name.
pub fn top_models(models: impl IntoIterator<Item = (ModelUsage, Decimal)>) -> Vec<ModelUsage> {
    let mut models: Vec<(ModelUsage, Decimal)> = models.into_iter().collect();
    models.sort_by(|(a, a_cost), (b, b_cost)| {
        b_cost
            .cmp(a_cost)
            .then_with(|| tokens(b.input, b.output).cmp(&tokens(a.input, a.output)))
            .then_with(|| a.model.cmp(&b.model))
    });
    models.into_iter().take(HISTORY_TOP).map(|(m, _)| m).collect()
}

/// The [`HISTORY_TOP`] largest workloads, by cost (`None` as 0), then tokens, then kind and
/// name.
pub fn top_workloads(workloads: impl IntoIterator<Item = (WorkloadUsage, Decimal)>) -> Vec<WorkloadUsage> {
    let mut workloads: Vec<(WorkloadUsage, Decimal)> = workloads.into_iter().collect();
    workloads.sort_by(|(a, a_cost), (b, b_cost)| {
        b_cost
            .cmp(a_cost)
            .then_with(|| b.tokens.cmp(&a.tokens))
            .then_with(|| (a.kind, &a.name).cmp(&(b.kind, &b.name)))
    });
    workloads.into_iter().take(HISTORY_TOP).map(|(w, _)| w).collect()
}

fn tokens(input: i64, output: i64) -> i64 {
    input.saturating_add(output)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::api::WorkloadKind;

    /// An entry of the hour starting `hour` hours after 2026-11-30T00:00Z, with `tokens`.
    fn entry(hour: i64, tokens: i64) -> PeriodSummary {
        let at = |h: i64| {
            let t: Timestamp = "2026-11-30T00:00:00Z".parse().unwrap();
            (t + jiff::SignedDuration::from_hours(h)).to_string()
        };
        PeriodSummary {
            period_start: at(hour),
            period_end: at(hour + 1),
            used: UsedTokens {
                tokens,
                input: tokens,
                output: 0,
                cost: Some(format_money(Decimal::new(tokens, 2))),
            },
            currency: "USD".into(),
            models: vec![ModelUsage {
                model: "m".into(),
                input: tokens,
                output: 0,
                cost: Some(format_money(Decimal::new(tokens, 2))),
            }],
            workloads: vec![WorkloadUsage {
                kind: WorkloadKind::Deployment,
                name: "d".into(),
                tokens,
                cost: Some(format_money(Decimal::new(tokens, 2))),
            }],
        }
    }

    fn starts(history: &[PeriodSummary]) -> Vec<Timestamp> {
        history.iter().map(|e| started(e).unwrap()).collect()
    }

    #[test]
    fn newest_first_and_at_most_the_limit() {
        let mut history = Vec::new();
        for hour in 0..20 {
            record(&mut history, entry(hour, hour + 1));
        }
        assert_eq!(history.len(), HISTORY_LIMIT);
        assert_eq!(history[0], entry(19, 20));
        assert_eq!(history[HISTORY_LIMIT - 1], entry(8, 9));
        assert!(starts(&history).windows(2).all(|w| w[0] > w[1]));
        // An entry older than all twelve kept goes at once.
        record(&mut history, entry(-5, 1));
        assert_eq!(history.last(), Some(&entry(8, 9)));
    }

    #[test]
    fn the_same_period_ended_twice_is_one_entry_that_adds_both() {
        let mut history = vec![entry(1, 10), entry(0, 5)];
        // The same instant, written with another offset.
        let mut again = entry(1, 7);
        again.period_start = "2026-11-30T02:00:00+01:00".into();
        again.workloads[0].name = "e".into();
        record(&mut history, again);
        assert_eq!(history.len(), 2);
        let merged = &history[0];
        assert_eq!(
            merged.period_start,
            entry(1, 0).period_start,
            "the first spelling stays"
        );
        assert_eq!((merged.used.tokens, merged.used.cost.as_deref()), (17, Some("0.17")));
        assert_eq!(
            merged
                .models
                .iter()
                .map(|m| (m.input, m.cost.as_deref()))
                .collect::<Vec<_>>(),
            [(17, Some("0.17"))]
        );
        let workloads: Vec<_> = merged.workloads.iter().map(|w| (w.name.as_str(), w.tokens)).collect();
        assert_eq!(workloads, [("d", 10), ("e", 7)], "by cost");
    }

    #[test]
    fn a_status_in_order_is_kept_as_it_is() {
        let history: Vec<_> = (0..HISTORY_LIMIT as i64).rev().map(|h| entry(h, h)).collect();
        assert_eq!(normalized(&history), history);
        // A hand-edited one is put in order, its duplicates merged, its excess dropped.
        let mut edited: Vec<_> = (0..15).map(|h| entry(h, 1)).collect();
        edited.push(entry(3, 1));
        let fixed = normalized(&edited);
        assert_eq!(fixed.len(), HISTORY_LIMIT);
        assert_eq!(fixed[0], entry(14, 1));
        assert_eq!(fixed.last(), Some(&entry(3, 2)), "the two entries of hour 3 added");
    }

    proptest! {
        /// Whatever periods end, in whatever order and however often: one entry per start,
        /// newest first, at most the limit, the newest starts all kept, and each entry's tokens
        /// are the sum of every ending of its period.
        #[test]
        fn one_entry_per_period_newest_first_bounded(ended in prop::collection::vec((0..30i64, 1..1000i64), 0..60)) {
            let mut history = Vec::new();
            let mut truth = std::collections::BTreeMap::new();
            for (hour, tokens) in &ended {
                record(&mut history, entry(*hour, *tokens));
                *truth.entry(*hour).or_insert(0) += tokens;
            }
            prop_assert!(history.len() <= HISTORY_LIMIT);
            prop_assert_eq!(history.len(), truth.len().min(HISTORY_LIMIT));
            let kept = starts(&history);
            prop_assert!(kept.windows(2).all(|w| w[0] > w[1]));
            for (e, (hour, tokens)) in history.iter().zip(truth.iter().rev()) {
                prop_assert_eq!(&e.period_start, &entry(*hour, 0).period_start);
                prop_assert_eq!(e.used.tokens, *tokens);
                prop_assert_eq!(e.used.cost.clone(), Some(format_money(Decimal::new(*tokens, 2))));
            }
            prop_assert_eq!(normalized(&history), history);
        }
    }
}
