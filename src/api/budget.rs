//! `TokenBudget`: how many tokens (and how much money) the workloads bound to it may spend
//! per period, and what happens when they run out.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Condition};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    DECIMAL_PATTERN, DURATION_PATTERN, QUANTITY_PATTERN, TokenType, WorkloadKind, at_most_a_year, conditions_schema,
    optional_enum_schema,
};

/// A limit on the LLM tokens and/or money that the workloads bound to this budget (through
/// BudgetBindings) may spend per period, what to do when it runs out, and optionally a
/// ResourceQuota that the budget owns in its namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tokenbudget.io",
    version = "v1alpha1",
    kind = "TokenBudget",
    plural = "tokenbudgets",
    shortname = "tb",
    category = "tokenbudget-io",
    namespaced,
    status = "TokenBudgetStatus",
    derive = "PartialEq",
    doc = "A limit on the LLM tokens and/or money that the workloads bound to it may spend per period.",
    printcolumn(
        name = "Limit",
        type_ = "integer",
        json_path = ".spec.limits.tokens",
        description = "Token limit per period"
    ),
    printcolumn(
        name = "Used",
        type_ = "integer",
        json_path = ".status.used.tokens",
        description = "Tokens used this period"
    ),
    printcolumn(
        name = "%Used",
        type_ = "integer",
        json_path = ".status.percentUsed",
        description = "Percent of the tighter limit used"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Resets",
        type_ = "string",
        json_path = ".status.resetsAt",
        description = "When the current period ends"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Cost-Limit", type_ = "string", json_path = ".spec.limits.cost", priority = 1),
    printcolumn(name = "Cost", type_ = "string", json_path = ".status.used.cost", priority = 1),
    printcolumn(
        name = "Burn-Rate",
        type_ = "integer",
        json_path = ".status.burnRate",
        description = "Tokens per hour",
        priority = 1
    ),
    printcolumn(
        name = "Pace",
        type_ = "string",
        json_path = ".status.pacing.pace",
        description = "The pace that lasts until the reset, with spec.pacing",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
// Rules across fields sit on the smallest object that holds the fields they compare (here the
// spec), so that validation ratcheting can let an unchanged invalid subtree through an update.
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.limits.cost) || (has(self.pricing) && size(self.pricing) > 0)",
        "fieldPath": ".pricing",
        "reason": "FieldValueRequired",
        "message": "a cost limit (spec.limits.cost) needs spec.pricing: without prices nothing costs anything",
    },
    {
        "rule": "!has(self.subjects) || self.subjects.all(s, !has(s.limits.cost)) || (has(self.pricing) && size(self.pricing) > 0)",
        "fieldPath": ".pricing",
        "reason": "FieldValueRequired",
        "message": "a cost limit per subject (spec.subjects[].limits.cost) needs spec.pricing: without prices nothing costs anything",
    },
    {
        "rule": "!self.enforcement.freezeQuota || has(self.computeQuota)",
        "fieldPath": ".computeQuota",
        "reason": "FieldValueRequired",
        "message": "spec.enforcement.freezeQuota needs spec.computeQuota, the quota it would freeze",
    },
]))]
pub struct TokenBudgetSpec {
    /// What may be spent per period. At least one of `tokens` and `cost` is required; when
    /// both are set, the budget is exhausted as soon as either is reached.
    pub limits: BudgetLimits,

    /// The currency of `limits.cost` and of the prices. Display only: no conversion happens.
    #[serde(default = "default_currency")]
    #[schemars(length(min = 1, max = 16))]
    pub currency: String,

    /// The token types that count toward `limits.tokens`. Absent means all types (input and
    /// output). Cost always counts every type that has a price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), extend("x-kubernetes-list-type" = "set"))]
    pub token_types: Option<Vec<TokenType>>,

    /// When usage starts again from zero.
    #[serde(default)]
    pub period: BudgetPeriod,

    /// Prices per 1,000,000 tokens, per model. The first entry whose `model` matches wins.
    /// A model without a price costs nothing, and is named in the UsageHealthy condition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub pricing: Vec<ModelPrice>,

