//! tokenbudget-operator: per-workload LLM token budgets for Kubernetes.
//!
//! Layout (dependencies point one way: `api` <- `validate`, `conditions`, `workloads` <-
//! `usage`, `enforce` <- `controller` <- `bin`; docs/architecture.md follows one reconcile):
//! - [`api`]: the CRD types, nothing else.
//! - [`validate`]: specs into validated types (`ValidBudget`, `ValidBinding`), pure.
//! - [`conditions`], [`workloads`]: status conditions, and which pods a binding charges; pure.
//! - [`usage`]: metrics, scrapes, the ledger, a budget's account and its accounting cycle's
//!   plan and fold; no Kubernetes client.
//! - [`enforce`]: what a budget does to its workloads: observe and decide (pure), then act.
//! - [`controller`]: watches, stores, the reconcile pipelines, status and Events.
//! - [`metrics`], [`http`]: the operator's own endpoints.
//! - [`agent_api`]: what agents ask before a call, authenticated and authorized by the API
//!   server's reviews, answered from the controller's cache.
//! - [`plugin`]: the `kubectl tokenbudget` plugin (reads budgets, renders them).
#![forbid(unsafe_code)]

pub mod agent_api;
pub mod api;
pub mod cache;
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
