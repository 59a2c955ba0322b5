//! Limits per subject end to end: a real API server and controller-manager, the operator
//! binary, and agent-sim processes serving LiteLLM's metrics (with an `end_user` label) on
//! their own loopback addresses while the test plays the kubelet.

mod common;

use common::*;
use kube::Api;
use tokenbudget::api::{MetricsFormat, SubjectUsage, SubjectsUsage, TokenBudget};

fn used(tb: &TokenBudget) -> i64 {
    tb.status
        .as_ref()
        .and_then(|s| s.used.as_ref())
        .map_or(-1, |u| u.tokens)
}

fn subjects(tb: &TokenBudget) -> &SubjectsUsage {
    &tb.status.as_ref().expect("a status").subjects[0]
}

fn top(tb: &TokenBudget) -> Vec<(&str, i64, bool)> {
    subjects(tb)
        .top
        .iter()
        .map(
            |SubjectUsage {
                 value,
                 tokens,
                 exhausted,
                 ..
             }| (value.as_str(), *tokens, *exhausted),
        )
        .collect()
}

async fn wait_used(budgets: &Api<TokenBudget>, tokens: i64) -> TokenBudget {
    wait_for(budgets, "b", &format!("b to have used {tokens} tokens"), |tb| {
        used(tb) == tokens
    })
    .await
}

/// Two pods of one Deployment serve LiteLLM's metrics, each for several end users (and some
/// requests without one). Each end user may spend 1,000 tokens; the budget 100,000.
#[tokio::test]
async fn each_end_user_is_limited_and_counted_exactly_across_an_operator_restart() {
    let mut s = Tenant::new("subjects").await.with_operator();
    create(&s.budgets, budget("b").tokens(100_000).per_subject("end_user", 1_000)).await;
    create(
        &s.bindings,
        binding("bb", "b").deployment("agent").format(MetricsFormat::LiteLlm),
    )
    .await;
    create(&s.deployments, deployment("agent").replicas(2)).await;
    let mut agents = Vec::new();
    for pod in pods_of(&s.pods, "agent", 2).await {
        let agent = Agent::start(&agent_ip(), &["--format", "LiteLLM"]);
        run_pod(&s.pods, &pod, &agent.ip, 0).await;
        agents.push(agent);
    }
    agents[0].spend_as("alice", "gpt-4o", 600, 0);
    agents[0].spend_as("bob", "gpt-4o", 80, 20);
    agents[1].spend_as("alice", "gpt-4o-mini", 400, 100);
    agents[1].spend_as("carol", "gpt-4o", 10, 0);
    agents[1].spend("gpt-4o", 50, 0); // no end user: the budget's, nobody's
    let tb = wait_used(&s.budgets, 1_260).await;

    // alice spent 1,100 over two pods and two models: exhausted; the others have room.
    assert_eq!(
        top(&tb),
        [("alice", 1_100, true), ("bob", 100, false), ("carol", 10, false)]
    );
    let status = subjects(&tb);
    assert_eq!(
        (status.label.as_str(), status.count, status.exhausted_count),
        ("end_user", 3, 1)
    );
    assert_eq!(status.exhausted, ["alice"]);
    assert_eq!(status.untracked_tokens, 0);
    let condition = tokenbudget::conditions::find(&tb.status.as_ref().unwrap().conditions, "SubjectsExhausted")
        .expect("the SubjectsExhausted condition");
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "SubjectLimitReached")
    );
    assert_eq!(condition.message, "1 subject reached its limit: end_user=\"alice\"");
    // The budget itself has room: no pod is touched for one end user.
    assert_eq!(
        tb.status.as_ref().unwrap().phase,
        Some(tokenbudget::api::BudgetPhase::Active)
    );
    let series = format!(
        "tokenbudget_subjects_exhausted{{label=\"end_user\",name=\"b\",namespace=\"{}\"}}",
        s.ns.name
    );
    let operator = s.operator.as_ref().unwrap();
    within(
        async {
            while operator.metric(&series) != Some(1.0) {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        },
        "the exhausted subject in the metrics",
    )
    .await;

    // The operator is killed, the agents keep spending, a new operator takes over: every
    // subject continues exactly from the persisted bookkeeping.
    let mut operator = s.operator.take().unwrap();
    operator.child.kill().unwrap();
    operator.child.wait().unwrap();
    agents[0].spend_as("bob", "gpt-4o", 5, 0);
    agents[1].spend_as("dave", "gpt-4o", 1, 0);
    s.operator = Some(Operator::start(&s.ns.name));
    let tb = wait_used(&s.budgets, 1_266).await;
    assert_eq!(
        top(&tb),
        [
            ("alice", 1_100, true),
            ("bob", 105, false),
            ("carol", 10, false),
            ("dave", 1, false)
        ]
    );
    // Later scrapes add nothing more.
    agents[0].spend_as("carol", "gpt-4o", 2, 0);
    let tb = wait_used(&s.budgets, 1_268).await;
    assert_eq!(
        top(&tb),
        [
            ("alice", 1_100, true),
            ("bob", 105, false),
            ("carol", 12, false),
            ("dave", 1, false)
        ]
    );

    // Raising the limit gives alice room again.
    let patch = serde_json::json!({"spec": {"subjects": [{"label": "end_user", "limits": {"tokens": 2000}}]}});
    s.budgets
        .patch(
            "b",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("the limit raised");
    let tb = wait_for(&s.budgets, "b", "no subject exhausted", |tb| {
        tb.status
            .as_ref()
            .is_some_and(|st| st.subjects.first().is_some_and(|s| s.exhausted_count == 0))
    })
    .await;
    assert_eq!(subjects(&tb).exhausted, Vec::<String>::new());
    let condition = tokenbudget::conditions::find(&tb.status.as_ref().unwrap().conditions, "SubjectsExhausted")
        .expect("the SubjectsExhausted condition");
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "WithinLimits")
    );
}

