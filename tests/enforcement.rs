//! Enforcement end to end: real agent traffic exhausts a budget, the operator scales the bound
//! workloads down (the real controller-manager then deletes their pods), a manual scale-up is
//! undone, and raising the limit, deleting the binding or deleting the budget restores exactly
//! what was there.

mod common;

use common::*;
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    batch::v1::{CronJob, Job},
    core::v1::ResourceQuota,
    events::v1::Event,
};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use tokenbudget::{
    api::{BudgetPhase, EnforcementAction::ScaleDown, TokenBudget, WorkloadKind},
    enforce::{BUDGET, PAUSED_REPLICAS, STATE, SUSPENDED},
};

impl Tenant {
    async fn wait_budget(&self, name: &str, what: &str, cond: impl Fn(&TokenBudget) -> bool) -> TokenBudget {
        wait_for(&self.budgets, name, what, cond).await
    }

    async fn wait_event(&self, reason: &str, contains: &str) -> Event {
        let (reason, contains) = (reason.to_string(), contains.to_string());
        wait_event(
            &self.events,
            &format!("a {reason} Event saying {contains:?}"),
            move |e| {
                e.reason.as_deref() == Some(reason.as_str()) && e.note.as_deref().is_some_and(|n| n.contains(&contains))
            },
        )
        .await
    }
}

/// The budgets of these tests: one threshold, at 50%, and scale-down when exhausted.
fn scaling(name: &str, tokens: i64) -> BudgetBuilder {
    budget(name).tokens(tokens).thresholds(&[50]).action(ScaleDown)
}

