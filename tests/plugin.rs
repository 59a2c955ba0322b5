//! The `kubectl-tokenbudget` binary against a real API server. No operator runs: the test
//! plays it and writes each budget's status through the status subresource, so every number
//! the plugin prints is known in advance.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::PathBuf,
    process::{Command, Output},
};

use common::*;
use jiff::{SignedDuration, Timestamp};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};
use tokenbudget::api::{EnforcementAction, ResetPeriod, TokenBudget};
use tokio::io::{AsyncBufReadExt, BufReader as AsyncBufReader, Lines};

const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-tokenbudget");

/// Runs the plugin with the test cluster's KUBECONFIG (or `kubeconfig`).
fn plugin(args: &[&str]) -> Output {
    plugin_with(args, &kubeconfig())
}

fn plugin_with(args: &[&str], kubeconfig: &str) -> Output {
    Command::new(PLUGIN)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("NO_COLOR")
        .output()
        .expect("the plugin runs")
}

/// stdout of a run that must succeed without a word on stderr.
fn ok(args: &[&str]) -> String {
    let out = plugin(args);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "kubectl-tokenbudget {args:?}: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(!stdout.contains('\x1b'), "no colours when stdout is not a terminal");
    stdout
}

/// The one-line error of a run that must fail.
fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure, got stdout:\n{}",
        text(&out.stdout)
    );
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    stderr.trim_end().to_string()
}

/// A line's words: columns without their padding.
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// The words of the line whose first words are `start`.
fn row<'a>(output: &'a str, start: &[&str]) -> Vec<&'a str> {
    output
        .lines()
        .map(words)
        .find(|w| w.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with {start:?} in\n{output}"))
}

/// `now + seconds` in RFC 3339.
fn from_now(seconds: i64) -> String {
    Timestamp::now()
        .checked_add(SignedDuration::from_secs(seconds))
        .unwrap()
        .round(jiff::Unit::Second)
        .unwrap()
        .to_string()
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": from_now(-(2 * 3_600 + 10 * 60 + 5))})
}

/// Creates a budget and writes its status as the operator would.
async fn with_status(api: &Api<TokenBudget>, budget: impl Into<TokenBudget>, status: Value) {
    let name = create(api, budget).await.metadata.name.expect("named");
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await
    .expect("status written");
}

/// Warning, both limits; resets in 3d4h and runs out in 2h13m (plus a margin for the test's
/// own run time: relative times are rounded down).
async fn research(api: &Api<TokenBudget>) {
    with_status(
        api,
        budget("research")
            .tokens(5_000_000)
            .cost("250")
            .thresholds(&[50, 80, 95])
            .price("gpt-4o*", "2.50", "10.00"),
        json!({
            "phase": "Warning",
            "used": {"tokens": 4_200_000, "input": 3_500_000, "output": 700_000, "cost": "105.00"},
            "remainingTokens": 800_000, "percentUsed": 84, "burnRate": 12_345,
            "periodStart": from_now(-26 * 86_400),
            "resetsAt": from_now(3 * 86_400 + 4 * 3_600 + 50 * 60),
            "projectedExhaustion": from_now(2 * 3_600 + 13 * 60 + 50),
            "models": [{"model": "gpt-4o", "input": 3_000_000, "output": 600_000, "cost": "13.50"}],
            "workloads": [{"kind": "Deployment", "name": "summarizer", "tokens": 3_000_000},
                          {"kind": "Job", "name": "nightly-eval", "tokens": 1_200_000}],
            "conditions": [condition("Ready", "True", "Reconciled", "The budget is reconciled"),
                           condition("ThresholdReached", "True", "ThresholdReached", "84% used: the 80% threshold is crossed")],
        }),
    )
    .await;
}

/// Exhausted, Never resets.
async fn frozen(api: &Api<TokenBudget>) {
    with_status(
        api,
        budget("frozen")
            .tokens(100_000)
            .period(ResetPeriod::Never)
            .action(EnforcementAction::ScaleDown),
        json!({
            "phase": "Exhausted",
            "used": {"tokens": 100_250, "input": 90_000, "output": 10_250},
            "remainingTokens": 0, "percentUsed": 100, "burnRate": 0,
            "workloads": [{"kind": "Deployment", "name": "scraper", "tokens": 100_250}],
            "enforced": [{"kind": "Deployment", "name": "scraper", "action": "ScaleDown", "since": from_now(-(3_600 + 5 * 60 + 5))}],
            "conditions": [condition("Exhausted", "True", "LimitReached", "100,250 of 100,000 tokens used")],
        }),
    )
    .await;
}

