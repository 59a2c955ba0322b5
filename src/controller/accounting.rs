//! Usage accounting for one budget per reconcile: find the bound pods, scrape them, fold the
//! results into the budget's ledger, and compute the usage part of the budget's status.
//!
//! The ledger lives in memory between reconciles (so a reconcile that runs before the watch
//! has delivered our last status write never reads a stale one) and is persisted in
//! `status.accounting`, in the same status write as `used` (accounting rule 4).

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet, StatefulSet},
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
        reflector::{self, ObjectRef, Store},
        watcher::{self, watcher},
    },
};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;

use super::{
    conditions::Desired,
    workloads::{self, BoundPod, Snapshot, Unscrapable},
};
use crate::{
    api::{
        BudgetBinding, BudgetPhase, ModelUsage, TokenBudget, TokenBudgetSpec, TokenBudgetStatus, TokenType, UsedTokens,
        WorkloadUsage,
    },
    usage::{
        Extractor,
        ledger::{Ledger, PodObservation},
        period::{self, PeriodWindow},
        pricing::{self, PriceTable},
        scrape::{ScrapeError, Scraper, Target},
    },
    validate,
};

/// How far back the burn rate looks.
const BURN_WINDOW: SignedDuration = SignedDuration::from_hours(1);
/// The least span of samples that gives a burn rate.
const BURN_MIN_SPAN: SignedDuration = SignedDuration::from_secs(10);
/// At most this many workloads in `status.workloads`.
const TOP_WORKLOADS: usize = 20;

