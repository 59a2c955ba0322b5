//! Usage per subject: per distinct value of one label of the token series (a user, an end
//! user, a session, a team), against the limit `spec.subjects[]` gives each. Pure: no
//! Kubernetes client and no clock.
//!
//! A [`SubjectLedger`] keeps one label's bookkeeping the way the budget's ledger keeps its
//! own (the accounting rules apply to each (pod, subject, model) series as to each (pod,
//! model) series), fed by [`super::ledger::Ledger::observe`] with the same decision per pod:
//! a new pod counts its whole counters or is a baseline, a restarted one counts from zero.
//! A label added to a budget counts from the first scrape of each pod after it was added.
//!
//! Bounded however many subjects the pods report: at most [`MAX_SUBJECTS`] subjects are
//! counted one by one per period, and at most [`MAX_SUBJECT_COUNTERS`] last-seen (pod,
//! subject, model) counters are kept. Past the first bound a subject's tokens are summed as
//! untracked (they count toward the budget, exactly, through its own ledger, but toward no
//! limit of a subject); past the second, a pod's further subjects are summed into one
//! counter of the pod, as untracked too. Below both bounds every subject's figures are
//! exact, as the budget's are.
//!
//! The bookkeeping is persisted in `status.accounting.subjects` (compact, see
//! [`SubjectAccounting`]), in the same status write as the budget's; [`standing`] reads one
//! subject's standing from it, which is what an agent asks before a call, and [`usage`]
//! makes `status.subjects`.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet},
};

use rust_decimal::Decimal;

use super::{
    PriceTable, format_money,
    ledger::{CAP, add, from_i64, slot, to_i64},
    parse_money,
};
use crate::api::{
    ModelTokens, SUBJECTS_EXHAUSTED_LISTED, SUBJECTS_TOP, SubjectAccounting, SubjectLimit, SubjectUsage, SubjectsUsage,
    TokenBudget, TokenType,
};

/// At most this many subjects of one label are counted one by one in a budget's period.
pub const MAX_SUBJECTS: usize = 1000;
/// At most this many last-seen (pod, subject, model) counters are kept per label.
pub const MAX_SUBJECT_COUNTERS: usize = 10_000;

/// A last-seen counter's key: the subject (`None`: the pod's series beyond the bounds,
/// summed) and the model.
type Key = (Option<String>, String);

/// What the budget's ledger decided about a scraped pod, which its subjects follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A pod the budget's ledger knew. `restarted`: its containers started again from zero
    /// since the last scrape, so every series counts its whole value.
    Known { restarted: bool },
    /// A pod new to the budget's ledger: `counts` its whole counters, or they are its baseline.
    New { counts: bool },
}

/// One subject label's bookkeeping in a budget's period. Equality is over what is persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectLedger {
    /// Pod uid -> last-seen [input, output] per (subject, model). A pod with no counters is
    /// still known (its next scrape is no baseline).
    pods: BTreeMap<String, BTreeMap<Key, [u64; 2]>>,
    /// How many counters `pods` holds (derived).
    counters: usize,
    /// The period's tokens per subject and model: [input, output].
    totals: BTreeMap<String, BTreeMap<String, [u64; 2]>>,
    /// The period's tokens of the subjects beyond [`MAX_SUBJECTS`] and of the pods' series
    /// beyond [`MAX_SUBJECT_COUNTERS`]: [input, output].
    untracked: [u64; 2],
}

