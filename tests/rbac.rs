//! The Helm chart's RBAC is enough, and not more.
//!
//! The chart is installed for real (hack/chart-install-sa.py, with the Helm SDK in `.venv/`),
//! and the operator binary runs with the token of the chart's ServiceAccount and nothing else,
//! through everything it does: usage counted into status, a budget exhausted under
//! `ScaleDown` with `freezeQuota` and a `computeQuota` (quota created, then frozen; a
//! Deployment scaled to 0, a Job and a CronJob paused; Events), restored when the limit is
//! raised, and its finalizer released when the budget is deleted (quota deleted, workloads
//! unmarked). Its log must not hold a single refusal (403, Forbidden): that is "enough".
//!
//! Then "not more", with real requests carrying the same token: reading Secrets, deleting
//! workloads or pods, whole-object updates, creating pods or budgets, patching namespaces and
//! touching RBAC are refused with 403, for the namespace-scoped install (a Role in the watched
//! namespace) and for the default one (a ClusterRole); and the namespace-scoped install can do
//! nothing at all in another namespace. Mutating requests are sent with `dryRun=All`:
//! authorization is decided before dry-run is looked at, so a refusal is the same refusal, and
//! a grant that should not be there would show without changing anything.

mod common;

use std::{
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use common::*;
use futures::FutureExt;
use k8s_openapi::api::{
    apps::v1::Deployment,
    autoscaling::v2::HorizontalPodAutoscaler,
    batch::v1::{CronJob, Job},
    core::v1::{Namespace, Pod, ResourceQuota, Secret},
    events::v1::Event,
    rbac::v1::{ClusterRoleBinding, Role},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchParams},
};
use serde_json::json;
use tokenbudget::{
    api::{BudgetBinding, BudgetPhase, EnforcementAction::ScaleDown, TokenBudget, WorkloadKind},
    enforce::{BUDGET, FINALIZER, PAUSED_REPLICAS, STATE},
};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A release of the chart with `crds.install=false`, installed by hack/chart-install-sa.py,
/// uninstalled when dropped (also when the test fails).
struct Release {
    name: String,
    namespace: String,
    /// The ServiceAccount the chart made.
    service_account: String,
    /// A kubeconfig with that ServiceAccount's token as its only credential.
    kubeconfig: PathBuf,
}

/// The venv's python, with the Helm SDK: the test fails, rather than skips, without it.
fn python() -> PathBuf {
    let python = Path::new(REPO).join(".venv/bin/python");
    assert!(
        python.exists(),
        "tests/rbac.rs installs the Helm chart with the Helm SDK of .venv/, and {} is missing: \
         run `python3 -m venv .venv && .venv/bin/pip install -r hack/chart-test-requirements.txt` \
         (hack/test.sh does this)",
        python.display()
    );
    python
}

fn chart_script(python: &Path, args: &[&str]) -> std::process::Output {
    Command::new(python)
        .arg(Path::new(REPO).join("hack/chart-install-sa.py"))
        .args(args)
        .output()
        .expect("hack/chart-install-sa.py runs")
}

impl Release {
    /// Installs the chart as `name` into `namespace`; with `watch_namespace`, namespace-scoped.
    fn install(name: &str, namespace: &str, watch_namespace: Option<&str>) -> Self {
        let python = python();
        let kubeconfig = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.kubeconfig"));
        // The guard exists before the install, so that a half-done install is removed too.
        let mut release = Release {
            name: name.into(),
            namespace: namespace.into(),
            service_account: String::new(),
            kubeconfig: kubeconfig.clone(),
        };
        let mut args = vec!["install", name, namespace, kubeconfig.to_str().expect("a UTF-8 path")];
        if let Some(watch) = watch_namespace {
            args.extend(["--watch-namespace", watch]);
        }
        let out = chart_script(&python, &args);
        assert!(
            out.status.success(),
            "hack/chart-install-sa.py {}: {}{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr)
        );
        let stdout = text(&out.stdout);
        let info: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("the script prints one JSON line");
        release.service_account = info["serviceAccount"].as_str().expect("serviceAccount").into();
        release
    }

