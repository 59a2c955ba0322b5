//! Reads token counters out of a scraped metrics body (Prometheus text format 0.0.4 or
//! OpenMetrics 1.0), following one of the conventions of [`MetricsFormat`].
//!
//! Built for speed on large expositions where the token counters are a small part: a line is
//! looked at only as far as needed to tell that it is not a wanted series (its first byte,
//! then a prefix compare against the few wanted sample names), with no allocation and no
//! UTF-8 check. Only the lines of the wanted series are parsed, and those strictly: any defect
//! there is a [`ParseError`] naming the line, so that bad input never turns into a wrong count.
//!
//! Samples are matched by their *sample* name, so a counter works in both text formats
//! (Prometheus: `# TYPE foo_total counter`, OpenMetrics: `# TYPE foo counter`, and
//! both expose the sample `foo_total`); `_created` series never match.
//!
//! ```
//! use tokenbudget::api::{MetricsFormat, TokenType};
//! use tokenbudget::usage::Extractor;
//!
//! let body = b"# TYPE vllm:prompt_tokens_total counter\n\
//!              vllm:prompt_tokens_total{model_name=\"llama\"} 1200.0\n";
//! let usage = Extractor::new(MetricsFormat::Vllm, &[]).extract(body).unwrap();
//! assert_eq!(usage.get("llama", TokenType::Input), Some(1200));
//! ```

use std::collections::BTreeMap;

use memchr::{memchr, memchr2};

use super::ledger::{MAX_MODEL_NAME_BYTES, OTHER_MODELS};
use crate::api::{CustomMetric, MetricsEndpoint, MetricsFormat, TokenType};

/// The largest value one series may have (10^15 tokens): anything above is taken as a broken
/// exporter, not as usage. Below 2^53, so every accepted value is exact in a float.
pub const MAX_SERIES_VALUE: u64 = 1_000_000_000_000_000;

/// The model that series without a (non-empty) model label count under.
pub const UNKNOWN_MODEL: &str = "unknown";

/// Why a metrics body could not be read. `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// The line of the body, counting from 1.
    pub line: usize,
    /// What is wrong with it, for a condition message or an Event.
    pub reason: String,
}

impl ParseError {
    /// The error at line `line` (1-based), for `reason`.
    fn at(line: usize, reason: impl std::fmt::Display) -> Self {
        Self {
            line,
            reason: reason.to_string(),
        }
    }
}

/// The token counters of one scrape: per model and token type, the sum of all series' values.
///
/// Only (model, type) pairs that some series reported are present (possibly with value 0).
/// With subject labels ([`Extractor::with_subjects`]), also per subject, model and type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Model -> [input, output].
    models: BTreeMap<String, [Option<u64>; 2]>,
    /// Per subject label, in the extractor's order: (subject, model) -> [input, output]. The
    /// subject is `None` for the series beyond the first [`MAX_SCRAPE_SUBJECTS`] (subject,
    /// model) pairs of the label, and for values longer than [`MAX_SUBJECT_BYTES`]: summed.
    subjects: Vec<(String, SubjectSeries)>,
}

/// One subject label's series of a scrape: (subject, model) -> [input, output].
pub type SubjectSeries = BTreeMap<(Option<String>, String), [Option<u64>; 2]>;

/// At most this many subject labels per budget (`spec.subjects` has at most 4 entries).
pub const MAX_SUBJECT_LABELS: usize = 4;
/// At most this many (subject, model) pairs of one label are read one by one from one scrape;
/// the series beyond are summed as no subject in particular. Bounds what a hostile endpoint
/// can make the operator hold (its body is bounded too).
pub const MAX_SCRAPE_SUBJECTS: usize = 10_000;
/// The longest subject kept, in bytes: longer values are summed as no subject in particular
/// (truncating them could merge two subjects).
pub const MAX_SUBJECT_BYTES: usize = 128;

impl Usage {
    /// The summed counter of `model` and `token_type`, if any series reported it.
    pub fn get(&self, model: &str, token_type: TokenType) -> Option<u64> {
        self.models.get(model).and_then(|v| v[slot(token_type)])
    }

    /// Every (model, token type, value), ordered by model, then input before output.
    pub fn iter(&self) -> impl Iterator<Item = (&str, TokenType, u64)> + '_ {
        self.models.iter().flat_map(|(model, values)| {
            TokenType::ALL
                .into_iter()
                .filter_map(move |t| values[slot(t)].map(|v| (model.as_str(), t, v)))
        })
    }

    /// The sum over all models of one token type (saturating).
    pub fn total(&self, token_type: TokenType) -> u64 {
        self.models
            .values()
            .filter_map(|v| v[slot(token_type)])
            .fold(0, u64::saturating_add)
    }

    /// The number of (model, token type) pairs.
    pub fn len(&self) -> usize {
        self.models.values().map(|v| v.iter().flatten().count()).sum()
    }

    /// No series reported anything.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The subject labels read.
    pub fn subject_labels(&self) -> impl Iterator<Item = &str> + '_ {
        self.subjects.iter().map(|(l, _)| l.as_str())
    }

    /// The series of the subject label `label`, if the extractor read it: (subject, model,
    /// token type, value), the subject `None` for the series summed beyond the bounds.
    pub fn subjects(&self, label: &str) -> Option<impl Iterator<Item = (Option<&str>, &str, TokenType, u64)> + '_> {
        let (_, series) = self.subjects.iter().find(|(l, _)| l == label)?;
        Some(series.iter().flat_map(|((subject, model), values)| {
            TokenType::ALL
                .into_iter()
                .filter_map(move |t| values[slot(t)].map(|v| (subject.as_deref(), model.as_str(), t, v)))
        }))
    }

    /// Adds one series' value to subject `subject` of the label at `index`.
    fn add_subject(
        &mut self,
        index: usize,
        subject: &str,
        model: &str,
        token_type: TokenType,
        value: u64,
    ) -> Result<(), LineError> {
        let Some((_, series)) = self.subjects.get_mut(index) else {
            return Ok(());
        };
        // A name the ledger keeps as `(other)` anyway: not one copy of it per label.
        let model = if model.len() > MAX_MODEL_NAME_BYTES {
            OTHER_MODELS
        } else {
            model
        };
        let named = subject.len() <= MAX_SUBJECT_BYTES
            && (series.len() < MAX_SCRAPE_SUBJECTS
                || series.contains_key(&(Some(subject.to_owned()), model.to_owned())));
        let key = (named.then(|| subject.to_owned()), model.to_owned());
        let v = &mut series.entry(key).or_default()[slot(token_type)];
        *v = Some(
            v.unwrap_or(0)
                .checked_add(value)
                .ok_or_else(|| LineError::SumOverflows {
                    model: Excerpt::quoted(model),
                    token_type,
                })?,
        );
        Ok(())
    }

    /// Adds one series' value. Allocates the model name only when it is new.
    fn add(&mut self, model: &str, token_type: TokenType, value: u64) -> Result<(), LineError> {
        if let Some(values) = self.models.get_mut(model) {
            let v = &mut values[slot(token_type)];
            let sum = v
                .unwrap_or(0)
                .checked_add(value)
                .ok_or_else(|| LineError::SumOverflows {
                    model: Excerpt::quoted(model),
                    token_type,
                })?;
            *v = Some(sum);
            return Ok(());
        }
        let mut values = [None; 2];
        values[slot(token_type)] = Some(value);
        self.models.insert(model.to_owned(), values);
        Ok(())
    }
}

fn slot(token_type: TokenType) -> usize {
    match token_type {
        TokenType::Input => 0,
        TokenType::Output => 1,
    }
}

/// Where the token type of a series comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TypeSource {
    /// Every series of the metric has this type.
    Fixed(TokenType),
    /// The value of this label, `input` or `output`; series with another value or without
    /// the label are ignored.
    Label(String),
}

/// One wanted sample name and how to read its series.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// The exact sample name, e.g. `gen_ai_client_token_usage_sum`.
    sample: String,
    /// Labels holding the model, most preferred first; the first present and non-empty wins.
    model_labels: Vec<String>,
    token_type: TypeSource,
    /// The subject labels of the budget ([`Extractor::with_subjects`]), at most
    /// [`MAX_SUBJECT_LABELS`].
    subject_labels: Vec<String>,
    /// A label value that means "none" in this format, besides the empty one: LiteLLM writes
    /// Python's `None` for a request without a user, team or end user.
    none: Option<&'static str>,
}

impl Rule {
    fn new(sample: &str, model_labels: &[&str], token_type: TypeSource) -> Self {
        Rule {
            sample: sample.to_owned(),
            model_labels: model_labels.iter().map(|l| (*l).to_owned()).collect(),
            token_type,
            subject_labels: Vec::new(),
            none: None,
        }
    }

    /// The same rule, reading `none` as no value of a subject label.
    fn none_as(mut self, none: &'static str) -> Self {
        self.none = Some(none);
        self
    }
}

/// How a line starts, by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// A metric name character that starts no wanted sample name, or `{` (a quoted name).
    Skip,
    /// The first byte of some wanted sample name.
    Candidate,
    /// `#`: HELP, TYPE, UNIT, EOF or another comment.
    Comment,
    /// Space, tab or CR: a blank line or leading whitespace.
    Blank,
    /// Anything else: not a metrics text line.
    Bad,
}

/// Reads the token counters of one metrics format out of metrics bodies. Build it once per
/// binding spec and reuse it: [`Extractor::extract`] takes `&self`.
#[derive(Debug, Clone)]
pub struct Extractor {
    rules: Vec<Rule>,
    start: [Start; 256],
}

const OTEL_MODEL_LABELS: [&str; 2] = ["gen_ai_request_model", "gen_ai_response_model"];

