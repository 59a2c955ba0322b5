//! What the controllers keep in memory between reconciles: every budget's account, and what
//! each budget's last cycle saw of its bindings (handed to the binding controller). Keyed by
//! [`ObjectRef`], never by `namespace/name` strings.

use std::{
    collections::HashMap,
    ops::{Deref, DerefMut},
    sync::Mutex,
    time::{Duration, Instant},
};

use futures::channel::mpsc::UnboundedSender;
use jiff::Timestamp;
use kube::{
    Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::reflector::{ObjectRef, Store},
};

use crate::{
    api::{BudgetBinding, TokenBudget},
    metrics::Metrics,
    usage::account::{Account, BindingReport},
};

/// A TokenBudget, as the budget controller and its triggers name it.
pub type BudgetRef = ObjectRef<DeserializeGuard<TokenBudget>>;
/// A BudgetBinding, as the binding controller and its triggers name it.
pub type BindingRef = ObjectRef<DeserializeGuard<BudgetBinding>>;

/// The reference of a budget or binding that the controller reads as `guard`'s kind.
pub fn object_ref<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectRef<DeserializeGuard<K>>
where
    DeserializeGuard<K>: Resource<DynamicType = ()>,
{
    ObjectRef::new(&obj.name_any()).within(&obj.namespace().unwrap_or_default())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every budget's account.
#[derive(Default)]
pub struct Accounts(Mutex<HashMap<BudgetRef, Kept>>, Sweep);

/// How often the sweeps of what the controllers keep, against the stores, run at most.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// When a sweep last ran. Every budget's cycle asks for one, and a sweep reads every key:
/// with 1,000 budgets, a sweep at each cycle would be a million reads a round.
#[derive(Default)]
struct Sweep(Mutex<Option<Instant>>);

impl Sweep {
    /// Whether a sweep is due now; if so, it counts as done.
    fn due(&self) -> bool {
        let mut last = lock(&self.0);
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < SWEEP_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// An account in memory.
struct Kept {
    account: Account,
    /// The leadership term it was opened in ([`crate::controller::leader::Leadership::term`]).
    term: u64,
    /// The `resourceVersion` of the status it resumed from, until a status written from it
    /// has been accepted with that version as precondition.
    resumed_from: Option<String>,
}

impl Accounts {
    /// Takes the account of `budget` (the budget with `uid`) out for one cycle; it goes back
    /// when the lease is dropped. A budget without an account in memory (the operator just
    /// started), whose uid changed (deleted and created again), or whose account was opened
    /// in an earlier leadership `term` (another replica may have counted since), resumes from
    /// what its status persisted. The controller never runs two reconciles of one budget at
    /// once, so nothing else wants the account meanwhile.
    pub fn lease<'a>(&'a self, budget: &TokenBudget, term: u64) -> Lease<'a> {
        let key = object_ref(budget);
        let uid = budget.uid().unwrap_or_default();
        let kept = match lock(&self.0).remove(&key) {
            Some(kept) if kept.account.uid() == uid && kept.term == term => kept,
            _ => Kept {
                account: Account::resume(&uid, budget.status.as_ref()),
                term,
                resumed_from: budget.resource_version(),
            },
        };
        Lease {
            accounts: self,
            key,
            term: kept.term,
            resumed_from: kept.resumed_from,
            discarded: false,
            account: Some(kept.account),
        }
    }

    /// Forgets a deleted budget: its account and its metric series.
    pub fn forget(&self, budget: &BudgetRef, metrics: &Metrics) {
        lock(&self.0).remove(budget);
        metrics.forget_budget(budget.namespace.as_deref().unwrap_or_default(), &budget.name);
    }

    /// Forgets every budget that `budgets` no longer has (a delete missed while a watch
    /// restarted, say), at most once per [`SWEEP_EVERY`]: a deleted budget is forgotten at
    /// once when its deletion is seen ([`Accounts::forget`]).
    pub fn forget_missing(&self, budgets: &Store<DeserializeGuard<TokenBudget>>, metrics: &Metrics) {
        if !self.1.due() {
            return;
        }
        let gone: Vec<BudgetRef> = lock(&self.0)
            .keys()
            .filter(|key| budgets.get(key).is_none())
            .cloned()
            .collect();
        for key in gone {
            self.forget(&key, metrics);
        }
    }
}

/// A budget's account, out of [`Accounts`] for one cycle.
pub struct Lease<'a> {
    accounts: &'a Accounts,
    key: BudgetRef,
    term: u64,
    resumed_from: Option<String>,
    discarded: bool,
    account: Option<Account>,
}

impl Lease<'_> {
    /// The `resourceVersion` of the status this account resumed from, while no status
    /// written from it has been accepted: the next status write must be conditional on it.
    /// A copy of the budget older than the latest (a replica that just took over, whose
    /// cache has not yet seen the last write of the one before) then fails to write instead
    /// of counting again what the newer status already holds.
    pub fn resumed_from(&self) -> Option<&str> {
        self.resumed_from.as_deref()
    }

    /// The leadership term this account was opened in.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// A status written from this account was accepted: it is the budget's latest.
    pub fn confirmed(&mut self) {
        self.resumed_from = None;
    }

    /// The status this account resumed from was not the latest: forget the account, so
    /// that the next cycle resumes from the newer status.
    pub fn discard(&mut self) {
        self.discarded = true;
    }
}

