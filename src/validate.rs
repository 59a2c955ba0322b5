//! The operator's own checks of a spec. Pure: no client, no clock. An invalid spec is reported
//! as `Ready=False` with reason `InvalidSpec` and the messages below, and waits for the user
//! to fix it.
//!
//! The API server refuses almost every mistake itself, through the CRD's OpenAPI keywords and
//! CEL rules (see [`crate::api`]). Only this module can check what the CRD cannot: that
//! `period.timezone` names a zone of the IANA database the operator carries, and that
//! `metrics.tls.serverName` is a name rustls accepts (CEL only approximates its rules). The
//! rest is checked again here on purpose: an object stored under an older CRD, before a rule
//! existed, stays stored, and validation ratcheting lets its invalid part through later
//! updates as long as that part is unchanged, so the server never reports it.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use jiff::tz::TimeZone;
use k8s_openapi::apimachinery::pkg::{
    api::resource::Quantity, apis::meta::v1::LabelSelector, util::intstr::IntOrString,
};
use rust_decimal::Decimal;

use crate::{
    api::{
        BudgetBindingSpec, EnforcementAction, MAX_SCRAPE_TIMEOUT, MetricsEndpoint, MetricsFormat, MetricsSource,
        Pacing, PacingAction, PrometheusSeries, ResetPeriod, Scheme, SubjectLimit, TokenBudgetSpec, TokenType,
        WorkloadKind,
    },
    usage::{Extractor, PriceTable, pricing},
};

/// The shortest and longest `spec.pacing.window`: shorter, a forecast follows every burst;
/// longer, it lags a day behind.
const PACING_WINDOW_MIN: Duration = Duration::from_secs(5 * 60);
const PACING_WINDOW_MAX: Duration = Duration::from_secs(24 * 3600);

/// Everything wrong with a spec, each message naming its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<String>);

impl std::fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl std::error::Error for SpecErrors {}

/// A TokenBudget's spec, checked, parsed and with its defaults applied: what accounting and
/// enforcement read, so that no value is parsed (or defaulted) twice.
#[derive(Clone, Debug)]
pub struct ValidBudget {
    /// `limits.tokens`.
    pub limit_tokens: Option<u64>,
    /// `limits.cost`, in the budget's currency.
    pub limit_cost: Option<Decimal>,
    /// `pricing`, parsed; empty without pricing.
    pub prices: PriceTable,
    /// `currency`: what the costs are in (display only).
    pub currency: String,
    /// The token types that count against the limit; `None`: all of them.
    pub token_types: Option<Vec<TokenType>>,
    pub reset: ResetPeriod,
    pub time_zone: TimeZone,
    /// `thresholds`, in ascending order.
    pub thresholds: Vec<u8>,
    pub action: EnforcementAction,
    pub grace_period: Duration,
    pub freeze_quota: bool,
    /// `computeQuota.hard`, when the budget owns a quota.
    pub quota: Option<BTreeMap<String, Quantity>>,
    /// `subjects`: the limits per subject label, each label once.
    pub subjects: Vec<SubjectLimit>,
    /// `pacing`, when set.
    pub pacing: Option<ValidPacing>,
}

/// `spec.pacing`, its window parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidPacing {
    pub action: PacingAction,
    pub min_replicas: i32,
    /// How far back the forecast looks, from 5 minutes to 24 hours.
    pub window: jiff::SignedDuration,
}

impl ValidBudget {
    /// Whether the budget prices its models (and so has a cost).
    pub fn priced(&self) -> bool {
        !self.prices.entries().is_empty()
    }
}

/// A BudgetBinding's spec, checked and parsed.
#[derive(Clone, Debug)]
pub struct ValidBinding {
    /// The name of the TokenBudget (in the binding's namespace) it charges.
    pub budget: String,
    pub workloads: Vec<WorkloadEntry>,
    /// `metrics` as written: port, path, scheme and TLS of the endpoint.
    pub endpoint: MetricsEndpoint,
    /// What reads the token counters out of a scraped body, for `metrics.format`.
    pub extractor: Arc<Extractor>,
    pub interval: Duration,
    pub timeout: Duration,
    /// `metrics.source`: where the counters are read.
    pub source: Source,
}

