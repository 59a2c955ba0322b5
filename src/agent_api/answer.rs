//! What the agent API answers, computed from a TokenBudget as the operator's cache holds it:
//! the request's path and query read, the budget's standing (and a subject's) as a small JSON
//! document, and failures as Kubernetes `Status` objects. Pure: no client, no clock, no I/O.

use rust_decimal::Decimal;
use serde::Serialize;

use crate::{
    api::{BudgetPhase, TokenBudget},
    usage::{
        format_money, parse_money,
        subjects::{self, StandingError, SubjectStanding},
    },
};

/// What a request asks about: one budget, and optionally one subject of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub namespace: String,
    pub name: String,
    /// The label (`spec.subjects[].label`) and its value.
    pub subject: Option<(String, String)>,
}

/// The one path served: `/v1/namespaces/{namespace}/tokenbudgets/{name}`. `None` for any
/// other path (404), and for segments that cannot be a namespace or a name, so that nothing
/// odd reaches a SubjectAccessReview.
pub fn parse_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/v1/namespaces/")?;
    let (namespace, rest) = rest.split_once('/')?;
    let name = rest.strip_prefix("tokenbudgets/")?;
    (is_object_name(namespace) && is_object_name(name)).then_some((namespace, name))
}

/// A DNS subdomain (RFC 1123), what a namespace and a TokenBudget's name are: at most 253
/// lowercase letters, digits, `-` and `.`, beginning and ending with a letter or digit.
fn is_object_name(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 253
        && bytes.iter().all(|&b| alnum(b) || b == b'-' || b == b'.')
        && alnum(bytes[0])
        && alnum(bytes[bytes.len() - 1])
}

/// Why a query is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("unknown query parameter {0:?}: only label and subject are accepted")]
    Unknown(String),
    #[error("query parameter {0:?} is given twice")]
    Repeated(&'static str),
    #[error("label and subject go together: give both (label=end_user&subject=alice) or neither")]
    Incomplete,
    #[error("query parameter {0:?} is empty")]
    Empty(&'static str),
    #[error("the query is not valid percent-encoded UTF-8")]
    Encoding,
}

/// The subject a query asks about: `label=<label>&subject=<value>` (form-encoded: a value may
/// hold any character, an e-mail address or a session id), or none.
pub fn parse_query(query: Option<&str>) -> Result<Option<(String, String)>, QueryError> {
    let (mut label, mut subject) = (None, None);
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match decode(key)?.as_str() {
            "label" => (&mut label, "label"),
            "subject" => (&mut subject, "subject"),
            other => return Err(QueryError::Unknown(other.into())),
        };
        if slot.0.is_some() {
            return Err(QueryError::Repeated(slot.1));
        }
        let value = decode(value)?;
        if value.is_empty() {
            return Err(QueryError::Empty(slot.1));
        }
        *slot.0 = Some(value);
    }
    match (label, subject) {
        (Some(label), Some(subject)) => Ok(Some((label, subject))),
        (None, None) => Ok(None),
        _ => Err(QueryError::Incomplete),
    }
}

/// `application/x-www-form-urlencoded` decoding: `%XX` and `+` for a space.
fn decode(s: &str) -> Result<String, QueryError> {
    let mut bytes = Vec::with_capacity(s.len());
    let mut input = s.bytes();
    while let Some(b) = input.next() {
        bytes.push(match b {
            b'+' => b' ',
            b'%' => {
                let hex = |b: Option<u8>| b.and_then(|b| char::from(b).to_digit(16));
                match (hex(input.next()), hex(input.next())) {
                    (Some(hi), Some(lo)) => (hi * 16 + lo) as u8,
                    _ => return Err(QueryError::Encoding),
                }
            }
            b => b,
        });
    }
    String::from_utf8(bytes).map_err(|_| QueryError::Encoding)
}

/// A budget's standing, as an agent reads it before a call. Amounts of money are decimal
/// strings in `limits.currency` (as in the budget's status: no rounding by a float); counts of
/// tokens are integers. A field the budget does not have (no cost limit, no pacing, no status
/// yet) is left out.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Standing {
    pub namespace: String,
    pub name: String,
    /// Active, Warning or Exhausted; absent before the operator's first status write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<BudgetPhase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<String>,
    pub limits: Limits,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used: Option<Used>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining_tokens: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining_cost: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent_used: Option<i64>,
    /// Tokens per hour over the recent window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burn_rate: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projected_exhaustion: Option<String>,
    /// `status.pacing.pace` as a number from 0 to 1: the fraction of the current burn rate at
    /// which the budget lasts until it resets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pace: Option<f64>,
    /// Tokens per hour that last until the reset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sustainable_rate: Option<i64>,
    /// The budget's `metadata.generation`, and the one its status describes: when they differ
    /// the spec changed since the status was written (the next cycle catches up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Subject>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Used {
    pub tokens: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
}

