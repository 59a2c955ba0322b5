//! Pacing: when the burn rate says the budget runs out before it resets, a pace for agents
//! (`status.pacing.pace`) and, for `action: ScaleReplicas`, the fraction of their replicas the
//! workloads keep. Pure: the time and the usage come in; see docs/pacing.md.
//!
//! **The forecast.** Each cycle adds a sample (time, tokens and cost used in the period, and
//! the *capacity*: the fraction of the paced workloads' original replicas that ran since the
//! sample before; 1 when nothing is paced). Over the samples of the last `spec.pacing.window`:
//!
//! - the *burn rate* is the tokens per hour measured (`status.pacing.burnRate`);
//! - the *full rate* is what the budget would burn at full capacity: the tokens (and cost)
//!   divided by the replica-weighted time, the integral of the capacity. Pacing's own
//!   scale-down lowers the burn rate but not the full rate, so the pace does not bounce back
//!   to 1 once fewer replicas run (the feedback that would make it flap);
//! - the *sustainable rate* of each limit is what is left of it spread evenly over the time
//!   to `resetsAt`; the pace of that limit is the sustainable rate over the full rate, and the
//!   raw pace is the least of the limits' paces, at most 1. A budget with only a cost limit
//!   works in cost per hour (tokens and cost are not converted: each limit is forecast in its
//!   own unit, and the pace is a ratio, without a unit); `sustainableRate` is then the tokens
//!   per hour that last at the window's mix of models (cost per token).
//!
//! **Hysteresis.** Pacing *engages* when the raw pace falls below [`ENGAGE_BELOW`] (0.90: the
//! budget runs out clearly before the reset), and *releases* only when the raw pace has been
//! at least 1 for [`hold`] (a quarter of the window) without a break. While engaged, the
//! published pace moves only when the raw pace is [`STEP`] (0.05) away from it, so the status
//! (and the replica counts, which follow the published pace) are not rewritten every cycle.
//! While not engaged the pace is 1.00.
//!
//! **No pacing** without a reset (`period.reset: Never`: there is no time left to spread the
//! budget over; pace 1.00, reason `NoReset`), and while the samples span less than
//! [`min_span`] (a quarter of the window, so 15 minutes for the default hour): a period that
//! just began, or an operator that just started. Then the state persisted in the status (an
//! engaged pace and its `since`) stays as it is: a restart neither releases nor changes it.
//!
//! **The replica rule** (`enforce::decide`): a paced workload runs
//! `clamp(floor(original × pace), minReplicas, original)` replicas. With one workload this is
//! `floor(sustainable rate / rate per replica)`, the rate per replica being the full rate
//! over the original replicas: self-consistent, since running fewer replicas changes neither.

use std::collections::VecDeque;

use jiff::{SignedDuration, Timestamp};

use crate::{
    api::PacingStatus,
    conditions::{Desired, Status},
};

/// Pacing engages when the raw pace is below this, in hundredths.
pub const ENGAGE_BELOW: u32 = 90;
/// The pace of a budget that lasts, in hundredths: pacing releases once the raw pace has been
/// at least this for [`hold`].
pub const FULL: u32 = 100;
/// The published pace moves by at least this, in hundredths.
pub const STEP: u32 = 5;

/// The least span of samples that gives a forecast: a quarter of the window.
pub fn min_span(window: SignedDuration) -> SignedDuration {
    window / 4
}

/// How long the raw pace must stay at 1 before pacing releases: a quarter of the window.
pub fn hold(window: SignedDuration) -> SignedDuration {
    window / 4
}

/// What one cycle brings to the forecast.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub now: Timestamp,
    /// When the period ends; `None` for `reset: Never`.
    pub resets_at: Option<Timestamp>,
    /// Tokens used in the period (of the budget's token types).
    pub tokens: u64,
    /// Cost used in the period.
    pub cost: f64,
    pub limit_tokens: Option<u64>,
    pub limit_cost: Option<f64>,
    /// The fraction of the paced workloads' original replicas that ran since the last cycle:
    /// 1 when none is paced.
    pub capacity: f64,
}

