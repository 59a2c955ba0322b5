//! The operator under test: its binary in a child process, or the same library call in the
//! test process with a clock of the test's choosing, and its HTTP endpoints.

use super::*;

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

    /// As [`Operator::start`], with extra environment variables and arguments.
    pub fn start_as(namespace: &str, env: &[(&str, &str)], args: &[&str]) -> Self {
        Self::spawn(&[&["--namespace", namespace], args].concat(), namespace, env)
    }

    /// As [`Operator::start`], with more arguments (tests/https.rs: `--scrape-ca-file`).
    pub fn start_with_args(namespace: &str, args: &[&str]) -> Self {
        Self::spawn(&[&["--namespace", namespace], args].concat(), namespace, &[])
    }

    /// One of several replicas watching the namespace, with leader election on a Lease there:
    /// `instance` is its pod name (its identity begins with it, then `_`), `election` the
    /// Lease's name and timings.
    pub fn start_replica(namespace: &str, instance: &str, election: &[&str]) -> Self {
        let args = [
            &[
                "--namespace",
                namespace,
                "--leader-election",
                "--leader-election-namespace",
                namespace,
            ][..],
            election,
        ]
        .concat();
        Self::spawn(&args, &format!("{namespace}-{instance}"), &[("POD_NAME", instance)])
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

    /// The binary with these arguments and environment; its log is `operator-{label}.log`.
    /// Without the agent API unless `args` set its address: the binary's default port would
    /// be taken by the operators of the tests running beside it.
    pub fn spawn(args: &[&str], label: &str, env: &[(&str, &str)]) -> Self {
        kubeconfig();
        let agent_api = args.iter().any(|a| a.starts_with("--agent-api-bind-address"));
        let address = free_port();
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("operator-{label}.log"));
        let log_file = std::fs::File::create(&log).expect("operator log file");
        let child = Command::new(env!("CARGO_BIN_EXE_tokenbudget-operator"))
            .args(args)
            .args(["--bind-address", &address.to_string()])
            .args((!agent_api).then_some("--agent-api-bind-address="))
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

    /// The value of the series `series` (`name{labels}`) on `/metrics`, if it has one.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let metrics = self.get("/metrics").expect("the operator's metrics").1;
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
    }

    /// Every series on `/metrics`: `name{labels}` and its value.
    pub fn metrics(&self) -> std::collections::BTreeMap<String, f64> {
        let (status, body) = self.get("/metrics").expect("the operator's /metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect()
    }

    /// Whether the process still runs (it has not exited, for whatever reason).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
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

/// The sum of the series of `name` in `metrics` whose labels contain `labels`.
pub fn total_of(metrics: &std::collections::BTreeMap<String, f64>, name: &str, labels: &str) -> f64 {
    metrics
        .iter()
        .filter(|(series, _)| {
            series
                .strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || (rest.starts_with('{') && rest.contains(labels)))
        })
        .map(|(_, v)| v)
        .sum()
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
    /// Where its agent API listens, if it serves one.
    pub agent_api: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), tokenbudget::controller::StartError>>>,
}

impl InProcessOperator {
    pub async fn start(client: &Client, namespace: &str, clock: Arc<dyn tokenbudget::clock::Clock>) -> Self {
        Self::start_in(client, Some(namespace), clock).await
    }

    /// One over all namespaces, as pools need: it reconciles whatever else is in the cluster,
    /// so a test that starts one holds its own lock against the others that do.
    pub async fn start_all_namespaces(client: &Client, clock: Arc<dyn tokenbudget::clock::Clock>) -> Self {
        Self::start_in(client, None, clock).await
    }

    /// With the agent API on a free loopback port, for tokens of `audience`.
    pub async fn start_with_agent_api(
        client: &Client,
        namespace: &str,
        clock: Arc<dyn tokenbudget::clock::Clock>,
        audience: &str,
    ) -> Self {
        let agent_api = tokenbudget::agent_api::Config {
            bind_address: free_port(),
            audience: audience.into(),
        };
        Self::start_options(client, Some(namespace), clock, Some(agent_api)).await
    }

    async fn start_in(client: &Client, namespace: Option<&str>, clock: Arc<dyn tokenbudget::clock::Clock>) -> Self {
        Self::start_options(client, namespace, clock, None).await
    }

    async fn start_options(
        client: &Client,
        namespace: Option<&str>,
        clock: Arc<dyn tokenbudget::clock::Clock>,
        agent_api: Option<tokenbudget::agent_api::Config>,
    ) -> Self {
        let address = free_port();
        let agent_address = agent_api.as_ref().map(|a| a.bind_address);
        let options = tokenbudget::controller::run::Options {
            bind_address: address,
            namespace: namespace.map(str::to_string),
            agent_api,
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
            agent_api: agent_address,
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
        let result = result.expect("the operator task ends without panicking");
        assert_eq!(result.map_err(|e| e.to_string()), Ok(()));
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
    parse_response(&response)
}

/// The status code and body of a whole HTTP/1.0 response.
pub fn parse_response(response: &str) -> std::io::Result<(u16, String)> {
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
