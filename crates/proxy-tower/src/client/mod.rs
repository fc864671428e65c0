//! [`DefaultClient`], the client a `ReverseProxy` uses unless given
//! another. By concern: `h1` the HTTP/1.1 path of its own (codec, pool,
//! body); `http2` one multiplexed HTTP/2 connection; `connect` TCP then TLS
//! to the upstream; `slots` the bounds on what one upstream gets; `body`
//! the response body, [`UpstreamBody`].
//!
//! May import the settings, the bodies, `io` and `tls`; never the proxy,
//! the tunnel or the balancer.

mod body;
pub(crate) mod connect;
pub(crate) mod h1;
mod http2;
mod slots;

pub use body::UpstreamBody;
pub(crate) use connect::UpstreamIo;
pub(crate) use slots::Busy;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper_util::client::legacy::{Client, ResponseFuture as PooledFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;
use tower_service::Service;

use crate::settings::Config;
use crate::{BoxError, RequestBody};
use body::Held;
use connect::Connector;
use http2::Http2;
use slots::{Refusals, Slots};

/// The client a [`ReverseProxy`](crate::ReverseProxy) uses unless given another:
/// TCP to the one upstream, and TLS over it for `https` upstreams. Over
/// HTTP/1.1, a pool of connections (at most
/// [`pool_max_idle`](crate::Builder::pool_max_idle) idle ones, expired after
/// [`pool_idle_timeout`](crate::Builder::pool_idle_timeout)); with
/// [`http2_only`](crate::Builder::http2_only), one multiplexed HTTP/2
/// connection, made again when it closes.
///
/// To a plain `http` upstream, a request with no body, or one of a known
/// length up to 64 KiB (most GETs, small POSTs; an upgrade only without a
/// body), is sent and answered in the task that calls the client, on an
/// HTTP/1.1 path of this crate: no connection task, no channel, and the
/// connection goes back to the pool as soon as the response body has been
/// read (before the response is returned, when the body came with the
/// head), or, after a `101`, to the tunnel. Such a request
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
            connector.clone().tls(crate::tls::config_for(ca, alpn))
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