/// Active, token limit only.
async fn starter(api: &Api<TokenBudget>) {
    with_status(
        api,
        budget("starter").tokens(1_000_000).period(ResetPeriod::Daily),
        json!({
            "phase": "Active",
            "used": {"tokens": 120_000, "input": 100_000, "output": 20_000},
            "remainingTokens": 880_000, "percentUsed": 12, "burnRate": 3_600,
            "resetsAt": from_now(5 * 3_600 + 50 * 60 + 50),
            "workloads": [{"kind": "StatefulSet", "name": "chat-agent", "tokens": 120_000}],
        }),
    )
    .await;
}

#[tokio::test]
async fn status_lists_every_budget_of_the_namespace() {
    let t = Tenant::new("plugin-status").await;
    let (api, ns) = (&t.budgets, &t.ns);
    research(api).await;
    frozen(api).await;
    starter(api).await;
    create(api, budget("fresh").tokens(2000)).await;

    let out = ok(&["status", "-n", &ns.name]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert_eq!(
        words(lines[0]),
        [
            "NAME", "USAGE", "%USED", "TOKENS", "COST", "PHASE", "BURN", "EXHAUSTS", "RESETS"
        ]
    );
    // Sorted by name.
    assert_eq!(
        lines.iter().skip(1).map(|l| words(l)[0]).collect::<Vec<_>>(),
        ["fresh", "frozen", "research", "starter"]
    );
    assert_eq!(
        row(&out, &["research"]),
        [
            "research",
            "█████████████████░░░",
            "84%",
            "4.2M/5M",
            "105.00/250.00",
            "USD",
            "Warning",
            "12.3k/h",
            "in",
            "2h13m",
            "in",
            "3d4h"
        ]
    );
    assert_eq!(
        row(&out, &["frozen"]),
        [
            "frozen",
            "████████████████████",
            "100%",
            "100.3k/100k",
            "-",
            "Exhausted",
            "0/h",
            "-",
            "never"
        ]
    );
    assert_eq!(
        row(&out, &["starter"]),
        [
            "starter",
            "██░░░░░░░░░░░░░░░░░░",
            "12%",
            "120k/1M",
            "-",
            "Active",
            "3.6k/h",
            "-",
            "in",
            "5h50m"
        ]
    );
    assert_eq!(
        row(&out, &["fresh"]),
        ["fresh", "░░░░░░░░░░░░░░░░░░░░", "-", "-/2k", "-", "-", "-", "-", "-"]
    );
}

#[tokio::test]
async fn status_name_describes_one_budget() {
    let t = Tenant::new("plugin-describe").await;
    let (api, ns) = (&t.budgets, &t.ns);
    research(api).await;
    frozen(api).await;

    let out = ok(&["status", "research", "-n", &ns.name]);
    for expected in [
        vec!["Name:", "research"],
        vec!["Namespace:", ns.name.as_str()],
        vec!["Phase:", "Warning"],
        vec!["Usage:", "█████████████████░░░", "84%", "of", "the", "tighter", "limit"],
        vec![
            "Limits:",
            "5,000,000",
            "tokens",
            "(input",
            "+",
            "output)",
            "and",
            "250.00",
            "USD",
            "per",
            "month",
        ],
        vec![
            "Used",
            "tokens:",
            "4,200,000",
            "of",
            "5,000,000",
            "(84%),",
            "800,000",
            "left",
        ],
        vec!["input:", "3,500,000"],
        vec!["output:", "700,000"],
        vec!["Used", "cost:", "105.00", "of", "250.00", "USD", "(42%)"],
        vec!["Burn", "rate:", "12.3k/h", "(12,345", "tokens", "per", "hour)"],
        vec!["Thresholds:", "50%,", "80%,", "95%"],
        vec!["gpt-4o", "3,000,000", "600,000", "13.50", "USD"],
        vec!["Deployment", "summarizer", "3,000,000", "71.4%"],
        vec!["Job", "nightly-eval", "1,200,000", "28.6%"],
        vec![
            "Ready",
            "True",
            "Reconciled",
            "2h10m",
            "The",
            "budget",
            "is",
            "reconciled",
        ],
    ] {
        assert_eq!(row(&out, &expected), expected);
    }
    assert_eq!(row(&out, &["Exhaustion:"])[..3], ["Exhaustion:", "in", "2h13m"]);
    assert_eq!(row(&out, &["Resets:"])[..3], ["Resets:", "in", "3d4h"]);
    assert_eq!(
        words(out.lines().find(|l| l.starts_with("Conditions:")).unwrap()),
        ["Conditions:"]
    );

    let out = ok(&["status", "frozen", &format!("--namespace={}", ns.name)]);
    for expected in [
        vec!["Phase:", "Exhausted"],
        vec!["Limits:", "100,000", "tokens", "(input", "+", "output)", "in", "total"],
        vec!["Period:", "Never", "(usage", "never", "resets)"],
        vec!["Resets:", "never"],
        vec!["Models:", "<none>"],
        vec!["Deployment", "scraper", "ScaleDown", "1h5m", "ago"],
        vec![
            "Exhausted",
            "True",
            "LimitReached",
            "2h10m",
            "100,250",
            "of",
            "100,000",
            "tokens",
            "used",
        ],
    ] {
        assert_eq!(row(&out, &expected), expected);
    }
}

#[tokio::test]
async fn top_ranks_the_workloads_by_tokens() {
    let t = Tenant::new("plugin-top").await;
    let (api, ns) = (&t.budgets, &t.ns);
    research(api).await;
    frozen(api).await;
    starter(api).await;

    let out = ok(&["top", "-n", &ns.name]);
    let rows: Vec<Vec<&str>> = out.lines().map(words).collect();
    assert_eq!(
        rows,
        [
            vec!["BUDGET", "KIND", "NAME", "TOKENS", "SHARE%"],
            vec!["research", "Deployment", "summarizer", "3000000", "71.4%"],
            vec!["research", "Job", "nightly-eval", "1200000", "28.6%"],
            vec!["starter", "StatefulSet", "chat-agent", "120000", "100.0%"],
            vec!["frozen", "Deployment", "scraper", "100250", "100.0%"],
        ]
    );

    let out = ok(&["top", "-n", &ns.name, "--budget", "research"]);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.lines().skip(1).all(|l| l.starts_with("research ")), "{out}");

    let err = fails(plugin(&["top", "-n", &ns.name, "--budget", "nope"]));
    assert_eq!(
        err,
        format!("error: TokenBudget \"nope\" not found in namespace \"{}\"", ns.name)
    );
}

