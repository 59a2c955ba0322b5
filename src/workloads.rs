//! Which pods a binding charges to its budget, and where to scrape them. Pure: it reads the
//! reflector caches (filled from lists in tests), never the API.
//!
//! Deployments own ReplicaSets which own pods; StatefulSets and Jobs own pods; CronJobs own
//! Jobs. Ownership is followed through controller ownerReferences by uid, so a pod is only
//! ever charged through the workload that really controls it, never through a name or label
//! that happens to match.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet, StatefulSet},
        autoscaling::v2::HorizontalPodAutoscaler,
        batch::v1::{CronJob, Job},
        core::v1::{Container, ContainerPort, ContainerState, ContainerStatus, Pod, PodSpec, PodStatus},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::{Resource, ResourceExt};

use crate::{
    api::WorkloadKind,
    cache::{self, Cache},
    validate::{Selection, WorkloadEntry},
};

/// The caches of every kind that resolution reads, cluster-wide.
#[derive(Clone)]
pub struct Caches {
    pub deployments: Cache<Deployment>,
    pub replica_sets: Cache<ReplicaSet>,
    pub stateful_sets: Cache<StatefulSet>,
    pub jobs: Cache<Job>,
    pub cron_jobs: Cache<CronJob>,
    pub pods: Cache<Pod>,
    /// Read by pacing only: it leaves an autoscaled workload's replicas to the autoscaler.
    pub autoscalers: Cache<HorizontalPodAutoscaler>,
}

/// A kind kept in [`Caches`].
pub trait Cached: Resource + Sized {
    fn cache(caches: &Caches) -> &Cache<Self>;
}

macro_rules! cached {
    ($($kind:ty => $field:ident),* $(,)?) => {
        $(impl Cached for $kind {
            fn cache(caches: &Caches) -> &Cache<Self> {
                &caches.$field
            }
        })*
    };
}

cached!(
    Deployment => deployments,
    ReplicaSet => replica_sets,
    StatefulSet => stateful_sets,
    Job => jobs,
    CronJob => cron_jobs,
    Pod => pods,
    HorizontalPodAutoscaler => autoscalers,
);

/// The objects of one namespace, read from the caches: each read sees them as they are then,
/// and costs what it returns, not what the namespace holds (a budget of 10 pods reads 10 pods
/// of a namespace of 10,000). Cheap to clone.
#[derive(Clone)]
pub struct Namespace {
    name: String,
    caches: Caches,
}