/// Why the pace is what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// The forecast says the budget lasts (or pacing has released).
    OnTrack,
    /// Pacing is engaged.
    Pacing,
    /// `reset: Never`: nothing to spread the budget over.
    NoReset,
    /// Too few samples yet (a new period, a restart): the state as it was stays.
    Warming,
}

/// The pace as published, and what the status and the Paced condition say of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    /// In hundredths: 100 while nothing is paced.
    pub pace: u32,
    /// Since when the pace is below 1.
    pub since: Option<Timestamp>,
    /// Tokens per hour over the window, as measured.
    pub burn_rate: Option<u64>,
    /// The most tokens per hour that last until the reset.
    pub sustainable_rate: Option<u64>,
    /// When the budget runs out at the measured rate.
    pub runs_out_at: Option<Timestamp>,
    /// When the period resets.
    pub resets_at: Option<Timestamp>,
    pub why: Why,
}

impl Default for Published {
    fn default() -> Self {
        Published {
            pace: FULL,
            since: None,
            burn_rate: None,
            sustainable_rate: None,
            runs_out_at: None,
            resets_at: None,
            why: Why::Warming,
        }
    }
}

impl Published {
    /// Whether pacing is engaged.
    pub fn engaged(&self) -> bool {
        self.since.is_some()
    }

    /// `status.pacing`.
    pub fn status(&self) -> PacingStatus {
        PacingStatus {
            pace: format_pace(self.pace),
            burn_rate: self.burn_rate.map(to_i64),
            sustainable_rate: self.sustainable_rate.map(to_i64),
            since: self
                .since
                .map(|t| Timestamp::from_second(t.as_second()).unwrap_or(t).to_string()),
        }
    }

    /// The Paced condition; `note` is appended to its message (what ScaleReplicas did).
    pub fn condition(&self, note: &str) -> Desired {
        let suffix = if note.is_empty() {
            String::new()
        } else {
            format!("; {note}")
        };
        match self.why {
            Why::Pacing | Why::Warming if self.engaged() => {
                let when = match (self.runs_out_at, self.resets_at) {
                    (Some(out), Some(reset)) if out < reset => {
                        let early = out.duration_until(reset);
                        format!(
                            "at the current rate the budget runs out at {}, {} before it resets",
                            whole_seconds(out),
                            human(early)
                        )
                    }
                    _ => "at the current rate the budget runs out before it resets".to_string(),
                };
                Desired::new(
                    "Paced",
                    Status::True,
                    "Pacing",
                    format!("{when}; pace {}{suffix}", format_pace(self.pace)),
                )
            }
            Why::NoReset => Desired::new(
                "Paced",
                Status::False,
                "NoReset",
                "the budget never resets (period.reset: Never): nothing to pace to; pace 1.00",
            ),
            Why::Warming => Desired::new(
                "Paced",
                Status::False,
                "OnTrack",
                "too few samples for a forecast yet (the window must span a quarter of spec.pacing.window); pace 1.00",
            ),
            _ => Desired::new(
                "Paced",
                Status::False,
                "OnTrack",
                "at the current rate the budget lasts until it resets; pace 1.00",
            ),
        }
    }
}

/// One sample of the forecast.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    at: Timestamp,
    tokens: u64,
    cost: f64,
    capacity: f64,
}

/// What a pacer keeps between cycles: the samples of the window, and the state it published.
#[derive(Clone, Debug, Default)]
pub struct Pacer {
    samples: VecDeque<Sample>,
    published: Published,
    /// Since when the raw pace has been at least 1 while engaged.
    recovered_since: Option<Timestamp>,
}

