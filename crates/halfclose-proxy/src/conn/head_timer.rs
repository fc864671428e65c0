//! hyper's timer for the HTTP/1 header-read timeout: one per connection, with
//! one tokio timer for the connection's whole life, and deadlines that count
//! for heads that are arriving, not for a keep-alive connection that waits.
//!
//! hyper asks its timer for a new sleep at every request head it waits for,
//! polls it while the connection waits for the next request, and drops it
//! once the head is in. That had two costs this timer removes:
//!
//! - With tokio's timer (hyper-util's `TokioTimer`), every request paid an
//!   allocation, an insertion in the timer wheel and a removal (0.4 us of the
//!   14 us of CPU a small proxied request took). Here the sleeps of one
//!   connection share one tokio `Sleep`, armed at the earliest deadline asked
//!   for and moved on lazily: when it fires before the deadline of the sleep
//!   being polled (it was a former request's), it is set again. A keep-alive
//!   connection touches the wheel about once per timeout, not once per
//!   request.
//! - hyper starts the sleep as soon as it waits for the next request, so an
//!   idle keep-alive connection was closed after the header-read timeout
//!   (10 s) rather than `--idle-timeout` (75 s, nginx's `keepalive_timeout`).
//!   Here a sleep ends the connection only if bytes came from the client
//!   (the bytes the connection has read, `ClientIo::count_bytes_read`) while the head
//!   was awaited: a head that started arriving has to be complete between one
//!   and two timeouts after hyper began to wait for it. A wait with no byte
//!   goes on: the idle timeout closes that connection, and the first
//!   request's deadline (`watch.rs`, from accept) still bounds a connection
//!   that never sends a whole head.
//!
//! Imports nothing of the crate (the read count comes in as an
//! `Arc<AtomicU64>`): `server` imports it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

type Shared = Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>;

/// One connection's timer (`http1::Builder::timer`, on the connection's own
/// copy of the builder), for a header-read timeout of `timeout`; `received`
/// counts the bytes the connection has read.
#[derive(Clone)]
pub(crate) struct HeadTimer {
    timeout: Duration,
    received: Arc<AtomicU64>,
    shared: Shared,
}

impl HeadTimer {
    pub(crate) fn new(timeout: Duration, received: Arc<AtomicU64>) -> Self {
        HeadTimer {
            timeout,
            received,
            shared: Shared::default(),
        }
    }
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadSleep {
            deadline: tokio::time::Instant::from_std(deadline),
            timeout: self.timeout,
            seen: self.received.load(Ordering::Relaxed),
            received: self.received.clone(),
            arriving: false,
            shared: self.shared.clone(),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<HeadSleep>() {
            Some(mut s) => {
                // A new wait for a head.
                s.deadline = tokio::time::Instant::from_std(new_deadline);
                s.seen = s.received.load(Ordering::Relaxed);
                s.arriving = false;
            }
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// A wait for one request head, on the connection's shared tokio timer.
struct HeadSleep {
    deadline: tokio::time::Instant,
    timeout: Duration,
    /// The read count when last looked at.
    seen: u64,
    received: Arc<AtomicU64>,
    /// Bytes came during this wait, before the last deadline.
    arriving: bool,
    shared: Shared,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut shared = this.shared.lock().unwrap_or_else(|e| e.into_inner());
        let timer = shared.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(this.deadline)));
        if timer.deadline() > this.deadline {
            timer.as_mut().reset(this.deadline);
        }
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = tokio::time::Instant::now();
            if now >= this.deadline {
                if this.arriving {
                    // A head began to arrive a whole timeout ago or more and
                    // is still not complete.
                    return Poll::Ready(());
                }
                let received = this.received.load(Ordering::Relaxed);
                // Bytes since the last look: the head gets one more timeout.
                // None: an idle connection, the idle timeout's to close.
                this.arriving = received != this.seen;
                this.seen = received;
                this.deadline = now + this.timeout;
            }
            // Or it fired at a former request's deadline.
            timer.as_mut().reset(this.deadline);
        }
    }
}

impl hyper::rt::Sleep for HeadSleep {}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    /// `secs` from now on tokio's (paused) clock, as hyper passes deadlines.
    fn after(secs: u64) -> Instant {
        (tokio::time::Instant::now() + Duration::from_secs(secs)).into_std()
    }

    fn pending(sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        sleep.as_mut().poll(&mut cx).is_pending()
    }

    fn timer() -> (HeadTimer, Arc<AtomicU64>) {
        let received = Arc::new(AtomicU64::new(0));
        (
            HeadTimer::new(Duration::from_secs(10), received.clone()),
            received,
        )
    }

    /// Bytes that came during a wait: the head gets one more timeout from the
    /// deadline at which they are seen, then the sleep ends. The shared tokio
    /// timer, armed for a former request's earlier deadline, does not end it
    /// early.
    #[tokio::test(start_paused = true)]
    async fn a_head_that_is_arriving_times_out() {
        let (timer, received) = timer();
        let start = tokio::time::Instant::now();
        // A first request's wait, polled (the timer armed at +10 s), then
        // dropped: its head came.
        let mut first = timer.sleep_until(after(10));
        assert!(pending(&mut first));
        drop(first);
        // The next wait starts 4 s later (deadline +14 s); bytes come at +5 s.
        tokio::time::advance(Duration::from_secs(4)).await;
        let mut next = timer.sleep_until(after(10));
        assert!(pending(&mut next));
        tokio::time::advance(Duration::from_secs(1)).await;
        received.fetch_add(1, Ordering::Relaxed);
        next.await;
        assert_eq!(start.elapsed(), Duration::from_secs(24));
    }

    /// A wait with no byte (an idle keep-alive connection) does not end,
    /// however long it lasts.
    #[tokio::test(start_paused = true)]
    async fn an_idle_wait_does_not_time_out() {
        let (timer, _reads) = timer();
        let idle = timer.sleep_until(after(10));
        let waited = tokio::time::timeout(Duration::from_secs(100), idle).await;
        assert!(waited.is_err(), "an idle wait ended");
    }

    /// `reset` starts a new wait, with an earlier deadline too.
    #[tokio::test(start_paused = true)]
    async fn reset_starts_a_new_wait() {
        let (timer, received) = timer();
        let start = tokio::time::Instant::now();
        let mut sleep = timer.sleep_until(after(10));
        assert!(pending(&mut sleep));
        received.fetch_add(1, Ordering::Relaxed);
        timer.reset(&mut sleep, after(1));
        received.fetch_add(1, Ordering::Relaxed);
        sleep.await;
        // Bytes seen at +1 s: one more timeout.
        assert_eq!(start.elapsed(), Duration::from_secs(11));
    }
}