impl Namespace {
    /// Namespace `name` of `caches`.
    pub fn new(name: &str, caches: Caches) -> Self {
        Namespace {
            name: name.to_string(),
            caches,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every object of a kind, in no particular order.
    pub fn all<K: Cached>(&self) -> Vec<Arc<K>> {
        K::cache(&self.caches).namespace(&self.name)
    }

    /// The object of a kind by name.
    pub fn get<K: Cached>(&self, name: &str) -> Option<Arc<K>> {
        K::cache(&self.caches).get(&self.name, name)
    }

    /// The objects of a kind whose controller has this uid, by name.
    pub fn owned_by<K: Cached>(&self, uid: &str) -> Vec<Arc<K>> {
        K::cache(&self.caches).owned_by(&self.name, uid)
    }

    /// The metadata of workload `id`, if it exists.
    pub fn workload_meta(&self, id: &WorkloadId) -> Option<ObjectMeta> {
        fn meta<K: Cached>(ns: &Namespace, name: &str) -> Option<ObjectMeta> {
            ns.get::<K>(name).map(|o| o.meta().clone())
        }
        match id.kind {
            WorkloadKind::Deployment => meta::<Deployment>(self, &id.name),
            WorkloadKind::StatefulSet => meta::<StatefulSet>(self, &id.name),
            WorkloadKind::Job => meta::<Job>(self, &id.name),
            WorkloadKind::CronJob => meta::<CronJob>(self, &id.name),
        }
    }

    /// Calls `f` with the kind and metadata of every workload, without copying them.
    pub fn each_workload(&self, mut f: impl FnMut(WorkloadKind, &ObjectMeta)) {
        let caches = &self.caches;
        caches
            .deployments
            .each(&self.name, |o| f(WorkloadKind::Deployment, &o.metadata));
        caches
            .stateful_sets
            .each(&self.name, |o| f(WorkloadKind::StatefulSet, &o.metadata));
        caches.jobs.each(&self.name, |o| f(WorkloadKind::Job, &o.metadata));
        caches
            .cron_jobs
            .each(&self.name, |o| f(WorkloadKind::CronJob, &o.metadata));
    }
}

/// Objects as plain lists, for tests and benchmarks, which have no watch: [`Lists::namespace`]
/// puts them in caches.
#[derive(Default, Clone)]
pub struct Lists {
    pub deployments: Vec<Arc<Deployment>>,
    pub replica_sets: Vec<Arc<ReplicaSet>>,
    pub stateful_sets: Vec<Arc<StatefulSet>>,
    pub jobs: Vec<Arc<Job>>,
    pub cron_jobs: Vec<Arc<CronJob>>,
    pub pods: Vec<Arc<Pod>>,
    pub autoscalers: Vec<Arc<HorizontalPodAutoscaler>>,
}

impl Lists {
    /// Namespace `name` of caches filled with these objects (those of other namespaces are
    /// in the caches too, where `name` does not see them).
    pub fn namespace(&self, name: &str) -> Namespace {
        Namespace::new(name, self.caches())
    }

    /// Caches filled with these objects.
    pub fn caches(&self) -> Caches {
        fn fill<K: Resource + Clone>(objects: &[Arc<K>]) -> Cache<K> {
            cache::filled(objects.iter().map(|o| K::clone(o)))
        }
        Caches {
            deployments: fill(&self.deployments),
            replica_sets: fill(&self.replica_sets),
            stateful_sets: fill(&self.stateful_sets),
            jobs: fill(&self.jobs),
            cron_jobs: fill(&self.cron_jobs),
            pods: fill(&self.pods),
            autoscalers: fill(&self.autoscalers),
        }
    }
}

/// A workload named by, or selected by, a binding.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadId {
    pub kind: WorkloadKind,
    pub name: String,
}

/// A pod charged to a budget through a workload.
#[derive(Clone, Debug)]
pub struct BoundPod {
    pub pod: Arc<Pod>,
    pub workload: WorkloadId,
    /// Where to scrape it, or why it cannot be scraped now.
    pub endpoint: Result<(String, u16), Unscrapable>,
}

/// Why a bound pod is not scraped this round.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unscrapable {
    /// No container of the pod has started yet: nothing to scrape, and nothing wrong.
    #[error("the pod is Pending: no container runs yet")]
    Pending,
    #[error("the pod has no IP")]
    NoIp,
    #[error("no container of the pod has a port named {0:?}")]
    NoSuchPort(String),
    #[error("the pod is {0}: its containers no longer run")]
    Finished(String),
}

/// What a binding resolves to now.
#[derive(Clone, Debug, Default)]
pub struct Resolution {
    /// The workloads matched, sorted.
    pub workloads: Vec<WorkloadId>,
    /// Their pods, sorted by name.
    pub pods: Vec<BoundPod>,
}

/// Resolves a binding's workload entries to workloads and their pods; `port` is its metrics
/// port, where each pod is scraped. Three steps, each reading only what the last one found:
/// the workloads (by name, or by selector over the namespace's workloads of that kind), then
/// the ReplicaSets and Jobs they control, then the pods those or they control.
pub fn resolve(entries: &[WorkloadEntry], port: &IntOrString, ns: &Namespace) -> Resolution {
    let matched = matched(entries, ns);
    let mut pods: BTreeMap<String, BoundPod> = BTreeMap::new();
    for (workload, uid) in &matched {
        for pod in pods_of(ns, workload.kind, uid) {
            pods.entry(pod.name_any()).or_insert_with(|| BoundPod {
                endpoint: endpoint(&pod, port),
                pod,
                workload: workload.clone(),
            });
        }
    }
    Resolution {
        workloads: matched.into_keys().collect(),
        pods: pods.into_values().collect(),
    }
}

/// The workloads that `entries` match, sorted: the first step of [`resolve`], all that a
/// reader who does not want the pods needs.
pub fn workloads(entries: &[WorkloadEntry], ns: &Namespace) -> Vec<WorkloadId> {
    matched(entries, ns).into_keys().collect()
}

/// The workloads that `entries` match, with their uids.
fn matched(entries: &[WorkloadEntry], ns: &Namespace) -> BTreeMap<WorkloadId, String> {
    fn of<K: Cached>(entry: &WorkloadEntry, ns: &Namespace, found: &mut BTreeMap<WorkloadId, String>) {
        let objects = match &entry.selection {
            Selection::Name(name) => ns.get::<K>(name).into_iter().collect(),
            Selection::Labels(selector) => {
                let mut all = ns.all::<K>();
                all.retain(|o| selects(selector, o.meta().labels.as_ref()));
                all
            }
        };
        for obj in objects {
            let id = WorkloadId {
                kind: entry.kind,
                name: obj.name_any(),
            };
            found.insert(id, obj.meta().uid.clone().unwrap_or_default());
        }
    }
    let mut found = BTreeMap::new();
    for entry in entries {
        match entry.kind {
            WorkloadKind::Deployment => of::<Deployment>(entry, ns, &mut found),
            WorkloadKind::StatefulSet => of::<StatefulSet>(entry, ns, &mut found),
            WorkloadKind::Job => of::<Job>(entry, ns, &mut found),
            WorkloadKind::CronJob => of::<CronJob>(entry, ns, &mut found),
        }
    }
    found
}