impl SubjectLedger {
    /// Counts one successful scrape of the pod `uid`: its series of this label as (subject,
    /// model, token type, value), models as the budget's ledger names them.
    pub fn observe<'s>(
        &mut self,
        uid: &str,
        seen: Seen,
        series: impl IntoIterator<Item = (Option<&'s str>, &'s str, TokenType, u64)>,
    ) {
        let baseline = match seen {
            Seen::New { counts } => !counts,
            // A pod the budget knew but this label did not: the label is new to the budget.
            Seen::Known { .. } => !self.pods.contains_key(uid),
        };
        let mut pod = self.pods.remove(uid).unwrap_or_default();
        self.counters -= pod.len();
        if seen == (Seen::Known { restarted: true }) {
            pod.clear();
        }
        // The scrape's values by the key each is kept under (several may sum into one).
        let mut scraped: BTreeMap<Key, [Option<u64>; 2]> = BTreeMap::new();
        // Subjects new to the period in this scrape, which take room in the totals.
        let mut new_subjects: BTreeSet<&str> = BTreeSet::new();
        for (subject, model, token_type, value) in series {
            let named = subject.map(|s| (Some(s.to_owned()), model.to_owned()));
            let key = match (named, subject) {
                (Some(key), _) if pod.contains_key(&key) || scraped.contains_key(&key) => key,
                // A counter of its own only for a subject that is, or may be, counted one
                // by one: the others' series are summed, taking no room.
                (Some(key), Some(s))
                    if self.counters + pod.len() + scraped.len() < MAX_SUBJECT_COUNTERS
                        && (self.totals.contains_key(s)
                            || new_subjects.contains(s)
                            || self.totals.len() + new_subjects.len() < MAX_SUBJECTS) =>
                {
                    if !self.totals.contains_key(s) {
                        new_subjects.insert(s);
                    }
                    key
                }
                _ => (None, model.to_owned()),
            };
            let v = &mut scraped.entry(key).or_default()[slot(token_type)];
            *v = Some(add(v.unwrap_or(0), value.min(CAP)));
        }
        let regrouped = if baseline {
            BTreeSet::new()
        } else {
            regroup(&pod, &mut scraped)
        };
        for model in &regrouped {
            self.credit_regrouped(&pod, &scraped, model);
        }
        for (key, values) in scraped {
            // Counted above with the rest of its group.
            let counted = regrouped.contains(&key.1) && (key.0.is_none() || !pod.contains_key(&key));
            for token_type in TokenType::ALL {
                let Some(value) = values[slot(token_type)] else {
                    continue;
                };
                let last = pod.get(&key).map_or(0, |v| v[slot(token_type)]);
                let increase = match (baseline || counted, value >= last) {
                    (true, _) => 0,
                    (false, true) => value - last,
                    // The counter went down: it was reset, and counts from zero.
                    (false, false) => value,
                };
                if increase > 0 {
                    self.credit(&key, token_type, increase);
                }
                let counter = pod.entry(key.clone()).or_default();
                counter[slot(token_type)] = value;
                if *counter == [0, 0] {
                    pod.remove(&key);
                }
            }
        }
        self.counters += pod.len();
        self.pods.insert(uid.to_owned(), pod);
    }

    /// Counts, as untracked, the increase of the series of `model` that the pod's summed
    /// counter held at its last scrape ([`regroup`]): its summed series now, and those that
    /// left it for counters of their own, together against the summed counter's last value.
    fn credit_regrouped(
        &mut self,
        pod: &BTreeMap<Key, [u64; 2]>,
        scraped: &BTreeMap<Key, [Option<u64>; 2]>,
        model: &str,
    ) {
        let last = pod.get(&(None, model.to_owned())).copied().unwrap_or_default();
        let mut now = [0u64; 2];
        for (key, values) in scraped {
            if key.1 == model && (key.0.is_none() || !pod.contains_key(key)) {
                for (sum, value) in now.iter_mut().zip(values) {
                    *sum = add(*sum, value.unwrap_or(0));
                }
            }
        }
        for token_type in TokenType::ALL {
            let (now, last) = (now[slot(token_type)], last[slot(token_type)]);
            let increase = if now >= last { now - last } else { now };
            if increase > 0 {
                self.credit(&(None, model.to_owned()), token_type, increase);
            }
        }
    }

    /// Adds an increase to the subject's totals, or to the untracked ones.
    fn credit(&mut self, (subject, model): &Key, token_type: TokenType, increase: u64) {
        let totals = match subject {
            Some(s) if self.totals.contains_key(s) || self.totals.len() < MAX_SUBJECTS => {
                self.totals.entry(s.clone()).or_default()
            }
            _ => {
                self.untracked[slot(token_type)] = add(self.untracked[slot(token_type)], increase);
                return;
            }
        };
        let values = totals.entry(model.clone()).or_default();
        values[slot(token_type)] = add(values[slot(token_type)], increase);
    }

    /// Drops a pod that is gone; its tokens stay in the totals.
    pub fn forget(&mut self, uid: &str) {
        if let Some(pod) = self.pods.remove(uid) {
            self.counters -= pod.len();
        }
    }

    /// Starts a new period: the totals go back to zero, the last-seen counters stay as
    /// baselines.
    pub fn reset(&mut self) {
        self.totals.clear();
        self.untracked = [0, 0];
    }

    /// The uids of the pods it knows.
    pub fn pod_uids(&self) -> impl Iterator<Item = &str> + '_ {
        self.pods.keys().map(String::as_str)
    }

    /// Each subject counted one by one, with its tokens per model: (model, input, output).
    pub fn subjects(&self) -> impl Iterator<Item = (&str, &BTreeMap<String, [u64; 2]>)> + '_ {
        self.totals.iter().map(|(s, m)| (s.as_str(), m))
    }

    /// The tokens of the subjects not counted one by one: [input, output].
    pub fn untracked(&self) -> [u64; 2] {
        self.untracked
    }

    /// The state to persist, in a deterministic order.
    pub fn to_state(&self, label: &str) -> SubjectAccounting {
        use std::fmt::Write;
        let values: Vec<String> = self
            .totals
            .keys()
            .chain(
                self.pods
                    .values()
                    .flat_map(|pod| pod.keys().filter_map(|(s, _)| s.as_ref())),
            )
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .cloned()
            .collect();
        let models: Vec<String> = self
            .totals
            .values()
            .flat_map(|m| m.keys())
            .chain(self.pods.values().flat_map(|pod| pod.keys().map(|(_, m)| m)))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .cloned()
            .collect();
        let value_index = |v: &String| values.binary_search(v).unwrap_or_default();
        let model_index = |m: &String| models.binary_search(m).unwrap_or_default();
        let totals = self
            .totals
            .iter()
            .map(|(subject, per_model)| {
                let mut line = value_index(subject).to_string();
                for (model, [input, output]) in per_model {
                    let _ = write!(line, " {}:{}:{}", model_index(model), to_i64(*input), to_i64(*output));
                }
                line
            })
            .collect();
        let pods = self
            .pods
            .iter()
            .map(|(uid, counters)| {
                let mut line = uid.clone();
                for ((subject, model), [input, output]) in counters {
                    let subject = subject
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), |s| value_index(s).to_string());
                    let _ = write!(
                        line,
                        " {subject}/{}:{}:{}",
                        model_index(model),
                        to_i64(*input),
                        to_i64(*output)
                    );
                }
                line
            })
            .collect();
        SubjectAccounting {
            label: label.to_owned(),
            values,
            models,
            totals,
            pods,
            untracked: (self.untracked != [0, 0]).then(|| ModelTokens {
                model: super::ledger::OTHER_MODELS.to_owned(),
                input: to_i64(self.untracked[0]),
                output: to_i64(self.untracked[1]),
            }),
        }
    }

    /// The ledger as the status persisted it. What cannot be read is left out (a pod whose
    /// line cannot be read is new to the ledger); negative numbers read as 0.
    pub fn from_state(state: &SubjectAccounting) -> Self {
        let mut ledger = SubjectLedger::default();
        for line in &state.totals {
            let mut fields = line.split(' ');
            let Some(subject) = index(fields.next(), &state.values) else {
                continue;
            };
            let per_model = ledger.totals.entry(subject.clone()).or_default();
            for field in fields {
                if let Some((model, values)) = counter(field, &state.models) {
                    per_model.insert(model.clone(), values);
                }
            }
        }
        for line in &state.pods {
            let mut fields = line.split(' ');
            let Some(uid) = fields.next().filter(|u| !u.is_empty()) else {
                continue;
            };
            let mut pod = BTreeMap::new();
            for field in fields {
                let Some((subject, rest)) = field.split_once('/') else {
                    continue;
                };
                let subject = match subject {
                    "-" => None,
                    s => match index(Some(s), &state.values) {
                        Some(s) => Some(s.clone()),
                        None => continue,
                    },
                };
                if let Some((model, values)) = counter(rest, &state.models) {
                    pod.insert((subject, model.clone()), values);
                }
            }
            ledger.counters += pod.len();
            ledger.pods.insert(uid.to_owned(), pod);
        }
        if let Some(u) = &state.untracked {
            ledger.untracked = [from_i64(u.input), from_i64(u.output)];
        }
        ledger
    }
}

