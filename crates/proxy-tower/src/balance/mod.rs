//! Several upstreams behind one proxy: power of two choices spreads requests,
//! failing upstreams are ejected for a while, and a request that could not be
//! sent at all is retried once on another upstream.
//!
//! By concern: this module is the service and the pick; `endpoints` the
//! list of upstreams (from any `Discover`), each its own `ReverseProxy`;
//! `health` the passive health of one. It may import the proxy (and its
//! builder, to add `build_balanced` and `build_discovered` to it), the
//! settings and the bodies; nothing below imports it.

mod endpoints;
mod health;

pub use health::MAX_EJECTION;

use std::cell::Cell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use proxy_core::ProxyError;
use tower::discover::Discover;
use tower_service::Service;

use crate::body::ProxyBody;
use crate::proxy::{ResponseFuture, Unsent};
use crate::settings::Config;
use crate::{BoxError, RequestBody, Tunnels, UpstreamBody};
use endpoints::{Endpoint, Endpoints, lock};

/// A reverse proxy over several upstreams. Made by
/// [`Builder::build_balanced`](crate::Builder::build_balanced) (a fixed list)
/// or [`Builder::build_discovered`](crate::Builder::build_discovered) (any
/// `tower::discover::Discover` of upstream URIs: DNS, Consul, Kubernetes).
///
/// - Requests are spread by power of two choices (as `tower::balance::p2c`
///   does): two upstreams drawn at random, the one with fewer requests in
///   flight wins. An upgraded connection stays on the upstream that answered
///   its 101: its tunnel is that upstream's connection.
/// - Passive health: an upstream whose connections are refused or time out, or
///   that lets the response timeout pass, [`DEFAULT_EJECT_AFTER`](crate::DEFAULT_EJECT_AFTER) times in a
///   row is ejected for [`DEFAULT_BASE_EJECTION`](crate::DEFAULT_BASE_EJECTION), doubled for each ejection in a row
///   (up to [`MAX_EJECTION`]; Envoy's outlier detection). When every upstream
///   is ejected, the proxy tries them anyway rather than failing everything.
/// - A request that could not be sent at all (no connection) is retried once
///   on another upstream when it has no body and is not an upgrade; nothing
///   else is retried.
///
/// Every upstream gets the same options (timeouts, policies, hooks), set on
/// the builder. Like [`ReverseProxy`](crate::ReverseProxy) it never fails: `Error = Infallible`.
///
/// ```
/// # fn main() -> Result<(), proxy_tower::ProxyError> {
/// use std::time::Duration;
///
/// let proxy = proxy_tower::ReverseProxy::builder("http://10.0.0.1:3000")
///     .add_upstream("http://10.0.0.2:3000")
///     .add_upstream("http://10.0.0.3:3000")
///     .connect_timeout(Duration::from_secs(1))
///     .build_balanced()?;
/// # let _ = proxy; Ok(()) }
/// ```
pub struct BalancedProxy {
    shared: Arc<Shared>,
}

impl Clone for BalancedProxy {
    fn clone(&self) -> Self {
        BalancedProxy {
            shared: self.shared.clone(),
        }
    }
}

impl fmt::Debug for BalancedProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancedProxy")
            .field("upstreams", &self.upstreams())
            .finish_non_exhaustive()
    }
}

/// The user's discover stream, as changes to the list of endpoints (which it
/// makes itself); `None` once it has ended.
type Uris = Option<Pin<Box<dyn Stream<Item = Result<(), BoxError>> + Send>>>;

struct Shared {
    uris: Mutex<Uris>,
    /// Every upstream known now.
    known: Arc<Mutex<Vec<Arc<Endpoint>>>>,
    tunnels: Tunnels,
    turn: AtomicUsize,
}

/// The state of one upstream, as [`BalancedProxy::upstreams`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpstreamStatus {
    /// The upstream.
    pub uri: Uri,
    /// False while it is ejected.
    pub healthy: bool,
    /// Requests in flight to it.
    pub in_flight: usize,
}

impl BalancedProxy {
    pub(crate) fn new<D>(config: Config, discover: D) -> Self
    where
        D: Discover<Service = Uri> + Send + 'static,
        D::Key: Hash + Eq + Clone + Send,
        D::Error: Into<BoxError>,
    {
        let known = Arc::new(Mutex::new(Vec::new()));
        let uris: Uris = Some(Box::pin(Endpoints {
            discover: Box::pin(discover),
            config: config.clone(),
            ids: HashMap::new(),
            next_id: 0,
            known: known.clone(),
        }));
        let proxy = BalancedProxy {
            shared: Arc::new(Shared {
                uris: Mutex::new(uris),
                known,
                tunnels: config.tunnels.clone(),
                turn: AtomicUsize::new(0),
            }),
        };
        proxy.sync();
        proxy
    }