/// The pods of the workload of this kind and uid: through the ReplicaSets a Deployment
/// controls and the Jobs a CronJob controls, by controller uid at each step.
fn pods_of(ns: &Namespace, kind: WorkloadKind, uid: &str) -> Vec<Arc<Pod>> {
    if uid.is_empty() {
        return Vec::new();
    }
    let owners: Vec<String> = match kind {
        WorkloadKind::Deployment => (ns.owned_by::<ReplicaSet>(uid).iter())
            .filter_map(|rs| rs.metadata.uid.clone())
            .collect(),
        WorkloadKind::CronJob => (ns.owned_by::<Job>(uid).iter())
            .filter_map(|job| job.metadata.uid.clone())
            .collect(),
        WorkloadKind::StatefulSet | WorkloadKind::Job => vec![uid.to_string()],
    };
    owners.iter().flat_map(|owner| ns.owned_by::<Pod>(owner)).collect()
}

/// The IP and port to scrape a pod at.
pub fn endpoint(pod: &Pod, port: &IntOrString) -> Result<(String, u16), Unscrapable> {
    let status = pod.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()) {
        Some(phase @ ("Succeeded" | "Failed")) => return Err(Unscrapable::Finished(phase.to_string())),
        // The API server sets Pending on every new pod; it stays so until a container started.
        None | Some("Pending") => return Err(Unscrapable::Pending),
        Some(_) => {}
    }
    let ip = status
        .and_then(|s| s.pod_ip.clone())
        .filter(|ip| !ip.is_empty())
        .ok_or(Unscrapable::NoIp)?;
    let port = match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| Unscrapable::NoSuchPort(p.to_string()))?,
        IntOrString::String(name) => declared(pod, port)
            .and_then(|(_, p)| u16::try_from(p.container_port).ok())
            .ok_or_else(|| Unscrapable::NoSuchPort(name.clone()))?,
    };
    Ok((ip, port))
}

/// The first container port that matches `port` (by name or by number), with its container.
fn declared<'a>(pod: &'a Pod, port: &IntOrString) -> Option<(&'a Container, &'a ContainerPort)> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten().map(move |p| (c, p)))
        .find(|(_, p)| match port {
            IntOrString::String(name) => p.name.as_deref() == Some(name.as_str()),
            IntOrString::Int(n) => p.container_port == *n,
        })
}

/// The container that serves the metrics: the one that declares the port (by name or by
/// number). `None` when no container declares it (a number need not be declared).
pub fn metrics_container<'a>(pod: &'a Pod, port: &IntOrString) -> Option<&'a str> {
    declared(pod, port).map(|(c, _)| c.name.as_str())
}

/// The statuses of the metrics container, or of every container when it is not known.
fn statuses<'a>(pod: &'a Pod, container: Option<&'a str>) -> impl Iterator<Item = &'a ContainerStatus> {
    pod.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter(move |c| container.is_none_or(|name| c.name == name))
}

/// The restart count of the metrics container (rule 2: a restart resets its counters), or
/// the sum over the pod's containers when it is not known. A sidecar's restarts are not the
/// agent's: its counters did not start again.
pub fn restarts(pod: &Pod, container: Option<&str>) -> u64 {
    statuses(pod, container)
        .map(|c| u64::try_from(c.restart_count).unwrap_or(0))
        .sum()
}

/// When the metrics container (or, when it is not known, the pod's newest running
/// container) started, from its status.
pub fn container_started(pod: &Pod, container: Option<&str>) -> Option<jiff::Timestamp> {
    statuses(pod, container)
        .filter_map(|c| c.state.as_ref()?.running.as_ref()?.started_at.as_ref())
        .map(|t| t.0)
        .max()
}

/// The CronJob that controls a Job: its controller ownerReference, when that names a CronJob.
/// Only a reference whose uid is the CronJob's own counts (see [`runs_of`]): a name alone is
/// anyone's to write.
pub fn controlling_cron_job(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .filter(|o| o.kind == "CronJob")
}

