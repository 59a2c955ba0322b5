//! The reflector stores the budget controller reads: pods, the workloads that own them, and
//! the bindings. Every read of the accounting cycle and of enforcement comes from here, never
//! from a list call, and only once every store has listed; enforcement decides only while
//! every watch is healthy too ([`sync`](super::sync)).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet, StatefulSet},
        autoscaling::v2::HorizontalPodAutoscaler,
        batch::v1::{CronJob, Job},
        core::v1::Pod,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        WatchStreamExt,
        reflector::{ObjectRef, Store},
    },
};
use serde::de::DeserializeOwned;

use super::{
    state::BudgetRef,
    sync::{self, View, WatchHealth, Watches},
};
use crate::{
    api::BudgetBinding,
    cache::{self, Cache},
    workloads::{self, Caches, Namespace},
};

/// The caches accounting reads (by namespace: [`Cache`]), all of them in the operator's watch scope.
#[derive(Clone)]
pub struct Cluster {
    /// Pods and the workloads that own them.
    pub caches: Caches,
    pub bindings: Store<DeserializeGuard<BudgetBinding>>,
    /// Whether each store, these and the budgets', is current.
    pub watches: Watches,
}

/// An Api of a namespaced kind in the operator's watch scope: one namespace, or all.
pub fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A reflector whose store keeps objects slim ([`workloads::Slim`]: memory), driven by the
/// returned future, its watch's health reported to `health` once the store has applied each
/// event. `on_apply` sees each created or changed object once the store has it.
fn reflect<K>(
    api: Api<K>,
    health: WatchHealth,
    on_apply: impl Fn(&K) + Send + 'static,
) -> (Cache<K>, impl Future<Output = ()> + Send)
where
    K: Resource<DynamicType = ()>
        + workloads::Slim
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, mut writer) = cache::cache();
    let stream = sync::relisting(api)
        .modify(workloads::slim::<K>)
        .inspect(move |event| {
            if let Ok(event) = event {
                writer.apply(event);
            }
        })
        .inspect(move |event| health.observe(event))
        .applied_objects();
    (
        reader,
        stream.for_each(move |obj| {
            if let Ok(obj) = obj {
                on_apply(&obj);
            }
            async {}
        }),
    )
}

/// The budget to wake at once when someone undoes its enforcement on a workload (a manual
/// scale-up while it is exhausted, a resumed Job): the operator's annotations on the workload
/// name the budget, and the count above 0 (or `suspend` off) says it was undone. Anything else
/// waits for the budget's next cycle.
fn undone_enforcement(meta: &ObjectMeta, replicas: Option<i32>, suspended: Option<bool>) -> Option<BudgetRef> {
    let annotations = meta.annotations.as_ref()?;
    let budget = annotations.get(crate::enforce::BUDGET)?;
    // Above the count the operator set: 0, or the paced count while pacing runs fewer replicas.
    let set = annotations
        .get(crate::enforce::PACED_REPLICAS)
        .and_then(|p| p.parse::<i32>().ok())
        .unwrap_or(0);
    let scaled_up = annotations.contains_key(crate::enforce::PAUSED_REPLICAS) && replicas.is_some_and(|r| r > set);
    let resumed = annotations.get(crate::enforce::SUSPENDED).is_some_and(|v| v == "true") && suspended != Some(true);
    (scaled_up || resumed).then(|| ObjectRef::new(budget).within(meta.namespace.as_deref().unwrap_or_default()))
}

/// The budget to wake at once when a Job runs whose CronJob that budget keeps suspended: one
/// the CronJob created just before it was suspended, or one someone resumed. Its next cycle
/// suspends it; the Job's own annotations need not name the budget.
fn running_under_suspension(job: &Job, cron_job: Option<&CronJob>) -> Option<BudgetRef> {
    let cron_job = cron_job?;
    let owner = workloads::controlling_cron_job(&job.metadata)?;
    let annotations = cron_job.metadata.annotations.as_ref()?;
    let budget = annotations.get(crate::enforce::BUDGET)?;
    let ours = annotations.get(crate::enforce::SUSPENDED).is_some_and(|v| v == "true");
    let running = job.spec.as_ref().and_then(|s| s.suspend) != Some(true) && !workloads::job_finished(job);
    (Some(&owner.uid) == cron_job.metadata.uid.as_ref()
        && job.metadata.namespace == cron_job.metadata.namespace
        && ours
        && cron_job.spec.suspend == Some(true)
        && running)
        .then(|| ObjectRef::new(budget).within(job.metadata.namespace.as_deref().unwrap_or_default()))
}

/// What the caches are for: the operator, or `tokenbudget-operator release` (restore only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Operate,
    /// Restores every workload: no HorizontalPodAutoscaler watch (pacing's concern only).
    Restore,
}