/// Where a binding's pods' counters are read, with what that source needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The operator scrapes each pod (`metrics.source: Scrape`).
    Scrape,
    /// The operator queries its Prometheus (`metrics.source: Prometheus`), for series labelled
    /// so (`metrics.prometheus`, defaults applied).
    Prometheus(PrometheusSeries),
}

/// One entry of `spec.workloads`: a kind, and either a name or a label selector.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadEntry {
    pub kind: WorkloadKind,
    pub selection: Selection,
}

/// How a workload entry picks its workloads.
#[derive(Clone, Debug, PartialEq)]
pub enum Selection {
    Name(String),
    /// Never empty: an empty selector is refused.
    Labels(LabelSelector),
}

/// The errors found so far, each naming its field.
#[derive(Default)]
struct Errors(Vec<String>);

impl Errors {
    fn push(&mut self, message: impl Into<String>) {
        self.0.push(message.into());
    }

    /// The value, or `None` with the error recorded under `field`.
    fn check<T, E: std::fmt::Display>(&mut self, field: &str, result: Result<T, E>) -> Option<T> {
        result.map_err(|e| self.push(format!("{field}: {e}"))).ok()
    }

    /// `value` when nothing was wrong.
    fn finish<T>(self, value: Option<T>) -> Result<T, SpecErrors> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(SpecErrors(self.0)),
        }
    }
}

/// Validates a TokenBudget's spec beyond its schema, into the values the operator uses.
pub fn budget(spec: &TokenBudgetSpec) -> Result<ValidBudget, SpecErrors> {
    let mut errors = Errors::default();
    let (limit_tokens, limit_cost) = check_limits(spec, &mut errors);
    let time_zone = TimeZone::get(&spec.period.timezone)
        .map_err(|_| {
            errors.push(format!(
                "spec.period.timezone: {:?} is not an IANA time zone such as \"Europe/Berlin\"",
                spec.period.timezone
            ))
        })
        .ok();
    for (i, price) in spec.pricing.iter().enumerate() {
        for (field, value) in [("input", &price.input), ("output", &price.output)] {
            if !is_decimal(value) {
                errors.push(format!(
                    "spec.pricing[{i}].{field}: {value:?} is not a decimal number such as \"0.15\""
                ));
            }
        }
    }
    let prices = PriceTable::new(&spec.pricing).ok();
    for (i, t) in spec.thresholds.iter().enumerate() {
        if !(1..=100).contains(t) {
            errors.push(format!("spec.thresholds[{i}]: {t} is not a percentage from 1 to 100"));
        }
        if spec.thresholds[..i].contains(t) {
            errors.push(format!("spec.thresholds[{i}]: {t} is listed twice"));
        }
    }
    let grace_period = errors.check(
        "spec.enforcement.gracePeriod",
        parse_duration(&spec.enforcement.grace_period),
    );
    check_subjects(spec, &mut errors);
    if spec.enforcement.freeze_quota && spec.compute_quota.is_none() {
        errors.push("spec.enforcement.freezeQuota: needs spec.computeQuota, the quota it would freeze");
    }
    let pacing = spec.pacing.as_ref().map(|p| check_pacing(p, &mut errors));
    let mut thresholds = spec.thresholds.clone();
    thresholds.sort_unstable();
    let valid = (|| {
        Some(ValidBudget {
            limit_tokens,
            limit_cost,
            prices: prices?,
            currency: spec.currency.clone(),
            token_types: spec.token_types.clone(),
            reset: spec.period.reset,
            time_zone: time_zone?,
            thresholds,
            action: spec.enforcement.action,
            grace_period: grace_period?,
            freeze_quota: spec.enforcement.freeze_quota,
            quota: spec.compute_quota.as_ref().map(|q| q.hard.clone()),
            subjects: spec.subjects.clone(),
            pacing: match pacing {
                Some(p) => Some(p?),
                None => None,
            },
        })
    })();
    errors.finish(valid)
}

