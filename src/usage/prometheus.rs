//! Token counters read from a Prometheus-compatible HTTP API (Prometheus, Thanos Query, Mimir,
//! VictoriaMetrics) instead of scraping each pod: the query of one binding's cycle
//! ([`query`]), and its answer read into one [`Answer`] per pod ([`answers`]), which
//! `usage::cycle::fold` counts exactly as it counts scrapes. Pure: the HTTP request is
//! `controller/prometheus.rs`'s.
//!
//! The query is always the operator's own: the binding's namespace and the exact names of the
//! pods it binds, escaped, never text from a spec. It selects the raw samples of the last
//! `window` (a range selector in an instant query), so each series comes with the time of
//! its latest sample, which decides what counts:
//!
//! - a sample from before the pod (or its metrics container) started is another pod's (a
//!   StatefulSet pod recreated under the same name) or the previous container's, and is
//!   never read as this one's;
//! - the series `up` of the pod's target, when Prometheus has it, says whether its last
//!   scrape failed: then the pod's answer is a failure, as a failed scrape is;
//! - a pod with no sample in the window is a failure (missing or stale series), unless it
//!   started within the window (Prometheus has not scraped it yet).
//!
//! Series of one pod from more than one target (two scrape jobs, say) would count the pod
//! twice: that is a failure too, naming the targets.

use std::{
    borrow::{Borrow, Cow},
    collections::{BTreeSet, HashMap},
    fmt,
    time::Duration,
};

use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;

use super::{Extractor, Usage, cycle::Answer, scrape::ScrapeError};
use crate::api::PrometheusSeries;

/// The series Prometheus writes for each target: 1 when its last scrape succeeded, else 0.
const UP: &str = "up";

/// The target labels that tell two scrapes of one pod apart.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// At most this many characters of the server's own error are quoted.
const MAX_SERVER_ERROR_CHARS: usize = 300;

/// One pod of a binding's query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodQuery {
    /// `metadata.name`: the value of the pod label.
    pub name: String,
    /// Samples before this are not the pod's: when the pod, or its metrics container, started
    /// (the later of the two, plus a second, since the kubelet reports whole seconds).
    pub not_before: Timestamp,
}

impl PodQuery {
    /// The pod `name` that started at `started_at`, its metrics container at
    /// `container_started` (when known).
    pub fn new(name: &str, started_at: Option<Timestamp>, container_started: Option<Timestamp>) -> Self {
        let started = started_at.max(container_started).unwrap_or(Timestamp::UNIX_EPOCH);
        Self {
            name: name.to_string(),
            not_before: started.checked_add(SignedDuration::from_secs(1)).unwrap_or(started),
        }
    }
}

/// The PromQL query of one binding's cycle: the raw samples of the last `window` of the
/// series `extractor` reads, and of `up`, of the pods `pods` in `namespace`, labelled as
/// `labels` says. Pod names are sorted and deduplicated; every value is escaped.
pub fn query(
    extractor: &Extractor,
    labels: &PrometheusSeries,
    namespace: &str,
    pods: &[&str],
    window: Duration,
) -> String {
    let names: BTreeSet<&str> = extractor.samples().chain([UP]).collect();
    let pods: BTreeSet<&str> = pods.iter().copied().collect();
    let alternatives = |values: &mut dyn Iterator<Item = &str>| values.map(regex_escape).collect::<Vec<_>>().join("|");
    format!(
        "{{__name__=~{},{}={},{}=~{}}}[{}ms]",
        string(&alternatives(&mut names.into_iter())),
        labels.namespace_label,
        string(namespace),
        labels.pod_label,
        string(&alternatives(&mut pods.into_iter())),
        window.as_millis().max(1),
    )
}

/// The form body of a POST to `/api/v1/query`: the query, and the server's own evaluation
/// timeout (`timeout`), so that it gives up when the operator does. (A POST, so that a long
/// list of pods is no long URL.)
pub fn form(query: &str, timeout: Duration) -> String {
    format!("query={}&timeout={}ms", form_encode(query), timeout.as_millis().max(1))
}

/// `application/x-www-form-urlencoded`: letters, digits and `-_.*` as they are, space as `+`,
/// every other byte as `%XX`.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3 / 2);
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A PromQL string literal: double-quoted, with `\` and `"` escaped and control characters
/// written as escapes, so that no value can end the string or the selector.
fn string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `value` as a regular expression (RE2) that matches exactly it: every metacharacter
/// escaped. (PromQL anchors a regex matcher at both ends.)
fn regex_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Why a query's answer as a whole cannot be read. Every pod of the query then fails with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("Prometheus answered with an error: {0}")]
    Server(String),
    #[error("Prometheus's answer is not a query result: {0}")]
    Malformed(String),
}

