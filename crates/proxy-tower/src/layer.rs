//! `ReverseProxyLayer`: forward some requests, let the rest reach the inner service.
//!
//! At the top of the crate: imports the proxy, the client and the bodies;
//! nothing imports it.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, request};
use http_body::Body;
use http_body_util::Either;
use pin_project_lite::pin_project;
use proxy_core::{ProxyError, normalize_path};
use tower_layer::Layer;
use tower_service::Service;

use crate::proxy::ResponseFuture;
use crate::{BoxError, DefaultClient, ProxyBody, RequestBody, ReverseProxy};

type Predicate = Arc<dyn Fn(&request::Parts) -> bool + Send + Sync>;

/// Which requests go upstream.
#[derive(Clone, Default)]
struct Matcher {
    prefixes: Vec<String>,
    predicate: Option<Predicate>,
}

impl Matcher {
    fn matches(&self, parts: &request::Parts) -> bool {
        let path = parts.uri.path();
        let by_prefix =
            self.prefixes.is_empty() || self.prefixes.iter().any(|p| prefix_matches(p, path));
        by_prefix && self.predicate.as_ref().is_none_or(|f| f(parts))
    }

    /// Decides on the request's path with its dot-segments resolved, so that
    /// `/api/../admin` is judged (and, when it matches, forwarded) as `/admin`.
    /// A path that cannot be resolved safely goes to the proxy, which answers 400.
    /// Requests for the inner service keep their URI as it came.
    fn route(&self, parts: &mut request::Parts) -> bool {
        let normalized = match normalize_path(parts.uri.path()) {
            Ok(Cow::Borrowed(_)) => return self.matches(parts),
            Ok(Cow::Owned(path)) => path,
            Err(_) => return true,
        };
        let mut pq = normalized;
        if let Some(q) = parts.uri.query() {
            pq.push('?');
            pq.push_str(q);
        }
        let mut uri = parts.uri.clone().into_parts();
        uri.path_and_query = match http::uri::PathAndQuery::try_from(pq) {
            Ok(pq) => Some(pq),
            Err(_) => return true,
        };
        let Ok(uri) = http::Uri::from_parts(uri) else {
            return true;
        };
        let original = std::mem::replace(&mut parts.uri, uri);
        let forward = self.matches(parts);
        if !forward {
            parts.uri = original;
        }
        forward
    }
}

/// `/api` matches `/api` and `/api/...` but not `/apix`; a prefix ending in `/`
/// matches any path that starts with it.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// A tower [`Layer`] that sends matching requests to an upstream through a
/// [`ReverseProxy`] and hands every other request to the service it wraps.
///
/// With no `path_prefix` and no `matching` predicate, every request is forwarded.
/// With both, a request is forwarded when its path matches one of the prefixes
/// *and* the predicate holds. Paths are matched with their dot-segments resolved
/// ([`normalize_path`]): `/api/../admin` is `/admin`, and so does not match
/// `/api`; a matching request is forwarded with the resolved path, so the
/// upstream never sees a path outside the prefix. Prefixes are not stripped;
/// give the upstream URI a path to add one.
///
/// ```no_run
/// use proxy_tower::ReverseProxyLayer;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // /api/... goes upstream, the rest stays local.
/// let app = axum::Router::new()
///     .route("/", axum::routing::get(|| async { "local" }))
///     .layer(ReverseProxyLayer::new("http://127.0.0.1:3000")?.path_prefix("/api"));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// axum::serve(listener, app).await?;
/// # Ok(()) }
/// ```
pub struct ReverseProxyLayer<C = DefaultClient> {
    proxy: ReverseProxy<C>,
    matcher: Matcher,
}

impl<C: Clone> Clone for ReverseProxyLayer<C> {
    fn clone(&self) -> Self {
        ReverseProxyLayer {
            proxy: self.proxy.clone(),
            matcher: self.matcher.clone(),
        }
    }
}

impl<C> fmt::Debug for ReverseProxyLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReverseProxyLayer")
            .field("proxy", &self.proxy)
            .field("prefixes", &self.matcher.prefixes)
            .field("predicate", &self.matcher.predicate.is_some())
            .finish()
    }
}

impl ReverseProxyLayer {
    /// A layer forwarding to `upstream` with default options; see
    /// [`ReverseProxy::new`].
    pub fn new(upstream: &str) -> Result<Self, ProxyError> {
        Ok(Self::from_proxy(ReverseProxy::new(upstream)?))
    }

