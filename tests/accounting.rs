//! Usage accounting end to end: a real API server and controller-manager, the operator binary,
//! and agent-sim processes serving real metrics on their own loopback addresses while the test
//! plays the kubelet.

mod common;

use common::*;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use tokenbudget::api::{BudgetBinding, TokenBudget};

fn used(tb: &TokenBudget) -> i64 {
    tb.status
        .as_ref()
        .and_then(|s| s.used.as_ref())
        .map_or(-1, |u| u.tokens)
}

fn budget(name: &str, tokens: i64) -> TokenBudget {
    serde_yaml::from_str(&format!(
        "apiVersion: tokenbudget.io/v1alpha1\nkind: TokenBudget\nmetadata: {{name: {name}}}\n\
         spec: {{limits: {{tokens: {tokens}}}, thresholds: [50, 90], \
         pricing: [{{model: gpt-4o-mini, input: '0.15', output: '0.60'}}]}}"
    ))
    .unwrap()
}

fn binding(name: &str, budget: &str, workload: &str, interval: &str) -> BudgetBinding {
    serde_yaml::from_str(&format!(
        "apiVersion: tokenbudget.io/v1alpha1\nkind: BudgetBinding\nmetadata: {{name: {name}}}\n\
         spec: {{budgetRef: {{name: {budget}}}, workloads: [{{kind: Deployment, name: {workload}}}], \
         metrics: {{port: metrics, interval: {interval}, timeout: 1s}}}}"
    ))
    .unwrap()
}

struct Scenario {
    client: kube::Client,
    ns: TestNamespace,
    operator: Option<Operator>,
    budgets: Api<TokenBudget>,
    bindings: Api<BudgetBinding>,
    pods: Api<Pod>,
}

impl Scenario {
    async fn new(test: &str) -> Self {
        let client = client().await;
        ensure_crds(&client).await;
        let ns = TestNamespace::new(&client, test).await;
        let operator = Some(Operator::start(&ns.name));
        Scenario {
            budgets: ns.api(&client),
            bindings: ns.api(&client),
            pods: ns.api(&client),
            client,
            ns,
            operator,
        }
    }