/// The JSON of `/api/v1/query`.
#[derive(Deserialize)]
struct Response<'a> {
    status: String,
    #[serde(default, borrow)]
    data: Option<Data<'a>>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data<'a> {
    result_type: String,
    #[serde(borrow)]
    result: Vec<MatrixSeries<'a>>,
}

#[derive(Deserialize)]
struct MatrixSeries<'a> {
    #[serde(borrow)]
    metric: HashMap<Text<'a>, Text<'a>>,
    #[serde(borrow)]
    values: Vec<(f64, Text<'a>)>,
}

/// A string of the answer, borrowed from its body unless it had escapes: an answer of 10,000
/// pods holds some 50,000 series of 6 labels and 8 samples each, and owned strings would cost
/// a million allocations and several times the body's size.
#[derive(PartialEq, Eq, Hash)]
struct Text<'a>(Cow<'a, str>);

impl Borrow<str> for Text<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// The latest sample of one series of one pod.
struct Latest<'a> {
    series: &'a MatrixSeries<'a>,
    at: Timestamp,
    value: f64,
    target: (&'a str, &'a str),
}

/// Reads a query's answer (`body`) into one answer per pod of `pods`, in their order: what
/// the query of [`query`] over `namespace`, `labels` and `extractor` returned at `now`.
/// Series of another namespace or of a pod not asked for are ignored (the query cannot
/// return them, but the answer is not trusted). `window` is the query's.
pub fn answers(
    body: &[u8],
    extractor: &Extractor,
    labels: &PrometheusSeries,
    namespace: &str,
    pods: &[PodQuery],
    now: Timestamp,
    window: Duration,
) -> Result<Vec<Result<Answer, ScrapeError>>, QueryError> {
    let response: Response = serde_json::from_slice(body).map_err(|e| QueryError::Malformed(cut(&e.to_string())))?;
    if response.status != "success" {
        let kind = response.error_type.unwrap_or_default();
        let error = response
            .error
            .unwrap_or_else(|| format!("status {:?}", response.status));
        return Err(QueryError::Server(cut(&format!("{kind}: {error}"))));
    }
    let data = response
        .data
        .ok_or_else(|| QueryError::Malformed("no data".to_string()))?;
    if data.result_type != "matrix" {
        return Err(QueryError::Malformed(format!(
            "a result of type {:?}, not matrix",
            cut(&data.result_type)
        )));
    }
    let mut by_pod: HashMap<&str, Vec<Latest>> = HashMap::new();
    for series in &data.result {
        if label(series, &labels.namespace_label) != Some(namespace) {
            continue;
        }
        let Some(pod) = label(series, &labels.pod_label) else {
            continue;
        };
        let Some((at, value)) = latest(series)? else { continue };
        let target = (
            label(series, TARGET_LABELS[0]).unwrap_or_default(),
            label(series, TARGET_LABELS[1]).unwrap_or_default(),
        );
        by_pod.entry(pod).or_default().push(Latest {
            series,
            at,
            value,
            target,
        });
    }
    let window = SignedDuration::try_from(window).unwrap_or(SignedDuration::MAX);
    let window_start = now.checked_sub(window).unwrap_or(Timestamp::MIN);
    Ok(pods
        .iter()
        .map(|pod| {
            let samples = by_pod.get(pod.name.as_str()).map(Vec::as_slice).unwrap_or_default();
            answer(extractor, pod, samples, window_start)
        })
        .collect())
}

