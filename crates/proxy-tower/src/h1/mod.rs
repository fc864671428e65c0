//! The fast path of the default client: HTTP/1.1 requests with no body, or a
//! small one of known length, to a plain `http` upstream, sent and answered
//! in the task that calls the client.
//!
//! hyper-util's pooled client runs every upstream connection as its own task
//! and hands each request to it through a channel, and the response (and each
//! body chunk) back through others: four task wake-ups per request, and a
//! shared pool lock. Most proxied requests are GETs without a body or small
//! POSTs, which need none of that: here the caller's task writes the request head, reads the
//! response head, and (for a body already read with the head, the common case
//! for small responses) gives the connection back to the pool before it
//! returns the response. Idle connections are kept per thread and taken
//! from the caller's thread first, so that with one runtime per thread a
//! connection is used on the runtime that opened it.
//!
//! Larger or streamed request bodies, upgrades and `https` upstreams still
//! go through hyper-util: sending a long body while the response may already
//! be coming back needs a task of its own anyway.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::thread::ThreadId;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower_service::Service;

use crate::connect::{Connector, UpstreamIo};
use crate::{BoxError, RequestBody};

/// The most header fields a response head may carry (hyper's default).
const MAX_HEADERS: usize = 100;
/// The largest response head (or chunked trailer section) read.
const MAX_HEAD: usize = 1 << 20;
/// The longest chunk-size line (with extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Buffer space reserved before each read.
const READ_SIZE: usize = 16 * 1024;

/// The largest request body sent on the fast path: read whole before the
/// request goes out, then written with the head in one write, which a socket
/// buffer takes at once (so the body and an early response cannot wait on
/// each other).
const MAX_BODY: u64 = 64 * 1024;

/// True if `req` can take the fast path: no body, or one of a known length
/// up to [`MAX_BODY`]; no upgrade; not CONNECT.
pub(crate) fn fits(req: &Request<RequestBody>) -> bool {
    use http_body::Body as _;
    let body = req.body();
    (body.is_end_stream() || body.size_hint().exact().is_some_and(|n| n <= MAX_BODY))
        && req.method() != Method::CONNECT
        && !req.headers().contains_key(http::header::UPGRADE)
}

/// The whole body of a request that [`fits`]; its errors (a client gone, a
/// size limit in front of the proxy) are returned as they are.
async fn read_body(body: RequestBody) -> Result<Bytes, BoxError> {
    use http_body::Body as _;
    use http_body_util::BodyExt;
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let announced = body.size_hint().exact();
    let data = body.collect().await?.to_bytes();
    if announced != Some(data.len() as u64) {
        return Err(format!(
            "the request body was {} bytes, not the {announced:?} it announced",
            data.len()
        )
        .into());
    }
    Ok(data)
}

/// Connections to one upstream, and the idle ones kept for reuse.
pub(crate) struct Pool {
    connector: Connector,
    upstream: Uri,
    max_idle: usize,
    idle_timeout: Option<Duration>,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    /// Per thread, oldest first.
    threads: Vec<(ThreadId, VecDeque<Parked>)>,
    count: usize,
    sweeping: bool,
}

struct Parked {
    conn: Conn,
    since: Instant,
}

/// One connection to the upstream and the bytes read from it but not used yet.
struct Conn {
    io: TcpStream,
    buf: BytesMut,
}

thread_local! {
    static THREAD: ThreadId = std::thread::current().id();
}

fn this_thread() -> ThreadId {
    THREAD.with(|t| *t)
}

impl Pool {
    pub(crate) fn new(
        connector: Connector,
        upstream: Uri,
        max_idle: usize,
        idle_timeout: Option<Duration>,
    ) -> Arc<Self> {
        Arc::new(Pool {
            connector,
            upstream,
            max_idle,
            idle_timeout,
            idle: Mutex::default(),
        })
    }

