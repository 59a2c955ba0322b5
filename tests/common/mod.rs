//! Shared helpers for the integration tests. They run against the real API server whose
//! kubeconfig is in `KUBECONFIG` (`hack/test.sh` starts the testbed and sets it), each test in
//! a namespace of its own.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::Namespace, apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::wait::{await_condition, conditions},
};
use serde::de::DeserializeOwned;

/// How long any awaited condition may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn kubeconfig() -> String {
    std::env::var("KUBECONFIG").unwrap_or_else(|_| {
        panic!("integration tests need a cluster: run `hack/test.sh`, or `eval $(hack/testbed.sh env)` after `hack/testbed.sh up`")
    })
}

pub async fn client() -> Client {
    kubeconfig();
    Client::try_default().await.expect("a client for KUBECONFIG")
}

/// Installs (server-side applies) the CRDs generated from the types and waits until the API
/// server serves them.
pub async fn ensure_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, yaml) in tokenbudget::crds::all() {
        let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml).expect("generated CRD parses");
        let name = crd.metadata.name.clone().expect("CRDs have names");
        crds.patch(
            &name,
            &PatchParams::apply("tokenbudget-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("the CRD applies");
        within(
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
            "CRD established",
        )
        .await
        .unwrap_or_else(|e| panic!("watching CRD {name}: {e}"));
    }
}

/// Awaits `future` for at most [`TIMEOUT`], failing the test with `what` otherwise.
pub async fn within<F: Future>(future: F, what: &str) -> F::Output {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until the object satisfies `cond` (through a watch, not a sleep) and returns it. On
/// a timeout, the failure shows the object's last status.
pub async fn wait_for<K>(api: &Api<K>, name: &str, what: &str, cond: impl Fn(&K) -> bool) -> K
where
    K: Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug + Send + 'static,
{
    let waiting = await_condition(api.clone(), name, move |obj: Option<&K>| obj.is_some_and(&cond));
    let Ok(obj) = tokio::time::timeout(TIMEOUT, waiting).await else {
        let last = match api.get_opt(name).await {
            Ok(Some(obj)) => serde_json::to_value(&obj).map_or_else(|e| e.to_string(), |v| v["status"].to_string()),
            Ok(None) => "no such object".to_string(),
            Err(e) => e.to_string(),
        };
        panic!("timed out waiting for {what}; its status now: {last}");
    };
    obj.unwrap_or_else(|e| panic!("watching for {what}: {e}"))
        .expect("the condition only holds for an existing object")
}

/// Waits until all `pods` pods of the binding were scraped in its budget's last cycle. Pods
/// that ran before their binding count only what they spend after their first scrape (rule
/// 3): a test spends only after this.
pub async fn wait_scraped(bindings: &Api<tokenbudget::api::BudgetBinding>, name: &str, pods: i64) {
    wait_for(bindings, name, &format!("all {pods} pods of {name} scraped"), |bb| {
        bb.status
            .as_ref()
            .is_some_and(|s| s.pods == Some(pods) && s.scraped_pods == Some(pods))
    })
    .await;
}

/// Waits (through a watch) until the object is gone.
pub async fn wait_gone<K>(api: &Api<K>, name: &str, what: &str)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    within(await_condition(api.clone(), name, |o: Option<&K>| o.is_none()), what)
        .await
        .unwrap_or_else(|e| panic!("watching for {what}: {e}"));
}

