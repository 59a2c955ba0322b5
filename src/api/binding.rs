//! `BudgetBinding`: which workloads are charged to a budget, and how their pods report usage.

use k8s_openapi::apimachinery::pkg::{
    apis::meta::v1::{Condition, LabelSelector},
    util::intstr::IntOrString,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    DURATION_PATTERN, TokenType, WorkloadKind, at_most_a_year, cel_is_duration, conditions_schema, duration_rule,
    optional_enum_schema, selector_schema,
};

/// The longest `spec.metrics.timeout`: a scrape holds one of the operator's scrape slots (a
/// share of them per namespace) for at most this long. The operator's own check
/// ([`crate::validate::binding`]) agrees.
pub const MAX_SCRAPE_TIMEOUT: &str = "60s";

/// CEL rule of `spec.metrics.timeout`: at most [`MAX_SCRAPE_TIMEOUT`].
fn at_most_max_scrape_timeout() -> serde_json::Value {
    let mut rule = duration_rule(
        &format!("duration(self) <= duration('{MAX_SCRAPE_TIMEOUT}')"),
        &format!("must be at most {MAX_SCRAPE_TIMEOUT}"),
    );
    rule["messageExpression"] =
        format!("self + ' is longer than {MAX_SCRAPE_TIMEOUT}, the most one scrape may take'").into();
    rule
}

/// Charges the pods of some workloads to a TokenBudget in the same namespace, and says how
/// those pods report the tokens they use.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tokenbudget.io",
    version = "v1alpha1",
    kind = "BudgetBinding",
    plural = "budgetbindings",
    shortname = "bb",
    category = "tokenbudget-io",
    namespaced,
    status = "BudgetBindingStatus",
    derive = "PartialEq",
    doc = "Charges the pods of some workloads to a TokenBudget in the same namespace.",
    printcolumn(name = "Budget", type_ = "string", json_path = ".spec.budgetRef.name"),
    printcolumn(
        name = "Workloads",
        type_ = "integer",
        json_path = ".status.workloads",
        description = "Workloads matched now"
    ),
    printcolumn(
        name = "Pods",
        type_ = "integer",
        json_path = ".status.pods",
        description = "Pods of those workloads"
    ),
    printcolumn(
        name = "Used",
        type_ = "integer",
        json_path = ".status.usedTokens",
        description = "Tokens this binding contributed this period"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct BudgetBindingSpec {
    /// The TokenBudget, in the same namespace, that these workloads are charged to.
    pub budget_ref: BudgetRef,

    /// The workloads whose pods are charged to the budget. Each entry names one workload, or
    /// selects workloads of one kind by label.
    #[schemars(length(min = 1, max = 64))]
    pub workloads: Vec<WorkloadSelector>,

    /// How each bound pod reports its usage.
    #[serde(default)]
    pub metrics: MetricsEndpoint,
}

/// A reference to a TokenBudget in the binding's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetRef {
    /// The TokenBudget's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One workload by name, or the workloads of one kind that match a label selector.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// CEL rules rather than `oneOf`: they name the entry (`spec.workloads[1]`, where `oneOf`
// names only the list), and a failing `oneOf` branch reports `Required value`, an error that
// makes the server skip every CEL rule of the object.
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.name) || has(self.selector)",
        "reason": "FieldValueRequired",
        "message": "set exactly one of name and selector",
    },
    {
        "rule": "!has(self.name) || !has(self.selector)",
        "fieldPath": ".selector",
        "reason": "FieldValueForbidden",
        "message": "set exactly one of name and selector, not both",
    },
]))]
pub struct WorkloadSelector {
    /// Deployment, StatefulSet, Job or CronJob.
    pub kind: WorkloadKind,

    /// The workload's name. Exactly one of `name` and `selector` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,

    /// Selects workloads of `kind` by their labels. Exactly one of `name` and `selector` is
    /// required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "selector_schema")]
    pub selector: Option<LabelSelector>,
}

/// Where and how the operator reads each bound pod's token counters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": format!(
            "!{} || !{} || duration(self.timeout) <= duration(self.interval)",
            cel_is_duration("self.timeout"),
            cel_is_duration("self.interval")
        ),
        "fieldPath": ".timeout",
        "messageExpression": "self.timeout + ' is longer than the interval ' + self.interval + ' (spec.metrics.interval)'",
        "message": "must not be longer than spec.metrics.interval",
    },
    {
        "rule": "self.format != 'Custom' || has(self.custom)",
        "fieldPath": ".custom",
        "reason": "FieldValueRequired",
        "message": "required with format Custom: the counters to read",
    },
    {
        "rule": "!has(self.custom) || self.format == 'Custom'",
        "fieldPath": ".custom",
        "reason": "FieldValueForbidden",
        "messageExpression": "'only allowed with format Custom, not ' + self.format",
        "message": "only allowed with format Custom",
    },
    {
        "rule": "!has(self.prometheus) || self.source == 'Prometheus'",
        "fieldPath": ".prometheus",
        "reason": "FieldValueForbidden",
        "messageExpression": "'only allowed with source Prometheus, not ' + self.source",
        "message": "only allowed with source Prometheus",
    },
    {
        // Silently scraping in plain text what the user meant to protect would be worse than
        // not scraping at all.
        "rule": "!has(self.tls) || self.scheme == 'https'",
        "fieldPath": ".tls",
        "reason": "FieldValueForbidden",
        "messageExpression": "'only allowed with scheme https, not ' + self.scheme",
        "message": "only allowed with scheme https",
    },
]))]
pub struct MetricsEndpoint {
    /// Where the pods' counters are read: Scrape (default), the operator scrapes each pod's
    /// endpoint itself; Prometheus, the operator asks the Prometheus-compatible server its
    /// platform team configured (flag `--prometheus-url`) for the latest sample of each bound
    /// pod's counters, one query per binding and cycle. With Prometheus, `path`, `scheme` and
    /// `tls` are not used and `port` only names the metrics container; `interval`, `timeout`,
    /// `format` and `custom` are used as for scraping.
    #[serde(default)]
    pub source: MetricsSource,

