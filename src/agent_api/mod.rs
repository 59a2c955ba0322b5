//! The agent API: one cheap call for an agent to learn what it may still spend.
//!
//! `GET /v1/namespaces/{namespace}/tokenbudgets/{name}[?label=<label>&subject=<value>]`
//! answers a budget's standing (and a subject's) as a small JSON document, on a port of its
//! own. Why an endpoint of the operator rather than the TokenBudget itself (docs/agents.md):
//! the budget's status carries the accounting bookkeeping and history, tens to hundreds of KB,
//! which agents asking before every call would fetch from the API server each time; here the
//! answer comes from the operator's informer cache, at most one accounting cycle old, a few
//! hundred bytes, for any subject.
//!
//! The caller sends its pod's projected ServiceAccount token (audience `tokenbudget.io`);
//! [`review`] checks it with a TokenReview and asks a SubjectAccessReview whether that user may
//! `get` that budget, so RBAC decides exactly as for reading the object. Every replica answers,
//! leader or standby: each keeps the same warm cache.

pub mod answer;
pub mod review;

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Bytes,
    header::{self, HeaderMap, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use kube::{
    core::DeserializeGuard,
    runtime::reflector::{ObjectRef, Store},
};
use serde::Serialize;
use tokio::net::TcpListener;

use self::{
    answer::Status,
    review::{Reviewer, Reviews},
};
use crate::api::TokenBudget;

/// The longest a request may take, reviews included; past it the caller gets a 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read (a projected token is about 1 KB): hyper's smallest buffer.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// The most connections served at once; the next ones wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long accepting pauses after it failed.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Where the agent API is served, and the audience its callers' tokens must be for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub bind_address: std::net::SocketAddr,
    pub audience: String,
}

/// The agent API of one operator replica.
pub struct AgentApi<R> {
    /// The budget controller's store: the answers come from here, never from an API call.
    pub budgets: Store<DeserializeGuard<TokenBudget>>,
    /// Set once the controllers' caches have synced: until then a budget may look missing.
    pub ready: Arc<AtomicBool>,
    pub reviews: Reviews<R>,
}

impl<R: Reviewer> AgentApi<R> {
    /// The answer to one request. The request's body, if any, is never read.
    pub async fn respond(&self, method: &Method, uri: &hyper::Uri, headers: &HeaderMap) -> Response<Full<Bytes>> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.answer(method, uri, headers)).await {
            Ok(Ok(response)) => response,
            Ok(Err(status)) => failure(&status),
            Err(_) => failure(&Status::unavailable("timed out checking the caller")),
        }
    }

    async fn answer(
        &self,
        method: &Method,
        uri: &hyper::Uri,
        headers: &HeaderMap,
    ) -> Result<Response<Full<Bytes>>, Status> {
        if method != Method::GET {
            return Err(Status::method_not_allowed(method.as_str()));
        }
        let (namespace, name) = answer::parse_path(uri.path()).ok_or_else(Status::path_not_found)?;
        let subject = answer::parse_query(uri.query()).map_err(|e| Status::bad_request(e.to_string()))?;
        let token = bearer_token(headers).ok_or_else(|| {
            Status::unauthorized("a bearer token is required: the pod's projected ServiceAccount token")
        })?;
        if !self.ready.load(Ordering::Relaxed) {
            return Err(Status::unavailable("the operator's caches have not synced yet"));
        }
        self.reviews.check(token, namespace, name).await?;
        let key = ObjectRef::new(name).within(namespace);
        let budget = self.budgets.get(&key).ok_or_else(|| Status::budget_not_found(name))?;
        let budget = budget
            .0
            .as_ref()
            .map_err(|e| Status::internal(format!("the budget cannot be read: {e}")))?;
        let subject = subject.as_ref().map(|(l, v)| (l.as_str(), v.as_str()));
        let standing = answer::standing(budget, subject).map_err(|e| Status::of_standing(&e, name))?;
        Ok(json(StatusCode::OK, &standing))
    }
}

