//! Types and schema helpers shared by both kinds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Go-style duration such as `15s`, `1m30s` or `500ms`, as Kubernetes users write them.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A non-negative decimal number written as a string, such as `250`, `0.15` or `1234.5678`.
/// Money is never a float: strings keep every digit the user wrote.
pub const DECIMAL_PATTERN: &str = r"^[0-9]{1,15}(\.[0-9]{1,12})?$";

/// A non-negative Kubernetes resource quantity such as `8`, `500m`, `32Gi` or `1e3`.
pub const QUANTITY_PATTERN: &str =
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// A kind of token that an LLM call consumes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    /// Prompt tokens sent to the model.
    Input,
    /// Completion tokens produced by the model.
    Output,
}

impl TokenType {
    pub const ALL: [TokenType; 2] = [TokenType::Input, TokenType::Output];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenType::Input => "input",
            TokenType::Output => "output",
        }
    }
}

/// The kinds of workload whose pods can be charged to a budget.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    Job,
    CronJob,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
        }
    }
}

/// Schema for a list of standard `metav1.Condition`s: a list-map keyed by `type`, so that
/// server-side apply merges conditions one by one instead of replacing the list.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = <Vec<Condition>>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}

/// Schema for an optional string enum: the enum's values plus `nullable`, without the `null`
/// value that schemars lists (kubectl's client-side validation of a 1.20 server rejects it).
pub(crate) fn optional_enum_schema<T: JsonSchema>(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.root_schema_for::<T>();
    schema.remove("$schema");
    schema.remove("title");
    schema.insert("nullable".into(), true.into());
    schema
}