/// Validates a BudgetBinding's spec beyond its schema, into the values the operator uses.
pub fn binding(spec: &BudgetBindingSpec) -> Result<ValidBinding, SpecErrors> {
    let mut errors = Errors::default();
    if spec.budget_ref.name.is_empty() {
        errors.push("spec.budgetRef.name: must not be empty");
    }
    if spec.workloads.is_empty() {
        errors.push("spec.workloads: at least one workload is required");
    }
    let workloads = spec
        .workloads
        .iter()
        .enumerate()
        .filter_map(|(i, w)| {
            let selection = match (&w.name, &w.selector) {
                (Some(_), Some(_)) => {
                    errors.push(format!(
                        "spec.workloads[{i}]: set exactly one of name and selector, not both"
                    ));
                    return None;
                }
                (None, None) => {
                    errors.push(format!("spec.workloads[{i}]: set exactly one of name and selector"));
                    return None;
                }
                (None, Some(selector)) => {
                    let field = format!("spec.workloads[{i}].selector");
                    check_selector(selector, w.kind.as_str(), &field, &mut errors.0);
                    Selection::Labels(selector.clone())
                }
                (Some(name), None) => Selection::Name(name.clone()),
            };
            Some(WorkloadEntry {
                kind: w.kind,
                selection,
            })
        })
        .collect();
    let (interval, timeout) = check_metrics(&spec.metrics, &mut errors);
    let valid = (|| {
        Some(ValidBinding {
            budget: spec.budget_ref.name.clone(),
            workloads,
            endpoint: spec.metrics.clone(),
            extractor: Arc::new(Extractor::for_endpoint(&spec.metrics)),
            interval: interval?,
            timeout: timeout?,
            source: source(&spec.metrics),
        })
    })();
    errors.finish(valid)
}

/// `spec.limits`: at least one, a token count and a decimal cost (which needs prices).
fn check_limits(spec: &TokenBudgetSpec, errors: &mut Errors) -> (Option<u64>, Option<Decimal>) {
    if spec.limits.tokens.is_none() && spec.limits.cost.is_none() {
        errors.push("spec.limits: at least one of tokens and cost is required");
    }
    let limit_tokens = match spec.limits.tokens.map(u64::try_from) {
        Some(Err(_)) => {
            errors.push("spec.limits.tokens: must be >= 0");
            None
        }
        Some(Ok(tokens)) => Some(tokens),
        None => None,
    };
    let mut limit_cost = None;
    if let Some(cost) = &spec.limits.cost {
        if is_decimal(cost) {
            limit_cost = pricing::parse_money(cost).ok();
        } else {
            errors.push(format!(
                "spec.limits.cost: {cost:?} is not a decimal number such as \"250.00\""
            ));
        }
        if spec.pricing.is_empty() {
            errors.push("spec.limits.cost: a cost limit needs spec.pricing (without prices nothing costs anything)");
        }
    }
    (limit_tokens, limit_cost)
}

/// `spec.pacing`: its window a duration from 5 minutes to 24 hours.
fn check_pacing(p: &Pacing, errors: &mut Errors) -> Option<ValidPacing> {
    let window = errors.check("spec.pacing.window", parse_duration(&p.window))?;
    if !(PACING_WINDOW_MIN..=PACING_WINDOW_MAX).contains(&window) {
        errors.push(format!("spec.pacing.window: {:?} is not from 5m to 24h", p.window));
        return None;
    }
    Some(ValidPacing {
        action: p.action,
        min_replicas: p.min_replicas,
        window: jiff::SignedDuration::try_from(window).ok()?,
    })
}

/// `spec.subjects`: a label name each, once, and limits as the budget's.
fn check_subjects(spec: &TokenBudgetSpec, errors: &mut Errors) {
    if spec.subjects.len() > crate::usage::parse::MAX_SUBJECT_LABELS {
        errors.push(format!(
            "spec.subjects: at most {} labels",
            crate::usage::parse::MAX_SUBJECT_LABELS
        ));
    }
    for (i, subject) in spec.subjects.iter().enumerate() {
        let field = format!("spec.subjects[{i}]");
        if !is_prometheus_label_name(&subject.label) {
            errors.push(format!(
                "{field}.label: {:?} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)",
                subject.label
            ));
        }
        if spec.subjects[..i].iter().any(|s| s.label == subject.label) {
            errors.push(format!("{field}.label: {:?} is listed twice", subject.label));
        }
        let limits = &subject.limits;
        if limits.tokens.is_none() && limits.cost.is_none() {
            errors.push(format!("{field}.limits: at least one of tokens and cost is required"));
        }
        if limits.tokens.is_some_and(|t| t < 0) {
            errors.push(format!("{field}.limits.tokens: must be >= 0"));
        }
        if let Some(cost) = &limits.cost {
            if !is_decimal(cost) {
                errors.push(format!(
                    "{field}.limits.cost: {cost:?} is not a decimal number such as \"2.50\""
                ));
            }
            if spec.pricing.is_empty() {
                errors.push(format!(
                    "{field}.limits.cost: a cost limit needs spec.pricing (without prices nothing costs anything)"
                ));
            }
        }
    }
}

