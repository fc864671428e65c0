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

mod file;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use crate::access_log::{Destination, Format};
use crate::cli::ServeArgs;
use crate::proxy_protocol::Cidr;
use crate::routes::HostPattern;
use crate::units::{nonzero, parse_duration, parse_size};

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

/// `[upstream.NAME]`.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) servers: Vec<String>,
    pub(crate) options: GroupOptions,
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
    /// Read by [`Config::load_files`].
    pub(crate) pem: Option<Arc<[u8]>>,
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

/// One thing wrong with a config, at a line of its file when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigError {
    pub(crate) line: Option<usize>,
    pub(crate) message: String,
}

/// Everything wrong with a config.
#[derive(Debug)]
pub(crate) struct Errors {
    pub(crate) file: Option<PathBuf>,
    pub(crate) list: Vec<ConfigError>,
}

impl Errors {
    fn one(file: Option<PathBuf>, line: Option<usize>, message: String) -> Errors {
        Errors {
            file,
            list: vec![ConfigError { line, message }],
        }
    }

    /// Each error on a line of its own, `FILE:LINE: message`.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.list
            .iter()
            .map(|e| match (&self.file, e.line) {
                (Some(f), Some(l)) => format!("{}:{l}: {}", f.display(), e.message),
                (Some(f), None) => format!("{}: {}", f.display(), e.message),
                (None, _) => e.message.clone(),
            })
            .collect()
    }
}

/// All of them on one line (a log line, an error at start).
impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("; "))
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

/// An upstream found in DNS: `dns://NAME:PORT` (HTTP to each address of
/// NAME) or `dns+https://NAME:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DnsServer {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) https: bool,
}

impl DnsServer {
    /// The URI the group's options are checked against.
    pub(crate) fn uri(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        match self.host.contains(':') {
            true => format!("{scheme}://[{}]:{}", self.host, self.port),
            false => format!("{scheme}://{}:{}", self.host, self.port),
        }
    }
}

/// `Some` when `server` is written `dns://` or `dns+https://`: the name
/// and port, or why they are not valid. The port defaults to 80 (443 with
/// `dns+https`).
pub(crate) fn dns_server(server: &str) -> Option<Result<DnsServer, String>> {
    let (rest, https) = match (
        server.strip_prefix("dns://"),
        server.strip_prefix("dns+https://"),
    ) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return None,
    };
    let invalid =
        || format!("invalid upstream {server:?} (try dns://chat.default.svc.cluster.local:8080)");
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
            match port.parse::<u16>() {
                Ok(p) if p > 0 => (host, p),
                _ => return Some(Err(invalid())),
            }
        }
        _ => (rest, if https { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
    Some(match valid {
        true => Ok(DnsServer {
            host: host.to_owned(),
            port,
            https,
        }),
        false => Err(invalid()),
    })
}

/// A route's `path`: rooted, no query, no dot-segments (which requests
/// never have once resolved, so such a route would never match).
fn check_prefix(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("path {p:?} must start with /"));
    }
    if p.contains(['?', '#']) || p.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!(
            "path {p:?} is a path prefix: no query, fragment, space or control byte"
        ));
    }
    match proxy_core::normalize_path(p) {
        Ok(std::borrow::Cow::Borrowed(_)) => Ok(()),
        _ => Err(format!(
            "path {p:?} has dot-segments (. or ..), which resolved request paths never have"
        )),
    }
}

/// The line (from 1) of byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The errors of one [`Config::parse`].
struct Check<'a> {
    text: &'a str,
    dir: &'a Path,
    errors: Vec<ConfigError>,
}

