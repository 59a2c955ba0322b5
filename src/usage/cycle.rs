//! One accounting cycle of a budget, without its I/O: [`plan`] decides which pod is scraped
//! for which binding, the caller scrapes, and [`fold`] folds the answers into the budget's
//! account. Both are pure, so the rules of a cycle (each pod once per budget, pending and
//! finished pods, pods that are gone) are tested here on fixtures.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use jiff::Timestamp;
use kube::ResourceExt;

use super::{
    Extractor, Usage,
    account::{Account, BindingReport, MAX_REASON_BYTES, PodProblem},
    ledger::{Bound, BoundBy, PodObservation},
    scrape::{ScrapeError, Target},
};
use crate::{
    api::{TokenType, WorkloadKind},
    conditions,
    validate::ValidBinding,
    workloads::{self, BoundPod, Namespace, Unscrapable, WorkloadId},
};

/// A valid binding of the budget, as a cycle reads it.
pub struct Binding<'a> {
    pub name: &'a str,
    /// Since when it charges the budget: its `status.since`.
    pub since: Timestamp,
    pub spec: &'a ValidBinding,
}

/// The times a cycle dates what becomes bound by.
#[derive(Clone, Copy, Debug)]
pub struct Times {
    /// When the cycle began.
    pub now: Timestamp,
    /// When the budget was created.
    pub budget_created: Timestamp,
}

/// One pod to scrape, through the binding at `binding` (an index into the cycle's bindings).
pub struct Scrape {
    pub binding: usize,
    pub pod: BoundPod,
    pub target: Target,
    pub extractor: Arc<Extractor>,
}

/// What a cycle will do, before any I/O.
pub struct Plan {
    pub scrapes: Vec<Scrape>,
    /// One per binding, in the bindings' order; scrape results are added by [`fold`].
    pub reports: Vec<BindingReport>,
    /// Bound pods that cannot be scraped now, and why.
    unscrapable: Vec<Failure>,
    /// Every workload the bindings name now: what enforcement acts on.
    pub bound: BTreeSet<WorkloadId>,
    /// Since when each binding binds each of its workloads, for the ledger to keep.
    since: Bound,
    /// The uids of every pod bound now (scraped or not).
    bound_pods: HashSet<String>,
    /// The uids of the bound pods that have finished (`Succeeded` or `Failed`): never scraped
    /// again, so the ledger lets go of them.
    finished: Vec<String>,
    /// Bindings that left the budget and came back since the last cycle (their `since` moved):
    /// their pods' last counters are forgotten, and their next scrape is a baseline.
    rejoined: Vec<String>,
}

/// A pod that could not be scraped, through the binding at `binding`.
struct Failure {
    binding: usize,
    pod_uid: String,
    pod: String,
    reason: String,
}

/// Which pod is scraped through which binding: each pod once, through the first binding (by
/// the order given, which is by name) that binds it (accounting rule 1). `previous` is since
/// when the bindings bound their workloads at the last cycle (the ledger's).
pub fn plan(bindings: &[Binding], objects: &Namespace, previous: &Bound, times: Times) -> Plan {
    let mut plan = Plan {
        scrapes: Vec::new(),
        reports: Vec::with_capacity(bindings.len()),
        unscrapable: Vec::new(),
        bound: BTreeSet::new(),
        since: Bound::new(),
        bound_pods: HashSet::new(),
        finished: Vec::new(),
        rejoined: Vec::new(),
    };
    let mut claimed: HashSet<String> = HashSet::new();
    for (index, binding) in bindings.iter().enumerate() {
        let spec = binding.spec;
        let resolution = workloads::resolve(&spec.workloads, &spec.endpoint.port, objects);
        let mut report = BindingReport {
            name: binding.name.to_string(),
            interval: spec.interval,
            workloads: resolution.workloads.len(),
            pods: resolution.pods.len(),
            ..Default::default()
        };
        if previous.get(binding.name).is_some_and(|by| rejoined(by, binding)) {
            plan.rejoined.push(binding.name.to_string());
        }
        plan.since.insert(
            binding.name.to_string(),
            bound_by(binding, &resolution.workloads, objects, previous, times),
        );
        plan.bound.extend(resolution.workloads);
        for bound in resolution.pods {
            let Some(pod_uid) = bound.pod.uid() else { continue };
            plan.bound_pods.insert(pod_uid.clone());
            if !claimed.insert(pod_uid.clone()) {
                // Counted through an earlier binding: rule 1, once per budget.
                report.scraped_pods += 1;
                continue;
            }
            match &bound.endpoint {
                Ok((ip, port)) => plan.scrapes.push(Scrape {
                    binding: index,
                    target: Target::for_endpoint(
                        &spec.endpoint,
                        &bound.pod.namespace().unwrap_or_default(),
                        ip,
                        *port,
                        spec.timeout,
                    ),
                    extractor: spec.extractor.clone(),
                    pod: bound,
                }),
                // A finished pod has nothing more to say: its last successful scrape stands,
                // and the ledger lets go of it (see [`forget_finished_pods`]).
                Err(Unscrapable::Finished(_)) => plan.finished.push(pod_uid),
                // A pod that has not started has nothing to say yet, and nothing is wrong:
                // its first scrape counts its whole counter (rule 3).
                Err(Unscrapable::Pending) => report.pending_pods += 1,
                Err(reason) => plan.unscrapable.push(Failure {
                    binding: index,
                    pod_uid,
                    pod: bound.pod.name_any(),
                    reason: reason.to_string(),
                }),
            }
        }
        plan.reports.push(report);
    }
    plan
}