impl Extractor {
    /// The extractor for `format`. `custom` is read only for [`MetricsFormat::Custom`]: each
    /// entry matches the sample `metric`, and also `metric_total` unless `metric` already ends
    /// in `_total` (an OpenMetrics counter family `foo` exposes `foo_total`). An entry with
    /// neither `tokenType` nor `tokenTypeLabel` is skipped, one with both uses `tokenType`
    /// (the spec validation rejects both cases); of entries naming the same sample, the first
    /// wins.
    pub fn new(format: MetricsFormat, custom: &[CustomMetric]) -> Self {
        use TokenType::{Input, Output};
        use TypeSource::{Fixed, Label};
        let rules = match format {
            MetricsFormat::OpenTelemetry => vec![
                Rule::new(
                    "gen_ai_client_token_usage_sum",
                    &OTEL_MODEL_LABELS,
                    Label("gen_ai_token_type".into()),
                ),
                Rule::new(
                    "gen_ai_client_inference_usage_input_tokens_total",
                    &OTEL_MODEL_LABELS,
                    Fixed(Input),
                ),
                Rule::new(
                    "gen_ai_client_inference_usage_output_tokens_total",
                    &OTEL_MODEL_LABELS,
                    Fixed(Output),
                ),
            ],
            // prometheus_client 0.23 and later escape `:` to `_` when it answers in OpenMetrics
            // (it may, for the operator's Accept header): both spellings are vLLM's counters.
            // An exposition carries one of them, never both.
            MetricsFormat::Vllm => vec![
                Rule::new("vllm:prompt_tokens_total", &["model_name"], Fixed(Input)),
                Rule::new("vllm:generation_tokens_total", &["model_name"], Fixed(Output)),
                Rule::new("vllm_prompt_tokens_total", &["model_name"], Fixed(Input)),
                Rule::new("vllm_generation_tokens_total", &["model_name"], Fixed(Output)),
            ],
            MetricsFormat::LiteLlm => vec![
                Rule::new("litellm_input_tokens_metric_total", &["model"], Fixed(Input)).none_as("None"),
                Rule::new("litellm_output_tokens_metric_total", &["model"], Fixed(Output)).none_as("None"),
            ],
            MetricsFormat::Custom => {
                let mut rules: Vec<Rule> = Vec::new();
                for c in custom.iter().filter(|c| !c.metric.is_empty()) {
                    let token_type = match (c.token_type, &c.token_type_label) {
                        (Some(t), _) => Fixed(t),
                        (None, Some(label)) => Label(label.clone()),
                        (None, None) => continue,
                    };
                    let model_labels: Vec<&str> = c.model_label.as_deref().into_iter().collect();
                    let mut samples = vec![c.metric.clone()];
                    if !c.metric.ends_with("_total") {
                        samples.push(format!("{}_total", c.metric));
                    }
                    for sample in samples {
                        if !rules.iter().any(|r| r.sample == sample) {
                            rules.push(Rule::new(&sample, &model_labels, token_type.clone()));
                        }
                    }
                }
                rules
            }
        };
        let mut start = [Start::Bad; 256];
        for b in 0..=255u8 {
            start[b as usize] = match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'_' | b':' | b'{' => Start::Skip,
                b'#' => Start::Comment,
                b' ' | b'\t' | b'\r' => Start::Blank,
                _ => Start::Bad,
            };
        }
        for r in &rules {
            start[r.sample.as_bytes()[0] as usize] = Start::Candidate;
        }
        Extractor { rules, start }
    }

    /// The extractor for a binding's `spec.metrics`.
    pub fn for_endpoint(endpoint: &MetricsEndpoint) -> Self {
        Self::new(endpoint.format, endpoint.custom.as_deref().unwrap_or_default())
    }

    /// This extractor, also reading the series per value of each of `labels` (a budget's
    /// `spec.subjects`; the first [`MAX_SUBJECT_LABELS`]): see [`Usage::subjects`].
    pub fn with_subjects(&self, labels: &[&str]) -> Self {
        let mut extractor = self.clone();
        let labels: Vec<String> = labels
            .iter()
            .take(MAX_SUBJECT_LABELS)
            .map(|l| (*l).to_owned())
            .collect();
        for rule in &mut extractor.rules {
            rule.subject_labels.clone_from(&labels);
        }
        extractor
    }

    /// The subject labels this extractor reads.
    pub fn subject_labels(&self) -> &[String] {
        self.rules.first().map_or(&[], |r| &r.subject_labels)
    }

    /// An empty usage with a place for each subject label.
    fn empty_usage(&self) -> Usage {
        Usage {
            models: BTreeMap::new(),
            subjects: self
                .subject_labels()
                .iter()
                .map(|l| (l.clone(), SubjectSeries::new()))
                .collect(),
        }
    }

    /// The sample names this extractor reads.
    pub fn samples(&self) -> impl Iterator<Item = &str> + '_ {
        self.rules.iter().map(|r| r.sample.as_str())
    }

    /// Adds one series read from elsewhere than a metrics body (a Prometheus query's answer)
    /// to `usage`, by the rules of a body's series: `sample` is its sample name, `label` looks
    /// up its labels, `value` its value. `Ok(false)`: not a series of the format, or one that
    /// does not count (its token type label is missing or neither `input` nor `output`). A
    /// value that cannot be a token count (NaN, infinite, negative, fractional, above
    /// [`MAX_SERIES_VALUE`]) is an error, as in a body.
    pub fn add_series<'l>(
        &self,
        usage: &mut Usage,
        sample: &str,
        label: impl Fn(&str) -> Option<&'l str>,
        value: f64,
    ) -> Result<bool, String> {
        let Some(rule) = self.rules.iter().find(|r| r.sample == sample) else {
            return Ok(false);
        };
        let token_type = match &rule.token_type {
            TypeSource::Fixed(t) => *t,
            TypeSource::Label(name) => match label(name) {
                Some("input") => TokenType::Input,
                Some("output") => TokenType::Output,
                _ => return Ok(false),
            },
        };
        let model = rule
            .model_labels
            .iter()
            .find_map(|l| label(l).filter(|v| !v.is_empty()))
            .unwrap_or(UNKNOWN_MODEL);
        let value = counter_value(value).map_err(|e| format!("{sample}: {e}"))?;
        usage.add(model, token_type, value).map_err(|e| e.to_string())?;
        if usage.subjects.len() != rule.subject_labels.len() {
            usage.subjects = rule
                .subject_labels
                .iter()
                .map(|l| (l.clone(), SubjectSeries::new()))
                .collect();
        }
        for (index, name) in rule.subject_labels.iter().enumerate() {
            if let Some(subject) = label(name).filter(|v| !v.is_empty() && Some(*v) != rule.none) {
                usage
                    .add_subject(index, subject, model, token_type, value)
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(true)
    }

    /// Sums the wanted series of `body` per (model, token type).
    ///
    /// Lines of other metrics are skipped unchecked, except that a line must start like a
    /// metrics text line (a name character, `{`, `#` or whitespace), so that an HTML page or
    /// a compressed body is an error rather than "no usage". Reading stops at `# EOF`. A wanted
    /// series must be well-formed (valid UTF-8, terminated label set, a value, at most a
    /// timestamp and an exemplar after it, at most [`MAX_LINE_BYTES`] long) and, when it
    /// counts, its value must be an integral number in `0..=MAX_SERIES_VALUE`. An empty body
    /// is zero usage.
    pub fn extract(&self, body: &[u8]) -> Result<Usage, ParseError> {
        let mut extraction = self.extraction();
        extraction.feed(body)?;
        extraction.finish()
    }

    /// Reads a body piece by piece, as it streams: [`Extraction::feed`] each piece, then
    /// [`Extraction::finish`]. The answer is [`Extractor::extract`]'s over the whole body,
    /// however it is cut into pieces, and nothing of the body is held but the start of the
    /// line a piece ends in, up to [`MAX_LINE_BYTES`].
    pub fn extraction(&self) -> Extraction<'_> {
        Extraction {
            extractor: self,
            usage: self.empty_usage(),
            scratch: String::new(),
            subject_scratch: String::new(),
            lines: 0,
            held: Vec::new(),
            skipping: false,
            ended: false,
        }
    }

    /// What a line is, told from its first [`MAX_LINE_BYTES`] bytes (`head`, byte order mark
    /// removed).
    #[inline]
    fn kind(&self, head: &[u8]) -> Result<LineKind<'_>, LineError> {
        let Some(&first) = head.first() else {
            return Ok(LineKind::Other);
        };
        let (mut line, mut start) = (head, self.start[first as usize]);
        if start == Start::Blank {
            line = head.trim_ascii_start();
            let Some(&first) = line.first() else {
                return Ok(LineKind::Other);
            };
            start = self.start[first as usize];
        }
        Ok(match start {
            Start::Skip | Start::Blank => LineKind::Other,
            Start::Comment if line.trim_ascii_end() == b"# EOF" => LineKind::Eof,
            Start::Comment => LineKind::Other,
            Start::Bad => return Err(LineError::BadStart(line[0])),
            Start::Candidate => match self.rules.iter().find(|r| names_sample(line, &r.sample)) {
                Some(rule) => LineKind::Series {
                    rule,
                    indent: head.len() - line.len(),
                },
                None => LineKind::Other,
            },
        })
    }
}

/// The longest line of a wanted series: a longer one is an error. Lines of other metrics may
/// be of any length: they are skipped as they stream, never held. A line is told apart by its
/// first `MAX_LINE_BYTES` bytes.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

const BYTE_ORDER_MARK: &[u8] = b"\xef\xbb\xbf";

/// What a line is.
enum LineKind<'r> {
    /// Not a series of the format (another metric, a comment, a blank line): skipped.
    Other,
    /// `# EOF`: nothing after it is read.
    Eof,
    /// A series of `rule`, starting `indent` bytes into the line.
    Series { rule: &'r Rule, indent: usize },
}

/// A metrics body being read as it streams, from [`Extractor::extraction`]. What it holds
/// of the body is at most [`MAX_LINE_BYTES`]: the start of the current line, when that line
/// began in an earlier piece. Past that, the line is told apart and skipped to its end (or
/// is an error, if it is a wanted series).
pub struct Extraction<'x> {
    extractor: &'x Extractor,
    usage: Usage,
    /// A model name with its escapes resolved.
    scratch: String,
    /// A subject with its escapes resolved.
    subject_scratch: String,
    /// Lines completed so far.
    lines: usize,
    /// The start of the current line, when it began in an earlier piece.
    held: Vec<u8>,
    /// The current line is skipped to its end: it is too long to hold and no wanted series.
    skipping: bool,
    /// `# EOF` was read: the rest is not.
    ended: bool,
}