/// The Jobs of `ns` that `cron_job` controls: their controller ownerReference names it, by
/// kind, name and uid. `ns` is the CronJob's namespace: a Job elsewhere is never one of its
/// runs, whatever its ownerReferences say.
pub fn runs_of(ns: &Namespace, cron_job: &ObjectMeta) -> Vec<Arc<Job>> {
    let (Some(uid), Some(name)) = (cron_job.uid.as_deref(), cron_job.name.as_deref()) else {
        return Vec::new();
    };
    if cron_job.namespace.as_deref() != Some(ns.name()) {
        return Vec::new();
    }
    let mut runs = ns.owned_by::<Job>(uid);
    runs.retain(|job| controlling_cron_job(&job.metadata).is_some_and(|o| o.uid == uid && o.name == name));
    runs
}

/// Whether a Job has finished: its `Complete` or `Failed` condition is true. A finished Job
/// runs no pod any more, suspended or not.
pub fn job_finished(job: &Job) -> bool {
    job.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True")
}

/// Whether a label selector selects these labels. An empty selector selects nothing here
/// (the operator reports it as InvalidSpec), and so does one it cannot evaluate.
pub fn selects(selector: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let match_labels = selector.match_labels.as_ref();
    let expressions = selector.match_expressions.as_deref().unwrap_or_default();
    if match_labels.is_none_or(|m| m.is_empty()) && expressions.is_empty() {
        return false;
    }
    match_labels
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
        && expressions.iter().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
                "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
                "Exists" => labels.contains_key(&e.key),
                "DoesNotExist" => !labels.contains_key(&e.key),
                _ => false,
            }
        })
}

/// What the operator keeps of an object in its caches: what this module, accounting and
/// enforcement read of it, and nothing else. A pod's spec (environment, volumes, probes,
/// resources, tolerations) and status conditions, and a workload's pod template, are most of
/// their size, and the caches of a cluster with 10,000 pods would keep them all. Enforcement
/// writes by patches of the fields it sets, never by writing back an object from a cache.
pub trait Slim {
    fn slim(&mut self);
}

/// [`Slim::slim`], as a function to hand to a watch.
pub fn slim<K: Slim>(obj: &mut K) {
    obj.slim();
}

impl Slim for Deployment {
    /// Metadata (no managedFields), replicas and status; no pod template.
    fn slim(&mut self) {
        self.metadata.managed_fields = None;
        self.spec.template = Default::default();
    }
}

impl Slim for StatefulSet {
    fn slim(&mut self) {
        self.metadata.managed_fields = None;
        self.spec.template = Default::default();
        self.spec.volume_claim_templates = None;
    }
}

impl Slim for HorizontalPodAutoscaler {
    /// Metadata (no managedFields) and the target: pacing reads nothing else.
    fn slim(&mut self) {
        self.metadata.managed_fields = None;
        self.spec.metrics = None;
        self.spec.behavior = None;
        self.status = None;
    }
}

/// The Deployments and StatefulSets of `objects` that a HorizontalPodAutoscaler targets (by
/// its `scaleTargetRef`, kind and name, in the same namespace): pacing leaves their replicas
/// to the autoscaler.
pub fn autoscaled(objects: &Namespace) -> BTreeSet<WorkloadId> {
    objects
        .all::<HorizontalPodAutoscaler>()
        .iter()
        .filter_map(|hpa| {
            let target = &hpa.spec.scale_target_ref;
            let group = target.api_version.as_deref().unwrap_or_default();
            let kind = match (group, target.kind.as_str()) {
                ("apps/v1", "Deployment") => WorkloadKind::Deployment,
                ("apps/v1", "StatefulSet") => WorkloadKind::StatefulSet,
                _ => return None,
            };
            Some(WorkloadId {
                kind,
                name: target.name.clone(),
            })
        })
        .collect()
}

impl Slim for ReplicaSet {
    fn slim(&mut self) {
        self.metadata.managed_fields = None;
        self.spec.template = None;
    }
}

impl Slim for Job {
    fn slim(&mut self) {
        self.metadata.managed_fields = None;
        if let Some(spec) = self.spec.as_mut() {
            spec.template = Default::default();
        }
    }
}

impl Slim for CronJob {
    fn slim(&mut self) {
        self.metadata.managed_fields = None;
        if let Some(spec) = self.spec.job_template.spec.as_mut() {
            spec.template = Default::default();
        }
    }
}

