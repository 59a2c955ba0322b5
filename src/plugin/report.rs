//! `kubectl tokenbudget report`: chargeback from the budgets' `status.history`, the periods
//! that have ended, or (`--pool`) from a ClusterTokenBudget's. Pure: budgets (or a pool) and a
//! request in, a [`Report`] out ([`build`], [`build_pool`]), then text ([`table`], [`csv`],
//! [`json`]), so every figure is unit-tested.
//!
//! Tokens here are all tokens, input + output (what `top` counts too), not `used.tokens`,
//! which counts only the types of `spec.tokenTypes`: the listed models and workloads count
//! every type, and "(other)", what the top-10 lists leave out, is the period's input + output
//! minus the listed ones. A pool's children are the exception: the pool lists their tokens of
//! its `tokenTypes`, so by child (and by namespace) the tokens are the pool's `used.tokens`
//! and "(other)" is that minus the listed children. Costs are decimals summed exactly, never
//! across currencies.

use std::{cmp::Reverse, collections::BTreeMap, fmt};

use clap::ValueEnum;
use jiff::{Timestamp, civil::Date, tz::TimeZone};
use kube::ResourceExt;
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};

use super::render::{Cell, Listing, Table, grouped};
use crate::api::{ChildUsage, ClusterTokenBudget, ModelUsage, TokenBudget, UsedTokens, WorkloadUsage};
use crate::usage::parse_money;

/// What one row of the report adds up: `--by`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum GroupBy {
    #[default]
    Budget,
    Namespace,
    Workload,
    Model,
    // A pool's children (`--pool` only): the TokenBudgets drawing from it. (No doc comment:
    // clap would show it in --help, and the possible values in a long list.)
    Child,
}

impl GroupBy {
    fn as_str(self) -> &'static str {
        match self {
            GroupBy::Budget => "budget",
            GroupBy::Namespace => "namespace",
            GroupBy::Workload => "workload",
            GroupBy::Model => "model",
            GroupBy::Child => "child",
        }
    }

    /// Whether this grouping can report a pool (`pool`) or budgets: a pool's history lists
    /// children and models, not budgets' workloads; only a pool has children.
    pub fn check(self, pool: bool) -> Result<(), String> {
        match (self, pool) {
            (GroupBy::Budget, true) => Err(
                "--by budget does not go with --pool: a pool's budgets are its children, use --by child \
                 (or report -A --by budget for every budget's own periods)"
                    .into(),
            ),
            (GroupBy::Workload, true) => Err(
                "--by workload does not go with --pool: a pool's history does not list workloads; \
                 run report -n NAMESPACE --by workload on the team's budget"
                    .into(),
            ),
            (GroupBy::Child, false) => Err("--by child is for a pool's children: use it with --pool NAME".into()),
            _ => Ok(()),
        }
    }

    /// What `--by` is without the flag.
    pub fn default_for(pool: bool) -> Self {
        if pool { GroupBy::Child } else { GroupBy::Budget }
    }
}

/// `-o` of `report`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ReportOutput {
    #[default]
    Table,
    Csv,
    Json,
}

/// One end of the range: a calendar date (midnight in each budget's own time zone) or an
/// instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Date(Date),
    Time(Timestamp),
}

impl Bound {
    /// The instant this bound is for a budget in `tz`.
    fn at(self, tz: &TimeZone) -> Result<Timestamp, String> {
        match self {
            Bound::Time(t) => Ok(t),
            Bound::Date(d) => d
                .to_zoned(tz.clone())
                .map(|z| z.timestamp())
                .map_err(|e| format!("{d} in the time zone {}: {e}", tz.iana_name().unwrap_or("?"))),
        }
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Date(d) => write!(f, "{d}"),
            Bound::Time(t) => write!(f, "{t}"),
        }
    }
}

/// Parses `--from` and `--to`: `2026-11-01` or an RFC 3339 time such as `2026-11-01T00:00:00Z`.
pub fn parse_bound(s: &str) -> Result<Bound, String> {
    let is_date = s.len() == 10 && s.bytes().enumerate().all(|(i, b)| matches!(i, 4 | 7) == (b == b'-'));
    let is_date = is_date && s.bytes().filter(u8::is_ascii_digit).count() == 8;
    if is_date && let Ok(d) = s.parse::<Date>() {
        return Ok(Bound::Date(d));
    }
    if !is_date && let Ok(t) = s.parse::<Timestamp>() {
        return Ok(Bound::Time(t));
    }
    Err("use a date (2026-11-01) or an RFC 3339 time (2026-11-01T00:00:00Z)".into())
}

/// Which periods the report covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeriodRange {
    /// `--from`: periods that start at or after it.
    pub from: Option<Bound>,
    /// `--to`: periods that start before it.
    pub to: Option<Bound>,
    /// `--last N`: the N most recent ended periods of each budget (or of the pool) in the range.
    pub last: Option<usize>,
    /// `--include-current`: the current period so far too, when it starts in the range.
    pub include_current: bool,
}

impl PeriodRange {
    /// An empty or inverted range, when both ends are of one kind (a date and a time compare
    /// only in a budget's time zone: [`Self::resolve`] checks those).
    pub fn check(&self) -> Result<(), String> {
        let inverted = match (self.from, self.to) {
            (Some(Bound::Date(a)), Some(Bound::Date(b))) => a >= b,
            (Some(Bound::Time(a)), Some(Bound::Time(b))) => a >= b,
            _ => false,
        };
        if inverted { Err(self.inverted()) } else { Ok(()) }
    }

