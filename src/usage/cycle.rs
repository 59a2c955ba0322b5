//! One accounting cycle of a budget, without its I/O: [`plan`] decides which pod is scraped
//! for which binding, the caller scrapes, and [`fold`] folds the answers into the budget's
//! account. Both are pure, so the rules of a cycle (each pod once per budget, pending and
//! finished pods, pods that are gone) are tested here on fixtures.

use std::{
    collections::{BTreeSet, HashSet},
    sync::Arc,
};

use jiff::Timestamp;
use kube::ResourceExt;

use super::{
    Extractor, Usage,
    account::{Account, BindingReport, MAX_REASON_BYTES, PodProblem},
    ledger::PodObservation,
    scrape::{ScrapeError, Target},
};
use crate::{
    api::TokenType,
    conditions,
    validate::ValidBinding,
    workloads::{self, BoundPod, Snapshot, Unscrapable, WorkloadId},
};

/// A valid binding of the budget, as a cycle reads it.
pub struct Binding<'a> {
    pub name: &'a str,
    /// When the binding was created: usage from before does not count (accounting rule 3).
    pub created: Timestamp,
    pub spec: &'a ValidBinding,
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
}

/// A pod that could not be scraped, through the binding at `binding`.
struct Failure {
    binding: usize,
    pod_uid: String,
    pod: String,
    reason: String,
}

