//! Pools: the ClusterTokenBudget controller, and what a TokenBudget's reconcile asks about
//! its pool. What is counted where is in [`crate::usage::pool`]; this module reads the
//! stores (the pools, the namespaces' labels, the budgets) and writes the pool's status.
//!
//! - A child's cycle ([`draw`]) hands its new tokens to its share of the pool, which goes
//!   into the child's own status write; it reads the pool's phase from the pool's status.
//! - The pool's reconcile ([`reconcile`]) sums its children's shares from the budgets' store
//!   (no scraping at this level) and writes the pool's status. Every change of a budget that
//!   names a pool wakes that pool (after the store has it); a change of a pool's phase,
//!   period, spec or `departed` wakes its children.
//!
//! Both sides judge whether the pool accepts a child with one function ([`acceptance`]): the
//! pool never trusts what a child's status says about it.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use futures::{FutureExt, StreamExt, channel::mpsc::UnboundedSender};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};

use super::{
    Context, Error, RESYNC,
    state::BudgetRef,
    status,
    sync::{self, View, WatchHealth},
};
use crate::{
    api::{BudgetPhase, ClusterTokenBudget, ClusterTokenBudgetStatus, ParentShare, TokenBudget},
    conditions::{self, Desired, Status},
    usage::{
        account,
        period::{self, PeriodWindow},
        pool::{self, PoolView, Share},
    },
    validate::{self, ValidBudget},
    workloads,
};

const CONTROLLER: &str = "clustertokenbudget";

/// A ClusterTokenBudget, as its controller and its triggers name it.
pub type PoolRef = ObjectRef<DeserializeGuard<ClusterTokenBudget>>;

/// The stores pools need: the pools, and the namespaces (for their labels). Only an operator
/// over all namespaces has them: one limited to a namespace (`--namespace`) can see neither.
#[derive(Clone)]
pub struct PoolStores {
    pub pools: Store<DeserializeGuard<ClusterTokenBudget>>,
    pub namespaces: Store<Namespace>,
}

/// A pool as the reconciles read it: its object, its validated spec and its current period.
pub struct Pool {
    pub object: Arc<DeserializeGuard<ClusterTokenBudget>>,
    pub spec: Result<ValidBudget, validate::SpecErrors>,
    pub window: Option<PeriodWindow>,
}

impl Pool {
    fn ctb(&self) -> Option<&ClusterTokenBudget> {
        self.object.0.as_ref().ok()
    }

    /// What a child's cycle knows of it: its period, and the shares of the child with `uid`
    /// it keeps.
    fn view(&self, uid: &str) -> PoolView {
        let start = self.window.as_ref().map(|w| w.start.timestamp());
        let departed = self
            .ctb()
            .and_then(|c| c.status.as_ref())
            .and_then(|s| s.departed.as_ref());
        let last = self
            .ctb()
            .and_then(|c| c.status.as_ref())
            .and_then(|s| s.last_period.as_ref());
        let last_period = last.and_then(|l| l.period_start.parse::<Timestamp>().ok());
        PoolView {
            name: self.ctb().map(|c| c.name_any()).unwrap_or_default(),
            period_start: start,
            kept: start.map(|s| pool::kept_for(departed, s, uid)).unwrap_or_default(),
            last_period,
            last_kept: last_period.map(|l| pool::kept_for(last, l, uid)).unwrap_or_default(),
        }
    }

    /// The pool's status, if it describes the current period (a pool not yet reconciled
    /// since its period began says nothing about the new one).
    fn current_status(&self) -> Option<&ClusterTokenBudgetStatus> {
        let start = self.window.as_ref()?.start.timestamp();
        let status = self.ctb()?.status.as_ref()?;
        let written: Timestamp = status.period_start.as_deref()?.parse().ok()?;
        (written == start).then_some(status)
    }
}

impl PoolStores {
    /// The pool `name` at `now`; `None` when there is none (or it cannot be read).
    pub fn pool(&self, name: &str, now: Timestamp) -> Option<Pool> {
        let object = self.pools.get(&PoolRef::new(name))?;
        let ctb = object.0.as_ref().ok()?;
        let spec = validate::budget(&ctb.spec.as_budget_spec());
        let origin = ctb.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
        let window = spec
            .as_ref()
            .ok()
            .map(|v| period::current(v.reset, &v.time_zone, now, origin));
        Some(Pool { object, spec, window })
    }