impl Slim for Pod {
    /// Metadata (no managedFields), the containers' names and ports, and the phase, IP, start
    /// time and containers' restart counts and running start times.
    fn slim(&mut self) {
        let pod = self;
        pod.metadata.managed_fields = None;
        if let Some(spec) = pod.spec.take() {
            let containers = spec
                .containers
                .into_iter()
                .map(|c| Container {
                    name: c.name,
                    ports: c.ports,
                    ..Default::default()
                })
                .collect();
            pod.spec = Some(PodSpec {
                containers,
                ..Default::default()
            });
        }
        if let Some(status) = pod.status.take() {
            let container_statuses = status.container_statuses.map(|statuses| {
                statuses
                    .into_iter()
                    .map(|c| ContainerStatus {
                        name: c.name,
                        restart_count: c.restart_count,
                        // `running.startedAt`: when a restart began ([`container_started`]).
                        state: c.state.and_then(|s| s.running).map(|running| ContainerState {
                            running: Some(running),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect()
            });
            pod.status = Some(PodStatus {
                phase: status.phase,
                pod_ip: status.pod_ip,
                start_time: status.start_time,
                container_statuses,
                ..Default::default()
            });
        }
    }
}

/// Objects of one namespace, `agents`, for the tests of resolution and of the accounting
/// cycle: Deployments `summarizer` (two ReplicaSets, a pod each) and `web`, StatefulSet
/// `memory` (a Pending pod), Job `batch` (a finished pod), CronJob `nightly` (a running pod),
/// and a stray pod with matching labels but no owner.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub fn load<K: serde::de::DeserializeOwned>(yaml: &str) -> Arc<K> {
        Arc::new(serde_yaml::from_str(yaml).expect("fixture parses"))
    }

    pub fn owned(kind: &str, name: &str, uid: &str, owner_kind: &str, owner_uid: &str, labels: &str) -> String {
        format!(
            "metadata: {{name: {name}, namespace: agents, uid: {uid}, labels: {labels}, \
             ownerReferences: [{{apiVersion: v1, kind: {owner_kind}, name: x, uid: {owner_uid}, controller: true}}]}}\n\
             kind: {kind}"
        )
    }

    pub fn pod(name: &str, owner_kind: &str, owner_uid: &str, ip: Option<&str>, phase: &str) -> Arc<Pod> {
        let ip = ip.map(|ip| format!(", podIP: {ip}")).unwrap_or_default();
        load(&format!(
            "{}\nspec: {{containers: [{{name: agent, ports: [{{name: metrics, containerPort: 9464}}]}}]}}\n\
             status: {{phase: {phase}{ip}, containerStatuses: [{{name: agent, restartCount: 2, ready: true, image: i, imageID: i}}]}}",
            owned("Pod", name, &format!("uid-{name}"), owner_kind, owner_uid, "{}")
        ))
    }

    /// The fixture's namespace.
    pub fn objects() -> Namespace {
        lists().namespace("agents")
    }

    /// The fixture's objects, to change before [`Lists::namespace`] puts them in caches.
    pub fn lists() -> Lists {
        Lists {
            deployments: vec![
                load("metadata: {name: summarizer, namespace: agents, uid: d1, labels: {team: research}}"),
                load("metadata: {name: web, namespace: agents, uid: d2, labels: {team: web}}"),
            ],
            replica_sets: vec![
                load(&owned("ReplicaSet", "summarizer-abc", "rs1", "Deployment", "d1", "{}")),
                load(&owned("ReplicaSet", "summarizer-old", "rs0", "Deployment", "d1", "{}")),
                load(&owned("ReplicaSet", "web-xyz", "rs2", "Deployment", "d2", "{}")),
            ],
            stateful_sets: vec![load(
                "metadata: {name: memory, namespace: agents, uid: s1, labels: {team: research}}",
            )],
            jobs: vec![
                load("metadata: {name: batch, namespace: agents, uid: j1}"),
                load(&owned("Job", "nightly-1", "j2", "CronJob", "c1", "{}")),
            ],
            cron_jobs: vec![load("metadata: {name: nightly, namespace: agents, uid: c1}")],
            pods: vec![
                pod("summarizer-abc-1", "ReplicaSet", "rs1", Some("10.0.0.1"), "Running"),
                pod("summarizer-old-1", "ReplicaSet", "rs0", Some("10.0.0.2"), "Running"),
                pod("web-xyz-1", "ReplicaSet", "rs2", Some("10.0.0.3"), "Running"),
                pod("memory-0", "StatefulSet", "s1", None, "Pending"),
                pod("batch-1", "Job", "j1", Some("10.0.0.5"), "Succeeded"),
                pod("nightly-1-a", "Job", "j2", Some("10.0.0.6"), "Running"),
                // Same labels, no owner: never charged.
                load("metadata: {name: stray, namespace: agents, labels: {team: research}}"),
            ],
            autoscalers: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fixtures::*, *};

    /// Resolves the binding spec `yaml` in `objects`.
    fn resolve_spec(yaml: &str, objects: &Namespace) -> Resolution {
        let spec: crate::api::BudgetBindingSpec = serde_yaml::from_str(yaml).expect("fixture parses");
        let binding = crate::validate::binding(&spec).expect("a valid fixture");
        resolve(&binding.workloads, &binding.endpoint.port, objects)
    }

    fn names(r: &Resolution) -> Vec<String> {
        r.pods.iter().map(|p| p.pod.name_any()).collect()
    }

    #[test]
    fn a_deployment_by_name_brings_the_pods_of_all_its_replica_sets() {
        let r = resolve_spec(
            "budgetRef: {name: b}\nworkloads: [{kind: Deployment, name: summarizer}]",
            &objects(),
        );
        assert_eq!(
            r.workloads,
            [WorkloadId {
                kind: WorkloadKind::Deployment,
                name: "summarizer".into()
            }]
        );
        assert_eq!(names(&r), ["summarizer-abc-1", "summarizer-old-1"]);
        assert_eq!(r.pods[0].endpoint, Ok(("10.0.0.1".to_string(), 9464)));
    }

    #[test]
    fn selectors_match_workload_labels_of_their_kind_only() {
        let r = resolve_spec(
            "budgetRef: {name: b}\nworkloads: [{kind: Deployment, selector: {matchLabels: {team: research}}}, \
                 {kind: StatefulSet, selector: {matchExpressions: [{key: team, operator: In, values: [research]}]}}]",
            &objects(),
        );
        let kinds: Vec<_> = r.workloads.iter().map(|w| (w.kind, w.name.as_str())).collect();
        assert_eq!(
            kinds,
            [
                (WorkloadKind::Deployment, "summarizer"),
                (WorkloadKind::StatefulSet, "memory")
            ]
        );
        assert_eq!(names(&r), ["memory-0", "summarizer-abc-1", "summarizer-old-1"]);
        let memory = r.pods.iter().find(|p| p.pod.name_any() == "memory-0").unwrap();
        assert_eq!(memory.endpoint, Err(Unscrapable::Pending));
    }

    #[test]
    fn jobs_and_cron_jobs() {
        let r = resolve_spec(
            "budgetRef: {name: b}\nworkloads: [{kind: Job, name: batch}, {kind: CronJob, name: nightly}]",
            &objects(),
        );
        assert_eq!(names(&r), ["batch-1", "nightly-1-a"]);
        assert_eq!(r.pods[0].endpoint, Err(Unscrapable::Finished("Succeeded".into())));
        assert_eq!(r.pods[1].workload.kind, WorkloadKind::CronJob);
    }

    #[test]
    fn a_pod_matched_twice_is_listed_once() {
        let r = resolve_spec(
            "budgetRef: {name: b}\nworkloads: [{kind: Deployment, name: summarizer}, \
                 {kind: Deployment, selector: {matchLabels: {team: research}}}]",
            &objects(),
        );
        assert_eq!(names(&r), ["summarizer-abc-1", "summarizer-old-1"]);
    }

    #[test]
    fn only_the_namespaces_own_objects_are_charged_whatever_their_owner_references_say() {
        // Another namespace's ReplicaSet and pod that name the summarizer's uids, and a pod
        // here whose reference to its ReplicaSet is not a controller's.
        let mut lists = lists();
        let elsewhere = |yaml: String| yaml.replace("namespace: agents", "namespace: tenant-b");
        lists.replica_sets.push(load(&elsewhere(owned(
            "ReplicaSet",
            "summarizer-abc",
            "rs9",
            "Deployment",
            "d1",
            "{}",
        ))));
        let mut forged = (*pod("forged", "ReplicaSet", "rs1", Some("10.9.9.9"), "Running")).clone();
        forged.metadata.namespace = Some("tenant-b".into());
        lists.pods.push(Arc::new(forged));
        let mut shared = (*pod("shared", "ReplicaSet", "rs1", Some("10.0.0.7"), "Running")).clone();
        shared.metadata.owner_references.as_mut().unwrap()[0].controller = Some(false);
        lists.pods.push(Arc::new(shared));
        let spec = "budgetRef: {name: b}\nworkloads: [{kind: Deployment, name: summarizer}]";
        let here = resolve_spec(spec, &lists.namespace("agents"));
        assert_eq!(names(&here), ["summarizer-abc-1", "summarizer-old-1"]);
        let there = resolve_spec(spec, &lists.namespace("tenant-b"));
        assert!(there.workloads.is_empty() && there.pods.is_empty(), "{there:?}");
    }

    #[test]
    fn ports_by_name_and_missing_ports() {
        let p = pod("p", "ReplicaSet", "rs1", Some("10.1.1.1"), "Running");
        assert_eq!(
            endpoint(&p, &IntOrString::String("metrics".into())),
            Ok(("10.1.1.1".into(), 9464))
        );
        assert_eq!(
            endpoint(&p, &IntOrString::String("http".into())),
            Err(Unscrapable::NoSuchPort("http".into()))
        );
        assert_eq!(endpoint(&p, &IntOrString::Int(8080)), Ok(("10.1.1.1".into(), 8080)));
        assert_eq!(restarts(&p, None), 2);
    }

    #[test]
    fn a_sidecar_restart_is_not_the_metrics_containers() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "agent", "ports": [{"name": "metrics", "containerPort": 9464}]},
                {"name": "proxy", "ports": [{"containerPort": 15090}]},
            ]},
            "status": {"containerStatuses": [
                {"name": "agent", "restartCount": 1, "ready": true, "image": "a", "imageID": "a",
                 "state": {"running": {"startedAt": "2026-11-10T00:00:00Z"}}},
                {"name": "proxy", "restartCount": 4, "ready": true, "image": "p", "imageID": "p",
                 "state": {"running": {"startedAt": "2026-11-10T05:00:00Z"}}},
            ]},
        }))
        .unwrap();
        let agent = metrics_container(&p, &IntOrString::String("metrics".into()));
        assert_eq!(agent, Some("agent"));
        assert_eq!(restarts(&p, agent), 1);
        assert_eq!(
            container_started(&p, agent).map(|t| t.to_string()).as_deref(),
            Some("2026-11-10T00:00:00Z")
        );
        assert_eq!(metrics_container(&p, &IntOrString::Int(15090)), Some("proxy"));
        // A port no container declares: every container counts.
        assert_eq!(metrics_container(&p, &IntOrString::Int(8080)), None);
        assert_eq!(restarts(&p, None), 5);
        assert_eq!(
            container_started(&p, None).map(|t| t.to_string()).as_deref(),
            Some("2026-11-10T05:00:00Z")
        );
    }

    #[test]
    fn selector_semantics() {
        let labels: BTreeMap<String, String> = [("team".into(), "a".into()), ("tier".into(), "x".into())].into();
        let sel = |yaml: &str| -> LabelSelector { serde_yaml::from_str(yaml).unwrap() };
        assert!(selects(&sel("matchLabels: {team: a}"), Some(&labels)));
        assert!(!selects(&sel("matchLabels: {team: b}"), Some(&labels)));
        assert!(selects(
            &sel("matchExpressions: [{key: team, operator: NotIn, values: [b]}]"),
            Some(&labels)
        ));
        assert!(selects(
            &sel("matchExpressions: [{key: gone, operator: DoesNotExist}]"),
            Some(&labels)
        ));
        assert!(!selects(
            &sel("matchExpressions: [{key: tier, operator: Equals, values: [x]}]"),
            Some(&labels)
        ));
        assert!(!selects(&sel("{}"), Some(&labels)), "an empty selector selects nothing");
    }

    #[test]
    fn slim_workloads_keep_what_resolution_and_enforcement_read_and_drop_their_templates() {
        let template = "template: {metadata: {labels: {app: a}}, spec: {containers: [{name: agent, image: i, env: [{name: K, value: v}]}]}}";
        let meta = "metadata: {name: a, namespace: agents, uid: u1, resourceVersion: '7', labels: {app: a}, \
                    annotations: {tokenbudget.dev/paused-by: b}, managedFields: [{manager: kubectl}]}";
        let selector = "selector: {matchLabels: {app: a}}";
        let mut deployment: Deployment = serde_yaml::from_str(&format!(
            "{meta}\nspec: {{replicas: 3, {selector}, {template}}}\nstatus: {{replicas: 3}}"
        ))
        .unwrap();
        let whole = deployment.clone();
        slim(&mut deployment);
        assert_eq!(deployment.spec.replicas, Some(3));
        assert_eq!(deployment.spec.selector, whole.spec.selector);
        assert_eq!(deployment.status, whole.status);
        assert_eq!(deployment.metadata.annotations, whole.metadata.annotations);
        assert_eq!(deployment.metadata.resource_version, whole.metadata.resource_version);
        assert_eq!(deployment.metadata.managed_fields, None);
        assert_eq!(deployment.spec.template, Default::default());

        let mut set: StatefulSet = serde_yaml::from_str(&format!(
            "{meta}\nspec: {{replicas: 2, serviceName: a, {selector}, {template}, \
             volumeClaimTemplates: [{{metadata: {{name: data}}}}]}}"
        ))
        .unwrap();
        slim(&mut set);
        assert_eq!(
            (set.spec.replicas, set.spec.volume_claim_templates.is_none()),
            (Some(2), true)
        );
        assert_eq!(set.spec.template, Default::default());

        let mut rs: ReplicaSet = serde_yaml::from_str(&format!("{meta}\nspec: {{{selector}, {template}}}")).unwrap();
        slim(&mut rs);
        assert_eq!((rs.spec.template, rs.metadata.uid.as_deref()), (None, Some("u1")));

        let mut job: Job = serde_yaml::from_str(&format!("{meta}\nspec: {{suspend: true, {template}}}")).unwrap();
        slim(&mut job);
        let spec = job.spec.as_ref().unwrap();
        assert_eq!((spec.suspend, &spec.template), (Some(true), &Default::default()));

        let mut cron: CronJob = serde_yaml::from_str(&format!(
            "{meta}\nspec: {{schedule: '@daily', suspend: false, jobTemplate: {{spec: {{{template}}}}}}}"
        ))
        .unwrap();
        slim(&mut cron);
        assert_eq!(cron.spec.suspend, Some(false));
        assert_eq!(cron.spec.job_template.spec.unwrap().template, Default::default());
    }

    #[test]
    fn a_slim_pod_resolves_scrapes_and_restarts_as_the_whole_pod() {
        let whole: Pod = serde_yaml::from_str(
            r#"
metadata:
  name: p
  namespace: agents
  uid: u1
  labels: {app: a}
  annotations: {tokenbudget.io/budget: b}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: rs, uid: rs1, controller: true}]
  managedFields: [{manager: kubelet, operation: Update}]
