//! The HTTP/1.1 client's wire format, sans-IO: request heads out, response
//! heads, framing decisions and body events in, on byte buffers only (no
//! socket, no runtime), so every rule is tested, and fuzzed against hyper's
//! client, on byte slices.
//!
//! The rules (RFC 9112; each cites its section where it is applied):
//!
//! - A response head is parsed by `httparse` with its default, strict
//!   settings, as hyper's client does: no obs-fold, no bare CR, no NUL or
//!   other control character in a field, at most [`MAX_HEADERS`] fields and
//!   [`MAX_HEAD`] bytes. A bare LF ends a line (RFC 9112 section 2.2 lets a
//!   recipient accept it; hyper and `httparse` do).
//! - Informational (1xx) heads before the final one are skipped, at most
//!   [`MAX_INFORMATIONAL`] of them; a 101 is refused (this path never asks to
//!   upgrade).
//! - The body's length (section 6.3): none after HEAD, 1xx, 204 and 304;
//!   Transfer-Encoding wins over Content-Length, and such a connection is not
//!   reused; chunked only as the final coding, else read until close;
//!   Transfer-Encoding in an HTTP/1.0 response is refused; Content-Length
//!   must be digits only, and a list (or several fields) must agree, and is
//!   then forwarded as one value (RFC 9110 section 8.6); without either, the
//!   body ends when the connection closes.
//! - Chunked bodies (section 7.1): a chunk-size line is hex digits, optional
//!   whitespace and extensions, ended by CRLF, within [`MAX_CHUNK_LINE`]
//!   bytes, with no CR, LF or other control character inside; extensions are
//!   ignored but bounded over the whole body ([`MAX_CHUNK_EXTENSIONS`]);
//!   chunk data is followed by CRLF; the trailer section ends with CRLF, has
//!   only CRLF line ends, at most [`MAX_HEADERS`] fields and
//!   [`MAX_TRAILERS`] bytes.
//!
//! Whether a connection may carry another request is decided by the caller
//! from [`Head::keep_alive`], the decoder reaching [`Event::End`], and no byte
//! left over after it: a connection whose state cannot be proven clean is
//! never reused.

use std::borrow::Cow;
use std::fmt;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use http_body::SizeHint;

/// The most header fields a response head (or a trailer section) may carry
/// (hyper's default).
pub(crate) const MAX_HEADERS: usize = 100;
/// The largest response head, in bytes (Envoy's default is 60 KiB; hyper's
/// client allows about 400 KiB).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Informational (1xx) responses skipped before the final one, at most.
pub(crate) const MAX_INFORMATIONAL: usize = 8;
/// The longest chunk-size line, extensions and CRLF included.
pub(crate) const MAX_CHUNK_LINE: usize = 1024;
/// Chunk extension bytes over a whole body, at most (hyper allows 16 KiB).
pub(crate) const MAX_CHUNK_EXTENSIONS: usize = 8 * 1024;
/// The largest trailer section, in bytes (hyper allows 16 KiB).
pub(crate) const MAX_TRAILERS: usize = 8 * 1024;

/// Bytes that are not a valid response, or that pass a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Error {
    /// The bytes break a rule of HTTP/1.1, named here.
    Invalid(Cow<'static, str>),
    /// A limit was passed: which one.
    TooLarge(&'static str),
    /// The connection ended before the message did: where.
    Truncated(Cow<'static, str>),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(why) => write!(f, "invalid response from the upstream: {why}"),
            Error::TooLarge(what) => write!(f, "response from the upstream over a limit: {what}"),
            Error::Truncated(where_) => f.write_str(where_),
        }
    }
}

impl std::error::Error for Error {}

fn invalid(why: impl Into<Cow<'static, str>>) -> Error {
    Error::Invalid(why.into())
}

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

/// Reads the response to one request off the front of a buffer: skips
/// informational heads, then returns the final head.
#[derive(Debug)]
pub(crate) struct ResponseReader {
    head_request: bool,
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
            informational: 0,
            scanned: 0,
        }
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
            // 100 Continue, 103 Early Hints: not relayed (hyper's client does
            // not either). This path never asks to upgrade.
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(invalid(
                    "101 Switching Protocols to a request without Upgrade",
                ));
            }
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
    let mut headers = HeaderMap::with_capacity(n);
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

/// What the body decoder found in the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// Body bytes.
    Data(Bytes),
    /// The trailer section: the body is over.
    Trailers(HeaderMap),
    /// The body is over (without trailers, or after them).
    End,
    /// More bytes are needed.
    NeedMore,
}

