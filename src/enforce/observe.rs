//! The workloads a budget's enforcement looks at, as they are now: every workload its
//! bindings name, and every workload still annotated with its name (from a binding or entry
//! since removed, which must be restored), with their pods. Pure: it reads a snapshot of one
//! namespace.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString};
use kube::ResourceExt;

use super::{BUDGET, decide};
use crate::{
    api::WorkloadKind,
    validate::{Selection, WorkloadEntry},
    workloads::{self, Snapshot, WorkloadId},
};

/// The workloads of budget `budget` in `snapshot`; `bound` are those its valid bindings name.
pub fn workloads(snapshot: &Snapshot, bound: &BTreeSet<WorkloadId>, budget: &str) -> Vec<decide::Workload> {
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
