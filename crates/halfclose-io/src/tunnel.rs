//! The tunnel: both directions driven by one future, with optional timeouts.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::direction::{Failure, OneWay, Progress, Pump};
use crate::error::Kind;
use crate::{Direction, Side, Transfer, TunnelError};

/// Default size of one read (64 KiB): the per-thread scratch buffer reads land
/// in, and the most a direction keeps when its destination lags.
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;

/// Options for a bidirectional copy. Cheap to copy; build once, use for many tunnels.
///
/// Without options, [`Tunnel::new().copy(a, b)`](Tunnel::copy) is the same as
/// [`copy_bidirectional`](crate::copy_bidirectional).
///
/// ```
/// use std::time::Duration;
/// use halfclose_io::Tunnel;
///
/// # async fn run(mut a: tokio::net::TcpStream, mut b: tokio::net::TcpStream) -> std::io::Result<()> {
/// let transfer = Tunnel::new()
///     .idle_timeout(Duration::from_secs(60))        // no bytes either way for this long: end
///     .half_close_timeout(Duration::from_secs(10))  // after the first FIN, the other side must finish
///     .copy(&mut a, &mut b)
///     .await?;
/// println!("{} bytes a->b, {} bytes b->a", transfer.a_to_b, transfer.b_to_a);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Tunnel {
    idle_timeout: Option<Duration>,
    half_close_timeout: Option<Duration>,
    buffer_size: usize,
}

impl Default for Tunnel {
    fn default() -> Self {
        Self::new()
    }
}

impl Tunnel {
    /// A tunnel with no timeouts and the default buffer size.
    pub const fn new() -> Self {
        Tunnel {
            idle_timeout: None,
            half_close_timeout: None,
            buffer_size: DEFAULT_BUFFER_SIZE,
        }
    }

    /// Ends the tunnel with an idle-timeout error when no byte moves either way for
    /// `timeout`. Off by default.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Once one side has sent its FIN, ends the tunnel with a half-close-timeout
    /// error when no byte moves either way for `timeout` (like HAProxy's
    /// `timeout client-fin` / `server-fin`). Off by default.
    ///
    /// It is an inactivity timeout, not a deadline: a client that sends its
    /// request and its FIN, then downloads a long reply, keeps the tunnel for as
    /// long as the reply keeps coming. Without it, a peer that never closes keeps
    /// the tunnel, and the two sockets, open for as long as it likes.
    pub fn half_close_timeout(mut self, timeout: Duration) -> Self {
        self.half_close_timeout = Some(timeout);
        self
    }

    /// Largest read, in bytes (at least 1; default [`DEFAULT_BUFFER_SIZE`]).
    /// Reads land in a per-thread scratch buffer of this size; a direction owns
    /// memory only for the bytes its destination has not taken yet, so at most
    /// this much, and none while idle or keeping up.
    pub fn buffer_size(mut self, bytes: usize) -> Self {
        self.buffer_size = bytes.max(1);
        self
    }

    /// Copies bytes both ways between `a` and `b` until both directions are done.
    ///
    /// The contract:
    ///
    /// - Each direction reads until EOF, writes and flushes everything it read, then
    ///   shuts down the write half of its destination (`shutdown(SHUT_WR)` on a TCP
    ///   socket), passing the FIN on. The other direction keeps running.
    /// - The future completes with `Ok` when both directions have passed their FIN on.
    /// - A read, write or shutdown error in either direction ends the tunnel with a
    ///   [`TunnelError`] naming the direction and carrying the bytes that got
    ///   through. Before returning, bytes already read for the other direction are
    ///   offered to their destination once, without waiting.
    /// - A shutdown that fails with `NotConnected` (the peer is already gone) counts
    ///   as done, not as an error.
    /// - Closing a read half is a local matter and is not propagated.
    /// - Timeouts, when set, end the tunnel with an error whose io kind is
    ///   `TimedOut`.
    ///
    /// Both directions run inside this one future, on the caller's task: no task is
    /// spawned. Dropping the future stops the copy; `a` and `b` are left as they are.
    pub fn copy<A, B>(
        self,
        a: &mut A,
        b: &mut B,
    ) -> impl Future<Output = Result<Transfer, TunnelError>>
    where
        A: AsyncRead + AsyncWrite + Unpin + ?Sized,
        B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        // A plain state and a closure rather than an `async fn`: the future is
        // the state and two references, nothing more (it lives in the task of
        // every idle tunnel).
        let mut state = Relay::new(self, OneWay::new(), OneWay::new());
        poll_fn(move |cx| state.poll(cx, &mut *a, &mut *b))
    }

    /// Like [`copy`](Tunnel::copy), for two TCP sockets: on Linux (with the
    /// default `splice` feature) a direction copies through user space until
    /// one read brings at least half of [`buffer_size`](Tunnel::buffer_size)
    /// (a bulk transfer), then moves its bytes with `splice(2)` through a
    /// pipe, never entering user space; small messages cost less the first
    /// way. Elsewhere this is `copy`. The contract is the same, FIN for FIN.
    ///
    /// Pipes are taken from a small pool shared by the process when bytes
    /// first flow and given back whenever a direction is idle with its pipe
    /// empty, so an idle tunnel holds no pipe (and no buffer); the pool keeps
    /// no more pipes than there are spliced directions alive, so they are all
    /// closed when the last tunnel ends, whichever thread it ends on. At most
    /// [`MAX_SPLICE_PIPES`](crate::MAX_SPLICE_PIPES) are open at once; a
    /// direction that cannot get one (all in use, or the process is out of
    /// file descriptors) copies through user space, as `copy` does, until it
    /// is idle again.
    ///
    /// ```no_run
    /// use tokio::net::{TcpListener, TcpStream};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let listener = TcpListener::bind("127.0.0.1:8080").await?;
    /// let (mut client, _) = listener.accept().await?;
    /// let mut server = TcpStream::connect("127.0.0.1:9000").await?;
    /// let transfer = halfclose_io::Tunnel::new().copy_tcp(&mut client, &mut server).await?;
    /// println!("{transfer:?}");
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "net")]
    pub fn copy_tcp(
        self,
        a: &mut tokio::net::TcpStream,
        b: &mut tokio::net::TcpStream,
    ) -> impl Future<Output = Result<Transfer, TunnelError>> {
        #[cfg(all(target_os = "linux", feature = "splice"))]
        {
            use crate::splice::SpliceDuplex;
            let mut state = Relay::new(self, SpliceDuplex::new(), SpliceDuplex::new());
            poll_fn(move |cx| state.poll(cx, &mut *a, &mut *b))
        }
        #[cfg(not(all(target_os = "linux", feature = "splice")))]
        {
            self.copy(a, b)
        }
    }
}

