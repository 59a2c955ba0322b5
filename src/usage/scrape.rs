//! Scraping one pod's metrics endpoint: one shared HTTP client (keep-alive if asked), the slots that
//! cap the scrapes in flight, shared between namespaces ([`Slots`]), a deadline on the whole
//! scrape from the moment it is asked for (so an endpoint that accepts and never answers, or
//! trickles a byte a second, fails at its timeout, and so does a scrape that waited that long
//! for a slot), and a cap on the body size.
//!
//! The body is never held: [`Scraper::scrape`] hands each piece to the parser as it arrives
//! ([`Extractor::extraction`]), which keeps at most the start of one unfinished line
//! ([`MAX_LINE_BYTES`](super::MAX_LINE_BYTES), 64 KiB). What all scrapes together buffer is
//! therefore bounded by the configuration, the slots times that line plus hyper's read
//! buffer (16 KiB), and not by what the pods serve: a 15 MB body costs time, not memory.
//!
//! https targets go through the same deadline, caps and request code, over a shared keep-alive
//! client per TLS setting (rustls with the `ring` provider, the one kube uses): the pod's
//! certificate is verified against the CA the operator was given ([`ScrapeCa`]), for the pod's
//! IP address or the binding's `serverName`, unless the binding says `insecureSkipVerify`.

use std::{
    collections::HashMap,
    future::Future,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper::{
    Request, StatusCode, Uri,
    body::{Body, Bytes},
    header,
};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Builder, Client, ResponseFuture, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use tower_service::Service;

use super::{
    parse::{Extractor, ParseError, Usage},
    slots::Slots,
};
use crate::api::{MetricsEndpoint, Scheme, TlsConfig};

/// The default cap on a metrics body: above it the scrape fails, the operator stays up.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The default cap on scrapes in flight at once, over all pods.
pub const DEFAULT_MAX_CONCURRENT: usize = 64;

/// The default cap on one namespace's scrapes in flight: a quarter of all the slots (at least
/// one), so that up to three namespaces whose pods hang leave the others a quarter.
pub fn default_share(max_concurrent: usize) -> usize {
    (max_concurrent / 4).max(1)
}

/// Where a pod's service account finds the cluster CA; the operator's default scrape CA when
/// it runs in a cluster.
pub const SERVICE_ACCOUNT_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// Distinct TLS settings (`insecureSkipVerify`, `serverName`) that keep a client of their own;
/// past this many, the clients (and their idle connections) are dropped and built anew.
const MAX_TLS_CLIENTS: usize = 256;

/// Why one scrape failed. Each is reported on the binding (ScrapeHealthy) and in an Event
/// naming the pod; none of them touches the usage already counted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScrapeError {
    #[error("invalid target {0}")]
    Target(String),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("TLS failed: {0}")]
    Tls(String),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("no scrape slot free within {0:?}: too many scrapes in flight in the namespace, or over all")]
    NoSlot(Duration),
    #[error("HTTP status {0}")]
    Status(StatusCode),
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the body failed: {0}")]
    Body(String),
    #[error("unparsable metrics: {0}")]
    Parse(#[from] ParseError),
    /// Through the Prometheus source: the query failed, or its answer for the pod is unusable.
    #[error("{0}")]
    Prometheus(String),
    /// Through the Prometheus source: no recent sample of the pod, or its last scrape failed.
    #[error("{0}")]
    Stale(String),
    /// The binding reads from Prometheus, and the operator has none to ask.
    #[error(
        "the operator has no Prometheus to query: it runs without --prometheus-url (ask the platform team, or use spec.metrics.source Scrape)"
    )]
    NoPrometheus,
}

impl ScrapeError {
    /// A short, stable label for metrics and condition reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            ScrapeError::Target(_) => "target",
            ScrapeError::Connect(_) => "connect",
            ScrapeError::Tls(_) => "tls",
            ScrapeError::Timeout(_) => "timeout",
            ScrapeError::NoSlot(_) => "no_slot",
            ScrapeError::Status(_) => "status",
            ScrapeError::TooLarge { .. } => "too_large",
            ScrapeError::Body(_) => "body",
            ScrapeError::Parse(_) => "parse",
            ScrapeError::Prometheus(_) => "prometheus",
            ScrapeError::Stale(_) => "stale",
            ScrapeError::NoPrometheus => "no_prometheus",
        }
    }
}

/// Where and how to scrape one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `http://IP:PORT/path` or `https://IP:PORT/path`.
    pub url: String,
    /// The pod's namespace: scrapes share the slots fairly between namespaces.
    pub namespace: String,
    /// The deadline for the whole scrape, from the moment it is asked for: the wait for a
    /// slot, connect, TLS handshake, headers and body.
    pub timeout: Duration,
    /// How the pod's certificate is checked: `Some` exactly for https.
    pub tls: Option<TlsConfig>,
}

impl Target {
    /// The URL of a pod's endpoint; IPv6 addresses are bracketed.
    pub fn http(ip: &str, port: u16, path: &str, timeout: Duration) -> Self {
        Self {
            url: format!("http://{}:{port}{path}", bracketed(ip)),
            namespace: String::new(),
            timeout,
            tls: None,
        }
    }

    /// The https URL of a pod's endpoint, checked as `tls` says.
    pub fn https(ip: &str, port: u16, path: &str, timeout: Duration, tls: TlsConfig) -> Self {
        Self {
            url: format!("https://{}:{port}{path}", bracketed(ip)),
            namespace: String::new(),
            timeout,
            tls: Some(tls),
        }
    }

    /// The target for a pod in `namespace` at `ip:port`, of a binding with `spec.metrics` =
    /// `endpoint`.
    pub fn for_endpoint(endpoint: &MetricsEndpoint, namespace: &str, ip: &str, port: u16, timeout: Duration) -> Self {
        let target = match endpoint.scheme {
            Scheme::Http => Self::http(ip, port, &endpoint.path, timeout),
            Scheme::Https => Self::https(
                ip,
                port,
                &endpoint.path,
                timeout,
                endpoint.tls.clone().unwrap_or_default(),
            ),
        };
        target.in_namespace(namespace)
    }

    /// The same target, for a pod in `namespace`.
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_string();
        self
    }
}

