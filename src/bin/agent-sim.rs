//! agent-sim: a stand-in for an AI agent that spends LLM tokens and reports them the way a
//! real agent does, as OpenTelemetry GenAI metrics in the Prometheus text format. Used by the
//! demo and the integration tests (which play the kubelet and run one per pod, each on its own
//! loopback address).
//!
//!   agent-sim --listen 127.0.3.7:9464 [--model gpt-4o-mini] [--rate 100] [--format OpenTelemetry|VLLM|LiteLLM]
//!             [--tls-cert CERT.pem --tls-key KEY.pem]
//!
//! With `--tls-cert` and `--tls-key` (PEM: the certificate chain, and its PKCS#8, PKCS#1 or
//! SEC1 key) it serves https instead of http, for bindings with `scheme: https`.
//!
//! `--rate` spends that many tokens per second (3/4 input, 1/4 output). `POST /spend?input=N&output=M&model=X`
//! spends exactly that much at once; `POST /reset` forgets everything, as a restarted process would.
//! `&users=N` spends it for each of N end users `u0`..; `&user=U` for the end user `U`: a label of the series, as LiteLLM
//! (`end_user`, with `user` and `team` "None") and OpenTelemetry instrumentation that records
//! the `enduser.id` attribute (`enduser_id`) have it; vLLM has no such label.
//!
//! It also stands in for the model an agent calls: `POST /v1/chat/completions` answers as
//! OpenAI's API does, with a `usage` of `--usage INPUT:OUTPUT` tokens per call (default
//! 100:20), and counts the calls (`GET /calls`). So a real agent (the OpenAI client with its
//! OpenTelemetry instrumentation, examples/agent) can run against it and report its own
//! tokens.
//!
//! For a real container (hack/node.sh runs it as the image `localhost/agent-sim:local`, as PID
//! 1 of its container):
//! - `POST /exit?code=N` answers, then ends the process with exit code N (default 1): a real
//!   crash, after which the kubelet starts the container again with its counters at zero.
//! - SIGTERM (what the kubelet sends when the pod is deleted) is handled: it keeps serving for
//!   `--drain DURATION` (`5s`, `500ms`; default 0), as an agent finishing in-flight work would,
//!   then exits 0. The handler is always installed because the kernel drops signals without a
//!   handler that are sent to a PID 1, which would leave the pod to its grace period's SIGKILL.
//!
//!   agent-sim --listen 127.0.3.7:9464 --hostile MODE
//!
//! serves a broken endpoint instead, to show that the operator survives it: `big-body` (a
//! 100 MiB body, streamed), `silent` (accepts and never answers), `trickle` (the headers, then
//! the body one byte a second), `garbage` (binary bytes), `value=V` (a token counter whose
//! value is `V` verbatim, such as `NaN`, `+Inf`, `-5` or `1e30`), `fat=N` (one valid sample,
//! then a token counter whose value runs on for N MiB without a newline).

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;

#[derive(Default)]
struct Spent {
    /// (model, end user) -> (input, output) totals since the process started.
    by_model: BTreeMap<(String, Option<String>), (u64, u64)>,
    /// Chat completions answered.
    calls: u64,
}

#[derive(Clone, Copy)]
enum Format {
    OpenTelemetry,
    Vllm,
    LiteLlm,
}

impl Spent {
    fn render(&self, format: Format) -> String {
        let mut out = String::new();
        match format {
            Format::OpenTelemetry => {
                out.push_str("# HELP gen_ai_client_token_usage Measures number of input and output tokens used\n");
                out.push_str("# TYPE gen_ai_client_token_usage histogram\n");
                for ((model, user), (input, output)) in &self.by_model {
                    let user = user
                        .as_ref()
                        .map(|u| format!(",enduser_id=\"{u}\""))
                        .unwrap_or_default();
                    for (kind, value) in [("input", input), ("output", output)] {
                        let labels = format!("gen_ai_request_model=\"{model}\",gen_ai_token_type=\"{kind}\"{user}");
                        out.push_str(&format!("gen_ai_client_token_usage_bucket{{{labels},le=\"+Inf\"}} 1\n"));
                        out.push_str(&format!("gen_ai_client_token_usage_sum{{{labels}}} {value}\n"));
                        out.push_str(&format!("gen_ai_client_token_usage_count{{{labels}}} 1\n"));
                    }
                }
            }
            Format::Vllm => {
                for (name, index) in [("vllm:prompt_tokens_total", 0), ("vllm:generation_tokens_total", 1)] {
                    out.push_str(&format!("# TYPE {name} counter\n"));
                    let mut by_model: BTreeMap<&str, u64> = BTreeMap::new();
                    for ((model, _), totals) in &self.by_model {
                        *by_model.entry(model).or_default() += if index == 0 { totals.0 } else { totals.1 };
                    }
                    for (model, value) in by_model {
                        out.push_str(&format!("{name}{{model_name=\"{model}\"}} {value}\n"));
                    }
                }
            }
            Format::LiteLlm => {
                for (name, index) in [
                    ("litellm_input_tokens_metric_total", 0),
                    ("litellm_output_tokens_metric_total", 1),
                ] {
                    out.push_str(&format!("# TYPE {name} counter\n"));
                    for ((model, user), totals) in &self.by_model {
                        let value = if index == 0 { totals.0 } else { totals.1 };
                        let user = user.as_deref().unwrap_or("None");
                        out.push_str(&format!(
                            "{name}{{end_user=\"{user}\",model=\"{model}\",team=\"None\",user=\"None\"}} {value}\n"
                        ));
                    }
                }
            }
        }
        // What a real agent exposes besides: the operator must skip it.
        out.push_str("# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 4.2e+07\n");
        out
    }