    fn inverted(&self) -> String {
        format!(
            "--from {} is not before --to {}: no period can start in that range",
            self.from.map(|b| b.to_string()).unwrap_or_default(),
            self.to.map(|b| b.to_string()).unwrap_or_default()
        )
    }

    /// The range's instants for a budget in `tz`.
    fn resolve(&self, tz: &TimeZone) -> Result<(Option<Timestamp>, Option<Timestamp>), String> {
        let from = self.from.map(|b| b.at(tz)).transpose()?;
        let to = self.to.map(|b| b.at(tz)).transpose()?;
        if let (Some(f), Some(t)) = (from, to)
            && f >= t
        {
            return Err(self.inverted());
        }
        Ok((from, to))
    }

    /// "from 2026-11-01 to 2026-12-01", "from 2026-11-01", "before ...", or "at any time".
    fn describe(&self) -> String {
        match (self.from, self.to) {
            (Some(f), Some(t)) => format!("between {f} and {t}"),
            (Some(f), None) => format!("from {f} on"),
            (None, Some(t)) => format!("before {t}"),
            (None, None) => "at any time".into(),
        }
    }
}

/// What `report` was asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportRequest {
    pub by: GroupBy,
    pub range: PeriodRange,
    pub output: ReportOutput,
    pub no_headers: bool,
}

/// Tokens and cost, summed exactly. `tokens` is all tokens (input + output; for a workload,
/// which has no split, its tokens). `cost` is absent when nothing summed had a cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: i64,
    pub output: i64,
    pub tokens: i64,
    pub cost: Option<Decimal>,
}

impl Usage {
    fn add(&mut self, other: &Usage) -> Result<(), String> {
        let sum = |a: i64, b: i64| a.checked_add(b).ok_or("the token counts overflow a 64-bit integer");
        self.input = sum(self.input, other.input)?;
        self.output = sum(self.output, other.output)?;
        self.tokens = sum(self.tokens, other.tokens)?;
        self.cost = match (self.cost, other.cost) {
            (None, c) | (c, None) => c,
            (Some(a), Some(b)) => Some(a.checked_add(b).ok_or("the costs overflow")?),
        };
        Ok(())
    }

    fn is_zero(&self) -> bool {
        self.input == 0 && self.output == 0 && self.tokens == 0 && self.cost.is_none_or(|c| c.is_zero())
    }
}

/// The largest rounding error of a cost written with 6 decimals, as the operator writes them.
const ROUNDING: Decimal = Decimal::from_parts(5, 0, 0, false, 7);

/// One period of one budget (or of a pool), read and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Period {
    /// Empty for a pool's period.
    pub namespace: String,
    /// The budget's name, or the pool's.
    pub budget: String,
    /// Whether it is a pool's period (a ClusterTokenBudget's).
    pub pool: bool,
    pub start: String,
    /// Absent for a current period that never resets.
    pub end: Option<String>,
    pub current: bool,
    pub currency: String,
    pub used: Usage,
    /// `used.tokens`: the tokens of the types that count (`spec.tokenTypes`).
    pub counted: i64,
    models: Vec<(String, Usage)>,
    /// Kind, name, usage.
    workloads: Vec<(String, String, Usage)>,
    /// A pool's children: namespace, name, usage (tokens of the pool's types, no split).
    children: Vec<(String, String, Usage)>,
    /// What the lists leave out.
    other_models: Usage,
    other_workloads: Usage,
    other_children: Usage,
}

impl Period {
    /// What the period adds to its currency's total: its `used`; by a pool's children, which
    /// the pool lists with its counted tokens, those.
    fn total(&self, by: GroupBy) -> Usage {
        if self.pool && matches!(by, GroupBy::Child | GroupBy::Namespace) {
            return Usage {
                input: 0,
                output: 0,
                tokens: self.counted,
                cost: self.used.cost,
            };
        }
        self.used.clone()
    }
}

/// The key of a row: what it adds up. `None` is "(other)": what the top-10 lists leave out.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Budget {
        namespace: String,
        budget: String,
    },
    Namespace(Option<String>),
    Workload {
        namespace: String,
        budget: String,
        /// Kind and name.
        workload: Option<(String, String)>,
    },
    Model(Option<String>),
    /// A pool's child: namespace and name.
    Child(Option<(String, String)>),
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub key: Key,
    pub currency: String,
    /// How many periods added to it.
    pub periods: usize,
    pub usage: Usage,
}

/// Everything in one currency: the sum of its periods' `used`, which the rows add up to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Total {
    pub currency: String,
    pub periods: usize,
    pub usage: Usage,
}

/// A report: rows, a total per currency, and the periods they come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The pool reported (`--pool`); `None` for budgets.
    pub pool: Option<String>,
    pub by: GroupBy,
    pub range: PeriodRange,
    pub rows: Vec<Row>,
    pub totals: Vec<Total>,
    pub periods: Vec<Period>,
}