/// The forecast of one cycle, before hysteresis.
struct Forecast {
    /// The raw pace, at most 1.
    raw: f64,
    burn_rate: u64,
    sustainable_rate: Option<u64>,
    runs_out_at: Option<Timestamp>,
}

impl Pacer {
    /// A pacer resumed from the status: an engaged pace stays engaged until a forecast says
    /// otherwise.
    pub fn resume(status: Option<&PacingStatus>) -> Self {
        let mut pacer = Pacer::default();
        if let Some(status) = status
            && let Some(pace) = parse_pace(&status.pace).filter(|p| *p < FULL)
        {
            pacer.published = Published {
                pace,
                since: status.since.as_deref().and_then(|s| s.parse().ok()),
                burn_rate: status.burn_rate.and_then(|r| u64::try_from(r).ok()),
                sustainable_rate: status.sustainable_rate.and_then(|r| u64::try_from(r).ok()),
                ..Published::default()
            };
        }
        pacer
    }

    /// What is published now.
    pub fn published(&self) -> &Published {
        &self.published
    }

    /// Adds the reading of a cycle and updates what is published, over `window`.
    pub fn observe(&mut self, reading: &Reading, window: SignedDuration) -> &Published {
        let Some(resets_at) = reading.resets_at else {
            self.samples.clear();
            self.recovered_since = None;
            self.published = Published {
                why: Why::NoReset,
                ..Published::default()
            };
            return &self.published;
        };
        let usage_changed = self.samples.back().is_none_or(|s| s.tokens != reading.tokens);
        self.samples.push_back(Sample {
            at: reading.now,
            tokens: reading.tokens,
            cost: reading.cost,
            capacity: reading.capacity.clamp(0.0, 1.0),
        });
        while self
            .samples
            .front()
            .is_some_and(|s| reading.now.duration_since(s.at) > window)
        {
            self.samples.pop_front();
        }
        let Some(forecast) = self.forecast(reading, resets_at, window) else {
            // Warming up: what was published (resumed, or 1.00) stays.
            if !self.published.engaged() {
                self.published.why = Why::Warming;
            }
            self.published.resets_at = Some(resets_at);
            return &self.published;
        };
        let before = (self.published.pace, self.published.since);
        self.hysteresis(forecast.raw, reading.now, window);
        let moved = before != (self.published.pace, self.published.since);
        // The numbers follow usage (whose change writes the status anyway) and the pace; an
        // idle budget keeps them, but for a window without any token: its rate is 0 then.
        let went_idle = forecast.burn_rate == 0 && self.published.burn_rate != Some(0);
        if moved || usage_changed || went_idle || self.published.burn_rate.is_none() {
            self.published.burn_rate = Some(forecast.burn_rate);
            self.published.sustainable_rate = forecast.sustainable_rate;
            self.published.runs_out_at = forecast.runs_out_at;
        }
        self.published.resets_at = Some(resets_at);
        &self.published
    }

    /// Engages below [`ENGAGE_BELOW`], releases after [`hold`] at [`FULL`], and moves the
    /// published pace by [`STEP`]s in between.
    fn hysteresis(&mut self, raw: f64, now: Timestamp, window: SignedDuration) {
        let stepped = hundredths(raw);
        let published = &mut self.published;
        if !published.engaged() {
            self.recovered_since = None;
            if stepped < ENGAGE_BELOW {
                published.pace = stepped;
                published.since = Some(now);
                published.why = Why::Pacing;
            } else {
                published.pace = FULL;
                published.why = Why::OnTrack;
            }
            return;
        }
        published.why = Why::Pacing;
        if stepped >= FULL {
            let since = *self.recovered_since.get_or_insert(now);
            if now.duration_since(since) >= hold(window) {
                self.recovered_since = None;
                published.pace = FULL;
                published.since = None;
                published.why = Why::OnTrack;
            }
            return;
        }
        self.recovered_since = None;
        if stepped.abs_diff(published.pace) >= STEP {
            published.pace = stepped;
        }
    }

