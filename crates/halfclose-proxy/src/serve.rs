//! The proxy server: listener, connection limit, graceful shutdown.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use proxy_tower::{ForwardedHeaders, HostHeader, ReverseProxy, UpgradePolicy};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing_subscriber::EnvFilter;

use crate::{ServeArgs, conn, demo};

/// `0` turns a timer off.
fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
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

fn upgrade_policy(allowed: &[String]) -> UpgradePolicy {
    match allowed {
        [] => UpgradePolicy::default(),
        [one] if one == "*" => UpgradePolicy::allow_all(),
        [one] if one.eq_ignore_ascii_case("none") => UpgradePolicy::deny_all(),
        list => UpgradePolicy::only(list),
    }
}

fn build_proxy(args: &ServeArgs, upstream: &str) -> Result<ReverseProxy, String> {
    let forwarded = ForwardedHeaders::default()
        .forwarded(args.forwarded)
        .trust_incoming(args.trust_forwarded);
    let forwarded = match &args.via {
        Some(name) => forwarded.via(name),
        None => forwarded,
    };
    let mut b = ReverseProxy::builder(upstream)
        .connect_timeout(args.connect_timeout)
        .host_header(if args.preserve_host {
            HostHeader::Preserve
        } else {
            HostHeader::Upstream
        })
        .forwarded_headers(forwarded)
        .pool_max_idle(args.upstream_max_idle)
        .pool_idle_timeout(nonzero(args.upstream_idle_timeout))
        .upgrade_policy(upgrade_policy(&args.allow_upgrade));
    if let Some(d) = args.response_timeout {
        b = b.response_timeout(d);
    }
    if let Some(d) = nonzero(args.tunnel_idle_timeout) {
        b = b.tunnel_idle_timeout(d);
    }
    if let Some(d) = nonzero(args.tunnel_half_close_timeout) {
        b = b.tunnel_half_close_timeout(d);
    }
    if args.http2_upstream {
        b = b.http2_only();
    }
    b.build().map_err(|e| e.to_string())
}

/// The listen backlog asked for; the kernel caps it at `net.core.somaxconn`
/// (Go asks for somaxconn itself; tokio's `bind` asks for 1024, which a burst
/// of clients overflows).
const BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Says once, at start, whether the upstream answers: a WARN line when it does
/// not. The proxy serves either way (502 until the upstream is up), since
/// orchestrators start the proxy and its upstream in any order.
fn check_upstream(upstream: http::Uri, limit: Duration) {
    tokio::spawn(async move {
        let host = upstream
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = upstream.port_u16().unwrap_or(80);
        let problem = match tokio::time::timeout(limit, TcpStream::connect((host, port))).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no connection within {limit:?}"),
        };
        tracing::warn!(
            %upstream,
            error = %problem,
            "upstream not reachable yet; answering 502 until it is"
        );
    });
}

/// Resolves on SIGINT or SIGTERM received after this call. The listeners are
/// registered here, not at the first poll: a signal that arrives before the
/// future is polled is not lost.
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

pub(crate) async fn run(args: ServeArgs) -> Result<ExitCode, String> {
    init_tracing(&args.log_level)?;
    // Every connection and tunnel costs file descriptors; raise the soft limit to
    // the hard one, as Go does at start (many systems default to a soft 1024).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open file limit"),
    }
    let listener =
        listen(args.listen).map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;

    let (upstream, demo_addr) = match &args.upstream {
        Some(u) => (u.clone(), None),
        None => {
            let addr = demo::start()
                .await
                .map_err(|e| format!("cannot start the demo upstream: {e}"))?;
            (format!("http://{addr}"), Some(addr))
        }
    };
    let proxy = build_proxy(&args, &upstream)?;
    if demo_addr.is_none() {
        check_upstream(proxy.upstream().clone(), args.connect_timeout);
    }

    // Listen for signals before saying we are up: from here on, SIGTERM means a
    // graceful shutdown, never the default action.
    let mut shutdown = std::pin::pin!(shutdown_signal());
    println!("listening on http://{local}");
    match demo_addr {
        Some(demo) => print_demo_help(local, demo),
        None => println!("forwarding to {upstream}"),
    }

    let tunnels = proxy.tunnels();
    let settings = Arc::new(conn::Settings::new(
        args.header_read_timeout,
        nonzero(args.idle_timeout),
        nonzero(args.http2_ping_interval),
    ));
    let (stop, stopped) = watch::channel(false);
    let (running, mut all_done) = mpsc::channel::<()>(1);
    let signals = conn::Signals {
        shutdown: stopped,
        pressure: conn::Pressure::new(),
        running,
    };
    let limit = Arc::new(Semaphore::new(args.max_connections.max(1)));

    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: log, back off a moment.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // A client is waiting: take a slot, or make idle connections give theirs
        // up and wait for one.
        let permit = match limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
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
    let second_signal = shutdown_signal();
    let grace = args.shutdown_grace;
    println!(
        "shutting down: no longer accepting; waiting up to {grace:?} for {} connection(s) and {} tunnel(s)",
        // Every open client connection holds a permit, tunnels included.
        args.max_connections.max(1) - limit.available_permits(),
        tunnels.active()
    );
    let _ = stop.send(true);
    drop(signals);
    let drained = async {
        let _ = all_done.recv().await;
        tunnels.wait_idle().await;
    };
    // A second signal means "now".
    tokio::select! {
        done = tokio::time::timeout(grace, drained) => match done {
            Ok(()) => tracing::info!("all connections and tunnels finished"),
            Err(_) => tracing::warn!(tunnels = tunnels.active(), "grace period over; closing what is left"),
        },
        _ = second_signal => {
            println!("second signal: closing {} tunnel(s) now", tunnels.active());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_demo_help(local: SocketAddr, demo: SocketAddr) {
    println!("demo upstream on http://{demo} (no --upstream given)");
    println!("try:");
    println!("  curl http://{local}/");
    println!("  curl --data 'hello' http://{local}/echo");
    println!("  cargo run --release -p halfclose-proxy -- probe http://{local}/echo");
}