/// Since when `binding` charges the budget and binds each of `workloads` (accounting rule 3).
/// What the last cycle recorded stands, unless the binding's own `since` is later: then it
/// left the budget and came back, and [`Plan::rejoined`] says so. A binding new to the budget
/// charges it since its `since` (or since the budget was created, if later). A workload new to a binding
/// is bound since it was created if that was after the binding began charging the budget (a
/// workload created to match it); otherwise it joined later, relabelled into a selector or
/// added to the binding's list, and is bound from now on. So a pod's tokens that another
/// budget counted, or that were spent before it was bound, are never counted here.
fn bound_by(
    binding: &Binding,
    workloads: &[WorkloadId],
    objects: &Namespace,
    previous: &Bound,
    times: Times,
) -> BoundBy {
    let known = previous.get(binding.name).filter(|by| !rejoined(by, binding));
    let since = match known {
        Some(by) => by.since,
        None => binding.since.max(times.budget_created),
    };
    let created = |id: &WorkloadId| objects.workload_meta(id)?.creation_timestamp.map(|t| t.0);
    let workloads = workloads
        .iter()
        .map(|id| {
            let key = (id.kind, id.name.clone());
            let recorded = known.and_then(|by| by.workloads.get(&key)).copied();
            let at = recorded.unwrap_or_else(|| match created(id) {
                Some(created) if created >= since => created.min(times.now),
                _ if known.is_none() => since,
                _ => times.now,
            });
            (key, at)
        })
        .collect();
    BoundBy { since, workloads }
}

/// Whether `binding` charges the budget since later than the last cycle recorded: it left the
/// budget and came back meanwhile.
fn rejoined(recorded: &BoundBy, binding: &Binding) -> bool {
    recorded.since.as_second() < binding.since.as_second()
}

/// Whether the stores a cycle was planned on were all current, or some may be out of date
/// (their watch failed and has not listed again). On a stale view a cycle counts what it
/// scrapes, but a pod or a workload missing from it proves nothing, so nothing is forgotten
/// for being missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    Current,
    Stale,
}

/// What a cycle's scrapes answered, in the order of the plan's scrapes, and when the last
/// answer was in.
pub struct Answers {
    pub results: Vec<Result<Answer, ScrapeError>>,
    pub answered_at: Timestamp,
}

/// What one pod answered, directly or through Prometheus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Its counters as the cycle's scrape of the pod read them, at [`Answers::answered_at`].
    Scraped(Usage),
    /// Its counters as a Prometheus server last sampled them, at `at` (the sample's own
    /// time). Counted only when newer than the answer the ledger last counted for the pod: a
    /// sample no newer (Prometheus has not scraped the pod since, or a replica behind a load
    /// balancer lags) tells nothing new, and an older value would read as a counter reset.
    Sampled { usage: Usage, at: Timestamp },
    /// No sample of the pod yet since it (or its metrics container) started: nothing to count
    /// and nothing wrong, as for a pod that has not started (its first sample is read as any
    /// new pod's, rule 3).
    NotYet,
}

impl Answer {
    /// A scrape's answer.
    pub fn scraped(usage: Usage) -> Self {
        Answer::Scraped(usage)
    }
}