    /// What the API server calls the ServiceAccount.
    fn user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.service_account)
    }

    /// A client that is the ServiceAccount.
    async fn client(&self) -> Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("the written kubeconfig reads");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("a config from the ServiceAccount's kubeconfig");
        Client::try_from(config).expect("a client for the ServiceAccount")
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let out = chart_script(&python(), &["uninstall", &self.name, &self.namespace]);
        if !out.status.success() {
            eprintln!("uninstalling {}: {}", self.name, text(&out.stderr));
        }
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// Lines of the operator's log that report a refusal by the API server: "forbidden" in any
/// case (the API server's reason and message), or 403 as a number of its own (not part of a
/// longer number, a name, or the fraction of a second of a timestamp).
fn refusals(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| line.to_ascii_lowercase().contains("forbidden") || has_code_403(line))
        .collect()
}

fn has_code_403(line: &str) -> bool {
    line.match_indices("403").any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + 3..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '.')
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// Records the API server's answer to a request the ServiceAccount must not be able to make:
/// it must be a 403 naming that ServiceAccount.
struct Refusals {
    user: String,
    seen: Vec<String>,
}

impl Refusals {
    async fn expect<T>(&mut self, what: &str, request: impl Future<Output = Result<T, kube::Error>>) {
        match request.await {
            Ok(_) => panic!("{} may {what}", self.user),
            Err(kube::Error::Api(status)) if status.code == 403 => {
                assert!(
                    status.message.contains(&self.user),
                    "{what}: refused, but not for {}: {}",
                    self.user,
                    status.message
                );
                self.seen.push(format!("{what}: 403 {}", status.message));
            }
            Err(e) => panic!("{what}: expected a 403 for {}, got {e}", self.user),
        }
    }
}

fn dry_post() -> PostParams {
    PostParams {
        dry_run: true,
        ..Default::default()
    }
}

fn dry_delete() -> DeleteParams {
    DeleteParams {
        dry_run: true,
        ..Default::default()
    }
}

fn dry_patch() -> PatchParams {
    PatchParams {
        dry_run: true,
        ..Default::default()
    }
}

/// What neither install may do in `ns`, where it works: one real request each, refused.
async fn refused_in_namespace(release: &Release, ns: &str, agent: &Deployment, agent_pod: &str, checks: &mut Refusals) {
    let client = release.client().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let budgets: Api<TokenBudget> = Api::namespaced(client.clone(), ns);
    let bindings: Api<BudgetBinding> = Api::namespaced(client.clone(), ns);
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    let autoscalers: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let bindings_rbac: Api<ClusterRoleBinding> = Api::all(client.clone());

    // A positive control first: the token works, and may do what the operator does here.
    pods.list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("{} cannot list pods in {ns}: {e}", release.user()));

    checks
        .expect("list Secrets", secrets.list(&ListParams::default()))
        .await;
    checks.expect("read a Secret", secrets.get("credentials")).await;
    checks
        .expect("delete a Deployment", deployments.delete("agent", &dry_delete()))
        .await;
    checks
        .expect(
            "update a whole Deployment",
            deployments.replace("agent", &dry_post(), agent),
        )
        .await;
    checks
        .expect("delete a pod", pods.delete(agent_pod, &dry_delete()))
        .await;
    checks
        .expect("create a pod", pods.create(&dry_post(), &pod("intruder")))
        .await;
    checks
        .expect("create a TokenBudget", budgets.create(&dry_post(), &research(1)))
        .await;
    checks
        .expect("delete a TokenBudget", budgets.delete("research", &dry_delete()))
        .await;
    let label = json!({"metadata": {"labels": {"tokenbudget.io/test": "changed"}}});
    checks
        .expect(
            "patch a BudgetBinding",
            bindings.patch("agents", &dry_patch(), &Patch::Merge(&label)),
        )
        .await;
    checks
        .expect("list ResourceQuotas", quotas.list(&ListParams::default()))
        .await;
    // Pacing watches autoscalers, and never writes one.
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "agent"}, "maxReplicas": 3}
    }))
    .unwrap();
    checks
        .expect(
            "create a HorizontalPodAutoscaler",
            autoscalers.create(&dry_post(), &hpa),
        )
        .await;
    checks
        .expect(
            "patch a namespace",
            namespaces.patch(ns, &dry_patch(), &Patch::Merge(&label)),
        )
        .await;
    checks.expect("list Roles", roles.list(&ListParams::default())).await;
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "escalate"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]
    }))
    .unwrap();
    checks.expect("create a Role", roles.create(&dry_post(), &role)).await;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "escalate"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": release.service_account, "namespace": release.namespace}]
    }))
    .unwrap();
    checks
        .expect(
            "create a ClusterRoleBinding",
            bindings_rbac.create(&dry_post(), &binding),
        )
        .await;
}