impl Cluster {
    /// Starts the reflectors, each registered in `watches` (where the bindings' and budgets'
    /// watches are too). `terminating` receives every pod that starts terminating, so that its
    /// budget can scrape it once more at once (accounting rule 5).
    pub fn start(
        client: &Client,
        namespace: Option<&str>,
        bindings: Store<DeserializeGuard<BudgetBinding>>,
        watches: Watches,
        terminating: futures::channel::mpsc::UnboundedSender<Arc<Pod>>,
        enforcement_undone: futures::channel::mpsc::UnboundedSender<BudgetRef>,
        purpose: Purpose,
    ) -> (Self, impl Future<Output = ()> + Send + use<>) {
        let (pods_reader, pod_stream) = reflect(api(client, namespace), watches.register("pods"), move |pod: &Pod| {
            if pod.metadata.deletion_timestamp.is_some() {
                let _ = terminating.unbounded_send(Arc::new(pod.clone()));
            }
        });
        let wake = move |budget: Option<BudgetRef>| {
            if let Some(budget) = budget {
                let _ = enforcement_undone.unbounded_send(budget);
            }
        };
        let (replica_sets, rs) = reflect(
            api(client, namespace),
            watches.register("replicasets"),
            |_: &ReplicaSet| {},
        );
        let w = wake.clone();
        let (deployments, d) = reflect(
            api(client, namespace),
            watches.register("deployments"),
            move |o: &Deployment| w(undone_enforcement(&o.metadata, o.spec.replicas, None)),
        );
        let w = wake.clone();
        let (stateful_sets, s) = reflect(
            api(client, namespace),
            watches.register("statefulsets"),
            move |o: &StatefulSet| w(undone_enforcement(&o.metadata, o.spec.replicas, None)),
        );
        // Pacing leaves a workload with an autoscaler alone: one created or deleted is seen at
        // the budget's next cycle. A restore undoes pacing whatever the autoscalers, and needs
        // no grant to read them.
        let (autoscalers, a) = match purpose {
            Purpose::Operate => {
                let (cache, stream) = reflect(
                    api(client, namespace),
                    watches.register("horizontalpodautoscalers"),
                    |_: &HorizontalPodAutoscaler| {},
                );
                (cache, futures::future::Either::Left(stream))
            }
            Purpose::Restore => (
                cache::filled(Vec::new()),
                futures::future::Either::Right(std::future::ready(())),
            ),
        };
        let w = wake.clone();
        let (cron_jobs, c) = reflect(
            api(client, namespace),
            watches.register("cronjobs"),
            move |o: &CronJob| w(undone_enforcement(&o.metadata, None, o.spec.suspend)),
        );
        let owners = cron_jobs.clone();
        let (jobs, j) = reflect(api(client, namespace), watches.register("jobs"), move |o: &Job| {
            wake(undone_enforcement(
                &o.metadata,
                None,
                o.spec.as_ref().and_then(|s| s.suspend),
            ));
            let owner = workloads::controlling_cron_job(&o.metadata)
                .and_then(|owner| owners.get(o.metadata.namespace.as_deref().unwrap_or_default(), &owner.name));
            wake(running_under_suspension(o, owner.as_deref()))
        });
        let cluster = Cluster {
            caches: Caches {
                pods: pods_reader,
                replica_sets,
                deployments,
                stateful_sets,
                jobs,
                cron_jobs,
                autoscalers,
            },
            bindings,
            watches,
        };
        let driver = async move {
            tokio::join!(pod_stream, rs, d, s, j, c, a);
        };
        (cluster, driver)
    }

    /// What the stores are worth now: never account on a store that has not listed, never
    /// decide on one whose watch failed since.
    pub fn view(&self) -> View {
        self.watches.view()
    }

    /// The pods and workloads of one namespace.
    pub fn namespace(&self, namespace: &str) -> Namespace {
        Namespace::new(namespace, self.caches.clone())
    }

    /// The readable bindings of a budget, by name.
    pub fn bindings_of(&self, namespace: &str, budget: &str) -> Vec<BudgetBinding> {
        self.bindings_in(namespace, |b| b == budget)
    }

    /// The readable bindings of a namespace whose budget's name passes `budget`, by name. Only
    /// those are cloned: every budget asks at every cycle, and a cluster has thousands.
    pub fn bindings_in(&self, namespace: &str, budget: impl Fn(&str) -> bool) -> Vec<BudgetBinding> {
        let mut list: Vec<BudgetBinding> = self
            .bindings
            .state()
            .iter()
            .filter_map(|guard| guard.0.as_ref().ok())
            .filter(|bb| bb.metadata.namespace.as_deref() == Some(namespace) && budget(&bb.spec.budget_ref.name))
            .cloned()
            .collect();
        list.sort_by_key(|bb| bb.name_any());
        list
    }

