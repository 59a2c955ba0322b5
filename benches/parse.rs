//! Throughput of the token-usage extractor (`tokenbudget::usage::Extractor`) against
//! `prometheus_parse::Scrape::parse` on the same bodies, generated here deterministically:
//!
//! - `agent`: ~1 MiB exposition of an AI agent, ~5% of its bytes the OpenTelemetry
//!   `gen_ai_client_token_usage` histogram of a few models, the rest HTTP server and client
//!   duration histograms (contiguous families, as exporters write them).
//! - `tokens`: ~1 MiB of nothing but the token histogram (buckets, count, sum) of many models.
//! - `sums`: ~1 MiB of nothing but `gen_ai_client_token_usage_sum` series: every line counts,
//!   the worst case for the extractor.
//! - `subjects`: ~2.6 MiB of LiteLLM's counters for 5,000 end users of 2 models (10,000
//!   pairs, the most one scrape reads one by one), read without and with the end user as a
//!   subject label (`Extractor::with_subjects`), and one scrape of a known pod counted by the
//!   ledger without and with the subject ledger (`Ledger::observe`): what a budget's limit per
//!   end user costs.
//!
//! The baseline parses into a `Scrape` (building the `String` lines from the body, as a user
//! must) and then sums the same series, so both sides do the same job.
//!
//! Run: `cargo bench --bench parse -- --warm-up-time 1 --measurement-time 3`

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokenbudget::api::{MetricsFormat, TokenType};
use tokenbudget::usage::Extractor;

const MIB: usize = 1 << 20;

const TOKEN_BUCKETS: [&str; 14] = [
    "1", "4", "16", "64", "256", "1024", "4096", "16384", "65536", "262144", "1048576", "4194304", "16777216",
    "67108864",
];
const HTTP_BUCKETS: [&str; 15] = [
    "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1", "2.5", "5", "7.5", "10", "+Inf",
];