    fn spend(&mut self, model: &str, user: Option<&str>, input: u64, output: u64) {
        let entry = self
            .by_model
            .entry((model.to_string(), user.map(str::to_owned)))
            .or_default();
        entry.0 = entry.0.saturating_add(input);
        entry.1 = entry.1.saturating_add(output);
    }
}

struct Options {
    listen: SocketAddr,
    model: String,
    rate: u64,
    format: Format,
    hostile: Option<Hostile>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    /// How long to keep serving after SIGTERM.
    drain: Duration,
    /// The (input, output) tokens each chat completion uses.
    usage: (u64, u64),
}

/// A broken metrics endpoint, for the operator's robustness tests and demos.
#[derive(Clone, Debug)]
enum Hostile {
    /// A 100 MiB body of comment lines, streamed (no Content-Length) in 64 KiB writes.
    BigBody,
    /// Accepts the connection and reads the request, never answers.
    Silent,
    /// A valid answer whose body comes one byte a second.
    Trickle,
    /// A 200 answer whose body is binary bytes.
    Garbage,
    /// A valid exposition whose input-token counter has this value, verbatim.
    Value(String),
    /// One valid sample, then a counter whose value runs on for this many MiB, no newline.
    Fat(usize),
}

impl Hostile {
    fn parse(mode: &str) -> Result<Self, String> {
        Ok(match mode {
            "big-body" => Hostile::BigBody,
            "silent" => Hostile::Silent,
            "trickle" => Hostile::Trickle,
            "garbage" => Hostile::Garbage,
            _ => match (mode.strip_prefix("value="), mode.strip_prefix("fat=")) {
                (Some(v), _) if !v.is_empty() && !v.contains(char::is_whitespace) => Hostile::Value(v.to_string()),
                (_, Some(mib)) => match mib.parse() {
                    Ok(mib) if mib > 0 => Hostile::Fat(mib),
                    _ => return Err(format!("--hostile: fat=N needs a number of MiB, not {mib:?}")),
                },
                _ => return Err(format!("--hostile: unknown mode {mode:?}")),
            },
        })
    }
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        listen: ([127, 0, 0, 1], 9464).into(),
        model: "gpt-4o-mini".into(),
        rate: 0,
        format: Format::OpenTelemetry,
        hostile: None,
        tls_cert: None,
        tls_key: None,
        drain: Duration::ZERO,
        usage: (100, 20),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => options.listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--model" => options.model = value()?,
            "--rate" => options.rate = value()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--format" => {
                options.format = match value()?.as_str() {
                    "OpenTelemetry" => Format::OpenTelemetry,
                    "VLLM" => Format::Vllm,
                    "LiteLLM" => Format::LiteLlm,
                    other => return Err(format!("--format: unknown format {other:?}")),
                }
            }
            "--hostile" => options.hostile = Some(Hostile::parse(&value()?)?),
            "--tls-cert" => options.tls_cert = Some(value()?.into()),
            "--tls-key" => options.tls_key = Some(value()?.into()),
            "--usage" => {
                let usage = value()?;
                let parsed = usage
                    .split_once(':')
                    .and_then(|(i, o)| Some((i.parse().ok()?, o.parse().ok()?)));
                options.usage = parsed.ok_or_else(|| format!("--usage: INPUT:OUTPUT, not {usage:?}"))?;
            }
            "--drain" => {
                options.drain = tokenbudget::validate::parse_duration(&value()?).map_err(|e| format!("--drain: {e}"))?
            }
            "-h" | "--help" => {
                println!(
                    "usage: agent-sim --listen ADDR [--model NAME] [--rate TOKENS_PER_S] [--format OpenTelemetry|VLLM|LiteLLM] [--tls-cert PEM --tls-key PEM] [--drain 5s] [--usage 100:20]\n       \
                     agent-sim --listen ADDR --hostile big-body|silent|trickle|garbage|value=V|fat=MIB"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.tls_cert.is_some() != options.tls_key.is_some() {
        return Err("--tls-cert and --tls-key go together".into());
    }
    Ok(options)
}

/// A line on stdout (the container's log), even when nobody reads it any more: the tests read
/// only the first line, and a write to a closed pipe must not end the process.
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The TLS acceptor for `--tls-cert` and `--tls-key`, if given.
fn tls_acceptor(options: &Options) -> Result<Option<TlsAcceptor>, String> {
    let (Some(cert), Some(key)) = (&options.tls_cert, &options.tls_key) else {
        return Ok(None);
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn handle(req: &Request<hyper::body::Incoming>, spent: &Mutex<Spent>, options: &Options) -> Response<Full<Bytes>> {
    let mut spent = spent.lock().unwrap_or_else(|e| e.into_inner());
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, spent.render(options.format)),
        (&Method::POST, "/spend") => {
            let query = req.uri().query().unwrap_or("");
            let number = |key| query_value(query, key).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let model = query_value(query, "model").unwrap_or(&options.model).to_string();
            let user = query_value(query, "user").filter(|u| !u.is_empty());
            match number("users") {
                // As many end users as asked, `u0`, `u1`, ..., each spending that much.
                0 => spent.spend(&model, user, number("input"), number("output")),
                users => {
                    for u in 0..users {
                        spent.spend(&model, Some(&format!("u{u}")), number("input"), number("output"));
                    }
                }
            }
            (StatusCode::OK, "spent\n".into())
        }
        (&Method::POST, "/v1/chat/completions" | "/chat/completions") => {
            spent.calls += 1;
            let (input, output) = options.usage;
            let answer = serde_json::json!({
                "id": format!("chatcmpl-sim-{}", spent.calls),
                "object": "chat.completion",
                "created": 0,
                "model": options.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }],
                "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output},
            });
            let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                "application/json".parse().expect("a header value"),
            );
            return response;
        }
        (&Method::GET, "/calls") => (StatusCode::OK, format!("{}\n", spent.calls)),
        (&Method::POST, "/reset") => {
            *spent = Spent::default();
            (StatusCode::OK, "reset\n".into())
        }
        (&Method::POST, "/exit") => {
            let code = query_value(req.uri().query().unwrap_or(""), "code")
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(1);
            say(&format!("agent-sim: exiting with code {code} as asked"));
            // After the answer has gone out: the caller learns that it was heard.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                std::process::exit(code);
            });
            (StatusCode::OK, format!("exiting with code {code}\n"))
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".into()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let options = match parse_args() {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("agent-sim: {e}");
            std::process::exit(2);
        }
    };
    let tls = match tls_acceptor(&options) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("agent-sim: {e}");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(options.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("agent-sim: cannot listen on {}: {e}", options.listen);
            std::process::exit(1);
        }
    };
    tokio::spawn(drain_on_sigterm(options.drain));
    if let Some(mode) = &options.hostile {
        println!("agent-sim listening on {} (hostile: {mode:?})", options.listen);
        serve_hostile(listener, mode.clone()).await;
    }
    let spent = Arc::new(Mutex::new(Spent::default()));
    if options.rate > 0 {
        let (spent, options) = (spent.clone(), options.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let per_tick = options.rate.div_ceil(10);
            loop {
                tick.tick().await;
                let input = per_tick * 3 / 4;
                spent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .spend(&options.model, None, input, per_tick - input);
            }
        });
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("agent-sim listening on {} ({scheme})", options.listen);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (spent, options, tls) = (spent.clone(), options.clone(), tls.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = handle(&req, &spent, &options);
                async move { Ok::<_, Infallible>(response) }
            });
            let http = http1::Builder::new();
            let _ = match tls {
                None => http.serve_connection(TokioIo::new(stream), service).await,
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                    Err(_) => return,
                },
            };
        });
    }
}

