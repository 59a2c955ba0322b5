//! The operator's own Prometheus metrics, in one registry held in shared state.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use prometheus::{
    CounterVec, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder, core::Collector,
};
use rust_decimal::prelude::ToPrimitive;

use crate::{
    api::{BudgetPhase, SubjectsUsage, TokenBudgetStatus, WorkloadKind},
    usage::account::Charge,
};

/// At most this many workloads per budget have chargeback series of their own; the tokens
/// and cost of further ones count under `workload="(other)"` (per kind).
pub const CHARGEBACK_WORKLOADS: usize = 50;
/// At most this many models per budget have chargeback series of their own; further ones
/// count under `model="(other)"`.
pub const CHARGEBACK_MODELS: usize = 20;
/// The workload or model that stands for those beyond the bounds.
pub const OTHER: &str = "(other)";

/// Metrics about the operator's own work.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by controller (`tokenbudget` / `budgetbinding`).
    pub reconciles: IntCounterVec,
    /// Failed reconciles by controller and error kind.
    pub reconcile_errors: IntCounterVec,
    /// Reconcile durations by controller.
    pub reconcile_duration: HistogramVec,
    budgets: BudgetSeries,
    chargeback: Chargeback,
    /// Status writes by kind (`TokenBudget`, `BudgetBinding`).
    pub status_writes: IntCounterVec,
    /// Status writes that failed, by kind and reason (`controller::status::failure_reason`).
    pub status_write_failures: IntCounterVec,
    /// Scrapes by result (`ok` or the error kind).
    pub scrapes: IntCounterVec,
    /// Scrape durations.
    pub scrape_duration: Histogram,
    /// Changes made to workloads, by what was done (`scale_down`, `suspend`, `restore`).
    pub enforcement_actions: IntCounterVec,
    /// Writes to workloads or quotas that failed (retried at the next reconcile).
    pub enforcement_failures: IntCounter,
    /// From the end of the scrapes that found a budget exhausted to the scale-down (or
    /// suspend) accepted by the API server.
    pub enforcement_latency: Histogram,
    /// 1 while a watch's store is current, 0 from a watch error until it has listed again (and
    /// before its first listing), by resource (`pods`, `deployments`, ..., `tokenbudgets`).
    pub watch_synced: IntGaugeVec,
    /// Budget reconciles that took no enforcement decision because a store was not current.
    pub enforcement_held: IntCounter,
    /// From the end of a cycle's scrapes to its budget's status accepted, for cycles whose
    /// status changed.
    pub status_delay: Histogram,
    /// Leader election: who leads, and the writes of one that does not.
    pub election: ElectionMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, each registered in the registry that [`Metrics::render`] exposes.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        Self {
            reconciles: counter_vec(
                r,
                "tokenbudget_reconcile_total",
                "Reconciles run, by controller",
                &["controller"],
            ),
            reconcile_errors: counter_vec(
                r,
                "tokenbudget_reconcile_errors_total",
                "Reconciles that failed, by controller and error",
                &["controller", "error"],
            ),
            reconcile_duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new("tokenbudget_reconcile_duration_seconds", "How long reconciles take")
                        .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
                    &["controller"],
                ),
            ),
            status_writes: counter_vec(
                r,
                "tokenbudget_status_writes_total",
                "Status writes, by kind of object",
                &["kind"],
            ),
            status_write_failures: counter_vec(
                r,
                "tokenbudget_status_write_failures_total",
                "Status writes that failed, by kind of object and reason",
                &["kind", "reason"],
            ),
            scrapes: counter_vec(
                r,
                "tokenbudget_scrapes_total",
                "Scrapes of agent pods, by result",
                &["result"],
            ),
            scrape_duration: histogram(
                r,
                "tokenbudget_scrape_duration_seconds",
                "How long scrapes of agent pods take",
                vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0],
            ),
            enforcement_actions: counter_vec(
                r,
                "tokenbudget_enforcement_actions_total",
                "Changes made to workloads, by action",
                &["action"],
            ),
            enforcement_failures: counter(
                r,
                "tokenbudget_enforcement_failures_total",
                "Writes to workloads or quotas that failed and are retried",
            ),
            enforcement_latency: histogram(
                r,
                "tokenbudget_enforcement_latency_seconds",
                "From the scrapes that found a budget exhausted to the scale-down accepted by the API server",
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0],
            ),
            watch_synced: int_gauge_vec(
                r,
                "tokenbudget_watch_synced",
                "1 while the watch of a resource is current, 0 from a watch error until it has listed again",
                &["resource"],
            ),
            enforcement_held: counter(
                r,
                "tokenbudget_enforcement_held_total",
                "Budget reconciles that took no enforcement decision because a watch was not current",
            ),
            status_delay: histogram(
                r,
                "tokenbudget_cycle_status_delay_seconds",
                "From the end of a cycle's scrapes to its budget's status accepted by the API server",
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            ),
            election: ElectionMetrics::new(r),
            budgets: BudgetSeries::new(r),
            chargeback: Chargeback::new(r),
            registry: build_info(registry),
        }
    }

    /// Sets a budget's series from its status.
    pub fn observe_budget(&self, namespace: &str, name: &str, status: &TokenBudgetStatus, limit: Option<i64>) {
        let labels = [namespace, name];
        let used = status.used.as_ref();
        self.budgets
            .used_tokens
            .with_label_values(&labels)
            .set(used.map_or(0, |u| u.tokens));
        if let Some(limit) = limit {
            self.budgets.limit_tokens.with_label_values(&labels).set(limit);
        } else {
            let _ = self.budgets.limit_tokens.remove_label_values(&labels);
        }
        let cost = used
            .and_then(|u| u.cost.as_deref())
            .and_then(|c| c.parse::<f64>().ok())
            .unwrap_or(0.0);
        self.budgets.used_cost.with_label_values(&labels).set(cost);
        let phase = status.phase.unwrap_or(BudgetPhase::Active);
        let number = match phase {
            BudgetPhase::Exhausted => 2,
            BudgetPhase::Warning => 1,
            BudgetPhase::Active => 0,
        };
        self.budgets.phase.with_label_values(&labels).set(number);
        match status.pacing.as_ref().and_then(|p| p.pace.parse::<f64>().ok()) {
            Some(pace) => self.budgets.pace.with_label_values(&labels).set(pace),
            None => {
                let _ = self.budgets.pace.remove_label_values(&labels);
            }
        }
        for one_of in PHASES {
            self.budgets
                .phases
                .with_label_values(&[namespace, name, one_of])
                .set(i64::from(phase_name(phase) == one_of));
        }
        self.budgets.observe_subjects(namespace, name, &status.subjects);
    }

    /// Adds what a budget's cycles counted (see [`crate::usage::account::Account::take_charges`])
    /// to its monotonic chargeback counters, cost in `currency`.
    pub fn charge(&self, namespace: &str, budget: &str, currency: &str, charges: &[Charge]) {
        self.chargeback.charge(namespace, budget, currency, charges);
    }

    /// Removes a deleted budget's series.
    pub fn forget_budget(&self, namespace: &str, name: &str) {
        let labels = [namespace, name];
        let _ = self.budgets.used_tokens.remove_label_values(&labels);
        let _ = self.budgets.limit_tokens.remove_label_values(&labels);
        let _ = self.budgets.used_cost.remove_label_values(&labels);
        let _ = self.budgets.pace.remove_label_values(&labels);
        let _ = self.budgets.phase.remove_label_values(&labels);
        let _ = self.budgets.last_cycle.remove_label_values(&labels);
        for phase in PHASES {
            let _ = self.budgets.phases.remove_label_values(&[namespace, name, phase]);
        }
        self.budgets.observe_subjects(namespace, name, &[]);
        self.chargeback.forget(namespace, name);
    }

    /// Records when a budget's accounting cycle scraped its pods (its bindings' status keeps
    /// the time of the last cycle that changed it, so that idle bindings are never written).
    pub fn observe_cycle(&self, namespace: &str, name: &str, at: jiff::Timestamp) {
        self.budgets
            .last_cycle
            .with_label_values(&[namespace, name])
            .set(at.as_millisecond() as f64 / 1000.0);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.chargeback.expose();
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# error: {e}\n"))
    }
}