    /// Sends `req` (which [`fits`]) and reads the response head.
    pub(crate) async fn send(
        self: Arc<Self>,
        req: Request<RequestBody>,
    ) -> Result<Response<Body>, BoxError> {
        let (mut parts, body) = req.into_parts();
        let body = read_body(body).await?;
        // The length sent is the length read: a field that disagrees (from a
        // body type whose size hint lies) would desynchronise the connection.
        if !body.is_empty() || parts.headers.contains_key(CONTENT_LENGTH) {
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        // The head and the body in one write.
        let mut head = encode(&parts, body.len());
        head.extend_from_slice(&body);
        let head_request = parts.method == Method::HEAD;
        let mut retry = is_idempotent(&parts);
        let mut fresh = false;
        loop {
            let idle = if fresh { None } else { self.checkout() };
            let reused = idle.is_some();
            let conn = match idle {
                Some(conn) => conn,
                None => self.connect().await?,
            };
            match round_trip(conn, &head, head_request).await {
                Ok((res, framing, conn)) => return Ok(self.respond(res, framing, conn)),
                // A reused connection the upstream closed as we sent: once
                // more on a new one, when sending twice is harmless, as Go's
                // Transport does.
                Err(e) if reused && retry && e.nothing_received => {
                    tracing::debug!(error = %e.error, "pooled upstream connection failed; retrying on a new one");
                    retry = false;
                    fresh = true;
                }
                Err(e) => return Err(e.error.into()),
            }
        }
    }

    async fn connect(&self) -> Result<Conn, BoxError> {
        let io = self
            .connector
            .clone()
            .call(self.upstream.clone())
            .await
            .map_err(|e| Box::new(ConnectError(e)) as BoxError)?;
        match io.into_inner() {
            UpstreamIo::Tcp(io) => Ok(Conn {
                io,
                buf: BytesMut::new(),
            }),
            #[cfg(feature = "tls")]
            UpstreamIo::Tls(_) => Err("the HTTP/1 fast path is for plain http upstreams".into()),
        }
    }

    fn respond(
        self: Arc<Self>,
        res: Response<()>,
        framing: Framing,
        mut conn: Conn,
    ) -> Response<Body> {
        let state = match framing.kind {
            Kind::Empty => {
                self.release(conn, framing.reusable);
                State::Done
            }
            // The whole body came with the head: the connection goes back
            // to the pool before the response is returned.
            Kind::Length(n) if n <= conn.buf.len() as u64 => {
                let data = conn.buf.split_to(n as usize).freeze();
                self.release(conn, framing.reusable);
                State::Ready(data)
            }
            Kind::Length(remaining) => State::Length { conn, remaining },
            Kind::Chunked => State::Chunked {
                conn,
                chunk: Chunk::Size,
            },
            Kind::Close => State::Close { conn },
        };
        res.map(|()| Body {
            state,
            reusable: framing.reusable,
            pool: Arc::downgrade(&self),
        })
    }

    /// An idle connection that is still open: this thread's newest first,
    /// else another thread's (on a work-stealing runtime all threads share
    /// one I/O driver; elsewhere the connection still works, its wake-ups
    /// going through the runtime that opened it).
    fn checkout(&self) -> Option<Conn> {
        let now = Instant::now();
        let thread = this_thread();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let Idle { threads, count, .. } = &mut *idle;
        let own = threads.iter().position(|(t, _)| *t == thread);
        let others = (0..threads.len()).filter(|i| Some(*i) != own);
        for i in own.into_iter().chain(others) {
            let parked = &mut threads[i].1;
            while let Some(p) = parked.pop_back() {
                *count -= 1;
                if self.expired(&p, now) {
                    // The rest are older still.
                    *count -= parked.len();
                    parked.clear();
                    break;
                }
                let mut conn = p.conn;
                if conn.is_open() {
                    return Some(conn);
                }
            }
        }
        None
    }

    fn expired(&self, p: &Parked, now: Instant) -> bool {
        self.idle_timeout
            .is_some_and(|limit| now.saturating_duration_since(p.since) >= limit)
    }

    /// Parks `conn` for reuse when it can be, else closes it.
    fn release(self: &Arc<Self>, conn: Conn, reusable: bool) {
        if !reusable || !conn.buf.is_empty() || self.max_idle == 0 {
            return;
        }
        let thread = this_thread();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let Idle {
            threads,
            count,
            sweeping,
        } = &mut *idle;
        let parked = match threads.iter().position(|(t, _)| *t == thread) {
            Some(i) => &mut threads[i].1,
            None => {
                threads.push((thread, VecDeque::new()));
                &mut threads.last_mut().expect("just pushed").1
            }
        };
        if *count >= self.max_idle {
            // Full: this thread's oldest makes room, or this one is closed.
            if parked.pop_front().is_none() {
                return;
            }
            *count -= 1;
        }
        parked.push_back(Parked {
            conn,
            since: Instant::now(),
        });
        *count += 1;
        if *sweeping {
            return;
        }
        if let (Some(limit), Ok(rt)) = (self.idle_timeout, tokio::runtime::Handle::try_current()) {
            *sweeping = true;
            // Not under the lock: a runtime shutting down drops the task at
            // once, and `Running` takes the lock.
            drop(idle);
            rt.spawn(sweep(Running(Arc::downgrade(self)), limit));
        }
    }
}

/// Closes connections idle past the timeout, until none is left idle (the
/// next parked connection starts it again) or the pool is dropped.
async fn sweep(mut running: Running, limit: Duration) {
    let every = limit.max(Duration::from_millis(100));
    let pool = running.0.clone();
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        let Idle {
            threads,
            count,
            sweeping,
        } = &mut *idle;
        for (_, parked) in threads.iter_mut() {
            while parked.front().is_some_and(|p| pool.expired(p, now)) {
                parked.pop_front();
                *count -= 1;
            }
        }
        if *count == 0 {
            *sweeping = false;
            running.0 = Weak::new();
            return;
        }
    }
}

