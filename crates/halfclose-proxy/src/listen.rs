//! One worker's listener: its socket on the shared port (`SO_REUSEPORT`,
//! backlog 4096) and its accept loop, which takes a slot of the
//! `--max-connections` semaphore for each client, raises pressure on idle
//! connections at the limit (one WARN line per stretch at it: [`AtLimit`]),
//! and spawns each connection to [`conn::serve`].
//!
//! Imports: `accept` (the `Acceptor` that waits out accept errors) and
//! `conn`. It knows nothing of the options, the upstreams or the order of
//! shutdown: `serve` builds what it gets and imports it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::accept::Acceptor;
use crate::conn;

/// The listen backlog asked for; the kernel caps it at `net.core.somaxconn`
/// (Go asks for somaxconn itself; tokio's `bind` asks for 1024, which a burst
/// of clients overflows).
pub(crate) const BACKLOG: u32 = 4096;

/// A socket bound to `addr`, ready to listen; with `share`, other sockets may
/// bind the same address (`SO_REUSEPORT`) and the kernel spreads connections.
pub(crate) fn bind(addr: SocketAddr, share: bool) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    if share {
        socket.set_reuseport(true)?;
    }
    #[cfg(not(unix))]
    let _ = share;
    socket.bind(addr)?;
    Ok(socket)
}

/// Whether clients wait for a slot at the connection limit, shared by the
/// workers, so that the limit is said once per stretch at it: a stretch
/// ends when clients have found a free slot for a second since the last one
/// waited (at the edge of the limit, clients that find a slot and clients
/// that wait come by turns: one stretch, not a line per client). One atomic
/// load per accept outside a stretch.
#[derive(Clone)]
pub(crate) struct AtLimit {
    start: tokio::time::Instant,
    /// When a client last waited, in ms after `start` plus one; 0 outside a
    /// stretch.
    last_wait: Arc<AtomicU64>,
}

impl AtLimit {
    const QUIET_MS: u64 = 1_000;

    pub(crate) fn new() -> Self {
        AtLimit {
            start: tokio::time::Instant::now(),
            last_wait: Arc::default(),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }

    /// A client waits for a slot: true when that starts a stretch.
    fn waited(&self) -> bool {
        self.waited_at(self.now())
    }

    fn waited_at(&self, now: u64) -> bool {
        self.last_wait.swap(now, Ordering::Relaxed) == 0
    }

    /// A client found a free slot: true when that ends a stretch.
    fn found_slot(&self) -> bool {
        self.last_wait.load(Ordering::Relaxed) != 0 && self.found_slot_at(self.now())
    }

    fn found_slot_at(&self, now: u64) -> bool {
        let last = self.last_wait.load(Ordering::Relaxed);
        last != 0
            && now.saturating_sub(last) >= Self::QUIET_MS
            && self
                .last_wait
                .compare_exchange(last, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// What every accept loop shares.
#[derive(Clone)]
pub(crate) struct Shared {
    /// How its connections are served: its listener's, replaced on reload
    /// (read at each accept).
    pub(crate) settings: watch::Receiver<Arc<conn::Settings>>,
    /// Turns true when its listener is removed by a reload.
    pub(crate) removed: watch::Receiver<bool>,
    pub(crate) signals: conn::Signals,
    pub(crate) limit: Arc<Semaphore>,
    /// The permits of `limit`.
    pub(crate) max_connections: usize,
    /// Whether clients wait for a slot, said once per stretch at the limit.
    pub(crate) at_limit: AtLimit,
    /// Held by each worker while its listener is open.
    pub(crate) listening: mpsc::Sender<()>,
}

/// Accepts connections on one worker's listener until shutdown.
pub(crate) async fn accept_loop<S, B>(listener: TcpListener, proxy: S, shared: Shared)
where
    S: conn::RequestService<B>,
    B: http_body::Body<Data = bytes::Bytes, Error: Into<proxy_tower::BoxError>> + Send + 'static,
{
    let Shared {
        settings,
        mut removed,
        signals,
        limit,
        max_connections,
        at_limit,
        listening,
    } = shared;
    let mut stop = signals.shutdown.clone();
    // The server shuts down, or a reload removes this listener.
    let mut shutdown = std::pin::pin!(async {
        tokio::select! {
            _ = conn::shutting_down(&mut stop) => {}
            _ = conn::shutting_down(&mut removed) => {}
        }
    });
    // Out of file descriptors and the like: back off, one line per burst.
    let mut listener = Acceptor::new(listener, "proxy");
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        // A client is waiting: take a slot, or make idle connections give theirs
        // up and wait for one.
        let permit = match limit.clone().try_acquire_owned() {
            Ok(p) => {
                if at_limit.found_slot() {
                    tracing::info!(max_connections, "below the connection limit again");
                }
                p
            }
            Err(_) => {
                if at_limit.waited() {
                    tracing::warn!(
                        max_connections,
                        "connection limit reached: idle connections close to make room, \
                         new clients wait for a slot (said once until clients have found \
                         free slots for a second)"
                    );
                }
                signals.pressure.raise();
                let p = tokio::select! {
                    p = limit.clone().acquire_owned() => p,
                    _ = &mut shutdown => break,
                };
                signals.pressure.lower();
                match p {
                    Ok(p) => p,
                    Err(_) => break,
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(conn::serve(
            tcp,
            peer,
            permit,
            proxy.clone(),
            settings.borrow().clone(),
            signals.clone(),
        ));
    }
    drop(listener);
    drop(listening);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waiting clients and clients that find a slot by turns are one
    /// stretch at the limit; a second of free slots ends it.
    #[test]
    fn the_limit_is_said_once_per_stretch() {
        let at = AtLimit::new();
        assert!(!at.found_slot_at(5));
        assert!(at.waited_at(10), "a stretch starts");
        for ms in (11..900).step_by(2) {
            assert!(!at.found_slot_at(ms));
            assert!(!at.waited_at(ms + 1));
        }
        assert!(!at.found_slot_at(1_800));
        assert!(at.found_slot_at(1_901), "a second of free slots ends it");
        assert!(!at.found_slot_at(1_902));
        assert!(at.waited_at(2_000), "the next stretch is said again");
    }
}
