//! Types and schema helpers shared by both kinds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Go-style duration such as `15s`, `1m30s` or `500ms`, as Kubernetes users write them.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// The longest duration any field accepts: a year (366 days), far beyond any sensible interval
/// or grace period. The operator's own check ([`crate::validate::parse_duration`]) agrees.
pub const MAX_DURATION: &str = "8784h";

/// CEL that is true when `expr` matches [`DURATION_PATTERN`].
///
/// CEL's `duration()` parses with Go's `time.ParseDuration`, which accepts every value of the
/// pattern. Rules convert only such values: the pattern already reports any other, and
/// converting it would add a second, confusing error ("type conversion error").
pub(crate) fn cel_is_duration(expr: &str) -> String {
    format!("{expr}.matches('{}')", DURATION_PATTERN.replace('\\', "\\\\"))
}

/// CEL rule for a duration field: `check` (which reads `duration(self)`) holds, or the value
/// is no duration at all (left to the pattern).
pub(crate) fn duration_rule(check: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "rule": format!("!{} || {check}", cel_is_duration("self")),
        "message": message,
    })
}

/// CEL rule for a duration field: at most a year. A value beyond Go's range (about 292
/// years, e.g. `9999999h`) fails to convert; the server then reports the conversion error
/// together with `message`.
pub(crate) fn at_most_a_year() -> serde_json::Value {
    let mut rule = duration_rule(
        &format!("duration(self) <= duration('{MAX_DURATION}')"),
        &format!("must be at most a year ({MAX_DURATION})"),
    );
    rule["messageExpression"] = format!("self + ' is longer than a year ({MAX_DURATION})'").into();
    rule
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

/// The longest label value Kubernetes allows.
const LABEL_VALUE_MAX: usize = 63;
/// The longest label key: a DNS subdomain prefix (253), '/', and a name (63).
const LABEL_KEY_MAX: usize = 253 + 1 + 63;

/// A label value (Kubernetes' IsValidLabelValue; the length is the schema's `maxLength`), as
/// a CEL string literal's content.
const LABEL_VALUE_RE: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";

/// What a label key is, also inside a CEL string literal (so no single quotes).
const LABEL_KEY_MESSAGE: &str = r#"a label key is an optional DNS subdomain of at most 253 characters and "/", then 1-63 letters, digits, "-", "_" or ".", starting and ending with a letter or digit"#;

/// CEL for "`key` is a label key" (Kubernetes' IsQualifiedName): an optional DNS-subdomain
/// prefix of at most 253 characters and '/', then a name of 1-63 characters.
fn label_key(key: &str) -> String {
    format!(
        r"{key}.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?$') && !{key}.matches('^[^/]{{254,}}/')"
    )
}

/// Schema for a workload's label selector: Kubernetes' own, plus CEL rules for what the
/// operator used to find only after storage: a selector must select something specific (an
/// empty one would bind, and with ScaleDown stop, every workload of its kind in the
/// namespace), keys and values must be valid labels, and each operator gets the values it
/// takes. Each rule sits on the smallest part of the selector it reads.
pub(crate) fn selector_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = LabelSelector::json_schema(generator);
    for (pointer, keyword, bound) in SELECTOR_BOUNDS {
        selector_part(&mut schema, pointer).insert(keyword.into(), bound.into());
    }
    for (pointer, rules) in selector_rules() {
        selector_part(&mut schema, pointer).insert("x-kubernetes-validations".into(), rules);
    }
    schema
}

/// Schema for a pool's namespace selector: the same checks as a workload selector's, except
/// that `{}` is allowed and, as everywhere in Kubernetes, selects every namespace.
pub(crate) fn namespace_selector_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = selector_schema(generator);
    schema.remove("x-kubernetes-validations");
    schema
}

/// Bounds that keep the estimated cost of the selector's rules within what the server allows
/// (it multiplies the cost of a rule by the most items, entries and characters the schema
/// allows), by JSON pointer into the selector's schema. Label keys and values are never
/// longer; the counts leave room for any selector a person writes.
const SELECTOR_BOUNDS: [(&str, &str, usize); 6] = [
    ("/properties/matchLabels", "maxProperties", 32),
    (
        "/properties/matchLabels/additionalProperties",
        "maxLength",
        LABEL_VALUE_MAX,
    ),
    ("/properties/matchExpressions", "maxItems", 8),
    (
        "/properties/matchExpressions/items/properties/key",
        "maxLength",
        LABEL_KEY_MAX,
    ),
    ("/properties/matchExpressions/items/properties/values", "maxItems", 32),
    (
        "/properties/matchExpressions/items/properties/values/items",
        "maxLength",
        LABEL_VALUE_MAX,
    ),
];

/// The CEL rules of the selector (`x-kubernetes-validations`), by JSON pointer into its
/// schema.
fn selector_rules() -> [(&'static str, serde_json::Value); 6] {
    [
        ("", not_empty_rules()),
        ("/properties/matchLabels", match_labels_key_rules()),
        ("/properties/matchLabels/additionalProperties", label_value_rules()),
        ("/properties/matchExpressions/items", operator_rules()),
        (
            "/properties/matchExpressions/items/properties/key",
            expression_key_rules(),
        ),
        (
            "/properties/matchExpressions/items/properties/values/items",
            label_value_rules(),
        ),
    ]
}

/// The part of the selector's schema at `pointer`.
fn selector_part<'a>(
    schema: &'a mut schemars::Schema,
    pointer: &str,
) -> &'a mut serde_json::Map<String, serde_json::Value> {
    schema
        .pointer_mut(pointer)
        .and_then(serde_json::Value::as_object_mut)
        .unwrap_or_else(|| panic!("LabelSelector's schema has no {pointer:?}"))
}

/// A selector must select something specific.
fn not_empty_rules() -> serde_json::Value {
    serde_json::json!([{
        "rule": "(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)",
        "message": "an empty selector would select every workload of its kind in the namespace; give matchLabels or matchExpressions",
    }])
}

/// The keys of `matchLabels` are label keys.
fn match_labels_key_rules() -> serde_json::Value {
    serde_json::json!([{
        "rule": format!("self.all(k, {})", label_key("k")),
        "messageExpression": format!(
            r#"'"' + self.filter(k, !({}))[0] + '" is not a valid label key: {LABEL_KEY_MESSAGE}'"#,
            label_key("k")
        ),
        "message": LABEL_KEY_MESSAGE,
    }])
}

/// The key of a `matchExpressions` item is a label key.
fn expression_key_rules() -> serde_json::Value {
    serde_json::json!([{
        "rule": label_key("self"),
        "messageExpression": format!(r#"'"' + self + '" is not a valid label key: {LABEL_KEY_MESSAGE}'"#),
        "message": LABEL_KEY_MESSAGE,
    }])
}

/// A label value. Regular expressions rather than the `format` library's validators, whose
/// estimated cost the server refuses in lists this long; they say the same (Kubernetes'
/// IsQualifiedName and IsValidLabelValue).
fn label_value_rules() -> serde_json::Value {
    serde_json::json!([{
        "rule": format!("self.matches('{LABEL_VALUE_RE}')"),
        "messageExpression": r#"'"' + self + '" is not a valid label value'"#,
        "message": "must be a valid label value",
    }])
}

/// Each operator of a `matchExpressions` item is known and gets the values it takes.
fn operator_rules() -> serde_json::Value {
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
    ])
}
