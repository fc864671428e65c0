//! The IO types on either end of a tunnel.
//!
//! At the bottom of the crate: imports nothing of it.

use std::any::Any;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A byte stream, as one trait object.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + ?Sized> Stream for T {}

/// A wrapper whose reads and writes are those of one stream it holds (a
/// socket with something kept alongside, an enum of kinds of stream). The
/// [`forward_io!`] macro implements `AsyncRead` and `AsyncWrite` for it, so
/// that the forwarding is written once for every wrapper of the crate.
pub(crate) trait Forward {
    fn stream(&mut self) -> &mut dyn Stream;
    fn stream_ref(&self) -> &dyn Stream;
}

/// `AsyncRead` and `AsyncWrite` for a [`Forward`] type, by forwarding.
macro_rules! forward_io {
    ($ty:ty) => {
        impl tokio::io::AsyncRead for $ty {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                use $crate::io::Forward;
                std::pin::Pin::new(self.get_mut().stream()).poll_read(cx, buf)
            }
        }

        impl tokio::io::AsyncWrite for $ty {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                use $crate::io::Forward;
                std::pin::Pin::new(self.get_mut().stream()).poll_write(cx, buf)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                use $crate::io::Forward;
                std::pin::Pin::new(self.get_mut().stream()).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                use $crate::io::Forward;
                std::pin::Pin::new(self.get_mut().stream()).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                use $crate::io::Forward;
                std::pin::Pin::new(self.get_mut().stream()).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                use $crate::io::Forward;
                self.stream_ref().is_write_vectored()
            }
        }
    };
}
pub(crate) use forward_io;

/// The `AsyncWrite` methods of a wrapper, each passed straight to its field
/// `$field` (no trait object on the way: these are the client socket's writes).
macro_rules! write_through {
    ($field:ident) => {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().$field).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().$field).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().$field).poll_shutdown(cx)
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().$field).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.$field.is_write_vectored()
        }
    };
}

/// An IO that first yields `prefix` (bytes already read from `io` by someone
/// else: hyper's read-ahead, a protocol sniffer), then reads from `io`.
pub(crate) struct Prefixed<T> {
    prefix: Bytes,
    pub(crate) io: T,
}

impl<T> Prefixed<T> {
    pub(crate) fn new(prefix: Bytes, io: T) -> Self {
        let mut p = Prefixed {
            prefix: Bytes::new(),
            io,
        };
        p.unread(prefix);
        p
    }

    /// The IO itself, when nothing is waiting in front of it.
    pub(crate) fn bare(&mut self) -> Option<&mut T> {
        self.prefix.is_empty().then_some(&mut self.io)
    }