/// A small deterministic generator (64-bit LCG), so the inputs are the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// The expected sums of a generated body, per (model, "input"/"output").
type Expected = BTreeMap<(String, &'static str), u64>;

/// Appends the OpenTelemetry token histogram of `model`: input, output and the (ignored)
/// total series, each with buckets, count and sum.
fn token_histogram(out: &mut String, model: &str, rng: &mut Lcg, expected: &mut Expected) {
    let input = rng.next(5_000_000);
    let output = rng.next(1_000_000);
    for (token_type, sum) in [("input", input), ("output", output), ("total", input + output)] {
        let labels = format!(
            "gen_ai_operation_name=\"chat\",gen_ai_request_model=\"{model}\",\
             gen_ai_response_model=\"{model}-2024-07-18\",gen_ai_system=\"openai\",\
             gen_ai_token_type=\"{token_type}\",server_address=\"api.openai.com\",\
             otel_scope_name=\"opentelemetry.instrumentation.openai_v2\""
        );
        let count = 1 + rng.next(10_000);
        for (i, le) in TOKEN_BUCKETS.iter().enumerate() {
            let c = count * (i as u64 + 1) / TOKEN_BUCKETS.len() as u64;
            out.push_str(&format!(
                "gen_ai_client_token_usage_bucket{{{labels},le=\"{le}\"}} {c}\n"
            ));
        }
        out.push_str(&format!(
            "gen_ai_client_token_usage_bucket{{{labels},le=\"+Inf\"}} {count}\n"
        ));
        out.push_str(&format!("gen_ai_client_token_usage_count{{{labels}}} {count}\n"));
        out.push_str(&format!("gen_ai_client_token_usage_sum{{{labels}}} {sum}\n"));
        if token_type != "total" {
            *expected.entry((model.to_owned(), token_type)).or_default() += sum;
        }
    }
}

fn token_family_header(out: &mut String) {
    out.push_str("# HELP gen_ai_client_token_usage Measures number of input and output tokens used\n");
    out.push_str("# TYPE gen_ai_client_token_usage histogram\n");
}

/// One HTTP duration histogram family with `series` label sets.
fn http_family(out: &mut String, name: &str, series: usize, rng: &mut Lcg) {
    out.push_str(&format!(
        "# HELP {name} Duration of HTTP requests.\n# TYPE {name} histogram\n"
    ));
    const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
    const CODES: [&str; 4] = ["200", "201", "404", "500"];
    for s in 0..series {
        let labels = format!(
            "http_request_method=\"{}\",http_response_status_code=\"{}\",http_route=\"/api/v1/agents/{{id}}/tasks/{}\",\
             network_protocol_version=\"1.1\",url_scheme=\"http\"",
            METHODS[s % 4],
            CODES[(s / 4) % 4],
            s / 16
        );
        let count = 1 + rng.next(100_000);
        for (i, le) in HTTP_BUCKETS.iter().enumerate() {
            let c = count * (i as u64 + 1) / HTTP_BUCKETS.len() as u64;
            out.push_str(&format!("{name}_bucket{{{labels},le=\"{le}\"}} {c}\n"));
        }
        out.push_str(&format!(
            "{name}_sum{{{labels}}} {}.{}\n",
            rng.next(100_000),
            rng.next(1000)
        ));
        out.push_str(&format!("{name}_count{{{labels}}} {count}\n"));
    }
}

/// ~1 MiB: HTTP histograms around a token histogram block of ~5% of the bytes.
fn agent_body() -> (String, Expected) {
    let mut rng = Lcg(1);
    let mut expected = Expected::new();
    let mut tokens = String::new();
    token_family_header(&mut tokens);
    let mut m = 0;
    while tokens.len() < MIB / 20 {
        token_histogram(&mut tokens, &format!("gpt-4o-mini-{m}"), &mut rng, &mut expected);
        m += 1;
    }
    // Size one HTTP series, then split the rest of the MiB between a server and a client family.
    let mut probe = String::new();
    http_family(&mut probe, "http_server_request_duration_seconds", 1, &mut Lcg(1));
    let series = (MIB - tokens.len()) / probe.len() / 2;
    let mut body = String::with_capacity(MIB + MIB / 10);
    http_family(&mut body, "http_server_request_duration_seconds", series, &mut rng);
    body.push_str(&tokens);
    http_family(&mut body, "http_client_request_duration_seconds", series, &mut rng);
    (body, expected)
}

/// ~1 MiB of the token histogram only.
fn tokens_body() -> (String, Expected) {
    let mut rng = Lcg(2);
    let mut expected = Expected::new();
    let mut body = String::with_capacity(MIB + MIB / 10);
    token_family_header(&mut body);
    let mut m = 0;
    while body.len() < MIB {
        token_histogram(&mut body, &format!("model-{m}"), &mut rng, &mut expected);
        m += 1;
    }
    (body, expected)
}

/// ~1 MiB of `_sum` series only, 40 models, extra labels varying so series repeat per model.
fn sums_body() -> (String, Expected) {
    let mut rng = Lcg(3);
    let mut expected = Expected::new();
    let mut body = String::with_capacity(MIB + MIB / 10);
    token_family_header(&mut body);
    let mut i = 0;
    while body.len() < MIB {
        let model = format!("model-{}", i % 40);
        let token_type = if i % 2 == 0 { "input" } else { "output" };
        let sum = rng.next(10_000_000);
        body.push_str(&format!(
            "gen_ai_client_token_usage_sum{{gen_ai_operation_name=\"chat\",gen_ai_request_model=\"{model}\",\
             gen_ai_system=\"openai\",gen_ai_token_type=\"{token_type}\",agent_task=\"t{i}\"}} {sum}\n"
        ));
        *expected.entry((model, token_type)).or_default() += sum;
        i += 1;
    }
    (body, expected)
}

/// What a user of prometheus-parse writes: lines as `String`s, parse, then sum the series.
fn baseline(body: &[u8]) -> BTreeMap<(String, String), f64> {
    let text = std::str::from_utf8(body).expect("UTF-8");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    let mut sums = BTreeMap::new();
    for s in &scrape.samples {
        if s.metric != "gen_ai_client_token_usage_sum" {
            continue;
        }
        let (prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v)) = s.value else {
            continue;
        };
        let (Some(model), Some(t @ ("input" | "output"))) =
            (s.labels.get("gen_ai_request_model"), s.labels.get("gen_ai_token_type"))
        else {
            continue;
        };
        *sums.entry((model.to_owned(), t.to_owned())).or_insert(0.0) += v;
    }
    sums
}

