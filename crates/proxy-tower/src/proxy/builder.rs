//! [`Builder`]: the options of a [`ReverseProxy`] set one by one, then
//! built. The type and its builder share the `proxy` module (as hyper's and
//! tower-http's do); `build_balanced` and `build_discovered` live beside
//! [`BalancedProxy`](crate::BalancedProxy)(crate::BalancedProxy) in `balance`, so that nothing
//! here knows the balancer.
//!
//! Imports the service, the settings, the client and `tls`; never the
//! balancer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, request, response};
use proxy_core::{ClientInfo, ForwardedHeaders, HostHeader, ProxyError, ProxyRules, UpgradePolicy};

use super::service::ReverseProxy;
use crate::DefaultClient;
use crate::settings::Config;

impl ReverseProxy {
    /// A proxy to `upstream` (an absolute `http://` or `https://` URI; its path prefixes every
    /// request path) with default options.
    pub fn new(upstream: &str) -> Result<Self, ProxyError> {
        Self::builder(upstream).build()
    }

    /// A builder for a proxy to `upstream`, to set options.
    pub fn builder(upstream: &str) -> Builder {
        Builder::new(upstream)
    }
}

/// The default client speaks `http`, and `https` with the `tls` feature.
pub(crate) fn check_scheme(uri: &http::Uri) -> Result<(), ProxyError> {
    let scheme = uri.scheme();
    let supported = scheme == Some(&http::uri::Scheme::HTTP)
        || (cfg!(feature = "tls") && scheme == Some(&http::uri::Scheme::HTTPS));
    if supported {
        return Ok(());
    }
    Err(ProxyError::invalid_upstream(format!(
        "{uri}: https upstreams need proxy-tower's `tls` feature, or `build_with_client` with a TLS-capable client"
    )))
}

/// Builds a [`ReverseProxy`] with options. Made by [`ReverseProxy::builder`].
///
/// ```
/// use std::time::Duration;
/// use proxy_tower::ReverseProxy;
///
/// # fn main() -> Result<(), proxy_tower::ProxyError> {
/// let proxy = ReverseProxy::builder("http://127.0.0.1:3000")
///     .connect_timeout(Duration::from_secs(2))
///     .response_timeout(Duration::from_secs(30))
///     .tunnel_idle_timeout(Duration::from_secs(300))
///     .tunnel_half_close_timeout(Duration::from_secs(30))
///     .rewrite(|req| {
///         req.headers.insert("x-proxied-by", "proxy-tower".parse().unwrap());
///     })
///     .build()?;
/// # let _ = proxy;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder {
    config: Result<Config, ProxyError>,
}

impl Builder {
    pub(crate) fn new(upstream: &str) -> Self {
        Builder {
            config: ProxyRules::new(upstream).map(Config::new),
        }
    }

    /// The options set, or the first error met setting them.
    pub(crate) fn into_config(self) -> Result<Config, ProxyError> {
        self.config
    }

    fn map(mut self, f: impl FnOnce(&mut Config)) -> Self {
        if let Ok(c) = &mut self.config {
            f(c);
        }
        self
    }

    /// Time allowed to connect to the upstream, TCP and TLS handshakes
    /// together (default [`DEFAULT_CONNECT_TIMEOUT`](crate::DEFAULT_CONNECT_TIMEOUT); `None`: no limit).
    /// Failing it is a 502, and counts against a balanced upstream's health.
    pub fn connect_timeout(self, timeout: impl Into<Option<Duration>>) -> Self {
        let timeout = timeout.into();
        self.map(|c| c.connect_timeout = timeout)
    }

    /// Time allowed for the upstream's response head, counted from when the
    /// whole request has been sent (default [`DEFAULT_RESPONSE_TIMEOUT`](crate::DEFAULT_RESPONSE_TIMEOUT);
    /// `None`: no limit). Failing it is a 504. A client that sends its body
    /// slowly does not use it up; an upstream that takes none of a request
    /// body for this long is a 504 too, and a client that sends none of its
    /// body for this long gets a 408 (no side may keep the exchange waiting
    /// longer than this before the response head).
    pub fn response_timeout(self, timeout: impl Into<Option<Duration>>) -> Self {
        let timeout = timeout.into();
        self.map(|c| c.response_timeout = timeout)
    }