#[tokio::test]
async fn scale_down_is_undone_by_hand_then_restored_exactly_when_the_limit_is_raised() {
    let mut s = Tenant::new("scale-down-restore").await.with_operator();
    let statefulsets: Api<StatefulSet> = s.api();
    create(&s.deployments, deployment("agent").replicas(2)).await;
    create(&statefulsets, statefulset("memory")).await;
    s.run_pods("agent", 2).await;
    s.run_pods("memory", 1).await;
    create(&s.budgets, scaling("research", 1000)).await;
    let bb = binding("agents", "research")
        .deployment("agent")
        .selecting(WorkloadKind::StatefulSet, &[("team", "research")]);
    create(&s.bindings, bb).await;

    // Below the threshold: workloads and pods are marked ok.
    let d = wait_for(&s.deployments, "agent", "the Deployment marked ok", |d| {
        annotation(&d.metadata, STATE) == Some("ok")
    })
    .await;
    assert_eq!(annotation(&d.metadata, BUDGET), Some("research"));
    wait_scraped(&s.bindings, "agents", 3).await;

    // Over the threshold: warning, nothing scaled.
    s.agents[0].spend("gpt-4o-mini", 500, 100);
    s.wait_budget("research", "phase Warning", |tb| {
        phase(tb) == Some(BudgetPhase::Warning)
    })
    .await;
    wait_for(&s.deployments, "agent", "the Deployment marked warning", |d| {
        annotation(&d.metadata, STATE) == Some("warning")
    })
    .await;
    wait_event(&s.events, "a ThresholdReached Event", |e| {
        e.reason.as_deref() == Some("ThresholdReached")
    })
    .await;

    // Exhausted: both scaled to 0 with their counts kept; the controller-manager deletes the pods.
    s.agents[2].spend("gpt-4o-mini", 300, 100);
    s.wait_budget("research", "phase Exhausted", |tb| {
        phase(tb) == Some(BudgetPhase::Exhausted)
    })
    .await;
    let d = wait_for(&s.deployments, "agent", "the Deployment scaled to 0", |d| {
        d.spec.replicas == Some(0)
    })
    .await;
    assert_eq!(annotation(&d.metadata, PAUSED_REPLICAS), Some("2"));
    assert_eq!(annotation(&d.metadata, STATE), Some("exhausted"));
    let sts = wait_for(&statefulsets, "memory", "the StatefulSet scaled to 0", |s| {
        s.spec.replicas == Some(0)
    })
    .await;
    assert_eq!(annotation(&sts.metadata, PAUSED_REPLICAS), Some("1"));
    pods_of(&s.pods, "agent", 0).await;
    s.wait_event("ScaledDown", "Deployment/agent from 2 to 0").await;
    let tb = s
        .wait_budget("research", "status.enforced lists both", |tb| {
            tb.status.as_ref().is_some_and(|st| st.enforced.len() == 2)
        })
        .await;
    let enforced = &tb.status.as_ref().unwrap().enforced;
    assert!(enforced.iter().all(|e| e.action == "ScaleDown"), "{enforced:?}");

    // A manual scale-up while exhausted is undone at once (the next scrape is an hour away
    // now: the change of the workload itself wakes the budget), and remembered for the restore.
    s.bindings
        .patch(
            "agents",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"metrics": {"interval": "1h"}}})),
        )
        .await
        .unwrap();
    let out = kubectl(&["scale", "deployment/agent", "--replicas=3", "-n", &s.ns.name], None);
    assert!(out.status.success(), "kubectl scale: {}", text(&out.stderr));
    let d = wait_for(&s.deployments, "agent", "the manual scale-up undone", |d| {
        d.spec.replicas == Some(0) && annotation(&d.metadata, PAUSED_REPLICAS) == Some("3")
    })
    .await;
    assert_eq!(annotation(&d.metadata, STATE), Some("exhausted"));
    s.wait_event("ScaledDown", "by someone else").await;
    // Scrapes every second again, so that the restored pods are marked soon.
    s.bindings
        .patch(
            "agents",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"metrics": {"interval": "1s"}}})),
        )
        .await
        .unwrap();

    // Raising the limit restores exactly: 3 (the last count asked for) and 1.
    set_token_limit(&s.budgets, "research", 1_000_000).await;
    let d = wait_for(&s.deployments, "agent", "the Deployment restored to 3", |d| {
        d.spec.replicas == Some(3) && annotation(&d.metadata, PAUSED_REPLICAS).is_none()
    })
    .await;
    assert_eq!(annotation(&d.metadata, STATE), Some("ok"));
    wait_for(&statefulsets, "memory", "the StatefulSet restored to 1", |s| {
        s.spec.replicas == Some(1) && annotation(&s.metadata, PAUSED_REPLICAS).is_none()
    })
    .await;
    s.wait_event("Restored", "restored Deployment/agent to 3 replicas")
        .await;
    let tb = s
        .wait_budget("research", "nothing enforced any more", |tb| {
            tb.status.as_ref().is_some_and(|st| st.enforced.is_empty())
        })
        .await;
    assert_eq!(phase(&tb), Some(BudgetPhase::Active));
    // The new pods are marked as their workload.
    let pods = pods_of(&s.pods, "agent", 3).await;
    let pod = wait_for(&s.pods, &pods[0], "a new pod marked ok", |p| {
        annotation(&p.metadata, STATE) == Some("ok")
    })
    .await;
    assert_eq!(annotation(&pod.metadata, BUDGET), Some("research"));
}

