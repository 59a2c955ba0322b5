//! tokenbudget-operator: per-workload LLM token budgets for Kubernetes.
//!
//! Layout (dependencies point one way: `api` <- `validate`, `usage`, `enforce` <- `controller` <- `bin`):
//! - [`api`]: the CRD types, nothing else.
//! - [`validate`]: what the OpenAPI schema cannot check, pure.
//! - [`enforce`]: what a budget does to its workloads: decide (pure), then act.
//! - [`controller`]: watches, reconcile wiring, status.
//! - [`metrics`], [`http`]: the operator's own endpoints.
//! - [`plugin`]: the `kubectl tokenbudget` plugin (reads budgets, renders them).
#![forbid(unsafe_code)]

pub mod api;
pub mod clock;
pub mod conditions;
pub mod controller;
pub mod crds;
pub mod enforce;
pub mod http;
pub mod metrics;
pub mod plugin;
pub mod usage;
pub mod validate;
pub mod workloads;
