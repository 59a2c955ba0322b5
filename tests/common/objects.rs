//! One builder per kind of object the tests create, and the readers of the fields many tests
//! look at. A builder starts from what most tests want; a test says only what differs
//! (`budget("research").tokens(1000).action(ScaleDown)`) and gets the typed object from
//! `build()`, or hands the builder to [`create`](super::create), which takes either.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        batch::v1::{CronJob, Job},
        core::v1::{Container, Pod, PodSpec, PodTemplateSpec, ResourceQuota},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use serde_json::json;
use tokenbudget::api::{
    BudgetBinding, BudgetBindingSpec, BudgetPhase, ComputeQuota, EnforcementAction, MetricsEndpoint, MetricsSource,
    ModelPrice, ResetPeriod, Scheme, TokenBudget, TokenBudgetSpec, WorkloadKind, WorkloadSelector,
};

/// The port every agent of the tests serves its metrics on, named `metrics` in the pods.
pub const METRICS_PORT: i32 = 9464;

// ---------------------------------------------------------------------------------------------
// TokenBudget

pub struct BudgetBuilder(TokenBudget);

/// A TokenBudget with room for 1,000,000 tokens a period, and the API's defaults for the rest
/// (monthly in UTC, one threshold at 80%, enforcement `Annotate`, no prices).
pub fn budget(name: &str) -> BudgetBuilder {
    let spec: TokenBudgetSpec =
        serde_json::from_value(json!({"limits": {"tokens": 1_000_000}})).expect("a minimal TokenBudget spec");
    BudgetBuilder(TokenBudget::new(name, spec))
}

impl BudgetBuilder {
    pub fn tokens(mut self, tokens: i64) -> Self {
        self.0.spec.limits.tokens = Some(tokens);
        self
    }

    /// A limit in money too, in the budget's currency.
    pub fn cost(mut self, limit: &str) -> Self {
        self.0.spec.limits.cost = Some(limit.into());
        self
    }

    pub fn thresholds(mut self, percents: &[u8]) -> Self {
        self.0.spec.thresholds = percents.to_vec();
        self
    }

    /// Adds the price of a model, per million input and output tokens.
    pub fn price(mut self, model: &str, input: &str, output: &str) -> Self {
        self.0.spec.pricing.push(ModelPrice {
            model: model.into(),
            input: input.into(),
            output: output.into(),
        });
        self
    }

    pub fn period(mut self, reset: ResetPeriod) -> Self {
        self.0.spec.period.reset = reset;
        self
    }

    pub fn timezone(mut self, timezone: &str) -> Self {
        self.0.spec.period.timezone = timezone.into();
        self
    }

    pub fn action(mut self, action: EnforcementAction) -> Self {
        self.0.spec.enforcement.action = action;
        self
    }

    /// How long an exhausted budget stays annotated before it scales down (`"5s"`).
    pub fn grace_period(mut self, grace: &str) -> Self {
        self.0.spec.enforcement.grace_period = grace.to_string();
        self
    }

    /// The budget's ResourceQuota, with these hard limits (`("pods", "10")`).
    pub fn compute_quota(mut self, hard: &[(&str, &str)]) -> Self {
        let hard = hard
            .iter()
            .map(|(resource, limit)| (resource.to_string(), Quantity(limit.to_string())))
            .collect();
        self.0.spec.compute_quota = Some(ComputeQuota { hard });
        self
    }

    /// Freezes the compute quota (which the budget needs too) while the budget is exhausted.
    pub fn freeze_quota(mut self) -> Self {
        self.0.spec.enforcement.freeze_quota = true;
        self
    }

    /// Each value of the series label `label` at most `tokens` tokens per period.
    pub fn per_subject(mut self, label: &str, tokens: i64) -> Self {
        self.0.spec.subjects.push(tokenbudget::api::SubjectLimit {
            label: label.into(),
            limits: tokenbudget::api::BudgetLimits {
                tokens: Some(tokens),
                cost: None,
            },
        });
        self
    }

    pub fn build(self) -> TokenBudget {
        self.0
    }
}

impl From<BudgetBuilder> for TokenBudget {
    fn from(builder: BudgetBuilder) -> Self {
        builder.build()
    }
}

// ---------------------------------------------------------------------------------------------
// BudgetBinding

pub struct BindingBuilder(BudgetBinding);

