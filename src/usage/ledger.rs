//! The accounting core: turns successive scrapes of raw token counters into the usage of a
//! budget's period, following the "Accounting rules" of the API. Pure: no Kubernetes client and
//! no clock; times are arguments.
//!
//! A [`Ledger`] holds, per pod (keyed by uid), the counter values of its last successful scrape
//! and the sum of its container restart counts, and the running totals of the period per model,
//! workload and binding. It is persisted as [`AccountingState`] in the budget's status, in the
//! same status write as `used` (rule 4), so a restarted operator continues exactly there.
//!
//! - [`Ledger::observe`] one successful scrape of one pod: counts the increase of every
//!   (model, token type) series since the last successful scrape (rule 1); a series that went
//!   down, or every series of a pod whose restart count went up, counts from zero (rule 2); a
//!   pod seen for the first time counts its whole counters only if it started inside the period
//!   and after its binding was created, else its values are the baseline (rule 3). Pods are keyed
//!   by uid, so two bindings scraping one pod count it once.
//! - [`Ledger::forget`] a deleted pod, after its final scrape (rule 5).
//! - [`Ledger::reset`] at the period boundary (rule 6).
//!
//! A series whose value is 0 is the same as an absent one (both count their whole value when
//! they show up), so zeros are never stored: that keeps the status small.
//!
//! Counter values are `u64` (at most [`MAX_SERIES_VALUE`](super::MAX_SERIES_VALUE) from the
//! parser), the API stores `i64`: every stored value and total saturates at `i64::MAX`, so
//! nothing panics and a round trip through the status is exact.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

use super::Usage;
use super::subjects::{Seen, SubjectLedger};
use crate::api::{
    AccountingState, BindingTokens, BoundBinding, BoundWorkload, ModelTokens, PodGroup, PodWorkload, TokenType,
    WorkloadKind, WorkloadTokens,
};

/// The largest value the ledger stores: what fits the API's `i64`.
pub(super) const CAP: u64 = i64::MAX as u64;

/// At most this many model names in a budget's ledger (in a period, and among the pods'
/// last-seen counters): a pod names its models, and must not grow the status without bound.
pub const MAX_MODELS: usize = 100;
/// The longest model name kept, in bytes.
pub const MAX_MODEL_NAME_BYTES: usize = 128;
/// What the models beyond [`MAX_MODELS`], and names longer than [`MAX_MODEL_NAME_BYTES`], are
/// counted as: their tokens count, under this name.
pub const OTHER_MODELS: &str = "(other)";
/// At most this many workloads, and this many bindings, have totals of their own in a budget's
/// period (with `reset: Never`, the budget's whole life); the tokens of further ones count
/// under the name [`OTHER_MODELS`] (per kind, for workloads).
pub const MAX_TOTALS: usize = 1000;
/// At most this many (workload, model) totals in a budget's period (1,000 workloads of 5
/// models each, or 100 of 50): what bounds the workloads' `models` in the status. A workload
/// that would need more keeps counting its tokens, but its cost is unknown for the period.
pub const MAX_WORKLOAD_MODELS: usize = 5000;

/// One successful scrape's view of a pod: who it is and what the pod status said at the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodObservation<'a> {
    /// `metadata.uid`: the identity of the pod across bindings and operator restarts.
    pub uid: &'a str,
    /// `metadata.name`, for status and Events.
    pub name: &'a str,
    /// The binding that scraped it. The first binding that counts a pod stays its owner.
    pub binding: &'a str,
    /// The workload the pod belongs to.
    pub workload: (WorkloadKind, &'a str),
    /// The `restartCount` of the pod's metrics container (of all its containers together when
    /// that is not known).
    pub restarts: u64,
    /// `status.startTime`; `None` (not started yet) makes a new pod a baseline only.
    pub started_at: Option<Timestamp>,
    /// Since when the pod's workload has been bound to the budget (see [`Bound`]).
    pub bound_since: Timestamp,
    /// When that container started (`state.running.startedAt`), if known: tells a restart
    /// that an earlier scrape already saw (reported late by the kubelet) from one that came
    /// after it.
    pub container_started: Option<Timestamp>,
    /// When the scrape's answer was in (no earlier than the moment the pod answered).
    pub scraped_at: Timestamp,
}

/// What the ledger knows of one pod. Equality is over what is persisted (not `last_scraped`).
#[derive(Debug, Clone)]
struct PodEntry {
    /// The owner: the binding that first counted the pod.
    binding: String,
    workload: (WorkloadKind, String),
    /// The largest restart count seen at a successful scrape.
    restarts: u64,
    /// Model -> last-seen [input, output]; 0 means absent, and a model with [0, 0] is removed.
    counters: BTreeMap<String, [u64; 2]>,
    /// When its last successful scrape's answer was in (in memory only: after an operator
    /// restart a reported restart always counts from zero).
    last_scraped: Option<Timestamp>,
}

impl PartialEq for PodEntry {
    fn eq(&self, other: &Self) -> bool {
        (&self.binding, &self.workload, self.restarts, &self.counters)
            == (&other.binding, &other.workload, other.restarts, &other.counters)
    }
}

impl Eq for PodEntry {}

/// The accounting state of one budget: last-seen counters per pod and the period's totals.
/// Equality is over what is persisted.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// The period the totals belong to; `None` until [`Ledger::reset`] names one.
    period_start: Option<Timestamp>,
    pods: BTreeMap<String, PodEntry>,
    /// Model -> [input, output].
    models: BTreeMap<String, [u64; 2]>,
    workloads: BTreeMap<(WorkloadKind, String), WorkloadTotals>,
    /// How many (workload, model) totals `workloads` hold, at most [`MAX_WORKLOAD_MODELS`]
    /// (more only from a status written by hand). Derived, never persisted on its own.
    workload_models: usize,
    bindings: BTreeMap<String, u64>,
    /// Since when each binding charges the budget and binds each of its workloads. Not part of
    /// a period: it outlives resets.
    bound: Bound,
    /// The model names the ledger keeps (at most [`MAX_MODELS`]): those of the period's totals
    /// and of the pods' counters. Derived from them, never persisted on its own.
    admitted: BTreeSet<String>,
    /// What [`Ledger::observe`] counted since the last [`Ledger::take_counted`], whatever the
    /// period: the increases themselves, for the operator's monotonic counters. In memory
    /// only, never persisted, and not part of equality.
    counted: Counted,
    /// The bookkeeping per subject label (`spec.subjects`), by label.
    subjects: BTreeMap<String, SubjectLedger>,
}

/// Tokens counted, per (workload, model): [input, output]. The workload and model are those
/// the totals use (beyond [`MAX_TOTALS`] workloads or [`MAX_MODELS`] models, `(other)`), so
/// that it is bounded as the totals are.
pub type Counted = BTreeMap<(WorkloadKind, String, String), [u64; 2]>;

impl PartialEq for Ledger {
    fn eq(&self, other: &Self) -> bool {
        (
            self.period_start,
            &self.pods,
            &self.models,
            &self.workloads,
            &self.bindings,
            &self.bound,
            &self.subjects,
        ) == (
            other.period_start,
            &other.pods,
            &other.models,
            &other.workloads,
            &other.bindings,
            &other.bound,
            &other.subjects,
        )
    }
}

impl Eq for Ledger {}

/// One workload's tokens in the period: all of them, and per model and type, which is what
/// prices apply to (its cost is exact only from these).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct WorkloadTotals {
    /// All models and types.
    tokens: u64,
    /// Model -> [input, output]. Their sum falls short of `tokens` only in a period resumed
    /// from a status written before they were kept: what was counted before is not known by
    /// model.
    models: BTreeMap<String, [u64; 2]>,
}

impl WorkloadTotals {
    /// Whether `models` hold all of `tokens`.
    fn complete(&self) -> bool {
        self.models.values().flatten().copied().fold(0, add) >= self.tokens
    }
}

/// Since when each binding (by name) charges the budget, and binds each of its workloads.
pub type Bound = BTreeMap<String, BoundBy>;

/// What one binding binds to the budget, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundBy {
    /// Since when the binding charges the budget.
    pub since: Timestamp,
    /// (kind, name) -> since when the workload is bound through it.
    pub workloads: BTreeMap<(WorkloadKind, String), Timestamp>,
}

impl Ledger {
    /// An empty ledger for the period starting at `period_start`.
    pub fn new(period_start: Timestamp) -> Self {
        Ledger {
            period_start: Some(period_start),
            ..Ledger::default()
        }
    }

    /// The ledger as the status last persisted it. `None` (a new budget) gives an empty ledger
    /// without a period: call [`Ledger::ensure_period`] (or [`Ledger::reset`]) before
    /// [`Ledger::observe`], or every pod is only a baseline. Negative numbers (a hand-edited
    /// status) read as 0, an unreadable `periodStart` as no period.
    pub fn from_state(state: Option<&AccountingState>) -> Self {
        let Some(state) = state else {
            return Ledger::default();
        };
        let mut ledger = Ledger {
            period_start: state.period_start.parse().ok(),
            ..Ledger::default()
        };
        for pod in state.pod_ledgers() {
            let mut counters = BTreeMap::new();
            for c in &pod.counters {
                let value = from_i64(c.value);
                if value > 0 {
                    let values: &mut [u64; 2] = counters.entry(c.model.clone()).or_default();
                    values[slot(c.token_type)] = value;
                }
            }
            let entry = PodEntry {
                binding: pod.binding.clone(),
                workload: (pod.workload.kind, pod.workload.name.clone()),
                restarts: from_i64(pod.restarts),
                counters,
                last_scraped: None,
            };
            ledger.pods.insert(pod.uid.clone(), entry);
        }
        for m in &state.models {
            ledger
                .models
                .insert(m.model.clone(), [from_i64(m.input), from_i64(m.output)]);
        }
        for w in &state.workloads {
            let models = decode_workload_models(&w.models, &state.models);
            let tokens = from_i64(w.tokens);
            ledger.workload_models += models.len();
            ledger
                .workloads
                .insert((w.kind, w.name.clone()), WorkloadTotals { tokens, models });
        }
        for b in &state.bindings {
            ledger.bindings.insert(b.name.clone(), from_i64(b.tokens));
        }
        for b in &state.bound {
            let Ok(since) = b.since.parse() else { continue };
            let workloads = b
                .workloads
                .iter()
                .filter_map(|w| Some(((w.kind, w.name.clone()), w.since.parse().ok()?)))
                .collect();
            ledger.bound.insert(b.binding.clone(), BoundBy { since, workloads });
        }
        for s in &state.subjects {
            ledger.subjects.insert(s.label.clone(), SubjectLedger::from_state(s));
        }
        ledger.admit_known();
        ledger
    }

