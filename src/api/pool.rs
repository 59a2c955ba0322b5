//! `ClusterTokenBudget`: a pool over TokenBudgets of many namespaces ("R&D: 2,000 USD a
//! month"). Each TokenBudget that names it in `spec.parentRef`, in a namespace its
//! `namespaceSelector` selects, also draws from it: every token counts once in the budget and
//! once in the pool.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    budget::{
        BudgetLimits, BudgetPeriod, BudgetPhase, Enforcement, ModelPrice, ModelTokens, ModelUsage, TokenBudgetSpec,
        UsedTokens,
    },
    common::{TokenType, conditions_schema, namespace_selector_schema, optional_enum_schema},
};

/// A limit on the tokens and/or money that the TokenBudgets drawing from it (their
/// `spec.parentRef`) may spend together per period, in the namespaces it selects.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tokenbudget.io",
    version = "v1alpha1",
    kind = "ClusterTokenBudget",
    plural = "clustertokenbudgets",
    shortname = "ctb",
    category = "tokenbudget-io",
    status = "ClusterTokenBudgetStatus",
    derive = "PartialEq",
    doc = "A pool over the TokenBudgets of the namespaces it selects: their tokens count toward it too.",
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
        description = "Tokens used this period, by all children"
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
    printcolumn(
        name = "Children",
        type_ = "integer",
        json_path = ".status.children",
        description = "TokenBudgets drawing from the pool"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Cost-Limit", type_ = "string", json_path = ".spec.limits.cost", priority = 1),
    printcolumn(name = "Cost", type_ = "string", json_path = ".status.used.cost", priority = 1)
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.limits.cost) || (has(self.pricing) && size(self.pricing) > 0)",
        "fieldPath": ".pricing",
        "reason": "FieldValueRequired",
        "message": "a cost limit (spec.limits.cost) needs spec.pricing: without prices nothing costs anything",
    },
    {
        "rule": "!self.enforcement.freezeQuota",
        "fieldPath": ".enforcement.freezeQuota",
        "reason": "FieldValueForbidden",
        "message": "a ClusterTokenBudget has no computeQuota to freeze: each child freezes its own (its spec.enforcement.freezeQuota)",
    },
]))]
pub struct ClusterTokenBudgetSpec {
    /// The namespaces whose TokenBudgets may draw from this pool, by their labels (for one
    /// namespace: `matchLabels: {kubernetes.io/metadata.name: <name>}`); `{}` selects every
    /// namespace. A TokenBudget elsewhere that names the pool is refused (ParentAccepted=False).
    #[schemars(schema_with = "namespace_selector_schema")]
    pub namespace_selector: LabelSelector,

    /// What all children together may spend per period. At least one of `tokens` and `cost`.
    pub limits: BudgetLimits,

    /// The currency of `limits.cost` and of the prices. Display only.
    #[serde(default = "default_currency")]
    #[schemars(length(min = 1, max = 16))]
    pub currency: String,

    /// The token types that count toward `limits.tokens`. Absent means all types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), extend("x-kubernetes-list-type" = "set"))]
    pub token_types: Option<Vec<TokenType>>,

    /// When the pool's usage starts again from zero, independently of its children's periods
    /// (a monthly pool over daily team caps).
    #[serde(default)]
    pub period: BudgetPeriod,

    /// Prices per 1,000,000 tokens, per model: the pool's own, which its cost is computed
    /// with (a child's prices price only the child).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub pricing: Vec<ModelPrice>,

    /// Warning thresholds, in percent of the tighter limit.
    #[serde(default = "default_thresholds")]
    #[schemars(length(max = 10), inner(range(min = 1, max = 100)), extend("x-kubernetes-list-type" = "set"))]
    pub thresholds: Vec<u8>,

    /// What the children do to their workloads while the pool is exhausted (or past a
    /// threshold): `action` and `gracePeriod` as in a TokenBudget. A child exhausted by its own
    /// limit too takes the stricter of both actions and the shorter grace period.
    #[serde(default)]
    pub enforcement: Enforcement,
}

