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
use std::path::PathBuf;
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
use crate::generation::{Current, Generation};
use crate::listen::{AtLimit, BACKLOG, Shared, accept_loop, bind};
use crate::signals::{Repeated, shutdown_signal};
use crate::units::nonzero;
use crate::upstreams::{Upstreams, check_health, check_upstream};
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

/// Where the config comes from, again on each reload.
enum Source {
    File(PathBuf),
    /// The flags, with these upstreams (the demo's when they name none).
    Flags(Flags, Vec<String>),
}

/// A worker, as the main thread sees it.
struct Worker {
    handle: tokio::runtime::Handle,
    /// Its current generation; `None` before the first.
    current: Option<watch::Sender<Arc<Generation>>>,
    ids: stack::RequestIds,
}

impl Worker {
    fn subscribe(&self) -> Option<watch::Receiver<Arc<Generation>>> {
        self.current.as_ref().map(watch::Sender::subscribe)
    }
}

/// A listener that is open: a socket per worker, each with its accept loop.
struct Running {
    /// Its address as the config gives it (port 0 included) and its rank
    /// among listeners with that address: a reload that gives it again
    /// keeps it.
    key: (SocketAddr, usize),
    local: SocketAddr,
    #[cfg_attr(not(feature = "demo"), allow(dead_code))]
    tls: bool,
    settings: watch::Sender<Arc<conn::Settings>>,
    removed: watch::Sender<bool>,
    /// Copies of its listening sockets, for `--handover`.
    #[cfg(unix)]
    sockets: Vec<std::os::fd::OwnedFd>,
}

/// A listening socket to serve: bound here, or handed over.
enum Socket {
    Fresh(tokio::net::TcpSocket),
    Inherited(std::net::TcpListener),
}

/// What every accept loop gets, but its listener's own settings.
struct Template {
    signals: conn::Signals,
    limit: Arc<Semaphore>,
    max_connections: usize,
    at_limit: AtLimit,
    listening: mpsc::Sender<()>,
}

/// The process-wide options of client connections.
struct ConnOptions {
    header_read_timeout: Duration,
    idle_timeout: Option<Duration>,
    ping_interval: Option<Duration>,
    max_streams: u32,
}

/// What the main thread keeps to apply a config, at start and on reloads.
struct State {
    /// Whether listeners keep a copy of their sockets (`--handover`).
    keep_sockets: bool,
    access_log: AccessLog,
    /// Listening sockets handed over by the process this one replaces
    /// (`--take-over`), until a listener takes them.
    inherited: std::collections::HashMap<(SocketAddr, usize), Vec<std::net::TcpListener>>,
    source: Source,
    /// The flags, as defaults of the file's keys.
    defaults: Defaults,
    workers: Vec<Worker>,
    listeners: Vec<Running>,
    /// `None` once shutting down.
    template: Option<Template>,
    connections: ConnOptions,
    upstream_max_connections: usize,
    /// The current generation's number (0 before the first).
    generation: u64,
    /// The current generation's health checks.
    health: Vec<tokio::task::AbortHandle>,
    /// The tunnels of retired generations that had some open at the last
    /// reload, for the shutdown.
    tunnels: Vec<proxy_tower::Tunnels>,
    /// The current generation's, for a drain after a reload.
    current_tunnels: Vec<proxy_tower::Tunnels>,
}