    /// Warning thresholds, in percent of the tighter limit. Crossing one sets the phase to
    /// Warning, emits a ThresholdReached Event and annotates the workloads.
    #[serde(default = "default_thresholds")]
    #[schemars(length(max = 10), inner(range(min = 1, max = 100)), extend("x-kubernetes-list-type" = "set"))]
    pub thresholds: Vec<u8>,

    /// What the operator does to the bound workloads when the budget is exhausted.
    #[serde(default)]
    pub enforcement: Enforcement,

    /// A ResourceQuota named `tokenbudget-<budget>` that this budget creates and owns in its
    /// namespace, so token budgets and compute quotas live in one object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_quota: Option<ComputeQuota>,

    /// A ClusterTokenBudget (a pool) that this budget also draws from: every token it counts
    /// counts toward the pool too, and when the pool is used up this budget is exhausted as
    /// well (reason ParentExhausted). The pool's `namespaceSelector` must select this
    /// budget's namespace (condition ParentAccepted). This budget's own limits stay an inner cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_ref: Option<ParentRef>,

    /// Limits on each distinct value of a label of the token series: each user, end user,
    /// session, task or team at most so much per period, inside the budget's own limits. An
    /// exhausted subject cannot be enforced on a pod (one pod serves many): it is published
    /// in `status.subjects` and to agents, which refuse it, and counted in the
    /// SubjectsExhausted condition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["label"]))]
    pub subjects: Vec<SubjectLimit>,

    /// Acting before exhaustion: when the burn rate says the budget runs out before it resets,
    /// publish a pace for agents (`status.pacing`) and optionally run fewer replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pacing: Option<Pacing>,
}

/// A limit per distinct value of one label of the token series.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubjectLimit {
    /// The label whose values are the subjects, as it appears on the scraped series: for
    /// LiteLLM `end_user`, `user` or `team`; for an OpenTelemetry attribute such as
    /// `session.id`, its Prometheus name `session_id`. Series without it (or with an empty
    /// value) count toward the budget but toward no subject.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-zA-Z_][a-zA-Z0-9_]*$"))]
    pub label: String,

    /// What each subject may spend per period (the budget's period, token types and prices).
    pub limits: BudgetLimits,
}

/// Pacing: spend so that the budget lasts until it resets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pacing {
    /// None: publish the pace in `status.pacing` only (agents read it and slow down).
    /// ScaleReplicas: also run Deployments and StatefulSets without a HorizontalPodAutoscaler
    /// on fewer replicas, in proportion, so that the budget lasts until it resets.
    #[serde(default)]
    pub action: PacingAction,

    /// The fewest replicas ScaleReplicas leaves a workload.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,

    /// How far back the burn rate of the forecast looks, as a duration from "5m" to "24h".
    /// The forecast starts once its samples span a quarter of it (a new period, a restart).
    #[serde(default = "default_pacing_window")]
    #[schemars(regex(pattern = DURATION_PATTERN), extend("x-kubernetes-validations" = [
        at_most_a_year(),
    ]))]
    pub window: String,
}

/// What pacing does besides publishing the pace.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PacingAction {
    #[default]
    None,
    ScaleReplicas,
}

/// The ClusterTokenBudget a TokenBudget draws from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// The ClusterTokenBudget's name.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
}

/// What may be spent per period.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// A CEL rule rather than `anyOf`: an `anyOf` branch that fails reports `Required value`, and
// that error makes the server skip every CEL rule of the object.
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.tokens) || has(self.cost)",
    "reason": "FieldValueRequired",
    "message": "at least one of spec.limits.tokens and spec.limits.cost is required",
}]))]
pub struct BudgetLimits {
    /// Tokens per period, counting the types in `tokenTypes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub tokens: Option<i64>,

    /// Money per period in `currency`, as a decimal string such as "250.00". Needs `pricing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DECIMAL_PATTERN))]
    pub cost: Option<String>,
}

