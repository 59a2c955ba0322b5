//! The TokenBudget controller. One reconcile is a pipeline of five steps, each a call into
//! its own module:
//!
//! 1. `observe.rs`: the namespace's workloads from the stores and, for a valid budget, one
//!    accounting cycle (plan, scrapes, fold into the account);
//! 2. `compute.rs`: the desired status and the enforcement plan (pure);
//! 3. `act.rs`: the enforcement writes (quota, workloads, pods);
//! 4. write status: one server-side apply, only when the status changed;
//! 5. `announce.rs`: Events, and the cycle's findings handed to the binding controller.
//!
//! A budget being deleted restores what it changed (`cleanup`) before it lets go of its
//! finalizer.

mod act;
mod announce;
mod compute;
mod observe;
#[cfg(test)]
mod scenarios;

use std::{sync::Arc, time::Duration};

use futures::FutureExt;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{Controller, controller::Action},
};

use super::{
    Context, Error,
    state::{self, BudgetRef},
    status,
};
use crate::{
    api::{TokenBudget, TokenBudgetStatus},
    enforce, validate,
};

pub use compute::wake_for_boundary;

const CONTROLLER: &str = "tokenbudget";

/// How soon to look again when the stores have not synced yet, or a restore is not complete.
const SOON: Duration = Duration::from_secs(1);

/// Whether the budget lives on, or is being deleted (and undoes everything).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Live,
    Deleting,
}

async fn reconcile(guard: Arc<DeserializeGuard<TokenBudget>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Ok(tb) = &guard.0 else {
        return status::report_unreadable(guard.as_ref(), &ctx).await;
    };
    if tb.metadata.deletion_timestamp.is_some() {
        return cleanup(tb, &ctx).await;
    }
    add_finalizer(&ctx, tb).await?;
    let now = ctx.clock.now();
    let spec = validate::budget(&tb.spec);
    let Some(mut observed) = observe::observe(&ctx, tb, spec.as_ref().ok(), now).await else {
        return Ok(Action::requeue(SOON));
    };
    let account = observed.cycle.as_mut().map(|c| &mut *c.account);
    let parent = super::pool::draw(&ctx, tb, account, now);
    let intent = compute::intent(tb, &spec, &mut observed, parent.as_ref(), now);
    if intent.held {
        hold(&ctx, tb, &observed.view);
    }
    let acted = match &intent.plan {
        Some(plan) => Some(act::act(&ctx, tb, plan, Lifecycle::Live, answered(&observed)).await),
        None => None,
    };
    let wake_at = intent
        .plan
        .as_ref()
        .zip(acted.as_ref())
        .and_then(|(p, a)| a.wake_at(p, now));
    let new = compute::status(tb, intent, acted.as_ref(), now);
    let old = tb.status.clone().unwrap_or_default();
    let account = observed.cycle.as_mut().map(|c| &mut c.account);
    if write_status(&ctx, tb, spec.as_ref().ok(), &new, account).await?
        && let Some(cycle) = &observed.cycle
    {
        ctx.metrics.status_delay.observe(cycle.answered.elapsed().as_secs_f64());
    }
    let notices = acted.map(|a| a.notices).unwrap_or_default();
    announce::announce(&ctx, tb, &old, &new, &notices, observed.cycle.as_ref()).await;
    Ok(Action::requeue(compute::requeue(
        observed.cycle.as_ref(),
        wake_at,
        ctx.clock.now(),
    )))
}

