//! What a route and an upstream group may set, that the flags set for
//! all: plain data, compared by value (a reload keeps a proxy whose
//! options did not change).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What a route may set, that flags set for all. Routes to one group with
/// equal options but the body limit share a proxy (see
/// [`proxy_key`](RouteOptions::proxy_key)).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RouteOptions {
    /// `--allow-upgrade`: empty for the default (all but h2c).
    pub(crate) allow_upgrade: Vec<String>,
    pub(crate) tunnel_idle_timeout: Option<Duration>,
    pub(crate) tunnel_half_close_timeout: Option<Duration>,
    pub(crate) preserve_host: bool,
    pub(crate) forwarded: bool,
    pub(crate) trust_forwarded: bool,
    pub(crate) via: Option<String>,
    pub(crate) max_request_body: Option<usize>,
}

impl RouteOptions {
    /// The options a proxy is built with: all but the body limit, which the
    /// request path applies before the proxy.
    pub(crate) fn proxy_key(&self) -> RouteOptions {
        RouteOptions {
            max_request_body: None,
            ..self.clone()
        }
    }
}

/// What an upstream group may set, that flags set for all.
#[derive(Debug, Clone)]
pub(crate) struct GroupOptions {
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) response_timeout: Option<Duration>,
    pub(crate) read_timeout: Option<Duration>,
    /// `None`: the `--max-connections` figure.
    pub(crate) max_connections: Option<usize>,
    pub(crate) queue_timeout: Duration,
    pub(crate) max_idle: usize,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) http2: bool,
    pub(crate) health_check: Option<String>,
    pub(crate) health_check_interval: Duration,
    pub(crate) eject_after: u32,
    pub(crate) ejection_time: Duration,
    /// How often `dns://` servers are resolved again.
    pub(crate) dns_interval: Duration,
    pub(crate) ca: Option<CaFile>,
}

/// A CA bundle to trust for https upstreams.
#[derive(Debug, Clone)]
pub(crate) struct CaFile {
    pub(crate) path: PathBuf,
    pub(crate) line: Option<usize>,
    /// Read by [`Config::load_files`](super::Config::load_files).
    pub(crate) pem: Option<Arc<[u8]>>,
}