/// One pod's answer from the latest samples of its series.
fn answer(
    extractor: &Extractor,
    pod: &PodQuery,
    samples: &[Latest],
    window_start: Timestamp,
) -> Result<Answer, ScrapeError> {
    // Samples from before the pod (or its container) started are not its own.
    let own: Vec<&Latest> = samples.iter().filter(|l| l.at >= pod.not_before).collect();
    let (ups, counters): (Vec<&Latest>, Vec<&Latest>) = own.into_iter().partition(|l| name(l) == UP);
    let counters: Vec<&Latest> = counters
        .into_iter()
        .filter(|l| extractor.samples().any(|s| s == name(l)))
        .collect();
    let targets: BTreeSet<(&str, &str)> = counters.iter().map(|l| l.target).collect();
    if targets.len() > 1 {
        let list: Vec<String> = targets
            .iter()
            .map(|(job, instance)| format!("job={job:?} instance={instance:?}"))
            .collect();
        return Err(ScrapeError::Prometheus(format!(
            "Prometheus has this pod's counters from {} targets ({}): counting each would count the pod more than once; scrape each pod once",
            targets.len(),
            list.join(", ")
        )));
    }
    // The health of the target the counters come from, or of any target of the pod.
    let up = ups
        .iter()
        .filter(|u| targets.is_empty() || targets.contains(&u.target))
        .max_by_key(|u| u.at);
    let newest_counter = counters.iter().map(|l| l.at).max();
    if let Some(up) = up
        && up.value != 1.0
        && newest_counter.is_none_or(|c| up.at >= c)
    {
        return Err(ScrapeError::Stale(format!(
            "Prometheus's last scrape of the pod, at {}, failed (up={})",
            second(up.at),
            up.value
        )));
    }
    let Some(at) = newest_counter.or(up.map(|u| u.at)) else {
        // Prometheus has no sample of the pod since it started.
        if pod.not_before > window_start {
            return Ok(Answer::NotYet);
        }
        return Err(ScrapeError::Stale(format!(
            "Prometheus has no sample of the pod since {} (missing or stale series)",
            second(window_start.max(pod.not_before))
        )));
    };
    let mut usage = Usage::default();
    for l in &counters {
        let series = l.series;
        extractor
            .add_series(
                &mut usage,
                name(l),
                |n| series.metric.get(n).map(|t| t.0.as_ref()),
                l.value,
            )
            .map_err(ScrapeError::Prometheus)?;
    }
    Ok(Answer::Sampled { usage, at })
}

/// The value of label `name` of `series`.
fn label<'a>(series: &'a MatrixSeries, name: &str) -> Option<&'a str> {
    series.metric.get(name).map(|t| t.0.as_ref())
}

/// The metric name of a series.
fn name<'a>(l: &Latest<'a>) -> &'a str {
    label(l.series, "__name__").unwrap_or_default()
}

/// The latest sample of a series: its time and value. `None` for a series without samples.
fn latest(series: &MatrixSeries) -> Result<Option<(Timestamp, f64)>, QueryError> {
    let Some((seconds, value)) = series.values.iter().max_by(|a, b| a.0.total_cmp(&b.0)) else {
        return Ok(None);
    };
    let millis = (seconds * 1000.0).round();
    let at = (millis.is_finite() && millis.abs() < 1e15)
        .then(|| Timestamp::from_millisecond(millis as i64).ok())
        .flatten()
        .ok_or_else(|| QueryError::Malformed(format!("sample time {seconds} is no time")))?;
    let value = value
        .0
        .parse::<f64>()
        .map_err(|_| QueryError::Malformed(format!("sample value {:?} is no number", cut(&value.0))))?;
    Ok(Some((at, value)))
}

/// A time to the second, for messages.
fn second(t: Timestamp) -> Timestamp {
    t.round(jiff::Unit::Second).unwrap_or(t)
}