/// The token of `Authorization: Bearer <token>`, if that is what the header holds.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // The standing changes with every accounting cycle: no cache between agent and operator.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn failure(status: &Status) -> Response<Full<Bytes>> {
    let code = StatusCode::from_u16(status.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json(code, status);
    let headers = response.headers_mut();
    match code {
        StatusCode::UNAUTHORIZED => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    response
}

/// Serves the agent API on `listener` until `shutdown` resolves.
pub async fn serve<R: Reviewer>(listener: TcpListener, api: AgentApi<R>, shutdown: impl Future<Output = ()>) {
    serve_at_most(listener, api, shutdown, MAX_CONNECTIONS).await;
}

/// [`serve`], with at most `max_connections` connections at once.
async fn serve_at_most<R: Reviewer>(
    listener: TcpListener,
    api: AgentApi<R>,
    shutdown: impl Future<Output = ()>,
    max_connections: usize,
) {
    let api = Arc::new(api);
    let connections = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A connection is accepted only with a place for it: the others wait in the listen
        // backlog, and the operator's memory and file descriptors stay bounded whoever
        // connects (unauthenticated callers included).
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => return,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors, say: retrying at once would spin.
                    tracing::warn!(error = %e, "accepting a connection to the agent API failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let api = api.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(api.respond(req.method(), req.uri(), req.headers()).await) }
            });
            if let Err(e) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "agent API connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::{reflector, watcher::Event};
    use serde_json::{Value, json};

    use super::{
        review::{Authentication, Authorization, ReviewError, User},
        *,
    };
    use crate::clock::ManualClock;

    /// Token `t-<user>` is `<user>`; `alice` may read everything in `agents`, nobody else
    /// anything; token `down` finds the API server unavailable.
    struct Fake;

    impl Reviewer for Fake {
        async fn authenticate(&self, token: &str) -> Result<Authentication, ReviewError> {
            if token == "down" {
                return Err(ReviewError::Unavailable("connection refused".into()));
            }
            Ok(match token.strip_prefix("t-") {
                Some(user) => Authentication::Authenticated(Arc::new(User {
                    username: user.into(),
                    ..Default::default()
                })),
                None => Authentication::Rejected,
            })
        }

        async fn authorize(&self, user: &User, namespace: &str, _: &str) -> Result<Authorization, ReviewError> {
            Ok(if user.username == "alice" && namespace == "agents" {
                Authorization::Allowed
            } else {
                Authorization::Denied(String::new())
            })
        }
    }

    const BUDGET: &str = "
metadata: {name: research, namespace: agents}
spec:
  limits: {tokens: 1000}
  currency: USD
  period: {reset: Daily}
  subjects: [{label: end_user, limits: {tokens: 100}}]
status: {phase: Active, used: {tokens: 250}, remainingTokens: 750, percentUsed: 25}
";

    fn api(ready: bool) -> AgentApi<Fake> {
        let (store, mut writer) = reflector::store::<DeserializeGuard<TokenBudget>>();
        let budget: TokenBudget = serde_yaml::from_str(BUDGET).unwrap();
        writer.apply_watcher_event(&Event::Apply(DeserializeGuard(Ok(budget))));
        let clock = ManualClock::new("2026-12-01T10:00:00Z".parse().unwrap());
        AgentApi {
            budgets: store,
            ready: Arc::new(AtomicBool::new(ready)),
            reviews: Reviews::new(Fake, Arc::new(clock), review::DEFAULT_AUDIENCE),
        }
    }

    async fn get(api: &AgentApi<Fake>, method: Method, uri: &str, token: Option<&str>) -> (u16, Value) {
        use http_body_util::BodyExt;
        let mut headers = HeaderMap::new();
        if let Some(token) = token {
            headers.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        }
        let response = api.respond(&method, &uri.parse().unwrap(), &headers).await;
        let code = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (code, serde_json::from_slice(&body).expect("a JSON body"))
    }

    const PATH: &str = "/v1/namespaces/agents/tokenbudgets/research";

    #[tokio::test]
    async fn an_allowed_agent_reads_its_budget_and_a_subject() {
        let api = api(true);
        let (code, body) = get(&api, Method::GET, PATH, Some("t-alice")).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            body,
            json!({"namespace": "agents", "name": "research", "phase": "Active",
                   "limits": {"tokens": 1000, "currency": "USD"}, "used": {"tokens": 250},
                   "remainingTokens": 750, "percentUsed": 25})
        );
        let (code, body) = get(
            &api,
            Method::GET,
            &format!("{PATH}?label=end_user&subject=bob%40example.com"),
            Some("t-alice"),
        )
        .await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            body["subject"],
            json!({"label": "end_user", "value": "bob@example.com", "tokens": 0,
                   "remainingTokens": 100, "exhausted": false, "tracked": true})
        );
    }

    #[tokio::test]
    async fn each_failure_has_its_code_and_reason() {
        let api = api(true);
        let other = "/v1/namespaces/other/tokenbudgets/research";
        let missing = "/v1/namespaces/agents/tokenbudgets/nope";
        let label = format!("{PATH}?label=session&subject=s1");
        for (method, uri, token, code, reason) in [
            (Method::GET, PATH, None, 401, "Unauthorized"),
            (Method::GET, PATH, Some("garbage"), 401, "Unauthorized"),
            (Method::GET, PATH, Some("t-bob"), 403, "Forbidden"),
            (Method::GET, other, Some("t-alice"), 403, "Forbidden"),
            (Method::GET, missing, Some("t-alice"), 404, "NotFound"),
            (Method::GET, &label, Some("t-alice"), 404, "NotFound"),
            (Method::GET, "/v1/namespaces/agents", Some("t-alice"), 404, "NotFound"),
            (
                Method::GET,
                &format!("{PATH}?label=x"),
                Some("t-alice"),
                400,
                "BadRequest",
            ),
            (Method::POST, PATH, Some("t-alice"), 405, "MethodNotAllowed"),
            (Method::GET, PATH, Some("down"), 503, "ServiceUnavailable"),
        ] {
            let (got, body) = get(&api, method.clone(), uri, token).await;
            assert_eq!(
                (
                    got,
                    body["reason"].as_str(),
                    body["kind"].as_str(),
                    body["code"].as_u64()
                ),
                (code, Some(reason), Some("Status"), Some(u64::from(code))),
                "{method} {uri} with {token:?}: {body}"
            );
        }
        let (_, body) = get(&api, Method::GET, missing, Some("t-alice")).await;
        assert_eq!(body["message"], "tokenbudgets.tokenbudget.io \"nope\" not found");
    }

    #[tokio::test]
    async fn nothing_is_answered_before_the_caches_have_synced() {
        let (code, body) = get(&api(false), Method::GET, PATH, Some("t-alice")).await;
        assert_eq!((code, body["reason"].as_str()), (503, Some("ServiceUnavailable")));
    }

    /// Connections are bounded: idle ones (a slowloris, a flood of unauthenticated callers)
    /// hold at most `max_connections` places, each for at most the header read timeout, and
    /// the next connection is served once a place is free, never by an unbounded task.
    #[tokio::test]
    async fn connections_past_the_limit_wait_for_a_place() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve_at_most(listener, api(true), std::future::pending(), 2));
        let idle = [
            tokio::net::TcpStream::connect(address).await.unwrap(),
            tokio::net::TcpStream::connect(address).await.unwrap(),
        ];
        let mut third = tokio::net::TcpStream::connect(address).await.unwrap();
        third
            .write_all(
                format!("GET {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t-alice\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = [0u8; 12];
        let waited = tokio::time::timeout(Duration::from_millis(500), third.read_exact(&mut answer)).await;
        assert!(waited.is_err(), "answered past the limit: {waited:?}");
        drop(idle);
        tokio::time::timeout(Duration::from_secs(3), third.read_exact(&mut answer))
            .await
            .expect("served once a place is free")
            .unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200");
    }

    #[test]
    fn the_bearer_token_is_read_from_the_authorization_header() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            bearer_token(&headers).map(str::to_owned)
        };
        assert_eq!(with("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(with("bearer abc ").as_deref(), Some("abc"));
        assert_eq!(with("Basic abc"), None);
        assert_eq!(with("Bearer "), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
