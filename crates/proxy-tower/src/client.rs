//! The client a `ReverseProxy` uses unless given another.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HOST;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::{Client, ResponseFuture as PooledFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;
use tower_service::Service;

use crate::config::Config;
use crate::connect::Connector;
use crate::{BoxError, RequestBody, UpstreamBody, h1};

/// The client a [`ReverseProxy`](crate::ReverseProxy) uses unless given another:
/// TCP to the one upstream, and TLS over it for `https` upstreams. Over
/// HTTP/1.1, a pool of connections (at most
/// [`pool_max_idle`](crate::Builder::pool_max_idle) idle ones, expired after
/// [`pool_idle_timeout`](crate::Builder::pool_idle_timeout)); with
/// [`http2_only`](crate::Builder::http2_only), one multiplexed HTTP/2
/// connection, made again when it closes.
///
/// To a plain `http` upstream, a request that is not an upgrade and has no
/// body, or one of a known length up to 64 KiB (most GETs, small POSTs), is
/// sent and answered in the task that calls the client, on an HTTP/1.1 path
/// of this crate: no connection task, no channel, and the connection goes
/// back to the pool as soon as the response body has been read (before the
/// response is returned, when the body came with the head). Such a request
/// body is read whole first and sent with the head in one write; a body that
/// fails is not sent at all. Idle connections are then kept per thread
/// (taken from the caller's thread first), up to `pool_max_idle` in all.
/// Other requests go through hyper-util's pooled client. Either way the
/// response body is an [`UpstreamBody`].
///
/// For `https` (cargo feature `tls`, on by default) it verifies the upstream's
/// certificate against the bundled web PKI roots (Mozilla's, from
/// `webpki-roots`), or against the CA set with
/// [`upstream_ca_pem`](crate::Builder::upstream_ca_pem) instead; sends the
/// upstream's host as SNI; and offers `h2` and `http/1.1` by ALPN, so an
/// upstream that picks `h2` gets HTTP/2 without prior knowledge. Upgrade
/// requests go over connections that offered `http/1.1` alone, since HTTP/2
/// has no `Upgrade`.
///
/// Over HTTP/2 it sends a request's `host` field, when there is one, as the
/// `:authority` (RFC 9113 section 8.3.1 forbids them to disagree), while it
/// always connects to the upstream it was built for: so
/// [`HostHeader::Preserve`](crate::HostHeader::Preserve) works with HTTP/2
/// upstreams, and a client's Host can never choose where the proxy connects.
#[derive(Clone)]
pub struct DefaultClient {
    kind: Kind,
    /// The cap on requests in flight to the upstream (one `Arc`: the proxy
    /// clones its client for every request).
    slots: Option<Arc<Slots>>,
}

/// Requests in flight to one upstream, at most, and how long a request
/// waits for a slot.
struct Slots {
    permits: Arc<tokio::sync::Semaphore>,
    max: usize,
    wait: std::time::Duration,
    refusals: Refusals,
    upstream: Uri,
}

impl Slots {
    /// A slot now, or after a wait of up to `wait`, else [`Busy`].
    async fn acquire(&self) -> Result<OwnedSemaphorePermit, BoxError> {
        let wait = self.wait;
        match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                self.refusals
                    .count(&self.upstream, "upstream connection cap reached");
                Err(Box::new(Busy(format!(
                    "{} requests in flight to the upstream; no slot free within {wait:?}",
                    self.max
                ))))
            }
        }
    }
}

/// Requests refused at the cap, logged once per burst: a WARN at the first,
/// then at most one every [`Refusals::EVERY`] while they go on, with their
/// number (each refusal alone is a DEBUG line).
#[derive(Default)]
struct Refusals {
    since_logged: std::sync::atomic::AtomicU64,
    /// When the last WARN was written, in seconds after the first refusal's
    /// epoch, plus one; 0: never.
    logged_at: std::sync::atomic::AtomicU64,
}

