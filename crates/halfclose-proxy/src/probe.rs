//! `halfclose-proxy probe URL`: does half-close survive the path to URL?
//!
//! A client, apart from the proxy: it imports `units` (its durations), `tls`
//! (the client config for https:// URLs) and `echo` (what a demo upstream
//! answers); nothing of the serving side, nor the demo itself (it builds
//! without the feature `demo`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::echo::FIN_FIRST_BYTES;
use crate::units::parse_duration;

#[derive(Debug, Args)]
pub(crate) struct ProbeArgs {
    /// The URL of an `Upgrade: echo` endpoint (a halfclose-proxy demo upstream,
    /// directly or through any proxy), e.g. http://127.0.0.1:8080/echo. With
    /// https://, our FIN is `close_notify` + FIN and the server's must be too.
    url: String,

    /// Trust the CA certificates in FILE (PEM) for an https:// URL, instead of
    /// the bundled web PKI roots.
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,

    /// How long each step may take.
    #[arg(long, value_parser = parse_duration, default_value = "5s", value_name = "DURATION")]
    timeout: Duration,

    /// Speak HTTP/2 (h2c with prior knowledge, or ALPN h2 over https) and open
    /// the echo stream with an extended CONNECT (RFC 8441, `:protocol echo`):
    /// our FIN is the stream's END_STREAM and the server's must come back as
    /// one.
    #[arg(long)]
    http2: bool,

    /// Bytes to send right before closing our write half.
    #[arg(long, default_value_t = 1 << 20, value_name = "N")]
    bytes: usize,
}

struct Report {
    failed: bool,
}

impl Report {
    fn pass(&mut self, check: &str, detail: impl std::fmt::Display) {
        println!("PASS  {check}: {detail}");
    }

    fn fail(&mut self, check: &str, detail: impl std::fmt::Display) {
        self.failed = true;
        println!("FAIL  {check}: {detail}");
    }

    fn exit(self) -> ExitCode {
        if self.failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    }
}

/// The connection probed: TCP, or TLS over it.
trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// The largest response head the probe reads.
const MAX_HEAD: usize = 64 * 1024;

/// A response head, parsed by httparse.
struct Head {
    code: u16,
    reason: String,
    upgrade: Option<String>,
}

/// Reads one response head. It reads in small steps, so that no byte behind
/// the head (the echo) is taken, and lets httparse tell when the head is
/// complete and what it says.
async fn read_head(tcp: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Head> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::other("response head larger than 64 KiB"));
        }
        if tcp.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
        if !head.ends_with(b"\n") {
            continue;
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut headers);
        match res.parse(&head) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(_)) => {
                let upgrade = res
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
                    .map(|h| String::from_utf8_lossy(h.value).trim().to_owned());
                return Ok(Head {
                    code: res.code.unwrap_or(0),
                    reason: res.reason.unwrap_or("").to_owned(),
                    upgrade,
                });
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("invalid response head: {e}"),
                ));
            }
        }
    }
}

/// Sends `Upgrade: echo` and checks the 101; returns its status line.
async fn upgrade_http1(
    tcp: &mut Box<dyn Conn>,
    path: &str,
    authority: &http::uri::Authority,
    limit: Duration,
) -> Result<String, String> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
    );
    let head = match tokio::time::timeout(limit, async {
        tcp.write_all(request.as_bytes()).await?;
        read_head(tcp).await
    })
    .await
    {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return Err(format!("no response: {e}")),
        Err(_) => return Err(format!("no response within {limit:?}")),
    };
    let status_line = format!("HTTP/1.1 {} {}", head.code, head.reason);
    let upgraded_to_echo = head.upgrade.is_some_and(|p| p.eq_ignore_ascii_case("echo"));
    if head.code != 101 || !upgraded_to_echo {
        return Err(format!(
            "expected 101 with Upgrade: echo, got {status_line:?}"
        ));
    }
    Ok(status_line)
}

