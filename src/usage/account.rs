//! What the operator keeps of one budget between reconciles, and the usage part of the
//! budget's status computed from it. Pure: no client, no clock (the time comes in).
//!
//! The ledger lives in memory between reconciles (so a reconcile that runs before the watch
//! has delivered the operator's last status write never reads a stale one) and is persisted
//! in `status.accounting`, in the same status write as `used` (accounting rule 4).

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use jiff::{SignedDuration, Timestamp};
use rust_decimal::Decimal;

use super::{
    ledger::{self, Ledger, OTHER_MODELS},
    period::{self, PeriodWindow},
    pricing,
};
use crate::{
    api::{AccountingState, BudgetPhase, ModelUsage, TokenBudgetStatus, TokenType, UsedTokens, WorkloadUsage},
    conditions::{self, Desired, Status},
    validate::ValidBudget,
};

/// How far back the burn rate looks.
const BURN_WINDOW: SignedDuration = SignedDuration::from_hours(1);
/// The least span of samples that gives a burn rate.
const BURN_MIN_SPAN: SignedDuration = SignedDuration::from_secs(10);
/// At most this many workloads in `status.workloads`.
const TOP_WORKLOADS: usize = 20;
/// At most this many failing pods named in a binding's ScrapeHealthy message.
const LISTED_PROBLEMS: usize = 5;
/// The longest reason kept for one pod's failure, in bytes: it is kept per pod and copied
/// into conditions and Events. A parse error quotes a short excerpt of the line already
/// (`usage::parse`); this also bounds what TLS and HTTP libraries say.
pub const MAX_REASON_BYTES: usize = 256;

/// One budget's account: its ledger, the samples of its burn rate, the pods whose scrape
/// failed in the last cycle, and since when the budget is exhausted.
pub struct Account {
    /// The budget's uid: a budget deleted and created again starts afresh.
    uid: String,
    ledger: Ledger,
    /// (time, tokens used in the period) after each cycle, for the burn rate.
    samples: VecDeque<(Timestamp, u64)>,
    /// The burn rate the status shows, and when it was measured (see [`Account::sample`]).
    published: Option<(u64, Timestamp)>,
    /// The last scrape error per pod uid, so an Event is sent once per failure, not per cycle.
    failing: HashMap<String, String>,
    /// Since when the budget is exhausted, as this operator saw it: the `Exhausted`
    /// condition's `lastTransitionTime` says so too, but only once a status write succeeds.
    exhausted_since: Option<Timestamp>,
}

impl Account {
    /// The account of the budget with `uid`, resumed from what its status persisted.
    pub fn open(uid: &str, persisted: Option<&AccountingState>) -> Self {
        Self {
            uid: uid.to_string(),
            ledger: Ledger::from_state(persisted),
            samples: VecDeque::new(),
            published: None,
            failing: HashMap::new(),
            exhausted_since: None,
        }
    }

