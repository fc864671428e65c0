//! The balancer's endpoints: one per upstream URI the discover stream
//! inserted (its own `ReverseProxy`, health and load), and the stream that
//! keeps the list of them.
//!
//! May import the proxy (each endpoint is one) and `health`; never the
//! balancer's service above it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use http::{Request, Response, Uri};
use tower::discover::{Change, Discover};
use tower_service::Service;

use super::health::Health;
use crate::proxy::Verdict;
use crate::settings::Config;
use crate::{BoxError, ProxyBody, RequestBody, ReverseProxy, UpstreamBody};

/// Turns the user's stream of upstream URIs into the balancer's endpoints,
/// and keeps the list of them.
pub(super) struct Endpoints<D: Discover> {
    pub(super) discover: Pin<Box<D>>,
    pub(super) config: Config,
    pub(super) ids: HashMap<D::Key, u64>,
    pub(super) next_id: u64,
    pub(super) known: Arc<Mutex<Vec<Arc<Endpoint>>>>,
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
pub(super) struct Endpoint {
    pub(super) id: u64,
    pub(super) uri: Uri,
    pub(super) proxy: ReverseProxy,
    pub(super) health: Health,
    /// Requests in flight (until their response heads): the load.
    pub(super) in_flight: AtomicUsize,
}

impl Endpoint {
    pub(super) fn load(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Sends `req` to this upstream whether or not it is ejected, and counts
    /// the outcome in its health.
    pub(super) async fn send(
        &self,
        req: Request<RequestBody>,
    ) -> Response<ProxyBody<UpstreamBody>> {
        let in_flight = InFlight::start(&self.in_flight);
        let mut proxy = self.proxy.clone();
        let res = match Service::<Request<RequestBody>>::call(&mut proxy, req).await {
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

/// The endpoint list's lock (a poisoned one is still good: no invariant
/// spans a panic).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
