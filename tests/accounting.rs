//! Usage accounting end to end: a real API server and controller-manager, the operator binary,
//! and agent-sim processes serving real metrics on their own loopback addresses while the test
//! plays the kubelet.

mod common;

use common::*;
use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use tokenbudget::api::{ResetPeriod, TokenBudget, WorkloadKind};

fn used(tb: &TokenBudget) -> i64 {
    tb.status
        .as_ref()
        .and_then(|s| s.used.as_ref())
        .map_or(-1, |u| u.tokens)
}

fn used_of(status: &tokenbudget::api::TokenBudgetStatus) -> (i64, i64, i64) {
    status
        .used
        .as_ref()
        .map_or((-1, -1, -1), |u| (u.tokens, u.input, u.output))
}

/// The budgets of these tests: thresholds at 50% and 90%, and a price for gpt-4o-mini.
fn priced(name: &str) -> BudgetBuilder {
    budget(name).thresholds(&[50, 90]).price("gpt-4o-mini", "0.15", "0.60")
}

impl Tenant {
    /// Waits until a cycle of `budget` that began more than `after` from now is over (its
    /// status written), and returns the budget: once the cycles running now are over, what it
    /// says is what full cycles say. The operator's metric tells when a cycle began; an idle
    /// status is not written again, so the status itself cannot tell.
    async fn wait_cycle_after(&self, budget: &str, after: jiff::SignedDuration) -> TokenBudget {
        self.wait_cycle_since(budget, jiff::Timestamp::now() + after).await
    }

    /// Waits until a cycle of `budget` that began after `since` is over; returns the budget.
    async fn wait_cycle_since(&self, budget: &str, since: jiff::Timestamp) -> TokenBudget {
        let since = since.as_millisecond() as f64 / 1000.0;
        let operator = self.operator.as_ref().expect("an operator");
        let series = format!(
            "tokenbudget_last_cycle_timestamp_seconds{{name=\"{budget}\",namespace=\"{}\"}}",
            self.ns.name
        );
        within(
            async {
                while gauge(operator, &series).is_none_or(|t| t <= since) {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            &format!("a cycle of {budget} after {since}"),
        )
        .await;
        self.budgets.get(budget).await.expect("the budget")
    }

    /// A Deployment with `replicas` pods, each running an agent; returns (pod name, agent).
    async fn deploy(&self, name: &str, replicas: i32) -> Vec<(String, Agent)> {
        let agents: Vec<Option<&[&str]>> = vec![Some(&[]); replicas as usize];
        self.deploy_agents(deployment(name).replicas(replicas), &agents)
            .await
            .into_iter()
            .map(|(pod, agent)| (pod, agent.expect("every pod runs")))
            .collect()
    }

    /// Creates `deployment` and plays the kubelet for its pods, in name order: one agent-sim
    /// per entry of `agents`, with those arguments (`[]` for a well-behaved agent, `--hostile
    /// MODE` for a broken endpoint); `None` leaves the pod Pending without an IP.
    async fn deploy_agents(
        &self,
        deployment: impl Into<Deployment>,
        agents: &[Option<&[&str]>],
    ) -> Vec<(String, Option<Agent>)> {
        let deployment = create(&self.deployments, deployment).await;
        let name = deployment.metadata.name.clone().expect("named");
        let mut pods = Vec::new();
        for (pod, args) in pods_of(&self.pods, &name, agents.len()).await.into_iter().zip(agents) {
            let agent = args.map(|args| Agent::start(&agent_ip(), args));
            if let Some(agent) = &agent {
                run_pod(&self.pods, &pod, &agent.ip, 0).await;
            }
            pods.push((pod, agent));
        }
        pods
    }

    async fn wait_used(&self, budget: &str, tokens: i64) -> TokenBudget {
        wait_for(
            &self.budgets,
            budget,
            &format!("{budget} to have used {tokens} tokens"),
            |tb| used(tb) == tokens,
        )
        .await
    }
}

#[tokio::test]
async fn usage_appears_in_the_status_and_in_kubectl_get() {
    let s = Tenant::new("usage").await.with_operator();
    create(&s.budgets, priced("research").tokens(10_000)).await;
    create(&s.bindings, binding("summarizer", "research").deployment("summarizer")).await;
    let agents = s.deploy("summarizer", 2).await;
    agents[0].1.spend("gpt-4o-mini", 1000, 200);
    agents[1].1.spend("other-model", 300, 0);

    let tb = s.wait_used("research", 1500).await;
    let status = tb.status.as_ref().unwrap();
    let used = status.used.as_ref().unwrap();
    assert_eq!((used.input, used.output), (1300, 200));
    // 1000 * 0.15 / 1e6 + 200 * 0.60 / 1e6; the unpriced model costs nothing and is named.
    assert_eq!(used.cost.as_deref(), Some("0.00027"));
    assert_eq!(status.remaining_tokens, Some(8500));
    assert_eq!(status.percent_used, Some(15));
    assert!(status.period_start.is_some() && status.resets_at.is_some());
    assert_eq!(status.workloads[0].name, "summarizer");
    assert_eq!(status.workloads[0].tokens, 1500);
    let healthy = status.conditions.iter().find(|c| c.type_ == "UsageHealthy").unwrap();
    assert_eq!(healthy.status, "False");
    assert!(healthy.message.contains("other-model"), "{}", healthy.message);

    let bb = wait_for(&s.bindings, "summarizer", "binding usage, both pods scraped", |bb| {
        bb.status
            .as_ref()
            .is_some_and(|st| st.used_tokens == Some(1500) && st.scraped_pods == Some(2))
    })
    .await;
    let st = bb.status.unwrap();
    assert_eq!((st.workloads, st.pods, st.scraped_pods), (Some(1), Some(2), Some(2)));
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "ScrapeHealthy" && c.status == "True")
    );
    assert!(
        st.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"),
        "{:?}",
        st.conditions
    );