    /// Puts `bytes` back in front of whatever is still to be read.
    pub(crate) fn unread(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.prefix = if self.prefix.is_empty() {
            bytes
        } else {
            let mut joined = Vec::with_capacity(bytes.len() + self.prefix.len());
            joined.extend_from_slice(&bytes);
            joined.extend_from_slice(&self.prefix);
            Bytes::from(joined)
        };
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if !this.prefix.has_remaining() {
                // An empty `Bytes` may still hold the buffer it was cut from.
                this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    write_through!(io);
}

/// An accepted client connection, for servers that serve [`ReverseProxy`]
/// with hyper: a `TcpStream`, the bytes a protocol sniffer already read from it
/// (replayed first), and a value held for as long as the connection is open.
///
/// Serve it as `hyper_util::rt::TokioIo<ClientIo>`, or over TLS as
/// `TokioIo<tokio_rustls::server::TlsStream<ClientIo>>` (tokio-rustls 0.26,
/// with the `tls` feature). When such a connection is
/// upgraded, the tunnel recovers the socket itself (through
/// `hyper::upgrade::Upgraded::downcast`), so that an upstream's reset (RST) is
/// passed on to the client as a reset, not as a FIN that would look like a clean
/// end; and the held value (a connection-limit permit, say) lives on until the
/// tunnel closes.
///
/// ```no_run
/// use hyper_util::rt::TokioIo;
/// use proxy_tower::ClientIo;
///
/// # async fn run(listener: tokio::net::TcpListener, limit: std::sync::Arc<tokio::sync::Semaphore>) -> std::io::Result<()> {
/// let permit = limit.acquire_owned().await.expect("semaphore open");
/// let (tcp, _) = listener.accept().await?;
/// let io = ClientIo::new(tcp).hold(permit);
/// // serve TokioIo::new(io) with hyper's http1 or http2 builder.
/// # let _ = TokioIo::new(io); Ok(()) }
/// ```
///
/// [`ReverseProxy`]: crate::ReverseProxy
pub struct ClientIo {
    inner: Prefixed<TcpStream>,
    _held: Option<Box<dyn Any + Send + Sync>>,
    bytes_read: Option<Arc<AtomicU64>>,
}

impl ClientIo {
    /// Wraps an accepted socket.
    pub fn new(stream: TcpStream) -> Self {
        ClientIo {
            inner: Prefixed::new(Bytes::new(), stream),
            _held: None,
            bytes_read: None,
        }
    }

    /// Bytes already read from the socket, to be read again first (what a
    /// protocol sniffer looked at).
    pub fn with_prefix(mut self, prefix: Bytes) -> Self {
        self.inner.unread(prefix);
        self
    }

    /// Keeps `value` until the connection is dropped, through its tunnel if it
    /// is upgraded (a connection-limit permit, say).
    pub fn hold<G: Send + Sync + 'static>(mut self, value: G) -> Self {
        self._held = Some(Box::new(value));
        self
    }

    /// Adds to `counter` the bytes each read returns (the replayed prefix
    /// included): what the client has sent, for a server's access log or
    /// metrics, and a sign of activity for its timers (a connection that
    /// waits for its next request reads nothing; one whose request is
    /// arriving does). One relaxed atomic add per read that returns bytes.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// # async fn run(tcp: tokio::net::TcpStream) {
    /// let received = Arc::new(AtomicU64::new(0));
    /// let io = proxy_tower::ClientIo::new(tcp).count_bytes_read(received.clone());
    /// // ... serve `io`; later: how much came in, and has anything come
    /// // since `seen`?
    /// # let seen = 0;
    /// let arriving = received.load(Ordering::Relaxed) != seen;
    /// # let _ = (io, arriving); }
    /// ```
    pub fn count_bytes_read(mut self, counter: Arc<AtomicU64>) -> Self {
        self.bytes_read = Some(counter);
        self
    }

    /// The socket.
    pub fn tcp(&self) -> &TcpStream {
        &self.inner.io
    }

    pub(crate) fn unread(&mut self, bytes: Bytes) {
        self.inner.unread(bytes);
    }

    /// The socket, when no sniffed or read-ahead bytes wait in front of it.
    pub(crate) fn bare_tcp(&mut self) -> Option<&mut TcpStream> {
        self.inner.bare()
    }
}

impl fmt::Debug for ClientIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIo")
            .field("stream", &self.inner.io)
            .field("prefix", &self.inner.prefix.len())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Some(counter), Poll::Ready(Ok(()))) = (&this.bytes_read, &read) {
            let n = buf.filled().len() - before;
            if n > 0 {
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        read
    }
}

impl AsyncWrite for ClientIo {
    write_through!(inner);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn prefixes_are_read_first_in_stream_order() {
        let (mut far, near) = tokio::io::duplex(64);
        let mut p = Prefixed::new(Bytes::from_static(b"cd"), near);
        // Bytes read after the first prefix came before it in the stream.
        p.unread(Bytes::from_static(b"ab"));
        far.write_all(b"ef").await.unwrap();
        drop(far);
        let mut got = Vec::new();
        p.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"abcdef");
    }
}
