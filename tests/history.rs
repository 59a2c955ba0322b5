//! `status.history` end to end: the whole operator in the test process with a clock the test
//! moves (no real period is waited for), the real API server, and agent-sim processes serving
//! real metrics while the test plays the kubelet. A period that ends is recorded once, with
//! the agents' exact totals, also when the operator restarts at the boundary; and what the
//! history and the workloads' models add to a 1,000-pod budget's status, measured.

mod common;

use std::sync::Arc;

use common::*;
use jiff::{RoundMode, SignedDuration, Timestamp, TimestampRound, Unit};
use tokenbudget::{
    api::{PeriodSummary, ResetPeriod, TokenBudget, TokenBudgetStatus, UsedTokens},
    clock::ManualClock,
};

/// The budget of these tests: hourly, two priced models, in EUR.
fn hourly(name: &str) -> TokenBudget {
    let mut budget = budget(name)
        .period(ResetPeriod::Hourly)
        .price("gpt-4o-mini", "0.15", "0.60")
        .price("gpt-4o", "2.50", "10.00")
        .build();
    budget.spec.currency = "EUR".into();
    budget
}

/// A full hour some hours ahead of the wall clock: the operator's clock lives around it, after
/// every real timestamp of the test (creation and start times).
fn boundary() -> Timestamp {
    let hour = TimestampRound::new().smallest(Unit::Hour).mode(RoundMode::Ceil);
    (Timestamp::now() + SignedDuration::from_hours(2)).round(hour).unwrap()
}

/// Two Deployments of one pod each, `writer` and `reader`, bound to budget `b` by binding `bb`
/// (scraped every second); returns their agents once both pods are scraped.
async fn two_agents(s: &Tenant) -> (Agent, Agent) {
    create(
        &s.bindings,
        binding("bb", "b")
            .deployment("writer")
            .deployment("reader")
            .interval("1s"),
    )
    .await;
    let mut agents = Vec::new();
    for name in ["writer", "reader"] {
        create(&s.deployments, deployment(name)).await;
        let pod = pods_of(&s.pods, name, 1).await.remove(0);
        let agent = Agent::start(&agent_ip(), &[]);
        run_pod(&s.pods, &pod, &agent.ip, 0).await;
        agents.push(agent);
    }
    let reader = agents.pop().unwrap();
    (agents.pop().unwrap(), reader)
}

/// What the agents spend in the period that ends: the writer 1,000 input and 200 output
/// tokens of gpt-4o-mini and 100 and 50 of gpt-4o, the reader 3,000 input of gpt-4o-mini.
fn spend_in_the_old_period(writer: &Agent, reader: &Agent) {
    writer.spend("gpt-4o-mini", 1000, 200);
    writer.spend("gpt-4o", 100, 50);
    reader.spend("gpt-4o-mini", 3000, 0);
}

/// The entry of that period, exactly: every token, and its cost in exact decimals.
fn assert_exact_entry(entry: &PeriodSummary, boundary: Timestamp) {
    let instant = |t: &str| t.parse::<Timestamp>().unwrap();
    assert_eq!(instant(&entry.period_start), boundary - SignedDuration::from_hours(1));
    assert_eq!(instant(&entry.period_end), boundary);
    assert_eq!(entry.currency, "EUR");
    assert_eq!(
        entry.used,
        UsedTokens {
            tokens: 4350,
            input: 4100,
            output: 250,
            // 0.00072 (gpt-4o-mini) + 0.00075 (gpt-4o)
            cost: Some("0.00147".into()),
        }
    );
    // By cost, then tokens.
    let models: Vec<_> = entry
        .models
        .iter()
        .map(|m| (m.model.as_str(), m.input, m.output, m.cost.as_deref()))
        .collect();
    assert_eq!(
        models,
        [
            ("gpt-4o", 100, 50, Some("0.00075")),
            ("gpt-4o-mini", 4000, 200, Some("0.00072"))
        ]
    );
    let workloads: Vec<_> = entry
        .workloads
        .iter()
        .map(|w| (w.name.as_str(), w.tokens, w.cost.as_deref()))
        .collect();
    assert_eq!(
        workloads,
        [("writer", 1350, Some("0.00102")), ("reader", 3000, Some("0.00045"))]
    );
}

