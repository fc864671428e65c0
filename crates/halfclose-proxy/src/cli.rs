//! The command line: `halfclose-proxy [OPTIONS]` (serve), `halfclose-proxy
//! check-config FILE` and `halfclose-proxy probe URL`, as clap types. It
//! owns the options' names, defaults and help text, and nothing they do.
//!
//! Imports: `units` and `proxy_protocol` (value parsers), `access_log` (its
//! format) and `probe` (its own arguments). Nothing else: the modules that
//! act on the options import this one.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::probe;
use crate::proxy_protocol::Cidr;
use crate::units::{Size, parse_duration, parse_size};

/// A reverse proxy that keeps TCP half-close intact across WebSocket and other
/// upgraded connections.
#[derive(Debug, Parser)]
#[command(
    name = "halfclose-proxy",
    version,
    args_conflicts_with_subcommands = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Checks whether half-close survives the path to URL (a demo upstream,
    /// directly or through any proxy): upgrades with `Upgrade: echo`, then reports
    /// one verdict per check. Exit status 0 only if all pass.
    Probe(probe::ProbeArgs),
    /// Checks a --config FILE: prints its routing table (listeners, routes
    /// in the order they are tried, upstream groups) and exits 0, or prints
    /// every error with its line and exits 1. Certificate and CA files are
    /// read too.
    CheckConfig(CheckConfigArgs),
}

/// Arguments of `check-config`.
#[derive(Debug, Args)]
pub(crate) struct CheckConfigArgs {
    /// The config file (TOML; see docs/config.md).
    #[arg(value_name = "FILE")]
    pub(crate) file: std::path::PathBuf,
}