/// The namespace-scoped install (a Role in `ns`) may do nothing in `elsewhere`, not even what
/// it does in `ns`.
async fn refused_elsewhere(release: &Release, elsewhere: &str, checks: &mut Refusals) {
    let client = release.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), elsewhere);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), elsewhere);
    let budgets: Api<TokenBudget> = Api::namespaced(client.clone(), elsewhere);
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), elsewhere);
    let events: Api<Event> = Api::namespaced(client.clone(), elsewhere);
    let annotate = json!({"metadata": {"annotations": {STATE: "exhausted"}}});
    checks
        .expect("list pods in another namespace", pods.list(&ListParams::default()))
        .await;
    checks
        .expect(
            "watch Deployments in another namespace",
            deployments.watch(&WatchParams::default().timeout(1), "0"),
        )
        .await;
    checks
        .expect(
            "patch a Deployment in another namespace",
            deployments.patch("bystander", &dry_patch(), &Patch::Merge(&annotate)),
        )
        .await;
    checks
        .expect(
            "scale a Deployment in another namespace",
            deployments.patch_scale(
                "bystander",
                &dry_patch(),
                &Patch::Merge(&json!({"spec": {"replicas": 0}})),
            ),
        )
        .await;
    checks
        .expect(
            "list TokenBudgets in another namespace",
            budgets.list(&ListParams::default()),
        )
        .await;
    checks
        .expect(
            "write a TokenBudget's status in another namespace",
            budgets.patch_status("research", &dry_patch(), &Patch::Merge(&json!({"status": {}}))),
        )
        .await;
    checks
        .expect(
            "read a ResourceQuota in another namespace",
            quotas.get("tokenbudget-research"),
        )
        .await;
    let event: Event = serde_json::from_value(json!({
        "metadata": {"name": "forged"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "tokenbudget-operator", "reportingInstance": "test", "action": "Reconcile",
        "reason": "Exhausted", "type": "Warning",
        "regarding": {"kind": "Deployment", "name": "bystander", "namespace": elsewhere}
    }))
    .unwrap();
    checks
        .expect(
            "create an Event in another namespace",
            events.create(&dry_post(), &event),
        )
        .await;
}

