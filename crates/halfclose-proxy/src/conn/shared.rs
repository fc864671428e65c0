//! What the parts of a connection share: the settings every connection is
//! served with, the server-wide signals it listens to (shutdown, pressure),
//! the service its requests go to, and the protocol it speaks.
//!
//! Imports nothing of the crate: `open`, `server` and `watch` import it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{mpsc, watch};

use crate::proxy_protocol::Cidr;

/// How client connections are served; shared by all of them.
pub(crate) struct Settings {
    /// Time from accept to a complete first request head (HTTP/1) or the
    /// preface and SETTINGS (HTTP/2); also hyper's limit for later heads.
    pub(super) header_read_timeout: Duration,
    /// Close a connection with no request in flight for this long.
    pub(super) idle_timeout: Option<Duration>,
    pub(super) http1: http1::Builder,
    pub(super) http2: http2::Builder<TokioExecutor>,
    /// Serve HTTP/2 (prior knowledge, or `h2` by ALPN); HTTP/1.1 alone when
    /// false.
    pub(super) http2_on: bool,
    /// Read a PROXY protocol header first, from these networks (any when
    /// empty).
    pub(super) proxy_protocol: Option<Vec<Cidr>>,
    /// Serve HTTPS: a TLS handshake first, then the protocol ALPN chose.
    #[cfg(feature = "tls")]
    pub(super) tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Settings {
    pub(crate) fn new(
        header_read_timeout: Duration,
        idle_timeout: Option<Duration>,
        ping_interval: Option<Duration>,
        max_streams: u32,
    ) -> Self {
        let mut h1 = http1::Builder::new();
        // Each connection gives it a `HeadTimer` of its own.
        h1.header_read_timeout(header_read_timeout)
            // A client that sends its request (an upgrade, say) and its FIN at
            // once still gets its answer; the FIN then reaches the upstream.
            .half_close(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            // RFC 8441: WebSockets (and other upgrades) over HTTP/2 streams.
            .enable_connect_protocol()
            // Each stream can hold an upstream connection (hyper allows 200).
            .max_concurrent_streams(max_streams)
            .keep_alive_interval(ping_interval)
            .keep_alive_timeout(ping_interval.unwrap_or(Duration::from_secs(20)));
        Settings {
            header_read_timeout,
            idle_timeout,
            http1: h1,
            http2: h2,
            http2_on: true,
            proxy_protocol: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Every connection starts with a PROXY protocol header (v1 or v2),
    /// from a source in `trusted` (any source when empty); the address it
    /// carries is the client's.
    pub(crate) fn proxy_protocol(mut self, trusted: Vec<Cidr>) -> Self {
        self.proxy_protocol = Some(trusted);
        self
    }

    /// Serves HTTP/1.1 only: an HTTP/2 preface is read as HTTP/1, which
    /// hyper refuses. (The TLS acceptor's ALPN must then offer only
    /// `http/1.1`.)
    pub(crate) fn http1_only(mut self) -> Self {
        self.http2_on = false;
        self
    }

    /// Serves HTTPS through `acceptor`.
    #[cfg(feature = "tls")]
    pub(crate) fn tls(mut self, acceptor: tokio_rustls::TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }
}

/// The server-wide signals every connection listens to.
#[derive(Clone)]
pub(crate) struct Signals {
    /// Turns true once: stop taking requests, finish what is in flight.
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) pressure: Pressure,
    /// Held while the connection's task runs; the server waits for all to drop.
    pub(crate) running: mpsc::Sender<()>,
}

/// "At the connection limit, with a client waiting": idle connections close.
#[derive(Clone)]
pub(crate) struct Pressure {
    pub(super) on: Arc<AtomicBool>,
    pub(super) pulse: watch::Sender<()>,
}

impl Pressure {
    pub(crate) fn new() -> Self {
        Pressure {
            on: Arc::default(),
            pulse: watch::Sender::new(()),
        }
    }

    /// A client waits for a slot: idle connections close now, and busy ones
    /// as soon as they become idle, until [`lower`](Pressure::lower).
    pub(crate) fn raise(&self) {
        self.on.store(true, Ordering::Release);
        self.pulse.send_replace(());
    }

    pub(crate) fn lower(&self) {
        self.on.store(false, Ordering::Release);
    }

    pub(super) fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Http1,
    Http2,
}

/// The service a connection's requests go to: the proxy, in its stack of
/// layers (`stack`), as a type parameter.
pub(crate) trait RequestService<B>:
    tower::Service<
        http::Request<Incoming>,
        Response = http::Response<B>,
        Error = std::convert::Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> RequestService<B> for S where
    S: tower::Service<
            http::Request<Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
            Future: Send,
        > + Clone
        + Send
        + 'static
{
}

/// Resolves once the server shuts down.
pub(crate) async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}
