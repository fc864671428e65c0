//! The one task per upgrade: it waits for both connections to be upgraded,
//! relays bytes between them with half-close (`halfclose_io`), passes a
//! reset on as a reset, obeys [`Tunnels`](crate::Tunnels)' shutdown and
//! reset, and reports how the tunnel ended (log line, metrics, and the
//! `on_tunnel_end` hook).
//!
//! `io` holds the two ends as the task sees them. May import the settings,
//! `tunnels`, `origin`, `metrics` and the crate's IO types; never the proxy
//! that spawns it.

mod io;

use std::task::Poll;

use futures_util::future::Either;
use halfclose_io::{Side, Tunnel, TunnelError};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::origin::Origin;
use crate::settings::Config;
use crate::tunnels::Closing;
use crate::{ResetHandle, TunnelEnd, TunnelEnding, TunnelSide};
use io::{H2Stream, TunnelIo};

fn side(s: Side) -> TunnelSide {
    match s {
        Side::A => TunnelSide::Client,
        Side::B => TunnelSide::Upstream,
    }
}

/// The side whose failure ended a tunnel: the source of a direction whose
/// read failed, the destination of one whose write or shutdown failed, the
/// side that never sent its FIN when the half-close timeout ran out; `None`
/// for the idle timeout (both were silent).
fn failing_side(e: &TunnelError) -> Option<Side> {
    let direction = e.direction()?;
    if e.is_write() {
        Some(direction.destination())
    } else if e.is_read() || e.is_half_close_timeout() {
        Some(direction.source())
    } else {
        None
    }
}

/// What the client end of a tunnel is.
pub(crate) enum ClientSide {
    /// A connection upgraded from HTTP/1.1, and the server's reset handle for
    /// it, if any.
    Connection(Option<ResetHandle>),
    /// An HTTP/2 stream opened by extended CONNECT.
    H2Stream,
}

/// What a tunnel's end is reported to, and what is known of it at its
/// start.
pub(crate) struct Report {
    pub(crate) hook: crate::settings::OnTunnelEnd,
    pub(crate) client: Option<std::net::IpAddr>,
    pub(crate) protocol: Option<String>,
}

/// The upstream connection of a tunnel, as the client answered the 101.
pub(crate) enum UpstreamEnd {
    /// Upgraded by hyper (hyper-util's pooled client, HTTP/2), once the
    /// response is handed over.
    Pending(OnUpgrade),
    /// The connection itself, and the bytes of the new protocol read with
    /// the head (the default client's HTTP/1.1 path). Boxed: the task keeps
    /// the room of what it was spawned with for its whole life.
    Ready(Box<(tokio::net::TcpStream, bytes::Bytes)>),
}

/// What the upstream end of a tunnel is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamSide {
    /// A connection upgraded from HTTP/1.1.
    Connection,
    /// An HTTP/2 stream opened by extended CONNECT.
    H2Stream,
}

/// What names a tunnel in its log lines besides its upstream (which its
/// gauge holds): the method, path and request id, as one string
/// (`"GET /chat req-42"`), made only when a WARN line can be written, so
/// that an idle tunnel holds two words and one small allocation for it. (A
/// tracing span held for the tunnel's life cost an idle tunnel some 600
/// bytes in the subscriber's registry at the default level.)
struct Label(Box<str>);

impl Label {
    fn new(origin: &Origin) -> Self {
        let (method, path) = (origin.method.as_str(), origin.uri.path());
        let id = origin.request_id().unwrap_or_default();
        let mut s = String::with_capacity(method.len() + path.len() + id.len() + 2);
        for part in [method, " ", path, " ", id] {
            s.push_str(part);
        }
        Label(s.into_boxed_str())
    }

    /// Method, path and request id (a path has no space in it; the id,
    /// last, may).
    fn fields(&self) -> (&str, &str, Option<&str>) {
        let mut parts = self.0.splitn(3, ' ');
        let method = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default();
        let id = parts.next().filter(|id| !id.is_empty());
        (method, path, id)
    }
}

