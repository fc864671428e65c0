//! `--admin-listen`: `/metrics`, `/healthz`, `/readyz` and `POST /reload` on
//! their own port.
//!
//! The port answers monitoring, so nothing a client does on it may stop it
//! answering: accept errors (out of file descriptors) are waited out
//! ([`Acceptor`]); a connection must send its request head within the
//! header-read timeout (at most 5 s) and lives at most 30 s, keep-alive
//! included; and at most 64 are open at once. At that cap a new connection
//! makes every connection that has no request in flight close (those that
//! never sent one at once, the others as hyper closes an idle keep-alive
//! connection), and waits up to 1 s for a slot, else it is closed: silent
//! sockets cannot lock a health check out, and a monitor whose idle
//! keep-alive connection was closed opens another.
//!
//! Imports: `accept`, `generation` and `upstreams` (for `/readyz`). It
//! knows nothing of the proxied listeners or their connections, nor of how
//! a reload is done: `serve` hands it the connection semaphore, the
//! workers' generations and a channel to ask for a reload as values.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::accept::Acceptor;
use crate::generation::Generation;
use crate::upstreams::{Upstreams, tcp_reachable};

/// Where `POST /reload` sends the answer of a reload: a line saying which
/// generation is in use, or why the config was not reloaded.
pub(crate) type ReloadReply = tokio::sync::oneshot::Sender<Result<String, String>>;

/// Admin connections open at once, at most.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// At the cap, how long a new connection waits for a slot (while the
/// connections with no request in flight close) before it is closed.
const SLOT_WAIT: Duration = Duration::from_secs(1);
/// The longest header-read timeout of an admin connection (the proxy's
/// `--header-read-timeout` when shorter).
const MAX_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// An admin connection lives at most this long, keep-alive included; then it
/// finishes the request in flight and closes.
const LIFETIME: Duration = Duration::from_secs(30);
/// Time a request in flight gets to finish once its connection is to close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

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
    /// Each worker's current generation.
    pub(crate) generations: Vec<watch::Receiver<Arc<Generation>>>,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) max_connections: usize,
    pub(crate) connect_timeout: Duration,
    /// Asks the main thread for a reload.
    pub(crate) reload: tokio::sync::mpsc::Sender<ReloadReply>,
}

/// Serves the admin endpoints on `listener` until the process ends; a
/// request head must arrive within `header_read_timeout` (at most 5 s).
pub(crate) fn serve(listener: TcpListener, admin: Admin, header_read_timeout: Duration) {
    let admin = Arc::new(admin);
    let head_limit = match header_read_timeout {
        Duration::ZERO => MAX_HEADER_READ_TIMEOUT,
        d => d.min(MAX_HEADER_READ_TIMEOUT),
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Each new value asks the connections with no request in flight to close.
    let pressure = watch::Sender::new(());
    let mut listener = Acceptor::new(listener, "admin");
    tokio::spawn(async move {
        // Said once per stretch of time at the cap, not per connection.
        let mut at_cap = false;
        loop {
            let (tcp, _) = listener.accept().await;
            let permit = match slots.clone().try_acquire_owned() {
                Ok(p) => {
                    at_cap = false;
                    p
                }
                Err(_) => {
                    if !at_cap {
                        at_cap = true;
                        tracing::warn!(
                            limit = MAX_CONNECTIONS,
                            "admin connections at their limit; closing those with no request in flight"
                        );
                    }
                    pressure.send_replace(());
                    match tokio::time::timeout(SLOT_WAIT, slots.clone().acquire_owned()).await {
                        Ok(Ok(p)) => p,
                        // Every slot busy with a request: this one is closed.
                        _ => continue,
                    }
                }
            };
            let conn = connection(tcp, admin.clone(), permit, pressure.subscribe(), head_limit);
            tokio::spawn(conn);
        }
    });
}

/// Serves one admin connection, within its bounds.
async fn connection(
    tcp: TcpStream,
    admin: Arc<Admin>,
    _permit: OwnedSemaphorePermit,
    mut pressure: watch::Receiver<()>,
    header_read_timeout: Duration,
) {
    let requests = Arc::new(AtomicU64::new(0));
    let svc = {
        let requests = requests.clone();
        hyper::service::service_fn(move |req| {
            requests.fetch_add(1, Ordering::Relaxed);
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(admin.answer(req).await) }
        })
    };
    // hyper's header-read timer starts at the connection's first poll, so it
    // also closes a socket that sends nothing at all.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(tcp), svc);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = tokio::time::sleep(LIFETIME) => {}
        _ = pressure.changed() => {
            // Never made a request (silent, or its head still on the way):
            // nothing to finish. (hyper's graceful shutdown would close a
            // silent one too, but wait for a head that has begun.)
            if requests.load(Ordering::Relaxed) == 0 {
                return;
            }
        }
    }
    // Closes an idle keep-alive connection at once, a busy one after its
    // response.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
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
        if req.uri().path() == "/reload" {
            if req.method() != Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            if self.reload.send(tx).await.is_err() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
            }
            return match rx.await {
                Ok(Ok(said)) => text(StatusCode::OK, said),
                // The config in use stays: the request was fine, the file not.
                Ok(Err(why)) => text(StatusCode::UNPROCESSABLE_ENTITY, why),
                Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            };
        }
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
            _ => text(
                StatusCode::NOT_FOUND,
                "try /metrics, /healthz, /readyz or POST /reload\n",
            ),
        }
    }

    /// At least one upstream is healthy: a balanced one not ejected, or the
    /// single upstream taking a TCP connection now.
    async fn ready(&self) -> bool {
        let proxies: Vec<Upstreams> = self
            .generations
            .iter()
            .flat_map(|g| {
                let g = g.borrow();
                g.proxies
                    .iter()
                    .map(|p| p.upstreams.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        for u in &proxies {
            match u {
                Upstreams::Many(p) if p.is_ready() => return true,
                Upstreams::Many(_) => {}
                Upstreams::One(p) => {
                    if tcp_reachable(p.upstream(), self.connect_timeout)
                        .await
                        .is_ok()
                    {
                        return true;
                    }
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
