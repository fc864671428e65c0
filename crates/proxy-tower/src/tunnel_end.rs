//! [`TunnelEnd`]: what a tunnel's end reports to the hook of
//! [`Builder::on_tunnel_end`](crate::Builder::on_tunnel_end) (an access
//! log line, say). Plain values at the bottom of the crate: the settings
//! hold the hook, the tunnel task fills them in.

use std::net::IpAddr;
use std::time::Duration;

/// One side of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelSide {
    /// The client, whose request was upgraded.
    Client,
    /// The upstream, which answered `101 Switching Protocols`.
    Upstream,
}

impl TunnelSide {
    /// `"client"` or `"upstream"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelSide::Client => "client",
            TunnelSide::Upstream => "upstream",
        }
    }
}

/// How a tunnel ended; the `how` label of `proxy_tunnels_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TunnelEnding {
    /// Both sides sent their FIN, and every byte was relayed.
    Clean,
    /// No byte moved either way for the tunnel idle timeout.
    IdleTimeout,
    /// One side sent its FIN, and the other neither closed nor sent a byte
    /// for the half-close timeout.
    HalfCloseTimeout,
    /// A side reset its connection (passed on as a reset).
    Reset,
    /// A read or write failed, or a connection could not be upgraded.
    Error,
    /// [`Tunnels::shutdown`](crate::Tunnels::shutdown) or
    /// [`Tunnels::reset`](crate::Tunnels::reset) ended it.
    ClosedByProxy,
}

impl TunnelEnding {
    /// Every ending, in the order declared (`ending as usize` is its place;
    /// the metrics register a counter for each, in this order).
    pub(crate) const ALL: [TunnelEnding; 6] = [
        TunnelEnding::Clean,
        TunnelEnding::IdleTimeout,
        TunnelEnding::HalfCloseTimeout,
        TunnelEnding::Reset,
        TunnelEnding::Error,
        TunnelEnding::ClosedByProxy,
    ];

    /// The metric label: `clean`, `idle_timeout`, `half_close_timeout`,
    /// `reset`, `error` or `closed_by_proxy`.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelEnding::Clean => "clean",
            TunnelEnding::IdleTimeout => "idle_timeout",
            TunnelEnding::HalfCloseTimeout => "half_close_timeout",
            TunnelEnding::Reset => "reset",
            TunnelEnding::Error => "error",
            TunnelEnding::ClosedByProxy => "closed_by_proxy",
        }
    }
}

/// A tunnel that has ended, as
/// [`Builder::on_tunnel_end`](crate::Builder::on_tunnel_end) reports it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TunnelEnd {
    /// The upgrade request's `X-Request-Id`, if it had one made of visible
    /// ASCII (as log lines name it; any other is left out).
    pub request_id: Option<http::HeaderValue>,
    /// The client's address, as the request's
    /// [`ClientInfo`](crate::ClientInfo) gave it.
    pub client: Option<IpAddr>,
    /// The upstream that answered 101.
    pub upstream: http::Uri,
    /// The protocol switched to (`websocket`...), from the 101's `Upgrade`
    /// or the HTTP/2 `:protocol`.
    pub protocol: Option<String>,
    /// Bytes relayed from the client to the upstream.
    pub client_to_upstream: u64,
    /// Bytes relayed from the upstream to the client.
    pub upstream_to_client: u64,
    /// The side whose FIN (or end of stream) came first, if either came.
    pub first_eof: Option<TunnelSide>,
    /// How it ended.
    pub ending: TunnelEnding,
    /// From the 101 to the end.
    pub duration: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ending has a counter registered ahead (`TunnelEnding::ALL`, in
    /// the order declared, so that `ending as usize` finds it), so that a
    /// tunnel's end builds no metric key.
    #[test]
    fn every_ending_has_a_registered_counter() {
        let all = [
            TunnelEnding::Clean,
            TunnelEnding::IdleTimeout,
            TunnelEnding::HalfCloseTimeout,
            TunnelEnding::Reset,
            TunnelEnding::Error,
            TunnelEnding::ClosedByProxy,
        ];
        assert_eq!(all, TunnelEnding::ALL);
        for (i, e) in TunnelEnding::ALL.into_iter().enumerate() {
            assert_eq!(e as usize, i, "{e:?}");
        }
        // A new ending must be added to the list above (and to ALL).
        for e in all {
            match e {
                TunnelEnding::Clean
                | TunnelEnding::IdleTimeout
                | TunnelEnding::HalfCloseTimeout
                | TunnelEnding::Reset
                | TunnelEnding::Error
                | TunnelEnding::ClosedByProxy => {}
            }
        }
    }
}
