//! The limits the codec keeps to, and the error it answers with when bytes
//! break a rule or pass a limit. Imports nothing of the codec.

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
