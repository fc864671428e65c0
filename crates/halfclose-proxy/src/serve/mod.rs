//! `halfclose-proxy [OPTIONS]`: runs the proxy, and owns the order of
//! things: logging, the file-descriptor plan and the connection limit, the
//! config (file or flags), every listener bound (or taken over) before
//! anything starts, the demo upstream, one worker thread per `--workers` (a
//! single-threaded runtime with its accept loops and its generation of
//! proxies), the admin port, the lines on stdout, reloads (SIGHUP, `POST
//! /reload`), the access log's reopening (SIGUSR1), the hand-over to a new
//! process, and the graceful shutdown (stop accepting, wait for connections
//! and tunnels within `--shutdown-grace`, then close what is left).
//!
//! Imports: `access_log`, `admin`, `cli`, `config`, `conn`, `demo`, `fds`,
//! `generation`, `handover`, `listen`, `signals`, `stack`, `units`,
//! `upstreams`. It is the top of the serving side: only `main` imports it.

use std::net::SocketAddr;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tracing_subscriber::EnvFilter;

use crate::access_log::AccessLog;
use crate::cli::ServeArgs;
use crate::config::{Config, Defaults, Flags};
#[cfg(feature = "demo")]
use crate::demo;
use crate::fds::connection_limit;

use crate::listen::AtLimit;
use crate::signals::{Repeated, shutdown_signal};
use crate::units::nonzero;
use crate::upstreams::check_upstream;
use crate::{admin, conn, fds, stack};

mod state;

use state::{ConnOptions, Source, State, Template, Worker};

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

/// How long an access log line may wait in a worker's batch.
const ACCESS_LOG_FLUSH: Duration = Duration::from_millis(100);

/// How long tunnels get to close once told to, before the process exits.
const CLOSE_LIMIT: Duration = Duration::from_secs(2);