    /// The uid of the budget this account belongs to.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn ledger_mut(&mut self) -> &mut Ledger {
        &mut self.ledger
    }

    /// Moves the account into the period starting at `start`. True when a period ended:
    /// the ledger had one before and this is a new one (its burn-rate samples start again).
    pub fn begin_period(&mut self, start: Timestamp) -> bool {
        let had_period = self.ledger.period_start().is_some();
        let reset = self.ledger.ensure_period(start) && had_period;
        if reset {
            self.samples.clear();
            self.published = None;
            self.exhausted_since = None;
        }
        reset
    }

    /// Since when the budget is exhausted, the earlier of `persisted` (the `Exhausted`
    /// condition's `lastTransitionTime`, or now when the status does not say so) and what
    /// this account remembers; `None` (forgotten) when it is not exhausted. Remembering it here
    /// keeps a grace period running while status writes fail: measured from the status alone
    /// it would start again at every reconcile, and the scale-down never come. Forgotten when
    /// the budget has room again, and at a new period.
    pub fn exhausted_since(&mut self, persisted: Option<Timestamp>) -> Option<Timestamp> {
        self.exhausted_since = match (persisted, self.exhausted_since) {
            (Some(persisted), Some(remembered)) => Some(persisted.min(remembered)),
            (persisted, _) => persisted,
        };
        self.exhausted_since
    }

    /// Records the tokens used in the period at `now`, for the burn rate.
    ///
    /// The burn rate shown is measured when usage changes, and kept while it does not: an
    /// idle budget's status stays as it is, so nothing is written and no watcher wakes
    /// (issue 11, item 7). It is measured anew when the first rate is known (the samples
    /// span [`BURN_MIN_SPAN`]), and falls to 0 once the last hour saw no tokens at all.
    pub fn sample(&mut self, now: Timestamp, used: u64) {
        let changed = self.samples.back().is_none_or(|(_, last)| *last != used);
        self.samples.push_back((now, used));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > BURN_WINDOW)
        {
            self.samples.pop_front();
        }
        let measured = burn_rate(&self.samples);
        let stale = match (self.published, measured) {
            (None, _) => true,
            // An hour without tokens: the rate published when they were counted is over.
            (Some((published, _)), Some(0)) => published != 0,
            _ => false,
        };
        if changed || stale {
            self.published = measured.map(|rate| (rate, now));
        }
    }

    /// Replaces the scrape failures of the last cycle with this cycle's (pod uid, reason), and
    /// tells for each whether it is new: a pod that failed in the last cycle for the same
    /// reason is not.
    pub fn record_failures(&mut self, failures: &[(String, String)]) -> Vec<bool> {
        let new = failures
            .iter()
            .map(|(uid, reason)| self.failing.get(uid) != Some(reason))
            .collect();
        self.failing = failures.iter().cloned().collect();
        new
    }

    /// Tokens per hour over the last hour's samples, as measured when usage last changed
    /// (see [`Account::sample`]), and when that was; none while the samples span less than
    /// [`BURN_MIN_SPAN`].
    pub fn burn_rate(&self) -> Option<(u64, Timestamp)> {
        self.published
    }
}

/// Tokens per hour over the samples, when they span long enough.
fn burn_rate(samples: &VecDeque<(Timestamp, u64)>) -> Option<u64> {
    let (first, last) = (samples.front()?, samples.back()?);
    let span = last.0.duration_since(first.0);
    if span < BURN_MIN_SPAN || last.1 < first.1 {
        return None;
    }
    let per_hour = u128::from(last.1 - first.1) * 3_600_000 / span.as_millis().max(1) as u128;
    Some(u64::try_from(per_hour).unwrap_or(u64::MAX))
}

/// What a cycle saw of one binding.
#[derive(Clone, Debug, Default)]
pub struct BindingReport {
    pub name: String,
    pub workloads: usize,
    pub pods: usize,
    pub scraped_pods: usize,
    /// Pods not scraped because no container of theirs has started yet.
    pub pending_pods: usize,
    pub used_tokens: u64,
    pub problems: Vec<PodProblem>,
    /// The binding's scrape interval.
    pub interval: Duration,
}

/// One scrape failure, for the binding's ScrapeHealthy condition and an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodProblem {
    pub pod: String,
    /// At most [`MAX_REASON_BYTES`].
    pub reason: String,
    /// Whether this is new since the last cycle (an Event is due).
    pub new: bool,
}

/// `<pod>: <reason>`, as the ScrapeHealthy message lists it.
impl std::fmt::Display for PodProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.pod, self.reason)
    }
}

/// Cost per model, and the models without a price.
struct Costs {
    models: Vec<ModelUsage>,
    total: Decimal,
    unpriced: Vec<String>,
}

/// The usage per model, most tokens first, priced by `budget`'s price table.
fn costs(budget: &ValidBudget, ledger: &Ledger) -> Costs {
    let mut total = Decimal::ZERO;
    let mut unpriced = Vec::new();
    let mut models: Vec<ModelUsage> = ledger
        .models()
        .map(|(model, input, output)| {
            let cost = budget.prices.cost(model, input, output);
            match cost {
                Some(c) => total += c,
                None => unpriced.push(model.to_string()),
            }
            ModelUsage {
                model: model.to_string(),
                input: to_i64(input),
                output: to_i64(output),
                cost: cost.map(pricing::format_money),
            }
        })
        .collect();
    models.sort_by(|a, b| {
        (b.input + b.output)
            .cmp(&(a.input + a.output))
            .then_with(|| a.model.cmp(&b.model))
    });
    Costs {
        models,
        total,
        unpriced,
    }
}

