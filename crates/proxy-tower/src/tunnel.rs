//! The task that relays an upgraded connection.

use halfclose_io::{Side, Tunnel};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::Instrument;

fn side(s: Side) -> &'static str {
    match s {
        Side::A => "client",
        Side::B => "upstream",
    }
}

/// Spawns one task that waits for both connections to be upgraded, then relays
/// bytes between them with half-close, and reports how it ended.
pub(crate) fn spawn(client: OnUpgrade, upstream: OnUpgrade, tunnel: Tunnel) {
    let span = tracing::info_span!("tunnel");
    tokio::spawn(
        async move {
            let upstream = match upstream.await {
                Ok(io) => io,
                Err(e) => {
                    tracing::warn!(error = %e, "upstream connection could not be upgraded");
                    return;
                }
            };
            let client = match client.await {
                Ok(io) => io,
                Err(e) => {
                    tracing::warn!(error = %e, "client connection could not be upgraded");
                    return;
                }
            };
            let mut a = TokioIo::new(client);
            let mut b = TokioIo::new(upstream);
            match tunnel.copy(&mut a, &mut b).await {
                Ok(t) => tracing::info!(
                    client_to_upstream = t.a_to_b,
                    upstream_to_client = t.b_to_a,
                    first_fin = t.first_eof.map(side),
                    duration_ms = t.duration.as_millis() as u64,
                    "tunnel closed"
                ),
                Err(e) => {
                    let t = e.transfer();
                    tracing::warn!(
                        error = %e,
                        client_to_upstream = t.a_to_b,
                        upstream_to_client = t.b_to_a,
                        first_fin = t.first_eof.map(side),
                        duration_ms = t.duration.as_millis() as u64,
                        "tunnel failed"
                    );
                }
            }
        }
        .instrument(span),
    );
}
