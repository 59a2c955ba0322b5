//! Shared helpers for the integration tests. They run against the real API server whose
//! kubeconfig is in `KUBECONFIG` (`hack/test.sh` starts the testbed and sets it), each test in
//! a namespace of its own. By concern: [`waits`], [`operator`], [`kubelet`] (what the tests
//! play on a testbed without nodes), [`objects`]; the cluster connection and the test's
//! namespace ([`TestNamespace`], and [`Tenant`], what most tests keep of it) are here.
#![allow(dead_code)]

mod agents;
mod kubelet;
mod objects;
mod operator;
mod waits;

// Each test crate uses its own part of these; what one leaves unused is no mistake.
#[allow(unused_imports)]
pub use agents::*;
#[allow(unused_imports)]
pub use kubelet::*;
#[allow(unused_imports)]
pub use objects::*;
#[allow(unused_imports)]
pub use operator::*;
#[allow(unused_imports)]
pub use waits::*;

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
    api::{
        apps::v1::Deployment,
        core::v1::{Namespace, Pod},
        events::v1::Event,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::wait::{await_condition, conditions},
};
use serde::de::DeserializeOwned;
use tokenbudget::api::{BudgetBinding, TokenBudget};

/// How long any awaited condition may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn kubeconfig() -> String {
    std::env::var("KUBECONFIG").unwrap_or_else(|_| {
        panic!("integration tests need a cluster: run `hack/test.sh`, or `eval $(hack/testbed.sh env)` after `hack/testbed.sh up`")
    })
}

/// For a bench binary: exits with a message, not a panic, unless `KUBECONFIG` names files that
/// exist (the testbed of `hack/testbed.sh`, or any cluster).
pub fn bench_requires_a_cluster(bench: &str) {
    let fail = |message: &str| -> ! {
        eprintln!("{bench}: {message}");
        std::process::exit(2);
    };
    let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_default();
    if kubeconfig.is_empty() {
        fail(
            "KUBECONFIG is not set. This bench needs a Kubernetes API server; start the local one with\n  \
             export TESTBED_DIR=$PWD/.testbed; hack/testbed.sh up; eval \"$(hack/testbed.sh env)\"\n\
             then run it again (and `hack/testbed.sh down` afterwards).",
        );
    }
    if let Some(missing) = std::env::split_paths(&kubeconfig).find(|p| !p.is_file()) {
        fail(&format!(
            "KUBECONFIG names {}, which does not exist (is the testbed up? `hack/testbed.sh status`)",
            missing.display()
        ));
    }
}

pub async fn client() -> Client {
    kubeconfig();
    Client::try_default().await.expect("a client for KUBECONFIG")
}

/// Installs (server-side applies) the CRDs generated from the types and waits until the API
/// server serves them.
pub async fn ensure_crds(client: &Client) {
    for (_, yaml) in tokenbudget::crds::all() {
        apply_crd(client, &serde_yaml::from_str(&yaml).expect("generated CRD parses")).await;
    }
}

/// Server-side applies one CRD (the tests' field manager, forced) and waits until it is
/// established.
pub async fn apply_crd(client: &Client, crd: &CustomResourceDefinition) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().expect("CRDs have names");
    crds.patch(
        &name,
        &PatchParams::apply("tokenbudget-tests").force(),
        &Patch::Apply(crd),
    )
    .await
    .unwrap_or_else(|e| panic!("the CRD {name} applies: {e}"));
    within(
        await_condition(crds, &name, conditions::is_crd_established()),
        "CRD established",
    )
    .await
    .unwrap_or_else(|e| panic!("watching CRD {name}: {e}"));
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

/// Creates an object, from a builder of [`objects`] or typed, and returns it as the API server
/// stored it; the test fails if the server refuses it.
pub async fn create<K>(api: &Api<K>, object: impl Into<K>) -> K
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object = object.into();
    let name = object.meta().name.clone().unwrap_or_default();
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating {} {name}: {e}", K::kind(&())))
}

/// One namespace of a test, the CRDs installed: handles on the kinds the tests create and read
/// there, the operator when one watches it, and the agents of the pods whose kubelet the test
/// plays. When the test ends the namespace is deleted, and the operator and the agents stop.
pub struct Tenant {
    pub client: Client,
    pub ns: TestNamespace,
    pub budgets: Api<TokenBudget>,
    pub bindings: Api<BudgetBinding>,
    pub deployments: Api<Deployment>,
    pub pods: Api<Pod>,
    pub events: Api<Event>,
    pub operator: Option<Operator>,
    pub agents: Vec<Agent>,
}