impl Refusals {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    fn count(&self, upstream: &Uri, why: &'static str) {
        use std::sync::atomic::Ordering;
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now = EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs()
            + 1;
        self.since_logged.fetch_add(1, Ordering::Relaxed);
        let last = self.logged_at.load(Ordering::Relaxed);
        if last != 0 && now < last + Self::EVERY.as_secs() {
            return;
        }
        if self
            .logged_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let refused = self.since_logged.swap(0, Ordering::Relaxed);
            tracing::warn!(
                %upstream,
                refused,
                "{why}: requests answered 503 (logged at most every 10 s)"
            );
        }
    }
}

/// What a response body holds until it ends: its slot under the connection
/// cap, and its HTTP/2 stream's.
#[derive(Default)]
pub(crate) struct Held {
    // Held for their `Drop`.
    _permit: Option<OwnedSemaphorePermit>,
    _stream: Option<StreamSlot>,
}

impl Held {
    fn permit(permit: Option<OwnedSemaphorePermit>) -> Self {
        Held {
            _permit: permit,
            _stream: None,
        }
    }
}

/// The upstream could take no more of this proxy's requests in time (its
/// connection cap, or its HTTP/2 streams): nothing was sent.
#[derive(Debug)]
pub(crate) struct Busy(pub(crate) String);

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Busy {}

#[derive(Clone)]
enum Kind {
    // Behind an `Arc`: the proxy clones its client for every request.
    Http1(Arc<Http1>),
    Http2(Arc<Http2>),
}

struct Http1 {
    /// Requests to an `http` upstream that `h1::fits` (no body or a small
    /// one, no upgrade): `h1.rs`.
    fast: Option<Arc<h1::Pool>>,
    pooled: Client<Connector, RequestBody>,
    /// For upgrades to an `https` upstream: connections that offer only
    /// `http/1.1` by ALPN.
    upgrades: Option<Client<Connector, RequestBody>>,
}

impl fmt::Debug for DefaultClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Http1(_) => "DefaultClient(http/1.1)",
            Kind::Http2(_) => "DefaultClient(h2)",
        })
    }
}

impl DefaultClient {
    pub(crate) fn new(config: &Config) -> Self {
        let slots = config.max_connections.map(|max| {
            Arc::new(Slots {
                permits: Arc::new(tokio::sync::Semaphore::new(max)),
                max,
                wait: config.queue_timeout,
                refusals: Refusals::default(),
                upstream: config.rules.upstream().clone(),
            })
        });
        DefaultClient {
            kind: Self::kind(config),
            slots,
        }
    }

    fn kind(config: &Config) -> Kind {
        let connector = Connector::new(config.connect_timeout);
        let https = config.rules.upstream().scheme() == Some(&http::uri::Scheme::HTTPS);
        #[cfg(feature = "tls")]
        let with_alpn = |alpn: &[&[u8]]| -> Connector {
            if !https {
                return connector.clone();
            }
            let ca = config.upstream_ca.as_deref();
            connector
                .clone()
                .tls(crate::connect::tls::client_config(ca, alpn))
        };
        // `Builder::build` refuses `https` upstreams without the feature.
        #[cfg(not(feature = "tls"))]
        let with_alpn = |_: &[&[u8]]| connector.clone();
        if config.http2_only {
            return Kind::Http2(Arc::new(Http2 {
                connector: with_alpn(&[b"h2"]),
                upstream: config.rules.upstream().clone(),
                conn: tokio::sync::Mutex::new(None),
                stream_wait: config.queue_timeout,
                refusals: Refusals::default(),
            }));
        }
        let pooled = |connector: Connector| {
            let mut client = Client::builder(TokioExecutor::new());
            client
                // Without a timer, hyper-util never expires idle connections.
                .pool_timer(TokioTimer::new())
                .pool_max_idle_per_host(config.pool_max_idle)
                .pool_idle_timeout(config.pool_idle_timeout);
            client.build(connector)
        };
        let upgrades = match https {
            true => Some(pooled(with_alpn(&[b"http/1.1"]))),
            false => None,
        };
        let fast = (!https).then(|| {
            h1::Pool::new(
                connector.clone(),
                config.rules.upstream().clone(),
                config.pool_max_idle,
                config.pool_idle_timeout,
            )
        });
        Kind::Http1(Arc::new(Http1 {
            fast,
            pooled: pooled(with_alpn(&[b"h2", b"http/1.1"])),
            upgrades,
        }))
    }
}

