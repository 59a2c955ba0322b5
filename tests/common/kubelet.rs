//! The kubelet's part, played by the tests on a testbed without nodes: simulated agents
//! (`agent-sim`) on loopback addresses of their own, and pod statuses written for them.

use super::*;

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

    /// Spends exactly this many tokens of `model` for the end user `user`.
    pub fn spend_as(&self, user: &str, model: &str, input: u64, output: u64) {
        self.post(&format!(
            "/spend?model={model}&user={user}&input={input}&output={output}"
        ));
    }

    /// Spends exactly this many input tokens of `model` for each of `users` end users.
    pub fn spend_for_users(&self, users: u64, model: &str, input: u64) {
        self.post(&format!("/spend?model={model}&users={users}&input={input}"));
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

/// Plays the kubelet for a pod whose containers have all ended: phase `Succeeded` (exit code
/// 0) or `Failed` (exit code 1).
pub async fn finish_pod(pods: &Api<k8s_openapi::api::core::v1::Pod>, name: &str, phase: &str) {
    let now = jiff::Timestamp::now().to_string();
    let exit_code = if phase == "Succeeded" { 0 } else { 1 };
    let status = serde_json::json!({"status": {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [{"name": "agent", "ready": false, "restartCount": 0, "image": "agent:latest",
            "imageID": "agent", "started": false,
            "state": {"terminated": {"exitCode": exit_code, "startedAt": now, "finishedAt": now}}}]
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pod status patched");
}