/// When usage starts again from zero.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetPeriod {
    /// How often usage resets: Never, Hourly, Daily, Weekly (Monday 00:00) or Monthly (the
    /// 1st, 00:00), at calendar boundaries in `timezone`.
    #[serde(default)]
    pub reset: ResetPeriod,

    /// The IANA time zone of the calendar boundaries, such as "Europe/Berlin".
    #[serde(default = "default_timezone")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$")
    )]
    pub timezone: String,
}

impl Default for BudgetPeriod {
    fn default() -> Self {
        Self {
            reset: ResetPeriod::default(),
            timezone: default_timezone(),
        }
    }
}

/// How often a budget's usage starts again from zero.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ResetPeriod {
    Never,
    Hourly,
    Daily,
    Weekly,
    #[default]
    Monthly,
}

/// The price of one model, per 1,000,000 tokens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelPrice {
    /// The model name as the agents report it, exactly, or a glob where `*` matches any run
    /// of characters (e.g. "gpt-4o*").
    #[schemars(length(min = 1, max = 256))]
    pub model: String,

    /// Price per 1,000,000 input tokens, as a decimal string.
    #[serde(default = "default_price")]
    #[schemars(regex(pattern = DECIMAL_PATTERN))]
    pub input: String,

    /// Price per 1,000,000 output tokens, as a decimal string.
    #[serde(default = "default_price")]
    #[schemars(regex(pattern = DECIMAL_PATTERN))]
    pub output: String,
}

/// What the operator does to the bound workloads when the budget is exhausted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Enforcement {
    /// None: status and Events only (a dry run). Annotate: annotate workloads and pods.
    /// ScaleDown: also scale Deployments and StatefulSets to 0 and suspend Jobs and CronJobs.
    #[serde(default)]
    pub action: EnforcementAction,

    /// With ScaleDown: how long after exhaustion the workloads stay up (annotated) before they
    /// are scaled down, as a duration such as "0s", "5m" or "1h".
    #[serde(default = "default_grace_period")]
    #[schemars(regex(pattern = DURATION_PATTERN), extend("x-kubernetes-validations" = [
        at_most_a_year(),
    ]))]
    pub grace_period: String,

    /// When exhausted, also set `pods: "0"` on the budget's computeQuota, so that no new pod of
    /// any kind starts in the namespace until the budget has room again.
    #[serde(default)]
    pub freeze_quota: bool,
}

impl Default for Enforcement {
    fn default() -> Self {
        Self {
            action: EnforcementAction::default(),
            grace_period: default_grace_period(),
            freeze_quota: false,
        }
    }
}

/// What the operator does when a budget is exhausted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum EnforcementAction {
    None,
    #[default]
    Annotate,
    ScaleDown,
}

/// A ResourceQuota owned by the budget.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeQuota {
    /// The quota's hard limits, as in a ResourceQuota's `spec.hard`
    /// (e.g. `requests.cpu: "8"`, `limits.memory: 32Gi`, `pods: "20"`).
    #[schemars(schema_with = "quantity_map_schema")]
    pub hard: BTreeMap<String, Quantity>,
}

