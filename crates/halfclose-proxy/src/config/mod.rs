//! What the proxy serves: listeners, routes and upstream groups, read from
//! the `--config` file or made from the command line's flags (one listener,
//! one route for every host and path, one group). Serving code only ever
//! sees a [`Config`], so flags and file mean the same things.
//!
//! Reading a file is three steps: TOML into the types of `file` (serde,
//! unknown keys refused), those checked into a [`Config`] ([`Config::parse`],
//! sans-IO: every error with its line, all of them at once), then the files
//! it names read ([`Config::load_files`]: certificates, CA bundles). The
//! flags of the command line are the defaults of the file's keys; the
//! reference is `docs/config.md`.
//!
//! Imports: `access_log` (its destination and format), `cli` (the flags),
//! `proxy_protocol` (networks), `routes` (host patterns), `tls`, `units`.

mod check;
mod dns;
mod file;
mod options;
#[cfg(test)]
mod tests;

use check::{Check, check_prefix, line_of};
pub(crate) use check::{ConfigError, Errors};
pub(crate) use dns::dns_server;
pub(crate) use options::{CaFile, GroupOptions, RouteOptions};

use std::collections::{BTreeMap, HashSet};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::access_log::{Destination, Format};
use crate::cli::ServeArgs;
use crate::proxy_protocol::Cidr;
use crate::routes::HostPattern;
use crate::units::nonzero;

/// Listeners, routes and upstream groups, checked.
#[derive(Debug)]
pub(crate) struct Config {
    /// The file it was read from; `None` when made from flags.
    pub(crate) file: Option<PathBuf>,
    pub(crate) listeners: Vec<Listener>,
    /// In the file's order.
    pub(crate) routes: Vec<Route>,
    pub(crate) groups: BTreeMap<String, Group>,
    /// After a reload, tunnels opened before it get a FIN each way once
    /// they have been open this long after it.
    pub(crate) drain_timeout: Option<Duration>,
    /// Where the access log goes (`None`: off).
    pub(crate) access_log: Option<Destination>,
    pub(crate) access_log_format: Format,
}

/// `[[listener]]`.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) address: SocketAddr,
    /// Which listener of the config it is across reloads: its address, and
    /// how many listeners before it have the same one (port 0 may be given
    /// more than once: each is a port of its own).
    pub(crate) key: (SocketAddr, usize),
    /// HTTPS with these certificates, chosen by SNI (the first by default).
    pub(crate) tls: Vec<CertFiles>,
    pub(crate) http2: bool,
    /// Read a PROXY protocol header first, from these networks (any when
    /// empty).
    pub(crate) proxy_protocol: Option<Vec<Cidr>>,
    /// Loaded by [`Config::load_files`].
    #[cfg(feature = "tls")]
    pub(crate) certificates: Option<Arc<crate::tls::Certificates>>,
}

#[cfg(feature = "tls")]
pub(crate) use crate::tls::CertFiles;

/// A certificate chain and its key (a build without TLS refuses them, so
/// nothing reads them).
#[cfg(not(feature = "tls"))]
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub(crate) struct CertFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) line: Option<usize>,
}

/// `[[route]]`.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) host: HostPattern,
    /// A path prefix (whole segments), `/` for every path.
    pub(crate) path: String,
    pub(crate) strip_prefix: bool,
    /// The name of its upstream group.
    pub(crate) group: String,
    pub(crate) options: RouteOptions,
}

/// `[upstream.NAME]`.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) servers: Vec<String>,
    pub(crate) options: GroupOptions,
}

/// The values of keys a file leaves out: the flags'.
#[derive(Debug, Clone)]
pub(crate) struct Defaults {
    /// `--access-log`, `--access-log-format`.
    pub(crate) access_log: Option<Destination>,
    pub(crate) access_log_format: Format,
    /// `--proxy-protocol`, `--proxy-protocol-trusted`.
    pub(crate) proxy_protocol: Option<Vec<Cidr>>,
    pub(crate) route: RouteOptions,
    pub(crate) group: GroupOptions,
}