/// Builds the report of `budgets` (all of `listing`, or the one named `name`). Errors are
/// one line: a status that does not add up, an unparsable cost or time, an empty report.
pub fn build(
    budgets: &[TokenBudget],
    listing: Listing,
    name: Option<&str>,
    range: &PeriodRange,
    by: GroupBy,
) -> Result<Report, String> {
    by.check(false)?;
    let mut sorted: Vec<&TokenBudget> = budgets.iter().collect();
    sorted.sort_by_key(|b| (b.namespace(), b.name_any()));
    let mut periods = Vec::new();
    for b in &sorted {
        periods.extend(select(b, range)?);
    }
    if periods.is_empty() {
        return Err(nothing_to_report(&sorted, listing, name, range));
    }
    aggregate(None, periods, range, by)
}

/// Builds the report of a pool's periods (`--pool`): by child (the TokenBudgets drawing from
/// it), by their namespace, or by model.
pub fn build_pool(pool: &ClusterTokenBudget, range: &PeriodRange, by: GroupBy) -> Result<Report, String> {
    by.check(true)?;
    let periods = select_pool(pool, range)?;
    if periods.is_empty() {
        return Err(nothing_of_the_pool(pool, range));
    }
    aggregate(Some(pool.name_any()), periods, range, by)
}

/// The rows and totals of the periods read.
fn aggregate(pool: Option<String>, periods: Vec<Period>, range: &PeriodRange, by: GroupBy) -> Result<Report, String> {
    let mut rows: BTreeMap<(Key, String), Row> = BTreeMap::new();
    let mut totals: BTreeMap<String, Total> = BTreeMap::new();
    for p in &periods {
        let total = totals.entry(p.currency.clone()).or_insert_with(|| Total {
            currency: p.currency.clone(),
            periods: 0,
            usage: Usage::default(),
        });
        total.periods += 1;
        total.usage.add(&p.total(by))?;
        for (key, usage) in contributions(p, by)? {
            let row = rows.entry((key.clone(), p.currency.clone())).or_insert_with(|| Row {
                key,
                currency: p.currency.clone(),
                periods: 0,
                usage: Usage::default(),
            });
            row.periods += 1;
            row.usage.add(&usage)?;
        }
    }
    let mut rows: Vec<Row> = rows.into_values().collect();
    rows.sort_by(|a, b| order(a).cmp(&order(b)));
    Ok(Report {
        pool,
        by,
        range: *range,
        rows,
        totals: totals.into_values().collect(),
        periods,
    })
}

/// What one period adds to which row.
fn contributions(p: &Period, by: GroupBy) -> Result<Vec<(Key, Usage)>, String> {
    let (namespace, budget) = (p.namespace.clone(), p.budget.clone());
    Ok(match by {
        GroupBy::Budget => vec![(Key::Budget { namespace, budget }, p.used.clone())],
        GroupBy::Namespace if p.pool => {
            // Children summed per namespace: one row per namespace and period.
            let mut per_namespace: BTreeMap<&str, Usage> = BTreeMap::new();
            for (ns, _, usage) in &p.children {
                per_namespace.entry(ns).or_default().add(usage)?;
            }
            let mut out: Vec<(Key, Usage)> = per_namespace
                .into_iter()
                .map(|(ns, usage)| (Key::Namespace(Some(ns.to_string())), usage))
                .collect();
            if !p.other_children.is_zero() {
                out.push((Key::Namespace(None), p.other_children.clone()));
            }
            out
        }
        GroupBy::Namespace => vec![(Key::Namespace(Some(namespace)), p.used.clone())],
        GroupBy::Child => {
            let mut out: Vec<(Key, Usage)> = p
                .children
                .iter()
                .map(|(ns, name, usage)| (Key::Child(Some((ns.clone(), name.clone()))), usage.clone()))
                .collect();
            if !p.other_children.is_zero() {
                out.push((Key::Child(None), p.other_children.clone()));
            }
            out
        }
        GroupBy::Workload => {
            let key = |workload| Key::Workload {
                namespace: namespace.clone(),
                budget: budget.clone(),
                workload,
            };
            let mut out: Vec<(Key, Usage)> = p
                .workloads
                .iter()
                .map(|(kind, name, usage)| (key(Some((kind.clone(), name.clone()))), usage.clone()))
                .collect();
            if !p.other_workloads.is_zero() {
                out.push((key(None), p.other_workloads.clone()));
            }
            out
        }
        GroupBy::Model => {
            let mut out: Vec<(Key, Usage)> = p
                .models
                .iter()
                .map(|(model, usage)| (Key::Model(Some(model.clone())), usage.clone()))
                .collect();
            if !p.other_models.is_zero() {
                out.push((Key::Model(None), p.other_models.clone()));
            }
            out
        }
    })
}

/// Budgets, namespaces and children by name; workloads within their budget and models within
/// their currency largest first (by cost, then tokens), "(other)" last.
type Order<'a> = (
    Vec<&'a str>,
    bool,
    Reverse<Option<Decimal>>,
    Reverse<i64>,
    Vec<&'a str>,
    &'a str,
);