impl Extraction<'_> {
    /// Reads the next piece of the body.
    pub fn feed(&mut self, mut piece: &[u8]) -> Result<(), ParseError> {
        while !self.ended && !piece.is_empty() {
            let Some(end) = memchr(b'\n', piece) else {
                return self.hold(piece);
            };
            let line = &piece[..end];
            piece = &piece[end + 1..];
            if !self.skipping && self.held.is_empty() {
                self.line(line)?;
                continue;
            }
            self.hold(line)?;
            if self.skipping || self.ended {
                self.skipping = false;
                self.lines += 1;
                continue;
            }
            let held = std::mem::take(&mut self.held);
            let read = self.line(&held);
            self.held = held;
            self.held.clear();
            read?;
        }
        Ok(())
    }

    /// The usage of the whole body, once its last piece is in.
    pub fn finish(mut self) -> Result<Usage, ParseError> {
        if !self.ended && !self.skipping && !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            self.line(&held)?;
        }
        Ok(self.usage)
    }

    /// Keeps `piece` as the start of the current line, up to [`MAX_LINE_BYTES`]; past that,
    /// the line is skipped to its end, or is an error if it is a wanted series.
    fn hold(&mut self, piece: &[u8]) -> Result<(), ParseError> {
        if self.skipping {
            return Ok(());
        }
        let room = MAX_LINE_BYTES - self.held.len();
        if piece.len() <= room {
            self.held.extend_from_slice(piece);
            return Ok(());
        }
        self.held.extend_from_slice(&piece[..room]);
        let number = self.lines + 1;
        match self.extractor.kind(head(&self.held, number)) {
            Err(e) => return Err(ParseError::at(number, e)),
            Ok(LineKind::Other) => self.skipping = true,
            Ok(LineKind::Eof) => self.ended = true,
            Ok(LineKind::Series { rule, .. }) => {
                return Err(ParseError::at(
                    number,
                    format_args!("{}: {}", rule.sample, LineError::TooLong),
                ));
            }
        }
        self.held.clear();
        Ok(())
    }

    /// Reads one whole line (without its newline).
    fn line(&mut self, raw: &[u8]) -> Result<(), ParseError> {
        self.lines += 1;
        let number = self.lines;
        let (rule, indent) = match self.extractor.kind(head(raw, number)) {
            Err(e) => return Err(ParseError::at(number, e)),
            Ok(LineKind::Other) => return Ok(()),
            Ok(LineKind::Eof) => {
                self.ended = true;
                return Ok(());
            }
            Ok(LineKind::Series { rule, indent }) => (rule, indent),
        };
        let series_error = |e: LineError| ParseError::at(number, format_args!("{}: {e}", rule.sample));
        if raw.len() > MAX_LINE_BYTES {
            return Err(series_error(LineError::TooLong));
        }
        let line = if number == 1 {
            raw.strip_prefix(BYTE_ORDER_MARK).unwrap_or(raw)
        } else {
            raw
        };
        let Some(sample) = parse_series(&line[indent..], rule).map_err(series_error)? else {
            return Ok(());
        };
        let model = match sample.model {
            None => UNKNOWN_MODEL,
            Some(LabelValue { raw, escaped: false }) => raw,
            Some(LabelValue { raw, escaped: true }) => {
                unescape(raw, &mut self.scratch);
                self.scratch.as_str()
            }
        };
        self.usage
            .add(model, sample.token_type, sample.value)
            .map_err(|e| ParseError::at(number, e))?;
        for (index, subject) in sample.subjects.iter().enumerate() {
            let subject = match subject {
                None => continue,
                Some(LabelValue { raw, escaped: false }) => *raw,
                Some(LabelValue { raw, escaped: true }) => {
                    unescape(raw, &mut self.subject_scratch);
                    self.subject_scratch.as_str()
                }
            };
            self.usage
                .add_subject(index, subject, model, sample.token_type, sample.value)
                .map_err(|e| ParseError::at(number, e))?;
        }
        Ok(())
    }
}

/// The first [`MAX_LINE_BYTES`] bytes of line `number` (from 1), without the byte order mark
/// that may open the body: what tells the line apart.
fn head(raw: &[u8], number: usize) -> &[u8] {
    let head = &raw[..raw.len().min(MAX_LINE_BYTES)];
    if number == 1 {
        head.strip_prefix(BYTE_ORDER_MARK).unwrap_or(head)
    } else {
        head
    }
}

/// `line` starts with the sample name `name` followed by a label set, whitespace or its end.
fn names_sample(line: &[u8], name: &str) -> bool {
    line.starts_with(name.as_bytes()) && matches!(line.get(name.len()), None | Some(b'{' | b' ' | b'\t' | b'\r'))
}

/// A label value as written between the quotes, escapes not yet resolved.
#[derive(Debug, Clone, Copy)]
struct LabelValue<'a> {
    raw: &'a str,
    escaped: bool,
}

/// A series that counts.
#[derive(Debug)]
struct Series<'a> {
    model: Option<LabelValue<'a>>,
    token_type: TokenType,
    value: u64,
    /// The non-empty values of the rule's subject labels, in its order.
    subjects: [Option<LabelValue<'a>>; MAX_SUBJECT_LABELS],
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `[a-zA-Z0-9_]`, the bytes of a label name, as a table: the hottest loop of a counted line.
static LABEL_NAME_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'_';
        b += 1;
    }
    t
};

/// What is wrong with one line of a metrics body: the `reason` of a [`ParseError`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum LineError {
    #[error("byte 0x{0:02x} cannot start a metrics line")]
    BadStart(u8),
    #[error("invalid UTF-8 at byte {0}")]
    InvalidUtf8(usize),
    #[error("unterminated label set")]
    UnterminatedLabelSet,
    #[error("expected a label name at column {0}")]
    ExpectedLabelName(usize),
    #[error("expected '=' after label {0}")]
    ExpectedEquals(Excerpt),
    #[error("expected '\"' to open the value of label {0}")]
    ExpectedQuote(Excerpt),
    #[error("unterminated value of label {0}")]
    UnterminatedValue(Excerpt),
    #[error("duplicate label {0}")]
    DuplicateLabel(Excerpt),
    #[error("expected ',' or '}}' after the value of label {0}")]
    ExpectedSeparator(Excerpt),
    #[error("missing value")]
    MissingValue,
    #[error("invalid value {0}")]
    InvalidValue(Excerpt),
    #[error("invalid timestamp {0}")]
    InvalidTimestamp(Excerpt),
    #[error("unexpected text after the timestamp at column {0}")]
    TextAfterTimestamp(usize),
    #[error("value is NaN")]
    NaN,
    #[error("value is {sign}Inf")]
    Infinite { sign: char },
    #[error("value {0} is negative")]
    Negative(f64),
    #[error("value {0:e} is above the limit of 1e15 tokens per series")]
    AboveLimit(f64),
    #[error("value {0} is not a whole number of tokens")]
    NotWhole(f64),
    #[error("the sum of the {} tokens of model {model} overflows", .token_type.as_str())]
    SumOverflows { model: Excerpt, token_type: TokenType },
    #[error("longer than {} bytes", MAX_LINE_BYTES)]
    TooLong,
}

/// At most this many characters of a line are quoted in an error.
const EXCERPT_CHARS: usize = 40;

/// A piece of a line quoted in an error: escaped, and cut after [`EXCERPT_CHARS`]
/// characters, with the length of the whole in bytes. An error (kept per pod, copied into
/// conditions and Events) is then short whatever the line holds: a value that runs on for
/// megabytes reads `"7xxxxxxxxx…" (15728641 bytes)`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Excerpt(String);

impl Excerpt {
    /// A value, quoted and escaped as Rust's `{:?}` writes a string.
    fn quoted(text: &str) -> Self {
        let (head, cut) = cut(text);
        let quoted = format!("{head:?}");
        match cut {
            false => Self(quoted),
            true => Self(format!("{}…\" ({} bytes)", &quoted[..quoted.len() - 1], text.len())),
        }
    }

    /// A label name, as written: it has only `[a-zA-Z0-9_]`, nothing to escape.
    fn name(text: &str) -> Self {
        match cut(text) {
            (head, false) => Self(head.to_string()),
            (head, true) => Self(format!("{head}… ({} bytes)", text.len())),
        }
    }
}

impl std::fmt::Display for Excerpt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The first [`EXCERPT_CHARS`] characters of `text`, and whether that is not all of it.
fn cut(text: &str) -> (&str, bool) {
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((end, _)) => (&text[..end], true),
        None => (text, false),
    }
}

/// A position in one series line, moved forward as its parts are read.
struct Cursor<'a> {
    line: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn bytes(&self) -> &'a [u8] {
        self.line.as_bytes()
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    #[inline]
    fn skip_blanks(&mut self) {
        let b = self.bytes();
        while self.pos < b.len() && is_blank(b[self.pos]) {
            self.pos += 1;
        }
    }

    /// The run of non-blank bytes from here, possibly empty.
    #[inline]
    fn word(&mut self) -> &'a str {
        let (b, start) = (self.bytes(), self.pos);
        while self.pos < b.len() && !is_blank(b[self.pos]) {
            self.pos += 1;
        }
        &self.line[start..self.pos]
    }

    /// The position as a 1-based column, for messages.
    fn column(&self) -> usize {
        self.pos + 1
    }
}

