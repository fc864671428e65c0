//! The task that relays an upgraded connection, and the count of open tunnels.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures_util::future::Either;
use halfclose_io::{Side, Tunnel, TunnelError};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::ResetHandle;
use crate::config::Config;
use crate::connect::UpstreamIo;
use crate::io::{ClientIo, Prefixed};
use crate::proxy::Origin;

fn side(s: Side) -> &'static str {
    match s {
        Side::A => "client",
        Side::B => "upstream",
    }
}

/// The side whose failure ended a tunnel: the source of a direction whose
/// read failed, the destination of one whose write or shutdown failed, the
/// side that never sent its FIN when the half-close timeout ran out; `None`
/// for the idle timeout (both were silent).
fn failing_side(e: &TunnelError) -> Option<Side> {
    let direction = e.direction()?;
    if e.is_write() {
        Some(direction.destination())
    } else if e.is_read() || e.is_half_close_timeout() {
        Some(direction.source())
    } else {
        None
    }
}

/// The tunnels a proxy has open: a count, a way to wait until none is left,
/// and a way to end those that are (for graceful shutdown: an upgraded
/// connection is no longer an HTTP connection the server can track). Cheap to
/// clone; clones share the tunnels.
///
/// ```
/// # async fn run() -> Result<(), proxy_tower::ProxyError> {
/// use std::time::Duration;
///
/// let proxy = proxy_tower::ReverseProxy::new("http://127.0.0.1:3000")?;
/// let tunnels = proxy.tunnels();
/// // ... serve `proxy`; on shutdown, stop accepting, then give the tunnels
/// // a grace period, and end the rest with a FIN each way:
/// if tokio::time::timeout(Duration::from_secs(10), tunnels.wait_idle()).await.is_err() {
///     tunnels.shutdown();
///     tokio::time::timeout(Duration::from_secs(1), tunnels.wait_idle()).await.ok();
/// }
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
    /// `NOT_CLOSING`, or a [`Closing`] set by `shutdown` or `abort`; every
    /// tunnel, open or to come, obeys. It only ever grows.
    closing: AtomicU8,
    /// Wakes the open tunnels when `closing` grows.
    close: tokio::sync::Notify,
}

const NOT_CLOSING: u8 = 0;

