//! The I/O of the Prometheus source: the operator's Prometheus-compatible server (flags
//! `--prometheus-url`, `--prometheus-bearer-token-file`, `--prometheus-ca-file`), asked once
//! per binding and cycle for the latest samples of the pods it binds. The query and the
//! reading of its answer are pure (`usage::prometheus`); the answers are folded by the same
//! `usage::cycle::fold` as scrapes.

use std::{collections::BTreeMap, path::PathBuf, time::Duration, time::Instant};

use http_body_util::Full;
use hyper::{Request, Uri, body::Bytes, header};
use jiff::Timestamp;
use kube::ResourceExt;

use super::scrapes;
use crate::{
    api::PrometheusSeries,
    metrics::Metrics,
    usage::{
        cycle::{Answer, Answers, Binding, Scrape},
        prometheus::{self as query, PodQuery},
        scrape::{ScrapeCa, ScrapeError, Scraper, ServerClient},
    },
    validate::Source,
    workloads,
};

/// The default of `--prometheus-lookback`: how far back a pod's latest sample is looked for.
pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(120);

/// What the operator's flags say of its Prometheus.
#[derive(Clone, Debug)]
pub struct PrometheusConfig {
    /// The base URL of the HTTP API: `/api/v1/query` is appended.
    pub url: String,
    /// A file holding the bearer token sent with each query, read at each query (so a
    /// rotated token is used at once).
    pub bearer_token_file: Option<PathBuf>,
    /// The CA that an https server's certificate is verified against.
    pub ca: Option<ScrapeCa>,
    /// How far back each pod's latest sample is looked for: older is missing.
    pub lookback: Duration,
}

/// The operator's Prometheus. Cheap to clone.
#[derive(Clone)]
pub struct Prometheus {
    query_url: Uri,
    bearer_token_file: Option<PathBuf>,
    client: ServerClient,
    lookback: Duration,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("query_url", &self.query_url)
            .field("bearer_token_file", &self.bearer_token_file)
            .field("lookback", &self.lookback)
            .finish_non_exhaustive()
    }
}

impl Prometheus {
    /// The client for `config`; an error names what is wrong with the URL.
    pub fn new(config: &PrometheusConfig, max_body_bytes: usize) -> Result<Self, String> {
        let base = config.url.trim_end_matches('/');
        let query_url: Uri = format!("{base}/api/v1/query").parse().map_err(|e| {
            format!(
                "--prometheus-url {:?}: not an http:// or https:// URL with a host ({e})",
                config.url
            )
        })?;
        if !matches!(query_url.scheme_str(), Some("http" | "https")) || query_url.host().is_none() {
            return Err(format!(
                "--prometheus-url {:?}: not an http:// or https:// URL with a host",
                config.url
            ));
        }
        if query_url.query().is_some() {
            return Err(format!("--prometheus-url {:?}: a base URL takes no query", config.url));
        }
        Ok(Self {
            query_url,
            bearer_token_file: config.bearer_token_file.clone(),
            client: ServerClient::new(
                config.ca.clone(),
                "cannot verify Prometheus's certificate: the operator has no CA for it (give it --prometheus-ca-file)",
                max_body_bytes,
            ),
            lookback: config.lookback,
        })
    }

    /// The URL queries go to.
    pub fn query_url(&self) -> &Uri {
        &self.query_url
    }

