//! Watches and reconcile wiring for both kinds; [`run::run`] runs the whole operator.
//!
//! Each reconcile is observe -> compute -> write status: the compute step is a pure function
//! (`budget::desired_status`, `binding::desired_status`) carrying most of the unit tests.
//! Primary objects are watched through a generation predicate, so the operator's own status
//! writes never trigger the next reconcile.

pub mod accounting;
pub mod binding;
pub mod budget;
pub mod cli;
pub mod conditions;
pub mod enforcement;
pub mod run;
pub mod workloads;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt, future::BoxFuture};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{
    Api, Client, Resource,
    api::{ListParams, Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef},
        watcher::{self, watcher},
    },
};
use serde::{Serialize, de::DeserializeOwned};
use tracing::Instrument;

use crate::{
    api::{BudgetBinding, TokenBudget},
    clock::Clock,
    metrics::Metrics,
};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "tokenbudget-operator";

/// How often an object is reconciled when nothing happens to it.
pub const RESYNC: Duration = Duration::from_secs(300);

/// Why a reconcile failed. Invalid specs are not errors: they become conditions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("object has no namespace")]
    NoNamespace,
}

impl Error {
    /// A short label for the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "client",
            Error::NoNamespace => "no_namespace",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    pub reporter: Reporter,
    /// Usage accounting; `None` runs the controllers without scraping (unit tests).
    pub accounting: Option<Accounting>,
    backoff: Backoffs,
}

/// What the accounting part of the budget reconcile needs.
pub struct Accounting {
    pub cluster: accounting::Cluster,
    pub scraper: crate::usage::scrape::Scraper,
    pub accounts: accounting::Accounts,
    /// The budget controller's store, to notice budgets that are gone.
    pub budgets: kube::runtime::reflector::Store<DeserializeGuard<TokenBudget>>,
    /// What the last cycle saw of each binding (`namespace/name`), for the binding controller.
    pub binding_usage: Mutex<HashMap<String, binding::BindingUsage>>,
    /// Wakes the binding controller for bindings whose usage changed.
    pub wake_bindings: futures::channel::mpsc::UnboundedSender<ObjectRef<DeserializeGuard<BudgetBinding>>>,
}

impl Accounting {
    /// Forgets a deleted budget: its account and its metric series.
    pub fn forget_budget(&self, key: &str, metrics: &Metrics) {
        self.accounts.retain(|k| k != key);
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        metrics.forget_budget(ns, name);
    }

    /// Hands a cycle's findings to the binding controller and wakes it for those bindings.
    pub fn hand_over(&self, ns: &str, report: &accounting::CycleReport) {
        let mut map = self.binding_usage.lock().unwrap_or_else(|e| e.into_inner());
        for b in &report.bindings {
            let usage = binding::BindingUsage {
                report: b.clone(),
                scraped_at: report.scrape_time,
            };
            map.insert(format!("{ns}/{}", b.name), usage);
            let _ = self.wake_bindings.unbounded_send(ObjectRef::new(&b.name).within(ns));
        }
    }

    /// What the last cycle saw of a binding.
    pub fn binding_usage(&self, key: &str) -> Option<binding::BindingUsage> {
        self.binding_usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }
}

impl Context {
    pub fn new(client: Client, metrics: Metrics, clock: Arc<dyn Clock>, reporter: Reporter) -> Self {
        Self {
            client,
            metrics,
            clock,
            reporter,
            accounting: None,
            backoff: Backoffs::default(),
        }
    }

    /// Adds usage accounting.
    pub fn with_accounting(mut self, accounting: Accounting) -> Self {
        self.accounting = Some(accounting);
        self
    }

    /// Publishes an Event about `obj`; a failure to publish is logged, never fatal.
    pub async fn publish<K>(&self, obj: &K, type_: EventType, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish an Event");
        }
    }
}

