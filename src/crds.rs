//! The CRD manifests, generated from the types in [`crate::api`].

use kube::CustomResourceExt;

use crate::api::{BudgetBinding, ClusterTokenBudget, TokenBudget};

/// Where the repository keeps the generated CRDs, relative to its root: `crds/` for
/// `kubectl apply -f crds/`, and the Helm chart's copy, which the chart's templates install
/// and upgrade (a chart can read no file outside its own directory).
pub const DIRS: [&str; 2] = ["crds", "charts/tokenbudget-operator/files/crds"];

/// Every CRD of the operator as `(file name, YAML)`, in the order they are installed.
pub fn all() -> Vec<(String, String)> {
    [TokenBudget::crd(), BudgetBinding::crd(), ClusterTokenBudget::crd()]
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let (plural, group) = name.split_once('.').unwrap_or((&name, ""));
            let mut value = serde_json::to_value(&crd).expect("a CRD always serializes");
            for_kubernetes(&mut value);
            let yaml = serde_yaml::to_string(&value).expect("a CRD always serializes to YAML");
            (format!("{group}_{plural}.yaml"), yaml)
        })
        .collect()
}

/// Fixes, in every schema object of a CRD, what the generator writes for Rust types that the
/// API server reads differently:
///
/// - `nullable: true` on `Option` fields is removed. Without it, the API server prunes an
///   explicit `null` before defaulting, so `port: null` becomes the default 9464 instead of a
///   value the operator cannot read (one unreadable object would stall the whole watch). The
///   operator never writes nulls: absent optional fields are omitted.
/// - The formats of unsigned integers (`uint8` for the thresholds' `u8`, ...) are not OpenAPI
///   formats: the API server warns `unrecognized format` on every apply of the CRD. They
///   become `int32` or `int64`; the schema's `minimum` and `maximum` keep the bounds.
fn for_kubernetes(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if map.get("nullable") == Some(&serde_json::Value::Bool(true)) {
                map.remove("nullable");
            }
            let format = match map.get("format").and_then(|f| f.as_str()) {
                Some("uint8" | "uint16") => Some("int32"),
                Some("uint32" | "uint64" | "uint") => Some("int64"),
                _ => None,
            };
            if let Some(format) = format {
                map.insert("format".into(), format.into());
            }
            map.values_mut().for_each(for_kubernetes);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(for_kubernetes),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `crds/` and the chart's copy are what users and the Helm chart install: they must be
    /// exactly what the types say.
    #[test]
    fn committed_crds_match_the_types() {
        for dir in DIRS {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
            for (file, yaml) in all() {
                let committed = std::fs::read_to_string(path.join(&file))
                    .unwrap_or_else(|e| panic!("{dir}/{file} is missing ({e}): run `cargo run --bin crdgen -- crds`"));
                assert!(
                    committed == yaml,
                    "{dir}/{file} differs from the Rust types: run `cargo run --bin crdgen -- crds`"
                );
            }
        }
    }

    /// The formats the API server knows for the types the CRDs use; any other is warned
    /// about on every `kubectl apply` of the CRD.
    #[test]
    fn every_format_is_one_the_api_server_knows() {
        fn formats(value: &serde_json::Value, found: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(map) => {
                    // A schema object: it has a type. (A property may also be named `format`.)
                    if let (Some(_), Some(serde_json::Value::String(f))) = (map.get("type"), map.get("format")) {
                        found.push(f.clone());
                    }
                    map.values().for_each(|v| formats(v, found));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| formats(v, found)),
                _ => {}
            }
        }
        for (file, yaml) in all() {
            let mut found = Vec::new();
            formats(&serde_yaml::from_str(&yaml).expect("a CRD parses"), &mut found);
            for format in found {
                assert!(
                    ["int32", "int64", "date-time"].contains(&format.as_str()),
                    "{file}: {format}"
                );
            }
        }
    }

    #[test]
    fn unsigned_formats_become_openapi_formats() {
        let mut schema = serde_json::json!({"type": "array", "items": {"type": "integer", "format": "uint8"}});
        for_kubernetes(&mut schema);
        assert_eq!(schema["items"]["format"], "int32");
    }

    #[test]
    fn no_field_is_nullable() {
        for (file, yaml) in all() {
            assert!(!yaml.contains("nullable"), "{file} has a nullable field");
        }
    }

    /// Every CEL rule tells the user what is wrong: without a message the server prints the
    /// rule's expression.
    #[test]
    fn every_rule_has_a_message() {
        fn rules(value: &serde_json::Value, found: &mut Vec<serde_json::Value>) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::Array(list)) = map.get("x-kubernetes-validations") {
                        found.extend(list.iter().cloned());
                    }
                    map.values().for_each(|v| rules(v, found));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| rules(v, found)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        for (_, yaml) in all() {
            rules(&serde_yaml::from_str(&yaml).unwrap(), &mut found);
        }
        assert!(found.len() >= 20, "only {} rules", found.len());
        for rule in found {
            assert!(rule["message"].is_string(), "no message: {rule}");
        }
    }

    #[test]
    fn crds_have_the_names_of_the_api() {
        let names: Vec<String> = all().into_iter().map(|(file, _)| file).collect();
        assert_eq!(
            names,
            [
                "tokenbudget.io_tokenbudgets.yaml",
                "tokenbudget.io_budgetbindings.yaml",
                "tokenbudget.io_clustertokenbudgets.yaml"
            ]
        );
    }
}
