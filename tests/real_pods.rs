//! The agent as a real container: on the node that `hack/node.sh up` adds to the testbed, the
//! kube-scheduler places the pods, the kubelet runs `localhost/agent-sim:local` in containerd,
//! gives each pod an IP on the node's bridge, restarts a crashed container (with a higher
//! `restartCount`) and sends SIGTERM on deletion. The operator scrapes the pods at those IPs,
//! and the tests spend through them. Nothing here plays the kubelet.
//!
//! These tests need that node and fail without one (they never skip): `hack/test.sh` runs them
//! in a step of their own, after the other integration tests, whose pods a node would run.

mod common;

use std::net::SocketAddr;

use common::*;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Node, Pod},
};
use kube::{Api, Client, api::ListParams};
use tokenbudget::{
    api::{BudgetPhase, EnforcementAction::ScaleDown, TokenBudget},
    enforce::PAUSED_REPLICAS,
};

const IMAGE: &str = "localhost/agent-sim:local";

/// Fails the test unless some node can run pods: Ready, schedulable, without taints that keep
/// pods off it.
async fn require_node(client: &Client) {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("nodes listed");
    let usable = |n: &Node| {
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let spec = n.spec.as_ref();
        let unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        let tainted = spec
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|ts| ts.iter().any(|t| t.effect != "PreferNoSchedule"));
        ready && !unschedulable && !tainted
    };
    let names: Vec<String> = nodes.items.iter().filter_map(|n| n.metadata.name.clone()).collect();
    assert!(
        nodes.items.iter().any(usable),
        "no Ready, schedulable node in the cluster of KUBECONFIG (nodes: {names:?}): these tests run \
         the agent as a real container; start one with hack/node.sh up"
    );
}

fn used(tb: &TokenBudget) -> (i64, i64, i64) {
    tb.status
        .as_ref()
        .and_then(|s| s.used.as_ref())
        .map_or((-1, -1, -1), |u| (u.tokens, u.input, u.output))
}

/// The pod's IP and the agent's port.
fn address(pod: &Pod) -> String {
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).expect("a pod IP");
    format!("{ip}:{METRICS_PORT}")
}

fn restarts(pod: &Pod) -> i32 {
    agent_status(pod).map_or(0, |c| c.restart_count)
}

fn agent_status(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "agent")
}

/// Running, with an IP, its agent container ready (the readiness probe got its /metrics).
fn serving(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    pod.metadata.deletion_timestamp.is_none()
        && status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status.and_then(|s| s.pod_ip.as_deref()).is_some()
        && agent_status(pod).is_some_and(|c| c.ready)
}

/// A Deployment of real agents: agent-sim on 0.0.0.0:9464 in the local image, which cannot be
/// pulled. Pods get no ServiceAccount token: they never call the API.
fn agent_deployment(name: &str, replicas: i32, drain: &str) -> Deployment {
    deployment(name)
        .replicas(replicas)
        .pod(|pod| {
            pod.automount_service_account_token = Some(false);
            pod.termination_grace_period_seconds = Some(30);
            let agent = &mut pod.containers[0];
            agent.image = Some(IMAGE.into());
            agent.image_pull_policy = Some("Never".into());
            agent.args = Some(
                ["--listen", &format!("0.0.0.0:{METRICS_PORT}"), "--drain", drain]
                    .map(String::from)
                    .to_vec(),
            );
            agent.readiness_probe = Some(
                serde_json::from_value(serde_json::json!(
                    {"httpGet": {"path": "/metrics", "port": "metrics"}, "periodSeconds": 1}
                ))
                .unwrap(),
            );
        })
        .build()
}

impl Tenant {
    /// A namespace with the operator watching it, on a cluster with a node to run the pods.
    async fn on_a_node(test: &str) -> Self {
        let tenant = Tenant::new(test).await;
        require_node(&tenant.client).await;
        tenant.with_operator()
    }

    async fn create_budget(&self, budget: BudgetBuilder) {
        create(&self.budgets, budget).await;
    }

    async fn create_binding(&self, binding: BindingBuilder) {
        create(&self.bindings, binding).await;
    }

    async fn deploy(&self, name: &str, replicas: i32, drain: &str) {
        create(&self.deployments, agent_deployment(name, replicas, drain)).await;
    }

    /// Waits until exactly `count` pods of `app` exist and all of them serve (none
    /// terminating); returns them sorted by name.
    async fn serving_pods(&self, app: &str, count: usize) -> Vec<Pod> {
        self.list_until(app, &format!("{count} serving pods of {app}"), |pods| {
            pods.len() == count && pods.iter().all(serving)
        })
        .await
    }

