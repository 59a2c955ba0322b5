//! Two replicas of the operator binary with leader election, against the real API server.
//! One leads, the other stands by with its caches warm. The leader is SIGKILLed, or paused
//! with SIGSTOP past its lease, in the middle of a run while agents spend: the standby takes
//! over within the lease duration and a retry period or two, every token is counted exactly
//! once, and a paused leader that wakes up again writes nothing.
//!
//! The takeover times are printed (`cargo test --test failover -- --nocapture`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokenbudget::api::TokenBudget;

/// Short timings, so that a takeover takes seconds: the lease, the renew deadline, the retry.
const LEASE: Duration = Duration::from_secs(6);
const ELECTION: [&str; 8] = [
    "--leader-election-lease-name",
    "failover",
    "--leader-election-lease-duration",
    "6s",
    "--leader-election-renew-deadline",
    "4s",
    "--leader-election-retry-period",
    "1s",
];
const RETRY: Duration = Duration::from_secs(1);

/// The longest a takeover may take after the leader stops renewing: the standby sees the last
/// renewal within a retry period, takes over a lease duration after it saw it, and looks once
/// a retry period; plus some seconds for the API server and a loaded machine.
const TAKEOVER_BOUND: Duration = Duration::from_secs(LEASE.as_secs() + 2 * RETRY.as_secs() + 4);

fn used(tb: &TokenBudget) -> i64 {
    tb.status
        .as_ref()
        .and_then(|s| s.used.as_ref())
        .map_or(-1, |u| u.tokens)
}

/// A namespace with a budget, a binding and two agent pods, and two operator replicas.
struct Run {
    tenant: Tenant,
    replicas: [Operator; 2],
    leases: Api<Lease>,
    /// Tokens the agents have spent so far.
    spent: i64,
}

impl Run {
    async fn start(test: &str) -> Self {
        let mut tenant = Tenant::new(test).await;
        create(&tenant.budgets, budget("research").tokens(100_000_000)).await;
        create(&tenant.deployments, deployment("agent").replicas(2)).await;
        tenant.run_pods("agent", 2).await;
        create(
            &tenant.bindings,
            binding("agent", "research").deployment("agent").interval("1s"),
        )
        .await;
        let ns = tenant.ns.name.clone();
        let replicas = ["a", "b"].map(|name| Operator::start_replica(&ns, name, &ELECTION));
        for replica in &replicas {
            replica.wait_ready().await;
        }
        let leases = tenant.api();
        let run = Self {
            tenant,
            replicas,
            leases,
            spent: 0,
        };
        wait_scraped(&run.tenant.bindings, "agent", 2).await;
        run
    }

    /// Waits until the Lease names a holder; returns the index of the replica holding it.
    async fn leader(&self) -> usize {
        let lease = wait_for(&self.leases, "failover", "a leader", |lease: &Lease| {
            holder(lease).is_some_and(|h| h.starts_with("a_") || h.starts_with("b_"))
        })
        .await;
        usize::from(holder(&lease).unwrap().starts_with("b_"))
    }

    /// Waits until replica `index` holds the Lease; returns when that was seen.
    async fn wait_leading(&self, index: usize) -> Instant {
        let prefix = ["a_", "b_"][index];
        wait_for(
            &self.leases,
            "failover",
            &format!("replica {prefix} to hold the lease"),
            |lease| holder(lease).is_some_and(|h| h.starts_with(prefix)),
        )
        .await;
        Instant::now()
    }

    /// The agents spend `tokens` between them.
    fn spend(&mut self, tokens: u64) {
        self.tenant.agents[0].spend("gpt-4o-mini", tokens / 2, 0);
        self.tenant.agents[1].spend("gpt-4o-mini", tokens - tokens / 2, 0);
        self.spent += tokens as i64;
    }

    /// Waits until the budget's status shows every token spent, and returns when it did.
    async fn wait_counted(&self) -> Instant {
        let spent = self.spent;
        wait_for(
            &self.tenant.budgets,
            "research",
            &format!("every one of {spent} tokens counted once"),
            move |tb| used(tb) == spent,
        )
        .await;
        Instant::now()
    }

    /// The tokens replica `index`'s chargeback counters hold for the budget.
    fn charged(&self, index: usize) -> f64 {
        let metrics = self.replicas[index].metrics();
        total_of(&metrics, "tokenbudget_tokens_total", "budget=\"research\"")
    }