/// The observed state of a TokenBudget, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenBudgetStatus {
    /// Active, Warning (a threshold is crossed) or Exhausted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_enum_schema::<BudgetPhase>")]
    pub phase: Option<BudgetPhase>,

    /// Usage in the current period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<UsedTokens>,

    /// Tokens left in the current period; absent when there is no token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_tokens: Option<i64>,

    /// Percent used of the tighter of the two limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_used: Option<i64>,

    /// When the current period started (RFC 3339, in the budget's time zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_start: Option<String>,

    /// When the current period ends and usage starts again from zero; absent for Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<String>,

    /// Tokens per hour over the recent window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_rate: Option<i64>,

    /// When the budget runs out at the current burn rate; absent if not before `resetsAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected_exhaustion: Option<String>,

    /// Usage per model, largest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelUsage>,

    /// Usage per workload, largest first, at most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadUsage>,

    /// The periods that have ended, newest first, at most [`HISTORY_LIMIT`]: what each cost,
    /// on which models and workloads. Each is written once, in the status write that starts
    /// the next period. What chargeback reads (`kubectl tokenbudget report`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["periodStart"]))]
    pub history: Vec<PeriodSummary>,

    /// What the operator currently enforces on which workload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enforced: Vec<EnforcedWorkload>,

    /// The budget's ResourceQuota (`tokenbudget-<budget>`) as the quota controller sees it,
    /// when `spec.computeQuota` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_quota: Option<QuotaUsage>,

    /// Ready, ThresholdReached, Exhausted, Enforced, UsageHealthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// This budget's share of its parent ClusterTokenBudget (`spec.parentRef`) in the
    /// parent's current period, and the parent's state as this budget last saw it. Written in
    /// the same status write as `accounting`, so that every token counts once in the parent
    /// too, across restarts. Atomic: replaced whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-map-type" = "atomic"))]
    pub parent: Option<ParentShare>,

    /// The operator's bookkeeping: last-seen counters per pod and running totals. Written
    /// together with `used` in one status write so a restarted operator continues exactly where
    /// it left off. Do not edit. Atomic: one writer replaces it whole, and server-side apply
    /// keeps no per-pod record of who wrote what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-map-type" = "atomic"))]
    pub accounting: Option<AccountingState>,

    /// Usage per subject, one entry per `spec.subjects` label: bounded however many subjects
    /// there are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["label"]))]
    pub subjects: Vec<SubjectsUsage>,

    /// The pace agents should keep so that the budget lasts until it resets, when
    /// `spec.pacing` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pacing: Option<PacingStatus>,
}

/// At most this many subjects are listed in `status.subjects[].top`.
pub const SUBJECTS_TOP: usize = 10;
/// At most this many exhausted subjects are listed in `status.subjects[].exhausted`.
pub const SUBJECTS_EXHAUSTED_LISTED: usize = 100;

/// The subjects of one label in the current period.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubjectsUsage {
    /// The label (`spec.subjects[].label`).
    pub label: String,
    /// How many distinct subjects have spent in the period and are counted one by one.
    #[serde(default)]
    pub count: i64,
    /// How many of them are exhausted.
    #[serde(default)]
    pub exhausted_count: i64,
    /// The largest subjects (by cost, then tokens), at most 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<SubjectUsage>,
    /// Tokens of the subjects counted one by one but not listed in `top`, summed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub other_tokens: i64,
    /// The exhausted subjects, largest first, at most 100 (all of them are in
    /// `exhaustedCount`, and an agent can ask about any one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exhausted: Vec<String>,
    /// Tokens of the subjects beyond the most the operator counts one by one, summed: they
    /// count toward the budget, but no limit applies to them one by one (condition
    /// SubjectsExhausted says so).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub untracked_tokens: i64,
}

/// What one subject spent in the period.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubjectUsage {
    /// The label's value.
    pub value: String,
    /// Tokens of the budget's `tokenTypes`.
    pub tokens: i64,
    /// Cost at the budget's prices, in its currency; absent without pricing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
    /// Whether it reached its limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exhausted: bool,
}

/// The pace of a budget: how fast it may be spent from now on to last until it resets.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PacingStatus {
    /// The fraction of the budget's unpaced burn rate at which it lasts until `resetsAt`, as a
    /// decimal string from "0.00" to "1.00": "1.00" while nothing is paced, "0.60" to spend at
    /// 60% of it. Unpaced: the rate over `spec.pacing.window` with the replicas ScaleReplicas
    /// took away counted back in, so the pace does not bounce back once fewer run. It moves
    /// in steps of at least 0.05; pacing engages below 0.90 and releases once the forecast
    /// has been at 1 for a quarter of the window (docs/pacing.md).
    pub pace: String,
    /// The burn rate of the forecast, in tokens per hour over `spec.pacing.window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_rate: Option<i64>,
    /// The most tokens per hour that last until `resetsAt`: the remaining tokens spread
    /// evenly over the time left. A steadier target for agents than `pace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sustainable_rate: Option<i64>,
    /// Since when pacing is engaged, the pace below 1 (RFC 3339); absent while it is 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// The phase of a budget.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BudgetPhase {
    Active,
    Warning,
    Exhausted,
}