    /// Polls the pods of `app` (every 200 ms: their names are not known in advance) until
    /// `done` holds for the whole list.
    async fn list_until(&self, app: &str, what: &str, done: impl Fn(&[Pod]) -> bool) -> Vec<Pod> {
        let params = ListParams::default().labels(&format!("app={app}"));
        within(
            async {
                loop {
                    let mut pods = self.pods.list(&params).await.expect("pods listed").items;
                    if done(&pods) {
                        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
                        return pods;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            },
            what,
        )
        .await
    }

    async fn wait_budget(&self, what: &str, cond: impl Fn(&TokenBudget) -> bool) -> TokenBudget {
        wait_for(&self.budgets, "b", what, cond).await
    }

    async fn wait_used(&self, tokens: i64) -> TokenBudget {
        self.wait_budget(&format!("used.tokens = {tokens}"), |tb| used(tb).0 == tokens)
            .await
    }
}

fn spend(pod: &Pod, model: &str, input: u64, output: u64) {
    agent_post(
        &address(pod),
        &format!("/spend?model={model}&input={input}&output={output}"),
    );
}

#[tokio::test]
async fn two_real_replicas_are_counted_exactly() {
    let s = Tenant::on_a_node("real-accounting").await;
    s.create_budget(budget("b")).await;
    s.create_binding(binding("bb", "b").deployment("agent")).await;
    s.deploy("agent", 2, "0s").await;
    let pods = s.serving_pods("agent", 2).await;
    assert_ne!(address(&pods[0]), address(&pods[1]), "each pod has an IP of its own");
    wait_scraped(&s.bindings, "bb", 2).await;

    spend(&pods[0], "gpt-4o-mini", 1000, 200);
    spend(&pods[1], "gpt-4o", 300, 45);
    spend(&pods[0], "gpt-4o-mini", 10, 5);
    let tb = s.wait_used(1560).await;
    assert_eq!(used(&tb), (1560, 1310, 250));
    let status = tb.status.as_ref().unwrap();
    let workloads: Vec<(&str, i64)> = status.workloads.iter().map(|w| (w.name.as_str(), w.tokens)).collect();
    assert_eq!(workloads, [("agent", 1560)]);
    let mut models: Vec<(&str, i64, i64)> = status
        .models
        .iter()
        .map(|m| (m.model.as_str(), m.input, m.output))
        .collect();
    models.sort();
    assert_eq!(models, [("gpt-4o", 300, 45), ("gpt-4o-mini", 1010, 205)]);
}

#[tokio::test]
async fn a_real_crash_counts_both_containers_once() {
    let s = Tenant::on_a_node("real-crash").await;
    s.create_budget(budget("b")).await;
    s.create_binding(binding("bb", "b").deployment("agent")).await;
    s.deploy("agent", 1, "0s").await;
    let pod = s.serving_pods("agent", 1).await.remove(0);
    let name = pod.metadata.name.clone().unwrap();
    let uid = pod.metadata.uid.clone();
    wait_scraped(&s.bindings, "bb", 1).await;

    spend(&pod, "gpt-4o-mini", 100, 0);
    s.wait_used(100).await;
    // Seen by a scrape before the crash, so it is not lost with the container.
    spend(&pod, "gpt-4o-mini", 7, 0);
    s.wait_used(107).await;

    // The process exits; the kubelet starts the container again.
    agent_post(&address(&pod), "/exit?code=3");
    let pod = wait_for(&s.pods, &name, "the agent container restarted and serving", |p| {
        restarts(p) == 1 && serving(p)
    })
    .await;
    let last = agent_status(&pod)
        .and_then(|c| c.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .map(|t| t.exit_code);
    assert_eq!(last, Some(3), "the first container ended with the code it was asked to");
    // A new process: its counters start from zero.
    let target: SocketAddr = address(&pod).parse().unwrap();
    let (code, body) = http_get(target, "/metrics").expect("the restarted agent answers");
    assert_eq!(code, 200);
    assert!(
        !body.contains("gen_ai_client_token_usage_sum"),
        "counters after the restart: {body}"
    );
    // The restart is in the operator's ledger: from here on the new container's counters are
    // read against the restart, whichever scrape first sees them.
    s.wait_budget("the restart in the ledger", |tb| {
        tb.status
            .as_ref()
            .and_then(|st| st.accounting.as_ref())
            .is_some_and(|a| {
                a.pod_ledgers()
                    .iter()
                    .any(|p| Some(&p.uid) == uid.as_ref() && p.restarts == 1)
            })
    })
    .await;

    spend(&pod, "gpt-4o-mini", 30, 0);
    s.wait_used(137).await;
    // And later scrapes add only what is new.
    spend(&pod, "gpt-4o-mini", 1, 0);
    let tb = s.wait_used(138).await;
    assert_eq!(used(&tb), (138, 138, 0));
}

#[tokio::test]
async fn a_deleted_pod_gets_sigterm_and_its_last_tokens_count() {
    let s = Tenant::on_a_node("real-sigterm").await;
    // The pod runs before it is bound: its counter at the first scrape is its baseline.
    s.deploy("agent", 1, "5s").await;
    let pod = s.serving_pods("agent", 1).await.remove(0);
    let name = pod.metadata.name.clone().unwrap();
    s.create_budget(budget("b")).await;
    // A long interval: after the first scrape (the binding's creation), only the scrape of a
    // pod that starts terminating can count anything within the test.
    s.create_binding(binding("bb", "b").deployment("agent").interval("10m"))
        .await;
    wait_scraped(&s.bindings, "bb", 1).await;
    assert_eq!(used(&s.budgets.get("b").await.unwrap()).0, 0);

    spend(&pod, "gpt-4o-mini", 20, 5);
    s.pods.delete(&name, &Default::default()).await.unwrap();
    // The kubelet sends SIGTERM; the agent drains for 5 s, long enough for the scrape that
    // deletion triggers.
    let tb = s.wait_used(25).await;
    assert_eq!(used(&tb), (25, 20, 5));
    wait_gone(&s.pods, &name, "the deleted pod to go").await;
    // The ReplicaSet's replacement starts at zero: nothing more is counted.
    s.serving_pods("agent", 1).await;
    assert_eq!(used(&s.budgets.get("b").await.unwrap()), (25, 20, 5));
}

#[tokio::test]
async fn scale_down_stops_the_real_pods_and_a_raised_limit_brings_them_back() {
    let s = Tenant::on_a_node("real-scale-down").await;
    s.create_budget(budget("b").tokens(1000).action(ScaleDown)).await;
    s.create_binding(binding("bb", "b").deployment("agent")).await;
    s.deploy("agent", 2, "0s").await;
    let pods = s.serving_pods("agent", 2).await;
    wait_scraped(&s.bindings, "bb", 2).await;

    spend(&pods[0], "gpt-4o-mini", 600, 0);
    spend(&pods[1], "gpt-4o-mini", 300, 200);
    let tb = s
        .wait_budget("Exhausted at exactly 1100 tokens", |tb| {
            phase(tb) == Some(BudgetPhase::Exhausted) && used(tb).0 == 1100
        })
        .await;
    assert_eq!(used(&tb), (1100, 900, 200));
    let d = wait_for(&s.deployments, "agent", "the Deployment scaled to 0", |d| {
        d.spec.replicas == Some(0)
    })
    .await;
    assert_eq!(annotation(&d.metadata, PAUSED_REPLICAS), Some("2"));
    // The pods are gone once the kubelet has stopped their containers.
    s.list_until("agent", "the real pods to be gone", |pods| pods.is_empty())
        .await;
    assert_eq!(
        used(&s.budgets.get("b").await.unwrap()).0,
        1100,
        "their last scrapes added nothing"
    );

    // Room again: the old replica count comes back, on new real pods.
    set_token_limit(&s.budgets, "b", 5000).await;
    // The scale and the annotation are two writes: restored once both are.
    wait_for(&s.deployments, "agent", "the Deployment restored to 2", |d| {
        d.spec.replicas == Some(2) && annotation(&d.metadata, PAUSED_REPLICAS).is_none()
    })
    .await;
    let new = s.serving_pods("agent", 2).await;
    for pod in &new {
        assert!(
            !pods.iter().any(|old| old.metadata.uid == pod.metadata.uid),
            "a new pod, not an old one"
        );
    }
    wait_scraped(&s.bindings, "bb", 2).await;
    spend(&new[0], "gpt-4o-mini", 50, 0);
    spend(&new[1], "gpt-4o-mini", 0, 50);
    let tb = s.wait_used(1200).await;
    assert_eq!(used(&tb), (1200, 950, 250));
    assert_eq!(phase(&tb), Some(BudgetPhase::Active));
}
