//! Who is asking, and may they read this budget: the caller's token checked by a TokenReview
//! (for the agent API's own audience), then a SubjectAccessReview of `get` on the budget, so
//! that Kubernetes RBAC decides exactly as for reading the object itself. The answers are
//! cached for a short while, keyed by a SHA-256 of the token (never the token itself), so that
//! an agent asking before each call costs the API server about one review per TTL.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use jiff::Timestamp;
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};
use tokio::sync::Semaphore;

use super::answer::Status;
use crate::clock::Clock;

/// The audience the agents' projected tokens are minted for, unless `--agent-api-audience`
/// says otherwise. Not the API server's: a token leaked from the agent API is useless there.
pub const DEFAULT_AUDIENCE: &str = "tokenbudget.io";

/// How long an authenticated token and an allowed `get` are trusted without asking again.
pub const ALLOWED_TTL: Duration = Duration::from_secs(60);
/// How long a rejected token and a denied `get` are: shorter, so that a RoleBinding just
/// created takes effect soon.
pub const DENIED_TTL: Duration = Duration::from_secs(10);
/// The most answers each cache keeps; past it the oldest go first.
pub const CACHE_ENTRIES: usize = 10_000;
/// The most reviews in flight to the API server at once, over all callers.
pub const MAX_REVIEWS_IN_FLIGHT: usize = 32;

/// Who the token belongs to, as the TokenReview says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    pub username: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// A TokenReview's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    Authenticated(Arc<User>),
    /// Invalid, expired, or not for our audience.
    Rejected,
}

/// A SubjectAccessReview's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    Allowed,
    /// With the authorizer's reason (often empty).
    Denied(String),
}

/// A review that could not be made: no verdict, nothing cached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The API server did not answer, or answered 429 or 5xx: the caller may retry (503).
    #[error("the API server is unavailable: {0}")]
    Unavailable(String),
    /// It refused the review itself (the operator lacks `create` on the review kinds, 403):
    /// a misconfiguration (500).
    #[error("the review failed: {0}")]
    Failed(String),
}

/// Makes the reviews. [`KubeReviewer`] asks the API server; tests use a fake.
pub trait Reviewer: Send + Sync + 'static {
    fn authenticate(&self, token: &str) -> impl Future<Output = Result<Authentication, ReviewError>> + Send;
    fn authorize(
        &self,
        user: &User,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Authorization, ReviewError>> + Send;
}

/// The reviews of the API server, with the operator's own (unfenced: a standby answers too)
/// client.
pub struct KubeReviewer {
    token_reviews: Api<TokenReview>,
    access_reviews: Api<SubjectAccessReview>,
    audience: String,
}

impl KubeReviewer {
    pub fn new(client: Client, audience: impl Into<String>) -> Self {
        Self {
            token_reviews: Api::all(client.clone()),
            access_reviews: Api::all(client),
            audience: audience.into(),
        }
    }
}

/// A failed API call as a [`ReviewError`]: unavailable unless the API server answered and
/// refused (then retrying does not help).
fn review_error(e: kube::Error) -> ReviewError {
    match &e {
        kube::Error::Api(status) if status.code == 429 || status.code >= 500 => ReviewError::Unavailable(e.to_string()),
        kube::Error::Api(_) => ReviewError::Failed(e.to_string()),
        _ => ReviewError::Unavailable(e.to_string()),
    }
}

impl Reviewer for KubeReviewer {
    async fn authenticate(&self, token: &str) -> Result<Authentication, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.into(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let reviewed = self
            .token_reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(review_error)?;
        Ok(verdict(&reviewed, &self.audience))
    }

    async fn authorize(&self, user: &User, namespace: &str, name: &str) -> Result<Authorization, ReviewError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.username.clone()),
                uid: user.uid.clone(),
                groups: Some(user.groups.clone()),
                extra: Some(user.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(crate::api::GROUP.into()),
                    resource: Some("tokenbudgets".into()),
                    verb: Some("get".into()),
                    namespace: Some(namespace.into()),
                    name: Some(name.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = self
            .access_reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(review_error)?;
        let status = reviewed.status.unwrap_or_default();
        Ok(if status.allowed && status.denied != Some(true) {
            Authorization::Allowed
        } else {
            Authorization::Denied(status.reason.unwrap_or_default())
        })
    }
}

