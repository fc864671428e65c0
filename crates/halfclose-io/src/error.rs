//! The error a tunnel ends with.

use std::error::Error as StdError;
use std::fmt;
use std::io;

use crate::{Direction, Side, Transfer};

/// Why a tunnel ended early: an IO error in one direction, or a timeout.
///
/// It says which direction failed ([`direction`](TunnelError::direction)), what
/// happened, and carries the bytes that got through each way
/// ([`transfer`](TunnelError::transfer)). It converts into [`std::io::Error`] so `?`
/// works in functions returning `io::Result`; a timeout becomes an error of kind
/// [`io::ErrorKind::TimedOut`].
///
/// ```
/// # async fn run(mut a: tokio::io::DuplexStream, mut b: tokio::io::DuplexStream) -> std::io::Result<()> {
/// match halfclose_io::copy_bidirectional(&mut a, &mut b).await {
///     Ok(t) => println!("done: {t}"),
///     Err(e) if e.is_timeout() => println!("gave up: {e}"),
///     Err(e) => return Err(e.into()),
/// }
/// # Ok(()) }
/// ```
pub struct TunnelError {
    kind: Kind,
    direction: Option<Direction>,
    source: Option<io::Error>,
    transfer: Transfer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
    Shutdown,
    IdleTimeout,
    HalfCloseTimeout,
}

impl TunnelError {
    pub(crate) fn io(
        kind: Kind,
        direction: Direction,
        source: io::Error,
        transfer: Transfer,
    ) -> Self {
        TunnelError {
            kind,
            direction: Some(direction),
            source: Some(source),
            transfer,
        }
    }

    pub(crate) fn timeout(kind: Kind, direction: Option<Direction>, transfer: Transfer) -> Self {
        TunnelError {
            kind,
            direction,
            source: None,
            transfer,
        }
    }

    /// The direction that failed. For a half-close timeout, the direction that was
    /// still open; `None` for an idle timeout.
    pub fn direction(&self) -> Option<Direction> {
        self.direction
    }

    /// Bytes that got through each way before the tunnel ended.
    pub fn transfer(&self) -> &Transfer {
        &self.transfer
    }

    /// True if reading from the direction's source failed (e.g. the peer reset).
    pub fn is_read(&self) -> bool {
        self.kind == Kind::Read
    }

    /// True if writing to, flushing or shutting down the direction's destination failed.
    pub fn is_write(&self) -> bool {
        matches!(self.kind, Kind::Write | Kind::Shutdown)
    }

    /// True if the tunnel ended because of the idle or the half-close timeout.
    pub fn is_timeout(&self) -> bool {
        self.is_idle_timeout() || self.is_half_close_timeout()
    }

    /// True if no bytes moved either way for the configured idle timeout.
    pub fn is_idle_timeout(&self) -> bool {
        self.kind == Kind::IdleTimeout
    }

    /// True if, after one side's FIN, the other direction did not finish in time.
    pub fn is_half_close_timeout(&self) -> bool {
        self.kind == Kind::HalfCloseTimeout
    }

    /// True if the underlying error is an abortive close by a peer: connection
    /// reset or aborted, a broken pipe, or a read that ended without the
    /// stream's clean close (`UnexpectedEof`: TLS truncated by a FIN with no
    /// `close_notify`). Callers holding sockets may want to reset the other
    /// side too (e.g. `SO_LINGER` 0 before dropping it), so that it sees an
    /// abortive end, never a clean one.
    pub fn is_reset(&self) -> bool {
        match self.io_kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => true,
            io::ErrorKind::UnexpectedEof => self.is_read(),
            _ => false,
        }
    }

    /// The side that reset its connection, if the tunnel ended on a reset: the
    /// source of a direction whose read failed, or the destination of one whose
    /// write failed. A relay holding sockets can reset the *other* side in turn.
    pub fn reset_side(&self) -> Option<Side> {
        let direction = self.direction.filter(|_| self.is_reset())?;
        Some(if self.is_read() {
            direction.source()
        } else {
            direction.destination()
        })
    }

    /// The [`io::ErrorKind`] this error maps to: the underlying kind, or `TimedOut`.
    pub fn io_kind(&self) -> io::ErrorKind {
        match &self.source {
            Some(e) => e.kind(),
            None => io::ErrorKind::TimedOut,
        }
    }

    fn what(&self) -> &'static str {
        match self.kind {
            Kind::Read => "read failed",
            Kind::Write => "write failed",
            Kind::Shutdown => "shutdown failed",
            Kind::IdleTimeout => "idle timeout",
            Kind::HalfCloseTimeout => "half-close timeout",
        }
    }
}

impl fmt::Debug for TunnelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelError")
            .field("kind", &self.kind)
            .field("direction", &self.direction)
            .field("source", &self.source)
            .field("transfer", &self.transfer)
            .finish()
    }
}

impl fmt::Display for TunnelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tunnel ")?;
        if let Some(d) = self.direction {
            write!(f, "{d} ")?;
        }
        write!(
            f,
            "{} (a->b {} bytes, b->a {} bytes)",
            self.what(),
            self.transfer.a_to_b,
            self.transfer.b_to_a
        )?;
        if let Some(e) = &self.source {
            write!(f, ": {e}")?;
        }
        Ok(())
    }
}

impl StdError for TunnelError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_ref().map(|e| e as &(dyn StdError + 'static))
    }
}

impl From<TunnelError> for io::Error {
    fn from(e: TunnelError) -> io::Error {
        io::Error::new(e.io_kind(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_error(kind: io::ErrorKind, direction: Direction) -> TunnelError {
        let transfer = Transfer {
            a_to_b: 0,
            b_to_a: 0,
            first_eof: None,
            duration: std::time::Duration::ZERO,
        };
        TunnelError::io(Kind::Read, direction, kind.into(), transfer)
    }

    #[test]
    fn a_read_cut_short_is_an_abortive_end_of_its_source() {
        // TLS truncated by a bare FIN reads as `UnexpectedEof`.
        let e = read_error(io::ErrorKind::UnexpectedEof, Direction::BToA);
        assert!(e.is_reset());
        assert_eq!(e.reset_side(), Some(Side::B));
        let e = read_error(io::ErrorKind::ConnectionReset, Direction::AToB);
        assert_eq!(e.reset_side(), Some(Side::A));
        // Other failures are not a peer's abortive close.
        let e = read_error(io::ErrorKind::InvalidData, Direction::AToB);
        assert_eq!(e.reset_side(), None);
    }
}
