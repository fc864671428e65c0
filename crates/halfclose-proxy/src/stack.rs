//! The binary's request path around the proxy: request IDs, a trace span per
//! request (DEBUG), the route (404 when none), its request body limit, and
//! panics turned into 500s.
//!
//! One service does the four, rather than a stack of tower-http layers
//! (`SetRequestId`, `Trace`, `PropagateRequestId`, `RequestBodyLimit`,
//! `CatchPanic`): each layer wrapped the future and the response body again
//! and did its own header lookups, and together they cost 1.8 us of the
//! 14 us of CPU a small proxied request took (`docs/benchmarks.md`). Here a
//! feature that is off (no DEBUG, no body limit) costs nothing.
//!
//! Imports `access_log` and `counted` (the access log's line and bodies);
//! the routes come in through the [`Router`] trait (`generation`
//! implements it). It knows nothing of connections or
//! listeners: `serve` builds it per worker.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::{CONTENT_LENGTH, HeaderName};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full, Limited};
use hyper::body::Incoming;
use tracing::{Instrument, Level};

use crate::access_log::{AccessLog, RequestRecord};
use crate::counted::{Counted, Emit, Logged, Pending};

/// Chooses the service a request goes to.
pub(crate) trait Router: Clone + Send + 'static {
    type Service;

    /// The service for the request with head `parts`, which it may rewrite
    /// (its URI's path), and the request body limit; or why there is none.
    /// The service is called at once, without `poll_ready`: it must always
    /// be ready (the proxies are).
    fn route(&self, parts: &mut http::request::Parts) -> Result<Routed<Self::Service>, Refused>;
}

/// What a [`Router`] chose.
pub(crate) struct Routed<S> {
    pub(crate) service: S,
    pub(crate) max_body: Option<usize>,
    /// The upstream group's name, for the access log.
    pub(crate) upstream: Option<Arc<str>>,
}

/// Why a [`Router`] chose nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No route for the request's host and path: 404.
    NoRoute,
    /// A path no route can be matched against safely: 400.
    BadPath,
}

/// `X-Request-Id`.
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request body as the proxy gets it: the client's (`B`: hyper's
/// `Incoming`), or the same counted against `--max-request-body`; its
/// bytes counted for the access log when it is on.
pub(crate) type EdgeBody<B = Incoming> = Either<Counted<B>, Limited<Counted<B>>>;

/// A response body: the proxy's, or one of the proxy's own short answers
/// (404, 413, 500); its line written to the access log when it is dropped.
pub(crate) type EdgeResponseBody<B> = Logged<Either<B, Full<Bytes>>>;

/// Wraps `proxy` in the request path every client request takes:
///
/// 1. `X-Request-Id` is set when the client sent none ([`RequestIds`]); it
///    goes to the upstream and back to the client (on every response,
///    413 and 500 included, unless the upstream set its own), and names the
///    request in the proxy's log lines (errors, tunnels).
/// 2. A DEBUG span per request (method, URI, request id) and a DEBUG line with
///    status and latency when the response head is out; nothing at all unless
///    DEBUG is on for this module.
/// 3. The router chooses the proxy (404 when no route matches, 400 for a
///    path that cannot be resolved safely).
/// 4. With the route's `max_body`, request bodies are counted as they stream: past
///    `max_body` bytes the request ends with 413 (at once when
///    `Content-Length` says so; the proxy maps the body's
///    `LengthLimitError` to 413 otherwise). Nothing is buffered.
/// 5. A panic (in a hook of a library user's stack, say) becomes a 500 and an
///    ERROR line, not a dropped connection.
pub(crate) fn build<R: Router>(router: R, ids: RequestIds, log: AccessLog) -> Edge<R> {
    Edge { router, ids, log }
}

/// The service [`build`] makes.
#[derive(Clone)]
pub(crate) struct Edge<R> {
    router: R,
    ids: RequestIds,
    log: AccessLog,
}

