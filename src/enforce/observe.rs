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
    /// The runs of this budget's CronJobs that a valid binding of another budget binds: that
    /// budget's to enforce on, never suspended as a run of this budget's CronJob.
    pub bound: BTreeSet<WorkloadId>,
}

/// The workloads of budget `budget` in `objects`; `bound` are those its valid bindings name,
/// `holds` what other budgets hold, `autoscaled` the Deployments and StatefulSets a
/// HorizontalPodAutoscaler targets. A CronJob comes with its runs: the Jobs it controls, but
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
    let autoscaled = workloads::autoscaled(objects);
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
                autoscaled: autoscaled.contains(id),
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

/// The bindings of a namespace's other budgets, read only when a workload calls for them:
/// in a namespace of 1,000 budgets, every budget reading all the others' at every cycle would
/// be a million reads a round.
pub trait Others {
    /// The valid bindings of budget `budget`, if it exists and is another budget.
    fn of(&self, budget: &str) -> Vec<ValidBinding>;
    /// The valid bindings of every other budget that exists.
    fn all(&self) -> Vec<ValidBinding>;
}

/// What other budgets hold among `candidates` (the workloads budget `budget` looks at: those
/// it binds and those annotated with its name) and the runs of their CronJobs. A workload is
/// held by the budget its annotation names, when that is another budget that exists and binds
/// it through one of its valid bindings: an annotation alone lifts no enforcement. A run is
/// bound elsewhere when a valid binding of another budget binds it.
pub fn holds(objects: &Namespace, budget: &str, candidates: &BTreeSet<WorkloadId>, others: &impl Others) -> Holds {
    let mut bound_by: BTreeMap<String, BTreeSet<WorkloadId>> = BTreeMap::new();
    let mut held = BTreeMap::new();
    for id in candidates {
        let Some(meta) = objects.workload_meta(id) else {
            continue;
        };
        let Some(owner) = meta.annotations.as_ref().and_then(|a| a.get(BUDGET)) else {
            continue;
        };
        if owner == budget {
            continue;
        }
        let binds = bound_by.entry(owner.clone()).or_insert_with(|| {
            others
                .of(owner)
                .iter()
                .flat_map(|binding| workloads::workloads(&binding.workloads, objects))
                .collect()
        });
        if binds.contains(id) {
            held.insert(id.clone(), owner.clone());
        }
    }
    let runs: Vec<WorkloadId> = candidates
        .iter()
        .filter(|id| id.kind == WorkloadKind::CronJob)
        .filter_map(|id| objects.get::<CronJob>(&id.name))
        .flat_map(|cron_job| workloads::runs_of(objects, &cron_job.metadata))
        .map(|job| WorkloadId {
            kind: WorkloadKind::Job,
            name: job.name_any(),
        })
        .collect();
    let bound = if runs.is_empty() {
        BTreeSet::new()
    } else {
        let elsewhere: BTreeSet<WorkloadId> = others
            .all()
            .iter()
            .flat_map(|binding| {
                let jobs: Vec<WorkloadEntry> = (binding.workloads.iter())
                    .filter(|entry| entry.kind == WorkloadKind::Job)
                    .cloned()
                    .collect();
                workloads::workloads(&jobs, objects)
            })
            .collect();
        runs.into_iter().filter(|run| elsewhere.contains(run)).collect()
    };
    Holds { held, bound }
}

/// The workloads annotated with `budget`'s name.
pub fn marked_by(objects: &Namespace, budget: &str) -> Vec<WorkloadId> {
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
    use k8s_openapi::api::apps::v1::Deployment;

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

    /// Other budgets' bindings, counting what is asked of them.
    #[derive(Default)]
    struct Counted {
        bindings: Vec<(&'static str, ValidBinding)>,
        asked: std::cell::RefCell<Vec<String>>,
    }

    impl Others for Counted {
        fn of(&self, budget: &str) -> Vec<ValidBinding> {
            self.asked.borrow_mut().push(budget.to_string());
            (self.bindings.iter())
                .filter(|(b, _)| *b == budget)
                .map(|(_, v)| v.clone())
                .collect()
        }

        fn all(&self) -> Vec<ValidBinding> {
            self.asked.borrow_mut().push("*".into());
            self.bindings.iter().map(|(_, v)| v.clone()).collect()
        }
    }

    fn binding(yaml: &str) -> ValidBinding {
        crate::validate::binding(&serde_yaml::from_str(yaml).expect("fixture parses")).expect("valid")
    }

    #[test]
    fn only_the_budgets_annotations_name_are_read_and_only_their_bindings_make_a_hold() {
        let deployment = |name: &str, owner: &str| -> std::sync::Arc<Deployment> {
            load(&format!(
                "metadata: {{name: {name}, namespace: agents, uid: u-{name}, annotations: {{tokenbudget.io/budget: {owner}}}}}\n\
                 spec: {{selector: {{}}, template: {{}}}}"
            ))
        };
        let objects = Lists {
            deployments: vec![
                deployment("mine", "research"),
                deployment("theirs", "support"),
                deployment("claimed", "support"),
                deployment("unrelated", "web"),
            ],
            ..Default::default()
        }
        .namespace("agents");
        let others = Counted {
            bindings: vec![
                (
                    "support",
                    binding("budgetRef: {name: support}\nworkloads: [{kind: Deployment, name: theirs}]"),
                ),
                (
                    "web",
                    binding("budgetRef: {name: web}\nworkloads: [{kind: Deployment, name: unrelated}]"),
                ),
            ],
            ..Default::default()
        };
        let candidates = [
            id(WorkloadKind::Deployment, "mine"),
            id(WorkloadKind::Deployment, "theirs"),
            id(WorkloadKind::Deployment, "claimed"),
        ]
        .into();
        let holds = holds(&objects, "research", &candidates, &others);
        // `claimed` names support, which does not bind it: an annotation alone holds nothing.
        assert_eq!(
            holds.held.into_iter().collect::<Vec<_>>(),
            [(id(WorkloadKind::Deployment, "theirs"), "support".to_string())]
        );
        // Support's bindings once, web's never (not a candidate), nobody's list of all (no
        // CronJob, no runs).
        assert_eq!(*others.asked.borrow(), ["support"]);
        assert!(holds.bound.is_empty());
    }
}