#[tokio::test]
async fn freeze_quota_blocks_new_pods_and_deleting_the_binding_or_the_budget_restores() {
    let mut s = Tenant::new("freeze-quota").await.with_operator();
    create(&s.deployments, deployment("agent")).await;
    s.run_pods("agent", 1).await;
    let frozen = scaling("research", 100).compute_quota(&[("pods", "10")]).freeze_quota();
    create(&s.budgets, frozen).await;
    let bb = binding("agents", "research").deployment("agent").build();
    create(&s.bindings, bb.clone()).await;
    let quotas: Api<ResourceQuota> = s.api();
    let quota = wait_for(&quotas, "tokenbudget-research", "the budget's quota", |q| {
        quota_pods(q) == Some("10")
    })
    .await;
    assert!(
        quota
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "TokenBudget" && o.name == "research"),
        "the quota is owned by the budget, so deleting the budget removes it"
    );
    wait_scraped(&s.bindings, "agents", 1).await;

    s.agents[0].spend("gpt-4o-mini", 150, 0);
    s.wait_budget("research", "phase Exhausted", |tb| {
        phase(tb) == Some(BudgetPhase::Exhausted)
    })
    .await;
    wait_for(&quotas, "tokenbudget-research", "the quota frozen", |q| {
        quota_pods(q) == Some("0")
    })
    .await;
    wait_for(&s.deployments, "agent", "the Deployment scaled to 0", |d| {
        d.spec.replicas == Some(0)
    })
    .await;
    // The quota controller fills in the frozen limit; then no pod of any kind may start.
    wait_for(
        &quotas,
        "tokenbudget-research",
        "the quota controller to see the freeze",
        |q| {
            q.status
                .as_ref()
                .and_then(|s| s.hard.as_ref())
                .and_then(|h| h.get("pods"))
                .map(|q| q.0.as_str())
                == Some("0")
        },
    )
    .await;
    let out = kubectl(
        &[
            "run",
            "intruder",
            "--image=busybox",
            "--restart=Never",
            "-n",
            &s.ns.name,
        ],
        None,
    );
    assert!(!out.status.success(), "a new pod must be refused while frozen");
    assert!(text(&out.stderr).contains("exceeded quota"), "{}", text(&out.stderr));
    let tb = s
        .wait_budget("research", "the quota mirrored in status", |tb| {
            tb.status
                .as_ref()
                .and_then(|s| s.compute_quota.as_ref())
                .is_some_and(|q| q.hard.get("pods").map(|p| p.0.as_str()) == Some("0"))
        })
        .await;
    assert_eq!(tb.status.unwrap().compute_quota.unwrap().name, "tokenbudget-research");

    // Deleting the binding restores its workload (the budget stays exhausted and frozen).
    delete(&s.bindings, "agents").await;
    let d = wait_for(
        &s.deployments,
        "agent",
        "the Deployment restored after unbinding",
        |d| d.spec.replicas == Some(1) && d.metadata.annotations.as_ref().is_none_or(|a| !a.contains_key(BUDGET)),
    )
    .await;
    assert_eq!(annotation(&d.metadata, STATE), None);

    // Bound again while still exhausted: scaled down again.
    create(&s.bindings, bb).await;
    wait_for(&s.deployments, "agent", "scaled down again once bound", |d| {
        d.spec.replicas == Some(0) && annotation(&d.metadata, PAUSED_REPLICAS) == Some("1")
    })
    .await;

    // Deleting the budget restores the workload and removes the quota before the budget goes.
    delete(&s.budgets, "research").await;
    let d = wait_for(
        &s.deployments,
        "agent",
        "the Deployment restored after the budget's deletion",
        |d| d.spec.replicas == Some(1) && d.metadata.annotations.as_ref().is_none_or(|a| !a.contains_key(BUDGET)),
    )
    .await;
    assert_eq!(annotation(&d.metadata, PAUSED_REPLICAS), None);
    wait_gone(&s.budgets, "research", "the budget to be gone").await;
    wait_gone(&quotas, "tokenbudget-research", "the quota to be gone").await;
    let out = kubectl(
        &["run", "welcome", "--image=busybox", "--restart=Never", "-n", &s.ns.name],
        None,
    );
    assert!(
        out.status.success(),
        "kubectl run after the budget is gone: {}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn jobs_and_cron_jobs_are_paused_and_resumed() {
    let mut s = Tenant::new("jobs-paused").await.with_operator();
    let jobs: Api<Job> = s.api();
    create(&jobs, job("batch").parallelism(2).completions(10)).await;
    // `held` is a Job its owner suspended: the budget must leave it suspended when it restores.
    create(&jobs, job("held").suspended()).await;
    create(&s.ns.api::<CronJob>(&s.client), cron_job("nightly")).await;
    s.run_pods("batch", 2).await;
    create(&s.budgets, scaling("research", 100)).await;
    let batch = binding("batch", "research")
        .named(WorkloadKind::Job, "batch")
        .named(WorkloadKind::Job, "held")
        .named(WorkloadKind::CronJob, "nightly");
    create(&s.bindings, batch).await;
    let cron_state = |path: &str| {
        let out = kubectl(
            &[
                "get",
                "cronjobs.v1.batch",
                "nightly",
                "-n",
                &s.ns.name,
                "-o",
                &format!("jsonpath={path}"),
            ],
            None,
        );
        text(&out.stdout)
    };

    // The pods ran before the binding: their counters are only a baseline until a first
    // scrape has seen them.
    wait_for(&jobs, "batch", "the Job marked ok", |j| {
        annotation(&j.metadata, STATE) == Some("ok")
    })
    .await;
    wait_scraped(&s.bindings, "batch", 2).await;
    s.agents[0].spend("gpt-4o-mini", 80, 40);
    s.wait_budget("research", "phase Exhausted", |tb| {
        phase(tb) == Some(BudgetPhase::Exhausted)
    })
    .await;
    let tb = s
        .wait_budget("research", "all three paused", |tb| {
            tb.status
                .as_ref()
                .is_some_and(|st| st.enforced.iter().filter(|e| e.action == "Suspend").count() == 3)
        })
        .await;
    let message = tb
        .status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Enforced"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("Job/batch") && message.contains("CronJob/nightly"),
        "{message}"
    );
    let job = jobs.get("batch").await.unwrap();
    assert_eq!(job.spec.as_ref().unwrap().suspend, Some(true));
    assert_eq!(annotation(&job.metadata, SUSPENDED), Some("true"));
    // The job controller ends a suspended Job's running pods.
    pods_of(&s.pods, "batch", 0).await;
    // Suspended by its owner before: not marked as the budget's doing.
    assert_eq!(annotation(&jobs.get("held").await.unwrap().metadata, SUSPENDED), None);
    assert_eq!(cron_state("{.spec.suspend}"), "true");
    assert_eq!(cron_state("{.metadata.annotations.tokenbudget\\.io/suspended}"), "true");

    set_token_limit(&s.budgets, "research", 1_000_000).await;
    let job = wait_for(&jobs, "batch", "the Job resumed", |j| {
        annotation(&j.metadata, SUSPENDED).is_none() && j.spec.as_ref().is_some_and(|s| s.suspend == Some(false))
    })
    .await;
    assert_eq!(job.spec.unwrap().parallelism, Some(2));
    s.wait_event("Restored", "CronJob/nightly").await;
    assert_eq!(cron_state("{.spec.suspend}"), "false");
    assert_eq!(cron_state("{.metadata.annotations.tokenbudget\\.io/suspended}"), "");
    // The restore is done (both Events are out): the owner's Job is still suspended.
    s.wait_event("Restored", "Job/batch").await;
    let held = jobs.get("held").await.unwrap();
    assert_eq!(held.spec.unwrap().suspend, Some(true));
    assert_eq!(annotation(&held.metadata, SUSPENDED), None);
}

