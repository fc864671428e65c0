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