#[tokio::test]
async fn all_namespaces_shows_the_namespace_column() {
    let (a, b) = (Tenant::new("plugin-all-a").await, Tenant::new("plugin-all-b").await);
    research(&a.budgets).await;
    starter(&b.budgets).await;

    // Other tests' namespaces may show up too: look only at ours.
    let out = ok(&["status", "-A"]);
    assert_eq!(
        words(out.lines().next().unwrap()),
        [
            "NAMESPACE",
            "NAME",
            "USAGE",
            "%USED",
            "TOKENS",
            "COST",
            "PHASE",
            "BURN",
            "EXHAUSTS",
            "RESETS"
        ]
    );
    assert_eq!(
        row(&out, &[a.ns.name.as_str()])[1..4],
        ["research", "█████████████████░░░", "84%"]
    );
    assert_eq!(
        row(&out, &[b.ns.name.as_str()])[1..4],
        ["starter", "██░░░░░░░░░░░░░░░░░░", "12%"]
    );

    let out = ok(&["top", "--all-namespaces"]);
    assert_eq!(
        words(out.lines().next().unwrap()),
        ["NAMESPACE", "BUDGET", "KIND", "NAME", "TOKENS", "SHARE%"]
    );
    assert_eq!(
        row(&out, &[a.ns.name.as_str(), "research", "Deployment"]),
        [
            a.ns.name.as_str(),
            "research",
            "Deployment",
            "summarizer",
            "3000000",
            "71.4%"
        ]
    );
    assert_eq!(
        row(&out, &[b.ns.name.as_str()]),
        [
            b.ns.name.as_str(),
            "starter",
            "StatefulSet",
            "chat-agent",
            "120000",
            "100.0%"
        ]
    );

    let err = fails(plugin(&["status", "-A", "research"]));
    assert_eq!(
        err,
        "error: a TokenBudget cannot be retrieved by name across all namespaces: use -n (see kubectl tokenbudget --help)"
    );
}

/// A copy of the test kubeconfig whose current context has `namespace`.
fn kubeconfig_in_namespace(namespace: &str) -> PathBuf {
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig()).expect("kubeconfig readable")).unwrap();
    let current = config["current-context"]
        .as_str()
        .expect("a current context")
        .to_string();
    let contexts = config["contexts"].as_sequence_mut().expect("contexts");
    let context = contexts
        .iter_mut()
        .find(|c| c["name"].as_str() == Some(current.as_str()))
        .expect("the current context");
    context["context"]["namespace"] = namespace.into();
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("kubeconfig-{namespace}"));
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn without_n_the_kubeconfig_context_namespace_is_used() {
    let t = Tenant::new("plugin-context-ns").await;
    let ns = &t.ns;
    starter(&t.budgets).await;

    let path = kubeconfig_in_namespace(&ns.name);
    let out = plugin_with(&["status"], path.to_str().unwrap());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        row(&stdout, &["starter"])[..3],
        ["starter", "██░░░░░░░░░░░░░░░░░░", "12%"]
    );

    // --kubeconfig says the same as KUBECONFIG, and wins over it.
    let out = plugin_with(
        &["top", "--kubeconfig", path.to_str().unwrap()],
        "/nonexistent/kubeconfig",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        row(&text(&out.stdout), &["starter"]),
        ["starter", "StatefulSet", "chat-agent", "120000", "100.0%"]
    );
}