/// Leader election's series.
#[derive(Clone)]
pub struct ElectionMetrics {
    /// 1 while this replica leads (always, without leader election), 0 while it stands by.
    pub leader: IntGauge,
    /// How often this replica began to lead.
    pub leader_transitions: IntCounter,
    /// Writes refused because this replica did not lead when it sent them.
    pub writes_fenced: IntCounter,
    /// When this replica last sent a write (Unix time).
    pub last_write: Gauge,
}

impl ElectionMetrics {
    fn new(r: &Registry) -> Self {
        Self {
            leader: register(
                r,
                IntGauge::new(
                    "tokenbudget_leader",
                    "1 while this replica leads (scrapes, writes status, enforces), 0 while it stands by",
                ),
            ),
            leader_transitions: counter(
                r,
                "tokenbudget_leader_transitions_total",
                "How often this replica began to lead",
            ),
            writes_fenced: counter(
                r,
                "tokenbudget_writes_fenced_total",
                "Writes refused because this replica did not lead when it sent them",
            ),
            last_write: register(
                r,
                Gauge::new(
                    "tokenbudget_last_write_timestamp_seconds",
                    "When this replica last sent a write to the API server (Unix time), with leader election",
                ),
            ),
        }
    }
}

/// The series of each budget, set from its status after each reconcile.
#[derive(Clone)]
struct BudgetSeries {
    used_tokens: IntGaugeVec,
    limit_tokens: IntGaugeVec,
    used_cost: GaugeVec,
    /// `status.pacing.pace`, while the budget has `spec.pacing`.
    pace: GaugeVec,
    phase: IntGaugeVec,
    /// One series per phase, 1 on the current one (as kube-state-metrics has them).
    phases: IntGaugeVec,
    last_cycle: GaugeVec,
    /// Per subject label: the subjects counted one by one, and those exhausted.
    subjects: IntGaugeVec,
    subjects_exhausted: IntGaugeVec,
    /// The subject labels each budget has series of, to remove those it no longer has.
    subject_labels: Arc<Mutex<SubjectLabels>>,
}

