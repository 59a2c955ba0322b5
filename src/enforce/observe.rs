//! The workloads a budget's enforcement looks at, as they are now: every workload its
//! bindings name, and every workload still annotated with its name (from a binding or entry
//! since removed, which must be restored), with their pods. Pure: it reads a snapshot of one
//! namespace.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString};
use kube::ResourceExt;

use super::{BUDGET, decide};
use crate::{
    api::WorkloadKind,
    validate::{Selection, ValidBinding, WorkloadEntry},
    workloads::{self, Snapshot, WorkloadId},
};

/// The workloads that other budgets hold, with the budget holding each.
pub type Holds = BTreeMap<WorkloadId, String>;

/// The workloads of budget `budget` in `snapshot`; `bound` are those its valid bindings name,
/// `holds` those that other budgets hold.
pub fn workloads(
    snapshot: &Snapshot,
    bound: &BTreeSet<WorkloadId>,
    budget: &str,
    holds: &Holds,
) -> Vec<decide::Workload> {
    let mut all = bound.clone();
    all.extend(marked_by(snapshot, budget));
    // Their pods, through the same ownership rules as accounting.
    let entries: Vec<WorkloadEntry> = all
        .iter()
        .map(|id| WorkloadEntry {
            kind: id.kind,
            selection: Selection::Name(id.name.clone()),
        })
        .collect();
    // The port plays no part: only the pods are wanted, not where to scrape them.
    let resolution = workloads::resolve(&entries, &IntOrString::Int(0), snapshot);
    all.into_iter()
        .filter_map(|id| {
            let (meta, replicas, suspended) = state(snapshot, &id)?;
            let pods = resolution
                .pods
                .iter()
                .filter(|p| p.workload == id && p.pod.metadata.deletion_timestamp.is_none())
                .map(|p| decide::Pod {
                    name: p.pod.name_any(),
                    annotations: p.pod.metadata.annotations.clone().unwrap_or_default(),
                })
                .collect();
            Some(decide::Workload {
                bound: bound.contains(&id),
                held_by: holds.get(&id).cloned(),
                kind: id.kind,
                name: id.name,
                resource_version: meta.resource_version,
                annotations: meta.annotations.unwrap_or_default(),
                replicas,
                suspended,
                pods,
            })
        })
        .collect()
}

/// The workloads of `snapshot` whose annotation names another budget than `budget` that holds
/// them: one of `others` (the valid bindings of the other budgets that exist, with the name
/// of their budget) binds the workload. A workload annotated with a budget that does not
/// exist, or does not bind it, is held by nobody: an annotation alone lifts no enforcement.
pub fn holds(snapshot: &Snapshot, budget: &str, others: &[(&str, &ValidBinding)]) -> Holds {
    let claimed: Vec<(WorkloadId, &str)> = snapshot
        .workload_metas()
        .filter_map(|(kind, meta)| {
            let owner = meta.annotations.as_ref()?.get(BUDGET)?;
            let id = WorkloadId {
                kind,
                name: meta.name.clone().unwrap_or_default(),
            };
            (owner != budget).then_some((id, owner.as_str()))
        })
        .collect();
    if claimed.is_empty() {
        return Holds::new();
    }
    let mut bound_by: BTreeSet<(WorkloadId, &str)> = BTreeSet::new();
    for (owner, binding) in others {
        let resolution = workloads::resolve(&binding.workloads, &binding.endpoint.port, snapshot);
        bound_by.extend(resolution.workloads.into_iter().map(|id| (id, *owner)));
    }
    claimed
        .into_iter()
        .filter(|(id, owner)| bound_by.contains(&(id.clone(), *owner)))
        .map(|(id, owner)| (id, owner.to_string()))
        .collect()
}

/// The workloads annotated with `budget`'s name.
fn marked_by<'a>(snapshot: &'a Snapshot, budget: &'a str) -> impl Iterator<Item = WorkloadId> + 'a {
    snapshot
        .workload_metas()
        .filter(move |(_, meta)| {
            meta.annotations
                .as_ref()
                .and_then(|a| a.get(BUDGET))
                .is_some_and(|b| b == budget)
        })
        .map(|(kind, meta)| WorkloadId {
            kind,
            name: meta.name.clone().unwrap_or_default(),
        })
}

/// A workload's metadata, replica count (Deployments, StatefulSets: 1 when unset) and
/// suspension (Jobs, CronJobs), when it exists.
fn state(snapshot: &Snapshot, id: &WorkloadId) -> Option<(ObjectMeta, Option<i32>, Option<bool>)> {
    let named = |meta: &ObjectMeta| meta.name.as_deref() == Some(id.name.as_str());
    match id.kind {
        WorkloadKind::Deployment => snapshot
            .deployments
            .iter()
            .find(|o| named(&o.metadata))
            .map(|o| (o.metadata.clone(), Some(o.spec.replicas.unwrap_or(1)), None)),
        WorkloadKind::StatefulSet => snapshot
            .stateful_sets
            .iter()
            .find(|o| named(&o.metadata))
            .map(|o| (o.metadata.clone(), Some(o.spec.replicas.unwrap_or(1)), None)),
        WorkloadKind::Job => snapshot.jobs.iter().find(|o| named(&o.metadata)).map(|o| {
            let suspended = o.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
            (o.metadata.clone(), None, Some(suspended))
        }),
        WorkloadKind::CronJob => snapshot
            .cron_jobs
            .iter()
            .find(|o| named(&o.metadata))
            .map(|o| (o.metadata.clone(), None, Some(o.spec.suspend.unwrap_or(false)))),
    }
}