    /// A Deployment with `replicas` pods, each running an agent; returns (pod name, agent).
    async fn deploy(&self, name: &str, replicas: i32) -> Vec<(String, Agent)> {
        let deployments: Api<Deployment> = self.ns.api(&self.client);
        deployments
            .create(&PostParams::default(), &deployment(name, replicas))
            .await
            .unwrap();
        let mut running = Vec::new();
        for pod in pods_of(&self.pods, name, replicas as usize).await {
            let agent = Agent::start(&agent_ip(), &[]);
            run_pod(&self.pods, &pod, &agent.ip, 0).await;
            running.push((pod, agent));
        }
        running
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
    let s = Scenario::new("usage").await;
    s.budgets
        .create(&PostParams::default(), &budget("research", 10_000))
        .await
        .unwrap();
    s.bindings
        .create(
            &PostParams::default(),
            &binding("summarizer", "research", "summarizer", "1s"),
        )
        .await
        .unwrap();
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

    let bb = wait_for(&s.bindings, "summarizer", "binding usage", |bb| {
        bb.status.as_ref().and_then(|st| st.used_tokens) == Some(1500)
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
    let mut s = Scenario::new("restarts").await;
    s.budgets
        .create(&PostParams::default(), &budget("b", 1_000_000))
        .await
        .unwrap();
    s.bindings
        .create(&PostParams::default(), &binding("bb", "b", "agent", "1s"))
        .await
        .unwrap();
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
async fn two_bindings_on_one_pod_count_it_once() {
    let s = Scenario::new("dedup").await;
    s.budgets
        .create(&PostParams::default(), &budget("b", 1_000_000))
        .await
        .unwrap();
    s.bindings
        .create(&PostParams::default(), &binding("first", "b", "agent", "1s"))
        .await
        .unwrap();
    let by_label: BudgetBinding = serde_yaml::from_str(
        "apiVersion: tokenbudget.io/v1alpha1\nkind: BudgetBinding\nmetadata: {name: second}\n\
         spec: {budgetRef: {name: b}, workloads: [{kind: Deployment, selector: {matchLabels: {team: research}}}], \
         metrics: {port: 9464, interval: 1s, timeout: 1s}}",
    )
    .unwrap();
    s.bindings.create(&PostParams::default(), &by_label).await.unwrap();
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

#[tokio::test]
async fn a_hostile_endpoint_is_reported_and_the_others_keep_counting() {
    let s = Scenario::new("hostile").await;
    s.budgets
        .create(&PostParams::default(), &budget("b", 1_000_000))
        .await
        .unwrap();
    s.bindings
        .create(&PostParams::default(), &binding("bb", "b", "agent", "1s"))
        .await
        .unwrap();
    let deployments: Api<Deployment> = s.ns.api(&s.client);
    deployments
        .create(&PostParams::default(), &deployment("agent", 3))
        .await
        .unwrap();
    let names = pods_of(&s.pods, "agent", 3).await;
    // One good agent; one pod whose endpoint serves garbage; one pod with no IP at all.
    let good = Agent::start(&agent_ip(), &[]);
    run_pod(&s.pods, &names[0], &good.ip, 0).await;
    let garbage_ip = agent_ip();
    let garbage = std::net::TcpListener::bind(format!("{garbage_ip}:9464")).unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut stream in garbage.incoming().flatten() {
            let mut request = [0u8; 2048];
            let _ = stream.read(&mut request);
            let body = b"\x00\x01\x02 not metrics {{{\n";
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        }
    });
    run_pod(&s.pods, &names[1], &garbage_ip, 0).await;

    good.spend("gpt-4o-mini", 11, 0);
    s.wait_used("b", 11).await;
    // Once the garbage pod has its IP, its scrapes fail for a reason of their own.
    let garbage_pod = names[1].clone();
    let bb = wait_for(
        &s.bindings,
        "bb",
        "ScrapeHealthy=False naming the garbage pod",
        move |bb| {
            bb.status.as_ref().is_some_and(|st| {
                st.conditions.iter().any(|c| {
                    c.type_ == "ScrapeHealthy"
                        && c.status == "False"
                        && c.message.contains(&format!("{garbage_pod}: unparsable"))
                })
            })
        },
    )
    .await;
    let st = bb.status.unwrap();
    let c = st.conditions.iter().find(|c| c.type_ == "ScrapeHealthy").unwrap();
    assert!(
        c.message.contains(&names[1]) && c.message.contains("unparsable"),
        "{}",
        c.message
    );
    assert!(
        c.message.contains(&names[2]) && c.message.contains("no IP"),
        "{}",
        c.message
    );
    assert_eq!((st.pods, st.scraped_pods), (Some(3), Some(1)));
    good.spend("gpt-4o-mini", 4, 0);
    s.wait_used("b", 15).await;

    // The Event names the pod.
    let events: Api<k8s_openapi::api::events::v1::Event> = s.ns.api(&s.client);
    let found = wait_event(&events, "a ScrapeFailed Event", |e| {
        e.reason.as_deref() == Some("ScrapeFailed") && e.note.as_deref().is_some_and(|n| n.contains(&names[1]))
    })
    .await;
    assert_eq!(found.regarding.and_then(|r| r.name).as_deref(), Some("bb"));
}

#[tokio::test]
async fn a_terminating_pod_is_scraped_once_more_at_once() {
    let s = Scenario::new("terminating").await;
    s.budgets
        .create(&PostParams::default(), &budget("b", 1_000_000))
        .await
        .unwrap();
    // A long interval: only the terminating trigger can make the last tokens count quickly.
    s.bindings
        .create(&PostParams::default(), &binding("bb", "b", "agent", "10m"))
        .await
        .unwrap();
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
    // Touch the binding's spec so the budget reconciles now and sees the running pod.
    let touch = serde_json::json!({"spec": {"metrics": {"timeout": "2s"}}});
    bindings
        .patch("bb", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .unwrap();
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