/// A subject label with a cost limit but no prices is refused by the API server, and one
/// that is not a label name too.
#[tokio::test]
async fn the_api_server_refuses_malformed_subject_limits() {
    let s = Tenant::new("subjects-invalid").await;
    let mut no_prices = budget("b").tokens(100).build();
    no_prices.spec.subjects = vec![
        serde_json::from_value(serde_json::json!({
            "label": "end_user", "limits": {"cost": "1.00"}
        }))
        .unwrap(),
    ];
    let err = s
        .budgets
        .create(&Default::default(), &no_prices)
        .await
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains("a cost limit per subject (spec.subjects[].limits.cost) needs spec.pricing"),
        "{err}"
    );
    let mut bad_label = budget("c").tokens(100).per_subject("end-user", 5).build();
    bad_label.spec.subjects[0].label = "end-user".into();
    let err = s
        .budgets
        .create(&Default::default(), &bad_label)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("spec.subjects[0].label"), "{err}");
    let mut no_limit = budget("d").tokens(100).build();
    no_limit.spec.subjects = vec![
        serde_json::from_value(serde_json::json!({
            "label": "user", "limits": {}
        }))
        .unwrap(),
    ];
    let err = s
        .budgets
        .create(&Default::default(), &no_limit)
        .await
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains("at least one of spec.limits.tokens and spec.limits.cost"),
        "{err}"
    );
}

/// A pod that reports 50,000 end users (a careless agent labelling by request id, or a
/// hostile one): the budget still counts every token exactly, 1,000 subjects are counted one
/// by one, the rest are summed as untracked, and the budget's status stays small.
#[tokio::test]
async fn fifty_thousand_end_users_stay_bounded_and_the_budget_exact() {
    let s = Tenant::new("subjects-many").await.with_operator();
    create(&s.budgets, budget("b").tokens(10_000_000).per_subject("end_user", 1)).await;
    create(
        &s.bindings,
        binding("bb", "b")
            .deployment("agent")
            .format(MetricsFormat::LiteLlm)
            .interval("5s")
            .timeout("5s"),
    )
    .await;
    create(&s.deployments, deployment("agent").replicas(1)).await;
    let pod = pods_of(&s.pods, "agent", 1).await.remove(0);
    let agent = Agent::start(&agent_ip(), &["--format", "LiteLLM"]);
    run_pod(&s.pods, &pod, &agent.ip, 0).await;
    agent.spend_for_users(50_000, "gpt-4o", 2);
    let tb = wait_used(&s.budgets, 100_000).await;

    let status = subjects(&tb);
    assert_eq!(status.count, 1_000);
    assert_eq!(status.exhausted_count, 1_000);
    assert_eq!(status.exhausted.len(), 100);
    assert_eq!(status.top.len(), 10);
    assert_eq!(status.untracked_tokens, 100_000 - 1_000 * 2);
    assert_eq!(status.other_tokens, (1_000 - 10) * 2);
    let condition = tokenbudget::conditions::find(&tb.status.as_ref().unwrap().conditions, "SubjectsExhausted")
        .expect("the SubjectsExhausted condition");
    assert!(
        condition
            .message
            .starts_with("1000 subjects reached their limit: end_user=")
            && condition.message.ends_with(
                "; 98000 tokens of end_user values beyond the 1000 counted one by one are not limited one by one"
            ),
        "{}",
        condition.message
    );
    let size = serde_json::to_vec(tb.status.as_ref().unwrap()).unwrap().len();
    println!("the budget's status with 50,000 end users: {size} bytes");
    assert!(size < 100_000, "{size} bytes");

    // The operator's peak memory, for the record (`-- --nocapture`; a debug build).
    let pid = s.operator.as_ref().unwrap().child.id();
    let peak = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|st| st.lines().find(|l| l.starts_with("VmHWM")).map(str::to_owned));
    println!("the operator after 50,000 end users: {}", peak.unwrap_or_default());

    // More spending is counted exactly, the untracked as well.
    agent.spend_for_users(50_000, "gpt-4o", 1);
    let tb = wait_used(&s.budgets, 150_000).await;
    assert_eq!(subjects(&tb).untracked_tokens, 150_000 - 1_000 * 3);
    assert_eq!(subjects(&tb).top[0].tokens, 3);
}