/// Fails with one clear line when a CRD is missing, instead of failing watches forever.
pub async fn check_crds(budgets: &Api<TokenBudget>, bindings: &Api<BudgetBinding>) -> Result<(), String> {
    check_crd(budgets, "tokenbudgets.tokenbudget.io").await?;
    check_crd(bindings, "budgetbindings.tokenbudget.io").await
}

async fn check_crd<K>(api: &Api<K>, crd: &str) -> Result<(), String>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(format!(
            "the CRD {crd} is not installed in this cluster: install it with `kubectl apply -f crds/` (or the Helm chart)"
        )),
        Err(e) => Err(format!("cannot list {crd}: {e}")),
    }
}

/// Writes `status` through server-side apply on the status subresource of object `name`.
pub async fn apply_status<K, S>(api: &Api<K>, name: &str, status: &S) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    Ok(())
}

/// Publishes a Warning Event when the Ready condition has just become False, or False for a
/// new reason: once per transition, not once per reconcile.
pub(crate) async fn announce_not_ready<K>(ctx: &Context, obj: &K, old: &[Condition], new: &[Condition])
where
    K: Resource<DynamicType = ()>,
{
    if let Some(ready) = conditions::find(new, "Ready")
        && ready.status == "False"
        && conditions::find(old, "Ready").is_none_or(|c| c.status != "False" || c.reason != ready.reason)
    {
        ctx.publish(obj, EventType::Warning, &ready.reason, ready.message.clone())
            .await;
    }
}

/// An object the operator's types cannot read (written against another version of the CRD,
/// say) gets `Ready=False` with reason `InvalidObject` and an Event, instead of stalling the
/// watch of every other object of its kind. It waits for the next change of the object.
pub(crate) async fn report_unreadable<K>(guard: &DeserializeGuard<K>, ctx: &Context) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let Err(invalid) = &guard.0 else {
        return Ok(Action::await_change());
    };
    let meta = &invalid.metadata;
    let (Some(name), Some(ns)) = (meta.name.as_deref(), meta.namespace.as_deref()) else {
        return Err(Error::NoNamespace);
    };
    let message = format!("the operator cannot read this object: {}", invalid.error);
    tracing::warn!(kind = %K::kind(&()), namespace = ns, name, error = %invalid.error, "unreadable object");
    let ready = conditions::Desired::new("Ready", false, "InvalidObject", message.clone());
    let status = serde_json::json!({
        "conditions": conditions::merge(&[], &[ready], meta.generation, ctx.clock.now()),
        "observedGeneration": meta.generation,
    });
    apply_status(&Api::<K>::namespaced(ctx.client.clone(), ns), name, &status).await?;
    ctx.publish(guard, EventType::Warning, "InvalidObject", message).await;
    Ok(Action::await_change())
}

/// A watch of `api` whose objects are kept in a store, triggering only when an object's
/// generation changes (so that status writes, ours or anyone's, never trigger a reconcile).
/// Objects that do not deserialize arrive as `Err` inside the guard rather than breaking the
/// watch.
///
/// `on_event` sees every watch event right after the store has applied it, so whatever it
/// wakes finds the store already up to date.
pub(crate) fn guarded_controller<K>(
    api: Api<DeserializeGuard<K>>,
    mut on_event: impl FnMut(&watcher::Event<DeserializeGuard<K>>) + Send + 'static,
) -> Controller<DeserializeGuard<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(event) = event {
                on_event(event);
            }
        })
        .applied_objects()
        .predicate_filter(generation_or_deletion, Default::default());
    Controller::for_stream(stream, reader)
}

/// `namespace/name` of an object.
pub(crate) fn key_of<K: Resource>(obj: &K) -> String {
    let meta = obj.meta();
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// Changes when an object's spec changes (its generation) or its deletion begins (which does
/// not always move the generation): the only changes that call for a reconcile.
fn generation_or_deletion<K: Resource>(obj: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = obj.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (meta.generation, meta.deletion_timestamp.is_some()).hash(&mut hasher);
    Some(hasher.finish())
}

/// Per-object exponential backoff for transient failures: 1s, 2s, 4s ... at most 5 minutes,
/// reset by the next success.
#[derive(Default)]
struct Backoffs(Mutex<HashMap<String, u32>>);

impl Backoffs {
    fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
        ObjectRef::from_obj(obj).to_string()
    }

    fn failed<K: Resource<DynamicType = ()>>(&self, obj: &K) -> Duration {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let failures = map.entry(Self::key(obj)).or_insert(0);
        *failures = failures.saturating_add(1);
        Duration::from_secs(1u64 << (*failures - 1).min(8)).min(Duration::from_secs(300))
    }

    fn succeeded<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&Self::key(obj));
    }
}

