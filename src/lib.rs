//! tokenbudget-operator: per-workload LLM token budgets for Kubernetes.
#![forbid(unsafe_code)]

pub mod api;
pub mod crds;