/// A BudgetBinding charging to `budget`, of no workload yet (add at least one), that scrapes
/// the port named `metrics` every second with a 1 s timeout.
pub fn binding(name: &str, budget: &str) -> BindingBuilder {
    let spec: BudgetBindingSpec = serde_json::from_value(json!({
        "budgetRef": {"name": budget},
        "workloads": [],
        "metrics": {"port": "metrics", "interval": "1s", "timeout": "1s"}
    }))
    .expect("a minimal BudgetBinding spec");
    BindingBuilder(BudgetBinding::new(name, spec))
}

impl BindingBuilder {
    /// Binds the workload of this kind and name.
    pub fn named(mut self, kind: WorkloadKind, name: &str) -> Self {
        self.0.spec.workloads.push(WorkloadSelector {
            kind,
            name: Some(name.into()),
            selector: None,
        });
        self
    }

    pub fn deployment(self, name: &str) -> Self {
        self.named(WorkloadKind::Deployment, name)
    }

    /// Binds every workload of this kind with these labels.
    pub fn selecting(mut self, kind: WorkloadKind, labels: &[(&str, &str)]) -> Self {
        let match_labels: BTreeMap<String, String> =
            labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.0.spec.workloads.push(WorkloadSelector {
            kind,
            name: None,
            selector: Some(LabelSelector {
                match_labels: Some(match_labels),
                ..Default::default()
            }),
        });
        self
    }

    /// Scrapes this port number instead of the port named `metrics`.
    pub fn port(mut self, number: i32) -> Self {
        self.0.spec.metrics.port = IntOrString::Int(number);
        self
    }

    pub fn interval(mut self, interval: &str) -> Self {
        self.0.spec.metrics.interval = interval.into();
        self
    }

    pub fn timeout(mut self, timeout: &str) -> Self {
        self.0.spec.metrics.timeout = timeout.into();
        self
    }

    pub fn scheme(mut self, scheme: Scheme) -> Self {
        self.0.spec.metrics.scheme = scheme;
        self
    }

    /// Reads the pods' counters from the operator's Prometheus (`metrics.source: Prometheus`,
    /// the default labels `namespace` and `pod`).
    pub fn via_prometheus(mut self) -> Self {
        self.0.spec.metrics.source = MetricsSource::Prometheus;
        self
    }

    /// The metric conventions the pods follow.
    pub fn format(mut self, format: tokenbudget::api::MetricsFormat) -> Self {
        self.0.spec.metrics.format = format;
        self
    }

    /// Replaces the whole endpoint: `MetricsEndpoint::default()` is the API's defaults.
    pub fn metrics(mut self, metrics: MetricsEndpoint) -> Self {
        self.0.spec.metrics = metrics;
        self
    }

    pub fn build(self) -> BudgetBinding {
        self.0
    }
}

impl From<BindingBuilder> for BudgetBinding {
    fn from(builder: BindingBuilder) -> Self {
        builder.build()
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads: Deployment, StatefulSet, Job, CronJob

/// A builder of a workload of kind `K`. Every workload is labelled `app: <name>` and
/// `team: research`; its pods are labelled `app: <name>` and run one container, `agent`
/// (`agent:latest`), with the port `metrics` ([`METRICS_PORT`]).
pub struct WorkloadBuilder<K>(K);

/// The kinds whose pods come from a pod template.
pub trait Workload {
    fn pod_template(&mut self) -> &mut PodTemplateSpec;
}

/// One replica.
pub fn deployment(name: &str) -> WorkloadBuilder<Deployment> {
    WorkloadBuilder(workload(
        name,
        json!({"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": agent_pod(name)}),
    ))
}

/// One replica, its governing Service named as the StatefulSet.
pub fn statefulset(name: &str) -> WorkloadBuilder<StatefulSet> {
    WorkloadBuilder(workload(
        name,
        json!({
            "replicas": 1, "serviceName": name,
            "selector": {"matchLabels": {"app": name}}, "template": agent_pod(name)
        }),
    ))
}

/// A Job of the API's default size (one pod, one completion) whose pods never restart.
pub fn job(name: &str) -> WorkloadBuilder<Job> {
    WorkloadBuilder(workload(name, json!({"template": job_pod(name)})))
}

/// A CronJob that runs at 03:00 every day (never during a test, in practice).
pub fn cron_job(name: &str) -> WorkloadBuilder<CronJob> {
    WorkloadBuilder(workload(
        name,
        json!({"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": job_pod(name)}}}),
    ))
}

