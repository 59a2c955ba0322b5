//! Pools: a ClusterTokenBudget over TokenBudgets of many namespaces. Pure: no client, no
//! clock (the time comes in).
//!
//! What is counted where, exactly once at each level:
//!
//! - A child (a TokenBudget whose `spec.parentRef` names the pool) counts its tokens in its
//!   own ledger, as every budget does. Each cycle, the tokens its ledger gained since the last
//!   cycle ([`crate::usage::account::Account::new_tokens`]) are added to its [`Share`] of the
//!   pool's current period, while the pool accepts it. The share is kept with the ledger in
//!   the account and persisted in `status.parent`, in the same status write as
//!   `status.accounting`: a restarted operator resumes both from one status, so no token is
//!   added to the share twice or lost.
//! - The pool ([`aggregate`]) sums the shares of its period that its children's statuses
//!   hold, plus `departed`: the shares of children that left during the period, kept by
//!   (child uid, share `since`) so that keeping one twice changes nothing.
//! - A child that leaves (deleted, `parentRef` changed or removed, namespace no longer
//!   selected) stops adding to its share, and lets go of it only once the pool keeps it in
//!   `departed` exactly as it is, or the pool's period has ended, or the pool is gone
//!   ([`advance`]).

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use rust_decimal::Decimal;

use super::pricing;
use crate::{
    api::{
        ChildShare, ChildUsage, Departed, DepartedChild, EndedShare, HISTORY_LIMIT, LISTED_SHARES, ModelTokens,
        ModelUsage, OtherShares, ParentShare, PoolPeriodSummary, TokenType, UsedTokens,
    },
    validate::ValidBudget,
};

/// Tokens per model: (input, output).
pub type ModelTotals = BTreeMap<String, (u64, u64)>;

/// A child's share of its pool's current period, as its account keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// The pool.
    pub parent: String,
    /// The start of the pool's period the share counts in.
    pub period_start: Timestamp,
    /// When the share began; with the child's uid, the share's identity.
    pub since: Timestamp,
    pub models: ModelTotals,
    /// Whether tokens are still added to it (the pool accepts the child).
    pub counting: bool,
    /// The child's final share of the pool's period before, kept from the rollover on.
    pub ended: Option<Ended>,
}

/// A child's final share of a pool's period that has ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub period_start: Timestamp,
    pub since: Timestamp,
    pub models: ModelTotals,
}

impl Ended {
    pub fn to_status(&self) -> EndedShare {
        EndedShare {
            period_start: self.period_start.to_string(),
            since: self.since.to_string(),
            models: to_model_tokens(&self.models),
        }
    }
}

impl Share {
    /// The share a status holds; `None` when it cannot be read (then nothing is resumed: a
    /// share written by this operator always reads).
    pub fn from_status(status: &ParentShare) -> Option<Self> {
        Some(Self {
            parent: status.name.clone(),
            period_start: status.period_start.parse().ok()?,
            since: status.since.parse().ok()?,
            models: from_model_tokens(&status.models),
            counting: status.counting,
            ended: status.ended.as_ref().and_then(|e| {
                Some(Ended {
                    period_start: e.period_start.parse().ok()?,
                    since: e.since.parse().ok()?,
                    models: from_model_tokens(&e.models),
                })
            }),
        })
    }

    /// The `since` of the share as the statuses write it.
    pub fn since_key(&self) -> String {
        self.since.to_string()
    }

    fn add(&mut self, tokens: &ModelTotals) {
        add_totals(&mut self.models, tokens);
    }
}

/// What a child's cycle knows of one pool: its current period, and the shares of this child
/// that it keeps in `departed` (by `since`).
#[derive(Clone, Debug, Default)]
pub struct PoolView {
    pub name: String,
    pub period_start: Option<Timestamp>,
    pub kept: HashMap<String, ModelTotals>,
    /// The period that ended last, as the pool's `lastPeriod` keeps it: its start, and the
    /// shares of this child it keeps (by `since`).
    pub last_period: Option<Timestamp>,
    pub last_kept: HashMap<String, ModelTotals>,
}

impl PoolView {
    /// Whether `share`, of a period of this pool that has ended, can be let go: the pool's
    /// `lastPeriod` keeps it exactly, or the pool has moved past that period since (its entry
    /// in `history` is final, nothing more can be added to it).
    pub fn keeps_ended(&self, share: &Share) -> bool {
        match self.last_period {
            Some(last) if last == share.period_start => self.last_kept.get(&share.since_key()) == Some(&share.models),
            Some(last) => last > share.period_start,
            None => false,
        }
    }
}

