//! `bench-e2e`: the end-to-end benchmark (`cargo xtask bench e2e`).
//!
//! Starts an in-tree backend (hyper: a 64-byte GET, and `Upgrade: sink`,
//! `source`, `echo`), the halfclose-proxy binary in front of it, and nginx and
//! HAProxy too when they are installed, then measures each figure straight to the backend and
//! through each proxy, interleaved and repeated, and prints medians and ratios.
//! Small requests use `wrk` when it is installed, else an in-tree load
//! generator.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e_tests::{read_head, status_of};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

const SMALL: &[u8; 64] = b"0123456789012345678901234567890123456789012345678901234567890123";

struct Options {
    proxy: String,
    rounds: usize,
    seconds: u64,
    tunnel_mib: usize,
    fins: usize,
    idle_tunnels: usize,
    connections: usize,
    /// Clients of the reconnect storm, all upgrading at once.
    storm: usize,
    /// Figure groups to measure (`--only get,tunnel,fin,many,open,storm,rss`); all when empty.
    only: Vec<String>,
}

impl Options {
    fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

const GROUPS: [&str; 7] = ["get", "tunnel", "fin", "many", "open", "storm", "rss"];

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        proxy: e2e_tests::sibling_proxy_binary(),
        rounds: 3,
        seconds: 5,
        tunnel_mib: 512,
        fins: 200,
        idle_tunnels: 3000,
        connections: 64,
        storm: 5000,
        only: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--quick" {
            (
                o.rounds,
                o.seconds,
                o.tunnel_mib,
                o.fins,
                o.idle_tunnels,
                o.storm,
            ) = (1, 1, 8, 10, 50, 100);
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let num = || value.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--proxy" => o.proxy = value.clone(),
            "--rounds" => o.rounds = num()?.max(1),
            "--seconds" => o.seconds = num()?.max(1) as u64,
            "--tunnel-mib" => o.tunnel_mib = num()?,
            "--fins" => o.fins = num()?.max(1),
            "--idle-tunnels" => o.idle_tunnels = num()?,
            "--connections" => o.connections = num()?.max(1),
            "--storm" => o.storm = num()?.max(1),
            "--only" => {
                for group in value.split(',') {
                    if !GROUPS.contains(&group) {
                        return Err(format!("--only: unknown group {group} (one of {GROUPS:?})"));
                    }
                    o.only.push(group.to_owned());
                }
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(o)
}

// ---- The backend -----------------------------------------------------------

async fn backend(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let upgrade = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(protocol) = upgrade else {
        return Ok(Response::new(Full::new(Bytes::from_static(SMALL))));
    };
    let bytes: usize = req
        .headers()
        .get("x-bytes")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let on = hyper::upgrade::on(req);
    let kind = protocol.clone();
    tokio::spawn(async move {
        let Ok(io) = on.await else { return };
        let mut io = TokioIo::new(io);
        let mut buf = vec![0u8; 64 * 1024];
        match kind.as_str() {
            "sink" => {
                while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
                let _ = io.shutdown().await;
            }
            "source" => {
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(buf.len());
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
                let _ = io.shutdown().await;
                while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
            }
            _ => {
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = io.shutdown().await;
            }
        }
    });
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    res.headers_mut()
        .insert("connection", "upgrade".parse().unwrap());
    res.headers_mut()
        .insert("upgrade", protocol.parse().unwrap());
    Ok(res)
}

async fn start_backend() -> std::io::Result<SocketAddr> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse().expect("an address"))?;
    let listener = socket.listen(4096)?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(backend))
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok(addr)
}

// ---- The proxies -----------------------------------------------------------

struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// Processes whose RSS counts for this target.
    pids: Vec<u32>,
    child: Option<Child>,
}

