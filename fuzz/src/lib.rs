//! What the fuzz targets check on every input, shared with the corpus replay test
//! (`tests/fuzz_corpus.rs` includes this file), so that the committed corpus keeps checking
//! the same properties in CI. Every check panics when a property fails: for the fuzzer, a
//! crash. Only `tokenbudget` and std are used here, so that the main crate's test can include
//! this file as a module.
//!
//! The properties of [`Extractor::extract`], for a body and the extractor of a format:
//! - it does not panic, and it ends (the fuzzer's time-out finds hangs);
//! - its result is deterministic: the same for the same extractor, a clone of it and one built
//!   again through [`Extractor::for_endpoint`];
//! - it agrees with reading the body line by line: every line read alone gives the same
//!   error, or at most one series whose value is `<= MAX_SERIES_VALUE`, and the body's usage
//!   is the exact sum of those series, an error where the sum of a model's tokens overflows,
//!   reading stopping at `# EOF`;
//! - its [`Usage`] is consistent: `len`, `is_empty`, `get` and `iter` agree, and `total`
//!   saturates;
//! - an error's `reason` is bounded: by a multiple of its line's length (always), or by
//!   [`STRICT_REASON_LIMIT`] bytes (with `strict_reasons`).

use std::collections::BTreeMap;

use tokenbudget::api::{CustomMetric, MetricsEndpoint, MetricsFormat, TokenType};
use tokenbudget::usage::{Extractor, MAX_SERIES_VALUE, ParseError, Usage};

/// Every format, in the order of the corpus directories.
pub const FORMATS: [MetricsFormat; 4] = [
    MetricsFormat::OpenTelemetry,
    MetricsFormat::Vllm,
    MetricsFormat::LiteLlm,
    MetricsFormat::Custom,
];

/// The most bytes a reason may have with `strict_reasons`, besides the longest sample name
/// (which comes from the binding, not from the scraped body).
pub const STRICT_REASON_LIMIT: usize = 512;

/// At most this many `#rule` lines are read (a binding has at most 32 entries; a few are
/// enough to mix the entry forms).
const MAX_RULES: usize = 8;

/// The directory of a format under `fuzz/corpus/` and `fuzz/seeds/`, and the fuzz target's
/// name.
pub fn format_dir(format: MetricsFormat) -> &'static str {
    match format {
        MetricsFormat::OpenTelemetry => "opentelemetry",
        MetricsFormat::Vllm => "vllm",
        MetricsFormat::LiteLlm => "litellm",
        MetricsFormat::Custom => "custom",
    }
}

/// The `custom` entries for format Custom: from the `#rule` lines that start the body, or
/// else [`default_rules`]. A rule line is `#rule <metric> <type> [<modelLabel>]`, fields
/// separated by single spaces (so a name may hold a tab or a CR), where `<type>` is `input`,
/// `output`, `-` (neither: the entry is skipped) or else the `tokenTypeLabel`. The names are
/// taken as they are, unvalidated: the extractor must not panic on entries that the API
/// server would refuse. Being comments, rule lines are no series to any extractor.
pub fn custom_rules(body: &[u8]) -> Vec<CustomMetric> {
    let mut rules = Vec::new();
    for line in body.split(|&b| b == b'\n').take(MAX_RULES) {
        let Some(spec) = line.strip_prefix(b"#rule ") else {
            break;
        };
        let mut fields = spec
            .split(|&b| b == b' ')
            .map(|f| String::from_utf8_lossy(f).into_owned());
        let metric = fields.next().unwrap_or_default();
        let (token_type, token_type_label) = match fields.next().as_deref() {
            Some("input") => (Some(TokenType::Input), None),
            Some("output") => (Some(TokenType::Output), None),
            Some("-") | None => (None, None),
            Some(label) => (None, Some(label.to_owned())),
        };
        rules.push(CustomMetric {
            metric,
            token_type,
            token_type_label,
            model_label: fields.next(),
        });
    }
    if rules.is_empty() { default_rules() } else { rules }
}

/// The entries of format Custom for a body without `#rule` lines: both entry forms, a family
/// name without `_total`, a type label that is also the model label, and a colon.
pub fn default_rules() -> Vec<CustomMetric> {
    let rule = |metric: &str, token_type, label: Option<&str>, model: Option<&str>| CustomMetric {
        metric: metric.into(),
        token_type,
        token_type_label: label.map(Into::into),
        model_label: model.map(Into::into),
    };
    vec![
        rule(
            "agent_embedding_tokens_total",
            Some(TokenType::Input),
            None,
            Some("model"),
        ),
        rule("agent_chat_tokens", None, Some("kind"), Some("model")),
        rule("k_total", None, Some("k"), Some("k")),
        rule("ns:out_tokens", Some(TokenType::Output), None, None),
    ]
}

/// The extractor of `format` for `body` (format Custom reads its entries from the body).
pub fn extractor(format: MetricsFormat, body: &[u8]) -> Extractor {
    match format {
        MetricsFormat::Custom => Extractor::new(format, &custom_rules(body)),
        _ => Extractor::new(format, &[]),
    }
}