/// Folds a cycle's answers into the account: each successful scrape into the ledger, each
/// failure into the binding's problems; pods no longer bound, and pods that have finished, are
/// forgotten (their tokens stay counted); since when each workload is bound; and a burn-rate
/// sample at `now`. Returns the bindings' reports with their tokens. On a [`Freshness::Stale`]
/// view, pods no longer bound stay in the ledger and what the last cycle recorded as bound
/// stays recorded: a later cycle on a current view forgets what is really gone. (A finished
/// pod is forgotten either way: its phase is news, not an absence.)
pub fn fold(
    account: &mut Account,
    bindings: &[Binding],
    plan: Plan,
    answers: Answers,
    token_types: Option<&[TokenType]>,
    now: Timestamp,
    freshness: Freshness,
) -> Vec<BindingReport> {
    let Plan {
        scrapes,
        mut reports,
        unscrapable: mut failures,
        since,
        bound_pods,
        finished,
        rejoined,
        ..
    } = plan;
    for binding in &rejoined {
        account.ledger_mut().forget_pods_of(binding);
    }
    // A workload bound by several bindings is bound since the earliest.
    let mut workload_since: HashMap<(WorkloadKind, &str), Timestamp> = HashMap::new();
    for ((kind, name), at) in since.values().flat_map(|by| &by.workloads) {
        let entry = workload_since.entry((*kind, name.as_str())).or_insert(*at);
        *entry = (*entry).min(*at);
    }
    for (scrape, result) in scrapes.into_iter().zip(answers.results) {
        let binding = &bindings[scrape.binding];
        let pod = &scrape.pod.pod;
        let workload = &scrape.pod.workload;
        let bound_since = workload_since
            .get(&(workload.kind, workload.name.as_str()))
            .copied()
            .unwrap_or(now);
        match result {
            Ok(Answer::Scraped(usage)) => {
                observe(account, binding, &scrape.pod, &usage, bound_since, answers.answered_at);
                reports[scrape.binding].scraped_pods += 1;
            }
            Ok(Answer::Sampled { usage, at }) => {
                let uid = pod.uid().unwrap_or_default();
                let news = account.ledger().last_scraped(&uid).is_none_or(|last| at > last);
                if news {
                    observe(account, binding, &scrape.pod, &usage, bound_since, at);
                }
                reports[scrape.binding].scraped_pods += 1;
            }
            Ok(Answer::NotYet) => reports[scrape.binding].pending_pods += 1,
            Err(e) => failures.push(Failure {
                binding: scrape.binding,
                pod_uid: pod.uid().unwrap_or_default(),
                pod: pod.name_any(),
                reason: conditions::cut(&e.to_string(), MAX_REASON_BYTES),
            }),
        }
    }
    let keys: Vec<(String, String)> = failures.iter().map(|f| (f.pod_uid.clone(), f.reason.clone())).collect();
    for (failure, new) in failures.into_iter().zip(account.record_failures(&keys)) {
        reports[failure.binding].problems.push(PodProblem {
            pod: failure.pod,
            reason: failure.reason,
            new,
        });
    }
    match freshness {
        Freshness::Current => {
            forget_unbound_pods(account, &bound_pods);
            account.ledger_mut().set_bound(since);
        }
        Freshness::Stale => {
            let bound = keep_recorded(account.ledger().bound(), since);
            account.ledger_mut().set_bound(bound);
        }
    }
    forget_finished_pods(account, &finished);
    for report in &mut reports {
        report.used_tokens = account.ledger().binding_tokens(&report.name);
    }
    let used = account.ledger().used_tokens(token_types);
    account.sample(now, used);
    reports
}

/// Folds one pod's scraped usage into the ledger.
fn observe(
    account: &mut Account,
    binding: &Binding,
    bound: &BoundPod,
    usage: &Usage,
    bound_since: Timestamp,
    scraped_at: Timestamp,
) {
    let pod = &bound.pod;
    let (uid, name) = (pod.uid().unwrap_or_default(), pod.name_any());
    let container = workloads::metrics_container(pod, &binding.spec.endpoint.port);
    let observation = PodObservation {
        uid: &uid,
        name: &name,
        binding: binding.name,
        workload: (bound.workload.kind, &bound.workload.name),
        restarts: workloads::restarts(pod, container),
        started_at: pod.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0),
        bound_since,
        container_started: workloads::container_started(pod, container),
        scraped_at,
    };
    account.ledger_mut().observe(&observation, usage);
}