/// A TokenReview's answer: authenticated, with a user, and for `audience`. An API server that
/// does not support audiences answers without `status.audiences`: rejected, since the token
/// could then be one for the API server itself.
fn verdict(review: &TokenReview, audience: &str) -> Authentication {
    let Some(status) = &review.status else {
        return Authentication::Rejected;
    };
    let for_us = status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == audience));
    match (&status.user, status.authenticated) {
        (Some(user), Some(true)) if for_us && user.username.as_deref().is_some_and(|u| !u.is_empty()) => {
            Authentication::Authenticated(Arc::new(User {
                username: user.username.clone().unwrap_or_default(),
                uid: user.uid.clone(),
                groups: user.groups.clone().unwrap_or_default(),
                extra: user.extra.clone().unwrap_or_default(),
            }))
        }
        _ => Authentication::Rejected,
    }
}

/// A SHA-256 digest: what the caches are keyed by.
type Key = [u8; 32];

fn digest(parts: &[&[u8]]) -> Key {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        // Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    let mut key = [0; 32];
    key.copy_from_slice(context.finish().as_ref());
    key
}

/// Answers kept until they expire, at most `capacity` of them: past it the oldest inserted
/// goes first. Expired answers are dropped when looked up or when they are the oldest.
struct TtlCache<V> {
    capacity: usize,
    entries: HashMap<Key, (V, Timestamp, u64)>,
    /// Keys in the order inserted, with the insertion's number: an entry replaced since has a
    /// newer number, and its old place here is skipped.
    order: VecDeque<(Key, u64)>,
    inserted: u64,
}