#[tokio::test]
async fn not_found_and_empty_namespaces() {
    let t = Tenant::new("plugin-not-found").await;
    let ns = &t.ns;

    let err = fails(plugin(&["status", "nope", "-n", &ns.name]));
    assert_eq!(
        err,
        format!("error: TokenBudget \"nope\" not found in namespace \"{}\"", ns.name)
    );

    // Nothing to list is not an error: kubectl's message, on stderr, and an empty stdout.
    for args in [["status", "-n", ns.name.as_str()], ["top", "-n", ns.name.as_str()]] {
        let out = plugin(&args);
        assert!(out.status.success());
        assert_eq!(text(&out.stdout), "");
        assert_eq!(
            text(&out.stderr),
            format!("No TokenBudgets found in namespace {}.\n", ns.name)
        );
    }
}

/// A kubeconfig for `server`, without credentials.
fn kubeconfig_for(server: &str, name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("kubeconfig-{name}-{}", std::process::id()));
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{server}\"}}}}]\n\
         users: [{{name: u, user: {{}}}}]\n\
         contexts: [{{name: x, context: {{cluster: c, user: u, namespace: agents}}}}]\ncurrent-context: x\n"
    );
    std::fs::write(&path, config).unwrap();
    path
}

/// An API server without the CRDs: every path is 404, as the real one answers for an unknown
/// resource. (The shared test cluster keeps its CRDs: other tests run beside this one.)
fn server_without_crds() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{address}")
}

