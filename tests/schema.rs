//! The CRDs on a real API server: they install, `kubectl` shows the columns and descriptions
//! of the API, every example applies, and the server itself rejects invalid manifests.

mod common;

use common::*;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::json;

#[tokio::test]
async fn crds_install_and_become_established() {
    let client = client().await;
    ensure_crds(&client).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for (name, scope) in [
        ("tokenbudgets.tokenbudget.io", "Namespaced"),
        ("budgetbindings.tokenbudget.io", "Namespaced"),
        ("clustertokenbudgets.tokenbudget.io", "Cluster"),
    ] {
        let crd = crds.get(name).await.expect("CRD exists");
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "{name} is not Established");
        assert_eq!(crd.spec.scope, scope, "{name}");
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
            "BURN-RATE",
            "PACE"
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
    // Cluster-scoped objects (a ClusterTokenBudget) outlive the namespace: removed here.
    for file in &files {
        let path = file.to_str().unwrap();
        let out = kubectl(&["delete", "-n", &ns.name, "-f", path, "--wait=false"], None);
        assert!(out.status.success(), "{path}: {}", text(&out.stderr));
    }
}

/// Invalid manifests are rejected by the API server itself, through the OpenAPI keywords of
/// the schema, with a message naming the field.
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
            "unknown source",
            binding("{budgetRef: {name: b}, workloads: [{kind: Job, name: a}], metrics: {source: Thanos}}"),
            vec!["spec.metrics.source", "Unsupported value: \"Thanos\""],
        ),
        (
            "a Prometheus label that is no label name",
            binding(
                "{budgetRef: {name: b}, workloads: [{kind: Job, name: a}], metrics: {source: Prometheus, prometheus: {podLabel: 'pod name'}}}",
            ),
            vec!["spec.metrics.prometheus.podLabel", "should match"],
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

fn budget_manifest(name: &str, spec: &str) -> String {
    format!("apiVersion: tokenbudget.io/v1alpha1\nkind: TokenBudget\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}

fn binding_manifest(name: &str, spec: &str) -> String {
    format!("apiVersion: tokenbudget.io/v1alpha1\nkind: BudgetBinding\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}

/// A binding spec with the given `metrics`, otherwise valid.
fn with_metrics(metrics: &str) -> String {
    format!("{{budgetRef: {{name: b}}, workloads: [{{kind: Job, name: a}}], metrics: {metrics}}}")
}

/// A binding spec whose only workload has the given selector.
fn with_selector(selector: &str) -> String {
    format!("{{budgetRef: {{name: b}}, workloads: [{{kind: Deployment, selector: {selector}}}]}}")
}

/// The rules across fields (CEL `x-kubernetes-validations`) are enforced by the API server on
/// `kubectl apply`: each case is refused with a line that names the field and says what is
/// wrong. (How the server prints the offending value after `Invalid value:` has changed
/// between releases, so only the field and the rule's message are asserted.)
#[tokio::test]
async fn cross_field_mistakes_are_rejected_by_the_server() {
    let client = client().await;
    ensure_crds(&client).await;
    let ns = TestNamespace::new(&client, "cel").await;
    let budget = |spec: &str| budget_manifest("bad", spec);
    let binding = |spec: &str| binding_manifest("bad", spec);
    let cases = [
        (
            "neither tokens nor cost",
            budget("{limits: {}}"),
            vec![(
                "spec.limits: Required value",
                "at least one of spec.limits.tokens and spec.limits.cost is required",
            )],
        ),
        (
            "a cost limit without prices",
            budget("{limits: {cost: '100.00'}}"),
            vec![(
                "spec.pricing: Required value",
                "a cost limit (spec.limits.cost) needs spec.pricing: without prices nothing costs anything",
            )],
        ),
        (
            "a cost limit with an empty price list",
            budget("{limits: {cost: '100.00'}, pricing: []}"),
            vec![(
                "spec.pricing: Required value",
                "a cost limit (spec.limits.cost) needs spec.pricing",
            )],
        ),
        (
            "freezeQuota without a quota",
            budget("{limits: {tokens: 5}, enforcement: {action: ScaleDown, freezeQuota: true}}"),
            vec![(
                "spec.computeQuota: Required value",
                "spec.enforcement.freezeQuota needs spec.computeQuota, the quota it would freeze",
            )],
        ),
        (
            "a grace period longer than a year",
            budget("{limits: {tokens: 5}, enforcement: {gracePeriod: 9000h}}"),
            vec![(
                "spec.enforcement.gracePeriod: Invalid value",
                "9000h is longer than a year (8784h)",
            )],
        ),
        (
            // Beyond Go's range: CEL's duration() fails, and the server says so with the
            // rule's message.
            "a grace period beyond what a duration can hold",
            budget("{limits: {tokens: 5}, enforcement: {gracePeriod: 9999999h}}"),
            vec![(
                "spec.enforcement.gracePeriod: Invalid value",
                "must be at most a year (8784h)",
            )],
        ),
        (
            "a timeout longer than the interval",
            binding(&with_metrics("{interval: 10s, timeout: 30s}")),
            vec![(
                "spec.metrics.timeout: Invalid value",
                "30s is longer than the interval 10s (spec.metrics.interval)",
            )],
        ),
        (
            "format Custom without custom",
            binding(&with_metrics("{format: Custom}")),
            vec![(
                "spec.metrics.custom: Required value",
                "required with format Custom: the counters to read",
            )],
        ),
        (
            "Prometheus labels without the Prometheus source",
            binding(&with_metrics("{prometheus: {podLabel: kubernetes_pod_name}}")),
            vec![(
                "spec.metrics.prometheus: Forbidden",
                "only allowed with source Prometheus, not Scrape",
            )],
        ),
        (
            "custom with another format",
            binding(&with_metrics(
                "{format: VLLM, custom: [{metric: my_tokens_total, tokenType: input}]}",
            )),
            vec![(
                "spec.metrics.custom: Forbidden",
                "only allowed with format Custom, not VLLM",
            )],
        ),
        (
            "a custom metric with both tokenType and tokenTypeLabel",
            binding(&with_metrics(
                "{format: Custom, custom: [{metric: my_tokens_total, tokenType: input, tokenTypeLabel: kind}]}",
            )),
            vec![(
                "spec.metrics.custom[0].tokenTypeLabel: Forbidden",
                "set exactly one of tokenType and tokenTypeLabel, not both",
            )],
        ),
        (
            "a custom metric with neither tokenType nor tokenTypeLabel",
            binding(&with_metrics(
                "{format: Custom, custom: [{metric: a_total, tokenType: input}, {metric: b_total}]}",
            )),
            vec![(
                "spec.metrics.custom[1]: Required value",
                "set exactly one of tokenType and tokenTypeLabel",
            )],
        ),
        (
            "tls with scheme http",
            binding(&with_metrics("{tls: {insecureSkipVerify: true}}")),
            vec![(
                "spec.metrics.tls: Forbidden",
                "only allowed with scheme https, not http",
            )],
        ),
        (
            "a TLS server name that is no name",
            binding(&with_metrics("{scheme: https, tls: {serverName: 'agent svc'}}")),
            vec![(
                "spec.metrics.tls.serverName: Invalid value",
                "\"agent svc\" is neither a DNS name nor an IP address",
            )],
        ),
        (
            "a port number out of range",
            binding(&with_metrics("{port: 70000}")),
            vec![(
                "spec.metrics.port: Invalid value",
                "70000 is not a port number from 1 to 65535",
            )],
        ),
        (
            "a port name that is not a port name",
            binding(&with_metrics("{port: Metrics_Port}")),
            vec![(
                "spec.metrics.port: Invalid value",
                "\"Metrics_Port\" is neither a port number nor a container port name (1-15 lowercase letters, digits and \"-\")",
            )],
        ),
        (
            "an interval under 1s and a timeout of 0s",
            binding(&with_metrics("{interval: 500ms, timeout: 0s}")),
            vec![
                ("spec.metrics.interval: Invalid value", "must be at least 1s"),
                ("spec.metrics.timeout: Invalid value", "must be more than 0s"),
            ],
        ),
        (
            "a timeout longer than a minute, whatever the interval",
            binding(&with_metrics("{interval: 1h, timeout: 1h}")),
            vec![(
                "spec.metrics.timeout: Invalid value",
                "1h is longer than 60s, the most one scrape may take",
            )],
        ),
        (
            "an interval longer than a year",
            binding(&with_metrics("{interval: 9000h, timeout: 5s}")),
            vec![(
                "spec.metrics.interval: Invalid value",
                "9000h is longer than a year (8784h)",
            )],
        ),
        (
            "a workload with both name and selector",
            binding(
                "{budgetRef: {name: b}, workloads: [{kind: Deployment, name: a, selector: {matchLabels: {a: b}}}]}",
            ),
            vec![(
                "spec.workloads[0].selector: Forbidden",
                "set exactly one of name and selector, not both",
            )],
        ),
        (
            "the second workload with neither name nor selector",
            binding("{budgetRef: {name: b}, workloads: [{kind: Job, name: a}, {kind: Job}]}"),
            vec![(
                "spec.workloads[1]: Required value",
                "set exactly one of name and selector",
            )],
        ),
        (
            "an empty selector",
            binding(&with_selector("{}")),
            vec![(
                "spec.workloads[0].selector: Invalid value",
                "an empty selector would select every workload of its kind in the namespace; give matchLabels or matchExpressions",
            )],
        ),
        (
            "a selector with empty matchLabels",
            binding(&with_selector("{matchLabels: {}}")),
            vec![(
                "spec.workloads[0].selector: Invalid value",
                "an empty selector would select every workload",
            )],
        ),
        (
            "operators with the wrong values",
            binding(&with_selector(
                "{matchExpressions: [{key: team, operator: Equals, values: [research]}, {key: tier, operator: In}, {key: gpu, operator: Exists, values: ['true']}]}",
            )),
            vec![
                (
                    "spec.workloads[0].selector.matchExpressions[0].operator: Invalid value",
                    "\"Equals\" is not one of In, NotIn, Exists, DoesNotExist",
                ),
                (
                    "spec.workloads[0].selector.matchExpressions[1].values: Required value",
                    "operator In needs values",
                ),
                (
                    "spec.workloads[0].selector.matchExpressions[2].values: Forbidden",
                    "operator Exists takes no values",
                ),
            ],
        ),
        (
            "label keys and values that are not labels",
            binding(&with_selector(
                "{matchLabels: {'team name': 'research & dev'}, matchExpressions: [{key: '-tier', operator: In, values: [a/b]}]}",
            )),
            vec![
                (
                    "spec.workloads[0].selector.matchLabels: Invalid value",
                    "\"team name\" is not a valid label key: a label key is an optional DNS subdomain",
                ),
                (
                    "spec.workloads[0].selector.matchLabels[team name]: Invalid value",
                    "\"research & dev\" is not a valid label value",
                ),
                (
                    "spec.workloads[0].selector.matchExpressions[0].key: Invalid value",
                    "\"-tier\" is not a valid label key",
                ),
                (
                    "spec.workloads[0].selector.matchExpressions[0].values[0]: Invalid value",
                    "\"a/b\" is not a valid label value",
                ),
            ],
        ),
    ];
    for (case, manifest, expected) in cases {
        let out = kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&manifest));
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{case}: the server accepted\n{manifest}");
        for (field, message) in expected {
            assert!(
                err.lines().any(|line| line.contains(field) && line.contains(message)),
                "{case}: no line of the error has {field:?} and {message:?}:\n{err}"
            );
        }
    }
    let out = kubectl(&["get", "tb,bb", "-n", &ns.name, "-o", "name"], None);
    assert_eq!(text(&out.stdout).trim(), "", "invalid objects were stored");
}

/// A duration the pattern refuses is reported by the pattern alone: the CEL rules convert only
/// values that match it, so no second "type conversion error" hides the real mistake.
#[tokio::test]
async fn a_malformed_duration_is_reported_once() {
    let client = client().await;
    ensure_crds(&client).await;
    let ns = TestNamespace::new(&client, "cel-once").await;
    for manifest in [
        budget_manifest("grace", "{limits: {tokens: 5}, enforcement: {gracePeriod: 5 minutes}}"),
        binding_manifest("metrics", &with_metrics("{interval: '15', timeout: 1min}")),
    ] {
        let out = kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&manifest));
        let err = text(&out.stderr);
        assert!(!out.status.success(), "the server accepted\n{manifest}");
        assert!(err.contains("should match"), "{err}");
        assert!(
            !err.contains("evaluating rule"),
            "a CEL rule ran on a malformed duration:\n{err}"
        );
    }
}

/// The rules refuse only what is wrong: every form of duration the pattern allows parses with
/// CEL's `duration()`, and the limits themselves are allowed.
#[tokio::test]
async fn cel_rules_accept_valid_edge_cases() {
    let client = client().await;
    ensure_crds(&client).await;
    let ns = TestNamespace::new(&client, "cel-ok").await;
    let mut manifests = Vec::new();
    for (i, grace) in [
        "0s", "1.5h", "1h30m", "2m0.5s", "250ms", "250us", "250µs", "100ns", "8784h",
    ]
    .into_iter()
    .enumerate()
    {
        manifests.push(budget_manifest(
            &format!("grace-{i}"),
            &format!("{{limits: {{tokens: 5}}, enforcement: {{gracePeriod: '{grace}'}}}}"),
        ));
    }
    manifests.push(budget_manifest(
        "cost",
        "{limits: {cost: '1.00'}, pricing: [{model: m, input: '1'}]}",
    ));
    manifests.push(budget_manifest(
        "freeze",
        "{limits: {tokens: 5}, enforcement: {freezeQuota: true}, computeQuota: {hard: {pods: '3'}}}",
    ));
    for (i, metrics) in [
        "{interval: 10s, timeout: 10s}",
        "{interval: 1s, timeout: 1ns}",
        "{interval: 1h, timeout: 60s}",
        "{interval: 1h, timeout: 1m0s}",
        "{interval: 8784h}",
        "{port: 65535}",
        "{port: 1}",
        "{port: metrics}",
        "{port: h2c-9}",
        "{scheme: https, tls: {insecureSkipVerify: true}}",
        "{scheme: https, tls: {serverName: agent.agents.svc.}}",
        "{scheme: https, tls: {serverName: _metrics.agent-1.example}}",
        "{scheme: https, tls: {serverName: 10.1.2.3}}",
        "{scheme: https, tls: {serverName: 'fd00::1'}}",
        "{format: Custom, custom: [{metric: a_total, tokenType: input}, {metric: b_total, tokenTypeLabel: kind}]}",
    ]
    .into_iter()
    .enumerate()
    {
        manifests.push(binding_manifest(&format!("metrics-{i}"), &with_metrics(metrics)));
    }
    for (i, selector) in [
        "{matchLabels: {app.kubernetes.io/part-of: agents, tier: ''}}",
        "{matchExpressions: [{key: team, operator: In, values: [research, ml_ops]}, {key: gpu, operator: Exists}]}",
        "{matchExpressions: [{key: example.com/x, operator: DoesNotExist, values: []}]}",
    ]
    .into_iter()
    .enumerate()
    {
        manifests.push(binding_manifest(&format!("selector-{i}"), &with_selector(selector)));
    }
    for manifest in manifests {
        let out = kubectl(
            &["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"],
            Some(&manifest),
        );
        assert!(
            out.status.success(),
            "the server refused\n{manifest}{}",
            text(&out.stderr)
        );
    }
}

/// The API group of the throwaway copy of the TokenBudget CRD that the ratcheting test
/// installs and changes, so the shared CRD that other tests use stays as it is.
const RATCHET_GROUP: &str = "ratchet.tokenbudget.io";

/// The TokenBudget CRD moved to [`RATCHET_GROUP`], with or without its CEL rules.
fn ratchet_crd(with_rules: bool) -> CustomResourceDefinition {
    fn strip_rules(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("x-kubernetes-validations");
                map.values_mut().for_each(strip_rules);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip_rules),
            _ => {}
        }
    }
    let (_, yaml) = tokenbudget::crds::all()
        .into_iter()
        .find(|(file, _)| file.contains("tokenbudgets"))
        .expect("the TokenBudget CRD");
    let mut crd: serde_json::Value = serde_yaml::from_str(&yaml).expect("generated CRD parses");
    crd["metadata"]["name"] = json!(format!("tokenbudgets.{RATCHET_GROUP}"));
    crd["spec"]["group"] = json!(RATCHET_GROUP);
    // Short names and categories would clash with the real CRD's in kubectl.
    let names = crd["spec"]["names"].as_object_mut().expect("names");
    names.remove("shortNames");
    names.remove("categories");
    if !with_rules {
        strip_rules(&mut crd);
    }
    serde_json::from_value(crd).expect("still a CRD")
}

