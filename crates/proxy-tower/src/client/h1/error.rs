//! Why the HTTP/1.1 path failed: the connection (IO), the upstream's bytes
//! (the codec's error), or no connection at all. Imports the codec only.

use std::fmt;
use std::io;

use super::codec;
use crate::BoxError;

/// Why the fast path failed.
#[derive(Debug)]
pub(crate) enum Error {
    /// Reading or writing the connection failed.
    Io(&'static str, io::Error),
    /// The upstream's bytes are not a valid response, or the connection
    /// ended inside one.
    Codec(codec::Error),
}

impl Error {
    /// The upstream answered, but not with a valid response (as opposed to
    /// failing: a reset, a connection closed before the answer was whole).
    pub(crate) fn is_invalid_answer(&self) -> bool {
        matches!(
            self,
            Error::Codec(codec::Error::Invalid(_) | codec::Error::TooLarge(_))
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(doing, e) => write!(f, "{doing}: {e}"),
            Error::Codec(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(_, e) => Some(e),
            Error::Codec(_) => None,
        }
    }
}

/// The upstream could not be reached: nothing was sent.
#[derive(Debug)]
pub(crate) struct ConnectError(pub(crate) BoxError);

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connecting to the upstream: {}", self.0)
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}