/// How [`Tunnels`] ends the tunnels that are left (ordered: an abort overrides
/// a shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Closing {
    /// FIN to both sides.
    Shutdown = 1,
    /// Reset both sides where the sockets are reachable.
    Abort = 2,
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

    /// Ends every open tunnel, and every tunnel opened from now on, cleanly:
    /// each side gets a FIN (`close_notify` first over TLS, END_STREAM on an
    /// HTTP/2 stream), after the bytes already relayed. Returns at once; await
    /// [`wait_idle`](Tunnels::wait_idle) to know they are gone.
    pub fn shutdown(&self) {
        self.close(Closing::Shutdown);
    }

    /// Ends every open tunnel, and every tunnel opened from now on, at once:
    /// each side gets a reset (RST) where its socket is reachable, else the
    /// connection is dropped. Returns at once.
    pub fn abort(&self) {
        self.close(Closing::Abort);
    }

    fn close(&self, how: Closing) {
        // It only grows: an abort after a shutdown still aborts, a shutdown
        // after an abort changes nothing.
        let before = self.inner.closing.fetch_max(how as u8, Ordering::AcqRel);
        if before < how as u8 {
            self.inner.close.notify_waiters();
        }
    }

    fn closing(&self) -> Option<Closing> {
        match self.inner.closing.load(Ordering::Acquire) {
            NOT_CLOSING => None,
            n if n == Closing::Shutdown as u8 => Some(Closing::Shutdown),
            _ => Some(Closing::Abort),
        }
    }

    /// Completes with the first [`Closing`] seen: one set before or while
    /// polled.
    async fn closed(&self) -> Closing {
        loop {
            let notified = self.inner.close.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(how) = self.closing() {
                return how;
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

/// What the client end of a tunnel is.
pub(crate) enum ClientSide {
    /// A connection upgraded from HTTP/1.1, and the server's abort handle for
    /// it, if any.
    Connection(Option<ResetHandle>),
    /// An HTTP/2 stream opened by extended CONNECT.
    H2Stream,
}

/// What the upstream end of a tunnel is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamSide {
    /// A connection upgraded from HTTP/1.1.
    Connection,
    /// An HTTP/2 stream opened by extended CONNECT.
    H2Stream,
}

/// Spawns one task that waits for both connections to be upgraded, then relays
/// bytes between them with half-close, and reports how it ended.
pub(crate) fn spawn(
    client: OnUpgrade,
    upstream: OnUpgrade,
    client_side: ClientSide,
    upstream_side: UpstreamSide,
    config: &Config,
    origin: &Origin,
) {
    let span = tracing::info_span!(
        "tunnel",
        method = %origin.method,
        path = origin.uri.path(),
        request_id = tracing::field::Empty,
        upstream = %config.rules.upstream(),
    );
    if let Some(id) = origin.request_id() {
        span.record("request_id", id);
    }
    let tunnel: Tunnel = config.tunnel;
    let open = config.tunnels.enter();
    let tunnels = config.tunnels.clone();
    // Counted open until the task's future is dropped, however it ends.
    let gauge = config.metrics.clone().tunnel_opened();
    tokio::spawn(
        async move {
            let _open = open;
            let _gauge = gauge;
            let ended = |how, t: Option<&halfclose_io::Transfer>| crate::metrics::Ended {
                how,
                client_to_upstream: t.map_or(0, |t| t.a_to_b),
                upstream_to_client: t.map_or(0, |t| t.b_to_a),
                first_fin: t.and_then(|t| t.first_eof).map_or("none", side),
            };
            let upstream = match upstream.await {
                Ok(io) => io,
                Err(e) => {
                    tracing::warn!(error = %e, "upstream connection could not be upgraded");
                    crate::metrics::tunnel_closed(ended("error", None));
                    return;
                }
            };
            let client = match client.await {
                Ok(io) => io,
                // The client went away before its 101: its doing, and one a
                // client can repeat at will (DEBUG, as refusals are).
                Err(e) => {
                    tracing::debug!(error = %e, "client connection could not be upgraded");
                    crate::metrics::tunnel_closed(ended("error", None));
                    return;
                }
            };
            let (mut a, client_abort) = match client_side {
                ClientSide::Connection(abort) => (TunnelIo::client(client), abort),
                ClientSide::H2Stream => (TunnelIo::H2Stream(H2Stream(TokioIo::new(client))), None),
            };
            let mut b = match upstream_side {
                UpstreamSide::Connection => TunnelIo::upstream(upstream),
                UpstreamSide::H2Stream => TunnelIo::H2Stream(H2Stream(TokioIo::new(upstream))),
            };
            // This state is what every idle tunnel holds: keep it small (the
            // copy is a plain future, not an `async` block around one).
            // Two bare sockets: splice(2) on Linux. Bytes read ahead on either
            // side are written first by the generic path.
            let result = {
                let copy = match (a.bare_tcp(), b.bare_tcp()) {
                    (Some(a), Some(b)) => Either::Left(tunnel.copy_tcp(a, b)),
                    _ => Either::Right(tunnel.copy(&mut a, &mut b)),
                };
                let closed = tunnels.closed();
                let (mut copy, mut closed) = (std::pin::pin!(copy), std::pin::pin!(closed));
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(r) = copy.as_mut().poll(cx) {
                        return Poll::Ready(Ok(r));
                    }
                    closed.as_mut().poll(cx).map(Err)
                })
                .await
            };
            let result = match result {
                Ok(r) => r,
                Err(how) => {
                    close_both(&mut a, &mut b, client_abort.as_ref(), how).await;
                    tracing::info!(how = ?how, "tunnel closed by the proxy");
                    crate::metrics::tunnel_closed(ended("closed_by_proxy", None));
                    return;
                }
            };
            // Pass an abortive close on as one: reset, not FIN.
            match result.as_ref().err().and_then(TunnelError::reset_side) {
                Some(Side::A) if b.reset_on_drop() => {
                    crate::metrics::reset_passed("upstream");
                }
                Some(Side::B) if a.reset_on_drop() => {
                    crate::metrics::reset_passed("client");
                }
                Some(Side::B) => {
                    if let Some(abort) = &client_abort {
                        abort.abort();
                        crate::metrics::reset_passed("client");
                    }
                }
                _ => {}
            }
            crate::metrics::tunnel_closed(match &result {
                Ok(t) => ended("clean", Some(t)),
                Err(e) => ended(
                    if e.is_idle_timeout() {
                        "idle_timeout"
                    } else if e.is_half_close_timeout() {
                        "half_close_timeout"
                    } else if e.is_reset() {
                        "reset"
                    } else {
                        "error"
                    },
                    Some(e.transfer()),
                ),
            });
            match result {
                Ok(t) => tracing::info!(
                    client_to_upstream = t.a_to_b,
                    upstream_to_client = t.b_to_a,
                    first_eof = t.first_eof.map(side),
                    duration_ms = t.duration.as_millis() as u64,
                    "tunnel closed"
                ),
                // Ended by the client (a reset, a write it refused): DEBUG, as
                // other events a client causes at will; by the upstream or a
                // timeout: WARN.
                Err(e) if failing_side(&e) == Some(Side::A) => {
                    let t = e.transfer();
                    tracing::debug!(
                        error = %e,
                        failed = "client",
                        client_to_upstream = t.a_to_b,
                        upstream_to_client = t.b_to_a,
                        first_eof = t.first_eof.map(side),
                        duration_ms = t.duration.as_millis() as u64,
                        "tunnel failed"
                    );
                }
                Err(e) => {
                    let t = e.transfer();
                    tracing::warn!(
                        error = %e,
                        failed = failing_side(&e).map(side),
                        client_to_upstream = t.a_to_b,
                        upstream_to_client = t.b_to_a,
                        first_eof = t.first_eof.map(side),
                        duration_ms = t.duration.as_millis() as u64,
                        "tunnel failed"
                    );
                }
            }
        }
        .instrument(span),
    );
}