impl Target {
    /// SIGTERM, so that nginx's master takes its workers down with it.
    async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

/// Our binary in front of `backend`, as `name` says: `halfclose-proxy`;
/// `balanced`, with the backend given twice, so that every request goes
/// through the balancer (`BalancedProxy`); `logged`, writing an access log
/// (JSON lines) to a file.
async fn start_ours(bin: &str, backend: SocketAddr, name: &'static str) -> Result<Target, String> {
    let upstream = format!("http://{backend}");
    let log = std::env::temp_dir()
        .join(format!("halfclose-bench-access-{}.log", std::process::id()))
        .display()
        .to_string();
    let mut args = vec!["--upstream", upstream.as_str()];
    match name {
        "balanced" => args.extend(["--upstream", upstream.as_str()]),
        "logged" => args.extend(["--access-log", log.as_str()]),
        _ => {}
    }
    // At the default log level, as it runs in production; what it logs is
    // read and dropped.
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0"])
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {bin}: {e}"))?;
    let mut errors = BufReader::new(child.stderr.take().expect("piped")).lines();
    tokio::spawn(async move { while let Ok(Some(_)) = errors.next_line().await {} });
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .map_err(|_| "the proxy did not start".to_owned())?
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let addr = first
        .strip_prefix("listening on http://")
        .and_then(|a| a.parse().ok())
        .ok_or(format!("unexpected first line {first:?}"))?;
    // Keep reading what it prints, so that it never writes into a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Target {
        name,
        addr,
        pids: vec![child.id().ok_or("exited")?],
        child: Some(child),
    })
}

async fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0").await?.local_addr()
}

/// A fresh directory for one start of the peer proxy `name` (each start
/// gets its own: a fresh process is started for the RSS figures).
fn peer_dir(name: &str) -> Option<std::path::PathBuf> {
    static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("bench-e2e-{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

/// Starts a peer proxy, silenced, and waits (up to 10 s) until it answers
/// on `addr`.
async fn start_peer(mut command: Command, addr: SocketAddr) -> Option<Child> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(child)
}

/// nginx as a careful user configures it, when it is installed.
async fn start_nginx(backend: SocketAddr) -> Option<Target> {
    let dir = peer_dir("nginx")?;
    std::fs::create_dir_all(dir.join("logs")).ok()?;
    let addr = free_port().await.ok()?;
    let conf = format!(
        r#"worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};
  uwsgi_temp_path {dir}; scgi_temp_path {dir};
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  upstream backend {{ server {backend}; keepalive 256; }}
  server {{
    listen {addr};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_buffering off;
      proxy_buffer_size 64k;
      proxy_buffers 4 64k;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
    }}
  }}
}}
"#,
        dir = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).ok()?;
    let mut nginx = Command::new("nginx");
    nginx
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(&dir)
        .args(["-g", "daemon off;"]);
    let child = start_peer(nginx, addr).await?;
    let master = child.id()?;
    let workers = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    Some(Target {
        name: "nginx",
        addr,
        pids: workers,
        child: Some(child),
    })
}

/// HAProxy as a careful user configures it, when it is installed: HTTP
/// mode, one process with a thread per core (its default), keep-alive to
/// the backend with its default connection reuse, no logging.
async fn start_haproxy(backend: SocketAddr) -> Option<Target> {
    let dir = peer_dir("haproxy")?;
    let addr = free_port().await.ok()?;
    let conf = format!(
        // No `maxconn`: HAProxy derives it from the file descriptor limit.
        r#"defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
frontend bench
  bind {addr}
  default_backend backend
backend backend
  server backend {backend}
"#
    );
    std::fs::write(dir.join("haproxy.cfg"), conf).ok()?;
    let mut haproxy = Command::new("haproxy");
    haproxy
        .arg("-f")
        .arg(dir.join("haproxy.cfg"))
        // In the foreground: one process, the one whose CPU and RSS count.
        .arg("-db");
    let child = start_peer(haproxy, addr).await?;
    let pid = child.id()?;
    Some(Target {
        name: "haproxy",
        addr,
        pids: vec![pid],
        child: Some(child),
    })
}

/// CPU time (user + system) the processes have used, in seconds.
fn cpu_secs(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            // Fields after the command name (which is in parentheses).
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum::<u64>() as f64
        / 100.0
}

/// File descriptors the processes hold, and this one (the backend's
/// sockets are in it).
fn open_fds(pids: &[u32]) -> Vec<usize> {
    std::iter::once(std::process::id())
        .chain(pids.iter().copied())
        .map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).map_or(0, |d| d.count()))
        .collect()
}