fn bracketed(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// Why the CA for https scrapes could not be loaded. Each names the certificates as
/// [`ScrapeCa`]'s `source` does ("--scrape-ca-file FILE").
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{ca}: {error}")]
    Read {
        ca: String,
        #[source]
        error: std::io::Error,
    },
    #[error("{ca}: not a PEM certificate bundle: {error}")]
    NotPem {
        ca: String,
        #[source]
        error: rustls::pki_types::pem::Error,
    },
    #[error("{ca}: no certificate in it")]
    Empty { ca: String },
    #[error("{ca}: certificate {number} is not a usable CA: {error}")]
    Unusable {
        ca: String,
        /// Counting from 1.
        number: usize,
        #[source]
        error: rustls::Error,
    },
}

/// The CA certificates that pods' certificates are verified against, and where they came from
/// (for error messages).
#[derive(Clone, Debug)]
pub struct ScrapeCa {
    roots: Arc<RootCertStore>,
    source: String,
}

impl ScrapeCa {
    /// Every certificate of a PEM bundle. `source` names it in messages ("the CA in FILE").
    pub fn from_pem(pem: &[u8], source: impl Into<String>) -> Result<Self, CaError> {
        let source = source.into();
        match CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>() {
            Ok(certs) => Self::from_certs(certs, source),
            Err(error) => Err(CaError::NotPem { ca: source, error }),
        }
    }

    /// DER certificates, as kube's `Config::root_cert` holds them.
    pub fn from_der(certs: &[Vec<u8>], source: impl Into<String>) -> Result<Self, CaError> {
        Self::from_certs(
            certs.iter().map(|der| CertificateDer::from(der.clone())).collect(),
            source.into(),
        )
    }

    fn from_certs(certs: Vec<CertificateDer<'static>>, source: String) -> Result<Self, CaError> {
        if certs.is_empty() {
            return Err(CaError::Empty { ca: source });
        }
        let mut roots = RootCertStore::empty();
        for (i, cert) in certs.into_iter().enumerate() {
            if let Err(error) = roots.add(cert) {
                return Err(CaError::Unusable {
                    ca: source,
                    number: i + 1,
                    error,
                });
            }
        }
        Ok(Self {
            roots: Arc::new(roots),
            source,
        })
    }

    /// Where the certificates came from, as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The operator's scrape CA: the file of `--scrape-ca-file` when given; else, in a cluster,
    /// the service account's CA (`service_account`) when that file exists; else the CA of the
    /// kubeconfig's cluster, if it has one; else none (verified https scrapes then fail).
    pub fn discover(
        flag: Option<&Path>,
        service_account: &Path,
        kubeconfig: Option<&[Vec<u8>]>,
    ) -> Result<Option<Self>, CaError> {
        let read = |path: &Path, source: String| match std::fs::read(path) {
            Ok(pem) => Self::from_pem(&pem, source),
            Err(error) => Err(CaError::Read { ca: source, error }),
        };
        if let Some(path) = flag {
            return read(path, format!("--scrape-ca-file {}", path.display())).map(Some);
        }
        if service_account.exists() {
            return read(
                service_account,
                format!("the service account CA {}", service_account.display()),
            )
            .map(Some);
        }
        match kubeconfig {
            Some(certs) if !certs.is_empty() => Self::from_der(certs, "the kubeconfig's cluster CA").map(Some),
            _ => Ok(None),
        }
    }
}

/// The shared scraper. Cheap to clone.
#[derive(Clone)]
pub struct Scraper {
    http: Client<HttpConnector, Full<Bytes>>,
    https: Arc<HttpsClients>,
    slots: Slots,
    max_body_bytes: usize,
    keep_alive: Duration,
}

impl Default for Scraper {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_BODY_BYTES)
    }
}

impl Scraper {
    /// A scraper without a CA: https targets can be scraped only with `insecureSkipVerify`
    /// until [`Scraper::with_ca`] gives it one. At most `max_concurrent` scrapes are in flight,
    /// at most [`default_share`] of them for one namespace until [`Scraper::with_share`] says
    /// otherwise.
    pub fn new(max_concurrent: usize, max_body_bytes: usize) -> Self {
        Self {
            http: client_builder(DEFAULT_KEEP_ALIVE).build(tcp_connector()),
            https: Arc::new(HttpsClients::new(None, DEFAULT_KEEP_ALIVE)),
            slots: Slots::new(max_concurrent, default_share(max_concurrent)),
            max_body_bytes,
            keep_alive: DEFAULT_KEEP_ALIVE,
        }
    }

    /// Keeps a connection to a pod open for its next scrape while it has been idle for less
    /// than `idle`; zero: a connection per scrape. Each connection kept holds about 30 KiB
    /// (its buffers), so 10,000 pods kept alive hold about 300 MiB; a new connection per
    /// scrape costs about twice the CPU of a scrape on a kept one.
    pub fn with_keep_alive(mut self, idle: Duration) -> Self {
        self.keep_alive = idle;
        self.http = client_builder(idle).build(tcp_connector());
        self.https = Arc::new(HttpsClients::new(self.https.ca.clone(), idle));
        self
    }

    /// At most `share` scrapes of one namespace in flight at once.
    pub fn with_share(mut self, share: usize) -> Self {
        self.slots = Slots::new(self.slots.total(), share);
        self
    }

    /// The slots, to see how many are held.
    pub fn slots(&self) -> &Slots {
        &self.slots
    }

    /// Verifies pods' certificates against `ca` (none: every verified https scrape fails).
    pub fn with_ca(mut self, ca: Option<ScrapeCa>) -> Self {
        self.https = Arc::new(HttpsClients::new(ca, self.keep_alive));
        self
    }

    /// Scrapes `target` and extracts its token usage, within its deadline and the size cap.
    /// The body is parsed as it arrives, never held.
    pub async fn scrape(&self, target: &Target, extractor: &Extractor) -> Result<Usage, ScrapeError> {
        let mut extraction = extractor.extraction();
        self.read(target, |piece| Ok(extraction.feed(piece)?)).await?;
        Ok(extraction.finish()?)
    }