/// Checks every property of extracting `body` with the extractor of `format`; panics on the
/// first that fails.
pub fn check(format: MetricsFormat, body: &[u8], strict_reasons: bool) {
    let x = extractor(format, body);
    let got = x.extract(body);

    // Deterministic, whatever the extractor's history or how it was built.
    assert_eq!(got, x.extract(body), "a second extraction differs");
    assert_eq!(got, x.clone().extract(body), "a clone's extraction differs");
    let endpoint = MetricsEndpoint {
        format,
        custom: (format == MetricsFormat::Custom).then(|| custom_rules(body)),
        ..MetricsEndpoint::default()
    };
    assert_eq!(
        got,
        Extractor::for_endpoint(&endpoint).extract(body),
        "for_endpoint differs"
    );

    let lines = lines(body);
    let expected = read_line_by_line(&x, &lines);
    match (&got, &expected) {
        (Ok(usage), Expected::Sums(sums)) => {
            check_usage(usage);
            let got: BTreeMap<(String, TokenType), u64> =
                usage.iter().map(|(m, t, v)| ((m.to_owned(), t), v)).collect();
            assert_eq!(&got, sums, "the body's sums differ from the sums of its lines");
        }
        (Err(e), Expected::Error(want)) => assert_eq!(e, want, "the error differs from its line's alone"),
        (Err(e), Expected::Overflow { line }) => assert_eq!(e.line, *line, "the overflow is on another line: {e}"),
        (got, want) => panic!("extract gave {got:?}, line by line gave {want:?}"),
    }
    if let Err(e) = &got {
        check_reason(&x, e, lines[e.line - 1], strict_reasons);
    }
}

/// The lines of a body as `extract` counts them: a leading byte order mark is dropped, and
/// an empty piece after a final newline is no line.
fn lines(body: &[u8]) -> Vec<&[u8]> {
    let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    let mut lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

/// What a body must give, from reading its lines one at a time.
#[derive(Debug)]
enum Expected {
    Sums(BTreeMap<(String, TokenType), u64>),
    /// The first line with an error, and its error.
    Error(ParseError),
    /// The sum of a model's tokens overflows at this line (1-based).
    Overflow {
        line: usize,
    },
}

/// Reads each line alone, as the second line of a body whose first is empty (so that no
/// byte order mark is stripped from it), and adds up what they give.
fn read_line_by_line(x: &Extractor, lines: &[&[u8]]) -> Expected {
    // A byte that cannot start a metrics line, nor any wanted sample: read, it is an error.
    let poison = (0u8..=255)
        .find(|&b| {
            !(b.is_ascii_alphanumeric() || b"_:{# \t\r\n".contains(&b)) && x.samples().all(|s| s.as_bytes()[0] != b)
        })
        .expect("a few rules leave some byte free");
    let mut sums: BTreeMap<(String, TokenType), u64> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        let alone = [b"\n", *line].concat();
        let usage = match x.extract(&alone) {
            Ok(usage) => usage,
            Err(e) => {
                assert_eq!(e.line, 2, "a line read alone gave an error on another line: {e}");
                return Expected::Error(ParseError {
                    line: i + 1,
                    reason: e.reason,
                });
            }
        };
        check_usage(&usage);
        assert!(usage.len() <= 1, "one line gave several series: {usage:?}");
        for (model, token_type, value) in usage.iter() {
            assert!(value <= MAX_SERIES_VALUE, "a series of {value} tokens was accepted");
            let sum = sums.entry((model.to_owned(), token_type)).or_default();
            match sum.checked_add(value) {
                Some(s) => *sum = s,
                None => return Expected::Overflow { line: i + 1 },
            }
        }
        // `# EOF` ends the body: the poison line after it is then not read.
        let then_poison = [b"\n", *line, b"\n", &[poison]].concat();
        if x.extract(&then_poison).is_ok() {
            assert!(usage.is_empty(), "the end-of-body line counted tokens: {usage:?}");
            break;
        }
    }
    Expected::Sums(sums)
}

/// `len`, `is_empty`, `get`, `iter` and `total` of a usage agree with one another.
fn check_usage(usage: &Usage) {
    let all: Vec<(&str, TokenType, u64)> = usage.iter().collect();
    assert_eq!(usage.len(), all.len());
    assert_eq!(usage.is_empty(), all.is_empty());
    for &(model, token_type, value) in &all {
        assert_eq!(usage.get(model, token_type), Some(value));
    }
    for token_type in TokenType::ALL {
        let sum: u128 = all.iter().filter(|a| a.1 == token_type).map(|a| u128::from(a.2)).sum();
        let want = u64::try_from(sum).unwrap_or(u64::MAX);
        assert_eq!(usage.total(token_type), want, "total({token_type:?}) does not saturate");
    }
}

/// The reason of an error is bounded: by ten times its line's length (each byte of the line
/// shown at most once, escaped in at most ten bytes) plus fixed text and the sample name, or,
/// with `strict`, by [`STRICT_REASON_LIMIT`] whatever the line.
fn check_reason(x: &Extractor, e: &ParseError, line: &[u8], strict: bool) {
    let longest_sample = x.samples().map(str::len).max().unwrap_or(0);
    let len = e.reason.len();
    assert!(
        len <= 200 + longest_sample + 10 * line.len(),
        "a reason of {len} bytes for a line of {}",
        line.len()
    );
    if strict {
        assert!(
            len <= longest_sample + STRICT_REASON_LIMIT,
            "a reason of {len} bytes (line {}): {:.200}...",
            e.line,
            e.reason
        );
    }
}

/// Whether the fuzz targets check reasons against [`STRICT_REASON_LIMIT`]: when the variable
/// `FUZZ_STRICT_REASONS` is set (hack/fuzz.sh's `--strict-reasons`).
pub fn strict_reasons_from_env() -> bool {
    std::env::var_os("FUZZ_STRICT_REASONS").is_some()
}
