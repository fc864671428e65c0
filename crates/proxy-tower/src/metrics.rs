//! What the proxy records through the `metrics` facade. The library picks no
//! exporter: install a recorder (Prometheus, StatsD, ...) before building the
//! proxy (its per-upstream handles are registered then), or nothing is
//! recorded and next to nothing is paid. Every name is listed,
//! with its labels, in `docs/metrics.md`.
//!
//! Near the bottom of the crate: imports only the plain values of
//! `tunnel_end` (which imports nothing of it).

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::tunnel_end::{TunnelEnding, TunnelSide};
use metrics::SharedString;

/// Responses sent to clients, by upstream and status class.
pub const REQUESTS: &str = "proxy_requests_total";
/// Time from sending a request to the upstream to its response head.
pub const RESPONSE_HEAD_SECONDS: &str = "proxy_upstream_response_head_seconds";
/// Requests that could not be sent: no connection to the upstream.
pub const CONNECT_FAILURES: &str = "proxy_upstream_connect_failures_total";
/// Upstreams ejected by the balancer's passive health check.
pub const EJECTIONS: &str = "proxy_upstream_ejections_total";
/// Tunnels opened (a checked 101, or 200 to an extended CONNECT).
pub const TUNNELS_OPENED: &str = "proxy_tunnels_opened_total";
/// Tunnels open now.
pub const TUNNELS_OPEN: &str = "proxy_tunnels_open";
/// Tunnels ended, by how: `clean`, `idle_timeout`, `half_close_timeout`,
/// `reset`, `error`, `closed_by_proxy`.
pub const TUNNELS_CLOSED: &str = "proxy_tunnels_closed_total";
/// Bytes relayed by tunnels, by direction.
pub const TUNNEL_BYTES: &str = "proxy_tunnel_bytes_total";
/// Which side of a tunnel reached EOF first (sent its FIN): `client`,
/// `upstream`, `none`.
pub const TUNNEL_FIRST_EOF: &str = "proxy_tunnel_first_eof_total";
/// Resets passed on, by the side that got them: `client`, `upstream`.
pub const RESETS_PASSED: &str = "proxy_resets_passed_total";

/// Describes every metric to the installed recorder (the HELP lines of a
/// Prometheus exporter), once per process; the proxy calls it when built.
pub(crate) fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_counter!(
            REQUESTS,
            "Responses sent to clients, by upstream and status class."
        );
        describe_histogram!(
            RESPONSE_HEAD_SECONDS,
            Unit::Seconds,
            "Time from sending a request upstream to its response head."
        );
        describe_counter!(
            CONNECT_FAILURES,
            "Requests not sent: no connection to the upstream."
        );
        describe_counter!(EJECTIONS, "Upstreams ejected by the passive health check.");
        describe_counter!(
            TUNNELS_OPENED,
            "Tunnels opened (checked 101, or 200 to an extended CONNECT)."
        );
        describe_gauge!(TUNNELS_OPEN, "Tunnels open now.");
        describe_counter!(TUNNELS_CLOSED, "Tunnels ended, by how.");
        describe_counter!(
            TUNNEL_BYTES,
            Unit::Bytes,
            "Bytes relayed by tunnels, by direction."
        );
        describe_counter!(
            TUNNEL_FIRST_EOF,
            "Which side of a tunnel reached EOF first (sent its FIN)."
        );
        describe_counter!(
            RESETS_PASSED,
            "Resets passed on, by the side that got them."
        );
    });
}

/// The metrics of one upstream, registered once when the proxy is built (so a
/// request pays an atomic increment, or nothing without a recorder).
pub(crate) struct Upstream {
    requests: [metrics::Counter; 5],
    head_seconds: metrics::Histogram,
    connect_failures: metrics::Counter,
    ejections: metrics::Counter,
    tunnels_opened: metrics::Counter,
    tunnels_open: metrics::Gauge,
    tunnel_ends: TunnelEnds,
    /// The upstream's URI, as labels and log lines name it.
    name: SharedString,
}

/// The first EOF of a tunnel, in the order of its counters
/// ([`first_eof_slot`]).
const FIRST_EOF: [Option<TunnelSide>; 3] =
    [Some(TunnelSide::Client), Some(TunnelSide::Upstream), None];

/// Where `side` is in [`FIRST_EOF`].
fn first_eof_slot(side: Option<TunnelSide>) -> usize {
    side.map_or(2, |s| s as usize)
}

