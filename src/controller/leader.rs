//! Leader election on a `coordination.k8s.io/v1` Lease, with fencing.
//!
//! Several replicas may run; one leads. Every replica keeps its watches and stores warm, but
//! only the leader reconciles: it scrapes, writes status and enforces. A takeover is then a
//! matter of the lease, not of listing the cluster.
//!
//! The protocol is client-go's (`k8s.io/client-go/tools/leaderelection`), so `kubectl get
//! lease` reads it as it reads the Lease of any Kubernetes controller:
//!
//! - The leader renews the Lease every `retry_period`. It leads until `renew_deadline` after
//!   the start of its last successful renewal, measured on its own monotonic clock.
//! - A candidate takes the Lease over once it has seen the same Lease record, unchanged, for the
//!   record's `leaseDurationSeconds`, measured on its own monotonic clock from when it first
//!   saw that record: no wall clocks are compared, so clock skew between nodes does not matter.
//!   Every write is conditional on the `resourceVersion` read, so of two candidates one wins.
//! - Since `renew_deadline` < `lease_duration`, a leader that can no longer renew (partitioned
//!   from the API server, or a paused process) has stopped leading before any other replica
//!   may take over.
//!
//! Stopping is enforced where it matters, at the wire: [`Leadership::fence`] wraps the
//! operator's client so that every write (POST, PUT, PATCH, DELETE) is refused unless this
//! replica leads at the moment the request is sent. A process paused past its deadline wakes
//! up to find every write refused, whatever its reconciles were in the middle of. Reads pass,
//! so standbys keep their caches current.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use futures::Stream;
use hyper::{Method, Request, Response};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{Api, Client, api::PostParams, client::Body};
use tokio::sync::{Notify, watch};

use crate::metrics::Metrics;

/// How a replica takes part in the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionConfig {
    /// The namespace of the Lease (the operator's own).
    pub namespace: String,
    /// The Lease's name.
    pub lease_name: String,
    /// This replica's identity in `spec.holderIdentity`: unique per process.
    pub identity: String,
    /// How long others wait, after the last renewal they saw, before they take over.
    pub lease_duration: Duration,
    /// How long the leader leads after the start of its last successful renewal.
    pub renew_deadline: Duration,
    /// How often the leader renews, and candidates look.
    pub retry_period: Duration,
}

/// The Lease's name unless `--leader-election-lease-name` says otherwise.
pub const DEFAULT_LEASE_NAME: &str = "tokenbudget-operator";
/// client-go's defaults, which Kubernetes' own controllers use.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Why an election configuration cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "the renew deadline ({renew:?}) must be shorter than the lease duration ({lease:?}): a leader that cannot renew must stop before another may take over"
    )]
    DeadlineNotShorterThanLease { renew: Duration, lease: Duration },
    #[error("the retry period ({retry:?}) must be shorter than the renew deadline ({renew:?})")]
    RetryNotShorterThanDeadline { retry: Duration, renew: Duration },
    #[error("the lease duration must be a whole number of seconds, at least 1s (got {0:?})")]
    LeaseDuration(Duration),
}

impl ElectionConfig {
    /// Checks that the durations can keep two leaders from acting at once.
    pub fn check(&self) -> Result<(), ConfigError> {
        let (lease, renew, retry) = (self.lease_duration, self.renew_deadline, self.retry_period);
        if lease.as_secs() == 0 || lease.subsec_nanos() != 0 || lease.as_secs() > i32::MAX as u64 {
            return Err(ConfigError::LeaseDuration(lease));
        }
        if renew >= lease {
            return Err(ConfigError::DeadlineNotShorterThanLease { renew, lease });
        }
        if retry >= renew {
            return Err(ConfigError::RetryNotShorterThanDeadline { retry, renew });
        }
        Ok(())
    }
}