    /// With source Prometheus (and only then): how the pods' series are labelled there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSeries>,

    /// The container port serving metrics, as a number or as the name of a container port.
    #[serde(default = "default_port")]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "type(self) != int || (self >= 1 && self <= 65535)",
            "messageExpression": "string(self) + ' is not a port number from 1 to 65535'",
            "message": "must be a port number from 1 to 65535",
        },
        {
            // IANA_SVC_NAME, as for a container port's name.
            "rule": "type(self) != string || (size(self) <= 15 && self.matches('^[a-z0-9]([a-z0-9-]*[a-z0-9])?$') && self.matches('[a-z]') && !self.contains('--'))",
            "messageExpression": r#"'"' + string(self) + '" is neither a port number nor a container port name (1-15 lowercase letters, digits and "-")'"#,
            "message": "must be a port number or a container port name (1-15 lowercase letters, digits and '-')",
        },
    ]))]
    pub port: IntOrString,

    /// The HTTP path of the metrics endpoint.
    #[serde(default = "default_path")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/"))]
    pub path: String,

    /// http or https. With https the pod's certificate is verified against the CA the
    /// operator trusts for scraping (by default the cluster CA), unless `tls` says otherwise.
    #[serde(default)]
    pub scheme: Scheme,

    /// TLS settings for scheme https (not allowed with http). Without it, the pod's
    /// certificate must be signed by the trusted CA and be valid for the pod's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,

    /// How often each pod is scraped, as a duration such as "15s" or "1m".
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN), extend("x-kubernetes-validations" = [
        duration_rule("duration(self) >= duration('1s')", "must be at least 1s"),
        at_most_a_year(),
    ]))]
    pub interval: String,

    /// How long one scrape may take before it counts as failed, from the moment it is due
    /// (waiting for one of the operator's scrape slots counts): at most 60s, and not longer
    /// than `interval`.
    #[serde(default = "default_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN), extend("x-kubernetes-validations" = [
        duration_rule("duration(self) > duration('0s')", "must be more than 0s"),
        at_most_max_scrape_timeout(),
    ]))]
    pub timeout: String,

    /// The metric names and labels the pods expose: OpenTelemetry (GenAI semantic
    /// conventions), VLLM, LiteLLM, or Custom (then `custom` says which metrics to read).
    #[serde(default)]
    pub format: MetricsFormat,

    /// With format Custom (and only then): the counters to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub custom: Option<Vec<CustomMetric>>,
}

impl Default for MetricsEndpoint {
    fn default() -> Self {
        Self {
            source: MetricsSource::default(),
            prometheus: None,
            port: default_port(),
            path: default_path(),
            scheme: Scheme::default(),
            tls: None,
            interval: default_interval(),
            timeout: default_timeout(),
            format: MetricsFormat::default(),
            custom: None,
        }
    }
}

/// Where a binding's pods' counters are read.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MetricsSource {
    /// The operator scrapes each bound pod's metrics endpoint.
    #[default]
    Scrape,
    /// The operator queries the Prometheus HTTP API it was configured with (flag
    /// `--prometheus-url`) for the bound pods' series.
    Prometheus,
}

impl MetricsSource {
    /// The name as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricsSource::Scrape => "Scrape",
            MetricsSource::Prometheus => "Prometheus",
        }
    }
}

/// How the bound pods' series are labelled in Prometheus. The operator always builds the
/// query itself: only series whose namespace label is the binding's namespace and whose pod
/// label is the name of a pod the binding binds are read.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSeries {
    /// The label that holds the pod's namespace. Default `namespace`.
    #[serde(default = "default_namespace_label")]
    #[schemars(regex(pattern = r"^[a-zA-Z_][a-zA-Z0-9_]*$"), length(min = 1, max = 128))]
    pub namespace_label: String,

    /// The label that holds the pod's name. Default `pod`.
    #[serde(default = "default_pod_label")]
    #[schemars(regex(pattern = r"^[a-zA-Z_][a-zA-Z0-9_]*$"), length(min = 1, max = 128))]
    pub pod_label: String,
}

