//! One namespace against the others (issue 11): whatever a namespace's pods serve, a budget
//! in another namespace keeps counting on its own interval, and the operator's memory stays
//! a function of its configuration. The operator binary over all namespaces, with its default
//! scrape limits (64 slots, 16 per namespace, 16 MiB bodies), against a real API server.
//!
//! Alone in its file: an operator over all namespaces must not run beside the other tests'
//! operators.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokenbudget::api::{BudgetBinding, TokenBudget};

/// Fat endpoints: one valid sample, then a counter whose value runs on for 15 MiB without a
/// newline (under the 16 MiB body cap).
const FAT: usize = 16;
/// Endpoints that accept and never answer.
const HANGING: usize = 64;
/// The hostile bindings' interval and timeout: the longest timeout the schema allows.
const HOSTILE_TIMEOUT: &str = "60s";
/// How late a count of the quiet namespace may be: its interval is 1 s.
const ON_TIME: Duration = Duration::from_secs(10);

fn used(tb: &TokenBudget) -> i64 {
    tb.status
        .as_ref()
        .and_then(|s| s.used.as_ref())
        .map_or(-1, |u| u.tokens)
}

fn scrape_healthy(bb: &BudgetBinding) -> Option<(String, String)> {
    let status = bb.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.type_ == "ScrapeHealthy")?;
    Some((c.status.clone(), c.message.clone()))
}

/// The operator's peak resident memory so far (`VmHWM`), in MiB.
fn peak_mib(operator: &Operator) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", operator.child.id())).expect("the operator runs");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb / 1024.0
}

/// The operator's count of scrapes that ended with `result`.
fn scrapes(operator: &Operator, result: &str) -> u64 {
    let metrics = operator.get("/metrics").map(|(_, body)| body).unwrap_or_default();
    let series = format!("tokenbudget_scrapes_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Plays the kubelet for the `count` pods of Deployment `app`, all served by the agent at `ip`.
async fn run_pods_at(t: &Tenant, app: &str, count: usize, ip: &str) -> Vec<String> {
    create(&t.deployments, deployment(app).replicas(count as i32)).await;
    let pods = pods_of(&t.pods, app, count).await;
    for pod in &pods {
        run_pod(&t.pods, pod, ip, 0).await;
    }
    pods
}

#[tokio::test]
async fn a_hostile_namespace_neither_starves_the_others_nor_exhausts_the_operators_memory() {
    let mut quiet = Tenant::new("quiet").await;
    let hostile = Tenant::new("hostile").await;
    let operator = Operator::start_all_namespaces();
    operator.wait_ready().await;

    // The quiet namespace: one agent, counted every second.
    create(&quiet.budgets, budget("b")).await;
    create(&quiet.bindings, binding("agent", "b").deployment("agent")).await;
    create(&quiet.deployments, deployment("agent")).await;
    quiet.run_pods("agent", 1).await;
    wait_scraped(&quiet.bindings, "agent", 1).await;

    // The hostile namespace: 16 fat endpoints and 64 that hang, scraped at the longest
    // timeout there is. The pods run and the operator knows the bindings (they say that
    // their budget is missing) before the budget exists, so that its first cycle has them
    // all; `a-fat` sorts first, so its scrapes go first.
    let fat = Agent::start(&agent_ip(), &["--hostile", "fat=15"]);
    let silent = Agent::start(&agent_ip(), &["--hostile", "silent"]);
    run_pods_at(&hostile, "fat", FAT, &fat.ip).await;
    run_pods_at(&hostile, "hanging", HANGING, &silent.ip).await;
    for (name, deployment) in [("a-fat", "fat"), ("b-hanging", "hanging")] {
        let bb = binding(name, "b")
            .deployment(deployment)
            .interval(HOSTILE_TIMEOUT)
            .timeout(HOSTILE_TIMEOUT);
        create(&hostile.bindings, bb).await;
        wait_for(&hostile.bindings, name, "the operator to see the binding", |bb| {
            bb.status.as_ref().is_some_and(|s| !s.conditions.is_empty())
        })
        .await;
    }
    create(&hostile.budgets, budget("b")).await;
    let hostile_cycle = Instant::now();
    // Its cycle is under way once the fat bodies have failed: the hanging scrapes waiting
    // behind them have their slots, and hold them for a minute.
    within(
        async {
            while scrapes(&operator, "parse") < FAT as u64 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
        "the hostile namespace's fat bodies to fail",
    )
    .await;

    // Meanwhile the quiet namespace counts exactly what its agent spends, on time, three
    // times over.
    let mut spent = 0;
    for round in 1..=3 {
        quiet.agents[0].spend("gpt-4o-mini", 100 * round, 10 * round);
        spent += 110 * round as i64;
        let asked = Instant::now();
        let counted = tokio::time::timeout(
            ON_TIME,
            wait_for(&quiet.budgets, "b", &format!("the quiet budget at {spent}"), |tb| {
                used(tb) == spent
            }),
        )
        .await;
        assert!(
            counted.is_ok(),
            "round {round}: the quiet budget did not count {spent} tokens within {ON_TIME:?}, {:?} into the hostile cycle",
            hostile_cycle.elapsed()
        );
        println!(
            "round {round}: {spent} tokens counted in {:?}, {:?} into the hostile cycle",
            asked.elapsed(),
            hostile_cycle.elapsed()
        );
    }
    assert!(
        hostile_cycle.elapsed() < Duration::from_secs(55),
        "the quiet rounds must fall while the hostile scrapes hang"
    );
    let bb = quiet.bindings.get("agent").await.unwrap();
    assert_eq!(
        scrape_healthy(&bb).map(|(s, _)| s).as_deref(),
        Some("True"),
        "{:?}",
        bb.status
    );

    // The hostile cycle ends at its timeout; each of its bindings says why, in a bounded
    // message.
    for (name, reason) in [
        ("a-fat", "gen_ai_client_token_usage_sum: longer than 65536 bytes"),
        ("b-hanging", "within 60s"),
    ] {
        let waiting =
            kube::runtime::wait::await_condition(hostile.bindings.clone(), name, |bb: Option<&BudgetBinding>| {
                bb.and_then(scrape_healthy).is_some_and(|(status, _)| status == "False")
            });
        let bb = tokio::time::timeout(Duration::from_secs(120), waiting)
            .await
            .unwrap_or_else(|_| panic!("{name}: no ScrapeHealthy=False within 2 minutes"))
            .unwrap()
            .unwrap();
        let (_, message) = scrape_healthy(&bb).unwrap();
        println!("{name}: {} bytes: {message}", message.len());
        assert!(message.len() <= 1024, "{name}: a message of {} bytes", message.len());
        assert!(message.contains(reason), "{name}: {message}");
    }
    let peak = peak_mib(&operator);
    println!("operator peak RSS (VmHWM): {peak:.1} MiB");
    assert_eq!(operator.get("/healthz").unwrap().0, 200);
    // Bodies held whole would be 16 x 15 MiB.
    assert!(peak < 128.0, "the operator's peak RSS is {peak:.1} MiB");
    drop((fat, silent));
}
