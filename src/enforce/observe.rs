//! The workloads a budget's enforcement looks at, as they are now: every workload its
//! bindings name, and every workload still annotated with its name (from a binding or entry
//! since removed, which must be restored), with their pods. Pure: it reads a objects of one
//! namespace.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        batch::v1::{CronJob, Job},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use kube::ResourceExt;

use super::{BUDGET, decide};
use crate::{
    api::WorkloadKind,
    validate::{Selection, ValidBinding, WorkloadEntry},
    workloads::{self, Namespace, WorkloadId},
};

/// What other budgets hold of a namespace.
#[derive(Clone, Debug, Default)]
pub struct Holds {
    /// The workloads other budgets hold, with the budget holding each.
    pub held: BTreeMap<WorkloadId, String>,
    /// Every workload that a valid binding of another budget binds. A Job among them is that
    /// budget's to enforce on, never suspended as the run of this budget's CronJob.
    pub bound: BTreeSet<WorkloadId>,
}

/// The workloads of budget `budget` in `objects`; `bound` are those its valid bindings name,
/// `holds` what other budgets hold. A CronJob comes with its runs: the Jobs it controls, but
/// for those that are workloads of this budget themselves or that another budget binds.
pub fn workloads(
    objects: &Namespace,
    bound: &BTreeSet<WorkloadId>,
    budget: &str,
    holds: &Holds,
) -> Vec<decide::Workload> {
    let mut all = bound.clone();
    all.extend(marked_by(objects, budget));
    // Their pods, through the same ownership rules as accounting.
    let entries: Vec<WorkloadEntry> = all
        .iter()
        .map(|id| WorkloadEntry {
            kind: id.kind,
            selection: Selection::Name(id.name.clone()),
        })
        .collect();
    // The port plays no part: only the pods are wanted, not where to scrape them.
    let resolution = workloads::resolve(&entries, &IntOrString::Int(0), objects);
    all.iter()
        .filter_map(|id| {
            let (meta, replicas, suspended) = state(objects, id)?;
            let runs = match id.kind {
                WorkloadKind::CronJob => runs(objects, &meta, |job| {
                    let job = WorkloadId {
                        kind: WorkloadKind::Job,
                        name: job.to_string(),
                    };
                    all.contains(&job) || holds.bound.contains(&job)
                }),
                _ => Vec::new(),
            };
            let pods = resolution
                .pods
                .iter()
                .filter(|p| p.workload == *id && p.pod.metadata.deletion_timestamp.is_none())
                .map(|p| decide::Pod {
                    name: p.pod.name_any(),
                    annotations: p.pod.metadata.annotations.clone().unwrap_or_default(),
                })
                .collect();
            Some(decide::Workload {
                bound: bound.contains(id),
                held_by: holds.held.get(id).cloned(),
                kind: id.kind,
                name: id.name.clone(),
                resource_version: meta.resource_version,
                annotations: meta.annotations.unwrap_or_default(),
                replicas,
                suspended,
                pods,
                runs,
            })
        })
        .collect()
}

/// The runs of a CronJob: the Jobs of `objects` it controls (by uid), but those `excluded`,
/// by name.
fn runs(objects: &Namespace, cron_job: &ObjectMeta, excluded: impl Fn(&str) -> bool) -> Vec<decide::Run> {
    workloads::runs_of(objects, cron_job)
        .into_iter()
        .filter(|job| !excluded(&job.name_any()))
        .map(|job| decide::Run {
            name: job.name_any(),
            resource_version: job.metadata.resource_version.clone(),
            annotations: job.metadata.annotations.clone().unwrap_or_default(),
            suspended: job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false),
            finished: workloads::job_finished(&job),
        })
        .collect()
}

/// What `others` (the valid bindings of the other budgets that exist, with the name of their
/// budget) hold of `objects`: every workload they bind, and among those the workloads whose
/// annotation names another budget than `budget` that binds them. A workload annotated with a
/// budget that does not exist, or does not bind it, is held by nobody: an annotation alone
/// lifts no enforcement.
pub fn holds(objects: &Namespace, budget: &str, others: &[(&str, &ValidBinding)]) -> Holds {
    let mut bound_by: BTreeSet<(WorkloadId, &str)> = BTreeSet::new();
    for (owner, binding) in others {
        let bound = workloads::workloads(&binding.workloads, objects);
        bound_by.extend(bound.into_iter().map(|id| (id, *owner)));
    }
    let mut held = BTreeMap::new();
    objects.each_workload(|kind, meta| {
        let Some(owner) = meta.annotations.as_ref().and_then(|a| a.get(BUDGET)) else {
            return;
        };
        let id = WorkloadId {
            kind,
            name: meta.name.clone().unwrap_or_default(),
        };
        if owner != budget && bound_by.contains(&(id.clone(), owner.as_str())) {
            held.insert(id, owner.clone());
        }
    });
    Holds {
        held,
        bound: bound_by.into_iter().map(|(id, _)| id).collect(),
    }
}