/// Suspending a CronJob stops new runs, not the running one, which keeps spending: its runs
/// are suspended with it, one created just before the suspension too, and the restore resumes
/// exactly the runs the operator suspended, never one its owner suspended.
#[tokio::test]
async fn the_running_jobs_of_a_cron_job_are_suspended_with_it_and_resumed_exactly() {
    let mut s = Tenant::new("cron-job-runs").await.with_operator();
    let jobs: Api<Job> = s.api();
    let cron_jobs: Api<CronJob> = s.api();
    let nightly = create(&cron_jobs, cron_job("nightly")).await;
    // The test plays the CronJob controller: a running run, and one its owner suspended.
    create(&jobs, run_of(&nightly, "nightly-1")).await;
    create(&jobs, run_of(&nightly, "nightly-held").suspended()).await;
    s.run_pods("nightly", 1).await;
    create(&s.budgets, scaling("research", 100)).await;
    let bb = binding("nightly", "research").named(WorkloadKind::CronJob, "nightly");
    create(&s.bindings, bb).await;
    let suspended_by_us = |j: &Job| {
        j.spec.as_ref().and_then(|s| s.suspend) == Some(true) && annotation(&j.metadata, SUSPENDED) == Some("true")
    };
    let resumed = |j: &Job| {
        j.spec.as_ref().and_then(|s| s.suspend) == Some(false) && annotation(&j.metadata, SUSPENDED).is_none()
    };

    wait_scraped(&s.bindings, "nightly", 1).await;
    s.agents[0].spend("gpt-4o-mini", 80, 40);
    s.wait_budget("research", "phase Exhausted", |tb| {
        phase(tb) == Some(BudgetPhase::Exhausted)
    })
    .await;
    let cron = wait_for(&cron_jobs, "nightly", "the CronJob suspended", |c| {
        c.spec.suspend == Some(true)
    })
    .await;
    assert_eq!(annotation(&cron.metadata, SUSPENDED), Some("true"));
    wait_for(&jobs, "nightly-1", "its running Job suspended", suspended_by_us).await;
    // The job controller ends the suspended run's pod.
    pods_of(&s.pods, "nightly", 0).await;
    s.wait_event("ScaledDown", "suspended Job/nightly-1 (a run of CronJob/nightly)")
        .await;
    let tb = s
        .wait_budget("research", "status.enforced to list the CronJob and its run", |tb| {
            tb.status.as_ref().is_some_and(|st| st.enforced.len() == 2)
        })
        .await;
    let enforced: Vec<_> = tb
        .status
        .as_ref()
        .unwrap()
        .enforced
        .iter()
        .map(|e| (e.kind, e.name.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        enforced,
        [
            (WorkloadKind::CronJob, "nightly", "Suspend"),
            (WorkloadKind::Job, "nightly-1", "Suspend")
        ]
    );
    let held = jobs.get("nightly-held").await.unwrap();
    assert_eq!(
        annotation(&held.metadata, SUSPENDED),
        None,
        "suspended by its owner, not the budget"
    );

    // A run the CronJob controller created just before the suspension: with the next scrape an
    // hour away, its own appearance wakes the budget, which suspends it. (A cycle still under
    // way when it appears may suspend it first; the wake itself is unit-tested in
    // `controller::cluster`.)
    s.bindings
        .patch(
            "nightly",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"metrics": {"interval": "1h"}}})),
        )
        .await
        .unwrap();
    create(&jobs, run_of(&nightly, "nightly-2")).await;
    wait_for(&jobs, "nightly-2", "the late run suspended", suspended_by_us).await;

    // Raising the limit resumes the CronJob and the runs the operator suspended.
    set_token_limit(&s.budgets, "research", 1_000_000).await;
    wait_for(&cron_jobs, "nightly", "the CronJob resumed", |c| {
        c.spec.suspend == Some(false) && annotation(&c.metadata, SUSPENDED).is_none()
    })
    .await;
    wait_for(&jobs, "nightly-1", "the run resumed", resumed).await;
    wait_for(&jobs, "nightly-2", "the late run resumed", resumed).await;
    // Resuming them starts their pods again.
    pods_of(&s.pods, "nightly", 2).await;
    // The restore is done (all three Events are out): the owner's run is still suspended.
    for what in [
        "resumed CronJob/nightly",
        "resumed Job/nightly-1 ",
        "resumed Job/nightly-2 ",
    ] {
        s.wait_event("Restored", what).await;
    }
    let held = jobs.get("nightly-held").await.unwrap();
    assert_eq!(held.spec.unwrap().suspend, Some(true));
    assert_eq!(annotation(&held.metadata, SUSPENDED), None);
}