/// How long a FIN may take to be written when the proxy closes a tunnel.
const CLOSE_WRITE_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Ends both sides of a tunnel the proxy closes (each FIN bounded by
/// [`CLOSE_WRITE_LIMIT`], for a peer that stopped reading).
async fn close_both(
    a: &mut TunnelIo,
    b: &mut TunnelIo,
    client_abort: Option<&ResetHandle>,
    how: Closing,
) {
    use tokio::io::AsyncWriteExt;
    match how {
        Closing::Shutdown => {
            for side in [a, b] {
                let _ = tokio::time::timeout(CLOSE_WRITE_LIMIT, side.shutdown()).await;
            }
        }
        Closing::Abort => {
            if !a.reset_on_drop() {
                if let Some(abort) = client_abort {
                    abort.abort();
                }
            }
            b.reset_on_drop();
        }
    }
}

/// A client connection served over TLS by the binary (or any server that
/// serves `TlsStream<ClientIo>`).
#[cfg(feature = "tls")]
type TlsClientIo = tokio_rustls::server::TlsStream<ClientIo>;

/// One end of a tunnel: the connection as it was before hyper wrapped it, where
/// it can be recovered from hyper's upgraded connection (so that its socket can
/// be reached: a reset passed on as a reset, splice(2) between two bare
/// sockets), else the upgraded connection.
enum TunnelIo {
    /// The upstream connection, made by the default client's connector.
    Upstream(Prefixed<UpstreamIo>),
    /// The client socket, served as a [`ClientIo`].
    Client(ClientIo),
    /// The client connection, served as TLS over a [`ClientIo`].
    #[cfg(feature = "tls")]
    TlsClient(Prefixed<Box<TlsClientIo>>),
    /// The client's HTTP/2 stream (extended CONNECT).
    H2Stream(H2Stream),
    Other(TokioIo<Upgraded>),
}

/// An HTTP/2 stream as hyper hands it over after an extended CONNECT: reading
/// its end is the peer's END_STREAM. hyper reports the peer's RST_STREAM
/// as an EOF (CANCEL, NO_ERROR) or an opaque error, and only on the next write
/// or read; here every failure is a reset (`ConnectionReset`), noticed while
/// reading too, so that the tunnel passes it on to the other side as a reset.
pub(crate) struct H2Stream(TokioIo<Upgraded>);

fn as_reset(e: io::Error) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let io = &mut self.get_mut().0;
        let before = buf.filled().len();
        match Pin::new(&mut *io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(as_reset(e))),
            // EOF, or nothing yet: a reset shows as a failed flush (the task
            // that writes the stream ended with an error).
            other => match Pin::new(io).poll_flush(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(as_reset(e))),
                _ => other,
            },
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0)
            .poll_write(cx, buf)
            .map_err(as_reset)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0)
            .poll_flush(cx)
            .map_err(as_reset)
    }

    /// END_STREAM.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0)
            .poll_shutdown(cx)
            .map_err(as_reset)
    }
}