    /// Takes in what the discover stream has yielded so far. Called at each
    /// request (never waiting: the stream is polled with a waker that does
    /// nothing), and skipped when another thread is at it.
    fn sync(&self) {
        let Ok(mut uris) = self.shared.uris.try_lock() else {
            return;
        };
        let Some(stream) = uris.as_mut() else {
            return;
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            match stream.as_mut().poll_next(&mut cx) {
                Poll::Ready(Some(Ok(()))) => {}
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream discovery failed");
                    return;
                }
                Poll::Ready(None) => {
                    *uris = None;
                    return;
                }
                Poll::Pending => return,
            }
        }
    }

    /// The upstreams known now, with their health.
    pub fn upstreams(&self) -> Vec<UpstreamStatus> {
        self.sync();
        lock(&self.shared.known)
            .iter()
            .map(|e| UpstreamStatus {
                uri: e.uri.clone(),
                healthy: !e.health.is_ejected(),
                in_flight: e.in_flight.load(Ordering::Acquire),
            })
            .collect()
    }

    /// True if at least one upstream is not ejected.
    pub fn is_ready(&self) -> bool {
        self.sync();
        lock(&self.shared.known)
            .iter()
            .any(|e| !e.health.is_ejected())
    }

    /// An active health check: sends `GET path` to every upstream (through its
    /// own proxy, so with the same client, TLS and options). An upstream that
    /// answers anything but 2xx or 3xx, or nothing within `limit`, is ejected
    /// as a failing one is (the cool-down growing while it keeps failing); one
    /// that answers well is back at once. Returns the upstreams' state after.
    ///
    /// ```no_run
    /// # async fn run(proxy: proxy_tower::BalancedProxy) {
    /// loop {
    ///     proxy.check_health("/healthz", std::time::Duration::from_secs(2)).await;
    ///     tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    /// }
    /// # }
    /// ```
    pub async fn check_health(&self, path: &str, limit: Duration) -> Vec<UpstreamStatus> {
        self.sync();
        let endpoints = lock(&self.shared.known).clone();
        let checks = endpoints.into_iter().map(|e| {
            let req =
                Request::get(path).body(RequestBody::new(http_body_util::Empty::<Bytes>::new()));
            async move {
                let Ok(req) = req else {
                    return;
                };
                let mut proxy = e.proxy.clone();
                let call = Service::<Request<RequestBody>>::call(&mut proxy, req);
                let healthy = match tokio::time::timeout(limit, call).await {
                    Ok(Ok(res)) => res.status().is_success() || res.status().is_redirection(),
                    _ => false,
                };
                e.health.report(healthy, &e.uri);
            }
        });
        futures_util::future::join_all(checks).await;
        self.upstreams()
    }

    /// The tunnels this proxy has open, on every upstream.
    pub fn tunnels(&self) -> Tunnels {
        self.shared.tunnels.clone()
    }

    /// The first try: of two upstreams drawn at random, the one with fewer
    /// requests in flight, ejected ones left out; any upstream when both drawn
    /// are ejected (ejected or not); `None` when no upstream is known. With
    /// it, whether another upstream is known (a retry is possible at all).
    fn first_try(&self) -> Option<(Arc<Endpoint>, bool)> {
        let known = lock(&self.shared.known);
        let chosen = match known.len() {
            0 => return None,
            1 => return Some((known[0].clone(), false)),
            n => {
                let r = random();
                let i = (r % n as u64) as usize;
                // A second one, never the first.
                let j = (i + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
                let (a, b) = (&known[i], &known[j]);
                match (a.health.is_ejected(), b.health.is_ejected()) {
                    (false, false) if b.load() < a.load() => b,
                    (false, _) => a,
                    (true, false) => b,
                    (true, true) => {
                        drop(known);
                        return self.any_other(None).map(|e| (e, true));
                    }
                }
            }
        };
        Some((chosen.clone(), true))
    }

    /// An upstream other than `not` (by id), healthy ones first, in turn.
    fn any_other(&self, not: Option<u64>) -> Option<Arc<Endpoint>> {
        let known = lock(&self.shared.known);
        let candidates: Vec<&Arc<Endpoint>> = known.iter().filter(|e| Some(e.id) != not).collect();
        if candidates.is_empty() {
            return None;
        }
        let turn = self.shared.turn.fetch_add(1, Ordering::Relaxed);
        let healthy: Vec<&&Arc<Endpoint>> = candidates
            .iter()
            .filter(|e| !e.health.is_ejected())
            .collect();
        let chosen = match healthy.as_slice() {
            [] => candidates[turn % candidates.len()],
            some => some[turn % some.len()],
        };
        Some(chosen.clone())
    }
}

