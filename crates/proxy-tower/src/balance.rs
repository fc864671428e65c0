//! Several upstreams behind one proxy: power of two choices spreads requests,
//! failing upstreams are ejected for a while, and a request that could not be
//! sent at all is retried once on another upstream.

use std::cell::Cell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

use futures_util::{Stream, StreamExt};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use tokio::time::Instant;
use tower::discover::{Change, Discover};
use tower_service::Service;

use crate::body::ProxyBody;
use crate::config::Config;
use crate::proxy::{ResponseFuture, Unsent, Verdict};
use crate::{BoxError, RequestBody, ReverseProxy, Tunnels, UpstreamBody};

/// Consecutive failures (connection refused or timed out, response timeout)
/// after which an upstream is ejected.
pub const DEFAULT_EJECT_AFTER: u32 = 3;
/// How long the first ejection lasts; each further one in a row doubles it,
/// up to [`MAX_EJECTION`].
pub const BASE_EJECTION: Duration = Duration::from_secs(5);
/// The longest ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

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
///   that lets the response timeout pass, [`DEFAULT_EJECT_AFTER`] times in a
///   row is ejected for [`BASE_EJECTION`], doubled for each ejection in a row
///   (up to [`MAX_EJECTION`]; Envoy's outlier detection). When every upstream
///   is ejected, the proxy tries them anyway rather than failing everything.
/// - A request that could not be sent at all (no connection) is retried once
///   on another upstream when it has no body and is not an upgrade; nothing
///   else is retried.
///
/// Every upstream gets the same options (timeouts, policies, hooks), set on
/// the builder. Like [`ReverseProxy`] it never fails: `Error = Infallible`.
///
/// ```
/// # fn main() -> Result<(), proxy_tower::ProxyError> {
/// use std::time::Duration;
///
/// let proxy = proxy_tower::ReverseProxy::builder("http://10.0.0.1:3000")
///     .upstream("http://10.0.0.2:3000")
///     .upstream("http://10.0.0.3:3000")
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
            let Some(Unsent(failed)) = res.extensions().get::<Unsent>().copied() else {
                return res;
            };
            // Not a byte went out: once more, on another upstream.
            let (Some(replay), Some(other)) = (replay, this.any_other(failed)) else {
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

/// Turns the user's stream of upstream URIs into the balancer's endpoints,
/// and keeps the list of them.
struct Endpoints<D: Discover> {
    discover: Pin<Box<D>>,
    config: Config,
    ids: HashMap<D::Key, u64>,
    next_id: u64,
    known: Arc<Mutex<Vec<Arc<Endpoint>>>>,
}

// Nothing in it is pinned in place: the discover stream is boxed.
impl<D: Discover> Unpin for Endpoints<D> {}

impl<D> Stream for Endpoints<D>
where
    D: Discover<Service = Uri>,
    D::Key: Hash + Eq + Clone,
    D::Error: Into<BoxError>,
{
    type Item = Result<(), BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let change = match this.discover.as_mut().poll_discover(cx) {
                Poll::Ready(Some(Ok(c))) => c,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            match change {
                Change::Insert(key, uri) => {
                    let config = match this.config.rules.for_upstream(uri.clone()) {
                        Ok(rules) => Config {
                            balanced: true,
                            ..this.config.with_rules(rules)
                        },
                        Err(e) => {
                            tracing::warn!(%uri, error = %e, "upstream ignored");
                            continue;
                        }
                    };
                    let id = this.next_id;
                    this.next_id += 1;
                    if let Some(old) = this.ids.insert(key, id) {
                        lock(&this.known).retain(|e| e.id != old);
                    }
                    let health = Health::new(
                        config.eject_after,
                        config.base_ejection,
                        config.metrics.clone(),
                    );
                    let endpoint = Endpoint {
                        id,
                        uri,
                        proxy: ReverseProxy::from_config(config),
                        health,
                        in_flight: AtomicUsize::new(0),
                    };
                    lock(&this.known).push(Arc::new(endpoint));
                    return Poll::Ready(Some(Ok(())));
                }
                Change::Remove(key) => {
                    let Some(id) = this.ids.remove(&key) else {
                        continue;
                    };
                    lock(&this.known).retain(|e| e.id != id);
                    return Poll::Ready(Some(Ok(())));
                }
            }
        }
    }
}

/// One upstream: its proxy, its health, its load.
struct Endpoint {
    id: u64,
    uri: Uri,
    proxy: ReverseProxy,
    health: Health,
    /// Requests in flight (until their response heads): the load.
    in_flight: AtomicUsize,
}