    /// The forecast over the samples, once they span [`min_span`].
    fn forecast(&self, reading: &Reading, resets_at: Timestamp, window: SignedDuration) -> Option<Forecast> {
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        let span = last.at.duration_since(first.at);
        if span < min_span(window) || last.tokens < first.tokens {
            return None;
        }
        let left = reading.now.duration_until(resets_at).as_secs_f64() / 3600.0;
        if left <= 0.0 {
            return None;
        }
        // Hours at full capacity: each interval at the capacity measured at its end (the
        // replicas that ran since the cycle before).
        let full_hours: f64 = (self.samples.iter().zip(self.samples.iter().skip(1)))
            .map(|(a, b)| b.capacity * b.at.duration_since(a.at).as_secs_f64() / 3600.0)
            .sum();
        if full_hours <= 0.0 {
            return None;
        }
        let hours = span.as_secs_f64() / 3600.0;
        let tokens = (last.tokens - first.tokens) as f64;
        let cost = (last.cost - first.cost).max(0.0);
        let remaining_tokens = reading.limit_tokens.map(|l| l.saturating_sub(reading.tokens) as f64);
        let remaining_cost = reading.limit_cost.map(|l| (l - reading.cost).max(0.0));
        // Each limit's pace, and the tokens per hour that last by it.
        let mut raw = f64::INFINITY;
        let mut sustainable = f64::INFINITY;
        let mut runs_out_in = f64::INFINITY;
        for (remaining, used) in [(remaining_tokens, tokens), (remaining_cost, cost)] {
            let Some(remaining) = remaining else { continue };
            let sustainable_rate = remaining / left;
            let full_rate = used / full_hours;
            if full_rate > 0.0 {
                raw = raw.min(sustainable_rate / full_rate);
                runs_out_in = runs_out_in.min(remaining / (used / hours));
            } else if remaining <= 0.0 {
                raw = 0.0;
                runs_out_in = 0.0;
            }
            // In tokens: a cost per hour converted at the window's cost per token.
            let tokens_per_unit = if used > 0.0 { tokens / used } else { f64::INFINITY };
            sustainable = sustainable.min(sustainable_rate * tokens_per_unit);
        }
        Some(Forecast {
            raw: raw.min(1.0),
            burn_rate: (tokens / hours).round() as u64,
            sustainable_rate: sustainable.is_finite().then(|| sustainable.floor() as u64),
            runs_out_at: runs_out_in
                .is_finite()
                .then(|| SignedDuration::try_from_secs_f64(runs_out_in * 3600.0).ok())
                .flatten()
                .and_then(|d| reading.now.checked_add(d).ok()),
        })
    }
}

/// A pace in hundredths, rounded down (a pace slightly too low is the safe side), from 0 to 100.
fn hundredths(raw: f64) -> u32 {
    (raw.clamp(0.0, 1.0) * 100.0 + 1e-9).floor() as u32
}

/// `"0.60"` for 60.
pub fn format_pace(pace: u32) -> String {
    format!("{}.{:02}", pace / 100, pace % 100)
}

/// 60 for `"0.60"`; `None` for anything that is not such a pace.
pub fn parse_pace(text: &str) -> Option<u32> {
    let (whole, fraction) = text.split_once('.')?;
    if fraction.len() != 2 {
        return None;
    }
    let pace = whole.parse::<u32>().ok()? * 100 + fraction.parse::<u32>().ok()?;
    (pace <= FULL).then_some(pace)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn whole_seconds(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second()).unwrap_or(t).to_string()
}