/// Copies bytes both ways between `a` and `b`, passing each side's FIN on to the
/// other, until both directions are done.
///
/// This is [`Tunnel::new().copy(a, b)`](Tunnel::copy): see there for the full
/// contract. Like `tokio::io::copy_bidirectional`, one side's EOF is passed on
/// as a shutdown of the other's write half while the other direction keeps
/// running. What this adds: bytes already read are not dropped when the
/// other direction fails, an idle tunnel holds no copy buffer, optional idle
/// and half-close timeouts, an error that says which side reset (so a caller
/// can pass the reset on), and a [`Transfer`] report (bytes each way, who
/// closed first, how long it lived).
///
/// ```no_run
/// use tokio::net::{TcpListener, TcpStream};
///
/// # async fn run() -> std::io::Result<()> {
/// let listener = TcpListener::bind("127.0.0.1:8080").await?;
/// let (mut client, _) = listener.accept().await?;
/// let mut server = TcpStream::connect("127.0.0.1:9000").await?;
/// let transfer = halfclose_io::copy_bidirectional(&mut client, &mut server).await?;
/// println!("client sent {}, server sent {}", transfer.a_to_b, transfer.b_to_a);
/// # Ok(()) }
/// ```
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> Result<Transfer, TunnelError>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    Tunnel::new().copy(a, b).await
}

/// The running state of one tunnel, whatever moves the bytes of a direction
/// (`D`: a copy through user space, or splice).
struct Relay<D> {
    options: Tunnel,
    a_to_b: D,
    b_to_a: D,
    first_eof: Option<Side>,
    started: Instant,
    /// Last time a byte moved (or the first FIN was seen), kept only when a
    /// timer is set. Timers are re-armed from it lazily, when they fire, so the
    /// copy path never touches the timer wheel.
    last_active: Instant,
    idle: Option<Pin<Box<Sleep>>>,
    /// Armed once the first FIN is seen.
    half_close: Option<Pin<Box<Sleep>>>,
    /// Which direction goes first in the next poll (they take turns).
    b_first: bool,
}

impl<D: Progress> Relay<D> {
    fn new(options: Tunnel, a_to_b: D, b_to_a: D) -> Self {
        let started = Instant::now();
        Relay {
            options,
            a_to_b,
            b_to_a,
            first_eof: None,
            started,
            last_active: started,
            // Armed at the first poll: the state can be made outside a runtime.
            idle: None,
            half_close: None,
            b_first: true,
        }
    }

    fn transfer(&self) -> Transfer {
        Transfer {
            a_to_b: self.a_to_b.copied(),
            b_to_a: self.b_to_a.copied(),
            first_eof: self.first_eof,
            duration: self.started.elapsed(),
        }
    }

    fn fail(&self, direction: Direction, failure: Failure) -> TunnelError {
        TunnelError::io(failure.kind, direction, failure.error, self.transfer())
    }