    /// The budgets a terminating pod may be charged to: those of every binding in its namespace.
    pub fn budgets_for_pod(&self, pod: &Pod) -> Vec<BudgetRef> {
        let ns = pod.metadata.namespace.as_deref();
        let mut refs: Vec<_> = self
            .bindings
            .state()
            .iter()
            .filter_map(|guard| guard.0.as_ref().ok())
            .filter(|bb| bb.metadata.namespace.as_deref() == ns)
            .map(|bb| ObjectRef::new(&bb.spec.budget_ref.name).within(ns.unwrap_or_default()))
            .collect();
        refs.sort_by(|a, b| a.name.cmp(&b.name));
        refs.dedup();
        refs
    }
}

/// For the scenario tests: a cluster over stores filled by hand, as if every watch had listed
/// them and were healthy (no watch registered: the view is current).
#[cfg(test)]
impl Cluster {
    pub(crate) fn from_stores(caches: Caches, bindings: Store<DeserializeGuard<BudgetBinding>>) -> Self {
        Cluster {
            caches,
            bindings,
            watches: Watches::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(yaml: &str) -> ObjectMeta {
        serde_yaml::from_str(yaml).expect("fixture parses")
    }

    #[test]
    fn only_an_undone_enforcement_wakes_its_budget_early() {
        let paused = meta(
            "{name: a, namespace: n, annotations: {tokenbudget.io/budget: research, tokenbudget.io/paused-replicas: '2'}}",
        );
        let woken = undone_enforcement(&paused, Some(3), None).expect("a scale-up while paused");
        assert_eq!(
            (woken.name.as_str(), woken.namespace.as_deref()),
            ("research", Some("n"))
        );
        assert!(undone_enforcement(&paused, Some(0), None).is_none(), "still paused");
        let paced = meta(
            "{name: a, namespace: n, annotations: {tokenbudget.io/budget: research, \
             tokenbudget.io/paused-replicas: '4', tokenbudget.io/paced-replicas: '2'}}",
        );
        assert!(undone_enforcement(&paced, Some(2), None).is_none(), "still paced");
        assert!(
            undone_enforcement(&paced, Some(3), None).is_some(),
            "a scale-up while paced"
        );

        let suspended = meta(
            "{name: j, namespace: n, annotations: {tokenbudget.io/budget: research, tokenbudget.io/suspended: 'true'}}",
        );
        assert!(
            undone_enforcement(&suspended, None, Some(false)).is_some(),
            "resumed by someone"
        );
        assert!(undone_enforcement(&suspended, None, Some(true)).is_none());

        let annotated =
            meta("{name: a, namespace: n, annotations: {tokenbudget.io/budget: research, tokenbudget.io/state: ok}}");
        assert!(
            undone_enforcement(&annotated, Some(3), None).is_none(),
            "nothing enforced"
        );
        assert!(undone_enforcement(&meta("{name: x}"), Some(3), None).is_none());
    }

    #[test]
    fn a_running_job_of_a_cron_job_its_budget_suspended_wakes_the_budget() {
        let cron_job = |annotations: &str, suspend: bool| -> CronJob {
            serde_yaml::from_str(&format!(
                "metadata: {{name: nightly, namespace: n, uid: c1, annotations: {annotations}}}\n\
                 spec: {{schedule: '0 3 * * *', suspend: {suspend}, jobTemplate: {{}}}}"
            ))
            .expect("fixture parses")
        };
        let job = |uid: &str, rest: &str| -> Job {
            serde_yaml::from_str(&format!(
                "metadata: {{name: nightly-1, namespace: n, ownerReferences: \
                 [{{apiVersion: batch/v1, kind: CronJob, name: nightly, uid: {uid}, controller: true}}]}}\n{rest}"
            ))
            .expect("fixture parses")
        };
        let enforced = cron_job(
            "{tokenbudget.io/budget: research, tokenbudget.io/suspended: 'true'}",
            true,
        );
        let running = job("c1", "spec: {template: {}}");
        let woken = running_under_suspension(&running, Some(&enforced)).expect("a run of a suspended CronJob");
        assert_eq!(
            (woken.name.as_str(), woken.namespace.as_deref()),
            ("research", Some("n"))
        );
        // Suspended already, finished, not the CronJob's (another uid), or a CronJob its owner
        // suspended or the budget resumed: nothing to do at once.
        let suspended = job("c1", "spec: {suspend: true, template: {}}");
        let finished = job("c1", "status: {conditions: [{type: Failed, status: 'True'}]}");
        let forged = job("c9", "spec: {template: {}}");
        for (job, cron_job) in [
            (&suspended, &enforced),
            (&finished, &enforced),
            (&forged, &enforced),
            (&running, &cron_job("{tokenbudget.io/budget: research}", true)),
            (
                &running,
                &cron_job(
                    "{tokenbudget.io/budget: research, tokenbudget.io/suspended: 'true'}",
                    false,
                ),
            ),
        ] {
            assert!(running_under_suspension(job, Some(cron_job)).is_none(), "{job:?}");
        }
        assert!(running_under_suspension(&running, None).is_none());
    }
}