/// `5h`, `1h30m`, `45m`, `20s`: how early, as a person says it.
fn human(d: SignedDuration) -> String {
    let secs = d.as_secs().max(0);
    let (h, m) = (secs / 3600, secs % 3600 / 60);
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m"),
        (h, 0) => format!("{h}h"),
        (h, m) => format!("{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = "2026-11-30T00:00:00Z";
    const HOUR: SignedDuration = SignedDuration::from_hours(1);

    fn at(minutes: i64) -> Timestamp {
        START.parse::<Timestamp>().unwrap() + SignedDuration::from_mins(minutes)
    }

    /// A daily budget of `limit` tokens, read at minute `minute` with `tokens` used and the
    /// paced workloads at `capacity`.
    fn reading(limit: u64, minute: i64, tokens: u64, capacity: f64) -> Reading {
        Reading {
            now: at(minute),
            resets_at: Some(at(24 * 60)),
            tokens,
            cost: 0.0,
            limit_tokens: Some(limit),
            limit_cost: None,
            capacity,
        }
    }

    /// Feeds a cycle a minute from `from` to `to` (exclusive), tokens from `tokens(minute)`,
    /// capacity from `capacity(pace)`; returns the paces published, one per cycle.
    fn run(
        pacer: &mut Pacer,
        limit: u64,
        minutes: std::ops::Range<i64>,
        tokens: impl Fn(i64) -> u64,
        capacity: impl Fn(u32) -> f64,
    ) -> Vec<u32> {
        minutes
            .map(|m| {
                let c = capacity(pacer.published().pace);
                pacer.observe(&reading(limit, m, tokens(m), c), HOUR).pace
            })
            .collect()
    }

    /// How often the published pace changed.
    fn changes(paces: &[u32]) -> usize {
        paces.windows(2).filter(|w| w[0] != w[1]).count()
    }

    #[test]
    fn a_steady_burn_that_lasts_is_not_paced() {
        // 1,000 tokens a minute, 60,000 an hour; 2,000,000 last the day.
        let mut pacer = Pacer::default();
        let paces = run(&mut pacer, 2_000_000, 0..180, |m| m as u64 * 1000, |_| 1.0);
        assert!(paces.iter().all(|p| *p == FULL), "{paces:?}");
        let published = pacer.published();
        assert_eq!(published.why, Why::OnTrack);
        assert_eq!(published.burn_rate, Some(60_000));
        // 2,000,000 - 179,000 left over 21h01m.
        assert_eq!(published.sustainable_rate, Some(86_645));
        assert_eq!(published.status().pace, "1.00");
        assert_eq!(published.condition("").reason, "OnTrack");
    }

    #[test]
    fn a_steady_burn_that_runs_out_is_paced_once_the_window_spans_a_quarter() {
        // 60,000 an hour against 720,000 a day: at minute 20, 700,000 left over 23h40m is
        // 29,577 an hour, a pace of 0.49.
        let mut pacer = Pacer::default();
        let paces = run(&mut pacer, 720_000, 0..15, |m| m as u64 * 1000, |_| 1.0);
        assert!(paces.iter().all(|p| *p == FULL), "warming up: {paces:?}");
        assert_eq!(pacer.published().why, Why::Warming);
        let paces = run(&mut pacer, 720_000, 15..21, |m| m as u64 * 1000, |_| 1.0);
        assert_eq!(paces[0], 49, "engaged at the first forecast: {paces:?}");
        let published = pacer.published();
        assert_eq!(published.since, Some(at(15)));
        let condition = published.condition("");
        assert_eq!((condition.status, condition.reason), (Status::True, "Pacing"));
        assert_eq!(
            condition.message,
            "at the current rate the budget runs out at 2026-11-30T12:00:00Z, 12h before it resets; pace 0.49"
        );
        assert_eq!(published.status().since.as_deref(), Some("2026-11-30T00:15:00Z"));
    }

    #[test]
    fn the_thresholds_engage_below_0_90_and_hold_the_release() {
        // Budgets whose pace is just above and just below 0.90: 1,000 a minute, so 60,000 an
        // hour; the pace at minute 15 is (limit - 15,000) / 23.75h / 60,000.
        let limit = |pace: f64| (pace * 60_000.0 * 23.75) as u64 + 15_000;
        let mut above = Pacer::default();
        run(&mut above, limit(0.905), 0..16, |m| m as u64 * 1000, |_| 1.0);
        assert!(!above.published().engaged());
        let mut below = Pacer::default();
        run(&mut below, limit(0.895), 0..16, |m| m as u64 * 1000, |_| 1.0);
        assert_eq!(below.published().pace, 89);

        // Idle from minute 16: the window's rate falls, the raw pace is 0.95 at minute 16 (a
        // step up) and 1 from minute 17, but pacing holds for 15 minutes more.
        let paces = run(&mut below, limit(0.895), 16..60, |_| 15_000, |_| 1.0);
        let released = paces.iter().position(|p| *p == FULL).expect("released");
        assert_eq!(released, 1 + 15, "held a quarter of the window: {paces:?}");
        assert!(paces[..released].iter().all(|p| *p == 95), "{paces:?}");
        assert_eq!(changes(&paces), 1);
    }

    #[test]
    fn a_burst_that_passes_does_not_flap_the_pace() {
        // A steady 1,000 a minute that lasts, with a burst of 40,000 in one minute every
        // twenty minutes: the window smooths it.
        let tokens = |m: i64| m as u64 * 1000 + (m as u64 / 20) * 40_000;
        let mut pacer = Pacer::default();
        let paces = run(&mut pacer, 5_000_000, 0..240, tokens, |_| 1.0);
        assert!(paces.iter().all(|p| *p == FULL), "{paces:?}");
        // Against a tighter budget it is paced, and the pace moves by steps only.
        let mut pacer = Pacer::default();
        let paces = run(&mut pacer, 3_500_000, 0..240, tokens, |_| 1.0);
        assert!(paces[20..].iter().all(|p| *p < FULL), "{paces:?}");
        let moves: Vec<_> = paces.windows(2).filter(|w| w[0] != w[1]).collect();
        assert!(moves.iter().all(|w| w[0].abs_diff(w[1]) >= STEP), "{moves:?}");
        // Once the window holds three bursts, whatever the phase of the next one, it stays.
        assert_eq!(changes(&paces[60..]), 0, "{paces:?}");
    }

    #[test]
    fn a_declining_burn_recovers_and_releases() {
        // 2,000 a minute for an hour, then 100 a minute: paced, then released once the window
        // sees only the slow burn long enough.
        let tokens = |m: i64| {
            if m < 60 {
                m as u64 * 2000
            } else {
                120_000 + (m as u64 - 60) * 100
            }
        };
        let mut pacer = Pacer::default();
        let paces = run(&mut pacer, 1_000_000, 0..200, tokens, |_| 1.0);
        assert!(paces[15..60].iter().all(|p| *p < ENGAGE_BELOW), "{paces:?}");
        assert_eq!(*paces.last().unwrap(), FULL);
        // Released exactly once, and never engaged again.
        let released = paces.iter().rposition(|p| *p < FULL).unwrap() + 1;
        assert!(paces[released..].iter().all(|p| *p == FULL));
        assert_eq!(pacer.published().why, Why::OnTrack);
    }

    #[test]
    fn fewer_replicas_lower_the_burn_but_not_the_pace() {
        // 10 replicas of 100 tokens a minute each; the replicas follow the published pace
        // (floor(10 × pace)), and each burns as before: the measured rate drops with them.
        let replicas = |pace: u32| (10 * pace / 100).clamp(1, 10);
        let mut total = 0;
        let mut last_replicas = 10;
        let mut pacer = Pacer::default();
        let mut paces = Vec::new();
        for m in 0..600 {
            total += u64::from(last_replicas) * 100;
            let reading = reading(1_000_000, m, total, f64::from(last_replicas) / 10.0);
            let pace = pacer.observe(&reading, HOUR).pace;
            paces.push(pace);
            last_replicas = replicas(pace);
        }
        // 60,000 an hour at full capacity against about 41,000 that last: engaged at minute
        // 15, and never released although the burn now fits.
        let engaged = paces.iter().position(|p| *p < FULL).unwrap();
        assert_eq!(engaged, 15);
        assert!(paces[engaged..].iter().all(|p| *p < FULL), "{paces:?}");
        assert!(changes(&paces) <= 4, "no flapping: {paces:?}");
        assert!(pacer.published().burn_rate.unwrap() < 60_000);
    }

    #[test]
    fn an_idle_budget_publishes_the_same_thing_cycle_after_cycle() {
        // Paced, then idle: the pace steps up as the window forgets the burn, releases, and
        // from then on nothing it publishes changes (so its status is not written again).
        let mut pacer = Pacer::default();
        run(&mut pacer, 720_000, 0..30, |m| m as u64 * 1000, |_| 1.0);
        assert!(pacer.published().engaged());
        let paces = run(&mut pacer, 720_000, 30..200, |_| 29_000, |_| 1.0);
        assert!(changes(&paces) <= 12, "{paces:?}");
        let settled = pacer.published().clone();
        assert_eq!(settled.why, Why::OnTrack);
        assert_eq!(settled.burn_rate, Some(0), "a window without tokens");
        for m in 200..400 {
            pacer.observe(&reading(720_000, m, 29_000, 1.0), HOUR);
            assert_eq!(pacer.published().status(), settled.status(), "minute {m}");
            assert_eq!(pacer.published().condition(""), settled.condition(""), "minute {m}");
        }
    }

    #[test]
    fn a_budget_that_never_resets_is_not_paced() {
        let mut pacer = Pacer::default();
        for m in 0..30 {
            let mut r = reading(10_000, m, m as u64 * 1000, 1.0);
            r.resets_at = None;
            pacer.observe(&r, HOUR);
        }
        let published = pacer.published();
        assert_eq!((published.pace, published.why), (FULL, Why::NoReset));
        assert_eq!(published.condition("").reason, "NoReset");
    }

    #[test]
    fn a_resumed_pace_stays_while_the_samples_are_too_few() {
        let status = PacingStatus {
            pace: "0.60".into(),
            burn_rate: Some(1000),
            sustainable_rate: Some(600),
            since: Some("2026-11-29T23:00:00Z".into()),
        };
        let mut pacer = Pacer::resume(Some(&status));
        let paces = run(&mut pacer, 1_000_000, 0..10, |_| 0, |_| 1.0);
        assert!(paces.iter().all(|p| *p == 60), "{paces:?}");
        assert_eq!(pacer.published().status(), status);
        assert_eq!(pacer.published().condition("").status, Status::True);
    }

    #[test]
    fn a_cost_limit_is_forecast_in_cost() {
        // 0.01 a minute against 10.00 a day: at minute 15, 9.85 over 23.75h is 0.69 of 0.60 an
        // hour.
        let mut pacer = Pacer::default();
        for m in 0..16 {
            let mut r = reading(0, m, m as u64 * 1000, 1.0);
            (r.limit_tokens, r.cost, r.limit_cost) = (None, m as f64 * 0.01, Some(10.0));
            pacer.observe(&r, HOUR);
        }
        let published = pacer.published();
        assert_eq!(published.pace, 69);
        // At 1,000 tokens per 0.01: 9.85 / 23.75h as tokens.
        assert_eq!(published.sustainable_rate, Some(41_473));
    }

    #[test]
    fn paces_are_written_and_read_with_two_decimals() {
        assert_eq!(format_pace(60), "0.60");
        assert_eq!(format_pace(100), "1.00");
        assert_eq!(parse_pace("0.05"), Some(5));
        assert_eq!(parse_pace("1.00"), Some(100));
        assert_eq!(parse_pace("1.5"), None);
        assert_eq!(parse_pace("2.00"), None);
    }
}
