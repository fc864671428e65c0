//! The options of a reverse proxy as plain data ([`Config`]), and their
//! defaults. Everything a running proxy reads; nothing here builds or runs
//! anything.
//!
//! At the bottom of the crate: it may import `tunnels`, `tls`, `metrics`
//! and the crates below, never the proxy, its builder, the client or the
//! balancer.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use halfclose_io::Tunnel;
use http::{Response, request, response};
use proxy_core::{ClientInfo, ProxyError, ProxyRules};

use crate::tunnels::Tunnels;

pub(crate) type ErrorHandler = Arc<dyn Fn(&ProxyError) -> Response<Bytes> + Send + Sync>;
pub(crate) type Rewrite = Arc<dyn Fn(&mut request::Parts) + Send + Sync>;
pub(crate) type ModifyResponse = Arc<dyn Fn(&mut response::Parts) + Send + Sync>;
pub(crate) type ClientInfoFn = Arc<dyn Fn(&request::Parts) -> ClientInfo + Send + Sync>;
pub(crate) type OnTunnelEnd = Arc<dyn Fn(&crate::TunnelEnd) + Send + Sync>;

/// Idle upstream connections kept for reuse, at most (nginx's `keepalive`).
/// Past this many concurrent requests, connections are closed after their
/// response and opened again for the next: 64 cost 25% to 45% of the
/// requests per second at 256 concurrent clients (docs/benchmarks.md). 512
/// is nginx's `keepalive 256` on each of two workers.
pub const DEFAULT_POOL_MAX_IDLE: usize = 512;
/// How long an idle upstream connection is kept (nginx's upstream
/// `keepalive_timeout` is 60 s).
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Consecutive failures of a balanced upstream (connection refused or timed
/// out, closed before its answer, response timeout) after which it is
/// ejected.
pub const DEFAULT_EJECT_AFTER: u32 = 3;
/// How long the first ejection lasts; each further one in a row doubles it,
/// up to [`MAX_EJECTION`](crate::MAX_EJECTION).
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(5);
/// Time allowed to connect to the upstream, TLS handshake included (Envoy's
/// default is 5 s, Go's `DefaultTransport` 30 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the response head once the whole request has been sent
/// (nginx's `proxy_read_timeout` is 60 s).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed between two reads of a response body (nginx's
/// `proxy_read_timeout`: not the whole body, the silence in it).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests in flight to one upstream, at most: each holds an HTTP/1.1
/// connection (or an HTTP/2 stream) until its response body ends (Envoy's
/// circuit breakers default to 1024 connections and requests).
pub const DEFAULT_UPSTREAM_MAX_CONNECTIONS: usize = 1024;
/// How long a request waits for a connection slot (or an HTTP/2 stream)
/// before it is answered 503.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything a running proxy needs, shared by its clones.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) rules: ProxyRules,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) response_timeout: Option<Duration>,
    pub(crate) read_timeout: Option<Duration>,
    /// Requests in flight to the upstream, at most (`None`: no cap).
    pub(crate) max_connections: Option<usize>,
    pub(crate) queue_timeout: Duration,
    pub(crate) http2_only: bool,
    pub(crate) pool_max_idle: usize,
    pub(crate) pool_idle_timeout: Option<Duration>,
    /// Shared: every tunnel's task holds it (one word, not 40 bytes).
    pub(crate) tunnel: std::sync::Arc<Tunnel>,
    pub(crate) error_handler: Option<ErrorHandler>,
    pub(crate) rewrite: Option<Rewrite>,
    pub(crate) modify_response: Option<ModifyResponse>,
    pub(crate) client_info: Option<ClientInfoFn>,
    pub(crate) on_tunnel_end: Option<OnTunnelEnd>,
    pub(crate) tunnels: Tunnels,
    /// More upstreams, for [`Builder::build_balanced`].
    pub(crate) more_upstreams: Vec<http::Uri>,
    /// Passive health of balanced upstreams: consecutive failures before an
    /// ejection, and the first ejection's length.
    pub(crate) eject_after: u32,
    pub(crate) base_ejection: Duration,
    /// One upstream of a [`BalancedProxy`].
    pub(crate) balanced: bool,
    /// This proxy's metrics handles (label `upstream`: its URI).
    pub(crate) metrics: Arc<crate::metrics::Upstream>,
    /// Trust anchors for an `https` upstream instead of the bundled roots.
    #[cfg(feature = "tls")]
    pub(crate) upstream_ca: Option<Arc<crate::tls::CustomCa>>,
}

/// The upstream's URI, as a metrics label.
fn rules_label(rules: &ProxyRules) -> String {
    rules.upstream().to_string()
}

impl Config {
    /// The same options for other rules (another upstream of a balancer).
    pub(crate) fn with_rules(&self, rules: ProxyRules) -> Self {
        let label = metrics::SharedString::from(rules_label(&rules));
        Config {
            metrics: Arc::new(crate::metrics::Upstream::new(&label)),
            rules,
            ..self.clone()
        }
    }

    pub(crate) fn new(rules: ProxyRules) -> Self {
        crate::metrics::describe();
        let label = metrics::SharedString::from(rules_label(&rules));
        Config {
            metrics: Arc::new(crate::metrics::Upstream::new(&label)),
            rules,
            connect_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
            response_timeout: Some(DEFAULT_RESPONSE_TIMEOUT),
            read_timeout: Some(DEFAULT_READ_TIMEOUT),
            max_connections: Some(DEFAULT_UPSTREAM_MAX_CONNECTIONS),
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            http2_only: false,
            pool_max_idle: DEFAULT_POOL_MAX_IDLE,
            pool_idle_timeout: Some(DEFAULT_POOL_IDLE_TIMEOUT),
            tunnel: std::sync::Arc::new(Tunnel::new()),
            error_handler: None,
            rewrite: None,
            modify_response: None,
            client_info: None,
            on_tunnel_end: None,
            tunnels: Tunnels::default(),
            more_upstreams: Vec::new(),
            eject_after: DEFAULT_EJECT_AFTER,
            base_ejection: DEFAULT_BASE_EJECTION,
            balanced: false,
            #[cfg(feature = "tls")]
            upstream_ca: None,
        }
    }

    /// The options of a proxy to one upstream: an error if more were added
    /// (they would be dropped without a word).
    pub(crate) fn single(self) -> Result<Self, ProxyError> {
        match self.more_upstreams.len() {
            0 => Ok(self),
            n => Err(ProxyError::invalid_upstream(format!(
                "{n} more upstream(s) added with `Builder::add_upstream`: a single proxy would drop them; build with `build_balanced`"
            ))),
        }
    }

    /// The client's address, from the hook or the request's [`ClientInfo`]
    /// extension.
    pub(crate) fn client_info(&self, parts: &request::Parts) -> ClientInfo {
        match &self.client_info {
            Some(f) => f(parts),
            None => parts
                .extensions
                .get::<ClientInfo>()
                .copied()
                .unwrap_or_else(ClientInfo::unknown),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("rules", &self.rules)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("max_connections", &self.max_connections)
            .field("queue_timeout", &self.queue_timeout)
            .field("http2_only", &self.http2_only)
            .field("pool_max_idle", &self.pool_max_idle)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("tunnel", &self.tunnel)
            .field("error_handler", &self.error_handler.is_some())
            .field("rewrite", &self.rewrite.is_some())
            .field("modify_response", &self.modify_response.is_some())
            .finish()
    }
}