    /// Makes the admitted models those the totals and the pods' counters name (a status written
    /// by hand may name more than [`MAX_MODELS`]: all are kept, and no new one is admitted).
    fn admit_known(&mut self) {
        self.admitted = self
            .models
            .keys()
            .chain(self.pods.values().flat_map(|pod| pod.counters.keys()))
            .cloned()
            .collect();
    }

    /// The name a scraped model is kept under: its own if it is admitted already, or if it is
    /// short enough and there is room for it; [`OTHER_MODELS`] otherwise.
    fn model_key<'m>(&mut self, model: &'m str) -> &'m str {
        if self.admitted.contains(model) {
            return model;
        }
        let named = self.admitted.len() - usize::from(self.admitted.contains(OTHER_MODELS));
        // Room for the named ones and one more: OTHER_MODELS.
        if model.len() > MAX_MODEL_NAME_BYTES || named + 1 >= MAX_MODELS {
            self.admitted.insert(OTHER_MODELS.to_string());
            return OTHER_MODELS;
        }
        self.admitted.insert(model.to_string());
        model
    }

    /// The scraped series by the model names the ledger keeps them under: the series of the
    /// models counted as [`OTHER_MODELS`] are summed (each type that none reports stays `None`).
    fn reported<'u>(&mut self, usage: &'u Usage) -> BTreeMap<&'u str, [Option<u64>; 2]> {
        let mut reported: BTreeMap<&str, [Option<u64>; 2]> = BTreeMap::new();
        for (model, token_type, value) in usage.iter() {
            if value == 0 && !self.admitted.contains(model) {
                // The same as no series: it takes no room.
                continue;
            }
            let values = reported.entry(self.model_key(model)).or_default();
            let value = value.min(CAP);
            let slot = &mut values[slot(token_type)];
            *slot = Some(slot.map_or(value, |sum| add(sum, value)));
        }
        reported
    }

    /// The scraped series of each subject label the ledger keeps, by the model names the
    /// ledger keeps them under.
    #[allow(clippy::type_complexity)]
    fn subject_series<'u>(
        &mut self,
        usage: &'u Usage,
    ) -> Vec<(&'u str, Vec<(Option<&'u str>, &'u str, TokenType, u64)>)> {
        let mut all = Vec::new();
        for label in usage.subject_labels() {
            if !self.subjects.contains_key(label) {
                continue;
            }
            let Some(series) = usage.subjects(label) else { continue };
            let mut kept = Vec::new();
            for (subject, model, token_type, value) in series {
                // A zero of a model not admitted is the same as no series (as in `reported`).
                if value > 0 || self.admitted.contains(model) {
                    kept.push((subject, self.model_key(model), token_type, value));
                }
            }
            all.push((label, kept));
        }
        all
    }

    /// Keeps the subjects of exactly these labels (`spec.subjects`): a label no longer there
    /// is forgotten, a new one starts empty (each pod's next scrape is its baseline).
    pub fn set_subject_labels<'l>(&mut self, labels: impl IntoIterator<Item = &'l str>) {
        let labels: BTreeSet<&str> = labels.into_iter().collect();
        self.subjects.retain(|label, _| labels.contains(label.as_str()));
        for label in labels {
            if !self.subjects.contains_key(label) {
                self.subjects.insert(label.to_owned(), SubjectLedger::default());
            }
        }
    }

    /// The bookkeeping of a subject label, if the ledger keeps it.
    pub fn subjects(&self, label: &str) -> Option<&SubjectLedger> {
        self.subjects.get(label)
    }

    /// Whether models were counted as [`OTHER_MODELS`] this period.
    pub fn models_capped(&self) -> bool {
        self.models.contains_key(OTHER_MODELS)
    }

    /// The state to persist, in a deterministic order (pods by uid, counters by model then
    /// input before output, models and bindings by name, workloads by kind and name), so that an
    /// unchanged ledger gives an unchanged status.
    pub fn to_state(&self) -> AccountingState {
        let (pod_groups, counter_models) = self.pod_groups();
        // The workloads' models by their index in `models` (by name, as written below).
        let index = |model: &String| self.models.keys().position(|m| m == model);
        AccountingState {
            period_start: self.period_start.map(|t| t.to_string()).unwrap_or_default(),
            pod_groups,
            counter_models,
            pods: Vec::new(),
            models: self
                .models
                .iter()
                .map(|(model, [input, output])| ModelTokens {
                    model: model.clone(),
                    input: to_i64(*input),
                    output: to_i64(*output),
                })
                .collect(),
            workloads: self
                .workloads
                .iter()
                .map(|((kind, name), totals)| WorkloadTokens {
                    kind: *kind,
                    name: name.clone(),
                    tokens: to_i64(totals.tokens),
                    models: encode_workload_models(&totals.models, index),
                })
                .collect(),
            bindings: self
                .bindings
                .iter()
                .map(|(name, tokens)| BindingTokens {
                    name: name.clone(),
                    tokens: to_i64(*tokens),
                })
                .collect(),
            bound: self
                .bound
                .iter()
                .map(|(binding, by)| BoundBinding {
                    binding: binding.clone(),
                    since: by.since.to_string(),
                    workloads: by
                        .workloads
                        .iter()
                        .map(|((kind, name), since)| BoundWorkload {
                            kind: *kind,
                            name: name.clone(),
                            since: since.to_string(),
                        })
                        .collect(),
                })
                .collect(),
            subjects: self
                .subjects
                .iter()
                .map(|(label, ledger)| ledger.to_state(label))
                .collect(),
        }
    }

    /// The pods, grouped by binding and workload, in the compact form of [`PodGroup`], and
    /// the model names they refer to.
    fn pod_groups(&self) -> (Vec<PodGroup>, Vec<String>) {
        let counter_models: Vec<String> = self
            .pods
            .values()
            .flat_map(|pod| pod.counters.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .cloned()
            .collect();
        let index = |model: &String| counter_models.binary_search(model).unwrap_or_default();
        let mut groups: BTreeMap<(&str, WorkloadKind, &str), Vec<String>> = BTreeMap::new();
        for (uid, pod) in &self.pods {
            let counters: Vec<(usize, i64, i64)> = pod
                .counters
                .iter()
                .map(|(model, [input, output])| (index(model), to_i64(*input), to_i64(*output)))
                .collect();
            groups
                .entry((&pod.binding, pod.workload.0, &pod.workload.1))
                .or_default()
                .push(PodGroup::encode(uid, to_i64(pod.restarts), &counters));
        }
        let groups = groups
            .into_iter()
            .map(|((binding, kind, name), pods)| PodGroup {
                binding: binding.to_string(),
                workload: PodWorkload {
                    kind,
                    name: name.to_string(),
                },
                pods,
            })
            .collect();
        (groups, counter_models)
    }

    /// Counts one successful scrape of a pod and returns the tokens (all types) it added.
    ///
    /// - A known pod (same uid): every series counts its increase since the last successful
    ///   scrape; one that went down counts its new value (the counter was reset); one that is new
    ///   counts its whole value. If the pod's restart sum went up, every series counts its whole
    ///   value: the container started again from zero. What a crashed container spent after its
    ///   last successful scrape is lost (at most one interval).
    /// - A series that a scrape lacks keeps its last-seen value, so an exporter that drops a
    ///   series for a while (or a second binding reading other series of the pod) never makes it
    ///   count twice.
    /// - A new pod counts its whole counters if it started inside the current period and not
    ///   before its workload became bound to the budget (`started_at >= max(period_start,
    ///   bound_since)`);
    ///   otherwise, or when either time is unknown, its values are only the baseline.
    /// - The increase is charged to the pod's first binding and workload, whichever binding
    ///   scraped it now: a second binding calling with the same values adds 0.
    pub fn observe(&mut self, pod: &PodObservation<'_>, usage: &Usage) -> u64 {
        let reported = self.reported(usage);
        let subject_series = self.subject_series(usage);
        let series = reported.iter().flat_map(|(model, values)| {
            TokenType::ALL
                .into_iter()
                .filter_map(move |t| Some((*model, t, values[slot(t)]?)))
        });
        let (increases, seen) = match self.pods.get_mut(pod.uid) {
            Some(entry) => count_known(entry, pod, series),
            None => self.count_new(pod, series),
        };
        for (label, series) in subject_series {
            if let Some(ledger) = self.subjects.get_mut(label) {
                ledger.observe(pod.uid, seen, series);
            }
        }
        if increases.is_empty() {
            return 0;
        }
        let entry = &self.pods[pod.uid];
        let (workload, binding) = (entry.workload.clone(), entry.binding.clone());
        self.charge(workload, binding, increases)
    }

    /// A pod new to the ledger: its whole counters count if it started inside the current
    /// period and not before its workload became bound, else they are its baseline.
    fn count_new<'m>(
        &mut self,
        pod: &PodObservation<'_>,
        series: impl Iterator<Item = (&'m str, TokenType, u64)>,
    ) -> (Vec<(&'m str, TokenType, u64)>, Seen) {
        let counts = match (pod.started_at, self.period_start) {
            (Some(started), Some(period_start)) => started >= period_start.max(pod.bound_since),
            _ => false,
        };
        let mut increases = Vec::new();
        let mut counters = BTreeMap::new();
        for (model, token_type, value) in series {
            if counts && value > 0 {
                increases.push((model, token_type, value));
            }
            set_counter(&mut counters, model, token_type, value);
        }
        let entry = PodEntry {
            binding: pod.binding.to_owned(),
            workload: (pod.workload.0, pod.workload.1.to_owned()),
            restarts: pod.restarts.min(CAP),
            counters,
            last_scraped: Some(pod.scraped_at),
        };
        self.pods.insert(pod.uid.to_owned(), entry);
        (increases, Seen::New { counts })
    }

    /// Adds increases to the totals of the period, of the workload and of the binding the pod
    /// is charged to; returns the tokens (all types) added.
    fn charge(
        &mut self,
        workload: (WorkloadKind, String),
        binding: String,
        increases: Vec<(&str, TokenType, u64)>,
    ) -> u64 {
        let workload = if self.workloads.contains_key(&workload) || self.workloads.len() < MAX_TOTALS {
            workload
        } else {
            (workload.0, OTHER_MODELS.to_string())
        };
        let (kind, name) = (workload.0, workload.1.clone());
        let workload = self.workloads.entry(workload).or_default();
        let mut added = 0u64;
        for (model, token_type, increase) in increases {
            added = add(added, increase);
            add_tokens(&mut self.models, model, token_type, increase);
            let counted = self.counted.entry((kind, name.clone(), model.to_owned())).or_default();
            counted[slot(token_type)] = add(counted[slot(token_type)], increase);
            // Beyond the bound, the workload's tokens count but not by model: its cost is
            // then unknown (`workload_models`), never wrong.
            if workload.models.contains_key(model) || self.workload_models < MAX_WORKLOAD_MODELS {
                self.workload_models += usize::from(!workload.models.contains_key(model));
                add_tokens(&mut workload.models, model, token_type, increase);
            }
        }
        workload.tokens = add(workload.tokens, added);
        let binding = if self.bindings.contains_key(&binding) || self.bindings.len() < MAX_TOTALS {
            binding
        } else {
            OTHER_MODELS.to_string()
        };
        let binding = self.bindings.entry(binding).or_default();
        *binding = add(*binding, added);
        added
    }

    /// Drops a pod that is gone (call it after the pod's final scrape). Its tokens stay in the
    /// totals. Only for pods that are deleted: a uid that comes back is a new pod (rule 3), so a
    /// pod that merely stops being bound should be kept. Returns whether the pod was known.
    pub fn forget(&mut self, uid: &str) -> bool {
        for ledger in self.subjects.values_mut() {
            ledger.forget(uid);
        }
        self.pods.remove(uid).is_some()
    }

    /// Starts a new period: every total goes back to zero, but the last-seen counters of every
    /// pod stay as baselines, so only increases after them count in the new period. The tokens a
    /// pod spent between its last scrape before the boundary and the boundary itself therefore
    /// count in the new period (the scrape after the boundary sees them): nothing is lost or
    /// counted twice, at the cost of at most one scrape interval landing in the later period.
    pub fn reset(&mut self, new_period_start: Timestamp) {
        self.period_start = Some(new_period_start);
        self.models.clear();
        self.workloads.clear();
        self.workload_models = 0;
        self.bindings.clear();
        for ledger in self.subjects.values_mut() {
            ledger.reset();
        }
        self.admit_known();
    }

    /// Makes `period_start` the current period: [`Ledger::reset`]s if the ledger has another
    /// period (or none) and returns whether it did.
    pub fn ensure_period(&mut self, period_start: Timestamp) -> bool {
        if self.period_start == Some(period_start) {
            return false;
        }
        self.reset(period_start);
        true
    }

    /// Since when each binding binds each of its workloads.
    pub fn bound(&self) -> &Bound {
        &self.bound
    }

    /// Forgets the last counters of every pod counted through `binding` (their totals stay).
    pub fn forget_pods_of(&mut self, binding: &str) {
        let subjects = &mut self.subjects;
        self.pods.retain(|uid, pod| {
            let keep = pod.binding != binding;
            if !keep {
                subjects.values_mut().for_each(|ledger| ledger.forget(uid));
            }
            keep
        });
    }

    /// Replaces what the bindings bind, and since when.
    pub fn set_bound(&mut self, bound: Bound) {
        self.bound = bound;
    }

    /// The start of the period the totals belong to.
    pub fn period_start(&self) -> Option<Timestamp> {
        self.period_start
    }

    /// Tokens of one type in the period, over all models.
    pub fn tokens(&self, token_type: TokenType) -> u64 {
        self.models.values().map(|v| v[slot(token_type)]).fold(0, add)
    }

    /// Tokens in the period of the given types (`None`: all types), as `used.tokens` counts
    /// them toward `limits.tokens`.
    pub fn used_tokens(&self, token_types: Option<&[TokenType]>) -> u64 {
        TokenType::ALL
            .into_iter()
            .filter(|t| token_types.is_none_or(|types| types.contains(t)))
            .map(|t| self.tokens(t))
            .fold(0, add)
    }

    /// Per model: (model, input, output), by model name.
    pub fn models(&self) -> impl Iterator<Item = (&str, u64, u64)> + '_ {
        self.models.iter().map(|(m, [i, o])| (m.as_str(), *i, *o))
    }

    /// Per workload: (kind, name, tokens of all types), largest first, then by kind and name.
    pub fn workloads(&self) -> Vec<(WorkloadKind, &str, u64)> {
        let mut list: Vec<_> = self
            .workloads
            .iter()
            .map(|((kind, name), totals)| (*kind, name.as_str(), totals.tokens))
            .collect();
        list.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (a.0, a.1).cmp(&(b.0, b.1))));
        list
    }

    /// One workload's tokens per model: (model, input, output), by model name; `None` when
    /// they do not hold all its tokens (a period resumed from a status written before they
    /// were kept), or the ledger has no such workload.
    pub fn workload_models(&self, kind: WorkloadKind, name: &str) -> Option<Vec<(&str, u64, u64)>> {
        let totals = self.workloads.get(&(kind, name.to_string()))?;
        totals.complete().then(|| {
            totals
                .models
                .iter()
                .map(|(model, [input, output])| (model.as_str(), *input, *output))
                .collect()
        })
    }

    /// Per binding: (name, tokens of all types charged to it), by name.
    pub fn bindings(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.bindings.iter().map(|(b, t)| (b.as_str(), *t))
    }

    /// Tokens of all types charged to one binding in the period.
    pub fn binding_tokens(&self, binding: &str) -> u64 {
        self.bindings.get(binding).copied().unwrap_or(0)
    }

    /// The uids of the pods the ledger knows, by uid (to forget the ones that no longer exist).
    pub fn pod_uids(&self) -> impl Iterator<Item = &str> + '_ {
        self.pods.keys().map(String::as_str)
    }

    /// When the answer last counted for the pod `uid` was in (in memory only: `None` after an
    /// operator restart).
    pub fn last_scraped(&self, uid: &str) -> Option<Timestamp> {
        self.pods.get(uid).and_then(|p| p.last_scraped)
    }

    /// Whether the ledger knows a pod.
    pub fn contains_pod(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    /// The number of pods the ledger knows.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// What [`Ledger::observe`] counted since the last call, per (workload, model), and starts
    /// again from nothing. A period reset does not touch it: tokens counted before the
    /// boundary and not yet taken are still taken once.
    pub fn take_counted(&mut self) -> Counted {
        std::mem::take(&mut self.counted)
    }
}