impl Check<'_> {
    fn line(&self, offset: usize) -> usize {
        line_of(self.text, offset)
    }

    fn error(&mut self, line: Option<usize>, message: String) {
        self.errors.push(ConfigError { line, message });
    }

    fn at<T>(&mut self, value: &Spanned<T>, message: String) {
        let line = self.line(value.span().start);
        self.error(Some(line), message);
    }

    fn duration(&mut self, value: &Spanned<String>, key: &str) -> Option<Duration> {
        match parse_duration(value.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.at(value, format!("{key}: {e}"));
                None
            }
        }
    }

    /// A duration key where `0` means off; `default` when absent or wrong.
    fn timer(
        &mut self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: Option<Duration>,
    ) -> Option<Duration> {
        match value {
            None => default,
            Some(v) => match self.duration(v, key) {
                Some(d) => nonzero(d),
                None => default,
            },
        }
    }

    fn group(&mut self, g: &file::Group, d: &GroupOptions) -> GroupOptions {
        let connect_timeout = self.timer(&g.connect_timeout, "connect_timeout", d.connect_timeout);
        let queue_timeout = match &g.queue_timeout {
            Some(v) => self.duration(v, "queue_timeout").unwrap_or(d.queue_timeout),
            None => d.queue_timeout,
        };
        let health_check_interval = match &g.health_check_interval {
            Some(v) => self
                .duration(v, "health_check_interval")
                .unwrap_or(d.health_check_interval),
            None => d.health_check_interval,
        };
        let ejection_time = match &g.ejection_time {
            Some(v) => self.duration(v, "ejection_time").unwrap_or(d.ejection_time),
            None => d.ejection_time,
        };
        let dns_interval = match &g.dns_interval {
            Some(v) => self.duration(v, "dns_interval").unwrap_or(d.dns_interval),
            None => d.dns_interval,
        };
        if let Some(h) = &g.health_check
            && !h.get_ref().starts_with('/')
        {
            self.at(
                h,
                format!(
                    "health_check {:?} must be a path starting with /",
                    h.get_ref()
                ),
            );
        }
        let ca = match &g.ca {
            Some(p) if cfg!(not(feature = "tls")) => {
                self.at(p, "this build has no TLS (feature \"tls\")".into());
                None
            }
            Some(p) => Some(CaFile {
                path: self.dir.join(p.get_ref()),
                line: Some(self.line(p.span().start)),
                pem: None,
            }),
            None => d.ca.clone(),
        };
        GroupOptions {
            connect_timeout,
            response_timeout: self.timer(
                &g.response_timeout,
                "response_timeout",
                d.response_timeout,
            ),
            read_timeout: self.timer(&g.read_timeout, "read_timeout", d.read_timeout),
            max_connections: g.max_connections.or(d.max_connections),
            queue_timeout,
            max_idle: g.max_idle.unwrap_or(d.max_idle),
            idle_timeout: self.timer(&g.idle_timeout, "idle_timeout", d.idle_timeout),
            http2: g.http2.unwrap_or(d.http2),
            health_check: g
                .health_check
                .as_ref()
                .map(|h| h.get_ref().clone())
                .or_else(|| d.health_check.clone()),
            health_check_interval: health_check_interval.max(Duration::from_millis(100)),
            eject_after: g
                .eject_after
                .as_ref()
                .map_or(d.eject_after, |n| *n.get_ref()),
            ejection_time,
            dns_interval: dns_interval.max(Duration::from_millis(100)),
            ca,
        }
    }

    fn route(&mut self, r: &file::Route, d: &RouteOptions) -> RouteOptions {
        let max_request_body = match &r.max_request_body {
            None => d.max_request_body,
            Some(v) => {
                let n = match v.get_ref() {
                    file::Size::Bytes(n) => usize::try_from(*n).ok(),
                    file::Size::Text(s) => match parse_size(s) {
                        Ok(size) => Some(size.0),
                        Err(e) => {
                            self.at(v, format!("max_request_body: {e}"));
                            None
                        }
                    },
                };
                n.filter(|&n| n > 0)
            }
        };
        let allow_upgrade = match &r.allow_upgrade {
            None => d.allow_upgrade.clone(),
            Some(list) => {
                if list
                    .get_ref()
                    .iter()
                    .any(|p| p.is_empty() || p.bytes().any(|b| !b.is_ascii_graphic()))
                {
                    self.at(
                        list,
                        "allow_upgrade: protocol names are tokens, e.g. \"websocket\"".into(),
                    );
                }
                match list.get_ref().as_slice() {
                    // An empty list allows none, as `none` does.
                    [] => vec!["none".to_owned()],
                    l => l.to_vec(),
                }
            }
        };
        RouteOptions {
            allow_upgrade,
            tunnel_idle_timeout: self.timer(
                &r.tunnel_idle_timeout,
                "tunnel_idle_timeout",
                d.tunnel_idle_timeout,
            ),
            tunnel_half_close_timeout: self.timer(
                &r.tunnel_half_close_timeout,
                "tunnel_half_close_timeout",
                d.tunnel_half_close_timeout,
            ),
            preserve_host: r.preserve_host.unwrap_or(d.preserve_host),
            forwarded: r.forwarded.unwrap_or(d.forwarded),
            trust_forwarded: r.trust_forwarded.unwrap_or(d.trust_forwarded),
            via: r.via.clone().or_else(|| d.via.clone()),
            max_request_body,
        }
    }
}