    fn namespace_labels(&self, namespace: &str) -> Option<std::collections::BTreeMap<String, String>> {
        let ns = self.namespaces.get(&ObjectRef::new(namespace))?;
        Some(ns.metadata.labels.clone().unwrap_or_default())
    }
}

/// Why a pool does not accept a budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    ClusterScopeRequired,
    ParentNotFound,
    ParentInvalid,
    NamespaceNotSelected,
    AnotherChildInNamespace(String),
    Deleting,
}

impl Refusal {
    fn condition(&self, pool: &str, namespace: &str) -> Desired {
        let (reason, message) = match self {
            Refusal::ClusterScopeRequired => (
                "ClusterScopeRequired",
                "the operator watches one namespace (--namespace) and cannot see ClusterTokenBudgets: \
                 pools need an operator over all namespaces; the budget counts only toward its own limits"
                    .to_string(),
            ),
            Refusal::ParentNotFound => (
                "ParentNotFound",
                format!("there is no ClusterTokenBudget {pool}: the budget counts only toward its own limits"),
            ),
            Refusal::ParentInvalid => (
                "ParentInvalid",
                format!(
                    "the ClusterTokenBudget {pool} has an invalid spec: nothing counts toward it until it is fixed"
                ),
            ),
            Refusal::NamespaceNotSelected => (
                "NamespaceNotSelected",
                format!(
                    "the ClusterTokenBudget {pool} does not select namespace {namespace} (its namespaceSelector): \
                     the budget neither counts toward it nor is limited by it"
                ),
            ),
            Refusal::AnotherChildInNamespace(other) => (
                "AnotherChildInNamespace",
                format!(
                    "the budget {other} of this namespace already draws from the ClusterTokenBudget {pool}: \
                     one budget per namespace and pool"
                ),
            ),
            Refusal::Deleting => ("Deleting", "the budget is being deleted".to_string()),
        };
        Desired::new("ParentAccepted", Status::False, reason, message)
    }
}

/// Whether the pool `pool` (`None`: there is none) accepts `tb`: the pool is valid, its
/// selector selects the budget's namespace, the budget is not being deleted, and no older
/// budget of the namespace (by creation, then name) draws from the pool. The one judgement
/// both the child and the pool make.
pub fn acceptance(
    stores: &PoolStores,
    budgets: &Store<DeserializeGuard<TokenBudget>>,
    tb: &TokenBudget,
    pool: Option<&Pool>,
) -> Result<(), Refusal> {
    let pool = pool.ok_or(Refusal::ParentNotFound)?;
    let (Some(ctb), Ok(_)) = (pool.ctb(), &pool.spec) else {
        return Err(Refusal::ParentInvalid);
    };
    if tb.metadata.deletion_timestamp.is_some() {
        return Err(Refusal::Deleting);
    }
    let namespace = tb.namespace().unwrap_or_default();
    let labels = stores.namespace_labels(&namespace);
    if !selects_namespace(&ctb.spec.namespace_selector, labels.as_ref()) {
        return Err(Refusal::NamespaceNotSelected);
    }
    let key = |b: &TokenBudget| (b.metadata.creation_timestamp.as_ref().map(|t| t.0), b.name_any());
    let name = ctb.name_any();
    let first = budgets
        .state()
        .iter()
        .filter_map(|b| b.0.as_ref().ok())
        .filter(|b| b.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|b| b.metadata.deletion_timestamp.is_none())
        .filter(|b| b.spec.parent_ref.as_ref().is_some_and(|p| p.name == name))
        .min_by_key(|b| key(b))
        .map(|b| b.name_any());
    match first {
        Some(first) if first != tb.name_any() => Err(Refusal::AnotherChildInNamespace(first)),
        _ => Ok(()),
    }
}