/// Opens an HTTP/2 connection over `conn` and an echo stream on it with an
/// extended CONNECT (RFC 8441).
async fn upgrade_h2(conn: Box<dyn Conn>, uri: &http::Uri) -> Result<Box<dyn Conn>, String> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (mut send, connection) = hyper::client::conn::http2::handshake::<
        _,
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(TokioExecutor::new(), TokioIo::new(conn))
    .await
    .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    tokio::spawn(connection);
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(uri.clone())
        .body(http_body_util::Empty::new())
        .map_err(|e| e.to_string())?;
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("echo"));
    let res = send
        .send_request(req)
        .await
        .map_err(|e| format!("extended CONNECT refused (does the path support RFC 8441?): {e}"))?;
    if res.status() != http::StatusCode::OK {
        return Err(format!(
            "expected 200 to the extended CONNECT, got {}",
            res.status()
        ));
    }
    let stream = hyper::upgrade::on(res)
        .await
        .map_err(|e| format!("no stream after the 200: {e}"))?;
    Ok(Box::new(TokioIo::new(stream)))
}

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// Where the probe connects, and how.
struct Target {
    uri: http::Uri,
    authority: http::uri::Authority,
    host: String,
    port: u16,
    http2: bool,
    limit: Duration,
    /// TLS for https URLs: offering the probe's protocol, and http/1.1 alone
    /// (for the plain request of the last check).
    #[cfg(feature = "tls")]
    tls: Option<(
        std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
        std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
    )>,
}

impl Target {
    /// A connection, over TLS for https (ALPN h2 when `h2`).
    async fn connect(&self, h2: bool) -> Result<Box<dyn Conn>, String> {
        let connect = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
            let _ = tcp.set_nodelay(true);
            #[cfg(feature = "tls")]
            if let Some((main, h1)) = &self.tls {
                let config = if h2 { main.clone() } else { h1.clone() };
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(std::io::Error::other)?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                return std::io::Result::Ok(Box::new(stream) as Box<dyn Conn>);
            }
            let _ = h2;
            std::io::Result::Ok(Box::new(tcp) as Box<dyn Conn>)
        };
        match tokio::time::timeout(self.limit, connect).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(format!("{}: {e}", self.authority)),
            Err(_) => Err(format!(
                "{}: no connection within {:?}",
                self.authority, self.limit
            )),
        }
    }

    /// Connects and opens the echo on `path` (with `Upgrade: echo`, or an
    /// extended CONNECT over HTTP/2). On failure: the check that failed.
    async fn open_echo(
        &self,
        path: &str,
    ) -> Result<(Box<dyn Conn>, String), (&'static str, String)> {
        let mut conn = self.connect(self.http2).await.map_err(|e| ("connect", e))?;
        let limit = self.limit;
        if self.http2 {
            let mut parts = self.uri.clone().into_parts();
            parts.path_and_query = path.parse().ok();
            let uri = http::Uri::from_parts(parts).map_err(|e| ("upgrade", e.to_string()))?;
            return match tokio::time::timeout(limit, upgrade_h2(conn, &uri)).await {
                Ok(Ok(stream)) => Ok((
                    stream,
                    "200 to an extended CONNECT for echo (HTTP/2 stream)".to_owned(),
                )),
                Ok(Err(e)) => Err(("upgrade", e)),
                Err(_) => Err(("upgrade", format!("no response within {limit:?}"))),
            };
        }
        match upgrade_http1(&mut conn, path, &self.authority, limit).await {
            Ok(status_line) => Ok((conn, format!("{status_line} (Upgrade: echo)"))),
            Err(e) => Err(("upgrade", e)),
        }
    }

    /// `GET path` over HTTP/1.1 on a new connection: the body of a 200.
    async fn get(&self, path: &str) -> Result<String, String> {
        let mut conn = self.connect(false).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.authority
        );
        let fetch = async {
            conn.write_all(request.as_bytes()).await?;
            let head = read_head(&mut conn).await?;
            let mut body = Vec::new();
            conn.read_to_end(&mut body).await?;
            std::io::Result::Ok((head, body))
        };
        match tokio::time::timeout(self.limit * 3, fetch).await {
            Ok(Ok((head, body))) if head.code == 200 => {
                Ok(String::from_utf8_lossy(&body).trim().to_owned())
            }
            Ok(Ok((head, _))) => Err(format!("{path}: {} {}", head.code, head.reason)),
            Ok(Err(e)) => Err(format!("{path}: {e}")),
            Err(_) => Err(format!("{path}: no answer")),
        }
    }
}