/// A namespace for one test, deleted when the test ends.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, test: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t-{}-{}-{}",
            test.replace('_', "-")
                .chars()
                .take(40)
                .collect::<String>()
                .trim_end_matches('-'),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"tokenbudget.io/test": "true"}}
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace created");
        Self { name }
    }

    pub fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(client.clone(), &self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await; kubectl deletes without waiting for finalization.
        let _ = Command::new("kubectl")
            .args(["delete", "namespace", &self.name, "--wait=false", "--ignore-not-found"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Deletes an object, ignoring "not found".
pub async fn delete<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => panic!("deleting {name}: {e}"),
    }
}

/// Runs kubectl with `stdin`, returning its output whatever the exit status.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new("kubectl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.unwrap_or("").as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("kubectl finishes")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The operator binary, running against the test cluster in one namespace.
pub struct Operator {
    pub child: Child,
    pub address: SocketAddr,
    pub log: PathBuf,
}

impl Operator {
    pub fn start(namespace: &str) -> Self {
        Self::start_with_env(namespace, &[])
    }

    /// As [`Operator::start`], with extra environment variables: `KUBECONFIG` to run it as
    /// another identity (tests/rbac.rs runs it as the Helm chart's ServiceAccount).
    pub fn start_with_env(namespace: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn(&["--namespace", namespace], namespace, env)
    }

    /// An operator watching every namespace (no `--namespace`, the binary's default). It
    /// also reconciles whatever other tests (or earlier runs) left in the cluster, so a test
    /// that starts one must not run beside tests with operators of their own.
    pub fn start_all_namespaces() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let label = format!(
            "all-namespaces-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        Self::spawn(&[], &label, &[])
    }

    fn spawn(args: &[&str], label: &str, env: &[(&str, &str)]) -> Self {
        kubeconfig();
        let address = free_port();
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("operator-{label}.log"));
        let log_file = std::fs::File::create(&log).expect("operator log file");
        let child = Command::new(env!("CARGO_BIN_EXE_tokenbudget-operator"))
            .args(args)
            .args(["--bind-address", &address.to_string()])
            .env("RUST_LOG", "info,tokenbudget=debug")
            .envs(env.iter().copied())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("the operator starts");
        Self { child, address, log }
    }

    /// GETs a path of the operator's HTTP endpoint: (status code, body).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.address, path)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        wait_ready(self.address).await;
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the operator at `address` answers 200 on `/readyz`.
pub async fn wait_ready(address: SocketAddr) {
    within(
        async {
            loop {
                // Off the runtime's threads: the operator may run on them (in-process).
                let answer = tokio::task::spawn_blocking(move || http_get(address, "/readyz")).await;
                if matches!(answer, Ok(Ok((200, _)))) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
        "the operator's /readyz",
    )
    .await;
}

/// The operator running inside the test process, through the same library call as the binary
/// (`tokenbudget::controller::run::run`) but with a clock of the test's choosing, in one
/// namespace. Stopped by [`InProcessOperator::stop`]; dropping it aborts it.
pub struct InProcessOperator {
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl InProcessOperator {
    pub async fn start(client: &Client, namespace: &str, clock: Arc<dyn tokenbudget::clock::Clock>) -> Self {
        let address = free_port();
        let options = tokenbudget::controller::run::Options {
            bind_address: address,
            namespace: Some(namespace.to_string()),
            ..Default::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(tokenbudget::controller::run::run(
            client.clone(),
            options,
            clock,
            async move {
                let _ = stopped.await;
            },
        ));
        let operator = Self {
            address,
            stop: Some(stop),
            task: Some(task),
        };
        wait_ready(address).await;
        operator
    }

    /// Shuts the operator down and waits until it has stopped, cleanly.
    pub async fn stop(mut self) {
        let _ = self.stop.take().expect("running").send(());
        let task = self.task.take().expect("running");
        let result = within(task, "the in-process operator to stop").await;
        assert_eq!(result.expect("the operator task ends without panicking"), Ok(()));
    }
}

impl Drop for InProcessOperator {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("bound address")
}

/// A minimal HTTP/1.0 GET: enough for the operator's own endpoints.
pub fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// POSTs `path` to the agent-sim at `address` (`ip:port`; a loopback agent or a real pod's IP)
/// and asserts that it answers 200.
pub fn agent_post(address: &str, path: &str) {
    let address: SocketAddr = address.parse().expect("an ip:port");
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("agent at {address} reachable: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "POST {path} HTTP/1.0\r\nHost: agent\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
        "{response}"
    );
}

/// A simulated agent (`agent-sim`) listening on its own loopback address, as one pod's
/// containers would.
pub struct Agent {
    pub child: Child,
    pub ip: String,
    pub port: u16,
}

/// A loopback address no other agent of this test run uses.
pub fn agent_ip() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("127.{}.{}.{}", 100 + std::process::id() % 100, n / 250, 1 + n % 250)
}

impl Agent {
    pub fn start(ip: &str, extra: &[&str]) -> Self {
        let port = 9464;
        let listen = format!("{ip}:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_agent-sim"))
            .args(["--listen", &listen])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("agent-sim starts");
        // It prints one line once it listens.
        let mut line = String::new();
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        std::io::BufRead::read_line(&mut stdout, &mut line).expect("agent-sim says it listens");
        assert!(line.contains("listening"), "agent-sim: {line}");
        Self {
            child,
            ip: ip.to_string(),
            port,
        }
    }

    fn post(&self, path: &str) {
        agent_post(&format!("{}:{}", self.ip, self.port), path);
    }

    /// Spends exactly this many tokens of `model`.
    pub fn spend(&self, model: &str, input: u64, output: u64) {
        self.post(&format!("/spend?model={model}&input={input}&output={output}"));
    }

    /// Forgets its counters, as a restarted process would.
    pub fn reset(&self) {
        self.post("/reset");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Deployment whose pods expose a `metrics` port 9464.
pub fn deployment(name: &str, replicas: i32) -> k8s_openapi::api::apps::v1::Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": name, "team": "research"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "agent", "image": "agent:latest",
                    "ports": [{"name": "metrics", "containerPort": 9464}]
                }]}
            }
        }
    }))
    .unwrap()
}

/// Plays the kubelet for one pod: Running, Ready, with this IP and restart count.
pub async fn run_pod(pods: &Api<k8s_openapi::api::core::v1::Pod>, name: &str, ip: &str, restarts: i32) {
    let now = jiff::Timestamp::now().to_string();
    let status = serde_json::json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "startTime": now,
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "agent", "ready": true, "restartCount": restarts, "image": "agent:latest",
            "imageID": "agent", "started": true, "state": {"running": {"startedAt": now}}}]
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pod status patched");
}

/// Waits until the Deployment's controller-manager has created `count` pods; returns their names.
pub async fn pods_of(pods: &Api<k8s_openapi::api::core::v1::Pod>, app: &str, count: usize) -> Vec<String> {
    within(
        async {
            loop {
                let list = pods
                    .list(&kube::api::ListParams::default().labels(&format!("app={app}")))
                    .await
                    .unwrap();
                let mut names: Vec<String> = list
                    .items
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter_map(|p| p.metadata.name.clone())
                    .collect();
                if names.len() == count {
                    names.sort();
                    return names;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
        "the controller-manager to create the pods",
    )
    .await
}

/// Waits for an Event in the namespace that satisfies `pred` and returns it. Event names are
/// generated, so this lists (every 200 ms) rather than watching one object.
pub async fn wait_event(
    events: &Api<k8s_openapi::api::events::v1::Event>,
    what: &str,
    pred: impl Fn(&k8s_openapi::api::events::v1::Event) -> bool,
) -> k8s_openapi::api::events::v1::Event {
    within(
        async {
            loop {
                let list = events.list(&Default::default()).await.expect("events list");
                if let Some(e) = list.items.into_iter().find(&pred) {
                    return e;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
        what,
    )
    .await
}
