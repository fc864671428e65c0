//! `halfclose-proxy [OPTIONS]`: runs the proxy, and owns the order of
//! things: logging, the file-descriptor plan and the connection limit, every
//! listener bound before anything starts, the demo upstream, one worker
//! thread per `--workers` (a single-threaded runtime with its own proxy and
//! accept loop), the admin port, the lines on stdout, and the graceful
//! shutdown (stop accepting, wait for connections and tunnels within
//! `--shutdown-grace`, then close what is left).
//!
//! Imports: `cli`, `units`, `fds`, `listen`, `conn`, `stack`, `upstreams`,
//! `admin`, `demo`, `signals`, `tls`. It is the top of the serving side:
//! only `main` imports it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tracing_subscriber::EnvFilter;

use crate::cli::ServeArgs;
#[cfg(feature = "demo")]
use crate::demo;
use crate::fds::connection_limit;
use crate::listen::{AtLimit, BACKLOG, Shared, accept_loop, bind};
#[cfg(unix)]
use crate::signals::reload_on_sighup;
use crate::signals::shutdown_signal;
use crate::units::nonzero;
use crate::upstreams::{Upstreams, build_proxy, check_health, check_upstream};
use crate::{admin, conn, fds, stack};

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

/// How long tunnels get to close once told to, before the process exits.
const CLOSE_LIMIT: Duration = Duration::from_secs(2);

/// The proxy runs one single-threaded tokio runtime per worker thread, each
/// with its own listener on the same port (`SO_REUSEPORT`: the kernel spreads
/// new connections over them) and its own upstream pool, as nginx runs one
/// worker per core. A connection, its upstream connections and its tunnel stay
/// on one thread: no task wakes another thread for a request. The main thread
/// runs a small runtime of its own for signals and the demo upstream.
pub(crate) fn run(args: ServeArgs) -> Result<ExitCode, String> {
    // Nothing to proxy to: said before anything starts.
    #[cfg(not(feature = "demo"))]
    if args.upstream.is_empty() {
        return Err(
            r#"no --upstream given, and this build has no demo upstream (feature "demo")"#.into(),
        );
    }
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

    let (upstreams, demo_addr): (_, Option<SocketAddr>) = match args.upstream.as_slice() {
        #[cfg(feature = "demo")]
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
            #[cfg(feature = "demo")]
            Some(demo) => print_demo_help(scheme, local, demo),
            _ => say!("forwarding to {}", upstreams.join(", ")),
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
                tunnels.iter().for_each(proxy_tower::Tunnels::reset);
                let _ = tokio::time::timeout(CLOSE_LIMIT, all_idle()).await;
            }
        }
    });
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "demo")]
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