/// The models whose summed series (a pod's series beyond the bounds) some subject left for a
/// counter of its own, room having come back (a new period, pods gone): the pod's summed
/// counter went down, and a subject's counter is new to the pod. What each subject that left
/// spent since is not known on its own, only with the group: the group is counted as one
/// ([`SubjectLedger::credit_regrouped`]) and the subjects' own counters start from their
/// values, rather than each counting its whole value (tokens of past periods) and the summed
/// counter's drop as a reset (counted twice). The summed counter's new value is set (0 when
/// none of its series is left).
fn regroup(pod: &BTreeMap<Key, [u64; 2]>, scraped: &mut BTreeMap<Key, [Option<u64>; 2]>) -> BTreeSet<String> {
    let regrouped: BTreeSet<String> = scraped
        .keys()
        .filter(|key| key.0.is_some() && !pod.contains_key(*key))
        .map(|(_, model)| model)
        .filter(|model| {
            let summed = (None, (*model).clone());
            pod.get(&summed).is_some_and(|last| {
                let now = scraped.get(&summed).copied().unwrap_or_default();
                now.iter().zip(last).any(|(now, last)| now.unwrap_or(0) < *last)
            })
        })
        .cloned()
        .collect();
    for model in &regrouped {
        for value in scraped.entry((None, model.clone())).or_default() {
            value.get_or_insert(0);
        }
    }
    regrouped
}

/// The entry of `list` at the index `field` names.
fn index<'l>(field: Option<&str>, list: &'l [String]) -> Option<&'l String> {
    list.get(field?.parse::<usize>().ok()?)
}

/// `<model>:<input>:<output>`, the model an index into `models`.
fn counter<'m>(field: &str, models: &'m [String]) -> Option<(&'m String, [u64; 2])> {
    let mut parts = field.split(':');
    let model = index(parts.next(), models)?;
    let input: i64 = parts.next()?.parse().ok()?;
    let output: i64 = parts.next()?.parse().ok()?;
    parts
        .next()
        .is_none()
        .then_some((model, [from_i64(input), from_i64(output)]))
}

