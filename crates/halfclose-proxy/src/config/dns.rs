//! Upstreams found in DNS, as the config writes them: `dns://NAME:PORT`
//! and `dns+https://NAME:PORT`, parsed (sans-IO).

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
