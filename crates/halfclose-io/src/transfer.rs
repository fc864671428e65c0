//! What a tunnel reports: byte counts, who closed first, how long it lived.

use std::fmt;
use std::time::Duration;

/// One of the two streams given to a tunnel: `a` is the first argument, `b` the second.
/// A tunnel has two sides and always will: this enum is exhaustive on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The first stream (`a`).
    A,
    /// The second stream (`b`).
    B,
}

/// One of the two copy directions of a tunnel (exhaustive on purpose, as
/// [`Side`] is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Bytes read from `a` and written to `b`.
    AToB,
    /// Bytes read from `b` and written to `a`.
    BToA,
}

impl Direction {
    /// The side this direction reads from.
    pub fn source(self) -> Side {
        match self {
            Direction::AToB => Side::A,
            Direction::BToA => Side::B,
        }
    }

    /// The side this direction writes to.
    pub fn destination(self) -> Side {
        match self {
            Direction::AToB => Side::B,
            Direction::BToA => Side::A,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::A => "a",
            Side::B => "b",
        })
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::AToB => "a->b",
            Direction::BToA => "b->a",
        })
    }
}

/// The outcome of a tunnel: what went through, and how it ended.
///
/// Returned by [`copy_bidirectional`](crate::copy_bidirectional) and
/// [`Tunnel::copy`](crate::Tunnel::copy) on success, and carried by
/// [`TunnelError::transfer`](crate::TunnelError::transfer) on failure (the bytes
/// that got through before the error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transfer {
    /// Bytes read from `a` and written to `b`.
    pub a_to_b: u64,
    /// Bytes read from `b` and written to `a`.
    pub b_to_a: u64,
    /// The side whose read half reached EOF first (it sent its FIN first), or
    /// `None` if neither did.
    pub first_eof: Option<Side>,
    /// How long the tunnel ran: from the call that made it
    /// ([`Tunnel::copy`](crate::Tunnel::copy) or `copy_tcp`) to its end.
    pub duration: Duration,
}

impl Transfer {
    /// Bytes copied in `direction`.
    pub fn bytes(&self, direction: Direction) -> u64 {
        match direction {
            Direction::AToB => self.a_to_b,
            Direction::BToA => self.b_to_a,
        }
    }
}

impl fmt::Display for Transfer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a->b {} bytes, b->a {} bytes", self.a_to_b, self.b_to_a)?;
        if let Some(side) = self.first_eof {
            write!(f, ", {side} closed first")?;
        }
        write!(f, ", {:?}", self.duration)
    }
}