/// `metrics.source`, with its labels' defaults applied.
fn source(m: &MetricsEndpoint) -> Source {
    match m.source {
        MetricsSource::Scrape => Source::Scrape,
        MetricsSource::Prometheus => Source::Prometheus(m.prometheus.clone().unwrap_or_default()),
    }
}

/// `metrics.prometheus` goes with source Prometheus, and names two different labels.
fn check_source(m: &MetricsEndpoint, errors: &mut Errors) {
    let Some(series) = &m.prometheus else { return };
    if m.source != MetricsSource::Prometheus {
        errors.push(format!(
            "spec.metrics.prometheus: only allowed with source Prometheus, not {}",
            m.source.as_str()
        ));
    }
    for (field, label) in [
        ("namespaceLabel", &series.namespace_label),
        ("podLabel", &series.pod_label),
    ] {
        if !is_prometheus_label_name(label) {
            errors.push(format!(
                "spec.metrics.prometheus.{field}: {label:?} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, at most 128 characters)"
            ));
        }
    }
    if series.namespace_label == series.pod_label {
        errors.push(format!(
            "spec.metrics.prometheus.podLabel: {:?} is also the namespaceLabel; the namespace and the pod need labels of their own",
            series.pod_label
        ));
    }
}

/// A Prometheus label name that a query may use: `[a-zA-Z_][a-zA-Z0-9_]*`, at most 128
/// bytes, and not one of the reserved `__` names (such as `__name__`).
fn is_prometheus_label_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with("__")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// Checks `spec.metrics`; returns its interval and timeout when they parse.
fn check_metrics(m: &MetricsEndpoint, errors: &mut Errors) -> (Option<Duration>, Option<Duration>) {
    match &m.port {
        IntOrString::Int(p) if !(1..=65535).contains(p) => {
            errors.push(format!("spec.metrics.port: {p} is not a port number from 1 to 65535"));
        }
        IntOrString::String(name) if !is_port_name(name) => errors.push(format!(
            "spec.metrics.port: {name:?} is neither a port number nor a container port name (1-15 lowercase letters, digits and '-')"
        )),
        _ => {}
    }
    let interval = errors.check("spec.metrics.interval", parse_duration(&m.interval));
    let timeout = errors.check("spec.metrics.timeout", parse_duration(&m.timeout));
    if interval.is_some_and(|i| i < Duration::from_secs(1)) {
        errors.push("spec.metrics.interval: must be at least 1s");
    }
    if timeout.is_some_and(|t| t.is_zero()) {
        errors.push("spec.metrics.timeout: must be more than 0s");
    }
    let max_timeout = parse_duration(MAX_SCRAPE_TIMEOUT).expect("the maximum is a duration");
    if timeout.is_some_and(|t| t > max_timeout) {
        errors.push(format!(
            "spec.metrics.timeout: {} is longer than {MAX_SCRAPE_TIMEOUT}, the most one scrape may take",
            m.timeout
        ));
    }
    if let (Some(i), Some(t)) = (interval, timeout)
        && t > i
    {
        errors.push(format!(
            "spec.metrics.timeout: {} is longer than the interval {}",
            m.timeout, m.interval
        ));
    }
    check_format(m, errors);
    check_source(m, errors);
    if let Some(tls) = &m.tls {
        // Silently scraping in plain text what the user meant to protect would be worse than
        // not scraping at all.
        if m.scheme != Scheme::Https {
            errors.push("spec.metrics.tls: only allowed with scheme https, not http");
        }
        if let Some(name) = &tls.server_name
            && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            errors.push(format!(
                "spec.metrics.tls.serverName: {name:?} is neither a DNS name nor an IP address"
            ));
        }
    }
    (interval, timeout)
}