    /// Speak HTTP/2 with prior knowledge to the upstream (gRPC).
    pub fn http2_only(mut self) -> Self {
        self.proxy = self.proxy.into_http2_only();
        self
    }
}

impl<C> ReverseProxyLayer<C> {
    /// A layer around a configured proxy (see [`ReverseProxy::builder`]).
    pub fn from_proxy(proxy: ReverseProxy<C>) -> Self {
        ReverseProxyLayer {
            proxy,
            matcher: Matcher::default(),
        }
    }

    /// Forward requests whose path is `prefix` or lies below it (`/api` matches
    /// `/api` and `/api/users`, not `/apiary`; `/pkg.Service/` matches every method
    /// of a gRPC service). May be given several times.
    pub fn path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.matcher.prefixes.push(prefix.into());
        self
    }

    /// Forward only requests for which `predicate` holds (with `path_prefix`: both
    /// must hold).
    pub fn matching<F>(mut self, predicate: F) -> Self
    where
        F: Fn(&request::Parts) -> bool + Send + Sync + 'static,
    {
        self.matcher.predicate = Some(Arc::new(predicate));
        self
    }
}

impl<S, C: Clone> Layer<S> for ReverseProxyLayer<C> {
    type Service = ProxyOr<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        ProxyOr {
            inner,
            proxy: self.proxy.clone(),
            matcher: self.matcher.clone(),
        }
    }
}

/// The service made by [`ReverseProxyLayer`]: the proxy, or `S`. Matching
/// requests go upstream, the rest to `S`. Responses carry an [`Either`] body: the proxy's on the left, the
/// inner service's on the right.
pub struct ProxyOr<S, C = DefaultClient> {
    inner: S,
    proxy: ReverseProxy<C>,
    matcher: Matcher,
}

impl<S: Clone, C: Clone> Clone for ProxyOr<S, C> {
    fn clone(&self) -> Self {
        ProxyOr {
            inner: self.inner.clone(),
            proxy: self.proxy.clone(),
            matcher: self.matcher.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for ProxyOr<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyOr")
            .field("inner", &self.inner)
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResB, C, CB> Service<Request<B>> for ProxyOr<S, C>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    C: Service<Request<RequestBody>, Response = Response<CB>> + Clone + Send + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
    CB: Body<Data = Bytes> + Send + 'static,
    CB::Error: Into<BoxError>,
{
    type Response = Response<Either<ProxyBody<CB>, ResB>>;
    type Error = S::Error;
    type Future = ProxyOrFuture<S::Future, CB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let forward = self.matcher.route(&mut parts);
        let req = Request::from_parts(parts, body);
        if forward {
            ProxyOrFuture {
                kind: FutureKind::Proxy {
                    fut: self.proxy.call(req),
                },
            }
        } else {
            ProxyOrFuture {
                kind: FutureKind::Inner {
                    fut: self.inner.call(req),
                },
            }
        }
    }
}

pin_project! {
    /// The response future of [`ProxyOr`].
    pub struct ProxyOrFuture<F, CB> {
        #[pin]
        kind: FutureKind<F, CB>,
    }
}

pin_project! {
    #[project = FutureKindProj]
    enum FutureKind<F, CB> {
        Proxy { #[pin] fut: ResponseFuture<CB> },
        Inner { #[pin] fut: F },
    }
}

impl<F, ResB, E, CB> Future for ProxyOrFuture<F, CB>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<Either<ProxyBody<CB>, ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            FutureKindProj::Proxy { fut } => match fut.poll(cx) {
                Poll::Ready(Ok(res)) => Poll::Ready(Ok(res.map(Either::Left))),
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => Poll::Pending,
            },
            FutureKindProj::Inner { fut } => fut.poll(cx).map_ok(|res| res.map(Either::Right)),
        }
    }
}

impl<F, CB> fmt::Debug for ProxyOrFuture<F, CB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProxyOrFuture")
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_matches;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/users"));
        assert!(!prefix_matches("/api", "/apiary"));
        assert!(!prefix_matches("/api", "/"));
        assert!(prefix_matches("/legacy.Legacy/", "/legacy.Legacy/Get"));
        assert!(!prefix_matches("/legacy.Legacy/", "/other.Svc/Get"));
    }
}