/// What the `on_tunnel_end` hook is told beyond the log line's fields (the
/// request id is the label's, the upstream the gauge's, both made into
/// their types again at the end); boxed, and only with a hook.
struct Reported {
    report: Report,
    started: std::time::Instant,
}

/// What a tunnel's end tells its metrics, and its `on_tunnel_end` hook if
/// it has one.
fn ended(
    how: TunnelEnding,
    t: Option<&halfclose_io::Transfer>,
    reported: Option<&Reported>,
    label: &Option<Label>,
    gauge: &crate::metrics::OpenTunnel,
) -> crate::metrics::Ended {
    let client_to_upstream = t.map_or(0, |t| t.a_to_b);
    let upstream_to_client = t.map_or(0, |t| t.b_to_a);
    let first_eof = t.and_then(|t| t.first_eof).map(side);
    if let Some(Reported { report: r, started }) = reported {
        let (_, _, request_id) = named(label);
        (r.hook)(&TunnelEnd {
            request_id: request_id.and_then(|id| http::HeaderValue::from_str(id).ok()),
            client: r.client,
            // The URI the gauge was named after, so it parses.
            upstream: gauge.upstream().parse().unwrap_or_default(),
            protocol: r.protocol.clone(),
            client_to_upstream,
            upstream_to_client,
            first_eof,
            ending: how,
            duration: started.elapsed(),
        });
    }
    crate::metrics::Ended {
        how,
        client_to_upstream,
        upstream_to_client,
        first_eof,
    }
}

/// The fields that name a tunnel in its log lines: method, path and request
/// id. (Taken where a line is written, not held across an `await`, where
/// they would take room in every idle tunnel's task.)
fn named(
    label: &Option<Label>,
) -> (
    Option<tracing::field::DisplayValue<&str>>,
    Option<&str>,
    Option<&str>,
) {
    match label.as_ref().map(Label::fields) {
        // The method as a word (`method=GET`), the others quoted.
        Some((method, path, id)) => (Some(tracing::field::display(method)), Some(path), id),
        None => (None, None, None),
    }
}

/// Spawns one task that waits for both connections to be upgraded, then relays
/// bytes between them with half-close, and reports how it ended.
pub(crate) fn spawn(
    client: OnUpgrade,
    upstream: UpstreamEnd,
    client_side: ClientSide,
    upstream_side: UpstreamSide,
    config: &Config,
    origin: &Origin,
    report: Option<Report>,
) {
    tokio::spawn(task(
        client,
        upstream,
        client_side,
        upstream_side,
        config,
        origin,
        report,
    ));
}