/// Waits (10 s at most) until the processes hold no more file descriptors
/// than `before` (give or take a few), that is until the connections of a
/// figure are closed.
async fn settle(pids: &[u32], before: Vec<usize>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let now = open_fds(pids);
        if now.iter().zip(&before).all(|(n, b)| *n <= b + 8) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rss_kb(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

// ---- The figures -----------------------------------------------------------

/// (req/s, p99 ms) of 64-byte GETs over `conns` keep-alive connections.
async fn small_gets(addr: SocketAddr, conns: usize, secs: u64) -> (f64, f64) {
    if let Some(r) = wrk(addr, conns, secs).await {
        return r;
    }
    let stop = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let Ok(mut tcp) = TcpStream::connect(addr).await else {
                    return lat;
                };
                let _ = tcp.set_nodelay(true);
                let mut buf = vec![0u8; 4096];
                while Instant::now() < stop {
                    let t = Instant::now();
                    if tcp
                        .write_all(b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n")
                        .await
                        .is_err()
                    {
                        break;
                    }
                    // The answer is a head and 64 bytes: read until the body is in.
                    let mut got = 0;
                    loop {
                        match tcp.read(&mut buf[got..]).await {
                            Ok(0) | Err(_) => return lat,
                            Ok(n) => got += n,
                        }
                        let end = buf[..got].windows(4).position(|w| w == b"\r\n\r\n");
                        if end.is_some_and(|end| got >= end + 4 + SMALL.len()) {
                            break;
                        }
                    }
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort();
    let p99 = all
        .get(all.len().saturating_sub(1) * 99 / 100)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    (all.len() as f64 / secs as f64, p99)
}

async fn wrk(addr: SocketAddr, conns: usize, secs: u64) -> Option<(f64, f64)> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
        ])
        .arg(format!("http://{addr}/small"))
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let p99 = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))?
        .split_whitespace()
        .nth(1)?;
    let ms = if let Some(v) = p99.strip_suffix("us") {
        v.parse::<f64>().ok()? / 1000.0
    } else if let Some(v) = p99.strip_suffix("ms") {
        v.parse().ok()?
    } else {
        p99.strip_suffix('s')?.parse::<f64>().ok()? * 1000.0
    };
    Some((rps, ms))
}

/// Opens an upgraded connection for `protocol`.
async fn upgrade(addr: SocketAddr, protocol: &str, bytes: usize) -> std::io::Result<TcpStream> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let head = format!(
        "GET /t HTTP/1.1\r\nHost: bench\r\nConnection: upgrade\r\nUpgrade: {protocol}\r\nx-bytes: {bytes}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await?;
    let res = read_head(&mut tcp).await?;
    if status_of(&res) != 101 {
        return Err(std::io::Error::other(format!("no 101: {res:?}")));
    }
    Ok(tcp)
}

