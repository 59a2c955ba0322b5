//! The `tokenbudget.io/v1alpha1` API: the custom resources and nothing else.
//!
//! Every spec field's doc comment becomes its description in the generated CRD (so
//! `kubectl explain tb.spec.period` is useful), and the API server validates every spec
//! against the schema: OpenAPI keywords (`minimum`, `enum`, `pattern`, `required`, ...) for
//! single fields, and CEL rules (`x-kubernetes-validations`) for rules across fields, each on
//! the smallest object that holds the fields it compares, so that validation ratcheting lets
//! an unchanged invalid part of a stored object through updates of other parts. What the
//! schema cannot check is left to [`crate::validate`].

// clippy reads the repeated `printcolumn(name = .., type_ = ..)` keys of `#[kube]` as duplicated
// attributes; they are separate columns.
#[allow(clippy::duplicated_attributes)]
mod binding;
#[allow(clippy::duplicated_attributes)]
mod budget;
mod common;
#[allow(clippy::duplicated_attributes)]
mod pool;

pub use binding::*;
pub use budget::*;
pub use common::*;
pub use pool::*;

/// The API group of both kinds.
pub const GROUP: &str = "tokenbudget.io";
/// The API version of both kinds.
pub const VERSION: &str = "v1alpha1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_what_a_minimal_manifest_leaves_out() {
        let tb: TokenBudgetSpec = serde_yaml::from_str("limits: {tokens: 1000}").unwrap();
        assert_eq!(tb.currency, "USD");
        assert_eq!(tb.period.reset, ResetPeriod::Monthly);
        assert_eq!(tb.period.timezone, "UTC");
        assert_eq!(tb.thresholds, [80]);
        assert_eq!(tb.enforcement.action, EnforcementAction::Annotate);
        assert_eq!(tb.enforcement.grace_period, "0s");
        assert!(tb.token_types.is_none() && tb.pricing.is_empty() && tb.compute_quota.is_none());

        let bb: BudgetBindingSpec =
            serde_yaml::from_str("budgetRef: {name: b}\nworkloads: [{kind: Job, name: j}]").unwrap();
        let m = &bb.metrics;
        assert_eq!(
            m.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9464)
        );
        assert_eq!(
            (m.path.as_str(), m.interval.as_str(), m.timeout.as_str()),
            ("/metrics", "15s", "5s")
        );
        assert_eq!((m.scheme, m.format), (Scheme::Http, MetricsFormat::OpenTelemetry));
    }

    /// Every example survives a serde round trip through the types unchanged.
    #[test]
    fn examples_round_trip_through_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        // examples/*.yaml, and the YAML of examples/<folder>/ (whose other kinds, such as a
        // ServiceAccount, are not ours to read).
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| (e.unwrap().path(), true)));
            } else {
                files.push((path, false));
            }
        }
        let mut seen = 0;
        for (path, in_folder) in files
            .into_iter()
            .filter(|(p, _)| p.extension().is_some_and(|e| e == "yaml"))
        {
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value = serde_yaml::Value::deserialize(doc).unwrap();
                match value.get("kind").and_then(|k| k.as_str()) {
                    Some("TokenBudget") => {
                        let tb: TokenBudget = serde_yaml::from_value(value).unwrap();
                        let again: TokenBudget = serde_yaml::from_str(&serde_yaml::to_string(&tb).unwrap()).unwrap();
                        assert_eq!(tb, again);
                    }
                    Some("BudgetBinding") => {
                        let bb: BudgetBinding = serde_yaml::from_value(value).unwrap();
                        let again: BudgetBinding = serde_yaml::from_str(&serde_yaml::to_string(&bb).unwrap()).unwrap();
                        assert_eq!(bb, again);
                    }
                    Some("ClusterTokenBudget") => {
                        let ctb: ClusterTokenBudget = serde_yaml::from_value(value).unwrap();
                        let again: ClusterTokenBudget =
                            serde_yaml::from_str(&serde_yaml::to_string(&ctb).unwrap()).unwrap();
                        assert_eq!(ctb, again);
                    }
                    _ if in_folder
                        && value.get("apiVersion").and_then(|v| v.as_str()) != Some("tokenbudget.io/v1alpha1") =>
                    {
                        continue;
                    }
                    other => panic!("unexpected kind {other:?} in {}", path.display()),
                }
                seen += 1;
            }
        }
        assert!(seen >= 5, "only {seen} objects in examples/");
    }

    use serde::Deserialize;
}
