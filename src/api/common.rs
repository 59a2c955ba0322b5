//! Types and schema helpers shared by both kinds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Go-style duration such as `15s`, `1m30s` or `500ms`, as Kubernetes users write them.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// The longest duration any field accepts: a year (366 days), far beyond any sensible interval
/// or grace period. The operator's own check ([`crate::validate::parse_duration`]) agrees.
pub const MAX_DURATION: &str = "8784h";

/// CEL rule for a duration field (a string matching [`DURATION_PATTERN`]): at most a year.
///
/// CEL's `duration()` parses with Go's `time.ParseDuration`, which accepts every value of
/// the pattern, so the rule needs no guard; only a value beyond Go's range (about 292 years,
/// e.g. `9999999h`) fails to convert, and the server then reports the conversion error
/// together with `message`.
pub(crate) fn at_most_a_year() -> serde_json::Value {
    serde_json::json!({
        "rule": format!("duration(self) <= duration('{MAX_DURATION}')"),
        "messageExpression": format!("self + ' is longer than a year ({MAX_DURATION})'"),
        "message": format!("must be at most a year ({MAX_DURATION})"),
    })
}

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
/// value that schemars lists: an absent field is left out, never `null` (`crate::crds` strips
/// `nullable` too), so `null` is not a value any client should be told it may write.
pub(crate) fn optional_enum_schema<T: JsonSchema>(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.root_schema_for::<T>();
    schema.remove("$schema");
    schema.remove("title");
    schema.insert("nullable".into(), true.into());
    schema
}

/// Schema for a workload's label selector: Kubernetes' own, plus CEL rules for what the
/// operator used to find only after storage: a selector must select something specific (an
/// empty one would bind, and with ScaleDown stop, every workload of its kind in the
/// namespace), keys and values must be valid labels, and each operator gets the values it
/// takes. Each rule sits on the smallest part of the selector it reads.
pub(crate) fn selector_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = LabelSelector::json_schema(generator);
    let label_value = serde_json::json!([{
        "rule": "!format.labelValue().validate(self).hasValue()",
        "messageExpression": "'\"' + self + '\" is not a valid label value: ' + format.labelValue().validate(self).value().join(', ')",
        "message": "must be a valid label value",
    }]);
    let rules = [
        (
            "",
            serde_json::json!([{
                "rule": "(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)",
                "message": "an empty selector would select every workload of its kind in the namespace; give matchLabels or matchExpressions",
            }]),
        ),
        (
            "/properties/matchLabels",
            serde_json::json!([{
                "rule": "self.all(k, !format.qualifiedName().validate(k).hasValue())",
                "message": "keys must be valid label keys: an optional DNS subdomain and '/', then 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            }]),
        ),
        ("/properties/matchLabels/additionalProperties", label_value.clone()),
        (
            "/properties/matchExpressions/items",
            serde_json::json!([
                {
                    "rule": "self.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist']",
                    "fieldPath": ".operator",
                    "messageExpression": "'\"' + self.operator + '\" is not one of In, NotIn, Exists, DoesNotExist'",
                    "message": "must be one of In, NotIn, Exists, DoesNotExist",
                },
                {
                    "rule": "!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)",
                    "fieldPath": ".values",
                    "reason": "FieldValueRequired",
                    "messageExpression": "'operator ' + self.operator + ' needs values'",
                    "message": "operators In and NotIn need values",
                },
                {
                    "rule": "!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || size(self.values) == 0",
                    "fieldPath": ".values",
                    "reason": "FieldValueForbidden",
                    "messageExpression": "'operator ' + self.operator + ' takes no values'",
                    "message": "operators Exists and DoesNotExist take no values",
                },
            ]),
        ),
        (
            "/properties/matchExpressions/items/properties/key",
            serde_json::json!([{
                "rule": "!format.qualifiedName().validate(self).hasValue()",
                "messageExpression": "'\"' + self + '\" is not a valid label key: ' + format.qualifiedName().validate(self).value().join(', ')",
                "message": "must be a valid label key",
            }]),
        ),
        (
            "/properties/matchExpressions/items/properties/values/items",
            label_value,
        ),
    ];
    for (pointer, rule) in rules {
        schema
            .pointer_mut(pointer)
            .and_then(serde_json::Value::as_object_mut)
            .unwrap_or_else(|| panic!("LabelSelector's schema has no {pointer:?}"))
            .insert("x-kubernetes-validations".into(), rule);
    }
    schema
}