/// A number for the random draw of power of two choices: xorshift64 per
/// thread, seeded from std's random hasher keys.
fn random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> =
            Cell::new(std::collections::hash_map::RandomState::new().hash_one(0u8) | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

fn no_upstream(why: &str) -> Response<ProxyBody<UpstreamBody>> {
    tracing::warn!(reason = why, "no upstream available");
    let mut res = Response::new(ProxyBody::message(Bytes::from_static(
        b"Service Unavailable\n",
    )));
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    res
}

/// A request's head, kept to send it again (only bodiless, non-upgrade
/// requests are).
struct Replay {
    method: http::Method,
    uri: Uri,
    version: http::Version,
    headers: http::HeaderMap,
    extensions: http::Extensions,
}

impl Replay {
    fn of(req: &Request<RequestBody>) -> Option<Self> {
        let upgrade = req.headers().contains_key(http::header::UPGRADE)
            || req.method() == http::Method::CONNECT;
        (req.body().is_end_stream() && !upgrade).then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            extensions: req.extensions().clone(),
        })
    }

    fn request(self) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::new(http_body_util::Empty::<Bytes>::new()));
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        *req.extensions_mut() = self.extensions;
        req
    }
}

impl<B> Service<Request<B>> for BalancedProxy
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody<UpstreamBody>>;
    type Error = Infallible;
    type Future = ResponseFuture<UpstreamBody>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let req = req.map(RequestBody::new);
        self.sync();
        let first = self.first_try();
        let this = self.clone();
        ResponseFuture::new(async move {
            let Some((first, others)) = first else {
                return no_upstream("no upstream is known");
            };
            // Kept only while a retry is possible at all.
            let replay = others.then(|| Replay::of(&req)).flatten();
            let res = first.send(req).await;
            if res.extensions().get::<Unsent>().is_none() {
                return res;
            }
            // Not a byte went out: once more, on another upstream.
            let (Some(replay), Some(other)) = (replay, this.any_other(Some(first.id))) else {
                tracing::warn!(
                    status = res.status().as_u16(),
                    "request not sent: its upstream took no connection, and it cannot be sent again (a body, an upgrade, or no other upstream)"
                );
                return res;
            };
            tracing::debug!(upstream = %other.uri, "retrying a request that could not be sent");
            let res = other.send(replay.request()).await;
            if res.extensions().get::<Unsent>().is_some() {
                tracing::warn!(upstream = %other.uri, "request not sent: no upstream took the connection");
            }
            res
        })
    }
}

impl crate::Builder {
    /// Builds a [`BalancedProxy`] over the builder's upstream and those added
    /// with [`add_upstream`](crate::Builder::add_upstream), with the default client for each.
    pub fn build_balanced(self) -> Result<BalancedProxy, ProxyError> {
        let mut config = self.into_config()?;
        let mut uris = vec![config.rules.upstream().clone()];
        uris.append(&mut config.more_upstreams);
        for uri in &uris {
            crate::proxy::check_scheme(uri)?;
            config.rules.for_upstream(uri.clone())?;
        }
        Ok(BalancedProxy::new(config, endpoints::fixed(uris)))
    }

    /// Builds a [`BalancedProxy`] over the upstream URIs `discover` yields
    /// (any `tower::discover::Discover` whose services are `Uri`s: a stream of
    /// `Change::Insert(key, uri)` and `Change::Remove(key)`, from DNS, Consul
    /// or Kubernetes). The builder's own upstream URI only serves to check the
    /// options; requests go where `discover` says. A URI that cannot be used
    /// is logged and skipped.
    pub fn build_discovered<D>(self, discover: D) -> Result<BalancedProxy, ProxyError>
    where
        D: tower::discover::Discover<Service = http::Uri> + Send + 'static,
        D::Key: std::hash::Hash + Eq + Clone + Send,
        D::Error: Into<crate::BoxError>,
    {
        let config = self.into_config()?;
        Ok(BalancedProxy::new(config, discover))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> BalancedProxy {
        crate::ReverseProxy::builder("http://127.0.0.1:1")
            .add_upstream("http://127.0.0.1:2")
            .add_upstream("http://127.0.0.1:3")
            .build_balanced()
            .unwrap()
    }

    /// Power of two choices: the busiest upstream is never picked (it loses
    /// every draw it is in), the others are.
    #[test]
    fn the_busiest_upstream_loses_every_draw() {
        let proxy = three();
        let known = lock(&proxy.shared.known).clone();
        assert_eq!(known.len(), 3);
        known[0].in_flight.store(5, Ordering::Release);
        let mut picked = [0; 3];
        for _ in 0..300 {
            let (e, _) = proxy.first_try().unwrap();
            picked[known.iter().position(|k| Arc::ptr_eq(k, &e)).unwrap()] += 1;
        }
        assert_eq!(picked[0], 0, "{picked:?}");
        assert!(picked[1] > 50 && picked[2] > 50, "{picked:?}");
    }

    /// An ejected upstream is left out while others are healthy, and tried
    /// when none is.
    #[test]
    fn ejected_upstreams_are_left_out_until_all_are() {
        let proxy = three();
        let known = lock(&proxy.shared.known).clone();
        known[1].health.eject(&known[1].uri, "test");
        for _ in 0..100 {
            let (e, _) = proxy.first_try().unwrap();
            assert!(!Arc::ptr_eq(&e, &known[1]));
        }
        known[0].health.eject(&known[0].uri, "test");
        known[2].health.eject(&known[2].uri, "test");
        assert!(proxy.first_try().is_some());
    }
}