    /// What replica `index` says on `/readyz`.
    fn role(&self, index: usize) -> String {
        self.replicas[index]
            .get("/readyz")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }
}

fn holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

/// Sends `signal` (`STOP`, `CONT`) to the operator process.
fn signal(operator: &Operator, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &operator.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal}");
}

#[tokio::test]
async fn a_killed_leader_is_replaced_and_every_token_counts_once() {
    let mut run = Run::start("failover-kill").await;
    let leader = run.leader().await;
    let standby = 1 - leader;
    run.spend(1000);
    run.wait_counted().await;
    assert!(run.role(leader).starts_with("ok: leading as"), "{}", run.role(leader));
    assert!(run.role(standby).starts_with("ok: standby as"), "{}", run.role(standby));
    // The standby has written nothing, ever: its reconciles stop before they do anything.
    assert_eq!(
        run.replicas[standby].metric("tokenbudget_last_write_timestamp_seconds"),
        Some(0.0)
    );
    assert_eq!(run.replicas[standby].metric("tokenbudget_leader"), Some(0.0));
    assert_eq!(run.replicas[leader].metric("tokenbudget_leader"), Some(1.0));
    // Nor has it counted anything: only the leader's chargeback counters move.
    assert_eq!(run.charged(standby), 0.0);

    // Tokens spent just before the leader dies: counted by it, or by its successor from the
    // status it left, but once.
    run.spend(500);
    let killed = Instant::now();
    run.replicas[leader].child.kill().expect("SIGKILL");
    run.spend(300);
    let took_over = run.wait_leading(standby).await.duration_since(killed);
    let counted = run.wait_counted().await.duration_since(killed);
    println!("SIGKILL: the standby led after {took_over:?}, its status had every token after {counted:?}");
    assert!(
        took_over <= TAKEOVER_BOUND,
        "took over after {took_over:?}, more than {TAKEOVER_BOUND:?}"
    );
    assert!(run.role(standby).starts_with("ok: leading as"), "{}", run.role(standby));

    run.spend(200);
    run.wait_counted().await;
}

#[tokio::test]
async fn a_paused_leader_is_replaced_and_writes_nothing_when_it_wakes() {
    let mut run = Run::start("failover-pause").await;
    let leader = run.leader().await;
    let standby = 1 - leader;
    run.spend(1000);
    run.wait_counted().await;

    let paused = Instant::now();
    signal(&run.replicas[leader], "STOP");
    run.spend(400);
    let took_over = run.wait_leading(standby).await.duration_since(paused);
    let counted = run.wait_counted().await.duration_since(paused);
    println!("SIGSTOP: the standby led after {took_over:?}, its status had every token after {counted:?}");
    assert!(
        took_over <= TAKEOVER_BOUND,
        "took over after {took_over:?}, more than {TAKEOVER_BOUND:?}"
    );

    // The old leader wakes with an account, reconciles and a lease it thinks it holds, all
    // out of date. Its deadline passed while it slept: it writes nothing, and learns from the
    // Lease that it stands by.
    let woken = jiff::Timestamp::now();
    signal(&run.replicas[leader], "CONT");
    run.spend(250);
    run.wait_counted().await;
    within(
        async {
            while !run.role(leader).starts_with("ok: standby as") {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
        "the woken replica to stand by",
    )
    .await;
    let last_write = run.replicas[leader]
        .metric("tokenbudget_last_write_timestamp_seconds")
        .expect("the old leader's last write");
    assert!(
        last_write < woken.as_millisecond() as f64 / 1000.0,
        "the old leader wrote at {last_write} after it woke at {woken}"
    );
    assert_eq!(run.replicas[leader].metric("tokenbudget_leader"), Some(0.0));
    // Counting goes on, once, with the new leader.
    run.spend(150);
    run.wait_counted().await;

    // Over both replicas, the chargeback counters hold every token once: the old leader's
    // what its accepted writes held, the new one's what it counted from the status it took
    // over (a counter never goes down: passing the total, it would never come back to it).
    let spent = run.spent as f64;
    within(
        async {
            while run.charged(0) + run.charged(1) != spent {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
        &format!("the replicas' counters to hold {spent} tokens"),
    )
    .await;
    println!(
        "chargeback counters: the old leader {}, the new one {}",
        run.charged(leader),
        run.charged(standby)
    );
    assert!(run.charged(leader) >= 1000.0 && run.charged(standby) >= 400.0);
}