/// The proxy runs one single-threaded tokio runtime per worker thread, each
/// with its own socket on every listener's port (`SO_REUSEPORT`: the kernel
/// spreads new connections over them) and its own proxies and upstream
/// pools, as nginx runs one worker per core. A connection, its upstream
/// connections and its tunnel stay on one thread: no task wakes another
/// thread for a request. The main thread runs a small runtime of its own
/// for signals, reloads and the demo upstream.
pub(crate) fn run(args: ServeArgs) -> Result<ExitCode, String> {
    // Nothing to proxy to: said before anything starts.
    #[cfg(not(feature = "demo"))]
    if args.upstream.is_empty() && args.config.is_none() {
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
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let defaults = Defaults::from_args(&args);

    // The first config: the file, or the flags (with the demo upstream
    // when they name none).
    let (source, config, demo_addr): (_, _, Option<SocketAddr>) = match &args.config {
        Some(path) => (
            Source::File(path.clone()),
            Config::load(path, &defaults).map_err(|e| e.to_string())?,
            None,
        ),
        None => {
            let (upstreams, demo_addr) = match args.upstream.as_slice() {
                #[cfg(feature = "demo")]
                [] => {
                    let addr = control
                        .block_on(demo::start())
                        .map_err(|e| format!("cannot start the demo upstream: {e}"))?;
                    (vec![format!("http://{addr}")], Some(addr))
                }
                some => (some.to_vec(), None),
            };
            let flags = Flags::from_args(&args);
            let config = Config::from_flags(&flags, upstreams.clone(), &defaults)
                .map_err(|e| e.to_string())?;
            (Source::Flags(flags, upstreams), config, demo_addr)
        }
    };

    let needs = fds::Needs {
        workers: workers * config.listeners.len().max(1),
        upstreams: config.server_count().max(1),
        upstream_max_idle: args.upstream_max_idle,
        admin_connections: match args.admin_listen {
            Some(_) => admin::MAX_CONNECTIONS,
            None => 0,
        },
        demo: demo_addr.is_some(),
    };
    let (max_connections, why) = connection_limit(args.max_connections, nofile, needs);

    let (stop, stopped) = watch::channel(false);
    let (running, mut all_done) = mpsc::channel::<()>(1);
    let (listening, mut all_closed) = mpsc::channel::<()>(1);
    let limit = Arc::new(Semaphore::new(max_connections));
    // Metrics are recorded only when someone can read them; the recorder
    // goes in before the proxies are built.
    let admin = match args.admin_listen {
        Some(addr) => {
            let listener = control.block_on(admin::bind(addr))?;
            let handle = admin::install_recorder()?;
            Some((listener, handle))
        }
        None => None,
    };

    let ids = stack::RequestIds::new();
    let access_log = AccessLog::new();
    // The sockets of the process this one replaces, before any is bound.
    #[cfg(target_os = "linux")]
    let (inherited, mut taken) = match &args.take_over {
        Some(path) => {
            let mut taken = crate::handover::take_over(path)?;
            let mut map: std::collections::HashMap<_, Vec<_>> = std::collections::HashMap::new();
            for (key, socket) in std::mem::take(&mut taken.sockets) {
                map.entry(key).or_default().push(socket);
            }
            (map, Some(taken))
        }
        None => (Default::default(), None),
    };
    #[cfg(not(target_os = "linux"))]
    let inherited = Default::default();
    #[cfg(target_os = "linux")]
    let keep_sockets = args.handover.is_some();
    #[cfg(not(target_os = "linux"))]
    let keep_sockets = false;
    let mut state = State {
        keep_sockets,
        inherited,
        access_log,
        source,
        defaults,
        workers: Vec::with_capacity(workers),
        listeners: Vec::new(),
        template: Some(Template {
            signals: conn::Signals {
                shutdown: stopped,
                pressure: conn::Pressure::new(),
                running,
            },
            limit: limit.clone(),
            max_connections,
            at_limit: AtLimit::new(),
            listening,
        }),
        connections: ConnOptions {
            header_read_timeout: args.header_read_timeout,
            idle_timeout: nonzero(args.idle_timeout),
            ping_interval: nonzero(args.http2_ping_interval),
            max_streams: args.http2_max_streams,
        },
        // Each client connection can need an upstream socket: by default, as
        // many upstream connections as client connections, per upstream.
        upstream_max_connections: args.upstream_max_connections.unwrap_or(max_connections),
        generation: 0,
        health: Vec::new(),
        tunnels: Vec::new(),
        current_tunnels: Vec::new(),
    };
    for i in 0..workers {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        // Each worker hands its access log lines to the writer at least
        // this often.
        let log = state.access_log.clone();
        rt.spawn(async move {
            let mut tick = tokio::time::interval(ACCESS_LOG_FLUSH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                log.flush();
            }
        });
        // And gives the allocator's free pages back (after a burst of
        // connections, an idle worker would keep them).
        rt.spawn(async move {
            let mut tick = tokio::time::interval(crate::pages::GIVE_BACK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                crate::pages::give_back();
            }
        });
        state.workers.push(Worker {
            handle: rt.handle().clone(),
            current: None,
            ids: ids.worker(i, workers),
        });
        // Its accept loops, connections and health checks are spawned onto
        // it; they go on until the main thread ends the process.
        std::thread::Builder::new()
            .name(format!("proxy-worker-{i}"))
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .map_err(|e| format!("cannot start a worker thread: {e}"))?;
    }
    let upstream_uris: Vec<http::Uri> = config
        .groups
        .values()
        .flat_map(|g| &g.servers)
        .filter_map(|u| u.parse().ok())
        .collect();
    let routes = config.routes.len();
    let forwarding = config
        .groups
        .values()
        .flat_map(|g| g.servers.iter().cloned())
        .collect::<Vec<_>>()
        .join(", ");
    // Every listener is bound and every proxy built before we say we are up.
    control.block_on(async { state.apply(config, false) })?;
    // Sockets handed over that no listener of ours wants: closed (their
    // queued connections are lost, as when the old process closes them).
    for ((addr, rank), sockets) in state.inherited.drain() {
        tracing::warn!(%addr, rank, sockets = sockets.len(), "a listener handed over that this config does not have; closed");
    }
    #[cfg(target_os = "linux")]
    let mut handover = match &args.handover {
        Some(path) => Some(control.block_on(async { crate::handover::Handover::bind(path) })?),
        None => None,
    };

    control.block_on(async {
        if demo_addr.is_none() {
            for uri in upstream_uris {
                check_upstream(uri, args.connect_timeout);
            }
        }
        // Listen for signals before saying we are up: from here on, SIGTERM means
        // a graceful shutdown, never the default action, and SIGHUP a reload.
        let shutdown = shutdown_signal();
        let mut hangups = Repeated::hangup();
        let mut user1 = Repeated::user1();
        // The process we replace may drain now: we serve, and our signals
        // are ours.
        #[cfg(target_os = "linux")]
        if let Some(taken) = taken.take() {
            if let Err(e) = taken.serving() {
                tracing::warn!(error = %e, "the old process may not drain on its own; stop it with SIGTERM");
            }
        }
        let (reload_tx, mut reload_rx) = mpsc::channel::<admin::ReloadReply>(4);
        say!("max connections {max_connections} ({why})");
        if let Some((listener, handle)) = admin {
            let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            admin::serve(
                listener,
                admin::Admin {
                    metrics: handle,
                    generations: state.workers.iter().filter_map(Worker::subscribe).collect(),
                    connections: limit.clone(),
                    max_connections,
                    connect_timeout: args.connect_timeout,
                    reload: reload_tx,
                },
                args.header_read_timeout,
            );
            say!("admin on http://{addr} (/metrics, /healthz, /readyz, POST /reload)");
        }
        match (&state.source, demo_addr) {
            #[cfg(feature = "demo")]
            (_, Some(demo)) => print_demo_help(state.scheme(), state.first_local(), demo),
            (Source::File(path), _) => say!(
                "routing {routes} route(s) from {} to {forwarding}",
                path.display()
            ),
            _ => say!("forwarding to {forwarding}"),
        }
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            #[cfg(target_os = "linux")]
            let asked = async {
                match &mut handover {
                    Some(h) => h.asked().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(target_os = "linux"))]
            let asked = std::future::pending::<()>();
            tokio::select! {
                _ = &mut shutdown => break,
                stream = asked => {
                    #[cfg(target_os = "linux")]
                    if let Some(h) = handover.take() {
                        let path = h.path().to_owned();
                        if state.hand_over(h, stream).await {
                            break;
                        }
                        // Still serving: ready for another try.
                        handover = crate::handover::Handover::bind(&path)
                            .inspect_err(|e| tracing::error!(error = %e, "--handover"))
                            .ok();
                    }
                    #[cfg(not(target_os = "linux"))]
                    let _ = stream;
                }
                _ = hangups.next() => {
                    let _ = state.reload("SIGHUP");
                }
                _ = user1.next() => match state.access_log.reopen() {
                    Ok(()) if !state.access_log.enabled() => tracing::info!("SIGUSR1: no access log to reopen"),
                    Ok(()) => tracing::info!("SIGUSR1: access log reopened"),
                    Err(e) => tracing::warn!(error = %e, "SIGUSR1: access log not reopened; writing on to the file in use"),
                },
                Some(reply) = reload_rx.recv() => {
                    let _ = reply.send(state.reload("POST /reload"));
                }
            }
        }

        let second_signal = shutdown_signal();
        // The copies kept for a hand-over go first: once the accept loops
        // drop theirs, the listening sockets close (or live on in the
        // process they were handed to).
        #[cfg(unix)]
        for r in &mut state.listeners {
            r.sockets.clear();
        }
        let _ = stop.send(true);
        // The accept loops hold a sender each, and the template one.
        state.template = None;
        // Every listener is closed before we say so.
        let _ = all_closed.recv().await;
        let grace = args.shutdown_grace;
        let mut tunnels = std::mem::take(&mut state.tunnels);
        tunnels.append(&mut state.current_tunnels);
        let open_tunnels = || {
            tunnels
                .iter()
                .map(proxy_tower::Tunnels::active)
                .sum::<usize>()
        };
        say!(
            "shutting down: no longer accepting; waiting up to {grace:?} for {} connection(s) and {} tunnel(s)",
            // Every open client connection holds a permit, tunnels included.
            max_connections - limit.available_permits(),
            open_tunnels()
        );
        let all_idle = || async {
            for t in &tunnels {
                t.wait_idle().await;
            }
        };
        let drained = async {
            let _ = all_done.recv().await;
            all_idle().await;
        };
        // A second signal means "now".
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
        // The last access log lines: each worker's batch, then the writer's.
        if state.access_log.enabled() {
            let flushed = async {
                for w in &state.workers {
                    let log = state.access_log.clone();
                    let _ = w.handle.spawn(async move { log.flush() }).await;
                }
                state.access_log.sync().await;
            };
            let _ = tokio::time::timeout(CLOSE_LIMIT, flushed).await;
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