/// MiB/s of one tunnel: upload to `sink`, or download from `source`.
async fn tunnel_speed(addr: SocketAddr, mib: usize, upload: bool) -> f64 {
    let bytes = mib << 20;
    let run = async {
        let mut tcp = upgrade(addr, if upload { "sink" } else { "source" }, bytes).await?;
        let t = Instant::now();
        let mut buf = vec![0u8; 256 * 1024];
        if upload {
            let mut left = bytes;
            while left > 0 {
                let n = left.min(buf.len());
                tcp.write_all(&buf[..n]).await?;
                left -= n;
            }
            tcp.shutdown().await?;
            while tcp.read(&mut buf).await? > 0 {}
        } else {
            let mut got = 0;
            loop {
                let n = tcp.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            if got != bytes {
                return Err(std::io::Error::other(format!("{got} of {bytes} bytes")));
            }
        }
        Ok::<_, std::io::Error>(t.elapsed())
    };
    match run.await {
        Ok(d) => mib as f64 / d.as_secs_f64(),
        Err(e) => {
            eprintln!("bench-e2e: tunnel to {addr}: {e}");
            0.0
        }
    }
}

/// MiB/s in all of `n` tunnels at once sharing `mib`, up or down.
async fn tunnels_at_once(addr: SocketAddr, n: usize, mib: usize, upload: bool) -> f64 {
    let each = (mib / n).max(1);
    let t = Instant::now();
    let runs: Vec<_> = (0..n)
        .map(|_| tokio::spawn(tunnel_speed(addr, each, upload)))
        .collect();
    for r in runs {
        if !matches!(r.await, Ok(speed) if speed > 0.0) {
            return 0.0;
        }
    }
    (each * n) as f64 / t.elapsed().as_secs_f64()
}

/// Upgraded tunnels opened, used once (one byte echoed) and closed per second,
/// by 16 dialers at once.
async fn tunnels_per_second(addr: SocketAddr, secs: u64) -> f64 {
    let stop = Instant::now() + Duration::from_secs(secs);
    let dialers: Vec<_> = (0..16)
        .map(|_| {
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < stop {
                    let Ok(mut tcp) = upgrade(addr, "echo", 0).await else {
                        break;
                    };
                    let mut b = [0u8; 1];
                    let ok = tcp.write_all(b"x").await.is_ok()
                        && tcp.read_exact(&mut b).await.is_ok()
                        && tcp.shutdown().await.is_ok()
                        && matches!(tcp.read(&mut b).await, Ok(0));
                    if !ok {
                        break;
                    }
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for d in dialers {
        total += d.await.unwrap_or(0);
    }
    total as f64 / secs as f64
}

/// A reconnect storm: `n` clients dial and upgrade at once, each waiting
/// for its 101 and one echoed byte, and hold their tunnel until all are
/// open. Returns tunnels opened per second (n over the time until the last
/// is open), the p99 time to open one in ms, and the clients that failed.
async fn storm(addr: SocketAddr, n: usize) -> (f64, f64, f64) {
    let start = Instant::now();
    let clients: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let t = Instant::now();
                let mut tcp =
                    tokio::time::timeout(Duration::from_secs(30), upgrade(addr, "echo", 0))
                        .await
                        .ok()?
                        .ok()?;
                let mut b = [0u8; 1];
                tcp.write_all(b"x").await.ok()?;
                tokio::time::timeout(Duration::from_secs(30), tcp.read_exact(&mut b))
                    .await
                    .ok()?
                    .ok()?;
                Some((t.elapsed(), tcp))
            })
        })
        .collect();
    let mut open = Vec::with_capacity(n);
    let mut errors = 0usize;
    for c in clients {
        match c.await {
            Ok(Some(done)) => open.push(done),
            _ => errors += 1,
        }
    }
    let all = start.elapsed();
    let mut times: Vec<Duration> = open.iter().map(|(t, _)| *t).collect();
    times.sort();
    let p99 = times
        .get((times.len() * 99 / 100).min(times.len().saturating_sub(1)))
        .map_or(0.0, |t| t.as_secs_f64() * 1000.0);
    // Closed together, after the measure.
    drop(open);
    ((n - errors) as f64 / all.as_secs_f64(), p99, errors as f64)
}