/// The labels of a series that its rule reads, kept as the label set is read.
#[derive(Default)]
struct RuleLabels<'a> {
    /// The model so far, with its label's index in `rule.model_labels` (a lower one wins).
    model: Option<(usize, LabelValue<'a>)>,
    /// Bit i: `rule.model_labels[i]` was seen.
    seen_models: u64,
    /// The value of the token type label, when the rule reads the type from a label.
    type_value: Option<LabelValue<'a>>,
    /// The values of the subject labels, in the rule's order (empty ones included).
    subjects: [Option<LabelValue<'a>>; MAX_SUBJECT_LABELS],
}

impl<'a> RuleLabels<'a> {
    /// Keeps `name="value"` if the rule reads that label. Each label it reads may appear once.
    fn keep(&mut self, rule: &Rule, name: &str, value: LabelValue<'a>) -> Result<(), LineError> {
        if let Some(i) = rule.model_labels.iter().position(|l| l == name) {
            if self.seen_models & (1 << i) != 0 {
                return Err(LineError::DuplicateLabel(Excerpt::name(name)));
            }
            self.seen_models |= 1 << i;
            if !value.raw.is_empty() && self.model.is_none_or(|(j, _)| i < j) {
                self.model = Some((i, value));
            }
        }
        if matches!(&rule.token_type, TypeSource::Label(l) if l == name) {
            if self.type_value.is_some() {
                return Err(LineError::DuplicateLabel(Excerpt::name(name)));
            }
            self.type_value = Some(value);
        }
        if let Some(i) = rule.subject_labels.iter().position(|l| l == name) {
            if self.subjects[i].is_some() {
                return Err(LineError::DuplicateLabel(Excerpt::name(name)));
            }
            self.subjects[i] = Some(value);
        }
        Ok(())
    }

    /// The token type of the series; `None` when it does not count (its type label is
    /// missing or neither `input` nor `output`).
    fn token_type(&self, rule: &Rule) -> Option<TokenType> {
        match &rule.token_type {
            TypeSource::Fixed(t) => Some(*t),
            TypeSource::Label(_) => match self.type_value.map(|v| v.raw) {
                Some("input") => Some(TokenType::Input),
                Some("output") => Some(TokenType::Output),
                _ => None,
            },
        }
    }
}

/// Parses one line of a wanted sample (which `names_sample` accepted). `Ok(None)`: a
/// well-formed series that does not count (its token type label is missing or neither
/// `input` nor `output`).
fn parse_series<'a>(line: &'a [u8], rule: &Rule) -> Result<Option<Series<'a>>, LineError> {
    // A CR that ends the line is no content, unless it is the last byte of the sample name
    // itself (a custom name the API server refuses, but `Extractor::new` takes).
    let line = match line.strip_suffix(b"\r") {
        Some(stripped) if stripped.len() >= rule.sample.len() => stripped,
        _ => line,
    };
    let line = std::str::from_utf8(line).map_err(|e| LineError::InvalidUtf8(e.valid_up_to() + 1))?;
    let mut cursor = Cursor {
        line,
        pos: rule.sample.len(),
    };
    cursor.skip_blanks();
    let labels = match cursor.peek() {
        Some(b'{') => read_label_set(&mut cursor, rule)?,
        _ => RuleLabels::default(),
    };
    let value = read_value(&mut cursor)?;
    check_timestamp(&mut cursor)?;
    let Some(token_type) = labels.token_type(rule) else {
        return Ok(None);
    };
    Ok(Some(Series {
        model: labels.model.map(|(_, v)| v),
        token_type,
        value: counter_value(value)?,
        subjects: labels
            .subjects
            .map(|v| v.filter(|v| !v.raw.is_empty() && Some(v.raw) != rule.none)),
    }))
}

/// Reads a label set, from its `{` through its `}`, keeping the labels `rule` reads.
fn read_label_set<'a>(cursor: &mut Cursor<'a>, rule: &Rule) -> Result<RuleLabels<'a>, LineError> {
    let mut labels = RuleLabels::default();
    cursor.pos += 1; // the '{'
    loop {
        cursor.skip_blanks();
        match cursor.peek() {
            None => return Err(LineError::UnterminatedLabelSet),
            Some(b'}') => {
                cursor.pos += 1;
                return Ok(labels);
            }
            Some(_) => {}
        }
        let (name, value) = read_label(cursor)?;
        labels.keep(rule, name, value)?;
        cursor.skip_blanks();
        match cursor.peek() {
            Some(b',') => cursor.pos += 1,
            Some(b'}') => {
                cursor.pos += 1;
                return Ok(labels);
            }
            None => return Err(LineError::UnterminatedLabelSet),
            Some(_) => return Err(LineError::ExpectedSeparator(Excerpt::name(name))),
        }
    }
}

/// Reads one `name="value"`.
fn read_label<'a>(cursor: &mut Cursor<'a>) -> Result<(&'a str, LabelValue<'a>), LineError> {
    let b = cursor.bytes();
    let name_start = cursor.pos;
    cursor.pos += b[cursor.pos..]
        .iter()
        .position(|&c| !LABEL_NAME_BYTE[c as usize])
        .unwrap_or(b.len() - cursor.pos);
    if cursor.pos == name_start {
        return Err(LineError::ExpectedLabelName(cursor.column()));
    }
    let name = &cursor.line[name_start..cursor.pos];
    cursor.skip_blanks();
    if cursor.peek() != Some(b'=') {
        return Err(LineError::ExpectedEquals(Excerpt::name(name)));
    }
    cursor.pos += 1;
    cursor.skip_blanks();
    if cursor.peek() != Some(b'"') {
        return Err(LineError::ExpectedQuote(Excerpt::name(name)));
    }
    cursor.pos += 1;
    let value = read_quoted(cursor).ok_or_else(|| LineError::UnterminatedValue(Excerpt::name(name)))?;
    Ok((name, value))
}

/// Reads a label value from after its opening quote through its closing one; `None` when
/// the line ends first.
#[inline]
fn read_quoted<'a>(cursor: &mut Cursor<'a>) -> Option<LabelValue<'a>> {
    let b = cursor.bytes();
    let start = cursor.pos;
    let mut escaped = false;
    loop {
        cursor.pos += memchr2(b'"', b'\\', &b[cursor.pos..])?;
        if b[cursor.pos] == b'"' {
            break;
        }
        if cursor.pos + 1 >= b.len() {
            return None;
        }
        escaped = true;
        cursor.pos += 2;
    }
    let value = LabelValue {
        raw: &cursor.line[start..cursor.pos],
        escaped,
    };
    cursor.pos += 1;
    Some(value)
}

/// Reads the sample value.
fn read_value(cursor: &mut Cursor) -> Result<f64, LineError> {
    cursor.skip_blanks();
    let text = cursor.word();
    if text.is_empty() {
        return Err(LineError::MissingValue);
    }
    parse_number(text).ok_or_else(|| LineError::InvalidValue(Excerpt::quoted(text)))
}

/// Checks what may follow the value: a timestamp, and after it nothing but an exemplar.
fn check_timestamp(cursor: &mut Cursor) -> Result<(), LineError> {
    // Anything from '#' on is an OpenMetrics exemplar: not ours to check.
    cursor.skip_blanks();
    if cursor.peek().is_none_or(|b| b == b'#') {
        return Ok(());
    }
    let timestamp = cursor.word();
    if parse_number(timestamp).is_none_or(|t| !t.is_finite()) {
        return Err(LineError::InvalidTimestamp(Excerpt::quoted(timestamp)));
    }
    cursor.skip_blanks();
    if cursor.peek().is_some_and(|b| b != b'#') {
        return Err(LineError::TextAfterTimestamp(cursor.column()));
    }
    Ok(())
}

/// A Prometheus float: plain digits quickly, everything else (`1.5e3`, `+Inf`, `NaN`, ...)
/// through the standard float parser, which takes the same spellings, case-insensitively.
fn parse_number(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if !b.is_empty() && b.len() <= 15 && b.iter().all(u8::is_ascii_digit) {
        let n = b.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        return Some(n as f64); // < 10^15: exact
    }
    s.parse().ok()
}

/// A counter value as a token count, or why it cannot be one.
fn counter_value(v: f64) -> Result<u64, LineError> {
    if v.is_nan() {
        Err(LineError::NaN)
    } else if v.is_infinite() {
        Err(LineError::Infinite {
            sign: if v > 0.0 { '+' } else { '-' },
        })
    } else if v < 0.0 {
        Err(LineError::Negative(v))
    } else if v > MAX_SERIES_VALUE as f64 {
        Err(LineError::AboveLimit(v))
    } else if v.fract() != 0.0 {
        Err(LineError::NotWhole(v))
    } else {
        Ok(v as u64)
    }
}