/// A unique identity for this process: the pod's name (or the host's), and a suffix that
/// tells apart two processes of one pod (a restarted container).
pub fn identity(instance: Option<&str>) -> String {
    let base = instance
        .map(str::to_string)
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "tokenbudget-operator".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{base}_{:08x}", nanos ^ std::process::id().rotate_left(16))
}

/// Whether this replica leads, shared by the elector, the fence and the reconciles.
#[derive(Clone)]
pub struct Leadership(Arc<Shared>);

struct Shared {
    /// `false`: no election, this replica always leads.
    elected: bool,
    identity: String,
    state: Mutex<State>,
    /// Writes that passed the fence and have not finished.
    writes_in_flight: AtomicUsize,
    writes_done: Notify,
    /// Whether this replica leads, as the elector last decided: wakes whoever waits for a gain.
    changes: watch::Sender<bool>,
    /// How often this replica began to lead.
    term: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Leading until then, if at all.
    until: Option<Instant>,
    /// The holder of the Lease as last read.
    leader: Option<String>,
}

impl Leadership {
    /// No election: this replica leads, always (one replica, or the tests' in-process
    /// operators).
    pub fn always() -> Self {
        Self::new(false, String::new(), true)
    }

    /// A candidate of the election, not leading until it has acquired the Lease.
    pub fn candidate(identity: String) -> Self {
        Self::new(true, identity, false)
    }