/// `kubectl tokenbudget report`'s CSV, by workload and by budget, of the period that ended:
/// each workload's row is what its agent spent (see [`spend_in_the_old_period`]), to the token
/// and the exact cost, and the rows add up to the budget's.
fn report_adds_up_to_what_the_agents_spent(namespace: &str) {
    let report = |args: &[&str]| -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-tokenbudget"))
            .args(["report", "-n", namespace])
            .args(args)
            .env("KUBECONFIG", kubeconfig())
            .output()
            .expect("the plugin runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).expect("UTF-8");
        eprintln!("$ kubectl tokenbudget report -n {namespace} {}\n{text}", args.join(" "));
        text
    };
    let csv = |by: &str| -> Vec<Vec<String>> {
        let text = report(&["--by", by, "-o", "csv"]);
        let mut rows: Vec<Vec<String>> = text
            .lines()
            .skip(1)
            .map(|line| line.trim_end_matches('\r').split(',').map(String::from).collect())
            .collect();
        rows.sort();
        rows
    };
    let row = |fields: &[&str]| -> Vec<String> { fields.iter().map(|f| f.to_string()).collect() };
    // writer: 1,000 + 200 of gpt-4o-mini, 100 + 50 of gpt-4o; reader: 3,000 of gpt-4o-mini.
    assert_eq!(
        csv("workload"),
        [
            row(&[namespace, "b", "Deployment", "reader", "EUR", "3000", "0.00045"]),
            row(&[namespace, "b", "Deployment", "writer", "EUR", "1350", "0.00102"]),
        ]
    );
    assert_eq!(
        csv("budget"),
        [row(&[namespace, "b", "EUR", "1", "4100", "250", "4350", "0.00147"])]
    );
    // The table's TOTAL line says the same.
    let table = report(&["--by", "model"]);
    let total: Vec<&str> = table
        .lines()
        .find(|line| line.starts_with("TOTAL"))
        .expect("a TOTAL line")
        .split_whitespace()
        .collect();
    assert_eq!(total[total.len() - 3..], ["4,350", "0.00147", "EUR"], "{table}");
}

fn status(tb: &TokenBudget) -> TokenBudgetStatus {
    tb.status.clone().unwrap_or_default()
}

fn period_start(tb: &TokenBudget) -> Option<Timestamp> {
    tb.status.as_ref()?.period_start.as_ref()?.parse().ok()
}

fn used(tb: &TokenBudget) -> i64 {
    tb.status
        .as_ref()
        .and_then(|s| s.used.as_ref())
        .map_or(-1, |u| u.tokens)
}