impl State {
    /// Gives every listening socket to the process on `stream`: true when
    /// it took them, and this process is to drain and exit.
    #[cfg(target_os = "linux")]
    async fn hand_over(
        &mut self,
        handover: crate::handover::Handover,
        stream: tokio::net::UnixStream,
    ) -> bool {
        use std::os::fd::AsFd;
        let sockets: Vec<_> = self
            .listeners
            .iter()
            .flat_map(|r| r.sockets.iter().map(move |fd| (r.key, fd.as_fd())))
            .collect();
        match handover.give(stream, &sockets).await {
            Ok(()) => {
                say!(
                    "handed {} listening socket(s) over to the new process; draining",
                    sockets.len()
                );
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "hand-over failed; serving on");
                false
            }
        }
    }

    #[cfg_attr(not(feature = "demo"), allow(dead_code))]
    fn scheme(&self) -> &'static str {
        match self.listeners.first() {
            Some(l) if l.tls => "https",
            _ => "http",
        }
    }

    #[cfg_attr(not(feature = "demo"), allow(dead_code))]
    fn first_local(&self) -> SocketAddr {
        self.listeners
            .first()
            .map_or(([127, 0, 0, 1], 0).into(), |l| l.local)
    }

    /// Loads the config again and applies it; on error, nothing changes.
    /// Says what happened on stdout and in one log line.
    fn reload(&mut self, why: &'static str) -> Result<String, String> {
        let config = match &self.source {
            Source::File(path) => Config::load(path, &self.defaults).map_err(|e| e.to_string()),
            Source::Flags(flags, upstreams) => {
                Config::from_flags(flags, upstreams.clone(), &self.defaults)
                    .map_err(|e| e.to_string())
            }
        };
        let applied = config.and_then(|config| {
            let certs = certificate_paths(&config);
            self.apply(config, true).map(|()| certs)
        });
        let n = self.generation;
        match applied {
            Ok(certs) => {
                metrics::counter!("proxy_config_reloads_total", "result" => "success").increment(1);
                for cert in certs {
                    say!("reloaded TLS certificate from {cert}");
                }
                let what = match &self.source {
                    Source::File(path) => path.display().to_string(),
                    Source::Flags(..) => "the flags".to_owned(),
                };
                tracing::info!(generation = n, trigger = why, "config reloaded from {what}");
                say!("reloaded {what}: generation {n}");
                Ok(format!("reloaded: generation {n}\n"))
            }
            Err(e) => {
                metrics::counter!("proxy_config_reloads_total", "result" => "failure").increment(1);
                tracing::warn!(generation = n, trigger = why, error = %e, "config not reloaded; keeping the one in use");
                match &self.source {
                    // As before there were config files: a certificate is
                    // all the flags have to reload.
                    Source::Flags(flags, _) if flags.has_tls() => {
                        say!("TLS certificate not reloaded, keeping the one in use: {e}")
                    }
                    _ => say!("config not reloaded, keeping generation {n}: {e}"),
                }
                Err(format!("not reloaded, keeping generation {n}: {e}\n"))
            }
        }
    }

    /// Makes `config` current: binds its new listeners and builds every
    /// worker's generation first (an error there changes nothing), then
    /// swaps them in, updates the listeners it keeps, closes those it
    /// drops, and starts the new ones. Must run inside the main thread's
    /// runtime.
    fn apply(&mut self, config: Config, reload: bool) -> Result<(), String> {
        let Some(template) = &self.template else {
            return Err("shutting down".into());
        };
        let n = self.workers.len();
        let number = self.generation + 1;
        // 1. Bind the new listeners, a socket per worker, or take those a
        // process handed over (and bind more if there are more workers).
        let mut fresh = Vec::new();
        for l in &config.listeners {
            if self.listeners.iter().any(|r| r.key == l.key) {
                continue;
            }
            let mut sockets: Vec<Socket> = self
                .inherited
                .remove(&l.key)
                .unwrap_or_default()
                .into_iter()
                .map(Socket::Inherited)
                .collect();
            let local = match sockets.first() {
                Some(Socket::Inherited(s)) => s.local_addr().map_err(|e| e.to_string())?,
                _ => {
                    let first = bind(l.address, n > 1)
                        .map_err(|e| format!("cannot listen on {}: {e}", l.address))?;
                    let local = first.local_addr().map_err(|e| e.to_string())?;
                    sockets.push(Socket::Fresh(first));
                    local
                }
            };
            // More workers than sockets: handed-over sockets are shared
            // (a copy each: it may not have SO_REUSEPORT to bind more).
            let inherited = sockets.len();
            while sockets.len() < n {
                let more = match sockets.get(sockets.len() % inherited.max(1)) {
                    Some(Socket::Inherited(s)) if inherited > 0 => Socket::Inherited(
                        s.try_clone()
                            .map_err(|e| format!("cannot share the socket of {local}: {e}"))?,
                    ),
                    _ => Socket::Fresh(
                        bind(local, true).map_err(|e| format!("cannot listen on {local}: {e}"))?,
                    ),
                };
                sockets.push(more);
            }
            // Copies of one socket are handed over once.
            let distinct = match sockets.first() {
                Some(Socket::Inherited(_)) => inherited,
                _ => sockets.len(),
            };
            fresh.push((l.key, local, sockets, distinct));
        }
        // 2. Every worker's generation, its DNS groups starting with the
        // addresses found so far.
        let seeds = self
            .workers
            .first()
            .and_then(Worker::subscribe)
            .map(|current| current.borrow().dns_addresses(&config))
            .unwrap_or_default();
        let generations = (0..n)
            .map(|_| {
                Generation::build(
                    &config,
                    n,
                    self.upstream_max_connections,
                    &self.access_log,
                    &seeds,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;

        // 3. Nothing can fail from here on (but the access log, which keeps
        // the file in use if the new one cannot be opened).
        if let Err(e) = self
            .access_log
            .set(config.access_log.as_ref(), config.access_log_format)
        {
            if !reload {
                return Err(e);
            }
            tracing::warn!(error = %e, "keeping the access log in use");
        }
        let settings_of = |l: &crate::config::Listener| -> (Arc<conn::Settings>, bool) {
            let c = &self.connections;
            let settings = conn::Settings::new(
                c.header_read_timeout,
                c.idle_timeout,
                c.ping_interval,
                c.max_streams,
            );
            let settings = match l.http2 {
                true => settings,
                false => settings.http1_only(),
            };
            let settings = match &l.proxy_protocol {
                Some(trusted) => settings.proxy_protocol(trusted.clone()),
                None => settings,
            };
            #[cfg(feature = "tls")]
            if let Some(certs) = &l.certificates {
                return (Arc::new(settings.tls(certs.acceptor(l.http2))), true);
            }
            (Arc::new(settings), false)
        };
        let mut retired = Vec::new();
        let mut tunnels = Vec::new();
        for (worker, generation) in self.workers.iter_mut().zip(generations) {
            tunnels.extend(generation.tunnels());
            let generation = Arc::new(generation);
            match &worker.current {
                Some(tx) => retired.push(tx.send_replace(generation)),
                None => worker.current = Some(watch::Sender::new(generation)),
            }
        }
        // Tunnels of retired generations are kept while open, for the
        // shutdown (a bounded list: those with none open go).
        let old_tunnels = std::mem::replace(&mut self.current_tunnels, tunnels);
        self.tunnels.retain(|t| t.active() > 0);
        self.tunnels.extend(old_tunnels.iter().cloned());
        self.generation = number;
        metrics::gauge!("proxy_config_generation").set(number as f64);

        // Health checks: the new generation's replace the old one's.
        for h in self.health.drain(..) {
            h.abort();
        }
        for worker in &self.workers {
            let Some(current) = worker.subscribe() else {
                continue;
            };
            let generation = current.borrow().clone();
            for p in &generation.proxies {
                if let (Some((path, interval)), Upstreams::Many(balanced)) =
                    (&p.health_check, &p.upstreams)
                {
                    let task = worker.handle.spawn(check_health(
                        balanced.clone(),
                        path.clone(),
                        *interval,
                    ));
                    self.health.push(task.abort_handle());
                }
            }
        }

        // Listeners: kept ones get their new settings, dropped ones close
        // (their connections go on), new ones open.
        self.listeners
            .retain(|r| match config.listeners.iter().find(|l| l.key == r.key) {
                Some(l) => {
                    r.settings.send_replace(settings_of(l).0);
                    true
                }
                None => {
                    r.removed.send_replace(true);
                    say!("stopped listening on {}", r.local);
                    false
                }
            });
        for (key, local, sockets, distinct) in fresh {
            let Some(l) = config.listeners.iter().find(|l| l.key == key) else {
                continue;
            };
            let (settings, tls) = settings_of(l);
            let (settings_tx, settings_rx) = watch::channel(settings);
            let (removed_tx, removed_rx) = watch::channel(false);
            let mut handed = Vec::new();
            // Worker i takes sockets i, i + n...: more sockets than workers
            // (handed over by a process with more) are all accepted from.
            for (i, socket) in sockets.into_iter().enumerate() {
                let worker = &self.workers[i % n];
                let listener = {
                    let _entered = worker.handle.enter();
                    let listening = match socket {
                        Socket::Fresh(s) => s.listen(BACKLOG),
                        Socket::Inherited(s) => s
                            .set_nonblocking(true)
                            .and_then(|()| tokio::net::TcpListener::from_std(s)),
                    };
                    match listening {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(%local, error = %e, "cannot listen; this worker skips the listener");
                            continue;
                        }
                    }
                };
                // A copy to hand over to the next process (closed with the
                // listener, or at shutdown).
                #[cfg(unix)]
                if self.keep_sockets
                    && i < distinct
                    && let Ok(fd) = std::os::fd::AsFd::as_fd(&listener).try_clone_to_owned()
                {
                    handed.push(fd);
                }
                let Some(current) = worker.subscribe() else {
                    continue;
                };
                let shared = Shared {
                    settings: settings_rx.clone(),
                    removed: removed_rx.clone(),
                    signals: template.signals.clone(),
                    limit: template.limit.clone(),
                    max_connections: template.max_connections,
                    at_limit: template.at_limit.clone(),
                    listening: template.listening.clone(),
                };
                let edge = stack::build(
                    Current(current),
                    worker.ids.clone(),
                    self.access_log.clone(),
                );
                worker.handle.spawn(accept_loop(listener, edge, shared));
            }
            let scheme = if tls { "https" } else { "http" };
            say!("listening on {scheme}://{local}");
            self.listeners.push(Running {
                key,
                local,
                tls,
                settings: settings_tx,
                removed: removed_tx,
                #[cfg(unix)]
                sockets: handed,
            });
        }
        // Config order, as it was said at start.
        self.listeners.sort_by_key(|r| {
            config
                .listeners
                .iter()
                .position(|l| l.key == r.key)
                .unwrap_or(usize::MAX)
        });

        // The drain limit: tunnels of the generation just retired that are
        // still open this long from now get a FIN each way.
        if let (true, Some(limit)) = (reload, config.drain_timeout) {
            tokio::spawn(async move {
                tokio::time::sleep(limit).await;
                let open: usize = old_tunnels.iter().map(proxy_tower::Tunnels::active).sum();
                if open > 0 {
                    tracing::info!(
                        tunnels = open,
                        generation = number - 1,
                        ?limit,
                        "drain limit after a reload: closing older tunnels with a FIN each way"
                    );
                }
                old_tunnels.iter().for_each(proxy_tower::Tunnels::shutdown);
            });
        }
        drop(retired);
        Ok(())
    }
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

/// The certificate files of `config`'s listeners, for messages.
fn certificate_paths(config: &Config) -> Vec<String> {
    #[cfg(feature = "tls")]
    return config
        .listeners
        .iter()
        .filter_map(|l| l.certificates.as_ref())
        .flat_map(|c| {
            c.paths()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    #[cfg(not(feature = "tls"))]
    {
        let _ = config;
        Vec::new()
    }
}