    fn new(elected: bool, identity: String, leading: bool) -> Self {
        Self(Arc::new(Shared {
            elected,
            identity,
            state: Mutex::default(),
            writes_in_flight: AtomicUsize::new(0),
            writes_done: Notify::new(),
            changes: watch::channel(leading).0,
            term: AtomicU64::new(0),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this replica may act now.
    pub fn is_leading(&self) -> bool {
        !self.0.elected || self.state().until.is_some_and(|until| Instant::now() < until)
    }

    /// Whether this replica takes part in an election.
    pub fn is_elected(&self) -> bool {
        self.0.elected
    }

    /// This replica's identity in the Lease (empty without an election).
    pub fn identity(&self) -> &str {
        &self.0.identity
    }

    /// How often this replica began to lead: what a reconcile keeps in memory (accounts, what
    /// a cycle saw of its bindings) is valid only in the term it was made in, since another
    /// replica may have counted in between.
    pub fn term(&self) -> u64 {
        self.0.term.load(Ordering::SeqCst)
    }

    /// The holder of the Lease as last read: this replica's identity while it leads.
    pub fn leader(&self) -> Option<String> {
        self.state().leader.clone()
    }

    /// One item each time this replica begins to lead.
    pub fn gains(&self) -> impl Stream<Item = ()> + Send + 'static {
        futures::stream::unfold(self.0.changes.subscribe(), |mut rx| async move {
            loop {
                rx.changed().await.ok()?;
                if *rx.borrow_and_update() {
                    return Some(((), rx));
                }
            }
        })
    }

    /// Resolves when this replica stops leading (at once if it does not lead).
    pub async fn lost(&self) {
        let mut rx = self.0.changes.subscribe();
        let _ = rx.wait_for(|leading| !*leading).await;
    }

    /// Leads until `until` (a renewal started at `until - renew_deadline` succeeded).
    fn renewed(&self, until: Instant) -> bool {
        let mut state = self.state();
        state.until = Some(until);
        state.leader = Some(self.0.identity.clone());
        drop(state);
        let gained = !*self.0.changes.borrow();
        if gained {
            // Before anyone hears of the gain: its reconciles must see the new term.
            self.0.term.fetch_add(1, Ordering::SeqCst);
            self.0.changes.send_replace(true);
        }
        gained
    }

    /// Another replica holds the Lease (or nobody does), or the deadline passed.
    fn following(&self, leader: Option<String>) -> bool {
        let mut state = self.state();
        state.until = None;
        state.leader = leader;
        drop(state);
        self.0
            .changes
            .send_if_modified(|leading| std::mem::replace(leading, false))
    }

    /// Whether the deadline of the last renewal has passed: then this replica no longer leads,
    /// and says so.
    fn expire(&self) -> bool {
        let mut state = self.state();
        if state.until.is_some_and(|until| Instant::now() >= until) {
            state.until = None;
            drop(state);
            return self
                .0
                .changes
                .send_if_modified(|leading| std::mem::replace(leading, false));
        }
        false
    }

    /// Stops leading, then waits until every write that passed the fence has finished (at
    /// most `wait`): after that, nothing this replica sent can land.
    async fn step_down(&self, wait: Duration) {
        self.following(None);
        let drained = async {
            loop {
                let done = self.0.writes_done.notified();
                if self.0.writes_in_flight.load(Ordering::SeqCst) == 0 {
                    return;
                }
                done.await;
            }
        };
        let _ = tokio::time::timeout(wait, drained).await;
    }

    /// `client`, with every write refused unless this replica leads when it is sent. Reads
    /// (GET, including lists and watches) always pass.
    /// Refused writes are counted in `metrics`, which also keeps when the last write went.
    pub fn fence(&self, client: Client, metrics: Metrics) -> Client {
        let namespace = client.default_namespace().to_string();
        Client::new(
            Fence {
                inner: client,
                leadership: self.clone(),
                metrics,
            },
            namespace,
        )
    }
}

/// A write refused because this replica does not lead.
#[derive(Debug, thiserror::Error)]
#[error("not the leader: writes are refused until this replica leads again")]
pub struct NotLeader;

/// The service behind [`Leadership::fence`].
#[derive(Clone)]
struct Fence {
    inner: Client,
    leadership: Leadership,
    metrics: Metrics,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Request<Body>> for Fence {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let client = self.inner.clone();
        if request.method() == Method::GET || request.method() == Method::HEAD {
            return Box::pin(async move { client.send(request).await.map_err(BoxError::from) });
        }
        // Counted before the check, so that `step_down` (which clears first, then waits for
        // the count) never misses a write that passed.
        let shared = self.leadership.0.clone();
        shared.writes_in_flight.fetch_add(1, Ordering::SeqCst);
        let done = move || {
            shared.writes_in_flight.fetch_sub(1, Ordering::SeqCst);
            shared.writes_done.notify_waiters();
        };
        if !self.leadership.is_leading() {
            done();
            self.metrics.election.writes_fenced.inc();
            tracing::debug!(method = %request.method(), path = request.uri().path(), "write refused: not the leader");
            return Box::pin(async { Err(BoxError::from(NotLeader)) });
        }
        self.metrics
            .election
            .last_write
            .set(jiff::Timestamp::now().as_millisecond() as f64 / 1000.0);
        Box::pin(async move {
            let response = client.send(request).await;
            done();
            response.map_err(BoxError::from)
        })
    }
}

/// What a replica does after reading the Lease.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// There is no Lease: create it, holding it.
    Create,
    /// This replica holds it: renew.
    Renew,
    /// Nobody holds it, or its holder has not renewed for its duration: take it over.
    TakeOver,
    /// Another replica holds it.
    Follow { leader: String },
}

/// What a candidate remembers between two reads: the last Lease record it saw, and when.
#[derive(Default)]
struct Observer {
    seen: Option<(String, Instant)>,
}

impl Observer {
    /// Decides what to do with the Lease as read at `now`.
    fn step(&mut self, lease: Option<&Lease>, identity: &str, now: Instant) -> Step {
        let Some(lease) = lease else {
            self.seen = None;
            return Step::Create;
        };
        let spec = lease.spec.as_ref();
        let holder = spec.and_then(|s| s.holder_identity.as_deref()).unwrap_or_default();
        if holder == identity {
            return Step::Renew;
        }
        if holder.is_empty() {
            return Step::TakeOver;
        }
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let since = match &self.seen {
            Some((seen, at)) if *seen == version => *at,
            _ => {
                self.seen = Some((version, now));
                now
            }
        };
        let duration = spec
            .and_then(|s| s.lease_duration_seconds)
            .map_or(DEFAULT_LEASE_DURATION, |s| Duration::from_secs(s.max(0) as u64));
        if now.duration_since(since) >= duration {
            Step::TakeOver
        } else {
            Step::Follow {
                leader: holder.to_string(),
            }
        }
    }
}

/// The Lease this replica writes to hold it, from the one read (`None`: creating it).
fn holding(read: Option<&Lease>, config: &ElectionConfig, acquire: bool) -> Lease {
    let now = MicroTime(jiff::Timestamp::now());
    let old = read.and_then(|l| l.spec.clone()).unwrap_or_default();
    let transitions = old.lease_transitions.unwrap_or(0);
    Lease {
        metadata: ObjectMeta {
            name: Some(config.lease_name.clone()),
            namespace: Some(config.namespace.clone()),
            resource_version: read.and_then(|l| l.metadata.resource_version.clone()),
            ..read.map(|l| l.metadata.clone()).unwrap_or_default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(config.identity.clone()),
            lease_duration_seconds: Some(config.lease_duration.as_secs() as i32),
            acquire_time: if acquire { Some(now.clone()) } else { old.acquire_time },
            renew_time: Some(now),
            lease_transitions: Some(if acquire && read.is_some() {
                transitions.saturating_add(1)
            } else {
                transitions
            }),
            ..old
        }),
    }
}

/// Runs the election until `stop` resolves, then lets go of the Lease if this replica holds
/// it (after its last writes have landed), so that another takes over at once.
pub async fn run(
    client: Client,
    config: ElectionConfig,
    leadership: Leadership,
    metrics: Metrics,
    stop: impl Future<Output = ()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut observer = Observer::default();
    let mut stop = std::pin::pin!(stop);
    metrics.election.leader.set(0);
    loop {
        let started = Instant::now();
        match attempt(&api, &config, &mut observer, started).await {
            Ok(Outcome::Holding) => {
                if leadership.renewed(started + config.renew_deadline) {
                    metrics.election.leader.set(1);
                    metrics.election.leader_transitions.inc();
                    tracing::info!(identity = %config.identity, lease = %config.lease_name, "leading");
                }
            }
            Ok(Outcome::Following { leader }) => {
                if leadership.following(leader) {
                    metrics.election.leader.set(0);
                    tracing::warn!(identity = %config.identity, "another replica holds the lease: no longer leading");
                }
            }
            Err(error) => tracing::warn!(%error, lease = %config.lease_name, "reading or renewing the lease failed"),
        }
        if leadership.expire() {
            metrics.election.leader.set(0);
            tracing::warn!(identity = %config.identity, "the lease could not be renewed in time: no longer leading");
        }
        tokio::select! {
            () = tokio::time::sleep(config.retry_period) => {}
            () = &mut stop => break,
        }
    }
    if leadership.is_leading() {
        leadership.step_down(config.renew_deadline).await;
        metrics.election.leader.set(0);
        match release(&api, &config).await {
            Ok(()) => tracing::info!(lease = %config.lease_name, "lease released"),
            Err(error) => {
                tracing::warn!(%error, "releasing the lease failed: another replica takes over when it expires")
            }
        }
    }
}

/// Who holds the Lease after a round.
enum Outcome {
    Holding,
    /// Another replica (`None`: not known until the next read).
    Following {
        leader: Option<String>,
    },
}

/// One round: reads the Lease and creates, renews or takes it over as [`Observer::step`]
/// says.
async fn attempt(
    api: &Api<Lease>,
    config: &ElectionConfig,
    observer: &mut Observer,
    now: Instant,
) -> Result<Outcome, kube::Error> {
    let read = api.get_opt(&config.lease_name).await?;
    let written = match observer.step(read.as_ref(), &config.identity, now) {
        Step::Follow { leader } => return Ok(Outcome::Following { leader: Some(leader) }),
        Step::Create => api.create(&PostParams::default(), &holding(None, config, true)).await,
        Step::Renew => {
            api.replace(
                &config.lease_name,
                &PostParams::default(),
                &holding(read.as_ref(), config, false),
            )
            .await
        }
        Step::TakeOver => {
            api.replace(
                &config.lease_name,
                &PostParams::default(),
                &holding(read.as_ref(), config, true),
            )
            .await
        }
    };
    match written {
        Ok(_) => Ok(Outcome::Holding),
        // Another replica wrote first (created it, renewed, or took it over): not ours.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Outcome::Following { leader: None }),
        Err(e) => Err(e),
    }
}

/// Lets go of the Lease as client-go does: no holder, a duration of 1 s.
async fn release(api: &Api<Lease>, config: &ElectionConfig) -> Result<(), kube::Error> {
    let Some(read) = api.get_opt(&config.lease_name).await? else {
        return Ok(());
    };
    if read.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some(&config.identity) {
        return Ok(());
    }
    let mut lease = holding(Some(&read), config, false);
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
    }
    api.replace(&config.lease_name, &PostParams::default(), &lease).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, version: &str, seconds: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("l".into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                lease_duration_seconds: Some(seconds),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn no_lease_is_created_one_held_is_renewed_a_released_one_taken() {
        let now = Instant::now();
        let mut observer = Observer::default();
        assert_eq!(observer.step(None, "me", now), Step::Create);
        assert_eq!(observer.step(Some(&lease(Some("me"), "1", 15)), "me", now), Step::Renew);
        assert_eq!(observer.step(Some(&lease(None, "2", 1)), "me", now), Step::TakeOver);
        assert_eq!(observer.step(Some(&lease(Some(""), "3", 1)), "me", now), Step::TakeOver);
    }

    #[test]
    fn another_holder_is_followed_until_its_record_is_unchanged_for_its_duration() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut observer = Observer::default();
        let follow = Step::Follow { leader: "other".into() };
        assert_eq!(observer.step(Some(&lease(Some("other"), "1", 15)), "me", t0), follow);
        assert_eq!(
            observer.step(Some(&lease(Some("other"), "1", 15)), "me", t0 + s(14)),
            follow
        );
        // Renewed at 14 s (a new resourceVersion): the 15 s count again from when it was seen.
        assert_eq!(
            observer.step(Some(&lease(Some("other"), "2", 15)), "me", t0 + s(14)),
            follow
        );
        assert_eq!(
            observer.step(Some(&lease(Some("other"), "2", 15)), "me", t0 + s(28)),
            follow
        );
        assert_eq!(
            observer.step(Some(&lease(Some("other"), "2", 15)), "me", t0 + s(29)),
            Step::TakeOver
        );
    }