/// Step 4: the budget's metrics, then its status, when it changed. The metrics go first, so
/// that whoever sees the new status finds them up to date too; the chargeback counters
/// follow the status accepted ([`charge`]). A write that fails (a status
/// grown too large for etcd, say) is reported on the budget, and fails the reconcile: it is
/// retried with backoff, and nothing is announced that was not recorded. `true` when the
/// status was written.
///
/// The first write from an account resumed from a status is conditional on that status's
/// version ([`state::Lease::resumed_from`]); when it was not the latest, the account is
/// discarded and the retry resumes from the newer one.
async fn write_status(
    ctx: &Context,
    tb: &TokenBudget,
    spec: Option<&validate::ValidBudget>,
    new: &TokenBudgetStatus,
    account: Option<&mut state::Lease<'_>>,
) -> Result<bool, Error> {
    let namespace = namespace(tb)?;
    if let Some(spec) = spec {
        let limit = spec.limit_tokens.and_then(|t| i64::try_from(t).ok());
        ctx.metrics.observe_budget(&namespace, &tb.name_any(), new, limit);
    }
    if tb.status.as_ref() != Some(new) {
        let api = Api::<TokenBudget>::namespaced(ctx.client.clone(), &namespace);
        let resumed_from = account.as_ref().and_then(|a| a.resumed_from().map(str::to_string));
        let written = match &resumed_from {
            Some(version) => status::apply_at_version(ctx, &api, tb, version, new).await,
            None => status::apply(ctx, &api, tb, new).await,
        };
        match (written, account) {
            (Ok(()), Some(account)) => {
                account.confirmed();
                charge(ctx, &namespace, tb, spec, account);
            }
            (Ok(()), None) => {}
            (Err(error), account) => {
                if status::is_conflict(&error)
                    && let Some(account) = account.filter(|_| resumed_from.is_some())
                {
                    tracing::info!(
                        version = resumed_from.as_deref(),
                        "the status this account resumed from was not the latest: resuming again"
                    );
                    account.discard();
                    return Err(error);
                }
                let existing = tb.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
                status::report_failed_write(ctx, &api, tb, existing, &error).await;
                return Err(error);
            }
        }
        return Ok(true);
    }
    if let Some(account) = account {
        charge(ctx, &namespace, tb, spec, account);
    }
    Ok(false)
}

/// What the account counted goes to the chargeback counters once the status that holds it is
/// the budget's (written now, or already stored): a write that fails, is fenced or finds a
/// newer status keeps it out of them, and whoever counts it again from that status counts it
/// once.
fn charge(
    ctx: &Context,
    namespace: &str,
    tb: &TokenBudget,
    spec: Option<&validate::ValidBudget>,
    account: &mut state::Lease<'_>,
) {
    if let Some(spec) = spec {
        let charges = account.take_charges(spec);
        ctx.metrics.charge(namespace, &tb.name_any(), &spec.currency, &charges);
    }
}

/// A deleted budget restores every workload it changed, deletes its quota, and only then
/// lets go of its finalizer.
async fn cleanup(tb: &TokenBudget, ctx: &Context) -> Result<Action, Error> {
    if !has_finalizer(tb) {
        return Ok(Action::await_change());
    }
    // Its share of a pool is kept by the pool before the budget goes: its tokens stay counted
    // there. The budget's deletion has woken the pool.
    if !super::pool::departure_settled(ctx, tb, ctx.clock.now()) {
        return Ok(Action::requeue(SOON));
    }
    match restore_and_let_go(tb, ctx).await? {
        Restore::Done(_) => Ok(Action::await_change()),
        Restore::NotYet { .. } => Ok(Action::requeue(SOON)),
    }
}

/// What [`restore_and_let_go`] came to.
#[derive(Debug)]
pub(crate) enum Restore {
    /// Every workload restored, the quota deleted, the finalizer removed; what was restored.
    Done(Vec<enforce::decide::Notice>),
    /// Not yet: what was restored meanwhile, and why not all: the stores have not listed, a
    /// watch is not current, or writes failed.
    NotYet {
        notices: Vec<enforce::decide::Notice>,
        why: Vec<String>,
    },
}

