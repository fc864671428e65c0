//! One client connection, from accept to close: protocol detection under the
//! header-read timeout, then hyper's HTTP/1 or HTTP/2 server, closed when idle,
//! shed under pressure, and shut down gracefully on a signal.
//!
//! hyper-util's auto builder reads a connection's first bytes to tell HTTP/1
//! from HTTP/2 with no time limit, so a socket that sends nothing holds its
//! connection slot forever. Here the first bytes (for HTTP/2, the preface and
//! the first SETTINGS frame) must arrive within the header-read timeout, and
//! an HTTP/1 connection must have sent a whole request head by then.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use proxy_tower::{BoxError, ClientInfo, ClientIo};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame header length and the SETTINGS frame type (RFC 9113 sections 4.1, 6.5).
const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
/// The largest first SETTINGS frame we wait for (the default max frame size);
/// a larger one is handed to hyper, which refuses it.
const MAX_SETTINGS: usize = 16_384;

/// How client connections are served; shared by all of them.
pub(crate) struct Settings {
    /// Time from accept to a complete first request head (HTTP/1) or the
    /// preface and SETTINGS (HTTP/2); also hyper's limit for later heads.
    header_read_timeout: Duration,
    /// Close a connection with no request in flight for this long.
    idle_timeout: Option<Duration>,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// Serve HTTPS: a TLS handshake first, then the protocol ALPN chose.
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Settings {
    pub(crate) fn new(
        header_read_timeout: Duration,
        idle_timeout: Option<Duration>,
        ping_interval: Option<Duration>,
        max_streams: u32,
    ) -> Self {
        let mut h1 = http1::Builder::new();
        // Each connection gives it a `HeadTimer` of its own.
        h1.header_read_timeout(header_read_timeout)
            // A client that sends its request (an upgrade, say) and its FIN at
            // once still gets its answer; the FIN then reaches the upstream.
            .half_close(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            // RFC 8441: WebSockets (and other upgrades) over HTTP/2 streams.
            .enable_connect_protocol()
            // Each stream can hold an upstream connection (hyper allows 200).
            .max_concurrent_streams(max_streams)
            .keep_alive_interval(ping_interval)
            .keep_alive_timeout(ping_interval.unwrap_or(Duration::from_secs(20)));
        Settings {
            header_read_timeout,
            idle_timeout,
            http1: h1,
            http2: h2,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// True when connections are served over TLS.
    pub(crate) fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// Serves HTTPS through `acceptor`.
    #[cfg(feature = "tls")]
    pub(crate) fn tls(mut self, acceptor: tokio_rustls::TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }
}

/// The server-wide signals every connection listens to.
#[derive(Clone)]
pub(crate) struct Signals {
    /// Turns true once: stop taking requests, finish what is in flight.
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) pressure: Pressure,
    /// Held while the connection's task runs; the server waits for all to drop.
    pub(crate) running: mpsc::Sender<()>,
}

/// "At the connection limit, with a client waiting": idle connections close.
#[derive(Clone)]
pub(crate) struct Pressure {
    on: Arc<AtomicBool>,
    pulse: watch::Sender<()>,
}

impl Pressure {
    pub(crate) fn new() -> Self {
        Pressure {
            on: Arc::default(),
            pulse: watch::Sender::new(()),
        }
    }

    /// A client waits for a slot: idle connections close now, and busy ones
    /// as soon as they become idle, until [`lower`](Pressure::lower).
    pub(crate) fn raise(&self) {
        self.on.store(true, Ordering::Release);
        self.pulse.send_replace(());
    }

    pub(crate) fn lower(&self) {
        self.on.store(false, Ordering::Release);
    }

    fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }
}

/// What one connection is doing, as its requests see it.
struct Activity {
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
    fn new(pressure: Pressure) -> Self {
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
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
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
    pub(crate) struct Tracked<B> {
        #[pin]
        body: B,
        _in_flight: InFlight,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Reads the connection's first bytes: one byte that cannot start the HTTP/2
/// preface means HTTP/1; the whole preface and the first frame header and
/// payload (which must be SETTINGS) mean HTTP/2. `None` at EOF.
async fn sniff(tcp: &mut TcpStream) -> std::io::Result<Option<(Protocol, Bytes)>> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if tcp.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
        let n = buf.len().min(PREFACE.len());
        if buf[..n] != PREFACE[..n] {
            return Ok(Some((Protocol::Http1, buf.freeze())));
        }
        if buf.len() < PREFACE.len() + FRAME_HEADER {
            continue;
        }
        let frame = &buf[PREFACE.len()..];
        let len = u32::from_be_bytes([0, frame[0], frame[1], frame[2]]) as usize;
        // Not SETTINGS, or too large to wait for: hyper answers with GOAWAY.
        if frame[3] != SETTINGS
            || len > MAX_SETTINGS
            || buf.len() >= PREFACE.len() + FRAME_HEADER + len
        {
            return Ok(Some((Protocol::Http2, buf.freeze())));
        }
    }
}

/// The service a connection's requests go to: the proxy, in its stack of
/// layers (`stack.rs`).
pub(crate) trait RequestService<B>:
    tower::Service<
        http::Request<Incoming>,
        Response = http::Response<B>,
        Error = std::convert::Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> RequestService<B> for S where
    S: tower::Service<
            http::Request<Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
            Future: Send,
        > + Clone
        + Send
        + 'static
{
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
    // The client's reads that returned bytes, for the header-read timer.
    let reads = Arc::new(AtomicU64::new(0));
    let conn = |tls, protocol| Conn {
        peer,
        tls,
        protocol,
        first_head_by,
        reads: reads.clone(),
        proxy,
        settings: &settings,
        signals,
    };
    let mut opening = Opening {
        peer,
        by: first_head_by,
        limit: settings.header_read_timeout,
        shutdown: &mut shutdown,
    };
    #[cfg(feature = "tls")]
    if let Some(acceptor) = &settings.tls {
        // The handshake counts against the header-read timeout: a stalled one
        // holds its slot no longer than a silent plain socket.
        let handshake = acceptor.accept(ClientIo::new(tcp).hold(permit).count_reads(reads.clone()));
        let Some(tls) = opening.step(handshake, "TLS handshake").await else {
            return;
        };
        let protocol = match tls.get_ref().1.alpn_protocol() {
            Some(b"h2") => Protocol::Http2,
            _ => Protocol::Http1,
        };
        return conn(true, protocol).run(TokioIo::new(tls)).await;
    }
    let Some(Some((protocol, prefix))) = opening.step(sniff(&mut tcp), "first request").await
    else {
        return;
    };
    let io = TokioIo::new(
        ClientIo::new(tcp)
            .with_prefix(prefix)
            .hold(permit)
            .count_reads(reads.clone()),
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

/// A connection whose protocol is known.
struct Conn<'a, S> {
    peer: SocketAddr,
    /// Served over TLS: the client's scheme is `https` (X-Forwarded-Proto).
    tls: bool,
    protocol: Protocol,
    first_head_by: Instant,
    reads: Arc<AtomicU64>,
    proxy: S,
    settings: &'a Settings,
    signals: Signals,
}

impl<S> Conn<'_, S> {
    /// Serves `io` with hyper until the connection ends.
    async fn run<I, B>(self, io: TokioIo<I>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: RequestService<B>,
        B: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
    {
        let Conn {
            peer,
            tls,
            protocol,
            first_head_by,
            reads,
            proxy,
            settings,
            signals:
                Signals {
                    shutdown,
                    pressure,
                    running: _running,
                },
        } = self;
        let activity = Arc::new(Activity::new(pressure.clone()));
        let client = ClientInfo::new(peer.ip().to_canonical()).tls(tls);
        let svc = {
            let activity = activity.clone();
            hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                let in_flight = InFlight::start(&activity);
                req.extensions_mut().insert(client);
                let mut proxy = proxy.clone();
                // The request path is ready at once (`Edge` and the proxies
                // under it always are): call it here, so that the future
                // hyper holds is the path's own (a box), not a `Oneshot`
                // carrying the request and the service. Otherwise, wait.
                let noop = &mut Context::from_waker(std::task::Waker::noop());
                let call = match proxy.poll_ready(noop) {
                    Poll::Ready(Ok(())) => futures_util::future::Either::Left(proxy.call(req)),
                    Poll::Ready(Err(never)) => match never {},
                    Poll::Pending => {
                        futures_util::future::Either::Right(Box::pin(proxy.oneshot(req)))
                    }
                };
                async move {
                    let res = call.await?;
                    Ok::<_, std::convert::Infallible>(res.map(|body| Tracked {
                        body,
                        _in_flight: in_flight,
                    }))
                }
            })
        };
        let watch = Watch {
            peer,
            protocol,
            activity: &activity,
            idle_timeout: settings.idle_timeout,
            shutdown,
            pressure,
        };
        match protocol {
            Protocol::Http1 => {
                // A timer of its own for the header-read timeout (head_timer.rs).
                let mut http1 = settings.http1.clone();
                http1.timer(crate::head_timer::HeadTimer::new(
                    settings.header_read_timeout,
                    reads,
                ));
                let conn = http1.serve_connection(io, svc).with_upgrades();
                watch
                    .drive(conn, Some(first_head_by), |c| c.graceful_shutdown())
                    .await
            }
            Protocol::Http2 => {
                let conn = settings.http2.serve_connection(io, svc);
                watch.drive(conn, None, |c| c.graceful_shutdown()).await
            }
        }
    }
}

/// Rings (counts, and wakes the connection's task) when one of the futures
/// [`gated`] wraps was woken.
#[derive(Default)]
struct Doorbell {
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
fn gated<'a, F: Future>(
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
    struct Gated<'a, F> {
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
    fn registering(mut self) -> Self {
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

/// Resolves once the server shuts down.
pub(crate) async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The timers and signals around one hyper connection.
struct Watch<'a> {
    peer: SocketAddr,
    protocol: Protocol,
    activity: &'a Activity,
    idle_timeout: Option<Duration>,
    shutdown: watch::Receiver<bool>,
    pressure: Pressure,
}

impl Watch<'_> {
    /// Runs `conn` to its end. With `first_head_by`, a connection that has not
    /// made a request by then is closed at once; an idle one is shut down
    /// gracefully after the idle timeout, on shutdown, or under pressure.
    async fn drive<C, E>(
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