/// Marks a pool's sweeper as gone when its task ends, run or not (a task
/// dropped by a runtime that shut down): the next parked connection starts
/// another.
struct Running(Weak<Pool>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(pool) = self.0.upgrade() {
            pool.idle.lock().unwrap_or_else(|e| e.into_inner()).sweeping = false;
        }
    }
}

impl Conn {
    /// False if the upstream closed the idle connection (or sent bytes
    /// nobody asked for). Costs no system call unless the socket turned
    /// readable since its last read.
    fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                self.io.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_SIZE);
        let read = self.io.read_buf(&mut self.buf);
        std::pin::pin!(read).poll(cx)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Reads more of a response body: `false` at EOF.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, Error>> {
        self.poll_fill(cx)
            .map_ok(|n| n > 0)
            .map_err(|e| Error::Io("reading the response body", e))
    }
}

/// A failed exchange, and whether the upstream answered nothing at all.
struct Failed {
    error: Error,
    nothing_received: bool,
}

/// Writes the request head and reads the response head (after any 1xx).
async fn round_trip(
    mut conn: Conn,
    head: &[u8],
    head_request: bool,
) -> Result<(Response<()>, Framing, Conn), Failed> {
    // If the write fails, the upstream may still have answered before it
    // closed (a 408 on an old connection, a 413 before the body): that
    // answer is read, and relayed, and the connection not reused.
    let write_error = conn.io.write_all(head).await.err();
    let mut informational = false;
    loop {
        if !conn.buf.is_empty() {
            match parse_head(&mut conn.buf, head_request) {
                Ok(Some((res, _))) if res.status().is_informational() => {
                    // 100 Continue, 103 Early Hints: not relayed (as
                    // hyper-util's client does not). 101 never comes here:
                    // upgrades take the other path.
                    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(Failed {
                            error: Error::Invalid(
                                "101 Switching Protocols to a request without Upgrade".into(),
                            ),
                            nothing_received: false,
                        });
                    }
                    informational = true;
                    continue;
                }
                Ok(Some((res, mut framing))) => {
                    framing.reusable &= write_error.is_none();
                    return Ok((res, framing, conn));
                }
                Ok(None) => {}
                Err(error) => {
                    return Err(Failed {
                        error,
                        nothing_received: false,
                    });
                }
            }
        }
        if conn.buf.len() >= MAX_HEAD {
            return Err(Failed {
                error: Error::Invalid(format!("response head over {MAX_HEAD} bytes")),
                nothing_received: false,
            });
        }
        let nothing_yet = conn.buf.is_empty() && !informational;
        let error = match conn.fill().await {
            Ok(0) => Error::Closed(match nothing_yet {
                true => "the upstream closed the connection without a response",
                false => "the upstream closed the connection in the response head",
            }),
            Ok(_) => continue,
            Err(e) => Error::Io("reading the response", e),
        };
        // A failed write explains the end better than the read after it.
        return Err(Failed {
            error: match write_error {
                Some(e) => Error::Io("sending the request", e),
                None => error,
            },
            nothing_received: nothing_yet,
        });
    }
}

