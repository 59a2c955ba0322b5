//! The CRDs on a real API server: they install, `kubectl` shows the columns and descriptions
//! of the API, every example applies, and the server itself rejects invalid manifests.

mod common;

use common::*;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;

#[tokio::test]
async fn crds_install_and_become_established() {
    let client = client().await;
    ensure_crds(&client).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for name in ["tokenbudgets.tokenbudget.io", "budgetbindings.tokenbudget.io"] {
        let crd = crds.get(name).await.expect("CRD exists");
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "{name} is not Established");
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "{name} has no status subresource"
        );
    }
}

/// kubectl reads discovery, which lags a freshly established CRD by a moment: retry until
/// the short name resolves.
async fn kubectl_get(args: &[&str]) -> String {
    within(
        async {
            loop {
                let out = kubectl(args, None);
                if out.status.success() {
                    return text(&out.stdout);
                }
                let err = text(&out.stderr);
                assert!(
                    err.contains("doesn't have a resource type"),
                    "kubectl {args:?} failed: {err}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        },
        "kubectl to know the short names",
    )
    .await
}

fn header(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn kubectl_get_shows_the_columns_of_the_api() {
    let client = client().await;
    ensure_crds(&client).await;
    let ns = TestNamespace::new(&client, "columns").await;
    let manifests = "apiVersion: tokenbudget.io/v1alpha1\nkind: TokenBudget\nmetadata: {name: research}\n\
        spec: {limits: {tokens: 5000000}}\n---\n\
        apiVersion: tokenbudget.io/v1alpha1\nkind: BudgetBinding\nmetadata: {name: summarizer}\n\
        spec: {budgetRef: {name: research}, workloads: [{kind: Deployment, name: summarizer}]}\n";
    let out = kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(manifests));
    assert!(out.status.success(), "{}", text(&out.stderr));

    let tb = kubectl_get(&["get", "tb", "-n", &ns.name]).await;
    assert_eq!(
        header(&tb),
        ["NAME", "LIMIT", "USED", "%USED", "PHASE", "RESETS", "AGE"],
        "{tb}"
    );
    let row: Vec<&str> = tb.lines().nth(1).expect("one budget").split_whitespace().collect();
    assert_eq!(&row[..2], ["research", "5000000"], "{tb}");

    let bb = kubectl_get(&["get", "bb", "-n", &ns.name]).await;
    assert_eq!(
        header(&bb),
        ["NAME", "BUDGET", "WORKLOADS", "PODS", "USED", "READY", "AGE"],
        "{bb}"
    );
    let row: Vec<&str> = bb.lines().nth(1).expect("one binding").split_whitespace().collect();
    assert_eq!(&row[..2], ["summarizer", "research"], "{bb}");

    let wide = kubectl_get(&["get", "tb", "-n", &ns.name, "-o", "wide"]).await;
    assert_eq!(
        header(&wide),
        [
            "NAME",
            "LIMIT",
            "USED",
            "%USED",
            "PHASE",
            "RESETS",
            "AGE",
            "COST-LIMIT",
            "COST",
            "BURN-RATE"
        ],
        "{wide}"
    );
}

#[tokio::test]
async fn kubectl_explain_shows_descriptions() {
    let client = client().await;
    ensure_crds(&client).await;
    let spec = kubectl_get(&["explain", "tb.spec"]).await;
    for expected in [
        "What may be spent per period",
        "enforcement",
        "computeQuota",
        "Warning thresholds",
    ] {
        assert!(
            spec.contains(expected),
            "`kubectl explain tb.spec` lacks {expected:?}:\n{spec}"
        );
    }
    let period = kubectl_get(&["explain", "tb.spec.period"]).await;
    assert!(period.contains("IANA time zone"), "{period}");
    let metrics = kubectl_get(&["explain", "bb.spec.metrics"]).await;
    assert!(metrics.contains("container port"), "{metrics}");
}

#[tokio::test]
async fn every_example_applies() {
    let client = client().await;
    ensure_crds(&client).await;
    let ns = TestNamespace::new(&client, "examples").await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "expected at least four examples, found {files:?}");
    for file in &files {
        let path = file.to_str().unwrap();
        let out = kubectl(&["apply", "-n", &ns.name, "-f", path], None);
        assert!(out.status.success(), "{path} does not apply: {}", text(&out.stderr));
        // And what was applied is there, as written.
        let out = kubectl(&["get", "-n", &ns.name, "-f", path, "-o", "name"], None);
        assert!(out.status.success(), "{path}: {}", text(&out.stderr));
    }
}

/// Invalid manifests are rejected by the API server itself, with a message naming the field.
#[tokio::test]
async fn invalid_manifests_are_rejected_naming_the_field() {
    let client = client().await;
    ensure_crds(&client).await;
    let ns = TestNamespace::new(&client, "invalid").await;
    let budget = |spec: &str| {
        format!("apiVersion: tokenbudget.io/v1alpha1\nkind: TokenBudget\nmetadata: {{name: bad}}\nspec: {spec}\n")
    };
    let binding = |spec: &str| {
        format!("apiVersion: tokenbudget.io/v1alpha1\nkind: BudgetBinding\nmetadata: {{name: bad}}\nspec: {spec}\n")
    };
    let cases = [
        (
            "negative tokens",
            budget("{limits: {tokens: -5}}"),
            vec!["spec.limits.tokens", "greater than or equal to 0"],
        ),
        (
            "neither tokens nor cost",
            budget("{limits: {}}"),
            vec!["spec.limits", "anyOf"],
        ),
        (
            "no limits at all",
            budget("{currency: USD}"),
            vec!["spec.limits", "Required value"],
        ),
        (
            "unknown reset",
            budget("{limits: {tokens: 5}, period: {reset: Yearly}}"),
            vec!["spec.period.reset", "Unsupported value: \"Yearly\""],
        ),
        (
            "cost that is not a decimal",
            budget("{limits: {cost: 'lots'}, pricing: [{model: m}]}"),
            vec!["spec.limits.cost"],
        ),
        (
            "threshold over 100",
            budget("{limits: {tokens: 5}, thresholds: [50, 150]}"),
            vec!["spec.thresholds", "less than or equal to 100"],
        ),
        (
            "unknown action",
            budget("{limits: {tokens: 5}, enforcement: {action: Delete}}"),
            vec!["spec.enforcement.action"],
        ),
        (
            "bad grace period",
            budget("{limits: {tokens: 5}, enforcement: {gracePeriod: 5 minutes}}"),
            vec!["spec.enforcement.gracePeriod"],
        ),
        (
            "both name and selector",
            binding(
                "{budgetRef: {name: b}, workloads: [{kind: Deployment, name: a, selector: {matchLabels: {a: b}}}]}",
            ),
            vec!["spec.workloads", "oneOf"],
        ),
        (
            "neither name nor selector",
            binding("{budgetRef: {name: b}, workloads: [{kind: Deployment}]}"),
            vec!["spec.workloads", "oneOf"],
        ),
        (
            "no workloads",
            binding("{budgetRef: {name: b}, workloads: []}"),
            vec!["spec.workloads"],
        ),
        (
            "unknown workload kind",
            binding("{budgetRef: {name: b}, workloads: [{kind: Pod, name: a}]}"),
            vec!["spec.workloads[0].kind", "Unsupported value: \"Pod\""],
        ),
        (
            "bad duration",
            binding("{budgetRef: {name: b}, workloads: [{kind: Job, name: a}], metrics: {interval: 15 seconds}}"),
            vec!["spec.metrics.interval", "should match"],
        ),
        (
            "unknown format",
            binding("{budgetRef: {name: b}, workloads: [{kind: Job, name: a}], metrics: {format: Statsd}}"),
            vec!["spec.metrics.format"],
        ),
        (
            "duplicate thresholds",
            budget("{limits: {tokens: 5}, thresholds: [80, 80]}"),
            vec!["spec.thresholds[1]", "Duplicate value"],
        ),
        (
            "a quota quantity that is not a quantity",
            budget("{limits: {tokens: 5}, computeQuota: {hard: {pods: lots}}}"),
            vec!["spec.computeQuota.hard.pods", "should match"],
        ),
        (
            "missing budgetRef",
            binding("{workloads: [{kind: Job, name: a}]}"),
            vec!["spec.budgetRef", "Required value"],
        ),
    ];
    for (case, manifest, expected) in cases {
        // --validate=false: the API server, not kubectl's client-side check, must reject it.
        let out = kubectl(
            &["apply", "--validate=false", "-n", &ns.name, "-f", "-"],
            Some(&manifest),
        );
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{case}: the server accepted\n{manifest}");
        for needle in expected {
            assert!(
                err.contains(needle),
                "{case}: the error does not mention {needle:?}:\n{err}"
            );
        }
    }
    // Nothing invalid got in.
    let out = kubectl(&["get", "tb,bb", "-n", &ns.name, "-o", "name"], None);
    assert_eq!(text(&out.stdout).trim(), "", "invalid objects were stored");
}

/// An explicit `null` is pruned by the server and the default applies: the operator never
/// sees a null it cannot read (one unreadable object would stall its whole watch).
#[tokio::test]
async fn nulls_are_pruned_and_defaults_apply() {
    let client = client().await;
    ensure_crds(&client).await;
    let ns = TestNamespace::new(&client, "nulls").await;
    let manifest = "apiVersion: tokenbudget.io/v1alpha1\nkind: BudgetBinding\nmetadata: {name: nulls}\n\
        spec: {budgetRef: {name: b}, workloads: [{kind: Job, name: a, selector: null}], metrics: {port: null, path: null}}\n";
    let out = kubectl(
        &["apply", "--validate=false", "-n", &ns.name, "-f", "-"],
        Some(manifest),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bindings: Api<tokenbudget::api::BudgetBinding> = ns.api(&client);
    let bb = bindings
        .get("nulls")
        .await
        .expect("the binding is readable by the operator's types");
    assert_eq!(
        bb.spec.metrics.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9464)
    );
    assert_eq!(bb.spec.metrics.path, "/metrics");
    assert_eq!(bb.spec.metrics.interval, "15s");
    assert!(bb.spec.workloads[0].selector.is_none());
}
