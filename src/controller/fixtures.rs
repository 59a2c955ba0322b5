//! Fixtures of the scenario tests: a [`Context`] over a mocked API server, whose stores are
//! filled by hand and whose clock stands still, and an [`ApiServerVerifier`] that answers the
//! reconcile's requests one at a time, checking each as it comes, as an API server would.
//!
//! A scenario spawns the verifier with the requests it expects, in order, ending with
//! [`ApiServerVerifier::done`]; then [`settle`] runs the reconcile and lets go of the context,
//! so that `done` sees the end of the requests and fails on any request more.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use jiff::Timestamp;
use k8s_openapi::{
    api::apps::v1::Deployment,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{
    Resource, ResourceExt,
    client::Body,
    core::DeserializeGuard,
    runtime::{
        events::Reporter,
        reflector::{self, Store},
        watcher,
    },
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::{Context, FIELD_MANAGER, cluster::Cluster, state::BindingUsages};
use crate::{
    api::{BudgetBinding, BudgetBindingStatus, TokenBudget, TokenBudgetStatus},
    clock::ManualClock,
    metrics::Metrics,
    usage::scrape::Scraper,
};

/// The time on the test clock, all scenario long.
pub const NOW: &str = "2026-11-28T12:00:00Z";
/// The namespace of every object.
pub const NAMESPACE: &str = "agents";
/// How long a reconcile, or the verifier, may take before the scenario counts as hung.
const GUARD: Duration = Duration::from_secs(10);

pub fn now() -> Timestamp {
    NOW.parse().expect("a valid time")
}

/// The objects in the stores, as if every watch had listed them.
#[derive(Default)]
pub struct Objects {
    pub budgets: Vec<TokenBudget>,
    pub bindings: Vec<BudgetBinding>,
    pub deployments: Vec<Deployment>,
}

/// A store holding `objects`, filled the way a watch's first listing fills it.
fn store<K>(objects: impl IntoIterator<Item = K>) -> Store<K>
where
    K: reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

impl Context {
    /// A context whose client talks to the returned verifier, whose stores hold `objects`
    /// (synced), and whose clock shows [`NOW`].
    pub fn test(objects: Objects) -> (Arc<Context>, ApiServerVerifier) {
        Self::test_with_clock(objects, ManualClock::new(now()))
    }

    /// The same, on `clock`, which the scenario moves.
    pub fn test_with_clock(objects: Objects, clock: ManualClock) -> (Arc<Context>, ApiServerVerifier) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let lists = crate::workloads::Lists {
            deployments: objects.deployments.into_iter().map(Arc::new).collect(),
            ..Default::default()
        };
        let cluster = Cluster::from_stores(
            lists.caches(),
            store(objects.bindings.into_iter().map(|bb| DeserializeGuard(Ok(bb)))),
        );
        // Nobody wakes the binding controller here: the scenarios read the hand-over directly.
        let (wake, _) = futures::channel::mpsc::unbounded();
        let ctx = Context {
            client: kube::Client::new(service, NAMESPACE),
            metrics: Metrics::new(),
            clock: Arc::new(clock),
            reporter: Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some("test".into()),
            },
            cluster,
            scraper: Scraper::default(),
            prometheus: None,
            budgets: store(objects.budgets.into_iter().map(|tb| DeserializeGuard(Ok(tb)))),
            binding_usage: BindingUsages::new(wake),
            accounts: Default::default(),
            leadership: crate::controller::leader::Leadership::always(),
            pools: None,
            backoff: Default::default(),
        };
        (
            Arc::new(ctx),
            ApiServerVerifier {
                handle,
                budget_status_accepted: false,
            },
        )
    }
}