    /// Fetches the whole body of `target`, within its deadline and the size cap, for tools
    /// and tests: it holds the body, up to the cap. The operator's cycles use
    /// [`Scraper::scrape`].
    pub async fn fetch(&self, target: &Target) -> Result<Bytes, ScrapeError> {
        let mut body = Vec::new();
        self.read(target, |piece| {
            body.extend_from_slice(piece);
            Ok(())
        })
        .await?;
        Ok(Bytes::from(body))
    }

    /// Reads the body of `target` piece by piece into `sink`. The deadline starts now: the
    /// wait for a slot counts, so a scrape never waits longer than its timeout, whatever
    /// holds the slots.
    async fn read(
        &self,
        target: &Target,
        sink: impl FnMut(&[u8]) -> Result<(), ScrapeError>,
    ) -> Result<(), ScrapeError> {
        let deadline = tokio::time::Instant::now() + target.timeout;
        let uri: Uri = target
            .url
            .parse()
            .map_err(|e| ScrapeError::Target(format!("{}: {e}", target.url)))?;
        let https = match &target.tls {
            Some(tls) => Some(self.https.client(tls)?),
            None => None,
        };
        let _slot = tokio::time::timeout_at(deadline, self.slots.acquire(&target.namespace))
            .await
            .ok()
            // A slot freed just as the deadline passed is too late all the same.
            .filter(|_| tokio::time::Instant::now() < deadline)
            .ok_or(ScrapeError::NoSlot(target.timeout))?;
        // Connecting, the TLS handshake, the request, headers and the whole body.
        tokio::time::timeout_at(deadline, self.exchange(uri, https.as_ref(), sink))
            .await
            .map_err(|_| ScrapeError::Timeout(target.timeout))?
    }

    async fn exchange(
        &self,
        uri: Uri,
        https: Option<&HttpsClient>,
        sink: impl FnMut(&[u8]) -> Result<(), ScrapeError>,
    ) -> Result<(), ScrapeError> {
        let request = Request::get(uri)
            .header(
                header::ACCEPT,
                "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=1",
            )
            .header(
                header::USER_AGENT,
                concat!("tokenbudget-operator/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::default())
            .map_err(|e| ScrapeError::Target(e.to_string()))?;
        let response = send(&self.http, https, self.https.ca.as_ref(), request).await?;
        read_body(response, self.max_body_bytes, sink).await
    }
}

/// Sends `request` over `https` when it is given, else over `http`; a failure says whether
/// connecting or the TLS handshake (verified against `ca`) failed.
async fn send(
    http: &Client<HttpConnector, Full<Bytes>>,
    https: Option<&HttpsClient>,
    ca: Option<&ScrapeCa>,
    request: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, ScrapeError> {
    let response: ResponseFuture = match https {
        Some(client) => client.request(request),
        None => http.request(request),
    };
    response.await.map_err(|e| match https {
        Some(_) => https_error(&e, ca),
        None => ScrapeError::Connect(error_chain(&e)),
    })
}

/// Reads a successful response's body piece by piece into `sink`, failing past `limit` bytes.
async fn read_body(
    response: hyper::Response<hyper::body::Incoming>,
    limit: usize,
    mut sink: impl FnMut(&[u8]) -> Result<(), ScrapeError>,
) -> Result<(), ScrapeError> {
    if !response.status().is_success() {
        return Err(ScrapeError::Status(response.status()));
    }
    let mut body = response.into_body();
    if body.size_hint().lower() > limit as u64 {
        return Err(ScrapeError::TooLarge { limit });
    }
    // Each piece is as large as hyper's read buffer at most (`client_builder`).
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ScrapeError::Body(error_chain(&e)))?;
        if let Ok(data) = frame.into_data() {
            read += data.len();
            if read > limit {
                return Err(ScrapeError::TooLarge { limit });
            }
            sink(&data)?;
        }
    }
    Ok(())
}

/// A client for one server the operator calls itself rather than a pod (the Prometheus of
/// `--prometheus-url`): the scrapes' connection settings, TLS code and body cap, its own
/// pool, and none of the scrape slots. https is verified against the CA it is given, for the
/// host of the URL. Cheap to clone.
#[derive(Clone)]
pub struct ServerClient {
    http: Client<HttpConnector, Full<Bytes>>,
    https: Arc<HttpsClients>,
    max_body_bytes: usize,
}

impl ServerClient {
    /// `ca`: what the server's certificate is verified against (none: https fails, saying
    /// `no_ca`, which names the flag that gives one).
    pub fn new(ca: Option<ScrapeCa>, no_ca: &'static str, max_body_bytes: usize) -> Self {
        let mut https = HttpsClients::new(ca, SERVER_KEEP_ALIVE);
        https.no_ca = no_ca;
        Self {
            http: client_builder(SERVER_KEEP_ALIVE).build(tcp_connector()),
            https: Arc::new(https),
            max_body_bytes,
        }
    }

