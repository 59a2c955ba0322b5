//! Whether each watch's store is current, and the watches that keep it so.
//!
//! A reflector store is complete once its watch has listed, but it is only *current* while
//! its watch is healthy. kube-runtime's watcher reports a failure as an `Err` item (a list or
//! watch that could not start, a broken stream, a `410 Gone`) and then recovers by itself,
//! resuming from the last resource version it saw when it can. A resumed watch that the API
//! server accepts emits nothing at all, so nothing would ever say that the store caught up.
//! Hence [`relisting`]: after any error the watch is dropped and a new one started, which lists
//! again (`Init`, the objects, `InitDone`), and the store counts as current again exactly when
//! that listing is swapped in. A watch that ends normally (the server's watch timeout) is
//! resumed by the watcher without an error and stays current.
//!
//! Between the error and the new listing the store keeps its last complete view (the
//! reflector swaps a listing in whole), which is safe to count from but not to decide on:
//! the budget controller accounts, forgets nothing, and takes no enforcement decision until
//! every store is current again ([`View`]), then wakes the budgets it held.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{Stream, StreamExt, channel::mpsc::UnboundedSender, stream::BoxStream};
use kube::{
    Api, Resource,
    runtime::watcher::{self, Event, watcher},
};
use prometheus::IntGaugeVec;
use serde::de::DeserializeOwned;

use super::state::BudgetRef;

/// Where one watch's store stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncState {
    /// The watch has not listed yet: the store is empty or partial.
    NotListed,
    /// The watch has listed and every event since arrived without an error.
    Current,
    /// The watch failed since it last listed: the store holds its last complete view, which
    /// may be out of date, until the watch has listed again.
    Stale,
}

impl SyncState {
    /// The state after the watch delivered `event`. Only a listing completed (`InitDone`)
    /// makes a store current; only an error makes it stale. Objects arriving on a stale watch
    /// prove nothing: they need not be all that changed.
    pub fn after<K>(self, event: &Result<Event<K>, watcher::Error>) -> SyncState {
        match event {
            Err(_) => match self {
                SyncState::NotListed => SyncState::NotListed,
                SyncState::Current | SyncState::Stale => SyncState::Stale,
            },
            Ok(Event::InitDone) => SyncState::Current,
            Ok(Event::Init | Event::InitApply(_) | Event::Apply(_) | Event::Delete(_)) => self,
        }
    }
}

/// What the stores together are worth to a reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum View {
    /// Some store has never listed: nothing may be read from them at all.
    NotListed,
    /// Every store has listed, and these watches (by resource) failed since: the stores are
    /// complete but may be out of date.
    Stale(Vec<&'static str>),
    /// Every watch has listed and is healthy.
    Current,
}

impl View {
    /// The view of stores in these states.
    pub fn of<'a>(states: impl IntoIterator<Item = (&'a &'static str, &'a SyncState)>) -> View {
        let mut stale = Vec::new();
        for (resource, state) in states {
            match state {
                SyncState::NotListed => return View::NotListed,
                SyncState::Stale => stale.push(*resource),
                SyncState::Current => {}
            }
        }
        if stale.is_empty() {
            View::Current
        } else {
            View::Stale(stale)
        }
    }

    /// Whether decisions may be taken on it.
    pub fn is_current(&self) -> bool {
        *self == View::Current
    }
}

#[derive(Default)]
struct Inner {
    states: BTreeMap<&'static str, SyncState>,
    /// Budgets whose reconcile held its decision, woken once the view is current again.
    held: HashSet<BudgetRef>,
}

/// The sync state of every watch the budget controller reads, shared by the watches (which
/// report) and the reconciles (which ask).
#[derive(Clone, Default)]
pub struct Watches {
    inner: Arc<Mutex<Inner>>,
    /// `tokenbudget_watch_synced{resource}`.
    gauge: Option<IntGaugeVec>,
    /// Where held budgets are sent once the view is current again.
    wake: Option<UnboundedSender<BudgetRef>>,
}

