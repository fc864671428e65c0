//! Forwarding headers: X-Forwarded-For/-Host/-Proto, RFC 7239 `Forwarded`, and
//! `Via` (RFC 9110 section 7.6.3).

use std::net::IpAddr;

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// What the proxy knows about the client connection a request came in on.
///
/// ```
/// use proxy_core::ClientInfo;
///
/// let client = ClientInfo::new("192.0.2.7".parse().unwrap()).tls(true);
/// assert_eq!(client.proto(), "https");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    addr: Option<IpAddr>,
    tls: bool,
}

impl ClientInfo {
    /// A client at `addr` over plain HTTP.
    pub fn new(addr: IpAddr) -> Self {
        ClientInfo {
            addr: Some(addr),
            tls: false,
        }
    }

    /// A client whose address is not known (e.g. the server does not record it).
    /// No `X-Forwarded-For` element is added for it, and `Forwarded` says
    /// `for=unknown` (RFC 7239 section 6.3).
    pub fn unknown() -> Self {
        ClientInfo {
            addr: None,
            tls: false,
        }
    }

    /// Whether the client connection was TLS (`https`).
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// The client's IP address, if known.
    pub fn addr(&self) -> Option<IpAddr> {
        self.addr
    }

    /// `"https"` or `"http"`.
    pub fn proto(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

/// Which forwarding headers the proxy adds, and whether it trusts those it receives.
///
/// By default the proxy sets `X-Forwarded-For`, `X-Forwarded-Host` and
/// `X-Forwarded-Proto`, replacing any the client sent (a client can write anything
/// there), removes any incoming `Forwarded`, and adds neither `Forwarded` nor `Via`.
///
/// ```
/// use proxy_core::ForwardedHeaders;
///
/// // Behind a trusted load balancer: keep its values and append ours.
/// let fwd = ForwardedHeaders::default().trust_incoming(true).forwarded(true).via("my-proxy");
/// # let _ = fwd;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedHeaders {
    x_forwarded: bool,
    forwarded: bool,
    via: Option<HeaderValue>,
    trust_incoming: bool,
}

impl Default for ForwardedHeaders {
    fn default() -> Self {
        ForwardedHeaders {
            x_forwarded: true,
            forwarded: false,
            via: None,
            trust_incoming: false,
        }
    }
}

impl ForwardedHeaders {
    /// Add no forwarding header at all (incoming untrusted ones are still removed).
    pub fn none() -> Self {
        ForwardedHeaders {
            x_forwarded: false,
            ..Self::default()
        }
    }

    /// Set `X-Forwarded-For`, `-Host` and `-Proto` (default: on).
    pub fn x_forwarded(mut self, on: bool) -> Self {
        self.x_forwarded = on;
        self
    }

    /// Set the RFC 7239 `Forwarded` field (default: off).
    pub fn forwarded(mut self, on: bool) -> Self {
        self.forwarded = on;
        self
    }

    /// Add `Via: <version> <pseudonym>` to requests and responses (RFC 9110 section
    /// 7.6.3). Default: off. A pseudonym that is not a valid field value is ignored.
    pub fn via(mut self, pseudonym: &str) -> Self {
        self.via = HeaderValue::from_str(pseudonym).ok();
        self
    }

    /// Trust forwarding headers received from the client and append to them, for a
    /// proxy that only ever receives requests from another trusted proxy. Default:
    /// off (they are replaced).
    pub fn trust_incoming(mut self, trust: bool) -> Self {
        self.trust_incoming = trust;
        self
    }

    /// Applies the forwarding headers to a request about to go upstream.
    /// `original_host` is the Host the client asked for.
    pub(crate) fn apply(
        &self,
        headers: &mut HeaderMap,
        client: &ClientInfo,
        original_host: Option<&HeaderValue>,
        version: Version,
    ) {
        // Room for the fields added below, at once rather than by doubling.
        headers.reserve(4);
        let trust = self.trust_incoming;
        if !trust {
            headers.remove(&X_FORWARDED_FOR);
            headers.remove(&X_FORWARDED_HOST);
            headers.remove(&X_FORWARDED_PROTO);
            headers.remove(header::FORWARDED);
        }
        if self.x_forwarded {
            if let Some(addr) = client.addr() {
                append_list(headers, X_FORWARDED_FOR, ip_text(addr));
            }
            if !headers.contains_key(&X_FORWARDED_HOST) {
                if let Some(host) = original_host {
                    headers.insert(X_FORWARDED_HOST, host.clone());
                }
            }
            if !headers.contains_key(&X_FORWARDED_PROTO) {
                headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.proto()));
            }
        }
        if self.forwarded {
            append_list(
                headers,
                header::FORWARDED,
                forwarded_element(client, original_host),
            );
        }
        self.add_via(headers, version);
    }

    /// Adds `Via` to a message, if configured.
    pub(crate) fn add_via(&self, headers: &mut HeaderMap, version: Version) {
        if let Some(name) = &self.via {
            let proto = match version {
                Version::HTTP_09 => "0.9",
                Version::HTTP_10 => "1.0",
                Version::HTTP_2 => "2",
                Version::HTTP_3 => "3",
                _ => "1.1",
            };
            // The pseudonym was given as a &str: its bytes are UTF-8.
            let value = format!("{proto} {}", String::from_utf8_lossy(name.as_bytes()));
            append_list(headers, header::VIA, value);
        }
    }
}

