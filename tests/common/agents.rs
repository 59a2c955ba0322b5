//! What the agent API's tests share: the chart's agent ClusterRole, ServiceAccounts and
//! their tokens from the TokenRequest API.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::Duration,
};

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::ServiceAccount,
    rbac::v1::ClusterRole,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use super::{create, parse_response, text};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The ClusterRole `<fullname>-agent` as the chart renders it (hack/chart-install-sa.py
/// render, with the Helm SDK of .venv/), applied to the cluster; returns its name.
/// `release`: a name tests/rbac.rs never installs, so that its Helm release never meets
/// this ClusterRole.
pub async fn chart_agent_role(client: &Client, release: &str) -> String {
    let python = Path::new(REPO).join(".venv/bin/python");
    assert!(
        python.exists(),
        "tests/agent_api.rs renders the Helm chart with the Helm SDK of .venv/: run \
         `python3 -m venv .venv && .venv/bin/pip install -r hack/chart-test-requirements.txt` (hack/test.sh does this)"
    );
    let out = Command::new(python)
        .arg(Path::new(REPO).join("hack/chart-install-sa.py"))
        .args(["render", release, "tokenbudget-system"])
        .output()
        .expect("hack/chart-install-sa.py runs");
    assert!(out.status.success(), "render: {}", text(&out.stderr));
    let objects: Vec<Value> = serde_json::from_slice(&out.stdout).expect("a JSON list");
    let name = format!("{release}-tokenbudget-operator-agent");
    let role = objects
        .into_iter()
        .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == name.as_str())
        .unwrap_or_else(|| panic!("the chart renders the ClusterRole {name}"));
    let role: ClusterRole = serde_json::from_value(role).expect("a ClusterRole");
    assert_eq!(
        serde_json::to_value(&role.rules).unwrap(),
        json!([{"apiGroups": ["tokenbudget.io"], "resources": ["tokenbudgets"], "verbs": ["get"]}]),
        "the agent role grants get on tokenbudgets, nothing else"
    );
    Api::<ClusterRole>::all(client.clone())
        .patch(&name, &PatchParams::apply(release).force(), &Patch::Apply(&role))
        .await
        .expect("the agent ClusterRole applied");
    name
}

pub async fn service_account(client: &Client, namespace: &str, name: &str) {
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    create(&Api::<ServiceAccount>::namespaced(client.clone(), namespace), sa).await;
}

/// A token of the ServiceAccount from the TokenRequest API, as kubelet mints for a projected
/// volume; `audience` empty: the API server's own.
pub async fn token(client: &Client, namespace: &str, account: &str, audience: &str) -> String {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: (!audience.is_empty()).then(|| vec![audience.into()]),
            expiration_seconds: Some(600),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .expect("a token from the TokenRequest API")
        .status
        .and_then(|s| s.token)
        .expect("a token")
}

/// GET `path` of the agent API, with `token` as the bearer token: (status, JSON body).
pub async fn agent_api_get(address: SocketAddr, path: &str, token: Option<&str>) -> (u16, Value) {
    let (path, token) = (path.to_string(), token.map(str::to_string));
    // Off the runtime's threads: the operator runs on them.
    let (code, body) = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n{auth}\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        parse_response(&response)
    })
    .await
    .unwrap()
    .expect("the agent API answers");
    (code, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}