impl Watches {
    /// Watches that report to `gauge` and wake held budgets through `wake`.
    pub fn new(gauge: IntGaugeVec, wake: UnboundedSender<BudgetRef>) -> Self {
        Watches {
            inner: Default::default(),
            gauge: Some(gauge),
            wake: Some(wake),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the watch of `resource`, not listed yet.
    pub fn register(&self, resource: &'static str) -> WatchHealth {
        self.lock().states.insert(resource, SyncState::NotListed);
        if let Some(gauge) = &self.gauge {
            gauge.with_label_values(&[resource]).set(0);
        }
        WatchHealth {
            watches: self.clone(),
            resource,
        }
    }

    /// What the stores are worth now.
    pub fn view(&self) -> View {
        View::of(&self.lock().states)
    }

    /// Remembers that `budget` took no decision on a stale view, to wake it once the view is
    /// current (at once, if it became current since the budget looked).
    pub fn hold(&self, budget: BudgetRef) {
        let mut inner = self.lock();
        if View::of(&inner.states).is_current() {
            drop(inner);
            if let Some(wake) = &self.wake {
                let _ = wake.unbounded_send(budget);
            }
        } else {
            inner.held.insert(budget);
        }
    }

    fn observe<K>(&self, resource: &'static str, event: &Result<Event<K>, watcher::Error>) {
        let mut inner = self.lock();
        let Some(state) = inner.states.get_mut(resource) else {
            return;
        };
        let before = *state;
        let after = before.after(event);
        *state = after;
        if let Err(error) = event {
            tracing::debug!(resource, %error, "watch error; listing again");
        }
        if before == after {
            return;
        }
        if let Some(gauge) = &self.gauge {
            gauge
                .with_label_values(&[resource])
                .set(i64::from(after == SyncState::Current));
        }
        match (before, after, event) {
            (SyncState::Current, SyncState::Stale, Err(error)) => tracing::warn!(
                resource,
                %error,
                "watch failed: no enforcement decision until it has listed again"
            ),
            (SyncState::Stale, SyncState::Current, _) => tracing::info!(resource, "watch listed again"),
            _ => {}
        }
        if after == SyncState::Current && View::of(&inner.states).is_current() {
            let held = std::mem::take(&mut inner.held);
            drop(inner);
            if let Some(wake) = &self.wake {
                for budget in held {
                    let _ = wake.unbounded_send(budget);
                }
            }
        }
    }
}

/// One watch's handle on [`Watches`].
#[derive(Clone)]
pub struct WatchHealth {
    watches: Watches,
    resource: &'static str,
}

impl WatchHealth {
    /// Records what the watch delivered; call it once the store has applied the event.
    pub fn observe<K>(&self, event: &Result<Event<K>, watcher::Error>) {
        self.watches.observe(self.resource, event);
    }
}

/// A watch of `api` that starts over with a new listing after every error (see the module),
/// after a pause of [`RelistBackoff`]. Its store is current again as soon as that listing is
/// in.
pub fn relisting<K>(api: Api<K>) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    struct Relisting<K> {
        watch: Option<BoxStream<'static, Result<Event<K>, watcher::Error>>>,
        backoff: RelistBackoff,
        pause: Option<Duration>,
    }
    let start = Relisting {
        watch: None,
        backoff: RelistBackoff::default(),
        pause: None,
    };
    futures::stream::unfold(start, move |mut state| {
        let api = api.clone();
        async move {
            if let Some(pause) = state.pause.take() {
                tokio::time::sleep(pause).await;
            }
            let mut watch = state
                .watch
                .take()
                .unwrap_or_else(|| watcher(api, watcher::Config::default()).boxed());
            let event = watch.next().await?;
            match &event {
                // The watch is dropped: the next one lists again, after a pause.
                Err(_) => state.pause = state.backoff.next(),
                // `Init` comes before the list is even asked for: it proves nothing.
                Ok(Event::Init) => state.watch = Some(watch),
                Ok(_) => {
                    state.backoff.reset();
                    state.watch = Some(watch);
                }
            }
            Some((event, state))
        }
    })
}

/// The pause before a watch starts over after an error: 0.5 s, doubling, at most
/// [`RelistBackoff::MAX`]; back to 0.5 s once the API server answers with objects again.
/// kube-runtime's default goes up to 30 s, which is how long enforcement would wait after the
/// API server is back.
#[derive(Debug)]
pub struct RelistBackoff {
    next: Duration,
}

impl RelistBackoff {
    pub const FIRST: Duration = Duration::from_millis(500);
    pub const MAX: Duration = Duration::from_secs(5);

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for RelistBackoff {
    fn default() -> Self {
        RelistBackoff { next: Self::FIRST }
    }
}

impl Iterator for RelistBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seen = Result<Event<()>, watcher::Error>;