spec:
  containers:
  - name: agent
    image: agent:1
    env: [{name: KEY, value: a-value}]
    ports: [{name: metrics, containerPort: 9464}]
    resources: {limits: {cpu: '1'}}
    volumeMounts: [{name: v, mountPath: /v}]
  - {name: proxy, image: envoy, ports: [{name: admin, containerPort: 9901}]}
  volumes: [{name: v, emptyDir: {}}]
  tolerations: [{key: k, operator: Exists}]
status:
  phase: Running
  podIP: 10.0.0.7
  startTime: '2026-11-30T10:00:00Z'
  conditions: [{type: Ready, status: 'True'}]
  containerStatuses:
  - {name: agent, restartCount: 3, ready: true, image: agent:1, imageID: x, state: {running: {startedAt: '2026-11-30T10:00:00Z'}}}
  - {name: proxy, restartCount: 1, ready: true, image: envoy, imageID: y}
"#,
        )
        .expect("fixture parses");
        let mut slim_pod = whole.clone();
        slim(&mut slim_pod);
        let port = IntOrString::String("metrics".into());
        assert_eq!(endpoint(&slim_pod, &port), endpoint(&whole, &port));
        assert_eq!(endpoint(&slim_pod, &port), Ok(("10.0.0.7".into(), 9464)));
        let container = metrics_container(&slim_pod, &port);
        assert_eq!(container, Some("agent"));
        assert_eq!(restarts(&slim_pod, container), 3);
        assert_eq!(restarts(&slim_pod, None), restarts(&whole, None));
        // A late-reported restart is told by it (usage::ledger): dropping it counted twice.
        assert_eq!(
            container_started(&slim_pod, container),
            container_started(&whole, container)
        );
        assert!(container_started(&slim_pod, container).is_some());
        assert_eq!(slim_pod.metadata.managed_fields, None);
        assert_eq!(
            (
                slim_pod.metadata.labels.clone(),
                slim_pod.metadata.annotations.clone(),
                slim_pod.metadata.owner_references.clone()
            ),
            (
                whole.metadata.labels.clone(),
                whole.metadata.annotations.clone(),
                whole.metadata.owner_references.clone()
            )
        );
        let status = slim_pod.status.as_ref().unwrap();
        assert_eq!(status.start_time, whole.status.as_ref().unwrap().start_time);
        assert!(status.conditions.is_none());
        let spec = slim_pod.spec.as_ref().unwrap();
        assert!(spec.volumes.is_none() && spec.tolerations.is_none() && spec.containers[0].env.is_none());
    }
}