/// Waits until the operator has finished a cycle of budget `b` that began at `at` or later on
/// its clock (its status written): the metric of the cycle's start is set once it is over.
async fn wait_cycle_since(operator: &InProcessOperator, namespace: &str, at: Timestamp) {
    let series = format!("tokenbudget_last_cycle_timestamp_seconds{{name=\"b\",namespace=\"{namespace}\"}} ");
    let address = operator.address;
    let at = at.as_millisecond() as f64 / 1000.0;
    within(
        async {
            loop {
                // Off the runtime's threads: the operator runs on them.
                let metrics = tokio::task::spawn_blocking(move || http_get(address, "/metrics")).await;
                let started = metrics.ok().and_then(|m| m.ok()).and_then(|(_, body)| {
                    body.lines()
                        .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse::<f64>().ok())
                });
                if started.is_some_and(|t| t >= at) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        },
        &format!("a cycle of b at {at} or later"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_period_that_ends_is_recorded_once_with_the_agents_exact_totals() {
    let s = Tenant::new("history-rollover").await;
    let boundary = boundary();
    create(&s.budgets, hourly("b")).await;
    let (writer, reader) = two_agents(&s).await;
    let clock = ManualClock::new(boundary - SignedDuration::from_mins(10));
    let operator = InProcessOperator::start(&s.client, &s.ns.name, Arc::new(clock.clone())).await;
    wait_scraped(&s.bindings, "bb", 2).await;
    spend_in_the_old_period(&writer, &reader);
    let tb = wait_for(&s.budgets, "b", "the old period's usage", |tb| used(tb) == 4350).await;
    assert!(status(&tb).history.is_empty(), "no period has ended yet");
    // The current period's workloads carry their cost too.
    let costs: Vec<_> = status(&tb)
        .workloads
        .iter()
        .map(|w| (w.name.clone(), w.cost.clone()))
        .collect();
    assert_eq!(
        costs,
        [
            ("reader".to_string(), Some("0.00045".to_string())),
            ("writer".to_string(), Some("0.00102".to_string()))
        ]
    );

    // The boundary passes: one write starts the new period and records the old one.
    clock.set(boundary + SignedDuration::from_secs(1));
    let tb = wait_for(&s.budgets, "b", "the new period", |tb| {
        period_start(tb) == Some(boundary)
    })
    .await;
    let rolled = status(&tb);
    assert_eq!(used(&tb), 0);
    assert_eq!(rolled.history.len(), 1, "{:?}", rolled.history);
    assert_exact_entry(&rolled.history[0], boundary);
    report_adds_up_to_what_the_agents_spent(&s.ns.name);

    // What is spent now counts in the new period, and later cycles add no entry.
    reader.spend("gpt-4o-mini", 7, 0);
    wait_for(&s.budgets, "b", "the new period's usage", |tb| used(tb) == 7).await;
    clock.set(boundary + SignedDuration::from_secs(2));
    wait_cycle_since(&operator, &s.ns.name, boundary + SignedDuration::from_secs(2)).await;
    let later = status(&s.budgets.get("b").await.unwrap());
    assert_eq!(later.history, rolled.history);
    assert_eq!(later.used.map(|u| u.tokens), Some(7));
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_restarted_at_the_boundary_records_the_period_once() {
    let s = Tenant::new("history-restart").await;
    let boundary = boundary();
    create(&s.budgets, hourly("b")).await;
    let (writer, reader) = two_agents(&s).await;

    // The first operator counts the old period, and stops before its end.
    let before = ManualClock::new(boundary - SignedDuration::from_mins(10));
    let operator = InProcessOperator::start(&s.client, &s.ns.name, Arc::new(before)).await;
    wait_scraped(&s.bindings, "bb", 2).await;
    spend_in_the_old_period(&writer, &reader);
    wait_for(&s.budgets, "b", "the old period's usage", |tb| used(tb) == 4350).await;
    operator.stop().await;
    // While no operator runs, the boundary passes and the reader spends 11 more: the
    // baselines stay, so those count in the new period.
    reader.spend("gpt-4o-mini", 11, 0);

    // The next operator restores the old period's ledger: its first cycle records it.
    let after = ManualClock::new(boundary + SignedDuration::from_mins(1));
    let operator = InProcessOperator::start(&s.client, &s.ns.name, Arc::new(after)).await;
    let tb = wait_for(&s.budgets, "b", "the new period", |tb| {
        period_start(tb) == Some(boundary)
    })
    .await;
    let rolled = status(&tb);
    assert_eq!(rolled.history.len(), 1, "{:?}", rolled.history);
    assert_exact_entry(&rolled.history[0], boundary);
    let tb = wait_for(&s.budgets, "b", "the tokens spent meanwhile", |tb| used(tb) == 11).await;
    assert_eq!(status(&tb).history, rolled.history);
    operator.stop().await;

    // Restarted again in the new period: it resumes the new ledger, and records nothing.
    let later = ManualClock::new(boundary + SignedDuration::from_mins(2));
    let operator = InProcessOperator::start(&s.client, &s.ns.name, Arc::new(later)).await;
    wait_cycle_since(&operator, &s.ns.name, boundary + SignedDuration::from_mins(2)).await;
    let again = status(&s.budgets.get("b").await.unwrap());
    assert_eq!(again.history, rolled.history);
    assert_eq!(again.used.map(|u| u.tokens), Some(11));
    operator.stop().await;

    // A replica whose clock is behind, still in the old period, takes over: the ledger does
    // not go back, and the period is not ended again.
    let lagging = ManualClock::new(boundary - SignedDuration::from_secs(1));
    let operator = InProcessOperator::start(&s.client, &s.ns.name, Arc::new(lagging)).await;
    wait_cycle_since(&operator, &s.ns.name, boundary - SignedDuration::from_secs(1)).await;
    let tb = s.budgets.get("b").await.unwrap();
    assert_eq!(period_start(&tb), Some(boundary));
    assert_eq!(status(&tb).history, rolled.history);
    assert_eq!(used(&tb), 11);
    operator.stop().await;
}

/// What the history and the workloads' models add to the status of a budget of 1,000 pods
/// with 5 models each, written as the operator writes it (server-side apply of the status,
/// its field manager) to the real API server, after 13 hours of an hourly budget: twelve
/// entries of history. Measured twice: the pods in 10 Deployments, and each pod a Job of its
/// own (1,000 workloads, the most the ledger keeps by name). `--nocapture` prints the bytes.
#[tokio::test]
async fn what_the_history_adds_to_a_thousand_pod_budget() {
    use tokenbudget::usage::{
        Extractor,
        account::{Account, usage_status},
        ledger::PodObservation,
    };
    let s = Tenant::new("history-size").await;
    let spec = hourly("b").spec;
    let valid = tokenbudget::validate::budget(&spec).expect("a valid budget");
    let models = [
        "gpt-4o-mini-2024-07-18",
        "gpt-4o-2024-08-06",
        "claude-sonnet-4-20250514",
        "o3-mini-2025-01-31",
        "text-embedding-3-large",
    ];
    let extractor = Extractor::new(tokenbudget::api::MetricsFormat::Vllm, &[]);
    let origin: Timestamp = "2026-11-01T00:00:00Z".parse().unwrap();
    let start: Timestamp = "2026-11-30T00:00:30Z".parse().unwrap();
    for (shape, kind, workloads) in [
        ("10 Deployments", tokenbudget::api::WorkloadKind::Deployment, 10),
        ("1,000 Jobs", tokenbudget::api::WorkloadKind::Job, 1000),
    ] {
        let names: Vec<String> = (0..workloads).map(|w| format!("summarizer-{w:04}")).collect();
        let mut account = Account::resume("uid", None);
        let mut status = TokenBudgetStatus::default();
        for hour in 0..=12 {
            let now = start + SignedDuration::from_hours(hour);
            let window = account.window(&valid, now, origin);
            account.roll_over(&valid, &window, now);
            for pod in 0..1000u64 {
                let body: String = models
                    .iter()
                    .enumerate()
                    .map(|(m, model)| {
                        let input = (hour as u64 + 1) * (pod + 1) * 10_000 * (m as u64 + 1);
                        format!(
                            "vllm:prompt_tokens_total{{model_name=\"{model}\"}} {input}\n\
                             vllm:generation_tokens_total{{model_name=\"{model}\"}} {}\n",
                            input / 7
                        )
                    })
                    .collect();
                let uid = format!("0f8c2a5e-1d2b-4c3d-9e8f-{pod:012}");
                let observation = PodObservation {
                    uid: &uid,
                    name: &uid,
                    binding: "summarizer",
                    workload: (kind, &names[pod as usize % workloads]),
                    restarts: 0,
                    started_at: Some(origin),
                    bound_since: origin,
                    container_started: None,
                    scraped_at: now,
                };
                account
                    .ledger_mut()
                    .observe(&observation, &extractor.extract(body.as_bytes()).unwrap());
            }
            status = usage_status(&valid, &account, &window).0;
        }
        assert_eq!(status.history.len(), 12);
        // What the version before wrote: no history, no workloads' cost, no models per workload.
        let mut before = status.clone();
        before.history.clear();
        before.workloads.iter_mut().for_each(|w| w.cost = None);
        let accounting = before.accounting.as_mut().unwrap();
        accounting.workloads.iter_mut().for_each(|w| w.models.clear());

        let mut sizes = Vec::new();
        for (name, status) in [("before", &before), ("after", &status)] {
            let name = format!("{name}-{}", workloads);
            create(&s.budgets, hourly(&name)).await;
            let patch = serde_json::json!({
                "apiVersion": "tokenbudget.io/v1alpha1", "kind": "TokenBudget", "status": status,
            });
            let params = kube::api::PatchParams::apply(tokenbudget::controller::FIELD_MANAGER).force();
            s.budgets
                .patch_status(&name, &params, &kube::api::Patch::Apply(&patch))
                .await
                .expect("the status is written");
            let raw = s
                .client
                .request_text(
                    http::Request::get(format!(
                        "/apis/tokenbudget.io/v1alpha1/namespaces/{}/tokenbudgets/{name}",
                        s.ns.name
                    ))
                    .body(Vec::new())
                    .unwrap(),
                )
                .await
                .expect("the budget reads back");
            let object: serde_json::Value = serde_json::from_str(&raw).unwrap();
            let managed = object["metadata"]["managedFields"].to_string().len();
            let history = object["status"]["history"].to_string().len();
            let stored: TokenBudget = serde_json::from_value(object).unwrap();
            assert_eq!(stored.status.as_ref(), Some(status), "{name} reads back as written");
            sizes.push((raw.len(), managed, history));
        }
        let (before, after) = (sizes[0], sizes[1]);
        let workloads_json = serde_json::to_string(&status.accounting.as_ref().unwrap().workloads)
            .unwrap()
            .len();
        println!(
            "1,000 pods x 5 models in {shape}: the object {} bytes before, {} after (+{}): \
             history {} bytes, managedFields {} -> {} bytes, accounting.workloads now {} bytes",
            before.0,
            after.0,
            after.0 - before.0,
            after.2,
            before.1,
            after.1,
            workloads_json,
        );
        // Twelve entries of at most ten models and workloads each, and their managedFields.
        assert!(after.2 < 24 * 1024, "history: {} bytes", after.2);
        assert!(after.0 - before.0 < 160 * 1024, "{} bytes more", after.0 - before.0);
        assert!(after.0 < 512 * 1024, "the object: {} bytes", after.0);
    }
}