    // Crossing 50%: phase Warning.
    agents[0].1.spend("gpt-4o-mini", 4000, 0);
    let tb = s.wait_used("research", 5500).await;
    assert_eq!(tb.status.unwrap().phase, Some(tokenbudget::api::BudgetPhase::Warning));

    // The operator's own metrics carry the budget, and lose it when the budget is deleted.
    let operator = s.operator.as_ref().unwrap();
    let series = format!(
        "tokenbudget_used_tokens{{name=\"research\",namespace=\"{}\"}} 5500",
        s.ns.name
    );
    let metrics = operator.get("/metrics").unwrap().1;
    assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
    assert!(
        metrics.contains("tokenbudget_scrapes_total{result=\"ok\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("tokenbudget_phase{name=\"research\""), "{metrics}");

    let out = kubectl(&["get", "tb", "research", "-n", &s.ns.name, "--no-headers"], None);
    let row: Vec<String> = text(&out.stdout).split_whitespace().map(String::from).collect();
    assert_eq!(&row[..5], ["research", "10000", "5500", "55", "Warning"], "{row:?}");

    delete(&s.budgets, "research").await;
    within(
        async {
            while operator.get("/metrics").unwrap().1.contains("name=\"research\"") {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        },
        "the deleted budget's metric series to go",
    )
    .await;
}

#[tokio::test]
async fn restarts_count_exactly_and_a_killed_operator_continues_where_it_left_off() {
    let mut s = Tenant::new("restarts").await.with_operator();
    create(&s.budgets, priced("b")).await;
    create(&s.bindings, binding("bb", "b").deployment("agent")).await;
    let agents = s.deploy("agent", 1).await;
    let (pod, agent) = &agents[0];
    agent.spend("gpt-4o-mini", 100, 0);
    s.wait_used("b", 100).await;

    // The container crashes and restarts: its counter starts from zero again.
    agent.spend("gpt-4o-mini", 7, 0); // lost if not scraped before the crash; scraped here first
    s.wait_used("b", 107).await;
    agent.reset();
    run_pod(&s.pods, pod, &agent.ip, 1).await;
    agent.spend("gpt-4o-mini", 30, 0);
    s.wait_used("b", 137).await;
    // Killed only once the restart is in the persisted ledger: a restart reported after the
    // operator restarted could count the new container's first tokens twice (documented).
    wait_for(&s.budgets, "b", "the restart in the ledger", |tb| {
        tb.status
            .as_ref()
            .and_then(|st| st.accounting.as_ref())
            .is_some_and(|a| a.pod_ledgers().iter().any(|p| p.restarts == 1))
    })
    .await;

    // The operator is killed mid-run, the agent keeps spending, a new operator takes over.
    let mut operator = s.operator.take().unwrap();
    operator.child.kill().unwrap();
    operator.child.wait().unwrap();
    agent.spend("gpt-4o-mini", 63, 0);
    s.operator = Some(Operator::start(&s.ns.name));
    s.wait_used("b", 200).await;
    // And it stays exact: no double counting on later scrapes.
    agent.spend("gpt-4o-mini", 1, 0);
    s.wait_used("b", 201).await;
}

#[tokio::test]
async fn a_sidecar_restart_does_not_count_the_agent_again() {
    let s = Tenant::new("sidecar").await.with_operator();
    create(&s.budgets, priced("b")).await;
    create(&s.bindings, binding("bb", "b").deployment("agent")).await;
    // The agent declares the metrics port; a proxy sidecar next to it does not.
    let with_sidecar = deployment("agent").sidecar("proxy", "proxy");
    let agents = s.deploy_agents(with_sidecar, &[Some(&[])]).await;
    let (pod, agent) = (&agents[0].0, agents[0].1.as_ref().unwrap());
    agent.spend("gpt-4o-mini", 100, 0);
    s.wait_used("b", 100).await;

    // The sidecar restarts (the kubelet says so); the agent's counters go on. It restarted at
    // the next full second: after every scrape so far, even though the API server keeps whole
    // seconds only.
    let ceil = jiff::TimestampRound::new()
        .smallest(jiff::Unit::Second)
        .mode(jiff::RoundMode::Ceil);
    let restarted = (jiff::Timestamp::now() + jiff::SignedDuration::from_millis(1))
        .round(ceil)
        .unwrap();
    let mut statuses = s
        .pods
        .get(pod)
        .await
        .unwrap()
        .status
        .unwrap()
        .container_statuses
        .unwrap();
    statuses.push(
        serde_json::from_value(serde_json::json!({
            "name": "proxy", "ready": true, "restartCount": 3, "image": "proxy", "imageID": "proxy",
            "started": true, "state": {"running": {"startedAt": restarted.to_string()}}
        }))
        .unwrap(),
    );
    let status = serde_json::json!({"status": {"containerStatuses": statuses}});
    s.pods
        .patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    agent.spend("gpt-4o-mini", 1, 0);
    s.wait_used("b", 101).await;
    // Cycles that saw the sidecar's restart still count only the agent's increases.
    let tb = s.wait_cycle_after("b", jiff::SignedDuration::from_secs(2)).await;
    let bb = s.bindings.get("bb").await.unwrap();
    assert_eq!(bb.status.unwrap().used_tokens, Some(101));
    assert_eq!(used(&tb), 101);
}

#[tokio::test]
async fn two_bindings_on_one_pod_count_it_once() {
    let s = Tenant::new("dedup").await.with_operator();
    create(&s.budgets, priced("b")).await;
    create(&s.bindings, binding("first", "b").deployment("agent")).await;
    let by_label = binding("second", "b")
        .selecting(WorkloadKind::Deployment, &[("team", "research")])
        .port(9464);
    create(&s.bindings, by_label).await;
    // A budget counts a binding's pods once the binding's status names the budget; a pod is
    // charged to the first binding (by name) that counts it: both count from here on.
    for name in ["first", "second"] {
        wait_for(&s.bindings, name, "the binding charging b", |bb| {
            bb.status
                .as_ref()
                .is_some_and(|st| st.budget.as_deref() == Some("b") && st.since.is_some())
        })
        .await;
    }
    let agents = s.deploy("agent", 1).await;
    agents[0].1.spend("gpt-4o-mini", 40, 2);
    s.wait_used("b", 42).await;
    agents[0].1.spend("gpt-4o-mini", 8, 0);
    let tb = s.wait_used("b", 50).await;
    let accounting = tb.status.unwrap().accounting.unwrap();
    assert_eq!(
        accounting
            .bindings
            .iter()
            .map(|b| (b.name.as_str(), b.tokens))
            .collect::<Vec<_>>(),
        [("first", 50)]
    );
}

/// The pods of one Deployment: what each one runs, and what its binding must say about it.
struct Role {
    /// The agent's arguments; `None`: no agent, and the pod has no IP.
    agent: Option<&'static [&'static str]>,
    /// `None`: a well-behaved agent, or a Pending pod (no agent). Otherwise the start of what
    /// the ScrapeHealthy message and the ScrapeFailed Event say about the pod, after `<pod>: `.
    reason: Option<&'static str>,
}

/// A pod that no kubelet has started: nothing to scrape, and nothing wrong.
const fn pending() -> Role {
    Role {
        agent: None,
        reason: None,
    }
}

const fn good() -> Role {
    Role {
        agent: Some(&[]),
        reason: None,
    }
}

const fn bad(agent: Option<&'static [&'static str]>, reason: &'static str) -> Role {
    Role {
        agent,
        reason: Some(reason),
    }
}