/// Options of the proxy.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Listeners, routes by host and path, and upstream groups from a TOML
    /// file (docs/config.md), reloaded on SIGHUP and `POST /reload` on
    /// --admin-listen. Instead of --listen, --upstream and --tls-cert; the
    /// other flags give the defaults of the file's keys.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["listen", "upstream", "tls_cert", "tls_key"])]
    pub(crate) config: Option<std::path::PathBuf>,

    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    pub(crate) listen: SocketAddr,

    /// Upstream to forward to, e.g. http://127.0.0.1:3000. Repeat it for
    /// several: requests are then spread over them (power of two choices on
    /// requests in flight), an upstream that keeps refusing connections is
    /// ejected for a while, and a request that could not be sent is retried
    /// once on another. `dns://NAME:PORT` (or `dns+https://`) stands for
    /// every address of NAME, re-resolved every --dns-interval (a
    /// Kubernetes headless service, say). Without it, a built-in demo upstream is started on a
    /// loopback port and used (builds with the `demo` feature, the default;
    /// other builds refuse to start without it).
    #[arg(long, value_name = "URL")]
    pub(crate) upstream: Vec<String>,

    /// How often an upstream written `dns://NAME:PORT` is resolved again (A
    /// and AAAA records): addresses that appear get requests, those that
    /// disappear get no new ones (their requests and tunnels finish). A
    /// failed resolution keeps the addresses last found.
    #[arg(long, value_parser = parse_duration, default_value = "5s", value_name = "DURATION")]
    pub(crate) dns_interval: Duration,

    /// Trust the CA certificates in FILE (PEM) for an https upstream, instead of
    /// the bundled web PKI roots (with --config: for groups that set no `ca`).
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "FILE")]
    pub(crate) upstream_ca: Option<std::path::PathBuf>,

    /// Serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with this certificate chain
    /// (PEM); needs --tls-key. Reloaded with the key on SIGHUP (and `POST
    /// /reload`): new connections get the new certificate, open ones keep
    /// going.
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<std::path::PathBuf>,

    /// Every connection to --listen starts with a PROXY protocol header (v1
    /// or v2), as from HAProxy's `send-proxy`, an AWS NLB or another L4
    /// balancer: the client address it carries is the client's everywhere
    /// (X-Forwarded-For, Forwarded, logs). It must arrive within
    /// --header-read-timeout; a connection without a valid one is closed.
    /// With --config: the default of each listener's `proxy_protocol`.
    #[arg(long)]
    pub(crate) proxy_protocol: bool,

    /// With --proxy-protocol: only sources in this network may connect
    /// (repeatable, or comma-separated: `10.0.0.0/8`, `2001:db8::/32`, an
    /// address); others are closed at once. Default: any source.
    #[arg(long, value_delimiter = ',', value_name = "CIDR", requires = "proxy_protocol", value_parser = Cidr::parse)]
    pub(crate) proxy_protocol_trusted: Vec<Cidr>,

    /// Time allowed to connect to the upstream, TLS handshake included (502
    /// when exceeded; `0`: no limit).
    #[arg(long, value_parser = parse_duration, default_value = "5s", value_name = "DURATION")]
    pub(crate) connect_timeout: Duration,

    /// Time allowed for the upstream's response head, counted from when the
    /// whole request has been sent (504 when exceeded; `0`: no limit). A
    /// client that sends its body slowly does not use it up; an upstream
    /// that takes none of a request body for this long is a 504 too, and a
    /// client that sends none of its body for this long gets a 408.
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "DURATION")]
    pub(crate) response_timeout: Duration,

    /// Time allowed between two reads of a response body from the upstream,
    /// like nginx's proxy_read_timeout (`0`: no limit): past it, the response
    /// is cut. Streams that are quiet for longer by design (server-sent
    /// events, gRPC watches) need a longer one; tunnels have their own.
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "DURATION")]
    pub(crate) read_timeout: Duration,

    /// Requests in flight to each upstream at once, at most (`0`: no cap),
    /// shared out among the workers: each holds one upstream connection (or
    /// HTTP/2 stream) until its response body ends; a tunnel gives its slot
    /// back once switched. Past it, a request waits --upstream-queue-timeout,
    /// then gets 503 (another upstream is tried when there are several).
    /// Default: the --max-connections figure, so that upstream sockets fit in
    /// the open file limit as client connections do.
    #[arg(long, value_name = "N")]
    pub(crate) upstream_max_connections: Option<usize>,

    /// How long a request waits for a slot under --upstream-max-connections,
    /// or for a free stream on an HTTP/2 upstream, before it is answered 503.
    #[arg(long, value_parser = parse_duration, default_value = "1s", value_name = "DURATION")]
    pub(crate) upstream_queue_timeout: Duration,

    /// Idle upstream connections kept for reuse, at most (shared out among the
    /// workers, at least one each); a burst of clients leaves no more than this
    /// many open once it is over. Requests with no body or a small one, and
    /// those with a streamed or large body, are pooled apart, each pool up to N.
    #[arg(long, default_value_t = proxy_tower::DEFAULT_POOL_MAX_IDLE, value_name = "N")]
    pub(crate) upstream_max_idle: usize,

    /// Close an idle upstream connection after this long (`0`: keep it until the
    /// upstream closes it).
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "DURATION")]
    pub(crate) upstream_idle_timeout: Duration,

    /// Speak HTTP/2 with prior knowledge to the upstream (gRPC upstreams).
    #[arg(long)]
    pub(crate) http2_upstream: bool,

    /// Close a tunnel when no byte moves either way for this long (`0`: never).
    /// WebSocket applications that ping less often than this lose their tunnel.
    #[arg(long, value_parser = parse_duration, default_value = "1h", value_name = "DURATION")]
    pub(crate) tunnel_idle_timeout: Duration,

    /// Once one side of a tunnel has sent FIN, close the tunnel when no byte moves
    /// for this long (`0`: never). Protects against peers that never close
    /// (sockets held in CLOSE_WAIT); a download still streaming after the
    /// client's FIN is not cut.
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "DURATION")]
    pub(crate) tunnel_half_close_timeout: Duration,

    /// Send the client's Host to the upstream instead of the upstream's own.
    #[arg(long)]
    pub(crate) preserve_host: bool,

    /// Also add an RFC 7239 `Forwarded` header.
    #[arg(long)]
    pub(crate) forwarded: bool,

    /// Trust and append to incoming X-Forwarded-*/Forwarded (only behind another trusted proxy).
    #[arg(long)]
    pub(crate) trust_forwarded: bool,

    /// Add `Via: <version> NAME` to requests and responses.
    #[arg(long, value_name = "NAME")]
    pub(crate) via: Option<String>,

    /// Upgrade protocols allowed through (repeatable, or comma-separated; `*` for all,
    /// `none` for none). Default: all but h2c.
    #[arg(long = "allow-upgrade", value_delimiter = ',', value_name = "PROTOCOL")]
    pub(crate) allow_upgrade: Vec<String>,

    /// Largest request body accepted (`0`: no limit, the default): past it, the
    /// request ends with 413. Counted as it streams, never buffered. Bytes, or
    /// with a unit: `k`, `m`, `g` (binary: 1k = 1024; `kb`, `kib` alike).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub(crate) max_request_body: Option<Size>,

    /// With several --upstream: send `GET PATH` to each upstream every
    /// --health-check-interval; one that answers anything but 2xx/3xx (or
    /// nothing in time) is ejected as a failing one is, and back once it
    /// answers well.
    #[arg(long, value_name = "PATH")]
    pub(crate) health_check: Option<String>,

    /// How often --health-check runs.
    #[arg(long, value_parser = parse_duration, default_value = "5s", value_name = "DURATION")]
    pub(crate) health_check_interval: Duration,

    /// Serve `GET /metrics` (Prometheus text), `GET /healthz` (the proxy is up)
    /// and `GET /readyz` (an upstream is healthy) on this address, never the
    /// proxied port, and `POST /reload` (as SIGHUP does). Off by default;
    /// metrics are only recorded when it is on.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) admin_listen: Option<SocketAddr>,

    /// Maximum concurrent client connections, upgraded ones (tunnels) included.
    /// When a client arrives at the limit, idle keep-alive connections are closed
    /// to make room; if none is idle, the accepted client waits for a slot and
    /// those after it wait in the listen backlog. Default: derived from the open
    /// file limit (raised to its hard limit at start), so that the proxy sheds at
    /// its own limit before the kernel refuses sockets: (limit - reserve - idle)
    /// / 2, where reserve = 64 + 16 per worker + 512 for splice pipes (+ 64 with
    /// --admin-listen) and idle = --upstream-max-idle per upstream (counted as
    /// one per connection when that allows more); with the demo upstream, 3 per
    /// connection; at least 16. The figure is printed at start. Raise the limit
    /// with `ulimit -n` or systemd's `LimitNOFILE=`.
    #[arg(long, value_name = "N")]
    pub(crate) max_connections: Option<usize>,

    /// Time allowed for a client to send a request head (against slowloris),
    /// counted from accept for a connection's first request. On a keep-alive
    /// connection, a later head that has started to arrive must be complete
    /// within one to two of these after the previous response; a connection
    /// that sends nothing is the idle timeout's. An HTTP/2 client must send
    /// its preface and SETTINGS within it; a TLS handshake counts against it.
    /// Connections to --admin-listen have it too, at most 5 s.
    #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "DURATION")]
    pub(crate) header_read_timeout: Duration,

    /// Close a client connection with no request in flight for this long
    /// (`0`: never), HTTP/1 keep-alive connections included: between requests
    /// they are bounded by this, not by --header-read-timeout.
    #[arg(long, value_parser = parse_duration, default_value = "75s", value_name = "DURATION")]
    pub(crate) idle_timeout: Duration,

    /// Streams an HTTP/2 client connection may have open at once
    /// (SETTINGS_MAX_CONCURRENT_STREAMS; nginx's default is 128): each can
    /// hold an upstream connection.
    #[arg(long, default_value_t = 128, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) http2_max_streams: u32,

    /// Send HTTP/2 keep-alive pings to clients this often, and close the connection
    /// when one goes unanswered for as long (`0`: no pings).
    #[arg(long = "http2-ping-interval", value_parser = parse_duration, default_value = "20s", value_name = "DURATION")]
    pub(crate) http2_ping_interval: Duration,

    /// Listen on a Unix socket at PATH for the process that replaces this
    /// one (started with --take-over PATH): it gets this process's
    /// listening sockets, connections queued on them included, and this
    /// process then stops accepting and drains as on SIGTERM
    /// (--shutdown-grace). Linux only.
    #[cfg(target_os = "linux")]
    #[arg(long, value_name = "PATH")]
    pub(crate) handover: Option<std::path::PathBuf>,

    /// Start with the listening sockets of the process listening on PATH
    /// (its --handover): no connection is refused during the swap. Each is
    /// used for the listener with the same address (and, with --config,
    /// the same rank among listeners with that address); the others are
    /// bound. Linux only.
    #[cfg(target_os = "linux")]
    #[arg(long, value_name = "PATH")]
    pub(crate) take_over: Option<std::path::PathBuf>,

    /// On SIGINT/SIGTERM, time given to in-flight requests and tunnels to finish.
    #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "DURATION")]
    pub(crate) shutdown_grace: Duration,

    /// Worker threads, each with its own event loop, listener (SO_REUSEPORT)
    /// and upstream pool. Default: one per CPU.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) workers: Option<u16>,

    /// Write an access log to PATH (`-`: standard output): one line per
    /// request when its response ends (time, request id, client, method,
    /// host, path, status, upstream, bytes in and out, time to the response
    /// head and in all) and one per tunnel when it ends (request id,
    /// client, upstream, protocol, bytes each way, who sent FIN first, how
    /// it ended, duration). Written by a thread of its own: a slow disk
    /// drops lines (counted) rather than slow requests. SIGUSR1 reopens
    /// the file. Off by default.
    #[arg(long, value_name = "PATH")]
    pub(crate) access_log: Option<String>,

    /// The access log's format: `json` (an object per line) or `common`
    /// (Apache's common log format, with the other fields after it).
    #[arg(long, value_enum, default_value = "json", value_name = "FORMAT")]
    pub(crate) access_log_format: crate::access_log::Format,

    /// Log level (RUST_LOG, when set, takes precedence).
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub(crate) log_level: String,
}

