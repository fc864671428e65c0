//! [`ReverseProxy`], the tower service: it boxes the work of one request
//! (`forward`), which always ends in a response. Its constructors that take
//! options (`new`, `builder`) live beside the [`Builder`](super::Builder),
//! so that this file never names it.
//!
//! Imports `forward`, the settings, the client and the bodies.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::forward::forward;
use crate::settings::Config;
use crate::{BoxError, DefaultClient, ProxyBody, RequestBody};

/// A tower [`Service`] that forwards every request to one upstream.
///
/// - Bodies stream both ways, trailers included; nothing is buffered whole.
/// - Upgrades (WebSocket, any `101 Switching Protocols`) become tunnels that keep
///   TCP half-close intact: once the upstream's 101 has been checked, one spawned
///   task relays bytes both ways with [`halfclose_io`], passing each side's FIN on.
/// - It never fails: `Error = Infallible`. Every failure becomes a response (502
///   upstream unreachable or invalid answer, 504 upstream timeout, 403 refused
///   upgrade, ...), built by a replaceable error handler.
///
/// Serving it in axum, behind a tower-http stack or under tonic is shown in the
/// [crate docs](crate) and the crate's `examples/`. Called directly, it is a
/// plain tower service:
///
/// ```no_run
/// use http_body_util::Empty;
/// use proxy_tower::ReverseProxy;
/// use tower::ServiceExt;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let proxy = ReverseProxy::new("http://127.0.0.1:3000")?;
/// let req = http::Request::get("/status").body(Empty::<bytes::Bytes>::new())?;
/// let res = proxy.oneshot(req).await?; // never an error: a 502 at worst
/// println!("{}", res.status());
/// # Ok(()) }
/// ```
pub struct ReverseProxy<C = DefaultClient> {
    pub(crate) config: Arc<Config>,
    client: C,
}

impl<C: Clone> Clone for ReverseProxy<C> {
    fn clone(&self) -> Self {
        ReverseProxy {
            config: self.config.clone(),
            client: self.client.clone(),
        }
    }
}

impl<C> fmt::Debug for ReverseProxy<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReverseProxy")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ReverseProxy {
    pub(crate) fn from_config(config: Config) -> Self {
        let client = DefaultClient::new(&config);
        ReverseProxy {
            config: Arc::new(config),
            client,
        }
    }

    /// The same proxy, speaking HTTP/2 with prior knowledge to the upstream.
    pub(crate) fn into_http2_only(self) -> Self {
        let mut config = (*self.config).clone();
        config.http2_only = true;
        Self::from_config(config)
    }
}

impl<C> ReverseProxy<C> {
    pub(crate) fn with_client(config: Config, client: C) -> Self {
        ReverseProxy {
            config: Arc::new(config),
            client,
        }
    }

    /// The upstream base URI.
    pub fn upstream(&self) -> &http::Uri {
        self.config.rules.upstream()
    }

    /// The tunnels this proxy (and its clones) have open.
    pub fn tunnels(&self) -> crate::Tunnels {
        self.config.tunnels.clone()
    }
}

impl<B, C, CB> Service<Request<B>> for ReverseProxy<C>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    C: Service<Request<RequestBody>, Response = Response<CB>> + Clone + Send + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
    CB: Body<Data = Bytes> + Send + 'static,
    CB::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody<CB>>;
    type Error = Infallible;
    type Future = ResponseFuture<CB>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The client's readiness is awaited inside each call, on its own clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // No span per request here: tower-http's `TraceLayer` in front of the
        // proxy makes one where it is wanted (the binary does). Errors and
        // tunnels log at WARN/INFO with the request's method, path and
        // `x-request-id` themselves. The request rules run here, at once.
        ResponseFuture {
            inner: Box::pin(forward(self.config.clone(), self.client.clone(), req)),
        }
    }
}

/// The boxed work of one request: it always ends in a response.
type Forwarding<B> = Pin<Box<dyn Future<Output = Response<ProxyBody<B>>> + Send>>;

/// The future of a [`ReverseProxy`] response.
pub struct ResponseFuture<B> {
    inner: Forwarding<B>,
}

impl<B> ResponseFuture<B> {
    pub(crate) fn new(fut: impl Future<Output = Response<ProxyBody<B>>> + Send + 'static) -> Self {
        ResponseFuture {
            inner: Box::pin(fut),
        }
    }
}

impl<B> Future for ResponseFuture<B> {
    type Output = Result<Response<ProxyBody<B>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx).map(Ok)
    }
}

impl<B> fmt::Debug for ResponseFuture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The future every request is boxed in: 1,160 bytes, in a release build
    /// as in a debug one.
    /// As an `async fn` taking the request, with the request rules inside it,
    /// it was 1,904: the request and its parts, the rules' result twice, and
    /// each argument beside its moved copy, all copied into the box whole.
    #[tokio::test]
    async fn a_requests_future_stays_small() {
        let mut proxy = ReverseProxy::new("http://127.0.0.1:1").unwrap();
        let req = Request::get("/x")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let fut = proxy.call(req);
        let size = std::mem::size_of_val(&*fut.inner);
        // mimalloc's 1,280-byte size class (the old one took a 2,048 block).
        assert!(size <= 1_280, "a request's future is {size} bytes");
    }
}