    /// POSTs `promql` and returns the answer's body, within `timeout`.
    async fn query(&self, promql: &str, timeout: Duration) -> Result<Bytes, String> {
        let mut request = Request::post(self.query_url.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("tokenbudget-operator/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(file) = &self.bearer_token_file {
            // A small local file (a mounted Secret): read as kube reads its token file.
            let token = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read the bearer token file {}: {e}", file.display()))?;
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", token.trim()));
        }
        let request = request
            .body(Full::new(Bytes::from(query::form(promql, timeout))))
            .map_err(|e| format!("cannot build the query: {e}"))?;
        self.client.send(request, timeout).await.map_err(|e| e.to_string())
    }
}

/// A cycle's answers, in the order of `scrapes`: the pods of bindings that scrape are
/// scraped, those of each binding that reads Prometheus are asked there in one query, all at
/// once. `namespace` is the budget's (every binding's); `now` dates the answers as
/// [`scrapes::scrape`] does.
pub async fn answers(
    scraper: &Scraper,
    prometheus: Option<&Prometheus>,
    metrics: &Metrics,
    bindings: &[Binding<'_>],
    scrapes: &[Scrape],
    namespace: &str,
    now: Timestamp,
) -> Answers {
    let started = Instant::now();
    let mut direct = Vec::new();
    let mut queried: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, scrape) in scrapes.iter().enumerate() {
        match &bindings[scrape.binding].spec.source {
            Source::Scrape => direct.push(i),
            Source::Prometheus(_) => queried.entry(scrape.binding).or_default().push(i),
        }
    }
    let scraped = scrapes::scrape_each(scraper, metrics, direct.iter().map(|&i| &scrapes[i]));
    let asked = futures::future::join_all(queried.iter().map(|(&binding, pods)| {
        let pods: Vec<&Scrape> = pods.iter().map(|&i| &scrapes[i]).collect();
        ask(prometheus, metrics, &bindings[binding], pods, namespace, now)
    }));
    let (scraped, asked) = futures::join!(scraped, asked);
    let mut results: Vec<Option<Result<Answer, ScrapeError>>> = scrapes.iter().map(|_| None).collect();
    for (i, result) in direct.into_iter().zip(scraped) {
        results[i] = Some(result);
    }
    for ((_, pods), answers) in queried.into_iter().zip(asked) {
        for (i, result) in pods.into_iter().zip(answers) {
            results[i] = Some(result);
        }
    }
    Answers {
        results: results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ScrapeError::Prometheus("no answer".into()))))
            .collect(),
        answered_at: scrapes::answered_at(now, started),
    }
}

/// The answers of one binding's pods, from one query.
async fn ask(
    prometheus: Option<&Prometheus>,
    metrics: &Metrics,
    binding: &Binding<'_>,
    scrapes: Vec<&Scrape>,
    namespace: &str,
    now: Timestamp,
) -> Vec<Result<Answer, ScrapeError>> {
    let spec = binding.spec;
    let default_labels = PrometheusSeries::default();
    let labels = match &spec.source {
        Source::Prometheus(labels) => labels,
        Source::Scrape => &default_labels,
    };
    let results = match prometheus {
        None => query::all_failed(scrapes.len(), || ScrapeError::NoPrometheus),
        Some(prometheus) => {
            let pods: Vec<PodQuery> = scrapes
                .iter()
                .map(|s| {
                    let pod = &s.pod.pod;
                    let container = workloads::metrics_container(pod, &spec.endpoint.port);
                    PodQuery::new(
                        &pod.name_any(),
                        pod.status.as_ref().and_then(|st| st.start_time.as_ref()).map(|t| t.0),
                        workloads::container_started(pod, container),
                    )
                })
                .collect();
            let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
            let promql = query::query(&spec.extractor, labels, namespace, &names, prometheus.lookback);
            let read = prometheus.query(&promql, spec.timeout).await.and_then(|body| {
                query::answers(
                    &body,
                    &spec.extractor,
                    labels,
                    namespace,
                    &pods,
                    now,
                    prometheus.lookback,
                )
                .map_err(|e| e.to_string())
            });
            match read {
                Ok(results) => results,
                Err(e) => {
                    tracing::debug!(binding = binding.name, namespace, error = %e, "Prometheus query failed");
                    let error = ScrapeError::Prometheus(format!("querying Prometheus failed: {e}"));
                    query::all_failed(scrapes.len(), || error.clone())
                }
            }
        }
    };
    for result in &results {
        scrapes::count(metrics, result);
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> PrometheusConfig {
        PrometheusConfig {
            url: url.into(),
            bearer_token_file: None,
            ca: None,
            lookback: DEFAULT_LOOKBACK,
        }
    }

    #[test]
    fn the_query_url_is_the_api_under_the_base_url() {
        for (base, want) in [
            ("http://prometheus:9090", "http://prometheus:9090/api/v1/query"),
            ("http://prometheus:9090/", "http://prometheus:9090/api/v1/query"),
            (
                "https://mimir.example/prometheus",
                "https://mimir.example/prometheus/api/v1/query",
            ),
        ] {
            let prometheus = Prometheus::new(&config(base), 1024).unwrap();
            assert_eq!(prometheus.query_url().to_string(), want);
        }
        for (base, want) in [
            ("prometheus:9090", "not an http:// or https:// URL with a host"),
            ("ftp://prometheus", "not an http:// or https:// URL with a host"),
            ("http://p:9090/?x=1", "takes no query"),
            ("http://a b", "--prometheus-url \"http://a b\""),
        ] {
            let e = Prometheus::new(&config(base), 1024).unwrap_err();
            assert!(e.contains(want), "{base}: {e}");
        }
    }
}