/// One subject's tokens (of `token_types`; `None`: all) and cost over its models.
fn spent(
    per_model: &BTreeMap<String, [u64; 2]>,
    prices: &PriceTable,
    priced: bool,
    token_types: Option<&[TokenType]>,
) -> (u64, Option<Decimal>) {
    let counts = |t: TokenType| token_types.is_none_or(|types| types.contains(&t));
    let mut tokens = 0u64;
    let mut cost = priced.then_some(Decimal::ZERO);
    for (model, [input, output]) in per_model {
        tokens = add(tokens, if counts(TokenType::Input) { *input } else { 0 });
        tokens = add(tokens, if counts(TokenType::Output) { *output } else { 0 });
        if let (Some(sum), Some(c)) = (cost.as_mut(), prices.cost(model, *input, *output)) {
            *sum += c;
        }
    }
    (tokens, cost)
}

/// `status.subjects[]` of one label: how many subjects, the largest, the exhausted ones.
pub fn usage(
    ledger: &SubjectLedger,
    limit: &SubjectLimit,
    prices: &PriceTable,
    priced: bool,
    token_types: Option<&[TokenType]>,
) -> SubjectsUsage {
    let mut all: Vec<(SubjectStanding, Option<Decimal>)> = ledger
        .subjects()
        .filter_map(|(subject, per_model)| {
            let (tokens, cost) = spent(per_model, prices, priced, token_types);
            standing_of(limit, subject, tokens, cost, true).ok().map(|s| (s, cost))
        })
        .collect();
    // Largest first: by cost, then tokens, then by value.
    all.sort_by(|(a, _), (b, _)| {
        (Reverse(a.cost), Reverse(a.tokens), &a.value).cmp(&(Reverse(b.cost), Reverse(b.tokens), &b.value))
    });
    let exhausted: Vec<&SubjectStanding> = all.iter().map(|(s, _)| s).filter(|s| s.exhausted).collect();
    let [input, output] = ledger.untracked();
    let counts = |t: TokenType| token_types.is_none_or(|types| types.contains(&t));
    let untracked = add(
        if counts(TokenType::Input) { input } else { 0 },
        if counts(TokenType::Output) { output } else { 0 },
    );
    SubjectsUsage {
        label: limit.label.clone(),
        count: to_i64(all.len() as u64),
        exhausted_count: to_i64(exhausted.len() as u64),
        top: all
            .iter()
            .take(SUBJECTS_TOP)
            .map(|(s, cost)| SubjectUsage {
                value: s.value.clone(),
                tokens: to_i64(s.tokens),
                cost: cost.map(format_money),
                exhausted: s.exhausted,
            })
            .collect(),
        other_tokens: to_i64(all.iter().skip(SUBJECTS_TOP).map(|(s, _)| s.tokens).fold(0, add)),
        exhausted: exhausted
            .iter()
            .take(SUBJECTS_EXHAUSTED_LISTED)
            .map(|s| s.value.clone())
            .collect(),
        untracked_tokens: to_i64(untracked),
    }
}

/// Where one subject stands in the budget's current period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectStanding {
    /// The label (`spec.subjects[].label`).
    pub label: String,
    /// The subject: the label's value.
    pub value: String,
    /// Tokens of the budget's `tokenTypes` it spent in the period.
    pub tokens: u64,
    /// What they cost at the budget's prices; `None` without pricing.
    pub cost: Option<Decimal>,
    /// Tokens left before its token limit; `None` without one.
    pub remaining_tokens: Option<u64>,
    /// Money left before its cost limit; `None` without one.
    pub remaining_cost: Option<Decimal>,
    /// It has reached one of its limits.
    pub exhausted: bool,
    /// It is counted one by one. `false`: past the most subjects counted one by one, its
    /// usage is not known on its own (it counts toward the budget only); then `tokens` is 0
    /// and `exhausted` false.
    pub tracked: bool,
}

/// Why [`standing`] has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StandingError {
    #[error("the budget has no limit per {0:?} (spec.subjects)")]
    NoSuchLabel(String),
    #[error("the budget's pricing or limits are invalid: {0}")]
    Invalid(String),
}

/// Where the subject `value` of `label` stands, from the budget's last written status. A
/// subject that has not spent anything in the period (or whose spending was not counted yet)
/// stands at zero.
pub fn standing(budget: &TokenBudget, label: &str, value: &str) -> Result<SubjectStanding, StandingError> {
    let limit = budget
        .spec
        .subjects
        .iter()
        .find(|s| s.label == label)
        .ok_or_else(|| StandingError::NoSuchLabel(label.to_owned()))?;
    let prices = PriceTable::new(&budget.spec.pricing).map_err(|e| StandingError::Invalid(e.to_string()))?;
    let state = budget
        .status
        .as_ref()
        .and_then(|s| s.accounting.as_ref())
        .and_then(|a| a.subjects.iter().find(|s| s.label == label));
    let (per_model, tracked) = match state {
        Some(state) => state.totals_of(value),
        None => (BTreeMap::new(), true),
    };
    let priced = !budget.spec.pricing.is_empty();
    let (tokens, cost) = spent(&per_model, &prices, priced, budget.spec.token_types.as_deref());
    standing_of(limit, value, tokens, cost, tracked)
}