/// The counters of tunnel ends. Not per upstream: every upstream holds
/// handles to the same series, registered once, so that a tunnel's end
/// pays atomic increments rather than a key built (and allocated) and
/// looked up per counter.
struct TunnelEnds {
    closed: [metrics::Counter; 6],
    /// Client to upstream, upstream to client.
    bytes: [metrics::Counter; 2],
    first_eof: [metrics::Counter; 3],
}

impl TunnelEnds {
    fn new() -> Self {
        TunnelEnds {
            closed: TunnelEnding::ALL
                .map(|how| metrics::counter!(TUNNELS_CLOSED, "how" => how.as_str())),
            bytes: ["client_to_upstream", "upstream_to_client"]
                .map(|direction| metrics::counter!(TUNNEL_BYTES, "direction" => direction)),
            first_eof: FIRST_EOF.map(|side| {
                let side = side.map_or("none", TunnelSide::as_str);
                metrics::counter!(TUNNEL_FIRST_EOF, "side" => side)
            }),
        }
    }
}

impl Upstream {
    pub(crate) fn new(upstream: &SharedString) -> Self {
        let u = || upstream.clone();
        Upstream {
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|class| metrics::counter!(REQUESTS, "upstream" => u(), "class" => class)),
            head_seconds: metrics::histogram!(RESPONSE_HEAD_SECONDS, "upstream" => u()),
            connect_failures: metrics::counter!(CONNECT_FAILURES, "upstream" => u()),
            ejections: metrics::counter!(EJECTIONS, "upstream" => u()),
            tunnels_opened: metrics::counter!(TUNNELS_OPENED, "upstream" => u()),
            tunnels_open: metrics::gauge!(TUNNELS_OPEN),
            tunnel_ends: TunnelEnds::new(),
            name: upstream.clone(),
        }
    }

    /// One response head sent to a client; `upstream_time` when the upstream
    /// answered it.
    pub(crate) fn response(&self, status: StatusCode, upstream_time: Option<Duration>) {
        let i = match status.as_u16() {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        self.requests[i].increment(1);
        if let Some(t) = upstream_time {
            self.head_seconds.record(t.as_secs_f64());
        }
    }

    pub(crate) fn connect_failure(&self) {
        self.connect_failures.increment(1);
    }

    pub(crate) fn ejection(&self) {
        self.ejections.increment(1);
    }

    /// A tunnel opened: counted, and in the gauge of open tunnels until the
    /// returned guard is dropped, however its task ends (done, panicked, or
    /// dropped with its runtime).
    pub(crate) fn tunnel_opened(self: Arc<Self>) -> OpenTunnel {
        self.tunnels_opened.increment(1);
        self.tunnels_open.increment(1.0);
        OpenTunnel(self)
    }
}

/// One tunnel in [`TUNNELS_OPEN`]; dropping it takes the tunnel out.
pub(crate) struct OpenTunnel(Arc<Upstream>);

impl OpenTunnel {
    /// The upstream's URI, for the tunnel's log lines.
    pub(crate) fn upstream(&self) -> &str {
        &self.0.name
    }

    /// How the tunnel ended (it leaves the gauge when this is dropped).
    pub(crate) fn closed(&self, ended: Ended) {
        let ends = &self.0.tunnel_ends;
        ends.closed[ended.how as usize].increment(1);
        ends.bytes[0].increment(ended.client_to_upstream);
        ends.bytes[1].increment(ended.upstream_to_client);
        ends.first_eof[first_eof_slot(ended.first_eof)].increment(1);
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.tunnels_open.decrement(1.0);
    }
}

/// How a tunnel ended, for [`OpenTunnel::closed`].
pub(crate) struct Ended {
    pub(crate) how: TunnelEnding,
    pub(crate) client_to_upstream: u64,
    pub(crate) upstream_to_client: u64,
    pub(crate) first_eof: Option<TunnelSide>,
}

pub(crate) fn reset_passed(side: &'static str) {
    metrics::counter!(RESETS_PASSED, "side" => side).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each first EOF increments the counter registered with its label.
    #[test]
    fn first_eof_slots_follow_the_registered_order() {
        for (i, side) in FIRST_EOF.into_iter().enumerate() {
            assert_eq!(first_eof_slot(side), i, "{side:?}");
        }
    }
}