fn bench(c: &mut Criterion) {
    let extractor = Extractor::new(MetricsFormat::OpenTelemetry, &[]);
    let mut group = c.benchmark_group("parse");
    for (name, (body, expected)) in [
        ("agent", agent_body()),
        ("tokens", tokens_body()),
        ("sums", sums_body()),
    ] {
        let body = body.into_bytes();
        // Both sides must find exactly the generated usage before their speed means anything.
        let usage = extractor.extract(&body).expect("generated body parses");
        let got: Expected = usage
            .iter()
            .map(|(m, t, v)| {
                (
                    (m.to_owned(), if t == TokenType::Input { "input" } else { "output" }),
                    v,
                )
            })
            .collect();
        assert_eq!(got, expected, "{name}: extractor");
        let base = baseline(&body);
        assert_eq!(base.len(), expected.len(), "{name}: prometheus-parse");
        for ((m, t), v) in &expected {
            assert_eq!(
                base[&(m.clone(), (*t).to_owned())],
                *v as f64,
                "{name}: prometheus-parse"
            );
        }
        let token_lines = body
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"gen_ai_client_token_usage"))
            .map(|l| l.len() + 1)
            .sum::<usize>();
        eprintln!(
            "{name}: {} bytes, {} lines, {:.1}% token family bytes, {} (model, type) sums",
            body.len(),
            body.iter().filter(|&&b| b == b'\n').count(),
            100.0 * token_lines as f64 / body.len() as f64,
            expected.len()
        );

        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{name}/extractor"), |b| {
            b.iter(|| extractor.extract(black_box(&body)).expect("parses"))
        });
        group.bench_function(format!("{name}/prometheus-parse"), |b| {
            b.iter(|| baseline(black_box(&body)))
        });
    }
    group.finish();
    subjects(c);
}

/// A pod's LiteLLM counters for `users` end users, each of two models.
fn litellm_body(users: usize) -> String {
    let mut body = String::new();
    for (name, factor) in [
        ("litellm_input_tokens_metric_total", 7),
        ("litellm_output_tokens_metric_total", 3),
    ] {
        body.push_str(&format!("# TYPE {name} counter\n"));
        for u in 0..users {
            for model in ["gpt-4o", "gpt-4o-mini"] {
                body.push_str(&format!(
                    "{name}{{api_key_alias=\"None\",end_user=\"user-{u}@example.com\",model=\"{model}\",team=\"None\",user=\"None\"}} {}.0\n",
                    (u + 1) * factor
                ));
            }
        }
    }
    body
}

fn subjects(c: &mut Criterion) {
    use tokenbudget::api::WorkloadKind;
    use tokenbudget::usage::ledger::{Ledger, PodObservation};

    let body = litellm_body(5_000).into_bytes();
    let plain = Extractor::new(MetricsFormat::LiteLlm, &[]);
    let with = plain.with_subjects(&["end_user"]);
    let usage = with.extract(&body).expect("parses");
    assert_eq!(usage.subjects("end_user").expect("read").count(), 2 * 2 * 5_000);
    eprintln!("subjects: {} bytes, 5,000 end users of 2 models", body.len());
    let mut group = c.benchmark_group("subjects");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("5k-users/extractor", |b| {
        b.iter(|| plain.extract(black_box(&body)).expect("parses"))
    });
    group.bench_function("5k-users/extractor-with-subjects", |b| {
        b.iter(|| with.extract(black_box(&body)).expect("parses"))
    });
    // One scrape of a known pod whose counters all moved, counted with and without the
    // subject ledger.
    let at = |s: &str| s.parse::<jiff::Timestamp>().expect("a time");
    let pod = PodObservation {
        uid: "pod",
        name: "pod",
        binding: "b",
        workload: (WorkloadKind::Deployment, "agent"),
        restarts: 0,
        started_at: Some(at("2026-11-02T00:00:00Z")),
        bound_since: at("2026-10-01T00:00:00Z"),
        container_started: None,
        scraped_at: at("2026-11-10T00:00:00Z"),
    };
    for (name, labels) in [
        ("5k-users/observe", &[][..]),
        ("5k-users/observe-with-subjects", &["end_user"][..]),
    ] {
        let mut ledger = Ledger::new(at("2026-11-01T00:00:00Z"));
        ledger.set_subject_labels(labels.iter().copied());
        ledger.observe(&pod, &usage);
        group.bench_function(name, |b| {
            b.iter_batched(
                || ledger.clone(),
                |mut ledger| ledger.observe(black_box(&pod), black_box(&usage)),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
