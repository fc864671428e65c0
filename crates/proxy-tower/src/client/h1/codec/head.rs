//! Response heads in: informational heads skipped (bounded), the final
//! head parsed, and the framing decision of RFC 9112 section 6.3.
//!
//! Imports `error` only; no IO.

use std::borrow::Cow;

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};

use super::error::{Error, MAX_HEAD, MAX_HEADERS, MAX_INFORMATIONAL, invalid};

/// How a response body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    /// No body (HEAD, 1xx, 204, 304, or `Content-Length: 0`).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// The chunked coding.
    Chunked,
    /// Until the connection closes.
    Close,
}

/// A final response head, and what it says about its body and connection.
#[derive(Debug)]
pub(crate) struct Head {
    /// Status, version, fields (framing fields normalised: one
    /// `Content-Length` value, none beside `Transfer-Encoding`), and a
    /// non-standard reason phrase as hyper's `ReasonPhrase` extension.
    pub(crate) response: Response<()>,
    pub(crate) body: BodyKind,
    /// The head allows another request on the connection after this
    /// response (the body must still be read to its exact end).
    pub(crate) keep_alive: bool,
}

/// Reads the response to one request off the front of a buffer: skips
/// informational heads, then returns the final head.
#[derive(Debug)]
pub(crate) struct ResponseReader {
    head_request: bool,
    /// The request asked to switch protocols: a 101 is its final answer.
    upgrade: bool,
    informational: usize,
    /// Bytes at the front of the buffer known to hold no head's end: a head
    /// is parsed once its end may be there, not at every read (an upstream
    /// that sends its head a byte at a time costs linear time, not
    /// quadratic).
    scanned: usize,
}

impl ResponseReader {
    /// For a request with `method` (a response to HEAD has no body).
    pub(crate) fn new(method: &Method) -> Self {
        ResponseReader {
            head_request: method == Method::HEAD,
            upgrade: false,
            informational: 0,
            scanned: 0,
        }
    }

    /// For a request that asks to switch protocols (`Upgrade`): a `101
    /// Switching Protocols` is then the final head, and the bytes after it
    /// are the new protocol's (left in the buffer).
    pub(crate) fn upgrading(mut self, upgrade: bool) -> Self {
        self.upgrade = upgrade;
        self
    }

    /// The final response head, taken off the front of `buf`; `None` until
    /// all of it is there (informational heads before it are consumed).
    pub(crate) fn read(&mut self, buf: &mut BytesMut) -> Result<Option<Head>, Error> {
        loop {
            if buf.is_empty() {
                return Ok(None);
            }
            // A head ends with an empty line: LF (CR) LF.
            let from = self.scanned.saturating_sub(2);
            let ends = buf[from..].windows(2).any(|w| w == b"\n\n" || w == b"\n\r");
            let parsed = match ends {
                true => parse_head(buf, self.head_request)?,
                false => None,
            };
            let Some(head) = parsed else {
                self.scanned = buf.len();
                if buf.len() >= MAX_HEAD {
                    return Err(Error::TooLarge("a response head over 64 KiB"));
                }
                return Ok(None);
            };
            self.scanned = 0;
            let status = head.response.status();
            if !status.is_informational() {
                return Ok(Some(head));
            }
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return match self.upgrade {
                    true => Ok(Some(head)),
                    false => Err(invalid(
                        "101 Switching Protocols to a request without Upgrade",
                    )),
                };
            }
            // 100 Continue, 103 Early Hints: not relayed (hyper's client does
            // not either).
            self.informational += 1;
            if self.informational > MAX_INFORMATIONAL {
                return Err(Error::TooLarge("more than 8 informational responses"));
            }
        }
    }

    /// The error for a connection that ended with `buf` left unread: nothing
    /// at all, or part of a head.
    pub(crate) fn truncated(&self, buf: &[u8]) -> Error {
        Error::Truncated(Cow::Borrowed(if self.received_nothing(buf) {
            "the upstream closed the connection without a response"
        } else {
            "the upstream closed the connection in the response head"
        }))
    }

    /// True if the upstream has sent no byte of a response yet (a request on
    /// a stale pooled connection may then be sent again).
    pub(crate) fn received_nothing(&self, buf: &[u8]) -> bool {
        buf.is_empty() && self.informational == 0
    }
}

