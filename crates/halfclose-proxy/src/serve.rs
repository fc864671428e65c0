//! The proxy server: listener, connection limit, graceful shutdown.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tracing_subscriber::EnvFilter;

use crate::accept::Acceptor;
use crate::cli::ServeArgs;
use crate::units::nonzero;
use crate::upstreams::{Upstreams, build_proxy, check_health, check_upstream};
use crate::{admin, conn, demo, fds, stack};

/// Prints a line on stdout; a closed stdout (`| head -1`) is not a reason to
/// stop proxying, so errors are ignored (`println!` would panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn init_tracing(level: &str) -> Result<(), String> {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(_) => {
            EnvFilter::try_new(level).map_err(|e| format!("invalid --log-level {level:?}: {e}"))?
        }
    };
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))
}

/// The listen backlog asked for; the kernel caps it at `net.core.somaxconn`
/// (Go asks for somaxconn itself; tokio's `bind` asks for 1024, which a burst
/// of clients overflows).
const BACKLOG: u32 = 4096;

/// A socket bound to `addr`, ready to listen; with `share`, other sockets may
/// bind the same address (`SO_REUSEPORT`) and the kernel spreads connections.
fn bind(addr: SocketAddr, share: bool) -> std::io::Result<tokio::net::TcpSocket> {
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

/// `--max-connections`, or the limit the open file limit allows; and what
/// the figure comes from, for the start-up line. A limit set past what the
/// open files allow is kept, with one WARN line.
fn connection_limit(set: Option<usize>, nofile: Option<u64>, needs: fds::Needs) -> (usize, String) {
    match (set, nofile) {
        (Some(n), Some(nofile)) => {
            let allowed = needs.max_connections(nofile);
            if n > allowed {
                tracing::warn!(
                    max_connections = n,
                    open_file_limit = nofile,
                    fds_needed = needs.fds_for(n),
                    allowed,
                    "--max-connections is more than the open file limit allows: past about {allowed} connections, \
                     accepts and upstream connects fail (EMFILE) instead of the proxy shedding; raise the limit \
                     (ulimit -n, systemd's LimitNOFILE=) or leave --max-connections out"
                );
            }
            (
                n.max(1),
                format!("set by --max-connections; open file limit {nofile}"),
            )
        }
        (Some(n), None) => (n.max(1), "set by --max-connections".to_owned()),
        (None, Some(nofile)) => (
            needs.max_connections(nofile),
            format!("open file limit {nofile}"),
        ),
        (None, None) => (fds::FALLBACK_CONNECTIONS, "no open file limit".to_owned()),
    }
}

/// Resolves on SIGINT or SIGTERM (Ctrl-C off Unix) received after this call.
/// The listeners are registered here, not at the first poll: a signal that
/// arrives before the future is polled is not lost.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    async move {
        let term = async {
            match term.as_mut() {
                Some(s) => drop(s.recv().await),
                None => std::future::pending().await,
            }
        };
        let int = async {
            match int.as_mut() {
                Some(s) => drop(s.recv().await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term => {}
            _ = int => {}
        }
    }
}

/// Resolves on Ctrl-C (Ctrl-Break and console close off Unix are not waited
/// for: `ctrl_c` is tokio's portable signal).
#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    }
}

/// On SIGHUP, loads the TLS certificate again (a no-op without one). The
/// listener is registered before the call returns, so that SIGHUP never takes
/// its default action (ending the process) once we said we are up.
#[cfg(unix)]
fn reload_on_sighup(#[cfg(feature = "tls")] cert: Option<Arc<crate::tls::Certificate>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; certificates will not be reloaded");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            #[cfg(feature = "tls")]
            if let Some(cert) = &cert {
                match cert.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %cert.cert_path().display(), "TLS certificate reloaded");
                        say!(
                            "reloaded TLS certificate from {}",
                            cert.cert_path().display()
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "SIGHUP: keeping the certificate in use");
                        say!("TLS certificate not reloaded, keeping the one in use: {e}");
                    }
                }
                continue;
            }
            tracing::info!("SIGHUP: nothing to reload (no --tls-cert)");
        }
    });
}

/// Whether clients wait for a slot at the connection limit, shared by the
/// workers, so that the limit is said once per stretch at it: a stretch
/// ends when clients have found a free slot for a second since the last one
/// waited (at the edge of the limit, clients that find a slot and clients
/// that wait come by turns: one stretch, not a line per client). One atomic
/// load per accept outside a stretch.
#[derive(Clone)]
struct AtLimit {
    start: tokio::time::Instant,
    /// When a client last waited, in ms after `start` plus one; 0 outside a
    /// stretch.
    last_wait: Arc<AtomicU64>,
}

impl AtLimit {
    const QUIET_MS: u64 = 1_000;

