//! The `--config` file as it is written: serde types that mirror the TOML
//! keys one for one, every table refusing keys it does not know, with the
//! position of every value an error may have to point at. `mod.rs` turns
//! them into a checked [`Config`](super::Config).
//!
//! Imports nothing of the crate.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    /// After a reload, tunnels opened before it that are still open this
    /// long after it get a FIN each way. Off by default.
    pub(super) drain_timeout: Option<Spanned<String>>,
    /// `--access-log`: a path, or `-` for standard output.
    pub(super) access_log: Option<Spanned<String>>,
    /// `--access-log-format`: `json` or `common`.
    pub(super) access_log_format: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) listener: Vec<Spanned<Listener>>,
    #[serde(default)]
    pub(super) route: Vec<Spanned<Route>>,
    #[serde(default)]
    pub(super) upstream: BTreeMap<Spanned<String>, Spanned<Group>>,
}

/// `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Listener {
    pub(super) address: Spanned<String>,
    /// Certificates for HTTPS, chosen by SNI; the first is the default.
    pub(super) tls: Option<Spanned<Vec<Spanned<CertPair>>>>,
    /// Offer HTTP/2 (ALPN `h2`, or the preface on a plain listener).
    pub(super) http2: Option<bool>,
    /// Connections start with a PROXY protocol header.
    pub(super) proxy_protocol: Option<bool>,
    /// The networks a PROXY protocol header may come from.
    pub(super) trusted: Option<Spanned<Vec<Spanned<String>>>>,
}

/// One certificate of a TLS listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CertPair {
    pub(super) cert: Spanned<String>,
    pub(super) key: Spanned<String>,
}

/// `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Route {
    pub(super) host: Option<Spanned<String>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) strip_prefix: Option<Spanned<bool>>,
    pub(super) upstream: Spanned<String>,
    pub(super) allow_upgrade: Option<Spanned<Vec<String>>>,
    pub(super) tunnel_idle_timeout: Option<Spanned<String>>,
    pub(super) tunnel_half_close_timeout: Option<Spanned<String>>,
    pub(super) preserve_host: Option<bool>,
    pub(super) forwarded: Option<bool>,
    pub(super) trust_forwarded: Option<bool>,
    pub(super) via: Option<String>,
    pub(super) max_request_body: Option<Spanned<Size>>,
}

/// `[upstream.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Group {
    pub(super) servers: Spanned<Vec<Spanned<String>>>,
    pub(super) connect_timeout: Option<Spanned<String>>,
    pub(super) response_timeout: Option<Spanned<String>>,
    pub(super) read_timeout: Option<Spanned<String>>,
    pub(super) max_connections: Option<usize>,
    pub(super) queue_timeout: Option<Spanned<String>>,
    pub(super) max_idle: Option<usize>,
    pub(super) idle_timeout: Option<Spanned<String>>,
    pub(super) http2: Option<bool>,
    pub(super) health_check: Option<Spanned<String>>,
    pub(super) health_check_interval: Option<Spanned<String>>,
    pub(super) eject_after: Option<Spanned<u32>>,
    pub(super) ejection_time: Option<Spanned<String>>,
    pub(super) dns_interval: Option<Spanned<String>>,
    pub(super) ca: Option<Spanned<String>>,
}

/// A size: bytes as an integer, or a string with a unit (`"10m"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Size {
    Bytes(u64),
    Text(String),
}