#[tokio::test]
async fn a_quota_the_budget_does_not_own_is_left_alone_and_does_not_block_its_deletion() {
    let s = Tenant::new("foreign-quota").await.with_operator();
    let quotas: Api<ResourceQuota> = s.api();
    let theirs: ResourceQuota = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "tokenbudget-research", "labels": {"owner": "platform-team"}},
        "spec": {"hard": {"pods": "7"}}
    }))
    .unwrap();
    create(&quotas, theirs).await;
    let untouched = |q: &ResourceQuota, when: &str| {
        let hard = q.spec.as_ref().and_then(|s| s.hard.as_ref()).unwrap();
        assert_eq!(hard.len(), 1, "{when}: {hard:?}");
        assert_eq!(hard.get("pods").map(|p| p.0.as_str()), Some("7"), "{when}");
        assert_eq!(q.metadata.owner_references, None, "{when}");
        assert_eq!(
            q.metadata.labels.as_ref().map(|l| l.keys().collect::<Vec<_>>()),
            Some(vec![&"owner".to_string()]),
            "{when}"
        );
        let managers: Vec<_> = q
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|m| m.manager.as_deref())
            .collect();
        assert!(!managers.contains(&"tokenbudget-operator"), "{when}: {managers:?}");
    };

    let frozen = scaling("research", 100)
        .compute_quota(&[("pods", "10"), ("cpu", "4")])
        .freeze_quota();
    create(&s.budgets, frozen).await;
    let tb = s
        .wait_budget("research", "the Enforced condition to name the foreign quota", |tb| {
            tb.status.as_ref().is_some_and(|st| {
                st.conditions.iter().any(|c| {
                    c.type_ == "Enforced"
                        && c.message.contains(
                            "a ResourceQuota named tokenbudget-research exists and does not belong to this budget: it is left alone",
                        )
                })
            })
        })
        .await;
    assert_eq!(
        tb.status.unwrap().compute_quota,
        None,
        "not mirrored: it is not the budget's"
    );
    untouched(
        &quotas.get("tokenbudget-research").await.unwrap(),
        "while the budget wants a quota",
    );

    // Deleting the budget leaves the quota and is not held up by it (the finalizer goes).
    delete(&s.budgets, "research").await;
    wait_gone(&s.budgets, "research", "the budget to be gone").await;
    untouched(
        &quotas.get("tokenbudget-research").await.unwrap(),
        "after the budget's deletion",
    );
}

