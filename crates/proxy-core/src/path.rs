//! Request paths with their dot-segments resolved, so that what a proxy matches
//! (a path prefix) is what the upstream serves.

use std::borrow::Cow;

use crate::ProxyError;

/// Resolves the dot-segments (`.` and `..`) of a request path, as RFC 3986
/// section 5.2.4 does, after decoding `%2E` to `.` (an unreserved character,
/// equivalent to its encoding: RFC 3986 section 6.2.2.2). `..` never climbs
/// above the root. A path without dot-segments is returned as it is.
///
/// A segment that would become a dot-segment only once an encoded slash
/// (`%2F`) or a backslash (`\`, `%5C`) is read as a separator, such as
/// `..%2F`, is refused (400): upstreams differ on whether they decode those, so
/// no rewriting is safe.
///
/// Upstreams that normalize paths (most static servers and many frameworks) would
/// otherwise serve `/api/../admin` as `/admin`, past a proxy that forwards only
/// `/api`.
///
/// ```
/// use proxy_core::normalize_path;
///
/// assert_eq!(normalize_path("/api/../admin").unwrap(), "/admin");
/// assert_eq!(normalize_path("/api/%2e%2E/admin").unwrap(), "/admin");
/// assert_eq!(normalize_path("/a/./b/../c/").unwrap(), "/a/c/");
/// assert_eq!(normalize_path("/../../etc").unwrap(), "/etc");
/// assert_eq!(normalize_path("/files/report.v2..pdf").unwrap(), "/files/report.v2..pdf");
/// assert!(normalize_path("/api/..%2fadmin").is_err());
/// ```
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, ProxyError> {
    if !needs_work(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_dots(path);
    let mut out: Vec<&str> = Vec::new();
    let mut segments = decoded.split('/').peekable();
    // A path is "/"-rooted in origin form; the first split element is "".
    let rooted = decoded.starts_with('/');
    if rooted {
        segments.next();
    }
    let mut trailing_slash = false;
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if hides_dot_segment(seg) {
            return Err(ProxyError::bad_request(format!(
                "path segment {seg:?} hides a dot-segment behind an encoded separator"
            )));
        }
        match seg {
            "." => trailing_slash = last,
            ".." => {
                out.pop();
                trailing_slash = last;
            }
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut normalized = String::with_capacity(decoded.len());
    for seg in &out {
        if rooted || !normalized.is_empty() {
            normalized.push('/');
        }
        normalized.push_str(seg);
    }
    if trailing_slash || (rooted && out.is_empty()) {
        normalized.push('/');
    }
    if normalized == path {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(normalized))
}

/// True if the path may hold a dot-segment, plain or encoded: a segment that
/// starts with `.`, an escaped `.`, `/` or `\`, or a `\`. Other escapes
/// (`%20`, UTF-8) leave the path on the fast path.
fn needs_work(path: &str) -> bool {
    let b = path.as_bytes();
    b.iter().enumerate().any(|(i, &c)| match c {
        b'.' => i == 0 || b[i - 1] == b'/',
        b'\\' => true,
        b'%' => matches!(
            b.get(i + 1..i + 3),
            Some([b'2', b'e' | b'E' | b'f' | b'F'] | [b'5', b'c' | b'C'])
        ),
        _ => false,
    })
}

/// `%2E` / `%2e` become `.`; nothing else is decoded.
fn decode_dots(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i..i + 3);
        if esc.is_some_and(|e| e.eq_ignore_ascii_case("%2e")) {
            out.push('.');
            rest = &rest[i + 3..];
        } else {
            out.push('%');
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// A segment that holds `.` or `..` between encoded slashes or backslashes.
fn hides_dot_segment(seg: &str) -> bool {
    if !seg.contains(['%', '\\']) {
        return false;
    }
    let lower = seg.to_ascii_lowercase();
    if !(lower.contains("%2f") || lower.contains("%5c") || lower.contains('\\')) {
        return false;
    }
    lower
        .replace("%2f", "/")
        .replace("%5c", "/")
        .replace('\\', "/")
        .split('/')
        .any(|part| part == "." || part == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_3986_examples_and_escapes() {
        for (raw, want) in [
            ("/", "/"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/api/../admin", "/admin"),
            ("/api/..", "/"),
            ("/api/.", "/api/"),
            ("/api/./", "/api/"),
            ("/..", "/"),
            ("/./", "/"),
            ("/a//b/../c", "/a//c"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/.%2E/admin", "/admin"),
            ("/api/%2E./admin", "/admin"),
            ("/api/%2e/x", "/api/x"),
            ("/a/%2e%2e%2e/b", "/a/.../b"),
            ("/a/.hidden/b", "/a/.hidden/b"),
            ("/a/b%20c/..", "/a/"),
        ] {
            assert_eq!(normalize_path(raw).unwrap(), want, "{raw}");
        }
    }

    #[test]
    fn clean_paths_are_borrowed() {
        for p in [
            "/",
            "/api/users",
            "/favicon.ico",
            "/a/b.c/d..e",
            "/x/y/",
            "/caf%C3%A9/menu",
            "/a%2Fb/c",
            "/q%20r",
        ] {
            assert!(
                matches!(normalize_path(p), Ok(Cow::Borrowed(q)) if q == p),
                "{p}"
            );
        }
    }

    #[test]
    fn dot_segments_behind_encoded_separators_are_refused() {
        for p in [
            "/api/..%2fadmin",
            "/api/..%2Fadmin",
            "/api/%2e%2e%2fadmin",
            "/api/..%5cadmin",
            "/api/..\\admin",
            "/api/x%2f..%2f..%2fadmin",
        ] {
            let err = normalize_path(p).unwrap_err();
            assert!(err.is_bad_request(), "{p}: {err}");
        }
        // Encoded slashes without dot-segments are left to the upstream.
        assert_eq!(normalize_path("/a%2Fb/c").unwrap(), "/a%2Fb/c");
    }
}