impl ClusterTokenBudgetSpec {
    /// The pool's limits, period, pricing, thresholds and enforcement as a TokenBudget's spec,
    /// so that one validation and one accounting of standing serve both kinds.
    pub fn as_budget_spec(&self) -> TokenBudgetSpec {
        TokenBudgetSpec {
            limits: self.limits.clone(),
            currency: self.currency.clone(),
            token_types: self.token_types.clone(),
            period: self.period.clone(),
            pricing: self.pricing.clone(),
            thresholds: self.thresholds.clone(),
            enforcement: self.enforcement.clone(),
            compute_quota: None,
            parent_ref: None,
            subjects: Vec::new(),
            pacing: None,
        }
    }
}

/// How many children `status.shares` lists; the others are summed in `otherShares`.
pub const LISTED_SHARES: usize = 20;

/// The observed state of a ClusterTokenBudget, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterTokenBudgetStatus {
    /// Active, Warning (a threshold is crossed) or Exhausted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_enum_schema::<BudgetPhase>")]
    pub phase: Option<BudgetPhase>,

    /// Usage in the current period: the children's shares plus `departed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<UsedTokens>,

    /// `limits.tokens - used.tokens`, not below 0; absent without a token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_tokens: Option<i64>,

    /// Percent of the tighter limit used, rounded down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_used: Option<i64>,

    /// The start of the current period (RFC 3339, in `period.timezone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_start: Option<String>,

    /// When the current period ends; absent for Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<String>,

    /// How many TokenBudgets draw from the pool now (accepted children).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<i64>,

    /// The children's shares of this period, largest first, at most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<ChildShare>,

    /// The shares of the children beyond the 20 listed, summed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_shares: Option<OtherShares>,

    /// Tokens per model in the period, largest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelUsage>,

    /// What children that left the pool during this period had counted toward it: kept so
    /// that their tokens stay in `used`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub departed: Option<Departed>,

    /// The periods that have ended, newest first, at most [`super::HISTORY_LIMIT`]: what
    /// each cost, on which models and children. One entry per period, made at the first
    /// reconcile after the period ended and brought up to date (the same entry) while the
    /// children's last shares of it come in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["periodStart"]))]
    pub history: Vec<PoolPeriodSummary>,

    /// Every share of the period that ended last (the children's, and those `departed` kept),
    /// by child uid and share `since`: what `history`'s newest entry sums. A share kept here
    /// only grows, so that a child deleted or rolled over again changes nothing. Atomic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-map-type" = "atomic"))]
    pub last_period: Option<Departed>,

    /// Ready, ThresholdReached, Exhausted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One ended period of a pool, for chargeback. The models and children listed are the
/// largest (by cost, then tokens), at most [`super::HISTORY_TOP`] each; what the others spent
/// is `used` minus the listed ones.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolPeriodSummary {
    /// When the period started (RFC 3339, in the pool's time zone).
    pub period_start: String,
    /// When it ended: the next period's start (RFC 3339).
    pub period_end: String,
    /// Everything the children spent of it, at the pool's prices.
    pub used: UsedTokens,
    /// The currency of the costs, as the pool said when the entry was written.
    pub currency: String,
    /// The largest models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelUsage>,
    /// The largest children.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildUsage>,
}

/// What one child spent of a pool's period.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChildUsage {
    pub namespace: String,
    pub name: String,
    pub tokens: i64,
    /// Cost at the pool's prices, in `currency`; absent without pricing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
}

/// One child's share of the pool in the current period.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChildShare {
    pub namespace: String,
    pub name: String,
    /// Its tokens (of the pool's `tokenTypes`), input, output and cost at the pool's prices.
    pub used: UsedTokens,
}

/// The children beyond those listed, summed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OtherShares {
    pub children: i64,
    pub used: UsedTokens,
}

/// Shares of one period of the pool kept by the pool itself: in `departed`, what the children
/// that left during the period had counted toward it; in `lastPeriod`, every share of the
/// period that ended last.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Departed {
    /// The pool's period these belong to (RFC 3339): they count only in it.
    pub period_start: String,
    /// Their total.
    pub used: UsedTokens,
    /// Each share kept, by the child's uid and the share's `since`, so that keeping one twice
    /// changes nothing. Atomic: the operator replaces it whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub children: Vec<DepartedChild>,
}

/// One share kept after its child left.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DepartedChild {
    /// The TokenBudget's uid.
    pub uid: String,
    /// Its namespace and name, for people.
    pub namespace: String,
    pub name: String,
    /// The share's `since`.
    pub since: String,
    /// Its tokens per model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelTokens>,
}

fn default_currency() -> String {
    "USD".into()
}
fn default_thresholds() -> Vec<u8> {
    vec![80]
}
