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
            return DefaultClient {
                kind: Kind::Http2(Arc::new(Http2 {
                    connector: with_alpn(&[b"h2"]),
                    upstream: config.rules.upstream().clone(),
                    conn: tokio::sync::Mutex::new(None),
                })),
            };
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
        DefaultClient {
            kind: Kind::Http1(Arc::new(Http1 {
                fast,
                pooled: pooled(with_alpn(&[b"h2", b"http/1.1"])),
                upgrades,
            })),
        }
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
        match &self.kind {
            Kind::Http1(h1) => {
                if let Some(pool) = h1.fast.as_ref().filter(|_| h1::fits(&req)) {
                    let pool = pool.clone();
                    return DefaultClientFuture {
                        inner: Inner::Boxed {
                            fut: Box::pin(async move {
                                Ok(h1::send(pool, req).await?.map(UpstreamBody::h1))
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
                    },
                }
            }
            Kind::Http2(h2) => {
                let h2 = h2.clone();
                DefaultClientFuture {
                    inner: Inner::Boxed {
                        fut: Box::pin(
                            async move { Ok(h2.send(req).await?.map(UpstreamBody::hyper)) },
                        ),
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
        Pooled { #[pin] fut: PooledFuture },
        Boxed { fut: BoxFuture },
    }
}

impl Future for DefaultClientFuture {
    type Output = Result<Response<UpstreamBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            InnerProj::Pooled { fut } => fut
                .poll(cx)
                .map(|r| r.map(|res| res.map(UpstreamBody::hyper)))
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
    conn: tokio::sync::Mutex<Option<http2::SendRequest<RequestBody>>>,
}

impl Http2 {
    async fn send(&self, mut req: Request<RequestBody>) -> Result<Response<Incoming>, BoxError> {
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
        let mut sender = self.sender(false).await?;
        match sender.try_send_request(req).await {
            Ok(res) => Ok(res),
            // The connection closed before the request went out: once more, on
            // a new one.
            Err(mut e) => match e.take_message() {
                Some(req) => {
                    let mut sender = self.sender(true).await?;
                    Ok(sender.send_request(req).await?)
                }
                None => Err(e.into_error().into()),
            },
        }
    }

    /// A ready sender on the current connection, or on a new one.
    async fn sender(&self, fresh: bool) -> Result<http2::SendRequest<RequestBody>, BoxError> {
        let mut conn = self.conn.lock().await;
        if let Some(sender) = conn.as_mut() {
            if !fresh && !sender.is_closed() {
                let mut sender = sender.clone();
                drop(conn);
                sender.ready().await?;
                return Ok(sender);
            }
        }
        let io = self.connector.clone().call(self.upstream.clone()).await?;
        let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        *conn = Some(sender.clone());
        drop(conn);
        sender.ready().await?;
        Ok(sender)
    }
}