/// A pod the ledger knows: every series counts its increase since the last successful scrape,
/// one that went down its new value; after a restart, every series counts from zero.
fn count_known<'m>(
    entry: &mut PodEntry,
    pod: &PodObservation<'_>,
    series: impl Iterator<Item = (&'m str, TokenType, u64)>,
) -> (Vec<(&'m str, TokenType, u64)>, Seen) {
    let restarts = pod.restarts.min(CAP);
    let mut restarted = false;
    if restarts > entry.restarts {
        // Every container counts from zero again; series it no longer reports are gone.
        // Unless the new container started before the last successful scrape: the kubelet
        // reports a restart a little after the new process answers, so that scrape already saw
        // the new counters (and counted them from zero if they were below the old ones).
        // Counting from zero again would count them twice.
        let seen_already = matches!(
            (pod.container_started, entry.last_scraped),
            (Some(started), Some(scraped)) if started <= scraped
        );
        if !seen_already {
            entry.counters.clear();
        }
        restarted = !seen_already;
        entry.restarts = restarts;
    }
    let mut increases = Vec::new();
    for (model, token_type, value) in series {
        let last = entry.counters.get(model).map_or(0, |v| v[slot(token_type)]);
        let increase = if value >= last { value - last } else { value };
        if increase > 0 {
            increases.push((model, token_type, increase));
        }
        set_counter(&mut entry.counters, model, token_type, value);
    }
    entry.last_scraped = Some(pod.scraped_at);
    (increases, Seen::Known { restarted })
}

/// Adds `increase` tokens of `token_type` to `model`'s totals.
fn add_tokens(totals: &mut BTreeMap<String, [u64; 2]>, model: &str, token_type: TokenType, increase: u64) {
    match totals.get_mut(model) {
        Some(values) => values[slot(token_type)] = add(values[slot(token_type)], increase),
        None => {
            let mut values = [0; 2];
            values[slot(token_type)] = increase;
            totals.insert(model.to_owned(), values);
        }
    }
}

/// A workload's tokens per model as [`WorkloadTokens::models`] keeps them: `<model>:<input>:<output>`
/// per model, separated by spaces, `<model>` the index that `index` gives (in the state's
/// `models`). A model without an index (never: every model a workload counts is in the
/// totals) is left out, and the workload's cost is then unknown rather than wrong.
fn encode_workload_models(models: &BTreeMap<String, [u64; 2]>, index: impl Fn(&String) -> Option<usize>) -> String {
    use std::fmt::Write;
    let mut line = String::new();
    for (model, [input, output]) in models {
        let Some(i) = index(model) else { continue };
        if !line.is_empty() {
            line.push(' ');
        }
        let _ = write!(line, "{i}:{}:{}", to_i64(*input), to_i64(*output));
    }
    line
}

/// Reads [`encode_workload_models`]'s form back, by the names of `models`. A field that
/// cannot be read is left out (the workload's cost is then unknown); negative numbers read
/// as 0.
fn decode_workload_models(line: &str, models: &[ModelTokens]) -> BTreeMap<String, [u64; 2]> {
    let mut decoded = BTreeMap::new();
    for field in line.split(' ').filter(|f| !f.is_empty()) {
        let mut parts = field.split(':');
        let model = parts
            .next()
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| models.get(i));
        let input = parts.next().and_then(|v| v.parse::<i64>().ok());
        let output = parts.next().and_then(|v| v.parse::<i64>().ok());
        if let (Some(model), Some(input), Some(output), None) = (model, input, output, parts.next()) {
            let values: &mut [u64; 2] = decoded.entry(model.model.clone()).or_default();
            values[0] = add(values[0], from_i64(input));
            values[1] = add(values[1], from_i64(output));
        }
    }
    decoded
}

/// Stores a last-seen value, keeping no zeros (a zero is the same as an absent series).
fn set_counter(counters: &mut BTreeMap<String, [u64; 2]>, model: &str, token_type: TokenType, value: u64) {
    match counters.get_mut(model) {
        Some(values) => {
            values[slot(token_type)] = value;
            if *values == [0, 0] {
                counters.remove(model);
            }
        }
        None if value > 0 => {
            let mut values = [0; 2];
            values[slot(token_type)] = value;
            counters.insert(model.to_owned(), values);
        }
        None => {}
    }
}

pub(super) fn slot(token_type: TokenType) -> usize {
    match token_type {
        TokenType::Input => 0,
        TokenType::Output => 1,
    }
}

/// Adds, saturating at what the API can store.
pub(super) fn add(a: u64, b: u64) -> u64 {
    a.saturating_add(b).min(CAP)
}