/// On SIGTERM: serve on for `drain`, then exit 0.
async fn drain_on_sigterm(drain: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    term.recv().await;
    say(&format!(
        "agent-sim: SIGTERM, serving {}ms more, then exiting",
        drain.as_millis()
    ));
    tokio::time::sleep(drain).await;
    say("agent-sim: drained, exiting");
    std::process::exit(0);
}

/// Serves one broken endpoint forever; every connection on its own task, which ends when the
/// scraper goes away.
async fn serve_hostile(listener: TcpListener, mode: Hostile) -> ! {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(hostile_connection(stream, mode.clone()));
    }
}

/// Answers one connection as `mode` says, once its request has come.
async fn hostile_connection(mut stream: TcpStream, mode: Hostile) {
    if !read_request_head(&mut stream).await {
        return;
    }
    let answered = match mode {
        Hostile::Silent => {
            hold_until_closed(&mut stream).await;
            Ok(())
        }
        Hostile::BigBody => send_big_body(&mut stream).await,
        Hostile::Trickle => trickle(&mut stream).await,
        Hostile::Garbage => {
            send_garbage(&mut stream).await;
            Ok(())
        }
        Hostile::Value(value) => {
            send_value(&mut stream, &value).await;
            Ok(())
        }
        Hostile::Fat(mib) => send_fat(&mut stream, mib).await,
    };
    // A failed write: the scraper has gone, there is nobody to say goodbye to.
    if answered.is_ok() {
        let _ = stream.shutdown().await;
    }
}