/// Where usage stands against the limits.
struct Standing {
    used: u64,
    remaining: Option<u64>,
    percent: Option<u64>,
    /// The highest threshold crossed.
    crossed: Option<u8>,
    exhausted: bool,
}

impl Standing {
    fn new(budget: &ValidBudget, used: u64, cost: Decimal) -> Self {
        let percent = pricing::percent_used(used, budget.limit_tokens, cost, budget.limit_cost);
        let crossed = budget
            .thresholds
            .iter()
            .rev()
            .find(|t| percent.is_some_and(|p| p >= u64::from(**t)))
            .copied();
        Self {
            used,
            remaining: budget.limit_tokens.map(|l| l.saturating_sub(used)),
            percent,
            crossed,
            exhausted: percent.is_some_and(|p| p >= 100),
        }
    }

    fn phase(&self) -> BudgetPhase {
        if self.exhausted {
            BudgetPhase::Exhausted
        } else if self.crossed.is_some() {
            BudgetPhase::Warning
        } else {
            BudgetPhase::Active
        }
    }

    /// When the budget runs out at the burn rate measured at `measured`, if within the
    /// period; in whole seconds.
    fn projected_exhaustion(&self, burn_rate: Option<(u64, Timestamp)>, window: &PeriodWindow) -> Option<String> {
        let (remaining, (rate, measured)) = (self.remaining?, burn_rate?);
        if rate == 0 || remaining == 0 {
            return None;
        }
        let seconds = i64::try_from(u128::from(remaining) * 3600 / u128::from(rate)).unwrap_or(i64::MAX);
        Timestamp::from_second(measured.as_second())
            .ok()?
            .checked_add(SignedDuration::from_secs(seconds))
            .ok()
            .filter(|t| window.end.as_ref().is_none_or(|end| *t < end.timestamp()))
            .map(|t| period::rfc3339(&t.to_zoned(window.start.time_zone().clone())))
    }

    /// ThresholdReached and Exhausted.
    fn conditions(&self) -> [Desired; 2] {
        let threshold = match self.crossed {
            Some(t) => Desired::new(
                "ThresholdReached",
                Status::True,
                "ThresholdReached",
                format!("{t}% of the budget is used"),
            ),
            None => Desired::new(
                "ThresholdReached",
                Status::False,
                "BelowThresholds",
                "no threshold is crossed",
            ),
        };
        let exhausted = if self.exhausted {
            Desired::new(
                "Exhausted",
                Status::True,
                "LimitReached",
                "the budget is used up for this period",
            )
        } else {
            Desired::new("Exhausted", Status::False, "WithinLimits", "the budget has room")
        };
        [threshold, exhausted]
    }
}

/// The UsageHealthy condition: whether every model in use has a price.
fn pricing_condition(budget: &ValidBudget, unpriced: &[String], models_capped: bool) -> Desired {
    if models_capped {
        Desired::new(
            "UsageHealthy",
            Status::False,
            "TooManyModels",
            format!(
                "the pods reported more than {} model names this period, or names longer than {} bytes: \
                 the tokens of those count as model {OTHER_MODELS:?}{}",
                ledger::MAX_MODELS - 1,
                ledger::MAX_MODEL_NAME_BYTES,
                if unpriced.is_empty() {
                    ""
                } else {
                    "; some models have no price, their cost is 0"
                },
            ),
        )
    } else if !budget.priced() {
        Desired::new(
            "UsageHealthy",
            Status::True,
            "Counting",
            "counting tokens; no pricing, so no cost",
        )
    } else if unpriced.is_empty() {
        Desired::new(
            "UsageHealthy",
            Status::True,
            "Counting",
            "every model in use has a price",
        )
    } else {
        const AFTER: &str = ": their tokens count, their cost is 0";
        const BEFORE: &str = "no price for ";
        let room = conditions::MAX_MESSAGE_BYTES - BEFORE.len() - AFTER.len();
        let models = conditions::bounded_list(unpriced, ", ", usize::MAX, room);
        Desired::new(
            "UsageHealthy",
            Status::False,
            "UnpricedModels",
            format!("{BEFORE}{models}{AFTER}"),
        )
    }
}