/// Decodes one response body off the front of a buffer, by its
/// [`BodyKind`]. Bytes after the body's end are left in the buffer.
#[derive(Debug)]
pub(crate) struct BodyDecoder {
    state: Decode,
    /// Chunk extension bytes seen so far.
    extensions: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decode {
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Inside chunk data: bytes left.
    ChunkData(u64),
    /// Expecting the CRLF after chunk data.
    ChunkDataEnd,
    /// Expecting the trailer section (after the last chunk).
    Trailers,
    Close,
    Done,
}

impl BodyDecoder {
    pub(crate) fn new(kind: BodyKind) -> Self {
        let state = match kind {
            BodyKind::Empty | BodyKind::Length(0) => Decode::Done,
            BodyKind::Length(n) => Decode::Length(n),
            BodyKind::Chunked => Decode::ChunkSize,
            BodyKind::Close => Decode::Close,
        };
        BodyDecoder {
            state,
            extensions: 0,
        }
    }

    /// True once the whole body has been decoded.
    pub(crate) fn is_done(&self) -> bool {
        self.state == Decode::Done
    }

    /// What is known of the body's length still to come.
    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.state {
            Decode::Done => SizeHint::with_exact(0),
            Decode::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }

    /// The next event from the bytes at the front of `buf`, which it
    /// consumes. After [`Event::End`] or [`Event::Trailers`], every call is
    /// [`Event::End`].
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Event, Error> {
        loop {
            match self.state {
                Decode::Done => return Ok(Event::End),
                Decode::Length(remaining) => {
                    if buf.is_empty() {
                        return Ok(Event::NeedMore);
                    }
                    let take = remaining.min(buf.len() as u64);
                    let data = buf.split_to(take as usize).freeze();
                    self.state = match remaining - take {
                        0 => Decode::Done,
                        n => Decode::Length(n),
                    };
                    return Ok(Event::Data(data));
                }
                Decode::Close => {
                    if buf.is_empty() {
                        return Ok(Event::NeedMore);
                    }
                    return Ok(Event::Data(buf.split().freeze()));
                }
                Decode::ChunkSize => {
                    let Some((line, size, extensions)) = chunk_size_line(buf)? else {
                        return Ok(Event::NeedMore);
                    };
                    self.extensions += extensions;
                    if self.extensions > MAX_CHUNK_EXTENSIONS {
                        return Err(Error::TooLarge("chunk extensions over 8 KiB"));
                    }
                    let _ = buf.split_to(line);
                    self.state = match size {
                        0 => Decode::Trailers,
                        n => Decode::ChunkData(n),
                    };
                }
                Decode::ChunkData(remaining) => {
                    if buf.is_empty() {
                        return Ok(Event::NeedMore);
                    }
                    let take = remaining.min(buf.len() as u64);
                    let data = buf.split_to(take as usize).freeze();
                    self.state = match remaining - take {
                        0 => Decode::ChunkDataEnd,
                        n => Decode::ChunkData(n),
                    };
                    return Ok(Event::Data(data));
                }
                Decode::ChunkDataEnd => {
                    // RFC 9112 section 7.1: chunk-data CRLF; nothing else.
                    match &buf[..buf.len().min(2)] {
                        b"\r\n" => {
                            let _ = buf.split_to(2);
                            self.state = Decode::ChunkSize;
                        }
                        b"" | b"\r" => return Ok(Event::NeedMore),
                        _ => return Err(invalid("chunk data not followed by CRLF")),
                    }
                }
                Decode::Trailers => {
                    let Some(trailers) = trailer_section(buf)? else {
                        return Ok(Event::NeedMore);
                    };
                    self.state = Decode::Done;
                    return Ok(match trailers {
                        Some(t) => Event::Trailers(t),
                        None => Event::End,
                    });
                }
            }
        }
    }