impl Defaults {
    pub(crate) fn from_args(args: &ServeArgs) -> Defaults {
        Defaults {
            access_log: args.access_log.as_deref().map(Destination::parse),
            access_log_format: args.access_log_format,
            proxy_protocol: args
                .proxy_protocol
                .then(|| args.proxy_protocol_trusted.clone()),
            route: RouteOptions {
                allow_upgrade: args.allow_upgrade.clone(),
                tunnel_idle_timeout: nonzero(args.tunnel_idle_timeout),
                tunnel_half_close_timeout: nonzero(args.tunnel_half_close_timeout),
                preserve_host: args.preserve_host,
                forwarded: args.forwarded,
                trust_forwarded: args.trust_forwarded,
                via: args.via.clone(),
                max_request_body: args.max_request_body.map(|s| s.0).filter(|&n| n > 0),
            },
            group: GroupOptions {
                connect_timeout: nonzero(args.connect_timeout),
                response_timeout: nonzero(args.response_timeout),
                read_timeout: nonzero(args.read_timeout),
                max_connections: args.upstream_max_connections,
                queue_timeout: args.upstream_queue_timeout,
                max_idle: args.upstream_max_idle,
                idle_timeout: nonzero(args.upstream_idle_timeout),
                http2: args.http2_upstream,
                health_check: args.health_check.clone(),
                health_check_interval: args.health_check_interval.max(Duration::from_millis(100)),
                eject_after: proxy_tower::DEFAULT_EJECT_AFTER,
                ejection_time: proxy_tower::DEFAULT_BASE_EJECTION,
                dns_interval: args.dns_interval.max(Duration::from_millis(100)),
                #[cfg(feature = "tls")]
                ca: args.upstream_ca.as_ref().map(|path| CaFile {
                    path: path.clone(),
                    line: None,
                    pem: None,
                }),
                #[cfg(not(feature = "tls"))]
                ca: None,
            },
        }
    }
}

/// The flags that make the listener when there is no file.
#[derive(Debug, Clone)]
pub(crate) struct Flags {
    listen: SocketAddr,
    tls: Vec<CertFiles>,
}

impl Flags {
    pub(crate) fn from_args(args: &ServeArgs) -> Flags {
        #[cfg(feature = "tls")]
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => vec![CertFiles {
                cert: cert.clone(),
                key: key.clone(),
                line: None,
            }],
            _ => Vec::new(),
        };
        #[cfg(not(feature = "tls"))]
        let tls = Vec::new();
        Flags {
            listen: args.listen,
            tls,
        }
    }

    /// Whether `--tls-cert` was given.
    pub(crate) fn has_tls(&self) -> bool {
        !self.tls.is_empty()
    }
}

/// The group the flags' upstreams make.
pub(crate) const FLAGS_GROUP: &str = "default";