impl Default for PrometheusSeries {
    fn default() -> Self {
        Self {
            namespace_label: default_namespace_label(),
            pod_label: default_pod_label(),
        }
    }
}

fn default_namespace_label() -> String {
    "namespace".into()
}
fn default_pod_label() -> String {
    "pod".into()
}

/// The scheme of a metrics endpoint.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    #[default]
    Http,
    Https,
}

/// How the operator checks a pod's certificate when it scrapes over https (modelled on the
/// `tlsConfig` of Prometheus and the Prometheus Operator).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsConfig {
    /// Accept any certificate the pod presents: no check of its issuer, validity period or
    /// names. The connection is still encrypted, but not authenticated. Default false.
    #[serde(default)]
    pub insecure_skip_verify: bool,

    /// The name the pod's certificate must be valid for (a DNS name, or an IP address), also
    /// sent as the TLS server name (SNI). Default: the pod's IP address, which the
    /// certificate must then list as an IP subject alternative name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Lenient on purpose, so it never refuses a name the operator's TLS library (rustls)
    // accepts: DNS labels (with '_', as rustls allows) or the characters of an IP address.
    // The finer rules (an all-numeric last label, a malformed IPv6 address) stay with the
    // operator.
    #[schemars(length(min = 1, max = 253), extend("x-kubernetes-validations" = [{
        "rule": r"self.matches('^[A-Za-z0-9_]([-A-Za-z0-9_]{0,61}[A-Za-z0-9_])?(\\.[A-Za-z0-9_]([-A-Za-z0-9_]{0,61}[A-Za-z0-9_])?)*\\.?$') || self.matches('^[0-9A-Fa-f:.]+$')",
        "messageExpression": r#"'"' + self + '" is neither a DNS name nor an IP address'"#,
        "message": "must be a DNS name or an IP address",
    }]))]
    pub server_name: Option<String>,
}

/// The metric conventions a pod follows.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MetricsFormat {
    /// `gen_ai_client_token_usage` (histogram, read `_sum`) with `gen_ai_token_type` and
    /// `gen_ai_request_model`, or the `gen_ai_client_inference_usage_*_tokens_total` counters.
    #[default]
    OpenTelemetry,
    /// `vllm:prompt_tokens_total` and `vllm:generation_tokens_total`, label `model_name`.
    #[serde(rename = "VLLM")]
    Vllm,
    /// `litellm_input_tokens_metric_total` and `litellm_output_tokens_metric_total`, label `model`.
    #[serde(rename = "LiteLLM")]
    LiteLlm,
    /// The counters listed in `custom`.
    Custom,
}

impl MetricsFormat {
    /// The name as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricsFormat::OpenTelemetry => "OpenTelemetry",
            MetricsFormat::Vllm => "VLLM",
            MetricsFormat::LiteLlm => "LiteLLM",
            MetricsFormat::Custom => "Custom",
        }
    }
}

/// One counter of token usage, for format Custom.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// CEL rules rather than `oneOf`, as for WorkloadSelector.
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.tokenType) || has(self.tokenTypeLabel)",
        "reason": "FieldValueRequired",
        "message": "set exactly one of tokenType and tokenTypeLabel",
    },
    {
        "rule": "!has(self.tokenType) || !has(self.tokenTypeLabel)",
        "fieldPath": ".tokenTypeLabel",
        "reason": "FieldValueForbidden",
        "message": "set exactly one of tokenType and tokenTypeLabel, not both",
    },
]))]
pub struct CustomMetric {
    /// The metric (family) name, e.g. `my_tokens_total`.
    #[schemars(regex(pattern = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"), length(max = 256))]
    pub metric: String,

    /// Every series of this metric counts tokens of this type. Exactly one of `tokenType` and
    /// `tokenTypeLabel` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_enum_schema::<TokenType>")]
    pub token_type: Option<TokenType>,

    /// The label whose value (`input` or `output`) is the token type. Exactly one of
    /// `tokenType` and `tokenTypeLabel` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z_][a-zA-Z0-9_]*$"))]
    pub token_type_label: Option<String>,

    /// The label whose value is the model name; series without it count as model "unknown".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z_][a-zA-Z0-9_]*$"))]
    pub model_label: Option<String>,
}

/// The observed state of a BudgetBinding, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetBindingStatus {
    /// The budget this binding charges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,

    /// Since when it charges `budget` (RFC 3339): its creation, or the second after the operator saw
    /// `budgetRef` change. A pod counts its whole counters at its first scrape only if it
    /// started after this (accounting rule 3); the budget counts the binding's pods only once
    /// this names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,

    /// Workloads matched now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads: Option<i64>,

    /// Pods of those workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<i64>,

    /// Pods whose last scrape succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scraped_pods: Option<i64>,

    /// When the pods were last scraped (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scrape_time: Option<String>,

    /// This binding's contribution to the budget in the current period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_tokens: Option<i64>,

    /// Ready, BudgetFound, ScrapeHealthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn default_port() -> IntOrString {
    IntOrString::Int(9464)
}
fn default_path() -> String {
    "/metrics".into()
}
fn default_interval() -> String {
    "15s".into()
}
fn default_timeout() -> String {
    "5s".into()
}