fn order(row: &Row) -> Order<'_> {
    let largest = (Reverse(row.usage.cost), Reverse(row.usage.tokens));
    let c = row.currency.as_str();
    match &row.key {
        Key::Budget { namespace, budget } => (
            vec![namespace.as_str(), budget.as_str()],
            false,
            Reverse(None),
            Reverse(0),
            vec![],
            c,
        ),
        Key::Namespace(ns) => (
            vec![],
            ns.is_none(),
            Reverse(None),
            Reverse(0),
            ns.iter().map(String::as_str).collect(),
            c,
        ),
        Key::Child(child) => (
            vec![],
            child.is_none(),
            Reverse(None),
            Reverse(0),
            child
                .as_ref()
                .map_or(vec![], |(ns, name)| vec![ns.as_str(), name.as_str()]),
            c,
        ),
        Key::Workload {
            namespace,
            budget,
            workload,
        } => {
            let name = workload.as_ref().map_or(vec![], |(k, n)| vec![k.as_str(), n.as_str()]);
            (
                vec![namespace.as_str(), budget.as_str(), c],
                workload.is_none(),
                largest.0,
                largest.1,
                name,
                c,
            )
        }
        Key::Model(model) => (
            vec![c],
            model.is_none(),
            largest.0,
            largest.1,
            model.iter().map(String::as_str).collect(),
            c,
        ),
    }
}

/// The periods of one budget the range selects: the ended ones (newest first), then the
/// current one if asked for.
fn select(b: &TokenBudget, range: &PeriodRange) -> Result<Vec<Period>, String> {
    let Some(status) = &b.status else {
        return Ok(Vec::new());
    };
    let who = format!("TokenBudget {}/{}", b.namespace().unwrap_or_default(), b.name_any());
    if status.history.is_empty() && !range.include_current {
        return Ok(Vec::new());
    }
    let owner = Owner {
        namespace: b.namespace().unwrap_or_default(),
        name: b.name_any(),
        pool: false,
    };
    let in_range = in_range(&who, &b.spec.period.timezone, range)?;
    let mut periods = Vec::new();
    for (i, start, s) in ended(&who, &status.history, |s| &s.period_start, &in_range, range.last)? {
        let at = format!("{who}: status.history[{i}]");
        let lists = Lists {
            models: &s.models,
            workloads: &s.workloads,
            ..Lists::default()
        };
        let sums = Sums {
            start: s.period_start.clone(),
            end: Some(s.period_end.clone()),
            current: false,
            currency: &s.currency,
            used: &s.used,
        };
        periods.push(ended_period(&owner, &at, start, sums, lists)?);
    }
    if range.include_current
        && let Some(start_text) = &status.period_start
    {
        let at = format!("{who}: status (the current period)");
        let start = time(&at, "periodStart", start_text)?;
        if in_range(start) {
            let used = status.used.clone().unwrap_or_default();
            let lists = Lists {
                models: &status.models,
                workloads: &status.workloads,
                ..Lists::default()
            };
            let sums = Sums {
                start: start_text.clone(),
                end: status.resets_at.clone(),
                current: true,
                currency: &b.spec.currency,
                used: &used,
            };
            periods.push(period(&owner, &at, sums, lists)?);
        }
    }
    Ok(periods)
}

/// The periods of a pool the range selects: the ended ones (newest first), then the current
/// one if asked for, whose children are the shares of `status.shares`; those beyond them
/// (`otherShares`) and those that left during the period (`departed`) are its "(other)".
fn select_pool(pool: &ClusterTokenBudget, range: &PeriodRange) -> Result<Vec<Period>, String> {
    let Some(status) = &pool.status else {
        return Ok(Vec::new());
    };
    let who = format!("ClusterTokenBudget {}", pool.name_any());
    if status.history.is_empty() && !range.include_current {
        return Ok(Vec::new());
    }
    let owner = Owner {
        namespace: String::new(),
        name: pool.name_any(),
        pool: true,
    };
    let in_range = in_range(&who, &pool.spec.period.timezone, range)?;
    let mut periods = Vec::new();
    for (i, start, s) in ended(&who, &status.history, |s| &s.period_start, &in_range, range.last)? {
        let at = format!("{who}: status.history[{i}]");
        let lists = Lists {
            models: &s.models,
            children: (&s.children, "children", ""),
            ..Lists::default()
        };
        let sums = Sums {
            start: s.period_start.clone(),
            end: Some(s.period_end.clone()),
            current: false,
            currency: &s.currency,
            used: &s.used,
        };
        periods.push(ended_period(&owner, &at, start, sums, lists)?);
    }
    if range.include_current
        && let Some(start_text) = &status.period_start
    {
        let at = format!("{who}: status (the current period)");
        let start = time(&at, "periodStart", start_text)?;
        if in_range(start) {
            let used = status.used.clone().unwrap_or_default();
            let shares: Vec<ChildUsage> = status
                .shares
                .iter()
                .map(|s| ChildUsage {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    tokens: s.used.tokens,
                    cost: s.used.cost.clone(),
                })
                .collect();
            let lists = Lists {
                models: &status.models,
                children: (&shares, "shares", "used."),
                ..Lists::default()
            };
            let sums = Sums {
                start: start_text.clone(),
                end: status.resets_at.clone(),
                current: true,
                currency: &pool.spec.currency,
                used: &used,
            };
            periods.push(period(&owner, &at, sums, lists)?);
        }
    }
    Ok(periods)
}