/// The reflector stores accounting reads, all of them in the operator's watch scope.
#[derive(Clone)]
pub struct Cluster {
    pub pods: Store<Pod>,
    pub replica_sets: Store<ReplicaSet>,
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
    pub jobs: Store<Job>,
    pub cron_jobs: Store<CronJob>,
    pub bindings: Store<DeserializeGuard<BudgetBinding>>,
    synced: Arc<AtomicBool>,
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

/// A reflector whose store keeps objects without their managedFields (memory), driven by the
/// returned future. `on_apply` sees each created or changed object once the store has it.
fn reflect<K>(api: Api<K>, on_apply: impl Fn(&K) + Send + 'static) -> (Store<K>, impl Future<Output = ()> + Send)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|obj| obj.meta_mut().managed_fields = None)
        .reflect(writer)
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
fn undone_enforcement(
    meta: &ObjectMeta,
    replicas: Option<i32>,
    suspended: Option<bool>,
) -> Option<ObjectRef<DeserializeGuard<TokenBudget>>> {
    let annotations = meta.annotations.as_ref()?;
    let budget = annotations.get(crate::enforce::BUDGET)?;
    let scaled_up = annotations.contains_key(crate::enforce::PAUSED_REPLICAS) && replicas.is_some_and(|r| r > 0);
    let resumed = annotations.get(crate::enforce::SUSPENDED).is_some_and(|v| v == "true") && suspended != Some(true);
    (scaled_up || resumed).then(|| ObjectRef::new(budget).within(meta.namespace.as_deref().unwrap_or_default()))
}

impl Cluster {
    /// Starts the reflectors. `terminating` receives every pod that starts terminating, so
    /// that its budget can scrape it once more at once (accounting rule 5).
    pub fn start(
        client: &Client,
        namespace: Option<&str>,
        bindings: Store<DeserializeGuard<BudgetBinding>>,
        terminating: futures::channel::mpsc::UnboundedSender<Arc<Pod>>,
        enforcement_undone: futures::channel::mpsc::UnboundedSender<ObjectRef<DeserializeGuard<TokenBudget>>>,
    ) -> (Self, impl Future<Output = ()> + Send + use<>) {
        let (pods_reader, pods_writer) = reflector::store();
        let pod_stream = watcher(api::<Pod>(client, namespace), watcher::Config::default())
            .default_backoff()
            .modify(|pod| pod.meta_mut().managed_fields = None)
            .reflect(pods_writer)
            .applied_objects()
            .for_each(move |pod| {
                if let Ok(pod) = pod
                    && pod.metadata.deletion_timestamp.is_some()
                {
                    let _ = terminating.unbounded_send(Arc::new(pod));
                }
                async {}
            });
        let wake = move |budget: Option<ObjectRef<DeserializeGuard<TokenBudget>>>| {
            if let Some(budget) = budget {
                let _ = enforcement_undone.unbounded_send(budget);
            }
        };
        let (replica_sets, rs) = reflect(api(client, namespace), |_: &ReplicaSet| {});
        let w = wake.clone();
        let (deployments, d) = reflect(api(client, namespace), move |o: &Deployment| {
            w(undone_enforcement(&o.metadata, o.spec.replicas, None))
        });
        let w = wake.clone();
        let (stateful_sets, s) = reflect(api(client, namespace), move |o: &StatefulSet| {
            w(undone_enforcement(&o.metadata, o.spec.replicas, None))
        });
        let w = wake.clone();
        let (jobs, j) = reflect(api(client, namespace), move |o: &Job| {
            w(undone_enforcement(
                &o.metadata,
                None,
                o.spec.as_ref().and_then(|s| s.suspend),
            ))
        });
        let (cron_jobs, c) = reflect(api(client, namespace), move |o: &CronJob| {
            wake(undone_enforcement(&o.metadata, None, o.spec.suspend))
        });
        let cluster = Cluster {
            pods: pods_reader,
            replica_sets,
            deployments,
            stateful_sets,
            jobs,
            cron_jobs,
            bindings,
            synced: Arc::default(),
        };
        let watch_sync = cluster.clone().watch_sync();
        let driver = async move {
            tokio::join!(pod_stream, rs, d, s, j, c, watch_sync);
        };
        (cluster, driver)
    }

    /// Sets `synced` once every store has listed its objects. Re-polls, because a store's
    /// readiness signal wakes only its most recent waiter.
    async fn watch_sync(self) {
        loop {
            let all = async {
                self.pods.wait_until_ready().await.is_ok()
                    && self.replica_sets.wait_until_ready().await.is_ok()
                    && self.deployments.wait_until_ready().await.is_ok()
                    && self.stateful_sets.wait_until_ready().await.is_ok()
                    && self.jobs.wait_until_ready().await.is_ok()
                    && self.cron_jobs.wait_until_ready().await.is_ok()
                    && self.bindings.wait_until_ready().await.is_ok()
            };
            match tokio::time::timeout(Duration::from_millis(250), all).await {
                Ok(true) => {
                    self.synced.store(true, Ordering::Release);
                    return;
                }
                Ok(false) => return,
                Err(_) => continue,
            }
        }
    }

    /// Whether every store has synced: never account (or forget pods) on a partial view.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The workload objects of one namespace.
    pub fn snapshot(&self, namespace: &str) -> Snapshot {
        fn of<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>, ns: &str) -> Vec<Arc<K>> {
            store.state_filter(|o| o.meta().namespace.as_deref() == Some(ns))
        }
        Snapshot {
            deployments: of(&self.deployments, namespace),
            replica_sets: of(&self.replica_sets, namespace),
            stateful_sets: of(&self.stateful_sets, namespace),
            jobs: of(&self.jobs, namespace),
            cron_jobs: of(&self.cron_jobs, namespace),
            pods: of(&self.pods, namespace),
        }
    }

    /// The readable bindings of a budget, by name.
    pub fn bindings_of(&self, namespace: &str, budget: &str) -> Vec<BudgetBinding> {
        let mut list: Vec<BudgetBinding> = self
            .bindings
            .state()
            .into_iter()
            .filter_map(|guard| guard.0.as_ref().ok().cloned())
            .filter(|bb| bb.namespace().as_deref() == Some(namespace) && bb.spec.budget_ref.name == budget)
            .collect();
        list.sort_by_key(|bb| bb.name_any());
        list
    }

    /// The budgets a terminating pod may be charged to: those of every binding in its namespace.
    pub fn budgets_for_pod(&self, pod: &Pod) -> Vec<ObjectRef<DeserializeGuard<TokenBudget>>> {
        let ns = pod.namespace();
        let mut refs: Vec<_> = self
            .bindings
            .state()
            .into_iter()
            .filter_map(|guard| guard.0.as_ref().ok().cloned())
            .filter(|bb| bb.namespace() == ns)
            .map(|bb| ObjectRef::new(&bb.spec.budget_ref.name).within(ns.as_deref().unwrap_or_default()))
            .collect();
        refs.sort_by(|a, b| a.name.cmp(&b.name));
        refs.dedup();
        refs
    }
}

/// What the operator keeps in memory for one budget between reconciles.
pub struct Account {
    /// The budget's uid: a budget deleted and created again starts afresh.
    uid: String,
    pub ledger: Ledger,
    /// (time, tokens used in the period) after each cycle, for the burn rate.
    samples: VecDeque<(Timestamp, u64)>,
    /// The last scrape error per pod uid, so an Event is sent once per failure, not per cycle.
    failing: HashMap<String, String>,
}

/// Every budget's account, by `namespace/name`.
#[derive(Default)]
pub struct Accounts(Mutex<HashMap<String, Account>>);

impl Accounts {
    /// Drops the accounts of budgets that no longer exist.
    pub fn retain(&self, exists: impl Fn(&str) -> bool) -> Vec<String> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<String> = map.keys().filter(|k| !exists(k)).cloned().collect();
        for key in &gone {
            map.remove(key);
        }
        gone
    }
}