/// Runs a reconcile (or several, with whatever else needs the context) to its end, then lets go
/// of the context and with it of the client, so that the verifier's [`ApiServerVerifier::done`]
/// sees the end of the requests. Returns what the reconcile and the verifier returned; a
/// verifier's failed assertion fails the scenario with its own message.
pub async fn settle<R, T>(
    ctx: Arc<Context>,
    reconcile: impl AsyncFnOnce(Arc<Context>) -> R,
    server: JoinHandle<T>,
) -> (R, T) {
    let outcome = tokio::time::timeout(GUARD, reconcile(ctx))
        .await
        .expect("the reconcile hung: a request it awaits was never answered");
    let seen = match tokio::time::timeout(GUARD, server)
        .await
        .expect("the verifier hung: something still holds the client")
    {
        Ok(seen) => seen,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    (outcome, seen)
}

// Objects.

impl TokenBudget {
    /// The budget `research` in [`NAMESPACE`] with `spec` (YAML): version 7, generation 1, no
    /// finalizer, no status.
    pub fn test(spec: &str) -> Self {
        let mut tb = TokenBudget::new("research", serde_yaml::from_str(spec).expect("a budget spec"));
        let meta = tb.meta_mut();
        meta.namespace = Some(NAMESPACE.into());
        meta.uid = Some("uid-research".into());
        meta.resource_version = Some("7".into());
        meta.generation = Some(1);
        meta.creation_timestamp = Some(Time("2026-10-01T00:00:00Z".parse().expect("a valid time")));
        tb
    }

    /// With the operator's finalizer, after `others`.
    pub fn finalized(mut self, others: &[&str]) -> Self {
        let finalizers = self.finalizers_mut();
        finalizers.extend(others.iter().map(|f| f.to_string()));
        finalizers.push(crate::enforce::FINALIZER.into());
        self
    }

    /// Being deleted.
    pub fn deleted(mut self) -> Self {
        self.meta_mut().deletion_timestamp = Some(Time(now()));
        self
    }

    pub fn with_status(mut self, status: TokenBudgetStatus) -> Self {
        self.status = Some(status);
        self
    }
}

impl BudgetBinding {
    /// The binding `summarizer` in [`NAMESPACE`], charging the Deployment `deployment` to the
    /// budget `budget`: version 3, generation 1.
    pub fn test(budget: &str, deployment: &str) -> Self {
        serde_json::from_value(json!({
            "apiVersion": "tokenbudget.io/v1alpha1",
            "kind": "BudgetBinding",
            "metadata": {
                "name": "summarizer", "namespace": NAMESPACE, "uid": "uid-summarizer",
                "resourceVersion": "3", "generation": 1, "creationTimestamp": "2026-10-01T00:00:00Z",
            },
            "spec": {
                "budgetRef": {"name": budget},
                "workloads": [{"kind": "Deployment", "name": deployment}],
            },
        }))
        .expect("a binding")
    }

    /// As the binding controller leaves a new binding: charging its budget since its creation.
    pub fn charging(self) -> Self {
        let status = BudgetBindingStatus {
            budget: Some(self.spec.budget_ref.name.clone()),
            since: Some("2026-10-01T00:00:00Z".into()),
            ..Default::default()
        };
        self.with_status(status)
    }

    pub fn with_status(mut self, status: BudgetBindingStatus) -> Self {
        self.status = Some(status);
        self
    }
}

/// A Deployment without pods (none of its ReplicaSets is in the stores), at `version`.
pub fn deployment(name: &str, replicas: i32, version: &str, annotations: &[(&str, &str)]) -> Deployment {
    let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name, "namespace": NAMESPACE, "uid": format!("uid-{name}"),
            "resourceVersion": version, "generation": 1, "annotations": annotations,
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "agent", "image": "agent"}]}},
        },
    }))
    .expect("a deployment")
}

// The verifier.

type ApiServerHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Respond = tower_test::mock::SendResponse<Response<Body>>;

/// The API server of a scenario: each method awaits the next request, asserts that it is the
/// one named (method, path, content type, the parts of the body that matter), answers it as
/// an API server would, and returns what the test may want to assert further.
pub struct ApiServerVerifier {
    handle: ApiServerHandle,
    /// Whether a status write of the budget has been accepted: until then each carries the
    /// version of the status its account resumed from as a precondition.
    budget_status_accepted: bool,
}

/// One request, read.
struct Received {
    query: Vec<(String, String)>,
    content_type: String,
    body: Value,
    respond: Respond,
}

impl Received {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn answer(self, body: Value) {
        self.respond.send_response(
            Response::builder()
                .body(Body::from(body.to_string().into_bytes()))
                .unwrap(),
        );
    }

    /// Answers with a `Status` failure, as the API server does.
    fn refuse(self, code: u16, reason: &str) {
        self.refuse_saying(code, reason, &format!("test: {reason}"));
    }

