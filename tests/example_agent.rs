//! The example agent (examples/agent/agent.py) end to end: the real Python agent, with the
//! OpenAI client and its OpenTelemetry instrumentation, calls a stand-in model (agent-sim's
//! chat completions), exports its token usage with an `end_user` label on a real Prometheus
//! endpoint that the operator scrapes, and asks the operator's agent API, with a real
//! ServiceAccount token and the chart's agent role, before each call.
//!
//! One agent serves four end users. alice reaches her limit and is refused while bob keeps
//! working; under 20% of the budget left the agent switches to the cheaper model; once the
//! budget itself is spent, it stops.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use common::*;
use k8s_openapi::api::rbac::v1::RoleBinding;
use serde_json::{Value, json};
use tokenbudget::api::MetricsFormat;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const AUDIENCE: &str = "tokenbudget.io";

/// GET `path` of the agent API with `token`: the JSON body of a 200.
async fn ask(address: SocketAddr, path: String, token: String) -> Value {
    let (code, body) = agent_api_get(address, &path, Some(&token)).await;
    assert_eq!(code, 200, "{body}");
    body
}

/// Asks the agent API until `holds` holds for its answer: what the agent will read next.
async fn wait_answer(address: SocketAddr, path: &str, token: &str, what: &str, holds: impl Fn(&Value) -> bool) {
    within(
        async {
            while !holds(&ask(address, path.to_string(), token.to_string()).await) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
        what,
    )
    .await;
}

#[tokio::test]
async fn an_exhausted_end_user_is_refused_while_the_others_keep_working() {
    let s = Tenant::new("example-agent").await;
    let ns = s.ns.name.clone();
    let python = Path::new(REPO).join(".venv/bin/python");
    assert!(
        python.exists(),
        "the example agent runs with the packages of examples/agent/requirements.txt in .venv/ (hack/test.sh installs them)"
    );

    // Each call costs 100 input + 20 output tokens. Each end user may spend 250 (two calls),
    // the budget 560 (four calls and then some).
    let mut tb = budget("research")
        .tokens(560)
        .price("gpt-4o", "2.50", "10.00")
        .price("gpt-4o-mini", "0.15", "0.60")
        .per_subject("end_user", 250)
        .build();
    tb.spec.thresholds = vec![80];
    create(&s.budgets, tb).await;
    create(
        &s.bindings,
        binding("agent", "research")
            .deployment("agent")
            .format(MetricsFormat::OpenTelemetry),
    )
    .await;
    create(&s.deployments, deployment("agent").replicas(1)).await;

    // The agent's ServiceAccount, bound to the chart's agent role, and its token as a
    // projected volume would hold it.
    let role = chart_agent_role(&s.client, "example-agent-test").await;
    service_account(&s.client, &ns, "agent").await;
    let rb: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "agent-reads-budgets"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns}]
    }))
    .unwrap();
    create(&s.api::<RoleBinding>(), rb).await;
    let token = token(&s.client, &ns, "agent", AUDIENCE).await;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("example-agent-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), &token).unwrap();

    let clock = Arc::new(tokenbudget::clock::SystemClock);
    let operator = InProcessOperator::start_with_agent_api(&s.client, &ns, clock, AUDIENCE).await;
    let api = operator.agent_api.expect("the agent API is served");

    // The model the agent calls, and the agent itself in the Deployment's pod.
    let model = Agent::start(&agent_ip(), &["--usage", "100:20"]);
    let ip = agent_ip();
    let pod = pods_of(&s.pods, "agent", 1).await.remove(0);
    let mut agent = tokio::process::Command::new(&python)
        .arg(Path::new(REPO).join("examples/agent/agent.py"))
        .env("PYTHONPATH", Path::new(REPO).join("clients/python"))
        .env("OPENAI_API_KEY", "sk-test")
        .env("OPENAI_BASE_URL", format!("http://{}:{}/v1", model.ip, model.port))
        .env("TOKENBUDGET_URL", format!("http://{api}"))
        .env("TOKENBUDGET_NAME", "research")
        .env("TOKENBUDGET_NAMESPACE", &ns)
        .env("TOKENBUDGET_TOKEN_FILE", dir.join("token"))
        .env("TOKENBUDGET_CACHE_SECONDS", "0")
        .env("METRICS_ADDR", &ip)
        .env("METRICS_PORT", METRICS_PORT.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the example agent starts");
    let mut stdin = agent.stdin.take().unwrap();
    let mut lines = BufReader::new(agent.stdout.take().unwrap()).lines();
    let mut request = async |line: &str| {
        stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        let answer = within(lines.next_line(), &format!("the agent's answer to {line:?}"))
            .await
            .expect("the agent's stdout")
            .expect("an answer");
        // The conversation, for `-- --nocapture`.
        println!("> {}\n{answer}", line.replace('\t', "  "));
        answer
    };
    // The pod runs once the agent answers (so it serves its metrics).
    assert_eq!(request("alice\tHello").await, "alice: [gpt-4o] ok");
    run_pod(&s.pods, &pod, &ip, 0).await;

    let path = format!("/v1/namespaces/{ns}/tokenbudgets/research?label=end_user&subject=alice");
    assert_eq!(request("alice\tAnd then?").await, "alice: [gpt-4o] ok");
    wait_answer(api, &path, &token, "alice's 240 tokens counted", |a| {
        a["subject"]["tokens"] == 240
    })
    .await;
    // 240 of 250: alice may still ask, and is over her limit after it.
    assert_eq!(request("alice\tOne more").await, "alice: [gpt-4o] ok");
    wait_answer(api, &path, &token, "alice exhausted", |a| {
        a["subject"]["exhausted"] == true
    })
    .await;

    // alice is refused; bob, on the same agent, keeps working.
    let refused = request("alice\tPlease").await;
    assert!(
        refused.starts_with("alice: refused: alice has used up their share until "),
        "{refused}"
    );
    assert_eq!(request("bob\tHi").await, "bob: [gpt-4o] ok");

    // 480 of 560 used: under 20% left, the agent takes the cheaper model.
    let budget_path = format!("/v1/namespaces/{ns}/tokenbudgets/research");
    wait_answer(api, &budget_path, &token, "480 tokens counted", |a| {
        a["used"]["tokens"] == 480
    })
    .await;
    assert_eq!(request("carol\tHi").await, "carol: [gpt-4o-mini] ok");
    // 600 of 560: the budget is spent, and the agent stops.
    wait_answer(api, &budget_path, &token, "the budget exhausted", |a| {
        a["phase"] == "Exhausted"
    })
    .await;
    let stopped = request("dave\tHi").await;
    assert!(
        stopped.starts_with("stopped: the budget is exhausted until "),
        "{stopped}"
    );
    let status = within(agent.wait(), "the agent to exit").await.unwrap();
    assert!(status.success(), "{status}");

    // The model was called five times: alice's refused question never reached it.
    let mut calls = String::new();
    let mut stream = TcpStream::connect((model.ip.as_str(), model.port)).unwrap();
    write!(stream, "GET /calls HTTP/1.0\r\n\r\n").unwrap();
    stream.read_to_string(&mut calls).unwrap();
    assert!(calls.ends_with("\r\n\r\n5\n"), "{calls}");
    // And the operator counted exactly what the agent spent, per end user.
    let tb = s.budgets.get("research").await.unwrap();
    let status = tb.status.as_ref().unwrap();
    assert_eq!(status.used.as_ref().unwrap().tokens, 600);
    let top: Vec<(&str, i64)> = status.subjects[0]
        .top
        .iter()
        .map(|t| (t.value.as_str(), t.tokens))
        .collect();
    assert_eq!(top, [("alice", 360), ("bob", 120), ("carol", 120)]);

    operator.stop().await;
    std::fs::remove_dir_all(dir).ok();
}