/// The cleanup of a budget that has the finalizer: restores every workload it changed,
/// deletes its quota, and only then removes the finalizer. A deleted budget's reconcile runs
/// it, and so does `tokenbudget-operator release` (`controller::release`) for every budget
/// before the operator is uninstalled: one code path for both.
pub(crate) async fn restore_and_let_go(tb: &TokenBudget, ctx: &Context) -> Result<Restore, Error> {
    let now = ctx.clock.now();
    // Never decide on a partial view: an empty cache would restore nothing. Nor on a stale
    // one: a workload scaled or a binding created meanwhile would be missed.
    let Some(observed) = observe::observe(ctx, tb, None, now).await else {
        return Ok(Restore::NotYet {
            notices: Vec::new(),
            why: vec!["the caches have not listed yet".into()],
        });
    };
    if !observed.view.is_current() {
        hold(ctx, tb, &observed.view);
        return Ok(Restore::NotYet {
            notices: Vec::new(),
            why: vec![format!("a watch is not current: {:?}", observed.view)],
        });
    }
    let plan = compute::restore_plan(tb, &observed, now);
    let acted = act::act(ctx, tb, &plan, Lifecycle::Deleting, std::time::Instant::now()).await;
    let status = tb.status.clone().unwrap_or_default();
    announce::announce(ctx, tb, &status, &status, &acted.notices, None).await;
    if !acted.complete() {
        return Ok(Restore::NotYet {
            notices: acted.notices,
            why: acted.failures,
        });
    }
    let finalizers = tb
        .finalizers()
        .iter()
        .filter(|f| *f != enforce::FINALIZER)
        .cloned()
        .collect();
    set_finalizers(ctx, tb, finalizers).await?;
    Ok(Restore::Done(acted.notices))
}

/// Says that the budget took no enforcement decision on a stale view, and has it woken once
/// every store is current again.
fn hold(ctx: &Context, tb: &TokenBudget, view: &super::sync::View) {
    ctx.metrics.enforcement_held.inc();
    tracing::debug!(
        ?view,
        "no enforcement decision: a watch has not listed again since it failed"
    );
    ctx.cluster.watches.hold(state::object_ref(tb));
}

pub(crate) fn has_finalizer(tb: &TokenBudget) -> bool {
    tb.finalizers().iter().any(|f| f == enforce::FINALIZER)
}

fn namespace(tb: &TokenBudget) -> Result<String, Error> {
    tb.namespace().ok_or(Error::NoNamespace)
}

/// When the usage that the plan was made on was in; now, without a cycle.
fn answered(observed: &observe::Observed) -> std::time::Instant {
    observed
        .cycle
        .as_ref()
        .map_or_else(std::time::Instant::now, |c| c.answered)
}

/// Adds the finalizer that makes a deleted budget restore its workloads first.
async fn add_finalizer(ctx: &Context, tb: &TokenBudget) -> Result<(), Error> {
    if has_finalizer(tb) {
        return Ok(());
    }
    let mut finalizers = tb.finalizers().to_vec();
    finalizers.push(enforce::FINALIZER.into());
    set_finalizers(ctx, tb, finalizers).await
}

