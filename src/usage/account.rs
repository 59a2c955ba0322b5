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
    history,
    ledger::{self, Ledger, OTHER_MODELS},
    pacing::Pacer,
    period::{self, PeriodWindow},
    pool::{self, ModelTotals, Share},
    pricing, subjects,
};
use crate::{
    api::{
        AccountingState, BudgetPhase, ModelUsage, PeriodSummary, SubjectsUsage, TokenBudgetStatus, TokenType,
        UsedTokens, WorkloadKind, WorkloadUsage,
    },
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

/// One budget's account: its ledger, the periods it has ended, the samples of its burn rate,
/// the pods whose scrape failed in the last cycle, and since when the budget is exhausted.
pub struct Account {
    /// The budget's uid: a budget deleted and created again starts afresh.
    uid: String,
    ledger: Ledger,
    /// `status.history`: kept with the ledger, so that the entry of a period that ended is
    /// written with the ledger of the next (see [`history`]), and a status write that fails
    /// loses neither.
    history: Vec<PeriodSummary>,
    /// (time, tokens used in the period) after each cycle, for the burn rate.
    samples: VecDeque<(Timestamp, u64)>,
    /// The burn rate the status shows, and when it was measured (see [`Account::sample`]).
    published: Option<(u64, Timestamp)>,
    /// The last scrape error per pod uid, so an Event is sent once per failure, not per cycle.
    failing: HashMap<String, String>,
    /// Since when the budget is exhausted, as this operator saw it: the `Exhausted`
    /// condition's `lastTransitionTime` says so too, but only once a status write succeeds.
    exhausted_since: Option<Timestamp>,
    /// The budget's share of its pool (`status.parent`), kept with the ledger: both are
    /// persisted in one status write (see [`pool`]).
    share: Option<Share>,
    /// The ledger's totals per model that [`Account::new_tokens`] has handed out, in the
    /// ledger's period.
    handed: ModelTotals,
    /// The forecast of `spec.pacing`: its samples and what it published.
    pacer: Pacer,
}

impl Account {
    /// The account of the budget with `uid`, resumed from what its status persisted.
    pub fn open(uid: &str, persisted: Option<&AccountingState>) -> Self {
        let mut account = Self {
            uid: uid.to_string(),
            ledger: Ledger::from_state(persisted),
            history: Vec::new(),
            samples: VecDeque::new(),
            published: None,
            failing: HashMap::new(),
            exhausted_since: None,
            share: None,
            handed: ModelTotals::new(),
            pacer: Pacer::default(),
        };
        // What was persisted was handed out before it was written.
        account.handed = account.ledger_totals();
        account
    }

    /// The account of the budget with `uid`, resumed from its status: the ledger
    /// (`accounting`) and the periods ended (`history`), both of the same status write.
    pub fn resume(uid: &str, status: Option<&TokenBudgetStatus>) -> Self {
        let mut account = Self::open(uid, status.and_then(|s| s.accounting.as_ref()));
        account.history = status.map(|s| history::normalized(&s.history)).unwrap_or_default();
        // The share persisted holds every token of the ledger persisted with it.
        account.share = status.and_then(|s| s.parent.as_ref()).and_then(Share::from_status);
        // An engaged pace stays engaged across a restart until a forecast says otherwise.
        account.pacer = Pacer::resume(status.and_then(|s| s.pacing.as_ref()));
        account
    }

    /// The budget's pacing forecast.
    pub fn pacer_mut(&mut self) -> &mut Pacer {
        &mut self.pacer
    }

    /// The budget's share of its pool.
    pub fn share(&self) -> Option<&Share> {
        self.share.as_ref()
    }

    /// Replaces the budget's share of its pool.
    pub fn set_share(&mut self, share: Option<Share>) {
        self.share = share;
    }

    /// The tokens the ledger counted since the last call (or since the account was resumed:
    /// those of the status it resumed from were handed out before it was written), per model.
    /// Called once per cycle, whether or not a pool takes them.
    pub fn new_tokens(&mut self) -> ModelTotals {
        let totals = self.ledger_totals();
        let new = pool::difference(&totals, &self.handed);
        self.handed = totals;
        new
    }

    fn ledger_totals(&self) -> ModelTotals {
        self.ledger
            .models()
            .map(|(model, input, output)| (model.to_string(), (input, output)))
            .collect()
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

    /// The periods ended, newest first: `status.history`.
    pub fn history(&self) -> &[PeriodSummary] {
        &self.history
    }

    /// The budget's period at `now` (`origin`: when the budget was created). A clock behind
    /// the ledger's does not move it back: when the ledger's period starts after `now` and is
    /// a period of `budget`'s reset and time zone (a replica whose clock lags took over just
    /// after a boundary, say), that is the period, not the one before. A ledger period that is
    /// no period of the spec (`spec.period` changed) gives way to the spec's.
    pub fn window(&self, budget: &ValidBudget, now: Timestamp, origin: Timestamp) -> PeriodWindow {
        let at = self
            .ledger
            .period_start()
            .filter(|start| *start > now)
            .filter(|start| {
                period::current(budget.reset, &budget.time_zone, *start, origin)
                    .start
                    .timestamp()
                    == *start
            })
            .unwrap_or(now);
        period::current(budget.reset, &budget.time_zone, at, origin)
    }

    /// Moves the account into the period of `window`, as [`Account::begin_period`] does,
    /// and records the period that ended in the history: from the ledger's totals of that
    /// period, priced by `budget`, ended at the new period's start (or `now`, when the new
    /// period starts before the old one: `spec.period` changed). True when a period ended.
    pub fn roll_over(&mut self, budget: &ValidBudget, window: &PeriodWindow, now: Timestamp) -> bool {
        let start = window.start.timestamp();
        if let Some(ended) = self.ledger.period_start().filter(|ended| *ended != start) {
            let end = if start > ended { start } else { now };
            let summary = period_summary(budget, &self.ledger, ended, end, window.start.time_zone());
            history::record(&mut self.history, summary);
        }
        self.begin_period(start)
    }

    /// Moves the account into the period starting at `start`, without a history entry for
    /// the one it leaves (see [`Account::roll_over`]). True when a period ended:
    /// the ledger had one before and this is a new one (its burn-rate samples start again).
    pub fn begin_period(&mut self, start: Timestamp) -> bool {
        let had_period = self.ledger.period_start().is_some();
        let moved = self.ledger.ensure_period(start);
        if moved {
            // The ledger starts from zero: so does what was handed out of it.
            self.handed.clear();
        }
        let reset = moved && had_period;
        if reset {
            // A new period has the whole budget again: pacing starts afresh (and releases).
            self.pacer = Pacer::default();
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

    /// What the ledger counted since the last take, per workload and model, priced at
    /// `budget`'s prices now: what the operator's monotonic counters add. Take it once the
    /// status that holds it has been accepted (or was already stored), so that a replica
    /// whose write never landed has not counted what the next one counts again.
    pub fn take_charges(&mut self, budget: &ValidBudget) -> Vec<Charge> {
        self.ledger
            .take_counted()
            .into_iter()
            .map(|((kind, workload, model), [input, output])| {
                let cost = budget.prices.cost(&model, input, output);
                Charge {
                    workload: (kind, workload),
                    model,
                    input,
                    output,
                    cost,
                }
            })
            .collect()
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

/// Tokens that cycles counted for one workload and model since the last
/// [`Account::take_charges`], and their cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    pub workload: (WorkloadKind, String),
    pub model: String,
    pub input: u64,
    pub output: u64,
    /// At the price in force when taken, exact; `None` for a model without a price.
    pub cost: Option<Decimal>,
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

/// Cost per model and per workload, and the models without a price.
struct Costs {
    /// Most tokens first, with their exact cost (0 unpriced).
    models: Vec<(ModelUsage, Decimal)>,
    /// Most tokens first, with their exact cost (0 when not known).
    workloads: Vec<(WorkloadUsage, Decimal)>,
    total: Decimal,
    unpriced: Vec<String>,
}

/// The usage per model and per workload, most tokens first, priced by `budget`'s price
/// table. A workload's cost is the sum of its tokens of each model and type at that model's
/// prices, as the total is: the workloads' costs add up to it exactly. It is unknown (`None`)
/// for a workload whose tokens are not all known by model (a period resumed from a status
/// written before they were kept).
fn costs(budget: &ValidBudget, ledger: &Ledger) -> Costs {
    let mut total = Decimal::ZERO;
    let mut unpriced = Vec::new();
    let mut models: Vec<(ModelUsage, Decimal)> = ledger
        .models()
        .map(|(model, input, output)| {
            let cost = budget.prices.cost(model, input, output);
            match cost {
                Some(c) => total += c,
                None => unpriced.push(model.to_string()),
            }
            let usage = ModelUsage {
                model: model.to_string(),
                input: to_i64(input),
                output: to_i64(output),
                cost: cost.map(pricing::format_money),
            };
            (usage, cost.unwrap_or_default())
        })
        .collect();
    models.sort_by(|(a, _), (b, _)| {
        (b.input + b.output)
            .cmp(&(a.input + a.output))
            .then_with(|| a.model.cmp(&b.model))
    });
    let workloads = ledger
        .workloads()
        .into_iter()
        .map(|(kind, name, tokens)| {
            let cost = budget
                .priced()
                .then(|| ledger.workload_models(kind, name))
                .flatten()
                .map(|models| {
                    models
                        .into_iter()
                        .filter_map(|(model, input, output)| budget.prices.cost(model, input, output))
                        .fold(Decimal::ZERO, Decimal::saturating_add)
                });
            let usage = WorkloadUsage {
                kind,
                name: name.to_string(),
                tokens: to_i64(tokens),
                cost: cost.map(pricing::format_money),
            };
            (usage, cost.unwrap_or_default())
        })
        .collect();
    Costs {
        models,
        workloads,
        total,
        unpriced,
    }
}

/// `used`: the tokens of the period (those of `tokenTypes`, and each type), and their cost
/// with pricing.
fn used(budget: &ValidBudget, ledger: &Ledger, total: Decimal) -> UsedTokens {
    UsedTokens {
        tokens: to_i64(ledger.used_tokens(budget.token_types.as_deref())),
        input: to_i64(ledger.tokens(TokenType::Input)),
        output: to_i64(ledger.tokens(TokenType::Output)),
        cost: budget.priced().then(|| pricing::format_money(total)),
    }
}

/// The history entry of the ledger's period, which started at `start` and ended at `end`:
/// its totals, and its largest models and workloads, priced by `budget`; times in `tz`.
fn period_summary(
    budget: &ValidBudget,
    ledger: &Ledger,
    start: Timestamp,
    end: Timestamp,
    tz: &jiff::tz::TimeZone,
) -> PeriodSummary {
    let costs = costs(budget, ledger);
    PeriodSummary {
        period_start: period::rfc3339(&start.to_zoned(tz.clone())),
        period_end: period::rfc3339(&end.to_zoned(tz.clone())),
        used: used(budget, ledger, costs.total),
        currency: budget.currency.clone(),
        models: history::top_models(costs.models),
        workloads: history::top_workloads(costs.workloads),
    }
}

/// Where usage stands against the limits.
struct Standing {
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

/// Where `used` tokens and `cost` stand against `budget`'s limits and thresholds: the phase,
/// the tokens left, the percentage used, and the ThresholdReached and Exhausted conditions.
/// What a pool's status says, as a budget's does.
pub fn standing(
    budget: &ValidBudget,
    used: u64,
    cost: Decimal,
) -> (BudgetPhase, Option<u64>, Option<u64>, [Desired; 2]) {
    let standing = Standing::new(budget, used, cost);
    (
        standing.phase(),
        standing.remaining,
        standing.percent,
        standing.conditions(),
    )
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
    let workloads = costs
        .workloads
        .into_iter()
        .take(TOP_WORKLOADS)
        .map(|(workload, _)| workload)
        .collect();
    let mut conditions = standing.conditions().to_vec();
    conditions.push(pricing_condition(budget, &costs.unpriced, ledger.models_capped()));
    let subjects = subjects_status(budget, ledger);
    if !budget.subjects.is_empty() {
        conditions.push(subjects_condition(&subjects));
    }
    let status = TokenBudgetStatus {
        phase: Some(standing.phase()),
        used: Some(used(budget, ledger, costs.total)),
        remaining_tokens: standing.remaining.map(to_i64),
        percent_used: standing.percent.map(to_i64),
        period_start: Some(window.period_start()),
        resets_at: window.resets_at(),
        burn_rate: burn_rate.map(|(rate, _)| to_i64(rate)),
        projected_exhaustion: standing.projected_exhaustion(burn_rate, window),
        models: costs.models.into_iter().map(|(model, _)| model).collect(),
        workloads,
        history: account.history.clone(),
        accounting: Some(ledger.to_state()),
        subjects,
        ..Default::default()
    };
    (status, conditions)
}

/// `status.subjects`: one entry per subject label of the budget.
fn subjects_status(budget: &ValidBudget, ledger: &Ledger) -> Vec<SubjectsUsage> {
    budget
        .subjects
        .iter()
        .map(|limit| match ledger.subjects(&limit.label) {
            Some(subjects) => subjects::usage(
                subjects,
                limit,
                &budget.prices,
                budget.priced(),
                budget.token_types.as_deref(),
            ),
            None => SubjectsUsage {
                label: limit.label.clone(),
                ..Default::default()
            },
        })
        .collect()
}

/// The SubjectsExhausted condition: how many subjects reached their limit, and whether some
/// spend beyond the most that are counted one by one.
fn subjects_condition(subjects: &[SubjectsUsage]) -> Desired {
    let exhausted: i64 = subjects.iter().map(|s| s.exhausted_count).sum();
    let untracked: Vec<String> = subjects
        .iter()
        .filter(|s| s.untracked_tokens > 0)
        .map(|s| {
            format!(
                "{} tokens of {} values beyond the {} counted one by one are not limited one by one",
                s.untracked_tokens,
                s.label,
                subjects::MAX_SUBJECTS
            )
        })
        .collect();
    let untracked = match untracked.is_empty() {
        true => String::new(),
        false => format!("; {}", untracked.join("; ")),
    };
    if exhausted == 0 {
        return Desired::new(
            "SubjectsExhausted",
            Status::False,
            "WithinLimits",
            conditions::cut(
                &format!("every subject has room{untracked}"),
                conditions::MAX_MESSAGE_BYTES,
            ),
        );
    }
    let listed: Vec<String> = subjects
        .iter()
        .flat_map(|s| s.exhausted.iter().map(move |v| format!("{}={v:?}", s.label)))
        .collect();
    let room = conditions::MAX_MESSAGE_BYTES
        .saturating_sub(80 + untracked.len())
        .max(100);
    let message = format!(
        "{exhausted} subject{} reached {} limit: {}{untracked}",
        if exhausted == 1 { "" } else { "s" },
        if exhausted == 1 { "its" } else { "their" },
        conditions::bounded_list(&listed, ", ", usize::MAX, room),
    );
    Desired::new(
        "SubjectsExhausted",
        Status::True,
        "SubjectLimitReached",
        conditions::cut(&message, conditions::MAX_MESSAGE_BYTES),
    )
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
    use crate::{
        api::{ResetPeriod, TokenBudgetSpec},
        validate,
    };

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
    fn new_tokens_are_handed_out_once_across_resumes_and_period_resets() {
        // Resumed: what the status holds was handed out before it was written.
        let mut account = account(&[("m", 600, 10)]);
        assert!(account.new_tokens().is_empty());
        let observation = |uid: &'static str| crate::usage::ledger::PodObservation {
            uid,
            name: "p",
            binding: "b",
            workload: (crate::api::WorkloadKind::Deployment, "d"),
            restarts: 0,
            started_at: None,
            bound_since: NOW.parse().unwrap(),
            container_started: None,
            scraped_at: NOW.parse().unwrap(),
        };
        let usage = |input: u64| {
            let body = format!("vllm:prompt_tokens_total{{model_name=\"m\"}} {input}\n");
            crate::usage::Extractor::new(crate::api::MetricsFormat::Vllm, &[])
                .extract(body.as_bytes())
                .unwrap()
        };
        // A pod's first scrape is its baseline (it started before the period), then 40 more.
        account.ledger_mut().observe(&observation("p"), &usage(100));
        account.ledger_mut().observe(&observation("p"), &usage(140));
        assert_eq!(account.new_tokens(), pool::ModelTotals::from([("m".into(), (40, 0))]));
        assert!(account.new_tokens().is_empty(), "once");
        // A new period: the ledger starts from zero, and so does what was handed out.
        assert!(account.begin_period("2026-12-01T00:00:00Z".parse().unwrap()));
        account.ledger_mut().observe(&observation("p"), &usage(145));
        assert_eq!(account.new_tokens(), pool::ModelTotals::from([("m".into(), (5, 0))]));
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

    // ---- The history of ended periods, and the workloads' costs --------------------------

    use crate::api::{HISTORY_LIMIT, HISTORY_TOP};
    use crate::usage::{Extractor, ledger::PodObservation};
    use proptest::prelude::*;

    fn at(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    /// An hourly budget in UTC with prices for `a` (1.00 / 2.00) and `b` (0.15 / 0.60); `c`
    /// has none.
    fn hourly() -> ValidBudget {
        budget(
            "limits: {tokens: 100000000}\nperiod: {reset: Hourly}\ncurrency: EUR\npricing: \
             [{model: a, input: '1.00', output: '2.00'}, {model: b, input: '0.15', output: '0.60'}]",
        )
    }

    /// One successful scrape of pod `uid` of workload `(kind, name)`, started inside any
    /// period of these tests, with these counters.
    fn scrape(account: &mut Account, uid: &str, workload: (WorkloadKind, &str), series: &[(&str, TokenType, u64)]) {
        let body: String = series
            .iter()
            .map(|(model, t, v)| {
                let metric = match t {
                    TokenType::Input => "vllm:prompt_tokens_total",
                    TokenType::Output => "vllm:generation_tokens_total",
                };
                format!("{metric}{{model_name=\"{model}\"}} {v}\n")
            })
            .collect();
        let usage = Extractor::new(crate::api::MetricsFormat::Vllm, &[])
            .extract(body.as_bytes())
            .unwrap();
        let observation = PodObservation {
            uid,
            name: uid,
            binding: "bb",
            workload,
            restarts: 0,
            started_at: Some(at("2026-01-01T00:00:00Z")),
            bound_since: at("2026-01-01T00:00:00Z"),
            container_started: None,
            scraped_at: at("2026-11-30T10:30:00Z"),
        };
        account.ledger_mut().observe(&observation, &usage);
    }

    #[test]
    fn charges_are_what_was_counted_since_the_last_take_priced_exactly() {
        let budget = hourly();
        let mut account = spent_in_the_ten_oclock_hour(&budget);
        let mut charges = account.take_charges(&budget);
        charges.sort_by(|a, b| (&a.workload, &a.model).cmp(&(&b.workload, &b.model)));
        let charge = |w: (WorkloadKind, &str), model: &str, input, output, cost: Option<&str>| Charge {
            workload: (w.0, w.1.to_string()),
            model: model.into(),
            input,
            output,
            cost: cost.map(|c| c.parse().unwrap()),
        };
        assert_eq!(
            charges,
            [
                // 1,000 * 1.00 / 10^6 + 200 * 2.00 / 10^6; `c` has no price.
                charge(DEPLOYMENT, "a", 1000, 200, Some("0.0014")),
                charge(DEPLOYMENT, "c", 3000, 0, None),
                charge(JOB, "b", 2_000_000, 0, Some("0.30")),
            ]
        );
        assert_eq!(account.take_charges(&budget), [], "taken once");
        // Over the boundary: the next period's first tokens, not its totals from zero.
        let (ended, _) = cycle(&mut account, &budget, "2026-11-30T11:00:01Z");
        assert!(ended);
        scrape(&mut account, "w", DEPLOYMENT, &[("a", TokenType::Input, 1010)]);
        assert_eq!(
            account.take_charges(&budget),
            [charge(DEPLOYMENT, "a", 10, 0, Some("0.00001"))]
        );
    }

    fn window_at(account: &Account, budget: &ValidBudget, now: &str) -> PeriodWindow {
        account.window(budget, at(now), at("2026-01-01T00:00:00Z"))
    }

    /// The status a cycle at `now` writes: rolled over into `now`'s period first.
    fn cycle(account: &mut Account, budget: &ValidBudget, now: &str) -> (bool, TokenBudgetStatus) {
        let window = window_at(account, budget, now);
        let ended = account.roll_over(budget, &window, at(now));
        (ended, usage_status(budget, account, &window).0)
    }

    /// The account a restarted operator resumes from `status`, after a round trip through
    /// JSON as through the API server.
    fn restarted(status: &TokenBudgetStatus) -> Account {
        let json = serde_json::to_string(status).unwrap();
        Account::resume("uid", Some(&serde_json::from_str(&json).unwrap()))
    }

    const DEPLOYMENT: (WorkloadKind, &str) = (WorkloadKind::Deployment, "writer");
    const JOB: (WorkloadKind, &str) = (WorkloadKind::Job, "reader");

    /// Two workloads over three models in the hour from 10:00: the writer 1,000 input and
    /// 200 output tokens of `a` and 3,000 input of `c` (no price); the reader 2,000,000 input
    /// of `b`.
    fn spent_in_the_ten_oclock_hour(budget: &ValidBudget) -> Account {
        let mut account = Account::resume("uid", None);
        let (ended, _) = cycle(&mut account, budget, "2026-11-30T10:00:05Z");
        assert!(!ended, "a new budget ends no period");
        scrape(&mut account, "w", DEPLOYMENT, &[]);
        scrape(&mut account, "r", JOB, &[]);
        use TokenType::{Input, Output};
        scrape(
            &mut account,
            "w",
            DEPLOYMENT,
            &[("a", Input, 1000), ("a", Output, 200), ("c", Input, 3000)],
        );
        scrape(&mut account, "r", JOB, &[("b", Input, 2_000_000)]);
        account
    }

    #[test]
    fn a_period_that_ends_is_recorded_once_with_its_exact_totals() {
        let budget = hourly();
        let mut account = spent_in_the_ten_oclock_hour(&budget);
        let (ended, before) = cycle(&mut account, &budget, "2026-11-30T10:59:59Z");
        assert!(!ended);
        assert!(before.history.is_empty());
        // The current period's workloads carry their cost: 0.001 + 0.0004 (the tokens of `c`
        // cost nothing), and 0.30.
        let workloads: Vec<_> = before
            .workloads
            .iter()
            .map(|w| (w.name.as_str(), w.tokens, w.cost.as_deref()))
            .collect();
        assert_eq!(
            workloads,
            [("reader", 2_000_000, Some("0.30")), ("writer", 4200, Some("0.0014"))]
        );

        let (ended, after) = cycle(&mut account, &budget, "2026-11-30T11:00:00.05Z");
        assert!(ended);
        assert_eq!(after.history.len(), 1);
        let entry = &after.history[0];
        assert_eq!(
            (entry.period_start.as_str(), entry.period_end.as_str()),
            ("2026-11-30T10:00:00+00:00", "2026-11-30T11:00:00+00:00")
        );
        assert_eq!(entry.currency, "EUR");
        assert_eq!(
            entry.used,
            UsedTokens {
                tokens: 2_004_200,
                input: 2_004_000,
                output: 200,
                cost: Some("0.3014".into())
            }
        );
        // By cost, then tokens: `c`, unpriced, last.
        let models: Vec<_> = entry
            .models
            .iter()
            .map(|m| (m.model.as_str(), m.input, m.output, m.cost.as_deref()))
            .collect();
        assert_eq!(
            models,
            [
                ("b", 2_000_000, 0, Some("0.30")),
                ("a", 1000, 200, Some("0.0014")),
                ("c", 3000, 0, None)
            ]
        );
        assert_eq!(entry.workloads, before.workloads);
        // The new period starts from zero.
        assert_eq!(after.used.as_ref().map(|u| u.tokens), Some(0));
        assert!(after.workloads.is_empty());

        // Later cycles of the new period, and a restarted operator, add nothing.
        let (ended, later) = cycle(&mut account, &budget, "2026-11-30T11:30:00Z");
        assert!(!ended);
        assert_eq!(later.history, after.history);
        let mut resumed = restarted(&after);
        let (ended, resumed_status) = cycle(&mut resumed, &budget, "2026-11-30T11:00:01Z");
        assert!(!ended);
        assert_eq!(resumed_status.history, after.history);
    }

    #[test]
    fn a_restored_ledger_of_an_ended_period_gives_its_entry_once() {
        let budget = hourly();
        let mut account = spent_in_the_ten_oclock_hour(&budget);
        // The last status written before the boundary; the operator stops.
        let (_, persisted) = cycle(&mut account, &budget, "2026-11-30T10:59:58Z");
        // A new operator starts after the boundary: its first cycle ends the restored period.
        let mut resumed = restarted(&persisted);
        let (ended, written) = cycle(&mut resumed, &budget, "2026-11-30T11:00:03Z");
        assert!(ended);
        assert_eq!(written.history.len(), 1);
        assert_eq!(written.history[0].used.cost.as_deref(), Some("0.3014"));
        // Its status written, it stops, and the next one starts: no second entry.
        let mut again = restarted(&written);
        let (ended, rewritten) = cycle(&mut again, &budget, "2026-11-30T11:00:09Z");
        assert!(!ended);
        assert_eq!(rewritten.history, written.history);
        // The same status written by the operator that never stopped.
        let (_, continuous) = cycle(&mut account, &budget, "2026-11-30T11:00:03Z");
        assert_eq!(continuous.history, written.history);
    }

    #[test]
    fn a_clock_behind_the_ledgers_period_does_not_move_it_back() {
        let budget = hourly();
        let mut account = spent_in_the_ten_oclock_hour(&budget);
        let (_, written) = cycle(&mut account, &budget, "2026-11-30T11:00:00.05Z");
        // A replica whose clock is a second behind takes over.
        let mut lagging = restarted(&written);
        let window = window_at(&lagging, &budget, "2026-11-30T10:59:59Z");
        assert_eq!(window.period_start(), "2026-11-30T11:00:00+00:00");
        let (ended, status) = cycle(&mut lagging, &budget, "2026-11-30T10:59:59Z");
        assert!(!ended);
        assert_eq!(status.history, written.history);
        assert_eq!(status.period_start, written.period_start);
        // A period of another spec does give way: Hourly became Daily, whose period started
        // at midnight, before the ledger's. The hour ends now.
        let daily = budget_with_period(&budget, ResetPeriod::Daily);
        let (ended, daily_status) = cycle(&mut lagging, &daily, "2026-11-30T11:20:00Z");
        assert!(ended);
        assert_eq!(daily_status.period_start.as_deref(), Some("2026-11-30T00:00:00+00:00"));
        let entry = &daily_status.history[0];
        assert_eq!(
            (entry.period_start.as_str(), entry.period_end.as_str()),
            ("2026-11-30T11:00:00+00:00", "2026-11-30T11:20:00+00:00")
        );
        assert_eq!(daily_status.history.len(), 2);
    }

    fn budget_with_period(budget: &ValidBudget, reset: ResetPeriod) -> ValidBudget {
        ValidBudget {
            reset,
            ..budget.clone()
        }
    }

    #[test]
    fn a_period_without_usage_is_recorded_with_zeros_and_never_ends_for_never() {
        let budget = hourly();
        let mut account = Account::resume("uid", None);
        cycle(&mut account, &budget, "2026-11-30T10:00:05Z");
        let (ended, status) = cycle(&mut account, &budget, "2026-11-30T11:00:00Z");
        assert!(ended);
        let entry = &status.history[0];
        assert_eq!(
            entry.used,
            UsedTokens {
                tokens: 0,
                input: 0,
                output: 0,
                cost: Some("0.00".into())
            }
        );
        assert!(entry.models.is_empty() && entry.workloads.is_empty());

        let never = budget_with_period(&budget, ResetPeriod::Never);
        let mut account = Account::resume("uid", None);
        cycle(&mut account, &never, "2026-11-30T10:00:05Z");
        for now in ["2026-12-31T23:59:59Z", "2027-06-01T00:00:00Z", "2036-01-01T00:00:00Z"] {
            let (ended, status) = cycle(&mut account, &never, now);
            assert!(!ended, "{now}");
            assert!(status.history.is_empty());
        }
    }

    #[test]
    fn an_hourly_budget_keeps_its_last_twelve_hours_newest_first() {
        let budget = hourly();
        let mut account = Account::resume("uid", None);
        let start = at("2026-11-30T00:00:01Z");
        let mut status = TokenBudgetStatus::default();
        for hour in 0..30 {
            let now = (start + SignedDuration::from_hours(hour)).to_string();
            scrape(
                &mut account,
                "p",
                DEPLOYMENT,
                &[("a", TokenType::Input, 1000 * (hour as u64 + 1))],
            );
            let (_, written) = cycle(&mut account, &budget, &now);
            // Every other hour the operator restarts from what it wrote.
            account = if hour % 2 == 0 { restarted(&written) } else { account };
            status = written;
        }
        assert_eq!(status.history.len(), HISTORY_LIMIT);
        let starts: Vec<&str> = status.history.iter().map(|e| &e.period_start[11..13]).collect();
        assert_eq!(
            starts,
            ["04", "03", "02", "01", "00", "23", "22", "21", "20", "19", "18", "17"]
        );
        // Each hour counted what was spent in it: 1,000 tokens (the first scrape of an hour
        // is counted in the hour before: it comes before that hour's cycle).
        for entry in &status.history {
            assert_eq!(entry.used.tokens, 1000, "{}", entry.period_start);
            assert_eq!(entry.used.cost.as_deref(), Some("0.001"));
        }
    }

    /// A pod of the proptest: workload, model, input, output.
    fn spend() -> impl Strategy<Value = (usize, usize, u64, u64)> {
        (0..25usize, 0..13usize, 0..5_000_000u64, 0..1_000_000u64)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the workloads spend on whichever models, and wherever the operator
        /// restarts: the workloads' costs are exact and add up to the total; the current
        /// status lists the 20 largest workloads with their cost; the period's history entry
        /// is made once, lists the 10 largest models and workloads by cost then tokens, and
        /// what it lists never exceeds the totals (all of them when there are 10 or fewer).
        #[test]
        fn workload_costs_are_exact_and_the_entry_adds_up(
            spends in prop::collection::vec(spend(), 1..80),
            restart_at in 0..80usize,
        ) {
            let models: Vec<String> = (0..12)
                .map(|m| format!("m{m}"))
                .chain(["unpriced".to_string()])
                .collect();
            let pricing: Vec<String> = (0..12)
                .map(|m| format!("{{model: m{m}, input: '0.{m}7', output: '{m}.015'}}"))
                .collect();
            let budget = budget(&format!(
                "limits: {{cost: '1000000'}}\nperiod: {{reset: Hourly}}\npricing: [{}]",
                pricing.join(", ")
            ));
            let names: Vec<String> = (0..25).map(|w| format!("w{w:02}")).collect();
            let kinds = [WorkloadKind::Deployment, WorkloadKind::Job];
            let workload = |w: usize| (kinds[w % 2], names[w].as_str());
            let mut account = Account::resume("uid", None);
            cycle(&mut account, &budget, "2026-11-30T10:00:05Z");
            // One pod per (workload, model), its counters only growing.
            let mut counters: std::collections::BTreeMap<(usize, usize), (u64, u64)> = Default::default();
            let mut truth: std::collections::BTreeMap<usize, Decimal> = Default::default();
            for (i, (w, m, input, output)) in spends.iter().enumerate() {
                let uid = format!("pod-{w}-{m}");
                let c = counters.entry((*w, *m)).or_default();
                if c.0 == 0 && c.1 == 0 {
                    scrape(&mut account, &uid, workload(*w), &[]);
                }
                c.0 += input;
                c.1 += output;
                let model = models[*m].as_str();
                let series = [(model, TokenType::Input, c.0), (model, TokenType::Output, c.1)];
                scrape(&mut account, &uid, workload(*w), &series);
                let cost = budget.prices.cost(&models[*m], *input, *output).unwrap_or_default();
                *truth.entry(*w).or_default() += cost;
                if i == restart_at {
                    let (_, written) = cycle(&mut account, &budget, "2026-11-30T10:30:00Z");
                    account = restarted(&written);
                }
            }
            let costs = costs(&budget, account.ledger());
            let total: Decimal = truth.values().copied().sum();
            prop_assert_eq!(costs.total, total);
            for (usage, cost) in &costs.workloads {
                let w = names.iter().position(|n| *n == usage.name).unwrap();
                prop_assert_eq!(*cost, truth[&w]);
                prop_assert_eq!(usage.cost.clone(), Some(pricing::format_money(truth[&w])));
            }
            let (_, current) = cycle(&mut account, &budget, "2026-11-30T10:59:00Z");
            prop_assert_eq!(current.workloads.len(), truth.len().min(TOP_WORKLOADS));
            prop_assert!(current.workloads.windows(2).all(|w| w[0].tokens >= w[1].tokens));

            let (ended, status) = cycle(&mut account, &budget, "2026-11-30T11:00:00Z");
            prop_assert!(ended);
            prop_assert_eq!(status.history.len(), 1);
            let entry = &status.history[0];
            let used = entry.used.clone();
            prop_assert_eq!(used.cost.clone(), Some(pricing::format_money(total)));
            prop_assert!(entry.models.len() <= HISTORY_TOP && entry.workloads.len() <= HISTORY_TOP);
            let cost_of =
                |c: &Option<String>| c.as_deref().map_or(Decimal::ZERO, |c| pricing::parse_money(c).unwrap());
            let listed_tokens: i64 = entry.workloads.iter().map(|w| w.tokens).sum();
            let listed_exact: Decimal = entry
                .workloads
                .iter()
                .map(|w| truth[&names.iter().position(|n| *n == w.name).unwrap()])
                .sum();
            prop_assert!(listed_tokens <= used.input + used.output);
            prop_assert!(listed_exact <= total);
            if truth.len() <= HISTORY_TOP {
                prop_assert_eq!(listed_tokens, used.input + used.output);
                prop_assert_eq!(listed_exact, total);
            }
            // By cost, then tokens: each listed one at least as large as any left out.
            let by = |w: &WorkloadUsage| (cost_of(&w.cost), w.tokens);
            prop_assert!(entry.workloads.windows(2).all(|p| by(&p[0]) >= by(&p[1])));
            let least = entry.workloads.last().map(by);
            for (usage, _) in &costs.workloads {
                if !entry.workloads.iter().any(|w| w.name == usage.name) {
                    prop_assert!(Some(by(usage)) <= least);
                }
            }
            let listed_models: i64 = entry.models.iter().map(|m| m.input + m.output).sum();
            prop_assert!(listed_models <= used.input + used.output);
            let by_model = |m: &ModelUsage| (cost_of(&m.cost), m.input + m.output);
            prop_assert!(entry.models.windows(2).all(|p| by_model(&p[0]) >= by_model(&p[1])));
            // Once.
            let (ended, again) = cycle(&mut restarted(&status), &budget, "2026-11-30T11:00:01Z");
            prop_assert!(!ended);
            prop_assert_eq!(again.history, status.history);
        }
    }
}