#[test]
fn a_cluster_without_the_crd_says_so() {
    let path = kubeconfig_for(&server_without_crds(), "no-crd");
    let path = path.to_str().unwrap();
    for args in [&["status"][..], &["status", "research"], &["top", "-A"]] {
        let err = fails(plugin_with(args, path));
        assert!(
            err.starts_with("error: the TokenBudget CRD is not installed"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn no_cluster_is_one_clear_line() {
    // A port nobody listens on.
    let port = free_port().port();
    let server = format!("https://127.0.0.1:{port}");
    let path = kubeconfig_for(&server, "unreachable");
    let err = fails(plugin_with(&["status"], path.to_str().unwrap()));
    assert!(
        err.starts_with(&format!("error: cannot reach the Kubernetes API server at {server}/: ")),
        "{err}"
    );

    let err = fails(plugin_with(&["status"], "/nonexistent/kubeconfig"));
    assert!(err.starts_with("error: no Kubernetes configuration found"), "{err}");
}

#[test]
fn help_version_and_bad_flags() {
    let out = plugin_with(&["--help"], "/nonexistent/kubeconfig");
    assert!(out.status.success());
    let help = text(&out.stdout);
    assert!(
        help.contains("kubectl tokenbudget status [NAME] [-n NAMESPACE | -A]"),
        "{help}"
    );
    assert!(
        help.contains("kubectl tokenbudget top [--budget NAME] [-n NAMESPACE | -A]"),
        "{help}"
    );

    let out = plugin_with(&["version"], "/nonexistent/kubeconfig");
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout),
        format!("kubectl-tokenbudget {}\n", env!("CARGO_PKG_VERSION"))
    );

    assert!(
        help.contains("kubectl tokenbudget report [NAME] [-n NAMESPACE | -A] [--by budget|namespace|workload|model]"),
        "{help}"
    );

    let err = fails(plugin_with(&["status", "--output=xml"], "/nonexistent/kubeconfig"));
    assert_eq!(
        err,
        "error: invalid value \"xml\" for --output <FORMAT>: use json, yaml, wide (see kubectl tokenbudget --help)"
    );
    let err = fails(plugin_with(&["status", "--colour"], "/nonexistent/kubeconfig"));
    assert_eq!(err, "error: unknown flag \"--colour\" (see kubectl tokenbudget --help)");
    let err = fails(plugin_with(
        &["report", "--from", "2026-12-01", "--to", "2026-11-01"],
        "/nonexistent/kubeconfig",
    ));
    assert_eq!(
        err,
        "error: --from 2026-12-01 is not before --to 2026-11-01: no period can start in that range (see kubectl tokenbudget --help)"
    );
}

// ---- -o, --no-headers, -w ----------------------------------------------------------------

/// The plugin's and kubectl's JSON of the same command, as values.
fn json_of(output: String) -> Value {
    serde_json::from_str(&output).unwrap_or_else(|e| panic!("{e}: {output}"))
}

#[tokio::test]
async fn output_formats_are_kubectls() {
    let t = Tenant::new("plugin-output").await;
    let (api, ns) = (&t.budgets, t.ns.name.as_str());
    research(api).await;
    starter(api).await;

    // -o json|yaml: exactly what kubectl get prints, one object by name, else a List.
    let list = json_of(ok(&["status", "-n", ns, "-o", "json"]));
    let kubectl_list = kubectl(&["get", "tb", "-n", ns, "-o", "json"], None);
    assert!(kubectl_list.status.success(), "{}", text(&kubectl_list.stderr));
    assert_eq!(list, json_of(text(&kubectl_list.stdout)));
    assert_eq!(
        (list["kind"].as_str(), list["apiVersion"].as_str()),
        (Some("List"), Some("v1"))
    );
    assert_eq!(list["items"][0]["metadata"]["name"], "research");
    assert_eq!(list["items"][0]["status"]["used"]["tokens"], 4_200_000);
    assert!(list["items"][0]["metadata"].get("managedFields").is_none());

    let one: Value = serde_yaml::from_str(&ok(&["status", "research", "-n", ns, "-o", "yaml"])).unwrap();
    let kubectl_one = kubectl(&["get", "tb", "research", "-n", ns, "-o", "json"], None);
    assert_eq!(one, json_of(text(&kubectl_one.stdout)));
    assert_eq!(one["kind"], "TokenBudget");
    let top = json_of(ok(&["top", "-n", ns, "--budget", "starter", "-o", "json"]));
    assert_eq!(top["metadata"]["name"], "starter");

    // -o wide: more columns.
    let out = ok(&["status", "-n", ns, "-o", "wide"]);
    assert_eq!(
        words(out.lines().next().unwrap()),
        [
            "NAME", "USAGE", "%USED", "TOKENS", "INPUT", "OUTPUT", "COST", "PHASE", "BURN", "EXHAUSTS", "RESETS",
            "PERIOD", "TIMEZONE", "ACTION", "ENFORCED"
        ]
    );
    assert_eq!(
        row(&out, &["starter"]),
        [
            "starter",
            "██░░░░░░░░░░░░░░░░░░",
            "12%",
            "120k/1M",
            "100k",
            "20k",
            "-",
            "Active",
            "3.6k/h",
            "-",
            "in",
            "5h50m",
            "Daily",
            "UTC",
            "Annotate",
            "0"
        ]
    );
    let out = ok(&["status", "research", "-n", ns, "-owide"]);
    assert_eq!(out.lines().count(), 2, "one budget's line: {out}");
    let out = ok(&["top", "-n", ns, "-o", "wide"]);
    assert_eq!(
        row(&out, &["research", "Job"]),
        [
            "research",
            "Job",
            "nightly-eval",
            "1200000",
            "28.6%",
            "-",
            "Warning",
            "-"
        ]
    );

    // --no-headers: the lines alone.
    let out = ok(&["status", "-n", ns, "--no-headers"]);
    assert_eq!(
        out.lines().map(|l| words(l)[0]).collect::<Vec<_>>(),
        ["research", "starter"]
    );
    let out = ok(&["top", "-n", ns, "--no-headers", "-o", "wide"]);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.lines().all(|l| !l.starts_with("BUDGET")), "{out}");
}

/// A running `kubectl-tokenbudget ... -w`, its output read a line at a time.
struct Watching {
    child: tokio::process::Child,
    /// None once closed, as `| head` closes it.
    stdout: Option<Lines<AsyncBufReader<tokio::process::ChildStdout>>>,
    stderr: Lines<AsyncBufReader<tokio::process::ChildStderr>>,
}

impl Watching {
    /// With a watch timeout of one second, so that the server ends each watch quickly and the
    /// plugin has to resume (it says so on stderr).
    fn start(args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(PLUGIN)
            .args(args)
            .env("KUBECONFIG", kubeconfig())
            .env("KUBECTL_TOKENBUDGET_WATCH_TIMEOUT", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the plugin runs");
        let stdout = AsyncBufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = AsyncBufReader::new(child.stderr.take().unwrap()).lines();
        Self {
            child,
            stdout: Some(stdout),
            stderr,
        }
    }

    async fn line(&mut self, what: &str) -> String {
        let stdout = self.stdout.as_mut().expect("stdout open");
        within(stdout.next_line(), what)
            .await
            .expect("stdout readable")
            .unwrap_or_else(|| panic!("stdout closed before {what}"))
    }

    /// Awaits the stderr line that a watch the server ended was resumed.
    async fn resumed(&mut self) {
        let line = within(self.stderr.next_line(), "a resumed watch")
            .await
            .expect("stderr readable")
            .expect("stderr open");
        assert!(line.starts_with("watch: resumed at resourceVersion "), "{line}");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
    }

    /// Awaits the exit; it must be clean, with nothing on stderr but resume lines.
    async fn exits_cleanly(mut self) {
        let status = within(self.child.wait(), "the plugin to exit").await.unwrap();
        assert!(status.success(), "{status:?}");
        while let Some(line) = self.stderr.next_line().await.unwrap() {
            assert!(line.starts_with("watch: resumed"), "stderr: {line}");
        }
    }
}

async fn patch_status(api: &Api<TokenBudget>, name: &str, status: Value) {
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&json!({"status": status})))
        .await
        .expect("status written");
}

