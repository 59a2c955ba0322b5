//! The operator's controllers: watches, reconciles, and what they share.
//!
//! - [`budget`]: the TokenBudget reconcile, a pipeline of observe, compute, act, write status
//!   and announce, each step a module of its own.
//! - [`binding`]: the BudgetBinding reconcile (its status, from the budget's last cycle).
//! - [`pool`]: the ClusterTokenBudget reconcile (the sum of its children's shares), and
//!   what a budget's reconcile asks about its pool.
//! - [`cluster`]: the reflector stores everything is read from; [`sync`]: whether each is
//!   current; [`scrapes`]: the scrapes of a cycle, [`prometheus`]: the queries of bindings
//!   that read Prometheus instead; [`state`]: what is kept in memory between
//!   reconciles.
//! - [`status`], [`events`]: writing status and publishing Events.
//! - [`leader`]: leader election on a Lease, and the fence that keeps a replica that does
//!   not lead from writing.
//! - [`run`]: the whole operator; [`cli`]: its command line; [`release`]: what runs before
//!   the operator is uninstalled (`tokenbudget-operator release`).
//!
//! Primary objects are watched through a generation predicate, so the operator's own status
//! writes never trigger the next reconcile.

pub mod binding;
pub mod budget;
pub mod cli;
pub mod cluster;
pub mod events;
#[cfg(test)]
mod fixtures;
pub mod leader;
pub mod pool;
pub mod prometheus;
pub mod release;
pub mod run;
pub mod scrapes;
pub mod state;
pub mod status;
pub mod sync;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt, future::BoxFuture};
use kube::{
    Api, Client, Resource,
    api::ListParams,
    core::DeserializeGuard,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::Reporter,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::{
    api::{BudgetBinding, TokenBudget},
    clock::Clock,
    metrics::Metrics,
    usage::scrape::Scraper,
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
            Error::Kube(kube::Error::Service(e)) if e.is::<leader::NotLeader>() => "not_leader",
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "client",
            Error::NoNamespace => "no_namespace",
        }
    }

    /// Whether the API server could not be reached or could not serve the request: it is
    /// down or starting (connection refused, 503), or its etcd is (504). Such a failure says
    /// nothing about the object, and ends when the API server is back.
    pub fn unavailable(&self) -> bool {
        match self {
            Error::Kube(kube::Error::Api(status)) => matches!(status.code, 502..=504),
            Error::Kube(kube::Error::HyperError(_) | kube::Error::Service(_)) => true,
            _ => false,
        }
    }
}

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the CRD {0} is not installed in this cluster: install it with `kubectl apply -f crds/` (or the Helm chart)"
    )]
    MissingCrd(&'static str),
    #[error("cannot list {crd}: {source}")]
    CannotList {
        crd: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("leader election: {0}")]
    LeaderElection(#[from] leader::ConfigError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    /// Who the operator's Events say they come from.
    pub reporter: Reporter,
    /// The stores: pods, workloads, bindings.
    pub cluster: cluster::Cluster,
    pub scraper: Scraper,
    /// The Prometheus of `--prometheus-url`, for bindings with `metrics.source: Prometheus`.
    pub prometheus: Option<prometheus::Prometheus>,
    /// Every budget's account.
    pub accounts: state::Accounts,
    /// The budget controller's store, to notice budgets that are gone.
    pub budgets: Store<DeserializeGuard<TokenBudget>>,
    /// What the budgets' cycles saw of their bindings, for the binding controller.
    pub binding_usage: state::BindingUsages,
    /// Whether this replica leads: only the leader reconciles.
    pub leadership: leader::Leadership,
    /// The pools and the namespaces' labels; `None` in an operator limited to one namespace,
    /// which cannot see them.
    pub pools: Option<pool::PoolStores>,
    /// Per-object retry delays (children of this module build a `Context`).
    backoff: Backoffs,
}

/// Fails with one clear line when a CRD is missing, instead of failing watches forever.
pub async fn check_crds(budgets: &Api<TokenBudget>, bindings: &Api<BudgetBinding>) -> Result<(), StartError> {
    check_crd(budgets, "tokenbudgets.tokenbudget.io").await?;
    check_crd(bindings, "budgetbindings.tokenbudget.io").await
}

pub(crate) async fn check_crd<K>(api: &Api<K>, crd: &'static str) -> Result<(), StartError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(StartError::MissingCrd(crd)),
        Err(source) => Err(StartError::CannotList { crd, source }),
    }
}