    fn error() -> Seen {
        Err(watcher::Error::NoResourceVersion)
    }

    fn run(events: Vec<Seen>) -> Vec<SyncState> {
        let mut state = SyncState::NotListed;
        events
            .iter()
            .map(|e| {
                state = state.after(e);
                state
            })
            .collect()
    }

    use SyncState::{Current, NotListed, Stale};

    #[test]
    fn a_store_is_current_once_listed_and_stale_from_an_error_until_it_has_listed_again() {
        assert_eq!(
            run(vec![
                Ok(Event::Init),
                Ok(Event::InitApply(())),
                error(), // a failed first list: still not listed
                Ok(Event::Init),
                Ok(Event::InitApply(())),
                Ok(Event::InitDone),
                Ok(Event::Apply(())),
                Ok(Event::Delete(())),
                error(),
                error(),
                Ok(Event::Init),
                Ok(Event::InitApply(())),
                Ok(Event::InitDone),
            ]),
            [
                NotListed, NotListed, NotListed, NotListed, NotListed, Current, Current, Current, Stale, Stale, Stale,
                Stale, Current
            ]
        );
    }

    #[test]
    fn events_on_a_stale_watch_do_not_make_it_current() {
        // A resumed watch may deliver some events, or none: neither says that it caught up.
        assert_eq!(
            run(vec![
                Ok(Event::Init),
                Ok(Event::InitDone),
                error(),
                Ok(Event::Apply(())),
                Ok(Event::Delete(()))
            ]),
            [NotListed, Current, Stale, Stale, Stale]
        );
    }