/// Tokens used in the current period, in total and per type, and their cost.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsedTokens {
    /// Tokens of the types that count toward `limits.tokens`.
    pub tokens: i64,
    /// Input (prompt) tokens.
    #[serde(default)]
    pub input: i64,
    /// Output (completion) tokens.
    #[serde(default)]
    pub output: i64,
    /// Cost in `currency`, as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
}

/// Usage of one model in the current period.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelUsage {
    pub model: String,
    #[serde(default)]
    pub input: i64,
    #[serde(default)]
    pub output: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
}

/// Usage of one workload in the current period.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadUsage {
    pub kind: WorkloadKind,
    pub name: String,
    pub tokens: i64,
    /// Cost in `currency`, as a decimal string; absent without pricing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
}

/// How many ended periods a budget's status keeps in `history`.
pub const HISTORY_LIMIT: usize = 12;

/// How many models and workloads each entry of `history` lists.
pub const HISTORY_TOP: usize = 10;

/// One period that has ended, for chargeback. The models and workloads listed are the
/// largest (by cost, then tokens), at most [`HISTORY_TOP`] each; what the others spent is
/// `used` (its input + output tokens, and its cost) minus the listed ones, so totals add up.
/// Each listed cost is rounded to 6 decimals on its own: the rest may be off by 0.000001 per
/// entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeriodSummary {
    /// When the period started (RFC 3339, in the budget's time zone).
    pub period_start: String,
    /// When it ended: the next period's start (RFC 3339).
    pub period_end: String,
    /// Everything the period used, and its cost.
    pub used: UsedTokens,
    /// The currency of the costs, as the budget said when the period ended.
    pub currency: String,
    /// The largest models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelUsage>,
    /// The largest workloads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadUsage>,
}

/// The budget's ResourceQuota: its limits now (with `pods: "0"` while frozen) and what the
/// namespace uses of them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaUsage {
    /// The ResourceQuota's name.
    pub name: String,
    /// Its `spec.hard`.
    #[serde(default)]
    #[schemars(schema_with = "quantity_status_schema")]
    pub hard: BTreeMap<String, Quantity>,
    /// Its `status.used`.
    #[serde(default)]
    #[schemars(schema_with = "quantity_status_schema")]
    pub used: BTreeMap<String, Quantity>,
}

/// An action the operator currently enforces on a workload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnforcedWorkload {
    pub kind: WorkloadKind,
    pub name: String,
    /// Annotate, ScaleDown or Suspend; with `enforcement.action: None`, what would be done.
    pub action: String,
    /// When the action was taken (RFC 3339).
    pub since: String,
}

/// A TokenBudget's share of its parent ClusterTokenBudget, in the parent's period.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentShare {
    /// The ClusterTokenBudget.
    pub name: String,
    /// The start of the parent's period that `used` belongs to (RFC 3339, the parent's time
    /// zone): the share starts again from zero when the parent's period ends, whatever this
    /// budget's own period.
    pub period_start: String,
    /// When this share began (RFC 3339): the first cycle that found the budget accepted by
    /// the parent in this period. With the budget's uid, what identifies the share.
    pub since: String,
    /// What this budget counted toward the parent since then: `tokens` of the parent's
    /// `tokenTypes`, and the cost at the parent's prices.
    pub used: UsedTokens,
    /// The same tokens per model, what the parent sums and prices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["model"]))]
    pub models: Vec<ModelTokens>,
    /// Whether the parent counts this share now. False while the share waits for the parent
    /// to keep it after this budget left it (parentRef changed or removed, namespace no longer
    /// selected, budget deleted): no token is added to it meanwhile.
    #[serde(default)]
    pub counting: bool,
    /// This budget's final share of the parent's period before this one, kept from the cycle
    /// that started the share of the new period (in the same status write) until the next
    /// such cycle: what the parent's `history` entry of that period sums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<EndedShare>,
    /// The parent's phase, as this budget last saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_enum_schema::<BudgetPhase>")]
    pub phase: Option<BudgetPhase>,
    /// The parent's tokens left in its period, as this budget last saw them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_tokens: Option<i64>,
    /// The parent's percentUsed, as this budget last saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_used: Option<i64>,
    /// When the parent's period ends (RFC 3339); absent for Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<String>,
}

