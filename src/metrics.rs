//! The operator's own Prometheus metrics, in one registry held in shared state.

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
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
    used_tokens: IntGaugeVec,
    limit_tokens: IntGaugeVec,
    used_cost: GaugeVec,
    phase: IntGaugeVec,
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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("tokenbudget_reconcile_total", "Reconciles run, by controller"),
            &["controller"],
        )
        .expect("valid metric");
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "tokenbudget_reconcile_errors_total",
                "Reconciles that failed, by controller and error",
            ),
            &["controller", "error"],
        )
        .expect("valid metric");
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new("tokenbudget_reconcile_duration_seconds", "How long reconciles take")
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
            &["controller"],
        )
        .expect("valid metric");
        let budget_labels = ["namespace", "name"];
        let gauge =
            |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &budget_labels).expect("valid metric");
        let used_tokens = gauge("tokenbudget_used_tokens", "Tokens used in the current period");
        let limit_tokens = gauge("tokenbudget_limit_tokens", "Token limit per period");
        let phase = gauge(
            "tokenbudget_phase",
            "Phase of the budget: 0 Active, 1 Warning, 2 Exhausted",
        );
        let used_cost = GaugeVec::new(
            Opts::new(
                "tokenbudget_used_cost",
                "Cost used in the current period, in the budget's currency",
            ),
            &budget_labels,
        )
        .expect("valid metric");
        let scrapes = IntCounterVec::new(
            Opts::new("tokenbudget_scrapes_total", "Scrapes of agent pods, by result"),
            &["result"],
        )
        .expect("valid metric");
        let scrape_duration = Histogram::with_opts(
            HistogramOpts::new(
                "tokenbudget_scrape_duration_seconds",
                "How long scrapes of agent pods take",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
        )
        .expect("valid metric");
        let enforcement_actions = IntCounterVec::new(
            Opts::new(
                "tokenbudget_enforcement_actions_total",
                "Changes made to workloads, by action",
            ),
            &["action"],
        )
        .expect("valid metric");
        let enforcement_failures = IntCounter::new(
            "tokenbudget_enforcement_failures_total",
            "Writes to workloads or quotas that failed and are retried",
        )
        .expect("valid metric");
        let enforcement_latency = Histogram::with_opts(
            HistogramOpts::new(
                "tokenbudget_enforcement_latency_seconds",
                "From the scrapes that found a budget exhausted to the scale-down accepted by the API server",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0]),
        )
        .expect("valid metric");
        for collector in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_errors.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(used_tokens.clone()),
            Box::new(limit_tokens.clone()),
            Box::new(used_cost.clone()),
            Box::new(phase.clone()),
            Box::new(scrapes.clone()),
            Box::new(scrape_duration.clone()),
            Box::new(enforcement_actions.clone()),
            Box::new(enforcement_failures.clone()),
            Box::new(enforcement_latency.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            used_tokens,
            limit_tokens,
            used_cost,
            phase,
            scrapes,
            scrape_duration,
            enforcement_actions,
            enforcement_failures,
            enforcement_latency,
        }
    }

    /// Sets a budget's series from its status.
    pub fn observe_budget(&self, namespace: &str, name: &str, status: &TokenBudgetStatus, limit: Option<i64>) {
        let labels = [namespace, name];
        let used = status.used.as_ref();
        self.used_tokens
            .with_label_values(&labels)
            .set(used.map_or(0, |u| u.tokens));
        if let Some(limit) = limit {
            self.limit_tokens.with_label_values(&labels).set(limit);
        } else {
            let _ = self.limit_tokens.remove_label_values(&labels);
        }
        let cost = used
            .and_then(|u| u.cost.as_deref())
            .and_then(|c| c.parse::<f64>().ok())
            .unwrap_or(0.0);
        self.used_cost.with_label_values(&labels).set(cost);
        let phase = match status.phase {
            Some(BudgetPhase::Exhausted) => 2,
            Some(BudgetPhase::Warning) => 1,
            _ => 0,
        };
        self.phase.with_label_values(&labels).set(phase);
    }

    /// Removes a deleted budget's series.
    pub fn forget_budget(&self, namespace: &str, name: &str) {
        let labels = [namespace, name];
        let _ = self.used_tokens.remove_label_values(&labels);
        let _ = self.limit_tokens.remove_label_values(&labels);
        let _ = self.used_cost.remove_label_values(&labels);
        let _ = self.phase.remove_label_values(&labels);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# error: {e}\n"))
    }
}