/// A subject's standing from its usage and its limit.
fn standing_of(
    limit: &SubjectLimit,
    value: &str,
    tokens: u64,
    cost: Option<Decimal>,
    tracked: bool,
) -> Result<SubjectStanding, StandingError> {
    let limit_tokens = limit.limits.tokens.map(|t| u64::try_from(t).unwrap_or(0));
    let limit_cost = match &limit.limits.cost {
        Some(c) => Some(parse_money(c).map_err(|e| StandingError::Invalid(e.to_string()))?),
        None => None,
    };
    let used_cost = cost.unwrap_or(Decimal::ZERO);
    let remaining_tokens = limit_tokens.map(|l| l.saturating_sub(tokens));
    let remaining_cost = limit_cost.map(|l| (l - used_cost).max(Decimal::ZERO));
    let exhausted =
        tracked && (limit_tokens.is_some_and(|l| tokens >= l) || limit_cost.is_some_and(|l| used_cost >= l));
    Ok(SubjectStanding {
        label: limit.label.clone(),
        value: value.to_owned(),
        tokens,
        cost,
        remaining_tokens,
        remaining_cost,
        exhausted,
        tracked,
    })
}

impl SubjectAccounting {
    /// The period's totals of subject `value`, per model ([input, output]), and whether the
    /// subject is counted one by one: it is, or it will be when it spends (there is room for
    /// it). Reads only its own line of `totals`.
    pub fn totals_of(&self, value: &str) -> (BTreeMap<String, [u64; 2]>, bool) {
        let mut per_model = BTreeMap::new();
        let Some(index) = self.values.iter().position(|v| v == value) else {
            return (per_model, self.totals.len() < MAX_SUBJECTS);
        };
        let prefix = index.to_string();
        let Some(line) = self
            .totals
            .iter()
            .find(|l| l.split(' ').next() == Some(prefix.as_str()))
        else {
            // Known from a pod's counters only: it has not spent in this period.
            return (per_model, self.totals.len() < MAX_SUBJECTS);
        };
        for field in line.split(' ').skip(1) {
            if let Some((model, values)) = counter(field, &self.models) {
                per_model.insert(model.clone(), values);
            }
        }
        (per_model, true)
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use proptest::prelude::*;

    use super::*;
    use crate::api::{BudgetLimits, MetricsFormat, ModelPrice, WorkloadKind};
    use crate::usage::Extractor;
    use crate::usage::ledger::{Ledger, PodObservation};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// A LiteLLM exposition of (end user, model, input, output) series, parsed the way the
    /// operator parses one.
    fn usage(series: &[(&str, &str, u64, u64)]) -> crate::usage::Usage {
        let mut body = String::new();
        for (user, model, input, output) in series {
            body.push_str(&format!(
                "litellm_input_tokens_metric_total{{end_user=\"{user}\",model=\"{model}\"}} {input}\n\
                 litellm_output_tokens_metric_total{{end_user=\"{user}\",model=\"{model}\"}} {output}\n"
            ));
        }
        Extractor::new(MetricsFormat::LiteLlm, &[])
            .with_subjects(&["end_user"])
            .extract(body.as_bytes())
            .unwrap()
    }

    fn pod(uid: &str, restarts: u64) -> PodObservation<'_> {
        PodObservation {
            uid,
            name: uid,
            binding: "b",
            workload: (WorkloadKind::Deployment, "agent"),
            restarts,
            started_at: Some(ts("2026-11-02T00:00:00Z")),
            bound_since: ts("2026-10-15T00:00:00Z"),
            container_started: None,
            scraped_at: ts("2026-11-10T00:00:00Z"),
        }
    }

    fn ledger() -> Ledger {
        let mut l = Ledger::new(ts("2026-11-01T00:00:00Z"));
        l.set_subject_labels(["end_user"]);
        l
    }

    /// Each subject's tokens (all types), and the untracked ones.
    fn tokens(l: &Ledger) -> (Vec<(String, u64)>, u64) {
        let s = l.subjects("end_user").expect("kept");
        let subjects = s
            .subjects()
            .map(|(v, m)| (v.to_owned(), m.values().map(|[i, o]| i + o).sum()))
            .collect();
        let [i, o] = s.untracked();
        (subjects, i + o)
    }