/// Sets the budget's finalizers, conditional on the version read.
async fn set_finalizers(ctx: &Context, tb: &TokenBudget, finalizers: Vec<String>) -> Result<(), Error> {
    let api: Api<TokenBudget> = Api::namespaced(ctx.client.clone(), &namespace(tb)?);
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": tb.resource_version()},
    });
    api.patch_metadata(&tb.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Builds the controller for the TokenBudgets in `api`'s scope. `deleted` hears every budget
/// deleted, to forget its account and metric series; `pools` (with pools) every pool that a
/// change of a budget concerns, once the store has the change.
pub fn controller(
    api: Api<DeserializeGuard<TokenBudget>>,
    health: super::sync::WatchHealth,
    deleted: futures::channel::mpsc::UnboundedSender<BudgetRef>,
    pools: Option<futures::channel::mpsc::UnboundedSender<super::pool::PoolRef>>,
) -> Controller<DeserializeGuard<TokenBudget>> {
    use kube::runtime::watcher::Event;
    super::guarded_controller(api, health, move |event| {
        if let Event::Delete(obj) = event {
            let _ = deleted.unbounded_send(BudgetRef::from_obj(obj));
        }
        if let (Some(pools), Event::Apply(obj) | Event::InitApply(obj) | Event::Delete(obj)) = (&pools, event)
            && let Ok(tb) = &obj.0
        {
            for pool in super::pool::pools_of(tb) {
                let _ = pools.unbounded_send(pool);
            }
        }
    })
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    controller: Controller<DeserializeGuard<TokenBudget>>,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    super::run_controller(CONTROLLER, controller, ctx, shutdown, |tb, ctx| {
        reconcile(tb, ctx).boxed()
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions;

    use jiff::Timestamp;

    fn budget(yaml: &str) -> TokenBudget {
        serde_yaml::from_str(yaml).expect("fixture parses")
    }

    /// The status a budget gets before any accounting cycle.
    fn desired_status(tb: &TokenBudget, now: Timestamp) -> TokenBudgetStatus {
        let mut observed = observe::Observed {
            objects: crate::workloads::Lists::default().namespace("n"),
            holds: Default::default(),
            cycle: None,
            view: crate::controller::sync::View::Current,
        };
        let intent = compute::intent(tb, &validate::budget(&tb.spec), &mut observed, None, now);
        compute::status(tb, intent, None, now)
    }

    const NOW: &str = "2026-11-28T12:00:00Z";

    #[test]
    fn a_valid_budget_is_ready_and_records_its_generation() {
        let tb = budget(
            "apiVersion: tokenbudget.io/v1alpha1\nkind: TokenBudget\nmetadata: {name: b, namespace: n, generation: 3}\nspec: {limits: {tokens: 10}}",
        );
        let status = desired_status(&tb, NOW.parse().unwrap());
        assert_eq!(status.observed_generation, Some(3));
        assert!(conditions::is_true(&status.conditions, "Ready"));
        assert_eq!(status.conditions[0].observed_generation, Some(3));
    }

    #[test]
    fn an_invalid_budget_says_why_and_keeps_its_usage() {
        let tb = budget(
            "apiVersion: tokenbudget.io/v1alpha1\nkind: TokenBudget\nmetadata: {name: b, namespace: n, generation: 1}\n\
             spec: {limits: {cost: '5'}}\nstatus: {used: {tokens: 42, input: 40, output: 2}}",
        );
        let status = desired_status(&tb, NOW.parse().unwrap());
        let ready = conditions::find(&status.conditions, "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InvalidSpec"));
        assert!(ready.message.contains("spec.limits.cost"), "{}", ready.message);
        assert_eq!(status.used.unwrap().tokens, 42);
    }

    #[test]
    fn the_boundary_wakes_the_budget_just_after_it() {
        let end: Timestamp = "2026-11-28T13:00:00Z".parse().unwrap();
        let at = |t: &str| wake_for_boundary(t.parse().unwrap(), end);
        assert_eq!(at("2026-11-28T12:59:58Z"), Duration::from_millis(2050));
        assert_eq!(at("2026-11-28T13:00:00Z"), Duration::from_millis(50));
        // A cycle that outlasted the boundary: the next one at once, not as long again later.
        assert_eq!(at("2026-11-28T13:00:03Z"), Duration::from_millis(50));
    }

    #[test]
    fn reconciling_twice_changes_nothing() {
        let mut tb = budget(
            "apiVersion: tokenbudget.io/v1alpha1\nkind: TokenBudget\nmetadata: {name: b, namespace: n, generation: 1}\nspec: {limits: {tokens: 10}}",
        );
        let first = desired_status(&tb, NOW.parse().unwrap());
        tb.status = Some(first.clone());
        let later = desired_status(&tb, "2026-11-28T13:00:00Z".parse().unwrap());
        assert_eq!(first, later, "an unchanged budget must not cause a status write");
    }
}