impl ServeArgs {
    /// The options with every flag at its default (`check-config` reads a
    /// file with these).
    pub(crate) fn defaults() -> ServeArgs {
        Cli::try_parse_from(["halfclose-proxy"])
            .expect("no arguments parse")
            .serve
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_as_written_parses() {
        let cli = Cli::try_parse_from([
            "halfclose-proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:3000",
        ])
        .unwrap();
        assert_eq!(cli.serve.upstream, ["http://127.0.0.1:3000"]);
        let two = Cli::try_parse_from([
            "halfclose-proxy",
            "--upstream",
            "http://a:3000",
            "--upstream",
            "http://b:3000",
        ])
        .unwrap();
        assert_eq!(two.serve.upstream, ["http://a:3000", "http://b:3000"]);
        let probe =
            Cli::try_parse_from(["halfclose-proxy", "probe", "http://127.0.0.1:8080/"]).unwrap();
        assert!(matches!(probe.command, Some(Command::Probe(_))));
        let file = Cli::try_parse_from(["halfclose-proxy", "--config", "proxy.toml"]).unwrap();
        assert_eq!(
            file.serve.config.as_deref(),
            Some(std::path::Path::new("proxy.toml"))
        );
        let check = Cli::try_parse_from(["halfclose-proxy", "check-config", "proxy.toml"]).unwrap();
        assert!(matches!(check.command, Some(Command::CheckConfig(_))));
    }

    #[test]
    fn config_replaces_listen_upstream_and_tls_cert() {
        for (flag, value) in [("--listen", "127.0.0.1:1"), ("--upstream", "http://a")] {
            let e = Cli::try_parse_from(["halfclose-proxy", "--config", "f.toml", flag, value])
                .unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{flag}");
        }
    }
}