/// Resolves the escapes of a label value (`\\`, `\"`, `\n`) into `out`. An unknown escape is
/// kept as written.
fn unescape(raw: &str, out: &mut String) {
    out.clear();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TokenType::{Input, Output};

    fn otel() -> Extractor {
        Extractor::new(MetricsFormat::OpenTelemetry, &[])
    }

    fn extract(x: &Extractor, body: &str) -> Usage {
        x.extract(body.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{body}"))
    }

    fn pairs(u: &Usage) -> Vec<(String, TokenType, u64)> {
        u.iter().map(|(m, t, v)| (m.to_owned(), t, v)).collect()
    }

    fn p(model: &str, t: TokenType, v: u64) -> (String, TokenType, u64) {
        (model.to_owned(), t, v)
    }

    fn error(x: &Extractor, body: &[u8]) -> ParseError {
        match x.extract(body) {
            Ok(u) => panic!("expected an error, got {u:?} for {:?}", String::from_utf8_lossy(body)),
            Err(e) => e,
        }
    }

    /// The OpenTelemetry Python instrumentation for OpenAI, exported by the Prometheus exporter.
    const OTEL_HISTOGRAM: &str = r#"# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 1289.0
# HELP gen_ai_client_token_usage Measures number of input and output tokens used
# TYPE gen_ai_client_token_usage histogram
gen_ai_client_token_usage_bucket{gen_ai_operation_name="chat",gen_ai_request_model="gpt-4o-mini",gen_ai_response_model="gpt-4o-mini-2024-07-18",gen_ai_system="openai",gen_ai_token_type="input",server_address="api.openai.com",le="1.0"} 0
gen_ai_client_token_usage_bucket{gen_ai_operation_name="chat",gen_ai_request_model="gpt-4o-mini",gen_ai_response_model="gpt-4o-mini-2024-07-18",gen_ai_system="openai",gen_ai_token_type="input",server_address="api.openai.com",le="1024.0"} 2
gen_ai_client_token_usage_bucket{gen_ai_operation_name="chat",gen_ai_request_model="gpt-4o-mini",gen_ai_response_model="gpt-4o-mini-2024-07-18",gen_ai_system="openai",gen_ai_token_type="input",server_address="api.openai.com",le="+Inf"} 3
gen_ai_client_token_usage_count{gen_ai_operation_name="chat",gen_ai_request_model="gpt-4o-mini",gen_ai_response_model="gpt-4o-mini-2024-07-18",gen_ai_system="openai",gen_ai_token_type="input",server_address="api.openai.com"} 3
gen_ai_client_token_usage_sum{gen_ai_operation_name="chat",gen_ai_request_model="gpt-4o-mini",gen_ai_response_model="gpt-4o-mini-2024-07-18",gen_ai_system="openai",gen_ai_token_type="input",server_address="api.openai.com"} 1500
gen_ai_client_token_usage_bucket{gen_ai_operation_name="chat",gen_ai_request_model="gpt-4o-mini",gen_ai_response_model="gpt-4o-mini-2024-07-18",gen_ai_system="openai",gen_ai_token_type="output",server_address="api.openai.com",le="+Inf"} 3
gen_ai_client_token_usage_count{gen_ai_operation_name="chat",gen_ai_request_model="gpt-4o-mini",gen_ai_response_model="gpt-4o-mini-2024-07-18",gen_ai_system="openai",gen_ai_token_type="output",server_address="api.openai.com"} 3
gen_ai_client_token_usage_sum{gen_ai_operation_name="chat",gen_ai_request_model="gpt-4o-mini",gen_ai_response_model="gpt-4o-mini-2024-07-18",gen_ai_system="openai",gen_ai_token_type="output",server_address="api.openai.com"} 420
gen_ai_client_token_usage_sum{gen_ai_operation_name="chat",gen_ai_request_model="gpt-4o-mini",gen_ai_response_model="gpt-4o-mini-2024-07-18",gen_ai_system="openai",gen_ai_token_type="total",server_address="api.openai.com"} 1920
gen_ai_client_token_usage_sum{gen_ai_operation_name="embeddings",gen_ai_request_model="gpt-4o-mini",gen_ai_system="openai",gen_ai_token_type="input",server_address="api.openai.com"} 80
gen_ai_client_token_usage_sum{gen_ai_operation_name="chat",gen_ai_response_model="claude-3-5-haiku-20241022",gen_ai_system="anthropic",gen_ai_token_type="input"} 1.2e+06
gen_ai_client_token_usage_sum{gen_ai_operation_name="chat",gen_ai_request_model="",gen_ai_system="anthropic",gen_ai_token_type="output"} 7
gen_ai_client_token_usage_sum{gen_ai_operation_name="chat",gen_ai_token_type="output"} 5
gen_ai_client_token_usage_sum{gen_ai_request_model="gpt-4o",gen_ai_token_type="cached_input"} 999
# HELP gen_ai_client_operation_duration_seconds GenAI operation duration
# TYPE gen_ai_client_operation_duration_seconds histogram
gen_ai_client_operation_duration_seconds_sum{gen_ai_request_model="gpt-4o-mini"} 4.75
"#;

    #[test]
    fn opentelemetry_histogram_reads_sum_only() {
        let u = extract(&otel(), OTEL_HISTOGRAM);
        assert_eq!(
            pairs(&u),
            vec![
                p("claude-3-5-haiku-20241022", Input, 1_200_000),
                p("gpt-4o-mini", Input, 1580),
                p("gpt-4o-mini", Output, 420),
                p(UNKNOWN_MODEL, Output, 12),
            ]
        );
        assert_eq!(u.total(Input), 1_201_580);
        assert_eq!(u.len(), 4);
        assert_eq!(u.get("gpt-4o", Input), None);
    }

    #[test]
    fn opentelemetry_counters() {
        let body = "# HELP gen_ai_client_inference_usage_input_tokens_total Input tokens\n\
                    # TYPE gen_ai_client_inference_usage_input_tokens_total counter\n\
                    gen_ai_client_inference_usage_input_tokens_total{gen_ai_request_model=\"llama3.1\",gen_ai_system=\"ollama\"} 500\n\
                    gen_ai_client_inference_usage_input_tokens_total{gen_ai_response_model=\"llama3.1\",gen_ai_token_type=\"output\"} 25\n\
                    # TYPE gen_ai_client_inference_usage_output_tokens_total counter\n\
                    gen_ai_client_inference_usage_output_tokens_total{gen_ai_request_model=\"llama3.1\"} 60\n\
                    gen_ai_client_inference_usage_output_tokens_created{gen_ai_request_model=\"llama3.1\"} 1.7e9\n";
        let u = extract(&otel(), body);
        assert_eq!(pairs(&u), vec![p("llama3.1", Input, 525), p("llama3.1", Output, 60)]);
    }

    /// vLLM 0.6-style output of prometheus_client (with `_created` series).
    const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12345.0
vllm:prompt_tokens_total{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 5.0
vllm:prompt_tokens_created{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.7301234567e+09
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 6789.0
# HELP vllm:request_prompt_tokens Number of prefill tokens processed.
# TYPE vllm:request_prompt_tokens histogram
vllm:request_prompt_tokens_bucket{engine="0",le="1.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:request_prompt_tokens_sum{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12345.0
# HELP vllm:e2e_request_latency_seconds Histogram of end to end request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 81.25
vllm:gpu_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} NaN
"#;

    #[test]
    fn vllm_names_escaped_by_newer_prometheus_clients() {
        let escaped = VLLM.replace("vllm:", "vllm_");
        let u = extract(&Extractor::new(MetricsFormat::Vllm, &[]), &escaped);
        assert_eq!(u, extract(&Extractor::new(MetricsFormat::Vllm, &[]), VLLM));
        assert!(!u.is_empty());
    }

    #[test]
    fn vllm() {
        let u = extract(&Extractor::new(MetricsFormat::Vllm, &[]), VLLM);
        let m = "meta-llama/Llama-3.1-8B-Instruct";
        assert_eq!(pairs(&u), vec![p(m, Input, 12350), p(m, Output, 6789)]);
        // The other formats find nothing here.
        assert!(extract(&otel(), VLLM).is_empty());
    }

    #[test]
    fn litellm() {
        let body = r#"# HELP litellm_input_tokens_metric_total Total number of input tokens from LLM requests
# TYPE litellm_input_tokens_metric_total counter
litellm_input_tokens_metric_total{api_key_alias="None",end_user="None",hashed_api_key="88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b",model="gpt-4o",model_id="b2f1",requested_model="gpt-4o",team="None",team_alias="None",user="None"} 1000.0
litellm_input_tokens_metric_total{api_key_alias="prod",end_user="None",hashed_api_key="aa",model="gpt-4o",model_id="b2f1",requested_model="gpt-4o",team="t1",team_alias="None",user="None"} 24.0
litellm_input_tokens_metric_created{api_key_alias="None",model="gpt-4o"} 1.7307e+09
# HELP litellm_output_tokens_metric_total Total number of output tokens from LLM requests
# TYPE litellm_output_tokens_metric_total counter
litellm_output_tokens_metric_total{api_key_alias="None",model="gpt-4o",requested_model="gpt-4o"} 200.0
# HELP litellm_total_tokens_metric_total Total number of input + output tokens from LLM requests
# TYPE litellm_total_tokens_metric_total counter
litellm_total_tokens_metric_total{api_key_alias="None",model="gpt-4o"} 1224.0
litellm_spend_metric_total{model="gpt-4o"} 0.0123
"#;
        let u = extract(&Extractor::new(MetricsFormat::LiteLlm, &[]), body);
        assert_eq!(pairs(&u), vec![p("gpt-4o", Input, 1024), p("gpt-4o", Output, 200)]);
    }

    fn subjects(u: &Usage, label: &str) -> Vec<(Option<String>, String, TokenType, u64)> {
        u.subjects(label)
            .expect("the label is read")
            .map(|(s, m, t, v)| (s.map(str::to_owned), m.to_owned(), t, v))
            .collect()
    }

    #[test]
    fn litellm_subjects() {
        let body = r#"litellm_input_tokens_metric_total{end_user="None",model="gpt-4o",team="None",user="None"} 1000.0
litellm_input_tokens_metric_total{end_user="alice",model="gpt-4o",team="t1",user=""} 24.0
litellm_input_tokens_metric_total{end_user="al\"ice",model="gpt-4o",team="t1"} 6.0
litellm_output_tokens_metric_total{end_user="alice",model="gpt-4o",team="t1"} 200.0
litellm_output_tokens_metric_total{end_user="alice",model="gpt-4o-mini",team="t2"} 7.0
"#;
        let x = Extractor::new(MetricsFormat::LiteLlm, &[]).with_subjects(&["end_user", "team", "user"]);
        assert_eq!(x.subject_labels(), ["end_user", "team", "user"]);
        let u = extract(&x, body);
        // The budget's totals are the same as without subjects.
        assert_eq!(
            pairs(&u),
            vec![
                p("gpt-4o", Input, 1030),
                p("gpt-4o", Output, 200),
                p("gpt-4o-mini", Output, 7)
            ]
        );
        let s = |subject: &str, model: &str, t, v| (Some(subject.to_owned()), model.to_owned(), t, v);
        // "None" and "" are no subject; escapes are resolved.
        assert_eq!(
            subjects(&u, "end_user"),
            vec![
                s("al\"ice", "gpt-4o", Input, 6),
                s("alice", "gpt-4o", Input, 24),
                s("alice", "gpt-4o", Output, 200),
                s("alice", "gpt-4o-mini", Output, 7),
            ]
        );
        assert_eq!(
            subjects(&u, "team"),
            vec![
                s("t1", "gpt-4o", Input, 30),
                s("t1", "gpt-4o", Output, 200),
                s("t2", "gpt-4o-mini", Output, 7)
            ]
        );
        assert_eq!(subjects(&u, "user"), vec![]);
        assert!(u.subjects("session_id").is_none());
        // Without subject labels, none is read.
        assert!(
            extract(&Extractor::new(MetricsFormat::LiteLlm, &[]), body)
                .subjects("end_user")
                .is_none()
        );
        // Read in pieces, the same.
        assert_eq!(extract_in_pieces(&x, body.as_bytes(), &[1, 7, 30]), Ok(u));
    }

    #[test]
    fn subjects_are_bounded() {
        let x = Extractor::new(MetricsFormat::LiteLlm, &[]).with_subjects(&["end_user"]);
        let mut body = String::new();
        for i in 0..MAX_SCRAPE_SUBJECTS + 5 {
            body.push_str(&format!(
                "litellm_input_tokens_metric_total{{end_user=\"u{i}\",model=\"m\"}} 2\n"
            ));
        }
        let long = "x".repeat(MAX_SUBJECT_BYTES + 1);
        body.push_str(&format!(
            "litellm_input_tokens_metric_total{{end_user=\"{long}\",model=\"m\"}} 3\n"
        ));
        // One already read adds up, also past the bound.
        body.push_str("litellm_input_tokens_metric_total{end_user=\"u0\",model=\"m\"} 1\n");
        let u = extract(&x, &body);
        let series = subjects(&u, "end_user");
        assert_eq!(series.len(), MAX_SCRAPE_SUBJECTS + 1);
        assert!(series.contains(&(Some("u0".into()), "m".into(), Input, 3)));
        assert!(series.contains(&(None, "m".into(), Input, 5 * 2 + 3)));
        let sum: u64 = series.iter().map(|s| s.3).sum();
        assert_eq!(sum, u.total(Input));
    }

    /// Each subject label keeps its own copy of a series' model name: with long names (up to
    /// a line's length) and four labels, a body's model names would be held five times over,
    /// per scrape in flight. A name the ledger would not keep (longer than
    /// `MAX_MODEL_NAME_BYTES`: counted as `(other)`) is keyed as `(other)` here already.
    #[test]
    fn long_model_names_are_not_copied_per_subject_label() {
        let labels = ["end_user", "team", "user", "session_id"];
        let x = Extractor::new(MetricsFormat::LiteLlm, &[]).with_subjects(&labels);
        let mut body = String::new();
        for i in 0..16 {
            let model = format!("{i}{}", "m".repeat(60_000));
            body.push_str(&format!(
                "litellm_input_tokens_metric_total{{end_user=\"u\",team=\"t\",user=\"x\",session_id=\"s\",model=\"{model}\"}} 2\n"
            ));
        }
        let u = extract(&x, &body);
        let held: usize = labels
            .iter()
            .flat_map(|l| subjects(&u, l))
            .map(|(s, m, _, _)| s.map_or(0, |s| s.len()) + m.len())
            .sum();
        assert!(
            held < 4096,
            "{held} bytes of subject keys for a {} byte body",
            body.len()
        );
        for label in labels {
            let sum: u64 = subjects(&u, label).iter().map(|s| s.3).sum();
            assert_eq!(sum, u.total(Input));
            assert!(subjects(&u, label).iter().all(|s| s.1 == OTHER_MODELS));
        }
    }

    #[test]
    fn a_subject_label_twice_is_an_error() {
        let x = Extractor::new(MetricsFormat::Vllm, &[]).with_subjects(&["user"]);
        let e = error(
            &x,
            b"vllm:prompt_tokens_total{model_name=\"m\",user=\"a\",user=\"b\"} 5\n",
        );
        assert_eq!(e.reason, "vllm:prompt_tokens_total: duplicate label user");
        // Without the subject label, the line is read as before.
        assert!(
            Extractor::new(MetricsFormat::Vllm, &[])
                .extract(b"vllm:prompt_tokens_total{model_name=\"m\",user=\"a\",user=\"b\"} 5\n")
                .is_ok()
        );
    }

    #[test]
    fn subjects_of_a_series_from_prometheus() {
        let x = Extractor::new(MetricsFormat::LiteLlm, &[]).with_subjects(&["end_user"]);
        let mut u = Usage::default();
        let labels = |name: &str| match name {
            "model" => Some("gpt-4o"),
            "end_user" => Some("bob"),
            _ => None,
        };
        assert_eq!(
            x.add_series(&mut u, "litellm_input_tokens_metric_total", labels, 40.0),
            Ok(true)
        );
        let none = |name: &str| (name == "end_user").then_some("None");
        assert_eq!(
            x.add_series(&mut u, "litellm_output_tokens_metric_total", none, 2.0),
            Ok(true)
        );
        assert_eq!(
            subjects(&u, "end_user"),
            vec![(Some("bob".into()), "gpt-4o".into(), Input, 40)]
        );
        assert_eq!(u.total(Output), 2);
    }

    fn custom(metric: &str, token_type: Option<TokenType>, label: Option<&str>, model: Option<&str>) -> CustomMetric {
        CustomMetric {
            metric: metric.into(),
            token_type,
            token_type_label: label.map(Into::into),
            model_label: model.map(Into::into),
        }
    }

    #[test]
    fn custom_both_entry_forms() {
        let x = Extractor::new(
            MetricsFormat::Custom,
            &[
                custom("my_tokens_total", Some(Input), None, Some("model")),
                custom("my_llm_tokens", None, Some("kind"), Some("llm")),
            ],
        );
        assert_eq!(
            x.samples().collect::<Vec<_>>(),
            ["my_tokens_total", "my_llm_tokens", "my_llm_tokens_total"]
        );
        // Prometheus text for the first, OpenMetrics (family without _total) for the second.
        let body = "# TYPE my_tokens_total counter\n\
                    my_tokens_total{model=\"a\"} 5\n\
                    my_tokens_total 3\n\
                    my_tokens_created 1.7e9\n\
                    # TYPE my_llm_tokens counter\n\
                    my_llm_tokens_total{kind=\"output\",llm=\"a\"} 7\n\
                    my_llm_tokens_total{kind=\"input\",llm=\"b\"} 11\n\
                    my_llm_tokens_total{kind=\"cached\",llm=\"a\"} 1000\n\
                    my_llm_tokens_total{llm=\"a\"} 1000\n\
                    my_llm_tokens_created{kind=\"output\",llm=\"a\"} 1.7e9\n\
                    my_llm_tokens_seconds 1.5\n\
                    # EOF\n";
        let u = extract(&x, body);
        assert_eq!(
            pairs(&u),
            vec![
                p("a", Input, 5),
                p("a", Output, 7),
                p("b", Input, 11),
                p(UNKNOWN_MODEL, Input, 3)
            ]
        );
        // A gauge-style custom metric without _total is read as written too.
        let u = extract(&x, "my_llm_tokens{kind=\"input\"} 4\n");
        assert_eq!(pairs(&u), vec![p(UNKNOWN_MODEL, Input, 4)]);
    }

    #[test]
    fn custom_entries_first_wins_and_invalid_skipped() {
        let x = Extractor::new(
            MetricsFormat::Custom,
            &[
                custom("t_total", Some(Output), None, None),
                custom("t_total", Some(Input), None, None),
                custom("u_total", None, None, None),
                custom("", Some(Input), None, None),
            ],
        );
        assert_eq!(x.samples().collect::<Vec<_>>(), ["t_total"]);
        assert_eq!(
            pairs(&extract(&x, "t_total 2\nu_total 3\n")),
            vec![p(UNKNOWN_MODEL, Output, 2)]
        );
        // Custom entries mean nothing to other formats.
        let v = Extractor::new(MetricsFormat::Vllm, &[custom("t_total", Some(Input), None, None)]);
        assert!(extract(&v, "t_total 2\n").is_empty());
    }

    #[test]
    fn custom_name_ending_in_cr_does_not_panic() {
        // Found writing the fuzz targets (docs/fuzzing.md): the final CR of the line was cut
        // from inside the sample name, and the value then looked for past the end of the line.
        let x = Extractor::new(MetricsFormat::Custom, &[custom("a\r", Some(Input), None, None)]);
        assert_eq!(error(&x, b"a\r\n").line, 1);
        assert_eq!(error(&x, b"up 1\na\r").line, 2);
        assert_eq!(pairs(&extract(&x, "a\r 5\r\n")), vec![p(UNKNOWN_MODEL, Input, 5)]);
    }

    #[test]
    fn custom_type_label_may_also_be_the_model_label() {
        let x = Extractor::new(MetricsFormat::Custom, &[custom("k_total", None, Some("k"), Some("k"))]);
        let u = extract(&x, "k_total{k=\"input\"} 2\nk_total{k=\"gpt\"} 3\n");
        assert_eq!(pairs(&u), vec![p("input", Input, 2)]);
    }

    #[test]
    fn for_endpoint_reads_format_and_custom() {
        let endpoint = MetricsEndpoint {
            format: MetricsFormat::Custom,
            custom: Some(vec![custom("c_total", Some(Output), None, Some("m"))]),
            ..MetricsEndpoint::default()
        };
        let u = extract(&Extractor::for_endpoint(&endpoint), "c_total{m=\"x\"} 9\n");
        assert_eq!(pairs(&u), vec![p("x", Output, 9)]);
        let default = Extractor::for_endpoint(&MetricsEndpoint::default());
        assert_eq!(default.samples().count(), 3);
    }

    #[test]
    fn openmetrics_with_exemplars_created_and_eof() {
        let body = "# TYPE gen_ai_client_inference_usage_input_tokens counter\n\
                    # UNIT gen_ai_client_inference_usage_input_tokens tokens\n\
                    # HELP gen_ai_client_inference_usage_input_tokens Input tokens.\n\
                    gen_ai_client_inference_usage_input_tokens_total{gen_ai_request_model=\"m\"} 17.0 1520879607.789 # {trace_id=\"KOO5S4vxi0o\"} 0.67 1520879602.890\n\
                    gen_ai_client_inference_usage_input_tokens_total{gen_ai_request_model=\"n\"} 3 # {trace_id=\"x\"} 1.0\n\
                    gen_ai_client_inference_usage_input_tokens_created{gen_ai_request_model=\"m\"} 1520430000.123\n\
                    # TYPE gen_ai_client_token_usage histogram\n\
                    gen_ai_client_token_usage_bucket{gen_ai_request_model=\"m\",gen_ai_token_type=\"output\",le=\"+Inf\"} 2 # {span_id=\"a\"} 9\n\
                    gen_ai_client_token_usage_sum{gen_ai_request_model=\"m\",gen_ai_token_type=\"output\"} 12.0\n\
                    gen_ai_client_token_usage_created{gen_ai_request_model=\"m\",gen_ai_token_type=\"output\"} 1520430000.123\n\
                    # EOF\n\
                    gen_ai_client_inference_usage_input_tokens_total{gen_ai_request_model=\"m\"} NaN\n\
                    \x01 garbage after EOF is not read\n";
        let u = extract(&otel(), body);
        assert_eq!(pairs(&u), vec![p("m", Input, 17), p("m", Output, 12), p("n", Input, 3)]);
    }

    #[test]
    fn crlf_blank_lines_timestamps_and_spacing() {
        let body = "# TYPE vllm:prompt_tokens_total counter\r\n\
                    \r\n\
                    vllm:prompt_tokens_total{model_name=\"a\"} 10 1712345678901\r\n\
                    \t\r\n\
                    \x20 vllm:prompt_tokens_total { model_name = \"a\" , engine=\"1\" , } \t 5\t-1712345678901 \r\n\
                    vllm:prompt_tokens_total{model_name=\"a\"}7\r\n\
                    vllm:generation_tokens_total 1e3\r\n\
                    vllm:generation_tokens_total{} 2\r\n\
                    vllm:generation_tokens_total{model_name=\"\"} 2";
        let u = extract(&Extractor::new(MetricsFormat::Vllm, &[]), body);
        assert_eq!(pairs(&u), vec![p("a", Input, 22), p(UNKNOWN_MODEL, Output, 1004)]);
    }

    #[test]
    fn escaped_label_values_and_label_order() {
        let body = r#"litellm_input_tokens_metric_total{user="a\"b",model="my \"quoted\" \\ model\nline2",team="x,y}"} 4
litellm_input_tokens_metric_total{team="}",model="my \"quoted\" \\ model\nline2"} 6
litellm_output_tokens_metric_total{model="caf\u00e9 ü",x="\\"} 1
"#;
        let u = extract(&Extractor::new(MetricsFormat::LiteLlm, &[]), body);
        assert_eq!(
            pairs(&u),
            vec![
                p("caf\\u00e9 ü", Output, 1),
                p("my \"quoted\" \\ model\nline2", Input, 10)
            ]
        );
    }

    #[test]
    fn model_label_preference() {
        // Request model wins over response model, whatever the order; an empty one is absent.
        let body = "gen_ai_client_token_usage_sum{gen_ai_response_model=\"r\",gen_ai_token_type=\"input\",gen_ai_request_model=\"q\"} 1\n\
                    gen_ai_client_token_usage_sum{gen_ai_request_model=\"q\",gen_ai_response_model=\"r\",gen_ai_token_type=\"input\"} 2\n\
                    gen_ai_client_token_usage_sum{gen_ai_request_model=\"\",gen_ai_response_model=\"r\",gen_ai_token_type=\"input\"} 4\n";
        assert_eq!(pairs(&extract(&otel(), body)), vec![p("q", Input, 3), p("r", Input, 4)]);
    }

    #[test]
    fn value_spellings() {
        let x = Extractor::new(MetricsFormat::LiteLlm, &[]);
        for (text, want) in [
            ("0", 0),
            ("-0", 0),
            ("+12", 12),
            ("12.0", 12),
            ("1.5e1", 15),
            ("1E3", 1000),
            ("1000000000000000", MAX_SERIES_VALUE),
            ("1e15", MAX_SERIES_VALUE),
            ("999999999999999", 999_999_999_999_999),
            ("0000000000000000000000042", 42),
        ] {
            let u = extract(&x, &format!("litellm_input_tokens_metric_total {text}\n"));
            assert_eq!(u.get(UNKNOWN_MODEL, Input), Some(want), "{text}");
        }
    }

    #[test]
    fn bad_values_in_token_lines() {
        let x = Extractor::new(MetricsFormat::LiteLlm, &[]);
        for (text, reason) in [
            ("NaN", "value is NaN"),
            ("nan", "value is NaN"),
            ("+Inf", "value is +Inf"),
            ("-Inf", "value is -Inf"),
            ("Inf", "value is +Inf"),
            ("-1", "value -1 is negative"),
            ("-0.5", "negative"),
            ("1e30", "above the limit"),
            ("1000000000000001", "above the limit"),
            ("1.5", "value 1.5 is not a whole number"),
            ("12abc", "invalid value \"12abc\""),
            ("0x10", "invalid value"),
            ("", "missing value"),
        ] {
            let body =
                format!("# TYPE x counter\nx_total 1\nlitellm_input_tokens_metric_total{{model=\"m\"}} {text}\n");
            let e = error(&x, body.as_bytes());
            assert_eq!(e.line, 3, "{text}: {e}");
            assert!(e.reason.contains(reason), "{text}: {e}");
            assert!(e.reason.starts_with("litellm_input_tokens_metric_total: "), "{e}");
        }
        let e = error(&x, b"litellm_input_tokens_metric_total\n");
        assert_eq!(
            (e.line, e.reason.as_str()),
            (1, "litellm_input_tokens_metric_total: missing value")
        );
        assert_eq!(
            e.to_string(),
            "line 1: litellm_input_tokens_metric_total: missing value"
        );
    }

    #[test]
    fn ignored_series_are_checked_for_syntax_only() {
        // The total series does not count: its NaN is no error, but a broken line is.
        let ok = "gen_ai_client_token_usage_sum{gen_ai_token_type=\"total\"} NaN\n\
                  gen_ai_client_token_usage_sum{gen_ai_token_type=\"total\"} -5\n";
        assert!(extract(&otel(), ok).is_empty());
        let e = error(
            &otel(),
            b"gen_ai_client_token_usage_sum{gen_ai_token_type=\"total\"} abc\n",
        );
        assert!(e.reason.contains("invalid value"), "{e}");
    }

    #[test]
    fn malformed_token_lines() {
        let x = Extractor::new(MetricsFormat::Vllm, &[]);
        for (line, reason) in [
            (
                &b"vllm:prompt_tokens_total{model_name=\"a\" 5"[..],
                "expected ',' or '}'",
            ),
            (b"vllm:prompt_tokens_total{model_name=\"a\",", "unterminated label set"),
            (b"vllm:prompt_tokens_total{", "unterminated label set"),
            (
                b"vllm:prompt_tokens_total{model_name=\"a} 5",
                "unterminated value of label model_name",
            ),
            (b"vllm:prompt_tokens_total{model_name=\"a\\", "unterminated value"),
            (b"vllm:prompt_tokens_total{model_name=a} 5", "expected '\"'"),
            (
                b"vllm:prompt_tokens_total{model_name} 5",
                "expected '=' after label model_name",
            ),
            (
                b"vllm:prompt_tokens_total{=\"a\"} 5",
                "expected a label name at column 26",
            ),
            (b"vllm:prompt_tokens_total{,} 5", "expected a label name at column 26"),
            (b"vllm:prompt_tokens_total{model_name=\"a\"}", "missing value"),
            (b"vllm:prompt_tokens_total{model_name=\"a\"} ", "missing value"),
            (
                b"vllm:prompt_tokens_total{model_name=\"a\"} 5 12:00",
                "invalid timestamp",
            ),
            (
                b"vllm:prompt_tokens_total{model_name=\"a\"} 5 1 2",
                "unexpected text after the timestamp",
            ),
            (
                b"vllm:prompt_tokens_total{model_name=\"a\",model_name=\"b\"} 5",
                "duplicate label model_name",
            ),
            (
                b"vllm:prompt_tokens_total{model_name=\"\xff\"} 5",
                "invalid UTF-8 at byte 38",
            ),
            (b"vllm:prompt_tokens_total \xc3\x28", "invalid UTF-8"),
            (b"vllm:prompt_tokens_total{model_name=\"a\"} 5\x00", "invalid value"),
        ] {
            let mut body = b"vllm:num_requests_running 1\n".to_vec();
            body.extend_from_slice(line);
            body.extend_from_slice(b"\nvllm:prompt_tokens_total 1\n");
            let e = error(&x, &body);
            assert_eq!(e.line, 2, "{e}");
            assert!(e.reason.contains(reason), "{:?}: {e}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn garbage_bytes() {
        let x = otel();
        let e = error(&x, b"up 1\n\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\n");
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("0x1f"), "{e}");
        let e = error(&x, b"<html><body>502 Bad Gateway</body></html>\n");
        assert_eq!(e.line, 1);
        assert!(error(&x, "up 1\n\u{feff}up 1\n".as_bytes()).reason.contains("0xef"));
        // ... but a byte order mark at the very start is fine.
        let bom = "\u{feff}gen_ai_client_token_usage_sum{gen_ai_token_type=\"input\"} 2\n";
        assert_eq!(pairs(&extract(&x, bom)), vec![p(UNKNOWN_MODEL, Input, 2)]);
        // Invalid UTF-8 and garbage inside irrelevant lines are skipped unchecked.
        let body = b"http_requests_total{path=\"/\xff\xfe\"} 1\nfoo{{{\x00\x01 NaN NaN\n{\"utf8.name\"} 3\n\
                     gen_ai_client_token_usage_sum_x\xff 1\n\
                     gen_ai_client_token_usage_sum{gen_ai_token_type=\"input\"} 2\n";
        assert_eq!(pairs(&x.extract(body).unwrap()), vec![p(UNKNOWN_MODEL, Input, 2)]);
    }

    #[test]
    fn irrelevant_families_are_not_validated() {
        let body = "# HELP http_request_duration_seconds x\n\
                    # TYPE http_request_duration_seconds histogram\n\
                    http_request_duration_seconds_sum{path=\"/\"} NaN\n\
                    http_request_duration_seconds_count{path=\"/\"} -Inf\n\
                    gen_ai_client_token_usage_count{gen_ai_token_type=\"input\"} NaN\n\
                    gen_ai_client_token_usage_bucket{gen_ai_token_type=\"input\",le=\"+Inf\"} 1.5\n\
                    go_memstats_alloc_bytes 1.2e+30\n\
                    process_start_time_seconds{unterminated=\"\n";
        assert!(extract(&otel(), body).is_empty());
    }

    #[test]
    fn empty_and_comment_only_bodies() {
        for body in [
            "",
            "\n",
            "\r\n\r\n",
            "# EOF\n",
            "# HELP x y\n# TYPE x counter\n",
            "   \n\t\n",
        ] {
            let u = extract(&otel(), body);
            assert!(u.is_empty() && u.iter().count() == 0 && u.total(Input) == 0, "{body:?}");
            assert_eq!(u.len(), 0);
        }
    }

    #[test]
    fn many_irrelevant_series() {
        let mut body = String::new();
        for i in 0..10_000 {
            body.push_str(&format!(
                "http_server_request_duration_seconds_bucket{{method=\"GET\",route=\"/r/{i}\",le=\"0.5\"}} {i}\n"
            ));
            if i % 1000 == 0 {
                body.push_str(&format!(
                    "gen_ai_client_token_usage_sum{{gen_ai_request_model=\"m{}\",gen_ai_token_type=\"output\"}} {i}\n",
                    i % 3
                ));
            }
        }
        let u = extract(&otel(), &body);
        assert_eq!(
            pairs(&u),
            vec![p("m0", Output, 18000), p("m1", Output, 12000), p("m2", Output, 15000)]
        );
        // Line numbers count every line.
        body.push_str("vllm_x 1\ngen_ai_client_token_usage_sum{gen_ai_token_type=\"input\"} NaN\n");
        assert_eq!(error(&otel(), body.as_bytes()).line, 10_012);
    }

    #[test]
    fn sums_overflowing_u64_are_an_error() {
        let line = "litellm_input_tokens_metric_total{model=\"m\"} 1e15\n";
        let body = line.repeat(18_447);
        let e = error(&Extractor::new(MetricsFormat::LiteLlm, &[]), body.as_bytes());
        assert_eq!(e.line, 18_447);
        assert!(e.reason.contains("overflows"), "{e}");
    }

    /// What `x` reads of `body` fed in pieces of `sizes` bytes (taken in turn).
    fn extract_in_pieces(x: &Extractor, body: &[u8], sizes: &[usize]) -> Result<Usage, ParseError> {
        let mut extraction = x.extraction();
        let mut rest = body;
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, after) = rest.split_at((*size).clamp(1, rest.len()));
            extraction.feed(piece)?;
            rest = after;
        }
        extraction.finish()
    }

    const INPUT_SAMPLE: &str = "gen_ai_client_token_usage_sum{gen_ai_request_model=\"m\",gen_ai_token_type=\"input\"}";

    #[test]
    fn a_bad_value_is_quoted_as_a_short_escaped_excerpt() {
        // A value that runs on, with a quote and a control character in it.
        let value = format!("7\"\u{7}{}", "x".repeat(60_000));
        let body = format!("{INPUT_SAMPLE} 5\n{INPUT_SAMPLE} {value}\n");
        let e = error(&otel(), body.as_bytes());
        assert_eq!(e.line, 2);
        assert_eq!(
            e.reason,
            format!(
                "gen_ai_client_token_usage_sum: invalid value \"7\\\"\\u{{7}}{}…\" (60003 bytes)",
                "x".repeat(37)
            )
        );
        // Short values are quoted whole, as before.
        let e = error(&otel(), format!("{INPUT_SAMPLE} 12abc\n").as_bytes());
        assert_eq!(e.reason, "gen_ai_client_token_usage_sum: invalid value \"12abc\"");
        // So are timestamps, label names and model names.
        let e = error(&otel(), format!("{INPUT_SAMPLE} 5 {}\n", "9:".repeat(100)).as_bytes());
        assert!(e.reason.ends_with("…\" (200 bytes)"), "{e}");
        assert!(e.reason.len() < 150, "{e}");
        let label = "l".repeat(1000);
        let e = error(
            &otel(),
            format!("gen_ai_client_token_usage_sum{{{label}}} 5\n").as_bytes(),
        );
        assert_eq!(
            e.reason,
            format!(
                "gen_ai_client_token_usage_sum: expected '=' after label {}… (1000 bytes)",
                "l".repeat(40)
            )
        );
        let model = "m".repeat(1000);
        let x = Extractor::new(MetricsFormat::LiteLlm, &[]);
        let line = format!("litellm_input_tokens_metric_total{{model=\"{model}\"}} 1e15\n");
        let e = error(&x, line.repeat(18_447).as_bytes());
        assert!(
            e.reason
                .contains(&format!("model \"{}…\" (1000 bytes) overflows", "m".repeat(40))),
            "{e}"
        );
    }

    #[test]
    fn a_series_line_longer_than_the_limit_is_an_error_and_other_long_lines_are_skipped() {
        let long = "x".repeat(15 * 1024 * 1024);
        // A series whose value runs on for 15 MiB, with or without its newline.
        for end in ["", "\n"] {
            let body = format!("{INPUT_SAMPLE} 5\n{INPUT_SAMPLE} 7{long}{end}");
            for sizes in [&[usize::MAX][..], &[16 * 1024], &[1000, 7]] {
                let e = extract_in_pieces(&otel(), body.as_bytes(), sizes).unwrap_err();
                assert_eq!(
                    e.to_string(),
                    "line 2: gen_ai_client_token_usage_sum: longer than 65536 bytes",
                    "pieces of {sizes:?}"
                );
            }
        }
        // A line of exactly the limit is read; one more byte is too long.
        let exact = format!("{INPUT_SAMPLE} 5 # {{}}");
        let exact = format!("{exact}{}\n", " ".repeat(MAX_LINE_BYTES - exact.len()));
        assert_eq!(exact.len(), MAX_LINE_BYTES + 1);
        assert_eq!(extract(&otel(), &exact).get("m", Input), Some(5));
        let over = format!("{} \n", &exact[..exact.len() - 1]);
        assert!(
            error(&otel(), over.as_bytes())
                .reason
                .ends_with("longer than 65536 bytes")
        );
        // Other metrics and comments of any length are skipped, however they arrive.
        let body =
            format!("# HELP big {long}\nbig_info{{text=\"{long}\"}} 1\n{INPUT_SAMPLE} 5\n{long}\n\n# EOF {long}\n");
        for sizes in [&[usize::MAX][..], &[65536], &[65535, 3]] {
            let usage = extract_in_pieces(&otel(), body.as_bytes(), sizes).unwrap();
            assert_eq!(usage.get("m", Input), Some(5), "pieces of {sizes:?}");
        }
        // A long line that starts like no metrics line is still an error.
        let e = error(&otel(), format!("{INPUT_SAMPLE} 5\n\x00{long}").as_bytes());
        assert_eq!(e.to_string(), "line 2: byte 0x00 cannot start a metrics line");
    }

    #[test]
    fn pieces_cut_anywhere_read_as_the_whole_body() {
        let bodies = [
            OTEL_HISTOGRAM.to_string(),
            format!("\u{feff}{OTEL_HISTOGRAM}"),
            format!("{OTEL_HISTOGRAM}# EOF\n{INPUT_SAMPLE} NaN\n"),
            format!("{OTEL_HISTOGRAM}{INPUT_SAMPLE} NaN"),
            format!("\u{feff}{INPUT_SAMPLE} 1{}\n", "0".repeat(MAX_LINE_BYTES)),
            format!(
                "\u{feff}{INPUT_SAMPLE} 1{}",
                " ".repeat(MAX_LINE_BYTES - INPUT_SAMPLE.len() - 5)
            ),
            format!("{}\r\n{INPUT_SAMPLE} 3\r\n", " ".repeat(MAX_LINE_BYTES + 10)),
        ];
        for body in &bodies {
            let whole = otel().extract(body.as_bytes());
            for sizes in [&[1][..], &[2, 3], &[4096], &[MAX_LINE_BYTES - 1], &[MAX_LINE_BYTES, 1]] {
                assert_eq!(
                    extract_in_pieces(&otel(), body.as_bytes(), sizes),
                    whole,
                    "pieces of {sizes:?} of {:?}",
                    &body[..body.len().min(200)]
                );
            }
        }
    }

    #[test]
    fn unescape_rules() {
        let mut s = String::new();
        for (raw, want) in [
            (r"plain", "plain"),
            (r#"a\"b"#, "a\"b"),
            (r"a\\b", "a\\b"),
            (r"a\nb", "a\nb"),
            (r"a\tb", "a\\tb"),
            (r"end\", "end\\"),
        ] {
            unescape(raw, &mut s);
            assert_eq!(s, want);
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// One series: model index (3 = no model label), token type (2 = "total"), value.
        fn series() -> impl Strategy<Value = (usize, usize, u32)> {
            (0usize..4, 0usize..3, any::<u32>())
        }

        /// Renders a series with the wanted labels, some extra ones, in a random order, with
        /// random blanks, trailing comma, timestamp, exemplar and line ending.
        fn render((model, ty, value): (usize, usize, u32), order: &[usize], extras: usize, style: u8) -> String {
            let blank = |bit: u8| if style & bit != 0 { " \t" } else { "" };
            let mut labels = Vec::new();
            if model < 3 {
                labels.push(format!("gen_ai_request_model{}={}\"m{model}\"", blank(1), blank(2)));
            }
            labels.push(format!("gen_ai_token_type=\"{}\"", ["input", "output", "total"][ty]));
            for e in 0..extras {
                labels.push(format!("x{e}=\"v\\\"{e}\\\\,}}\""));
            }
            let mut ordered: Vec<&String> = Vec::new();
            for &i in order.iter().take(labels.len()) {
                let l = &labels[i % labels.len()];
                if !ordered.contains(&l) {
                    ordered.push(l);
                }
            }
            for l in &labels {
                if !ordered.contains(&l) {
                    ordered.push(l);
                }
            }
            let sep = format!("{},{}", blank(4), blank(8));
            let mut line = format!(
                "gen_ai_client_token_usage_sum{}{{{}{}{}}}",
                blank(16),
                blank(32),
                ordered.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(&sep),
                if style & 64 != 0 { "," } else { "" },
            );
            line.push_str(&format!(" {value}"));
            if style & 128 != 0 {
                line.push_str(" 1712345678901 # {trace_id=\"t\"} 1.0");
            }
            line.push_str(if style & 1 != 0 { "\r\n" } else { "\n" });
            line
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            #[test]
            fn layout_never_changes_the_sums(
                all in proptest::collection::vec(
                    (series(), proptest::collection::vec(0usize..8, 8), 0usize..4, any::<u8>()),
                    0..40,
                )
            ) {
                let mut body = String::from("# TYPE gen_ai_client_token_usage histogram\n");
                let mut want: BTreeMap<(String, usize), u64> = BTreeMap::new();
                for (s, order, extras, style) in &all {
                    body.push_str(&render(*s, order, *extras, *style));
                    body.push_str("http_requests_total{code=\"200\"} NaN\n");
                    let (model, ty, value) = *s;
                    if ty < 2 {
                        let m = if model < 3 { format!("m{model}") } else { UNKNOWN_MODEL.to_owned() };
                        *want.entry((m, ty)).or_default() += u64::from(value);
                    }
                }
                let got = otel().extract(body.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}\n{body}")))?;
                let got: BTreeMap<(String, usize), u64> =
                    got.iter().map(|(m, t, v)| ((m.to_owned(), slot(t)), v)).collect();
                prop_assert_eq!(got, want);
            }

            #[test]
            fn pieces_never_change_the_answer(
                all in proptest::collection::vec(
                    (series(), proptest::collection::vec(0usize..8, 8), 0usize..4, any::<u8>()),
                    0..20,
                ),
                noise in proptest::collection::vec(any::<u8>(), 0..40),
                at in any::<proptest::sample::Index>(),
                sizes in proptest::collection::vec(1usize..300, 1..8),
            ) {
                let mut body = b"# TYPE gen_ai_client_token_usage histogram\n".to_vec();
                for (s, order, extras, style) in &all {
                    body.extend_from_slice(render(*s, order, *extras, *style).as_bytes());
                }
                let whole = otel().extract(&body);
                prop_assert_eq!(&extract_in_pieces(&otel(), &body, &sizes), &whole);
                // With noise somewhere: an error or not, the same one.
                let at = at.index(body.len() + 1);
                body.splice(at..at, noise);
                let whole = otel().extract(&body);
                prop_assert_eq!(extract_in_pieces(&otel(), &body, &sizes), whole);
            }

            #[test]
            fn arbitrary_bytes_never_panic(
                body in proptest::collection::vec(any::<u8>(), 0..400),
                cut in 0usize..1000,
            ) {
                let _ = otel().extract(&body);
                // Also a valid body cut and spliced with noise.
                let mut valid = OTEL_HISTOGRAM.as_bytes().to_vec();
                let at = cut.min(valid.len());
                valid.splice(at..at, body.iter().copied());
                let _ = otel().extract(&valid);
                let _ = otel().extract(&valid[..at]);
            }
        }
    }
}