/// One subject's standing ([`subjects::standing`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    pub label: String,
    pub value: String,
    pub tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining_cost: Option<String>,
    pub exhausted: bool,
    /// `false`: past the most subjects the operator counts one by one, this one's usage is not
    /// known on its own (then `tokens` is 0 and `exhausted` false).
    pub tracked: bool,
}

impl From<SubjectStanding> for Subject {
    fn from(s: SubjectStanding) -> Self {
        Self {
            label: s.label,
            value: s.value,
            tokens: s.tokens,
            cost: s.cost.map(format_money),
            remaining_tokens: s.remaining_tokens,
            remaining_cost: s.remaining_cost.map(format_money),
            exhausted: s.exhausted,
            tracked: s.tracked,
        }
    }
}

/// The standing of `budget`, and of the subject `subject` asks about. Everything comes from
/// the budget's last written status, except `remainingCost`, which the status does not carry:
/// the cost limit less the cost used, at least zero.
pub fn standing(budget: &TokenBudget, subject: Option<(&str, &str)>) -> Result<Standing, StandingError> {
    let subject = match subject {
        Some((label, value)) => Some(subjects::standing(budget, label, value)?.into()),
        None => None,
    };
    let spec = &budget.spec;
    let status = budget.status.as_ref();
    let used = status.and_then(|s| s.used.as_ref());
    let remaining_cost = match (&spec.limits.cost, used) {
        (Some(limit), Some(used)) => {
            let limit = parse_money(limit).ok();
            let spent = used.cost.as_deref().map_or(Ok(Decimal::ZERO), parse_money).ok();
            limit.zip(spent).map(|(l, s)| format_money((l - s).max(Decimal::ZERO)))
        }
        _ => None,
    };
    let pacing = status.and_then(|s| s.pacing.as_ref());
    Ok(Standing {
        namespace: budget.metadata.namespace.clone().unwrap_or_default(),
        name: budget.metadata.name.clone().unwrap_or_default(),
        phase: status.and_then(|s| s.phase),
        period_start: status.and_then(|s| s.period_start.clone()),
        resets_at: status.and_then(|s| s.resets_at.clone()),
        limits: Limits {
            tokens: spec.limits.tokens,
            cost: spec.limits.cost.clone(),
            currency: spec.currency.clone(),
        },
        used: used.map(|u| Used {
            tokens: u.tokens,
            cost: u.cost.clone(),
        }),
        remaining_tokens: status.and_then(|s| s.remaining_tokens),
        remaining_cost,
        percent_used: status.and_then(|s| s.percent_used),
        burn_rate: status.and_then(|s| s.burn_rate),
        projected_exhaustion: status.and_then(|s| s.projected_exhaustion.clone()),
        pace: pacing.and_then(|p| p.pace.parse().ok()),
        sustainable_rate: pacing.and_then(|p| p.sustainable_rate),
        generation: budget.metadata.generation,
        observed_generation: status.and_then(|s| s.observed_generation),
        subject,
    })
}