/// `path` with `name=value` added to its query.
fn with_param(path: &str, name: &str, value: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{name}={value}")
}

pub(crate) async fn run(args: ProbeArgs) -> Result<ExitCode, String> {
    let uri: http::Uri = args
        .url
        .parse()
        .map_err(|e| format!("invalid URL {:?}: {e}", args.url))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") if cfg!(feature = "tls") => true,
        _ => {
            return Err(format!(
                "{}: only http:// and https:// URLs can be probed",
                args.url
            ));
        }
    };
    #[cfg(feature = "tls")]
    let tls = match https {
        true => {
            let alpn: &[u8] = if args.http2 { b"h2" } else { b"http/1.1" };
            let main = crate::tls::client_config(args.ca.as_deref(), alpn)?;
            let h1 = crate::tls::client_config(args.ca.as_deref(), b"http/1.1")?;
            Some((main, h1))
        }
        false => None,
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{}: no host", args.url))?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let limit = args.timeout;
    let target = Target {
        uri: uri.clone(),
        authority,
        host,
        port,
        http2: args.http2,
        limit,
        #[cfg(feature = "tls")]
        tls,
    };
    let mut report = Report { failed: false };

    // 1. Connect and upgrade.
    let mut tcp = match target.open_echo(&path).await {
        Ok((conn, detail)) => {
            report.pass("upgrade", detail);
            conn
        }
        Err((check, e)) => {
            report.fail(check, e);
            return Ok(report.exit());
        }
    };

    // 2. Data flows both ways.
    let ping = b"halfclose probe ping\n";
    let mut back = [0u8; 21];
    match tokio::time::timeout(limit, async {
        tcp.write_all(ping).await?;
        tcp.read_exact(&mut back).await
    })
    .await
    {
        Ok(Ok(_)) if &back == ping => {
            report.pass("data flows", format!("{} bytes echoed", ping.len()))
        }
        Ok(Ok(_)) => report.fail("data flows", "the echo differs from what was sent"),
        Ok(Err(e)) => report.fail("data flows", e),
        Err(_) => report.fail("data flows", format!("no echo within {limit:?}")),
    }

    // 3. Send a payload and our FIN at once; the echo keeps coming back after our
    //    FIN only if the path keeps the reverse direction open.
    let (mut rd, mut wr) = tokio::io::split(tcp);
    let total = args.bytes;
    let writer = tokio::spawn(async move {
        let payload: Vec<u8> = (0..total).map(pattern).collect();
        wr.write_all(&payload).await?;
        wr.shutdown().await?;
        std::io::Result::Ok(wr)
    });
    let mut got = 0usize;
    let mut intact = true;
    let mut buf = vec![0u8; 64 * 1024];
    let ending = loop {
        match tokio::time::timeout(limit, rd.read(&mut buf)).await {
            Ok(Ok(0)) => break Ok(()),
            Ok(Ok(n)) => {
                intact &= buf[..n]
                    .iter()
                    .enumerate()
                    .all(|(i, b)| *b == pattern(got + i));
                got += n;
            }
            Ok(Err(e)) => break Err(format!("connection failed: {e}")),
            Err(_) => break Err(format!("no EOF within {limit:?}")),
        }
    };
    let wrote = match tokio::time::timeout(limit, writer).await {
        Ok(Ok(Ok(_wr))) => Ok(()),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        _ => Err("sending did not finish".to_owned()),
    };
    match (&wrote, got == total && intact) {
        (Ok(()), true) => report.pass(
            "client FIN, reverse direction",
            format!("sent {total} bytes and FIN; all {got} came back after our FIN"),
        ),
        (Ok(()), false) => report.fail(
            "client FIN, reverse direction",
            format!(
                "sent {total} bytes and FIN; {got} came back{}: the path cut the reverse direction",
                if intact { "" } else { " (corrupted)" }
            ),
        ),
        (Err(e), _) => report.fail(
            "client FIN, reverse direction",
            format!("sending failed: {e}"),
        ),
    }

    // 4. The server sends FIN only once it has seen ours: an EOF here means our
    //    FIN reached it and its FIN was passed back.
    match ending {
        Ok(()) => report.pass(
            "server FIN",
            "EOF received: our FIN reached the server and its FIN came back",
        ),
        Err(e) => report.fail(
            "server FIN",
            format!("{e}: our FIN did not reach the server, or its FIN was not passed back"),
        ),
    }

    // 5. The mirror case: the server sends its data and FIN first; we keep
    //    sending after it, and ask the server (a demo upstream) how much of it
    //    arrived. A path that closes our direction at the server's FIN (HAProxy
    //    2.6 does) passes 1 to 4 and fails this one.
    let check = "server FIN first, client keeps sending";
    let id = probe_id();
    match server_fin_first(&target, &path, &id, args.bytes).await {
        Ok(()) => report.pass(
            check,
            format!(
                "got {} KiB and the server's FIN, then sent {} bytes and FIN; all of them arrived",
                FIN_FIRST_BYTES / 1024,
                args.bytes
            ),
        ),
        Err(e) => report.fail(check, e),
    }
    Ok(report.exit())
}