/// What a cycle on a stale view records as bound: what it found, and what the last cycle
/// recorded that it did not find (a binding or a workload missing from a stale store may
/// still be there).
fn keep_recorded(recorded: &Bound, found: Bound) -> Bound {
    let mut bound = recorded.clone();
    for (binding, by) in found {
        match bound.get_mut(&binding) {
            Some(kept) if kept.since == by.since => kept.workloads.extend(by.workloads),
            _ => {
                bound.insert(binding, by);
            }
        }
    }
    bound
}

/// Pods that are no longer bound to the budget (gone from the cluster, or unbound) are gone
/// from the ledger; what they counted stays in the totals. A pod bound again later starts
/// from a baseline (accounting rule 3): what it spent meanwhile is not this budget's.
fn forget_unbound_pods(account: &mut Account, bound: &HashSet<String>) {
    let gone: Vec<String> = account
        .ledger()
        .pod_uids()
        .filter(|uid| !bound.contains(*uid))
        .map(String::from)
        .collect();
    for uid in gone {
        account.ledger_mut().forget(&uid);
    }
}

/// Pods that have finished are gone from the ledger while they still exist (a Job of 5,000
/// completions keeps its pods until it is deleted: their entries would fill the status);
/// what they counted stays in the totals. Nothing more can be counted from such a pod: its
/// containers no longer run, so it is never scraped again ([`plan`]), and its phase never
/// changes back (both phases are terminal: the kubelet never leaves them).
/// A pod on its way out that still runs (terminating, rule 5) is not finished: it keeps its
/// entry, and its last scrape counts against it, until its phase says its containers ended.
fn forget_finished_pods(account: &mut Account, finished: &[String]) {
    for uid in finished {
        account.ledger_mut().forget(uid);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        api::BudgetBindingSpec,
        validate,
        workloads::fixtures::{lists, objects, pod},
    };

    const NOW: &str = "2026-11-30T12:00:00Z";

    fn valid(yaml: &str) -> ValidBinding {
        let spec: BudgetBindingSpec = serde_yaml::from_str(yaml).expect("fixture parses");
        validate::binding(&spec).expect("a valid fixture")
    }

    fn bindings<'a>(specs: &'a [(&'a str, ValidBinding)]) -> Vec<Binding<'a>> {
        specs
            .iter()
            .map(|(name, spec)| Binding {
                name,
                since: "2026-11-01T00:00:00Z".parse().unwrap(),
                spec,
            })
            .collect()
    }

    /// What an agent's endpoint says after `input` input tokens of model `m`.
    fn usage(spec: &ValidBinding, input: u64) -> Result<Usage, ScrapeError> {
        let body = format!(
            "gen_ai_client_token_usage_sum{{gen_ai_token_type=\"input\",gen_ai_request_model=\"m\"}} {input}\n"
        );
        Ok(spec.extractor.extract(body.as_bytes()).expect("the body parses"))
    }

    fn names(plan: &Plan) -> Vec<(usize, String)> {
        plan.scrapes.iter().map(|s| (s.binding, s.pod.pod.name_any())).collect()
    }

    /// Runs a cycle over `objects` whose scrapes answer with `answer(binding spec, pod name)`.
    fn cycle(
        account: &mut Account,
        bindings: &[Binding],
        objects: &Namespace,
        answer: impl Fn(&ValidBinding, &str) -> Result<Usage, ScrapeError>,
    ) -> Vec<BindingReport> {
        cycle_on(Freshness::Current, account, bindings, objects, answer)
    }

    /// As [`cycle`], on a view of this freshness.
    fn cycle_on(
        freshness: Freshness,
        account: &mut Account,
        bindings: &[Binding],
        objects: &Namespace,
        answer: impl Fn(&ValidBinding, &str) -> Result<Usage, ScrapeError>,
    ) -> Vec<BindingReport> {
        let plan = plan(bindings, objects, account.ledger().bound(), times());
        let results = plan
            .scrapes
            .iter()
            .map(|s| answer(bindings[s.binding].spec, &s.pod.pod.name_any()).map(Answer::Scraped))
            .collect();
        let now: Timestamp = NOW.parse().unwrap();
        let answers = Answers {
            results,
            answered_at: now,
        };
        fold(account, bindings, plan, answers, None, now, freshness)
    }

    fn times() -> Times {
        Times {
            now: NOW.parse().unwrap(),
            budget_created: "2026-11-01T00:00:00Z".parse().unwrap(),
        }
    }

    fn account() -> Account {
        let mut account = Account::open("uid-budget", None);
        account.begin_period("2026-11-01T00:00:00Z".parse().unwrap());
        account
    }

    #[test]
    fn each_pod_is_scraped_once_through_the_first_binding_that_binds_it() {
        let specs = [
            (
                "a-named",
                valid(
                    "budgetRef: {name: b}\nworkloads: [{kind: Deployment, name: summarizer}, {kind: StatefulSet, name: memory}]",
                ),
            ),
            (
                "b-selected",
                valid(
                    "budgetRef: {name: b}\nworkloads: [{kind: Deployment, selector: {matchLabels: {team: research}}}]\nmetrics: {interval: 30s}",
                ),
            ),
        ];
        let plan = plan(&bindings(&specs), &objects(), &Bound::new(), times());
        assert_eq!(
            names(&plan),
            [(0, "summarizer-abc-1".to_string()), (0, "summarizer-old-1".to_string())]
        );
        let first = &plan.reports[0];
        assert_eq!((first.workloads, first.pods, first.pending_pods), (2, 3, 1));
        let second = &plan.reports[1];
        // Both its pods are counted through the first binding: scraped, not scraped again.
        assert_eq!((second.pods, second.scraped_pods), (2, 2));
        assert_eq!(second.interval, Duration::from_secs(30));
        let bound: Vec<_> = plan.bound.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(bound, ["summarizer", "memory"]);
        assert_eq!(plan.scrapes[0].target.url, "http://10.0.0.1:9464/metrics");
    }

    #[test]
    fn finished_pods_are_left_alone_and_unreachable_ones_are_problems() {
        let specs = [(
            "jobs",
            valid("budgetRef: {name: b}\nworkloads: [{kind: Job, name: batch}, {kind: CronJob, name: nightly}]"),
        )];
        let mut lists = lists();
        lists.pods.push(pod("nightly-1-b", "Job", "j2", None, "Running"));
        let objects = lists.namespace("agents");
        let mut account = account();
        let reports = cycle(&mut account, &bindings(&specs), &objects, |spec, _| usage(spec, 10));
        let report = &reports[0];
        assert_eq!((report.pods, report.scraped_pods), (3, 1), "batch-1 has finished");
        assert_eq!(
            report.problems,
            [PodProblem {
                pod: "nightly-1-b".into(),
                reason: "the pod has no IP".into(),
                new: true
            }]
        );
    }

    /// The fixture's objects with the pod `name` replaced by `change(pod)`.
    fn with_pod(name: &str, change: impl FnOnce(&mut k8s_openapi::api::core::v1::Pod)) -> Namespace {
        let mut lists = lists();
        let pod = lists
            .pods
            .iter_mut()
            .find(|p| p.name_any() == name)
            .expect("a pod of the fixture");
        let mut changed = (**pod).clone();
        change(&mut changed);
        *pod = Arc::new(changed);
        lists.namespace("agents")
    }

    #[test]
    fn a_finished_pod_leaves_the_ledger_after_its_last_scrape_and_its_tokens_stay() {
        let specs = [(
            "nightly",
            valid("budgetRef: {name: b}\nworkloads: [{kind: CronJob, name: nightly}]"),
        )];
        let bindings = bindings(&specs);
        let mut account = account();
        // nightly-1-a runs: a baseline of 100, then 40 more.
        cycle(&mut account, &bindings, &objects(), |spec, _| usage(spec, 100));
        cycle(&mut account, &bindings, &objects(), |spec, _| usage(spec, 140));
        assert_eq!(account.ledger().used_tokens(None), 40);

        // Terminating, still running: scraped once more, and kept.
        let terminating = with_pod("nightly-1-a", |pod| {
            pod.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                NOW.parse().unwrap(),
            ))
        });
        cycle(&mut account, &bindings, &terminating, |spec, _| usage(spec, 150));
        assert!(account.ledger().contains_pod("uid-nightly-1-a"));
        assert_eq!(account.ledger().used_tokens(None), 50);

        // Its containers ended: nothing more to count, so the ledger lets go of it.
        let finished = with_pod("nightly-1-a", |pod| {
            pod.status.as_mut().expect("a status").phase = Some("Succeeded".into())
        });
        let reports = cycle(&mut account, &bindings, &finished, |_, pod| {
            panic!("{pod} has finished: nothing is scraped")
        });
        assert!(!account.ledger().contains_pod("uid-nightly-1-a"));
        assert_eq!(account.ledger().pod_count(), 0);
        assert!(account.ledger().to_state().pods.is_empty());
        assert_eq!(reports[0].used_tokens, 50, "its tokens still count");
        assert_eq!(account.ledger().used_tokens(None), 50);
        assert_eq!((reports[0].pods, reports[0].scraped_pods), (1, 0));

        // And it stays out, cycle after cycle, counting nothing more.
        cycle(&mut account, &bindings, &finished, |_, pod| panic!("{pod} is scraped"));
        assert_eq!(
            (account.ledger().pod_count(), account.ledger().used_tokens(None)),
            (0, 50)
        );
    }

    #[test]
    fn answers_are_counted_and_a_failure_is_new_only_once() {
        let specs = [(
            "s",
            valid("budgetRef: {name: b}\nworkloads: [{kind: Deployment, name: summarizer}]"),
        )];
        let bindings = bindings(&specs);
        let mut account = account();
        let timeout = || Err(ScrapeError::Timeout(Duration::from_secs(5)));
        let answer = |input: u64| {
            move |spec: &ValidBinding, pod: &str| match pod {
                "summarizer-abc-1" => usage(spec, input),
                _ => timeout(),
            }
        };
        // The pods started before anything is known of them: their first values are baselines.
        let first = cycle(&mut account, &bindings, &objects(), answer(100));
        assert_eq!((first[0].scraped_pods, first[0].used_tokens), (1, 0));
        assert_eq!(first[0].problems[0].reason, "no complete answer within 5s");
        assert!(first[0].problems[0].new);

        let second = cycle(&mut account, &bindings, &objects(), answer(150));
        assert_eq!(second[0].used_tokens, 50);
        assert!(!second[0].problems[0].new, "the same failure again is not news");
        assert_eq!(account.ledger().used_tokens(None), 50);
    }

    /// Runs a cycle over the fixture's objects whose pods answer `answer(pod name)`.
    fn cycle_answering(
        account: &mut Account,
        bindings: &[Binding],
        answer: impl Fn(&str) -> Result<Answer, ScrapeError>,
    ) -> Vec<BindingReport> {
        let objects = objects();
        let plan = plan(bindings, &objects, account.ledger().bound(), times());
        let results = plan.scrapes.iter().map(|s| answer(&s.pod.pod.name_any())).collect();
        let now: Timestamp = NOW.parse().unwrap();
        let answers = Answers {
            results,
            answered_at: now,
        };
        fold(account, bindings, plan, answers, None, now, Freshness::Current)
    }

    #[test]
    fn a_sample_counts_only_when_newer_than_the_last_one_counted() {
        let specs = [(
            "s",
            valid(
                "budgetRef: {name: b}\nworkloads: [{kind: Deployment, name: summarizer}]\nmetrics: {source: Prometheus}",
            ),
        )];
        let bindings = bindings(&specs);
        let mut account = account();
        let sampled = |input: u64, second: i64| {
            let usage = usage(bindings[0].spec, input).unwrap();
            let at = Timestamp::from_second(1_800_000_000 + second).unwrap();
            move |_: &str| {
                Ok(Answer::Sampled {
                    usage: usage.clone(),
                    at,
                })
            }
        };
        // A baseline, then 50 more.
        cycle_answering(&mut account, &bindings, sampled(100, 10));
        cycle_answering(&mut account, &bindings, sampled(150, 20));
        assert_eq!(account.ledger().used_tokens(None), 100, "50 for each of the two pods");
        // The same sample again (Prometheus has not scraped since), then an older one (a
        // replica that lags): nothing new, and no counter reset read into the lower value.
        let same = cycle_answering(&mut account, &bindings, sampled(150, 20));
        assert_eq!(same[0].scraped_pods, 2);
        cycle_answering(&mut account, &bindings, sampled(120, 15));
        assert_eq!(account.ledger().used_tokens(None), 100);
        // A newer sample counts its increase over the last one counted.
        cycle_answering(&mut account, &bindings, sampled(160, 30));
        assert_eq!(account.ledger().used_tokens(None), 120);
        // No sample yet since a pod started: pending, nothing counted, nothing wrong.
        let reports = cycle_answering(&mut account, &bindings, |_| Ok(Answer::NotYet));
        assert_eq!((reports[0].pending_pods, reports[0].problems.len()), (2, 0));
        // A failure is a problem, as a failed scrape is; the next sample counts on.
        let reports = cycle_answering(&mut account, &bindings, |_| Err(ScrapeError::Stale("gone".into())));
        assert_eq!(reports[0].problems[0].reason, "gone");
        cycle_answering(&mut account, &bindings, sampled(170, 40));
        assert_eq!(account.ledger().used_tokens(None), 140);
    }

    #[test]
    fn a_pod_gone_from_the_cluster_leaves_the_ledger_and_its_tokens_stay() {
        let specs = [(
            "s",
            valid("budgetRef: {name: b}\nworkloads: [{kind: Deployment, name: summarizer}]"),
        )];
        let bindings = bindings(&specs);
        let mut account = account();
        cycle(&mut account, &bindings, &objects(), |spec, _| usage(spec, 100));
        cycle(&mut account, &bindings, &objects(), |spec, _| usage(spec, 130));
        assert_eq!(account.ledger().used_tokens(None), 60);

        let mut without = lists();
        without.pods.retain(|p| p.name_any() != "summarizer-old-1");
        let without = without.namespace("agents");
        let reports = cycle(&mut account, &bindings, &without, |spec, _| usage(spec, 130));
        assert!(!account.ledger().contains_pod("uid-summarizer-old-1"));
        assert!(account.ledger().contains_pod("uid-summarizer-abc-1"));
        assert_eq!(reports[0].used_tokens, 60, "the gone pod's tokens still count");
    }

    #[test]
    fn nothing_missing_from_a_stale_view_is_forgotten() {
        let specs = [(
            "s",
            valid("budgetRef: {name: b}\nworkloads: [{kind: Deployment, name: summarizer}]"),
        )];
        let bindings = bindings(&specs);
        let mut account = account();
        cycle(&mut account, &bindings, &objects(), |spec, _| usage(spec, 100));
        cycle(&mut account, &bindings, &objects(), |spec, _| usage(spec, 130));
        assert_eq!(account.ledger().used_tokens(None), 60);
        let recorded = account.ledger().bound().clone();

        // A pod missing from a stale store (its watch failed, the store may be behind): its
        // last counters stay, and so does what the binding binds.
        let mut without = lists();
        without.pods.retain(|p| p.name_any() != "summarizer-old-1");
        let without = without.namespace("agents");
        cycle_on(Freshness::Stale, &mut account, &bindings, &without, |spec, _| {
            usage(spec, 150)
        });
        assert!(account.ledger().contains_pod("uid-summarizer-old-1"));
        assert_eq!(account.ledger().used_tokens(None), 80);
        // A binding missing too: still recorded, its pods still known.
        cycle_on(Freshness::Stale, &mut account, &[], &without, |spec, _| {
            usage(spec, 150)
        });
        assert_eq!(account.ledger().bound(), &recorded);
        assert!(account.ledger().contains_pod("uid-summarizer-abc-1"));

        // Seen again once the view is current: the pod counts on from its last counter, not
        // from a new baseline, so what it spent meanwhile (40) is not lost.
        cycle(&mut account, &bindings, &objects(), |spec, pod| {
            usage(spec, if pod == "summarizer-old-1" { 170 } else { 150 })
        });
        assert_eq!(account.ledger().used_tokens(None), 120);
        assert_eq!(account.ledger().bound(), &recorded);
    }
}