/// The child's share after one cycle that counted `new` tokens: `share` the share it had,
/// `accepted_by` the pool that accepts it now (if any), `share_pool` what it sees of the pool
/// its share belongs to (`None`: that pool is gone, or unusable), `now` the cycle's time.
///
/// - A share is let go once its pool keeps it exactly (in `departed`), its pool's period has
///   ended, or its pool is gone: then nothing of it can be lost any more.
/// - A share whose pool accepts the child keeps counting (also while the pool keeps it in
///   `departed`: the pool then updates what it keeps, so nothing is lost either).
/// - A share whose pool no longer accepts the child waits, counting nothing, until it is let
///   go. Meanwhile no share of another pool begins (one share at a time): what the child
///   counts then is counted by no pool, never by two.
/// - A child accepted by a pool, without a share, begins one, at `now`, in the pool's period,
///   with this cycle's tokens.
/// - A share whose pool's period ended, of a child the pool no longer accepts, waits, counting
///   nothing, until the pool's `lastPeriod` keeps it exactly ([`PoolView::keeps_ended`]): its
///   tokens belong in that period's `history` entry.
/// - A share whose pool's period ended, followed by a share of the same pool's new period,
///   is kept in the new share as `ended`, final (for the pool's `history`); the share of the
///   period after that replaces it.
pub fn advance(
    share: Option<Share>,
    accepted_by: Option<&PoolView>,
    share_pool: Option<&PoolView>,
    new: &ModelTotals,
    now: Timestamp,
) -> Option<Share> {
    let mut rolled_over: Option<(String, Ended)> = None;
    // An ended share the pool does not keep yet: it waits if no new share takes it over.
    let mut waiting: Option<Share> = None;
    let mut share = share.filter(|share| {
        let Some(pool) = share_pool.filter(|p| p.name == share.parent) else {
            return false;
        };
        let ended = pool.period_start != Some(share.period_start);
        let kept = pool.kept.get(&share.since_key()) == Some(&share.models);
        if ended && !kept {
            let last = Ended {
                period_start: share.period_start,
                since: share.since,
                models: share.models.clone(),
            };
            rolled_over = Some((share.parent.clone(), last));
            if !pool.keeps_ended(share) {
                waiting = Some(share.clone());
            }
        }
        !(ended || kept)
    });
    // Not accepted by its pool any more: no new share of that pool takes the ended one over.
    if accepted_by.is_none_or(|pool| Some(pool.name.as_str()) != rolled_over.as_ref().map(|(p, _)| p.as_str()))
        && let Some(mut waiting) = waiting
    {
        waiting.counting = false;
        return Some(waiting);
    }
    match (&mut share, accepted_by) {
        (Some(share), Some(pool)) if pool.name == share.parent => {
            share.counting = true;
            share.add(new);
        }
        (Some(share), _) => share.counting = false,
        (None, Some(pool)) => {
            if let Some(period_start) = pool.period_start {
                let ended = rolled_over
                    .take()
                    .filter(|(parent, _)| *parent == pool.name)
                    .map(|(_, ended)| ended);
                let mut begun = Share {
                    parent: pool.name.clone(),
                    period_start,
                    since: now,
                    models: ModelTotals::new(),
                    counting: true,
                    ended,
                };
                begun.add(new);
                share = Some(begun);
            }
        }
        (None, None) => {}
    }
    share
}

/// One child of a pool as the pool's reconcile reads it from the budgets' store.
#[derive(Clone, Debug)]
pub struct Child {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// Its share, when its status holds one of this pool.
    pub share: Option<Share>,
    /// Whether the pool accepts it now: it names the pool, is not being deleted, and the
    /// pool's selector selects its namespace (the pool's own judgement, not the child's).
    pub member: bool,
}

/// What the pool's period adds up to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Aggregate {
    /// The counting shares of accepted children: (namespace, name, tokens per model).
    pub shares: Vec<(String, String, ModelTotals)>,
    /// The shares kept after their children left, this period.
    pub departed: Vec<Kept>,
    /// How many children the pool accepts now.
    pub children: usize,
}

/// A share kept after its child left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub since: String,
    pub models: ModelTotals,
}

impl Aggregate {
    /// Every token of the period: the shares and what departed children left.
    pub fn total(&self) -> ModelTotals {
        let mut total = ModelTotals::new();
        for (_, _, models) in &self.shares {
            add_totals(&mut total, models);
        }
        for kept in &self.departed {
            add_totals(&mut total, &kept.models);
        }
        total
    }
}

/// Sums the pool's period starting at `period_start`: the shares of that period that its
/// accepted children count, and `departed`, the shares of children that left (what the pool
/// kept before, `previous`, when of the same period, updated with what those children's
/// statuses hold now; and the shares of children that left since). A share is counted once:
/// live while its child is accepted and the pool does not keep it yet, kept from the moment
/// its child leaves, whatever happens to the child after.
pub fn aggregate(period_start: Timestamp, previous: Option<&Departed>, children: &[Child]) -> Aggregate {
    let mut departed: Vec<Kept> = previous
        .filter(|d| d.period_start.parse::<Timestamp>().ok() == Some(period_start))
        .map(|d| d.children.iter().map(kept_from_status).collect())
        .unwrap_or_default();
    let mut aggregate = Aggregate::default();
    for child in children {
        aggregate.children += usize::from(child.member);
        let Some(share) = child.share.as_ref().filter(|s| s.period_start == period_start) else {
            continue;
        };
        let since = share.since_key();
        let kept = departed.iter_mut().find(|k| k.uid == child.uid && k.since == since);
        match kept {
            // A share grows only: what the child holds now is at least what was kept.
            Some(kept) => kept.models = max_totals(&kept.models, &share.models),
            None if child.member && share.counting => {
                aggregate
                    .shares
                    .push((child.namespace.clone(), child.name.clone(), share.models.clone()));
            }
            None => departed.push(Kept {
                uid: child.uid.clone(),
                namespace: child.namespace.clone(),
                name: child.name.clone(),
                since,
                models: share.models.clone(),
            }),
        }
    }
    aggregate.departed = departed;
    aggregate
}

/// `used` of these tokens: of the types of `budget`'s `tokenTypes`, each type, and the cost
/// at `budget`'s prices (with pricing); and the exact cost.
pub fn used(budget: &ValidBudget, models: &ModelTotals) -> (UsedTokens, Decimal) {
    let (input, output) = models.values().fold((0u64, 0u64), |(i, o), (mi, mo)| {
        (i.saturating_add(*mi), o.saturating_add(*mo))
    });
    let counts = |t: TokenType| budget.token_types.as_ref().is_none_or(|types| types.contains(&t));
    let tokens = if counts(TokenType::Input) { input } else { 0 }.saturating_add(if counts(TokenType::Output) {
        output
    } else {
        0
    });
    let cost = models
        .iter()
        .filter_map(|(model, (i, o))| budget.prices.cost(model, *i, *o))
        .fold(Decimal::ZERO, Decimal::saturating_add);
    let used = UsedTokens {
        tokens: to_i64(tokens),
        input: to_i64(input),
        output: to_i64(output),
        cost: budget.priced().then(|| pricing::format_money(cost)),
    };
    (used, cost)
}