/// Whether a period starting at an instant is in the range, for an owner in time zone `tz`.
fn in_range(who: &str, tz: &str, range: &PeriodRange) -> Result<impl Fn(Timestamp) -> bool, String> {
    let zone = TimeZone::get(tz).map_err(|e| format!("{who}: spec.period.timezone {tz:?}: {e}"))?;
    let (from, to) = range.resolve(&zone).map_err(|e| format!("{who}: {e}"))?;
    Ok(move |start: Timestamp| from.is_none_or(|f| start >= f) && to.is_none_or(|t| start < t))
}

/// The entries of `history` in the range, newest first, at most `last`: index, start, entry.
fn ended<'a, T>(
    who: &str,
    history: &'a [T],
    start_of: impl Fn(&T) -> &String,
    in_range: &impl Fn(Timestamp) -> bool,
    last: Option<usize>,
) -> Result<Vec<(usize, Timestamp, &'a T)>, String> {
    let mut ended = Vec::new();
    for (i, summary) in history.iter().enumerate() {
        let at = format!("{who}: status.history[{i}]");
        let start = time(&at, "periodStart", start_of(summary))?;
        if in_range(start) {
            ended.push((i, start, summary));
        }
    }
    ended.sort_by_key(|(_, start, _)| Reverse(*start));
    if let Some(last) = last {
        ended.truncate(last);
    }
    Ok(ended)
}

/// Whose period: a budget's, or a pool's (no namespace).
struct Owner {
    namespace: String,
    name: String,
    pool: bool,
}

/// A period's figures, as its status says them.
struct Sums<'a> {
    start: String,
    /// Absent for a current period that never resets.
    end: Option<String>,
    current: bool,
    currency: &'a str,
    used: &'a UsedTokens,
}

/// A period's top lists. A pool's children come with the field they are read from and the
/// prefix of their figures in it ("children", ""; "shares", "used.").
#[derive(Default)]
struct Lists<'a> {
    models: &'a [ModelUsage],
    workloads: &'a [WorkloadUsage],
    children: (&'a [ChildUsage], &'a str, &'a str),
}

/// An ended period: one that ends after it starts.
fn ended_period(owner: &Owner, at: &str, start: Timestamp, sums: Sums, lists: Lists) -> Result<Period, String> {
    let end_text = sums.end.as_deref().unwrap_or_default();
    let end = time(at, "periodEnd", end_text)?;
    if end <= start {
        return Err(format!(
            "{at}: periodEnd {end_text} is not after periodStart {}",
            sums.start
        ));
    }
    period(owner, at, sums, lists)
}

/// A period read and checked: no negative counts, costs that parse, lists that do not add up
/// to more than the period used.
fn period(owner: &Owner, at: &str, sums: Sums, lists: Lists) -> Result<Period, String> {
    let Sums {
        start,
        end,
        current,
        currency,
        used,
    } = sums;
    if currency.trim().is_empty() {
        return Err(format!("{at}: the currency is empty"));
    }
    let counted = count(at, "used.tokens", used.tokens)?;
    let used = Usage {
        input: count(at, "used.input", used.input)?,
        output: count(at, "used.output", used.output)?,
        tokens: used
            .input
            .checked_add(used.output)
            .ok_or_else(|| format!("{at}: used.input + used.output overflows"))?,
        cost: cost(at, "used.cost", used.cost.as_deref())?,
    };
    let mut listed_models = Usage::default();
    let mut model_rows = Vec::new();
    for (i, m) in lists.models.iter().enumerate() {
        let field = |f: &str| format!("models[{i}].{f}");
        let input = count(at, &field("input"), m.input)?;
        let output = count(at, &field("output"), m.output)?;
        let usage = Usage {
            input,
            output,
            tokens: input.saturating_add(output),
            cost: cost(at, &field("cost"), m.cost.as_deref())?,
        };
        listed_models.add(&usage).map_err(|e| format!("{at}: models: {e}"))?;
        model_rows.push((m.model.clone(), usage));
    }
    let mut listed_workloads = Usage::default();
    let mut workload_rows = Vec::new();
    for (i, w) in lists.workloads.iter().enumerate() {
        let field = |f: &str| format!("workloads[{i}].{f}");
        let usage = Usage {
            input: 0,
            output: 0,
            tokens: count(at, &field("tokens"), w.tokens)?,
            cost: cost(at, &field("cost"), w.cost.as_deref())?,
        };
        listed_workloads
            .add(&usage)
            .map_err(|e| format!("{at}: workloads: {e}"))?;
        workload_rows.push((w.kind.as_str().to_string(), w.name.clone(), usage));
    }
    let (children, list, prefix) = lists.children;
    let mut listed_children = Usage::default();
    let mut child_rows = Vec::new();
    for (i, c) in children.iter().enumerate() {
        let field = |f: &str| format!("{list}[{i}].{prefix}{f}");
        let usage = Usage {
            input: 0,
            output: 0,
            tokens: count(at, &field("tokens"), c.tokens)?,
            cost: cost(at, &field("cost"), c.cost.as_deref())?,
        };
        listed_children.add(&usage).map_err(|e| format!("{at}: {list}: {e}"))?;
        child_rows.push((c.namespace.clone(), c.name.clone(), usage));
    }
    let other_models = Usage {
        input: rest(at, "models", "input tokens", used.input, listed_models.input)?,
        output: rest(at, "models", "output tokens", used.output, listed_models.output)?,
        tokens: used.tokens - listed_models.tokens,
        cost: rest_cost(at, "models", used.cost, listed_models.cost, lists.models.len())?,
    };
    let other_workloads = Usage {
        input: 0,
        output: 0,
        tokens: rest(at, "workloads", "tokens", used.tokens, listed_workloads.tokens)?,
        cost: rest_cost(at, "workloads", used.cost, listed_workloads.cost, lists.workloads.len())?,
    };
    // A pool lists its children's tokens of its token types: the rest is of those too.
    let other_children = Usage {
        input: 0,
        output: 0,
        tokens: rest(at, list, "tokens", counted, listed_children.tokens)?,
        cost: rest_cost(at, list, used.cost, listed_children.cost, children.len())?,
    };
    Ok(Period {
        namespace: owner.namespace.clone(),
        budget: owner.name.clone(),
        pool: owner.pool,
        start,
        end,
        current,
        currency: currency.to_string(),
        used,
        counted,
        models: model_rows,
        workloads: workload_rows,
        children: child_rows,
        other_models,
        other_workloads,
        other_children,
    })
}

