//! The two ends of a tunnel as the tunnel task holds them: the connection
//! recovered from hyper's upgraded one where it can be (so that a reset
//! passes on as a reset, and splice(2) runs between two bare sockets), and
//! an HTTP/2 stream whose every failure reads as a reset.
//!
//! Imports the crate's IO types (`io`, the client's `UpstreamIo`); nothing
//! of the proxy.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::client::UpstreamIo;
use crate::io::{ClientIo, Prefixed};

/// A client connection served over TLS by the binary (or any server that
/// serves `TlsStream<ClientIo>`).
#[cfg(feature = "tls")]
type TlsClientIo = tokio_rustls::server::TlsStream<ClientIo>;

/// One end of a tunnel: the connection as it was before hyper wrapped it, where
/// it can be recovered from hyper's upgraded connection (so that its socket can
/// be reached: a reset passed on as a reset, splice(2) between two bare
/// sockets), else the upgraded connection.
pub(super) enum TunnelIo {
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
pub(super) struct H2Stream(pub(super) TokioIo<Upgraded>);

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
    pub(super) fn client(upgraded: Upgraded) -> Self {
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

    pub(super) fn upstream(upgraded: Upgraded) -> Self {
        match upgraded.downcast::<TokioIo<UpstreamIo>>() {
            Ok(parts) => TunnelIo::Upstream(Prefixed::new(parts.read_buf, parts.io.into_inner())),
            Err(other) => TunnelIo::Other(TokioIo::new(other)),
        }
    }

    /// The socket, when bytes cross it as they are (no TLS) and nothing waits
    /// to be read in front of it.
    pub(super) fn bare_tcp(&mut self) -> Option<&mut TcpStream> {
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
    pub(super) fn reset_on_drop(&self) -> bool {
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
