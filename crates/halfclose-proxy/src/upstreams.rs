//! The proxied service, built from the options: one `ReverseProxy`, or a
//! `BalancedProxy` over several upstreams (`Upstreams`), with the options'
//! policies and bounds; and what is asked of the upstreams apart from
//! proxying (the start-up reachability check, `/readyz`'s TCP check,
//! `--health-check`).
//!
//! Imports: `cli` (the options) and `units`. It knows nothing of serving
//! (listeners, connections, workers, the admin port): `serve`, `stack` and
//! `admin` import it, never the other way.

use std::time::Duration;

use proxy_tower::{BalancedProxy, ForwardedHeaders, HostHeader, ReverseProxy, UpgradePolicy};
use tokio::net::TcpStream;

use crate::cli::ServeArgs;
use crate::units::nonzero;

fn upgrade_policy(allowed: &[String]) -> UpgradePolicy {
    match allowed {
        [] => UpgradePolicy::default(),
        [one] if one == "*" => UpgradePolicy::allow_all(),
        [one] if one.eq_ignore_ascii_case("none") => UpgradePolicy::deny_all(),
        list => UpgradePolicy::only(list),
    }
}

/// The proxy of one of `workers` workers, over `upstreams` (one, or several
/// balanced); `upstream_ca` is the PEM of `--upstream-ca`.
pub(crate) fn build_proxy(
    args: &ServeArgs,
    upstreams: &[String],
    upstream_ca: Option<&[u8]>,
    workers: usize,
    upstream_max_connections: usize,
) -> Result<Upstreams, String> {
    let (first, more) = upstreams.split_first().ok_or("no upstream")?;
    let forwarded = ForwardedHeaders::default()
        .forwarded(args.forwarded)
        .trust_incoming(args.trust_forwarded);
    let forwarded = match &args.via {
        Some(name) => forwarded.via(name),
        None => forwarded,
    };
    let mut b = ReverseProxy::builder(first)
        .connect_timeout(args.connect_timeout)
        .host_header(if args.preserve_host {
            HostHeader::Preserve
        } else {
            HostHeader::Upstream
        })
        .forwarded_headers(forwarded)
        // Each worker has its own pool: the bound is shared out among them (at
        // least one each, unless it is 0).
        .pool_max_idle(match args.upstream_max_idle {
            0 => 0,
            n => (n / workers).max(1),
        })
        .pool_idle_timeout(nonzero(args.upstream_idle_timeout))
        .upgrade_policy(upgrade_policy(&args.allow_upgrade));
    b = b
        .response_timeout(nonzero(args.response_timeout))
        .read_timeout(nonzero(args.read_timeout))
        // Shared out among the workers' proxies, at least one each.
        .upstream_max_connections(
            (upstream_max_connections > 0).then(|| (upstream_max_connections / workers).max(1)),
        )
        .queue_timeout(args.upstream_queue_timeout);
    if let Some(d) = nonzero(args.tunnel_idle_timeout) {
        b = b.tunnel_idle_timeout(d);
    }
    if let Some(d) = nonzero(args.tunnel_half_close_timeout) {
        b = b.tunnel_half_close_timeout(d);
    }
    if args.http2_upstream {
        b = b.http2_only();
    }
    #[cfg(feature = "tls")]
    if let Some(pem) = upstream_ca {
        b = b.upstream_ca_pem(pem);
    }
    #[cfg(not(feature = "tls"))]
    let _ = upstream_ca;
    if more.is_empty() {
        return b.build().map(Upstreams::One).map_err(|e| e.to_string());
    }
    for u in more {
        b = b.add_upstream(u);
    }
    b.build_balanced()
        .map(Upstreams::Many)
        .map_err(|e| e.to_string())
}

/// The proxy a worker serves: to one upstream, or balanced over several.
#[derive(Clone)]
pub(crate) enum Upstreams {
    One(ReverseProxy),
    Many(BalancedProxy),
}

impl Upstreams {
    pub(crate) fn tunnels(&self) -> proxy_tower::Tunnels {
        match self {
            Upstreams::One(p) => p.tunnels(),
            Upstreams::Many(p) => p.tunnels(),
        }
    }
}

impl<B> tower::Service<http::Request<B>> for Upstreams
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<proxy_tower::BoxError>,
{
    type Response = http::Response<proxy_tower::ProxyBody<proxy_tower::UpstreamBody>>;
    type Error = std::convert::Infallible;
    type Future = proxy_tower::ResponseFuture<proxy_tower::UpstreamBody>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match self {
            Upstreams::One(p) => p.call(req),
            Upstreams::Many(p) => p.call(req),
        }
    }
}

/// Says once, at start, whether the upstream answers: a WARN line when it does
/// not. The proxy serves either way (502 until the upstream is up), since
/// orchestrators start the proxy and its upstream in any order.
pub(crate) fn check_upstream(upstream: http::Uri, limit: Duration) {
    tokio::spawn(async move {
        if let Err(problem) = tcp_reachable(&upstream, limit).await {
            tracing::warn!(
                %upstream,
                error = %problem,
                "upstream not reachable yet; answering 502 until it is"
            );
        }
    });
}

/// Whether `upstream` takes a TCP connection within `limit` (the start-up
/// check and `/readyz`).
pub(crate) async fn tcp_reachable(upstream: &http::Uri, limit: Duration) -> Result<(), String> {
    let host = upstream.host().unwrap_or_default().trim_matches(['[', ']']);
    let default_port = match upstream.scheme() == Some(&http::uri::Scheme::HTTPS) {
        true => 443,
        false => 80,
    };
    let port = upstream.port_u16().unwrap_or(default_port);
    match tokio::time::timeout(limit, TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {limit:?}")),
    }
}

/// `--health-check`: checks every upstream of this worker's balancer, every
/// `interval` (each worker checks its own, on its own thread and pools).
pub(crate) async fn check_health(proxy: BalancedProxy, path: String, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        proxy.check_health(&path, interval).await;
    }
}