#[tokio::test]
async fn watch_prints_a_line_per_change_until_interrupted() {
    let t = Tenant::new("plugin-watch").await;
    let (api, ns) = (&t.budgets, t.ns.name.as_str());
    starter(api).await;

    let mut watch = Watching::start(&["status", "-n", ns, "-w"]);
    assert_eq!(words(&watch.line("the header").await)[..3], ["NAME", "USAGE", "%USED"]);
    assert_eq!(
        words(&watch.line("starter's line").await)[..3],
        ["starter", "██░░░░░░░░░░░░░░░░░░", "12%"]
    );
    // The server ended the watch (its 1 s timeout) and the plugin resumed it: changes after
    // that still show.
    watch.resumed().await;
    patch_status(
        api,
        "starter",
        json!({"percentUsed": 50, "used": {"tokens": 500_000, "input": 400_000, "output": 100_000}}),
    )
    .await;
    assert_eq!(
        words(&watch.line("starter's new line").await)[..4],
        ["starter", "██████████░░░░░░░░░░", "50%", "500k/1M"]
    );
    // A budget created meanwhile: its line, then its line again once its status is written.
    research(api).await;
    let line = watch.line("research's line").await;
    assert_eq!(words(&line)[..3], ["research", "░░░░░░░░░░░░░░░░░░░░", "-"]);
    let line = watch.line("research's line with its status").await;
    assert_eq!(words(&line)[..3], ["research", "█████████████████░░░", "84%"]);
    watch.signal("-INT");
    watch.exits_cleanly().await;

    // top -w: the workloads whose line changed; SIGTERM ends it as cleanly.
    let mut watch = Watching::start(&["top", "-n", ns, "--budget", "starter", "-w", "--no-headers"]);
    assert_eq!(
        words(&watch.line("chat-agent's line").await),
        // 120,000 of the 500,000 tokens written above.
        ["starter", "StatefulSet", "chat-agent", "120000", "24.0%"]
    );
    patch_status(
        api,
        "starter",
        json!({"workloads": [{"kind": "StatefulSet", "name": "chat-agent", "tokens": 400_000},
                             {"kind": "Job", "name": "batch", "tokens": 100_000}]}),
    )
    .await;
    let mut lines = vec![words(&watch.line("a workload line").await).join(" ")];
    lines.push(words(&watch.line("another workload line").await).join(" "));
    lines.sort();
    assert_eq!(
        lines,
        [
            "starter Job batch 100000 20.0%",
            "starter StatefulSet chat-agent 400000 80.0%"
        ]
    );
    watch.signal("-TERM");
    watch.exits_cleanly().await;
}

#[tokio::test]
async fn a_watch_ends_cleanly_when_its_reader_goes_away() {
    let t = Tenant::new("plugin-watch-closed").await;
    let (api, ns) = (&t.budgets, t.ns.name.as_str());
    starter(api).await;

    let mut watch = Watching::start(&["status", "-n", ns, "-w", "-o", "yaml"]);
    assert_eq!(watch.line("the object").await, "apiVersion: tokenbudget.io/v1alpha1");
    // Like `| head`: the reader closes; the next change cannot be written, and the plugin
    // exits without a word.
    watch.stdout = None;
    patch_status(api, "starter", json!({"percentUsed": 13})).await;
    watch.exits_cleanly().await;
}

// ---- report --------------------------------------------------------------------------------

fn history_period(start: &str, end: &str, currency: &str, used: Value, models: Value, workloads: Value) -> Value {
    json!({"periodStart": start, "periodEnd": end, "currency": currency, "used": used,
           "models": models, "workloads": workloads})
}