/// One scrape failure, for the binding's ScrapeHealthy condition and an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodProblem {
    pub pod: String,
    pub reason: String,
    /// Whether this is new since the last cycle (an Event is due).
    pub new: bool,
}

/// What one binding looked like in a cycle.
#[derive(Clone, Debug, Default)]
pub struct BindingReport {
    pub name: String,
    pub workloads: usize,
    pub pods: usize,
    pub scraped_pods: usize,
    /// Pods not scraped because no container of theirs has started yet.
    pub pending_pods: usize,
    pub used_tokens: u64,
    pub problems: Vec<PodProblem>,
    /// The binding's scrape interval.
    pub interval: Duration,
}

/// The outcome of one accounting cycle for a budget.
pub struct CycleReport {
    pub window: PeriodWindow,
    /// Whether a new period began in this cycle (and the old one had usage or pods).
    pub period_reset: bool,
    pub bindings: Vec<BindingReport>,
    pub scrape_time: Timestamp,
    /// The namespace's workloads as the cycle saw them, and those its valid bindings name:
    /// what enforcement decides on, without reading the stores or resolving a second time.
    pub snapshot: Snapshot,
    pub bound: BTreeSet<workloads::WorkloadId>,
}

/// Runs one cycle: period, bindings, pods, scrapes, ledger. Returns `None` until the stores
/// have synced.
pub async fn cycle(
    tb: &TokenBudget,
    cluster: &Cluster,
    scraper: &Scraper,
    accounts: &Accounts,
    metrics: &crate::metrics::Metrics,
    now: Timestamp,
) -> Option<CycleReport> {
    if !cluster.synced() {
        return None;
    }
    let ns = tb.namespace()?;
    let name = tb.name_any();
    let uid = tb.uid().unwrap_or_default();
    let key = format!("{ns}/{name}");
    let tz = period::parse_timezone(&tb.spec.period.timezone).ok()?;
    let origin = tb.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let window = period::current(tb.spec.period.reset, &tz, now, origin);

    // Take the account out of the map for the cycle (the controller never runs two reconciles
    // of one budget at once) and put it back at the end.
    let mut account = {
        let mut map = accounts.0.lock().unwrap_or_else(|e| e.into_inner());
        match map.remove(&key) {
            Some(account) if account.uid == uid => account,
            _ => Account {
                uid: uid.clone(),
                ledger: Ledger::from_state(tb.status.as_ref().and_then(|s| s.accounting.as_ref())),
                samples: VecDeque::new(),
                failing: HashMap::new(),
            },
        }
    };
    let had_period = account.ledger.period_start().is_some();
    let period_reset = account.ledger.ensure_period(window.start.timestamp()) && had_period;
    if period_reset {
        account.samples.clear();
    }

    // The pods to scrape: each once, through the first binding (by name) that binds it.
    let snapshot = cluster.snapshot(&ns);
    let bindings = cluster.bindings_of(&ns, &name);
    let mut reports: Vec<BindingReport> = Vec::new();
    let mut scrapes: Vec<(usize, BoundPod, Arc<Extractor>, Target, Timestamp)> = Vec::new();
    let mut claimed: HashMap<String, usize> = HashMap::new();
    let mut bound = BTreeSet::new();
    let mut problems: Vec<(usize, String, String, String)> = Vec::new();
    for bb in &bindings {
        let index = reports.len();
        let interval = validate::parse_duration(&bb.spec.metrics.interval).unwrap_or(Duration::from_secs(15));
        let mut report = BindingReport {
            name: bb.name_any(),
            interval,
            ..Default::default()
        };
        if validate::binding(&bb.spec).is_ok() {
            let resolution = workloads::resolve(&bb.spec, &snapshot);
            report.workloads = resolution.workloads.len();
            bound.extend(resolution.workloads.iter().cloned());
            report.pods = resolution.pods.len();
            let extractor = Arc::new(Extractor::for_endpoint(&bb.spec.metrics));
            let timeout = validate::parse_duration(&bb.spec.metrics.timeout).unwrap_or(Duration::from_secs(5));
            let created = bb.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
            for bound in resolution.pods {
                let Some(pod_uid) = bound.pod.uid() else { continue };
                if claimed.contains_key(&pod_uid) {
                    // Counted through an earlier binding: rule 1, once per budget.
                    report.scraped_pods += 1;
                    continue;
                }
                claimed.insert(pod_uid.clone(), index);
                match &bound.endpoint {
                    Ok((ip, port)) => {
                        let target = Target::for_endpoint(&bb.spec.metrics, ip, *port, timeout);
                        scrapes.push((index, bound.clone(), extractor.clone(), target, created));
                    }
                    // A finished pod has nothing more to say: its last successful scrape stands.
                    Err(Unscrapable::Finished(_)) => {}
                    // A pod that has not started has nothing to say yet, and nothing is wrong:
                    // its first scrape counts its whole counter (rule 3).
                    Err(Unscrapable::Pending) => report.pending_pods += 1,
                    Err(reason) => problems.push((index, pod_uid, bound.pod.name_any(), reason.to_string())),
                }
            }
        }
        reports.push(report);
    }

    let scraping = std::time::Instant::now();
    let results = futures::future::join_all(scrapes.into_iter().map(
        |(index, bound, extractor, target, created)| async move {
            let timer = metrics.scrape_duration.start_timer();
            let result = scraper.scrape(&target, &extractor).await;
            timer.observe_duration();
            let outcome = result.as_ref().map_or_else(ScrapeError::kind, |_| "ok");
            metrics.scrapes.with_label_values(&[outcome]).inc();
            (index, bound, created, result)
        },
    ))
    .await;
    // Every answer was in by now (on the operator's clock, which `now` is read from).
    let answered = jiff::SignedDuration::try_from(scraping.elapsed())
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(now);

    let mut failing_now: HashMap<String, String> = HashMap::new();
    for (index, bound, created, result) in results {
        let pod = &bound.pod;
        let pod_uid = pod.uid().unwrap_or_default();
        let pod_name = pod.name_any();
        match result {
            Ok(usage) => {
                let container = workloads::metrics_container(pod, &bindings[index].spec.metrics.port);
                let observation = PodObservation {
                    uid: &pod_uid,
                    name: &pod_name,
                    binding: &reports[index].name,
                    workload: (bound.workload.kind, &bound.workload.name),
                    restarts: workloads::restarts(pod, container),
                    started_at: pod.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0),
                    binding_created: created,
                    container_started: workloads::container_started(pod, container),
                    scraped_at: answered,
                };
                account.ledger.observe(&observation, &usage);
                reports[index].scraped_pods += 1;
            }
            Err(e) => problems.push((index, pod_uid, pod_name, e.to_string())),
        }
    }
    for (index, pod_uid, pod, reason) in problems {
        let new = account.failing.get(&pod_uid) != Some(&reason);
        failing_now.insert(pod_uid, reason.clone());
        reports[index].problems.push(PodProblem { pod, reason, new });
    }
    account.failing = failing_now;

    // Pods that are gone from the cluster are gone from the ledger (their totals stay). Pods
    // that still exist but are no longer bound keep their baseline.
    let existing: HashSet<String> = snapshot.pods.iter().filter_map(|p| p.uid()).collect();
    let gone: Vec<String> = account
        .ledger
        .pod_uids()
        .filter(|uid| !existing.contains(*uid))
        .map(String::from)
        .collect();
    for uid in gone {
        account.ledger.forget(&uid);
    }

    for report in &mut reports {
        report.used_tokens = account.ledger.binding_tokens(&report.name);
    }
    let used = account.ledger.used_tokens(tb.spec.token_types.as_deref());
    account.samples.push_back((now, used));
    while account
        .samples
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) > BURN_WINDOW)
    {
        account.samples.pop_front();
    }

    accounts
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, account);
    Some(CycleReport {
        window,
        period_reset,
        bindings: reports,
        scrape_time: now,
        snapshot,
        bound,
    })
}

