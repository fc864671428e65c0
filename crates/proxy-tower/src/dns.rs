//! Upstreams found in DNS (feature `dns`): [`DnsDiscover`] resolves a name
//! every few seconds and yields the addresses that appear and disappear,
//! as the `tower::discover::Discover` that
//! [`Builder::build_discovered`](crate::Builder::build_discovered) takes.
//! For a Kubernetes headless service, or any name whose A/AAAA records
//! follow the instances behind it.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use proxy_tower::ReverseProxy;
//! use proxy_tower::dns::DnsDiscover;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Every address of chat.default.svc.cluster.local, port 8080, checked every 5 s.
//! let chat = DnsDiscover::builder("chat.default.svc.cluster.local", 8080)
//!     .interval(Duration::from_secs(5))
//!     .build();
//! let proxy = ReverseProxy::builder("http://chat.default.svc.cluster.local:8080")
//!     .build_discovered(chat)?;
//! let app = axum::Router::new().fallback_service(proxy);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! An address that disappears gets no new requests; requests and tunnels
//! already on it go on until they end. A failed resolution keeps the
//! addresses last found, with one WARN line until a resolution works again.
//! An answer with no address at all is taken as a failure too (a name
//! briefly without records would otherwise leave the group empty).
//!
//! At the bottom of the crate: imports nothing of it.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use http::Uri;
use tokio::sync::mpsc;
use tower::discover::Change;

/// Changes queued for the balancer, at most.
const CHANGES: usize = 256;

/// How often a name is resolved again, by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// The future a [`Resolve`] returns.
pub type Resolving = Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;

/// Turns a name and port into socket addresses. The default,
/// [`SystemResolver`], asks the system (`getaddrinfo`, A and AAAA records
/// alike); tests and other service registries plug in their own.
pub trait Resolve: Send + Sync + 'static {
    /// The addresses of `host` at `port`.
    fn resolve(&self, host: &str, port: u16) -> Resolving;
}

impl<F> Resolve for F
where
    F: Fn(&str, u16) -> Resolving + Send + Sync + 'static,
{
    fn resolve(&self, host: &str, port: u16) -> Resolving {
        self(host, port)
    }
}

/// The system's resolver, through `tokio::net::lookup_host`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Resolving {
        let target = format!("{host}:{port}");
        Box::pin(async move { Ok(tokio::net::lookup_host(target).await?.collect()) })
    }
}

/// Options of a [`DnsDiscover`].
pub struct Builder {
    host: String,
    port: u16,
    https: bool,
    interval: Duration,
    resolver: Arc<dyn Resolve>,
    seed: Vec<SocketAddr>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("https", &self.https)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// Resolves again this often (default [`DEFAULT_INTERVAL`]; at least
    /// 10 ms).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Speaks HTTPS to the addresses found (`https://IP:PORT`), instead of
    /// HTTP.
    pub fn https(mut self, https: bool) -> Self {
        self.https = https;
        self
    }

    /// Starts with these addresses, known at once (before the first
    /// resolution, which then adds and removes as it finds): the addresses
    /// an earlier `DnsDiscover` of the same name found, so that a new
    /// balancer is never empty while it resolves.
    pub fn seed(mut self, addresses: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.seed = addresses.into_iter().collect();
        self
    }

    /// Resolves with `resolver` instead of the system's.
    pub fn resolver(mut self, resolver: impl Resolve) -> Self {
        self.resolver = Arc::new(resolver);
        self
    }

    /// Starts resolving, on a task of the current tokio runtime; the task
    /// ends when the [`DnsDiscover`] is dropped.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn build(self) -> DnsDiscover {
        // Changes wait here until the balancer takes them in (at its next
        // request); when it is full, resolving waits for room.
        let (tx, rx) = mpsc::channel(CHANGES.max(self.seed.len()));
        for addr in &self.seed {
            if let Some(uri) = uri_of(*addr, self.https) {
                let _ = tx.try_send(Change::Insert(*addr, uri));
            }
        }
        let task = tokio::spawn(resolve_every(self, tx));
        DnsDiscover {
            changes: rx,
            task: task.abort_handle(),
        }
    }
}

/// The addresses of a name, as a `tower::discover::Discover` of upstream
/// URIs keyed by socket address. See the [module](self) docs.
#[derive(Debug)]
pub struct DnsDiscover {
    changes: mpsc::Receiver<Change<SocketAddr, Uri>>,
    task: tokio::task::AbortHandle,
}

impl DnsDiscover {
    /// The addresses of `host` at `port`, over HTTP, resolved every
    /// [`DEFAULT_INTERVAL`] by the system's resolver.
    pub fn new(host: &str, port: u16) -> DnsDiscover {
        DnsDiscover::builder(host, port).build()
    }

    /// The addresses of `host` at `port`, with options.
    pub fn builder(host: &str, port: u16) -> Builder {
        Builder {
            host: host.trim_matches(['[', ']']).to_owned(),
            port,
            https: false,
            interval: DEFAULT_INTERVAL,
            resolver: Arc::new(SystemResolver),
            seed: Vec::new(),
        }
    }
}

impl Drop for DnsDiscover {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for DnsDiscover {
    type Item = Result<Change<SocketAddr, Uri>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Never ends: the resolving task lives as long as this does.
        match self.changes.poll_recv(cx) {
            Poll::Ready(Some(change)) => Poll::Ready(Some(Ok(change))),
            _ => Poll::Pending,
        }
    }
}

/// The URI of an address found.
fn uri_of(addr: SocketAddr, https: bool) -> Option<Uri> {
    let scheme = if https { "https" } else { "http" };
    format!("{scheme}://{addr}").parse().ok()
}

/// The resolving task: each turn, the addresses that appeared are inserted
/// and those that disappeared removed.
async fn resolve_every(b: Builder, tx: mpsc::Sender<Change<SocketAddr, Uri>>) {
    let mut known: BTreeSet<SocketAddr> = b.seed.iter().copied().collect();
    let mut failing = false;
    let mut tick = tokio::time::interval(b.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A resolver that never answers is bounded by the interval.
        let found = match tokio::time::timeout(
            b.interval.max(Duration::from_secs(1)),
            b.resolver.resolve(&b.host, b.port),
        )
        .await
        {
            Ok(Ok(addrs)) if !addrs.is_empty() => addrs.into_iter().collect::<BTreeSet<_>>(),
            outcome => {
                if !failing {
                    failing = true;
                    let error = match outcome {
                        Ok(Ok(_)) => "no address".to_owned(),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "no answer in time".to_owned(),
                    };
                    tracing::warn!(
                        host = %b.host,
                        port = b.port,
                        error,
                        addresses = known.len(),
                        "DNS resolution failed; keeping the addresses last found (said once until it works)"
                    );
                }
                continue;
            }
        };
        if failing {
            failing = false;
            tracing::info!(host = %b.host, addresses = found.len(), "DNS resolution works again");
        }
        // Insertions first: a request between the two never finds the
        // group empty when one address replaces another.
        for new in found.difference(&known) {
            let Some(uri) = uri_of(*new, b.https) else {
                continue;
            };
            tracing::info!(host = %b.host, address = %new, "upstream address found in DNS");
            if tx.send(Change::Insert(*new, uri)).await.is_err() {
                return;
            }
        }
        for gone in known.difference(&found) {
            tracing::info!(host = %b.host, address = %gone, "upstream address gone from DNS");
            if tx.send(Change::Remove(*gone)).await.is_err() {
                return;
            }
        }
        known = found;
    }
}