fn time(at: &str, field: &str, value: &str) -> Result<Timestamp, String> {
    value
        .parse()
        .map_err(|_| format!("{at}: {field} {value:?} is not an RFC 3339 time"))
}

fn count(at: &str, field: &str, value: i64) -> Result<i64, String> {
    if value < 0 {
        return Err(format!("{at}: {field} is negative ({value})"));
    }
    Ok(value)
}

fn cost(at: &str, field: &str, value: Option<&str>) -> Result<Option<Decimal>, String> {
    value
        .map(|v| parse_money(v).map_err(|_| format!("{at}: {field} {v:?} is not a decimal amount")))
        .transpose()
}

/// What the period used beyond the listed ones; the lists can never hold more.
fn rest(at: &str, list: &str, what: &str, used: i64, listed: i64) -> Result<i64, String> {
    if listed > used {
        return Err(format!(
            "{at}: the {list} listed used {} {what}, more than the whole period ({})",
            grouped(listed),
            grouped(used)
        ));
    }
    Ok(used - listed)
}

/// The cost beyond the listed ones. Each listed cost is rounded on its own, so their sum may
/// exceed the period's by the rounding of each: that much is kept (a tiny negative "(other)",
/// so that the rows still add up to the total exactly); more is an error.
fn rest_cost(
    at: &str,
    list: &str,
    used: Option<Decimal>,
    listed: Option<Decimal>,
    items: usize,
) -> Result<Option<Decimal>, String> {
    let Some(listed) = listed else {
        return Ok(used);
    };
    let used_or_zero = used.unwrap_or_default();
    let rest = used_or_zero - listed;
    let tolerance = ROUNDING * Decimal::from(items + 1);
    if rest < -tolerance {
        return Err(format!(
            "{at}: the {list} listed cost {}, more than the whole period ({})",
            exact_money(listed),
            exact_money(used_or_zero)
        ));
    }
    Ok(Some(rest))
}

fn nothing_to_report(budgets: &[&TokenBudget], listing: Listing, name: Option<&str>, range: &PeriodRange) -> String {
    let history = |b: &TokenBudget| b.status.as_ref().map_or(0, |s| s.history.len());
    if let (Some(name), [b]) = (name, budgets) {
        let who = format!("TokenBudget {}/{name}", b.namespace().unwrap_or_default());
        if history(b) > 0 {
            return format!("no ended period of {who} starts {}", range.describe());
        }
        let status = b.status.as_ref();
        let never = b.spec.period.reset == crate::api::ResetPeriod::Never;
        return no_history(
            &who,
            status.is_some(),
            never,
            status.and_then(|s| s.resets_at.as_deref()),
        );
    }
    let scope = match listing {
        Listing::Namespace(ns) => format!("in namespace {ns}"),
        Listing::AllNamespaces => "in any namespace".into(),
    };
    if budgets.iter().all(|b| history(b) == 0) {
        return format!(
            "no TokenBudget {scope} has ended periods yet (status.history is empty); --include-current reports the current ones"
        );
    }
    format!(
        "no ended period of the TokenBudgets {scope} starts {}",
        range.describe()
    )
}

/// Why a pool's report is empty.
fn nothing_of_the_pool(pool: &ClusterTokenBudget, range: &PeriodRange) -> String {
    let who = format!("ClusterTokenBudget {}", pool.name_any());
    let status = pool.status.as_ref();
    if status.is_some_and(|s| !s.history.is_empty()) {
        return format!("no ended period of {who} starts {}", range.describe());
    }
    let never = pool.spec.period.reset == crate::api::ResetPeriod::Never;
    no_history(
        &who,
        status.is_some(),
        never,
        status.and_then(|s| s.resets_at.as_deref()),
    )
}

/// "... has no ended periods yet", and what to do about it.
fn no_history(who: &str, reported: bool, never: bool, resets_at: Option<&str>) -> String {
    let hint = match resets_at {
        _ if !reported => "the operator has not reported on it yet".to_string(),
        _ if never => "it never resets (period.reset: Never); --include-current reports its usage so far".into(),
        Some(at) => format!("its first period ends at {at}; --include-current reports the current one"),
        None => "--include-current reports the current period".into(),
    };
    format!("{who} has no ended periods yet (status.history is empty): {hint}")
}

