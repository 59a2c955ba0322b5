//! A stand-in Prometheus for the benches: it answers the operator's queries
//! (`usage::prometheus::query`, POSTed to `/api/v1/query`) for any namespace and pods, as
//! Prometheus 2.42 answers them, from a counter of its own per pod. Each pod has 5 series
//! (`up` and `gen_ai_client_token_usage_sum` of 2 models and 2 token types), each with the 8
//! samples of a 2-minute lookback at a 15 s scrape interval, the newest one second old. While
//! [`Spending`] is on, every query finds each pod's counters `step` higher.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
};

use http_body_util::{BodyExt, Full};
use hyper::{Response, body::Bytes, header, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::agents::Spending;

const SCRAPE_INTERVAL_S: f64 = 15.0;
const SAMPLES: usize = 8;
const MODELS: [&str; 2] = ["gpt-4o-mini", "claude-sonnet"];

/// Serves the stand-in on a free loopback port of the current tokio runtime; returns its
/// address once it listens.
pub async fn listen(spending: Arc<Spending>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let counters: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (spending, counters) = (spending.clone(), counters.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let (spending, counters) = (spending.clone(), counters.clone());
                    async move {
                        let form = request
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let body = answer(&form, &spending, &counters);
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header(header::CONTENT_TYPE, "application/json")
                                .body(Full::new(Bytes::from(body)))
                                .expect("a response"),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(address)
}

/// The answer to one query form (`query=...&timeout=...`): the namespace and the pods it
/// names, every pod with its series.
fn answer(form: &[u8], spending: &Spending, counters: &Mutex<HashMap<String, u64>>) -> String {
    let form = String::from_utf8_lossy(form);
    let query = form
        .split('&')
        .find_map(|pair| pair.strip_prefix("query="))
        .map(form_decode)
        .unwrap_or_default();
    let (Some(namespace), Some(pods)) = (between(&query, "namespace=\"", "\""), between(&query, "pod=~\"", "\""))
    else {
        return r#"{"status":"error","errorType":"bad_data","error":"not the operator's query"}"#.into();
    };
    let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
    let mut out = String::from(r#"{"status":"success","data":{"resultType":"matrix","result":["#);
    let mut counters = counters.lock().expect("counters");
    for (i, pod) in pods.split('|').enumerate() {
        let counter = counters.entry(format!("{namespace}/{pod}")).or_default();
        if spending.on.load(Ordering::Relaxed) {
            *counter += spending.step;
        }
        let labels = format!(r#""instance":"{pod}:9464","job":"agents","namespace":"{namespace}","pod":"{pod}""#);
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, r#"{{"metric":{{"__name__":"up",{labels}}}"#);
        samples(&mut out, now, 1);
        for model in MODELS {
            for kind in ["input", "output"] {
                let _ = write!(
                    out,
                    r#",{{"metric":{{"__name__":"gen_ai_client_token_usage_sum","gen_ai_request_model":"{model}","gen_ai_token_type":"{kind}",{labels}}}"#
                );
                samples(&mut out, now, *counter);
            }
        }
    }
    out.push_str("]}}");
    out
}

/// `,"values":[...]}`: the samples of one series, all of `value`, closing it.
fn samples(out: &mut String, now: f64, value: u64) {
    out.push_str(r#","values":["#);
    for k in 0..SAMPLES {
        let age = 1.0 + SCRAPE_INTERVAL_S * (SAMPLES - 1 - k) as f64;
        if k > 0 {
            out.push(',');
        }
        let _ = write!(out, "[{:.3},\"{value}\"]", now - age);
    }
    out.push_str("]}");
}

/// The text between the first `start` and the next `end`.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(&text[from..to])
}

/// `application/x-www-form-urlencoded`, decoded.
fn form_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
