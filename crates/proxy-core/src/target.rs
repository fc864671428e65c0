//! Where a request goes: upstream base URI joined with the request's path and query.

use http::header::HeaderValue;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};

use crate::ProxyError;

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
    let mut out = String::with_capacity(base.len() + path.len() + 1);
    out.push_str(base);
    match (base.ends_with('/'), path.starts_with('/')) {
        (true, true) => out.push_str(&path[1..]),
        (false, false) => {
            out.push('/');
            out.push_str(path);
        }
        _ => out.push_str(path),
    }
    out
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
    /// request path; the base query and the request query joined with `&` (Go's
    /// `ProxyRequest.SetURL`).
    pub(crate) fn rewrite(&self, req: &Uri) -> Result<Uri, ProxyError> {
        let mut pq = join_paths(&self.path, req.path());
        let req_query = req.query().filter(|q| !q.is_empty());
        match (&self.query, req_query) {
            (Some(b), Some(r)) => {
                pq.push('?');
                pq.push_str(b);
                pq.push('&');
                pq.push_str(r);
            }
            (Some(q), None) => {
                pq.push('?');
                pq.push_str(q);
            }
            (None, Some(q)) => {
                pq.push('?');
                pq.push_str(q);
            }
            (None, None) => {}
        }
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

    #[test]
    fn upstream_must_be_absolute_http() {
        for bad in ["/relative", "ftp://host/", "http://user@host/"] {
            let err = Target::parse(bad.parse().unwrap()).unwrap_err();
            assert!(err.is_invalid_upstream(), "{bad}: {err}");
        }
        assert!(Target::parse("https://host:8443/base".parse().unwrap()).is_ok());
    }
}