/// The default install (a ClusterRole) may list and watch, in every namespace at once, each
/// kind the operator watches when it is started without `--namespace`.
async fn watches_every_namespace(release: &Release) {
    let client = release.client().await;
    let cron_jobs = ApiResource::erase::<CronJob>(&());
    let kinds: Vec<(&str, Api<DynamicObject>)> = vec![
        (
            "tokenbudgets",
            Api::all_with(client.clone(), &ApiResource::erase::<TokenBudget>(&())),
        ),
        (
            "budgetbindings",
            Api::all_with(client.clone(), &ApiResource::erase::<BudgetBinding>(&())),
        ),
        ("pods", Api::all_with(client.clone(), &ApiResource::erase::<Pod>(&()))),
        (
            "deployments",
            Api::all_with(client.clone(), &ApiResource::erase::<Deployment>(&())),
        ),
        (
            "statefulsets",
            Api::all_with(
                client.clone(),
                &ApiResource::erase::<k8s_openapi::api::apps::v1::StatefulSet>(&()),
            ),
        ),
        (
            "replicasets",
            Api::all_with(
                client.clone(),
                &ApiResource::erase::<k8s_openapi::api::apps::v1::ReplicaSet>(&()),
            ),
        ),
        ("jobs", Api::all_with(client.clone(), &ApiResource::erase::<Job>(&()))),
        ("cronjobs", Api::all_with(client.clone(), &cron_jobs)),
        (
            "horizontalpodautoscalers",
            Api::all_with(client.clone(), &ApiResource::erase::<HorizontalPodAutoscaler>(&())),
        ),
    ];
    for (kind, api) in kinds {
        api.list_metadata(&ListParams::default().limit(1))
            .await
            .unwrap_or_else(|e| panic!("{} cannot list {kind} in all namespaces: {e}", release.user()));
        // Opening the watch is what needs the grant; its events do not matter here.
        drop(
            api.watch(&WatchParams::default().timeout(1), "0")
                .await
                .unwrap_or_else(|e| panic!("{} cannot watch {kind} in all namespaces: {e}", release.user())),
        );
    }
}

/// The budget of the test: a threshold at 50%, scale-down, and a quota of 10 pods that is
/// frozen while the budget is exhausted.
fn research(tokens: i64) -> TokenBudget {
    budget("research")
        .tokens(tokens)
        .thresholds(&[50])
        .action(ScaleDown)
        .compute_quota(&[("pods", "10")])
        .freeze_quota()
        .build()
}

#[test]
fn the_log_check_finds_refusals_and_nothing_else() {
    let log = "2026-01-01T10:00:04.403Z INFO ok resourceVersion=14030 pod=agent-7c4f9-x403b took 403ms\n\
               WARN watch list error with 403: ...\n\
               WARN reconcile failed: ApiError: pods is forbidden: User cannot list (ErrorResponse { code: 403 })\n\
               WARN Forbidden";
    assert_eq!(refusals(log).len(), 3, "{:?}", refusals(log));
}

#[tokio::test]
async fn the_chart_rbac_is_enough_for_everything_the_operator_does_and_no_more() {
    let started = Instant::now();
    let mut s = Scenario::install_the_chart_twice().await;
    eprintln!("rbac: charts installed after {:.1?}", started.elapsed());
    s.create_what_the_operator_will_find().await;
    s.run_the_agents().await;
    let operator = s.start_the_operator_as_the_charts_service_account();
    let setup = started.elapsed();

    // The budget's whole life; when it fails, the operator's refusals say why.
    let life = async {
        operator.wait_ready().await;
        s.bind_the_workloads_to_a_budget().await;
        s.spend_and_see_it_counted().await;
        s.exhaust_the_budget().await;
        s.raise_the_limit().await;
        s.delete_the_budget().await;
    };
    let outcome = AssertUnwindSafe(life).catch_unwind().await;
    // Enough: the operator was refused nothing.
    s.check_the_log_holds_no_refusal(operator, outcome).await;
    let scenario_done = started.elapsed();

    // Not more: the ServiceAccounts are refused what the operator never does.
    let (checks, wide) = s.check_the_rest_is_refused().await;
    eprintln!("rbac: refused to the namespace-scoped install's ServiceAccount:");
    for line in &checks.seen {
        eprintln!("  {line}");
    }
    eprintln!("rbac: refused to the cluster-wide install's ServiceAccount:");
    for line in &wide.seen {
        eprintln!("  {line}");
    }
    eprintln!(
        "rbac: installs and setup {setup:.1?}, scenario {:.1?}, refusal checks {:.1?}",
        scenario_done - setup,
        started.elapsed() - scenario_done
    );
}

