//! Where a request goes: upstream base URI joined with the request's path and query.

use std::borrow::Cow;

use http::header::HeaderValue;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};

use crate::{ProxyError, normalize_path};

/// Joins a base path and a request path with exactly one slash between them, like
/// Go's `singleJoiningSlash`. Neither side is decoded or normalised.
///
/// ```
/// use proxy_core::join_paths;
///
/// assert_eq!(join_paths("/api/", "/users"), "/api/users");
/// assert_eq!(join_paths("/api", "users"), "/api/users");
/// assert_eq!(join_paths("", ""), "/");
/// ```
pub fn join_paths(base: &str, path: &str) -> String {
    joined(base, path).concat()
}

/// The pieces of [`join_paths`]'s result: the base, a slash when neither side
/// has one, and the path (without its slash when the base ends in one).
fn joined<'a>(base: &'a str, path: &'a str) -> [&'a str; 3] {
    match (base.ends_with('/'), path.starts_with('/')) {
        (true, true) => [base, "", &path[1..]],
        (false, false) => [base, "/", path],
        _ => [base, "", path],
    }
}

/// Drops query parameters that cannot be parsed, like Go's `cleanQueryParams`:
/// a query containing `;` or a malformed `%` escape is re-encoded from the
/// parameters that do parse (`;` is not a separator, so `a=2;b=3` is dropped
/// whole), sorted by name. A clean query is returned as it is, byte for byte.
///
/// This is a defence against parameter smuggling: a proxy and an upstream that
/// split a query differently (some servers treat `;` as `&`) would otherwise see
/// different parameters.
///
/// ```
/// use proxy_core::clean_query;
///
/// assert_eq!(clean_query("a=1&a=2;b=3"), "a=1");
/// assert_eq!(clean_query("a=1&a=%zz&b=3"), "a=1&b=3");
/// assert_eq!(clean_query("q=rust%20lang&x"), "q=rust%20lang&x");
/// ```
pub fn clean_query(query: &str) -> Cow<'_, str> {
    let b = query.as_bytes();
    let mut i = 0;
    let mut dirty = false;
    while i < b.len() {
        match b[i] {
            b';' => {
                dirty = true;
                break;
            }
            b'%' if i + 2 >= b.len()
                || !b[i + 1].is_ascii_hexdigit()
                || !b[i + 2].is_ascii_hexdigit() =>
            {
                dirty = true;
                break;
            }
            b'%' => i += 3,
            _ => i += 1,
        }
    }
    if !dirty {
        return Cow::Borrowed(query);
    }
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.contains(';'))
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((unescape(k)?, unescape(v)?))
        })
        .collect();
    // Go's `url.Values.Encode`: sorted by name; values of one name keep their order.
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::with_capacity(query.len());
    for (k, v) in &pairs {
        if !out.is_empty() {
            out.push('&');
        }
        escape_into(&mut out, k);
        out.push('=');
        escape_into(&mut out, v);
    }
    Cow::Owned(out)
}

/// Query-component unescaping: `+` is a space, `%XX` a byte; anything else is
/// kept. `None` for a malformed escape.
fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Query-component escaping (Go's `url.QueryEscape`): unreserved bytes as they
/// are, space as `+`, everything else `%XX`.
fn escape_into(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &c in bytes {
        match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(c as char)
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(HEX[(c >> 4) as usize] as char);
                out.push(HEX[(c & 15) as usize] as char);
            }
        }
    }
}

/// A parsed upstream base URI, ready to rewrite request targets.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    uri: Uri,
    scheme: Scheme,
    authority: Authority,
    path: String,
    query: Option<String>,
    host: HeaderValue,
}

