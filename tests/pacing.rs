//! Pacing end to end: the whole operator in the test process with a clock the test moves (no
//! real hour is waited for), the real API server and controller-manager, and agent-sim
//! processes serving real metrics while the test plays the kubelet. A burn that would run
//! the budget out before it resets runs a Deployment on fewer replicas (recorded, announced,
//! published), and a budget that has room again gets them back once the forecast has held.

mod common;

use std::sync::Arc;

use common::*;
use jiff::{RoundMode, SignedDuration, Timestamp, TimestampRound, Unit};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use tokenbudget::{
    api::{Pacing, PacingAction, ResetPeriod, TokenBudget},
    clock::ManualClock,
    conditions,
    enforce::{PACED_REPLICAS, PAUSED_REPLICAS},
};

/// Noon UTC of a day after today's: the operator's clock lives there, after every real
/// timestamp of the test, 12 hours before its daily budget resets.
fn noon() -> Timestamp {
    let day = TimestampRound::new()
        .smallest(Unit::Hour)
        .increment(24)
        .mode(RoundMode::Ceil);
    Timestamp::now().round(day).unwrap() + SignedDuration::from_hours(12)
}

/// A daily budget of `tokens`, paced by replicas over a 20-minute window (so: a forecast once
/// the samples span 5 minutes, a release held 5 minutes).
fn paced(tokens: i64) -> TokenBudget {
    let mut budget = budget("b").tokens(tokens).period(ResetPeriod::Daily).build();
    budget.spec.pacing = Some(Pacing {
        action: PacingAction::ScaleReplicas,
        min_replicas: 1,
        window: "20m".into(),
    });
    budget
}