/// Wraps a reconcile with metrics, logs and the backoff bookkeeping, in a span that names the
/// object, so that every log line of one reconcile (its scrapes and writes too) can be found
/// together: `reconcile{controller=tokenbudget namespace=agents name=research}`.
pub(crate) async fn instrumented<K>(
    controller: &'static str,
    obj: Arc<K>,
    ctx: Arc<Context>,
    reconcile: impl FnOnce(Arc<K>, Arc<Context>) -> BoxFuture<'static, Result<Action, Error>>,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
{
    let timer = ctx
        .metrics
        .reconcile_duration
        .with_label_values(&[controller])
        .start_timer();
    ctx.metrics.reconciles.with_label_values(&[controller]).inc();
    let meta = obj.meta();
    let span = tracing::info_span!(
        "reconcile",
        controller,
        namespace = meta.namespace.as_deref().unwrap_or_default(),
        name = meta.name.as_deref().unwrap_or_default(),
    );
    let result = reconcile(obj.clone(), ctx.clone()).instrument(span).await;
    timer.observe_duration();
    if result.is_ok() {
        ctx.backoff.succeeded(obj.as_ref());
    }
    result
}

/// The error policy of both controllers: count, log, retry with backoff.
pub(crate) fn error_policy<K>(controller: &'static str, obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[controller, error.metric_label()])
        .inc();
    let delay = ctx.backoff.failed(obj.as_ref());
    tracing::warn!(
        controller,
        object = %ObjectRef::from_obj(obj.as_ref()),
        error = %error,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// Drains a controller's result stream, logging what it reports.
pub(crate) async fn drain<S, T, E>(controller: &'static str, stream: S)
where
    S: futures::Stream<Item = Result<T, E>>,
    T: std::fmt::Debug,
    E: std::fmt::Display,
{
    stream
        .for_each(|result| async move {
            match result {
                Ok(o) => tracing::debug!(controller, object = ?o, "reconciled"),
                Err(e) => tracing::debug!(controller, error = %e, "controller reported an error"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    /// An API server without our CRDs answers 404 on their list; the operator must say what to do.
    #[tokio::test]
    async fn a_missing_crd_is_one_clear_error() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("the operator lists budgets");
            assert!(
                request.uri().path().ends_with("/tokenbudget.io/v1alpha1/tokenbudgets"),
                "{}",
                request.uri()
            );
            let body = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404
            });
            send.send_response(
                Response::builder()
                    .status(404)
                    .body(Body::from(body.to_string().into_bytes()))
                    .unwrap(),
            );
        });
        let client = Client::new(service, "default");
        let err = check_crds(&Api::all(client.clone()), &Api::all(client))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            "the CRD tokenbudgets.tokenbudget.io is not installed in this cluster: install it with `kubectl apply -f crds/` (or the Helm chart)"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_server_is_not_reported_as_a_missing_crd() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server =
            tokio::spawn(async move {
                let (_, send) = handle.next_request().await.expect("a request");
                send.send_response(Response::builder().status(403).body(Body::from(
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "forbidden", "reason": "Forbidden", "code": 403}).to_string().into_bytes(),
            )).unwrap());
            });
        let client = Client::new(service, "default");
        let err = check_crds(&Api::all(client.clone()), &Api::all(client))
            .await
            .unwrap_err();
        assert!(err.starts_with("cannot list tokenbudgets.tokenbudget.io"), "{err}");
        server.await.unwrap();
    }
}