impl Tenant {
    /// A new namespace for `test`, nothing running in it yet.
    pub async fn new(test: &str) -> Self {
        let client = client().await;
        ensure_crds(&client).await;
        let ns = TestNamespace::new(&client, test).await;
        Tenant {
            budgets: ns.api(&client),
            bindings: ns.api(&client),
            deployments: ns.api(&client),
            pods: ns.api(&client),
            events: ns.api(&client),
            client,
            ns,
            operator: None,
            agents: Vec::new(),
        }
    }

    /// With the operator binary watching the namespace.
    pub fn with_operator(mut self) -> Self {
        self.operator = Some(Operator::start(&self.ns.name));
        self
    }

    /// A handle on another kind in the namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        self.ns.api(&self.client)
    }

    /// Plays the kubelet for the `count` pods labelled `app`: each gets an agent of its own,
    /// appended to `agents`. Returns the pods' names.
    pub async fn run_pods(&mut self, app: &str, count: usize) -> Vec<String> {
        let names = pods_of(&self.pods, app, count).await;
        for pod in &names {
            let agent = Agent::start(&agent_ip(), &[]);
            run_pod(&self.pods, pod, &agent.ip, 0).await;
            self.agents.push(agent);
        }
        names
    }
}

/// Sets a budget's token limit, as `kubectl patch` would (a merge patch of its spec).
pub async fn set_token_limit(budgets: &Api<TokenBudget>, name: &str, tokens: i64) {
    let limit = serde_json::json!({"spec": {"limits": {"tokens": tokens}}});
    budgets
        .patch(name, &PatchParams::default(), &Patch::Merge(&limit))
        .await
        .unwrap_or_else(|e| panic!("setting the token limit of {name}: {e}"));
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

// ---------------------------------------------------------------------------------------------
// An admission policy that makes the real API server refuse some budget statuses

/// A ValidatingAdmissionPolicy and its binding that refuse, in one namespace, every write of a
/// TokenBudget's status for which `expression` (CEL, over `object`) is false: how a test makes
/// the real API server refuse the operator's status writes, as etcd's size limit would. Removed
/// when dropped.
pub struct RefusedStatuses {
    name: String,
    removed: bool,
}

impl RefusedStatuses {
    /// In force once a dry run of a write with `status` (a merge patch of the budget `budget`)
    /// is refused with `message`.
    pub async fn new(
        budgets: &Api<TokenBudget>,
        budget: &str,
        expression: &str,
        message: &str,
        status: serde_json::Value,
    ) -> Self {
        let ns = budgets.namespace().expect("a namespaced Api").to_string();
        let name = format!("tokenbudget-test-{ns}");
        let manifest = format!(
            "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [tokenbudget.io]
      apiVersions: ['*']
      operations: [UPDATE]
      resources: [tokenbudgets/status]
  validations:
  - expression: {expression:?}
    message: {message:?}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec:
  policyName: {name}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {{kubernetes.io/metadata.name: {ns}}}
"
        );
        let out = kubectl(&["apply", "-f", "-"], Some(&manifest));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let policy = Self { name, removed: false };
        let params = PatchParams {
            dry_run: true,
            ..Default::default()
        };
        let patch = serde_json::json!({ "status": status });
        within(
            async {
                loop {
                    match budgets.patch_status(budget, &params, &Patch::Merge(&patch)).await {
                        Err(e) if e.to_string().contains(message) => break,
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            },
            "the admission policy in force",
        )
        .await;
        policy
    }

    /// Takes the policy away: status writes are accepted again.
    pub fn remove(mut self) {
        self.delete();
    }

    fn delete(&mut self) {
        if !self.removed {
            self.removed = true;
            let out = kubectl(
                &[
                    "delete",
                    "--ignore-not-found",
                    "validatingadmissionpolicybinding,validatingadmissionpolicy",
                    &self.name,
                ],
                None,
            );
            assert!(
                out.status.success() || std::thread::panicking(),
                "{}",
                text(&out.stderr)
            );
        }
    }
}

impl Drop for RefusedStatuses {
    fn drop(&mut self) {
        self.delete();
    }
}