    /// The connection closed: the end of a close-delimited body, else an
    /// error (the body was cut short).
    pub(crate) fn eof(&mut self) -> Result<Event, Error> {
        match self.state {
            Decode::Done => Ok(Event::End),
            Decode::Close => {
                self.state = Decode::Done;
                Ok(Event::End)
            }
            Decode::Length(missing) => Err(Error::Truncated(Cow::Owned(format!(
                "the upstream closed the connection {missing} bytes before the end of the body"
            )))),
            _ => Err(Error::Truncated(Cow::Borrowed(
                "the upstream closed the connection inside a chunked body",
            ))),
        }
    }
}

/// A chunk-size line at the front of `buf` (RFC 9112 section 7.1):
/// `1*HEXDIG [ BWS ; extensions ] CRLF`, as (its length with the CRLF, the
/// size, the length of its extensions); `None` if it is not all there yet.
fn chunk_size_line(buf: &[u8]) -> Result<Option<(usize, u64, usize)>, Error> {
    let window = &buf[..buf.len().min(MAX_CHUNK_LINE)];
    let Some(lf) = window.iter().position(|b| *b == b'\n') else {
        if buf.len() >= MAX_CHUNK_LINE {
            return Err(Error::TooLarge("a chunk-size line over 1 KiB"));
        }
        // A CR must be the last byte read so far: it can only start the CRLF.
        if window
            .iter()
            .rev()
            .skip(1)
            .any(|b| is_forbidden_in_chunk_line(*b))
        {
            return Err(invalid("control character in a chunk-size line"));
        }
        return Ok(None);
    };
    // A bare LF (even inside extensions, which httparse allows) ends nothing:
    // two parsers would disagree on where the line ends.
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err(invalid("chunk-size line not ended by CRLF"));
    }
    let text = &window[..lf - 1];
    if text.iter().any(|b| is_forbidden_in_chunk_line(*b)) {
        return Err(invalid("control character in a chunk-size line"));
    }
    // At least one digit: httparse reads `;ext` alone as a size of 0 (found
    // by `cargo xtask fuzz`; hyper refuses it).
    if !text.first().is_some_and(u8::is_ascii_hexdigit) {
        return Err(invalid("chunk-size line without a size"));
    }
    let line = &window[..=lf];
    match httparse::parse_chunk_size(line) {
        Ok(httparse::Status::Complete((n, size))) if n == line.len() => {
            let extensions = text
                .iter()
                .position(|b| *b == b';')
                .map_or(0, |semi| text.len() - semi);
            Ok(Some((n, size, extensions)))
        }
        _ => Err(invalid("invalid chunk size")),
    }
}

/// CR, LF, NUL and the other controls but HTAB.
fn is_forbidden_in_chunk_line(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// The trailer section at the front of `buf` (RFC 9112 section 7.1.2), and
/// the bytes it took; `Some(None)` for an empty one (the final CRLF alone);
/// `None` if it is not all there yet.
fn trailer_section(buf: &mut BytesMut) -> Result<Option<Option<HeaderMap>>, Error> {
    match &buf[..buf.len().min(2)] {
        b"\r\n" => {
            let _ = buf.split_to(2);
            return Ok(Some(None));
        }
        b"" | b"\r" => return Ok(None),
        _ => {}
    }
    // Field lines are never empty, so the first empty line ends the section.
    let window = &buf[..buf.len().min(MAX_TRAILERS)];
    let end = window.windows(4).position(|w| w == b"\r\n\r\n");
    let section = match end {
        Some(at) => &window[..at + 4],
        None => window,
    };
    // CRLF only: a bare LF or CR would end a line for some parsers and not
    // for others.
    for (i, b) in section.iter().enumerate() {
        let bare = match b {
            b'\n' => i == 0 || section[i - 1] != b'\r',
            b'\r' => section.get(i + 1).is_some_and(|next| *next != b'\n'),
            _ => false,
        };
        if bare {
            return Err(invalid("bare CR or LF in the trailer section"));
        }
    }
    let Some(at) = end else {
        if buf.len() >= MAX_TRAILERS {
            return Err(Error::TooLarge("a trailer section over 8 KiB"));
        }
        return Ok(None);
    };
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let len = at + 4;
    let trailers = match httparse::parse_headers(&buf[..len], &mut fields) {
        Ok(httparse::Status::Complete((n, fields))) if n == len => {
            let mut trailers = HeaderMap::with_capacity(fields.len());
            for field in fields.iter() {
                let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(field.name.as_bytes()),
                    HeaderValue::from_bytes(field.value),
                ) else {
                    return Err(invalid("invalid trailer field"));
                };
                trailers.append(name, value);
            }
            trailers
        }
        Ok(_) => return Err(invalid("invalid trailer section")),
        Err(e) => return Err(invalid(format!("invalid trailer section: {e}"))),
    };
    let _ = buf.split_to(len);
    Ok(Some(Some(trailers)))
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "codec_differential.rs"]
mod differential;