// ---- output -----------------------------------------------------------------------------------

/// A decimal exactly, with at least two decimals: "105.00", "0.000125".
pub fn exact_money(d: Decimal) -> String {
    let s = d.normalize().to_string();
    match s.split_once('.') {
        None => format!("{s}.00"),
        Some((int, frac)) if frac.len() < 2 => format!("{int}.{frac:0<2}"),
        Some(_) => s,
    }
}

const OTHER: &str = "(other)";

/// The table: a row per group, then a TOTAL line per currency. A pool's children (BUDGET
/// within NAMESPACE) have no INPUT and OUTPUT: the pool lists their tokens only.
pub fn table(report: &Report, listing: Listing, no_headers: bool) -> String {
    let all = listing == Listing::AllNamespaces;
    let pool = report.pool.is_some();
    let (keys, amounts): (Vec<&str>, Vec<&str>) = match report.by {
        GroupBy::Budget if all => (vec!["NAMESPACE", "BUDGET"], vec!["PERIODS", "INPUT", "OUTPUT"]),
        GroupBy::Budget => (vec!["BUDGET"], vec!["PERIODS", "INPUT", "OUTPUT"]),
        GroupBy::Namespace if pool => (vec!["NAMESPACE"], vec!["PERIODS"]),
        GroupBy::Namespace => (vec!["NAMESPACE"], vec!["PERIODS", "INPUT", "OUTPUT"]),
        GroupBy::Child => (vec!["NAMESPACE", "BUDGET"], vec!["PERIODS"]),
        GroupBy::Workload if all => (vec!["NAMESPACE", "BUDGET", "KIND", "NAME"], vec![]),
        GroupBy::Workload => (vec!["BUDGET", "KIND", "NAME"], vec![]),
        GroupBy::Model => (vec!["MODEL"], vec!["INPUT", "OUTPUT"]),
    };
    let header: Vec<&str> = keys.iter().chain(&amounts).copied().chain(["TOKENS", "COST"]).collect();
    let amount_cells = |periods: usize, usage: &Usage, currency: &str| {
        let mut cells = Vec::new();
        for column in &amounts {
            cells.push(Cell::plain(match *column {
                "PERIODS" => periods.to_string(),
                "INPUT" => grouped(usage.input),
                _ => grouped(usage.output),
            }));
        }
        cells.push(Cell::plain(grouped(usage.tokens)));
        cells.push(Cell::plain(
            usage
                .cost
                .map_or("-".into(), |c| format!("{} {currency}", exact_money(c))),
        ));
        cells
    };
    let mut t = Table::new(&header);
    for row in &report.rows {
        let mut key: Vec<String> = match &row.key {
            Key::Budget { namespace, budget } => vec![namespace.clone(), budget.clone()],
            Key::Namespace(ns) => vec![ns.clone().unwrap_or_else(|| OTHER.into())],
            Key::Child(Some((ns, name))) => vec![ns.clone(), name.clone()],
            Key::Child(None) => vec!["-".into(), OTHER.into()],
            Key::Workload {
                namespace,
                budget,
                workload,
            } => {
                let (kind, name) = workload.clone().unwrap_or_else(|| ("-".into(), OTHER.into()));
                vec![namespace.clone(), budget.clone(), kind, name]
            }
            Key::Model(model) => vec![model.clone().unwrap_or_else(|| OTHER.into())],
        };
        if key.len() > keys.len() {
            // Without -A, no NAMESPACE column.
            key.remove(0);
        }
        let mut cells: Vec<Cell> = key.into_iter().map(Cell::plain).collect();
        cells.extend(amount_cells(row.periods, &row.usage, &row.currency));
        t.push(cells);
    }
    for total in &report.totals {
        let mut cells: Vec<Cell> = (0..keys.len())
            .map(|i| Cell::plain(if i == 0 { "TOTAL" } else { "" }))
            .collect();
        cells.extend(amount_cells(total.periods, &total.usage, &total.currency));
        t.push(cells);
    }
    let out = t.render("", false);
    if no_headers {
        out.split_once('\n').map_or(String::new(), |(_, rest)| rest.to_string())
    } else {
        out
    }
}