/// (namespace, budget) -> the subject labels it has series of.
type SubjectLabels = HashMap<(String, String), Vec<String>>;

impl BudgetSeries {
    fn new(r: &Registry) -> Self {
        Self {
            used_tokens: budget_gauge(r, "tokenbudget_used_tokens", "Tokens used in the current period"),
            limit_tokens: budget_gauge(r, "tokenbudget_limit_tokens", "Token limit per period"),
            used_cost: gauge_vec(
                r,
                "tokenbudget_used_cost",
                "Cost used in the current period, in the budget's currency",
                &BUDGET_LABELS,
            ),
            pace: gauge_vec(
                r,
                "tokenbudget_pace",
                "The pace agents keep so that the budget lasts until it resets (status.pacing.pace): 1 while on track",
                &BUDGET_LABELS,
            ),
            phase: budget_gauge(
                r,
                "tokenbudget_phase",
                "Phase of the budget: 0 Active, 1 Warning, 2 Exhausted",
            ),
            phases: int_gauge_vec(
                r,
                "tokenbudget_budget_phase",
                "1 on the budget's current phase (Active, Warning, Exhausted), 0 on the others",
                &["namespace", "budget", "phase"],
            ),
            last_cycle: gauge_vec(
                r,
                "tokenbudget_last_cycle_timestamp_seconds",
                "When the budget's last accounting cycle began (Unix time)",
                &BUDGET_LABELS,
            ),
            subjects: int_gauge_vec(
                r,
                "tokenbudget_subjects",
                "Subjects (values of a spec.subjects label) that spent in the current period, counted one by one",
                &["namespace", "name", "label"],
            ),
            subjects_exhausted: int_gauge_vec(
                r,
                "tokenbudget_subjects_exhausted",
                "Subjects (values of a spec.subjects label) that reached their limit in the current period",
                &["namespace", "name", "label"],
            ),
            subject_labels: Arc::default(),
        }
    }

    /// Sets a budget's subject series from `status.subjects`, and removes those of labels it
    /// no longer has (all of them for `[]`).
    fn observe_subjects(&self, namespace: &str, name: &str, subjects: &[SubjectsUsage]) {
        let labels: Vec<String> = subjects.iter().map(|s| s.label.clone()).collect();
        let key = (namespace.to_owned(), name.to_owned());
        let mut known = lock(&self.subject_labels);
        let before = match labels.is_empty() {
            true => known.remove(&key).unwrap_or_default(),
            false => known.insert(key, labels.clone()).unwrap_or_default(),
        };
        drop(known);
        for gone in before.iter().filter(|l| !labels.contains(l)) {
            let _ = self.subjects.remove_label_values(&[namespace, name, gone]);
            let _ = self.subjects_exhausted.remove_label_values(&[namespace, name, gone]);
        }
        for s in subjects {
            let values = [namespace, name, s.label.as_str()];
            self.subjects.with_label_values(&values).set(s.count);
            self.subjects_exhausted
                .with_label_values(&values)
                .set(s.exhausted_count);
        }
    }
}

/// The labels of a budget's series.
const BUDGET_LABELS: [&str; 2] = ["namespace", "name"];

/// The values of `tokenbudget_budget_phase`'s `phase` label.
const PHASES: [&str; 3] = ["Active", "Warning", "Exhausted"];