    /// Time allowed between two reads of a response body from the upstream,
    /// like nginx's `proxy_read_timeout` (default [`DEFAULT_READ_TIMEOUT`](crate::DEFAULT_READ_TIMEOUT);
    /// `None`: no limit). Past it, the body ends with an error: the client
    /// sees its response cut (a reset stream, or an HTTP/1.1 connection
    /// closed before the body's end). Streams that are quiet for longer by
    /// design (server-sent events, gRPC watches) need a longer one. Tunnels
    /// are not concerned: they have their own idle timeouts.
    pub fn read_timeout(self, timeout: impl Into<Option<Duration>>) -> Self {
        let timeout = timeout.into();
        self.map(|c| c.read_timeout = timeout)
    }

    /// Requests in flight to the upstream at once, at most (default
    /// [`DEFAULT_UPSTREAM_MAX_CONNECTIONS`](crate::DEFAULT_UPSTREAM_MAX_CONNECTIONS); `None`: no cap), like nginx's
    /// `max_conns` or Envoy's circuit breakers. Each request holds one
    /// HTTP/1.1 connection (or, with [`http2_only`](Builder::http2_only),
    /// one stream) from the call until its response body ends; a tunnel
    /// gives its slot back once its 101 is in. Past the cap, a request waits
    /// up to [`queue_timeout`](Builder::queue_timeout) for a slot, then is
    /// answered 503 (and a [`BalancedProxy`](crate::BalancedProxy) tries another upstream). Idle
    /// pooled connections are bounded apart, by
    /// [`pool_max_idle`](Builder::pool_max_idle). Applies to the default
    /// client only.
    pub fn upstream_max_connections(self, max: impl Into<Option<usize>>) -> Self {
        let max = max.into();
        self.map(|c| c.max_connections = max.map(|n| n.max(1)))
    }

    /// How long a request waits for a connection slot under
    /// [`upstream_max_connections`](Builder::upstream_max_connections), or
    /// for a free stream on an HTTP/2 upstream, before it is answered 503
    /// (default [`DEFAULT_QUEUE_TIMEOUT`](crate::DEFAULT_QUEUE_TIMEOUT)). Applies to the default client
    /// only.
    pub fn queue_timeout(self, timeout: Duration) -> Self {
        self.map(|c| c.queue_timeout = timeout)
    }

    /// Speak HTTP/2 with prior knowledge to the upstream (for gRPC). Upgrades are
    /// then answered 502: HTTP/2 has no `Upgrade`.
    pub fn http2_only(self) -> Self {
        self.map(|c| c.http2_only = true)
    }

    /// Keep at most `max` idle upstream connections for reuse (default
    /// [`DEFAULT_POOL_MAX_IDLE`](crate::DEFAULT_POOL_MAX_IDLE)); a burst of clients leaves no more than this
    /// many open once it is over. `0` keeps none: every request opens a new
    /// connection. Applies to the default client only, whose two pools (the
    /// HTTP/1.1 fast path for requests with no body or a small one,
    /// hyper-util's for the rest) each keep up to `max`.
    pub fn pool_max_idle(self, max: usize) -> Self {
        self.map(|c| c.pool_max_idle = max)
    }

    /// Close an idle upstream connection after `timeout` (default
    /// [`DEFAULT_POOL_IDLE_TIMEOUT`](crate::DEFAULT_POOL_IDLE_TIMEOUT); `None`: keep it until the upstream closes
    /// it). Applies to the default client only.
    pub fn pool_idle_timeout(self, timeout: impl Into<Option<Duration>>) -> Self {
        let timeout = timeout.into();
        self.map(|c| c.pool_idle_timeout = timeout)
    }