impl Deref for Lease<'_> {
    type Target = Account;

    fn deref(&self) -> &Account {
        self.account.as_ref().expect("a lease holds its account until dropped")
    }
}

impl DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut Account {
        self.account.as_mut().expect("a lease holds its account until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(account) = self.account.take().filter(|_| !self.discarded) {
            let kept = Kept {
                account,
                term: self.term,
                resumed_from: self.resumed_from.take(),
            };
            lock(&self.accounts.0).insert(self.key.clone(), kept);
        }
    }
}

/// What a budget's last cycle saw of one binding.
#[derive(Clone, Debug)]
pub struct BindingUsage {
    /// The budget whose cycle it was: a binding moved to another budget shows nothing of
    /// the old one's.
    pub budget: String,
    pub report: BindingReport,
    pub scraped_at: Timestamp,
    /// The leadership term of the cycle: a binding reads only what this term's cycles saw.
    pub term: u64,
}

/// The hand-over from the budget controller's cycles to the binding controller: the last
/// usage of each binding, and a channel that wakes the binding controller for it. A
/// binding's entry goes with the binding ([`BindingUsages::forget_missing`]), so that what
/// is kept is bounded by the bindings that exist.
pub struct BindingUsages {
    usage: Mutex<HashMap<BindingRef, BindingUsage>>,
    wake: UnboundedSender<BindingRef>,
    swept: Sweep,
}

impl BindingUsages {
    pub fn new(wake: UnboundedSender<BindingRef>) -> Self {
        Self {
            usage: Mutex::default(),
            wake,
            swept: Sweep::default(),
        }
    }

    /// Hands over what a cycle of `budget` in `namespace` saw of its bindings, and wakes
    /// their controller.
    pub fn hand_over(
        &self,
        namespace: &str,
        budget: &str,
        reports: &[BindingReport],
        scraped_at: Timestamp,
        term: u64,
    ) {
        let mut usage = lock(&self.usage);
        for report in reports {
            let binding: BindingRef = ObjectRef::new(&report.name).within(namespace);
            let seen = BindingUsage {
                budget: budget.to_string(),
                report: report.clone(),
                scraped_at,
                term,
            };
            usage.insert(binding.clone(), seen);
            let _ = self.wake.unbounded_send(binding);
        }
    }

    /// What the last cycle of leadership `term` saw of a binding. A cycle of an earlier term
    /// is not shown: another replica may have counted since, and the binding's status shows
    /// what it saw until this replica's first cycle.
    pub fn get(&self, binding: &BindingRef, term: u64) -> Option<BindingUsage> {
        lock(&self.usage).get(binding).filter(|u| u.term == term).cloned()
    }

    /// Forgets every binding that `bindings` no longer has: deleted, or missed while a watch
    /// restarted; at most once per [`SWEEP_EVERY`] (what is kept of a binding is small).
    pub fn forget_missing(&self, bindings: &Store<DeserializeGuard<BudgetBinding>>) {
        if !self.swept.due() {
            return;
        }
        lock(&self.usage).retain(|binding, _| bindings.get(binding).is_some());
    }

    /// The bindings whose usage is kept.
    pub fn len(&self) -> usize {
        lock(&self.usage).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::{reflector, watcher};

    use super::*;

    fn binding(name: &str) -> DeserializeGuard<BudgetBinding> {
        let yaml = format!(
            "apiVersion: tokenbudget.io/v1alpha1\nkind: BudgetBinding\n\
             metadata: {{name: {name}, namespace: agents}}\n\
             spec: {{budgetRef: {{name: b}}, workloads: [{{kind: Deployment, name: d}}]}}"
        );
        DeserializeGuard(Ok(serde_yaml::from_str(&yaml).unwrap()))
    }

    fn report(name: &str) -> BindingReport {
        BindingReport {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_deleted_bindings_usage_is_forgotten() {
        let (wake, _woken) = futures::channel::mpsc::unbounded();
        let usages = BindingUsages::new(wake);
        let now = "2026-11-30T12:00:00Z".parse().unwrap();
        usages.hand_over("agents", "research", &[report("kept"), report("deleted")], now, 0);
        assert_eq!(usages.len(), 2);

        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Apply(binding("kept")));
        usages.forget_missing(&store);
        let key = |name: &str| BindingRef::new(name).within("agents");
        assert!(usages.get(&key("kept"), 0).is_some());
        assert!(usages.get(&key("kept"), 1).is_none(), "a later term does not see it");
        assert!(usages.get(&key("deleted"), 0).is_none());
        assert_eq!(usages.len(), 1);
    }
}