async fn install_ratchet_crd(client: &Client, with_rules: bool) {
    apply_crd(client, &ratchet_crd(with_rules)).await;
}

fn ratchet_budget(name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": format!("{RATCHET_GROUP}/v1alpha1"),
        "kind": "TokenBudget",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("a TokenBudget")
}

/// The API server switches to a changed CRD's schema a moment after the change: retry a
/// server-side dry run of `probe` until its outcome says which schema is in force.
async fn await_schema(api: &Api<DynamicObject>, probe: &DynamicObject, rules_in_force: bool, what: &str) {
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    within(
        async {
            loop {
                match api.create(&dry_run, probe).await {
                    Ok(_) if !rules_in_force => return,
                    Err(kube::Error::Api(status)) if status.code == 422 && rules_in_force => return,
                    Ok(_) | Err(kube::Error::Api(_)) | Err(kube::Error::Service(_)) => {}
                    Err(e) => panic!("dry run of the probe: {e}"),
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        },
        what,
    )
    .await
}

fn refusal(result: Result<DynamicObject, kube::Error>, what: &str) -> String {
    match result {
        Err(kube::Error::Api(status)) if status.code == 422 => status.message,
        Err(e) => panic!("{what}: {e}"),
        Ok(_) => panic!("{what}: the server accepted it"),
    }
}

/// CRD validation ratcheting (Kubernetes 1.33+): an object stored before a rule existed keeps
/// its invalid field and can still be updated elsewhere, as long as the object that carries
/// the failing rule is unchanged. The rules of this CRD sit on the smallest object holding the
/// fields they compare, which is what makes the first update below pass.
#[tokio::test]
async fn unchanged_invalid_fields_are_ratcheted() {
    let client = client().await;
    install_ratchet_crd(&client, false).await;
    let ns = TestNamespace::new(&client, "ratchet").await;
    let resource = ApiResource {
        group: RATCHET_GROUP.into(),
        version: "v1alpha1".into(),
        api_version: format!("{RATCHET_GROUP}/v1alpha1"),
        kind: "TokenBudget".into(),
        plural: "tokenbudgets".into(),
    };
    let budgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &resource);
    // A dry run of this object tells which schema is in force: the ratchet CRD's rules refuse it.
    let probe = ratchet_budget(
        "probe",
        json!({"limits": {"tokens": 5}, "enforcement": {"gracePeriod": "9000h"}}),
    );
    await_schema(&budgets, &probe, false, "the ratchet CRD without rules in force").await;

    // Stored while the rules did not exist: a grace period over a year (a rule on the field
    // itself) and a cost limit without prices (a rule on the whole spec).
    let long_grace = ratchet_budget(
        "long-grace",
        json!({"limits": {"tokens": 5}, "enforcement": {"gracePeriod": "9000h"}}),
    );
    let no_prices = ratchet_budget("no-prices", json!({"limits": {"cost": "10.00"}}));
    for budget in [&long_grace, &no_prices] {
        budgets
            .create(&PostParams::default(), budget)
            .await
            .expect("stored without the rules");
    }

    install_ratchet_crd(&client, true).await;
    await_schema(&budgets, &probe, true, "the ratchet CRD's rules in force").await;
    let merge = |spec: serde_json::Value| Patch::Merge(json!({"spec": spec}));
    let params = PatchParams::default();

    // A new object with the same grace period is refused...
    let fresh = ratchet_budget(
        "fresh",
        json!({"limits": {"tokens": 5}, "enforcement": {"gracePeriod": "9000h"}}),
    );
    let err = refusal(
        budgets.create(&PostParams::default(), &fresh).await,
        "creating a new object with a 9000h grace period",
    );
    assert!(err.contains("spec.enforcement.gracePeriod"), "{err}");
    // ...but the stored one takes a new limit, its grace period untouched.
    let updated = budgets
        .patch("long-grace", &params, &merge(json!({"limits": {"tokens": 6}})))
        .await
        .expect("an update beside an unchanged invalid grace period is accepted");
    assert_eq!(updated.data["spec"]["limits"]["tokens"], 6);
    assert_eq!(updated.data["spec"]["enforcement"]["gracePeriod"], "9000h");
    // Changing the invalid field to another invalid value is checked again.
    let err = refusal(
        budgets
            .patch(
                "long-grace",
                &params,
                &merge(json!({"enforcement": {"gracePeriod": "9001h"}})),
            )
            .await,
        "changing the grace period to 9001h",
    );
    assert!(
        err.contains("spec.enforcement.gracePeriod: Invalid value") && err.contains("9001h is longer than a year"),
        "{err}"
    );

    // The cost rule reads the whole spec: a change outside the spec passes...
    let labelled = budgets
        .patch(
            "no-prices",
            &params,
            &Patch::Merge(json!({"metadata": {"labels": {"team": "research"}}})),
        )
        .await
        .expect("a label change leaves the spec, and its rule, alone");
    assert_eq!(labelled.metadata.labels.unwrap_or_default()["team"], "research");
    // ...a change anywhere in the spec makes the rule run again, and it fails.
    let err = refusal(
        budgets
            .patch("no-prices", &params, &merge(json!({"currency": "EUR"})))
            .await,
        "changing the currency of a budget without prices",
    );
    assert!(err.contains("spec.pricing: Required value"), "{err}");

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete(&format!("tokenbudgets.{RATCHET_GROUP}"), &Default::default())
        .await
        .expect("the ratchet CRD is deleted");
}

/// The largest status the operator writes: the ledger of 10,000 pods in one budget, each with
/// two models and counters in the millions, written as the operator writes it (server-side
/// apply of the status, its field manager) to the real API server. The object stays well under
/// etcd's 1.5 MiB limit, with its managedFields, and reads back whole.
#[tokio::test]
async fn the_ledger_of_ten_thousand_pods_fits_in_one_object() {
    use tokenbudget::api::{AccountingState, PodGroup, PodWorkload, TokenBudget, WorkloadKind};
    let client = client().await;
    ensure_crds(&client).await;
    let ns = TestNamespace::new(&client, "big-ledger").await;
    let budgets: Api<TokenBudget> = ns.api(&client);
    create(&budgets, budget("research").tokens(1_000_000_000)).await;
    let pods = (0..10_000)
        .map(|i| {
            PodGroup::encode(
                &format!("0f8c2a5e-1d2b-4c3d-9e8f-{i:012}"),
                2,
                &[(0, 9_876_543, 0), (1, 123_456_789, 12_345_678)],
            )
        })
        .collect();
    let accounting = AccountingState {
        period_start: "2026-11-01T00:00:00Z".into(),
        pod_groups: vec![PodGroup {
            binding: "summarizer".into(),
            workload: PodWorkload {
                kind: WorkloadKind::Deployment,
                name: "summarizer".into(),
            },
            pods,
        }],
        counter_models: vec!["claude-sonnet-4".into(), "gpt-4o-mini".into()],
        ..Default::default()
    };
    let patch = json!({
        "apiVersion": "tokenbudget.io/v1alpha1", "kind": "TokenBudget",
        "status": {"accounting": accounting},
    });
    let params = PatchParams::apply(tokenbudget::controller::FIELD_MANAGER).force();
    budgets
        .patch_status("research", &params, &Patch::Apply(&patch))
        .await
        .expect("the status is written");
    // Written again with one pod's counter moved: the write that happens every cycle.
    let mut moved = accounting.clone();
    moved.pod_groups[0].pods[0] = PodGroup::encode("0f8c2a5e-1d2b-4c3d-9e8f-000000000000", 2, &[(0, 9_876_544, 0)]);
    let patch = json!({
        "apiVersion": "tokenbudget.io/v1alpha1", "kind": "TokenBudget",
        "status": {"accounting": moved},
    });
    budgets
        .patch_status("research", &params, &Patch::Apply(&patch))
        .await
        .expect("the status is written again");

    let raw = client
        .request_text(
            http::Request::get(format!(
                "/apis/tokenbudget.io/v1alpha1/namespaces/{}/tokenbudgets/research",
                ns.name
            ))
            .body(Vec::new())
            .unwrap(),
        )
        .await
        .expect("the budget reads back");
    let managed = serde_json::from_str::<serde_json::Value>(&raw).unwrap()["metadata"]["managedFields"].to_string();
    println!(
        "the object with 10,000 pods: {} bytes, of which managedFields {} bytes",
        raw.len(),
        managed.len()
    );
    assert!(raw.len() < 1024 * 1024, "{} bytes", raw.len());
    assert!(managed.len() < 4096, "managedFields: {} bytes", managed.len());
    let tb = budgets.get("research").await.unwrap();
    let ledger = tb.status.unwrap().accounting.unwrap().pod_ledgers();
    assert_eq!(ledger.len(), 10_000);
    assert_eq!(ledger[0].counters[0].value, 9_876_544);
}