/// Runs `f` with the account of a budget, if there is one.
pub fn with_account<T>(accounts: &Accounts, tb: &TokenBudget, f: impl FnOnce(&Account) -> T) -> Option<T> {
    let key = format!("{}/{}", tb.namespace().unwrap_or_default(), tb.name_any());
    accounts.0.lock().unwrap_or_else(|e| e.into_inner()).get(&key).map(f)
}

/// Tokens per hour over the samples, when they span long enough.
pub fn burn_rate(samples: &VecDeque<(Timestamp, u64)>) -> Option<u64> {
    let (first, last) = (samples.front()?, samples.back()?);
    let span = last.0.duration_since(first.0);
    if span < BURN_MIN_SPAN || last.1 < first.1 {
        return None;
    }
    let per_hour = u128::from(last.1 - first.1) * 3_600_000 / span.as_millis().max(1) as u128;
    Some(u64::try_from(per_hour).unwrap_or(u64::MAX))
}

impl Account {
    pub fn burn_rate(&self) -> Option<u64> {
        burn_rate(&self.samples)
    }
}

/// The usage fields of a budget's status, from its ledger. Pure.
pub fn usage_status(
    spec: &TokenBudgetSpec,
    ledger: &Ledger,
    window: &PeriodWindow,
    burn_rate: Option<u64>,
    now: Timestamp,
) -> (TokenBudgetStatus, Vec<Desired>) {
    let prices = PriceTable::new(&spec.pricing).unwrap_or_default();
    let mut cost = Decimal::ZERO;
    let mut unpriced = Vec::new();
    let mut models: Vec<ModelUsage> = ledger
        .models()
        .map(|(model, input, output)| {
            let model_cost = prices.cost(model, input, output);
            match model_cost {
                Some(c) => cost += c,
                None => unpriced.push(model.to_string()),
            }
            ModelUsage {
                model: model.to_string(),
                input: to_i64(input),
                output: to_i64(output),
                cost: model_cost.map(pricing::format_money),
            }
        })
        .collect();
    models.sort_by(|a, b| {
        (b.input + b.output)
            .cmp(&(a.input + a.output))
            .then_with(|| a.model.cmp(&b.model))
    });

    let used = ledger.used_tokens(spec.token_types.as_deref());
    let limit_tokens = spec.limits.tokens.map(|t| u64::try_from(t).unwrap_or(0));
    let limit_cost = spec.limits.cost.as_deref().and_then(|c| pricing::parse_money(c).ok());
    let percent = pricing::percent_used(used, limit_tokens, cost, limit_cost);
    let remaining = limit_tokens.map(|l| l.saturating_sub(used));

    let mut thresholds = spec.thresholds.clone();
    thresholds.sort_unstable();
    let crossed = thresholds
        .iter()
        .rev()
        .find(|t| percent.is_some_and(|p| p >= u64::from(**t)))
        .copied();
    let exhausted = percent.is_some_and(|p| p >= 100);
    let phase = if exhausted {
        BudgetPhase::Exhausted
    } else if crossed.is_some() {
        BudgetPhase::Warning
    } else {
        BudgetPhase::Active
    };

    let projected_exhaustion = match (remaining, burn_rate) {
        (Some(remaining), Some(rate)) if rate > 0 && remaining > 0 => {
            let seconds = i64::try_from(u128::from(remaining) * 3600 / u128::from(rate)).unwrap_or(i64::MAX);
            now.checked_add(SignedDuration::from_secs(seconds))
                .ok()
                .filter(|t| window.end.as_ref().is_none_or(|end| *t < end.timestamp()))
                .map(|t| period::rfc3339(&t.to_zoned(window.start.time_zone().clone())))
        }
        _ => None,
    };

    let workloads = ledger
        .workloads()
        .into_iter()
        .take(TOP_WORKLOADS)
        .map(|(kind, name, tokens)| WorkloadUsage {
            kind,
            name: name.to_string(),
            tokens: to_i64(tokens),
        })
        .collect();

    let mut conditions = Vec::new();
    conditions.push(match crossed {
        Some(t) => Desired::new(
            "ThresholdReached",
            true,
            "ThresholdReached",
            format!("{t}% of the budget is used"),
        ),
        None => Desired::new("ThresholdReached", false, "BelowThresholds", "no threshold is crossed"),
    });
    conditions.push(if exhausted {
        Desired::new(
            "Exhausted",
            true,
            "LimitReached",
            "the budget is used up for this period",
        )
    } else {
        Desired::new("Exhausted", false, "WithinLimits", "the budget has room")
    });
    conditions.push(if spec.pricing.is_empty() {
        Desired::new(
            "UsageHealthy",
            true,
            "Counting",
            "counting tokens; no pricing, so no cost",
        )
    } else if unpriced.is_empty() {
        Desired::new("UsageHealthy", true, "Counting", "every model in use has a price")
    } else {
        Desired::new(
            "UsageHealthy",
            false,
            "UnpricedModels",
            format!(
                "no price for {}: their tokens count, their cost is 0",
                unpriced.join(", ")
            ),
        )
    });

    let status = TokenBudgetStatus {
        phase: Some(phase),
        used: Some(UsedTokens {
            tokens: to_i64(used),
            input: to_i64(ledger.tokens(TokenType::Input)),
            output: to_i64(ledger.tokens(TokenType::Output)),
            cost: (!spec.pricing.is_empty()).then(|| pricing::format_money(cost)),
        }),
        remaining_tokens: remaining.map(to_i64),
        percent_used: percent.map(to_i64),
        period_start: Some(window.period_start()),
        resets_at: window.resets_at(),
        burn_rate: burn_rate.map(to_i64),
        projected_exhaustion,
        models,
        workloads,
        accounting: Some(ledger.to_state()),
        ..Default::default()
    };
    (status, conditions)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The binding's ScrapeHealthy condition from a cycle's report.
pub fn scrape_condition(report: &BindingReport) -> Desired {
    if report.problems.is_empty() {
        let mut message = format!("{} of {} pods scraped", report.scraped_pods, report.pods);
        if report.pending_pods > 0 {
            message.push_str(&format!(", {} Pending", report.pending_pods));
        }
        Desired::new("ScrapeHealthy", true, "Scraped", message)
    } else {
        let mut listed: Vec<String> = report
            .problems
            .iter()
            .take(5)
            .map(|p| format!("{}: {}", p.pod, p.reason))
            .collect();
        if report.problems.len() > 5 {
            listed.push(format!("and {} more", report.problems.len() - 5));
        }
        Desired::new("ScrapeHealthy", false, "ScrapeFailed", listed.join("; "))
    }
}

/// Formats the scrape time for `lastScrapeTime`.
pub fn timestamp(t: Timestamp) -> String {
    t.round(jiff::Unit::Second).unwrap_or(t).to_string()
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
    fn pending_pods_are_no_scrape_failure() {
        let mut report = BindingReport {
            pods: 3,
            scraped_pods: 2,
            pending_pods: 1,
            ..Default::default()
        };
        let healthy = scrape_condition(&report);
        assert!(healthy.status);
        assert_eq!(healthy.message, "2 of 3 pods scraped, 1 Pending");

        report.problems.push(PodProblem {
            pod: "a-1".into(),
            reason: "the pod has no IP".into(),
            new: true,
        });
        let failed = scrape_condition(&report);
        assert!(!failed.status);
        assert_eq!(failed.message, "a-1: the pod has no IP");
    }
}
