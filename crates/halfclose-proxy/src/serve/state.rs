//! What the main thread keeps to apply a config, at start and on reloads
//! ([`State`]): the workers, the open listeners, the generation in use and
//! its health checks; and applying a config to them (`State::apply`:
//! everything built and bound before anything is swapped), reloading
//! (`State::reload`), and handing the listening sockets over.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};

use crate::access_log::AccessLog;
use crate::config::{Config, Defaults, Flags};
use crate::generation::{Current, Generation};
use crate::listen::{AtLimit, BACKLOG, Shared, accept_loop, bind};
use crate::upstreams::{Upstreams, check_health};
use crate::{conn, stack};

/// Where the config comes from, again on each reload.
pub(super) enum Source {
    File(PathBuf),
    /// The flags, with these upstreams (the demo's when they name none).
    Flags(Flags, Vec<String>),
}

/// A worker, as the main thread sees it.
pub(super) struct Worker {
    pub(super) handle: tokio::runtime::Handle,
    /// Its current generation; `None` before the first.
    pub(super) current: Option<watch::Sender<Arc<Generation>>>,
    pub(super) ids: stack::RequestIds,
}

impl Worker {
    pub(super) fn subscribe(&self) -> Option<watch::Receiver<Arc<Generation>>> {
        self.current.as_ref().map(watch::Sender::subscribe)
    }
}

/// A listener that is open: a socket per worker, each with its accept loop.
pub(super) struct Running {
    /// Its address as the config gives it (port 0 included) and its rank
    /// among listeners with that address: a reload that gives it again
    /// keeps it.
    pub(super) key: (SocketAddr, usize),
    pub(super) local: SocketAddr,
    #[cfg_attr(not(feature = "demo"), allow(dead_code))]
    pub(super) tls: bool,
    pub(super) settings: watch::Sender<Arc<conn::Settings>>,
    pub(super) removed: watch::Sender<bool>,
    /// Copies of its listening sockets, for `--handover`.
    #[cfg(unix)]
    pub(super) sockets: Vec<std::os::fd::OwnedFd>,
}

/// A listening socket to serve: bound here, or handed over.
pub(super) enum Socket {
    Fresh(tokio::net::TcpSocket),
    Inherited(std::net::TcpListener),
}

/// What every accept loop gets, but its listener's own settings.
pub(super) struct Template {
    pub(super) signals: conn::Signals,
    pub(super) limit: Arc<Semaphore>,
    pub(super) max_connections: usize,
    pub(super) at_limit: AtLimit,
    pub(super) listening: mpsc::Sender<()>,
}

/// The process-wide options of client connections.
pub(super) struct ConnOptions {
    pub(super) header_read_timeout: Duration,
    pub(super) idle_timeout: Option<Duration>,
    pub(super) ping_interval: Option<Duration>,
    pub(super) max_streams: u32,
}

/// What the main thread keeps to apply a config, at start and on reloads.
pub(super) struct State {
    /// Whether listeners keep a copy of their sockets (`--handover`).
    pub(super) keep_sockets: bool,
    pub(super) access_log: AccessLog,
    /// Listening sockets handed over by the process this one replaces
    /// (`--take-over`), until a listener takes them.
    pub(super) inherited:
        std::collections::HashMap<(SocketAddr, usize), Vec<std::net::TcpListener>>,
    pub(super) source: Source,
    /// The flags, as defaults of the file's keys.
    pub(super) defaults: Defaults,
    pub(super) workers: Vec<Worker>,
    pub(super) listeners: Vec<Running>,
    /// `None` once shutting down.
    pub(super) template: Option<Template>,
    pub(super) connections: ConnOptions,
    pub(super) upstream_max_connections: usize,
    /// The current generation's number (0 before the first).
    pub(super) generation: u64,
    /// The current generation's health checks.
    pub(super) health: Vec<tokio::task::AbortHandle>,
    /// The tunnels of retired generations that had some open at the last
    /// reload, for the shutdown.
    pub(super) tunnels: Vec<proxy_tower::Tunnels>,
    /// The current generation's, for a drain after a reload.
    pub(super) current_tunnels: Vec<proxy_tower::Tunnels>,
}

impl State {
    /// Gives every listening socket to the process on `stream`: true when
    /// it took them, and this process is to drain and exit.
    #[cfg(target_os = "linux")]
    pub(super) async fn hand_over(
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
    pub(super) fn scheme(&self) -> &'static str {
        match self.listeners.first() {
            Some(l) if l.tls => "https",
            _ => "http",
        }
    }

    #[cfg_attr(not(feature = "demo"), allow(dead_code))]
    pub(super) fn first_local(&self) -> SocketAddr {
        self.listeners
            .first()
            .map_or(([127, 0, 0, 1], 0).into(), |l| l.local)
    }

    /// Loads the config again and applies it; on error, nothing changes.
    /// Says what happened on stdout and in one log line.
    pub(super) fn reload(&mut self, why: &'static str) -> Result<String, String> {
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
    pub(super) fn apply(&mut self, config: Config, reload: bool) -> Result<(), String> {
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