#[tokio::test]
async fn hostile_endpoints_are_reported_and_never_corrupt_the_usage() {
    let s = Tenant::new("hostile").await.with_operator();
    create(&s.budgets, priced("b")).await;
    // Every `used` the API server holds, from the start: none may ever be a wrong total.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = tokio::spawn({
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let (budgets, seen) = (s.budgets.clone(), seen.clone());
        async move {
            let stream = watcher(budgets, watcher::Config::default().fields("metadata.name=b"))
                .default_backoff()
                .applied_objects();
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Ok(tb) = event {
                    seen.lock().unwrap().push(used(&tb));
                }
            }
        }
    });

    // Three bindings, so that each one's ScrapeHealthy message (at most 5 pods) names all its
    // bad pods. `counting` has the two counting agents, one pod without the named port, a
    // Running one without an IP and a Pending one (not a failure); the others only bad
    // endpoints.
    for (name, workloads) in [
        ("counting", &["counting", "portless"][..]),
        ("stalling", &["stalling"]),
        ("values", &["values"]),
    ] {
        let bb = workloads.iter().fold(binding(name, "b"), |bb, w| bb.deployment(w));
        create(&s.bindings, bb).await;
    }
    let deployments: [(Deployment, &str, Vec<Role>); 4] = [
        (
            deployment("counting").replicas(2).build(),
            "counting",
            vec![good(), good()],
        ),
        (
            deployment("portless").replicas(3).metrics_port_name("http").build(),
            "counting",
            vec![
                bad(Some(&[]), "no container of the pod has a port named \"metrics\""),
                bad(None, "the pod has no IP"),
                pending(),
            ],
        ),
        (
            deployment("stalling").replicas(4).build(),
            "stalling",
            vec![
                bad(Some(&["--hostile", "big-body"]), "body larger than 16777216 bytes"),
                bad(Some(&["--hostile", "silent"]), "no complete answer within 1s"),
                bad(Some(&["--hostile", "trickle"]), "no complete answer within 1s"),
                bad(
                    Some(&["--hostile", "garbage"]),
                    "unparsable metrics: line 1: byte 0x00 cannot start a metrics line",
                ),
            ],
        ),
        (
            deployment("values").replicas(4).build(),
            "values",
            vec![
                bad(
                    Some(&["--hostile", "value=NaN"]),
                    "unparsable metrics: line 3: gen_ai_client_token_usage_sum: value is NaN",
                ),
                bad(
                    Some(&["--hostile", "value=+Inf"]),
                    "unparsable metrics: line 3: gen_ai_client_token_usage_sum: value is +Inf",
                ),
                bad(
                    Some(&["--hostile", "value=-5"]),
                    "unparsable metrics: line 3: gen_ai_client_token_usage_sum: value -5 is negative",
                ),
                bad(
                    Some(&["--hostile", "value=1e30"]),
                    "unparsable metrics: line 3: gen_ai_client_token_usage_sum: value 1e30 is above the limit of 1e15 tokens per series",
                ),
            ],
        ),
    ];
    let mut counting = Vec::new();
    let mut pending_pods = Vec::new();
    // (binding, pod, reason) of every bad pod.
    let mut expected: Vec<(&str, String, &str)> = Vec::new();
    let mut agents = Vec::new();
    for (deployment, binding, roles) in deployments {
        let args: Vec<Option<&[&str]>> = roles.iter().map(|r| r.agent).collect();
        for ((pod, agent), role) in s.deploy_agents(deployment, &args).await.into_iter().zip(&roles) {
            match (role.reason, agent) {
                (None, Some(agent)) => counting.push((pod, agent)),
                (None, None) => pending_pods.push(pod),
                (Some(reason), agent) => {
                    if agent.is_none() {
                        // A kubelet that reports the pod Running but no IP for it.
                        let status = serde_json::json!({"status": {"phase": "Running"}});
                        s.pods
                            .patch_status(&pod, &PatchParams::default(), &Patch::Merge(&status))
                            .await
                            .unwrap();
                    }
                    expected.push((binding, pod, reason));
                    agents.extend(agent);
                }
            }
        }
    }
    let (good, backwards) = (&counting[0].1, &counting[1].1);

    good.spend("gpt-4o-mini", 1000, 200);
    s.wait_used("b", 1200).await;

    // Each binding names each of its bad pods with its reason, and the pods it could scrape.
    for (binding, pods, scraped) in [("counting", 5, 2), ("stalling", 4, 0), ("values", 4, 0)] {
        let mine: Vec<String> = expected
            .iter()
            .filter(|(b, _, _)| *b == binding)
            .map(|(_, pod, reason)| format!("{pod}: {reason}"))
            .collect();
        wait_for(
            &s.bindings,
            binding,
            &format!("ScrapeHealthy=False of {binding} naming {mine:?}, {scraped} of {pods} pods scraped"),
            |bb| {
                bb.status.as_ref().is_some_and(|st| {
                    (st.pods, st.scraped_pods) == (Some(pods), Some(scraped))
                        && st.conditions.iter().any(|c| {
                            c.type_ == "ScrapeHealthy"
                                && c.status == "False"
                                && c.reason == "ScrapeFailed"
                                && mine.iter().all(|m| c.message.contains(m.as_str()))
                        })
                })
            },
        )
        .await;
    }
    // And one Warning Event per bad pod, on its binding.
    for (binding, pod, reason) in &expected {
        let note = format!("pod {pod}: {reason}");
        let event = wait_event(&s.events, &format!("a ScrapeFailed Event {note:?}"), |e| {
            e.reason.as_deref() == Some("ScrapeFailed") && e.note.as_deref().is_some_and(|n| n.starts_with(&note))
        })
        .await;
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.regarding.and_then(|r| r.name).as_deref(), Some(*binding));
    }

    // A counter that jumps backwards without a restart started from zero again (rule 2): its
    // new value is what it spent since.
    backwards.spend("gpt-4o-mini", 500, 0);
    s.wait_used("b", 1700).await;
    backwards.reset();
    backwards.spend("gpt-4o-mini", 200, 0);
    s.wait_used("b", 1900).await;
    good.spend("gpt-4o-mini", 4, 0);
    s.wait_used("b", 1904).await;

    // Another full cycle over every bad endpoint changes nothing.
    s.wait_cycle_after("b", jiff::SignedDuration::from_secs(1)).await;
    let st = s.bindings.get("counting").await.unwrap().status.unwrap();
    assert_eq!(st.used_tokens, Some(1904));
    // The Pending pod is among the binding's pods, but no failure: never named, no Event.
    let [pending] = &pending_pods[..] else {
        panic!("one Pending pod: {pending_pods:?}")
    };
    let healthy = st.conditions.iter().find(|c| c.type_ == "ScrapeHealthy").unwrap();
    assert!(!healthy.message.contains(pending.as_str()), "{}", healthy.message);
    let named = s
        .events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reporting_controller.as_deref() == Some("tokenbudget-operator")
                && e.note.as_deref().is_some_and(|n| n.contains(pending.as_str()))
        });
    assert_eq!(
        named.count(),
        0,
        "no Event of the operator names the Pending pod {pending}"
    );
    let tb = s.budgets.get("b").await.unwrap();
    let status = tb.status.as_ref().unwrap();
    let used = status.used.as_ref().unwrap();
    assert_eq!((used.tokens, used.input, used.output), (1904, 1704, 200));
    assert_eq!(
        status
            .models
            .iter()
            .map(|m| (m.model.as_str(), m.input, m.output))
            .collect::<Vec<_>>(),
        [("gpt-4o-mini", 1704, 200)]
    );
    assert_eq!(
        status
            .workloads
            .iter()
            .map(|w| (w.name.as_str(), w.tokens))
            .collect::<Vec<_>>(),
        [("counting", 1904)]
    );
    // The ledger knows only the pods that answered well (by uid).
    let mut ledger_pods: Vec<String> = status
        .accounting
        .as_ref()
        .unwrap()
        .pod_ledgers()
        .into_iter()
        .map(|p| p.uid)
        .collect();
    ledger_pods.sort_unstable();
    let mut answered = Vec::new();
    for (pod, _) in &counting[..2] {
        answered.push(s.pods.get(pod).await.unwrap().metadata.uid.unwrap());
    }
    answered.sort_unstable();
    assert_eq!(ledger_pods, answered);

    recorder.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]) && seen.iter().all(|u| [-1, 0, 1200, 1700, 1900, 1904].contains(u)),
        "used went through {seen:?}"
    );

    // The operator is still up, and counted every kind of failure.
    let operator = s.operator.as_ref().unwrap();
    assert_eq!(operator.get("/healthz").unwrap().0, 200);
    let metrics = operator.get("/metrics").unwrap().1;
    for result in ["ok", "too_large", "timeout", "parse"] {
        assert!(
            metrics.contains(&format!("tokenbudget_scrapes_total{{result=\"{result}\"}}")),
            "{result}: {metrics}"
        );
    }
    drop(agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_wakes_for_the_period_boundary_itself() {
    use jiff::{RoundMode, SignedDuration, Timestamp, TimestampRound, Unit};
    // Time from the operator's start to the boundary: enough to start, scrape, spend, scrape.
    const LEAD: SignedDuration = SignedDuration::from_secs(20);
    let s = Tenant::new("boundary").await;
    create(&s.budgets, budget("b").period(ResetPeriod::Hourly)).await;
    // An interval far beyond the test: only the boundary itself can wake the budget at the
    // boundary (nothing else changes in the namespace).
    create(&s.bindings, binding("bb", "b").deployment("agent").interval("1h")).await;
    // One agent, and one endpoint that never answers: every cycle lasts the binding's timeout,
    // and the wake-up must still come at the boundary, not a cycle's length after it.
    let agents = s
        .deploy_agents(
            deployment("agent").replicas(2),
            &[Some(&[]), Some(&["--hostile", "silent"])],
        )
        .await;
    let agent = agents[0].1.as_ref().unwrap();

    // The operator lives LEAD before a full hour.
    let hour = TimestampRound::new().smallest(Unit::Hour).mode(RoundMode::Ceil);
    let boundary = (Timestamp::now() + LEAD).round(hour).unwrap();
    let clock = tokenbudget::clock::OffsetClock::starting_at(boundary - LEAD);
    let operator = InProcessOperator::start(&s.client, &s.ns.name, std::sync::Arc::new(clock)).await;
    let instant = |field: Option<&String>| field.and_then(|t| t.parse::<Timestamp>().ok());

    // Its first cycle scrapes the agent (nothing spent yet); a spend and a touch of the
    // binding's spec (a longer timeout: the cycles now last 2 s) make a second one count it,
    // still in the old period.
    wait_for(&s.bindings, "bb", "the first scrape", |bb| {
        bb.status.as_ref().and_then(|st| st.scraped_pods) == Some(1)
    })
    .await;
    agent.spend("gpt-4o-mini", 70, 30);
    let touch = serde_json::json!({"spec": {"metrics": {"timeout": "2s"}}});
    s.bindings
        .patch("bb", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .unwrap();
    let tb = s.wait_used("b", 100).await;
    let status = tb.status.unwrap();
    assert_eq!(
        instant(status.period_start.as_ref()),
        Some(boundary - SignedDuration::from_hours(1)),
        "the tokens were counted after the boundary: this machine needs a LEAD longer than {LEAD:?}"
    );
    assert_eq!(instant(status.resets_at.as_ref()), Some(boundary));

    // At the boundary: usage from zero, the period moved on, a PeriodReset Event ...
    let tb = wait_for(&s.budgets, "b", "the period to reset", |tb| {
        instant(tb.status.as_ref().and_then(|st| st.period_start.as_ref())) == Some(boundary)
    })
    .await;
    let status = tb.status.unwrap();
    assert_eq!(used_of(&status), (0, 0, 0));
    assert_eq!(
        instant(status.resets_at.as_ref()),
        Some(boundary + SignedDuration::from_hours(1))
    );
    let reset = wait_event(&s.events, "a PeriodReset Event", |e| {
        e.reason.as_deref() == Some("PeriodReset")
    })
    .await;
    assert_eq!(reset.type_.as_deref(), Some("Normal"));
    assert_eq!(
        reset.note.as_deref(),
        Some(
            format!(
                "a new period began at {}: usage starts again from zero",
                status.period_start.unwrap()
            )
            .as_str()
        )
    );
    // ... from a cycle the boundary itself started, within a second of it (on the operator's
    // clock; `lastScrapeTime` is rounded to the second).
    let bb = wait_for(&s.bindings, "bb", "the binding's boundary cycle", |bb| {
        instant(bb.status.as_ref().and_then(|st| st.last_scrape_time.as_ref())).is_some_and(|t| t >= boundary)
    })
    .await;
    let scraped = instant(bb.status.unwrap().last_scrape_time.as_ref()).unwrap();
    assert!(
        scraped <= boundary + SignedDuration::from_secs(1),
        "the boundary cycle ran at {scraped}, boundary {boundary}"
    );

    // The counters stayed as baselines: the new period counts only what is spent in it.
    agent.spend("gpt-4o-mini", 9, 0);
    let touch = serde_json::json!({"spec": {"metrics": {"timeout": "1s"}}});
    s.bindings
        .patch("bb", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .unwrap();
    s.wait_used("b", 9).await;
    operator.stop().await;
}

#[tokio::test]
async fn a_terminating_pod_is_scraped_once_more_at_once() {
    let s = Tenant::new("terminating").await.with_operator();
    create(&s.budgets, priced("b")).await;
    // A long interval: only the terminating trigger can make the last tokens count quickly.
    create(&s.bindings, binding("bb", "b").deployment("agent").interval("10m")).await;
    let agents = s.deploy("agent", 1).await;
    let (pod, agent) = &agents[0];
    // The first scrape (a new pod wakes nothing by itself: the binding's creation did) ...
    agent.spend("gpt-4o-mini", 5, 0);
    let bindings = s.bindings.clone();
    let hold = serde_json::json!({"metadata": {"finalizers": ["tokenbudget.io/test-hold"]}});
    s.pods
        .patch(pod, &PatchParams::default(), &Patch::Merge(&hold))
        .await
        .unwrap();
    // Touch the binding's spec so the budget reconciles now and sees the running pod. The pod
    // and binding watches are separate: that cycle may find the pod still Pending in the
    // operator's cache, and the next one is 10 minutes away. So touch again (another timeout:
    // a new generation) until the binding reports its pod scraped.
    for seconds in 2.. {
        assert!(seconds <= 10, "the pod was never scraped after 9 touches");
        let touch = serde_json::json!({"spec": {"metrics": {"timeout": format!("{seconds}s")}}});
        bindings
            .patch("bb", &PatchParams::default(), &Patch::Merge(&touch))
            .await
            .unwrap();
        let scraped = wait_scraped(&s.bindings, "bb", 1);
        if tokio::time::timeout(std::time::Duration::from_secs(5), scraped)
            .await
            .is_ok()
        {
            break;
        }
    }
    s.wait_used("b", 5).await;

    agent.spend("gpt-4o-mini", 20, 0);
    s.pods.delete(pod, &Default::default()).await.unwrap();
    s.wait_used("b", 25).await;
    let release = serde_json::json!({"metadata": {"finalizers": null}});
    s.pods
        .patch(pod, &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
}

/// The pods of a Job that finish leave the budget's ledger (`status.accounting.pods`) while
/// they still exist, and what they counted stays in `used`: a Job of many completions no
/// longer fills the status.
#[tokio::test]
async fn finished_pods_leave_the_ledger_and_their_tokens_stay() {
    let mut s = Tenant::new("finished").await.with_operator();
    let jobs: Api<Job> = s.api();
    create(&jobs, job("batch").parallelism(2).completions(2)).await;
    create(&s.budgets, priced("b")).await;
    create(&s.bindings, binding("bb", "b").named(WorkloadKind::Job, "batch")).await;
    let pods = s.run_pods("batch", 2).await;
    // Their counters are a baseline until a first scrape has seen them.
    wait_scraped(&s.bindings, "bb", 2).await;
    s.agents[0].spend("gpt-4o-mini", 30, 5);
    s.agents[1].spend("gpt-4o-mini", 7, 0);
    let tb = s.wait_used("b", 42).await;
    let mut uids = Vec::new();
    for pod in &pods {
        uids.push(s.pods.get(pod).await.unwrap().metadata.uid.expect("a uid"));
    }
    // The pods the ledger lists, by uid, whatever the layout of `status.accounting`.
    let ledger = |tb: &TokenBudget| -> Vec<String> {
        let accounting = tb.status.as_ref().and_then(|s| s.accounting.as_ref());
        let text = serde_json::to_string(&accounting).expect("the ledger serializes");
        uids.iter().filter(|uid| text.contains(uid.as_str())).cloned().collect()
    };
    assert_eq!(ledger(&tb), uids, "both running pods are in the ledger");

    // Both pods finish, one well and one not; the pods stay, as a Job's pods do.
    finish_pod(&s.pods, &pods[0], "Succeeded").await;
    finish_pod(&s.pods, &pods[1], "Failed").await;
    let tb = wait_for(&s.budgets, "b", "the finished pods gone from the ledger", |tb| {
        ledger(tb).is_empty()
    })
    .await;
    assert_eq!(used(&tb), 42, "their tokens stay counted");
    assert_eq!(
        tb.status.as_ref().and_then(|s| s.workloads.first()).map(|w| w.tokens),
        Some(42)
    );
    for pod in &pods {
        assert!(s.pods.get_opt(pod).await.unwrap().is_some(), "{pod} still exists");
    }
}

/// The value of the operator's series `series`, if it has one.
fn gauge(operator: &Operator, series: &str) -> Option<f64> {
    let metrics = operator.get("/metrics").expect("the operator's metrics").1;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
}

/// The value of the operator's counter `series` (0 while it has no such series).
fn counter(operator: &Operator, series: &str) -> u64 {
    gauge(operator, series).map_or(0, |v| v as u64)
}

/// With usage unchanged, cycle after cycle, nothing is written: no status of a budget or a
/// binding moves, so nothing that watches them (a GitOps tool, say) wakes every cycle. That
/// holds for a budget that has counted nothing, and for one that just counted tokens (whose
/// burn rate is measured when usage changes, not every cycle).
#[tokio::test]
async fn an_idle_budget_and_its_binding_are_not_written_again() {
    let s = Tenant::new("idle").await.with_operator();
    create(&s.budgets, priced("research").tokens(10_000)).await;
    // The agent spent before its pod was bound: its counters are a baseline, and the budget's
    // usage stays 0 from its first cycle on.
    let agents = s.deploy("summarizer", 1).await;
    agents[0].1.spend("gpt-4o-mini", 100, 20);
    next_second_after(jiff::Timestamp::now()).await;
    create(&s.bindings, binding("summarizer", "research").deployment("summarizer")).await;
    // Settled: the burn rate needs 10 s of samples.
    wait_for(&s.budgets, "research", "a burn rate of 0", |tb| {
        tb.status.as_ref().and_then(|st| st.burn_rate) == Some(0)
    })
    .await;
    wait_scraped(&s.bindings, "summarizer", 1).await;
    let operator = s.operator.as_ref().expect("an operator");
    assert_idle(&s, operator).await;

    // Now it spends, once: the burn rate measured then stays while nothing more is spent.
    agents[0].1.spend("gpt-4o-mini", 1_000, 200);
    let tb = s.wait_used("research", 1_200).await;
    assert!(tb.status.and_then(|st| st.burn_rate).is_some_and(|rate| rate > 0));
    assert_idle(&s, operator).await;
}

/// Asserts that three cycles of the operator in `s` write no status, of its budget `research`
/// or its binding `summarizer` (whose one pod is scraped each cycle).
async fn assert_idle(s: &Tenant, operator: &Operator) {
    let scrapes = "tokenbudget_scrapes_total{result=\"ok\"}";
    // One pod, one scrape per cycle, a cycle a second.
    let cycles_after = |n: u64| {
        let target = counter(operator, scrapes) + n;
        within(
            async move {
                while counter(operator, scrapes) < target {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            "more cycles",
        )
    };
    // One more cycle, so that the writes of the cycle that settled are done.
    cycles_after(1).await;
    let writes = "tokenbudget_status_writes_total{kind=\"BudgetBinding\"}";
    let budget_writes = "tokenbudget_status_writes_total{kind=\"TokenBudget\"}";
    let (bindings_before, budgets_before) = (counter(operator, writes), counter(operator, budget_writes));
    let tb = s.budgets.get("research").await.unwrap();
    let bb = s.bindings.get("summarizer").await.unwrap();
    cycles_after(3).await;
    assert_eq!(counter(operator, writes), bindings_before, "binding status writes");
    assert_eq!(counter(operator, budget_writes), budgets_before, "budget status writes");
    let now_tb = s.budgets.get("research").await.unwrap();
    let now_bb = s.bindings.get("summarizer").await.unwrap();
    assert_eq!(now_tb.metadata.resource_version, tb.metadata.resource_version);
    assert_eq!(now_bb.metadata.resource_version, bb.metadata.resource_version);
}

/// Accounting rule 3 across budgets: a binding moved to another budget brings its pods'
/// future tokens, not the ones the first budget already counted.
#[tokio::test]
async fn a_binding_moved_to_another_budget_counts_every_token_once() {
    let s = Tenant::new("moved").await.with_operator();
    create(&s.budgets, priced("a")).await;
    create(&s.budgets, priced("b")).await;
    create(&s.bindings, binding("mover", "a").deployment("agent")).await;
    let agents = s.deploy("agent", 1).await;
    agents[0].1.spend("gpt-4o-mini", 1000, 0);
    s.wait_used("a", 1000).await;

    let moved_at = jiff::Timestamp::now();
    let moved = serde_json::json!({"spec": {"budgetRef": {"name": "b"}}});
    s.bindings
        .patch("mover", &PatchParams::default(), &Patch::Merge(&moved))
        .await
        .unwrap();
    // b's first scrape of the pod: its counter then is b's baseline.
    wait_for(&s.budgets, "b", "b to have scraped the pod", |tb| {
        tb.status
            .as_ref()
            .and_then(|st| st.accounting.as_ref())
            .is_some_and(|a| a.pod_ledgers().len() == 1)
    })
    .await;
    agents[0].1.spend("gpt-4o-mini", 200, 0);
    s.wait_used("b", 200).await;
    // The budget it left is woken by the move (it has no binding left, so nothing else
    // would run a cycle of it for minutes), and counts nothing more.
    let a = s.wait_cycle_since("a", moved_at).await;
    assert_eq!(used(&a), 1000);
    assert_eq!(used(&s.budgets.get("b").await.unwrap()), 200);
}

/// A status write the real API server refuses (here an admission policy that refuses more
/// than 100 used tokens; etcd's size limit is refused the same way) is reported on the
/// budget (`Ready=False`, `StatusWriteFailed`, written alone), by a Warning Event and by the
/// metric; counting goes on in memory, and the next write that is accepted has every token.
#[tokio::test]
async fn a_status_write_the_api_server_refuses_is_reported_and_nothing_is_lost() {
    let s = Tenant::new("refused").await.with_operator();
    create(&s.budgets, priced("research").tokens(10_000)).await;
    let agents = s.deploy("summarizer", 1).await;
    create(&s.bindings, binding("summarizer", "research").deployment("summarizer")).await;
    wait_scraped(&s.bindings, "summarizer", 1).await;
    agents[0].1.spend("gpt-4o-mini", 40, 10);
    s.wait_used("research", 50).await;

    let policy = RefusedStatuses::new(
        &s.budgets,
        "research",
        "!has(object.status) || !has(object.status.used) || object.status.used.tokens <= 100",
        "the test refuses more than 100 used tokens",
        serde_json::json!({"used": {"tokens": 101, "input": 101, "output": 0}}),
    )
    .await;

    agents[0].1.spend("gpt-4o-mini", 80, 20);
    let tb = wait_for(&s.budgets, "research", "Ready=False, StatusWriteFailed", |tb| {
        tb.status.as_ref().is_some_and(|st| {
            st.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "StatusWriteFailed")
        })
    })
    .await;
    assert_eq!(used(&tb), 50, "the refused status is not written");
    let ready_of = |tb: &TokenBudget| {
        let conditions = &tb.status.as_ref().expect("a status").conditions;
        conditions.iter().find(|c| c.type_ == "Ready").expect("Ready").clone()
    };
    let ready = ready_of(&tb);
    assert!(ready.message.contains("refuses more than 100"), "{}", ready.message);
    wait_event(&s.events, "a StatusWriteFailed Event", |e| {
        e.reason.as_deref() == Some("StatusWriteFailed")
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("research")
    })
    .await;
    let operator = s.operator.as_ref().expect("an operator");
    let failures = "tokenbudget_status_write_failures_total{kind=\"TokenBudget\",reason=\"invalid\"}";
    assert!(counter(operator, failures) > 0, "{failures}");

    // The policy goes: the next write has every token, and Ready is True again.
    policy.remove();
    let tb = s.wait_used("research", 150).await;
    let ready = ready_of(&tb);
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "Reconciled"));
}

/// The operator's chargeback series of budget `budget`: `name{labels}` and value.
fn chargeback(operator: &Operator, budget: &str) -> std::collections::BTreeMap<String, f64> {
    let label = format!("budget=\"{budget}\"");
    operator
        .metrics()
        .into_iter()
        .filter(|(series, _)| {
            (series.starts_with("tokenbudget_tokens_total{") || series.starts_with("tokenbudget_cost_total{"))
                && series.contains(&label)
        })
        .collect()
}

/// Waits until `/metrics` shows these tokens per (workload, model, type) in the
/// `tokenbudget_tokens_total` of `budget` (and no other series of it), and returns every
/// chargeback series of the budget. A counter only grows: one that passes a wanted value
/// never comes back to it, and the wait fails.
async fn wait_charged(
    s: &Tenant,
    operator: &Operator,
    budget: &str,
    wanted: &[(&str, &str, &str, u64)],
) -> std::collections::BTreeMap<String, f64> {
    let ns = &s.ns.name;
    let wanted: std::collections::BTreeMap<String, f64> = wanted
        .iter()
        .map(|(workload, model, token_type, tokens)| {
            let series = format!(
                "tokenbudget_tokens_total{{budget=\"{budget}\",model=\"{model}\",namespace=\"{ns}\",\
                 type=\"{token_type}\",workload=\"{workload}\",workload_kind=\"Deployment\"}}"
            );
            (series, *tokens as f64)
        })
        .collect();
    let mut last = Default::default();
    let found = tokio::time::timeout(TIMEOUT, async {
        loop {
            let all = chargeback(operator, budget);
            let tokens: std::collections::BTreeMap<String, f64> = all
                .iter()
                .filter(|(series, _)| series.starts_with("tokenbudget_tokens_total"))
                .map(|(s, v)| (s.clone(), *v))
                .collect();
            if tokens == wanted {
                return all;
            }
            last = tokens;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for the counters\n  wanted {wanted:#?}\n  last {last:#?}"))
}

#[tokio::test]
async fn the_chargeback_counters_equal_what_the_agents_spent_to_the_token() {
    let mut s = Tenant::new("chargeback").await.with_operator();
    create(&s.budgets, priced("research").tokens(1_000_000)).await;
    create(
        &s.bindings,
        binding("agents", "research")
            .deployment("summarizer")
            .deployment("researcher"),
    )
    .await;
    let summarizers = s.deploy("summarizer", 2).await;
    let researchers = s.deploy("researcher", 1).await;
    summarizers[0].1.spend("gpt-4o-mini", 1000, 200);
    summarizers[1].1.spend("gpt-4o-mini", 30, 4);
    researchers[0].1.spend("gpt-4o-mini", 500_000, 0);
    researchers[0].1.spend("other-model", 77, 0);
    s.wait_used("research", 501_311).await;

    let operator = s.operator.as_ref().unwrap();
    let charged = wait_charged(
        &s,
        operator,
        "research",
        &[
            ("summarizer", "gpt-4o-mini", "input", 1030),
            ("summarizer", "gpt-4o-mini", "output", 204),
            ("researcher", "gpt-4o-mini", "input", 500_000),
            ("researcher", "other-model", "input", 77),
        ],
    )
    .await;
    eprintln!("the chargeback series of research:");
    for (series, value) in &charged {
        eprintln!("{series} {value}");
    }
    // Cost in the budget's currency, per workload: gpt-4o-mini at 0.15 and 0.60 per million;
    // the unpriced model has tokens and no cost series.
    let cost = |workload: &str| total_of(&charged, "tokenbudget_cost_total", &format!("workload=\"{workload}\""));
    assert!((cost("summarizer") - (1030.0 * 0.15 + 204.0 * 0.60) / 1e6).abs() < 1e-12);
    assert!((cost("researcher") - 500_000.0 * 0.15 / 1e6).abs() < 1e-12);
    assert_eq!(
        charged
            .keys()
            .filter(|s| s.starts_with("tokenbudget_cost_total"))
            .count(),
        2,
        "{charged:#?}"
    );
    assert!(
        charged
            .keys()
            .all(|s| !s.contains("cost_total") || s.contains("currency=\"USD\""))
    );
    // The phase, one series per state; and what the binary was built from.
    let metrics = operator.metrics();
    let phase = |p: &str| {
        metrics
            .get(&format!(
                "tokenbudget_budget_phase{{budget=\"research\",namespace=\"{}\",phase=\"{p}\"}}",
                s.ns.name
            ))
            .copied()
    };
    assert_eq!(
        (phase("Active"), phase("Warning"), phase("Exhausted")),
        (Some(0.0), Some(1.0), Some(0.0))
    );
    assert!(
        metrics
            .keys()
            .any(|s| s.starts_with("tokenbudget_build_info{") && s.contains("version=\"0.1.0\"")),
        "{metrics:#?}"
    );

    // Killed and started again: the new operator's counters start from 0 and count only what
    // it counts itself, never again what the status already holds.
    let mut killed = s.operator.take().unwrap();
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    summarizers[0].1.spend("gpt-4o-mini", 5, 0);
    s.operator = Some(Operator::start(&s.ns.name));
    s.wait_used("research", 501_316).await;
    let operator = s.operator.as_ref().unwrap();
    wait_charged(&s, operator, "research", &[("summarizer", "gpt-4o-mini", "input", 5)]).await;
    summarizers[1].1.spend("gpt-4o-mini", 0, 6);
    s.wait_used("research", 501_322).await;
    wait_charged(
        &s,
        operator,
        "research",
        &[
            ("summarizer", "gpt-4o-mini", "input", 5),
            ("summarizer", "gpt-4o-mini", "output", 6),
        ],
    )
    .await;

    // A deleted budget's series go.
    delete(&s.budgets, "research").await;
    within(
        async {
            while !chargeback(operator, "research").is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        },
        "the deleted budget's chargeback series to go",
    )
    .await;
}