/// Whether a pool's namespace selector selects a namespace with these labels (`None`: a
/// namespace the operator does not know). `{}` selects every namespace.
pub fn selects_namespace(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> bool {
    let Some(labels) = labels else { return false };
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector.match_expressions.as_ref().is_none_or(|e| e.is_empty());
    empty || workloads::selects(selector, Some(labels))
}

// ---------------------------------------------------------------------------------------------
// The child's side

/// What a budget's reconcile knows of its pool.
pub struct Parent {
    /// The pool named by `spec.parentRef`, or (without one) the pool of the share the budget
    /// still holds.
    pub name: String,
    /// The ParentAccepted condition; `None` when the budget names no pool.
    pub condition: Option<Desired>,
    /// The pool, when it accepts the budget: its spec, and its status of the current period.
    pub accepted: Option<Accepted>,
    /// The pricing of the pool the budget's share belongs to, for `status.parent.used`.
    share_pricing: Option<ValidBudget>,
    /// When the pool's period ends.
    resets_at: Option<String>,
}

/// A pool that accepts the budget.
pub struct Accepted {
    pub spec: ValidBudget,
    /// Its phase, tokens left and percentage, as its status says for the current period.
    pub phase: Option<BudgetPhase>,
    pub remaining_tokens: Option<i64>,
    pub percent_used: Option<i64>,
}

/// One cycle's part for the pool: the tokens the budget's ledger gained since the last cycle
/// go to its share (see [`pool::advance`]). `account` is the budget's account after the
/// cycle's fold; `None` without a cycle (an invalid spec: nothing changes). Called for every
/// budget with a cycle, so that tokens counted while no pool took them are never handed to
/// one later.
pub fn draw(ctx: &Context, tb: &TokenBudget, account: Option<&mut account::Account>, now: Timestamp) -> Option<Parent> {
    let mut account = account;
    let new_tokens = account.as_deref_mut().map(account::Account::new_tokens);
    let share = match account.as_deref() {
        Some(a) => a.share().cloned(),
        None => tb
            .status
            .as_ref()
            .and_then(|s| s.parent.as_ref())
            .and_then(Share::from_status),
    };
    let wanted = tb.spec.parent_ref.as_ref().map(|p| p.name.clone());
    let name = wanted.clone().or_else(|| share.as_ref().map(|s| s.parent.clone()))?;
    let namespace = tb.namespace().unwrap_or_default();
    let uid = tb.uid().unwrap_or_default();
    let Some(stores) = &ctx.pools else {
        // No pools in this install: the share (if any) stays as it is.
        return Some(Parent {
            condition: wanted
                .as_ref()
                .map(|p| Refusal::ClusterScopeRequired.condition(p, &namespace)),
            name,
            accepted: None,
            share_pricing: None,
            resets_at: None,
        });
    };
    let wanted_pool = wanted.as_ref().and_then(|p| stores.pool(p, now));
    let judged = wanted
        .as_ref()
        .map(|_| acceptance(stores, &ctx.budgets, tb, wanted_pool.as_ref()));
    let accepting = wanted_pool.as_ref().filter(|_| matches!(judged, Some(Ok(()))));
    let share_pool = match &share {
        Some(s) if Some(&s.parent) == wanted.as_ref() => wanted_pool.as_ref().map(|p| p.view(&uid)),
        Some(s) => stores.pool(&s.parent, now).map(|p| p.view(&uid)),
        None => None,
    }
    .map(|mut view| {
        // A pool whose spec is invalid has no period: the share waits, it is not let go.
        if view.period_start.is_none() {
            view.period_start = share.as_ref().map(|s| s.period_start);
        }
        view
    });
    if let (Some(account), Some(new)) = (account.as_deref_mut(), &new_tokens) {
        let accepted_view = accepting.map(|p| p.view(&uid));
        let next = pool::advance(share.clone(), accepted_view.as_ref(), share_pool.as_ref(), new, now);
        account.set_share(next);
    }
    let held = account.as_deref().and_then(|a| a.share().cloned()).or(share);
    let share_pricing = match &held {
        Some(s) if Some(&s.parent) == wanted.as_ref() => {
            wanted_pool.as_ref().and_then(|p| p.spec.as_ref().ok().cloned())
        }
        Some(s) => stores.pool(&s.parent, now).and_then(|p| p.spec.ok()),
        None => None,
    };
    let condition = match (&wanted, &judged) {
        (Some(p), Some(Ok(()))) => Some(Desired::new(
            "ParentAccepted",
            Status::True,
            "Accepted",
            format!("the budget's tokens count toward the ClusterTokenBudget {p}, which limits it too"),
        )),
        (Some(p), Some(Err(refusal))) => Some(refusal.condition(p, &namespace)),
        _ => None,
    };
    let accepted = accepting.and_then(|p| {
        let status = p.current_status();
        Some(Accepted {
            spec: p.spec.as_ref().ok()?.clone(),
            phase: status.and_then(|s| s.phase),
            remaining_tokens: status.and_then(|s| s.remaining_tokens),
            percent_used: status.and_then(|s| s.percent_used),
        })
    });
    let resets_at = accepting
        .and_then(|p| p.window.as_ref())
        .and_then(PeriodWindow::resets_at);
    Some(Parent {
        name,
        condition,
        accepted,
        share_pricing,
        resets_at,
    })
}

impl Parent {
    /// `status.parent`: the share the budget holds (from its account after the cycle), with
    /// the pool's state as seen; `None` without a share.
    pub fn share_status(&self, share: Option<&Share>) -> Option<ParentShare> {
        let share = share?;
        let used = match &self.share_pricing {
            Some(spec) => pool::used(spec, &share.models).0,
            None => pool::unpriced(&share.models),
        };
        let accepted = self
            .accepted
            .as_ref()
            .filter(|_| share.counting && share.parent == self.name);
        Some(ParentShare {
            name: share.parent.clone(),
            period_start: share.period_start.to_string(),
            since: share.since_key(),
            used,
            models: pool::to_model_tokens(&share.models),
            counting: share.counting,
            ended: share.ended.as_ref().map(pool::Ended::to_status),
            phase: accepted.and_then(|a| a.phase),
            remaining_tokens: accepted.and_then(|a| a.remaining_tokens),
            percent_used: accepted.and_then(|a| a.percent_used),
            resets_at: accepted.and(self.resets_at.clone()),
        })
    }
}

/// Whether a budget being deleted may let go: the pool keeps its share (or there is nothing
/// to keep: no share, the pool gone or in another period, or no pools in this install).
pub fn departure_settled(ctx: &Context, tb: &TokenBudget, now: Timestamp) -> bool {
    let Some(stores) = &ctx.pools else { return true };
    let Some(share) = tb
        .status
        .as_ref()
        .and_then(|s| s.parent.as_ref())
        .and_then(Share::from_status)
    else {
        return true;
    };
    let Some(pool) = stores.pool(&share.parent, now) else {
        return true;
    };
    let view = pool.view(&tb.uid().unwrap_or_default());
    match view.period_start {
        Some(start) if start == share.period_start => view.kept.get(&share.since_key()) == Some(&share.models),
        // A share of a period that has ended: once that period's entry has it.
        Some(_) => view.keeps_ended(&share),
        // An invalid pool keeps nothing: wait until it is fixed or deleted.
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------
// The pool's side

async fn reconcile(guard: Arc<DeserializeGuard<ClusterTokenBudget>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Ok(ctb) = &guard.0 else {
        tracing::warn!("a ClusterTokenBudget that cannot be read: {:?}", guard.0.as_ref().err());
        return Ok(Action::await_change());
    };
    let Some(stores) = &ctx.pools else {
        return Ok(Action::await_change());
    };
    if ctx.cluster.view() == View::NotListed {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let now = ctx.clock.now();
    let name = ctb.name_any();
    let Some(pool) = stores.pool(&name, now) else {
        return Ok(Action::await_change());
    };
    let new = desired_status(stores, &ctx.budgets, ctb, &pool, now);
    if ctb.status.as_ref() != Some(&new) {
        let api: Api<ClusterTokenBudget> = Api::all(ctx.client.clone());
        status::apply(&ctx, &api, ctb, &new).await?;
    }
    let wake = pool
        .window
        .as_ref()
        .and_then(|w| w.end.as_ref())
        .map(|end| super::budget::wake_for_boundary(ctx.clock.now(), end.timestamp()))
        .map_or(RESYNC, |d| d.min(RESYNC));
    Ok(Action::requeue(wake))
}

/// The pool's status: its children's shares of its current period and what departed children
/// left, priced and measured against its limits. Pure but for the stores it reads.
pub fn desired_status(
    stores: &PoolStores,
    budgets: &Store<DeserializeGuard<TokenBudget>>,
    ctb: &ClusterTokenBudget,
    pool: &Pool,
    now: Timestamp,
) -> ClusterTokenBudgetStatus {
    let existing = ctb.status.clone().unwrap_or_default();
    let (spec, window) = match (&pool.spec, &pool.window) {
        (Ok(spec), Some(window)) => (spec, window),
        (Err(errors), _) => {
            let ready = Desired::new("Ready", Status::False, "InvalidSpec", errors.to_string());
            return ClusterTokenBudgetStatus {
                conditions: conditions::merge(&existing.conditions, &[ready], ctb.metadata.generation, now),
                observed_generation: ctb.metadata.generation,
                ..existing
            };
        }
        (Ok(_), None) => return existing,
    };
    let name = ctb.name_any();
    let children: Vec<pool::Child> = budgets
        .state()
        .iter()
        .filter_map(|b| b.0.as_ref().ok())
        .filter_map(|tb| {
            let names_it = tb.spec.parent_ref.as_ref().is_some_and(|p| p.name == name);
            let share = tb
                .status
                .as_ref()
                .and_then(|s| s.parent.as_ref())
                .filter(|p| p.name == name)
                .and_then(Share::from_status);
            if !names_it && share.is_none() {
                return None;
            }
            let member = names_it && acceptance(stores, budgets, tb, Some(pool)).is_ok();
            Some(pool::Child {
                uid: tb.uid().unwrap_or_default(),
                namespace: tb.namespace().unwrap_or_default(),
                name: tb.name_any(),
                share,
                member,
            })
        })
        .collect();
    let start = window.start.timestamp();
    let (history, last_period) = history(spec, &existing, start, &window.period_start(), &children);
    let aggregate = pool::aggregate(start, existing.departed.as_ref(), &children);
    let total = aggregate.total();
    let (used, cost) = pool::used(spec, &total);
    let (phase, remaining, percent, standing) = account::standing(spec, u64::try_from(used.tokens).unwrap_or(0), cost);
    let (shares, other_shares) = pool::listed_shares(spec, &aggregate);
    let mut desired = vec![Desired::new("Ready", Status::True, "Reconciled", "the pool is valid")];
    desired.extend(standing);
    let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    ClusterTokenBudgetStatus {
        phase: Some(phase),
        used: Some(used),
        remaining_tokens: remaining.map(to_i64),
        percent_used: percent.map(to_i64),
        period_start: Some(window.period_start()),
        resets_at: window.resets_at(),
        children: Some(aggregate.children as i64),
        shares,
        other_shares,
        models: pool::model_usage(spec, &total),
        departed: pool::departed_status(spec, window.period_start(), &aggregate.departed),
        history,
        last_period,
        conditions: conditions::merge(&existing.conditions, &desired, ctb.metadata.generation, now),
        observed_generation: ctb.metadata.generation,
    }
}

/// The pool's `history` and `lastPeriod` at a reconcile in the period starting at `start`
/// (`start_text` as the status writes it). The period that ended last is the one the status
/// was written in (at the first reconcile after the boundary), or else the one `lastPeriod`
/// keeps; its entry is recomputed from every share of it, kept by child and only growing, so
/// the same entry is written again and again until the children's last shares are all in,
/// never a second one. A pool that was never reconciled in an earlier period has none.
fn history(
    spec: &ValidBudget,
    existing: &ClusterTokenBudgetStatus,
    start: Timestamp,
    start_text: &str,
    children: &[pool::Child],
) -> (Vec<crate::api::PoolPeriodSummary>, Option<crate::api::Departed>) {
    let parse = |s: Option<&str>| s.and_then(|s| s.parse::<Timestamp>().ok());
    let written = parse(existing.period_start.as_deref()).filter(|w| *w < start);
    let last = existing
        .last_period
        .as_ref()
        .and_then(|l| Some((parse(Some(&l.period_start))?, l.period_start.clone())))
        .filter(|(l, _)| *l < start);
    let ended = match (written, last) {
        (Some(w), _) => Some((w, existing.period_start.clone().unwrap_or_default())),
        (None, Some(l)) => Some(l),
        (None, None) => None,
    };
    let Some((ended, ended_text)) = ended else {
        return (existing.history.clone(), existing.last_period.clone());
    };
    let previous: Vec<&crate::api::Departed> = existing.last_period.iter().chain(existing.departed.iter()).collect();
    let kept = pool::close(ended, &previous, children);
    // The period ends where the next one starts: the one the pool's status said, when the
    // entry is of the period before this one, else this one.
    let end = existing
        .history
        .iter()
        .find(|e| parse(Some(&e.period_start)) == Some(ended))
        .map(|e| e.period_end.clone())
        .unwrap_or_else(|| start_text.to_string());
    let entry = pool::period_summary(spec, ended_text.clone(), end, &kept);
    let history = pool::record(&existing.history, entry);
    (history, pool::departed_status_always(spec, ended_text, &kept))
}

// ---------------------------------------------------------------------------------------------
// Wiring

/// The pool controller, its store, and the namespaces' store with its driver. `children`
/// wakes the budgets of a pool whose phase, period, spec or `departed` changed, and of a
/// namespace whose labels changed; `budgets` is the budget controller's store.
pub fn start(
    client: &Client,
    pools_health: WatchHealth,
    namespaces_health: WatchHealth,
    budgets: Store<DeserializeGuard<TokenBudget>>,
    children: UnboundedSender<BudgetRef>,
) -> (
    Controller<DeserializeGuard<ClusterTokenBudget>>,
    PoolStores,
    impl Future<Output = ()> + Send + use<>,
) {
    let mut seen: HashMap<String, u64> = HashMap::new();
    let wake_budgets = budgets.clone();
    let wake = children.clone();
    let api: Api<DeserializeGuard<ClusterTokenBudget>> = Api::all(client.clone());
    let controller = super::guarded_controller(api, pools_health, move |event| {
        let (obj, deleted) = match event {
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => (obj, false),
            watcher::Event::Delete(obj) => (obj, true),
            _ => return,
        };
        let Ok(ctb) = &obj.0 else { return };
        let name = ctb.name_any();
        let signature = if deleted { 0 } else { pool_signature(ctb) };
        if seen.insert(name.clone(), signature) != Some(signature) {
            for child in children_of(&wake_budgets, &name) {
                let _ = wake.unbounded_send(child);
            }
        }
        if deleted {
            seen.remove(&name);
        }
    });
    let (namespaces, namespaces_driver) = watch_namespaces(client, namespaces_health, budgets, children);
    let stores = PoolStores {
        pools: controller.store(),
        namespaces,
    };
    (controller, stores, namespaces_driver)
}

/// What, when it changes, wakes a pool's children: its spec, its phase, its period, and the
/// shares it keeps (of this period and of the one that ended last).
fn pool_signature(ctb: &ClusterTokenBudget) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    ctb.metadata.generation.hash(&mut hasher);
    if let Some(status) = &ctb.status {
        format!("{:?}", status.phase).hash(&mut hasher);
        status.period_start.hash(&mut hasher);
        // `lastPeriod` too: a share of the period that ended waits until it is kept there.
        for kept in status.departed.iter().chain(status.last_period.iter()) {
            kept.period_start.hash(&mut hasher);
            for child in &kept.children {
                (&child.uid, &child.since).hash(&mut hasher);
                for m in &child.models {
                    (&m.model, m.input, m.output).hash(&mut hasher);
                }
            }
        }
    }
    hasher.finish()
}

/// The budgets that name the pool or hold a share of it.
fn children_of(budgets: &Store<DeserializeGuard<TokenBudget>>, pool: &str) -> Vec<BudgetRef> {
    budgets
        .state()
        .iter()
        .filter_map(|b| b.0.as_ref().ok())
        .filter(|tb| {
            tb.spec.parent_ref.as_ref().is_some_and(|p| p.name == pool)
                || tb
                    .status
                    .as_ref()
                    .and_then(|s| s.parent.as_ref())
                    .is_some_and(|p| p.name == pool)
        })
        .map(super::state::object_ref)
        .collect()
}

/// The pools a budget's change concerns: the one it names, and the one it holds a share of.
pub fn pools_of(tb: &TokenBudget) -> Vec<PoolRef> {
    let mut pools: Vec<PoolRef> = tb.spec.parent_ref.iter().map(|p| PoolRef::new(&p.name)).collect();
    if let Some(share) = tb.status.as_ref().and_then(|s| s.parent.as_ref())
        && !pools.iter().any(|p| p.name == share.name)
    {
        pools.push(PoolRef::new(&share.name));
    }
    pools
}

/// The namespaces' store (labels only are read; the rest is dropped), driven by the returned
/// future. A namespace whose labels change wakes the budgets in it that draw from a pool.
fn watch_namespaces(
    client: &Client,
    health: WatchHealth,
    budgets: Store<DeserializeGuard<TokenBudget>>,
    children: UnboundedSender<BudgetRef>,
) -> (Store<Namespace>, impl Future<Output = ()> + Send + use<>) {
    let (reader, writer) = reflector::store();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let stream = sync::relisting(Api::<Namespace>::all(client.clone()))
        .modify(|ns| {
            ns.metadata.managed_fields = None;
            ns.metadata.annotations = None;
            ns.spec = None;
            ns.status = None;
        })
        .reflect(writer)
        .inspect(move |event| {
            health.observe(event);
            let Ok(watcher::Event::Apply(ns) | watcher::Event::InitApply(ns)) = event else {
                return;
            };
            let name = ns.name_any();
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            ns.metadata.labels.hash(&mut hasher);
            let signature = hasher.finish();
            if seen.insert(name.clone(), signature).is_some_and(|old| old != signature) {
                for tb in budgets.state().iter().filter_map(|b| b.0.as_ref().ok()) {
                    if tb.namespace().as_deref() == Some(name.as_str()) && !pools_of(tb).is_empty() {
                        let _ = children.unbounded_send(super::state::object_ref(tb));
                    }
                }
            }
        });
    (reader, stream.for_each(|_| async {}))
}

/// Runs the pool controller until `shutdown` resolves.
pub async fn run(
    controller: Controller<DeserializeGuard<ClusterTokenBudget>>,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    super::run_controller(CONTROLLER, controller, ctx, shutdown, |ctb, ctx| {
        reconcile(ctb, ctx).boxed()
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(yaml: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn child(uid: &str, share: Option<Share>) -> pool::Child {
        pool::Child {
            uid: uid.into(),
            namespace: format!("ns-{uid}"),
            name: "team".into(),
            share,
            member: true,
        }
    }

    type Tokens<'a> = &'a [(&'a str, u64, u64)];

    fn share(period: &str, models: Tokens, ended: Option<(&str, Tokens)>) -> Share {
        let totals = |m: Tokens| m.iter().map(|(m, i, o)| (m.to_string(), (*i, *o))).collect();
        Share {
            parent: "rnd".into(),
            period_start: t(period),
            since: t(period),
            models: totals(models),
            counting: true,
            ended: ended.map(|(p, m)| pool::Ended {
                period_start: t(p),
                since: t(p),
                models: totals(m),
            }),
        }
    }

    /// One reconcile's history in the period starting at `start`, written into `status`.
    fn reconcile_history(
        spec: &ValidBudget,
        status: &mut ClusterTokenBudgetStatus,
        start: &str,
        children: &[pool::Child],
    ) {
        let (history, last_period) = history(spec, status, t(start), start, children);
        let aggregate = pool::aggregate(t(start), status.departed.as_ref(), children);
        status.departed = pool::departed_status(spec, start.into(), &aggregate.departed);
        status.history = history;
        status.last_period = last_period;
        status.period_start = Some(start.into());
    }

    #[test]
    fn a_pools_ended_period_is_one_entry_exact_while_its_children_roll_over() {
        const NOV: &str = "2026-11-01T00:00:00Z";
        const DEC: &str = "2026-12-01T00:00:00Z";
        const JAN: &str = "2027-01-01T00:00:00Z";
        let spec = validate::budget(
            &serde_yaml::from_str("limits: {tokens: 1000000}\npricing: [{model: m, input: '1', output: '2'}]").unwrap(),
        )
        .unwrap();
        let mut status = ClusterTokenBudgetStatus::default();
        // November: a and b count; c left, its share kept in `departed`.
        let gone = pool::Child {
            member: false,
            share: Some(Share {
                counting: false,
                ..share(NOV, &[("m", 5, 5)], None)
            }),
            ..child("c", None)
        };
        let november = [
            child("a", Some(share(NOV, &[("m", 100, 0)], None))),
            child("b", Some(share(NOV, &[("m", 40, 0)], None))),
            gone,
        ];
        reconcile_history(&spec, &mut status, NOV, &november);
        assert!(status.history.is_empty(), "nothing has ended");
        assert_eq!(status.departed.as_ref().unwrap().children.len(), 1);
        let c_left = [
            child("a", Some(share(NOV, &[("m", 100, 0)], None))),
            child("b", Some(share(NOV, &[("m", 40, 0)], None))),
        ];
        reconcile_history(&spec, &mut status, NOV, &c_left);
        // December's first reconcile: nobody rolled over yet; `departed` of November goes
        // into the entry and starts again.
        reconcile_history(&spec, &mut status, DEC, &c_left);
        assert_eq!(status.history.len(), 1);
        assert_eq!(
            (
                status.history[0].period_start.as_str(),
                status.history[0].period_end.as_str()
            ),
            (NOV, DEC)
        );
        assert_eq!((status.history[0].used.input, status.history[0].used.output), (145, 5));
        assert_eq!(status.departed, None);
        // a's last cycle of November, written late, then a rolls over; b rolls over.
        let rolled = [
            child("a", Some(share(DEC, &[("m", 1, 0)], Some((NOV, &[("m", 110, 0)]))))),
            child("b", Some(share(DEC, &[("m", 2, 0)], Some((NOV, &[("m", 40, 0)]))))),
        ];
        reconcile_history(&spec, &mut status, DEC, &rolled);
        assert_eq!(status.history.len(), 1, "the same entry, recomputed");
        assert_eq!((status.history[0].used.input, status.history[0].used.output), (155, 5));
        assert_eq!(status.history[0].used.cost.as_deref(), Some("0.000165"));
        assert_eq!(status.history[0].children[0].namespace, "ns-a");
        // b deleted: November keeps it.
        let entry = status.history[0].clone();
        reconcile_history(&spec, &mut status, DEC, &rolled[..1]);
        assert_eq!(status.history, vec![entry.clone()]);
        // January: December's entry, from what the children hold; November's unchanged.
        let january = [child("a", Some(share(JAN, &[], Some((DEC, &[("m", 9, 0)])))))];
        reconcile_history(&spec, &mut status, JAN, &january);
        assert_eq!(status.history.len(), 2);
        assert_eq!(status.history[0].period_start, DEC);
        assert_eq!(status.history[0].used.input, 9);
        assert_eq!(status.history[1], entry);
    }

    #[test]
    fn an_empty_namespace_selector_selects_every_known_namespace() {
        let labels = std::collections::BTreeMap::from([("department".to_string(), "rnd".to_string())]);
        assert!(selects_namespace(&selector("{}"), Some(&labels)));
        assert!(selects_namespace(
            &selector("matchLabels: {department: rnd}"),
            Some(&labels)
        ));
        assert!(!selects_namespace(
            &selector("matchLabels: {department: ops}"),
            Some(&labels)
        ));
        assert!(
            !selects_namespace(&selector("{}"), None),
            "a namespace not known is not selected"
        );
    }
}
