//! The checks of one [`Config::parse`](super::Config::parse), key by key:
//! durations and timers, a group's and a route's options from the file's
//! tables (the flags' values as defaults), each error kept with its line so
//! that all of them are reported at once; and the errors themselves
//! ([`Errors`], printed `FILE:LINE: message`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::file;
use super::options::{CaFile, GroupOptions, RouteOptions};
use crate::units::{nonzero, parse_duration, parse_size};

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
    pub(super) fn one(file: Option<PathBuf>, line: Option<usize>, message: String) -> Errors {
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

/// A route's `path`: rooted, no query, no dot-segments (which requests
/// never have once resolved, so such a route would never match).
pub(super) fn check_prefix(p: &str) -> Result<(), String> {
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
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The errors of one [`Config::parse`](super::Config::parse).
pub(super) struct Check<'a> {
    pub(super) text: &'a str,
    pub(super) dir: &'a Path,
    pub(super) errors: Vec<ConfigError>,
}

impl Check<'_> {
    pub(super) fn line(&self, offset: usize) -> usize {
        line_of(self.text, offset)
    }

    pub(super) fn error(&mut self, line: Option<usize>, message: String) {
        self.errors.push(ConfigError { line, message });
    }

    pub(super) fn at<T>(&mut self, value: &Spanned<T>, message: String) {
        let line = self.line(value.span().start);
        self.error(Some(line), message);
    }

    pub(super) fn duration(&mut self, value: &Spanned<String>, key: &str) -> Option<Duration> {
        match parse_duration(value.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.at(value, format!("{key}: {e}"));
                None
            }
        }
    }

    /// A duration key where `0` means off; `default` when absent or wrong.
    pub(super) fn timer(
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

    pub(super) fn group(&mut self, g: &file::Group, d: &GroupOptions) -> GroupOptions {
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

    pub(super) fn route(&mut self, r: &file::Route, d: &RouteOptions) -> RouteOptions {
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