/// `metrics.custom` goes with format Custom, and each custom metric names its token type once.
fn check_format(m: &MetricsEndpoint, errors: &mut Errors) {
    match (m.format, &m.custom) {
        (MetricsFormat::Custom, None) => errors.push("spec.metrics.custom: required with format Custom"),
        (MetricsFormat::Custom, Some(list)) if list.is_empty() => {
            errors.push("spec.metrics.custom: list at least one metric")
        }
        (format, Some(_)) if format != MetricsFormat::Custom => errors.push(format!(
            "spec.metrics.custom: only allowed with format Custom, not {}",
            format.as_str()
        )),
        _ => {}
    }
    for (i, c) in m.custom.iter().flatten().enumerate() {
        if c.token_type.is_some() == c.token_type_label.is_some() {
            errors.push(format!(
                "spec.metrics.custom[{i}]: set exactly one of tokenType and tokenTypeLabel"
            ));
        }
    }
}

/// A selector must select something specific: an empty one would bind (and, with ScaleDown,
/// stop) every workload of its kind in the namespace, which is never what a typo meant.
fn check_selector(selector: &LabelSelector, kind: &str, field: &str, errors: &mut Vec<String>) {
    let labels = selector.match_labels.as_ref().is_some_and(|l| !l.is_empty());
    let expressions = selector.match_expressions.as_deref().unwrap_or_default();
    if !labels && expressions.is_empty() {
        errors.push(format!(
            "{field}: an empty selector would select every {kind} in the namespace; give matchLabels or matchExpressions"
        ));
    }
    for (key, value) in selector.match_labels.iter().flatten() {
        if !is_label_key(key) {
            errors.push(format!("{field}.matchLabels: {key:?} is not a valid label key"));
        }
        if !is_label_value(value) {
            errors.push(format!(
                "{field}.matchLabels[{key:?}]: {value:?} is not a valid label value"
            ));
        }
    }
    for (j, e) in expressions.iter().enumerate() {
        let values = e.values.as_deref().unwrap_or_default();
        if !is_label_key(&e.key) {
            errors.push(format!(
                "{field}.matchExpressions[{j}].key: {:?} is not a valid label key",
                e.key
            ));
        }
        if let Some(bad) = values.iter().find(|v| !is_label_value(v)) {
            errors.push(format!(
                "{field}.matchExpressions[{j}].values: {bad:?} is not a valid label value"
            ));
        }
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => errors.push(format!(
                "{field}.matchExpressions[{j}]: operator {} needs values",
                e.operator
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => errors.push(format!(
                "{field}.matchExpressions[{j}]: operator {} takes no values",
                e.operator
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errors.push(format!(
                "{field}.matchExpressions[{j}].operator: {other:?} is not one of In, NotIn, Exists, DoesNotExist"
            )),
        }
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// alphanumerics, `-`, `_` and `.`, starting and ending alphanumeric.
fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        (1..=253).contains(&p.len())
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    prefix_ok && !name.is_empty() && is_label_value(name)
}

/// A label value: empty, or at most 63 alphanumerics, `-`, `_` and `.`, starting and ending
/// alphanumeric.
fn is_label_value(value: &str) -> bool {
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    value.is_empty()
        || (value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && alnum(value.as_bytes().first())
            && alnum(value.as_bytes().last()))
}

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration such as \"15s\", \"1m30s\" or \"500ms\"")]
    Malformed(String),
    #[error("{0:?} is longer than a year")]
    TooLong(String),
}

/// Parses a Go-style duration (`1h30m`, `15s`, `250ms`, `1.5h`) as Kubernetes users write them.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError::Malformed(text.to_string());
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += value * seconds_per_unit;
    }
    // A year is far beyond any sensible interval or grace period, and keeps the float exact
    // enough and the conversion from panicking.
    if total > 366.0 * 24.0 * 3600.0 {
        return Err(DurationError::TooLong(text.to_string()));
    }
    Ok(Duration::from_secs_f64(total))
}