/// The tunnel's task, as [`spawn`] spawns it.
fn task(
    client: OnUpgrade,
    upstream: UpstreamEnd,
    client_side: ClientSide,
    upstream_side: UpstreamSide,
    config: &Config,
    origin: &Origin,
    report: Option<Report>,
) -> impl Future<Output = ()> + Send + 'static {
    let label =
        (report.is_some() || tracing::enabled!(tracing::Level::WARN)).then(|| Label::new(origin));
    let reported = report.map(|report| {
        Box::new(Reported {
            report,
            started: std::time::Instant::now(),
        })
    });
    let tunnel: std::sync::Arc<Tunnel> = config.tunnel.clone();
    let open = config.tunnels.enter();
    // Counted open until the task's future is dropped, however it ends.
    let gauge = config.metrics.clone().tunnel_opened();
    async move {
        // Held until the task ends (mentioned here so that they are moved
        // in, and not moved again: each move is another slot in every idle
        // tunnel's task).
        let _ = (&open, &gauge);
        // The metrics of the end, and the hook's report (a macro, not a
        // closure: a closure's references would take room in every idle
        // tunnel's task).
        macro_rules! ended {
            ($how:expr, $t:expr $(,)?) => {
                ended($how, $t, reported.as_deref(), &label, &gauge)
            };
        }
        // A line about this tunnel: the fields that name it (its request
        // and upstream) first, then the line's own fields and message.
        macro_rules! log_tunnel {
            ($level:ident, $($rest:tt)+) => {{
                let (method, path, request_id) = named(&label);
                tracing::$level!(method, path, request_id, upstream = gauge.upstream(), $($rest)+)
            }};
        }
        // No named local between the upgrade and `b`, nor between each
        // future below and its pin: a local that is moved from keeps its
        // own slot in the task for as long as it is in scope (it cost every
        // idle tunnel 296 bytes, and its task a 128-byte step more, 1152
        // bytes instead of 896).
        let mut b = match match upstream {
            UpstreamEnd::Ready(ready) => {
                let (tcp, read_ahead) = *ready;
                Ok(TunnelIo::Upstream(crate::io::Prefixed::new(
                    read_ahead,
                    crate::client::UpstreamIo::Tcp(tcp),
                )))
            }
            UpstreamEnd::Pending(upgrade) => upgrade.await.map(|io| match upstream_side {
                UpstreamSide::Connection => TunnelIo::upstream(io),
                UpstreamSide::H2Stream => TunnelIo::H2Stream(H2Stream(TokioIo::new(io))),
            }),
        } {
            Ok(io) => io,
            Err(e) => {
                log_tunnel!(
                    warn,
                    error = %e,
                    "upstream connection could not be upgraded"
                );
                gauge.closed(ended!(TunnelEnding::Error, None));
                return;
            }
        };
        let client = match client.await {
            Ok(io) => io,
            // The client went away before its 101: its doing, and one a
            // client can repeat at will (DEBUG, as refusals are).
            Err(e) => {
                log_tunnel!(
                    debug,
                    error = %e,
                    "client connection could not be upgraded"
                );
                gauge.closed(ended!(TunnelEnding::Error, None));
                return;
            }
        };
        let (mut a, client_reset) = match client_side {
            ClientSide::Connection(reset) => (TunnelIo::client(client), reset),
            ClientSide::H2Stream => (TunnelIo::H2Stream(H2Stream(TokioIo::new(client))), None),
        };
        // This state is what every idle tunnel holds: keep it small (the
        // copy is a plain future, not an `async` block around one).
        // Two bare sockets: splice(2) on Linux. Bytes read ahead on either
        // side are written first by the generic path.
        let result = {
            let mut copy = std::pin::pin!(match (a.bare_tcp(), b.bare_tcp()) {
                (Some(a), Some(b)) => Either::Left(tunnel.copy_tcp(a, b)),
                _ => Either::Right(tunnel.copy(&mut a, &mut b)),
            });
            let mut closed = std::pin::pin!(open.tunnels().closed());
            std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = copy.as_mut().poll(cx) {
                    return Poll::Ready(Ok(r));
                }
                closed.as_mut().poll(cx).map(Err)
            })
            .await
        };
        let result = match result {
            Ok(r) => r,
            Err(how) => {
                close_both(&mut a, &mut b, client_reset.as_ref(), how).await;
                log_tunnel!(
                    info,
                    how = ?how,
                    "tunnel closed by the proxy"
                );
                gauge.closed(ended!(TunnelEnding::ClosedByProxy, None));
                return;
            }
        };
        // Pass an abortive close on as one: reset, not FIN.
        match result.as_ref().err().and_then(TunnelError::reset_side) {
            Some(Side::A) if b.reset_on_drop() => {
                crate::metrics::reset_passed("upstream");
            }
            Some(Side::B) if a.reset_on_drop() => {
                crate::metrics::reset_passed("client");
            }
            Some(Side::B) => {
                if let Some(reset) = &client_reset {
                    reset.reset();
                    crate::metrics::reset_passed("client");
                }
            }
            _ => {}
        }
        gauge.closed(match &result {
            Ok(t) => ended!(TunnelEnding::Clean, Some(t)),
            Err(e) => ended!(
                if e.is_idle_timeout() {
                    TunnelEnding::IdleTimeout
                } else if e.is_half_close_timeout() {
                    TunnelEnding::HalfCloseTimeout
                } else if e.is_reset() {
                    TunnelEnding::Reset
                } else {
                    TunnelEnding::Error
                },
                Some(e.transfer()),
            ),
        });
        let t = match &result {
            Ok(t) => t,
            Err(e) => e.transfer(),
        };
        macro_rules! log_end {
            ($level:ident, $($rest:tt)+) => {
                log_tunnel!(
                    $level,
                    client_to_upstream = t.a_to_b,
                    upstream_to_client = t.b_to_a,
                    first_eof = t.first_eof.map(|s| side(s).as_str()),
                    duration_ms = t.duration.as_millis() as u64,
                    $($rest)+
                )
            };
        }
        match &result {
            // DEBUG: a tunnel that ended well is news to nobody, and a line
            // per tunnel at the default level costs a reconnect storm
            // thousands of lines (the binary's access log has a line per
            // tunnel, and `on_tunnel_end` the same facts, for who wants
            // them).
            Ok(_) => log_end!(debug, "tunnel closed"),
            // Ended by the client (a reset, a write it refused): DEBUG, as
            // other events a client causes at will; by the upstream or a
            // timeout: WARN.
            Err(e) if failing_side(e) == Some(Side::A) => {
                log_end!(debug, error = %e, failed = "client", "tunnel failed")
            }
            Err(e) => log_end!(
                warn,
                error = %e,
                failed = failing_side(e).map(|s| side(s).as_str()),
                "tunnel failed"
            ),
        }
    }
}