/// A token naming one `fin-first` connection at the demo upstream.
fn probe_id() -> String {
    use std::hash::BuildHasher;
    let n = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    format!("{n:016x}")
}

/// Check 5: reads the server's data and FIN, sends `total` bytes and FIN
/// after it, and compares with what the server says it got.
async fn server_fin_first(
    target: &Target,
    path: &str,
    id: &str,
    total: usize,
) -> Result<(), String> {
    let limit = target.limit;
    let (conn, _) = target
        .open_echo(&with_param(path, "fin-first", id))
        .await
        .map_err(|(check, e)| format!("{check}: {e}"))?;
    let (mut rd, mut wr) = tokio::io::split(conn);
    let mut first = Vec::new();
    match tokio::time::timeout(limit, rd.read_to_end(&mut first)).await {
        Ok(Ok(_)) if first.len() == FIN_FIRST_BYTES => {}
        Ok(Ok(_)) => {
            return Err(format!(
                "got {} bytes before the server's FIN, expected {} (is the upstream a halfclose-proxy demo?)",
                first.len(),
                FIN_FIRST_BYTES
            ));
        }
        Ok(Err(e)) => return Err(format!("reading the server's data: {e}")),
        Err(_) => {
            return Err(format!(
                "no data and FIN from the server within {limit:?} (is the upstream a halfclose-proxy demo?)"
            ));
        }
    }
    let payload: Vec<u8> = (0..total).map(pattern).collect();
    let sent = async {
        wr.write_all(&payload).await?;
        wr.shutdown().await
    };
    match tokio::time::timeout(limit, sent).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(format!(
                "sending after the server's FIN failed ({e}): the path closed our direction at the server's FIN"
            ));
        }
        Err(_) => return Err(format!("sending did not finish within {limit:?}")),
    }
    // Ask while the connection is still held: over HTTP/2, dropping the
    // stream would cancel DATA still waiting for flow-control credit.
    let got = target
        .get(&with_param(path, "fin-first-result", id))
        .await
        .map_err(|e| format!("asking the server what it got: {e}"))?;
    drop((rd, wr));
    match got.parse::<usize>() {
        Ok(n) if n == total => Ok(()),
        Ok(n) => Err(format!(
            "the server got {n} of the {total} bytes we sent after its FIN: the path cut our direction at the server's FIN"
        )),
        Err(_) => Err(format!("the server answered {got:?}, not a byte count")),
    }
}