/// The usage fields of a budget's status and their conditions (ThresholdReached, Exhausted,
/// UsageHealthy), from its account.
pub fn usage_status(
    budget: &ValidBudget,
    account: &Account,
    window: &PeriodWindow,
) -> (TokenBudgetStatus, Vec<Desired>) {
    let ledger = &account.ledger;
    let burn_rate = account.burn_rate();
    let costs = costs(budget, ledger);
    let standing = Standing::new(budget, ledger.used_tokens(budget.token_types.as_deref()), costs.total);
    let workloads = ledger
        .workloads()
        .into_iter()
        .take(TOP_WORKLOADS)
        .map(|(kind, name, tokens)| WorkloadUsage {
            kind,
            name: name.to_string(),
            tokens: to_i64(tokens),
            cost: None,
        })
        .collect();
    let mut conditions = standing.conditions().to_vec();
    conditions.push(pricing_condition(budget, &costs.unpriced, ledger.models_capped()));
    let status = TokenBudgetStatus {
        phase: Some(standing.phase()),
        used: Some(UsedTokens {
            tokens: to_i64(standing.used),
            input: to_i64(ledger.tokens(TokenType::Input)),
            output: to_i64(ledger.tokens(TokenType::Output)),
            cost: budget.priced().then(|| pricing::format_money(costs.total)),
        }),
        remaining_tokens: standing.remaining.map(to_i64),
        percent_used: standing.percent.map(to_i64),
        period_start: Some(window.period_start()),
        resets_at: window.resets_at(),
        burn_rate: burn_rate.map(|(rate, _)| to_i64(rate)),
        projected_exhaustion: standing.projected_exhaustion(burn_rate, window),
        models: costs.models,
        workloads,
        accounting: Some(ledger.to_state()),
        ..Default::default()
    };
    (status, conditions)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A binding's ScrapeHealthy condition from what a cycle saw of it.
pub fn scrape_condition(report: &BindingReport) -> Desired {
    if report.problems.is_empty() {
        let mut message = format!("{} of {} pods scraped", report.scraped_pods, report.pods);
        if report.pending_pods > 0 {
            message.push_str(&format!(", {} Pending", report.pending_pods));
        }
        return Desired::new("ScrapeHealthy", Status::True, "Scraped", message);
    }
    let listed = conditions::bounded_list(&report.problems, "; ", LISTED_PROBLEMS, conditions::MAX_MESSAGE_BYTES);
    Desired::new("ScrapeHealthy", Status::False, "ScrapeFailed", listed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::TokenBudgetSpec, validate};

    const NOW: &str = "2026-11-30T12:00:00Z";

    fn budget(yaml: &str) -> ValidBudget {
        let spec: TokenBudgetSpec = serde_yaml::from_str(yaml).expect("fixture parses");
        validate::budget(&spec).expect("a valid fixture")
    }

    /// An account that has counted `(model, input, output)` this month.
    fn account(models: &[(&str, i64, i64)]) -> Account {
        let models: Vec<String> = models
            .iter()
            .map(|(m, i, o)| format!("{{model: {m}, input: {i}, output: {o}}}"))
            .collect();
        let state: AccountingState = serde_yaml::from_str(&format!(
            "{{periodStart: '2026-11-01T00:00:00Z', models: [{}]}}",
            models.join(", ")
        ))
        .expect("fixture parses");
        Account::open("uid", Some(&state))
    }

    fn window(budget: &ValidBudget) -> PeriodWindow {
        let now: Timestamp = NOW.parse().unwrap();
        period::current(budget.reset, &budget.time_zone, now, now)
    }

    fn condition<'a>(conditions: &'a [Desired], type_: &str) -> &'a Desired {
        conditions.iter().find(|c| c.type_ == type_).expect("the condition")
    }

    #[test]
    fn the_highest_threshold_crossed_is_a_warning_and_the_limit_exhausts() {
        let budget = budget("limits: {tokens: 1000}\nthresholds: [90, 50]");
        let (status, conditions) = usage_status(&budget, &account(&[("m", 600, 10)]), &window(&budget));
        assert_eq!(status.phase, Some(BudgetPhase::Warning));
        assert_eq!((status.percent_used, status.remaining_tokens), (Some(61), Some(390)));
        assert_eq!(
            condition(&conditions, "ThresholdReached").message,
            "50% of the budget is used"
        );
        assert_eq!(condition(&conditions, "Exhausted").status, Status::False);

        let (status, conditions) = usage_status(&budget, &account(&[("m", 990, 10)]), &window(&budget));
        assert_eq!(status.phase, Some(BudgetPhase::Exhausted));
        assert_eq!(status.remaining_tokens, Some(0));
        assert_eq!(
            condition(&conditions, "ThresholdReached").message,
            "90% of the budget is used"
        );
        assert_eq!(condition(&conditions, "Exhausted").reason, "LimitReached");
    }

    #[test]
    fn models_without_a_price_count_tokens_but_no_cost() {
        let budget = budget("limits: {cost: '10.00'}\npricing: [{model: 'gpt-*', input: '1.00', output: '2.00'}]");
        let account = account(&[("gpt-4o", 1_000_000, 500_000), ("llama", 7, 3)]);
        let (status, conditions) = usage_status(&budget, &account, &window(&budget));
        let used = status.used.expect("used");
        assert_eq!((used.tokens, used.cost.as_deref()), (1_500_010, Some("2.00")));
        assert_eq!(status.percent_used, Some(20));
        let models: Vec<_> = status
            .models
            .iter()
            .map(|m| (m.model.as_str(), m.cost.as_deref()))
            .collect();
        assert_eq!(models, [("gpt-4o", Some("2.00")), ("llama", None)]);
        let health = condition(&conditions, "UsageHealthy");
        assert_eq!((health.status, health.reason), (Status::False, "UnpricedModels"));
        assert_eq!(
            health.message,
            "no price for llama: their tokens count, their cost is 0"
        );
    }

    #[test]
    fn pending_pods_are_no_scrape_failure() {
        let mut report = BindingReport {
            pods: 3,
            scraped_pods: 2,
            pending_pods: 1,
            ..Default::default()
        };
        let healthy = scrape_condition(&report);
        assert_eq!(healthy.status, Status::True);
        assert_eq!(healthy.message, "2 of 3 pods scraped, 1 Pending");

        report.problems.push(PodProblem {
            pod: "a-1".into(),
            reason: "the pod has no IP".into(),
            new: true,
        });
        let failed = scrape_condition(&report);
        assert_eq!(failed.status, Status::False);
        assert_eq!(failed.message, "a-1: the pod has no IP");
    }

    #[test]
    fn the_scrape_failures_listed_fit_in_a_bounded_message() {
        let problem = |i: usize| PodProblem {
            pod: format!("fat-{i}"),
            reason: format!("unparsable metrics: line 3: {}", "x".repeat(MAX_REASON_BYTES)),
            new: true,
        };
        let report = BindingReport {
            pods: 80,
            problems: (0..80).map(problem).collect(),
            ..Default::default()
        };
        let failed = scrape_condition(&report);
        assert!(
            failed.message.len() <= conditions::MAX_MESSAGE_BYTES,
            "{} bytes",
            failed.message.len()
        );
        assert!(
            failed.message.starts_with("fat-0: unparsable metrics"),
            "{}",
            failed.message
        );
        assert!(failed.message.ends_with(" more"), "{}", failed.message);
    }

    #[test]
    fn models_counted_as_other_make_usage_unhealthy() {
        let budget = budget("limits: {tokens: 1000}");
        let (status, conditions) = usage_status(&budget, &account(&[("(other)", 5, 0), ("m", 1, 1)]), &window(&budget));
        assert_eq!(status.used.map(|u| u.tokens), Some(7));
        let health = condition(&conditions, "UsageHealthy");
        assert_eq!((health.status, health.reason), (Status::False, "TooManyModels"));
        assert!(health.message.contains("\"(other)\""), "{}", health.message);
    }

    #[test]
    fn many_unpriced_models_fit_in_a_bounded_message() {
        let budget = budget("limits: {cost: '10.00'}\npricing: [{model: 'gpt-*', input: '1.00', output: '2.00'}]");
        let models: Vec<(String, i64, i64)> = (0..500)
            .map(|i| (format!("model-{i:03}-{}", "m".repeat(40)), 1, 1))
            .collect();
        let models: Vec<(&str, i64, i64)> = models.iter().map(|(m, i, o)| (m.as_str(), *i, *o)).collect();
        let (_, conditions) = usage_status(&budget, &account(&models), &window(&budget));
        let health = condition(&conditions, "UsageHealthy");
        assert!(
            health.message.len() <= conditions::MAX_MESSAGE_BYTES,
            "{}",
            health.message.len()
        );
        assert!(
            health.message.starts_with("no price for model-000-"),
            "{}",
            health.message
        );
        assert!(
            health.message.ends_with(" more: their tokens count, their cost is 0"),
            "{}",
            health.message
        );
    }

    /// An account sampled once a second for `seconds`, with `used(second)` tokens.
    fn sampled(account: &mut Account, from: i64, seconds: i64, used: impl Fn(i64) -> u64) {
        let start: Timestamp = NOW.parse().unwrap();
        for second in from..from + seconds {
            account.sample(start + SignedDuration::from_secs(second), used(second));
        }
    }

    #[test]
    fn the_burn_rate_moves_with_usage_only() {
        let budget = budget("limits: {tokens: 10000}");
        let mut account = account(&[]);
        // Under 10 s of samples: no rate yet.
        sampled(&mut account, 0, 10, |_| 0);
        assert_eq!(account.burn_rate(), None);
        // 10 s: the first rate is shown, 0.
        sampled(&mut account, 10, 1, |_| 0);
        assert_eq!(account.burn_rate().map(|(r, _)| r), Some(0));

        // 10 tokens a second for a minute: 36,000 an hour, measured at the last change.
        sampled(&mut account, 11, 60, |s| (s as u64 - 10) * 10);
        let (rate, measured) = account.burn_rate().expect("a rate");
        assert_eq!(
            measured,
            NOW.parse::<Timestamp>().unwrap() + SignedDuration::from_secs(70)
        );
        assert_eq!(rate, 600 * 3600 / 70);
        let status = |account: &Account| usage_status(&budget, account, &window(&budget)).0;
        let shown = status(&account);
        assert!(shown.projected_exhaustion.is_some());

        // Idle for 59 minutes: the status does not move, however the window slides.
        sampled(&mut account, 71, 59 * 60, |_| 600);
        let idle = status(&account);
        assert_eq!(
            (&idle.burn_rate, &idle.projected_exhaustion),
            (&shown.burn_rate, &shown.projected_exhaustion)
        );
        // An hour without tokens: 0, and no projection.
        sampled(&mut account, 71 + 59 * 60, 60, |_| 600);
        let over = status(&account);
        assert_eq!((over.burn_rate, over.projected_exhaustion), (Some(0), None));
        let at = account.burn_rate().expect("a rate").1;
        // ... and it stays so.
        sampled(&mut account, 71 + 60 * 60, 600, |_| 600);
        assert_eq!(account.burn_rate(), Some((0, at)));
    }

    #[test]
    fn the_time_the_budget_became_exhausted_is_remembered_until_it_has_room() {
        let at = |minutes: i64| NOW.parse::<Timestamp>().unwrap() + SignedDuration::from_mins(minutes);
        let mut account = account(&[]);
        assert_eq!(account.exhausted_since(Some(at(0))), Some(at(0)));
        // The status could not say so: each reconcile finds "now" there. The account keeps
        // the first time.
        assert_eq!(account.exhausted_since(Some(at(5))), Some(at(0)));
        assert_eq!(account.exhausted_since(Some(at(10))), Some(at(0)));
        // A status written earlier says earlier (an operator restarted meanwhile, say).
        assert_eq!(account.exhausted_since(Some(at(-30))), Some(at(-30)));
        // Room again: forgotten; exhausted again later: from then.
        assert_eq!(account.exhausted_since(None), None);
        assert_eq!(account.exhausted_since(Some(at(20))), Some(at(20)));
        // A new period forgets it too.
        assert!(account.begin_period("2026-12-01T00:00:00Z".parse().unwrap()));
        assert_eq!(account.exhausted_since(Some(at(40))), Some(at(40)));
    }

    #[test]
    fn a_new_period_measures_the_burn_rate_afresh() {
        let mut account = account(&[]);
        sampled(&mut account, 0, 20, |s| s as u64);
        assert!(account.burn_rate().is_some());
        assert!(account.begin_period("2026-12-01T00:00:00Z".parse().unwrap()));
        assert_eq!(account.burn_rate(), None);
    }
}