    /// Trusts the CA certificates in `pem` (a PEM bundle) for an `https`
    /// upstream, instead of the bundled web PKI roots: a private CA, or a
    /// self-signed upstream. The upstream's certificate must chain to one of
    /// them and name the upstream's host; a certificate that is itself in the
    /// bundle is accepted even when it is marked as a CA (as the self-signed
    /// ones of `openssl req -x509` and Go's `httptest` are), as Go accepts it.
    /// A bundle with no certificate, or a malformed one, makes
    /// [`build`](Builder::build) fail. Applies to the default client only.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("internal-ca.pem")?;
    /// let proxy = proxy_tower::ReverseProxy::builder("https://api.internal:8443")
    ///     .upstream_ca_pem(ca)
    ///     .build()?;
    /// # let _ = proxy; Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    pub fn upstream_ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        if let Ok(c) = &mut self.config {
            match crate::tls::ca_from_pem(pem.as_ref()) {
                Ok(ca) => c.upstream_ca = Some(Arc::new(ca)),
                Err(e) => self.config = Err(e),
            }
        }
        self
    }

    /// Which `Host` the upstream sees (default: its own authority).
    pub fn host_header(self, host: HostHeader) -> Self {
        self.map(|c| c.rules = c.rules.clone().host_header(host))
    }

    /// Which forwarding headers are added (default: X-Forwarded-For/-Host/-Proto,
    /// replacing the client's).
    pub fn forwarded_headers(self, forwarded: ForwardedHeaders) -> Self {
        self.map(|c| c.rules = c.rules.clone().forwarded_headers(forwarded))
    }

    /// Which upgrade protocols may pass (default: all but `h2c`).
    pub fn upgrade_policy(self, policy: UpgradePolicy) -> Self {
        self.map(|c| c.rules = c.rules.clone().upgrade_policy(policy))
    }

    /// Close an upgraded tunnel when no byte moves either way for `timeout`
    /// (default: never).
    pub fn tunnel_idle_timeout(self, timeout: Duration) -> Self {
        self.map(|c| c.tunnel = std::sync::Arc::new(c.tunnel.idle_timeout(timeout)))
    }

    /// Once one side of a tunnel has sent its FIN, close the tunnel when no byte
    /// moves either way for `timeout` (default: never). An inactivity timeout: a
    /// reply still streaming after the client's FIN is not cut.
    pub fn tunnel_half_close_timeout(self, timeout: Duration) -> Self {
        self.map(|c| c.tunnel = std::sync::Arc::new(c.tunnel.half_close_timeout(timeout)))
    }

    /// Changes the outbound request head after the proxy's own rules ran (hop-by-hop
    /// removal, URI and Host, forwarding headers), like Go's `Rewrite`: headers
    /// it adds reach the upstream even if the client named them in `Connection`.
    pub fn rewrite<F>(self, f: F) -> Self
    where
        F: Fn(&mut request::Parts) + Send + Sync + 'static,
    {
        self.map(|c| c.rewrite = Some(Arc::new(f)))
    }

    /// Changes the upstream's response head before it goes to the client (after the
    /// proxy removed its hop-by-hop fields).
    pub fn modify_response<F>(self, f: F) -> Self
    where
        F: Fn(&mut response::Parts) + Send + Sync + 'static,
    {
        self.map(|c| c.modify_response = Some(Arc::new(f)))
    }

    /// Calls `f` when a tunnel ends, however it ends, with what it carried
    /// and how it closed: for an access log line or an audit record. `f`
    /// runs on the tunnel's task after both sides are closed; keep it short
    /// (hand the record to a channel rather than write a file).
    ///
    /// ```
    /// use proxy_tower::ReverseProxy;
    ///
    /// let proxy = ReverseProxy::builder("http://127.0.0.1:3000")
    ///     .on_tunnel_end(|end| {
    ///         tracing::info!(
    ///             client = ?end.client,
    ///             sent = end.client_to_upstream,
    ///             received = end.upstream_to_client,
    ///             first_eof = end.first_eof.map(|s| s.as_str()),
    ///             ending = end.ending.as_str(),
    ///             "tunnel ended"
    ///         );
    ///     })
    ///     .build()?;
    /// # Ok::<(), proxy_tower::ProxyError>(())
    /// ```
    pub fn on_tunnel_end<F>(self, f: F) -> Self
    where
        F: Fn(&crate::TunnelEnd) + Send + Sync + 'static,
    {
        self.map(|c| c.on_tunnel_end = Some(Arc::new(f)))
    }

    /// Builds the response for a request the proxy could not forward. The default
    /// answers `err.status()` with its reason phrase as a plain-text body; details
    /// are logged with `tracing`, not sent to the client.
    pub fn error_handler<F>(self, f: F) -> Self
    where
        F: Fn(&ProxyError) -> Response<Bytes> + Send + Sync + 'static,
    {
        self.map(|c| c.error_handler = Some(Arc::new(f)))
    }

    /// Tells the proxy where a request came from (for X-Forwarded-For and
    /// `Forwarded`). By default it reads a [`ClientInfo`] from the request's
    /// extensions; with axum, read its `ConnectInfo` instead:
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use axum::extract::ConnectInfo;
    /// use proxy_tower::{ClientInfo, ReverseProxy};
    ///
    /// let proxy = ReverseProxy::builder("http://127.0.0.1:3000").client_info(|req| {
    ///     match req.extensions.get::<ConnectInfo<SocketAddr>>() {
    ///         Some(ConnectInfo(addr)) => ClientInfo::new(addr.ip()),
    ///         None => ClientInfo::unknown(),
    ///     }
    /// });
    /// # let _ = proxy;
    /// ```
    pub fn client_info<F>(self, f: F) -> Self
    where
        F: Fn(&request::Parts) -> ClientInfo + Send + Sync + 'static,
    {
        self.map(|c| c.client_info = Some(Arc::new(f)))
    }

    /// Builds the proxy with the [`DefaultClient`]: pooled connections over TCP,
    /// with TLS for `https` upstreams (cargo feature `tls`, on by default).
    ///
    /// Fails if more upstreams were added with [`add_upstream`](Builder::add_upstream):
    /// a single proxy would drop them; [`build_balanced`](Builder::build_balanced)
    /// uses them.
    pub fn build(self) -> Result<ReverseProxy<DefaultClient>, ProxyError> {
        let config = self.config?.single()?;
        check_scheme(config.rules.upstream())?;
        Ok(ReverseProxy::from_config(config))
    }

    /// Adds another upstream, for [`build_balanced`](Builder::build_balanced):
    /// the proxy then spreads requests over the first one and those added. An
    /// invalid URI makes the build fail.
    pub fn add_upstream(mut self, upstream: &str) -> Self {
        if let Ok(c) = &mut self.config {
            match upstream.parse::<http::Uri>() {
                Ok(uri) => c.more_upstreams.push(uri),
                Err(e) => {
                    self.config = Err(ProxyError::invalid_upstream(format!("{upstream:?}: {e}")))
                }
            }
        }
        self
    }

    /// Passive health of a [`BalancedProxy`](crate::BalancedProxy)'s upstreams: after
    /// `consecutive_failures` failures in a row (connection refused or timed
    /// out, response timeout), an upstream is ejected for `base_ejection`,
    /// doubled for each ejection in a row up to [`MAX_EJECTION`](crate::MAX_EJECTION)
    /// (defaults: [`DEFAULT_EJECT_AFTER`](crate::DEFAULT_EJECT_AFTER) and
    /// [`DEFAULT_BASE_EJECTION`](crate::DEFAULT_BASE_EJECTION)). `0` failures turns ejection off.
    pub fn outlier_detection(self, consecutive_failures: u32, base_ejection: Duration) -> Self {
        self.map(|c| {
            c.eject_after = consecutive_failures;
            c.base_ejection = base_ejection;
        })
    }

    /// Builds the proxy over `client`, any tower `Service` that sends a request to
    /// the upstream (to add retries, load balancing, TLS, or a test double). It gets
    /// requests with absolute URIs and the version to speak (HTTP/1.1, or HTTP/2
    /// after [`http2_only`](Builder::http2_only)).
    ///
    /// Fails, as [`build`](Builder::build) does, if more upstreams were added.
    pub fn build_with_client<C>(self, client: C) -> Result<ReverseProxy<C>, ProxyError> {
        Ok(ReverseProxy::with_client(self.config?.single()?, client))
    }
}