/// An address as text; IPv4 without the formatting machinery (once per
/// request, it showed in profiles).
fn ip_text(addr: IpAddr) -> String {
    let IpAddr::V4(v4) = addr else {
        return addr.to_string();
    };
    // Written on the stack, then copied into a string of its exact length,
    // which becomes the header value without another allocation.
    let mut text = [0u8; 15];
    let mut n = 0;
    let mut push = |b: u8| {
        text[n] = b;
        n += 1;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            push(b'.');
        }
        if octet >= 100 {
            push(b'0' + octet / 100);
        }
        if octet >= 10 {
            push(b'0' + octet / 10 % 10);
        }
        push(b'0' + octet % 10);
    }
    String::from_utf8_lossy(&text[..n]).into_owned()
}

/// Appends `element` to the list field `name`, joining existing lines into one
/// (`a, b, element`), as Go does for X-Forwarded-For.
fn append_list(headers: &mut HeaderMap, name: HeaderName, element: String) {
    if !headers.contains_key(&name) {
        // The common case: the String becomes the value without a copy.
        if let Ok(v) = HeaderValue::try_from(element) {
            headers.insert(name, v);
        }
        return;
    }
    let mut joined = Vec::new();
    for v in headers.get_all(&name) {
        joined.extend_from_slice(v.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(element.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(name, v);
    } else if let Ok(v) = HeaderValue::try_from(element) {
        // An existing value that cannot be joined is not trusted: replace it.
        headers.insert(name, v);
    }
}

/// One RFC 7239 `forwarded-element`: `for=...;host=...;proto=...`.
fn forwarded_element(client: &ClientInfo, host: Option<&HeaderValue>) -> String {
    // RFC 7239 section 6: an IPv6 address is bracketed, and then, containing ':',
    // must be a quoted-string.
    let mut s = match client.addr() {
        Some(IpAddr::V4(v4)) => format!("for={v4}"),
        Some(IpAddr::V6(v6)) => format!("for=\"[{v6}]\""),
        None => "for=unknown".to_owned(),
    };
    if let Some(host) = host.and_then(|h| h.to_str().ok()) {
        s.push_str(";host=");
        push_token_or_quoted(&mut s, host);
    }
    s.push_str(";proto=");
    s.push_str(client.proto());
    s
}

/// RFC 7230 section 3.2.6 `tchar`.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// RFC 7239 section 4: a value is a token or a quoted-string.
fn push_token_or_quoted(out: &mut String, value: &str) {
    if !value.is_empty() && value.chars().all(is_tchar) {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.9.100.255",
            "192.168.1.10",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(addr), addr.to_string());
        }
        for n in 0..=255u8 {
            let addr = IpAddr::from([n, n / 3, 255 - n, n / 10]);
            assert_eq!(ip_text(addr), addr.to_string());
        }
    }

    fn client(ip: &str) -> ClientInfo {
        ClientInfo::new(ip.parse().unwrap())
    }

    // RFC 7239 section 6: IPv6 is bracketed and quoted; IPv4 is a bare token; a host
    // with a port contains ':' and is quoted.
    #[test]
    fn forwarded_element_quotes_correctly() {
        let host = HeaderValue::from_static("example.com:8080");
        assert_eq!(
            forwarded_element(&client("2001:db8::1"), Some(&host)),
            r#"for="[2001:db8::1]";host="example.com:8080";proto=http"#
        );
        assert_eq!(
            forwarded_element(
                &client("192.0.2.60").tls(true),
                Some(&HeaderValue::from_static("example.com"))
            ),
            "for=192.0.2.60;host=example.com;proto=https"
        );
    }

    #[test]
    fn unknown_client_adds_no_address() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        ForwardedHeaders::default().forwarded(true).apply(
            &mut h,
            &ClientInfo::unknown(),
            None,
            Version::HTTP_11,
        );
        assert!(!h.contains_key(X_FORWARDED_FOR));
        assert_eq!(h[header::FORWARDED], "for=unknown;proto=http");
    }

    #[test]
    fn untrusted_values_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        h.insert(X_FORWARDED_HOST, HeaderValue::from_static("evil"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        let host = HeaderValue::from_static("good.example");
        ForwardedHeaders::default().apply(
            &mut h,
            &client("10.0.0.1"),
            Some(&host),
            Version::HTTP_11,
        );
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1");
        assert_eq!(h[&X_FORWARDED_HOST], "good.example");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert!(!h.contains_key(header::FORWARDED));
    }

    #[test]
    fn trusted_values_are_appended_to() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=1.1.1.1"));
        h.insert(header::VIA, HeaderValue::from_static("1.1 lb"));
        let fwd = ForwardedHeaders::default()
            .trust_incoming(true)
            .forwarded(true)
            .via("us");
        fwd.apply(&mut h, &client("10.0.0.1"), None, Version::HTTP_11);
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[header::FORWARDED], "for=1.1.1.1, for=10.0.0.1;proto=http");
        assert_eq!(h[header::VIA], "1.1 lb, 1.1 us");
    }

    #[test]
    fn none_adds_nothing_and_still_drops_untrusted() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        ForwardedHeaders::none().apply(&mut h, &client("10.0.0.1"), None, Version::HTTP_11);
        assert!(h.is_empty(), "{h:?}");
    }
}