impl TunnelIo {
    fn client(upgraded: Upgraded) -> Self {
        let upgraded = match upgraded.downcast::<TokioIo<ClientIo>>() {
            Ok(parts) => {
                let mut io = parts.io.into_inner();
                // hyper's read-ahead came from the stream before what the
                // connection may still hold.
                io.unread(parts.read_buf);
                return TunnelIo::Client(io);
            }
            Err(other) => other,
        };
        #[cfg(feature = "tls")]
        let upgraded = match upgraded.downcast::<TokioIo<TlsClientIo>>() {
            Ok(parts) => {
                let io = Box::new(parts.io.into_inner());
                return TunnelIo::TlsClient(Prefixed::new(parts.read_buf, io));
            }
            Err(other) => other,
        };
        TunnelIo::Other(TokioIo::new(upgraded))
    }

    fn upstream(upgraded: Upgraded) -> Self {
        match upgraded.downcast::<TokioIo<UpstreamIo>>() {
            Ok(parts) => TunnelIo::Upstream(Prefixed::new(parts.read_buf, parts.io.into_inner())),
            Err(other) => TunnelIo::Other(TokioIo::new(other)),
        }
    }

    /// The socket, when bytes cross it as they are (no TLS) and nothing waits
    /// to be read in front of it.
    fn bare_tcp(&mut self) -> Option<&mut TcpStream> {
        match self {
            TunnelIo::Upstream(p) => p.bare()?.bare_tcp(),
            TunnelIo::Client(c) => c.bare_tcp(),
            #[cfg(feature = "tls")]
            TunnelIo::TlsClient(_) => None,
            TunnelIo::H2Stream(_) | TunnelIo::Other(_) => None,
        }
    }

    /// Makes dropping the connection send RST (`SO_LINGER` 0) where the socket
    /// is reachable; returns false where it is not.
    fn reset_on_drop(&self) -> bool {
        let tcp = match self {
            TunnelIo::Upstream(p) => p.io.tcp(),
            TunnelIo::Client(c) => c.tcp(),
            #[cfg(feature = "tls")]
            TunnelIo::TlsClient(p) => p.io.get_ref().0.tcp(),
            TunnelIo::H2Stream(_) | TunnelIo::Other(_) => return false,
        };
        let _ = tcp.set_zero_linger();
        true
    }
}

impl crate::io::Forward for TunnelIo {
    fn stream(&mut self) -> &mut dyn crate::io::Stream {
        match self {
            TunnelIo::Upstream(io) => io,
            #[cfg(feature = "tls")]
            TunnelIo::TlsClient(io) => io,
            TunnelIo::Client(io) => io,
            TunnelIo::H2Stream(io) => io,
            TunnelIo::Other(io) => io,
        }
    }

    fn stream_ref(&self) -> &dyn crate::io::Stream {
        match self {
            TunnelIo::Upstream(io) => io,
            #[cfg(feature = "tls")]
            TunnelIo::TlsClient(io) => io,
            TunnelIo::Client(io) => io,
            TunnelIo::H2Stream(io) => io,
            TunnelIo::Other(io) => io,
        }
    }
}

crate::io::forward_io!(TunnelIo);