/// A budget's final share of a parent's period that has ended. It never grows: a cycle's
/// tokens after the parent's boundary count in the new period.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndedShare {
    /// The start of the parent's period it belongs to (RFC 3339).
    pub period_start: String,
    /// The share's `since`: with the budget's uid, what identifies it.
    pub since: String,
    /// Its tokens per model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub models: Vec<ModelTokens>,
}

/// The operator's bookkeeping for one budget: what it last saw of every pod, and the full
/// totals of the current period. Kept compact: it lives in etcd with the rest of the status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountingState {
    /// The start of the period the totals belong to (RFC 3339).
    pub period_start: String,

    /// Every pod the budget's bindings have scraped, with its last-seen counters, grouped by
    /// binding and workload, compactly: 10,000 pods take about 0.5 MB.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_groups: Vec<PodGroup>,

    /// The model names the pods' counters in `podGroups` refer to, by index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counter_models: Vec<String>,

    /// The pods as versions before `podGroups` wrote them: read, never written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodLedger>,

    /// Tokens per model in the period (all of them; cost is derived from these).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["model"]))]
    pub models: Vec<ModelTokens>,

    /// Tokens (all types) per workload in the period (all of them, not only the top 20), and
    /// per model and type, which their cost is computed from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["kind", "name"]))]
    pub workloads: Vec<WorkloadTokens>,

    /// Tokens (all types) per binding in the period, charged to the binding that first counted
    /// each pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub bindings: Vec<BindingTokens>,

    /// Since when each binding has charged this budget, and each of its workloads been bound
    /// to it: a pod counts its whole counters at its first scrape only if it started after its
    /// workload became bound (accounting rule 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["binding"]))]
    pub bound: Vec<BoundBinding>,

    /// The same bookkeeping per subject (`spec.subjects`), one entry per label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["label"]))]
    pub subjects: Vec<SubjectAccounting>,
}

/// The bookkeeping of one subject label, compactly: subjects and models are named once, and
/// referred to by index.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubjectAccounting {
    pub label: String,
    /// The subjects counted one by one, by index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// The models, by index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// The period's totals of each subject: `<subject> <model>:<input>:<output>...`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub totals: Vec<String>,
    /// The last-seen counters of each pod, per subject and model:
    /// `<uid> <subject>/<model>:<input>:<output>...`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
    /// The period's tokens of the subjects beyond those counted one by one: input and output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untracked: Option<ModelTokens>,
}

/// A binding that charges the budget, since when, and the workloads it binds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BoundBinding {
    pub binding: String,
    /// RFC 3339.
    pub since: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["kind", "name"]))]
    pub workloads: Vec<BoundWorkload>,
}

/// A workload bound to the budget, and since when.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BoundWorkload {
    pub kind: WorkloadKind,
    pub name: String,
    /// RFC 3339.
    pub since: String,
}

/// The pods one binding counts of one workload, and their last-seen counters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodGroup {
    pub binding: String,
    pub workload: PodWorkload,
    /// One pod each: `<uid> <restarts>` and then `<model>:<input>:<output>` per model with
    /// tokens, `<model>` an index into `counterModels`.
    pub pods: Vec<String>,
}

impl AccountingState {
    /// Every pod of the ledger, from `podGroups` (whose names are left empty) and from the
    /// older `pods`. An entry that cannot be read is left out: its pod is new to the ledger.
    pub fn pod_ledgers(&self) -> Vec<PodLedger> {
        let mut pods = self.pods.clone();
        for group in &self.pod_groups {
            pods.extend(
                group
                    .pods
                    .iter()
                    .filter_map(|line| group.decode(line, &self.counter_models)),
            );
        }
        pods
    }
}