fn paced_condition(tb: &TokenBudget) -> Option<(String, String, String)> {
    let status = tb.status.as_ref()?;
    let c = conditions::find(&status.conditions, "Paced")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn pace(tb: &TokenBudget) -> Option<&str> {
    Some(tb.status.as_ref()?.pacing.as_ref()?.pace.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_that_runs_out_early_runs_fewer_replicas_until_it_has_room_again() {
    let mut s = Tenant::new("pacing-replicas").await;
    create(&s.deployments, deployment("agent").replicas(4)).await;
    s.run_pods("agent", 4).await;
    // 370,000 tokens: 10,000 in the first 10 minutes leave 360,000 for 11h50m, about 30,400
    // an hour against the 60,000 burnt: a pace of 0.50, so 2 of the 4 replicas.
    create(&s.budgets, paced(370_000)).await;
    create(&s.bindings, binding("bb", "b").deployment("agent").interval("1s")).await;
    let start = noon();
    let clock = ManualClock::new(start);
    let operator = InProcessOperator::start(&s.client, &s.ns.name, Arc::new(clock.clone())).await;
    wait_scraped(&s.bindings, "bb", 4).await;
    let tb = wait_for(&s.budgets, "b", "a forecast warming up", |tb| {
        paced_condition(tb).is_some_and(|(status, _, _)| status == "False")
    })
    .await;
    assert_eq!(pace(&tb), Some("1.00"));

    s.agents[0].spend("gpt-4o-mini", 8_000, 2_000);
    wait_for(&s.budgets, "b", "the tokens counted", |tb| {
        tb.status
            .as_ref()
            .and_then(|s| s.used.as_ref())
            .is_some_and(|u| u.tokens == 10_000)
    })
    .await;
    // Still too few samples: the window spans no time yet.
    let d = s.deployments.get("agent").await.unwrap();
    assert_eq!(d.spec.replicas, Some(4));

    // Ten minutes later on the operator's clock: a forecast, and pacing engages.
    clock.set(start + SignedDuration::from_mins(10));
    let tb = wait_for(&s.budgets, "b", "pacing engaged", |tb| {
        paced_condition(tb).is_some_and(|(status, _, _)| status == "True")
    })
    .await;
    let (_, reason, message) = paced_condition(&tb).unwrap();
    assert_eq!(reason, "Pacing");
    let pacing = tb.status.as_ref().unwrap().pacing.clone().unwrap();
    assert_eq!(pacing.pace, "0.50", "{message}");
    assert_eq!(pacing.burn_rate, Some(60_000));
    assert_eq!(pacing.sustainable_rate, Some(30_422));
    assert_eq!(
        pacing.since.as_deref(),
        Some((start + SignedDuration::from_mins(10)).to_string().as_str())
    );
    assert!(
        message.starts_with(&format!(
            "at the current rate the budget runs out at {}, 5h50m before it resets; pace 0.50",
            start + SignedDuration::from_mins(10 + 360)
        )),
        "{message}"
    );
    let d = wait_for(&s.deployments, "agent", "the Deployment at 2 of its 4 replicas", |d| {
        d.spec.replicas == Some(2)
    })
    .await;
    assert_eq!(annotation(&d.metadata, PAUSED_REPLICAS), Some("4"));
    assert_eq!(annotation(&d.metadata, PACED_REPLICAS), Some("2"));
    pods_of(&s.pods, "agent", 2).await;
    wait_event(&s.events, "a Pacing Event", |e| e.reason.as_deref() == Some("Pacing")).await;
    wait_event(&s.events, "a Paced Event for the Deployment", |e| {
        e.reason.as_deref() == Some("Paced")
            && e.note.as_deref() == Some("scaled Deployment/agent from 4 to 2 of its 4 replicas: pace 0.50")
    })
    .await;
    let tb = wait_for(&s.budgets, "b", "the paced Deployment in the condition", |tb| {
        paced_condition(tb).is_some_and(|(_, _, m)| m.contains("Deployment/agent at 2 of 4 replicas"))
    })
    .await;
    assert_eq!(pace(&tb), Some("0.50"));

    // The limit raised: room again, but pacing holds for a quarter of the window first.
    set_token_limit(&s.budgets, "b", 10_000_000).await;
    let tb = wait_for(&s.budgets, "b", "the raised limit counted", |tb| {
        tb.status.as_ref().and_then(|s| s.remaining_tokens) == Some(9_990_000)
    })
    .await;
    assert_eq!(pace(&tb), Some("0.50"), "held");
    let d = s.deployments.get("agent").await.unwrap();
    assert_eq!(d.spec.replicas, Some(2));

    // Five minutes on: released, and the 4 replicas are back, the annotations gone.
    clock.set(start + SignedDuration::from_mins(15) + SignedDuration::from_secs(1));
    let d = wait_for(&s.deployments, "agent", "the Deployment restored to 4", |d| {
        d.spec.replicas == Some(4)
    })
    .await;
    let d = if annotation(&d.metadata, PAUSED_REPLICAS).is_some() {
        wait_for(&s.deployments, "agent", "the pacing annotations removed", |d| {
            annotation(&d.metadata, PAUSED_REPLICAS).is_none()
        })
        .await
    } else {
        d
    };
    assert_eq!(annotation(&d.metadata, PACED_REPLICAS), None);
    let tb = wait_for(&s.budgets, "b", "pacing released", |tb| {
        paced_condition(tb).is_some_and(|(status, reason, _)| status == "False" && reason == "OnTrack")
    })
    .await;
    assert_eq!(pace(&tb), Some("1.00"));
    assert_eq!(tb.status.as_ref().unwrap().pacing.as_ref().unwrap().since, None);
    wait_event(&s.events, "an OnTrack Event", |e| {
        e.reason.as_deref() == Some("OnTrack")
    })
    .await;
    wait_event(&s.events, "a Restored Event", |e| {
        e.reason.as_deref() == Some("Restored") && e.note.as_deref() == Some("restored Deployment/agent to 4 replicas")
    })
    .await;
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_with_an_autoscaler_is_left_to_it_and_the_condition_says_so() {
    let mut s = Tenant::new("pacing-hpa").await;
    create(&s.deployments, deployment("agent").replicas(4)).await;
    create(&s.deployments, deployment("scaled").replicas(2)).await;
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "scaled"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "scaled"},
            "minReplicas": 2,
            "maxReplicas": 2,
        }
    }))
    .unwrap();
    create(&s.api::<HorizontalPodAutoscaler>(), hpa).await;
    s.run_pods("agent", 4).await;
    s.run_pods("scaled", 2).await;
    create(&s.budgets, paced(370_000)).await;
    let bb = binding("bb", "b")
        .deployment("agent")
        .deployment("scaled")
        .interval("1s");
    create(&s.bindings, bb).await;
    let start = noon();
    let clock = ManualClock::new(start);
    let operator = InProcessOperator::start(&s.client, &s.ns.name, Arc::new(clock.clone())).await;
    wait_scraped(&s.bindings, "bb", 6).await;
    s.agents[0].spend("gpt-4o-mini", 8_000, 2_000);
    wait_for(&s.budgets, "b", "the tokens counted", |tb| {
        tb.status
            .as_ref()
            .and_then(|s| s.used.as_ref())
            .is_some_and(|u| u.tokens == 10_000)
    })
    .await;

    clock.set(start + SignedDuration::from_mins(10));
    wait_for(
        &s.deployments,
        "agent",
        "the Deployment without an autoscaler paced",
        |d| d.spec.replicas == Some(2),
    )
    .await;
    let tb = wait_for(&s.budgets, "b", "the condition naming both", |tb| {
        paced_condition(tb).is_some_and(|(_, _, m)| m.contains("Deployment/agent at 2 of 4 replicas"))
    })
    .await;
    let (status, _, message) = paced_condition(&tb).unwrap();
    assert_eq!(status, "True");
    assert!(
        message.ends_with(
            "left to their HorizontalPodAutoscaler: Deployment/scaled (lower its maxReplicas by hand, \
             or let the agents read the pace)"
        ),
        "{message}"
    );
    let scaled = s.deployments.get("scaled").await.unwrap();
    assert_eq!(scaled.spec.replicas, Some(2));
    assert_eq!(annotation(&scaled.metadata, PAUSED_REPLICAS), None);
    operator.stop().await;
}
