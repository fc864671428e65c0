//! Body events in: a body decoded off the front of a buffer by its
//! framing (length, chunked with its trailers, or to the close), bytes after
//! its end left in the buffer.
//!
//! Imports `head` (the framing) and `error`; no IO.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::SizeHint;

use super::error::{
    Error, MAX_CHUNK_EXTENSIONS, MAX_CHUNK_LINE, MAX_HEADERS, MAX_TRAILERS, invalid,
};
use super::head::BodyKind;

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