impl<R, ReqB, B> tower::Service<Request<ReqB>> for Edge<R>
where
    ReqB: http_body::Body,
    R: Router,
    R::Service: tower::Service<Request<EdgeBody<ReqB>>, Response = Response<B>, Error = Infallible>,
    <R::Service as tower::Service<Request<EdgeBody<ReqB>>>>::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<EdgeResponseBody<B>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let id = match req.headers().get(&X_REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = self.ids.next();
                req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
                id
            }
        };
        let span = if tracing::enabled!(Level::DEBUG) {
            tracing::debug_span!(
                "request",
                method = %req.method(),
                uri = %req.uri(),
                request_id = id.to_str().unwrap_or(""),
            )
        } else {
            tracing::Span::none()
        };
        let started = (!span.is_none()).then(Instant::now);
        // The line of the access log, as far as the request head says it.
        let mut pending = self.log.enabled().then(|| pending(&self.log, &req, &id));
        let (mut parts, body) = req.into_parts();
        let Routed {
            service: mut inner,
            max_body,
            upstream,
        } = match self.router.route(&mut parts) {
            Ok(routed) => routed,
            Err(refused) => {
                let res = match refused {
                    Refused::NoRoute => {
                        short(StatusCode::NOT_FOUND, "No route for this host and path\n")
                    }
                    Refused::BadPath => short(StatusCode::BAD_REQUEST, "Bad Request\n"),
                };
                let res = logged(res, pending);
                return Box::pin(std::future::ready(Ok(finish(res, id, &span, started))));
            }
        };
        if let Some(p) = &mut pending {
            p.record.upstream = upstream;
        }
        // A request with no body has nothing to count.
        let count = match (&mut pending, body.is_end_stream()) {
            (Some(p), false) => Some(p.bytes_in.get_or_insert_with(Arc::default).clone()),
            _ => None,
        };
        let req = Request::from_parts(parts, Counted::new(body, count));
        let req = match max_body {
            None => req.map(Either::Left),
            Some(limit) if content_length(&req).is_some_and(|n| n > limit) => {
                let res = short(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n");
                let res = logged(res, pending);
                return Box::pin(std::future::ready(Ok(finish(res, id, &span, started))));
            }
            Some(limit) => req.map(|body| Either::Right(Limited::new(body, limit))),
        };
        // A panic in `call` itself, or later in its future, is answered alike.
        let call = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let _enter = span.enter();
            inner.call(req)
        }));
        // Written with 499 if the client goes away before the head.
        let mut awaiting = Emit::awaiting(pending);
        Box::pin(
            async move {
                let res = match call {
                    Ok(fut) => match AssertUnwindSafe(fut).catch_unwind().await {
                        Ok(Ok(res)) => res.map(Either::Left),
                        Ok(Err(never)) => match never {},
                        Err(panic) => panicked(panic.as_ref()),
                    },
                    Err(panic) => panicked(panic.as_ref()),
                };
                let res = logged(res, awaiting.take());
                Ok(finish(res, id, &tracing::Span::current(), started))
            }
            .instrument(span),
        )
    }
}

/// The access log line of `req`, to be finished by its response.
fn pending<B>(log: &AccessLog, req: &Request<B>, id: &HeaderValue) -> Box<Pending> {
    let host = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(http::header::HOST).cloned(),
    };
    Box::new(Pending {
        log: log.clone(),
        record: RequestRecord {
            time: std::time::SystemTime::now(),
            request_id: id.clone(),
            client: req
                .extensions()
                .get::<proxy_tower::ClientInfo>()
                .and_then(|c| c.addr()),
            method: req.method().clone(),
            host,
            target: req.uri().clone(),
            version: req.version(),
            status: 0,
            upstream: None,
            bytes_in: 0,
            bytes_out: 0,
            head: std::time::Duration::ZERO,
            duration: std::time::Duration::ZERO,
        },
        started: Instant::now(),
        bytes_in: None,
    })
}