/// Parses one complete response head off the front of `buf`; `None` if more
/// bytes are needed.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(format!("invalid response head: {e}"))),
    };
    if len > MAX_HEAD {
        return Err(Error::TooLarge("a response head over 64 KiB"));
    }
    let base = buf.as_ptr() as usize;
    let code = parsed.code.unwrap_or_default();
    let status =
        StatusCode::from_u16(code).map_err(|_| invalid(format!("invalid status code {code}")))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let reason = parsed
        .reason
        .filter(|r| !r.is_empty() && Some(*r) != status.canonical_reason())
        .map(|r| {
            let start = r.as_ptr() as usize - base;
            start..start + r.len()
        });
    // Where each field lies in the head, to share its bytes.
    let mut spans = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
    let n = parsed.headers.len();
    for (span, field) in spans.iter_mut().zip(parsed.headers.iter()) {
        let name = field.name.as_ptr() as usize - base;
        let value = field.value.as_ptr() as usize - base;
        *span = (name, field.name.len(), value, field.value.len());
    }
    let head = buf.split_to(len).freeze();
    // Room for the fields a proxy adds on the way back (a request ID, Via)
    // without the map growing.
    let mut headers = HeaderMap::with_capacity(n + 2);
    for &(name, name_len, value, value_len) in &spans[..n] {
        let name = HeaderName::from_bytes(&head[name..name + name_len])
            .map_err(|_| invalid("invalid header name in the response"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value..value + value_len))
            .map_err(|_| invalid(format!("invalid value for {name} in the response")))?;
        headers.append(name, value);
    }
    let (body, keep_alive) = framing(status, version, &mut headers, head_request)?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    if let Some(reason) = reason {
        if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(head.slice(reason)) {
            response.extensions_mut().insert(reason);
        }
    }
    Ok(Some(Head {
        response,
        body,
        keep_alive,
    }))
}

/// The body's length and whether the connection may be kept (RFC 9112
/// sections 6.3 and 9.3), normalising the framing fields of `headers`.
fn framing(
    status: StatusCode,
    version: Version,
    headers: &mut HeaderMap,
    head_request: bool,
) -> Result<(BodyKind, bool), Error> {
    // RFC 9112 section 9.3: HTTP/1.1 persists unless `close`; HTTP/1.0 only
    // with `keep-alive`.
    let mut keep_alive = match version {
        Version::HTTP_10 => proxy_core::has_token(headers, &CONNECTION, "keep-alive"),
        _ => !proxy_core::has_token(headers, &CONNECTION, "close"),
    };
    // RFC 9112 section 6.3, rule 1: no body, whatever the fields say.
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((BodyKind::Empty, keep_alive));
    }
    let kind = if headers.contains_key(TRANSFER_ENCODING) {
        // RFC 9112 section 6.1: HTTP/1.0 has no Transfer-Encoding.
        if version == Version::HTTP_10 {
            return Err(invalid("Transfer-Encoding in an HTTP/1.0 response"));
        }
        // Section 6.3, rule 3: Transfer-Encoding overrides Content-Length, and
        // the connection is not reused (a sign of an attempt at smuggling).
        if headers.remove(CONTENT_LENGTH).is_some() {
            keep_alive = false;
        }
        // Parsers that read an odd list differently (an empty element, a
        // byte outside ASCII) would frame the body differently: refused.
        let mut chunked = 0;
        let mut last_is_chunked = false;
        for value in headers.get_all(TRANSFER_ENCODING) {
            let text = value
                .to_str()
                .map_err(|_| invalid("Transfer-Encoding is not ASCII"))?;
            for coding in text.split(',').map(str::trim) {
                if coding.is_empty() {
                    return Err(invalid("empty element in Transfer-Encoding"));
                }
                last_is_chunked = coding.eq_ignore_ascii_case("chunked");
                chunked += usize::from(last_is_chunked);
            }
        }
        // Section 6.1: chunked is applied at most once.
        if chunked > 1 {
            return Err(invalid("chunked applied more than once"));
        }
        // Section 6.3, rule 4: a response whose final coding is not chunked
        // is read until the connection closes.
        match last_is_chunked {
            true => BodyKind::Chunked,
            false => BodyKind::Close,
        }
    } else if let Some((n, values)) = content_length(headers)? {
        // RFC 9110 section 8.6: a list of one repeated value may be accepted,
        // and is then forwarded as a single value.
        if values > 1 {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
        match n {
            0 => BodyKind::Empty,
            n => BodyKind::Length(n),
        }
    } else {
        BodyKind::Close
    };
    if kind == BodyKind::Close {
        keep_alive = false;
    }
    Ok((kind, keep_alive))
}

/// The value of every `Content-Length` field: 1*DIGIT each (no sign, no
/// space inside, no hex), all equal (RFC 9110 section 8.6); with how many
/// values there were. `None` without the field.
fn content_length(headers: &HeaderMap) -> Result<Option<(u64, usize)>, Error> {
    let mut length = None;
    let mut values = 0;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            let n = (!part.is_empty() && part.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(part).ok()?.parse::<u64>().ok())
                .flatten()
                // hyper's client refuses the two largest values.
                .filter(|n| *n < u64::MAX - 1)
                .ok_or_else(|| {
                    invalid(format!(
                        "invalid Content-Length {:?}",
                        String::from_utf8_lossy(value.as_bytes())
                    ))
                })?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid("Content-Length values disagree"));
            }
            length = Some(n);
            values += 1;
        }
    }
    Ok(length.map(|n| (n, values)))
}