/// Writes the request head: origin-form target, `Host` from the URI when the
/// request has none, and no `Transfer-Encoding` (a body, if any, is sent
/// whole with its `Content-Length`). `body`: room to keep for it.
fn encode(parts: &http::request::Parts, body: usize) -> Vec<u8> {
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let mut out = Vec::with_capacity(256 + parts.headers.len() * 32 + body);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(HOST) {
        if let Some(host) = parts.uri.host() {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(host.as_bytes());
            if let Some(port) = parts.uri.port_u16().filter(|p| *p != 80) {
                out.extend_from_slice(format!(":{port}").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    for (name, value) in &parts.headers {
        if name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Safe to send twice: Go's Transport's rule (the safe methods of RFC 9110
/// section 9.2.1, or an `Idempotency-Key`). PUT and DELETE are idempotent by
/// RFC 9110 section 9.2.2, but not every application makes them so.
fn is_idempotent(parts: &http::request::Parts) -> bool {
    matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) || parts.headers.contains_key("idempotency-key")
        || parts.headers.contains_key("x-idempotency-key")
}

/// How a response body is delimited (RFC 9112 section 6.3), and whether the
/// connection can carry another request after it.
struct Framing {
    kind: Kind,
    reusable: bool,
}

enum Kind {
    Empty,
    Length(u64),
    Chunked,
    Close,
}

/// Parses a complete response head off the front of `buf`; `None` if more
/// bytes are needed.
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<(Response<()>, Framing)>, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Error::Invalid(format!("invalid response head: {e}"))),
    };
    let base = buf.as_ptr() as usize;
    let code = parsed.code.unwrap_or_default();
    let status = StatusCode::from_u16(code)
        .map_err(|_| Error::Invalid(format!("invalid status code {code}")))?;
    let version = match parsed.version {
        Some(0) => http::Version::HTTP_10,
        _ => http::Version::HTTP_11,
    };
    let reason = parsed
        .reason
        .filter(|r| !r.is_empty() && Some(*r) != status.canonical_reason())
        .map(|r| {
            let start = r.as_ptr() as usize - base;
            start..start + r.len()
        });
    // Where each field lies in the head, to share its bytes.
    let mut spans = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
    let n = parsed.headers.len();
    for (span, field) in spans.iter_mut().zip(parsed.headers.iter()) {
        let name = field.name.as_ptr() as usize - base;
        let value = field.value.as_ptr() as usize - base;
        *span = (name, field.name.len(), value, field.value.len());
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(n);
    for &(name, name_len, value, value_len) in &spans[..n] {
        let name = HeaderName::from_bytes(&head[name..name + name_len])
            .map_err(|_| Error::Invalid("invalid header name in the response".into()))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value..value + value_len))
            .map_err(|_| Error::Invalid(format!("invalid value for {name} in the response")))?;
        headers.append(name, value);
    }
    let framing = framing(status, version, &mut headers, head_request)?;
    let mut res = Response::new(());
    *res.status_mut() = status;
    *res.version_mut() = version;
    *res.headers_mut() = headers;
    if let Some(reason) = reason {
        if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(head.slice(reason)) {
            res.extensions_mut().insert(reason);
        }
    }
    Ok(Some((res, framing)))
}

fn framing(
    status: StatusCode,
    version: http::Version,
    headers: &mut HeaderMap,
    head_request: bool,
) -> Result<Framing, Error> {
    let mut reusable = match version {
        http::Version::HTTP_10 => proxy_core::has_token(headers, &CONNECTION, "keep-alive"),
        _ => !proxy_core::has_token(headers, &CONNECTION, "close"),
    };
    let kind = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Kind::Empty
    } else if headers.contains_key(TRANSFER_ENCODING) {
        if version == http::Version::HTTP_10 {
            return Err(Error::Invalid(
                "Transfer-Encoding in an HTTP/1.0 response".into(),
            ));
        }
        // RFC 9112 section 6.3: Transfer-Encoding overrides Content-Length,
        // and such a connection is not reused.
        if headers.remove(CONTENT_LENGTH).is_some() {
            reusable = false;
        }
        let last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim);
        match last {
            Some(coding) if coding.eq_ignore_ascii_case("chunked") => Kind::Chunked,
            _ => Kind::Close,
        }
    } else if headers.contains_key(CONTENT_LENGTH) {
        let mut length = None;
        for value in headers.get_all(CONTENT_LENGTH) {
            let text = value.to_str().unwrap_or_default();
            for part in text.split(',') {
                let part = part.trim();
                let n = (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| part.parse::<u64>().ok())
                    .flatten()
                    .ok_or_else(|| Error::Invalid(format!("invalid Content-Length {text:?}")))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Error::Invalid("Content-Length values disagree".into()));
                }
                length = Some(n);
            }
        }
        match length {
            Some(0) => Kind::Empty,
            Some(n) => Kind::Length(n),
            None => return Err(Error::Invalid("empty Content-Length".into())),
        }
    } else {
        Kind::Close
    };
    if matches!(kind, Kind::Close) {
        reusable = false;
    }
    Ok(Framing { kind, reusable })
}