fn phase_name(phase: BudgetPhase) -> &'static str {
    match phase {
        BudgetPhase::Active => PHASES[0],
        BudgetPhase::Warning => PHASES[1],
        BudgetPhase::Exhausted => PHASES[2],
    }
}

/// What the binary was built from, as far as the compiler knows it without a build script:
/// the crate's version, and the commit and compiler that the build passes in
/// `TOKENBUDGET_GIT_COMMIT` and `TOKENBUDGET_RUSTC_VERSION` (the Dockerfile does), else
/// `unknown`.
pub const BUILD_INFO: [(&str, &str); 3] = [
    ("version", env!("CARGO_PKG_VERSION")),
    (
        "git_commit",
        match option_env!("TOKENBUDGET_GIT_COMMIT") {
            Some(commit) => commit,
            None => "unknown",
        },
    ),
    (
        "rustc",
        match option_env!("TOKENBUDGET_RUSTC_VERSION") {
            Some(version) => version,
            None => "unknown",
        },
    ),
];

/// Registers `tokenbudget_build_info`, 1 with the labels of [`BUILD_INFO`].
fn build_info(registry: Registry) -> Registry {
    let names = BUILD_INFO.map(|(name, _)| name);
    let info = int_gauge_vec(
        &registry,
        "tokenbudget_build_info",
        "Always 1: the operator's version, and the commit and compiler it was built with",
        &names,
    );
    info.with_label_values(&BUILD_INFO.map(|(_, value)| value)).set(1);
    registry
}

/// The chargeback counters: tokens and cost by budget, workload and model, added to as the
/// budgets' cycles count (never set from a total, so they never go back at a period reset).
///
/// Bounded per budget: at most [`CHARGEBACK_WORKLOADS`] workloads and [`CHARGEBACK_MODELS`]
/// models get series of their own, the first ones counted; the others count as
/// [`OTHER`]. A deleted budget's series are removed.
///
/// A series appears at 0 and gets its first increase only after one exposition has shown
/// it at 0: Prometheus's `increase()` and `rate()` do not count a counter's first sample,
/// so a series that appeared with its first tokens already in it would lose them.
#[derive(Clone)]
struct Chargeback {
    tokens: IntCounterVec,
    cost: CounterVec,
    budgets: Arc<Mutex<HashMap<(String, String), Charged>>>,
}

/// One budget's chargeback series.
#[derive(Default)]
struct Charged {
    workloads: BTreeSet<(WorkloadKind, String)>,
    models: BTreeSet<String>,
    /// The label values of each series of `tokenbudget_tokens_total` (after `namespace` and
    /// `budget`), and what is held back until it has been exposed at 0.
    tokens: BTreeMap<[String; 4], Held<u64>>,
    /// The same for `tokenbudget_cost_total`.
    cost: BTreeMap<[String; 4], Held<f64>>,
}

/// A new series' increase, held back until an exposition has shown the series at 0.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Held<T> {
    /// Created at 0, not yet exposed.
    New(T),
    /// Exposed at 0: added before the next exposition.
    Exposed(T),
    /// Added to as it is counted.
    Live,
}

impl Chargeback {
    fn new(r: &Registry) -> Self {
        Self {
            tokens: counter_vec(
                r,
                "tokenbudget_tokens_total",
                "Tokens counted, by budget, workload, model and type (input, output)",
                &["namespace", "budget", "workload_kind", "workload", "model", "type"],
            ),
            cost: register(
                r,
                CounterVec::new(
                    Opts::new(
                        "tokenbudget_cost_total",
                        "Cost of the tokens counted, in the currency of the label, by budget, workload and model \
                         (derived: the budget's status is the exact record)",
                    ),
                    &["namespace", "budget", "workload_kind", "workload", "model", "currency"],
                ),
            ),
            budgets: Arc::default(),
        }
    }

    fn charge(&self, namespace: &str, budget: &str, currency: &str, charges: &[Charge]) {
        if charges.is_empty() {
            return;
        }
        let mut budgets = lock(&self.budgets);
        let charged = budgets.entry((namespace.to_string(), budget.to_string())).or_default();
        for charge in charges {
            let (kind, workload) = charged.workload(&charge.workload);
            let model = charged.model(&charge.model);
            for (token_type, tokens) in [("input", charge.input), ("output", charge.output)] {
                if tokens == 0 {
                    continue;
                }
                let labels = [kind.clone(), workload.clone(), model.clone(), token_type.to_string()];
                add(&self.tokens, namespace, budget, &mut charged.tokens, labels, tokens);
            }
            let Some(cost) = charge.cost.and_then(|c| c.to_f64()).filter(|c| c.is_finite()) else {
                continue;
            };
            let labels = [kind, workload, model, currency.to_string()];
            add(&self.cost, namespace, budget, &mut charged.cost, labels, cost.max(0.0));
        }
    }