impl Endpoint {
    fn load(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Sends `req` to this upstream whether or not it is ejected, and counts
    /// the outcome in its health. A response the upstream never got (no
    /// connection) says which upstream it was, for the retry.
    async fn send(&self, req: Request<RequestBody>) -> Response<ProxyBody<UpstreamBody>> {
        let in_flight = InFlight::start(&self.in_flight);
        let mut proxy = self.proxy.clone();
        let mut res = match Service::<Request<RequestBody>>::call(&mut proxy, req).await {
            Ok(res) => res,
            Err(never) => match never {},
        };
        drop(in_flight);
        // Only what the proxy observed of the upstream counts: its own
        // answers (a 504 it sent included) are successes, and failures the
        // client caused (a slow or broken body) count for nothing.
        match res.extensions().get::<Verdict>() {
            None => self.health.success(),
            Some(Verdict::Failed) => self.health.failure(&self.uri),
            Some(Verdict::NotJudged) => {}
        }
        let unsent = res.extensions().get::<Unsent>().is_some();
        if unsent {
            res.extensions_mut().insert(Unsent(Some(self.id)));
        }
        res
    }
}

/// One request in flight to an upstream (its load), until its response head.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Passive health of one upstream (outlier detection).
struct Health {
    metrics: Arc<crate::metrics::Upstream>,
    eject_after: u32,
    base_ejection: Duration,
    failures: AtomicU32,
    /// Ejections in a row (reset by a success), for the growing cool-down.
    ejections: AtomicU32,
    /// When the current ejection ends, in nanoseconds after `EPOCH`; 0: none.
    ejected_until: AtomicU64,
}

/// The reference point of `Health::ejected_until`.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    Instant::from_std(*EPOCH.get_or_init(std::time::Instant::now))
}

impl Health {
    fn new(
        eject_after: u32,
        base_ejection: Duration,
        metrics: Arc<crate::metrics::Upstream>,
    ) -> Self {
        Health {
            metrics,
            eject_after,
            base_ejection,
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }

    fn ejected_until(&self) -> Option<Instant> {
        match self.ejected_until.load(Ordering::Acquire) {
            0 => None,
            n => {
                let until = epoch() + Duration::from_nanos(n);
                (until > Instant::now()).then_some(until)
            }
        }
    }

    fn is_ejected(&self) -> bool {
        self.ejected_until().is_some()
    }

    /// An active check's verdict: a failure ejects now, a success ends any
    /// ejection.
    fn report(&self, healthy: bool, uri: &Uri) {
        if healthy {
            if self.is_ejected() {
                tracing::info!(upstream = %uri, "upstream passed its health check; back in");
            }
            self.ejected_until.store(0, Ordering::Release);
            self.success();
        } else if !self.is_ejected() {
            self.eject(uri, "failed its health check");
        }
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.ejections.store(0, Ordering::Release);
    }

    fn failure(&self, uri: &Uri) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if self.eject_after == 0 || n < self.eject_after || self.is_ejected() {
            return;
        }
        self.eject(uri, "failed in a row");
    }

    /// Ejects the upstream unless it is ejected already: of failures that
    /// reach the bound at the same time, one ejects.
    fn eject(&self, uri: &Uri, why: &'static str) {
        let now = Instant::now();
        let mut current = self.ejected_until.load(Ordering::Acquire);
        let cool_down = loop {
            if current != 0 && epoch() + Duration::from_nanos(current) > now {
                return;
            }
            let k = self.ejections.load(Ordering::Acquire);
            let cool_down = self
                .base_ejection
                .saturating_mul(1u32 << k.min(16))
                .min(MAX_EJECTION);
            let until = (now + cool_down - epoch()).as_nanos().max(1) as u64;
            match self.ejected_until.compare_exchange(
                current,
                until,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break cool_down,
                Err(other) => current = other,
            }
        };
        self.ejections.fetch_add(1, Ordering::AcqRel);
        self.failures.store(0, Ordering::Release);
        tracing::warn!(upstream = %uri, why, ?cool_down, "upstream ejected");
        self.metrics.ejection();
    }
}

/// Upstream URIs that never change, as a `Discover`.
pub(crate) fn fixed(
    uris: Vec<Uri>,
) -> impl Discover<Service = Uri, Key = usize, Error = Infallible> {
    futures_util::stream::iter(
        uris.into_iter()
            .enumerate()
            .map(|(i, uri)| Ok::<_, Infallible>(Change::Insert(i, uri))),
    )
    .chain(futures_util::stream::pending())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> BalancedProxy {
        crate::ReverseProxy::builder("http://127.0.0.1:1")
            .upstream("http://127.0.0.1:2")
            .upstream("http://127.0.0.1:3")
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

    /// Failures that reach the bound at the same time eject once: one
    /// ejection counted, the cool-down not doubled.
    #[test]
    fn concurrent_failures_eject_once() {
        let proxy = three();
        let known = lock(&proxy.shared.known).clone();
        let target = known[0].clone();
        std::thread::scope(|s| {
            for _ in 0..8 {
                let target = target.clone();
                s.spawn(move || {
                    for _ in 0..DEFAULT_EJECT_AFTER {
                        target.health.failure(&target.uri);
                    }
                });
            }
        });
        assert!(target.health.is_ejected());
        assert_eq!(target.health.ejections.load(Ordering::Acquire), 1);
        let until = target.health.ejected_until().unwrap();
        assert!(until <= Instant::now() + BASE_EJECTION, "cool-down doubled");
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