/// The test's namespaces, the chart's two installs, and the admin's view of the namespace the
/// operator watches.
struct Scenario {
    // Fields drop in this order: the releases are uninstalled before their namespaces go.
    /// Namespace-scoped: a Role in the test namespace, the operator's whole grant.
    scoped: Release,
    /// The default install: a ClusterRole, for the cluster-wide checks.
    cluster_wide: Release,
    /// The namespace the operator watches, and the agents of its pods (as the admin sees it).
    watched: Tenant,
    elsewhere: TestNamespace,
    /// Where the releases are installed.
    _system: TestNamespace,
    jobs: Api<Job>,
    quotas: Api<ResourceQuota>,
    cron_jobs: Api<CronJob>,
}

impl Scenario {
    async fn install_the_chart_twice() -> Self {
        let watched = Tenant::new("rbac").await;
        let admin = &watched.client;
        let elsewhere = TestNamespace::new(admin, "rbac-elsewhere").await;
        let system = TestNamespace::new(admin, "rbac-release").await;
        let id = std::process::id();
        let scoped = Release::install(&format!("rbac-{id}-ns"), &system.name, Some(&watched.ns.name));
        let cluster_wide = Release::install(&format!("rbac-{id}-all"), &system.name, None);
        Scenario {
            scoped,
            cluster_wide,
            jobs: watched.api(),
            quotas: watched.api(),
            cron_jobs: Api::namespaced(admin.clone(), &watched.ns.name),
            elsewhere,
            _system: system,
            watched,
        }
    }

    /// A Deployment, a Job and a CronJob, a Secret it must not read, and in another namespace
    /// a Deployment it must not touch.
    async fn create_what_the_operator_will_find(&self) {
        create(&self.watched.deployments, deployment("agent")).await;
        create(&self.jobs, job("batch").parallelism(1).completions(5)).await;
        create(&self.watched.api::<CronJob>(), cron_job("nightly")).await;
        let secret: Secret =
            serde_json::from_value(json!({"metadata": {"name": "credentials"}, "stringData": {"key": "sk-secret"}}))
                .unwrap();
        create(&self.watched.api::<Secret>(), secret).await;
        create(
            &self.elsewhere.api::<Deployment>(&self.watched.client),
            deployment("bystander").replicas(0),
        )
        .await;
    }

    /// Plays the kubelet for the pod of the Deployment and the pod of the Job: an agent each.
    async fn run_the_agents(&mut self) {
        for app in ["agent", "batch"] {
            self.watched.run_pods(app, 1).await;
        }
    }

