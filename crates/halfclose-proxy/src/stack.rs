//! The binary's request path as a stack of tower layers: request IDs, a trace
//! span per request (DEBUG), and panics turned into 500s, around the proxy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::serve::Upstreams;
use http::{HeaderValue, Request};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

/// Wraps `proxy` in the request path every client request takes:
///
/// 1. `X-Request-Id` is set when the client sent none ([`RequestIds`]); it
///    goes to the upstream and back to the client, and names the request in
///    the proxy's log lines (errors, tunnels).
/// 2. A DEBUG span per request (method, URI, request id) and a DEBUG line with
///    status and latency when the response head is out. No span is formatted
///    unless DEBUG is on: at the default INFO level this costs next to nothing.
/// 3. Request bodies are counted as they stream: past `max_body` bytes the
///    request ends with 413 (at once when `Content-Length` says so; the
///    proxy maps the body's `LengthLimitError` to 413 otherwise). Nothing is
///    buffered.
/// 4. A panic (in a hook of a library user's stack, say) becomes a 500 and an
///    ERROR line, not a dropped connection.
pub(crate) fn build(
    proxy: Upstreams,
    ids: RequestIds,
    max_body: Option<usize>,
) -> impl tower::Service<
    Request<hyper::body::Incoming>,
    Response = http::Response<
        impl http_body::Body<Data = bytes::Bytes, Error = impl Into<proxy_tower::BoxError>>
        + Send
        + 'static,
    >,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(ids))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<hyper::body::Incoming>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::debug_span!(
                        "request",
                        method = %req.method(),
                        uri = %req.uri(),
                        request_id = id,
                    )
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                // The proxy logs its own failures (WARN, with the cause).
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(RequestBodyLimitLayer::new(max_body.unwrap_or(usize::MAX)))
        .layer(CatchPanicLayer::new())
        .service(proxy)
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

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        // Per request: written into a stack buffer, one copy into the value.
        let n = self.0.next.fetch_add(self.0.step, Ordering::Relaxed) as u32;
        let word = (u64::from(self.0.prefix) << 32) | u64::from(n);
        let mut id = [0u8; 16];
        for (i, digit) in id.iter_mut().enumerate() {
            *digit = b"0123456789abcdef"[(word >> (60 - 4 * i)) as usize & 0xf];
        }
        HeaderValue::from_bytes(&id).ok().map(RequestId::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_never_make_the_same_id() {
        let ids = RequestIds::new();
        let req = Request::new(());
        let mut seen = std::collections::HashSet::new();
        for index in 0..3 {
            let mut worker = ids.worker(index, 3);
            for _ in 0..1000 {
                let id = worker.make_request_id(&req).unwrap();
                let id = id.header_value().to_str().unwrap().to_owned();
                assert_eq!(&id[..8], &format!("{:08x}", ids.0.prefix));
                assert!(seen.insert(id), "an ID came twice");
            }
        }
    }

    #[test]
    fn ids_differ_and_are_16_hex_digits() {
        let mut ids = RequestIds::new();
        let req = Request::new(());
        let a = ids.make_request_id(&req).unwrap();
        let b = ids.clone().make_request_id(&req).unwrap();
        let (a, b) = (a.header_value().clone(), b.header_value().clone());
        assert_ne!(a, b);
        for id in [a, b] {
            let s = id.to_str().unwrap();
            assert_eq!(s.len(), 16);
            assert!(s.bytes().all(|c| c.is_ascii_hexdigit()), "{s}");
        }
    }
}