    /// Sends `request` and reads the whole body of a successful answer, within `timeout` (from
    /// now: connecting, TLS, headers and body) and the size cap.
    pub async fn send(&self, request: Request<Full<Bytes>>, timeout: Duration) -> Result<Bytes, ScrapeError> {
        let https = match request.uri().scheme_str() {
            Some("https") => Some(self.https.client(&TlsConfig::default())?),
            Some("http") => None,
            _ => {
                return Err(ScrapeError::Target(format!(
                    "{}: not an http or https URL",
                    request.uri()
                )));
            }
        };
        let exchange = async {
            let response = send(&self.http, https.as_ref(), self.https.ca.as_ref(), request).await?;
            let mut body = Vec::new();
            read_body(response, self.max_body_bytes, |piece| {
                body.extend_from_slice(piece);
                Ok(())
            })
            .await?;
            Ok(Bytes::from(body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ScrapeError::Timeout(timeout))?
    }
}

/// How long an idle connection to a pod is kept for its next scrape, by default: not at all.
/// A kept connection holds about 30 KiB (hyper's buffers), 300 MiB for 10,000 pods, for a
/// scrape that costs about half the CPU (benches/scale.rs: docs/benchmarks.md).
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::ZERO;

/// How long an idle connection to a server the operator calls (its Prometheus) is kept: one
/// server, a few connections, reused at every cycle.
const SERVER_KEEP_ALIVE: Duration = Duration::from_secs(90);

/// The pool settings of every client, http or https: idle connections kept for `keep_alive`
/// (none when it is zero).
fn client_builder(keep_alive: Duration) -> Builder {
    // Each kept-alive connection keeps its read buffer, which hyper doubles whenever a read
    // fills it: 1,000 idle connections grew to ~100 MiB (benches/scrape_cycle.rs). 16 KiB
    // keeps them at ~45 MiB for a few percent more CPU per cycle; headers of a metrics
    // endpoint fit in it easily.
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(keep_alive)
        .pool_max_idle_per_host(if keep_alive.is_zero() { 0 } else { 2 })
        .http1_max_buf_size(16 * 1024);
    builder
}

fn tcp_connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector
}

type HttpsClient = Client<HttpsConnector<Tcp>, Full<Bytes>>;

/// The https clients, one per TLS setting. A kept-alive connection is verified once, at its
/// handshake, so a connection opened under one setting (say `insecureSkipVerify`) must never
/// serve a target with another: each setting has its own client and pool, as each scrape
/// config has its own client in Prometheus. Bindings without `tls` share one.
struct HttpsClients {
    provider: Arc<CryptoProvider>,
    ca: Option<ScrapeCa>,
    /// What a verified connection without a CA fails with.
    no_ca: &'static str,
    by_setting: Mutex<HashMap<TlsConfig, HttpsClient>>,
    keep_alive: Duration,
}

impl HttpsClients {
    fn new(ca: Option<ScrapeCa>, keep_alive: Duration) -> Self {
        Self {
            keep_alive,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            ca,
            no_ca: "cannot verify the pod's certificate: the operator has no CA to verify it with \
                    (give it --scrape-ca-file, or set spec.metrics.tls.insecureSkipVerify)",
            by_setting: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, tls: &TlsConfig) -> Result<HttpsClient, ScrapeError> {
        let mut clients = self.by_setting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(tls) {
            return Ok(client.clone());
        }
        let client = self.build(tls)?;
        if clients.len() >= MAX_TLS_CLIENTS {
            clients.clear();
        }
        clients.insert(tls.clone(), client.clone());
        Ok(client)
    }

    fn build(&self, tls: &TlsConfig) -> Result<HttpsClient, ScrapeError> {
        let versions = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ScrapeError::Tls(e.to_string()))?;
        let config = if tls.insecure_skip_verify {
            versions
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(self.provider.clone())))
                .with_no_client_auth()
        } else {
            let Some(ca) = &self.ca else {
                return Err(ScrapeError::Tls(self.no_ca.to_string()));
            };
            versions.with_root_certificates(ca.roots.clone()).with_no_client_auth()
        };
        let builder = HttpsConnectorBuilder::new().with_tls_config(config).https_only();
        // By default the name to verify is the host of the URL: the pod's IP address.
        let builder = match &tls.server_name {
            Some(name) => {
                let name = ServerName::try_from(name.clone()).map_err(|e| {
                    ScrapeError::Target(format!(
                        "serverName {name:?} is neither a DNS name nor an IP address: {e}"
                    ))
                })?;
                builder.with_server_name_resolver(FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        let mut tcp = tcp_connector();
        tcp.enforce_http(false);
        let connector = builder.enable_http1().wrap_connector(Tcp(tcp));
        Ok(client_builder(self.keep_alive).build(connector))
    }
}

/// The TCP half of an https connection. Its errors are marked, so that everything else that
/// fails while connecting is known to be the TLS handshake.
#[derive(Clone)]
struct Tcp(HttpConnector);

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct TcpError(Box<dyn std::error::Error + Send + Sync>);

impl Service<Uri> for Tcp {
    type Response = <HttpConnector as Service<Uri>>::Response;
    type Error = TcpError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, TcpError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TcpError>> {
        self.0.poll_ready(cx).map_err(|e| TcpError(e.into()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { connecting.await.map_err(|e| TcpError(e.into())) })
    }
}

/// The ScrapeError of a failed https request: the TCP connect, the TLS handshake, or the
/// exchange after it.
fn https_error(e: &hyper_util::client::legacy::Error, ca: Option<&ScrapeCa>) -> ScrapeError {
    if !e.is_connect() || causes(e).any(|c| c.is::<TcpError>()) {
        return ScrapeError::Connect(error_chain(e));
    }
    if let Some(tls) = causes(e).find_map(|c| c.downcast_ref::<rustls::Error>()) {
        use rustls::{CertificateError, Error};
        let hint = match tls {
            Error::InvalidCertificate(CertificateError::UnknownIssuer) => match ca {
                Some(ca) => format!(" (not signed by the CA the operator trusts: {})", ca.source()),
                None => String::new(),
            },
            Error::InvalidCertificate(CertificateError::NotValidForName)
            | Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
                " (spec.metrics.tls.serverName sets the name to verify)".to_string()
            }
            Error::InvalidMessage(_) => " (is the endpoint serving plain http?)".to_string(),
            _ => String::new(),
        };
        return ScrapeError::Tls(format!("{tls}{hint}"));
    }
    // No TLS error: the peer closed or reset the connection during the handshake. Its
    // innermost cause says which ("tls handshake eof", "connection reset by peer").
    let cause = causes(e).last().map_or_else(|| e.to_string(), |c| c.to_string());
    ScrapeError::Tls(format!(
        "the handshake did not complete: {cause} (is the endpoint serving https?)"
    ))
}

/// An error and its causes, looking inside `io::Error`s, whose `source()` skips the error
/// they wrap (where tokio-rustls keeps the rustls error).
fn causes<'a>(e: &'a (dyn std::error::Error + 'static)) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| match e.downcast_ref::<std::io::Error>() {
        Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
        None => e.source(),
    })
}

/// `insecureSkipVerify`: any certificate is accepted, but the handshake signatures are still
/// checked, so the connection is at least encrypted to whoever holds the key.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An error with its sources, which is where hyper keeps the useful part ("connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MetricsFormat, TokenType};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    /// A one-connection-at-a-time HTTP server on loopback that answers every request with
    /// what `respond` writes. Returns its address.
    async fn serve<F, Fut>(respond: F) -> std::net::SocketAddr
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let respond = Arc::new(respond);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let respond = respond.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = stream.read(&mut request).await;
                    respond(stream).await;
                });
            }
        });
        address
    }

    fn target(address: std::net::SocketAddr, timeout_ms: u64) -> Target {
        Target::http(
            &address.ip().to_string(),
            address.port(),
            "/metrics",
            Duration::from_millis(timeout_ms),
        )
    }

    fn otel() -> Extractor {
        Extractor::new(MetricsFormat::OpenTelemetry, &[])
    }

    async fn respond_with(mut stream: impl tokio::io::AsyncWrite + Unpin, body: &str) {
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body.as_bytes()).await;
    }

    /// Answers 200 with a chunked body of 100 MiB (no length announced), stopping when the
    /// client hangs up.
    async fn chunked_100_mib<S: tokio::io::AsyncWrite + Unpin>(stream: &mut S) {
        use tokio::io::AsyncWriteExt;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        let chunk = [b'#'; 65536];
        for _ in 0..1600 {
            let head = format!("{:x}\r\n", chunk.len());
            if stream.write_all(head.as_bytes()).await.is_err()
                || stream.write_all(&chunk).await.is_err()
                || stream.write_all(b"\r\n").await.is_err()
            {
                return;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n").await;
    }
    #[tokio::test]
    async fn scrapes_a_real_exposition() {
        let address = serve(|s| {
            respond_with(
                s,
                "# TYPE gen_ai_client_token_usage histogram\n\
             gen_ai_client_token_usage_sum{gen_ai_token_type=\"input\",gen_ai_request_model=\"m\"} 120\n\
             gen_ai_client_token_usage_sum{gen_ai_token_type=\"output\",gen_ai_request_model=\"m\"} 30\n",
            )
        })
        .await;
        let usage = Scraper::default()
            .scrape(&target(address, 2000), &otel())
            .await
            .unwrap();
        assert_eq!(usage.get("m", TokenType::Input), Some(120));
        assert_eq!(usage.get("m", TokenType::Output), Some(30));
    }

    #[tokio::test]
    async fn an_endpoint_that_never_answers_times_out() {
        let address = serve(|stream| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(stream);
        })
        .await;
        let err = Scraper::default().fetch(&target(address, 300)).await.unwrap_err();
        assert!(matches!(err, ScrapeError::Timeout(_)), "{err}");
    }

    #[tokio::test]
    async fn a_trickling_endpoint_times_out_on_the_whole_exchange() {
        let address = serve(|mut stream| async move {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                .await;
            for _ in 0..1000 {
                if stream.write_all(b"#").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let err = Scraper::default().fetch(&target(address, 400)).await.unwrap_err();
        assert!(matches!(err, ScrapeError::Timeout(_)), "{err}");
    }

    #[tokio::test]
    async fn bodies_over_the_cap_fail_whether_announced_or_not() {
        let announced = serve(|mut stream| async move {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 104857600\r\n\r\n")
                .await;
            let _ = stream.write_all(&[b'#'; 64 * 1024]).await;
        })
        .await;
        let scraper = Scraper::new(4, 1024 * 1024);
        let err = scraper.fetch(&target(announced, 2000)).await.unwrap_err();
        assert!(matches!(err, ScrapeError::TooLarge { limit: 1048576 }), "{err}");

        // Chunked, no length: the cap applies while reading, without buffering 100 MiB.
        let chunked = serve(|mut stream| async move {
            chunked_100_mib(&mut stream).await;
        })
        .await;
        let err = scraper.fetch(&target(chunked, 5000)).await.unwrap_err();
        assert!(matches!(err, ScrapeError::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn garbage_and_errors_are_reported_not_counted() {
        let garbage = serve(|s| respond_with(s, "\u{1}\u{2}garbage{{{\n")).await;
        let err = Scraper::default()
            .scrape(&target(garbage, 2000), &otel())
            .await
            .unwrap_err();
        assert!(matches!(err, ScrapeError::Parse(_)), "{err}");

        let status = serve(|mut stream| async move {
            let _ = stream
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await;
        })
        .await;
        let err = Scraper::default().fetch(&target(status, 2000)).await.unwrap_err();
        assert_eq!(err.kind(), "status");

        // Nothing listens on this port.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let err = Scraper::default().fetch(&target(closed, 2000)).await.unwrap_err();
        assert!(matches!(err, ScrapeError::Connect(_)), "{err}");
        assert!(err.to_string().contains("refused"), "{err}");
    }

    #[tokio::test]
    async fn concurrency_is_capped() {
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (i, p) = (in_flight.clone(), peak.clone());
        let address = serve(move |stream| {
            let (i, p) = (i.clone(), p.clone());
            async move {
                let now = i.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                p.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                i.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                respond_with(stream, "").await;
            }
        })
        .await;
        let scraper = Scraper::new(3, 1024);
        let scrapes = (0..12).map(|_| {
            let scraper = scraper.clone();
            async move { scraper.fetch(&target(address, 5000)).await }
        });
        for result in futures::future::join_all(scrapes).await {
            result.unwrap();
        }
        assert!(
            peak.load(std::sync::atomic::Ordering::SeqCst) <= 3,
            "more than 3 scrapes at once"
        );
    }

    #[tokio::test]
    async fn a_namespace_whose_pods_hang_cannot_hold_up_another_namespaces_scrapes() {
        let silent = serve(|stream| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(stream);
        })
        .await;
        let good = serve(|s| {
            respond_with(
                s,
                "gen_ai_client_inference_usage_input_tokens_total{gen_ai_request_model=\"m\"} 42\n",
            )
        })
        .await;
        // 8 slots, 2 for one namespace.
        let scraper = Scraper::new(8, 1024 * 1024);
        assert_eq!((scraper.slots().total(), scraper.slots().share()), (8, 2));
        let hostile: Vec<Target> = (0..8).map(|_| target(silent, 1500).in_namespace("hostile")).collect();
        let started = std::time::Instant::now();
        let hanging = futures::future::join_all(hostile.iter().map(|t| scraper.fetch(t)));
        let others = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(
                scraper.slots().held(),
                2,
                "the hostile namespace holds its share, no more"
            );
            // One more of its scrapes waits for the share, for its own timeout at most.
            let late = scraper.fetch(&target(silent, 100).in_namespace("hostile")).await;
            assert_eq!(
                late.unwrap_err().to_string(),
                "no scrape slot free within 100ms: too many scrapes in flight in the namespace, or over all"
            );
            // Each within its own timeout, which would pass waiting for a slot otherwise.
            let quiet = target(good, 500).in_namespace("quiet");
            let busy = target(good, 500).in_namespace("busy");
            let extractor = otel();
            futures::future::join_all((0..6).map(|i| scraper.scrape(if i < 3 { &quiet } else { &busy }, &extractor)))
                .await
        };
        let (hostile, others) = tokio::join!(hanging, others);
        for usage in others {
            assert_eq!(usage.unwrap().get("m", TokenType::Input), Some(42));
        }
        // The hostile namespace's own scrapes each ended at their deadline, counted from when
        // they were asked for, none in a second round: 2 hung in a slot, the others timed out
        // waiting (or got a slot in the very tick of their deadline, and timed out in it).
        let kinds: Vec<&str> = hostile.iter().map(|r| r.as_ref().unwrap_err().kind()).collect();
        assert!(kinds.iter().all(|k| ["timeout", "no_slot"].contains(k)), "{kinds:?}");
        assert!(
            started.elapsed() < Duration::from_millis(2900),
            "{:?}",
            started.elapsed()
        );
        assert_eq!((scraper.slots().held(), scraper.slots().namespaces()), (0, 0));
    }

    #[tokio::test]
    async fn a_fat_body_is_read_as_it_streams_and_its_error_is_short() {
        // One valid sample, then a counter whose value runs on for 15 MiB without a newline.
        let fat = serve(|mut stream| async move {
            let start = "gen_ai_client_inference_usage_output_tokens_total{gen_ai_request_model=\"m\"} 7\n\
                         gen_ai_client_inference_usage_input_tokens_total{gen_ai_request_model=\"m\"} 7";
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                start.len() + (15 << 20)
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(start.as_bytes()).await;
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..15 {
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        })
        .await;
        let err = Scraper::default()
            .scrape(&target(fat, 5000), &otel())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unparsable metrics: line 2: gen_ai_client_inference_usage_input_tokens_total: longer than 65536 bytes"
        );
        // A body of 15 MiB that is fine is read whole, piece by piece.
        let fine = serve(|mut stream| async move {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            let line = b"# padding padding padding padding padding padding padding padding padding pad\n";
            let chunk: Vec<u8> = line.iter().copied().cycle().take(line.len() * 13_000).collect();
            for _ in 0..15 {
                let head = format!("{:x}\r\n", chunk.len());
                if stream.write_all(head.as_bytes()).await.is_err()
                    || stream.write_all(&chunk).await.is_err()
                    || stream.write_all(b"\r\n").await.is_err()
                {
                    return;
                }
            }
            let last = b"gen_ai_client_inference_usage_input_tokens_total{gen_ai_request_model=\"m\"} 42\n";
            let _ = stream.write_all(format!("{:x}\r\n", last.len()).as_bytes()).await;
            let _ = stream.write_all(last).await;
            let _ = stream.write_all(b"\r\n0\r\n\r\n").await;
        })
        .await;
        let usage = Scraper::default().scrape(&target(fine, 5000), &otel()).await.unwrap();
        assert_eq!(usage.get("m", TokenType::Input), Some(42));
    }

    #[test]
    fn ipv6_targets_are_bracketed() {
        assert_eq!(
            Target::http("fd00::1", 9464, "/metrics", Duration::ZERO).url,
            "http://[fd00::1]:9464/metrics"
        );
        assert_eq!(
            Target::https("fd00::1", 9464, "/m", Duration::ZERO, TlsConfig::default()).url,
            "https://[fd00::1]:9464/m"
        );
    }

    #[test]
    fn targets_follow_the_binding_scheme() {
        let mut endpoint = MetricsEndpoint::default();
        let http = Target::for_endpoint(&endpoint, "agents", "10.0.0.7", 9464, Duration::from_secs(5));
        assert_eq!((http.url.as_str(), http.tls), ("http://10.0.0.7:9464/metrics", None));
        assert_eq!(http.namespace, "agents");
        endpoint.scheme = Scheme::Https;
        let https = Target::for_endpoint(&endpoint, "agents", "10.0.0.7", 9464, Duration::from_secs(5));
        assert_eq!(https.url, "https://10.0.0.7:9464/metrics");
        assert_eq!(https.tls, Some(TlsConfig::default()));
        endpoint.tls = Some(TlsConfig {
            insecure_skip_verify: false,
            server_name: Some("agent.agents.svc".into()),
        });
        let named = Target::for_endpoint(&endpoint, "agents", "10.0.0.7", 9464, Duration::from_secs(5));
        assert_eq!(named.tls, endpoint.tls);
    }

    mod tls {
        //! https against real loopback TLS servers, with certificates made for each test.

        use std::sync::atomic::{AtomicUsize, Ordering};

        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        use rustls::{
            ServerConfig,
            pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer},
        };
        use tokio_rustls::{TlsAcceptor, server::TlsStream};

        use super::*;

        const EXPOSITION: &str = "gen_ai_client_inference_usage_input_tokens_total{gen_ai_request_model=\"m\"} 42\n";

        /// A CA for one test, and certificates it signs.
        struct TestCa {
            pem: String,
            issuer: Issuer<'static, KeyPair>,
        }

        impl TestCa {
            fn new() -> Self {
                let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                // rcgen gives every certificate the same subject: a self-signed one would
                // name this CA as its issuer and fail with BadSignature, not UnknownIssuer.
                params
                    .distinguished_name
                    .push(DnType::CommonName, "tokenbudget test CA");
                let key = KeyPair::generate().unwrap();
                let pem = params.self_signed(&key).unwrap().pem();
                Self {
                    pem,
                    issuer: Issuer::new(params, key),
                }
            }

            fn scrape_ca(&self) -> ScrapeCa {
                ScrapeCa::from_pem(self.pem.as_bytes(), "the test CA").unwrap()
            }

            /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
            fn server(&self, names: &[&str]) -> Arc<ServerConfig> {
                let key = KeyPair::generate().unwrap();
                let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
                let cert = params.signed_by(&key, &self.issuer).unwrap();
                server_config(cert.der().clone(), key)
            }
        }

        /// A server certificate for `names` that signs itself.
        fn self_signed(names: &[&str]) -> Arc<ServerConfig> {
            let key = KeyPair::generate().unwrap();
            let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
            let cert = params.self_signed(&key).unwrap();
            server_config(cert.der().clone(), key)
        }

        fn server_config(cert: CertificateDer<'static>, key: KeyPair) -> Arc<ServerConfig> {
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .unwrap();
            Arc::new(config)
        }

        /// A TLS server on loopback: each connection is handed to `respond` after its handshake.
        /// Returns its address and a count of the TCP connections it accepted.
        async fn serve_tls<F, Fut>(config: Arc<ServerConfig>, respond: F) -> (std::net::SocketAddr, Arc<AtomicUsize>)
        where
            F: Fn(TlsStream<tokio::net::TcpStream>) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = ()> + Send,
        {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let connections = Arc::new(AtomicUsize::new(0));
            let (acceptor, respond, count) = (TlsAcceptor::from(config), Arc::new(respond), connections.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    let (acceptor, respond) = (acceptor.clone(), respond.clone());
                    tokio::spawn(async move {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            respond(stream).await;
                        }
                    });
                }
            });
            (address, connections)
        }

        /// Answers every request on the connection with `body`, keeping the connection open.
        async fn keep_answering(mut stream: TlsStream<tokio::net::TcpStream>, body: &'static str) {
            let mut request = [0u8; 4096];
            while matches!(stream.read(&mut request).await, Ok(n) if n > 0) {
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(body.as_bytes()).await.is_err()
                {
                    return;
                }
            }
        }

        fn https(address: std::net::SocketAddr, tls: TlsConfig) -> Target {
            Target::https(
                &address.ip().to_string(),
                address.port(),
                "/metrics",
                Duration::from_secs(5),
                tls,
            )
        }

        fn skip_verify() -> TlsConfig {
            TlsConfig {
                insecure_skip_verify: true,
                server_name: None,
            }
        }

        fn server_name(name: &str) -> TlsConfig {
            TlsConfig {
                insecure_skip_verify: false,
                server_name: Some(name.into()),
            }
        }

        #[tokio::test]
        async fn a_certificate_from_the_ca_for_the_pod_ip_scrapes_over_one_kept_alive_connection() {
            let ca = TestCa::new();
            let (address, connections) = serve_tls(ca.server(&["127.0.0.1"]), |s| keep_answering(s, EXPOSITION)).await;
            let scraper = Scraper::default()
                .with_keep_alive(Duration::from_secs(90))
                .with_ca(Some(ca.scrape_ca()));
            for _ in 0..3 {
                let usage = scraper
                    .scrape(&https(address, TlsConfig::default()), &otel())
                    .await
                    .unwrap();
                assert_eq!(usage.get("m", TokenType::Input), Some(42));
            }
            assert_eq!(
                connections.load(Ordering::SeqCst),
                1,
                "the connection was not kept alive"
            );
        }

        #[tokio::test]
        async fn without_keep_alive_each_scrape_has_a_connection_of_its_own() {
            let ca = TestCa::new();
            let (address, connections) = serve_tls(ca.server(&["127.0.0.1"]), |s| keep_answering(s, EXPOSITION)).await;
            // The default; the CA given before the keep-alive is kept: the order is free.
            assert_eq!(DEFAULT_KEEP_ALIVE, Duration::ZERO);
            let scraper = Scraper::default()
                .with_keep_alive(Duration::from_secs(90))
                .with_ca(Some(ca.scrape_ca()))
                .with_keep_alive(DEFAULT_KEEP_ALIVE);
            for _ in 0..3 {
                let usage = scraper
                    .scrape(&https(address, TlsConfig::default()), &otel())
                    .await
                    .unwrap();
                assert_eq!(usage.get("m", TokenType::Input), Some(42));
            }
            assert_eq!(connections.load(Ordering::SeqCst), 3);
        }

        #[tokio::test]
        async fn a_self_signed_certificate_fails_unless_verification_is_skipped() {
            let (address, _) = serve_tls(self_signed(&["127.0.0.1"]), |s| keep_answering(s, EXPOSITION)).await;
            let scraper = Scraper::default().with_ca(Some(TestCa::new().scrape_ca()));
            let err = scraper.fetch(&https(address, TlsConfig::default())).await.unwrap_err();
            assert_eq!(err.kind(), "tls", "{err}");
            assert_eq!(
                err.to_string(),
                "TLS failed: invalid peer certificate: UnknownIssuer (not signed by the CA the operator trusts: the test CA)"
            );
            let body = scraper.fetch(&https(address, skip_verify())).await.unwrap();
            assert_eq!(body, EXPOSITION.as_bytes());
        }

        #[tokio::test]
        async fn a_connection_opened_without_verification_never_serves_a_verified_target() {
            let (address, connections) =
                serve_tls(self_signed(&["127.0.0.1"]), |s| keep_answering(s, EXPOSITION)).await;
            let scraper = Scraper::default().with_ca(Some(TestCa::new().scrape_ca()));
            scraper.fetch(&https(address, skip_verify())).await.unwrap();
            // The same pod, through a binding that verifies: a new handshake, which fails.
            let err = scraper.fetch(&https(address, TlsConfig::default())).await.unwrap_err();
            assert_eq!(err.kind(), "tls", "{err}");
            assert_eq!(connections.load(Ordering::SeqCst), 2);
        }

        #[tokio::test]
        async fn a_wrong_name_fails_and_server_name_fixes_it() {
            let ca = TestCa::new();
            let (address, _) = serve_tls(ca.server(&["agent.agents.svc"]), |s| keep_answering(s, EXPOSITION)).await;
            let scraper = Scraper::default().with_ca(Some(ca.scrape_ca()));
            let err = scraper.fetch(&https(address, TlsConfig::default())).await.unwrap_err();
            assert_eq!(err.kind(), "tls", "{err}");
            assert!(
                err.to_string().contains(
                    "certificate not valid for name \"127.0.0.1\"; certificate is only valid for DnsName(\"agent.agents.svc\")"
                ),
                "{err}"
            );
            assert!(err.to_string().contains("serverName"), "{err}");

            let err = scraper
                .fetch(&https(address, server_name("other.agents.svc")))
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("not valid for name \"other.agents.svc\""),
                "{err}"
            );

            let body = scraper
                .fetch(&https(address, server_name("agent.agents.svc")))
                .await
                .unwrap();
            assert_eq!(body, EXPOSITION.as_bytes());
        }

        #[tokio::test]
        async fn without_a_ca_only_skip_verify_scrapes() {
            let (address, connections) =
                serve_tls(self_signed(&["127.0.0.1"]), |s| keep_answering(s, EXPOSITION)).await;
            let err = Scraper::default()
                .fetch(&https(address, TlsConfig::default()))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), "tls", "{err}");
            assert!(err.to_string().contains("no CA"), "{err}");
            assert!(err.to_string().contains("--scrape-ca-file"), "{err}");
            assert_eq!(
                connections.load(Ordering::SeqCst),
                0,
                "connected without a way to verify"
            );
            Scraper::default().fetch(&https(address, skip_verify())).await.unwrap();
        }

        #[tokio::test]
        async fn https_against_plain_http_fails_cleanly() {
            let ca = TestCa::new();
            let scraper = Scraper::default().with_ca(Some(ca.scrape_ca()));
            // A plain http server answers the ClientHello with an HTTP error page.
            let plain = serve(|mut stream| async move {
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            })
            .await;
            let err = scraper.fetch(&https(plain, TlsConfig::default())).await.unwrap_err();
            assert_eq!(err.kind(), "tls", "{err}");
            assert!(err.to_string().contains("serving plain http"), "{err}");

            // One that just hangs up.
            let closing = serve(|stream| async move { drop(stream) }).await;
            let err = scraper.fetch(&https(closing, skip_verify())).await.unwrap_err();
            assert_eq!(err.kind(), "tls", "{err}");
            assert!(err.to_string().contains("handshake did not complete"), "{err}");

            // Nothing listening is still a connect error, not a TLS one.
            let closed = {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                listener.local_addr().unwrap()
            };
            let err = scraper.fetch(&https(closed, TlsConfig::default())).await.unwrap_err();
            assert_eq!(err.kind(), "connect", "{err}");
            assert!(err.to_string().contains("refused"), "{err}");
        }

        #[tokio::test]
        async fn a_handshake_that_never_completes_hits_the_deadline() {
            // Accepts the TCP connection, reads the ClientHello and never answers it.
            let address = serve(|stream| async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(stream);
            })
            .await;
            let scraper = Scraper::default().with_ca(Some(TestCa::new().scrape_ca()));
            let mut target = https(address, TlsConfig::default());
            target.timeout = Duration::from_millis(300);
            let started = std::time::Instant::now();
            let err = scraper.fetch(&target).await.unwrap_err();
            assert!(matches!(err, ScrapeError::Timeout(_)), "{err}");
            assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        }

        #[tokio::test]
        async fn the_body_cap_holds_over_tls() {
            let ca = TestCa::new();
            let scraper = Scraper::new(4, 1024 * 1024).with_ca(Some(ca.scrape_ca()));
            let (announced, _) = serve_tls(ca.server(&["127.0.0.1"]), |mut stream| async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 104857600\r\n\r\n")
                    .await;
                let _ = stream.write_all(&[b'#'; 64 * 1024]).await;
            })
            .await;
            let err = scraper
                .fetch(&https(announced, TlsConfig::default()))
                .await
                .unwrap_err();
            assert!(matches!(err, ScrapeError::TooLarge { limit: 1048576 }), "{err}");

            let (chunked, _) = serve_tls(ca.server(&["127.0.0.1"]), |mut stream| async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                chunked_100_mib(&mut stream).await;
            })
            .await;
            let err = scraper.fetch(&https(chunked, TlsConfig::default())).await.unwrap_err();
            assert!(matches!(err, ScrapeError::TooLarge { .. }), "{err}");
        }

        #[test]
        fn the_scrape_ca_comes_from_the_flag_the_service_account_or_the_kubeconfig() {
            let dir = std::env::temp_dir().join(format!("tokenbudget-scrape-ca-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let (flag, service_account, missing, garbage) = (
                dir.join("flag.crt"),
                dir.join("sa.crt"),
                dir.join("missing.crt"),
                dir.join("garbage.crt"),
            );
            let (a, b, c) = (TestCa::new(), TestCa::new(), TestCa::new());
            std::fs::write(&flag, &a.pem).unwrap();
            std::fs::write(&service_account, format!("{}{}", b.pem, c.pem)).unwrap();
            std::fs::write(&garbage, "not a certificate").unwrap();
            let kubeconfig = vec![CertificateDer::from_pem_slice(c.pem.as_bytes()).unwrap().to_vec()];

            let found = ScrapeCa::discover(Some(&flag), &service_account, Some(&kubeconfig))
                .unwrap()
                .unwrap();
            assert_eq!(found.source(), format!("--scrape-ca-file {}", flag.display()));
            assert_eq!(found.roots.len(), 1);

            let found = ScrapeCa::discover(None, &service_account, Some(&kubeconfig))
                .unwrap()
                .unwrap();
            assert_eq!(
                found.source(),
                format!("the service account CA {}", service_account.display())
            );
            assert_eq!(found.roots.len(), 2);

            let found = ScrapeCa::discover(None, &missing, Some(&kubeconfig)).unwrap().unwrap();
            assert_eq!(found.source(), "the kubeconfig's cluster CA");
            assert!(ScrapeCa::discover(None, &missing, None).unwrap().is_none());
            assert!(ScrapeCa::discover(None, &missing, Some(&[])).unwrap().is_none());

            let err = ScrapeCa::discover(Some(&missing), &service_account, None)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("--scrape-ca-file {}: ", missing.display())),
                "{err}"
            );
            let err = ScrapeCa::discover(Some(&garbage), &service_account, None)
                .unwrap_err()
                .to_string();
            assert!(err.ends_with("no certificate in it"), "{err}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