/// A non-negative decimal number: digits, optionally a point and more digits.
fn is_decimal(text: &str) -> bool {
    let (int, frac) = text.split_once('.').unwrap_or((text, "0"));
    !int.is_empty()
        && !frac.is_empty()
        && int.len() <= 15
        && frac.len() <= 12
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// A container port name (IANA_SVC_NAME): 1-15 lowercase alphanumerics and '-', with at least
/// one letter, not starting or ending with '-', no "--".
fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget_spec(yaml: &str) -> TokenBudgetSpec {
        serde_yaml::from_str(yaml).expect("fixture parses")
    }

    fn binding_spec(yaml: &str) -> BudgetBindingSpec {
        serde_yaml::from_str(yaml).expect("fixture parses")
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "15", "s", "5 minutes", "1d", "-1s", "1..5s", "9999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn a_minimal_budget_is_valid() {
        assert_eq!(budget(&budget_spec("limits: {tokens: 1000}")).map(drop), Ok(()));
    }

    #[test]
    fn a_pacing_window_is_parsed_and_kept_from_5m_to_24h() {
        let valid = budget(&budget_spec("limits: {tokens: 1000}\npacing: {action: ScaleReplicas}")).unwrap();
        let pacing = valid.pacing.expect("pacing");
        assert_eq!(pacing.window, jiff::SignedDuration::from_hours(1));
        assert_eq!((pacing.action, pacing.min_replicas), (PacingAction::ScaleReplicas, 1));
        let err = budget(&budget_spec("limits: {tokens: 1000}\npacing: {window: 1m}")).unwrap_err();
        assert_eq!(err.to_string(), "spec.pacing.window: \"1m\" is not from 5m to 24h");
    }

    #[test]
    fn a_cost_limit_needs_pricing() {
        let err = budget(&budget_spec("limits: {cost: '10.00'}")).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(
            err.0[0].starts_with("spec.limits.cost: a cost limit needs spec.pricing"),
            "{err}"
        );
        let ok = budget_spec("limits: {cost: '10.00'}\npricing: [{model: 'gpt-*', input: '0.15', output: '0.60'}]");
        assert_eq!(budget(&ok).map(drop), Ok(()));
    }

    #[test]
    fn unknown_time_zones_and_bad_numbers_are_named() {
        let spec = budget_spec(
            "limits: {tokens: 5}\nperiod: {timezone: Mars/Olympus_Mons}\npricing: [{model: m, input: '1e3'}]\nthresholds: [0, 50]",
        );
        let err = budget(&spec).unwrap_err().to_string();
        assert!(err.contains("spec.period.timezone: \"Mars/Olympus_Mons\""), "{err}");
        assert!(err.contains("spec.pricing[0].input"), "{err}");
        assert!(err.contains("spec.thresholds[0]"), "{err}");
        assert!(budget(&budget_spec("limits: {tokens: 5}\nperiod: {timezone: Europe/Berlin}")).is_ok());
    }

    #[test]
    fn selector_labels_must_be_valid() {
        let bad = binding_spec(
            "budgetRef: {name: b}\nworkloads: [{kind: Deployment, selector: {matchLabels: {'team name': 'research & dev'}}}]",
        );
        let err = binding(&bad).unwrap_err().to_string();
        assert!(err.contains("\"team name\" is not a valid label key"), "{err}");
        assert!(err.contains("\"research & dev\" is not a valid label value"), "{err}");
        let good = binding_spec(
            "budgetRef: {name: b}\nworkloads: [{kind: Deployment, selector: {matchLabels: {app.kubernetes.io/part-of: agents, tier: ''}, matchExpressions: [{key: team, operator: In, values: [research, ml_ops]}]}}]",
        );
        assert_eq!(binding(&good).map(drop), Ok(()));
        for key in ["a/b/c", "-a", "Example.com/x", "x/", &"k".repeat(64)] {
            assert!(!is_label_key(key), "{key:?} accepted");
        }
        for key in ["a", "example.com/a-b_c.d", "A1"] {
            assert!(is_label_key(key), "{key:?} rejected");
        }
    }

    #[test]
    fn thresholds_are_unique() {
        let err = budget(&budget_spec("limits: {tokens: 5}\nthresholds: [80, 50, 80]")).unwrap_err();
        assert_eq!(err.0, vec!["spec.thresholds[2]: 80 is listed twice"]);
    }

    #[test]
    fn freezing_needs_a_quota() {
        let err = budget(&budget_spec("limits: {tokens: 5}\nenforcement: {freezeQuota: true}")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.enforcement.freezeQuota: needs spec.computeQuota"),
            "{err}"
        );
        let ok =
            budget_spec("limits: {tokens: 5}\nenforcement: {freezeQuota: true}\ncomputeQuota: {hard: {pods: '3'}}");
        assert_eq!(budget(&ok).map(drop), Ok(()));
    }

    #[test]
    fn neither_limit_is_an_error() {
        let err = budget(&budget_spec("limits: {}")).unwrap_err();
        assert_eq!(err.0, vec!["spec.limits: at least one of tokens and cost is required"]);
    }

    #[test]
    fn the_prometheus_source_and_its_labels() {
        let scrape = binding(&binding_spec("budgetRef: {name: b}\nworkloads: [{kind: Job, name: a}]")).unwrap();
        assert_eq!(scrape.source, Source::Scrape);
        let default = binding(&binding_spec(
            "budgetRef: {name: b}\nworkloads: [{kind: Job, name: a}]\nmetrics: {source: Prometheus}",
        ))
        .unwrap();
        assert_eq!(default.source, Source::Prometheus(PrometheusSeries::default()));
        let named = binding(&binding_spec(
            "budgetRef: {name: b}\nworkloads: [{kind: Job, name: a}]\nmetrics: {source: Prometheus, prometheus: {podLabel: kubernetes_pod_name}}",
        ))
        .unwrap();
        let Source::Prometheus(labels) = named.source else {
            panic!("Prometheus")
        };
        assert_eq!(
            (labels.namespace_label.as_str(), labels.pod_label.as_str()),
            ("namespace", "kubernetes_pod_name")
        );

        for (metrics, want) in [
            (
                "{prometheus: {podLabel: p}}",
                "spec.metrics.prometheus: only allowed with source Prometheus, not Scrape",
            ),
            (
                "{source: Prometheus, prometheus: {podLabel: __name__}}",
                "spec.metrics.prometheus.podLabel: \"__name__\" is not a Prometheus label name",
            ),
            (
                "{source: Prometheus, prometheus: {namespaceLabel: 'a-b'}}",
                "spec.metrics.prometheus.namespaceLabel: \"a-b\" is not a Prometheus label name",
            ),
            (
                "{source: Prometheus, prometheus: {namespaceLabel: pod}}",
                "spec.metrics.prometheus.podLabel: \"pod\" is also the namespaceLabel",
            ),
        ] {
            let spec = binding_spec(&format!(
                "budgetRef: {{name: b}}\nworkloads: [{{kind: Job, name: a}}]\nmetrics: {metrics}"
            ));
            let err = binding(&spec).unwrap_err().to_string();
            assert!(err.contains(want), "{metrics}: {err}");
        }
    }

    #[test]
    fn binding_checks() {
        let ok = binding_spec("budgetRef: {name: b}\nworkloads: [{kind: Deployment, name: a}]");
        assert_eq!(binding(&ok).map(drop), Ok(()));

        let both =
            binding_spec("budgetRef: {name: b}\nworkloads: [{kind: Job, name: a, selector: {matchLabels: {x: y}}}]");
        assert!(
            binding(&both)
                .unwrap_err()
                .to_string()
                .contains("spec.workloads[0]: set exactly one")
        );

        let custom_missing =
            binding_spec("budgetRef: {name: b}\nworkloads: [{kind: Job, name: a}]\nmetrics: {format: Custom}");
        assert!(
            binding(&custom_missing)
                .unwrap_err()
                .to_string()
                .contains("spec.metrics.custom: required")
        );

        let custom_extra = binding_spec(
            "budgetRef: {name: b}\nworkloads: [{kind: Job, name: a}]\nmetrics: {format: VLLM, custom: [{metric: x, tokenType: input}]}",
        );
        assert!(
            binding(&custom_extra)
                .unwrap_err()
                .to_string()
                .contains("only allowed with format Custom")
        );

        let slow = binding_spec(
            "budgetRef: {name: b}\nworkloads: [{kind: Job, name: a}]\nmetrics: {interval: 10s, timeout: 30s, port: 70000}",
        );
        let err = binding(&slow).unwrap_err().to_string();
        assert!(
            err.contains("spec.metrics.timeout: 30s is longer than the interval 10s"),
            "{err}"
        );
        assert!(err.contains("spec.metrics.port: 70000"), "{err}");

        // A scrape holds a slot for at most a minute, however long the interval.
        let hour = binding_spec(
            "budgetRef: {name: b}\nworkloads: [{kind: Job, name: a}]\nmetrics: {interval: 1h, timeout: 1h}",
        );
        let err = binding(&hour).unwrap_err().to_string();
        assert_eq!(
            err,
            "spec.metrics.timeout: 1h is longer than 60s, the most one scrape may take"
        );
        let minute = binding_spec(
            "budgetRef: {name: b}\nworkloads: [{kind: Job, name: a}]\nmetrics: {interval: 1h, timeout: 1m}",
        );
        assert_eq!(binding(&minute).unwrap().timeout, Duration::from_secs(60));

        let everything = binding_spec("budgetRef: {name: b}\nworkloads: [{kind: Deployment, selector: {}}]");
        let err = binding(&everything).unwrap_err().to_string();
        assert!(
            err.contains("spec.workloads[0].selector: an empty selector would select every Deployment"),
            "{err}"
        );

        let bad_operator = binding_spec(
            "budgetRef: {name: b}\nworkloads: [{kind: Job, selector: {matchExpressions: [{key: a, operator: Equals, values: [x]}, {key: b, operator: In}]}}]",
        );
        let err = binding(&bad_operator).unwrap_err().to_string();
        assert!(err.contains("matchExpressions[0].operator: \"Equals\""), "{err}");
        assert!(err.contains("matchExpressions[1]: operator In needs values"), "{err}");

        let vllm_custom = binding_spec(
            "budgetRef: {name: b}\nworkloads: [{kind: Job, name: a}]\nmetrics: {format: VLLM, custom: [{metric: x, tokenType: input}]}",
        );
        assert!(binding(&vllm_custom).unwrap_err().to_string().contains("not VLLM"));

        let named = binding_spec("budgetRef: {name: b}\nworkloads: [{kind: Job, name: a}]\nmetrics: {port: metrics}");
        assert_eq!(binding(&named).map(drop), Ok(()));
        let bad_name =
            binding_spec("budgetRef: {name: b}\nworkloads: [{kind: Job, name: a}]\nmetrics: {port: Not_A_Port}");
        assert!(binding(&bad_name).is_err());
    }

    #[test]
    fn tls_needs_scheme_https() {
        let plain = binding_spec(
            "budgetRef: {name: b}\nworkloads: [{kind: Job, name: a}]\nmetrics: {tls: {insecureSkipVerify: true}}",
        );
        assert_eq!(
            binding(&plain).unwrap_err().0,
            vec!["spec.metrics.tls: only allowed with scheme https, not http"]
        );
        for tls in [
            "{}",
            "{insecureSkipVerify: true}",
            "{serverName: agent.agents.svc}",
            "{serverName: 10.1.2.3}",
            "{serverName: 'fd00::1'}",
        ] {
            let spec = binding_spec(&format!(
                "budgetRef: {{name: b}}\nworkloads: [{{kind: Job, name: a}}]\nmetrics: {{scheme: https, tls: {tls}}}"
            ));
            assert_eq!(binding(&spec).map(drop), Ok(()), "tls: {tls}");
        }
        let https = binding_spec("budgetRef: {name: b}\nworkloads: [{kind: Job, name: a}]\nmetrics: {scheme: https}");
        assert_eq!(binding(&https).map(drop), Ok(()));
        // The CRD's rule lets this through (its characters are those of a name); rustls does
        // not (an all-numeric last label), so the operator must still say so.
        let numeric = binding_spec(
            "budgetRef: {name: b}\nworkloads: [{kind: Job, name: a}]\nmetrics: {scheme: https, tls: {serverName: '1.2.3'}}",
        );
        assert_eq!(
            binding(&numeric).unwrap_err().0,
            vec!["spec.metrics.tls.serverName: \"1.2.3\" is neither a DNS name nor an IP address"]
        );
        let bad_name = binding_spec(
            "budgetRef: {name: b}\nworkloads: [{kind: Job, name: a}]\nmetrics: {scheme: https, tls: {serverName: 'agent svc'}}",
        );
        assert_eq!(
            binding(&bad_name).unwrap_err().0,
            vec!["spec.metrics.tls.serverName: \"agent svc\" is neither a DNS name nor an IP address"]
        );
    }
}