/// `used` of these tokens without a pool's spec to read (the pool is gone): all types, no
/// cost.
pub fn unpriced(models: &ModelTotals) -> UsedTokens {
    let (input, output) = models.values().fold((0u64, 0u64), |(i, o), (mi, mo)| {
        (i.saturating_add(*mi), o.saturating_add(*mo))
    });
    UsedTokens {
        tokens: to_i64(input.saturating_add(output)),
        input: to_i64(input),
        output: to_i64(output),
        cost: None,
    }
}

/// The pool's `models`: per model, largest (input + output) first, priced.
pub fn model_usage(budget: &ValidBudget, models: &ModelTotals) -> Vec<ModelUsage> {
    let mut usage: Vec<ModelUsage> = models
        .iter()
        .map(|(model, (input, output))| ModelUsage {
            model: model.clone(),
            input: to_i64(*input),
            output: to_i64(*output),
            cost: budget.prices.cost(model, *input, *output).map(pricing::format_money),
        })
        .collect();
    usage.sort_by(|a, b| {
        (b.input + b.output)
            .cmp(&(a.input + a.output))
            .then_with(|| a.model.cmp(&b.model))
    });
    usage
}

/// The pool's `shares` (largest tokens first, at most [`LISTED_SHARES`]) and `otherShares`.
pub fn listed_shares(budget: &ValidBudget, aggregate: &Aggregate) -> (Vec<ChildShare>, Option<OtherShares>) {
    let mut shares: Vec<ChildShare> = aggregate
        .shares
        .iter()
        .map(|(namespace, name, models)| ChildShare {
            namespace: namespace.clone(),
            name: name.clone(),
            used: used(budget, models).0,
        })
        .collect();
    shares.sort_by(|a, b| {
        b.used
            .tokens
            .cmp(&a.used.tokens)
            .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
    });
    let rest = shares.split_off(shares.len().min(LISTED_SHARES));
    let other = (!rest.is_empty()).then(|| {
        let mut models = ModelTotals::new();
        for (namespace, name, m) in &aggregate.shares {
            if rest.iter().any(|r| &r.namespace == namespace && &r.name == name) {
                add_totals(&mut models, m);
            }
        }
        OtherShares {
            children: rest.len() as i64,
            used: used(budget, &models).0,
        }
    });
    (shares, other)
}

/// The pool's `departed`, for its period starting at `period_start` (RFC 3339 as given).
pub fn departed_status(budget: &ValidBudget, period_start: String, kept: &[Kept]) -> Option<Departed> {
    if kept.is_empty() {
        return None;
    }
    let mut total = ModelTotals::new();
    for k in kept {
        add_totals(&mut total, &k.models);
    }
    Some(Departed {
        period_start,
        used: used(budget, &total).0,
        children: kept
            .iter()
            .map(|k| DepartedChild {
                uid: k.uid.clone(),
                namespace: k.namespace.clone(),
                name: k.name.clone(),
                since: k.since.clone(),
                models: to_model_tokens(&k.models),
            })
            .collect(),
    })
}

/// Every share of the pool's period starting at `period_start`, which has ended: what the
/// pool kept of it before (`previous`, when of that period: its `lastPeriod`, or else its
/// `departed` of the period, at the first reconcile after it ended), updated with the
/// children's shares of it (their `parent` while not rolled over, their `parent.ended`
/// after). Kept by (child uid, share `since`), each the larger of what was kept and what the
/// child holds now: a share of an ended period only grows (a status written late), so what
/// the pool kept once stays, whatever becomes of the child.
pub fn close(period_start: Timestamp, previous: &[&Departed], children: &[Child]) -> Vec<Kept> {
    let mut kept: Vec<Kept> = previous
        .iter()
        .find(|d| d.period_start.parse::<Timestamp>().ok() == Some(period_start))
        .map(|d| d.children.iter().map(kept_from_status).collect())
        .unwrap_or_default();
    for child in children {
        let Some(share) = &child.share else { continue };
        let last = std::iter::once((share.since, &share.models))
            .filter(|_| share.period_start == period_start)
            .chain(
                share
                    .ended
                    .iter()
                    .filter(|e| e.period_start == period_start)
                    .map(|e| (e.since, &e.models)),
            );
        for (since, models) in last {
            let since = since.to_string();
            match kept.iter_mut().find(|k| k.uid == child.uid && k.since == since) {
                Some(k) => k.models = max_totals(&k.models, models),
                None => kept.push(Kept {
                    uid: child.uid.clone(),
                    namespace: child.namespace.clone(),
                    name: child.name.clone(),
                    since,
                    models: models.clone(),
                }),
            }
        }
    }
    kept
}