/// USD, Monthly in Europe/Berlin: November and October ended, December so far.
async fn research_with_history(api: &Api<TokenBudget>) {
    with_status(
        api,
        budget("research")
            .tokens(5_000_000)
            .cost("250")
            .timezone("Europe/Berlin")
            .price("gpt-4o*", "2.50", "10.00"),
        json!({
            "phase": "Active",
            "used": {"tokens": 12_000, "input": 10_000, "output": 2_000, "cost": "0.045"},
            "periodStart": "2026-12-01T00:00:00+01:00", "resetsAt": "2027-01-01T00:00:00+01:00",
            "models": [{"model": "gpt-4o", "input": 10_000, "output": 2_000, "cost": "0.045"}],
            "workloads": [{"kind": "Deployment", "name": "summarizer", "tokens": 12_000, "cost": "0.045"}],
            "history": [
                history_period("2026-11-01T00:00:00+01:00", "2026-12-01T00:00:00+01:00", "USD",
                    json!({"tokens": 3_600_000, "input": 3_000_000, "output": 600_000, "cost": "13.50"}),
                    json!([{"model": "gpt-4o", "input": 2_500_000, "output": 500_000, "cost": "11.25"}]),
                    json!([{"kind": "Deployment", "name": "summarizer", "tokens": 2_800_000, "cost": "10.50"},
                           {"kind": "Job", "name": "nightly-eval", "tokens": 500_000, "cost": "1.875"}])),
                history_period("2026-10-01T00:00:00+02:00", "2026-11-01T00:00:00+01:00", "USD",
                    json!({"tokens": 1_200_000, "input": 1_000_000, "output": 200_000, "cost": "4.50"}),
                    json!([{"model": "gpt-4o", "input": 1_000_000, "output": 200_000, "cost": "4.50"}]),
                    json!([{"kind": "Deployment", "name": "summarizer", "tokens": 1_200_000, "cost": "4.50"}])),
            ],
        }),
    )
    .await;
}

/// No pricing: no costs.
async fn starter_with_history(api: &Api<TokenBudget>) {
    with_status(
        api,
        budget("starter").tokens(1_000_000),
        json!({
            "phase": "Active", "used": {"tokens": 0},
            "periodStart": "2026-12-01T00:00:00Z", "resetsAt": "2027-01-01T00:00:00Z",
            "history": [history_period("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z", "USD",
                json!({"tokens": 120_000, "input": 100_000, "output": 20_000}),
                json!([{"model": "llama-3-70b", "input": 100_000, "output": 20_000}]),
                json!([{"kind": "StatefulSet", "name": "chat-agent", "tokens": 120_000}]))],
        }),
    )
    .await;
}

/// EUR, in the other namespace; its one workload leaves 500,000 tokens to "(other)".
async fn support_with_history(api: &Api<TokenBudget>) {
    let mut support = budget("support").cost("100").price("mistral*", "2.00", "6.00").build();
    support.spec.limits.tokens = None;
    support.spec.currency = "EUR".into();
    with_status(
        api,
        support,
        json!({
            "phase": "Active", "used": {"tokens": 0},
            "periodStart": "2026-12-01T00:00:00Z", "resetsAt": "2027-01-01T00:00:00Z",
            "history": [history_period("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z", "EUR",
                json!({"tokens": 3_000_000, "input": 2_000_000, "output": 1_000_000, "cost": "10.00"}),
                json!([{"model": "mistral-large", "input": 2_000_000, "output": 1_000_000, "cost": "10.00"}]),
                json!([{"kind": "Deployment", "name": "helpdesk", "tokens": 2_500_000, "cost": "8.80"}]))],
        }),
    )
    .await;
}

