//! The proxied service of an upstream group, built from its options and a
//! route's: one `ReverseProxy`, or a
//! `BalancedProxy` over several upstreams (`Upstreams`), with the options'
//! policies and bounds; and what is asked of the upstreams apart from
//! proxying (the start-up reachability check, `/readyz`'s TCP check,
//! `--health-check`).
//!
//! Imports: `config` (the options) and `access_log` (tunnel lines). It
//! knows nothing of serving
//! (listeners, connections, workers, the admin port): `serve`, `stack` and
//! `admin` import it, never the other way.

use std::time::Duration;

use proxy_tower::{BalancedProxy, ForwardedHeaders, HostHeader, ReverseProxy, UpgradePolicy};
use tokio::net::TcpStream;

use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::config::{Group, RouteOptions, dns_server};

fn upgrade_policy(allowed: &[String]) -> UpgradePolicy {
    match allowed {
        [] => UpgradePolicy::default(),
        [one] if one == "*" => UpgradePolicy::allow_all(),
        [one] if one.eq_ignore_ascii_case("none") => UpgradePolicy::deny_all(),
        list => UpgradePolicy::only(list),
    }
}

/// The proxy of one of `workers` workers to the upstream `group`, with a
/// route's `options`; `upstream_max_connections` is the cap when the group
/// sets none (the `--max-connections` figure).
pub(crate) fn build_proxy(
    name: &str,
    group: &Group,
    options: &RouteOptions,
    workers: usize,
    upstream_max_connections: usize,
    log: Option<&AccessLog>,
    seed: &[std::net::SocketAddr],
) -> Result<Upstreams, String> {
    let g = &group.options;
    let (first, more) = group.servers.split_first().ok_or("no upstream")?;
    let discovered = group.servers.iter().any(|s| dns_server(s).is_some());
    // The URI the options are checked against: a dns:// server's own.
    let first = match dns_server(first) {
        Some(dns) => dns?.uri(),
        None => first.clone(),
    };
    let first = first.as_str();
    let forwarded = ForwardedHeaders::default()
        .forwarded(options.forwarded)
        .trust_incoming(options.trust_forwarded);
    let forwarded = match &options.via {
        Some(name) => forwarded.via(name),
        None => forwarded,
    };
    let mut b = ReverseProxy::builder(first)
        .connect_timeout(g.connect_timeout)
        .host_header(if options.preserve_host {
            HostHeader::Preserve
        } else {
            HostHeader::Upstream
        })
        .forwarded_headers(forwarded)
        // Each worker has its own pool: the bound is shared out among them (at
        // least one each, unless it is 0).
        .pool_max_idle(match g.max_idle {
            0 => 0,
            n => (n / workers).max(1),
        })
        .pool_idle_timeout(g.idle_timeout)
        .upgrade_policy(upgrade_policy(&options.allow_upgrade));
    // Each tunnel's line in the access log, when the config has one (a
    // reload that turns it on builds new proxies).
    if let Some(log) = log {
        let (log, name) = (log.clone(), Arc::<str>::from(name));
        b = b.on_tunnel_end(move |end| {
            if log.enabled() {
                log.tunnel(&name, end);
            }
        });
    }
    let cap = g.max_connections.unwrap_or(upstream_max_connections);
    b = b
        .response_timeout(g.response_timeout)
        .read_timeout(g.read_timeout)
        // Shared out among the workers' proxies, at least one each.
        .upstream_max_connections((cap > 0).then(|| (cap / workers).max(1)))
        .queue_timeout(g.queue_timeout);
    if let Some(d) = options.tunnel_idle_timeout {
        b = b.tunnel_idle_timeout(d);
    }
    if let Some(d) = options.tunnel_half_close_timeout {
        b = b.tunnel_half_close_timeout(d);
    }
    if g.http2 {
        b = b.http2_only();
    }
    #[cfg(feature = "tls")]
    if let Some(pem) = g.ca.as_ref().and_then(|ca| ca.pem.as_ref()) {
        b = b.upstream_ca_pem(pem);
    }
    if discovered {
        return b
            .outlier_detection(g.eject_after, g.ejection_time)
            .build_discovered(discover(&group.servers, g.dns_interval, seed)?)
            .map(Upstreams::Many)
            .map_err(|e| e.to_string());
    }
    if more.is_empty() {
        return b.build().map(Upstreams::One).map_err(|e| e.to_string());
    }
    for u in more {
        b = b.add_upstream(u);
    }
    b.outlier_detection(g.eject_after, g.ejection_time)
        .build_balanced()
        .map(Upstreams::Many)
        .map_err(|e| e.to_string())
}

/// The servers of a group with `dns://` ones, as one `Discover`: the fixed
/// ones at once, each name's addresses as they are found. Must be called in
/// a tokio runtime (the resolving tasks are spawned on it).
fn discover(
    servers: &[String],
    interval: Duration,
    seed: &[std::net::SocketAddr],
) -> Result<
    impl tower::discover::Discover<Service = http::Uri, Key = String, Error = std::convert::Infallible>
    + Send
    + 'static,
    String,
> {
    use futures_util::StreamExt;
    use tower::discover::Change;
    type Changes = futures_util::stream::BoxStream<
        'static,
        Result<Change<String, http::Uri>, std::convert::Infallible>,
    >;
    let mut streams: Vec<Changes> = Vec::new();
    let mut fixed = Vec::new();
    for server in servers {
        match dns_server(server) {
            Some(dns) => {
                let dns = dns?;
                let name = server.clone();
                let found = proxy_tower::dns::DnsDiscover::builder(&dns.host, dns.port)
                    .https(dns.https)
                    .interval(interval)
                    .seed(seed.iter().copied())
                    .build()
                    .map(move |change| {
                        Ok(match change {
                            Ok(Change::Insert(addr, uri)) => {
                                Change::Insert(format!("{name} {addr}"), uri)
                            }
                            Ok(Change::Remove(addr)) => Change::Remove(format!("{name} {addr}")),
                            Err(never) => match never {},
                        })
                    });
                streams.push(found.boxed());
            }
            None => {
                let uri: http::Uri = server
                    .parse()
                    .map_err(|e| format!("invalid upstream {server:?}: {e}"))?;
                fixed.push(Ok(Change::Insert(server.clone(), uri)));
            }
        }
    }
    streams.push(futures_util::stream::iter(fixed).boxed());
    Ok(futures_util::stream::select_all(streams))
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
