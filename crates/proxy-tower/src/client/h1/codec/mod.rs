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
//! By concern: `head` reads response heads and decides the framing,
//! `body` decodes a body by that framing, `request` writes request heads;
//! this module holds the limits and the error they share (and imports
//! none of them back but to hand their names on).
//!
//! Whether a connection may carry another request is decided by the caller
//! from [`Head::keep_alive`], the decoder reaching [`Event::End`], and no byte
//! left over after it: a connection whose state cannot be proven clean is
//! never reused.

use std::borrow::Cow;
use std::fmt;

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

pub(super) fn invalid(why: impl Into<Cow<'static, str>>) -> Error {
    Error::Invalid(why.into())
}

mod body;
mod head;
mod request;

pub(crate) use body::{BodyDecoder, Event};
pub(crate) use head::{Head, ResponseReader};
pub(crate) use request::encode_request;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod differential;