/// CSV (RFC 4180): a header, then a row per group, every namespace named. No total line: the
/// rows of a currency add up to its total.
pub fn csv(report: &Report, no_headers: bool) -> String {
    let pool = report.pool.is_some();
    let header: &[&str] = match report.by {
        GroupBy::Budget => &[
            "namespace",
            "budget",
            "currency",
            "periods",
            "input",
            "output",
            "tokens",
            "cost",
        ],
        GroupBy::Namespace if pool => &["namespace", "currency", "periods", "tokens", "cost"],
        GroupBy::Namespace => &["namespace", "currency", "periods", "input", "output", "tokens", "cost"],
        GroupBy::Child => &["namespace", "budget", "currency", "periods", "tokens", "cost"],
        GroupBy::Workload => &["namespace", "budget", "kind", "name", "currency", "tokens", "cost"],
        GroupBy::Model => &["model", "currency", "input", "output", "tokens", "cost"],
    };
    let mut out = String::new();
    if !no_headers {
        out.push_str(&header.join(","));
        out.push_str("\r\n");
    }
    for row in &report.rows {
        let u = &row.usage;
        let cost = u.cost.map(exact_money).unwrap_or_default();
        let (n, i, o, t) = (
            row.periods.to_string(),
            u.input.to_string(),
            u.output.to_string(),
            u.tokens.to_string(),
        );
        let c = row.currency.as_str();
        let fields: Vec<&str> = match &row.key {
            Key::Budget { namespace, budget } => vec![namespace, budget, c, &n, &i, &o, &t, &cost],
            Key::Namespace(ns) if pool => vec![ns.as_deref().unwrap_or(OTHER), c, &n, &t, &cost],
            Key::Namespace(ns) => vec![ns.as_deref().unwrap_or(OTHER), c, &n, &i, &o, &t, &cost],
            Key::Child(Some((ns, name))) => vec![ns, name, c, &n, &t, &cost],
            Key::Child(None) => vec!["", OTHER, c, &n, &t, &cost],
            Key::Workload {
                namespace,
                budget,
                workload: Some((kind, name)),
            } => vec![namespace, budget, kind, name, c, &t, &cost],
            Key::Workload { namespace, budget, .. } => vec![namespace, budget, "", OTHER, c, &t, &cost],
            Key::Model(model) => vec![model.as_deref().unwrap_or(OTHER), c, &i, &o, &t, &cost],
        };
        let fields: Vec<String> = fields.into_iter().map(csv_field).collect();
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// JSON: the request, the rows, the totals per currency and every period read. A pool's
/// report names the pool, and its periods have `countedTokens` (its `used.tokens`), what the
/// rows and totals by child and by namespace count.
pub fn json(report: &Report) -> String {
    let usage = |u: &Usage, split: bool| {
        let mut m = Map::new();
        if split {
            m.insert("input".into(), json!(u.input));
            m.insert("output".into(), json!(u.output));
        }
        m.insert("tokens".into(), json!(u.tokens));
        m.insert("cost".into(), json!(u.cost.map(exact_money)));
        m
    };
    // Workloads and a pool's children have no input and output: tokens only.
    let children = report.pool.is_some() && matches!(report.by, GroupBy::Child | GroupBy::Namespace);
    let split = report.by != GroupBy::Workload && !children;
    let rows: Vec<Value> = report
        .rows
        .iter()
        .map(|row| {
            let mut m = usage(&row.usage, split);
            m.insert("currency".into(), json!(row.currency));
            m.insert("periods".into(), json!(row.periods));
            match &row.key {
                Key::Budget { namespace, budget } => {
                    m.insert("namespace".into(), json!(namespace));
                    m.insert("budget".into(), json!(budget));
                }
                Key::Namespace(Some(ns)) => {
                    m.insert("namespace".into(), json!(ns));
                }
                Key::Child(Some((ns, name))) => {
                    m.insert("namespace".into(), json!(ns));
                    m.insert("budget".into(), json!(name));
                }
                Key::Namespace(None) | Key::Child(None) => {
                    m.insert("other".into(), json!(true));
                }
                Key::Workload {
                    namespace,
                    budget,
                    workload,
                } => {
                    m.insert("namespace".into(), json!(namespace));
                    m.insert("budget".into(), json!(budget));
                    match workload {
                        Some((kind, name)) => {
                            m.insert("kind".into(), json!(kind));
                            m.insert("name".into(), json!(name));
                        }
                        None => {
                            m.insert("other".into(), json!(true));
                        }
                    }
                }
                Key::Model(Some(model)) => {
                    m.insert("model".into(), json!(model));
                }
                Key::Model(None) => {
                    m.insert("other".into(), json!(true));
                }
            }
            Value::Object(m)
        })
        .collect();
    let totals: Vec<Value> = report
        .totals
        .iter()
        .map(|t| {
            let mut m = usage(&t.usage, !children);
            m.insert("currency".into(), json!(t.currency));
            m.insert("periods".into(), json!(t.periods));
            Value::Object(m)
        })
        .collect();
    let periods: Vec<Value> = report
        .periods
        .iter()
        .map(|p| {
            let mut m = usage(&p.used, true);
            if p.pool {
                m.insert("pool".into(), json!(p.budget));
                m.insert("countedTokens".into(), json!(p.counted));
            } else {
                m.insert("namespace".into(), json!(p.namespace));
                m.insert("budget".into(), json!(p.budget));
            }
            m.insert("periodStart".into(), json!(p.start));
            m.insert("periodEnd".into(), json!(p.end));
            m.insert("current".into(), json!(p.current));
            m.insert("currency".into(), json!(p.currency));
            Value::Object(m)
        })
        .collect();
    let r = &report.range;
    let mut doc = json!({
        "by": report.by.as_str(),
        "from": r.from.map(|b| b.to_string()),
        "to": r.to.map(|b| b.to_string()),
        "last": r.last,
        "includeCurrent": r.include_current,
        "rows": rows,
        "totals": totals,
        "periods": periods,
    });
    if let Some(pool) = &report.pool {
        doc["pool"] = json!(pool);
    }
    let mut out = serde_json::to_string_pretty(&doc).expect("a JSON value serializes");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests;
