//! hyper's timer for the HTTP/1 header-read timeout: one per connection, with
//! one tokio timer for the connection's whole life.
//!
//! hyper asks its timer for a new sleep at every request head it waits for,
//! polls it while the connection waits for the next request, and drops it
//! once the head is in. With tokio's timer (hyper-util's `TokioTimer`), every
//! request then costs an allocation, an insertion in the timer wheel and a
//! removal (0.4 us of the 14 us of CPU a small proxied request took). Here
//! the sleeps of one connection share one tokio `Sleep`, armed at the
//! earliest deadline asked for and moved on lazily: when it fires before the
//! deadline of the sleep being polled (it was a former request's), it is set
//! again. A keep-alive connection touches the wheel about once per timeout,
//! not once per request, and a head still has to arrive by its deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// One connection's timer (`http1::Builder::timer`, on the connection's own
/// copy of the builder).
#[derive(Clone, Default)]
pub(crate) struct HeadTimer {
    shared: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadSleep {
            deadline: tokio::time::Instant::from_std(deadline),
            shared: self.shared.clone(),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<HeadSleep>() {
            Some(mut s) => s.deadline = tokio::time::Instant::from_std(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// A sleep until `deadline` on the connection's shared tokio timer.
struct HeadSleep {
    deadline: tokio::time::Instant,
    shared: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let timer = shared.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        loop {
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if tokio::time::Instant::now() >= deadline => {
                    return Poll::Ready(());
                }
                // It fired at a former request's deadline: on to this one's.
                Poll::Ready(()) => timer.as_mut().reset(deadline),
            }
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

    /// Sleeps of one timer, one after another as hyper makes them: each ends
    /// at its own deadline, not at an earlier one the shared timer was armed
    /// at, and not later.
    #[tokio::test(start_paused = true)]
    async fn each_sleep_ends_at_its_own_deadline() {
        let timer = HeadTimer::default();
        let start = tokio::time::Instant::now();
        // A first request's sleep, polled (armed at +10 s), then dropped.
        let mut first = timer.sleep_until(after(10));
        assert!(pending(&mut first));
        drop(first);
        // The next request comes 4 s later: its deadline is +14 s.
        tokio::time::advance(Duration::from_secs(4)).await;
        timer.sleep_until(after(10)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(14));
        // `reset` moves a sleep's deadline, earlier too.
        let mut sleep = timer.sleep_until(after(10));
        assert!(pending(&mut sleep));
        timer.reset(&mut sleep, after(1));
        sleep.await;
        assert_eq!(start.elapsed(), Duration::from_secs(15));
    }
}