/// A watch of `api` whose objects are kept in a store, triggering only when an object's
/// generation changes (so that status writes, ours or anyone's, never trigger a reconcile).
/// Objects that do not deserialize arrive as `Err` inside the guard rather than breaking the
/// watch. The watch lists again after any error, and reports its health to `health`
/// ([`sync`]).
///
/// `on_event` sees every watch event right after the store has applied it, so whatever it
/// wakes finds the store already up to date.
pub(crate) fn guarded_controller<K>(
    api: Api<DeserializeGuard<K>>,
    health: sync::WatchHealth,
    mut on_event: impl FnMut(&watcher::Event<DeserializeGuard<K>>) + Send + 'static,
) -> Controller<DeserializeGuard<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = sync::relisting(api)
        // Nothing reads them, and every clone of an object would copy them.
        .modify(|obj| obj.meta_mut().managed_fields = None)
        .reflect(writer)
        .inspect(move |event| {
            health.observe(event);
            if let Ok(event) = event {
                on_event(event);
            }
        })
        .applied_objects()
        .predicate_filter(generation_or_deletion, Default::default());
    Controller::for_stream(stream, reader)
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
/// reset by the next success. While the API server is unavailable the delay stays at most
/// [`UNAVAILABLE_RETRY`]: otherwise an outage of a few minutes would leave every object
/// waiting minutes more after the API server is back, with its usage unwritten and its
/// enforcement not done.
#[derive(Default)]
struct Backoffs(Mutex<HashMap<ObjectRef<kube::api::DynamicObject>, u32>>);

/// The longest retry delay while the API server is unavailable ([`Error::unavailable`]).
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(10);

impl Backoffs {
    fn key<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectRef<kube::api::DynamicObject> {
        ObjectRef::from_obj(obj).erase()
    }

    fn failed<K: Resource<DynamicType = ()>>(&self, obj: &K, error: &Error) -> Duration {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let failures = map.entry(Self::key(obj)).or_insert(0);
        *failures = failures.saturating_add(1);
        let delay = Duration::from_secs(1u64 << (*failures - 1).min(8)).min(Duration::from_secs(300));
        if error.unavailable() {
            delay.min(UNAVAILABLE_RETRY)
        } else {
            delay
        }
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
    // A replica that does not lead keeps its stores current and nothing else: the leader
    // reconciles. Every object is reconciled when this replica begins to lead.
    if !ctx.leadership.is_leading() {
        return Ok(Action::await_change());
    }
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
    let delay = ctx.backoff.failed(obj.as_ref(), error);
    tracing::warn!(
        controller,
        object = %ObjectRef::from_obj(obj.as_ref()),
        error = %error,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// A reconcile function of one kind.
pub(crate) type Reconcile<K> = fn(Arc<K>, Arc<Context>) -> BoxFuture<'static, Result<Action, Error>>;

/// Runs `controller` with `reconcile` (instrumented, with the shared error policy) until
/// `shutdown` resolves.
pub(crate) async fn run_controller<K>(
    name: &'static str,
    controller: Controller<K>,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    reconcile: Reconcile<K>,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let stream = controller.graceful_shutdown_on(shutdown).run(
        move |obj, ctx| instrumented(name, obj, ctx, reconcile),
        move |obj, e, ctx| error_policy(name, obj, e, ctx),
        ctx,
    );
    drain(name, stream).await;
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
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "the CRD tokenbudgets.tokenbudget.io is not installed in this cluster: install it with `kubectl apply -f crds/` (or the Helm chart)"
        );
        server.await.unwrap();
    }

    fn api_error(code: u16) -> Error {
        Error::Kube(kube::Error::Api(Box::new(
            kube::core::Status::failure("failed", "Failed").with_code(code),
        )))
    }

    #[test]
    fn an_unavailable_api_server_is_retried_within_ten_seconds_however_long_it_was_down() {
        let backoffs = Backoffs::default();
        let pod: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "p", "namespace": "n"}})).unwrap();
        let unreachable = Error::Kube(kube::Error::Service("client error (Connect)".into()));
        let delays: Vec<u64> = (0..12).map(|_| backoffs.failed(&pod, &unreachable).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10, 10, 10, 10, 10, 10, 10]);
        // Starting (503) or without etcd (504): the same.
        assert_eq!(backoffs.failed(&pod, &api_error(503)), UNAVAILABLE_RETRY);
        assert_eq!(backoffs.failed(&pod, &api_error(504)), UNAVAILABLE_RETRY);
        // Any other failure backs off as far as the failures before it took it (256 s by now).
        assert_eq!(backoffs.failed(&pod, &api_error(409)), Duration::from_secs(256));
        assert_eq!(backoffs.failed(&pod, &api_error(500)), Duration::from_secs(256));
        backoffs.succeeded(&pod);
        assert_eq!(backoffs.failed(&pod, &api_error(403)), Duration::from_secs(1));
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
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot list tokenbudgets.tokenbudget.io"), "{err}");
        server.await.unwrap();
    }
}