/// The `history` entry of an ended period from every share of it: its totals and models at
/// `budget`'s prices, and its largest children (the shares of one child, by namespace and
/// name, summed).
pub fn period_summary(
    budget: &ValidBudget,
    period_start: String,
    period_end: String,
    kept: &[Kept],
) -> PoolPeriodSummary {
    let mut total = ModelTotals::new();
    let mut per_child: BTreeMap<(String, String), ModelTotals> = BTreeMap::new();
    for k in kept {
        add_totals(&mut total, &k.models);
        add_totals(
            per_child.entry((k.namespace.clone(), k.name.clone())).or_default(),
            &k.models,
        );
    }
    let (used, _) = used(budget, &total);
    let models = super::history::top_models(total.iter().map(|(model, (input, output))| {
        let cost = budget.prices.cost(model, *input, *output);
        let usage = ModelUsage {
            model: model.clone(),
            input: to_i64(*input),
            output: to_i64(*output),
            cost: cost.map(pricing::format_money),
        };
        (usage, cost.unwrap_or_default())
    }));
    let mut children: Vec<(ChildUsage, Decimal)> = per_child
        .into_iter()
        .map(|((namespace, name), models)| {
            let (used, cost) = self::used(budget, &models);
            let child = ChildUsage {
                namespace,
                name,
                tokens: used.tokens,
                cost: used.cost,
            };
            (child, cost)
        })
        .collect();
    children.sort_by(|(a, a_cost), (b, b_cost)| {
        b_cost
            .cmp(a_cost)
            .then_with(|| b.tokens.cmp(&a.tokens))
            .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
    });
    PoolPeriodSummary {
        period_start,
        period_end,
        used,
        currency: budget.currency.clone(),
        models,
        children: children
            .into_iter()
            .take(crate::api::HISTORY_TOP)
            .map(|(c, _)| c)
            .collect(),
    }
}

/// `history` with `entry`: replacing the entry of the same period start (the same instant),
/// else added; newest first, at most [`HISTORY_LIMIT`]. An entry is recomputed whole from
/// `lastPeriod`, never added to: writing it twice changes nothing.
pub fn record(history: &[PoolPeriodSummary], entry: PoolPeriodSummary) -> Vec<PoolPeriodSummary> {
    let started = |e: &PoolPeriodSummary| e.period_start.parse::<Timestamp>().ok();
    let at = started(&entry);
    let mut history: Vec<PoolPeriodSummary> = history.iter().filter(|e| started(e) != at).cloned().collect();
    history.push(entry);
    history.sort_by_key(|e| std::cmp::Reverse(started(e)));
    history.truncate(HISTORY_LIMIT);
    history
}

/// [`departed_status`], also when nothing is kept: `lastPeriod` says which period it is of.
pub fn departed_status_always(budget: &ValidBudget, period_start: String, kept: &[Kept]) -> Option<Departed> {
    departed_status(budget, period_start.clone(), kept).or(Some(Departed {
        period_start,
        used: used(budget, &ModelTotals::new()).0,
        children: Vec::new(),
    }))
}

/// The shares of the child with `uid` that the pool's `departed` keeps, by `since`; only
/// when of the pool's period starting at `period_start`.
pub fn kept_for(departed: Option<&Departed>, period_start: Timestamp, uid: &str) -> HashMap<String, ModelTotals> {
    departed
        .filter(|d| d.period_start.parse::<Timestamp>().ok() == Some(period_start))
        .map(|d| {
            d.children
                .iter()
                .filter(|c| c.uid == uid)
                .map(|c| (c.since.clone(), from_model_tokens(&c.models)))
                .collect()
        })
        .unwrap_or_default()
}

fn kept_from_status(child: &DepartedChild) -> Kept {
    Kept {
        uid: child.uid.clone(),
        namespace: child.namespace.clone(),
        name: child.name.clone(),
        since: child.since.clone(),
        models: from_model_tokens(&child.models),
    }
}

/// Tokens per model as the statuses list them.
pub fn to_model_tokens(models: &ModelTotals) -> Vec<ModelTokens> {
    models
        .iter()
        .map(|(model, (input, output))| ModelTokens {
            model: model.clone(),
            input: to_i64(*input),
            output: to_i64(*output),
        })
        .collect()
}

/// Tokens per model from a status; negative numbers read as 0.
pub fn from_model_tokens(models: &[ModelTokens]) -> ModelTotals {
    let mut totals = ModelTotals::new();
    for m in models {
        let entry = totals.entry(m.model.clone()).or_default();
        entry.0 = entry.0.saturating_add(u64::try_from(m.input).unwrap_or(0));
        entry.1 = entry.1.saturating_add(u64::try_from(m.output).unwrap_or(0));
    }
    totals
}

/// `into += add`, per model.
pub fn add_totals(into: &mut ModelTotals, add: &ModelTotals) {
    for (model, (input, output)) in add {
        let entry = into.entry(model.clone()).or_default();
        entry.0 = entry.0.saturating_add(*input);
        entry.1 = entry.1.saturating_add(*output);
    }
}

/// What `now` has that `before` had not, per model (never negative).
pub fn difference(now: &ModelTotals, before: &ModelTotals) -> ModelTotals {
    now.iter()
        .filter_map(|(model, (input, output))| {
            let (bi, bo) = before.get(model).copied().unwrap_or_default();
            let gained = (input.saturating_sub(bi), output.saturating_sub(bo));
            (gained != (0, 0)).then(|| (model.clone(), gained))
        })
        .collect()
}

