//! `--admin-listen`: `/metrics`, `/healthz` and `/readyz` on their own port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::accept::Acceptor;
use crate::serve::Upstreams;

/// Buckets of the response-head latency histogram, in seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the Prometheus recorder: from here on, what the proxies record
/// is kept. Call before building them.
pub(crate) fn install_recorder() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| format!("cannot set up metrics: {e}"))
}

/// What the admin endpoints report on.
pub(crate) struct Admin {
    pub(crate) metrics: PrometheusHandle,
    pub(crate) upstreams: Vec<Upstreams>,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) max_connections: usize,
    pub(crate) connect_timeout: Duration,
}

/// Serves the admin endpoints on `listener` until the process ends.
pub(crate) fn serve(listener: TcpListener, admin: Admin) {
    let admin = Arc::new(admin);
    // It used to end for good at the first accept error: back off instead.
    let mut listener = Acceptor::new(listener, "admin");
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await;
            let admin = admin.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.answer(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

impl Admin {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => match self.ready().await {
                true => text(StatusCode::OK, "ready\n"),
                false => text(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n"),
            },
            "/metrics" => {
                let open = self.max_connections - self.connections.available_permits();
                metrics::gauge!("proxy_client_connections_open").set(open as f64);
                self.metrics.run_upkeep();
                let mut res = text(StatusCode::OK, self.metrics.render());
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                res
            }
            _ => text(StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n"),
        }
    }

    /// At least one upstream is healthy: a balanced one not ejected, or the
    /// single upstream taking a TCP connection now.
    async fn ready(&self) -> bool {
        for u in &self.upstreams {
            match u {
                Upstreams::Many(p) if p.is_ready() => return true,
                Upstreams::Many(_) => {}
                Upstreams::One(p) => {
                    return crate::serve::tcp_reachable(p.upstream(), self.connect_timeout)
                        .await
                        .is_ok();
                }
            }
        }
        false
    }
}

/// Binds the admin listener: a port of its own, never shared with proxied
/// traffic (no `SO_REUSEPORT`).
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on --admin-listen {addr}: {e}"))
}
