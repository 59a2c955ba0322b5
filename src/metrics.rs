//! The operator's own Prometheus metrics, in one registry held in shared state.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, core::Collector,
};

use crate::api::{BudgetPhase, TokenBudgetStatus};

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
            registry,
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
        let phase = match status.phase {
            Some(BudgetPhase::Exhausted) => 2,
            Some(BudgetPhase::Warning) => 1,
            _ => 0,
        };
        self.budgets.phase.with_label_values(&labels).set(phase);
    }

    /// Removes a deleted budget's series.
    pub fn forget_budget(&self, namespace: &str, name: &str) {
        let labels = [namespace, name];
        let _ = self.budgets.used_tokens.remove_label_values(&labels);
        let _ = self.budgets.limit_tokens.remove_label_values(&labels);
        let _ = self.budgets.used_cost.remove_label_values(&labels);
        let _ = self.budgets.phase.remove_label_values(&labels);
        let _ = self.budgets.last_cycle.remove_label_values(&labels);
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
    phase: IntGaugeVec,
    last_cycle: GaugeVec,
}

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
            phase: budget_gauge(
                r,
                "tokenbudget_phase",
                "Phase of the budget: 0 Active, 1 Warning, 2 Exhausted",
            ),
            last_cycle: gauge_vec(
                r,
                "tokenbudget_last_cycle_timestamp_seconds",
                "When the budget's last accounting cycle began (Unix time)",
                &BUDGET_LABELS,
            ),
        }
    }
}

/// The labels of a budget's series.
const BUDGET_LABELS: [&str; 2] = ["namespace", "name"];

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