impl PodGroup {
    /// One pod's entry: `<uid> <restarts> <model>:<input>:<output>...`.
    pub fn encode(uid: &str, restarts: i64, counters: &[(usize, i64, i64)]) -> String {
        use std::fmt::Write;
        let mut line = format!("{uid} {restarts}");
        for (model, input, output) in counters {
            let _ = write!(line, " {model}:{input}:{output}");
        }
        line
    }

    fn decode(&self, line: &str, models: &[String]) -> Option<PodLedger> {
        let mut fields = line.split(' ');
        let uid = fields.next().filter(|uid| !uid.is_empty())?.to_string();
        let restarts = fields.next()?.parse().ok()?;
        let mut counters = Vec::new();
        for field in fields {
            let mut parts = field.split(':');
            let model = models.get(parts.next()?.parse::<usize>().ok()?)?;
            let input: i64 = parts.next()?.parse().ok()?;
            let output: i64 = parts.next()?.parse().ok()?;
            for (token_type, value) in [(TokenType::Input, input), (TokenType::Output, output)] {
                if value != 0 {
                    counters.push(SeriesCounter {
                        model: model.clone(),
                        token_type,
                        value,
                    });
                }
            }
        }
        Some(PodLedger {
            uid,
            name: String::new(),
            binding: self.binding.clone(),
            workload: self.workload.clone(),
            restarts,
            counters,
        })
    }
}

/// What the operator last saw of one pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodLedger {
    /// The pod's `metadata.uid`.
    pub uid: String,
    /// The pod's name.
    #[serde(default)]
    pub name: String,
    /// The binding that first counted the pod: its tokens are charged to it.
    pub binding: String,
    /// The workload the pod belongs to.
    pub workload: PodWorkload,
    /// The restart count of the pod's metrics container (the one that declares the binding's
    /// port; of all its containers together when none does) at its last successful scrape.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0))]
    pub restarts: i64,
    /// The last-seen raw counter values. Zeros are left out: an absent series is 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["model", "type"]))]
    pub counters: Vec<SeriesCounter>,
}

/// The workload a pod belongs to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodWorkload {
    pub kind: WorkloadKind,
    pub name: String,
}

/// The last-seen value of one token counter of a pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeriesCounter {
    pub model: String,
    #[serde(rename = "type")]
    pub token_type: TokenType,
    #[schemars(range(min = 0))]
    pub value: i64,
}

/// Tokens of one model in the period.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelTokens {
    pub model: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0))]
    pub input: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0))]
    pub output: i64,
}

/// Tokens (all types) of one workload in the period.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadTokens {
    pub kind: WorkloadKind,
    pub name: String,
    #[schemars(range(min = 0))]
    pub tokens: i64,
    /// Its tokens per model and type, what its cost is computed from: `<model>:<input>:<output>`
    /// per model, separated by spaces, `<model>` an index into `models` of this state. Absent
    /// in a status written before it was kept: that period's cost of the workload is unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub models: String,
}

/// Tokens (all types) charged to one binding in the period.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BindingTokens {
    pub name: String,
    #[schemars(range(min = 0))]
    pub tokens: i64,
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

fn default_min_replicas() -> i32 {
    1
}
fn default_pacing_window() -> String {
    "1h".into()
}
fn default_currency() -> String {
    "USD".into()
}
fn default_timezone() -> String {
    "UTC".into()
}
fn default_thresholds() -> Vec<u8> {
    vec![80]
}
fn default_price() -> String {
    "0".into()
}
fn default_grace_period() -> String {
    "0s".into()
}

/// A map of resource names to quantities, each checked against the Kubernetes quantity syntax
/// (so `pods: lots` is rejected by the API server, not later by the quota).
fn quantity_map_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "minProperties": 1,
        "additionalProperties": {"x-kubernetes-int-or-string": true, "pattern": QUANTITY_PATTERN}
    })
}

/// Quantities as the API server reports them (status: written by the operator only).
fn quantity_status_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {"x-kubernetes-int-or-string": true}
    })
}
