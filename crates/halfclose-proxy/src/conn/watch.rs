//! What keeps a served connection in bounds: the watch loop around the
//! hyper connection (a first request head by the deadline for HTTP/1, a
//! graceful close after `--idle-timeout` with no request in flight, idle
//! connections shed under pressure, graceful shutdown on the signal), and
//! the in-flight tracking it judges idleness by (`InFlight`, a guard that
//! lives in the response body: "idle" means no response is still
//! streaming).
//!
//! Imports: `shared` and `doorbell`. It knows nothing of how a connection
//! was opened, nor of hyper's builders (`server` imports it).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, Sleep};

use super::doorbell::{Doorbell, gated};
use super::shared::{Pressure, Protocol, shutting_down};

/// What one connection is doing, as its requests see it.
pub(super) struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// When `in_flight` last dropped to zero, in nanoseconds after `started`.
    idle_since: AtomicU64,
    /// Woken when the last request in flight ends while under pressure.
    became_idle: Notify,
    pressure: Pressure,
}

impl Activity {
    pub(super) fn new(pressure: Pressure) -> Self {
        Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            became_idle: Notify::new(),
            pressure,
        }
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Acquire)
    }

    fn idle_since(&self) -> Instant {
        self.started + Duration::from_nanos(self.idle_since.load(Ordering::Acquire))
    }
}

/// One request in flight: from the service call until its response body is
/// done or dropped.
pub(super) struct InFlight(Arc<Activity>);

impl InFlight {
    pub(super) fn start(activity: &Arc<Activity>) -> Self {
        activity.requests.fetch_add(1, Ordering::AcqRel);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let since = a.started.elapsed().as_nanos() as u64;
            a.idle_since.store(since, Ordering::Release);
            if a.pressure.is_on() {
                a.became_idle.notify_one();
            }
        }
    }
}

pin_project! {
    /// A response body that keeps its request counted as in flight.
    pub(super) struct Tracked<B> {
        #[pin]
        pub(super) body: B,
        pub(super) _in_flight: InFlight,
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The timers and signals around one hyper connection.
pub(super) struct Watch<'a> {
    pub(super) peer: SocketAddr,
    pub(super) protocol: Protocol,
    pub(super) activity: &'a Activity,
    pub(super) idle_timeout: Option<Duration>,
    pub(super) shutdown: watch::Receiver<bool>,
    pub(super) pressure: Pressure,
}

impl Watch<'_> {
    /// Runs `conn` to its end. With `first_head_by`, a connection that has not
    /// made a request by then is closed at once; an idle one is shut down
    /// gracefully after the idle timeout, on shutdown, or under pressure.
    pub(super) async fn drive<C, E>(
        mut self,
        conn: C,
        first_head_by: Option<Instant>,
        graceful: fn(Pin<&mut C>),
    ) where
        C: Future<Output = Result<(), E>>,
        E: fmt::Display,
    {
        let mut conn = std::pin::pin!(conn);
        let mut awaiting_first = first_head_by.is_some();
        let idle_at = self.idle_timeout.map(|idle| Instant::now() + idle);
        let first = match (first_head_by, idle_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut timer: Option<Pin<Box<Sleep>>> =
            first.map(|at| Box::pin(tokio::time::sleep_until(at)));
        let mut pulses = self.pressure.pulse.subscribe();
        let mut closing = false;
        // The rare events (shutdown, pressure, idleness, the timer) are
        // polled only after a wake-up of their own, not at every wake-up of
        // the connection (each request wakes it several times).
        let bell = Arc::new(Doorbell::default());
        let rung = std::task::Waker::from(bell.clone());
        loop {
            tokio::select! {
                // The connection first: the gated branches are cheap to skip.
                biased;
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                // The first gated branch registers the task with the bell for
                // all of them (they are all off once `closing`).
                _ = gated(shutting_down(&mut self.shutdown), &bell, &rung).registering(), if !closing => {
                    closing = true;
                    graceful(conn.as_mut());
                }
                Ok(()) = gated(pulses.changed(), &bell, &rung), if !closing => {
                    if self.shed() {
                        closing = true;
                        graceful(conn.as_mut());
                    }
                }
                _ = gated(self.activity.became_idle.notified(), &bell, &rung), if !closing => {
                    if self.pressure.is_on() && self.shed() {
                        closing = true;
                        graceful(conn.as_mut());
                    }
                }
                _ = gated(async { timer.as_mut().expect("guarded").as_mut().await }, &bell, &rung), if timer.is_some() && !closing => {
                    if let (true, Some(by)) = (awaiting_first, first_head_by) {
                        if self.activity.requests() == 0 {
                            if by <= Instant::now() {
                                tracing::debug!(peer = %self.peer, "no request head within the header-read timeout; closing");
                                return;
                            }
                            if let Some(t) = timer.as_mut() {
                                t.as_mut().reset(by);
                            }
                            continue;
                        }
                        awaiting_first = false;
                    }
                    let Some(idle) = self.idle_timeout else {
                        timer = None;
                        continue;
                    };
                    let next = if self.activity.is_idle() {
                        let at = self.activity.idle_since() + idle;
                        if at <= Instant::now() {
                            tracing::debug!(peer = %self.peer, "idle connection closed");
                            closing = true;
                            graceful(conn.as_mut());
                            continue;
                        }
                        at
                    } else {
                        Instant::now() + idle
                    };
                    if let Some(t) = timer.as_mut() {
                        t.as_mut().reset(next);
                    }
                }
            }
        }
    }

    /// Under pressure, an idle connection that has served a request (or an
    /// HTTP/2 connection with no open stream) gives its slot up.
    fn shed(&self) -> bool {
        let idle = self.activity.is_idle()
            && (self.activity.requests() > 0 || self.protocol == Protocol::Http2);
        if idle {
            tracing::debug!(peer = %self.peer, "idle connection shed at the connection limit");
        }
        idle
    }
}