    /// Before an exposition: adds the increases held back that an earlier one showed at 0,
    /// and marks the new series as shown.
    fn expose(&self) {
        let budgets = &mut *lock(&self.budgets);
        for ((namespace, budget), charged) in budgets.iter_mut() {
            release(&self.tokens, namespace, budget, &mut charged.tokens);
            release(&self.cost, namespace, budget, &mut charged.cost);
        }
    }

    /// Removes a deleted budget's series.
    fn forget(&self, namespace: &str, budget: &str) {
        let Some(charged) = lock(&self.budgets).remove(&(namespace.to_string(), budget.to_string())) else {
            return;
        };
        for labels in charged.tokens.keys() {
            let _ = self.tokens.remove_label_values(&full_labels(namespace, budget, labels));
        }
        for labels in charged.cost.keys() {
            let _ = self.cost.remove_label_values(&full_labels(namespace, budget, labels));
        }
    }
}

impl Charged {
    /// The `workload_kind` and `workload` labels of a workload: its own while the budget has
    /// room for it, else `(other)` of its kind.
    fn workload(&mut self, workload: &(WorkloadKind, String)) -> (String, String) {
        let kind = workload.0.as_str().to_string();
        if self.workloads.contains(workload) || self.workloads.len() < CHARGEBACK_WORKLOADS {
            self.workloads.insert(workload.clone());
            (kind, workload.1.clone())
        } else {
            (kind, OTHER.to_string())
        }
    }

    /// The `model` label of a model: its own while the budget has room for it, else `(other)`.
    fn model(&mut self, model: &str) -> String {
        if self.models.contains(model) || self.models.len() < CHARGEBACK_MODELS {
            self.models.insert(model.to_string());
            model.to_string()
        } else {
            OTHER.to_string()
        }
    }
}

/// Adds `value` to the series of `counter` with these labels: at once when it has been
/// exposed, else held back (a new series is created at 0).
fn add<P: prometheus::core::Atomic>(
    counter: &prometheus::core::GenericCounterVec<P>,
    namespace: &str,
    budget: &str,
    series: &mut BTreeMap<[String; 4], Held<P::T>>,
    labels: [String; 4],
    value: P::T,
) where
    P::T: std::ops::AddAssign,
{
    let full = full_labels(namespace, budget, &labels);
    match series.get_mut(&labels) {
        Some(Held::Live) => counter.with_label_values(&full).inc_by(value),
        Some(Held::New(held) | Held::Exposed(held)) => *held += value,
        None => {
            counter.with_label_values(&full);
            series.insert(labels, Held::New(value));
        }
    }
}

/// Adds what was held back of the series an exposition has shown at 0; marks the new ones
/// as shown.
fn release<P: prometheus::core::Atomic>(
    counter: &prometheus::core::GenericCounterVec<P>,
    namespace: &str,
    budget: &str,
    series: &mut BTreeMap<[String; 4], Held<P::T>>,
) {
    for (labels, held) in series.iter_mut() {
        match *held {
            Held::Exposed(value) => {
                counter
                    .with_label_values(&full_labels(namespace, budget, labels))
                    .inc_by(value);
                *held = Held::Live;
            }
            Held::New(value) => *held = Held::Exposed(value),
            Held::Live => {}
        }
    }
}

fn full_labels<'a>(namespace: &'a str, budget: &'a str, labels: &'a [String; 4]) -> [&'a str; 6] {
    [namespace, budget, &labels[0], &labels[1], &labels[2], &labels[3]]
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers a new metric in `registry`. Both can fail only on a mistake in this file (an
/// invalid name or label, a name used twice), so both panic.
fn register<M: Collector + Clone + 'static>(registry: &Registry, metric: prometheus::Result<M>) -> M {
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

/// A counter with these labels, registered.
fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

/// A counter without labels, registered.
fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help))
}

/// An integer gauge with these labels, registered.
fn int_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

/// A gauge with these labels, registered.
fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(registry, GaugeVec::new(Opts::new(name, help), labels))
}

/// An integer gauge of each budget, registered.
fn budget_gauge(registry: &Registry, name: &str, help: &str) -> IntGaugeVec {
    int_gauge_vec(registry, name, help, &BUDGET_LABELS)
}