    fn new() -> Self {
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

/// How long tunnels get to close once told to, before the process exits.
const CLOSE_LIMIT: Duration = Duration::from_secs(2);

/// What every worker shares.
#[derive(Clone)]
struct Shared {
    settings: Arc<conn::Settings>,
    signals: conn::Signals,
    limit: Arc<Semaphore>,
    /// The permits of `limit`.
    max_connections: usize,
    /// Whether clients wait for a slot, said once per stretch at the limit.
    at_limit: AtLimit,
    /// Held by each worker while its listener is open.
    listening: mpsc::Sender<()>,
}

/// The proxy runs one single-threaded tokio runtime per worker thread, each
/// with its own listener on the same port (`SO_REUSEPORT`: the kernel spreads
/// new connections over them) and its own upstream pool, as nginx runs one
/// worker per core. A connection, its upstream connections and its tunnel stay
/// on one thread: no task wakes another thread for a request. The main thread
/// runs a small runtime of its own for signals and the demo upstream.
pub(crate) fn run(args: ServeArgs) -> Result<ExitCode, String> {
    init_tracing(&args.log_level)?;
    // Every connection and tunnel costs file descriptors.
    let nofile = fds::raise_open_file_limit();
    let workers = args.workers.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    // Workers share the port through SO_REUSEPORT, a Unix socket option.
    #[cfg(not(unix))]
    let workers = {
        if workers > 1 {
            tracing::info!(
                workers,
                "one worker: sharing a port needs SO_REUSEPORT (Unix)"
            );
        }
        1
    };
    let needs = fds::Needs {
        workers,
        upstreams: args.upstream.len().max(1),
        upstream_max_idle: args.upstream_max_idle,
        admin_connections: match args.admin_listen {
            Some(_) => admin::MAX_CONNECTIONS,
            None => 0,
        },
        demo: args.upstream.is_empty(),
    };
    let (max_connections, why) = connection_limit(args.max_connections, nofile, needs);
    // Each client connection can need an upstream socket: by default, as
    // many upstream connections as client connections, per upstream.
    let upstream_max_connections = args.upstream_max_connections.unwrap_or(max_connections);
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;

    // Bind every listener first, so that a bad address is one error line.
    let mut sockets = Vec::with_capacity(workers);
    let first = bind(args.listen, workers > 1)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = first.local_addr().map_err(|e| e.to_string())?;
    sockets.push(first);
    for _ in 1..workers {
        sockets.push(bind(local, true).map_err(|e| format!("cannot listen on {local}: {e}"))?);
    }

    let (upstreams, demo_addr) = match args.upstream.as_slice() {
        [] => {
            let addr = control
                .block_on(demo::start())
                .map_err(|e| format!("cannot start the demo upstream: {e}"))?;
            (vec![format!("http://{addr}")], Some(addr))
        }
        some => (some.to_vec(), None),
    };

    #[cfg(feature = "tls")]
    let certificate = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::Certificate::load(cert, key)?),
        _ => None,
    };
    #[cfg(feature = "tls")]
    let upstream_ca = match &args.upstream_ca {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| format!("cannot read --upstream-ca {}: {e}", path.display()))?,
        ),
        None => None,
    };
    #[cfg(not(feature = "tls"))]
    let upstream_ca: Option<Vec<u8>> = None;

    let settings = conn::Settings::new(
        args.header_read_timeout,
        nonzero(args.idle_timeout),
        nonzero(args.http2_ping_interval),
        args.http2_max_streams,
    );
    #[cfg(feature = "tls")]
    let settings = match &certificate {
        Some(cert) => settings.tls(cert.acceptor()),
        None => settings,
    };
    let scheme = match cfg!(feature = "tls") && settings.is_tls() {
        true => "https",
        false => "http",
    };

    let (stop, stopped) = watch::channel(false);
    let (running, mut all_done) = mpsc::channel::<()>(1);
    let (listening, mut all_closed) = mpsc::channel::<()>(1);
    let shared = Shared {
        settings: Arc::new(settings),
        signals: conn::Signals {
            shutdown: stopped,
            pressure: conn::Pressure::new(),
            running,
        },
        limit: Arc::new(Semaphore::new(max_connections)),
        max_connections,
        at_limit: AtLimit::new(),
        listening,
    };
    // Metrics are recorded only when someone can read them.
    let admin = match args.admin_listen {
        Some(addr) => {
            let listener = control.block_on(admin::bind(addr))?;
            let handle = admin::install_recorder()?;
            Some((listener, handle))
        }
        None => None,
    };
    let mut admin_upstreams = Vec::new();
    let ids = stack::RequestIds::new();
    let max_body = args.max_request_body.map(|b| b.0).filter(|&n| n > 0);
    let mut tunnels = Vec::with_capacity(workers);
    // Built once the proxies have checked them.
    let upstream_uris: Vec<http::Uri> = upstreams.iter().filter_map(|u| u.parse().ok()).collect();
    for (i, socket) in sockets.into_iter().enumerate() {
        // Each worker has its own proxy: its own upstream pool, on its thread.
        let proxy = build_proxy(
            &args,
            &upstreams,
            upstream_ca.as_deref(),
            workers,
            upstream_max_connections,
        )?;
        tunnels.push(proxy.tunnels());
        admin_upstreams.push(proxy.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        let listener = {
            let _entered = rt.enter();
            socket
                .listen(BACKLOG)
                .map_err(|e| format!("cannot listen on {local}: {e}"))?
        };
        let shared = shared.clone();
        let ids = ids.worker(i, workers);
        let health_check = args.health_check.clone();
        let health_interval = args.health_check_interval.max(Duration::from_millis(100));
        std::thread::Builder::new()
            .name(format!("proxy-worker-{i}"))
            .spawn(move || {
                rt.block_on(async move {
                    if let (Some(path), Upstreams::Many(balanced)) = (health_check, &proxy) {
                        tokio::spawn(check_health(balanced.clone(), path, health_interval));
                    }
                    accept_loop(listener, stack::build(proxy, ids, max_body), shared).await;
                    // Connections and tunnels of this worker go on until the
                    // main thread ends the process.
                    std::future::pending::<()>().await
                })
            })
            .map_err(|e| format!("cannot start a worker thread: {e}"))?;
    }
    let limit = shared.limit.clone();
    drop(shared);
    let open_tunnels = || {
        tunnels
            .iter()
            .map(proxy_tower::Tunnels::active)
            .sum::<usize>()
    };

    control.block_on(async {
        if demo_addr.is_none() {
            for uri in upstream_uris {
                check_upstream(uri, args.connect_timeout);
            }
        }
        // Listen for signals before saying we are up: from here on, SIGTERM means
        // a graceful shutdown, never the default action.
        let shutdown = shutdown_signal();
        #[cfg(unix)]
        reload_on_sighup(
            #[cfg(feature = "tls")]
            certificate,
        );
        say!("listening on {scheme}://{local}");
        say!("max connections {max_connections} ({why})");
        if let Some((listener, handle)) = admin {
            let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            admin::serve(
                listener,
                admin::Admin {
                    metrics: handle,
                    upstreams: admin_upstreams,
                    connections: limit.clone(),
                    max_connections,
                    connect_timeout: args.connect_timeout,
                },
                args.header_read_timeout,
            );
            say!("admin on http://{addr} (/metrics, /healthz, /readyz)");
        }
        match demo_addr {
            Some(demo) => print_demo_help(scheme, local, demo),
            None => say!("forwarding to {}", upstreams.join(", ")),
        }
        shutdown.await;

        let second_signal = shutdown_signal();
        let _ = stop.send(true);
        // Every listener is closed before we say so.
        let _ = all_closed.recv().await;
        let grace = args.shutdown_grace;
        say!(
            "shutting down: no longer accepting; waiting up to {grace:?} for {} connection(s) and {} tunnel(s)",
            // Every open client connection holds a permit, tunnels included.
            max_connections - limit.available_permits(),
            open_tunnels()
        );
        let drained = async {
            let _ = all_done.recv().await;
            for t in &tunnels {
                t.wait_idle().await;
            }
        };
        // A second signal means "now".
        let all_idle = || async {
            for t in &tunnels {
                t.wait_idle().await;
            }
        };
        tokio::select! {
            done = tokio::time::timeout(grace, drained) => match done {
                Ok(()) => tracing::info!("all connections and tunnels finished"),
                Err(_) => {
                    tracing::warn!(tunnels = open_tunnels(), "grace period over; closing what is left with a FIN each way");
                    tunnels.iter().for_each(proxy_tower::Tunnels::shutdown);
                    let _ = tokio::time::timeout(CLOSE_LIMIT, all_idle()).await;
                }
            },
            _ = second_signal => {
                say!("second signal: closing {} tunnel(s) now", open_tunnels());
                tunnels.iter().for_each(proxy_tower::Tunnels::abort);
                let _ = tokio::time::timeout(CLOSE_LIMIT, all_idle()).await;
            }
        }
    });
    Ok(ExitCode::SUCCESS)
}