    #[test]
    fn the_view_is_current_only_when_every_store_is() {
        let view = |states: &[(&'static str, SyncState)]| {
            let map: BTreeMap<_, _> = states.iter().copied().collect();
            View::of(&map)
        };
        assert_eq!(view(&[]), View::Current);
        assert_eq!(view(&[("pods", Current), ("jobs", Current)]), View::Current);
        assert_eq!(
            view(&[("pods", Stale), ("jobs", Current), ("deployments", Stale)]),
            View::Stale(vec!["deployments", "pods"])
        );
        // A store never listed is empty, not merely late: nothing may be read.
        assert_eq!(view(&[("pods", Stale), ("jobs", NotListed)]), View::NotListed);
    }

    fn listed() -> Seen {
        Ok(Event::InitDone)
    }

    #[test]
    fn held_budgets_are_woken_once_every_store_is_current_again() {
        let gauge = IntGaugeVec::new(prometheus::Opts::new("g", "g"), &["resource"]).unwrap();
        let (wake, mut woken) = futures::channel::mpsc::unbounded();
        let watches = Watches::new(gauge.clone(), wake);
        let pods = watches.register("pods");
        let jobs = watches.register("jobs");
        assert_eq!(watches.view(), View::NotListed);
        pods.observe(&listed());
        jobs.observe(&listed());
        assert_eq!(watches.view(), View::Current);
        assert_eq!(gauge.with_label_values(&["pods"]).get(), 1);

        pods.observe(&error());
        jobs.observe(&error());
        assert_eq!(watches.view(), View::Stale(vec!["jobs", "pods"]));
        assert_eq!(gauge.with_label_values(&["pods"]).get(), 0);
        watches.hold(BudgetRef::new("research").within("agents"));
        watches.hold(BudgetRef::new("research").within("agents"));

        pods.observe(&listed());
        assert_eq!(watches.view(), View::Stale(vec!["jobs"]));
        assert!(woken.try_recv().is_err(), "woken while a store is still stale");
        jobs.observe(&listed());
        assert_eq!(watches.view(), View::Current);
        let budget = woken.try_recv().expect("the held budget woken");
        assert_eq!(budget.name, "research");
        assert!(woken.try_recv().is_err(), "once");

        // Held just after the view became current again (it looked before): woken at once.
        watches.hold(BudgetRef::new("late").within("agents"));
        assert_eq!(woken.try_recv().expect("woken at once").name, "late");
    }

    #[test]
    fn the_pause_before_a_new_listing_doubles_up_to_five_seconds_and_resets() {
        let mut backoff = RelistBackoff::default();
        let delays: Vec<u64> = (0..6).map(|_| backoff.next().unwrap().as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(RelistBackoff::FIRST));
    }
}

/// [`relisting`] against a mocked API server: after a watch fails, the next request is a new
/// list, not a watch resumed from the old resource version (which could come back and say
/// nothing).
#[cfg(test)]
mod relist {
    use super::*;
    use http::{Request, Response};
    use k8s_openapi::api::core::v1::Pod;
    use kube::client::Body;

    fn list(resource_version: &str, pods: &[&str]) -> Response<Body> {
        let items: Vec<_> = pods
            .iter()
            .map(|name| serde_json::json!({"metadata": {"name": name, "namespace": "n", "resourceVersion": "1"}}))
            .collect();
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": resource_version}, "items": items,
        });
        Response::builder()
            .body(Body::from(body.to_string().into_bytes()))
            .unwrap()
    }

    fn unavailable() -> Response<Body> {
        let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "unavailable", "reason": "ServiceUnavailable", "code": 503});
        Response::builder()
            .status(503)
            .body(Body::from(body.to_string().into_bytes()))
            .unwrap()
    }

    /// Whether the request is a watch, and from which resource version.
    fn kind(request: &Request<Body>) -> (bool, Option<String>) {
        let query = request.uri().query().unwrap_or_default();
        let get = |key: &str| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                .map(String::from)
        };
        (get("watch").as_deref() == Some("true"), get("resourceVersion"))
    }

    #[tokio::test]
    async fn a_failed_watch_is_followed_by_a_new_listing() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut requests = Vec::new();
            for answer in [list("10", &["a"]), unavailable(), list("20", &["b"])] {
                let (request, send) = handle.next_request().await.expect("a request");
                requests.push(kind(&request));
                send.send_response(answer);
            }
            requests
        });
        let api: Api<Pod> = Api::namespaced(kube::Client::new(service, "n"), "n");
        let events: Vec<String> = relisting(api)
            .take(7)
            .map(|event| match event {
                Ok(Event::Init) => "Init".to_string(),
                Ok(Event::InitApply(pod)) => format!("InitApply {}", pod.metadata.name.unwrap_or_default()),
                Ok(Event::InitDone) => "InitDone".to_string(),
                Ok(other) => format!("{other:?}"),
                Err(_) => "Err".to_string(),
            })
            .collect()
            .await;
        assert_eq!(
            events,
            [
                "Init",
                "InitApply a",
                "InitDone",
                "Err",
                "Init",
                "InitApply b",
                "InitDone"
            ]
        );
        let requests = server.await.unwrap();
        assert_eq!(
            requests,
            [
                (false, None),
                (true, Some("10".to_string())),
                (false, None), // listed again, not resumed from 10
            ]
        );
    }
}
