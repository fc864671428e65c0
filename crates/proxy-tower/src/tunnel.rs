//! The task that relays an upgraded connection, and the count of open tunnels.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// The tunnels a proxy has open: a count, and a way to wait until none is left
/// (for graceful shutdown: an upgraded connection is no longer an HTTP connection
/// the server can track). Cheap to clone; clones share the count.
///
/// ```
/// # async fn run() -> Result<(), proxy_tower::ProxyError> {
/// let proxy = proxy_tower::ReverseProxy::new("http://127.0.0.1:3000")?;
/// let tunnels = proxy.tunnels();
/// // ... serve `proxy`; on shutdown, stop accepting, then:
/// tokio::time::timeout(std::time::Duration::from_secs(10), tunnels.wait_idle()).await.ok();
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Tunnels {
    inner: Arc<Count>,
}

#[derive(Debug, Default)]
struct Count {
    active: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Tunnels {
    /// Tunnels open now (including those waiting for both sides to be upgraded).
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Completes when no tunnel is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn enter(&self) -> Open {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        Open(self.clone())
    }
}

/// One open tunnel; dropping it updates the count.
struct Open(Tunnels);

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.inner.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.inner.idle.notify_waiters();
        }
    }
}

/// Spawns one task that waits for both connections to be upgraded, then relays
/// bytes between them with half-close, and reports how it ended.
pub(crate) fn spawn(client: OnUpgrade, upstream: OnUpgrade, tunnel: Tunnel, tunnels: &Tunnels) {
    let span = tracing::info_span!("tunnel");
    let open = tunnels.enter();
    tokio::spawn(
        async move {
            let _open = open;
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
