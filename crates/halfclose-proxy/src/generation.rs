//! A generation: what one config makes for one worker (its proxies, each
//! with its own upstream pool on the worker's thread, and its routing
//! table), and the router that sends each request through the generation
//! current when the request arrives.
//!
//! A reload makes a new generation per worker and makes it current; a
//! request, a tunnel or an upstream connection of an older one keeps the
//! proxy it started with until it ends (it holds a clone), and the older
//! generation is freed with the last of them.
//!
//! Imports: `config`, `routes`, `stack` (the `Router` it implements) and
//! `upstreams`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, RouteOptions};
use crate::routes::{Entry, Table, request_host, strip_prefix};
use crate::stack::{Refused, Routed, Router};
use crate::upstreams::{Upstreams, build_proxy};

/// One worker's proxies and routes for one config.
pub(crate) struct Generation {
    table: Table<Target>,
    /// Each proxy once.
    pub(crate) proxies: Vec<Proxy>,
}

/// A proxy of a generation: an upstream group with one set of route
/// options (routes that share both share it, and its pool and bounds).
pub(crate) struct Proxy {
    pub(crate) upstreams: Upstreams,
    /// `GET path` every interval, for a balanced group.
    pub(crate) health_check: Option<(String, Duration)>,
}

/// Where a route sends its requests.
struct Target {
    proxy: Upstreams,
    strip: bool,
    max_body: Option<usize>,
}

impl Generation {
    /// The generation of one of `workers` workers for `config`;
    /// `upstream_max_connections` is the default cap per group
    /// (the `--max-connections` figure), shared out among the workers.
    pub(crate) fn build(
        config: &Config,
        workers: usize,
        upstream_max_connections: usize,
    ) -> Result<Generation, String> {
        let mut made: HashMap<(&str, &RouteOptions), Upstreams> = HashMap::new();
        let mut proxies = Vec::new();
        let mut entries = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let group = config
                .groups
                .get(&route.group)
                .ok_or_else(|| format!("no upstream group {:?}", route.group))?;
            let proxy = match made.get(&(route.group.as_str(), &route.options)) {
                Some(p) => p.clone(),
                None => {
                    let p = build_proxy(group, &route.options, workers, upstream_max_connections)
                        .map_err(|e| format!("upstream group {}: {e}", route.group))?;
                    made.insert((&route.group, &route.options), p.clone());
                    proxies.push(Proxy {
                        upstreams: p.clone(),
                        health_check: group
                            .options
                            .health_check
                            .clone()
                            .map(|path| (path, group.options.health_check_interval)),
                    });
                    p
                }
            };
            entries.push(Entry {
                host: route.host.clone(),
                prefix: route.path.clone(),
                value: Target {
                    proxy,
                    strip: route.strip_prefix,
                    max_body: route.options.max_request_body,
                },
            });
        }
        Ok(Generation {
            table: Table::new(entries),
            proxies,
        })
    }

    /// Every tunnel registry of this generation.
    pub(crate) fn tunnels(&self) -> impl Iterator<Item = proxy_tower::Tunnels> + '_ {
        self.proxies.iter().map(|p| p.upstreams.tunnels())
    }
}

/// Routes each request by the generation current when it arrives.
#[derive(Clone)]
pub(crate) struct Current(pub(crate) watch::Receiver<Arc<Generation>>);

impl Router for Current {
    type Service = Upstreams;

    fn route(&self, parts: &mut http::request::Parts) -> Result<Routed<Upstreams>, Refused> {
        // Matched (and forwarded) with its dot-segments resolved, so that
        // `/api/../admin` is `/admin` to both.
        let path = proxy_core::normalize_path(parts.uri.path()).map_err(|_| Refused::BadPath)?;
        let generation = self.0.borrow();
        let host = match (generation.table.by_host(), parts.uri.authority()) {
            (false, _) => None,
            (true, Some(a)) => Some(request_host(a.as_str())),
            (true, None) => parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(request_host),
        };
        let entry = generation
            .table
            .find(host.as_deref(), &path)
            .ok_or(Refused::NoRoute)?;
        let target = &entry.value;
        let new_path = match (target.strip, path) {
            (true, path) => Some(strip_prefix(&entry.prefix, &path).into_owned()),
            (false, Cow::Owned(path)) => Some(path),
            (false, Cow::Borrowed(_)) => None,
        };
        if let Some(path) = new_path {
            let pq = match parts.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.path_and_query = Some(pq.parse().map_err(|_| Refused::BadPath)?);
            parts.uri = http::Uri::from_parts(uri).map_err(|_| Refused::BadPath)?;
        }
        Ok(Routed {
            service: target.proxy.clone(),
            max_body: target.max_body,
        })
    }
}