/// How long a FIN may take to be written when the proxy closes a tunnel.
const CLOSE_WRITE_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Ends both sides of a tunnel the proxy closes (each FIN bounded by
/// [`CLOSE_WRITE_LIMIT`], for a peer that stopped reading).
async fn close_both(
    a: &mut TunnelIo,
    b: &mut TunnelIo,
    client_reset: Option<&ResetHandle>,
    how: Closing,
) {
    use tokio::io::AsyncWriteExt;
    match how {
        Closing::Shutdown => {
            for side in [a, b] {
                let _ = tokio::time::timeout(CLOSE_WRITE_LIMIT, side.shutdown()).await;
            }
        }
        Closing::Reset => {
            if !a.reset_on_drop() {
                if let Some(reset) = client_reset {
                    reset.reset();
                }
            }
            b.reset_on_drop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What every idle tunnel holds: its task's future, 648 bytes in a
    /// release build and 664 in a debug one. tokio's task cell is 128-byte
    /// aligned around it (a 32-byte header, a 48-byte trailer, 24 bytes of
    /// core and stage tag), so up to 664 bytes of future make a 768-byte
    /// cell, and one byte more an 896-byte one: 128 bytes more in every idle
    /// tunnel (`bench-e2e --only rss` sees them). The closing `Notified` as an
    /// `async fn`, the end's closure and a second copy of the tunnel settings
    /// once took this task to 744 bytes, and locals moved from while in scope
    /// to 1040.
    #[tokio::test]
    async fn an_idle_tunnels_task_stays_small() {
        let config = Config::new(proxy_core::ProxyRules::new("http://127.0.0.1:1").unwrap());
        let origin = Origin {
            method: http::Method::GET,
            uri: http::Uri::from_static("/chat"),
            request_id: None,
        };
        let none = || hyper::upgrade::on(http::Request::new(()));
        let task = task(
            none(),
            UpstreamEnd::Pending(none()),
            ClientSide::Connection(None),
            UpstreamSide::Connection,
            &config,
            &origin,
            None,
        );
        let size = std::mem::size_of_val(&task);
        assert!(size <= 664, "a tunnel's task is {size} bytes");
    }
}