impl<V: Clone> TtlCache<V> {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
            inserted: 0,
        }
    }

    fn get(&mut self, key: &Key, now: Timestamp) -> Option<V> {
        match self.entries.get(key) {
            Some((value, expires, _)) if now < *expires => Some(value.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, key: Key, value: V, expires: Timestamp) {
        self.inserted += 1;
        self.entries.insert(key, (value, expires, self.inserted));
        self.order.push_back((key, self.inserted));
        while self.entries.len() > self.capacity || self.order.len() > 2 * self.capacity.max(1) {
            let Some((oldest, number)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&oldest).is_some_and(|(_, _, n)| *n == number) {
                self.entries.remove(&oldest);
            }
        }
    }
}

/// Why a caller gets no answer: the Status to send.
pub type Refusal = Status;

/// The reviews of one agent API, cached, and at most [`MAX_REVIEWS_IN_FLIGHT`] in flight.
pub struct Reviews<R> {
    reviewer: R,
    clock: Arc<dyn Clock>,
    authentications: Mutex<TtlCache<Authentication>>,
    authorizations: Mutex<TtlCache<Authorization>>,
    in_flight: Semaphore,
    audience: String,
}

impl<R: Reviewer> Reviews<R> {
    pub fn new(reviewer: R, clock: Arc<dyn Clock>, audience: impl Into<String>) -> Self {
        Self {
            reviewer,
            clock,
            authentications: Mutex::new(TtlCache::new(CACHE_ENTRIES)),
            authorizations: Mutex::new(TtlCache::new(CACHE_ENTRIES)),
            in_flight: Semaphore::new(MAX_REVIEWS_IN_FLIGHT),
            audience: audience.into(),
        }
    }

    /// The user of `token` if it may `get` the budget `namespace/name`, or the Status that
    /// refuses it: 401, 403, or 503/500 when a review could not be made.
    pub async fn check(&self, token: &str, namespace: &str, name: &str) -> Result<Arc<User>, Refusal> {
        let token_key = digest(&[token.as_bytes()]);
        let authentication = match self.cached(&self.authentications, &token_key) {
            Some(a) => a,
            None => {
                let a = self.review(self.reviewer.authenticate(token)).await?;
                let ttl = if matches!(a, Authentication::Authenticated(_)) {
                    ALLOWED_TTL
                } else {
                    DENIED_TTL
                };
                self.remember(&self.authentications, token_key, a.clone(), ttl);
                a
            }
        };
        let Authentication::Authenticated(user) = authentication else {
            return Err(Status::unauthorized(format!(
                "the bearer token is invalid, expired, or not for the audience {:?}",
                self.audience
            )));
        };
        let access_key = digest(&[token.as_bytes(), namespace.as_bytes(), name.as_bytes()]);
        let authorization = match self.cached(&self.authorizations, &access_key) {
            Some(a) => a,
            None => {
                let a = self.review(self.reviewer.authorize(&user, namespace, name)).await?;
                let ttl = if a == Authorization::Allowed {
                    ALLOWED_TTL
                } else {
                    DENIED_TTL
                };
                self.remember(&self.authorizations, access_key, a.clone(), ttl);
                a
            }
        };
        match authorization {
            Authorization::Allowed => Ok(user),
            Authorization::Denied(reason) => Err(Status::forbidden(&user.username, namespace, name, &reason)),
        }
    }

    fn cached<V: Clone>(&self, cache: &Mutex<TtlCache<V>>, key: &Key) -> Option<V> {
        let now = self.clock.now();
        cache.lock().unwrap_or_else(|e| e.into_inner()).get(key, now)
    }

    fn remember<V: Clone>(&self, cache: &Mutex<TtlCache<V>>, key: Key, value: V, ttl: Duration) {
        let expires = self.clock.now().saturating_add(ttl).unwrap_or(Timestamp::MAX);
        cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, value, expires);
    }

    /// One review, once a slot is free.
    async fn review<T>(&self, review: impl Future<Output = Result<T, ReviewError>>) -> Result<T, Refusal> {
        let _slot = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| Status::unavailable("shutting down"))?;
        review.await.map_err(|e| match e {
            ReviewError::Unavailable(_) => Status::unavailable(format!("cannot check the caller's token: {e}")),
            ReviewError::Failed(_) => Status::internal(format!("cannot check the caller's token: {e}")),
        })
    }

    /// How many answers each cache holds: (authentications, authorizations).
    pub fn cached_answers(&self) -> (usize, usize) {
        fn len<V>(cache: &Mutex<TtlCache<V>>) -> usize {
            cache.lock().unwrap_or_else(|e| e.into_inner()).entries.len()
        }
        (len(&self.authentications), len(&self.authorizations))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::{Request, Response};
    use http_body_util::BodyExt;
    use jiff::SignedDuration;
    use kube::client::Body;

    use super::*;
    use crate::clock::ManualClock;

    /// Tokens `good-<user>` are authenticated as `<user>`; `<user>` may read the budgets whose
    /// name begins with its name. Counts the reviews it makes.
    #[derive(Default)]
    struct Fake {
        authentications: AtomicUsize,
        authorizations: AtomicUsize,
        down: std::sync::atomic::AtomicBool,
    }

    impl Reviewer for Arc<Fake> {
        async fn authenticate(&self, token: &str) -> Result<Authentication, ReviewError> {
            self.authentications.fetch_add(1, Ordering::Relaxed);
            if self.down.load(Ordering::Relaxed) {
                return Err(ReviewError::Unavailable("connection refused".into()));
            }
            Ok(match token.strip_prefix("good-") {
                Some(user) => Authentication::Authenticated(Arc::new(User {
                    username: user.into(),
                    ..Default::default()
                })),
                None => Authentication::Rejected,
            })
        }

        async fn authorize(&self, user: &User, _: &str, name: &str) -> Result<Authorization, ReviewError> {
            self.authorizations.fetch_add(1, Ordering::Relaxed);
            Ok(if name.starts_with(&user.username) {
                Authorization::Allowed
            } else {
                Authorization::Denied(String::new())
            })
        }
    }

    fn reviews() -> (Reviews<Arc<Fake>>, Arc<Fake>, ManualClock) {
        let fake = Arc::new(Fake::default());
        let clock = ManualClock::new("2026-12-01T10:00:00Z".parse().unwrap());
        (
            Reviews::new(fake.clone(), Arc::new(clock.clone()), DEFAULT_AUDIENCE),
            fake,
            clock,
        )
    }

    fn counts(fake: &Fake) -> (usize, usize) {
        (
            fake.authentications.load(Ordering::Relaxed),
            fake.authorizations.load(Ordering::Relaxed),
        )
    }

    #[tokio::test]
    async fn an_allowed_caller_is_reviewed_once_per_ttl() {
        let (reviews, fake, clock) = reviews();
        for _ in 0..100 {
            let user = reviews.check("good-alice", "agents", "alice-budget").await.unwrap();
            assert_eq!(user.username, "alice");
        }
        assert_eq!(counts(&fake), (1, 1));
        clock.advance(SignedDuration::from_secs(59));
        reviews.check("good-alice", "agents", "alice-budget").await.unwrap();
        assert_eq!(counts(&fake), (1, 1), "still cached at 59 s");
        clock.advance(SignedDuration::from_secs(1));
        reviews.check("good-alice", "agents", "alice-budget").await.unwrap();
        assert_eq!(counts(&fake), (2, 2), "asked again at 60 s");
        // Another budget is another question; the token's review still holds.
        reviews.check("good-alice", "agents", "alice-other").await.unwrap();
        assert_eq!(counts(&fake), (2, 3));
    }

    #[tokio::test]
    async fn refusals_are_cached_for_less_time() {
        let (reviews, fake, clock) = reviews();
        let refused = reviews.check("bad", "agents", "alice-budget").await.unwrap_err();
        assert_eq!((refused.code, refused.reason), (401, "Unauthorized"));
        assert!(refused.message.contains("\"tokenbudget.io\""), "{}", refused.message);
        let denied = reviews.check("good-bob", "agents", "alice-budget").await.unwrap_err();
        assert_eq!((denied.code, denied.reason), (403, "Forbidden"));
        assert!(denied.message.contains("User \"bob\" cannot get"), "{}", denied.message);
        reviews.check("bad", "agents", "alice-budget").await.unwrap_err();
        reviews.check("good-bob", "agents", "alice-budget").await.unwrap_err();
        assert_eq!(counts(&fake), (2, 1));
        clock.advance(SignedDuration::from_secs(10));
        reviews.check("bad", "agents", "alice-budget").await.unwrap_err();
        reviews.check("good-bob", "agents", "alice-budget").await.unwrap_err();
        // bob's token was allowed in (60 s), his access denied (10 s).
        assert_eq!(counts(&fake), (3, 2));
    }

    #[tokio::test]
    async fn an_unavailable_api_server_is_503_and_is_not_remembered() {
        let (reviews, fake, _) = reviews();
        fake.down.store(true, Ordering::Relaxed);
        let refused = reviews.check("good-alice", "agents", "alice-budget").await.unwrap_err();
        assert_eq!((refused.code, refused.reason), (503, "ServiceUnavailable"));
        fake.down.store(false, Ordering::Relaxed);
        reviews.check("good-alice", "agents", "alice-budget").await.unwrap();
        assert_eq!(counts(&fake), (2, 1));
    }

    #[test]
    fn the_cache_keeps_at_most_its_capacity_and_drops_the_oldest() {
        let mut cache = TtlCache::new(3);
        let now: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let later = now.saturating_add(SignedDuration::from_secs(60)).unwrap();
        let key = |i: u8| digest(&[&[i]]);
        for i in 0..5 {
            cache.insert(key(i), i, later);
        }
        assert_eq!(cache.entries.len(), 3);
        assert_eq!(
            (0..5).map(|i| cache.get(&key(i), now)).collect::<Vec<_>>(),
            [None, None, Some(2), Some(3), Some(4)]
        );
        // Replacing an entry makes it the newest.
        cache.insert(key(2), 20, later);
        cache.insert(key(5), 5, later);
        assert_eq!(cache.get(&key(2), now), Some(20));
        assert_eq!(cache.get(&key(3), now), None);
        assert!(cache.order.len() <= 6, "the order queue stays bounded too");
        assert_eq!(cache.get(&key(5), later), None, "expired at its time");
        for i in 0..100 {
            cache.insert(key(i), i, later);
        }
        assert!(cache.entries.len() <= 3 && cache.order.len() <= 6);
    }

    #[test]
    fn keys_are_digests_that_do_not_run_parts_together() {
        assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
        assert_eq!(digest(&[b"token"]), digest(&[b"token"]));
    }

    fn token_review(authenticated: bool, audiences: &[&str]) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {},
            "status": {"authenticated": authenticated, "audiences": audiences,
                       "user": {"username": "system:serviceaccount:agents:bot", "uid": "u1",
                                "groups": ["system:serviceaccounts", "system:serviceaccounts:agents"],
                                "extra": {"authentication.kubernetes.io/pod-name": ["bot-1"]}}}
        })
    }

    /// The real reviewer against a mocked API server: what it sends, and how each answer reads.
    #[tokio::test]
    async fn the_kube_reviewer_asks_for_our_audience_and_reads_the_answers() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut respond = async |want_path: &str, status: u16, body: serde_json::Value| {
                let (request, send) = handle.next_request().await.expect("a review");
                assert_eq!(request.method(), "POST");
                assert_eq!(request.uri().path(), want_path);
                let sent = request.into_body().collect().await.unwrap().to_bytes();
                let sent: serde_json::Value = serde_json::from_slice(&sent).unwrap();
                send.send_response(
                    Response::builder()
                        .status(status)
                        .body(Body::from(body.to_string().into_bytes()))
                        .unwrap(),
                );
                sent
            };
            const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
            const ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
            let sent = respond(TOKEN_REVIEWS, 201, token_review(true, &["tokenbudget.io"])).await;
            assert_eq!(
                sent["spec"],
                serde_json::json!({"token": "t1", "audiences": ["tokenbudget.io"]})
            );
            // Authenticated, but for another audience (the API server's): rejected.
            respond(
                TOKEN_REVIEWS,
                201,
                token_review(true, &["https://kubernetes.default.svc"]),
            )
            .await;
            respond(TOKEN_REVIEWS, 201, token_review(false, &[])).await;
            let sent = respond(
                ACCESS_REVIEWS,
                201,
                serde_json::json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                    "spec": {}, "status": {"allowed": false, "reason": "no RBAC policy matched"}}),
            )
            .await;
            assert_eq!(
                sent["spec"],
                serde_json::json!({
                    "user": "system:serviceaccount:agents:bot", "uid": "u1",
                    "groups": ["system:serviceaccounts", "system:serviceaccounts:agents"],
                    "extra": {"authentication.kubernetes.io/pod-name": ["bot-1"]},
                    "resourceAttributes": {"group": "tokenbudget.io", "resource": "tokenbudgets",
                        "verb": "get", "namespace": "agents", "name": "research"}
                })
            );
            let unavailable = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "etcdserver: request timed out", "reason": "ServiceUnavailable", "code": 503});
            respond(TOKEN_REVIEWS, 503, unavailable).await;
            let forbidden = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "tokenreviews is forbidden", "reason": "Forbidden", "code": 403});
            respond(TOKEN_REVIEWS, 403, forbidden).await;
        });
        let reviewer = KubeReviewer::new(Client::new(service, "default"), DEFAULT_AUDIENCE);
        let Authentication::Authenticated(user) = reviewer.authenticate("t1").await.unwrap() else {
            panic!("authenticated")
        };
        assert_eq!(user.username, "system:serviceaccount:agents:bot");
        assert_eq!(reviewer.authenticate("t2").await, Ok(Authentication::Rejected));
        assert_eq!(reviewer.authenticate("t3").await, Ok(Authentication::Rejected));
        assert_eq!(
            reviewer.authorize(&user, "agents", "research").await,
            Ok(Authorization::Denied("no RBAC policy matched".into()))
        );
        assert!(matches!(
            reviewer.authenticate("t4").await,
            Err(ReviewError::Unavailable(_))
        ));
        assert!(matches!(reviewer.authenticate("t5").await, Err(ReviewError::Failed(_))));
        server.await.unwrap();
    }

    /// No API server at all (the connection fails): 503 through the cached reviews, not 401.
    #[tokio::test]
    async fn an_unreachable_api_server_is_503_not_401() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        drop(handle);
        let reviewer = KubeReviewer::new(Client::new(service, "default"), DEFAULT_AUDIENCE);
        let clock = ManualClock::new("2026-12-01T10:00:00Z".parse().unwrap());
        let reviews = Reviews::new(reviewer, Arc::new(clock), DEFAULT_AUDIENCE);
        let refused = reviews.check("t", "agents", "research").await.unwrap_err();
        assert_eq!(
            (refused.code, refused.reason),
            (503, "ServiceUnavailable"),
            "{refused:?}"
        );
        assert_eq!(reviews.cached_answers(), (0, 0));
    }
}