/// A run of `cron_job`, as the CronJob controller creates one: a Job from its template,
/// controlled by it (an ownerReference with its uid). The tests create runs themselves: the
/// schedule of [`cron_job`] never fires during a test.
pub fn run_of(cron_job: &CronJob, name: &str) -> WorkloadBuilder<Job> {
    let template = cron_job.spec.job_template.spec.clone().expect("a Job template");
    let mut job: Job = workload(name, json!(template));
    job.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "batch/v1".into(),
        kind: "CronJob".into(),
        name: cron_job.metadata.name.clone().expect("a name"),
        uid: cron_job.metadata.uid.clone().expect("a created CronJob"),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    WorkloadBuilder(job)
}

fn workload<K: serde::de::DeserializeOwned>(name: &str, spec: serde_json::Value) -> K {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name, "team": "research"}},
        "spec": spec
    }))
    .expect("a valid workload")
}

fn agent_pod(app: &str) -> serde_json::Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {"containers": [{
            "name": "agent", "image": "agent:latest",
            "ports": [{"name": "metrics", "containerPort": METRICS_PORT}]
        }]}
    })
}

fn job_pod(app: &str) -> serde_json::Value {
    let mut pod = agent_pod(app);
    pod["spec"]["restartPolicy"] = json!("Never");
    pod
}

impl<K: Workload> WorkloadBuilder<K> {
    /// Changes the pod template's spec.
    pub fn pod(mut self, change: impl FnOnce(&mut PodSpec)) -> Self {
        change(self.0.pod_template().spec.as_mut().expect("a pod spec"));
        self
    }

    /// Adds a container beside the agent, declaring no port.
    pub fn sidecar(self, name: &str, image: &str) -> Self {
        self.pod(|pod| {
            pod.containers.push(Container {
                name: name.into(),
                image: Some(image.into()),
                ..Default::default()
            })
        })
    }

    /// Names the agent's port otherwise: no port is named `metrics` then.
    pub fn metrics_port_name(self, name: &str) -> Self {
        self.pod(|pod| pod.containers[0].ports.as_mut().expect("the agent's port")[0].name = Some(name.into()))
    }

    pub fn build(self) -> K {
        self.0
    }
}

impl WorkloadBuilder<Deployment> {
    pub fn replicas(mut self, replicas: i32) -> Self {
        self.0.spec.replicas = Some(replicas);
        self
    }
}

impl WorkloadBuilder<StatefulSet> {
    pub fn replicas(mut self, replicas: i32) -> Self {
        self.0.spec.replicas = Some(replicas);
        self
    }
}

impl WorkloadBuilder<Job> {
    pub fn parallelism(mut self, pods: i32) -> Self {
        self.0.spec.as_mut().expect("a spec").parallelism = Some(pods);
        self
    }

    pub fn completions(mut self, completions: i32) -> Self {
        self.0.spec.as_mut().expect("a spec").completions = Some(completions);
        self
    }

    /// Suspended by its owner from the start.
    pub fn suspended(mut self) -> Self {
        self.0.spec.as_mut().expect("a spec").suspend = Some(true);
        self
    }
}

macro_rules! workload_kind {
    ($kind:ty, |$workload:ident| $template:expr) => {
        impl Workload for $kind {
            fn pod_template(&mut self) -> &mut PodTemplateSpec {
                let $workload = self;
                $template
            }
        }

        impl From<WorkloadBuilder<$kind>> for $kind {
            fn from(builder: WorkloadBuilder<$kind>) -> Self {
                builder.build()
            }
        }
    };
}

workload_kind!(Deployment, |d| &mut d.spec.template);
workload_kind!(StatefulSet, |s| &mut s.spec.template);
workload_kind!(Job, |j| &mut j.spec.as_mut().expect("a spec").template);
workload_kind!(CronJob, |c| {
    &mut c.spec.job_template.spec.as_mut().expect("a Job spec").template
});

// ---------------------------------------------------------------------------------------------
// Pod

/// A bare pod, owned by no workload: one container `c` of `busybox`.
pub fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .expect("a valid Pod")
}

// ---------------------------------------------------------------------------------------------
// Readers

/// The value of one annotation.
pub fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

pub fn phase(tb: &TokenBudget) -> Option<BudgetPhase> {
    tb.status.as_ref()?.phase
}

/// The quota's hard limit of pods, as its spec says.
pub fn quota_pods(q: &ResourceQuota) -> Option<&str> {
    q.spec.as_ref()?.hard.as_ref()?.get("pods").map(|p| p.0.as_str())
}
