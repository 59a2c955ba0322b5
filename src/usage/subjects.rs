//! Usage per subject: per distinct value of one label of the token series (a user, an end
//! user, a session, a team), against the limit `spec.subjects[]` gives each. Pure: no
//! Kubernetes client and no clock.
//!
//! The bookkeeping is persisted in `status.accounting.subjects` (compact, see
//! [`SubjectAccounting`]); [`standing`] reads one subject's standing from it, which is what an
//! agent asks before a call.

use rust_decimal::Decimal;

use super::{PriceTable, parse_money};
use crate::api::{SubjectAccounting, SubjectLimit, TokenBudget, TokenType};

/// Where one subject stands in the budget's current period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectStanding {
    /// The label (`spec.subjects[].label`).
    pub label: String,
    /// The subject: the label's value.
    pub value: String,
    /// Tokens of the budget's `tokenTypes` it spent in the period.
    pub tokens: u64,
    /// What they cost at the budget's prices; `None` without pricing.
    pub cost: Option<Decimal>,
    /// Tokens left before its token limit; `None` without one.
    pub remaining_tokens: Option<u64>,
    /// Money left before its cost limit; `None` without one.
    pub remaining_cost: Option<Decimal>,
    /// It has reached one of its limits.
    pub exhausted: bool,
    /// It is counted one by one. `false`: past the most subjects counted one by one, its
    /// usage is not known on its own (it counts toward the budget only); then `tokens` is 0
    /// and `exhausted` false.
    pub tracked: bool,
}

/// Why [`standing`] has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StandingError {
    #[error("the budget has no limit per {0:?} (spec.subjects)")]
    NoSuchLabel(String),
    #[error("the budget's pricing or limits are invalid: {0}")]
    Invalid(String),
}

/// Where the subject `value` of `label` stands, from the budget's last written status. A
/// subject that has not spent anything in the period (or whose spending was not counted yet)
/// stands at zero.
pub fn standing(budget: &TokenBudget, label: &str, value: &str) -> Result<SubjectStanding, StandingError> {
    let limit = budget
        .spec
        .subjects
        .iter()
        .find(|s| s.label == label)
        .ok_or_else(|| StandingError::NoSuchLabel(label.to_owned()))?;
    let prices = PriceTable::new(&budget.spec.pricing).map_err(|e| StandingError::Invalid(e.to_string()))?;
    let state = budget
        .status
        .as_ref()
        .and_then(|s| s.accounting.as_ref())
        .and_then(|a| a.subjects.iter().find(|s| s.label == label));
    let (models, tracked) = match state {
        Some(state) => state.totals_of(value),
        None => (Vec::new(), true),
    };
    let token_types = budget.spec.token_types.as_deref();
    let counts = |t: TokenType| token_types.is_none_or(|types| types.contains(&t));
    let mut tokens = 0u64;
    let mut cost = (!budget.spec.pricing.is_empty()).then_some(Decimal::ZERO);
    for (model, input, output) in &models {
        tokens = tokens
            .saturating_add(if counts(TokenType::Input) { *input } else { 0 })
            .saturating_add(if counts(TokenType::Output) { *output } else { 0 });
        if let (Some(sum), Some(c)) = (cost.as_mut(), prices.cost(model, *input, *output)) {
            *sum += c;
        }
    }
    standing_of(limit, value, tokens, cost, tracked)
}

/// A subject's standing from its usage and its limit.
fn standing_of(
    limit: &SubjectLimit,
    value: &str,
    tokens: u64,
    cost: Option<Decimal>,
    tracked: bool,
) -> Result<SubjectStanding, StandingError> {
    let limit_tokens = limit.limits.tokens.map(|t| u64::try_from(t).unwrap_or(0));
    let limit_cost = match &limit.limits.cost {
        Some(c) => Some(parse_money(c).map_err(|e| StandingError::Invalid(e.to_string()))?),
        None => None,
    };
    let used_cost = cost.unwrap_or(Decimal::ZERO);
    let remaining_tokens = limit_tokens.map(|l| l.saturating_sub(tokens));
    let remaining_cost = limit_cost.map(|l| (l - used_cost).max(Decimal::ZERO));
    let exhausted =
        tracked && (limit_tokens.is_some_and(|l| tokens >= l) || limit_cost.is_some_and(|l| used_cost >= l));
    Ok(SubjectStanding {
        label: limit.label.clone(),
        value: value.to_owned(),
        tokens,
        cost,
        remaining_tokens,
        remaining_cost,
        exhausted,
        tracked,
    })
}

impl SubjectAccounting {
    /// The period's totals of subject `value`, per model as (model, input, output), and
    /// whether the subject is counted one by one (it is, or it may be: a subject not seen yet
    /// while there is room for more).
    pub fn totals_of(&self, value: &str) -> (Vec<(String, u64, u64)>, bool) {
        let Some(index) = self.values.iter().position(|v| v == value) else {
            // Unknown: a subject yet to spend, unless the table is full and spending beyond it
            // has been seen (then this one may be among the untracked).
            let full = self.untracked.as_ref().is_some_and(|u| u.input > 0 || u.output > 0);
            return (Vec::new(), !full);
        };
        let prefix = index.to_string();
        let mut models = Vec::new();
        for line in &self.totals {
            let mut fields = line.split(' ');
            if fields.next() != Some(prefix.as_str()) {
                continue;
            }
            for field in fields {
                let mut parts = field.split(':');
                let model = parts
                    .next()
                    .and_then(|m| m.parse::<usize>().ok())
                    .and_then(|m| self.models.get(m));
                let input = parts.next().and_then(|v| v.parse::<u64>().ok());
                let output = parts.next().and_then(|v| v.parse::<u64>().ok());
                if let (Some(model), Some(input), Some(output)) = (model, input, output) {
                    models.push((model.clone(), input, output));
                }
            }
        }
        (models, true)
    }
}