    /// Answers with a `Status` failure whose message is `message`.
    fn refuse_saying(self, code: u16, reason: &str, message: &str) {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code,
        });
        self.respond.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(body.to_string().into_bytes()))
                .unwrap(),
        );
    }
}

const BUDGETS: &str = "/apis/tokenbudget.io/v1alpha1/namespaces/agents/tokenbudgets";
const BINDINGS: &str = "/apis/tokenbudget.io/v1alpha1/namespaces/agents/budgetbindings";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/agents/deployments";
const MERGE_PATCH: &str = "application/merge-patch+json";
const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// The version an API server gives an object after a write on `version`.
fn next_version(version: &str) -> String {
    let version: u64 = version.parse().expect("the fixtures' versions are numbers");
    (version + 1).to_string()
}

impl ApiServerVerifier {
    /// The next request, asserted to be `method` on `path`: `what` names it in failures.
    async fn expect(&mut self, what: &str, method: Method, path: &str) -> Received {
        let (request, respond) =
            self.handle.next_request().await.unwrap_or_else(|| {
                panic!("expected {what} ({method} {path}), but the reconcile made no more requests")
            });
        assert_eq!(
            (request.method(), request.uri().path()),
            (&method, path),
            "expected {what}, got {} {}",
            request.method(),
            request.uri()
        );
        let query = request
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        let bytes = request.into_body().collect().await.expect("a request body").to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{what}: the body is not JSON: {e}"))
        };
        Received {
            query,
            content_type,
            body,
            respond,
        }
    }

    /// Asserts that the reconcile made no request more, once it has let go of its client.
    pub async fn done(mut self) {
        if let Some((request, _)) = self.handle.next_request().await {
            panic!(
                "the reconcile made a request the scenario does not expect: {} {}",
                request.method(),
                request.uri()
            );
        }
    }

    /// A merge patch of the budget's finalizers, conditional on the budget's version. Answers
    /// with the budget's metadata at the next version; returns the finalizers written.
    pub async fn finalizers_patched(&mut self, tb: &TokenBudget) -> Vec<String> {
        let path = format!("{BUDGETS}/{}", tb.name_any());
        let request = self.expect("the budget's finalizers", Method::PATCH, &path).await;
        assert_eq!(request.content_type, MERGE_PATCH);
        let metadata = &request.body["metadata"];
        assert_eq!(
            metadata["resourceVersion"].as_str(),
            tb.resource_version().as_deref(),
            "the finalizers are written on the version read"
        );
        let finalizers: Vec<String> =
            serde_json::from_value(metadata["finalizers"].clone()).expect("metadata.finalizers, a list");
        let mut meta = serde_json::to_value(tb.meta()).expect("metadata");
        meta["finalizers"] = json!(finalizers);
        meta["resourceVersion"] = json!(next_version(tb.resource_version().as_deref().unwrap_or("0")));
        request.answer(json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": meta}));
        finalizers
    }

    /// The read of a budget by name (the binding reconcile's); answers `budget`, or 404.
    pub async fn budget_read(&mut self, name: &str, budget: Option<&TokenBudget>) {
        let request = self
            .expect("a read of the budget", Method::GET, &format!("{BUDGETS}/{name}"))
            .await;
        match budget {
            Some(tb) => request.answer(serde_json::to_value(tb).expect("a budget")),
            None => request.refuse(404, "NotFound"),
        }
    }

    /// A server-side apply of the budget's whole status, by the operator's field manager.
    /// Answers with the budget carrying it; returns the status written.
    pub async fn budget_status_applied(&mut self, tb: &TokenBudget) -> TokenBudgetStatus {
        let request = self.budget_status(tb).await;
        let status: TokenBudgetStatus =
            serde_json::from_value(request.body["status"].clone()).expect("a TokenBudget status");
        let mut written = tb.clone().with_status(status.clone());
        written.metadata.resource_version = Some(next_version(tb.resource_version().as_deref().unwrap_or("0")));
        request.answer(serde_json::to_value(written).expect("a budget"));
        self.budget_status_accepted = true;
        status
    }

    /// The same write, refused with `code`.
    pub async fn budget_status_refused(&mut self, tb: &TokenBudget, code: u16, reason: &str) {
        self.budget_status(tb).await.refuse(code, reason);
    }

    /// The same write, refused with `code` and the server's `message`; returns the status
    /// that was not written.
    pub async fn budget_status_refused_saying(
        &mut self,
        tb: &TokenBudget,
        code: u16,
        reason: &str,
        message: &str,
    ) -> TokenBudgetStatus {
        let request = self.budget_status(tb).await;
        let status = serde_json::from_value(request.body["status"].clone()).expect("a TokenBudget status");
        request.refuse_saying(code, reason, message);
        status
    }

    /// A merge patch of the budget's `status.conditions` alone, by the operator's field
    /// manager (what reports a failed status write). Answers with the budget carrying them
    /// (`answer`: with that code instead); returns the conditions written.
    pub async fn budget_conditions_patched(&mut self, tb: &TokenBudget, answer: Option<u16>) -> Vec<Condition> {
        let path = format!("{BUDGETS}/{}/status", tb.name_any());
        let request = self.expect("the budget's conditions", Method::PATCH, &path).await;
        assert_eq!(request.content_type, MERGE_PATCH);
        assert_eq!(request.param("fieldManager"), Some(FIELD_MANAGER));
        assert_eq!(
            request
                .body
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect::<Vec<_>>()),
            Some(vec!["status"])
        );
        assert_eq!(
            request.body["status"]
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect::<Vec<_>>()),
            Some(vec!["conditions"]),
            "only the conditions: {}",
            request.body
        );
        let conditions: Vec<Condition> =
            serde_json::from_value(request.body["status"]["conditions"].clone()).expect("conditions, a list");
        match answer {
            Some(code) => request.refuse(code, "InternalError"),
            None => {
                let mut status = tb.status.clone().unwrap_or_default();
                status.conditions = conditions.clone();
                let mut written = tb.clone().with_status(status);
                written.metadata.resource_version = Some(next_version(tb.resource_version().as_deref().unwrap_or("0")));
                request.answer(serde_json::to_value(written).expect("a budget"));
            }
        }
        conditions
    }

    async fn budget_status(&mut self, tb: &TokenBudget) -> Received {
        let path = format!("{BUDGETS}/{}/status", tb.name_any());
        let mut request = self.expect("the budget's status", Method::PATCH, &path).await;
        let precondition = request.body.as_object_mut().and_then(|o| o.remove("metadata"));
        if self.budget_status_accepted {
            assert_eq!(precondition, None, "once a status was accepted, no precondition");
        } else {
            let version = precondition.as_ref().and_then(|m| m["resourceVersion"].as_str());
            assert!(
                version.is_some(),
                "the first status written from an account resumed from a status is conditional on its version: {precondition:?}"
            );
        }
        assert_server_side_apply(&request, "tokenbudget.io/v1alpha1", "TokenBudget");
        request
    }

    /// A server-side apply of the binding's whole status; returns it. A status that sets
    /// `since` anew is written only if `bb` is still the latest version of the binding.
    pub async fn binding_status_applied(&mut self, bb: &BudgetBinding) -> BudgetBindingStatus {
        let path = format!("{BINDINGS}/{}/status", bb.name_any());
        let mut request = self.expect("the binding's status", Method::PATCH, &path).await;
        let old_since = bb.status.as_ref().and_then(|s| s.since.as_deref());
        if request.body["status"]["since"].as_str() != old_since {
            let precondition = request.body.as_object_mut().and_then(|o| o.remove("metadata"));
            assert_eq!(
                precondition,
                Some(json!({"resourceVersion": bb.resource_version()})),
                "a new since, written on the binding's version only"
            );
        }
        assert_server_side_apply(&request, "tokenbudget.io/v1alpha1", "BudgetBinding");
        let status: BudgetBindingStatus =
            serde_json::from_value(request.body["status"].clone()).expect("a BudgetBinding status");
        request.answer(serde_json::to_value(bb.clone().with_status(status.clone())).expect("a binding"));
        status
    }

    /// A merge patch of a Deployment's annotations, conditional on `version`. Answers with the
    /// Deployment at the next version; returns the annotations patched (`None`: removed).
    pub async fn deployment_annotated(
        &mut self,
        deployment: &Deployment,
        version: &str,
    ) -> BTreeMap<String, Option<String>> {
        let request = self.deployment_patch(deployment, version).await;
        let patch: BTreeMap<String, Option<String>> =
            serde_json::from_value(request.body["metadata"]["annotations"].clone()).expect("annotations, a map");
        let mut answer = deployment.clone();
        let annotations = answer.annotations_mut();
        for (key, value) in &patch {
            match value {
                Some(v) => annotations.insert(key.clone(), v.clone()),
                None => annotations.remove(key),
            };
        }
        answer.metadata.resource_version = Some(next_version(version));
        request.answer(serde_json::to_value(answer).expect("a deployment"));
        patch
    }

    /// The same write, refused with 409: someone changed the Deployment since `version`.
    pub async fn deployment_annotation_conflict(&mut self, deployment: &Deployment, version: &str) {
        self.deployment_patch(deployment, version).await.refuse(409, "Conflict");
    }

    async fn deployment_patch(&mut self, deployment: &Deployment, version: &str) -> Received {
        let path = format!("{DEPLOYMENTS}/{}", deployment.name_any());
        let request = self.expect("the Deployment's annotations", Method::PATCH, &path).await;
        assert_eq!(request.content_type, MERGE_PATCH);
        assert_eq!(
            request.body["metadata"]["resourceVersion"], version,
            "conditional on the version the decision saw"
        );
        assert_eq!(
            request
                .body
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect::<Vec<_>>()),
            Some(vec!["metadata"]),
            "an annotation patch changes nothing but metadata"
        );
        request
    }

    /// A merge patch of a Deployment's scale subresource, conditional on `version`. Answers
    /// with the Scale at the next version; returns the replicas asked for.
    pub async fn deployment_scaled(&mut self, deployment: &Deployment, version: &str) -> i64 {
        let name = deployment.name_any();
        let request = self
            .expect(
                "the Deployment's scale",
                Method::PATCH,
                &format!("{DEPLOYMENTS}/{name}/scale"),
            )
            .await;
        assert_eq!(request.content_type, MERGE_PATCH);
        assert_eq!(
            request.body["metadata"]["resourceVersion"], version,
            "conditional on the version the previous write left"
        );
        let replicas = request.body["spec"]["replicas"].as_i64().expect("spec.replicas");
        let current = deployment.spec.replicas.unwrap_or(1);
        request.answer(json!({
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": name, "namespace": NAMESPACE, "resourceVersion": next_version(version)},
            "spec": {"replicas": replicas},
            "status": {"replicas": current, "selector": format!("app={name}")},
        }));
        replicas
    }

    /// A read of the budget's ResourceQuota, answered 404: there is none.
    pub async fn no_quota_read(&mut self, budget: &str) {
        let path = format!("/api/v1/namespaces/{NAMESPACE}/resourcequotas/tokenbudget-{budget}");
        self.expect("a read of the budget's quota", Method::GET, &path)
            .await
            .refuse(404, "NotFound");
    }

    /// An Event (events.k8s.io/v1) with `reason`, created in the namespace. Answers with it;
    /// returns it.
    pub async fn event_posted(&mut self, reason: &str) -> Value {
        let path = format!("/apis/events.k8s.io/v1/namespaces/{NAMESPACE}/events");
        let request = self.expect(&format!("an Event {reason}"), Method::POST, &path).await;
        assert_eq!(request.body["reason"], reason, "the Event's reason");
        assert_eq!(request.body["reportingController"], FIELD_MANAGER);
        let event = request.body.clone();
        request.answer(event.clone());
        event
    }
}

/// A server-side apply of `kind`'s status, forced, by the operator's field manager.
fn assert_server_side_apply(request: &Received, api_version: &str, kind: &str) {
    assert_eq!(
        request.content_type, APPLY_PATCH,
        "status is written by server-side apply"
    );
    assert_eq!(request.param("fieldManager"), Some(FIELD_MANAGER));
    assert_eq!(request.param("force"), Some("true"));
    assert_eq!(
        (&request.body["apiVersion"], &request.body["kind"]),
        (&json!(api_version), &json!(kind))
    );
    let mut fields: Vec<&str> = request
        .body
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["apiVersion", "kind", "status"],
        "only apiVersion, kind and status: {}",
        request.body
    );
}