pub(super) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn from_i64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::api::MetricsFormat;
    use crate::usage::Extractor;
    use TokenType::{Input, Output};

    const A: &str = "bb-a";
    const B: &str = "bb-b";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn period() -> Timestamp {
        ts("2026-11-01T00:00:00Z")
    }

    /// A usage built the way the operator builds one: by parsing a (vLLM) exposition.
    fn usage(series: &[(&str, TokenType, u64)]) -> Usage {
        let body: String = series
            .iter()
            .map(|(model, t, v)| {
                let metric = match t {
                    Input => "vllm:prompt_tokens_total",
                    Output => "vllm:generation_tokens_total",
                };
                format!("{metric}{{model_name=\"{model}\"}} {v}\n")
            })
            .collect();
        Extractor::new(MetricsFormat::Vllm, &[])
            .extract(body.as_bytes())
            .unwrap()
    }

    /// A pod of Deployment `summarizer`, started inside the period, after binding `bb-a`.
    fn pod(uid: &str) -> PodObservation<'_> {
        PodObservation {
            uid,
            name: uid,
            binding: A,
            workload: (WorkloadKind::Deployment, "summarizer"),
            restarts: 0,
            started_at: Some(ts("2026-11-02T00:00:00Z")),
            bound_since: ts("2026-10-15T00:00:00Z"),
            container_started: None,
            scraped_at: ts("2026-11-10T00:00:00Z"),
        }
    }

    /// Pod `p` scraped at minute `scraped` of 2026-11-10, its status saying `restarts` and a
    /// container started at minute `started`.
    fn at<'a>(scraped: i64, restarts: u64, started: i64) -> PodObservation<'a> {
        let minute = |m: i64| ts("2026-11-10T00:00:00Z") + jiff::SignedDuration::from_mins(m);
        PodObservation {
            restarts,
            container_started: Some(minute(started)),
            scraped_at: minute(scraped),
            ..pod("p")
        }
    }

    fn fresh() -> Ledger {
        Ledger::new(period())
    }

    #[test]
    fn counts_the_increase_per_series_between_scrapes() {
        let mut l = fresh();
        assert_eq!(
            l.observe(&pod("p"), &usage(&[("m", Input, 100), ("m", Output, 10)])),
            110
        );
        assert_eq!(
            l.observe(&pod("p"), &usage(&[("m", Input, 150), ("m", Output, 10)])),
            50
        );
        assert_eq!(
            l.observe(&pod("p"), &usage(&[("m", Input, 150), ("m", Output, 30)])),
            20
        );
        assert_eq!(l.observe(&pod("p"), &usage(&[("m", Input, 150), ("m", Output, 30)])), 0);
        assert_eq!((l.tokens(Input), l.tokens(Output)), (150, 30));
        assert_eq!(l.models().collect::<Vec<_>>(), [("m", 150, 30)]);
    }

    #[test]
    fn a_counter_that_went_down_counts_from_zero() {
        let mut l = fresh();
        l.observe(&pod("p"), &usage(&[("m", Input, 100), ("m", Output, 50)]));
        // Input was reset and grew to 30; output grew normally.
        assert_eq!(
            l.observe(&pod("p"), &usage(&[("m", Input, 30), ("m", Output, 60)])),
            30 + 10
        );
        assert_eq!(l.observe(&pod("p"), &usage(&[("m", Input, 35), ("m", Output, 60)])), 5);
        assert_eq!(l.used_tokens(None), 100 + 50 + 40 + 5);
    }

    #[test]
    fn a_restart_reported_after_its_drop_was_counted_does_not_count_twice() {
        let mut l = fresh();
        l.observe(&at(0, 0, 0), &usage(&[("m", Input, 100)]));
        // The container restarts at minute 1; its new process answers the scrape of minute 2
        // before the kubelet reports the restart: the drop counts 30, from zero.
        assert_eq!(l.observe(&at(2, 0, 0), &usage(&[("m", Input, 30)])), 30);
        assert_eq!(l.observe(&at(3, 0, 0), &usage(&[("m", Input, 40)])), 10);
        // Then the restart shows up, with the container's start at minute 1, before the last
        // scrape: that scrape saw this container, so only the increase since counts.
        assert_eq!(l.observe(&at(4, 1, 1), &usage(&[("m", Input, 45)])), 5);
        assert_eq!(l.used_tokens(None), 100 + 30 + 10 + 5);
        // A restart after the last scrape counts from zero, even if its value is higher.
        assert_eq!(l.observe(&at(6, 2, 5), &usage(&[("m", Input, 50)])), 50);
    }

    #[test]
    fn a_late_restart_report_without_a_visible_drop_does_not_count_twice() {
        let mut l = fresh();
        l.observe(&at(0, 0, 0), &usage(&[("m", Input, 100)]));
        // The new container (minute 1) passed the old value before the scrape of minute 2: no
        // drop to see, so 20 count; the 100 below the old value are not counted (one interval
        // at most, as for a crash).
        assert_eq!(l.observe(&at(2, 0, 0), &usage(&[("m", Input, 120)])), 20);
        // Reported late: the 120 are not counted again.
        assert_eq!(l.observe(&at(3, 1, 1), &usage(&[("m", Input, 130)])), 10);
    }

    #[test]
    fn a_container_started_after_the_last_scrape_counts_from_zero() {
        let mut l = fresh();
        l.observe(&at(0, 0, 0), &usage(&[("m", Input, 100)]));
        // The exporter starts from zero without a restart: the drop counts 30.
        assert_eq!(l.observe(&at(1, 0, 0), &usage(&[("m", Input, 30)])), 30);
        // Then the container really restarts, at minute 2, after that scrape: all of it counts.
        assert_eq!(l.observe(&at(3, 1, 2), &usage(&[("m", Input, 45)])), 45);
        // Without the container's start time, a reported restart counts from zero too.
        let unknown = PodObservation {
            restarts: 2,
            container_started: None,
            ..at(4, 0, 0)
        };
        assert_eq!(l.observe(&unknown, &usage(&[("m", Input, 50)])), 50);
    }

    #[test]
    fn after_an_operator_restart_a_reported_restart_counts_from_zero() {
        let mut l = fresh();
        l.observe(&at(0, 0, 0), &usage(&[("m", Input, 100)]));
        assert_eq!(l.observe(&at(2, 0, 0), &usage(&[("m", Input, 30)])), 30);
        // The time of the last scrape is not persisted: a late report after an operator
        // restart counts the new container's 45 again (the documented limit).
        let mut restarted = Ledger::from_state(Some(&l.to_state()));
        assert_eq!(restarted.observe(&at(4, 1, 1), &usage(&[("m", Input, 45)])), 45);
    }

    #[test]
    fn a_restart_makes_every_series_count_from_zero() {
        let mut l = fresh();
        l.observe(&pod("p"), &usage(&[("m", Input, 100), ("m", Output, 50)]));
        // The container restarted and its new counters already passed the old values.
        let restarted = PodObservation {
            restarts: 1,
            ..pod("p")
        };
        assert_eq!(
            l.observe(&restarted, &usage(&[("m", Input, 120), ("m", Output, 70)])),
            190
        );
        // The same restart count again: increases only.
        assert_eq!(
            l.observe(&restarted, &usage(&[("m", Input, 121), ("m", Output, 70)])),
            1
        );
        assert_eq!(l.used_tokens(None), 150 + 190 + 1);
    }

    #[test]
    fn a_restart_drops_the_series_the_new_container_does_not_report() {
        let mut l = fresh();
        l.observe(&pod("p"), &usage(&[("old", Input, 100)]));
        let restarted = PodObservation {
            restarts: 1,
            ..pod("p")
        };
        assert_eq!(l.observe(&restarted, &usage(&[("new", Input, 5)])), 5);
        // `old` comes back at 40 in the new container: all of it is new.
        assert_eq!(
            l.observe(&restarted, &usage(&[("new", Input, 5), ("old", Input, 40)])),
            40
        );
    }

    #[test]
    fn a_restart_count_that_went_down_is_no_restart() {
        let mut l = fresh();
        let two = PodObservation {
            restarts: 2,
            ..pod("p")
        };
        l.observe(&two, &usage(&[("m", Input, 100)]));
        // A container status missing for a moment lowers the sum; it is not a restart...
        let one = PodObservation {
            restarts: 1,
            ..pod("p")
        };
        assert_eq!(l.observe(&one, &usage(&[("m", Input, 110)])), 10);
        // ...and neither is coming back to the old sum.
        assert_eq!(l.observe(&two, &usage(&[("m", Input, 120)])), 10);
        assert_eq!(l.to_state().pod_ledgers()[0].restarts, 2);
    }

    #[test]
    fn a_series_that_appears_on_a_known_pod_counts_whole() {
        let mut l = fresh();
        l.observe(&pod("p"), &usage(&[("a", Input, 100)]));
        assert_eq!(l.observe(&pod("p"), &usage(&[("a", Input, 100), ("b", Output, 7)])), 7);
        assert_eq!(l.models().collect::<Vec<_>>(), [("a", 100, 0), ("b", 0, 7)]);
    }

    #[test]
    fn a_series_missing_from_a_scrape_keeps_its_baseline() {
        let mut l = fresh();
        l.observe(&pod("p"), &usage(&[("a", Input, 100), ("b", Input, 50)]));
        assert_eq!(l.observe(&pod("p"), &usage(&[("a", Input, 110)])), 10);
        // `b` is back with the value it had: nothing new.
        assert_eq!(l.observe(&pod("p"), &usage(&[("a", Input, 110), ("b", Input, 55)])), 5);
        assert_eq!(l.used_tokens(None), 165);
    }

    #[test]
    fn a_new_pod_started_in_the_period_after_its_binding_counts_whole() {
        let mut l = fresh();
        assert_eq!(
            l.observe(&pod("p"), &usage(&[("m", Input, 100), ("m", Output, 1)])),
            101
        );
        // Exactly at the later of the two boundaries still counts.
        let mut l = fresh();
        let at_start = PodObservation {
            started_at: Some(period()),
            ..pod("p")
        };
        assert_eq!(l.observe(&at_start, &usage(&[("m", Input, 100)])), 100);
        let binding_later = ts("2026-11-05T00:00:00Z");
        let at_binding = PodObservation {
            started_at: Some(binding_later),
            bound_since: binding_later,
            container_started: None,
            ..pod("q")
        };
        assert_eq!(l.observe(&at_binding, &usage(&[("m", Input, 7)])), 7);
    }

    #[test]
    fn a_new_pod_from_before_the_period_or_its_binding_is_a_baseline() {
        let cases = [
            // Started before the period.
            PodObservation {
                started_at: Some(ts("2026-10-31T23:59:59Z")),
                ..pod("p")
            },
            // Started in the period but before its binding was created.
            PodObservation {
                bound_since: ts("2026-11-03T00:00:00Z"),
                container_started: None,
                ..pod("p")
            },
            // Start time unknown.
            PodObservation {
                started_at: None,
                ..pod("p")
            },
        ];
        for case in cases {
            let mut l = fresh();
            assert_eq!(l.observe(&case, &usage(&[("m", Input, 100)])), 0, "{case:?}");
            assert!(l.contains_pod("p"));
            assert_eq!(l.observe(&case, &usage(&[("m", Input, 130)])), 30, "{case:?}");
        }
        // A ledger without a period (a new budget not yet given one) counts nothing whole.
        let mut l = Ledger::from_state(None);
        assert_eq!(l.observe(&pod("p"), &usage(&[("m", Input, 100)])), 0);
    }

    #[test]
    fn two_bindings_scraping_one_pod_count_it_once_for_the_first() {
        let mut l = fresh();
        let by_b = PodObservation { binding: B, ..pod("p") };
        let u = usage(&[("m", Input, 100)]);
        assert_eq!(l.observe(&pod("p"), &u), 100);
        assert_eq!(l.observe(&by_b, &u), 0);
        // Later increases seen by the second binding are charged to the first.
        assert_eq!(l.observe(&by_b, &usage(&[("m", Input, 120)])), 20);
        assert_eq!(l.observe(&pod("p"), &usage(&[("m", Input, 120)])), 0);
        assert_eq!(l.bindings().collect::<Vec<_>>(), [(A, 120)]);
        assert_eq!(l.binding_tokens(B), 0);
        assert_eq!(l.to_state().pod_ledgers()[0].binding, A);
    }

    #[test]
    fn forget_drops_the_pod_but_keeps_its_tokens() {
        let mut l = fresh();
        l.observe(&pod("p"), &usage(&[("m", Input, 100)]));
        l.observe(&pod("q"), &usage(&[("m", Input, 5)]));
        assert!(l.forget("p"));
        assert!(!l.forget("p"));
        assert_eq!(l.pod_uids().collect::<Vec<_>>(), ["q"]);
        assert_eq!(l.used_tokens(None), 105);
        assert_eq!(l.workloads(), [(WorkloadKind::Deployment, "summarizer", 105)]);
    }

    #[test]
    fn reset_zeroes_the_totals_and_keeps_the_baselines() {
        let mut l = fresh();
        l.observe(&pod("p"), &usage(&[("m", Input, 100)]));
        let next = ts("2026-12-01T00:00:00Z");
        l.reset(next);
        assert_eq!(l.period_start(), Some(next));
        assert_eq!(l.used_tokens(None), 0);
        assert_eq!(l.models().count() + l.workloads().len() + l.bindings().count(), 0);
        // Only what came after the last scrape counts in the new period.
        assert_eq!(l.observe(&pod("p"), &usage(&[("m", Input, 130)])), 30);
        assert_eq!(l.used_tokens(None), 30);
        // A pod started in the old period, first seen now, is a baseline...
        assert_eq!(l.observe(&pod("q"), &usage(&[("m", Input, 50)])), 0);
        // ...and one started in the new period counts whole.
        let new_pod = PodObservation {
            started_at: Some(next),
            ..pod("r")
        };
        assert_eq!(l.observe(&new_pod, &usage(&[("m", Input, 9)])), 9);
    }

    #[test]
    fn what_was_counted_is_taken_once_per_workload_and_model_across_a_reset() {
        let mut l = fresh();
        l.observe(
            &pod("p"),
            &usage(&[("m", Input, 100), ("m", Output, 10), ("n", Input, 5)]),
        );
        let job = PodObservation {
            workload: (WorkloadKind::Job, "batch"),
            ..pod("q")
        };
        l.observe(&job, &usage(&[("m", Input, 7)]));
        let key = |kind, name: &str, model: &str| (kind, name.to_string(), model.to_string());
        let deployment = WorkloadKind::Deployment;
        assert_eq!(
            l.take_counted(),
            Counted::from([
                (key(WorkloadKind::Job, "batch", "m"), [7, 0]),
                (key(deployment, "summarizer", "m"), [100, 10]),
                (key(deployment, "summarizer", "n"), [5, 0]),
            ])
        );
        assert_eq!(l.take_counted(), Counted::new(), "taken once");
        // Counted before a boundary and not yet taken: still taken after it, with what the new
        // period counts; the totals start again from zero, what is taken never goes back.
        l.observe(
            &pod("p"),
            &usage(&[("m", Input, 130), ("m", Output, 10), ("n", Input, 5)]),
        );
        l.reset(ts("2026-12-01T00:00:00Z"));
        l.observe(
            &pod("p"),
            &usage(&[("m", Input, 131), ("m", Output, 12), ("n", Input, 5)]),
        );
        assert_eq!(l.used_tokens(None), 3);
        assert_eq!(
            l.take_counted(),
            Counted::from([(key(deployment, "summarizer", "m"), [31, 2])])
        );
        // Nor is it persisted: a ledger restored from the status has nothing to take.
        l.observe(&pod("p"), &usage(&[("m", Input, 140)]));
        assert_eq!(Ledger::from_state(Some(&l.to_state())).take_counted(), Counted::new());
        assert_eq!(Ledger::from_state(Some(&l.to_state())), l, "not part of equality");
    }

    #[test]
    fn ensure_period_resets_only_on_a_change() {
        let mut l = Ledger::from_state(None);
        assert!(l.ensure_period(period()));
        l.observe(&pod("p"), &usage(&[("m", Input, 100)]));
        assert!(!l.ensure_period(period()));
        assert_eq!(l.used_tokens(None), 100);
        // The same instant written with another offset is the same period.
        let mut again = Ledger::from_state(Some(&AccountingState {
            period_start: "2026-11-01T01:00:00+01:00".into(),
            ..l.to_state()
        }));
        assert!(!again.ensure_period(period()));
        assert!(again.ensure_period(ts("2026-12-01T00:00:00Z")));
        assert_eq!(again.used_tokens(None), 0);
    }

    #[test]
    fn totals_per_type_model_workload_and_binding() {
        let mut l = fresh();
        let job = PodObservation {
            workload: (WorkloadKind::Job, "batch"),
            binding: B,
            ..pod("j")
        };
        let other = PodObservation {
            workload: (WorkloadKind::Deployment, "a-small"),
            ..pod("o")
        };
        l.observe(&pod("p"), &usage(&[("x", Input, 100), ("y", Output, 20)]));
        l.observe(&job, &usage(&[("x", Input, 300), ("x", Output, 1)]));
        l.observe(&other, &usage(&[("y", Input, 120)]));
        assert_eq!(l.tokens(Input), 520);
        assert_eq!(l.tokens(Output), 21);
        assert_eq!(l.used_tokens(None), 541);
        assert_eq!(l.used_tokens(Some(&[Output])), 21);
        assert_eq!(l.used_tokens(Some(&[Input, Output])), 541);
        assert_eq!(l.used_tokens(Some(&[])), 0);
        assert_eq!(l.models().collect::<Vec<_>>(), [("x", 400, 1), ("y", 120, 20)]);
        // Largest first; equal totals by kind, then name.
        assert_eq!(
            l.workloads(),
            [
                (WorkloadKind::Job, "batch", 301),
                (WorkloadKind::Deployment, "a-small", 120),
                (WorkloadKind::Deployment, "summarizer", 120),
            ]
        );
        assert_eq!(l.bindings().collect::<Vec<_>>(), [(A, 240), (B, 301)]);
        assert_eq!(l.pod_count(), 3);
    }

    #[test]
    fn the_state_round_trips_in_a_deterministic_order() {
        let mut l = fresh();
        let restarted = PodObservation {
            restarts: 3,
            ..pod("b-pod")
        };
        l.observe(
            &restarted,
            &usage(&[("z", Output, 5), ("a", Input, 0), ("a", Output, 2)]),
        );
        l.observe(&pod("a-pod"), &usage(&[("m", Input, 100)]));
        let state = l.to_state();
        assert_eq!(state.period_start, "2026-11-01T00:00:00Z");
        let pods = state.pod_ledgers();
        let uids: Vec<_> = pods.iter().map(|p| p.uid.as_str()).collect();
        assert_eq!(uids, ["a-pod", "b-pod"]);
        // Zero counters are not stored; the rest by model, input before output.
        let counters: Vec<_> = pods[1]
            .counters
            .iter()
            .map(|c| (c.model.as_str(), c.token_type, c.value))
            .collect();
        assert_eq!(counters, [("a", Output, 2), ("z", Output, 5)]);
        let json = serde_json::to_string(&state).unwrap();
        let back: AccountingState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        assert_eq!(Ledger::from_state(Some(&back)), l);
        assert_eq!(l.to_state(), state);
        assert_eq!(
            serde_json::to_value(&state).unwrap(),
            serde_json::json!({
                "periodStart": "2026-11-01T00:00:00Z",
                "podGroups": [{
                    "binding": "bb-a", "workload": {"kind": "Deployment", "name": "summarizer"},
                    "pods": ["a-pod 0 1:100:0", "b-pod 3 0:0:2 2:0:5"],
                }],
                "counterModels": ["a", "m", "z"],
                "models": [{"model": "a", "output": 2}, {"model": "m", "input": 100}, {"model": "z", "output": 5}],
                // Per model, by the index in `models`: what makes the workload's cost exact.
                "workloads": [{
                    "kind": "Deployment", "name": "summarizer", "tokens": 107, "models": "0:0:2 1:100:0 2:0:5",
                }],
                "bindings": [{"name": "bb-a", "tokens": 107}],
            })
        );
        assert_eq!(
            serde_json::to_value(Ledger::default().to_state()).unwrap(),
            serde_json::json!({"periodStart": ""})
        );
    }

    #[test]
    fn a_workloads_tokens_are_kept_per_model_and_type_across_a_restart() {
        let mut l = fresh();
        let job = PodObservation {
            workload: (WorkloadKind::Job, "batch"),
            ..pod("j")
        };
        l.observe(&pod("p"), &usage(&[("x", Input, 100), ("y", Output, 20)]));
        l.observe(&job, &usage(&[("x", Input, 300), ("x", Output, 1)]));
        l.observe(&pod("p"), &usage(&[("x", Input, 150), ("y", Output, 20)]));
        let deployment = [("x", 150, 0), ("y", 0, 20)];
        assert_eq!(
            l.workload_models(WorkloadKind::Deployment, "summarizer"),
            Some(deployment.to_vec())
        );
        assert_eq!(l.workload_models(WorkloadKind::Job, "batch"), Some(vec![("x", 300, 1)]));
        assert_eq!(l.workload_models(WorkloadKind::Job, "none"), None);
        let restarted = Ledger::from_state(Some(&l.to_state()));
        assert_eq!(restarted, l);
        assert_eq!(
            restarted.workload_models(WorkloadKind::Deployment, "summarizer"),
            Some(deployment.to_vec())
        );
        // A new period starts them from zero, with the other totals.
        let mut next = restarted;
        next.reset(ts("2026-12-01T00:00:00Z"));
        assert_eq!(next.workload_models(WorkloadKind::Job, "batch"), None);
    }

    #[test]
    fn the_workloads_models_are_bounded_and_beyond_the_bound_a_cost_is_unknown() {
        let mut l = fresh();
        // 501 workloads of 10 models each: 10 more than the bound.
        let names: Vec<String> = (0..=MAX_WORKLOAD_MODELS / 10).map(|w| format!("w{w:04}")).collect();
        let series: Vec<(String, TokenType, u64)> = (0..10).map(|m| (format!("m{m}"), Input, 5)).collect();
        let series: Vec<(&str, TokenType, u64)> = series.iter().map(|(m, t, v)| (m.as_str(), *t, *v)).collect();
        for name in &names {
            let observation = PodObservation {
                workload: (WorkloadKind::Job, name),
                ..pod(name)
            };
            assert_eq!(l.observe(&observation, &usage(&series)), 50);
        }
        // The first 500 workloads have their 10 models each; the last one only its tokens.
        let first = l.workload_models(WorkloadKind::Job, &names[0]).unwrap();
        assert_eq!(first.len(), 10);
        let last = names.last().unwrap();
        assert_eq!(l.workload_models(WorkloadKind::Job, last), None);
        assert_eq!(l.workloads().iter().find(|w| w.1 == last).map(|w| w.2), Some(50));
        assert_eq!(l.used_tokens(None), 50 * names.len() as u64);
        // So after a restart, and a new period makes room again.
        let mut restarted = Ledger::from_state(Some(&l.to_state()));
        assert_eq!(restarted, l);
        assert_eq!(restarted.workload_models(WorkloadKind::Job, last), None);
        restarted.reset(ts("2026-12-01T00:00:00Z"));
        let observation = PodObservation {
            workload: (WorkloadKind::Job, last),
            ..pod(last)
        };
        let more: Vec<(&str, TokenType, u64)> = series.iter().map(|(m, t, v)| (*m, *t, v + 1)).collect();
        restarted.observe(&observation, &usage(&more));
        assert_eq!(
            restarted.workload_models(WorkloadKind::Job, last).map(|m| m.len()),
            Some(10)
        );
    }

    #[test]
    fn a_status_without_the_workloads_models_leaves_their_cost_unknown_for_the_period() {
        let mut l = fresh();
        l.observe(&pod("p"), &usage(&[("x", Input, 100)]));
        // As a version before the workloads' models wrote it.
        let mut state = l.to_state();
        state.workloads[0].models.clear();
        // And a field that cannot be read is left out, not misread.
        let mut garbled = l.to_state();
        garbled.workloads[0].models = "0:100:x 7:1:1".into();
        for state in [state, garbled] {
            let mut old = Ledger::from_state(Some(&state));
            assert_eq!(old.workloads(), [(WorkloadKind::Deployment, "summarizer", 100)]);
            assert_eq!(old.workload_models(WorkloadKind::Deployment, "summarizer"), None);
            old.observe(&pod("p"), &usage(&[("x", Input, 130)]));
            assert_eq!(old.workloads(), [(WorkloadKind::Deployment, "summarizer", 130)]);
            assert_eq!(old.workload_models(WorkloadKind::Deployment, "summarizer"), None);
            // From the next period on, known.
            old.reset(ts("2026-12-01T00:00:00Z"));
            old.observe(&pod("p"), &usage(&[("x", Input, 131)]));
            assert_eq!(
                old.workload_models(WorkloadKind::Deployment, "summarizer"),
                Some(vec![("x", 1, 0)])
            );
        }
    }

    #[test]
    fn a_restarted_operator_continues_where_the_status_left_off() {
        let mut l = fresh();
        l.observe(&pod("p"), &usage(&[("m", Input, 100)]));
        let mut restarted = Ledger::from_state(Some(&l.to_state()));
        // The same scrape again (the operator died before the next one): nothing counts twice.
        assert_eq!(restarted.observe(&pod("p"), &usage(&[("m", Input, 100)])), 0);
        assert_eq!(restarted.observe(&pod("p"), &usage(&[("m", Input, 140)])), 40);
        assert_eq!(restarted.used_tokens(None), 140);
    }

    #[test]
    fn a_hand_edited_state_never_panics() {
        let state: AccountingState = serde_json::from_value(serde_json::json!({
            "periodStart": "not a time",
            "pods": [{"uid": "p", "name": "p", "binding": "bb-a",
                      "workload": {"kind": "Job", "name": "j"}, "restarts": -4,
                      "counters": [{"model": "m", "type": "input", "value": -100},
                                   {"model": "m", "type": "output", "value": 0}]}],
            "models": [{"model": "m", "input": -1, "output": 9223372036854775807i64}],
            "workloads": [{"kind": "Job", "name": "j", "tokens": -5}],
            "bindings": [{"name": "bb-a", "tokens": -5}]
        }))
        .unwrap();
        let mut l = Ledger::from_state(Some(&state));
        assert_eq!(l.period_start(), None);
        assert_eq!(l.tokens(Input), 0);
        assert_eq!(l.tokens(Output), i64::MAX as u64);
        assert!(l.to_state().pod_ledgers()[0].counters.is_empty());
        let job = PodObservation {
            workload: (WorkloadKind::Job, "j"),
            ..pod("p")
        };
        assert_eq!(l.observe(&job, &usage(&[("m", Output, 5)])), 5);
        // Saturated, not wrapped.
        assert_eq!(l.used_tokens(None), i64::MAX as u64);
        assert_eq!(l.to_state().models[0].output, i64::MAX);
    }

    #[test]
    fn huge_values_saturate_instead_of_panicking() {
        // The parser caps series at 10^15, but the ledger does not rely on it.
        let mut l = fresh();
        let mut big = pod("p");
        big.restarts = u64::MAX;
        let mut pods = Vec::new();
        for i in 0..20 {
            pods.push(format!("p{i}"));
        }
        let u = usage(&[
            ("m", Input, crate::usage::MAX_SERIES_VALUE),
            ("m", Output, crate::usage::MAX_SERIES_VALUE),
        ]);
        for uid in &pods {
            l.observe(&PodObservation { uid, ..big }, &u);
        }
        assert_eq!(l.used_tokens(None), 40 * crate::usage::MAX_SERIES_VALUE);
        // Push the totals to the cap through many counter resets.
        let first = PodObservation { uid: &pods[0], ..big };
        for _ in 0..10_000 {
            l.observe(&first, &usage(&[("m", Input, 1)]));
            l.observe(&first, &u);
        }
        assert_eq!(l.tokens(Input), i64::MAX as u64);
        assert_eq!(l.used_tokens(None), i64::MAX as u64);
        let state = l.to_state();
        assert_eq!(state.pod_ledgers()[0].restarts, i64::MAX);
        assert_eq!(Ledger::from_state(Some(&state)), l);
    }

    /// What pods cost in the status: 10,000 Deployment pods, each with two models and counters
    /// in the millions, take under half of etcd's 1.5 MiB object limit (about 74 bytes a pod).
    #[test]
    fn ten_thousand_pods_fit_well_under_the_object_size_limit() {
        let mut l = fresh();
        let uids: Vec<String> = (0..10_000)
            .map(|i| format!("0f8c2a5e-1d2b-4c3d-9e8f-{i:012}"))
            .collect();
        for uid in &uids {
            let p = PodObservation {
                uid,
                binding: "summarizer",
                workload: (WorkloadKind::Deployment, "summarizer"),
                restarts: 2,
                ..pod("")
            };
            l.observe(
                &p,
                &usage(&[
                    ("gpt-4o-mini", Input, 123_456_789),
                    ("gpt-4o-mini", Output, 12_345_678),
                    ("claude-sonnet-4", Input, 9_876_543),
                ]),
            );
        }
        let state = l.to_state();
        let bytes = serde_json::to_string(&state).unwrap().len();
        assert!(bytes < 768 * 1024, "{bytes} bytes");
        assert_eq!(state.pod_ledgers().len(), 10_000);
        assert_eq!(Ledger::from_state(Some(&state)), l);
    }

    #[test]
    fn models_beyond_the_limit_and_long_names_count_as_other() {
        let mut l = fresh();
        let many: Vec<(String, TokenType, u64)> = (0..MAX_MODELS + 20)
            .map(|i| (format!("model-{i:03}"), Input, 10))
            .chain([("x".repeat(MAX_MODEL_NAME_BYTES + 1), Output, 7)])
            .collect();
        let many_ref: Vec<(&str, TokenType, u64)> = many.iter().map(|(m, t, v)| (m.as_str(), *t, *v)).collect();
        l.observe(&pod("p"), &usage(&many_ref));
        // Every token counts; the names kept are bounded.
        assert_eq!(l.used_tokens(None), (MAX_MODELS as u64 + 20) * 10 + 7);
        assert!(l.models_capped());
        let models: Vec<(&str, u64, u64)> = l.models().collect();
        assert_eq!(models.len(), MAX_MODELS);
        assert_eq!(models.first(), Some(&(OTHER_MODELS, 210, 7)));
        // The pod's counters too: the rest summed under one name.
        let state = l.to_state();
        assert_eq!(state.counter_models.len(), MAX_MODELS);
        // The next scrape counts only the increase, the summed ones included.
        let mut more = many_ref.clone();
        more[MAX_MODELS + 5].2 = 15;
        l.observe(&pod("p"), &usage(&more));
        assert_eq!(l.used_tokens(None), (MAX_MODELS as u64 + 20) * 10 + 7 + 5);
        // A restarted operator keeps the same names.
        let mut restarted = Ledger::from_state(Some(&l.to_state()));
        more[0].2 = 11;
        more[MAX_MODELS + 6].2 = 12;
        restarted.observe(&pod("p"), &usage(&more));
        assert_eq!(restarted.used_tokens(None), (MAX_MODELS as u64 + 20) * 10 + 7 + 5 + 3);
    }

    #[test]
    fn workloads_and_bindings_beyond_the_limit_count_as_other() {
        let mut l = fresh();
        let names: Vec<String> = (0..MAX_TOTALS + 10).map(|i| format!("w{i:04}")).collect();
        for name in &names {
            let p = PodObservation {
                uid: name,
                binding: name,
                workload: (WorkloadKind::Job, name),
                ..pod("")
            };
            l.observe(&p, &usage(&[("m", Input, 5)]));
        }
        assert_eq!(l.used_tokens(None), (MAX_TOTALS as u64 + 10) * 5);
        let workloads = l.workloads();
        assert_eq!(workloads.len(), MAX_TOTALS + 1);
        assert_eq!(workloads[0], (WorkloadKind::Job, OTHER_MODELS, 50));
        assert_eq!(l.bindings().count(), MAX_TOTALS + 1);
        assert_eq!(l.binding_tokens(OTHER_MODELS), 50);
    }

    #[test]
    fn the_pods_of_an_older_status_are_read() {
        let state: AccountingState = serde_json::from_value(serde_json::json!({
            "periodStart": "2026-11-01T00:00:00Z",
            "pods": [{"uid": "p", "name": "p", "binding": "bb-a",
                      "workload": {"kind": "Deployment", "name": "summarizer"}, "restarts": 1,
                      "counters": [{"model": "m", "type": "input", "value": 100}]}],
            "models": [{"model": "m", "input": 100}],
        }))
        .unwrap();
        let mut l = Ledger::from_state(Some(&state));
        l.observe(
            &PodObservation {
                restarts: 1,
                ..pod("p")
            },
            &usage(&[("m", Input, 130)]),
        );
        assert_eq!(l.used_tokens(None), 130);
        let written = l.to_state();
        assert!(written.pods.is_empty());
        assert_eq!(written.pod_groups[0].pods, ["p 1 0:130:0"]);
    }

    // The simulation for the property test: a few pods whose true counters grow, crash and get
    // scraped by one or two bindings, with operator restarts and period resets in between.

    const MODELS: [&str; 2] = ["m0", "m1"];
    const WORKLOADS: [(WorkloadKind, &str); 2] = [(WorkloadKind::Deployment, "w0"), (WorkloadKind::Job, "w1")];
    const BINDINGS: [&str; 2] = [A, B];

    #[derive(Debug, Clone)]
    enum Event {
        /// A pod starts in an empty slot; `preexisting` pods started before the binding and the
        /// period, with counters from back then. `bound` is a bitmask of the bindings (1: A, 2: B).
        Start {
            slot: usize,
            preexisting: bool,
            bound: u8,
            workload: usize,
            initial: u64,
        },
        Spend {
            slot: usize,
            model: usize,
            output: bool,
            amount: u64,
        },
        /// A scrape through one binding; a failed one is skipped.
        Scrape { slot: usize, binding: usize, fails: bool },
        /// Both bindings scrape the pod back to back with the same values.
        DoubleScrape { slot: usize },
        /// A container crashes: its counters start from 0, the restart count goes up. With
        /// `late`, the pod status keeps the old restart count and start time until a
        /// `KubeletReport`: the new process answers scrapes before the kubelet reports it.
        Crash { slot: usize, late: bool },
        /// The kubelet reports the restarts of the pod's status that it had not yet.
        KubeletReport { slot: usize },
        /// The exporter starts its counters from 0 again without a container restart (as a
        /// worker process inside the container would).
        ExporterReset { slot: usize },
        /// The pod is deleted: a final scrape (which may fail), then forget.
        Delete { slot: usize, final_fails: bool },
        /// The period ends now.
        Reset,
        /// The operator restarts: only the persisted state survives.
        OperatorRestart,
    }

    impl Event {
        /// The same event on the pod in slot 0.
        fn on_first_slot(&self) -> Event {
            let mut e = self.clone();
            match &mut e {
                Event::Start { slot, .. }
                | Event::Spend { slot, .. }
                | Event::Scrape { slot, .. }
                | Event::DoubleScrape { slot }
                | Event::Crash { slot, .. }
                | Event::KubeletReport { slot }
                | Event::ExporterReset { slot }
                | Event::Delete { slot, .. } => *slot = 0,
                Event::Reset | Event::OperatorRestart => {}
            }
            e
        }
    }

    type Series = (usize, TokenType);

    #[derive(Debug)]
    struct SimPod {
        uid: String,
        started_at: Timestamp,
        bound: [bool; 2],
        workload: usize,
        restarts: u64,
        /// What the exporter reports now.
        counters: BTreeMap<Series, u64>,
        /// Spent since the last successful scrape (or since the counters last started from 0).
        pending: BTreeMap<Series, u64>,
        /// The values the last successful scrape saw, as the ledger keeps them.
        seen: BTreeMap<Series, u64>,
        /// Series of `seen` whose counter started from 0 again since (an exporter reset).
        stale: BTreeSet<Series>,
        /// When the running container started.
        container_started: Timestamp,
        /// What the pod's status says: (restart count, container start). A late-reported
        /// restart is not in it yet.
        reported: (u64, Timestamp),
        /// The restart count the status said at the last successful scrape.
        scraped_restarts: Option<u64>,
        /// When the last successful scrape was.
        last_scraped: Option<Timestamp>,
        /// The operator restarted since that scrape: the ledger forgot when it was.
        forgotten: bool,
        scraped: bool,
        owner: Option<usize>,
    }

    impl SimPod {
        fn usage(&self) -> Usage {
            let series: Vec<_> = self.counters.iter().map(|((m, t), v)| (MODELS[*m], *t, *v)).collect();
            usage(&series)
        }
        fn pending(&self) -> u64 {
            self.pending.values().sum()
        }
    }

    /// The truth, kept independently of the ledger.
    #[derive(Debug, Default)]
    struct Oracle {
        /// Tokens spent in the period (plus, after a reset, what was not yet scraped then).
        spent: u64,
        /// Spent by a container after its last successful scrape, then lost in a crash (or by a
        /// failed final scrape).
        lost: u64,
        /// Spent before a pod's first scrape when that pod is only a baseline (rule 3).
        excluded: u64,
        /// After an exporter reset without a restart (or a restart that the kubelet reports
        /// late), the part that no rule can see: the new value had already passed the last-seen
        /// one, so only the difference counts.
        hidden: u64,
        /// Counted twice: a late-reported restart, reported after an operator restart forgot
        /// that a scrape had already seen the new container.
        doubled: u64,
        models: BTreeMap<Series, u64>,
        workloads: [u64; 2],
        /// (workload, series) -> tokens: what a workload's cost is computed from.
        workload_models: BTreeMap<(usize, Series), u64>,
        bindings: [u64; 2],
    }

    struct Sim {
        base: Timestamp,
        now: i64,
        period_start: Timestamp,
        bound_since: [Timestamp; 2],
        pods: [Option<SimPod>; 4],
        next_uid: usize,
        ledger: Ledger,
        oracle: Oracle,
    }

    impl Sim {
        fn new(b_created_after: i64) -> Self {
            let base = period();
            Sim {
                base,
                now: 0,
                period_start: base,
                bound_since: [base, base + jiff::SignedDuration::from_secs(b_created_after)],
                pods: Default::default(),
                next_uid: 0,
                ledger: Ledger::new(base),
                oracle: Oracle::default(),
            }
        }

        fn time(&self) -> Timestamp {
            self.base + jiff::SignedDuration::from_secs(self.now)
        }

        /// Whether binding `b` exists and selects the pod in `slot`.
        fn can_scrape(&self, slot: usize, b: usize) -> bool {
            self.pods[slot]
                .as_ref()
                .is_some_and(|p| p.bound[b] && self.bound_since[b] <= self.time())
        }

        /// A successful scrape: the ledger's count must be exactly the oracle's.
        fn scrape(&mut self, slot: usize, b: usize) {
            let now = self.time();
            let pod = self.pods[slot].as_mut().unwrap();
            let counts = if pod.scraped {
                true
            } else {
                pod.scraped = true;
                pod.owner = Some(b);
                pod.started_at >= self.period_start.max(self.bound_since[b])
            };
            // A restart the status reports for the first time: the counters are all new if its
            // container started after the last scrape (count from zero); if not, that scrape
            // already saw them (increases), unless the operator has forgotten it since (the
            // ledger counts from zero: twice).
            let mut recount = false;
            if pod.scraped_restarts.is_some_and(|r| pod.reported.0 > r) {
                if pod.last_scraped.is_none_or(|t| pod.reported.1 > t) {
                    pod.seen.clear();
                    pod.stale.clear();
                } else if pod.forgotten {
                    recount = true;
                    pod.seen.clear();
                    pod.stale.clear();
                }
            }
            pod.scraped_restarts = Some(pod.reported.0);
            pod.last_scraped = Some(now);
            pod.forgotten = false;
            let owner = pod.owner.unwrap();
            let mut expected = 0;
            let mut pending = std::mem::take(&mut pod.pending);
            for (series, value) in &pod.counters {
                let n = pending.remove(series).unwrap_or(0);
                let last = pod.seen.insert(*series, *value).unwrap_or(0);
                let counted = match pod.stale.remove(series) {
                    _ if recount => *value,
                    true if *value >= last => value - last,
                    _ => n,
                };
                if counts {
                    self.oracle.hidden += n.saturating_sub(counted);
                    self.oracle.doubled += counted.saturating_sub(n);
                    expected += counted;
                    *self.oracle.models.entry(*series).or_default() += counted;
                    *self.oracle.workload_models.entry((pod.workload, *series)).or_default() += counted;
                } else {
                    self.oracle.excluded += n;
                }
            }
            assert!(pending.is_empty(), "spent on a series the exporter does not report");
            self.oracle.workloads[pod.workload] += expected;
            self.oracle.bindings[owner] += expected;
            let (kind, name) = WORKLOADS[pod.workload];
            let observation = PodObservation {
                uid: &pod.uid,
                name: &pod.uid,
                binding: BINDINGS[b],
                workload: (kind, name),
                restarts: pod.reported.0,
                started_at: Some(pod.started_at),
                bound_since: self.bound_since[b],
                container_started: Some(pod.reported.1),
                scraped_at: now,
            };
            assert!(self.bound_since[b] <= now);
            let added = self.ledger.observe(&observation, &pod.usage());
            assert_eq!(added, expected, "scrape of {} through {}", pod.uid, BINDINGS[b]);
            // What the operator's counters take is exactly what the scrape added.
            let counted: u64 = self.ledger.take_counted().values().flatten().sum();
            assert_eq!(counted, added, "counted for the metrics");
        }

        fn apply(&mut self, event: &Event) {
            self.now += 1;
            match *event {
                Event::Start {
                    slot,
                    preexisting,
                    bound,
                    workload,
                    initial,
                } => {
                    if self.pods[slot].is_some() {
                        return;
                    }
                    let started_at = if preexisting {
                        self.base - jiff::SignedDuration::from_hours(1)
                    } else {
                        self.time()
                    };
                    let mut counters = BTreeMap::new();
                    if preexisting && initial > 0 {
                        counters.insert((0, Input), initial);
                    }
                    self.next_uid += 1;
                    self.pods[slot] = Some(SimPod {
                        uid: format!("pod-{}", self.next_uid),
                        started_at,
                        bound: [bound & 1 != 0, bound & 2 != 0],
                        workload,
                        restarts: if preexisting { 3 } else { 0 },
                        counters,
                        pending: BTreeMap::new(),
                        seen: BTreeMap::new(),
                        stale: BTreeSet::new(),
                        container_started: started_at,
                        reported: (if preexisting { 3 } else { 0 }, started_at),
                        scraped_restarts: None,
                        last_scraped: None,
                        forgotten: false,
                        scraped: false,
                        owner: None,
                    });
                }
                Event::Spend {
                    slot,
                    model,
                    output,
                    amount,
                } => {
                    if let Some(pod) = self.pods[slot].as_mut() {
                        let series = (model, if output { Output } else { Input });
                        *pod.counters.entry(series).or_default() += amount;
                        *pod.pending.entry(series).or_default() += amount;
                        self.oracle.spent += amount;
                    }
                }
                Event::Scrape { slot, binding, fails } => {
                    if !fails && self.can_scrape(slot, binding) {
                        self.scrape(slot, binding);
                    }
                }
                Event::DoubleScrape { slot } => {
                    if self.can_scrape(slot, 0) && self.can_scrape(slot, 1) {
                        self.scrape(slot, 0);
                        // Same values through the other binding: the oracle expects 0.
                        self.scrape(slot, 1);
                    }
                }
                Event::Crash { slot, late } => {
                    let now = self.time();
                    if let Some(pod) = self.pods[slot].as_mut() {
                        self.oracle.lost += pod.pending();
                        pod.pending.clear();
                        pod.counters.clear();
                        pod.restarts += 1;
                        pod.container_started = now;
                        // Until the status reports it, the ledger sees counters that went down
                        // (from zero) or kept growing past the old values (hidden), as after an
                        // exporter reset.
                        pod.stale = pod.seen.keys().copied().collect();
                        if !late {
                            pod.reported = (pod.restarts, now);
                        }
                    }
                }
                Event::KubeletReport { slot } => {
                    if let Some(pod) = self.pods[slot].as_mut() {
                        pod.reported = (pod.restarts, pod.container_started);
                    }
                }
                Event::ExporterReset { slot } => {
                    if let Some(pod) = self.pods[slot].as_mut() {
                        self.oracle.lost += pod.pending();
                        pod.pending.clear();
                        // It keeps reporting its series, at 0.
                        pod.counters.values_mut().for_each(|v| *v = 0);
                        pod.stale = pod.seen.keys().copied().collect();
                    }
                }
                Event::Delete { slot, final_fails } => {
                    let Some(pod) = self.pods[slot].as_ref() else {
                        return;
                    };
                    let through = (0..2).find(|b| self.can_scrape(slot, *b));
                    match through {
                        Some(b) if !final_fails => self.scrape(slot, b),
                        _ => self.oracle.lost += pod.pending(),
                    }
                    let pod = self.pods[slot].take().unwrap();
                    assert_eq!(self.ledger.forget(&pod.uid), pod.scraped);
                }
                Event::Reset => {
                    self.period_start = self.time();
                    self.ledger.reset(self.period_start);
                    // What no scrape has seen yet is spent in the new period.
                    let pending: u64 = self.pods.iter().flatten().map(SimPod::pending).sum();
                    self.oracle = Oracle {
                        spent: pending,
                        ..Oracle::default()
                    };
                }
                Event::OperatorRestart => {
                    for pod in self.pods.iter_mut().flatten() {
                        pod.forgotten = true;
                    }
                    let json = serde_json::to_string(&self.ledger.to_state()).unwrap();
                    let state: AccountingState = serde_json::from_str(&json).unwrap();
                    let restored = Ledger::from_state(Some(&state));
                    assert_eq!(restored, self.ledger);
                    assert_eq!(restored.to_state(), state);
                    self.ledger = restored;
                }
            }
            self.check();
        }

        fn check(&self) {
            let o = &self.oracle;
            let pending: u64 = self.pods.iter().flatten().map(SimPod::pending).sum();
            let used = self.ledger.used_tokens(None);
            assert!(used <= o.spent + o.doubled, "counted {used} > spent {}", o.spent);
            assert_eq!(
                used,
                o.spent - o.lost - o.excluded - o.hidden + o.doubled - pending,
                "{o:?}, pending {pending}"
            );
            for t in TokenType::ALL {
                let want: u64 = o.models.iter().filter(|((_, tt), _)| *tt == t).map(|(_, v)| v).sum();
                assert_eq!(self.ledger.tokens(t), want);
            }
            for (model, input, output) in self.ledger.models() {
                let m = MODELS.iter().position(|x| *x == model).unwrap();
                assert_eq!(input, o.models.get(&(m, Input)).copied().unwrap_or(0));
                assert_eq!(output, o.models.get(&(m, Output)).copied().unwrap_or(0));
            }
            for (i, (kind, name)) in WORKLOADS.iter().enumerate() {
                let got = self
                    .ledger
                    .workloads()
                    .into_iter()
                    .find(|w| (w.0, w.1) == (*kind, *name))
                    .map_or(0, |w| w.2);
                assert_eq!(got, o.workloads[i], "workload {name}");
                // Per model and type too, exactly, across restarts and resets.
                let oracle = |m: usize, t: TokenType| o.workload_models.get(&(i, (m, t))).copied().unwrap_or(0);
                match self.ledger.workload_models(*kind, name) {
                    Some(models) => {
                        for (model, input, output) in models {
                            let m = MODELS.iter().position(|x| *x == model).unwrap();
                            assert_eq!((input, output), (oracle(m, Input), oracle(m, Output)), "{name} {model}");
                        }
                        let sum: u64 = (0..MODELS.len()).map(|m| oracle(m, Input) + oracle(m, Output)).sum();
                        assert_eq!(sum, got, "{name}: its models hold all its tokens");
                    }
                    None => assert_eq!(got, 0, "{name} has tokens but no models"),
                }
            }
            for (i, b) in BINDINGS.iter().enumerate() {
                assert_eq!(self.ledger.binding_tokens(b), o.bindings[i], "binding {b}");
            }
        }

        /// Every pod still running gets a successful scrape: nothing is pending any more.
        fn finish(&mut self) {
            self.now += 1_000;
            for slot in 0..self.pods.len() {
                if let Some(b) = (0..2).find(|b| self.can_scrape(slot, *b)) {
                    self.scrape(slot, b);
                }
            }
            self.check();
        }
    }

    fn event() -> impl Strategy<Value = Event> {
        let slot = 0..4usize;
        prop_oneof![
            2 => (slot.clone(), any::<bool>(), 1..4u8, 0..2usize, 0..1_000u64).prop_map(
                |(slot, preexisting, bound, workload, initial)| Event::Start {
                    slot, preexisting, bound, workload, initial
                }
            ),
            6 => (slot.clone(), 0..2usize, any::<bool>(), 1..1_000u64)
                .prop_map(|(slot, model, output, amount)| Event::Spend { slot, model, output, amount }),
            5 => (slot.clone(), 0..2usize, prop::bool::weighted(0.2))
                .prop_map(|(slot, binding, fails)| Event::Scrape { slot, binding, fails }),
            1 => slot.clone().prop_map(|slot| Event::DoubleScrape { slot }),
            1 => (slot.clone(), any::<bool>()).prop_map(|(slot, late)| Event::Crash { slot, late }),
            1 => slot.clone().prop_map(|slot| Event::KubeletReport { slot }),
            1 => slot.clone().prop_map(|slot| Event::ExporterReset { slot }),
            1 => (slot, prop::bool::weighted(0.2))
                .prop_map(|(slot, final_fails)| Event::Delete { slot, final_fails }),
            1 => Just(Event::Reset),
            1 => Just(Event::OperatorRestart),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Counted == true tokens reported while bound, minus exactly what crashes (and failed
        /// final scrapes, and exporter resets) lost after the last successful scrape, what rule 3
        /// leaves as a baseline, and what an exporter reset hid; never more than the truth; and
        /// every per-model, per-workload and per-binding total is exactly the oracle's.
        #[test]
        fn counts_every_token_once(b_created_after in 0..30i64, events in prop::collection::vec(event(), 0..80)) {
            let mut sim = Sim::new(b_created_after);
            for e in &events {
                sim.apply(e);
            }
            sim.finish();
            let o = &sim.oracle;
            prop_assert_eq!(sim.ledger.used_tokens(None), o.spent - o.lost - o.excluded - o.hidden + o.doubled);
        }

        /// The same with every event on one pod, where crashes, late restart reports, exporter
        /// resets and operator restarts meet far more often.
        #[test]
        fn counts_every_token_of_one_pod_once(b_created_after in 0..30i64, events in prop::collection::vec(event(), 0..80)) {
            let mut sim = Sim::new(b_created_after);
            for e in &events {
                sim.apply(&e.on_first_slot());
            }
            sim.finish();
            let o = &sim.oracle;
            prop_assert_eq!(sim.ledger.used_tokens(None), o.spent - o.lost - o.excluded - o.hidden + o.doubled);
        }

        /// Without crashes, lost final scrapes, pods from before the period and period resets,
        /// everything spent is counted.
        #[test]
        fn counts_everything_when_nothing_is_lost(events in prop::collection::vec(event(), 0..80)) {
            let mut sim = Sim::new(0);
            for e in &events {
                let e = match e.clone() {
                    Event::Crash { .. } | Event::ExporterReset { .. } | Event::Reset => continue,
                    Event::Delete { slot, .. } => Event::Delete { slot, final_fails: false },
                    Event::Start { slot, bound, workload, initial, .. } => {
                        Event::Start { slot, preexisting: false, bound, workload, initial }
                    }
                    e => e,
                };
                sim.apply(&e);
            }
            sim.finish();
            prop_assert_eq!(sim.oracle.lost + sim.oracle.excluded + sim.oracle.hidden, 0);
            prop_assert_eq!(sim.ledger.used_tokens(None), sim.oracle.spent);
        }
    }
}