/// `res`, whose body writes the pending line (with its status and the time
/// to its head) when it is dropped.
fn logged<B>(
    res: Response<Either<B, Full<Bytes>>>,
    pending: Option<Box<Pending>>,
) -> Response<EdgeResponseBody<B>> {
    let pending = pending.map(|mut p| {
        p.record.status = res.status().as_u16();
        p.record.head = p.started.elapsed();
        p
    });
    res.map(|body| Logged::new(body, pending))
}

/// The request's `Content-Length`, when it has one valid value.
fn content_length<B>(req: &Request<B>) -> Option<usize> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Gives the response the request's ID (unless the upstream set one) and logs
/// its head when DEBUG is on.
fn finish<B>(
    mut res: Response<B>,
    id: HeaderValue,
    span: &tracing::Span,
    started: Option<Instant>,
) -> Response<B> {
    if !res.headers().contains_key(&X_REQUEST_ID) {
        res.headers_mut().insert(X_REQUEST_ID.clone(), id);
    }
    if let Some(started) = started {
        tracing::debug!(
            parent: span,
            status = res.status().as_u16(),
            latency_us = started.elapsed().as_micros() as u64,
            "response"
        );
    }
    res
}

fn short<B>(status: StatusCode, text: &'static str) -> Response<Either<B, Full<Bytes>>> {
    let mut res = Response::new(Either::Right(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn panicked<B>(panic: &(dyn std::any::Any + Send)) -> Response<Either<B, Full<Bytes>>> {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)");
    tracing::error!(panic = what, "the request path panicked; answered 500");
    short(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
}

/// Makes request IDs: 16 hex digits, a random per-process prefix and a
/// counter, unique within a run and unlikely to repeat across runs.
///
/// Each worker has its own ([`worker`](RequestIds::worker)): its counter
/// takes the numbers equal to its index modulo the number of workers, so
/// no two workers make the same ID, and no counter (nor the `Arc` the
/// stack clones per request) is written from two cores.
#[derive(Clone)]
pub(crate) struct RequestIds(Arc<Ids>);

struct Ids {
    prefix: u32,
    next: AtomicU64,
    step: u64,
}

impl RequestIds {
    pub(crate) fn new() -> Self {
        use std::hash::BuildHasher;
        let prefix = std::collections::hash_map::RandomState::new().hash_one(0u8) as u32;
        RequestIds(Arc::new(Ids {
            prefix,
            next: AtomicU64::new(1),
            step: 1,
        }))
    }

    /// The IDs of worker `index` of `workers`, same prefix.
    pub(crate) fn worker(&self, index: usize, workers: usize) -> Self {
        RequestIds(Arc::new(Ids {
            prefix: self.0.prefix,
            next: AtomicU64::new(index as u64 + 1),
            step: workers.max(1) as u64,
        }))
    }
}

impl RequestIds {
    /// The next ID, as a header value that clones without copying.
    pub(crate) fn next(&self) -> HeaderValue {
        let n = self.0.next.fetch_add(self.0.step, Ordering::Relaxed) as u32;
        let word = (u64::from(self.0.prefix) << 32) | u64::from(n);
        let mut id = [0u8; 16];
        for (i, digit) in id.iter_mut().enumerate() {
            *digit = b"0123456789abcdef"[(word >> (60 - 4 * i)) as usize & 0xf];
        }
        HeaderValue::from_maybe_shared(Bytes::from_owner(id)).expect("hex digits")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Service, ServiceExt};

    #[test]
    fn workers_never_make_the_same_id() {
        let ids = RequestIds::new();
        let mut seen = std::collections::HashSet::new();
        for index in 0..3 {
            let worker = ids.worker(index, 3);
            for _ in 0..1000 {
                let id = worker.next().to_str().unwrap().to_owned();
                assert_eq!(&id[..8], &format!("{:08x}", ids.0.prefix));
                assert!(seen.insert(id), "an ID came twice");
            }
        }
    }

    #[test]
    fn ids_differ_and_are_16_hex_digits() {
        let ids = RequestIds::new();
        let (a, b) = (ids.next(), ids.clone().next());
        assert_ne!(a, b);
        for id in [a, b] {
            let s = id.to_str().unwrap();
            assert_eq!(s.len(), 16);
            assert!(s.bytes().all(|c| c.is_ascii_hexdigit()), "{s}");
        }
    }

    type Body = Full<Bytes>;

    /// An inner service that answers 200 with the request's ID in the body
    /// and the body it read, or panics (in `call` or in its future) when the
    /// path says so.
    #[derive(Clone)]
    struct Inner;

    impl Service<Request<EdgeBody<Body>>> for Inner {
        type Response = Response<String>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<EdgeBody<Body>>) -> Self::Future {
            if req.uri().path() == "/panic-in-call" {
                panic!("in call");
            }
            Box::pin(async move {
                if req.uri().path() == "/panic-later" {
                    panic!("in the future");
                }
                let id = req.headers()[&X_REQUEST_ID].to_str().unwrap().to_owned();
                use http_body_util::BodyExt;
                let body = match req.into_body().collect().await {
                    Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                    Err(e) => format!("body error: {e}"),
                };
                Ok(Response::new(format!("{id} {body}")))
            })
        }
    }

    /// Routes every request to [`Inner`] with a body limit, but
    /// `/nowhere`.
    #[derive(Clone)]
    struct OneRoute(Option<usize>);

    impl Router for OneRoute {
        type Service = Inner;

        fn route(&self, parts: &mut http::request::Parts) -> Result<Routed<Inner>, Refused> {
            match parts.uri.path() {
                "/nowhere" => Err(Refused::NoRoute),
                _ => Ok(Routed {
                    service: Inner,
                    max_body: self.0,
                    upstream: None,
                }),
            }
        }
    }

    async fn send(
        edge: &mut Edge<OneRoute>,
        path: &str,
        id: Option<&str>,
        body: &'static str,
    ) -> Response<EdgeResponseBody<String>> {
        let mut req = Request::post(path).header(CONTENT_LENGTH, body.len());
        if let Some(id) = id {
            req = req.header(&X_REQUEST_ID, id);
        }
        let req = req
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        edge.ready().await.unwrap().call(req).await.unwrap()
    }

    fn edge(max_body: Option<usize>) -> Edge<OneRoute> {
        Edge {
            router: OneRoute(max_body),
            ids: RequestIds::new(),
            log: AccessLog::new(),
        }
    }

    #[tokio::test]
    async fn no_route_is_404_with_an_id() {
        let mut edge = edge(None);
        let res = send(&mut edge, "/nowhere", Some("n"), "").await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert_eq!(id_of(&res), "n");
    }

    fn id_of<B>(res: &Response<B>) -> String {
        res.headers()[&X_REQUEST_ID].to_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn a_fresh_id_goes_in_and_comes_back_and_the_clients_own_is_kept() {
        let mut edge = edge(None);
        let res = send(&mut edge, "/", None, "hi").await;
        let id = id_of(&res);
        assert_eq!(id.len(), 16);
        match res.into_body().into_inner() {
            Either::Left(body) => assert_eq!(body, format!("{id} hi")),
            Either::Right(_) => panic!("not the inner service's answer"),
        }
        let res = send(&mut edge, "/", Some("mine-1"), "").await;
        assert_eq!(id_of(&res), "mine-1");
    }

    #[tokio::test]
    async fn a_body_announced_past_the_limit_is_413_with_an_id() {
        let mut edge = edge(Some(4));
        let res = send(&mut edge, "/", None, "12345").await;
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(id_of(&res).len(), 16);
        let res = send(&mut edge, "/", None, "1234").await;
        assert_eq!(res.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn panics_are_answered_500_with_an_id() {
        let mut edge = edge(None);
        for path in ["/panic-in-call", "/panic-later"] {
            let res = send(&mut edge, path, Some("p"), "").await;
            assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR, "{path}");
            assert_eq!(id_of(&res), "p");
        }
        // The service still serves.
        let res = send(&mut edge, "/", None, "").await;
        assert_eq!(res.status(), StatusCode::OK);
    }
}