fn max_totals(a: &ModelTotals, b: &ModelTotals) -> ModelTotals {
    let mut max = a.clone();
    for (model, (input, output)) in b {
        let entry = max.entry(model.clone()).or_default();
        entry.0 = entry.0.max(*input);
        entry.1 = entry.1.max(*output);
    }
    max
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::TokenBudgetSpec, validate};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn totals(models: &[(&str, u64, u64)]) -> ModelTotals {
        models.iter().map(|(m, i, o)| (m.to_string(), (*i, *o))).collect()
    }

    const NOVEMBER: &str = "2026-11-01T00:00:00Z";
    const DECEMBER: &str = "2026-12-01T00:00:00Z";

    fn pool(name: &str, period: &str) -> PoolView {
        PoolView {
            name: name.into(),
            period_start: Some(t(period)),
            ..Default::default()
        }
    }

    fn child(uid: &str, share: Option<Share>, member: bool) -> Child {
        Child {
            uid: uid.into(),
            namespace: format!("ns-{uid}"),
            name: "team".into(),
            share,
            member,
        }
    }

    fn share(parent: &str, period: &str, since: &str, models: &[(&str, u64, u64)], counting: bool) -> Share {
        Share {
            parent: parent.into(),
            period_start: t(period),
            since: t(since),
            models: totals(models),
            counting,
            ended: None,
        }
    }

    fn budget(yaml: &str) -> ValidBudget {
        let spec: TokenBudgetSpec = serde_yaml::from_str(yaml).unwrap();
        validate::budget(&spec).unwrap()
    }

    #[test]
    fn a_share_begins_when_accepted_and_adds_each_cycles_new_tokens() {
        let rnd = pool("rnd", NOVEMBER);
        let now = t("2026-11-10T12:00:00Z");
        let new = totals(&[("m", 10, 5)]);
        assert_eq!(advance(None, None, None, &new, now), None, "not accepted: no share");
        let first = advance(None, Some(&rnd), Some(&rnd), &new, now).unwrap();
        assert_eq!(
            first,
            share("rnd", NOVEMBER, "2026-11-10T12:00:00Z", &[("m", 10, 5)], true)
        );
        let later = t("2026-11-10T12:00:15Z");
        let second = advance(
            Some(first),
            Some(&rnd),
            Some(&rnd),
            &totals(&[("m", 1, 2), ("n", 3, 0)]),
            later,
        );
        assert_eq!(
            second.unwrap(),
            share(
                "rnd",
                NOVEMBER,
                "2026-11-10T12:00:00Z",
                &[("m", 11, 7), ("n", 3, 0)],
                true
            ),
            "the share keeps its since and adds"
        );
    }

    #[test]
    fn the_pools_period_rolling_over_starts_a_new_share_with_the_cycles_tokens() {
        // A monthly pool over a daily child: the child's own period plays no part.
        let old = share("rnd", NOVEMBER, "2026-11-02T00:00:00Z", &[("m", 900, 100)], true);
        let rnd = pool("rnd", DECEMBER);
        let now = t("2026-12-01T00:00:00.050Z");
        let new = advance(Some(old), Some(&rnd), Some(&rnd), &totals(&[("m", 7, 0)]), now).unwrap();
        assert_eq!(
            Share { ended: None, ..new },
            share("rnd", DECEMBER, "2026-12-01T00:00:00.050Z", &[("m", 7, 0)], true),
            "the old share's final tokens are kept in `ended` (see below)"
        );
    }

    #[test]
    fn a_share_left_behind_waits_until_the_pool_keeps_it_exactly() {
        let mut rnd = pool("rnd", NOVEMBER);
        let left = share("rnd", NOVEMBER, "2026-11-02T00:00:00Z", &[("m", 900, 100)], true);
        let now = t("2026-11-10T00:00:00Z");
        let new = totals(&[("m", 5, 5)]);
        // No longer accepted (namespace not selected, parentRef changed, deleted): it counts
        // nothing more and waits.
        let waiting = advance(Some(left.clone()), None, Some(&rnd), &new, now).unwrap();
        assert_eq!(
            waiting,
            Share {
                counting: false,
                ..left.clone()
            }
        );
        // Accepted by another pool meanwhile: still one share at a time.
        let other = pool("ops", NOVEMBER);
        assert_eq!(
            advance(Some(waiting.clone()), Some(&other), Some(&rnd), &new, now),
            Some(waiting.clone())
        );
        // Kept, but not all of it (an older status of the child): wait on.
        rnd.kept.insert(left.since_key(), totals(&[("m", 800, 100)]));
        assert_eq!(
            advance(Some(waiting.clone()), None, Some(&rnd), &new, now),
            Some(waiting.clone())
        );
        // Kept exactly: let go, and a share of the other pool begins with this cycle's tokens.
        rnd.kept.insert(left.since_key(), totals(&[("m", 900, 100)]));
        assert_eq!(advance(Some(waiting.clone()), None, Some(&rnd), &new, now), None);
        let begun = advance(Some(waiting.clone()), Some(&other), Some(&rnd), &new, now).unwrap();
        assert_eq!(
            begun,
            share("ops", NOVEMBER, "2026-11-10T00:00:00Z", &[("m", 5, 5)], true)
        );
        // The pool gone: nothing left to keep it for.
        assert_eq!(advance(Some(waiting.clone()), None, None, &new, now), None);
    }

    #[test]
    fn a_share_of_an_ended_period_left_behind_waits_until_that_periods_entry_keeps_it() {
        // The child stopped being accepted (deleted, namespace no longer selected, parentRef
        // changed) at its first cycle after the pool's boundary: its November tokens belong in
        // November's history entry, which the pool closes from `lastPeriod`.
        let left = share("rnd", NOVEMBER, "2026-11-02T00:00:00Z", &[("m", 900, 100)], true);
        let now = t("2026-12-01T00:00:05Z");
        let new = totals(&[("m", 5, 5)]);
        let mut rnd = pool("rnd", DECEMBER);
        let waiting = Share {
            counting: false,
            ..left.clone()
        };
        // December's first reconcile of the pool has not run yet, or kept less.
        assert_eq!(
            advance(Some(left.clone()), None, Some(&rnd), &new, now),
            Some(waiting.clone())
        );
        rnd.last_period = Some(t(NOVEMBER));
        rnd.last_kept.insert(left.since_key(), totals(&[("m", 800, 100)]));
        assert_eq!(
            advance(Some(waiting.clone()), None, Some(&rnd), &new, now),
            Some(waiting.clone())
        );
        // Accepted by another pool meanwhile: the November share still comes first.
        let ops = pool("ops", DECEMBER);
        assert_eq!(
            advance(Some(waiting.clone()), Some(&ops), Some(&rnd), &new, now),
            Some(waiting.clone())
        );
        // Kept exactly: let go.
        rnd.last_kept.insert(left.since_key(), totals(&[("m", 900, 100)]));
        assert!(rnd.keeps_ended(&left));
        assert_eq!(advance(Some(waiting.clone()), None, Some(&rnd), &new, now), None);
        // The pool past that period since (January): its entry is final, let go.
        let later = PoolView {
            last_period: Some(t(DECEMBER)),
            ..pool("rnd", "2027-01-01T00:00:00Z")
        };
        assert_eq!(advance(Some(waiting), None, Some(&later), &new, now), None);
        // Still accepted by the same pool: rolled over into the new share's `ended` at once.
        let rolled = advance(
            Some(left.clone()),
            Some(&pool("rnd", DECEMBER)),
            Some(&pool("rnd", DECEMBER)),
            &new,
            now,
        )
        .unwrap();
        assert_eq!(rolled.period_start, t(DECEMBER));
        assert_eq!(rolled.ended.map(|e| e.models), Some(left.models));
    }

    #[test]
    fn a_share_kept_while_its_child_is_accepted_again_goes_on_counting() {
        // The pool kept the share while the child was briefly not accepted; the child is
        // accepted again before it saw that: it adds on, and the pool updates what it keeps.
        let mut rnd = pool("rnd", NOVEMBER);
        let s = share("rnd", NOVEMBER, "2026-11-02T00:00:00Z", &[("m", 10, 0)], false);
        rnd.kept.insert(s.since_key(), totals(&[("m", 9, 0)]));
        let now = t("2026-11-03T00:00:00Z");
        let on = advance(Some(s), Some(&rnd), Some(&rnd), &totals(&[("m", 1, 0)]), now).unwrap();
        assert_eq!(on.models, totals(&[("m", 11, 0)]));
        assert!(on.counting);
    }

    #[test]
    fn the_pool_sums_its_childrens_shares_of_its_period_and_what_departed_children_left() {
        let nov = t(NOVEMBER);
        let children = [
            child(
                "a",
                Some(share("rnd", NOVEMBER, NOVEMBER, &[("m", 100, 10)], true)),
                true,
            ),
            child(
                "b",
                Some(share("rnd", NOVEMBER, NOVEMBER, &[("m", 5, 0), ("n", 1, 1)], true)),
                true,
            ),
            // A share of the period before: not this period's.
            child(
                "c",
                Some(share("rnd", "2026-10-01T00:00:00Z", NOVEMBER, &[("m", 1000, 0)], true)),
                true,
            ),
            // Accepted, no share yet.
            child("d", None, true),
            // Not accepted, never counted: nothing to keep, and not a child.
            child("e", None, false),
        ];
        let aggregate = aggregate(nov, None, &children);
        assert_eq!(aggregate.children, 4);
        assert_eq!(aggregate.shares.len(), 2);
        assert!(aggregate.departed.is_empty());
        assert_eq!(aggregate.total(), totals(&[("m", 105, 10), ("n", 1, 1)]));
    }

    #[test]
    fn a_child_that_leaves_keeps_its_tokens_in_the_pool_once_and_only_once() {
        let nov = t(NOVEMBER);
        let a = share("rnd", NOVEMBER, NOVEMBER, &[("m", 100, 10)], true);
        let b = share("rnd", NOVEMBER, NOVEMBER, &[("m", 50, 0)], true);
        let before = aggregate(
            nov,
            None,
            &[child("a", Some(a.clone()), true), child("b", Some(b.clone()), true)],
        );
        // `a` leaves (deleted, say): the pool no longer accepts it, its share is kept.
        let leaving = Share {
            counting: false,
            ..a.clone()
        };
        let left = aggregate(
            nov,
            None,
            &[
                child("a", Some(leaving.clone()), false),
                child("b", Some(b.clone()), true),
            ],
        );
        assert_eq!(left.total(), before.total(), "no token vanishes");
        assert_eq!(left.children, 1);
        assert_eq!(left.departed.len(), 1);
        let budget = budget("limits: {tokens: 1000}");
        let kept = departed_status(&budget, NOVEMBER.into(), &left.departed);
        // Kept again (the same child seen again, or the child gone): the same total.
        for children in [
            vec![
                child("a", Some(leaving.clone()), false),
                child("b", Some(b.clone()), true),
            ],
            vec![child("b", Some(b.clone()), true)],
            // The child accepted again with the same share: kept, never counted live too.
            vec![child("a", Some(a.clone()), true), child("b", Some(b.clone()), true)],
        ] {
            let again = aggregate(nov, kept.as_ref(), &children);
            assert_eq!(again.total(), before.total());
            assert_eq!(again.departed.len(), 1);
        }
        // The child's share grew after it was kept (its last status came after): what is kept
        // follows it.
        let grown = Share {
            models: totals(&[("m", 120, 10)]),
            ..leaving
        };
        let again = aggregate(
            nov,
            kept.as_ref(),
            &[child("a", Some(grown), false), child("b", Some(b), true)],
        );
        assert_eq!(again.total(), totals(&[("m", 170, 10)]));
        // In the pool's next period, nothing of it is left.
        let december = aggregate(t(DECEMBER), kept.as_ref(), &[]);
        assert_eq!(december.total(), ModelTotals::new());
        // What a child reads of it.
        let for_a = kept_for(kept.as_ref(), nov, "a");
        assert_eq!(for_a.get(&a.since_key()), Some(&totals(&[("m", 100, 10)])));
        assert!(kept_for(kept.as_ref(), t(DECEMBER), "a").is_empty());
        assert!(kept_for(kept.as_ref(), nov, "b").is_empty());
    }

    #[test]
    fn used_counts_the_pools_token_types_and_prices() {
        let budget =
            budget("limits: {tokens: 1000}\ntokenTypes: [output]\npricing: [{model: m, input: '1', output: '2'}]");
        let (used, cost) = used(&budget, &totals(&[("m", 1_000_000, 500_000), ("free", 7, 3)]));
        assert_eq!((used.tokens, used.input, used.output), (500_003, 1_000_007, 500_003));
        assert_eq!(used.cost.as_deref(), Some("2.00"));
        assert_eq!(cost, Decimal::from(2));
    }

    #[test]
    fn at_most_twenty_shares_are_listed_and_the_rest_summed() {
        let budget = budget("limits: {tokens: 1000}");
        let aggregate = Aggregate {
            shares: (0..25u64)
                .map(|i| (format!("ns-{i:02}"), "team".to_string(), totals(&[("m", i + 1, 0)])))
                .collect(),
            ..Default::default()
        };
        let (listed, other) = listed_shares(&budget, &aggregate);
        assert_eq!(listed.len(), 20);
        assert_eq!(listed[0].namespace, "ns-24");
        let other = other.unwrap();
        // The five smallest: 1 + 2 + 3 + 4 + 5.
        assert_eq!((other.children, other.used.tokens), (5, 15));
    }

    #[test]
    fn rolling_over_keeps_the_final_share_of_the_ended_period_in_the_new_one() {
        let old = share("rnd", NOVEMBER, "2026-11-02T00:00:00Z", &[("m", 900, 100)], true);
        let rnd = pool("rnd", DECEMBER);
        let now = t("2026-12-01T00:00:00.050Z");
        let new = advance(Some(old), Some(&rnd), Some(&rnd), &totals(&[("m", 7, 0)]), now).unwrap();
        let ended = Ended {
            period_start: t(NOVEMBER),
            since: t("2026-11-02T00:00:00Z"),
            models: totals(&[("m", 900, 100)]),
        };
        assert_eq!(new.ended, Some(ended.clone()), "the new share carries the old, final");
        assert_eq!(
            new.models,
            totals(&[("m", 7, 0)]),
            "the cycle's tokens count in the new period"
        );
        // Later cycles of the period keep it as it is.
        let later = advance(Some(new), Some(&rnd), Some(&rnd), &totals(&[("m", 1, 0)]), now).unwrap();
        assert_eq!(later.ended, Some(ended.clone()));
        // Through the status, and back.
        let status = ParentShare {
            name: "rnd".into(),
            period_start: later.period_start.to_string(),
            since: later.since_key(),
            models: to_model_tokens(&later.models),
            ended: later.ended.as_ref().map(Ended::to_status),
            ..Default::default()
        };
        assert_eq!(Share::from_status(&status).unwrap().ended, Some(ended));
        // The next rollover replaces it with the share of December.
        let january = pool("rnd", "2027-01-01T00:00:00Z");
        let next = advance(
            Some(later.clone()),
            Some(&january),
            Some(&january),
            &totals(&[]),
            t("2027-01-01T00:00:01Z"),
        )
        .unwrap();
        assert_eq!(next.ended.unwrap().models, totals(&[("m", 8, 0)]));
        // A share rolled into another pool's period carries nothing over.
        let ops = pool("ops", "2027-01-01T00:00:00Z");
        let moved = advance(Some(later), Some(&ops), None, &totals(&[]), t("2027-01-01T00:00:01Z")).unwrap();
        assert_eq!(moved.ended, None);
    }

    type Tokens<'a> = &'a [(&'a str, u64, u64)];

    fn departed(period: &str, kept: &[(&str, &str, Tokens)]) -> Departed {
        Departed {
            period_start: period.into(),
            used: UsedTokens::default(),
            children: kept
                .iter()
                .map(|(uid, since, models)| DepartedChild {
                    uid: (*uid).into(),
                    namespace: format!("ns-{uid}"),
                    name: "team".into(),
                    since: t(since).to_string(),
                    models: to_model_tokens(&totals(models)),
                })
                .collect(),
        }
    }

    fn sum(kept: &[Kept]) -> ModelTotals {
        let mut total = ModelTotals::new();
        for k in kept {
            add_totals(&mut total, &k.models);
        }
        total
    }

    #[test]
    fn an_ended_period_sums_shares_not_rolled_over_those_rolled_over_and_departed() {
        let nov = t(NOVEMBER);
        let rolled = Share {
            ended: Some(Ended {
                period_start: nov,
                since: nov,
                models: totals(&[("m", 100, 10)]),
            }),
            ..share("rnd", DECEMBER, DECEMBER, &[("m", 3, 0)], true)
        };
        let children = [
            // Rolled over: its November is in `ended`, its December counts nothing here.
            child("a", Some(rolled), true),
            // Not rolled over yet: its share is November's.
            child("b", Some(share("rnd", NOVEMBER, NOVEMBER, &[("m", 50, 0)], true)), true),
            // A share of October, and one without a share: nothing of November.
            child(
                "c",
                Some(share("rnd", "2026-10-01T00:00:00Z", NOVEMBER, &[("m", 1000, 0)], true)),
                true,
            ),
            child("d", None, true),
        ];
        // `departed` of November: a child gone before the end.
        let gone = departed(NOVEMBER, &[("e", NOVEMBER, &[("n", 7, 7)])]);
        let kept = close(nov, &[&gone], &children);
        assert_eq!(sum(&kept), totals(&[("m", 150, 10), ("n", 7, 7)]));
        // `departed` of another period is not November's.
        let october = departed("2026-10-01T00:00:00Z", &[("e", NOVEMBER, &[("n", 7, 7)])]);
        assert_eq!(sum(&close(nov, &[&october], &children)), totals(&[("m", 150, 10)]));
    }

    #[test]
    fn what_the_pool_kept_of_an_ended_period_only_grows() {
        let nov = t(NOVEMBER);
        let budget = budget("limits: {tokens: 1000}");
        let b = share("rnd", NOVEMBER, NOVEMBER, &[("m", 50, 0)], true);
        let first = close(nov, &[], &[child("b", Some(b.clone()), true)]);
        let kept = departed_status_always(&budget, NOVEMBER.into(), &first).unwrap();
        // Seen again: the same. Its last status of November, late, with more: the more.
        assert_eq!(
            sum(&close(nov, &[&kept], &[child("b", Some(b.clone()), true)])),
            sum(&first)
        );
        let late = share("rnd", NOVEMBER, NOVEMBER, &[("m", 60, 0)], true);
        let grown = close(nov, &[&kept], &[child("b", Some(late), true)]);
        assert_eq!(sum(&grown), totals(&[("m", 60, 0)]));
        let kept = departed_status_always(&budget, NOVEMBER.into(), &grown).unwrap();
        // Deleted since, or rolled over twice (its November gone from its status): still there.
        assert_eq!(sum(&close(nov, &[&kept], &[])), totals(&[("m", 60, 0)]));
        let january = share("rnd", "2027-01-01T00:00:00Z", NOVEMBER, &[], true);
        assert_eq!(
            sum(&close(nov, &[&kept], &[child("b", Some(january), true)])),
            totals(&[("m", 60, 0)])
        );
        // `lastPeriod` comes before `departed`: a share both keep counts once.
        let gone = departed(NOVEMBER, &[("b", NOVEMBER, &[("m", 50, 0)])]);
        assert_eq!(sum(&close(nov, &[&kept, &gone], &[])), totals(&[("m", 60, 0)]));
    }

    #[test]
    fn a_period_summary_lists_the_largest_models_and_children_and_adds_up() {
        let budget = budget(
            "limits: {tokens: 1000}\ncurrency: EUR\npricing: [{model: cheap, input: '1', output: '1'}, {model: dear, input: '10', output: '10'}]",
        );
        let mut kept: Vec<Kept> = (0..12u64)
            .map(|i| Kept {
                uid: format!("u{i}"),
                namespace: format!("ns-{i:02}"),
                name: "team".into(),
                since: NOVEMBER.into(),
                models: totals(&[("cheap", (i + 1) * 1_000_000, 0)]),
            })
            .collect();
        // One child with two shares in the period (it left and came back): one child.
        kept.push(Kept {
            uid: "u0".into(),
            namespace: "ns-00".into(),
            name: "team".into(),
            since: "2026-11-15T00:00:00Z".into(),
            models: totals(&[("dear", 1_000_000, 1_000_000)]),
        });
        let entry = period_summary(&budget, NOVEMBER.into(), DECEMBER.into(), &kept);
        assert_eq!(
            (entry.period_start.as_str(), entry.period_end.as_str()),
            (NOVEMBER, DECEMBER)
        );
        assert_eq!(entry.currency, "EUR");
        assert_eq!(entry.used.tokens, 78_000_000 + 2_000_000);
        assert_eq!(entry.used.cost.as_deref(), Some("98.00"));
        let models: Vec<_> = entry
            .models
            .iter()
            .map(|m| (m.model.as_str(), m.cost.as_deref()))
            .collect();
        assert_eq!(
            models,
            [("cheap", Some("78.00")), ("dear", Some("20.00"))],
            "by cost first"
        );
        assert_eq!(entry.children.len(), 10);
        // ns-00: 1 + 20 = 21 EUR, the largest by cost; then ns-11 (12), ns-10 (11), ...
        assert_eq!(
            (entry.children[0].namespace.as_str(), entry.children[0].cost.as_deref()),
            ("ns-00", Some("21.00"))
        );
        assert_eq!(entry.children[1].namespace, "ns-11");
        assert_eq!(entry.children[9].namespace, "ns-03");
    }

    fn entry(start: &str, tokens: i64) -> PoolPeriodSummary {
        PoolPeriodSummary {
            period_start: start.into(),
            period_end: String::new(),
            used: UsedTokens {
                tokens,
                ..Default::default()
            },
            currency: "USD".into(),
            models: Vec::new(),
            children: Vec::new(),
        }
    }

    #[test]
    fn history_is_newest_first_once_per_period_and_bounded() {
        let mut history = Vec::new();
        for month in 1..=12 {
            history = record(&history, entry(&format!("2026-{month:02}-01T00:00:00Z"), month));
        }
        assert_eq!(history.len(), HISTORY_LIMIT);
        assert_eq!(history[0].period_start, "2026-12-01T00:00:00Z");
        // Recomputed: replaced, never added twice (the same instant, another offset).
        history = record(&history, entry("2026-12-01T01:00:00+01:00", 99));
        assert_eq!(history.len(), HISTORY_LIMIT);
        assert_eq!(history[0].used.tokens, 99);
        assert_eq!(history.iter().filter(|e| e.used.tokens == 12).count(), 0);
        // A 13th period: the oldest goes.
        history = record(&history, entry("2027-01-01T00:00:00Z", 13));
        assert_eq!(history.len(), HISTORY_LIMIT);
        assert_eq!(history[0].period_start, "2027-01-01T00:00:00Z");
        assert_eq!(history.last().unwrap().period_start, "2026-02-01T00:00:00Z");
    }

    #[test]
    fn difference_is_what_was_gained() {
        let before = totals(&[("m", 10, 5)]);
        let now = totals(&[("m", 12, 5), ("n", 0, 3)]);
        assert_eq!(difference(&now, &before), totals(&[("m", 2, 0), ("n", 0, 3)]));
        assert_eq!(difference(&before, &now), totals(&[]), "never negative");
    }
}
