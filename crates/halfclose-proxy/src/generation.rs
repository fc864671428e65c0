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
//! Imports: `access_log`, `config`, `routes`, `stack` (the `Router` it
//! implements) and `upstreams`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::access_log::AccessLog;
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
    /// Its upstream group's name.
    pub(crate) group: String,
    pub(crate) upstreams: Upstreams,
    /// `GET path` every interval, for a balanced group.
    pub(crate) health_check: Option<(String, Duration)>,
}

/// Where a route sends its requests.
struct Target {
    proxy: Upstreams,
    /// The upstream group's name, for the access log.
    group: Arc<str>,
    /// With `strip_prefix`: the prefix, as `X-Forwarded-Prefix` says it.
    strip: Option<http::HeaderValue>,
    /// Whether a client's `X-Forwarded-Prefix` goes on (`trust_forwarded`).
    trust_forwarded: bool,
    max_body: Option<usize>,
}

/// `X-Forwarded-Prefix`: the path prefix a proxy stripped (Traefik's and
/// Spring's name), so that the upstream can build its own URLs.
static X_FORWARDED_PREFIX: http::HeaderName = http::HeaderName::from_static("x-forwarded-prefix");

impl Generation {
    /// The generation of one of `workers` workers for `config`;
    /// `upstream_max_connections` is the default cap per group
    /// (the `--max-connections` figure), shared out among the workers.
    pub(crate) fn build(
        config: &Config,
        workers: usize,
        upstream_max_connections: usize,
        log: &AccessLog,
        seeds: &HashMap<String, Vec<std::net::SocketAddr>>,
    ) -> Result<Generation, String> {
        let mut made: HashMap<(&str, RouteOptions), Upstreams> = HashMap::new();
        let mut proxies = Vec::new();
        let mut entries = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let group = config
                .groups
                .get(&route.group)
                .ok_or_else(|| format!("no upstream group {:?}", route.group))?;
            let key = (route.group.as_str(), route.options.proxy_key());
            let proxy = match made.get(&key) {
                Some(p) => p.clone(),
                None => {
                    let p = build_proxy(
                        &route.group,
                        group,
                        &route.options,
                        workers,
                        upstream_max_connections,
                        config.access_log.is_some().then_some(log),
                        seeds.get(&route.group).map_or(&[][..], Vec::as_slice),
                    )
                    .map_err(|e| format!("upstream group {}: {e}", route.group))?;
                    made.insert(key, p.clone());
                    proxies.push(Proxy {
                        group: route.group.clone(),
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
                    group: Arc::from(route.group.as_str()),
                    strip: match route.strip_prefix {
                        true => Some(
                            http::HeaderValue::from_str(route.path.trim_end_matches('/'))
                                .map_err(|e| format!("path {:?}: {e}", route.path))?,
                        ),
                        false => None,
                    },
                    trust_forwarded: route.options.trust_forwarded,
                    max_body: route.options.max_request_body,
                },
            });
        }
        Ok(Generation {
            table: Table::new(entries),
            proxies,
        })
    }