/// p50 in microseconds from a client's FIN to the echo upstream's FIN back.
async fn fin_round_trip(addr: SocketAddr, n: usize) -> f64 {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(mut tcp) = upgrade(addr, "echo", 0).await else {
            continue;
        };
        let mut b = [0u8; 1];
        if tcp.write_all(b"x").await.is_err() || tcp.read_exact(&mut b).await.is_err() {
            continue;
        }
        let t = Instant::now();
        if tcp.shutdown().await.is_err() {
            continue;
        }
        if matches!(tcp.read(&mut b).await, Ok(0)) {
            times.push(t.elapsed());
        }
    }
    times.sort();
    times
        .get(times.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// Bytes of RSS per idle upgraded tunnel held through the target: the
/// growth of the processes' RSS (what `ps` shows: `VmRSS` in
/// `/proc/PID/status`) while `n` tunnels sit idle, opened by `dialers`
/// clients at once (1: one after another). Each tunnel echoes 5 bytes
/// before it is held.
async fn idle_tunnel_rss(target: &Target, n: usize, dialers: usize) -> f64 {
    if target.pids.is_empty() || n == 0 {
        return 0.0;
    }
    let before = rss_kb(&target.pids);
    let addr = target.addr;
    let tasks: Vec<_> = (0..dialers)
        .map(|d| {
            let share = n / dialers + usize::from(d < n % dialers);
            tokio::spawn(async move {
                let mut held = Vec::with_capacity(share);
                for _ in 0..share {
                    let Ok(mut tcp) = upgrade(addr, "echo", 0).await else {
                        break;
                    };
                    let mut b = [0u8; 5];
                    if tcp.write_all(b"hello").await.is_ok() && tcp.read_exact(&mut b).await.is_ok()
                    {
                        held.push(tcp);
                    }
                }
                held
            })
        })
        .collect();
    let mut held = Vec::with_capacity(n);
    for t in tasks {
        held.extend(t.await.unwrap_or_default());
    }
    // Idle a moment: the binary gives its allocator's free pages back each
    // second, as a process whose tunnels sit idle has done.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = rss_kb(&target.pids);
    let per = (after.saturating_sub(before) * 1024) as f64 / held.len().max(1) as f64;
    drop(held);
    per
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

async fn run(o: Options) -> Result<(), String> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let backend = start_backend().await.map_err(|e| format!("backend: {e}"))?;
    let direct = Target {
        name: "direct",
        addr: backend,
        pids: Vec::new(),
        child: None,
    };
    let mut targets = vec![direct];
    match start_nginx(backend).await {
        Some(t) => targets.push(t),
        None => eprintln!("bench-e2e: nginx not installed or not starting: measured without it"),
    }
    match start_haproxy(backend).await {
        Some(t) => targets.push(t),
        None => eprintln!("bench-e2e: haproxy not installed or not starting: measured without it"),
    }
    targets.push(start_ours(&o.proxy, backend, "halfclose-proxy").await?);
    targets.push(start_ours(&o.proxy, backend, "balanced").await?);
    targets.push(start_ours(&o.proxy, backend, "logged").await?);
    let generator = if wrk(backend, 1, 1).await.is_some() {
        "wrk -t1"
    } else {
        "in-tree generator"
    };

    // figure -> target -> samples
    let names = [
        "small GET req/s",
        "small GET p99 ms",
        "small GET CPU us per request (proxy)",
        "tunnel upload MiB/s",
        "tunnel download MiB/s",
        "tunnel CPU ms per GiB (proxy)",
        "FIN round trip p50 us",
        "8 tunnels at once, upload MiB/s",
        "8 tunnels at once, download MiB/s",
        "tunnels opened per second (16 dialers)",
        "storm: tunnels opened per second (all at once)",
        "storm: p99 ms to open a tunnel",
        "storm: CPU us per tunnel opened and closed (proxy)",
        "storm: failed clients",
    ];
    let mut samples = vec![vec![Vec::new(); targets.len()]; names.len()];
    for round in 0..o.rounds {
        for (i, t) in targets.iter().enumerate() {
            if o.wants("get") {
                let cpu = cpu_secs(&t.pids);
                let (rps, p99) = small_gets(t.addr, o.connections, o.seconds).await;
                samples[0][i].push(rps);
                samples[1][i].push(p99);
                // The proxy's own CPU (user and system), per request served;
                // 0 for direct. Less noisy than the rate on a shared machine.
                let requests = rps * o.seconds as f64;
                if requests > 0.0 {
                    samples[2][i].push((cpu_secs(&t.pids) - cpu) * 1e6 / requests);
                }
            }
            if o.wants("tunnel") {
                let cpu = cpu_secs(&t.pids);
                samples[3][i].push(tunnel_speed(t.addr, o.tunnel_mib, true).await);
                samples[4][i].push(tunnel_speed(t.addr, o.tunnel_mib, false).await);
                let gib = (2 * o.tunnel_mib) as f64 / 1024.0;
                samples[5][i].push((cpu_secs(&t.pids) - cpu) * 1000.0 / gib);
            }
            if o.wants("fin") {
                samples[6][i].push(fin_round_trip(t.addr, o.fins).await);
            }
            if o.wants("many") {
                samples[7][i].push(tunnels_at_once(t.addr, 8, o.tunnel_mib, true).await);
                samples[8][i].push(tunnels_at_once(t.addr, 8, o.tunnel_mib, false).await);
            }
            if o.wants("open") {
                samples[9][i].push(tunnels_per_second(t.addr, o.seconds).await);
            }
            if o.wants("storm") {
                let cpu = cpu_secs(&t.pids);
                let fds = open_fds(&t.pids);
                let (rate, p99, failed) = storm(t.addr, o.storm).await;
                // The storm's tunnels close all at once: let that finish,
                // so that its CPU counts here (a tunnel's cost is its
                // opening and its closing) and its work does not slow the
                // next figure.
                settle(&t.pids, fds).await;
                samples[10][i].push(rate);
                samples[11][i].push(p99);
                samples[12][i].push((cpu_secs(&t.pids) - cpu) * 1e6 / o.storm as f64);
                samples[13][i].push(failed);
            }
        }
        eprintln!("bench-e2e: round {} of {} done", round + 1, o.rounds);
    }
    // Memory on fresh processes: after the load above, the allocators hold
    // free memory that idle tunnels would reuse without growing RSS.
    // Opened one after another, and by 16 dialers at once (as a crowd of
    // clients does, and as outside benchmarks measure): each on a fresh
    // process.
    let mut rss = [vec![0.0], vec![0.0]];
    for (dialers, figure) in [1, 16].into_iter().zip(rss.iter_mut()) {
        for t in targets[1..].iter().filter(|_| o.wants("rss")) {
            let fresh = match t.name {
                "nginx" => start_nginx(backend).await,
                "haproxy" => start_haproxy(backend).await,
                name => start_ours(&o.proxy, backend, name).await.ok(),
            };
            match fresh {
                Some(fresh) => {
                    figure.push(idle_tunnel_rss(&fresh, o.idle_tunnels, dialers).await);
                    fresh.stop().await;
                }
                None => figure.push(0.0),
            }
        }
    }

    println!(
        "end-to-end benchmark: medians of {} interleaved round(s); small GETs by {generator}, {} connections, {} s; tunnels of {} MiB; {} FINs; storms of {} clients",
        o.rounds, o.connections, o.seconds, o.tunnel_mib, o.fins, o.storm
    );
    print!("| figure |");
    for t in &targets {
        print!(" {} |", t.name);
    }
    for t in &targets[1..] {
        print!(" {} / direct |", t.name);
    }
    println!();
    println!("|---|{}", "---|".repeat(2 * targets.len() - 1));
    for (f, name) in names.iter().enumerate() {
        if samples[f].iter().all(Vec::is_empty) {
            continue;
        }
        let med: Vec<f64> = samples[f].iter().map(|s| median(s.clone())).collect();
        print!("| {name} |");
        for m in &med {
            print!(" {m:.1} |");
        }
        for m in &med[1..] {
            if med[0] > 0.0 {
                print!(" {:.2} |", m / med[0]);
            } else {
                print!(" - |");
            }
        }
        println!();
    }
    if o.wants("rss") {
        for (figure, how) in rss.iter().zip(["one at a time", "16 dialers"]) {
            print!(
                "| RSS per idle tunnel, bytes ({} held, {how}, fresh process) |",
                o.idle_tunnels
            );
            for r in figure {
                print!(" {r:.0} |");
            }
            println!("{}", " - |".repeat(targets.len() - 1));
        }
    }
    // The balancer's own cost: the same backend behind it, against ours alone.
    let rps = |name: &str| {
        targets
            .iter()
            .position(|t| t.name == name)
            .map(|i| median(samples[0][i].clone()))
    };
    let single = rps("halfclose-proxy").filter(|&r| r > 0.0);
    if let (Some(single), Some(balanced)) = (single, rps("balanced")) {
        println!(
            "balancer: small GET req/s through `--upstream X --upstream X` / `--upstream X` = {:.2}",
            balanced / single
        );
    }
    // The access log's cost: the same proxy writing a JSON line per request.
    if let (Some(single), Some(logged)) = (single, rps("logged")) {
        let cpu = |name: &str| {
            targets
                .iter()
                .position(|t| t.name == name)
                .map(|i| median(samples[2][i].clone()))
                .filter(|&c| c > 0.0)
        };
        print!(
            "access log: small GET req/s with `--access-log FILE` / without = {:.2}",
            logged / single
        );
        match (cpu("halfclose-proxy"), cpu("logged")) {
            (Some(plain), Some(logged)) => println!(", CPU per request = {:.2}", logged / plain),
            _ => println!(),
        }
    }
    // A figure of 0 is a failure (nothing got through), not a measurement.
    let failed: Vec<&str> = names
        .iter()
        .zip(&samples)
        .filter(|(_, per_target)| per_target.iter().any(|s| s.contains(&0.0)))
        .map(|(name, _)| *name)
        .filter(|name| !name.contains("p99") && !name.contains("CPU") && !name.contains("failed"))
        .collect();
    // And a storm client that failed is a failure (the figure must be 0).
    let mut failed = failed;
    if samples[13].iter().flatten().any(|&n| n > 0.0) {
        failed.push("storm: failed clients");
    }
    let _ = std::fs::remove_file(
        std::env::temp_dir().join(format!("halfclose-bench-access-{}.log", std::process::id())),
    );
    for t in targets {
        t.stop().await;
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("nothing got through for: {}", failed.join(", ")))
    }
}

fn main() -> std::process::ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench-e2e: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match rt.block_on(run(options)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-e2e: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