    /// Drives one direction; on failure, offers the other direction's pending
    /// bytes once and returns the error.
    fn poll_direction<A, B>(
        &mut self,
        direction: Direction,
        cx: &mut Context<'_>,
        size: usize,
        a: &mut A,
        b: &mut B,
    ) -> Result<(), TunnelError>
    where
        A: ?Sized,
        B: ?Sized,
        D: Pump<A, B> + Pump<B, A>,
    {
        let failure = match direction {
            Direction::AToB if !self.a_to_b.is_done() => {
                match Pump::<A, B>::poll_pump(&mut self.a_to_b, cx, size, a, b) {
                    Poll::Ready(Err(failure)) => {
                        Pump::<B, A>::salvage(&mut self.b_to_a, cx, a);
                        failure
                    }
                    _ => return Ok(()),
                }
            }
            Direction::BToA if !self.b_to_a.is_done() => {
                match Pump::<B, A>::poll_pump(&mut self.b_to_a, cx, size, b, a) {
                    Poll::Ready(Err(failure)) => {
                        Pump::<A, B>::salvage(&mut self.a_to_b, cx, b);
                        failure
                    }
                    _ => return Ok(()),
                }
            }
            _ => return Ok(()),
        };
        Err(self.fail(direction, failure))
    }

    fn poll<A, B>(
        &mut self,
        cx: &mut Context<'_>,
        a: &mut A,
        b: &mut B,
    ) -> Poll<Result<Transfer, TunnelError>>
    where
        A: ?Sized,
        B: ?Sized,
        D: Pump<A, B> + Pump<B, A>,
    {
        // Deadlines are checked against the clock before any IO, not by polling
        // the timers after it: a direction that is always ready uses up tokio's
        // cooperative budget, and a `Sleep` polled without budget stays pending,
        // so traffic could otherwise hide an expired timer for ever.
        let timed =
            self.options.idle_timeout.is_some() || self.options.half_close_timeout.is_some();
        let now = timed.then(Instant::now);
        if let Some(now) = now {
            if let Some(err) = self.expired(now) {
                return Poll::Ready(Err(err));
            }
        }

        let size = self.options.buffer_size;
        let moved_before = self.a_to_b.copied() + self.b_to_a.copied();

        // Take turns at going first: tokio's cooperative budget is per task poll,
        // so a direction that always has data would otherwise use it all and
        // starve the other one.
        self.b_first = !self.b_first;
        let order = if self.b_first {
            [Direction::BToA, Direction::AToB]
        } else {
            [Direction::AToB, Direction::BToA]
        };
        for direction in order {
            if let Err(e) = self.poll_direction(direction, cx, size, a, b) {
                return Poll::Ready(Err(e));
            }
        }

        let newly_half_closed = self.first_eof.is_none()
            && match (self.a_to_b.read_eof(), self.b_to_a.read_eof()) {
                (true, _) => {
                    self.first_eof = Some(Side::A);
                    true
                }
                (false, true) => {
                    self.first_eof = Some(Side::B);
                    true
                }
                (false, false) => false,
            };

        if self.a_to_b.is_done() && self.b_to_a.is_done() {
            return Poll::Ready(Ok(self.transfer()));
        }

        let Some(now) = now else {
            return Poll::Pending;
        };
        if newly_half_closed || self.a_to_b.copied() + self.b_to_a.copied() != moved_before {
            self.last_active = now;
        }
        if newly_half_closed {
            if let Some(limit) = self.options.half_close_timeout {
                self.half_close = Some(Box::pin(tokio::time::sleep_until(now + limit)));
            }
        }
        if self.idle.is_none() {
            if let Some(limit) = self.options.idle_timeout {
                self.idle = Some(Box::pin(tokio::time::sleep_until(self.last_active + limit)));
            }
        }
        // Register for the timers' wake-ups. A timer that fires early (bytes moved
        // since it was armed) is pushed back to its real deadline; one whose
        // deadline has passed ends the tunnel.
        let last_active = self.last_active;
        let timers = [
            (self.idle.as_mut(), self.options.idle_timeout),
            (self.half_close.as_mut(), self.options.half_close_timeout),
        ];
        for (timer, limit) in timers {
            let (Some(timer), Some(limit)) = (timer, limit) else {
                continue;
            };
            while timer.as_mut().poll(cx).is_ready() {
                let deadline = last_active + limit;
                if deadline <= Instant::now() {
                    // Report it through the one check above.
                    cx.waker().wake_by_ref();
                    break;
                }
                timer.as_mut().reset(deadline);
            }
        }
        Poll::Pending
    }

    /// The timeout error, if a timer's deadline has passed at `now`.
    fn expired(&self, now: Instant) -> Option<TunnelError> {
        let since_active = now.saturating_duration_since(self.last_active);
        let over = |limit: Option<Duration>| limit.is_some_and(|l| since_active >= l);
        if self.half_close.is_some() && over(self.options.half_close_timeout) {
            let open = if self.a_to_b.is_done() {
                Direction::BToA
            } else {
                Direction::AToB
            };
            return Some(TunnelError::timeout(
                Kind::HalfCloseTimeout,
                Some(open),
                self.transfer(),
            ));
        }
        if over(self.options.idle_timeout) {
            return Some(TunnelError::timeout(
                Kind::IdleTimeout,
                None,
                self.transfer(),
            ));
        }
        None
    }
}