/// Reads the request head, up to its blank line; false when the peer gives up first (or
/// sends more than 64 KiB of head).
async fn read_request_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
        if head.len() > 64 * 1024 {
            return false;
        }
    }
    true
}

/// The head of a 200 answer in the text format, with `extra` header lines.
fn ok_head(extra: &str) -> String {
    format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\nconnection: close\r\n{extra}\r\n")
}

/// Holds the connection, answering nothing, until the scraper closes it.
async fn hold_until_closed(stream: &mut TcpStream) {
    let mut buffer = [0u8; 1024];
    while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
}

/// 100 MiB of comment lines, in 64 KiB writes, without a Content-Length.
async fn send_big_body(stream: &mut TcpStream) -> std::io::Result<()> {
    const TOTAL: usize = 100 * 1024 * 1024;
    let mut chunk = Vec::with_capacity(64 * 1024);
    while chunk.len() < 64 * 1024 {
        chunk.extend_from_slice(b"# padding padding padding padding padding padding padding padding padding pad\n");
    }
    chunk.truncate(64 * 1024 - 1);
    chunk.push(b'\n');
    stream.write_all(ok_head("").as_bytes()).await?;
    let mut sent = 0;
    while sent < TOTAL {
        stream.write_all(&chunk).await?;
        sent += chunk.len();
    }
    Ok(())
}

/// A valid answer whose body comes one byte a second. The head goes at once, so that only a
/// deadline on the whole body stops the scrape.
async fn trickle(stream: &mut TcpStream) -> std::io::Result<()> {
    let body = Spent::default().render(Format::OpenTelemetry);
    let head = ok_head(&format!("content-length: {}\r\n", body.len()));
    stream.write_all(head.as_bytes()).await?;
    for byte in body.as_bytes() {
        stream.write_all(std::slice::from_ref(byte)).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// A 200 answer whose body is binary bytes.
async fn send_garbage(stream: &mut TcpStream) {
    let body = b"\x00\x01\x02 not metrics {{{\n";
    let head = ok_head(&format!("content-length: {}\r\n", body.len()));
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
}

/// A valid exposition whose input-token counter is `value`, verbatim.
async fn send_value(stream: &mut TcpStream, value: &str) {
    let body = format!(
        "# TYPE gen_ai_client_token_usage histogram\n\
         gen_ai_client_token_usage_sum{{gen_ai_request_model=\"gpt-4o-mini\",gen_ai_token_type=\"output\"}} 7\n\
         gen_ai_client_token_usage_sum{{gen_ai_request_model=\"gpt-4o-mini\",gen_ai_token_type=\"input\"}} {value}\n"
    );
    let answer = ok_head(&format!("content-length: {}\r\n", body.len())) + &body;
    let _ = stream.write_all(answer.as_bytes()).await;
}

/// One valid sample, then an input-token counter whose value is `7` and N MiB of `x`, without
/// a newline: a body under the operator's size cap, whose bad line is megabytes long.
async fn send_fat(stream: &mut TcpStream, mib: usize) -> std::io::Result<()> {
    let start = "# TYPE gen_ai_client_token_usage histogram\n\
         gen_ai_client_token_usage_sum{gen_ai_request_model=\"gpt-4o-mini\",gen_ai_token_type=\"output\"} 7\n\
         gen_ai_client_token_usage_sum{gen_ai_request_model=\"gpt-4o-mini\",gen_ai_token_type=\"input\"} 7";
    let chunk = vec![b'x'; 64 * 1024];
    let length = start.len() + mib * 1024 * 1024;
    stream
        .write_all(ok_head(&format!("content-length: {length}\r\n")).as_bytes())
        .await?;
    stream.write_all(start.as_bytes()).await?;
    for _ in 0..mib * 16 {
        stream.write_all(&chunk).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_modes() {
        assert!(matches!(Hostile::parse("big-body"), Ok(Hostile::BigBody)));
        assert!(matches!(Hostile::parse("value=+Inf"), Ok(Hostile::Value(v)) if v == "+Inf"));
        assert!(matches!(Hostile::parse("fat=15"), Ok(Hostile::Fat(15))));
        for bad in ["value=", "value=1 2", "slow", "", "fat=", "fat=0", "fat=lots"] {
            assert!(Hostile::parse(bad).is_err(), "{bad:?}");
        }
    }
}