    #[test]
    fn a_candidate_that_just_started_waits_a_whole_duration_whatever_the_renew_time_says() {
        // The record's renewTime is another node's wall clock: never compared with ours.
        let t0 = Instant::now();
        let mut observer = Observer::default();
        let mut old = lease(Some("other"), "7", 15);
        old.spec.as_mut().unwrap().renew_time = Some(MicroTime("2000-01-01T00:00:00Z".parse().unwrap()));
        assert!(matches!(observer.step(Some(&old), "me", t0), Step::Follow { .. }));
        assert!(matches!(
            observer.step(Some(&old), "me", t0 + Duration::from_secs(14)),
            Step::Follow { .. }
        ));
        assert_eq!(
            observer.step(Some(&old), "me", t0 + Duration::from_secs(15)),
            Step::TakeOver
        );
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() {
        let config = ElectionConfig {
            namespace: "ns".into(),
            lease_name: "l".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        let mut read = lease(Some("other"), "5", 15);
        let acquired = MicroTime("2026-11-30T00:00:00Z".parse().unwrap());
        read.spec.as_mut().unwrap().lease_transitions = Some(3);
        read.spec.as_mut().unwrap().acquire_time = Some(acquired.clone());
        let taken = holding(Some(&read), &config, true);
        let spec = taken.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_ne!(spec.acquire_time, Some(acquired.clone()));
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("5"));
        let renewed = holding(Some(&read), &config, false).spec.unwrap();
        assert_eq!(
            (renewed.lease_transitions, renewed.acquire_time),
            (Some(3), Some(acquired))
        );
        let created = holding(None, &config, true);
        assert_eq!(created.spec.unwrap().lease_transitions, Some(0));
        assert_eq!(created.metadata.resource_version, None);
    }

    #[test]
    fn durations_that_could_let_two_lead_are_refused() {
        let ok = ElectionConfig {
            namespace: "ns".into(),
            lease_name: "l".into(),
            identity: "me".into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        };
        assert_eq!(ok.check(), Ok(()));
        let bad = ElectionConfig {
            renew_deadline: Duration::from_secs(15),
            ..ok.clone()
        };
        assert!(matches!(
            bad.check(),
            Err(ConfigError::DeadlineNotShorterThanLease { .. })
        ));
        let bad = ElectionConfig {
            retry_period: Duration::from_secs(10),
            ..ok.clone()
        };
        assert!(matches!(
            bad.check(),
            Err(ConfigError::RetryNotShorterThanDeadline { .. })
        ));
        let bad = ElectionConfig {
            lease_duration: Duration::from_millis(1500),
            ..ok
        };
        assert!(matches!(bad.check(), Err(ConfigError::LeaseDuration(_))));
    }

    #[tokio::test]
    async fn a_leader_leads_until_its_deadline_and_no_longer() {
        let leadership = Leadership::candidate("me".into());
        assert!(!leadership.is_leading());
        assert!(leadership.renewed(Instant::now() + Duration::from_secs(60)));
        assert!(leadership.is_leading());
        assert!(
            !leadership.renewed(Instant::now() + Duration::from_secs(60)),
            "no second gain"
        );
        assert_eq!(leadership.leader().as_deref(), Some("me"));
        // A renewal whose deadline has passed (a process paused past it): not leading, at
        // once, before the elector has noticed.
        leadership.renewed(Instant::now() - Duration::from_millis(1));
        assert!(!leadership.is_leading());
        assert!(leadership.expire());
        assert!(Leadership::always().is_leading());
    }

    #[tokio::test]
    async fn the_fence_refuses_writes_unless_leading_and_lets_reads_pass() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            // Only the GET and the write made while leading reach the API server.
            for method in [Method::GET, Method::PATCH] {
                let (request, send) = handle.next_request().await.expect("a request");
                assert_eq!(request.method(), method);
                send.send_response(Response::builder().body(Body::from(b"{}".to_vec())).unwrap());
            }
        });
        let leadership = Leadership::candidate("me".into());
        let metrics = Metrics::new();
        let client = leadership.fence(Client::new(service, "default"), metrics.clone());
        let request = |method: Method| {
            Request::builder()
                .method(method)
                .uri("/api/v1/pods")
                .body(Body::empty())
                .unwrap()
        };
        client.send(request(Method::GET)).await.expect("a read passes");
        let refused = client.send(request(Method::PATCH)).await.unwrap_err();
        assert!(refused.to_string().contains("not the leader"), "{refused}");
        leadership.renewed(Instant::now() + Duration::from_secs(60));
        assert_eq!(
            (metrics.election.writes_fenced.get(), metrics.election.last_write.get()),
            (1, 0.0)
        );
        client.send(request(Method::PATCH)).await.expect("the leader writes");
        assert!(metrics.election.last_write.get() > 0.0);
        server.await.unwrap();
        assert_eq!(leadership.0.writes_in_flight.load(Ordering::SeqCst), 0);
    }
}