/// At most [`MAX_SERVER_ERROR_CHARS`] characters of `text`.
fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_SERVER_ERROR_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// The pods' answers when the query as a whole failed: the same failure for each.
pub fn all_failed(pods: usize, error: impl Fn() -> ScrapeError) -> Vec<Result<Answer, ScrapeError>> {
    (0..pods).map(|_| Err(error())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MetricsFormat, TokenType};

    const NOW: &str = "2026-11-30T12:00:00Z";
    const WINDOW: Duration = Duration::from_secs(120);

    fn otel() -> Extractor {
        Extractor::new(MetricsFormat::OpenTelemetry, &[])
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// Seconds since the epoch of `NOW` minus `ago` seconds, as Prometheus writes sample times.
    fn at(ago: f64) -> f64 {
        ts(NOW).as_millisecond() as f64 / 1000.0 - ago
    }

    /// A pod started an hour before `NOW`.
    fn pod(name: &str) -> PodQuery {
        PodQuery::new(name, Some(ts("2026-11-30T11:00:00Z")), None)
    }

    /// One series of a matrix answer: its labels and its samples `(seconds ago, value)`.
    fn series(labels: &[(&str, &str)], samples: &[(f64, &str)]) -> serde_json::Value {
        let metric: serde_json::Map<String, serde_json::Value> =
            labels.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
        let values: Vec<serde_json::Value> = samples
            .iter()
            .map(|(ago, v)| serde_json::json!([at(*ago), v]))
            .collect();
        serde_json::json!({"metric": metric, "values": values})
    }

    fn body(result: Vec<serde_json::Value>) -> Vec<u8> {
        serde_json::to_vec(
            &serde_json::json!({"status": "success", "data": {"resultType": "matrix", "result": result}}),
        )
        .unwrap()
    }

    fn input(pod: &str, model: &str, samples: &[(f64, &str)]) -> serde_json::Value {
        series(
            &[
                ("__name__", "gen_ai_client_token_usage_sum"),
                ("namespace", "agents"),
                ("pod", pod),
                ("job", "agents"),
                ("instance", "10.0.0.1:9464"),
                ("gen_ai_token_type", "input"),
                ("gen_ai_request_model", model),
            ],
            samples,
        )
    }

    fn up(pod: &str, samples: &[(f64, &str)]) -> serde_json::Value {
        series(
            &[
                ("__name__", "up"),
                ("namespace", "agents"),
                ("pod", pod),
                ("job", "agents"),
                ("instance", "10.0.0.1:9464"),
            ],
            samples,
        )
    }

    fn read(body: &[u8], pods: &[PodQuery]) -> Result<Vec<Result<Answer, ScrapeError>>, QueryError> {
        answers(
            body,
            &otel(),
            &PrometheusSeries::default(),
            "agents",
            pods,
            ts(NOW),
            WINDOW,
        )
    }

    fn one(body: &[u8], pod: PodQuery) -> Result<Answer, ScrapeError> {
        read(body, &[pod]).unwrap().pop().unwrap()
    }

    fn sampled(answer: Result<Answer, ScrapeError>) -> (Usage, Timestamp) {
        match answer {
            Ok(Answer::Sampled { usage, at }) => (usage, at),
            other => panic!("not a sample: {other:?}"),
        }
    }

    #[test]
    fn strings_written_with_escapes_read_as_the_same_strings() {
        // Go's encoder writes `&`, `<` and `>` as \u escapes; any string may carry escapes.
        let plain = body(vec![input("agent-1", "a&b", &[(5.0, "40")])]);
        let text = String::from_utf8(plain.clone()).unwrap();
        let escaped = text
            .replace("agent-1", "agent\\u002d1")
            .replace("a&b", "a\\u0026b")
            .replace("\"40\"", "\"4\\u0030\"");
        assert_ne!(escaped, text);
        assert_eq!(
            sampled(one(escaped.as_bytes(), pod("agent-1"))),
            sampled(one(&plain, pod("agent-1")))
        );
    }

    #[test]
    fn the_query_names_the_namespace_the_pods_and_the_formats_series_escaped() {
        let labels = PrometheusSeries::default();
        let q = query(&otel(), &labels, "agents", &["b-1", "a.x", "b-1"], WINDOW);
        assert_eq!(
            q,
            r#"{__name__=~"gen_ai_client_inference_usage_input_tokens_total|gen_ai_client_inference_usage_output_tokens_total|gen_ai_client_token_usage_sum|up",namespace="agents",pod=~"a\\.x|b-1"}[120000ms]"#
        );
        let labels = PrometheusSeries {
            namespace_label: "kubernetes_namespace".into(),
            pod_label: "kubernetes_pod_name".into(),
        };
        let vllm = Extractor::new(MetricsFormat::Vllm, &[]);
        let q = query(&vllm, &labels, "ns", &["p"], Duration::from_millis(1500));
        assert!(
            q.contains(r#"kubernetes_namespace="ns",kubernetes_pod_name=~"p"}[1500ms]"#),
            "{q}"
        );
        assert!(q.contains("vllm:prompt_tokens_total|"), "{q}");
    }

    #[test]
    fn the_form_encodes_every_byte_that_is_not_plain() {
        assert_eq!(
            form(r#"{a=~"x|y"}[1s] +é&="#, Duration::from_secs(5)),
            "query=%7Ba%3D%7E%22x%7Cy%22%7D%5B1s%5D+%2B%C3%A9%26%3D&timeout=5000ms"
        );
    }

    #[test]
    fn no_value_can_leave_its_string_or_widen_its_regex() {
        assert_eq!(string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(string("x\ny\u{7}"), r#""x\ny\u0007""#);
        assert_eq!(
            regex_escape("a.b|c*(d)[e]{f}^$+?\\"),
            r"a\.b\|c\*\(d\)\[e\]\{f\}\^\$\+\?\\"
        );
        // A hostile "pod name" (never a real one: the API server refuses it) stays one value.
        let q = query(
            &otel(),
            &PrometheusSeries::default(),
            r#"ns",namespace=~".*"#,
            &[r#"p"} or up{x=""#, ".*"],
            WINDOW,
        );
        assert!(q.contains(r#"namespace="ns\",namespace=~\".*""#), "{q}");
        assert!(q.contains(r#"pod=~"\\.\\*|p\"\\} or up\\{x=\"""#), "{q}");
    }

    #[test]
    fn the_latest_sample_of_each_series_counts_with_its_time() {
        let body = body(vec![
            input("a", "m", &[(30.0, "100"), (15.0, "150")]),
            input("a", "n", &[(15.0, "5")]),
            up("a", &[(15.0, "1")]),
            input("b", "m", &[(10.0, "7")]),
        ]);
        let answers = read(&body, &[pod("a"), pod("b")]).unwrap();
        let (usage, when) = sampled(answers[0].clone());
        assert_eq!(usage.get("m", TokenType::Input), Some(150));
        assert_eq!(usage.get("n", TokenType::Input), Some(5));
        assert_eq!(when.as_second(), ts(NOW).as_second() - 15);
        let (usage, _) = sampled(answers[1].clone());
        assert_eq!(usage.total(TokenType::Input), 7);
    }

    #[test]
    fn a_pod_scraped_fine_without_token_series_has_zero_usage() {
        let (usage, _) = sampled(one(&body(vec![up("a", &[(5.0, "1")])]), pod("a")));
        assert!(usage.is_empty());
    }

    #[test]
    fn series_of_other_namespaces_pods_and_metrics_are_ignored() {
        let mut other_ns = input("a", "m", &[(5.0, "1000")]);
        other_ns["metric"]["namespace"] = "other".into();
        let mut other_metric = input("a", "m", &[(5.0, "1000")]);
        other_metric["metric"]["__name__"] = "process_cpu_seconds_total".into();
        let body = body(vec![
            other_ns,
            other_metric,
            input("c", "m", &[(5.0, "1000")]),
            input("a", "m", &[(5.0, "3")]),
        ]);
        let (usage, _) = sampled(one(&body, pod("a")));
        assert_eq!(usage.total(TokenType::Input), 3);
    }

    #[test]
    fn samples_from_before_the_pod_started_are_another_pods() {
        // A StatefulSet pod recreated under the same name 10s ago: the old pod's last sample
        // (20s ago) is not the new one's, and the new one has none yet.
        let body = body(vec![input("a", "m", &[(20.0, "900")]), up("a", &[(20.0, "1")])]);
        let new = PodQuery::new("a", Some(ts(NOW) - SignedDuration::from_secs(10)), None);
        assert_eq!(one(&body, new), Ok(Answer::NotYet));
        // Its metrics container restarted 10s ago: the same.
        let restarted = PodQuery::new(
            "a",
            Some(ts("2026-11-30T11:00:00Z")),
            Some(ts(NOW) - SignedDuration::from_secs(10)),
        );
        assert_eq!(one(&body, restarted.clone()), Ok(Answer::NotYet));
        // Within the second it started (the kubelet's times are whole seconds): not trusted.
        let body_2 = self::body(vec![input("a", "m", &[(9.5, "1")])]);
        assert_eq!(one(&body_2, restarted.clone()), Ok(Answer::NotYet));
        // Once Prometheus has scraped the new container, its sample counts.
        let body = self::body(vec![input("a", "m", &[(20.0, "900"), (5.0, "4")])]);
        let (usage, _) = sampled(one(&body, restarted));
        assert_eq!(usage.total(TokenType::Input), 4);
    }

    #[test]
    fn a_failed_last_scrape_or_no_sample_is_a_failure() {
        let down = body(vec![
            input("a", "m", &[(30.0, "100")]),
            up("a", &[(30.0, "1"), (15.0, "0")]),
        ]);
        let e = one(&down, pod("a")).unwrap_err();
        assert_eq!(e.kind(), "stale");
        assert!(e.to_string().contains("failed (up=0)"), "{e}");
        // Up again since: its counters count.
        let back = body(vec![
            input("a", "m", &[(30.0, "100"), (5.0, "120")]),
            up("a", &[(15.0, "0"), (5.0, "1")]),
        ]);
        assert_eq!(sampled(one(&back, pod("a"))).0.total(TokenType::Input), 120);
        // Nothing at all in the window for a pod that started before it.
        let e = one(&body(vec![]), pod("a")).unwrap_err();
        assert_eq!(e.kind(), "stale");
        assert_eq!(
            e.to_string(),
            "Prometheus has no sample of the pod since 2026-11-30T11:58:00Z (missing or stale series)"
        );
        // A pod that started within the window: not scraped yet, nothing wrong.
        let young = PodQuery::new("a", Some(ts(NOW) - SignedDuration::from_secs(30)), None);
        assert_eq!(one(&body(vec![]), young), Ok(Answer::NotYet));
    }

    #[test]
    fn counters_of_one_pod_from_two_targets_are_refused() {
        let mut twice = input("a", "m", &[(5.0, "100")]);
        twice["metric"]["job"] = "podmonitor".into();
        let e = one(&body(vec![input("a", "m", &[(5.0, "100")]), twice]), pod("a")).unwrap_err();
        assert!(e.to_string().contains("from 2 targets"), "{e}");
    }

    #[test]
    fn values_that_are_no_token_count_fail_the_pod_not_the_query() {
        for (value, want) in [
            ("NaN", "value is NaN"),
            ("+Inf", "value is +Inf"),
            ("-3", "value -3 is negative"),
            ("1.5", "not a whole number"),
            ("1e16", "above the limit"),
        ] {
            let body = body(vec![input("a", "m", &[(5.0, value)]), input("b", "m", &[(5.0, "1")])]);
            let answers = read(&body, &[pod("a"), pod("b")]).unwrap();
            let e = answers[0].clone().unwrap_err();
            assert!(e.to_string().contains(want), "{value}: {e}");
            assert!(answers[1].is_ok(), "{value}");
        }
        // A series without a model label counts as model "unknown"; one without its token
        // type label does not count.
        let mut no_model = input("a", "m", &[(5.0, "2")]);
        no_model["metric"]
            .as_object_mut()
            .unwrap()
            .remove("gen_ai_request_model");
        let mut no_type = input("a", "x", &[(5.0, "50")]);
        no_type["metric"].as_object_mut().unwrap().remove("gen_ai_token_type");
        let (usage, _) = sampled(one(&body(vec![no_model, no_type]), pod("a")));
        assert_eq!(usage.get("unknown", TokenType::Input), Some(2));
        assert_eq!(usage.len(), 1);
    }

    #[test]
    fn garbage_and_errors_are_clear_errors() {
        let cases: [(&[u8], &str); 8] = [
            (b"", "not a query result: EOF"),
            (b"<html>502 Bad Gateway</html>", "not a query result: expected value"),
            (
                br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
                "Prometheus answered with an error: bad_data: parse error",
            ),
            (br#"{"status":"success"}"#, "no data"),
            (
                br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
                "a result of type \"vector\", not matrix",
            ),
            (
                br#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"pod":1},"values":[]}]}}"#,
                "invalid type",
            ),
            (
                br#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"namespace":"agents","pod":"a"},"values":[[1e300,"1"]]}]}}"#,
                "is no time",
            ),
            (
                br#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"namespace":"agents","pod":"a"},"values":[[1,"lots"]]}]}}"#,
                "\"lots\" is no number",
            ),
        ];
        for (body, want) in cases {
            let e = read(body, &[pod("a")])
                .err()
                .unwrap_or_else(|| panic!("{body:?} is read"));
            assert!(e.to_string().contains(want), "{}: {e}", String::from_utf8_lossy(body));
        }
        // A huge error message is cut.
        let long = format!(r#"{{"status":"error","error":"{}"}}"#, "x".repeat(100_000));
        let e = read(long.as_bytes(), &[pod("a")]).unwrap_err();
        assert!(e.to_string().len() < 400, "{}", e.to_string().len());
    }

    #[test]
    fn a_large_answer_is_read_whole() {
        let result: Vec<_> = (0..5000)
            .map(|i| input(&format!("p{i}"), "m", &[(20.0, "1"), (5.0, &i.to_string())]))
            .collect();
        let pods: Vec<PodQuery> = (0..5000).map(|i| pod(&format!("p{i}"))).collect();
        let answers = read(&body(result), &pods).unwrap();
        assert_eq!(sampled(answers[4999].clone()).0.total(TokenType::Input), 4999);
    }
}
