//! The operator's own HTTP endpoints: `/healthz`, `/readyz` and `/metrics`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Bytes, header::CONTENT_TYPE, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::{controller::leader::Leadership, metrics::Metrics};

/// What the endpoints report.
#[derive(Clone)]
pub struct Endpoints {
    pub metrics: Metrics,
    /// Set once the controllers' caches have synced.
    pub ready: Arc<AtomicBool>,
    /// Whether this replica leads, which `/readyz` says.
    pub leadership: Leadership,
}

impl Endpoints {
    fn respond(&self, path: &str) -> Response<Full<Bytes>> {
        let (status, content_type, body) = match path {
            "/healthz" | "/livez" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            // A standby is ready too: its caches are warm, and it takes over from there.
            "/readyz" if self.ready.load(Ordering::Relaxed) => (StatusCode::OK, "text/plain", self.role()),
            "/readyz" => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "caches not synced yet\n".to_string(),
            ),
            "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", self.metrics.render()),
            _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_string()),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));

        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, content_type.parse().expect("valid header"));
        response
    }
}

impl Endpoints {
    /// `/readyz`'s answer once ready: `ok`, and with leader election who leads.
    fn role(&self) -> String {
        let leadership = &self.leadership;
        if !leadership.is_elected() {
            return "ok\n".into();
        }
        if leadership.is_leading() {
            return format!("ok: leading as {}\n", leadership.identity());
        }
        match leadership.leader() {
            Some(leader) => format!("ok: standby as {}, the leader is {leader}\n", leadership.identity()),
            None => format!("ok: standby as {}, no leader seen yet\n", leadership.identity()),
        }
    }
}

/// Binds the listener (so that a bad address fails at start-up, not later).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the endpoints until `shutdown` resolves.
pub async fn serve(listener: TcpListener, endpoints: Endpoints, shutdown: impl Future<Output = ()>) {
    let endpoints = Arc::new(endpoints);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection to the metrics endpoint failed");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = endpoints.respond(req.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}
