//! The proxy server: listener, connection limit, graceful shutdown.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use proxy_tower::{
    ClientInfo, ForwardedHeaders, HostHeader, ResetOnAbort, ReverseProxy, UpgradePolicy,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tracing_subscriber::EnvFilter;

use crate::held::Held;
use crate::{ServeArgs, demo};

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
        .upgrade_policy(upgrade_policy(&args.allow_upgrade));
    if let Some(d) = args.response_timeout {
        b = b.response_timeout(d);
    }
    if let Some(d) = args.tunnel_idle_timeout {
        b = b.tunnel_idle_timeout(d);
    }
    if let Some(d) = args.tunnel_half_close_timeout {
        b = b.tunnel_half_close_timeout(d);
    }
    if args.http2_upstream {
        b = b.http2_only();
    }
    b.build().map_err(|e| e.to_string())
}

/// Fails fast, with one line, when the upstream cannot be reached at start.
async fn check_reachable(upstream: &http::Uri, limit: Duration) -> Result<(), String> {
    let host = upstream
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = upstream.port_u16().unwrap_or(80);
    match tokio::time::timeout(limit, TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("upstream {upstream} is unreachable: {e}")),
        Err(_) => Err(format!(
            "upstream {upstream} is unreachable: no connection within {limit:?}"
        )),
    }
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
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
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
        check_reachable(proxy.upstream(), args.connect_timeout).await?;
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
    let graceful = GracefulShutdown::new();
    let limit = Arc::new(Semaphore::new(args.max_connections.max(1)));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(args.header_read_timeout);

    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
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
        let _ = tcp.set_nodelay(true);
        let proxy = proxy.clone();
        // An upstream's reset is passed on to the client as a reset.
        let (io, abort) = ResetOnAbort::new(tcp);
        // The permit lives in the socket: an upgraded connection keeps counting
        // against --max-connections until its tunnel closes.
        let io = Held::new(io, permit);
        let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            // IPv4 clients of a dual-stack listener arrive as ::ffff:a.b.c.d.
            req.extensions_mut()
                .insert(ClientInfo::new(peer.ip().to_canonical()));
            req.extensions_mut().insert(abort.clone());
            proxy.clone().oneshot(req)
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }

    drop(listener);
    let second_signal = shutdown_signal();
    let grace = args.shutdown_grace;
    println!(
        "shutting down: no longer accepting; waiting up to {grace:?} for requests and {} tunnel(s)",
        tunnels.active()
    );
    let drained = async {
        graceful.shutdown().await;
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