impl Service<Request<RequestBody>> for DefaultClient {
    type Response = Response<UpstreamBody>;
    type Error = BoxError;
    type Future = DefaultClientFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> DefaultClientFuture {
        // A slot at once, or the request waits for one in a future of its own.
        let permit = match &self.slots {
            None => None,
            Some(slots) => match slots.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let (slots, mut this) = (slots.clone(), self.clone());
                    return DefaultClientFuture {
                        inner: Inner::Boxed {
                            fut: Box::pin(async move {
                                let permit = slots.acquire().await?;
                                let res = this.send(req, Some(permit)).await?;
                                Ok(res)
                            }),
                        },
                    };
                }
            },
        };
        self.send(req, permit)
    }
}

impl DefaultClient {
    /// Sends `req` holding `permit` (given back when the response body
    /// ends or is dropped).
    fn send(
        &mut self,
        req: Request<RequestBody>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> DefaultClientFuture {
        match &self.kind {
            Kind::Http1(h1) => {
                if let Some(pool) = h1.fast.as_ref().filter(|_| h1::fits(&req)) {
                    let pool = pool.clone();
                    return DefaultClientFuture {
                        inner: Inner::Boxed {
                            fut: Box::pin(async move {
                                let res = h1::send(pool, req).await?;
                                Ok(res.map(|b| UpstreamBody::h1(b).holding(Held::permit(permit))))
                            }),
                        },
                    };
                }
                let client = match &h1.upgrades {
                    Some(c) if req.headers().contains_key(http::header::UPGRADE) => c,
                    _ => &h1.pooled,
                };
                DefaultClientFuture {
                    inner: Inner::Pooled {
                        fut: client.request(req),
                        permit,
                    },
                }
            }
            Kind::Http2(h2) => {
                let h2 = h2.clone();
                DefaultClientFuture {
                    inner: Inner::Boxed {
                        fut: Box::pin(async move {
                            let (res, stream) = h2.send(req).await?;
                            Ok(res.map(|b| {
                                UpstreamBody::hyper(b).holding(Held {
                                    _permit: permit,
                                    _stream: Some(stream),
                                })
                            }))
                        }),
                    },
                }
            }
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`DefaultClient`].
    pub struct DefaultClientFuture {
        #[pin]
        inner: Inner,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner {
        Pooled { #[pin] fut: PooledFuture, permit: Option<OwnedSemaphorePermit> },
        Boxed { fut: BoxFuture },
    }
}

impl Future for DefaultClientFuture {
    type Output = Result<Response<UpstreamBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            InnerProj::Pooled { fut, permit } => fut
                .poll(cx)
                .map(|r| {
                    r.map(|res| {
                        res.map(|b| UpstreamBody::hyper(b).holding(Held::permit(permit.take())))
                    })
                })
                .map_err(Into::into),
            InnerProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for DefaultClientFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DefaultClientFuture")
    }
}

/// One HTTP/2 connection to the upstream, shared by every request.
struct Http2 {
    connector: Connector,
    upstream: Uri,
    /// Held while connecting, so that one connection is made at a time.
    conn: tokio::sync::Mutex<Option<(http2::SendRequest<RequestBody>, Arc<Streams>)>>,
    /// How long a request waits for a free stream (the upstream's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`) before it is answered 503.
    stream_wait: std::time::Duration,
    refusals: Refusals,
}

impl Http2 {
    async fn send(
        &self,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, StreamSlot), BoxError> {
        // RFC 9113 section 8.3.1: `:authority` carries the host; a `host` field
        // that disagrees with it is malformed. The connection does not depend on
        // it: it always goes to `self.upstream`.
        if let Some(host) = req.headers_mut().remove(HOST) {
            let authority = http::uri::Authority::try_from(host.as_bytes())
                .map_err(|e| format!("Host {host:?} is not a valid authority: {e}"))?;
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.authority = Some(authority);
            *req.uri_mut() = Uri::from_parts(parts)?;
        }
        let (mut sender, streams) = self.sender(false).await?;
        let slot = self.stream(&streams).await?;
        match sender.try_send_request(req).await {
            Ok(res) => Ok((res, slot)),
            // The connection closed before the request went out: once more, on
            // a new one.
            Err(mut e) => match e.take_message() {
                Some(req) => {
                    drop(slot);
                    let (mut sender, streams) = self.sender(true).await?;
                    let slot = self.stream(&streams).await?;
                    Ok((sender.send_request(req).await?, slot))
                }
                None => Err(e.into_error().into()),
            },
        }
    }

    /// A ready sender on the current connection, or on a new one, and the
    /// connection's count of open streams.
    async fn sender(
        &self,
        fresh: bool,
    ) -> Result<(http2::SendRequest<RequestBody>, Arc<Streams>), BoxError> {
        let mut conn = self.conn.lock().await;
        if let Some((sender, streams)) = conn.as_mut() {
            if !fresh && !sender.is_closed() {
                let (mut sender, streams) = (sender.clone(), streams.clone());
                drop(conn);
                self.ready(&mut sender).await?;
                return Ok((sender, streams));
            }
        }
        let io = self.connector.clone().call(self.upstream.clone()).await?;
        let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await?;
        // The peer's stream limit, read from the connection handle each time
        // it is polled: hyper drives the h2 connection in a task of its own
        // and polls this handle when a request is handed over, so the figure
        // lags the peer's SETTINGS by at most one request.
        let streams = Arc::new(Streams::default());
        streams.set_max(connection.current_max_send_streams());
        let limit = streams.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = std::future::poll_fn(|cx| {
                let polled = connection.as_mut().poll(cx);
                limit.set_max(connection.current_max_send_streams());
                polled
            })
            .await;
            if let Err(e) = ended {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        *conn = Some((sender.clone(), streams.clone()));
        drop(conn);
        self.ready(&mut sender).await?;
        Ok((sender, streams))
    }

    /// Waits for the connection to take a request, up to `stream_wait`.
    async fn ready(&self, sender: &mut http2::SendRequest<RequestBody>) -> Result<(), BoxError> {
        let wait = self.stream_wait;
        match tokio::time::timeout(wait, sender.ready()).await {
            Ok(ready) => Ok(ready?),
            Err(_) => Err(self.busy()),
        }
    }

    /// A stream under the peer's `SETTINGS_MAX_CONCURRENT_STREAMS`, waiting
    /// up to `stream_wait` for one to close (h2 would otherwise queue the
    /// request itself, for as long as it takes).
    async fn stream(&self, streams: &Arc<Streams>) -> Result<StreamSlot, BoxError> {
        use std::sync::atomic::Ordering;
        let deadline = tokio::time::Instant::now() + self.stream_wait;
        loop {
            let freed = streams.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            let open = streams.open.load(Ordering::Acquire);
            if open < streams.max.load(Ordering::Acquire) {
                if streams
                    .open
                    .compare_exchange(open, open + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Ok(StreamSlot(streams.clone()));
                }
                continue;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(self.busy());
            }
        }
    }

    fn busy(&self) -> BoxError {
        self.refusals
            .count(&self.upstream, "every HTTP/2 stream to the upstream busy");
        Box::new(Busy(format!(
            "no HTTP/2 stream to the upstream free within {:?}",
            self.stream_wait
        )))
    }
}

/// Streams open on one HTTP/2 connection to the upstream, and the most the
/// peer allows.
#[derive(Default)]
struct Streams {
    open: std::sync::atomic::AtomicUsize,
    max: std::sync::atomic::AtomicUsize,
    /// Told when a stream closes, or the limit grows.
    freed: tokio::sync::Notify,
}

impl Streams {
    fn set_max(&self, max: usize) {
        let before = self.max.swap(max, std::sync::atomic::Ordering::AcqRel);
        if max > before {
            self.freed.notify_waiters();
        }
    }
}

/// One open stream of an HTTP/2 connection, held by its response body.
pub(crate) struct StreamSlot(Arc<Streams>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}
