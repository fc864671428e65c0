//! The task that relays an upgraded connection, and the count of open tunnels.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use halfclose_io::{Side, Tunnel, TunnelError};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::AbortHandle;
use crate::config::Config;
use crate::proxy::Origin;

fn side(s: Side) -> &'static str {
    match s {
        Side::A => "client",
        Side::B => "upstream",
    }
}

/// The tunnels a proxy has open: a count, and a way to wait until none is left
/// (for graceful shutdown: an upgraded connection is no longer an HTTP connection
/// the server can track). Cheap to clone; clones share the count.
///
/// ```
/// # async fn run() -> Result<(), proxy_tower::ProxyError> {
/// let proxy = proxy_tower::ReverseProxy::new("http://127.0.0.1:3000")?;
/// let tunnels = proxy.tunnels();
/// // ... serve `proxy`; on shutdown, stop accepting, then:
/// tokio::time::timeout(std::time::Duration::from_secs(10), tunnels.wait_idle()).await.ok();
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Tunnels {
    inner: Arc<Count>,
}

#[derive(Debug, Default)]
struct Count {
    active: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Tunnels {
    /// Tunnels open now (including those waiting for both sides to be upgraded).
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Completes when no tunnel is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn enter(&self) -> Open {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        Open(self.clone())
    }
}

/// One open tunnel; dropping it updates the count.
struct Open(Tunnels);

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.inner.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.inner.idle.notify_waiters();
        }
    }
}

/// Spawns one task that waits for both connections to be upgraded, then relays
/// bytes between them with half-close, and reports how it ended.
pub(crate) fn spawn(
    client: OnUpgrade,
    upstream: OnUpgrade,
    client_abort: Option<AbortHandle>,
    config: &Config,
    origin: &Origin,
) {
    let span = tracing::info_span!(
        "tunnel",
        method = %origin.method,
        path = origin.uri.path(),
        upstream = %config.rules.upstream(),
    );
    let tunnel: Tunnel = config.tunnel;
    let open = config.tunnels.enter();
    tokio::spawn(
        async move {
            let _open = open;
            let upstream = match upstream.await {
                Ok(io) => io,
                Err(e) => {
                    tracing::warn!(error = %e, "upstream connection could not be upgraded");
                    return;
                }
            };
            let client = match client.await {
                Ok(io) => io,
                Err(e) => {
                    tracing::warn!(error = %e, "client connection could not be upgraded");
                    return;
                }
            };
            let mut a = TokioIo::new(client);
            let mut b = UpstreamIo::new(upstream);
            let result = tunnel.copy(&mut a, &mut b).await;
            // Pass an abortive close on as one: reset, not FIN.
            match result.as_ref().err().and_then(TunnelError::reset_side) {
                Some(Side::A) => b.reset_on_drop(),
                Some(Side::B) => {
                    if let Some(abort) = &client_abort {
                        abort.abort();
                    }
                }
                None => {}
            }
            match result {
                Ok(t) => tracing::info!(
                    client_to_upstream = t.a_to_b,
                    upstream_to_client = t.b_to_a,
                    first_fin = t.first_eof.map(side),
                    duration_ms = t.duration.as_millis() as u64,
                    "tunnel closed"
                ),
                Err(e) => {
                    let t = e.transfer();
                    tracing::warn!(
                        error = %e,
                        client_to_upstream = t.a_to_b,
                        upstream_to_client = t.b_to_a,
                        first_fin = t.first_eof.map(side),
                        duration_ms = t.duration.as_millis() as u64,
                        "tunnel failed"
                    );
                }
            }
        }
        .instrument(span),
    );
}

/// The upstream side of a tunnel: the TCP socket itself when hyper-util's
/// connector made it (so that a client's reset can be passed on as a reset),
/// else hyper's upgraded connection.
enum UpstreamIo {
    Tcp(Prefixed<TcpStream>),
    Other(TokioIo<Upgraded>),
}

impl UpstreamIo {
    fn new(upgraded: Upgraded) -> Self {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => UpstreamIo::Tcp(Prefixed {
                // An empty `Bytes` may still hold hyper's whole read buffer.
                prefix: if parts.read_buf.is_empty() {
                    Bytes::new()
                } else {
                    parts.read_buf
                },
                io: parts.io.into_inner(),
            }),
            Err(other) => UpstreamIo::Other(TokioIo::new(other)),
        }
    }

    /// Makes dropping the connection send RST (`SO_LINGER` 0) where possible.
    fn reset_on_drop(&self) {
        if let UpstreamIo::Tcp(p) = self {
            let _ = p.io.set_zero_linger();
        }
    }
}

/// An IO that first yields `prefix`: bytes hyper read past the 101 response.
struct Prefixed<T> {
    prefix: Bytes,
    io: T,
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(p) => {
                if p.prefix.has_remaining() {
                    let n = p.prefix.len().min(buf.remaining());
                    buf.put_slice(&p.prefix[..n]);
                    p.prefix.advance(n);
                    if !p.prefix.has_remaining() {
                        // Release the buffer the prefix came from.
                        p.prefix = Bytes::new();
                    }
                    return Poll::Ready(Ok(()));
                }
                Pin::new(&mut p.io).poll_read(cx, buf)
            }
            UpstreamIo::Other(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(p) => Pin::new(&mut p.io).poll_write(cx, buf),
            UpstreamIo::Other(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(p) => Pin::new(&mut p.io).poll_flush(cx),
            UpstreamIo::Other(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(p) => Pin::new(&mut p.io).poll_shutdown(cx),
            UpstreamIo::Other(io) => Pin::new(io).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(p) => Pin::new(&mut p.io).poll_write_vectored(cx, bufs),
            UpstreamIo::Other(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Tcp(p) => p.io.is_write_vectored(),
            UpstreamIo::Other(io) => io.is_write_vectored(),
        }
    }
}
