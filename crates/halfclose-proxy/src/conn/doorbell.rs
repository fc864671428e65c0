//! A doorbell for rare events: futures polled only after a wake-up of their
//! own, not at every wake-up of the task that holds them. A connection's
//! task wakes several times per request, and each of the futures its watch
//! loop waits on (shutdown, pressure, idleness, a timer) locks a waiter list
//! when polled: gated, they cost an atomic load instead (0.17 us per small
//! request).
//!
//! Imports nothing of the crate: `watch` imports it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

/// Rings (counts, and wakes the connection's task) when one of the futures
/// [`gated`] wraps was woken.
#[derive(Default)]
pub(super) struct Doorbell {
    rings: AtomicU64,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for Doorbell {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.rings.fetch_add(1, Ordering::AcqRel);
        self.task.wake();
    }
}

/// `fut`, polled (with `rung`, the bell's waker) only the first time and
/// after the bell rang since its last poll; otherwise pending at the cost of
/// an atomic load. The bell rings for any gated future: each then looks. One
/// of the futures polled at every poll of the task must be
/// [`registering`](Gated::registering): the bell then wakes that task.
pub(super) fn gated<'a, F: Future>(
    fut: F,
    bell: &'a Arc<Doorbell>,
    rung: &'a std::task::Waker,
) -> Gated<'a, F> {
    Gated {
        fut,
        bell,
        rung,
        seen: None,
        register: false,
    }
}

pin_project! {
    /// See [`gated`].
    pub(super) struct Gated<'a, F> {
        #[pin]
        fut: F,
        bell: &'a Arc<Doorbell>,
        rung: &'a std::task::Waker,
        seen: Option<u64>,
        register: bool,
    }
}

impl<F> Gated<'_, F> {
    /// Registers the polling task with the bell at each poll.
    pub(super) fn registering(mut self) -> Self {
        self.register = true;
        self
    }
}

impl<F: Future> Future for Gated<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if *this.register {
            this.bell.task.register(cx.waker());
        }
        // Read before polling: a ring while `fut` is polled is seen next time.
        let rings = this.bell.rings.load(Ordering::Acquire);
        if *this.seen == Some(rings) {
            return Poll::Pending;
        }
        *this.seen = Some(rings);
        this.fut.poll(&mut Context::from_waker(this.rung))
    }
}
