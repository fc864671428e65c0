//! Hop-by-hop header fields (RFC 9110 section 7.6.1).

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// The fields that apply to one connection only and are never forwarded (RFC 9110
/// section 7.6.1, plus `Keep-Alive`, `Proxy-Connection` and the proxy
/// authentication fields of RFC 9110 section 11.7, as Go and other proxies do).
///
/// `Trailer` is not in the list: it is an end-to-end field (RFC 9110 section
/// 6.6.2) that announces the trailer fields to come, and an HTTP/1.1 sender must
/// see it to send them. Go removes it and then announces the same trailers again;
/// keeping it has the same effect.
///
/// A slice, so that the list may grow without breaking anyone; to ask about one
/// field, use [`is_hop_by_hop`].
///
/// ```
/// assert!(proxy_core::hop_by_hop_fields().contains(&http::header::CONNECTION));
/// ```
pub fn hop_by_hop_fields() -> &'static [HeaderName] {
    &HOP_BY_HOP
}

static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// True if `name` is one of the fixed hop-by-hop fields ([`hop_by_hop_fields`]).
/// Fields named in a message's `Connection` are hop-by-hop too, for that
/// message only: [`remove_hop_by_hop`] removes both kinds.
///
/// ```
/// assert!(proxy_core::is_hop_by_hop(&http::header::TRANSFER_ENCODING));
/// assert!(!proxy_core::is_hop_by_hop(&http::header::TRAILER));
/// ```
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Splits the comma-separated list values of every `name` line into trimmed,
/// non-empty elements (RFC 9110 section 5.6.1: empty elements are allowed and
/// ignored).
pub(crate) fn list_elements<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|e| e.trim_ascii())
        .filter(|e| !e.is_empty())
}

/// True if a list field `name` (all its lines) has the element `token`
/// (case-insensitive), ignoring any parameters after `;` (RFC 9110 section
/// 5.6.1). For instance whether a message asks to close its connection:
///
/// ```
/// use http::{HeaderMap, header::CONNECTION};
///
/// let mut h = HeaderMap::new();
/// h.append(CONNECTION, "keep-alive".parse().unwrap());
/// h.append(CONNECTION, "X-Trace, Close".parse().unwrap());
/// assert!(proxy_core::has_token(&h, &CONNECTION, "close"));
/// assert!(!proxy_core::has_token(&h, &CONNECTION, "upgrade"));
/// ```
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    list_elements(headers, name).any(|e| {
        let bare = e.split(|&b| b == b';').next().unwrap_or(e).trim_ascii();
        bare.eq_ignore_ascii_case(token.as_bytes())
    })
}

/// Removes the hop-by-hop fields from `headers`: those in [`hop_by_hop_fields`], and every
/// field named in any `Connection` line (RFC 9110 section 7.6.1: "a proxy or
/// gateway MUST parse a received Connection header field before a message is
/// forwarded and, for each connection-option in this field, remove any header or
/// trailer field(s) from the message with the same name").
///
/// ```
/// use http::HeaderMap;
///
/// let mut h = HeaderMap::new();
/// h.insert("connection", "close, X-Secret".parse().unwrap());
/// h.insert("x-secret", "1".parse().unwrap());
/// h.insert("accept", "*/*".parse().unwrap());
/// proxy_core::remove_hop_by_hop(&mut h);
/// assert_eq!(h.len(), 1);
/// assert!(h.contains_key("accept"));
/// ```
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // The usual `Connection` names only fixed fields (`keep-alive`, `close`,
    // `upgrade`) or absent ones: looked up by their text, which allocates
    // nothing, and a list of names is built only when one is there.
    let names_a_present_field = list_elements(headers, &header::CONNECTION).any(|e| {
        !HOP_BY_HOP
            .iter()
            .any(|fixed| fixed.as_str().as_bytes().eq_ignore_ascii_case(e))
            && std::str::from_utf8(e).is_ok_and(|name| headers.contains_key(name))
    });
    if names_a_present_field {
        let named: Vec<HeaderName> = list_elements(headers, &header::CONNECTION)
            .filter_map(|e| HeaderName::from_bytes(e).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// `Connection: upgrade`, as re-added on upgrade requests and 101 responses.
pub(crate) const UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    // RFC 9110 section 7.6.1: the fixed hop-by-hop fields are removed.
    #[test]
    fn removes_fixed_hop_by_hop_fields() {
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "gzip"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("authorization", "Bearer end-to-end"),
        ]);
        remove_hop_by_hop(&mut h);
        // RFC 9110 section 6.6.2: Trailer is end-to-end and stays.
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key("authorization") && h.contains_key("trailer"));
    }

    // RFC 9110 section 7.6.1: fields named in Connection are removed, whatever the
    // case, spacing, empty list elements, or number of Connection lines.
    #[test]
    fn removes_fields_named_in_every_connection_line() {
        let mut h = map(&[
            ("connection", " X-Foo ,,  x-BAR,"),
            ("connection", "x-baz"),
            ("x-foo", "1"),
            ("x-bar", "2"),
            ("x-baz", "3"),
            ("x-kept", "4"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }

    // RFC 9110 section 5.6.1: list elements may carry parameters; tokens compare
    // case-insensitively.
    #[test]
    fn finds_tokens_in_lists() {
        let h = map(&[("te", "gzip;q=0.5"), ("te", " Trailers ")]);
        assert!(has_token(&h, &header::TE, "trailers"));
        assert!(has_token(&h, &header::TE, "gzip"));
        assert!(!has_token(&h, &header::TE, "deflate"));
    }

    // The usual Connection names fixed fields (any case) or absent ones: it
    // is answered without building a list of names, to the same effect.
    #[test]
    fn connection_naming_fixed_or_absent_fields_removes_those_alone() {
        let mut h = map(&[
            ("connection", "Keep-Alive, x-absent, UPGRADE"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "h2c"),
            ("x-kept", "1"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        // One present field after absent and fixed ones is still found.
        let mut h = map(&[
            ("connection", "keep-alive, x-absent, X-Named"),
            ("x-named", "1"),
            ("x-kept", "2"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn invalid_names_in_connection_are_ignored() {
        let mut h = map(&[
            ("connection", "bad name, x-ok"),
            ("x-ok", "1"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
    }
}