#[cfg(test)]
mod bound_since {
    //! Accounting rule 3: a pod seen for the first time counts its whole counters only if it
    //! started after its workload became bound to the budget.
    use super::*;
    use crate::{
        api::BudgetBindingSpec,
        validate,
        workloads::{Lists, fixtures::lists},
    };

    /// The summarizer pods of the fixture, started on 2026-11-10.
    fn started() -> Lists {
        let mut lists = lists();
        for pod in &mut lists.pods {
            let mut p = (**pod).clone();
            if let Some(status) = p.status.as_mut() {
                status.start_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    "2026-11-10T00:00:00Z".parse().unwrap(),
                ));
            }
            *pod = Arc::new(p);
        }
        lists
    }

    /// What the last cycle recorded of binding `s`: since 2026-11-01, binding `workload`.
    fn known(kind: WorkloadKind, workload: &str) -> Bound {
        let since: Timestamp = "2026-11-01T00:00:00Z".parse().unwrap();
        let by = BoundBy {
            since,
            workloads: [((kind, workload.to_string()), since)].into(),
        };
        [("s".to_string(), by)].into()
    }

    /// Tokens counted by one cycle of binding `s` (charging the budget since `since`) whose pods
    /// each report 100 input tokens, given what the ledger knew of the bindings before.
    fn counted(since: &str, previous: Bound) -> u64 {
        counted_in(started().namespace("agents"), since, previous)
    }

    fn counted_in(objects: Namespace, since: &str, previous: Bound) -> u64 {
        let mut account = Account::open("uid", None);
        account.begin_period("2026-11-01T00:00:00Z".parse().unwrap());
        account.ledger_mut().set_bound(previous);
        cycle(&mut account, &objects, since, 100);
        account.ledger().used_tokens(None)
    }

    /// One cycle of binding `s`, charging the budget since `since`, whose pods each report
    /// `input` tokens.
    fn cycle(account: &mut Account, objects: &Namespace, since: &str, input: u64) {
        let spec: BudgetBindingSpec =
            serde_yaml::from_str("budgetRef: {name: b}\nworkloads: [{kind: Deployment, name: summarizer}]").unwrap();
        let spec = validate::binding(&spec).unwrap();
        let bindings = [Binding {
            name: "s",
            since: since.parse().unwrap(),
            spec: &spec,
        }];
        let times = Times {
            now: "2026-11-30T12:00:00Z".parse().unwrap(),
            budget_created: "2026-10-01T00:00:00Z".parse().unwrap(),
        };
        let plan = plan(&bindings, objects, account.ledger().bound(), times);
        let body = format!(
            "gen_ai_client_token_usage_sum{{gen_ai_token_type=\"input\",gen_ai_request_model=\"m\"}} {input}\n"
        );
        let results = plan
            .scrapes
            .iter()
            .map(|_| Ok(Answer::Scraped(spec.extractor.extract(body.as_bytes()).unwrap())))
            .collect();
        let answers = Answers {
            results,
            answered_at: times.now,
        };
        fold(account, &bindings, plan, answers, None, times.now, Freshness::Current);
    }

    /// Charging since before the pods started (2026-11-10).
    const BEFORE: &str = "2026-11-01T00:00:00Z";
    /// Charging since after the pods started: the binding moved here on 2026-11-20.
    const MOVED: &str = "2026-11-20T00:00:00Z";

    #[test]
    fn a_new_binding_counts_pods_started_since_it_charges_the_budget() {
        assert_eq!(counted(BEFORE, Bound::new()), 200);
    }

    #[test]
    fn a_binding_moved_from_another_budget_counts_only_from_then() {
        // What its pods spent before was the other budget's.
        assert_eq!(counted(MOVED, Bound::new()), 0);
    }

    #[test]
    fn a_binding_that_left_and_came_back_starts_from_a_baseline() {
        let mut account = Account::open("uid", None);
        account.begin_period("2026-11-01T00:00:00Z".parse().unwrap());
        let objects = started().namespace("agents");
        cycle(&mut account, &objects, BEFORE, 100);
        assert_eq!(account.ledger().used_tokens(None), 200);
        // Still here: 50 more per pod.
        cycle(&mut account, &objects, BEFORE, 150);
        assert_eq!(account.ledger().used_tokens(None), 300);
        // It charged another budget meanwhile (its `since` moved): what its pods spent then
        // was that budget's; from here on it counts again.
        cycle(&mut account, &objects, MOVED, 400);
        assert_eq!(account.ledger().used_tokens(None), 300);
        cycle(&mut account, &objects, MOVED, 410);
        assert_eq!(account.ledger().used_tokens(None), 320);
    }

    #[test]
    fn a_workload_relabelled_into_a_known_binding_counts_only_from_now() {
        // The fixture's Deployment is older than the binding's charging (it has no creation
        // time): it joined the binding later.
        assert_eq!(counted(BEFORE, known(WorkloadKind::StatefulSet, "memory")), 0);
    }

    #[test]
    fn a_workload_created_after_its_binding_counts_from_its_creation() {
        let mut lists = started();
        for d in &mut lists.deployments {
            let mut new = (**d).clone();
            new.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-11-05T00:00:00Z".parse().unwrap(),
            ));
            *d = Arc::new(new);
        }
        // Known to the budget before the Deployment existed.
        assert_eq!(
            counted_in(
                lists.namespace("agents"),
                BEFORE,
                known(WorkloadKind::StatefulSet, "memory")
            ),
            200
        );
    }

    #[test]
    fn a_workload_bound_all_along_keeps_its_time() {
        assert_eq!(counted(BEFORE, known(WorkloadKind::Deployment, "summarizer")), 200);
    }
}