    fn owned(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(s, t)| ((*s).to_owned(), *t)).collect()
    }

    #[test]
    fn each_subject_counts_its_increases_once() {
        let mut l = ledger();
        // A new pod started in the period counts its whole counters.
        l.observe(&pod("p1", 0), &usage(&[("alice", "m", 100, 10), ("bob", "m", 5, 0)]));
        assert_eq!(tokens(&l), (owned(&[("alice", 110), ("bob", 5)]), 0));
        // Increases only; a subject that appears counts its whole value; one that is absent
        // keeps its last value (it does not count again when it comes back).
        l.observe(&pod("p1", 0), &usage(&[("alice", "m", 150, 10), ("carol", "m", 7, 3)]));
        assert_eq!(tokens(&l), (owned(&[("alice", 160), ("bob", 5), ("carol", 10)]), 0));
        l.observe(
            &pod("p1", 0),
            &usage(&[("alice", "m", 150, 10), ("bob", "m", 6, 0), ("carol", "m", 7, 3)]),
        );
        assert_eq!(tokens(&l), (owned(&[("alice", 160), ("bob", 6), ("carol", 10)]), 0));
        // A series that went down was reset: it counts from zero.
        l.observe(&pod("p1", 0), &usage(&[("alice", "m", 20, 10), ("bob", "m", 6, 0)]));
        assert_eq!(tokens(&l), (owned(&[("alice", 180), ("bob", 6), ("carol", 10)]), 0));
        // A restarted pod: every series counts from zero.
        l.observe(&pod("p1", 1), &usage(&[("alice", "m", 4, 1)]));
        assert_eq!(tokens(&l), (owned(&[("alice", 185), ("bob", 6), ("carol", 10)]), 0));
        // A second pod of the same subject adds to it.
        l.observe(&pod("p2", 0), &usage(&[("alice", "m2", 1, 1)]));
        assert_eq!(tokens(&l).0[0], ("alice".to_owned(), 187));
    }

    #[test]
    fn a_baseline_pod_and_a_new_label_count_nothing_at_first() {
        let mut l = ledger();
        let mut old = pod("old", 0);
        old.started_at = Some(ts("2026-10-01T00:00:00Z"));
        l.observe(&old, &usage(&[("alice", "m", 100, 0)]));
        assert_eq!(tokens(&l), (vec![], 0));
        l.observe(&old, &usage(&[("alice", "m", 130, 0)]));
        assert_eq!(tokens(&l), (owned(&[("alice", 30)]), 0));

        // A label added to a budget whose ledger already knows the pod: its first scrape is
        // the baseline of the label's series.
        let mut l = Ledger::new(ts("2026-11-01T00:00:00Z"));
        l.observe(&pod("p", 0), &usage(&[("alice", "m", 100, 0)]));
        l.set_subject_labels(["end_user"]);
        l.observe(&pod("p", 0), &usage(&[("alice", "m", 120, 0)]));
        assert_eq!(tokens(&l), (vec![], 0));
        l.observe(&pod("p", 0), &usage(&[("alice", "m", 125, 0)]));
        assert_eq!(tokens(&l), (owned(&[("alice", 5)]), 0));
        // Removing the label forgets it.
        l.set_subject_labels([]);
        assert!(l.subjects("end_user").is_none());
        assert!(l.to_state().subjects.is_empty());
    }

    #[test]
    fn the_status_round_trip_continues_exactly() {
        let mut l = ledger();
        l.observe(&pod("p1", 0), &usage(&[("alice", "m", 100, 10), ("bob", "m2", 5, 0)]));
        l.observe(&pod("p2", 0), &usage(&[("al ice:/", "m", 3, 0)]));
        let state = l.to_state();
        let mut again = Ledger::from_state(Some(&state));
        assert_eq!(again, l);
        assert_eq!(again.to_state(), state);
        again.observe(&pod("p1", 0), &usage(&[("alice", "m", 101, 10), ("bob", "m2", 5, 0)]));
        assert_eq!(
            tokens(&again),
            (owned(&[("al ice:/", 3), ("alice", 111), ("bob", 5)]), 0)
        );
        // A hand-edited line that cannot be read is left out, never a panic.
        let mut bad = state.clone();
        bad.subjects[0].totals.push("x 9:1:1 0:-5:a".into());
        bad.subjects[0].pods.push("uid 7/0:1:1 -/99:1:1 nonsense".into());
        let read = Ledger::from_state(Some(&bad));
        assert_eq!(tokens(&read), tokens(&l));
    }

    #[test]
    fn a_new_period_keeps_the_baselines() {
        let mut l = ledger();
        l.observe(&pod("p", 0), &usage(&[("alice", "m", 100, 0)]));
        l.reset(ts("2026-12-01T00:00:00Z"));
        assert_eq!(tokens(&l), (vec![], 0));
        l.observe(&pod("p", 0), &usage(&[("alice", "m", 140, 0)]));
        assert_eq!(tokens(&l), (owned(&[("alice", 40)]), 0));
        // A deleted pod is forgotten, its tokens stay.
        l.forget("p");
        assert_eq!(l.subjects("end_user").unwrap().pod_uids().count(), 0);
        assert_eq!(tokens(&l), (owned(&[("alice", 40)]), 0));
    }

    #[test]
    fn past_the_bounds_subjects_are_summed_as_untracked() {
        let mut l = ledger();
        let many: Vec<(String, u64)> = (0..MAX_SUBJECTS + 10).map(|i| (format!("u{i:05}"), 1)).collect();
        let series: Vec<(&str, &str, u64, u64)> = many.iter().map(|(u, t)| (u.as_str(), "m", *t, 0)).collect();
        l.observe(&pod("p", 0), &usage(&series));
        let (subjects, untracked) = tokens(&l);
        assert_eq!(subjects.len(), MAX_SUBJECTS);
        assert_eq!(untracked, 10);
        assert_eq!(
            subjects.iter().map(|s| s.1).sum::<u64>() + untracked,
            l.used_tokens(None)
        );
        // The untracked ones keep counting their increases, once.
        let series: Vec<(&str, &str, u64, u64)> = many.iter().map(|(u, _)| (u.as_str(), "m", 3, 0)).collect();
        l.observe(&pod("p", 0), &usage(&series));
        let (subjects, untracked) = tokens(&l);
        assert_eq!(untracked, 30);
        assert_eq!(
            subjects.iter().map(|s| s.1).sum::<u64>() + untracked,
            l.used_tokens(None)
        );
        // A subject not counted one by one is not known to be tracked.
        let state = l.to_state();
        assert!(state.subjects[0].totals_of("u00009").1);
        assert!(!state.subjects[0].totals_of("u99999").1);
    }

    /// A subject summed into its pod's untracked counter in one period finds room of its own
    /// in the next (the totals start empty): its series leaves the pod's summed counter, which
    /// goes down, and gets a counter of its own, new to the pod. Counted as a new series, its
    /// whole lifetime value lands in the new period (an end user exhausted at the first scrape
    /// of the day), and the summed counter's drop counts as a reset: tokens counted twice.
    #[test]
    fn a_subject_that_finds_room_again_does_not_bring_its_past_tokens() {
        let mut l = ledger();
        // "a-late" comes after the first MAX_SUBJECTS others, but sorts before them.
        let mut many: Vec<(String, u64)> = (0..MAX_SUBJECTS).map(|i| (format!("u{i:05}"), 1)).collect();
        l.observe(
            &pod("p", 0),
            &usage(&many.iter().map(|(u, t)| (u.as_str(), "m", *t, 0)).collect::<Vec<_>>()),
        );
        many.push(("a-late".into(), 5000));
        many.push(("z-late".into(), 7000));
        l.observe(
            &pod("p", 0),
            &usage(&many.iter().map(|(u, t)| (u.as_str(), "m", *t, 0)).collect::<Vec<_>>()),
        );
        assert_eq!(tokens(&l).1, 12_000);
        l.reset(ts("2026-12-01T00:00:00Z"));
        // Each spends one more token.
        for (_, t) in &mut many {
            *t += 1;
        }
        l.observe(
            &pod("p", 0),
            &usage(&many.iter().map(|(u, t)| (u.as_str(), "m", *t, 0)).collect::<Vec<_>>()),
        );
        let (subjects, untracked) = tokens(&l);
        let late = subjects.iter().find(|(s, _)| s == "a-late").map_or(0, |(_, t)| *t);
        assert!(late <= 1, "a-late brought {late} tokens of past periods");
        assert_eq!(
            subjects.iter().map(|s| s.1).sum::<u64>() + untracked,
            l.used_tokens(None),
            "{untracked} untracked"
        );
        assert_eq!(l.used_tokens(None), MAX_SUBJECTS as u64 + 2);
        // And the next scrape counts each subject's increase once.
        for (_, t) in &mut many {
            *t += 1;
        }
        l.observe(
            &pod("p", 0),
            &usage(&many.iter().map(|(u, t)| (u.as_str(), "m", *t, 0)).collect::<Vec<_>>()),
        );
        let (subjects, untracked) = tokens(&l);
        assert_eq!(
            subjects.iter().map(|s| s.1).sum::<u64>() + untracked,
            l.used_tokens(None)
        );
    }

    #[test]
    fn the_counters_are_bounded_too() {
        let mut l = ledger();
        // 20 pods of 600 subjects each: past MAX_SUBJECT_COUNTERS counters, a pod's further
        // series are summed into one per model.
        let users: Vec<String> = (0..600).map(|i| format!("u{i}")).collect();
        let uids: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
        for round in 1..=2 {
            for uid in &uids {
                let series: Vec<(&str, &str, u64, u64)> = users.iter().map(|u| (u.as_str(), "m", round, 0)).collect();
                l.observe(&pod(uid, 0), &usage(&series));
            }
        }
        let s = l.subjects("end_user").unwrap();
        assert!(s.counters <= MAX_SUBJECT_COUNTERS + 20, "{}", s.counters);
        let (subjects, untracked) = tokens(&l);
        assert!(untracked > 0);
        assert_eq!(
            subjects.iter().map(|s| s.1).sum::<u64>() + untracked,
            l.used_tokens(None)
        );
        assert_eq!(l.used_tokens(None), 20 * 600 * 2);
    }

    fn limit(tokens: Option<i64>, cost: Option<&str>) -> SubjectLimit {
        SubjectLimit {
            label: "end_user".into(),
            limits: BudgetLimits {
                tokens,
                cost: cost.map(Into::into),
            },
        }
    }

    #[test]
    fn status_lists_the_largest_and_the_exhausted() {
        let mut l = ledger();
        let users: Vec<(String, u64)> = (0..30).map(|i| (format!("u{i:02}"), 10 * i)).collect();
        let series: Vec<(&str, &str, u64, u64)> = users.iter().map(|(u, t)| (u.as_str(), "m", *t, 0)).collect();
        l.observe(&pod("p", 0), &usage(&series));
        let prices = PriceTable::new(&[]).unwrap();
        let status = usage_of(&l, &limit(Some(250), None), &prices);
        // u00 spent nothing: it is no subject of the period.
        assert_eq!(status.count, 29);
        // u25 .. u29 spent 250 .. 290.
        assert_eq!(status.exhausted_count, 5);
        assert_eq!(status.exhausted, ["u29", "u28", "u27", "u26", "u25"]);
        assert_eq!(status.top.len(), SUBJECTS_TOP);
        assert_eq!(
            (
                status.top[0].value.as_str(),
                status.top[0].tokens,
                status.top[0].exhausted
            ),
            ("u29", 290, true)
        );
        assert_eq!((status.top[9].value.as_str(), status.top[9].exhausted), ("u20", false));
        // u01 .. u19 spent 10 .. 190: the rest, summed.
        assert_eq!(status.other_tokens, (1..20).map(|i| 10 * i).sum::<i64>());
        assert_eq!(status.untracked_tokens, 0);
    }

    fn usage_of(l: &Ledger, limit: &SubjectLimit, prices: &PriceTable) -> SubjectsUsage {
        super::usage(
            l.subjects("end_user").unwrap(),
            limit,
            prices,
            !prices.entries().is_empty(),
            None,
        )
    }

    #[test]
    fn a_cost_limit_per_subject() {
        let mut l = ledger();
        l.observe(
            &pod("p", 0),
            &usage(&[
                ("alice", "gpt-4o", 1_000_000, 100_000),
                ("bob", "gpt-4o-mini", 1_000_000, 0),
            ]),
        );
        let pricing = [ModelPrice {
            model: "gpt-4o".into(),
            input: "2.50".into(),
            output: "10".into(),
        }];
        let prices = PriceTable::new(&pricing).unwrap();
        let status = usage_of(&l, &limit(None, Some("3.00")), &prices);
        // alice: 2.50 + 1.00 = 3.50 >= 3.00; bob's model has no price: 0.
        assert_eq!(status.exhausted, ["alice"]);
        assert_eq!(status.top[0].cost.as_deref(), Some("3.50"));
        assert_eq!(status.top[1].cost.as_deref(), Some("0.00"));

        // The same from a budget's status, as an agent asks.
        let mut budget = TokenBudget::new("b", serde_yaml::from_str("limits: {tokens: 100000000}").unwrap());
        budget.spec.pricing = pricing.to_vec();
        budget.spec.subjects = vec![limit(Some(5_000_000), Some("3.00"))];
        budget.status = Some(crate::api::TokenBudgetStatus {
            accounting: Some(l.to_state()),
            ..Default::default()
        });
        let alice = standing(&budget, "end_user", "alice").unwrap();
        assert_eq!((alice.tokens, alice.exhausted, alice.tracked), (1_100_000, true, true));
        assert_eq!(alice.remaining_cost, Some(Decimal::ZERO));
        assert_eq!(alice.remaining_tokens, Some(3_900_000));
        let bob = standing(&budget, "end_user", "bob").unwrap();
        assert_eq!(
            (bob.tokens, bob.exhausted, bob.cost),
            (1_000_000, false, Some(Decimal::ZERO))
        );
        let nobody = standing(&budget, "end_user", "nobody").unwrap();
        assert_eq!((nobody.tokens, nobody.exhausted, nobody.tracked), (0, false, true));
        assert_eq!(
            standing(&budget, "team", "x"),
            Err(StandingError::NoSuchLabel("team".into()))
        );
    }

    proptest! {
        /// With every series carrying a subject, counters that only grow (or restart with the
        /// pod), and no bound reached, the subjects add up to the budget's total exactly,
        /// across status round trips.
        #[test]
        fn subjects_add_up_to_the_budget(
            steps in proptest::collection::vec((0usize..3, 0usize..4, 0u64..50, any::<bool>(), any::<bool>()), 1..60),
        ) {
            let mut l = ledger();
            let users = ["a", "b", "c", "d"];
            // Per pod: restarts and the counters of each user.
            let mut pods = [(0u64, [0u64; 4]); 3];
            for (p, u, add, restart, round_trip) in steps {
                let uid = format!("p{p}");
                if restart {
                    pods[p].0 += 1;
                    pods[p].1 = [0; 4];
                }
                pods[p].1[u] += add;
                let series: Vec<(&str, &str, u64, u64)> = users
                    .iter()
                    .zip(pods[p].1)
                    .filter(|(_, v)| *v > 0)
                    .map(|(user, v)| (*user, "m", v, 0))
                    .collect();
                l.observe(&pod(&uid, pods[p].0), &usage(&series));
                if round_trip {
                    l = Ledger::from_state(Some(&l.to_state()));
                }
                let (subjects, untracked) = tokens(&l);
                prop_assert_eq!(untracked, 0);
                prop_assert_eq!(subjects.iter().map(|s| s.1).sum::<u64>(), l.used_tokens(None));
            }
        }
    }
}