impl Target {
    pub(crate) fn parse(uri: Uri) -> Result<Self, ProxyError> {
        let scheme = match uri.scheme() {
            Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => s.clone(),
            Some(s) => {
                return Err(ProxyError::invalid_upstream(format!(
                    "{uri}: unsupported scheme {s}"
                )));
            }
            None => {
                return Err(ProxyError::invalid_upstream(format!(
                    "{uri}: not an absolute http(s) URI"
                )));
            }
        };
        let Some(authority) = uri.authority().cloned() else {
            return Err(ProxyError::invalid_upstream(format!("{uri}: no host")));
        };
        if authority.as_str().contains('@') {
            return Err(ProxyError::invalid_upstream(format!(
                "{uri}: user info is not supported"
            )));
        }
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| ProxyError::invalid_upstream(format!("{uri}: invalid host")))?;
        Ok(Target {
            path: uri.path().to_owned(),
            query: uri.query().filter(|q| !q.is_empty()).map(str::to_owned),
            scheme,
            authority,
            host,
            uri,
        })
    }

    pub(crate) fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The upstream's authority as a `Host` value.
    pub(crate) fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// The upstream URI for a request to `req`: the base path joined with the
    /// request path, its dot-segments [resolved](normalize_path) first so that it
    /// cannot climb out of the base path; the base query and the request's
    /// [cleaned](clean_query) query joined with `&` (Go's `ProxyRequest.SetURL`,
    /// after Go's `cleanQueryParams`).
    pub(crate) fn rewrite(&self, req: &Uri) -> Result<Uri, ProxyError> {
        let path = normalize_path(req.path())?;
        let req_query = req.query().map(clean_query);
        let req_query = req_query.as_deref().filter(|q| !q.is_empty());
        let [base, slash, path] = joined(&self.path, &path);
        let query = match (self.query.as_deref(), req_query) {
            (Some(b), Some(r)) => ["?", b, "&", r],
            (Some(q), None) | (None, Some(q)) => ["?", q, "", ""],
            (None, None) => [""; 4],
        };
        let [q1, q2, q3, q4] = query;
        // Joined in one `String` of exactly their length, which becomes the
        // URI's bytes as it is (`Bytes` from a `Vec` with room to spare took a
        // second allocation, on every request).
        let pq = [base, slash, path, q1, q2, q3, q4].concat();
        debug_assert_eq!(pq.len(), pq.capacity());
        let pq = PathAndQuery::try_from(pq)
            .map_err(|e| ProxyError::bad_request(format!("target: {e}")))?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| ProxyError::bad_request(format!("target: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(base: &str, req: &str) -> String {
        Target::parse(base.parse().unwrap())
            .unwrap()
            .rewrite(&req.parse().unwrap())
            .unwrap()
            .to_string()
    }

    // Go's TestSingleJoinSlash.
    #[test]
    fn single_joining_slash() {
        for (base, path, want) in [
            (
                "https://www.google.com/",
                "/favicon.ico",
                "https://www.google.com/favicon.ico",
            ),
            (
                "https://www.google.com",
                "/favicon.ico",
                "https://www.google.com/favicon.ico",
            ),
            (
                "https://www.google.com",
                "favicon.ico",
                "https://www.google.com/favicon.ico",
            ),
            ("https://www.google.com", "", "https://www.google.com/"),
            ("", "favicon.ico", "/favicon.ico"),
        ] {
            assert_eq!(join_paths(base, path), want, "{base} + {path}");
        }
    }

    // Go's TestJoinURLPath (the path part; http::Uri keeps the raw path, so the
    // escaped forms pass through untouched).
    #[test]
    fn join_url_path() {
        for (base, req, want) in [
            ("http://foo", "/bar", "http://foo/bar"),
            ("http://foo/", "/bar", "http://foo/bar"),
            ("http://foo/a", "/b", "http://foo/a/b"),
            ("http://foo/a/", "/b", "http://foo/a/b"),
            ("http://foo/a%2F", "/b", "http://foo/a%2F/b"),
            ("http://foo/a%2F", "/b%2F", "http://foo/a%2F/b%2F"),
            ("http://foo/a/", "/b%2F", "http://foo/a/b%2F"),
        ] {
            assert_eq!(rewrite(base, req), want, "{base} + {req}");
        }
    }

    // Go's TestReverseProxyQuery: base query and request query are joined with '&'.
    #[test]
    fn queries_are_merged() {
        assert_eq!(
            rewrite("http://u/?sta=tic", "/foo?us=er"),
            "http://u/foo?sta=tic&us=er"
        );
        assert_eq!(rewrite("http://u/?sta=tic", "/foo"), "http://u/foo?sta=tic");
        assert_eq!(rewrite("http://u/", "/foo?us=er"), "http://u/foo?us=er");
        assert_eq!(
            rewrite("http://u/base", "http://client.example/x?y"),
            "http://u/base/x?y"
        );
    }

    // Go's cleanQueryParams, with the vectors of
    // TestReverseProxyQueryParameterSmugglingRewrite and a few more.
    #[test]
    fn unparsable_query_parameters_are_dropped() {
        for (raw, clean) in [
            ("a=1&a=2;b=3", "a=1"),
            ("a=1&a=%zz&b=3", "a=1&b=3"),
            ("b=2&a=1;x", "b=2"),
            ("z=%41&y=a+b&bad=%2", "y=a+b&z=A"),
            ("q=%E2%9C%93&s=x;", "q=%E2%9C%93"),
        ] {
            assert_eq!(clean_query(raw), clean, "{raw}");
        }
        // Clean queries are untouched, even unsorted or with odd but valid bytes.
        for ok in ["b=2&a=1", "x", "a=%20&b=c,d", "k=v=w", ""] {
            assert!(
                matches!(clean_query(ok), Cow::Borrowed(q) if q == ok),
                "{ok}"
            );
        }
        assert_eq!(
            rewrite("http://u/?sta=tic", "/p?a=1&a=2;b=3"),
            "http://u/p?sta=tic&a=1"
        );
        assert_eq!(rewrite("http://u/", "/p?;"), "http://u/p");
    }

    /// A request path cannot climb out of the upstream's base path.
    #[test]
    fn dot_segments_stay_under_the_base_path() {
        assert_eq!(rewrite("http://u/base", "/../admin"), "http://u/base/admin");
        assert_eq!(
            rewrite("http://u/base/", "/x/%2e%2e/%2E%2E/admin?q=1"),
            "http://u/base/admin?q=1"
        );
        let err = Target::parse("http://u/base".parse().unwrap())
            .unwrap()
            .rewrite(&"/..%2fadmin".parse().unwrap())
            .unwrap_err();
        assert!(err.is_bad_request(), "{err}");
    }

    #[test]
    fn upstream_must_be_absolute_http() {
        for bad in ["/relative", "ftp://host/", "http://user@host/"] {
            let err = Target::parse(bad.parse().unwrap()).unwrap_err();
            assert!(err.is_invalid_upstream(), "{bad}: {err}");
        }
        assert!(Target::parse("https://host:8443/base".parse().unwrap()).is_ok());
    }
}
