//! The Prometheus source end to end: the real API server, the operator binary, agent-sim
//! processes on loopback addresses of their own while the test plays the kubelet, and a real
//! Prometheus (Debian's `prometheus`, which `hack/test.sh` installs) scraping those agents
//! every second, each labelled with its pod's namespace and name as Kubernetes service
//! discovery labels them. Bindings with `metrics.source: Prometheus` read the agents' counters
//! from it; the tests compare with bindings that scrape the same agents directly.

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Mutex,
};

use common::*;
use tokenbudget::api::{BudgetBinding, TokenBudget};

/// A Prometheus server of its own for one test: on a free loopback port, its data in a
/// temporary directory, scraping every second the targets that the test lists in a file
/// (`file_sd_configs`), each labelled `namespace` and `pod`.
struct Prometheus {
    child: Child,
    address: SocketAddr,
    dir: PathBuf,
    /// Pod name -> (namespace, `ip:port`).
    targets: Mutex<BTreeMap<String, (String, String)>>,
}

impl Prometheus {
    async fn start(label: &str) -> Self {
        let binary = std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("prometheus-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("Prometheus's directory");
        let targets = dir.join("targets.json");
        std::fs::write(&targets, "[]").expect("the targets file");
        let config = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\n\
             scrape_configs:\n\
             - job_name: agents\n  \
               file_sd_configs: [{{files: [{targets:?}], refresh_interval: 1s}}]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("the config file");
        let address = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("Prometheus's log");
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{binary} starts ({e}): these tests need Prometheus (`apt-get install prometheus`, as hack/test.sh does)")
            });
        let prometheus = Self {
            child,
            address,
            dir,
            targets: Mutex::new(BTreeMap::new()),
        };
        within(
            async {
                while !matches!(
                    tokio::task::spawn_blocking(move || http_get(address, "/-/ready")).await,
                    Ok(Ok((200, _)))
                ) {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            "Prometheus ready",
        )
        .await;
        prometheus
    }

    /// The base URL of its HTTP API, for `--prometheus-url`.
    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Scrapes the agent at `address` as the pod `pod` of `namespace` (from now on).
    fn scrape(&self, namespace: &str, pod: &str, address: &str) {
        let mut targets = self.targets.lock().unwrap();
        targets.insert(pod.to_string(), (namespace.to_string(), address.to_string()));
        self.write(&targets);
    }

    /// Stops scraping the pod `pod`, as when Prometheus loses a target.
    fn forget(&self, pod: &str) {
        let mut targets = self.targets.lock().unwrap();
        targets.remove(pod);
        self.write(&targets);
    }

    /// Waits until Prometheus no longer scrapes the pod `pod` (of any namespace).
    async fn wait_dropped(&self, pod: &str) {
        let address = self.address;
        let label = format!("\"pod\":\"{pod}\"");
        within(
            async {
                loop {
                    let targets = tokio::task::spawn_blocking(move || http_get(address, "/api/v1/targets")).await;
                    if let Ok(Ok((200, body))) = targets
                        && !body.contains(&label)
                    {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            &format!("Prometheus to drop the target of {pod}"),
        )
        .await;
    }

    /// Writes the targets file whole, by a rename, so Prometheus never reads half of it.
    fn write(&self, targets: &BTreeMap<String, (String, String)>) {
        let groups: Vec<serde_json::Value> = targets
            .iter()
            .map(|(pod, (namespace, address))| {
                serde_json::json!({"targets": [address], "labels": {"namespace": namespace, "pod": pod}})
            })
            .collect();
        let next = self.dir.join("targets.json.next");
        std::fs::write(&next, serde_json::to_vec(&groups).unwrap()).expect("the targets file");
        std::fs::rename(&next, self.dir.join("targets.json")).expect("the targets file");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.dir.join("data"));
    }
}

fn used(tb: &TokenBudget) -> (i64, i64, i64) {
    tb.status
        .as_ref()
        .and_then(|s| s.used.as_ref())
        .map_or((-1, -1, -1), |u| (u.tokens, u.input, u.output))
}

/// A budget that never runs out in these tests.
fn roomy(name: &str) -> BudgetBuilder {
    budget(name).tokens(1_000_000_000)
}

/// The operator of `tenant`'s namespace, reading `prometheus` with a lookback of 3 s (its
/// scrapes are every second).
fn operator_for(tenant: &Tenant, prometheus: &Prometheus) -> Operator {
    operator_looking_back(tenant, prometheus, "3s")
}

/// The same, looking back `lookback` for each pod's latest sample.
fn operator_looking_back(tenant: &Tenant, prometheus: &Prometheus, lookback: &str) -> Operator {
    Operator::start_with_args(
        &tenant.ns.name,
        &["--prometheus-url", &prometheus.url(), "--prometheus-lookback", lookback],
    )
}

/// Waits until the budget has counted exactly `(tokens, input, output)`.
async fn wait_used(tenant: &Tenant, budget: &str, want: (i64, i64, i64)) -> TokenBudget {
    wait_for(
        &tenant.budgets,
        budget,
        &format!("{budget} to have used {want:?}"),
        |tb| used(tb) == want,
    )
    .await
}

/// Waits until the binding charges its budget: from then on the budget counts its pods, and
/// pods started after it count whole (accounting rule 3).
async fn wait_charging(tenant: &Tenant, binding: &str) {
    wait_for(&tenant.bindings, binding, "the binding charging its budget", |bb| {
        bb.status
            .as_ref()
            .is_some_and(|st| st.since.is_some() && st.budget.is_some())
    })
    .await;
}

/// Waits until the binding's ScrapeHealthy condition has `status` and a message containing
/// `says`.
async fn wait_health(tenant: &Tenant, binding: &str, status: &str, says: &str) -> BudgetBinding {
    wait_for(
        &tenant.bindings,
        binding,
        &format!("ScrapeHealthy={status} of {binding} saying {says:?}"),
        |bb| {
            bb.status.as_ref().is_some_and(|st| {
                st.conditions
                    .iter()
                    .any(|c| c.type_ == "ScrapeHealthy" && c.status == status && c.message.contains(says))
            })
        },
    )
    .await
}

/// Creates a Deployment of `replicas` pods and plays the kubelet for them, each with an
/// agent of its own (`agent-sim` with `args`) that `prometheus` scrapes; returns (pod, agent).
async fn deploy(
    tenant: &Tenant,
    prometheus: &Prometheus,
    name: &str,
    replicas: i32,
    args: &[&str],
) -> Vec<(String, Agent)> {
    create(&tenant.deployments, deployment(name).replicas(replicas)).await;
    let mut agents = Vec::new();
    for pod in pods_of(&tenant.pods, name, replicas as usize).await {
        let agent = Agent::start(&agent_ip(), args);
        prometheus.scrape(&tenant.ns.name, &pod, &format!("{}:{}", agent.ip, agent.port));
        run_pod(&tenant.pods, &pod, &agent.ip, 0).await;
        agents.push((pod, agent));
    }
    agents
}

#[tokio::test]
async fn prometheus_counts_what_scraping_counts_through_a_restart() {
    let prometheus = Prometheus::start("same").await;
    let mut s = Tenant::new("prom-same").await;
    s.operator = Some(operator_for(&s, &prometheus));
    // The same pods, charged to two budgets: one scrapes them, the other asks Prometheus.
    create(&s.budgets, roomy("scraped")).await;
    create(&s.budgets, roomy("queried")).await;
    create(&s.bindings, binding("scrape", "scraped").deployment("agent")).await;
    create(
        &s.bindings,
        binding("query", "queried").deployment("agent").via_prometheus(),
    )
    .await;
    wait_charging(&s, "scrape").await;
    wait_charging(&s, "query").await;
    let agents = deploy(&s, &prometheus, "agent", 2, &[]).await;

    agents[0].1.spend("gpt-4o-mini", 100, 20);
    agents[1].1.spend("gpt-4o", 7, 3);
    for budget in ["scraped", "queried"] {
        wait_used(&s, budget, (130, 107, 23)).await;
    }

    // The first agent's container restarts: its counters start from zero again.
    let (pod, agent) = &agents[0];
    agent.reset();
    run_pod(&s.pods, pod, &agent.ip, 1).await;
    agent.spend("gpt-4o-mini", 30, 0);
    agents[1].1.spend("gpt-4o", 5, 0);
    let mut statuses = Vec::new();
    for budget in ["scraped", "queried"] {
        statuses.push(wait_used(&s, budget, (165, 142, 23)).await.status.unwrap());
    }
    assert_eq!(statuses[0].models, statuses[1].models, "the same tokens per model");
    assert_eq!(statuses[0].workloads, statuses[1].workloads);
    let query = wait_health(&s, "query", "True", "2 of 2 pods scraped").await;
    assert_eq!(query.status.unwrap().used_tokens, Some(165));

    // And it stays exact: no double counting on later queries.
    agents[1].1.spend("gpt-4o", 1, 1);
    for budget in ["scraped", "queried"] {
        wait_used(&s, budget, (167, 143, 24)).await;
    }
}

#[tokio::test]
async fn a_statefulset_pod_recreated_under_its_name_is_not_charged_the_old_pods_tokens() {
    let prometheus = Prometheus::start("recreated").await;
    let mut s = Tenant::new("prom-recreated").await;
    // A long lookback: the old pod's last samples are still in it when the new pod starts.
    s.operator = Some(operator_looking_back(&s, &prometheus, "1m"));
    create(&s.budgets, roomy("b")).await;
    let bb = binding("query", "b").named(tokenbudget::api::WorkloadKind::StatefulSet, "memory");
    create(&s.bindings, bb.via_prometheus()).await;
    wait_charging(&s, "query").await;
    let statefulsets: kube::Api<k8s_openapi::api::apps::v1::StatefulSet> = s.api();
    create(&statefulsets, statefulset("memory")).await;
    let old = pods_of(&s.pods, "memory", 1).await.remove(0);
    assert_eq!(old, "memory-0");
    let ip = agent_ip();
    let agent = Agent::start(&ip, &[]);
    let address = format!("{ip}:{}", agent.port);
    prometheus.scrape(&s.ns.name, &old, &address);
    run_pod(&s.pods, &old, &ip, 0).await;
    agent.spend("gpt-4o-mini", 500, 0);
    wait_used(&s, "b", (500, 500, 0)).await;

    // The pod is deleted: its process ends, and Prometheus's service discovery drops its
    // target. The StatefulSet controller creates memory-0 again (a new uid). Until Prometheus
    // scrapes the new pod, the latest samples labelled memory-0 are the old pod's (500), and
    // the new pod, started after the binding, would count them whole.
    let uid = s.pods.get(&old).await.unwrap().metadata.uid;
    prometheus.forget(&old);
    prometheus.wait_dropped(&old).await;
    drop(agent);
    s.pods
        .delete(&old, &kube::api::DeleteParams::default().grace_period(0))
        .await
        .expect("the pod deleted");
    within(
        async {
            while s
                .pods
                .get_opt("memory-0")
                .await
                .unwrap()
                .and_then(|p| p.metadata.uid)
                .is_none_or(|u| Some(u) == uid)
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        },
        "memory-0 created again",
    )
    .await;
    let ip = agent_ip();
    let agent = Agent::start(&ip, &[]);
    run_pod(&s.pods, "memory-0", &ip, 0).await;
    // Cycles run on the old samples alone: the new pod is Pending for them.
    s.wait_cycles(2).await;
    assert_eq!(used(&s.budgets.get("b").await.unwrap()), (500, 500, 0));
    prometheus.scrape(&s.ns.name, "memory-0", &format!("{ip}:{}", agent.port));
    agent.spend("gpt-4o-mini", 20, 0);
    // The new pod counts its own 20 whole (it started after the binding), and never the old
    // pod's 500.
    wait_used(&s, "b", (520, 520, 0)).await;
    agent.spend("gpt-4o-mini", 3, 0);
    wait_used(&s, "b", (523, 523, 0)).await;
}

#[tokio::test]
async fn a_missing_series_fails_like_a_scrape_and_nothing_is_lost_or_counted_twice() {
    let prometheus = Prometheus::start("missing").await;
    let mut s = Tenant::new("prom-missing").await;
    s.operator = Some(operator_for(&s, &prometheus));
    create(&s.budgets, roomy("b")).await;
    create(&s.bindings, binding("query", "b").deployment("agent").via_prometheus()).await;
    create(
        &s.bindings,
        binding("broken", "b").deployment("broken").via_prometheus(),
    )
    .await;
    wait_charging(&s, "query").await;
    wait_charging(&s, "broken").await;
    let agents = deploy(&s, &prometheus, "agent", 1, &[]).await;
    let (pod, agent) = &agents[0];
    agent.spend("gpt-4o-mini", 50, 0);
    wait_used(&s, "b", (50, 50, 0)).await;
    wait_health(&s, "query", "True", "1 of 1 pods scraped").await;

    // Prometheus's scrapes of a pod fail (its endpoint never answers): up is 0, and the pod
    // is reported as a failed scrape is.
    let broken = deploy(&s, &prometheus, "broken", 1, &["--hostile", "silent"]).await;
    wait_health(
        &s,
        "broken",
        "False",
        &format!("{}: Prometheus's last scrape of the pod", broken[0].0),
    )
    .await;

    // Prometheus loses the target: once its last sample is older than the lookback, the pod
    // fails as a scrape would, and what it spends meanwhile is counted when it is back.
    prometheus.forget(pod);
    wait_health(
        &s,
        "query",
        "False",
        &format!("{pod}: Prometheus has no sample of the pod since"),
    )
    .await;
    agent.spend("gpt-4o-mini", 25, 5);
    assert_eq!(used(&s.budgets.get("b").await.unwrap()), (50, 50, 0));
    prometheus.scrape(&s.ns.name, pod, &format!("{}:{}", agent.ip, agent.port));
    wait_used(&s, "b", (80, 75, 5)).await;
    wait_health(&s, "query", "True", "1 of 1 pods scraped").await;
    agent.spend("gpt-4o-mini", 1, 0);
    wait_used(&s, "b", (81, 76, 5)).await;
    let errors = s
        .operator
        .as_ref()
        .unwrap()
        .metric("tokenbudget_scrapes_total{result=\"stale\"}");
    assert!(errors.is_some_and(|n| n >= 1.0), "stale answers counted: {errors:?}");
}

#[tokio::test]
async fn without_prometheus_the_binding_says_why() {
    let mut s = Tenant::new("prom-none").await;
    s.operator = Some(Operator::start(&s.ns.name));
    create(&s.budgets, roomy("b")).await;
    create(&s.bindings, binding("query", "b").deployment("agent").via_prometheus()).await;
    wait_charging(&s, "query").await;
    let pod = run_one_pod(&mut s, "agent").await;
    wait_health(
        &s,
        "query",
        "False",
        &format!("{pod}: the operator has no Prometheus to query: it runs without --prometheus-url"),
    )
    .await;
    assert!(s.operator.as_mut().unwrap().running());
}

#[tokio::test]
async fn an_unreachable_prometheus_fails_the_pods_like_a_failed_scrape() {
    let mut s = Tenant::new("prom-down").await;
    // Nothing listens there.
    let nowhere = format!("http://{}", free_port());
    s.operator = Some(Operator::start_with_args(&s.ns.name, &["--prometheus-url", &nowhere]));
    create(&s.budgets, roomy("b")).await;
    create(&s.bindings, binding("query", "b").deployment("agent").via_prometheus()).await;
    wait_charging(&s, "query").await;
    let pod = run_one_pod(&mut s, "agent").await;
    wait_health(
        &s,
        "query",
        "False",
        &format!("{pod}: querying Prometheus failed: connection failed"),
    )
    .await;
}

/// What these tests add to [`Tenant`].
trait Cycles {
    /// Waits until `count` cycles of the budget `b` have begun after now and ended.
    async fn wait_cycles(&self, count: usize);
}

impl Cycles for Tenant {
    async fn wait_cycles(&self, count: usize) {
        let operator = self.operator.as_ref().expect("an operator");
        let series = format!(
            "tokenbudget_last_cycle_timestamp_seconds{{name=\"b\",namespace=\"{}\"}}",
            self.ns.name
        );
        for _ in 0..count {
            let since = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
            within(
                async {
                    while operator.metric(&series).is_none_or(|t| t <= since) {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
                "a cycle of b",
            )
            .await;
        }
    }
}

/// Creates the Deployment `name` of one pod and plays the kubelet for it (an agent that no
/// Prometheus scrapes); returns the pod's name.
async fn run_one_pod(tenant: &mut Tenant, name: &str) -> String {
    create(&tenant.deployments, deployment(name)).await;
    tenant.run_pods(name, 1).await.remove(0)
}
