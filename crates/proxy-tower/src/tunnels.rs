//! [`Tunnels`]: the count of a proxy's open tunnels, a way to wait until
//! none is left, and the state every tunnel obeys when the proxy ends them
//! (a FIN each way, or a reset). A plain shared value at the bottom of the
//! crate: it imports nothing of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

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
    /// `NOT_CLOSING`, or a [`Closing`] set by `shutdown` or `reset`; every
    /// tunnel, open or to come, obeys. It only ever grows.
    closing: AtomicU8,
    /// Wakes the open tunnels when `closing` grows.
    close: tokio::sync::Notify,
}

const NOT_CLOSING: u8 = 0;

/// How [`Tunnels`] ends the tunnels that are left (ordered: a reset overrides
/// a shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Closing {
    /// FIN to both sides.
    Shutdown = 1,
    /// Reset both sides where the sockets are reachable.
    Reset = 2,
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
    pub fn reset(&self) {
        self.close(Closing::Reset);
    }

    fn close(&self, how: Closing) {
        // It only grows: a reset after a shutdown still resets, a shutdown
        // after a reset changes nothing.
        let before = self.inner.closing.fetch_max(how as u8, Ordering::AcqRel);
        if before < how as u8 {
            self.inner.close.notify_waiters();
        }
    }

    pub(crate) fn closing(&self) -> Option<Closing> {
        match self.inner.closing.load(Ordering::Acquire) {
            NOT_CLOSING => None,
            n if n == Closing::Shutdown as u8 => Some(Closing::Shutdown),
            _ => Some(Closing::Reset),
        }
    }

    /// Completes with the first [`Closing`] seen: one set before or while
    /// polled. (A plain future, not an `async fn`: every idle tunnel holds
    /// one, and the `async fn` kept a second reference and a pin beside the
    /// `Notified`, 104 bytes against 72.)
    pub(crate) fn closed(&self) -> Closed<'_> {
        Closed {
            tunnels: self,
            notified: self.inner.close.notified(),
        }
    }

    pub(crate) fn enter(&self) -> Open {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        Open(self.clone())
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Tunnels::closed`].
    pub(crate) struct Closed<'a> {
        tunnels: &'a Tunnels,
        #[pin]
        notified: tokio::sync::futures::Notified<'a>,
    }
}

impl std::future::Future for Closed<'_> {
    type Output = Closing;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Closing> {
        let mut this = self.project();
        loop {
            // Registered first, then the state read: a close that comes
            // between the two wakes this poll's waker.
            let woken = this.notified.as_mut().poll(cx).is_ready();
            if let Some(how) = this.tunnels.closing() {
                return std::task::Poll::Ready(how);
            }
            if !woken {
                return std::task::Poll::Pending;
            }
            this.notified.set(this.tunnels.inner.close.notified());
        }
    }
}

/// One open tunnel; dropping it updates the count.
pub(crate) struct Open(Tunnels);

impl Open {
    /// The tunnels this one is counted in.
    pub(crate) fn tunnels(&self) -> &Tunnels {
        &self.0
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.inner.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.inner.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Poll, Wake, Waker};

    /// A waker that counts its wake-ups.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn closed_completes_with_a_close_set_before_it_was_polled() {
        let tunnels = Tunnels::default();
        tunnels.shutdown();
        let waker = Waker::noop();
        let mut closed = std::pin::pin!(tunnels.closed());
        let polled = closed.as_mut().poll(&mut Context::from_waker(waker));
        assert_eq!(polled, Poll::Ready(Closing::Shutdown));
    }

    #[test]
    fn closed_is_woken_by_a_close_after_its_first_poll_and_a_reset_wins() {
        let tunnels = Tunnels::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut closed = std::pin::pin!(tunnels.closed());
        assert_eq!(closed.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        tunnels.shutdown();
        tunnels.reset();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake-up");
        assert_eq!(closed.as_mut().poll(&mut cx), Poll::Ready(Closing::Reset));
    }

    #[test]
    fn closed_stays_pending_without_a_close() {
        let tunnels = Tunnels::default();
        let mut closed = std::pin::pin!(tunnels.closed());
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..3 {
            assert_eq!(closed.as_mut().poll(&mut cx), Poll::Pending);
        }
        // Another tunnel's end is no close.
        drop(tunnels.enter());
        assert_eq!(closed.as_mut().poll(&mut cx), Poll::Pending);
    }
}