/// Which pod is scraped through which binding: each pod once, through the first binding (by
/// the order given, which is by name) that binds it (accounting rule 1).
pub fn plan(bindings: &[Binding], snapshot: &Snapshot) -> Plan {
    let mut plan = Plan {
        scrapes: Vec::new(),
        reports: Vec::with_capacity(bindings.len()),
        unscrapable: Vec::new(),
        bound: BTreeSet::new(),
    };
    let mut claimed: HashSet<String> = HashSet::new();
    for (index, binding) in bindings.iter().enumerate() {
        let spec = binding.spec;
        let resolution = workloads::resolve(&spec.workloads, &spec.endpoint.port, snapshot);
        let mut report = BindingReport {
            name: binding.name.to_string(),
            interval: spec.interval,
            workloads: resolution.workloads.len(),
            pods: resolution.pods.len(),
            ..Default::default()
        };
        plan.bound.extend(resolution.workloads);
        for bound in resolution.pods {
            let Some(pod_uid) = bound.pod.uid() else { continue };
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
                // A finished pod has nothing more to say: its last successful scrape stands.
                Err(Unscrapable::Finished(_)) => {}
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

/// What a cycle's scrapes answered, in the order of the plan's scrapes, and when the last
/// answer was in.
pub struct Answers {
    pub results: Vec<Result<Usage, ScrapeError>>,
    pub answered_at: Timestamp,
}

/// Folds a cycle's answers into the account: each successful scrape into the ledger, each
/// failure into the binding's problems; pods that are gone from `snapshot` are forgotten
/// (their tokens stay counted); and a burn-rate sample at `now`. Returns the bindings'
/// reports with their tokens.
pub fn fold(
    account: &mut Account,
    bindings: &[Binding],
    plan: Plan,
    answers: Answers,
    snapshot: &Snapshot,
    token_types: Option<&[TokenType]>,
    now: Timestamp,
) -> Vec<BindingReport> {
    let Plan {
        scrapes,
        mut reports,
        unscrapable: mut failures,
        ..
    } = plan;
    for (scrape, result) in scrapes.into_iter().zip(answers.results) {
        let binding = &bindings[scrape.binding];
        let pod = &scrape.pod.pod;
        match result {
            Ok(usage) => {
                observe(account, binding, &scrape.pod, &usage, answers.answered_at);
                reports[scrape.binding].scraped_pods += 1;
            }
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
    forget_gone_pods(account, snapshot);
    for report in &mut reports {
        report.used_tokens = account.ledger().binding_tokens(&report.name);
    }
    let used = account.ledger().used_tokens(token_types);
    account.sample(now, used);
    reports
}

/// Folds one pod's scraped usage into the ledger.
fn observe(account: &mut Account, binding: &Binding, bound: &BoundPod, usage: &Usage, scraped_at: Timestamp) {
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
        binding_created: binding.created,
        container_started: workloads::container_started(pod, container),
        scraped_at,
    };
    account.ledger_mut().observe(&observation, usage);
}

/// Pods that are gone from the cluster are gone from the ledger (their totals stay). Pods that
/// still exist but are no longer bound keep their baseline.
fn forget_gone_pods(account: &mut Account, snapshot: &Snapshot) {
    let existing: HashSet<String> = snapshot.pods.iter().filter_map(|p| p.uid()).collect();
    let gone: Vec<String> = account
        .ledger()
        .pod_uids()
        .filter(|uid| !existing.contains(*uid))
        .map(String::from)
        .collect();
    for uid in gone {
        account.ledger_mut().forget(&uid);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        api::BudgetBindingSpec,
        validate,
        workloads::fixtures::{pod, snapshot},
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
                created: "2026-11-01T00:00:00Z".parse().unwrap(),
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

    /// Runs a cycle over `snapshot` whose scrapes answer with `answer(binding spec, pod name)`.
    fn cycle(
        account: &mut Account,
        bindings: &[Binding],
        snapshot: &Snapshot,
        answer: impl Fn(&ValidBinding, &str) -> Result<Usage, ScrapeError>,
    ) -> Vec<BindingReport> {
        let plan = plan(bindings, snapshot);
        let results = plan
            .scrapes
            .iter()
            .map(|s| answer(bindings[s.binding].spec, &s.pod.pod.name_any()))
            .collect();
        let now: Timestamp = NOW.parse().unwrap();
        let answers = Answers {
            results,
            answered_at: now,
        };
        fold(account, bindings, plan, answers, snapshot, None, now)
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
        let plan = plan(&bindings(&specs), &snapshot());
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
        let mut snapshot = snapshot();
        snapshot.pods.push(pod("nightly-1-b", "Job", "j2", None, "Running"));
        let mut account = account();
        let reports = cycle(&mut account, &bindings(&specs), &snapshot, |spec, _| usage(spec, 10));
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
        let first = cycle(&mut account, &bindings, &snapshot(), answer(100));
        assert_eq!((first[0].scraped_pods, first[0].used_tokens), (1, 0));
        assert_eq!(first[0].problems[0].reason, "no complete answer within 5s");
        assert!(first[0].problems[0].new);

        let second = cycle(&mut account, &bindings, &snapshot(), answer(150));
        assert_eq!(second[0].used_tokens, 50);
        assert!(!second[0].problems[0].new, "the same failure again is not news");
        assert_eq!(account.ledger().used_tokens(None), 50);
    }

    #[test]
    fn a_pod_gone_from_the_cluster_leaves_the_ledger_and_its_tokens_stay() {
        let specs = [(
            "s",
            valid("budgetRef: {name: b}\nworkloads: [{kind: Deployment, name: summarizer}]"),
        )];
        let bindings = bindings(&specs);
        let mut account = account();
        cycle(&mut account, &bindings, &snapshot(), |spec, _| usage(spec, 100));
        cycle(&mut account, &bindings, &snapshot(), |spec, _| usage(spec, 130));
        assert_eq!(account.ledger().used_tokens(None), 60);

        let mut without = snapshot();
        without.pods.retain(|p| p.name_any() != "summarizer-old-1");
        let reports = cycle(&mut account, &bindings, &without, |spec, _| usage(spec, 130));
        assert!(!account.ledger().contains_pod("uid-summarizer-old-1"));
        assert!(account.ledger().contains_pod("uid-summarizer-abc-1"));
        assert_eq!(reports[0].used_tokens, 60, "the gone pod's tokens still count");
    }
}