#[tokio::test]
async fn report_sums_the_history_of_budgets_in_two_namespaces() {
    let (a, b) = (
        Tenant::new("plugin-report-a").await,
        Tenant::new("plugin-report-b").await,
    );
    let (na, nb) = (a.ns.name.as_str(), b.ns.name.as_str());
    research_with_history(&a.budgets).await;
    starter_with_history(&a.budgets).await;
    support_with_history(&b.budgets).await;
    with_status(
        &b.budgets,
        budget("archive").period(ResetPeriod::Never),
        json!({"phase": "Active", "used": {"tokens": 5_000, "input": 4_000, "output": 1_000},
               "periodStart": "2026-01-01T00:00:00Z"}),
    )
    .await;

    // By budget (the default), one namespace: a row per budget and the total.
    let out = ok(&["report", "-n", na]);
    eprintln!("$ kubectl tokenbudget report -n {na}\n{out}");
    let rows: Vec<Vec<&str>> = out.lines().map(words).collect();
    assert_eq!(
        rows,
        [
            vec!["BUDGET", "PERIODS", "INPUT", "OUTPUT", "TOKENS", "COST"],
            vec!["research", "2", "4,000,000", "800,000", "4,800,000", "18.00", "USD"],
            vec!["starter", "1", "100,000", "20,000", "120,000", "-"],
            vec!["TOTAL", "3", "4,100,000", "820,000", "4,920,000", "18.00", "USD"],
        ]
    );

    // November per team (the FinOps view), as CSV: dates are midnight in each budget's own
    // time zone, so research's November (from midnight in Berlin) is in.
    let args = [
        "report",
        "-A",
        "--by",
        "namespace",
        "--from",
        "2026-11-01",
        "--to",
        "2026-12-01",
        "-o",
        "csv",
    ];
    let csv = ok(&args);
    eprintln!("$ kubectl tokenbudget {}\n{csv}", args.join(" "));
    assert_eq!(
        csv.lines().next(),
        Some("namespace,currency,periods,input,output,tokens,cost")
    );
    assert!(
        csv.contains(&format!("\r\n{na},USD,2,3100000,620000,3720000,13.50\r\n")),
        "{csv}"
    );
    assert!(
        csv.contains(&format!("\r\n{nb},EUR,1,2000000,1000000,3000000,10.00\r\n")),
        "{csv}"
    );

    // By workload across namespaces: the listed ones and "(other)", never across currencies.
    let out = ok(&["report", "-A", "--by", "workload"]);
    eprintln!("$ kubectl tokenbudget report -A --by workload\n{out}");
    assert_eq!(
        words(out.lines().next().unwrap()),
        ["NAMESPACE", "BUDGET", "KIND", "NAME", "TOKENS", "COST"]
    );
    for expected in [
        vec![na, "research", "Deployment", "summarizer", "4,000,000", "15.00", "USD"],
        vec![na, "research", "Job", "nightly-eval", "500,000", "1.875", "USD"],
        vec![na, "research", "-", "(other)", "300,000", "1.125", "USD"],
        vec![na, "starter", "StatefulSet", "chat-agent", "120,000", "-"],
        vec![nb, "support", "Deployment", "helpdesk", "2,500,000", "8.80", "EUR"],
        vec![nb, "support", "-", "(other)", "500,000", "1.20", "EUR"],
    ] {
        assert_eq!(row(&out, &expected[..4]), expected);
    }

    // JSON: rows, totals and the periods read, exactly.
    let doc = json_of(ok(&["report", "-n", nb, "--by", "workload", "-o", "json"]));
    assert_eq!(
        doc["rows"],
        json!([
            {"namespace": nb, "budget": "support", "kind": "Deployment", "name": "helpdesk",
             "currency": "EUR", "periods": 1, "tokens": 2_500_000, "cost": "8.80"},
            {"namespace": nb, "budget": "support", "other": true,
             "currency": "EUR", "periods": 1, "tokens": 500_000, "cost": "1.20"},
        ])
    );
    assert_eq!(
        doc["totals"],
        json!([{"currency": "EUR", "periods": 1, "input": 2_000_000, "output": 1_000_000,
                "tokens": 3_000_000, "cost": "10.00"}])
    );
    assert_eq!(doc["periods"][0]["periodStart"], "2026-11-01T00:00:00Z");

    // One budget by model, its last period and the current one so far.
    let csv = ok(&[
        "report",
        "research",
        "-n",
        na,
        "--by",
        "model",
        "--last",
        "1",
        "--include-current",
        "-o",
        "csv",
    ]);
    assert_eq!(
        csv,
        "model,currency,input,output,tokens,cost\r\n\
         gpt-4o,USD,2510000,502000,3012000,11.295\r\n\
         (other),USD,500000,100000,600000,2.25\r\n"
    );
    let out = ok(&[
        "report",
        "-n",
        na,
        "--no-headers",
        "--from",
        "2026-12-01T00:00:00Z",
        "--include-current",
    ]);
    assert_eq!(
        out.lines().map(words).collect::<Vec<_>>(),
        [
            vec!["starter", "1", "0", "0", "0", "-"],
            vec!["TOTAL", "1", "0", "0", "0", "-"],
        ],
        "research's December started at 23:00 UTC the day before: {out}"
    );

    // Bad input: one line each.
    let err = fails(plugin(&["report", "archive", "-n", nb]));
    assert_eq!(
        err,
        format!(
            "error: TokenBudget {nb}/archive has no ended periods yet (status.history is empty): it never resets (period.reset: Never); --include-current reports its usage so far"
        )
    );
    let err = fails(plugin(&["report", "-n", na, "--from", "2027-01-01"]));
    assert_eq!(
        err,
        format!("error: no ended period of the TokenBudgets in namespace {na} starts from 2027-01-01 on")
    );
    let err = fails(plugin(&["report", "-n", na, "-o", "yaml"]));
    assert_eq!(
        err,
        "error: invalid value \"yaml\" for --output <FORMAT>: use table, csv, json (see kubectl tokenbudget --help)"
    );
    // Garbage in a status: the report refuses rather than add it up wrong.
    patch_status(
        &b.budgets,
        "support",
        json!({"history": [history_period("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z", "EUR",
            json!({"tokens": 3_000_000, "input": 2_000_000, "output": 1_000_000, "cost": "lots"}),
            json!([]), json!([]))]}),
    )
    .await;
    let err = fails(plugin(&["report", "-n", nb]));
    assert_eq!(
        err,
        format!("error: TokenBudget {nb}/support: status.history[0]: used.cost \"lots\" is not a decimal amount")
    );
    // Gone before the namespace is: another run's `report -A` must not meet it.
    delete(&b.budgets, "support").await;
}