    /// The addresses the balanced groups with `dns://` servers (in the new
    /// `config`) know now, by group, less their fixed servers: what a new
    /// generation starts with while its own resolvers ask again. (A group
    /// whose names changed starts with the old names' addresses, until its
    /// first answers.)
    pub(crate) fn dns_addresses(
        &self,
        config: &Config,
    ) -> HashMap<String, Vec<std::net::SocketAddr>> {
        let mut seeds: HashMap<String, Vec<std::net::SocketAddr>> = HashMap::new();
        for p in &self.proxies {
            let (Upstreams::Many(balanced), Some(group)) =
                (&p.upstreams, config.groups.get(&p.group))
            else {
                continue;
            };
            if !group
                .servers
                .iter()
                .any(|s| crate::config::dns_server(s).is_some())
            {
                continue;
            }
            let fixed: Vec<String> = group
                .servers
                .iter()
                .filter_map(|s| {
                    Some(
                        s.parse::<http::Uri>()
                            .ok()?
                            .authority()?
                            .as_str()
                            .to_owned(),
                    )
                })
                .collect();
            let found = seeds.entry(p.group.clone()).or_default();
            for u in balanced.upstreams() {
                let Some(authority) = u.uri.authority() else {
                    continue;
                };
                if fixed.iter().any(|f| f == authority.as_str()) {
                    continue;
                }
                if let Ok(addr) = authority.as_str().parse() {
                    if !found.contains(&addr) {
                        found.push(addr);
                    }
                }
            }
        }
        seeds
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
        // `user@host` in a request's authority: an error (RFC 9110
        // section 4.2.4), and two parsers would read two hosts.
        if parts
            .uri
            .authority()
            .is_some_and(|a| a.as_str().contains('@'))
        {
            return Err(Refused::BadPath);
        }
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
        let new_path = match (&target.strip, path) {
            (Some(prefix), path) => {
                // The client's own, if any, is replaced: it is ours to say.
                parts
                    .headers
                    .insert(X_FORWARDED_PREFIX.clone(), prefix.clone());
                Some(strip_prefix(&entry.prefix, &path).into_owned())
            }
            (None, path) => {
                // Another proxy's word only when it is trusted, as for the
                // other X-Forwarded-* headers.
                if !target.trust_forwarded {
                    parts.headers.remove(&X_FORWARDED_PREFIX);
                }
                match path {
                    Cow::Owned(path) => Some(path),
                    Cow::Borrowed(_) => None,
                }
            }
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
            upstream: Some(target.group.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ServeArgs;
    use crate::config::Defaults;

    fn current(text: &str) -> Current {
        let config = Config::parse(
            text,
            std::path::Path::new("."),
            &Defaults::from_args(&ServeArgs::defaults()),
        )
        .unwrap();
        let generation =
            Generation::build(&config, 1, 16, &AccessLog::new(), &HashMap::new()).unwrap();
        Current(watch::Sender::new(Arc::new(generation)).subscribe())
    }

    const CONFIG: &str = r#"
[[listener]]
address = "127.0.0.1:0"

[[route]]
host = "example.test"
path = "/api/"
strip_prefix = true
upstream = "app"
max_request_body = "1k"

[[route]]
host = "example.test"
upstream = "app"

[upstream.app]
servers = ["http://127.0.0.1:3000"]
"#;

    fn route(
        router: &Current,
        uri: &str,
        host: Option<&str>,
    ) -> Result<http::request::Parts, Refused> {
        let mut req = http::Request::get(uri);
        if let Some(h) = host {
            req = req.header(http::header::HOST, h);
        }
        let (mut parts, ()) = req
            .header("x-forwarded-prefix", "/forged")
            .body(())
            .unwrap()
            .into_parts();
        router.route(&mut parts).map(|routed| {
            if parts.uri.path().starts_with("/v1") {
                assert_eq!(routed.max_body, Some(1024));
            }
            parts
        })
    }

    #[test]
    fn a_stripped_prefix_is_said_in_x_forwarded_prefix_and_the_query_kept() {
        let r = current(CONFIG);
        let parts = route(&r, "/api/v1/users?q=1", Some("example.test")).unwrap();
        assert_eq!(parts.uri, "/v1/users?q=1");
        assert_eq!(parts.headers["x-forwarded-prefix"], "/api");
        // Not stripped: a client's own is not passed on, unless trusted.
        let parts = route(&r, "/a/./b/../c", Some("example.test")).unwrap();
        assert_eq!(parts.uri, "/a/c", "resolved");
        assert!(!parts.headers.contains_key("x-forwarded-prefix"));
        let trusting = current(&CONFIG.replace(
            "host = \"example.test\"\nupstream",
            "host = \"example.test\"\ntrust_forwarded = true\nupstream",
        ));
        let parts = route(&trusting, "/x", Some("example.test")).unwrap();
        assert_eq!(parts.headers["x-forwarded-prefix"], "/forged");
    }

    #[test]
    fn the_uri_authority_wins_over_host_and_no_match_is_refused() {
        let r = current(CONFIG);
        let parts = route(&r, "http://example.test/api/x", Some("other.test")).unwrap();
        assert_eq!(parts.uri.path(), "/x");
        assert_eq!(
            route(&r, "/", Some("other.test")).unwrap_err(),
            Refused::NoRoute
        );
        assert_eq!(route(&r, "/", None).unwrap_err(), Refused::NoRoute);
        assert_eq!(
            route(&r, "/api/..%2fadmin", Some("example.test")).unwrap_err(),
            Refused::BadPath
        );
        assert_eq!(
            route(&r, "http://other.test:x@example.test/", None).unwrap_err(),
            Refused::BadPath
        );
    }
}