/// Accepts connections on one worker's listener until shutdown.
async fn accept_loop<S, B>(listener: TcpListener, proxy: S, shared: Shared)
where
    S: conn::RequestService<B>,
    B: http_body::Body<Data = bytes::Bytes, Error: Into<proxy_tower::BoxError>> + Send + 'static,
{
    let Shared {
        settings,
        signals,
        limit,
        max_connections,
        at_limit,
        listening,
    } = shared;
    let mut stop = signals.shutdown.clone();
    let mut shutdown = std::pin::pin!(conn::shutting_down(&mut stop));
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
            settings.clone(),
            signals.clone(),
        ));
    }
    drop(listener);
    drop(listening);
}

fn print_demo_help(scheme: &str, local: SocketAddr, demo: SocketAddr) {
    say!("demo upstream on http://{demo} (no --upstream given)");
    say!("try:");
    // A self-signed certificate is common for a first try.
    let k = if scheme == "https" { "-k " } else { "" };
    say!("  curl {k}{scheme}://{local}/");
    say!("  curl {k}--data 'hello' {scheme}://{local}/echo");
    match scheme {
        "http" => say!("  cargo run --release -p halfclose-proxy -- probe http://{local}/echo"),
        _ => say!(
            "  cargo run --release -p halfclose-proxy -- probe https://HOST:{}/echo --ca CA.pem",
            local.port()
        ),
    }
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
