//! The agent API against the real API server: real projected-style tokens from the
//! TokenRequest API, real TokenReviews and SubjectAccessReviews, and the chart's own agent
//! ClusterRole. An in-process operator watches the test's namespace and serves the agent API
//! on a loopback port; an agent-sim spends tokens so that the answer has real figures.
//!
//! 200 for a ServiceAccount bound to the chart's agent role; 401 without a token, with a
//! garbage one, and with a valid token of the API server's own audience; 403 for a
//! ServiceAccount without the binding, and for the bound one asking about another namespace;
//! 404 for a missing budget and a label the budget has no limit per. Then the Python helper
//! (clients/python) reads the same endpoint with the same token from a file.

mod common;

use std::{path::Path, sync::Arc};

use common::*;
use k8s_openapi::api::rbac::v1::RoleBinding;
use serde_json::{Value, json};

const AUDIENCE: &str = "tokenbudget.io";

#[tokio::test]
async fn agents_read_their_budget_as_rbac_allows() {
    let mut s = Tenant::new("agent_api").await;
    let other = TestNamespace::new(&s.client, "agent_api_other").await;
    let ns = s.ns.name.clone();

    // A budget with a price, a cost limit and a limit per end user; an agent spends on it.
    let mut tb = budget("research")
        .tokens(100_000)
        .cost("5.00")
        .price("gpt-4o-mini", "0.15", "0.60")
        .build();
    tb.spec.subjects = serde_json::from_value(json!([{"label": "end_user", "limits": {"tokens": 1000}}])).unwrap();
    create(&s.budgets, tb).await;
    create(
        &other.api::<tokenbudget::api::TokenBudget>(&s.client),
        budget("research").tokens(1000).build(),
    )
    .await;
    create(&s.deployments, deployment("agent").replicas(1)).await;
    create(&s.bindings, binding("bb", "research").deployment("agent")).await;
    s.run_pods("agent", 1).await;
    s.agents[0].spend("gpt-4o-mini", 1000, 500);

    let clock = Arc::new(tokenbudget::clock::SystemClock);
    let operator = InProcessOperator::start_with_agent_api(&s.client, &ns, clock, AUDIENCE).await;
    let address = operator.agent_api.expect("the agent API is served");
    let tb = wait_for(&s.budgets, "research", "the agent's 1500 tokens counted", |tb| {
        tb.status.as_ref().and_then(|st| st.used.as_ref()).map(|u| u.tokens) == Some(1500)
    })
    .await;

    // The agent's ServiceAccount, bound to the chart's agent role; another one, not bound.
    let role = chart_agent_role(&s.client, "agent-api-test").await;
    service_account(&s.client, &ns, "agent").await;
    service_account(&s.client, &ns, "stranger").await;
    let rb: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "agent-reads-budgets"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns}]
    }))
    .unwrap();
    create(&s.api::<RoleBinding>(), rb).await;
    let agent = token(&s.client, &ns, "agent", AUDIENCE).await;
    let stranger = token(&s.client, &ns, "stranger", AUDIENCE).await;
    let api_server_token = token(&s.client, &ns, "agent", "").await;

    // 200: the budget's figures, as its status has them, and a subject's standing.
    let path = format!("/v1/namespaces/{ns}/tokenbudgets/research");
    let (code, body) = agent_api_get(address, &path, Some(&agent)).await;
    assert_eq!(code, 200, "{body}");
    let status = tb.status.as_ref().unwrap();
    let used = status.used.as_ref().unwrap();
    assert_eq!(body["namespace"], ns.as_str());
    assert_eq!(body["name"], "research");
    assert_eq!(
        body["limits"],
        json!({"tokens": 100000, "cost": "5.00", "currency": "USD"})
    );
    assert_eq!(body["used"]["tokens"], 1500);
    assert_eq!(body["remainingTokens"], 98_500);
    // 1000 input at 0.15 and 500 output at 0.60 per million tokens.
    assert_eq!(used.cost.as_deref(), Some("0.00045"));
    assert_eq!(body["used"]["cost"], "0.00045");
    assert_eq!(body["remainingCost"], "4.99955");
    assert_eq!(body["phase"], "Active");
    assert_eq!(body["periodStart"].as_str(), status.period_start.as_deref());
    assert_eq!(body["resetsAt"].as_str(), status.resets_at.as_deref());
    assert_eq!(body["percentUsed"].as_i64(), status.percent_used);

    let (code, body) = agent_api_get(address, &format!("{path}?label=end_user&subject=alice"), Some(&agent)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (
            &body["subject"]["label"],
            &body["subject"]["value"],
            &body["subject"]["exhausted"]
        ),
        (&json!("end_user"), &json!("alice"), &json!(false))
    );

    // 401: no token, a garbage one, and a valid token for the API server, not for us.
    for (what, token) in [
        ("no token", None),
        ("a garbage token", Some("garbage")),
        ("a token of the API server's audience", Some(api_server_token.as_str())),
    ] {
        let (code, body) = agent_api_get(address, &path, token).await;
        assert_eq!((code, &body["reason"]), (401, &json!("Unauthorized")), "{what}: {body}");
    }

    // 403: a ServiceAccount without the binding, and the bound one in another namespace.
    let (code, body) = agent_api_get(address, &path, Some(&stranger)).await;
    assert_eq!((code, &body["reason"]), (403, &json!("Forbidden")), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "User \"system:serviceaccount:{ns}:stranger\" cannot get resource \"tokenbudgets\""
        )),
        "{message}"
    );
    let elsewhere = format!("/v1/namespaces/{}/tokenbudgets/research", other.name);
    let (code, body) = agent_api_get(address, &elsewhere, Some(&agent)).await;
    assert_eq!((code, &body["reason"]), (403, &json!("Forbidden")), "{body}");

    // 404: no such budget; no limit per that label.
    let (code, body) = agent_api_get(address, &format!("/v1/namespaces/{ns}/tokenbudgets/nope"), Some(&agent)).await;
    assert_eq!((code, &body["reason"]), (404, &json!("NotFound")), "{body}");
    let (code, body) = agent_api_get(address, &format!("{path}?label=session&subject=s1"), Some(&agent)).await;
    assert_eq!((code, &body["reason"]), (404, &json!("NotFound")), "{body}");

    // The Python helper, with the token in a file as a projected volume has it.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("agent-api-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), &agent).unwrap();
    let script = "import json, tokenbudget_client as t\n\
                  c = t.Client()\n\
                  b = c.budget()\n\
                  s = c.budget(label='end_user', subject='alice')\n\
                  print(json.dumps({'remaining': b.remaining_tokens, 'cost': str(b.remaining_cost), 'exhausted': s.subject_exhausted}))\n";
    let out = tokio::process::Command::new("python3")
        .args(["-c", script])
        .env("PYTHONPATH", Path::new(REPO).join("clients/python"))
        .env("TOKENBUDGET_URL", format!("http://{address}"))
        .env("TOKENBUDGET_NAMESPACE", &ns)
        .env("TOKENBUDGET_NAME", "research")
        .env("TOKENBUDGET_TOKEN_FILE", dir.join("token"))
        .output()
        .await
        .expect("python3 runs");
    assert!(out.status.success(), "the Python helper: {}", text(&out.stderr));
    let read: Value = serde_json::from_slice(&out.stdout).expect("the script's JSON line");
    assert_eq!(read, json!({"remaining": 98500, "cost": "4.99955", "exhausted": false}));
    std::fs::remove_dir_all(dir).ok();

    operator.stop().await;
}