/// The workloads annotated with `budget`'s name.
fn marked_by(objects: &Namespace, budget: &str) -> Vec<WorkloadId> {
    let mut marked = Vec::new();
    objects.each_workload(|kind, meta| {
        if meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(BUDGET))
            .is_some_and(|b| b == budget)
        {
            marked.push(WorkloadId {
                kind,
                name: meta.name.clone().unwrap_or_default(),
            });
        }
    });
    marked
}

/// A workload's metadata, replica count (Deployments, StatefulSets: 1 when unset) and
/// suspension (Jobs, CronJobs), when it exists.
fn state(objects: &Namespace, id: &WorkloadId) -> Option<(ObjectMeta, Option<i32>, Option<bool>)> {
    match id.kind {
        WorkloadKind::Deployment => objects
            .get::<Deployment>(&id.name)
            .map(|o| (o.metadata.clone(), Some(o.spec.replicas.unwrap_or(1)), None)),
        WorkloadKind::StatefulSet => objects
            .get::<StatefulSet>(&id.name)
            .map(|o| (o.metadata.clone(), Some(o.spec.replicas.unwrap_or(1)), None)),
        WorkloadKind::Job => objects.get::<Job>(&id.name).map(|o| {
            let suspended = o.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
            (o.metadata.clone(), None, Some(suspended))
        }),
        WorkloadKind::CronJob => objects
            .get::<CronJob>(&id.name)
            .map(|o| (o.metadata.clone(), None, Some(o.spec.suspend.unwrap_or(false)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::{Lists, fixtures::load};

    /// A Job of namespace `ns` whose one ownerReference is `owner` (YAML).
    fn job(name: &str, ns: &str, owner: &str, rest: &str) -> std::sync::Arc<k8s_openapi::api::batch::v1::Job> {
        load(&format!(
            "metadata: {{name: {name}, namespace: {ns}, uid: uid-{name}, resourceVersion: '3', ownerReferences: [{owner}]}}\n{rest}"
        ))
    }

    fn id(kind: WorkloadKind, name: &str) -> WorkloadId {
        WorkloadId {
            kind,
            name: name.into(),
        }
    }

    #[test]
    fn a_cron_jobs_runs_are_the_jobs_it_controls_by_uid_that_nobody_else_binds() {
        let nightly = "{apiVersion: batch/v1, kind: CronJob, name: nightly, uid: c1, controller: true}";
        let objects = Lists {
            cron_jobs: vec![load("metadata: {name: nightly, namespace: agents, uid: c1}")],
            jobs: vec![
                job("nightly-1", "agents", nightly, "spec: {suspend: true, template: {}}"),
                job(
                    "nightly-0",
                    "agents",
                    nightly,
                    "status: {conditions: [{type: Complete, status: 'True'}]}",
                ),
                // Another name, another uid, not the controller, another namespace: not its runs.
                job(
                    "renamed",
                    "agents",
                    "{apiVersion: batch/v1, kind: CronJob, name: other, uid: c1, controller: true}",
                    "",
                ),
                job(
                    "forged",
                    "agents",
                    "{apiVersion: batch/v1, kind: CronJob, name: nightly, uid: c9, controller: true}",
                    "",
                ),
                job(
                    "adopted",
                    "agents",
                    "{apiVersion: batch/v1, kind: CronJob, name: nightly, uid: c1}",
                    "",
                ),
                job("elsewhere", "tenant-b", nightly, ""),
                // Bound by this budget itself, or by another budget: not runs.
                job("bound-here", "agents", nightly, ""),
                job("bound-there", "agents", nightly, ""),
            ],
            ..Default::default()
        }
        .namespace("agents");
        let bound = [
            id(WorkloadKind::CronJob, "nightly"),
            id(WorkloadKind::Job, "bound-here"),
        ]
        .into();
        let holds = Holds {
            bound: [id(WorkloadKind::Job, "bound-there")].into(),
            ..Default::default()
        };
        let workloads = workloads(&objects, &bound, "research", &holds);
        let cron = workloads.iter().find(|w| w.kind == WorkloadKind::CronJob).unwrap();
        let runs: Vec<_> = cron
            .runs
            .iter()
            .map(|r| (r.name.as_str(), r.suspended, r.finished))
            .collect();
        assert_eq!(
            runs,
            [("nightly-0", false, true), ("nightly-1", true, false)],
            "by name"
        );
        assert_eq!(cron.runs[0].resource_version.as_deref(), Some("3"));
        let job = workloads.iter().find(|w| w.kind == WorkloadKind::Job).unwrap();
        assert_eq!((job.name.as_str(), job.runs.len()), ("bound-here", 0));
    }
}