    /// The operator, as the chart's ServiceAccount of the namespace-scoped install, with the
    /// leader election flags of the chart's Deployment: it acts only once it holds the Lease,
    /// through the chart's Role for it.
    fn start_the_operator_as_the_charts_service_account(&self) -> Operator {
        let kubeconfig = self.scoped.kubeconfig.to_str().unwrap();
        let out = kubectl(
            &["-n", &self.scoped.namespace, "get", "deployments", "-o", "json"],
            None,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let deployments: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a list");
        let args: Vec<String> = deployments["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["metadata"]["annotations"]["meta.helm.sh/release-name"] == self.scoped.name.as_str())
            .flat_map(|d| {
                d["spec"]["template"]["spec"]["containers"][0]["args"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|a| {
                a.as_str()
                    .filter(|a| a.starts_with("--leader-election"))
                    .map(String::from)
            })
            .collect();
        assert!(
            args.iter().any(|a| a == "--leader-election"),
            "the chart's Deployment runs with leader election: {args:?}"
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Operator::start_as(&self.watched.ns.name, &[("KUBECONFIG", kubeconfig)], &args)
    }

    async fn bind_the_workloads_to_a_budget(&self) {
        create(&self.watched.budgets, research(1000)).await;
        let bb = binding("agents", "research")
            .deployment("agent")
            .named(WorkloadKind::Job, "batch")
            .named(WorkloadKind::CronJob, "nightly");
        create(&self.watched.bindings, bb).await;
    }

    /// Spends through an agent: usage counted into the budget's and the binding's status; the
    /// quota created, owned by the budget; workloads and pods marked (pods patched).
    async fn spend_and_see_it_counted(&self) {
        // The pods ran before their binding: their first scrape is their baseline (accounting rule 3).
        wait_for(&self.watched.bindings, "agents", "both pods scraped", |bb| {
            bb.status.as_ref().and_then(|s| s.scraped_pods) == Some(2)
        })
        .await;
        self.watched.agents[0].spend("gpt-4o-mini", 100, 20);
        let tb = wait_for(&self.watched.budgets, "research", "120 tokens counted", |tb| {
            tb.status.as_ref().and_then(|s| s.used.as_ref()).map(|u| u.tokens) == Some(120)
        })
        .await;
        assert_eq!(tb.status.as_ref().unwrap().phase, Some(BudgetPhase::Active));
        assert!(tb.finalizers().iter().any(|f| f == FINALIZER), "{:?}", tb.finalizers());
        wait_for(&self.watched.bindings, "agents", "the binding's usedTokens", |bb| {
            bb.status.as_ref().and_then(|s| s.used_tokens) == Some(120)
        })
        .await;
        let quota = wait_for(&self.quotas, "tokenbudget-research", "the budget's quota", |q| {
            quota_pods(q) == Some("10")
        })
        .await;
        assert!(
            quota
                .owner_references()
                .iter()
                .any(|o| o.kind == "TokenBudget" && o.name == "research"),
            "{:?}",
            quota.owner_references()
        );
        let agent_pod = pods_of(&self.watched.pods, "agent", 1).await.remove(0);
        wait_for(&self.watched.pods, &agent_pod, "the agent's pod marked ok", |p| {
            annotation(&p.metadata, STATE) == Some("ok")
        })
        .await;
    }

    /// Spends past the limit. Exhausted: quota frozen, Deployment to 0, Job and CronJob paused,
    /// Events.
    async fn exhaust_the_budget(&self) {
        self.watched.agents[1].spend("gpt-4o-mini", 500, 400);
        wait_for(&self.watched.budgets, "research", "phase Exhausted", |tb| {
            tb.status.as_ref().and_then(|s| s.phase) == Some(BudgetPhase::Exhausted)
        })
        .await;
        wait_for(&self.quotas, "tokenbudget-research", "the quota frozen", |q| {
            quota_pods(q) == Some("0")
        })
        .await;
        let d = wait_for(&self.watched.deployments, "agent", "the Deployment scaled to 0", |d| {
            d.spec.replicas == Some(0)
        })
        .await;
        assert_eq!(annotation(&d.metadata, PAUSED_REPLICAS), Some("1"));
        wait_for(&self.jobs, "batch", "the Job suspended", |j| {
            j.spec.as_ref().and_then(|s| s.suspend) == Some(true)
        })
        .await;
        wait_for(&self.cron_jobs, "nightly", "the CronJob suspended", |cj| {
            cj.spec.suspend == Some(true)
        })
        .await;
        for reason in ["Exhausted", "ScaledDown"] {
            wait_event(&self.watched.events, &format!("a {reason} Event"), |e| {
                e.reason.as_deref() == Some(reason) && e.reporting_controller.as_deref() == Some("tokenbudget-operator")
            })
            .await;
        }
        wait_for(
            &self.watched.budgets,
            "research",
            "three workloads enforced, the quota in status",
            |tb| {
                tb.status.as_ref().is_some_and(|s| {
                    s.enforced.len() == 3
                        && s.compute_quota
                            .as_ref()
                            .is_some_and(|q| q.hard.get("pods").map(|p| p.0.as_str()) == Some("0"))
                })
            },
        )
        .await;
    }

    /// The limit raised: everything restored, the quota thawed.
    async fn raise_the_limit(&self) {
        set_token_limit(&self.watched.budgets, "research", 1_000_000).await;
        wait_for(&self.quotas, "tokenbudget-research", "the quota thawed", |q| {
            quota_pods(q) == Some("10")
        })
        .await;
        wait_for(
            &self.watched.deployments,
            "agent",
            "the Deployment restored to 1",
            |d| d.spec.replicas == Some(1) && annotation(&d.metadata, PAUSED_REPLICAS).is_none(),
        )
        .await;
        wait_for(&self.jobs, "batch", "the Job resumed", |j| {
            let spec = j.spec.as_ref();
            spec.and_then(|s| s.parallelism) == Some(1) && spec.and_then(|s| s.suspend) != Some(true)
        })
        .await;
        wait_for(&self.cron_jobs, "nightly", "the CronJob resumed", |cj| {
            cj.spec.suspend == Some(false)
        })
        .await;
        wait_event(&self.watched.events, "a Restored Event", |e| {
            e.reason.as_deref() == Some("Restored") && e.reporting_controller.as_deref() == Some("tokenbudget-operator")
        })
        .await;
        wait_for(
            &self.watched.budgets,
            "research",
            "phase Active, nothing enforced",
            |tb| {
                tb.status
                    .as_ref()
                    .is_some_and(|s| s.phase == Some(BudgetPhase::Active) && s.enforced.is_empty())
            },
        )
        .await;
    }

    /// The budget deleted: the finalizer restores, deletes the quota, and lets go.
    async fn delete_the_budget(&self) {
        delete(&self.watched.budgets, "research").await;
        wait_gone(
            &self.watched.budgets,
            "research",
            "the budget to be gone (its finalizer released)",
        )
        .await;
        wait_gone(&self.quotas, "tokenbudget-research", "the quota to be gone").await;
        wait_for(&self.watched.deployments, "agent", "the Deployment unmarked", |d| {
            d.metadata.annotations.as_ref().is_none_or(|a| !a.contains_key(BUDGET))
        })
        .await;
    }

    /// `Some` once the CronJob's `spec.suspend` is `want`.
    /// Enough: not one refusal in the whole run. Stops the operator; when the budget's life
    /// failed, shows what the API server refused the operator and fails with that failure.
    async fn check_the_log_holds_no_refusal(&self, operator: Operator, outcome: std::thread::Result<()>) {
        let log_path = operator.log.clone();
        drop(operator);
        let log = std::fs::read_to_string(&log_path).expect("the operator's log");
        let refused = refusals(&log);
        if let Err(panic) = outcome {
            // The operator is gone: its finalizer must not keep the namespace from being deleted.
            let _ = self
                .watched
                .budgets
                .patch_metadata(
                    "research",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await;
            eprintln!(
                "the scenario failed; what the API server refused the operator ({}):\n{}",
                log_path.display(),
                refused.join("\n")
            );
            std::panic::resume_unwind(panic);
        }
        assert!(
            log.contains("caches synced, ready"),
            "the operator never got ready:\n{log}"
        );
        assert!(
            refused.is_empty(),
            "the operator was refused with the chart's RBAC ({}):\n{}",
            log_path.display(),
            refused.join("\n")
        );
    }

    /// Not more: the same token, and the cluster-wide install's, refused what the operator
    /// never does; the namespace-scoped one refused everything in another namespace. Returns
    /// what each was refused.
    async fn check_the_rest_is_refused(&self) -> (Refusals, Refusals) {
        let pod = pods_of(&self.watched.pods, "agent", 1).await.remove(0);
        let agent = self.watched.deployments.get("agent").await.unwrap();
        let mut checks = Refusals {
            user: self.scoped.user(),
            seen: Vec::new(),
        };
        refused_in_namespace(&self.scoped, &self.watched.ns.name, &agent, &pod, &mut checks).await;
        refused_elsewhere(&self.scoped, &self.elsewhere.name, &mut checks).await;
        let mut wide = Refusals {
            user: self.cluster_wide.user(),
            seen: Vec::new(),
        };
        refused_in_namespace(&self.cluster_wide, &self.watched.ns.name, &agent, &pod, &mut wide).await;
        let all_secrets: Api<Secret> = Api::all(self.cluster_wide.client().await);
        wide.expect(
            "list Secrets in all namespaces",
            all_secrets.list(&ListParams::default()),
        )
        .await;
        watches_every_namespace(&self.cluster_wide).await;
        (checks, wide)
    }
}
