//! The CRD manifests, generated from the types in [`crate::api`].

use kube::CustomResourceExt;

use crate::api::{BudgetBinding, TokenBudget};

/// Every CRD of the operator as `(file name, YAML)`, in the order they are installed.
pub fn all() -> Vec<(String, String)> {
    [TokenBudget::crd(), BudgetBinding::crd()]
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let (plural, group) = name.split_once('.').unwrap_or((&name, ""));
            let yaml = serde_yaml::to_string(&crd).expect("a CRD always serializes to YAML");
            (format!("{group}_{plural}.yaml"), yaml)
        })
        .collect()
}
