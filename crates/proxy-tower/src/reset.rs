//! Passing an upstream's abortive close (RST) on to the client.
//!
//! Imports `io` only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpStream;

/// A client connection that resets (RST) instead of closing (FIN) when the proxy
/// asks it to: when the upstream side of a tunnel on this connection was reset.
///
/// A server wraps each accepted socket in it and puts its [`ResetHandle`] in the
/// extensions of every request of that connection; a tunnel whose upstream resets
/// then flips the handle, and dropping the connection sends RST to the client
/// instead of a FIN that would look like a clean end.
///
/// ```no_run
/// use hyper_util::rt::TokioIo;
/// use proxy_tower::ResettableIo;
///
/// # async fn run(listener: tokio::net::TcpListener) -> std::io::Result<()> {
/// let (tcp, _) = listener.accept().await?;
/// let (io, reset) = ResettableIo::new(tcp);
/// // serve TokioIo::new(io) with hyper, inserting `reset.clone()` into each
/// // request's extensions.
/// # let _ = (TokioIo::new(io), reset); Ok(()) }
/// ```
#[derive(Debug)]
pub struct ResettableIo {
    stream: TcpStream,
    reset: ResetHandle,
}

/// Asks a [`ResettableIo`] connection to reset when it is dropped. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ResetHandle(Arc<AtomicBool>);

impl ResetHandle {
    /// Makes the connection reset (RST) when it is dropped.
    pub fn reset(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// True once [`reset`](ResetHandle::reset) was called.
    pub fn is_reset(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl ResettableIo {
    /// Wraps `stream`; the handle goes into the extensions of its requests.
    pub fn new(stream: TcpStream) -> (Self, ResetHandle) {
        let reset = ResetHandle::default();
        (
            ResettableIo {
                stream,
                reset: reset.clone(),
            },
            reset,
        )
    }
}

impl Drop for ResettableIo {
    fn drop(&mut self) {
        if self.reset.is_reset() {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl crate::io::Forward for ResettableIo {
    fn stream(&mut self) -> &mut dyn crate::io::Stream {
        &mut self.stream
    }

    fn stream_ref(&self) -> &dyn crate::io::Stream {
        &self.stream
    }
}

crate::io::forward_io!(ResettableIo);
