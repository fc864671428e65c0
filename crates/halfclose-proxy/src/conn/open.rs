//! Opening a connection, within the first-request deadline (the
//! header-read timeout from accept): with `--tls-cert`, the TLS handshake,
//! then the protocol ALPN chose; without, the first bytes read here (HTTP/1:
//! one byte that cannot start the HTTP/2 preface; HTTP/2: the preface and
//! the first SETTINGS frame). The socket becomes a `proxy_tower::ClientIo`
//! holding the connection's permit, the bytes read, and the read count the
//! header-read timer needs; then `server` serves it.
//!
//! Imports: `shared` and `server`. It knows nothing of what happens once
//! the protocol is known.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Body;
use hyper_util::rt::TokioIo;
use proxy_tower::{BoxError, ClientIo};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;

use super::server::Conn;
use super::shared::{Protocol, RequestService, Settings, Signals, shutting_down};
use crate::proxy_protocol::{self, Parsed};

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame header length and the SETTINGS frame type (RFC 9113 sections 4.1, 6.5).
const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
/// The largest first SETTINGS frame we wait for (the default max frame size);
/// a larger one is handed to hyper, which refuses it.
const MAX_SETTINGS: usize = 16_384;

/// Reads the connection's first bytes, after `read` (bytes already read):
/// one byte that cannot start the HTTP/2 preface means HTTP/1; the whole
/// preface and the first frame header and payload (which must be SETTINGS)
/// mean HTTP/2. `None` at EOF.
async fn sniff(tcp: &mut TcpStream, read: Bytes) -> std::io::Result<Option<(Protocol, Bytes)>> {
    let mut buf = BytesMut::with_capacity(1024.max(read.len()));
    buf.extend_from_slice(&read);
    loop {
        if let Some(protocol) = protocol_of(&buf) {
            return Ok(Some((protocol, buf.freeze())));
        }
        if tcp.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// The protocol the first bytes say, if they say it yet.
fn protocol_of(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(PREFACE.len());
    if buf[..n] != PREFACE[..n] {
        return Some(Protocol::Http1);
    }
    if buf.len() < PREFACE.len() + FRAME_HEADER {
        return None;
    }
    let frame = &buf[PREFACE.len()..];
    let len = u32::from_be_bytes([0, frame[0], frame[1], frame[2]]) as usize;
    // Not SETTINGS, or too large to wait for: hyper answers with GOAWAY.
    let whole = frame[3] != SETTINGS
        || len > MAX_SETTINGS
        || buf.len() >= PREFACE.len() + FRAME_HEADER + len;
    whole.then_some(Protocol::Http2)
}

/// Reads a PROXY protocol header: the client's address it carries (`None`:
/// the connection's own), and the bytes read past it; or why it is not one.
async fn read_proxy_header(
    tcp: &mut TcpStream,
) -> std::io::Result<Result<(Option<SocketAddr>, Bytes), &'static str>> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        match proxy_protocol::parse(&buf) {
            Parsed::Header { len, source } => {
                let rest = buf.split_off(len).freeze();
                return Ok(Ok((source, rest)));
            }
            Parsed::Invalid(why) => return Ok(Err(why)),
            Parsed::Incomplete => {}
        }
        if tcp.read_buf(&mut buf).await? == 0 {
            return Ok(Err("closed before its PROXY header was whole"));
        }
    }
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve<S, B>(
    mut tcp: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    proxy: S,
    settings: Arc<Settings>,
    signals: Signals,
) where
    S: RequestService<B>,
    B: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
{
    let first_head_by = Instant::now() + settings.header_read_timeout;
    let mut shutdown = signals.shutdown.clone();
    let mut opening = Opening {
        peer,
        by: first_head_by,
        limit: settings.header_read_timeout,
        shutdown: &mut shutdown,
    };
    // Behind an L4 balancer: its PROXY header first, within the same
    // deadline; the client's address it carries is the client's from here on.
    let (peer, read) = match &settings.proxy_protocol {
        None => (peer, Bytes::new()),
        Some(trusted) => {
            if !trusted.is_empty() && !trusted.iter().any(|net| net.contains(peer.ip())) {
                tracing::debug!(%peer, "PROXY protocol: not a trusted source; closing");
                return;
            }
            match opening
                .step(read_proxy_header(&mut tcp), "PROXY protocol header")
                .await
            {
                None => return,
                Some(Err(why)) => {
                    tracing::debug!(%peer, why, "PROXY protocol: no valid header; closing");
                    return;
                }
                Some(Ok((source, read))) => (source.unwrap_or(peer), read),
            }
        }
    };
    opening.peer = peer;
    // The client's received that returned bytes, for the header-read timer.
    let received = Arc::new(AtomicU64::new(0));
    let conn = |tls, protocol| Conn {
        peer,
        tls,
        protocol,
        first_head_by,
        received: received.clone(),
        proxy,
        settings: &settings,
        signals,
    };
    #[cfg(feature = "tls")]
    if let Some(acceptor) = &settings.tls {
        // In a box of its own: the handshake's state and the TLS stream take
        // kilobytes that a plain connection's task should not hold room for.
        let count = received.clone();
        return Box::pin(async move {
            // The handshake counts against the header-read timeout: a stalled
            // one holds its slot no longer than a silent plain socket.
            let handshake = acceptor.accept(
                ClientIo::new(tcp)
                    .with_prefix(read)
                    .hold(permit)
                    .count_bytes_read(count),
            );
            let Some(tls) = opening.step(handshake, "TLS handshake").await else {
                return;
            };
            let protocol = match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                _ => Protocol::Http1,
            };
            conn(true, protocol).run(TokioIo::new(tls)).await
        })
        .await;
    }
    let Some(Some((protocol, prefix))) = opening.step(sniff(&mut tcp, read), "first request").await
    else {
        return;
    };
    let protocol = match settings.http2_on {
        true => protocol,
        false => Protocol::Http1,
    };
    let io = TokioIo::new(
        ClientIo::new(tcp)
            .with_prefix(prefix)
            .hold(permit)
            .count_bytes_read(received.clone()),
    );
    conn(false, protocol).run(io).await
}

/// A connection's opening steps (TLS handshake, protocol sniff), all within
/// the first-request deadline.
struct Opening<'a> {
    peer: SocketAddr,
    by: Instant,
    limit: Duration,
    shutdown: &'a mut watch::Receiver<bool>,
}

impl Opening<'_> {
    /// Runs `step` before the deadline; `None` when the connection is to
    /// close: the deadline passed, the step failed, or the server shuts down.
    async fn step<T>(
        &mut self,
        step: impl Future<Output = std::io::Result<T>>,
        what: &'static str,
    ) -> Option<T> {
        let peer = self.peer;
        let done = tokio::select! {
            s = tokio::time::timeout_at(self.by, step) => s,
            _ = shutting_down(self.shutdown) => return None,
        };
        match done {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, what, "connection failed before its first request");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, limit = ?self.limit, what, "nothing within the header-read timeout; closing");
                None
            }
        }
    }
}