/// Anyone who may edit a Deployment can annotate it: an annotation naming another budget lifts
/// no enforcement unless that budget exists and binds the workload.
#[tokio::test]
async fn an_annotation_naming_a_budget_that_does_not_hold_the_workload_lifts_nothing() {
    let mut s = Tenant::new("annotation-alone").await.with_operator();
    create(&s.deployments, deployment("agent").replicas(1)).await;
    s.run_pods("agent", 1).await;
    create(&s.budgets, scaling("research", 100)).await;
    // A budget that exists, but binds nothing of this namespace's agent.
    create(&s.budgets, scaling("other", 1_000_000)).await;
    create(&s.bindings, binding("agents", "research").deployment("agent")).await;
    wait_scraped(&s.bindings, "agents", 1).await;
    s.agents[0].spend("gpt-4o-mini", 150, 50);
    wait_for(&s.deployments, "agent", "the Deployment scaled to 0", |d| {
        d.spec.replicas == Some(0)
    })
    .await;

    for claimed in ["ghost", "other"] {
        // The tenant claims the workload for a budget that does not exist (or does not bind
        // it), and scales it up.
        let patch = serde_json::json!({
            "metadata": {"annotations": {BUDGET: claimed}},
            "spec": {"replicas": 2},
        });
        s.deployments
            .patch("agent", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        let d = wait_for(
            &s.deployments,
            "agent",
            &format!("the Deployment claimed for {claimed:?} scaled to 0 again"),
            |d| d.spec.replicas == Some(0) && annotation(&d.metadata, BUDGET) == Some("research"),
        )
        .await;
        assert_eq!(annotation(&d.metadata, PAUSED_REPLICAS), Some("2"));
    }
}

/// The grace period ends on time while the API server refuses every status write that would
/// say the budget is exhausted (as etcd's size limit would refuse them all): the Deployment is
/// annotated at once and scaled down once the grace period is over, measured from when the
/// operator first saw the budget exhausted, not from a status it could not write.
#[tokio::test]
async fn the_grace_period_ends_on_time_while_the_api_server_refuses_the_status() {
    let mut s = Tenant::new("grace-refused").await.with_operator();
    create(&s.deployments, deployment("agent").replicas(2)).await;
    s.run_pods("agent", 2).await;
    create(&s.budgets, scaling("research", 100).grace_period("3s")).await;
    create(&s.bindings, binding("agents", "research").deployment("agent")).await;
    wait_scraped(&s.bindings, "agents", 2).await;
    let policy = RefusedStatuses::new(
        &s.budgets,
        "research",
        "!has(object.status) || !has(object.status.phase) || object.status.phase != 'Exhausted'",
        "the test refuses an exhausted budget's status",
        serde_json::json!({"phase": "Exhausted"}),
    )
    .await;

    s.agents[0].spend("gpt-4o-mini", 100, 20);
    wait_for(&s.deployments, "agent", "the Deployment marked exhausted", |d| {
        annotation(&d.metadata, STATE) == Some("exhausted")
    })
    .await;
    let d = wait_for(&s.deployments, "agent", "the Deployment scaled to 0", |d| {
        d.spec.replicas == Some(0)
    })
    .await;
    assert_eq!(annotation(&d.metadata, PAUSED_REPLICAS), Some("2"));
    let tb = s.budgets.get("research").await.unwrap();
    assert_ne!(phase(&tb), Some(BudgetPhase::Exhausted), "no status said so");
    assert!(
        tb.status.as_ref().is_some_and(|st| st
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.reason == "StatusWriteFailed")),
        "the budget says its status is not written"
    );

    // Accepted again: the status catches up.
    policy.remove();
    s.wait_budget("research", "phase Exhausted", |tb| {
        phase(tb) == Some(BudgetPhase::Exhausted)
    })
    .await;
}