/// A histogram with these buckets, registered.
fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(
        registry,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::TokenBudgetSpec,
        usage::{Extractor, account::Account, ledger::PodObservation},
        validate,
    };

    /// Every series of `name` on `/metrics` whose labels include each of `labels`
    /// (`key="value"`), with its value.
    fn series(metrics: &Metrics, name: &str, labels: &[&str]) -> Vec<(String, f64)> {
        series_in(&metrics.render(), name, labels)
    }

    /// [`series`] in one exposition.
    fn series_in(text: &str, name: &str, labels: &[&str]) -> Vec<(String, f64)> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
                let wanted = metric == name && labels.iter().all(|l| rest.contains(l));
                wanted.then(|| (series.to_string(), value.parse().unwrap()))
            })
            .collect()
    }

    /// The one series of `name` with these labels (0 renders, as `/metrics` is read).
    fn value(metrics: &Metrics, name: &str, labels: &[&str]) -> Option<f64> {
        let found = series(metrics, name, labels);
        assert!(found.len() <= 1, "{labels:?} names one series: {found:?}");
        found.first().map(|(_, v)| *v)
    }

    /// A float counter's value, to within what adding floats loses.
    fn assert_close(value: Option<f64>, wanted: f64) {
        let value = value.expect("the series");
        assert!((value - wanted).abs() < 1e-12, "{value} is not {wanted}");
    }

    fn charge(kind: WorkloadKind, workload: &str, model: &str, input: u64, output: u64, cost: &str) -> Charge {
        Charge {
            workload: (kind, workload.into()),
            model: model.into(),
            input,
            output,
            cost: Some(cost.parse().unwrap()),
        }
    }

    const DEPLOYMENT: WorkloadKind = WorkloadKind::Deployment;

    #[test]
    fn a_new_series_shows_0_once_then_adds_every_delta() {
        let metrics = Metrics::new();
        let labels = ["budget=\"b\"", "workload=\"w\"", "model=\"m\"", "type=\"input\""];
        let cost = ["budget=\"b\"", "workload=\"w\"", "currency=\"EUR\""];
        metrics.charge("n", "b", "EUR", &[charge(DEPLOYMENT, "w", "m", 100, 0, "0.0001")]);
        // Prometheus's increase() does not count a counter's first sample: the series is
        // shown at 0 once before its first tokens, so that none is lost to it.
        let shown = metrics.render();
        assert_eq!(series_in(&shown, "tokenbudget_tokens_total", &labels)[0].1, 0.0);
        assert_eq!(series_in(&shown, "tokenbudget_cost_total", &cost)[0].1, 0.0);
        let shown = metrics.render();
        assert_eq!(series_in(&shown, "tokenbudget_tokens_total", &labels)[0].1, 100.0);
        assert_eq!(series_in(&shown, "tokenbudget_cost_total", &cost)[0].1, 0.0001);
        // No output counted: no series of it.
        assert_eq!(value(&metrics, "tokenbudget_tokens_total", &["type=\"output\""]), None);
        // Held back or not, every delta is added, once.
        metrics.charge("n", "b", "EUR", &[charge(DEPLOYMENT, "w", "m", 50, 7, "0.00005")]);
        metrics.charge("n", "b", "EUR", &[charge(DEPLOYMENT, "w", "m", 1, 0, "0")]);
        let output = ["workload=\"w\"", "type=\"output\""];
        let shown = metrics.render();
        assert_eq!(series_in(&shown, "tokenbudget_tokens_total", &labels)[0].1, 151.0);
        assert_eq!(series_in(&shown, "tokenbudget_tokens_total", &output)[0].1, 0.0);
        assert_eq!(value(&metrics, "tokenbudget_tokens_total", &output), Some(7.0));
        assert_close(value(&metrics, "tokenbudget_cost_total", &cost), 0.00015);
        // A model without a price: tokens, no cost series.
        let unpriced = Charge {
            cost: None,
            ..charge(DEPLOYMENT, "w", "free", 9, 0, "0")
        };
        metrics.charge("n", "b", "EUR", &[unpriced]);
        metrics.render();
        assert_eq!(
            value(&metrics, "tokenbudget_tokens_total", &["model=\"free\""]),
            Some(9.0)
        );
        assert_eq!(value(&metrics, "tokenbudget_cost_total", &["model=\"free\""]), None);
    }

    /// A budget's account, scraped as the operator scrapes a pod of Deployment `w` whose
    /// counter of model `m` reads `input`.
    fn scrape(account: &mut Account, input: u64) {
        let body = format!("vllm:prompt_tokens_total{{model_name=\"m\"}} {input}\n");
        let usage = Extractor::new(crate::api::MetricsFormat::Vllm, &[])
            .extract(body.as_bytes())
            .unwrap();
        let at = |t: &str| t.parse().unwrap();
        let pod = PodObservation {
            uid: "p",
            name: "p",
            binding: "bb",
            workload: (DEPLOYMENT, "w"),
            restarts: 0,
            started_at: Some(at("2026-01-01T00:00:00Z")),
            bound_since: at("2026-01-01T00:00:00Z"),
            container_started: None,
            scraped_at: at("2026-11-30T10:30:00Z"),
        };
        account.ledger_mut().observe(&pod, &usage);
    }

    #[test]
    fn the_counters_go_on_across_a_period_reset_while_the_status_starts_again() {
        let spec: TokenBudgetSpec = serde_yaml::from_str(
            "limits: {tokens: 1000000}\nperiod: {reset: Hourly}\npricing: [{model: m, input: '1', output: '2'}]",
        )
        .unwrap();
        let budget = validate::budget(&spec).unwrap();
        let metrics = Metrics::new();
        let mut account = Account::resume("uid", None);
        let cycle = |account: &mut Account, now: &str, input| {
            let now = now.parse().unwrap();
            let window = account.window(&budget, now, "2026-01-01T00:00:00Z".parse().unwrap());
            account.roll_over(&budget, &window, now);
            scrape(account, input);
            metrics.charge("n", "b", &budget.currency, &account.take_charges(&budget));
            metrics.render();
            account.ledger().used_tokens(None)
        };
        let labels = ["workload=\"w\"", "type=\"input\""];
        assert_eq!(cycle(&mut account, "2026-11-30T10:00:00Z", 0), 0, "the baseline");
        assert_eq!(cycle(&mut account, "2026-11-30T10:30:00Z", 600), 600);
        assert_eq!(cycle(&mut account, "2026-11-30T10:59:00Z", 900), 900);
        // A new hour: the status starts again from zero, the counter does not go back.
        assert_eq!(cycle(&mut account, "2026-11-30T11:00:01Z", 950), 50);
        assert_eq!(value(&metrics, "tokenbudget_tokens_total", &labels), Some(950.0));
        assert_eq!(cycle(&mut account, "2026-11-30T11:10:00Z", 1000), 100);
        assert_eq!(value(&metrics, "tokenbudget_tokens_total", &labels), Some(1000.0));
        assert_close(value(&metrics, "tokenbudget_cost_total", &["currency=\"USD\""]), 0.001);
        // The ended hour is in the history; the counter holds both hours.
        assert_eq!(account.history().len(), 1);
    }

    #[test]
    fn workloads_and_models_beyond_the_bound_count_as_other_and_the_totals_stay_exact() {
        let metrics = Metrics::new();
        let mut charges = Vec::new();
        for w in 0..CHARGEBACK_WORKLOADS + 10 {
            for m in 0..CHARGEBACK_MODELS + 5 {
                let kind = if w % 2 == 0 { DEPLOYMENT } else { WorkloadKind::Job };
                charges.push(charge(kind, &format!("w{w}"), &format!("m{m}"), 10, 1, "0.25"));
            }
        }
        metrics.charge("n", "b", "USD", &charges);
        // Another budget has bounds of its own.
        metrics.charge("n", "other", "USD", &[charge(DEPLOYMENT, "x", "y", 1, 0, "0")]);
        metrics.render();
        let tokens = series(&metrics, "tokenbudget_tokens_total", &["budget=\"b\""]);
        let costs = series(&metrics, "tokenbudget_cost_total", &["budget=\"b\""]);
        // At most the bound's workloads, plus `(other)` of each kind, by the bound's models
        // plus `(other)`, by two types.
        let pairs = (CHARGEBACK_WORKLOADS + 2) * (CHARGEBACK_MODELS + 1);
        assert_eq!((tokens.len(), costs.len()), (2 * pairs, pairs));
        let workloads: BTreeSet<&str> = tokens
            .iter()
            .filter_map(|(s, _)| s.split("workload=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(workloads.len(), CHARGEBACK_WORKLOADS + 1, "{workloads:?}");
        assert!(workloads.contains(OTHER));
        let others = series(
            &metrics,
            "tokenbudget_tokens_total",
            &["workload=\"(other)\"", "model=\"(other)\""],
        );
        assert_eq!(others.len(), 4, "(other) of each kind, by type: {others:?}");
        // Nothing is lost to the bound: every token and every cent is in some series.
        let sum = |s: &[(String, f64)]| s.iter().map(|(_, v)| v).sum::<f64>();
        assert_eq!(sum(&tokens), 11.0 * charges.len() as f64);
        assert!((sum(&costs) - 0.25 * charges.len() as f64).abs() < 1e-9);
        assert_eq!(
            value(
                &metrics,
                "tokenbudget_tokens_total",
                &["budget=\"other\"", "type=\"input\""]
            ),
            Some(1.0)
        );
    }

    fn status(phase: BudgetPhase) -> TokenBudgetStatus {
        TokenBudgetStatus {
            phase: Some(phase),
            ..Default::default()
        }
    }

    #[test]
    fn the_phase_is_one_series_per_state_with_1_on_the_current_one() {
        let metrics = Metrics::new();
        let phases = |metrics: &Metrics| {
            PHASES.map(|p| {
                value(
                    metrics,
                    "tokenbudget_budget_phase",
                    &["budget=\"b\"", &format!("phase=\"{p}\"")],
                )
                .unwrap_or(-1.0)
            })
        };
        metrics.observe_budget("n", "b", &TokenBudgetStatus::default(), None);
        assert_eq!(phases(&metrics), [1.0, 0.0, 0.0], "no phase yet: Active");
        metrics.observe_budget("n", "b", &status(BudgetPhase::Warning), None);
        assert_eq!(phases(&metrics), [0.0, 1.0, 0.0]);
        metrics.observe_budget("n", "b", &status(BudgetPhase::Exhausted), None);
        assert_eq!(phases(&metrics), [0.0, 0.0, 1.0]);
        // The older gauge stays, for the alerts and dashboards that read it.
        assert_eq!(value(&metrics, "tokenbudget_phase", &["name=\"b\""]), Some(2.0));
        metrics.observe_budget("n", "b", &status(BudgetPhase::Active), None);
        assert_eq!(phases(&metrics), [1.0, 0.0, 0.0]);
    }

    #[test]
    fn the_pace_is_a_series_while_the_budget_paces() {
        let metrics = Metrics::new();
        let mut paced = status(BudgetPhase::Active);
        paced.pacing = Some(crate::api::PacingStatus {
            pace: "0.60".into(),
            ..Default::default()
        });
        metrics.observe_budget("n", "b", &paced, None);
        assert_eq!(value(&metrics, "tokenbudget_pace", &["name=\"b\""]), Some(0.6));
        // spec.pacing removed: the series goes.
        metrics.observe_budget("n", "b", &status(BudgetPhase::Active), None);
        assert_eq!(value(&metrics, "tokenbudget_pace", &["name=\"b\""]), None);
        // The budget deleted: so does it.
        metrics.observe_budget("n", "b", &paced, None);
        metrics.forget_budget("n", "b");
        assert_eq!(value(&metrics, "tokenbudget_pace", &["name=\"b\""]), None);
    }

    #[test]
    fn a_deleted_budgets_series_go_and_the_others_stay() {
        let metrics = Metrics::new();
        for budget in ["gone", "kept"] {
            metrics.observe_budget("n", budget, &status(BudgetPhase::Warning), Some(10));
            metrics.charge("n", budget, "USD", &[charge(DEPLOYMENT, "w", "m", 3, 4, "0.5")]);
        }
        // One held back, not yet shown, goes too.
        metrics.render();
        metrics.charge("n", "gone", "USD", &[charge(DEPLOYMENT, "new", "m", 3, 0, "0.5")]);
        metrics.forget_budget("n", "gone");
        let text = metrics.render();
        assert!(!text.contains("\"gone\""), "{text}");
        assert_eq!(
            value(
                &metrics,
                "tokenbudget_tokens_total",
                &["budget=\"kept\"", "type=\"output\""]
            ),
            Some(4.0)
        );
        assert_eq!(
            series(&metrics, "tokenbudget_budget_phase", &["budget=\"kept\""]).len(),
            3
        );
        // Counted again (created anew, or an operator that never saw the delete): from 0.
        metrics.charge("n", "gone", "USD", &[charge(DEPLOYMENT, "w", "m", 1, 0, "0")]);
        assert_eq!(
            value(
                &metrics,
                "tokenbudget_tokens_total",
                &["budget=\"gone\"", "type=\"input\""]
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                &metrics,
                "tokenbudget_tokens_total",
                &["budget=\"gone\"", "type=\"input\""]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn build_info_names_the_version() {
        let metrics = Metrics::new();
        let labels = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
        assert_eq!(value(&metrics, "tokenbudget_build_info", &[&labels]), Some(1.0));
        let (_, commit) = BUILD_INFO[1];
        assert!(!commit.is_empty());
    }
}