/// The response body from the fast path: streamed from the connection, which
/// returns to the pool once the body has been read to its end.
pub(crate) struct Body {
    state: State,
    reusable: bool,
    pool: Weak<Pool>,
}

enum State {
    /// The whole body, read with the head.
    Ready(Bytes),
    Length {
        conn: Conn,
        remaining: u64,
    },
    Chunked {
        conn: Conn,
        chunk: Chunk,
    },
    Close {
        conn: Conn,
    },
    Done,
}

#[derive(Clone, Copy)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

impl Body {
    /// The body is read to its end: its connection goes back to the pool.
    fn finish(&mut self) {
        if let State::Length { conn, .. } | State::Chunked { conn, .. } | State::Close { conn } =
            std::mem::replace(&mut self.state, State::Done)
        {
            if let Some(pool) = self.pool.upgrade() {
                pool.release(conn, self.reusable);
            }
        }
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = State::Done;
        Poll::Ready(Some(Err(e.into())))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Ready(data) => {
                    let data = std::mem::take(data);
                    this.state = State::Done;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Length { conn, remaining } => {
                    if conn.buf.is_empty() {
                        match ready!(conn.poll_more(cx)) {
                            Ok(true) => {}
                            Ok(false) => {
                                let missing = *remaining;
                                return this.fail(Error::ClosedBody(missing));
                            }
                            Err(e) => return this.fail(e),
                        }
                    }
                    let take = (*remaining).min(conn.buf.len() as u64);
                    let data = conn.buf.split_to(take as usize).freeze();
                    *remaining -= take;
                    if *remaining == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Close { conn } => {
                    if conn.buf.is_empty() {
                        match ready!(conn.poll_more(cx)) {
                            Ok(true) => {}
                            Ok(false) => {
                                this.state = State::Done;
                                return Poll::Ready(None);
                            }
                            Err(e) => return this.fail(e),
                        }
                    }
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked { conn, chunk } => match decode(conn, chunk) {
                    Ok(Step::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                    Ok(Step::Continue) => {}
                    Ok(Step::End(trailers)) => {
                        this.finish();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(Step::NeedBytes) => match ready!(conn.poll_more(cx)) {
                        Ok(true) => {}
                        Ok(false) => {
                            return this.fail(Error::Closed(
                                "the upstream closed the connection inside a chunked body",
                            ));
                        }
                        Err(e) => return this.fail(e),
                    },
                    Err(e) => return this.fail(e),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Done => SizeHint::with_exact(0),
            State::Ready(data) => SizeHint::with_exact(data.len() as u64),
            State::Length { remaining, .. } => SizeHint::with_exact(*remaining),
            State::Chunked { .. } | State::Close { .. } => SizeHint::default(),
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("h1::Body")
    }
}

enum Step {
    Frame(Frame<Bytes>),
    Continue,
    NeedBytes,
    End(Option<HeaderMap>),
}

/// One step of the chunked decoder (RFC 9112 section 7.1) over the bytes read.
fn decode(conn: &mut Conn, chunk: &mut Chunk) -> Result<Step, Error> {
    let buf = &mut conn.buf;
    match *chunk {
        Chunk::Size => {
            let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                if buf.len() > MAX_CHUNK_LINE {
                    return Err(Error::Invalid("chunk-size line too long".into()));
                }
                return Ok(Step::NeedBytes);
            };
            let line = &buf[..end];
            let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            let rest = &line[digits..];
            let ext_ok = rest.is_empty()
                || matches!(
                    rest.iter().find(|b| **b != b' ' && **b != b'\t'),
                    Some(b';')
                );
            if digits == 0 || digits > 16 || !ext_ok {
                return Err(Error::Invalid("invalid chunk-size line".into()));
            }
            let size = std::str::from_utf8(&line[..digits])
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or_else(|| Error::Invalid("invalid chunk size".into()))?;
            let _ = buf.split_to(end + 2);
            *chunk = match size {
                0 => Chunk::Trailers,
                n => Chunk::Data(n),
            };
            Ok(Step::Continue)
        }
        Chunk::Data(remaining) => {
            if buf.is_empty() {
                return Ok(Step::NeedBytes);
            }
            let take = remaining.min(buf.len() as u64);
            let data = buf.split_to(take as usize).freeze();
            *chunk = match remaining - take {
                0 => Chunk::DataEnd,
                n => Chunk::Data(n),
            };
            Ok(Step::Frame(Frame::data(data)))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::NeedBytes);
            }
            if &buf[..2] != b"\r\n" {
                return Err(Error::Invalid("chunk data not followed by CRLF".into()));
            }
            let _ = buf.split_to(2);
            *chunk = Chunk::Size;
            Ok(Step::Continue)
        }
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") {
                let _ = buf.split_to(2);
                return Ok(Step::End(None));
            }
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::parse_headers(buf, &mut fields) {
                Ok(httparse::Status::Complete((len, fields))) => {
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for field in fields.iter() {
                        let (Ok(name), Ok(value)) = (
                            HeaderName::from_bytes(field.name.as_bytes()),
                            HeaderValue::from_bytes(field.value),
                        ) else {
                            return Err(Error::Invalid("invalid trailer field".into()));
                        };
                        trailers.append(name, value);
                    }
                    let _ = buf.split_to(len);
                    Ok(Step::End(Some(trailers)))
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Ok(Step::NeedBytes),
                Ok(httparse::Status::Partial) => {
                    Err(Error::Invalid("trailer section too large".into()))
                }
                Err(e) => Err(Error::Invalid(format!("invalid trailer section: {e}"))),
            }
        }
    }
}

/// Why the fast path failed.
#[derive(Debug)]
pub(crate) enum Error {
    Io(&'static str, io::Error),
    Invalid(String),
    Closed(&'static str),
    ClosedBody(u64),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(doing, e) => write!(f, "{doing}: {e}"),
            Error::Invalid(why) => write!(f, "invalid response from the upstream: {why}"),
            Error::Closed(why) => f.write_str(why),
            Error::ClosedBody(missing) => write!(
                f,
                "the upstream closed the connection {missing} bytes before the end of the body"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(_, e) => Some(e),
            _ => None,
        }
    }
}

/// The upstream could not be reached: nothing was sent.
#[derive(Debug)]
pub(crate) struct ConnectError(BoxError);

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connecting to the upstream: {}", self.0)
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}