impl Config {
    /// Reads, checks and loads `path`.
    pub(crate) fn load(path: &Path, defaults: &Defaults) -> Result<Config, Errors> {
        let file = Some(path.to_owned());
        let text = std::fs::read_to_string(path)
            .map_err(|e| Errors::one(None, None, format!("cannot read {}: {e}", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::parse(&text, dir, defaults).map_err(|list| Errors {
            file: file.clone(),
            list,
        })?;
        config.file = file;
        config.load_files()?;
        Ok(config)
    }

    /// The config the flags make: `--listen` (with `--tls-cert`), one route
    /// for every host and path, to `upstreams`.
    pub(crate) fn from_flags(
        flags: &Flags,
        upstreams: Vec<String>,
        defaults: &Defaults,
    ) -> Result<Config, Errors> {
        let mut config = Config {
            file: None,
            listeners: vec![Listener {
                address: flags.listen,
                key: (flags.listen, 0),
                tls: flags.tls.clone(),
                http2: true,
                proxy_protocol: defaults.proxy_protocol.clone(),
                #[cfg(feature = "tls")]
                certificates: None,
            }],
            routes: vec![Route {
                host: HostPattern::Any,
                path: "/".into(),
                strip_prefix: false,
                group: FLAGS_GROUP.into(),
                options: defaults.route.clone(),
            }],
            groups: BTreeMap::from([(
                FLAGS_GROUP.to_owned(),
                Group {
                    servers: upstreams,
                    options: defaults.group.clone(),
                },
            )]),
            drain_timeout: None,
            access_log: defaults.access_log.clone(),
            access_log_format: defaults.access_log_format,
        };
        config.load_files()?;
        Ok(config)
    }

    /// Checks the TOML `text` of a file in `dir` (relative paths are
    /// relative to it). Reads no file: [`load_files`](Config::load_files)
    /// does.
    pub(crate) fn parse(
        text: &str,
        dir: &Path,
        defaults: &Defaults,
    ) -> Result<Config, Vec<ConfigError>> {
        let raw: file::File = toml::from_str(text).map_err(|e| {
            vec![ConfigError {
                line: e.span().map(|s| line_of(text, s.start)),
                message: e.message().trim_end().replace('\n', " "),
            }]
        })?;
        let mut c = Check {
            text,
            dir,
            errors: Vec::new(),
        };
        let drain_timeout = raw
            .drain_timeout
            .as_ref()
            .and_then(|d| c.duration(d, "drain_timeout"))
            .and_then(nonzero);

        // Relative to the file's directory, as the other paths.
        let access_log = match &raw.access_log {
            Some(p) => match Destination::parse(p.get_ref()) {
                Destination::File(f) => Some(Destination::File(dir.join(f))),
                stdout => Some(stdout),
            },
            None => defaults.access_log.clone(),
        };
        let access_log_format = match &raw.access_log_format {
            Some(f) => Format::parse(f.get_ref())
                .inspect_err(|e| c.at(f, e.clone()))
                .unwrap_or_default(),
            None => defaults.access_log_format,
        };
        if raw.listener.is_empty() {
            c.error(
                None,
                "no [[listener]]: give at least one, with its address".into(),
            );
        }
        let mut addresses: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        let mut listeners = Vec::new();
        for l in &raw.listener {
            let at = c.line(l.span().start);
            let l = l.get_ref();
            let address = match l.address.get_ref().parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    c.at(
                        &l.address,
                        format!(
                            "invalid address {:?} (try 127.0.0.1:8080)",
                            l.address.get_ref()
                        ),
                    );
                    continue;
                }
            };
            let nth = addresses.entry(address).or_default();
            if *nth > 0 && address.port() != 0 {
                c.error(Some(at), format!("listener {address} is given twice"));
            }
            let key = (address, *nth);
            *nth += 1;
            let tls: Vec<CertFiles> = l
                .tls
                .iter()
                .flat_map(|t| t.get_ref())
                .map(|pair| CertFiles {
                    cert: dir.join(pair.get_ref().cert.get_ref()),
                    key: dir.join(pair.get_ref().key.get_ref()),
                    line: Some(c.line(pair.span().start)),
                })
                .collect();
            if let Some(t) = &l.tls {
                if t.get_ref().is_empty() {
                    c.at(t, "tls = [] names no certificate".into());
                }
                if cfg!(not(feature = "tls")) {
                    c.at(t, "this build has no TLS (feature \"tls\")".into());
                }
            }
            let trusted: Vec<Cidr> = l
                .trusted
                .iter()
                .flat_map(|t| t.get_ref())
                .filter_map(|net| {
                    Cidr::parse(net.get_ref())
                        .inspect_err(|e| c.at(net, e.clone()))
                        .ok()
                })
                .collect();
            let on = l
                .proxy_protocol
                .unwrap_or(defaults.proxy_protocol.is_some());
            let proxy_protocol = match (on, &l.trusted) {
                (false, Some(t)) => {
                    c.at(t, "trusted needs proxy_protocol = true".into());
                    None
                }
                (false, None) => None,
                (true, Some(_)) => Some(trusted),
                (true, None) => Some(defaults.proxy_protocol.clone().unwrap_or_default()),
            };
            listeners.push(Listener {
                address,
                key,
                tls,
                http2: l.http2.unwrap_or(true),
                proxy_protocol,
                #[cfg(feature = "tls")]
                certificates: None,
            });
        }

        let mut groups = BTreeMap::new();
        for (name, g) in &raw.upstream {
            let opts = c.group(g.get_ref(), &defaults.group);
            let servers = &g.get_ref().servers;
            if servers.get_ref().is_empty() {
                c.at(
                    servers,
                    format!("upstream group {:?} has no servers", name.get_ref()),
                );
            }
            let mut list = Vec::new();
            for s in servers.get_ref() {
                match dns_server(s.get_ref()) {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => c.at(s, e),
                    None => {
                        if let Err(e) = proxy_tower::ReverseProxy::builder(s.get_ref()).build() {
                            c.at(s, format!("invalid upstream {:?}: {e}", s.get_ref()));
                        }
                    }
                }
                list.push(s.get_ref().clone());
            }
            groups.insert(
                name.get_ref().clone(),
                Group {
                    servers: list,
                    options: opts,
                },
            );
        }

        if raw.route.is_empty() {
            c.error(
                None,
                "no [[route]]: give at least one, with its upstream".into(),
            );
        }
        let mut seen = HashSet::new();
        let mut routes = Vec::new();
        for r in &raw.route {
            let at = c.line(r.span().start);
            let r = r.get_ref();
            // Each key is checked even when another is wrong: every error
            // is said at once.
            let host = match &r.host {
                None => Some(HostPattern::Any),
                Some(h) => HostPattern::parse(h.get_ref())
                    .inspect_err(|e| c.at(h, e.clone()))
                    .ok(),
            };
            let path = match &r.path {
                None => Some("/".to_owned()),
                Some(p) => check_prefix(p.get_ref())
                    .map(|()| p.get_ref().clone())
                    .inspect_err(|e| c.at(p, e.clone()))
                    .ok(),
            };
            if !groups.contains_key(r.upstream.get_ref()) {
                let known: Vec<&str> = raw.upstream.keys().map(|k| k.get_ref().as_str()).collect();
                c.at(
                    &r.upstream,
                    format!(
                        "route to upstream {:?}, which no [upstream.{}] defines (defined: {})",
                        r.upstream.get_ref(),
                        r.upstream.get_ref(),
                        match known.as_slice() {
                            [] => "none".to_owned(),
                            k => k.join(", "),
                        }
                    ),
                );
            }
            let strip_prefix = r.strip_prefix.as_ref().is_some_and(|s| *s.get_ref());
            let options = c.route(r, &defaults.route);
            let (Some(host), Some(path)) = (host, path) else {
                continue;
            };
            if strip_prefix && path == "/" {
                let s = r.strip_prefix.as_ref().expect("set");
                c.at(
                    s,
                    "strip_prefix = true needs a path other than / to strip".into(),
                );
            }
            if !seen.insert((host.clone(), path.clone())) {
                c.error(
                    Some(at),
                    format!("a second route for host {host} and path {path}"),
                );
            }
            routes.push(Route {
                host,
                path,
                strip_prefix,
                group: r.upstream.get_ref().clone(),
                options,
            });
        }

        match c.errors.is_empty() {
            true => Ok(Config {
                file: None,
                listeners,
                routes,
                groups,
                drain_timeout,
                access_log,
                access_log_format,
            }),
            false => Err(c.errors),
        }
    }

    /// Reads the files the config names (certificates and keys, CA
    /// bundles), each error naming its file and line.
    pub(crate) fn load_files(&mut self) -> Result<(), Errors> {
        let mut list = Vec::new();
        #[cfg(feature = "tls")]
        for l in &mut self.listeners {
            if l.tls.is_empty() {
                continue;
            }
            match crate::tls::Certificates::load(&l.tls) {
                Ok(certs) => l.certificates = Some(certs),
                Err((line, message)) => list.push(ConfigError { line, message }),
            }
        }
        for g in self.groups.values_mut() {
            if let Some(ca) = &mut g.options.ca {
                match std::fs::read(&ca.path) {
                    Ok(pem) => ca.pem = Some(pem.into()),
                    Err(e) => list.push(ConfigError {
                        line: ca.line,
                        message: format!("cannot read CA bundle {}: {e}", ca.path.display()),
                    }),
                }
            }
        }
        match list.is_empty() {
            true => Ok(()),
            false => Err(Errors {
                file: self.file.clone(),
                list,
            }),
        }
    }

    /// Upstream servers in all groups (for the file-descriptor plan).
    pub(crate) fn server_count(&self) -> usize {
        self.groups.values().map(|g| g.servers.len()).sum()
    }
}