/// A failure, as the API server writes one: a `Status` of kind Status with its HTTP code and
/// reason, so that clients already able to read the API server's errors read these too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub metadata: Empty,
    pub status: &'static str,
    pub message: String,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
    pub code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Empty {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Details {
    pub name: String,
    pub group: &'static str,
    pub kind: &'static str,
}

impl Status {
    pub fn failure(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind: "Status",
            api_version: "v1",
            metadata: Empty {},
            status: "Failure",
            message: message.into(),
            reason,
            details: None,
            code,
        }
    }

    /// About the budget `name`: the details name it, as the API server's do.
    fn about(mut self, name: &str) -> Self {
        self.details = Some(Details {
            name: name.into(),
            group: crate::api::GROUP,
            kind: "tokenbudgets",
        });
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::failure(400, "BadRequest", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::failure(401, "Unauthorized", message)
    }

    /// The API server's wording for a refused `get`, with the authorizer's reason if any.
    pub fn forbidden(user: &str, namespace: &str, name: &str, reason: &str) -> Self {
        let mut message = format!(
            "tokenbudgets.{group} {name:?} is forbidden: User {user:?} cannot get resource \"tokenbudgets\" in API group {group:?} in the namespace {namespace:?}",
            group = crate::api::GROUP
        );
        if !reason.is_empty() {
            message.push_str(": ");
            message.push_str(reason);
        }
        Self::failure(403, "Forbidden", message).about(name)
    }

    pub fn budget_not_found(name: &str) -> Self {
        Self::failure(
            404,
            "NotFound",
            format!("tokenbudgets.{} {name:?} not found", crate::api::GROUP),
        )
        .about(name)
    }

    pub fn path_not_found() -> Self {
        Self::failure(
            404,
            "NotFound",
            "the server could not find the requested resource: GET /v1/namespaces/{namespace}/tokenbudgets/{name}",
        )
    }

    pub fn method_not_allowed(method: &str) -> Self {
        Self::failure(405, "MethodNotAllowed", format!("{method} is not supported: only GET"))
    }

    /// What [`standing`] could not answer.
    pub fn of_standing(error: &StandingError, name: &str) -> Self {
        match error {
            StandingError::NoSuchLabel(_) => Self::failure(404, "NotFound", error.to_string()).about(name),
            StandingError::Invalid(_) => Self::failure(500, "InternalError", error.to_string()).about(name),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::failure(503, "ServiceUnavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::failure(500, "InternalError", message)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn budget(yaml: &str) -> TokenBudget {
        serde_yaml::from_str(yaml).expect("a TokenBudget")
    }

    const BUDGET: &str = "
apiVersion: tokenbudget.io/v1alpha1
kind: TokenBudget
metadata: {name: research, namespace: agents, generation: 3}
spec:
  limits: {tokens: 100000, cost: '5.00'}
  currency: USD
  period: {reset: Daily}
  pricing: [{model: gpt-4o, input: '2.50', output: '10.00'}]
  subjects: [{label: end_user, limits: {tokens: 1000}}]
status:
  phase: Warning
  used: {tokens: 85000, input: 80000, output: 5000, cost: '3.25'}
  remainingTokens: 15000
  percentUsed: 85
  periodStart: '2026-12-01T00:00:00+01:00'
  resetsAt: '2026-12-02T00:00:00+01:00'
  burnRate: 12000
  projectedExhaustion: '2026-12-01T15:15:00+01:00'
  observedGeneration: 3
  pacing: {pace: '0.60', burnRate: 12000, sustainableRate: 7200, since: '2026-12-01T10:00:00Z'}
  accounting:
    periodStart: '2026-12-01T00:00:00+01:00'
    subjects:
    - label: end_user
      values: [alice, bob]
      models: [gpt-4o]
      totals: ['0 0:900:200', '1 0:10:5']
";

    #[test]
    fn the_budget_s_standing_from_its_status() {
        let answer = serde_json::to_value(standing(&budget(BUDGET), None).unwrap()).unwrap();
        assert_eq!(
            answer,
            json!({
                "namespace": "agents", "name": "research", "phase": "Warning",
                "periodStart": "2026-12-01T00:00:00+01:00", "resetsAt": "2026-12-02T00:00:00+01:00",
                "limits": {"tokens": 100000, "cost": "5.00", "currency": "USD"},
                "used": {"tokens": 85000, "cost": "3.25"},
                "remainingTokens": 15000, "remainingCost": "1.75", "percentUsed": 85,
                "burnRate": 12000, "projectedExhaustion": "2026-12-01T15:15:00+01:00",
                "pace": 0.6, "sustainableRate": 7200, "generation": 3, "observedGeneration": 3
            })
        );
    }

    #[test]
    fn a_subject_s_standing_with_the_budget_s() {
        let b = budget(BUDGET);
        let alice = standing(&b, Some(("end_user", "alice"))).unwrap().subject.unwrap();
        assert_eq!(
            serde_json::to_value(alice).unwrap(),
            json!({"label": "end_user", "value": "alice", "tokens": 1100, "cost": "0.00425",
                   "remainingTokens": 0, "exhausted": true, "tracked": true})
        );
        // Not seen yet: stands at zero, with its whole limit left.
        let carol = standing(&b, Some(("end_user", "carol"))).unwrap().subject.unwrap();
        assert_eq!(
            (carol.tokens, carol.remaining_tokens, carol.exhausted),
            (0, Some(1000), false)
        );
        assert_eq!(
            standing(&b, Some(("session", "s1"))).unwrap_err(),
            StandingError::NoSuchLabel("session".into())
        );
    }

    #[test]
    fn a_budget_not_counted_yet_has_its_limits_and_nothing_else() {
        let b = budget(
            "
metadata: {name: fresh, namespace: agents}
spec: {limits: {cost: '10'}, currency: EUR, period: {reset: Monthly}}
",
        );
        assert_eq!(
            serde_json::to_value(standing(&b, None).unwrap()).unwrap(),
            json!({"namespace": "agents", "name": "fresh", "limits": {"cost": "10", "currency": "EUR"}})
        );
    }

    #[test]
    fn spending_past_the_cost_limit_leaves_zero_not_a_negative_amount() {
        let mut b = budget(BUDGET);
        b.status.as_mut().unwrap().used.as_mut().unwrap().cost = Some("7.10".into());
        assert_eq!(standing(&b, None).unwrap().remaining_cost.as_deref(), Some("0.00"));
    }

    #[test]
    fn the_one_path() {
        assert_eq!(
            parse_path("/v1/namespaces/agents/tokenbudgets/research"),
            Some(("agents", "research"))
        );
        assert_eq!(
            parse_path("/v1/namespaces/a/tokenbudgets/r.v2-x"),
            Some(("a", "r.v2-x"))
        );
        for bad in [
            "/",
            "/v1/namespaces/agents/tokenbudgets",
            "/v1/namespaces/agents/tokenbudgets/",
            "/v1/namespaces/agents/tokenbudgets/research/status",
            "/v1/namespaces//tokenbudgets/research",
            "/v1/namespaces/Agents/tokenbudgets/research",
            "/v1/namespaces/agents/budgetbindings/research",
            "/v1/namespaces/agents/tokenbudgets/-research",
            "/v1/namespaces/a%2Fb/tokenbudgets/research",
            "/v2/namespaces/agents/tokenbudgets/research",
        ] {
            assert_eq!(parse_path(bad), None, "{bad}");
        }
        let long = format!("/v1/namespaces/agents/tokenbudgets/{}", "a".repeat(254));
        assert_eq!(parse_path(&long), None);
    }

    #[test]
    fn the_query_names_a_subject_or_nothing() {
        assert_eq!(parse_query(None), Ok(None));
        assert_eq!(parse_query(Some("")), Ok(None));
        assert_eq!(
            parse_query(Some("label=end_user&subject=alice%40example.com")),
            Ok(Some(("end_user".into(), "alice@example.com".into())))
        );
        assert_eq!(
            parse_query(Some("subject=J%C3%BCrgen+M&label=user")),
            Ok(Some(("user".into(), "Jürgen M".into())))
        );
        assert_eq!(parse_query(Some("label=end_user")), Err(QueryError::Incomplete));
        assert_eq!(parse_query(Some("subject=alice")), Err(QueryError::Incomplete));
        assert_eq!(
            parse_query(Some("label=a&label=b&subject=c")),
            Err(QueryError::Repeated("label"))
        );
        assert_eq!(parse_query(Some("label=&subject=c")), Err(QueryError::Empty("label")));
        assert_eq!(parse_query(Some("user=alice")), Err(QueryError::Unknown("user".into())));
        assert_eq!(parse_query(Some("label=a&subject=%zz")), Err(QueryError::Encoding));
        assert_eq!(parse_query(Some("label=a&subject=%ff")), Err(QueryError::Encoding));
        assert_eq!(parse_query(Some("label=a&subject=%4")), Err(QueryError::Encoding));
    }

    #[test]
    fn failures_read_as_the_api_server_s() {
        let forbidden = serde_json::to_value(Status::forbidden(
            "system:serviceaccount:agents:bot",
            "agents",
            "research",
            "",
        ))
        .unwrap();
        assert_eq!(
            forbidden,
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "tokenbudgets.tokenbudget.io \"research\" is forbidden: User \"system:serviceaccount:agents:bot\" cannot get resource \"tokenbudgets\" in API group \"tokenbudget.io\" in the namespace \"agents\"",
                "reason": "Forbidden",
                "details": {"name": "research", "group": "tokenbudget.io", "kind": "tokenbudgets"},
                "code": 403
            })
        );
        let missing = Status::of_standing(&StandingError::NoSuchLabel("session".into()), "research");
        assert_eq!((missing.code, missing.reason), (404, "NotFound"));
        assert_eq!(
            missing.message,
            "the budget has no limit per \"session\" (spec.subjects)"
        );
    }
}
