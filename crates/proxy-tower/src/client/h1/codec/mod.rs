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
//! `error` the limits and the error
//! they share; this file only hands their names on.
//!
//! Whether a connection may carry another request is decided by the caller
//! from [`Head::keep_alive`], the decoder reaching [`Event::End`], and no byte
//! left over after it: a connection whose state cannot be proven clean is
//! never reused.

mod body;
mod error;
mod head;
mod request;

pub(crate) use body::{BodyDecoder, Event};
pub(crate) use error::Error;
#[cfg(test)]
pub(crate) use error::{
    MAX_CHUNK_EXTENSIONS, MAX_CHUNK_LINE, MAX_HEAD, MAX_HEADERS, MAX_INFORMATIONAL, MAX_TRAILERS,
};
pub(crate) use head::{Head, ResponseReader};
pub(crate) use request::encode_request;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod differential;
