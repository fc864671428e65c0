//! Request heads out: the request line, the fields, and framing of the
//! proxy's own (a body sent whole with its length, or chunked when it has
//! trailers).
//!
//! Imports nothing of the crate; no IO.

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Writes a request head, with its body and trailers when there are any:
/// origin-form target, `Host` from the URI when the request has none, and
/// framing of our own (the request's `Content-Length` and
/// `Transfer-Encoding` are replaced): `Content-Length` for a body sent whole,
/// or, when there are trailers, the chunked coding (one chunk) so that the
/// trailers go too (RFC 9112 section 7.1.2).
pub(crate) fn encode_request(
    parts: &http::request::Parts,
    body: &[u8],
    trailers: Option<&HeaderMap>,
) -> Vec<u8> {
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let trailers = trailers.filter(|t| !t.is_empty());
    let extra = trailers.map_or(0, |t| 32 + t.len() * 32);
    let mut out = Vec::with_capacity(256 + parts.headers.len() * 32 + body.len() + extra);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(HOST) {
        if let Some(host) = parts.uri.host() {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(host.as_bytes());
            if let Some(port) = parts.uri.port_u16().filter(|p| *p != 80) {
                out.extend_from_slice(format!(":{port}").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    for (name, value) in &parts.headers {
        if name == TRANSFER_ENCODING || name == CONTENT_LENGTH {
            continue;
        }
        field(&mut out, name, value);
    }
    match trailers {
        Some(trailers) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            if !body.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n");
            for (name, value) in trailers {
                if may_trail(name) {
                    field(&mut out, name, value);
                }
            }
            out.extend_from_slice(b"\r\n");
        }
        None => {
            // A body, or a length the request stated (`Content-Length: 0` on
            // a POST), is sent with the length of the body sent: a field that
            // disagrees with it would desynchronise the connection.
            if !body.is_empty() || parts.headers.contains_key(CONTENT_LENGTH) {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(body.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(body);
        }
    }
    out
}

#[inline]
fn field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// RFC 9110 section 6.5.1: fields that frame, route or authenticate a
/// message, or that its processing needs before the body, are not sent as
/// trailers (the list hyper applies).
fn may_trail(name: &HeaderName) -> bool {
    use http::header::*;
    !matches!(
        *name,
        AUTHORIZATION
            | CACHE_CONTROL
            | CONNECTION
            | CONTENT_ENCODING
            | CONTENT_LENGTH
            | CONTENT_RANGE
            | CONTENT_TYPE
            | HOST
            | MAX_FORWARDS
            | SET_COOKIE
            | TE
            | TRAILER
            | TRANSFER_ENCODING
    )
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::*;

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut req = http::Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn requests_are_framed_by_the_body_sent() {
        let parts = request(
            "POST",
            "http://up:8080/a?b=c",
            &[
                ("content-length", "99"),
                ("transfer-encoding", "chunked"),
                ("x-a", "1"),
            ],
        );
        let out = encode_request(&parts, b"hello", None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a?b=c HTTP/1.1\r\nhost: up:8080\r\nx-a: 1\r\ncontent-length: 5\r\n\r\nhello"
        );
        // No body and no length stated: no length sent.
        let parts = request("GET", "http://up/", &[("host", "front")]);
        assert_eq!(
            String::from_utf8(encode_request(&parts, b"", None)).unwrap(),
            "GET / HTTP/1.1\r\nhost: front\r\n\r\n"
        );
        // A stated empty length stays.
        let parts = request("POST", "http://up/", &[("content-length", "0")]);
        assert!(
            String::from_utf8(encode_request(&parts, b"", None))
                .unwrap()
                .ends_with("content-length: 0\r\n\r\n")
        );
    }

    // Request trailers are never dropped: the body goes chunked with them; the
    // fields that may not trail are left out (RFC 9110 section 6.5.1).
    #[test]
    fn request_trailers_go_chunked() {
        let parts = request("POST", "http://up/", &[("content-length", "5")]);
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("abc"));
        trailers.insert("content-length", HeaderValue::from_static("1"));
        let out = encode_request(&parts, b"hello", Some(&trailers));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST / HTTP/1.1\r\nhost: up\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n"
        );
        let empty = encode_request(&parts, b"", Some(&trailers));
        assert!(
            String::from_utf8(empty)
                .unwrap()
                .ends_with("transfer-encoding: chunked\r\n\r\n0\r\nx-checksum: abc\r\n\r\n")
        );
        // An empty trailer map is no trailers.
        let out = encode_request(&parts, b"hello", Some(&HeaderMap::new()));
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("content-length: 5")
        );
    }
}
