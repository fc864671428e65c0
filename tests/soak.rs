//! `soak`: many concurrent tunnels and requests through the `halfclose-proxy`
//! binary, with random sizes and random close orders, every byte checked by
//! hash; then the proxy's file descriptors and its open connections and tunnels
//! must be back to their baseline. Run by `cargo xtask soak` (and, short, by
//! `cargo xtask test`).
//!
//! Prints one line per figure and ends with `N passed, M failed`; exits non-zero
//! if anything failed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::Hasher;
use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e_tests::{Generated, fill, hash_body, header_of, read_head, status_of};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::{Notify, Semaphore};

/// Every wait of the soak is bounded by this.
const WAIT: Duration = Duration::from_secs(60);

struct Options {
    tunnels: usize,
    requests: usize,
    concurrency: usize,
    max_size: usize,
    seed: u64,
    proxy: String,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        tunnels: 2000,
        requests: 2000,
        concurrency: 500,
        max_size: 1 << 20,
        seed: 0x5eed,
        proxy: e2e_tests::sibling_proxy_binary(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--tunnels" => o.tunnels = num(value()?)? as usize,
            "--requests" => o.requests = num(value()?)? as usize,
            "--concurrency" => o.concurrency = num(value()?)?.max(1) as usize,
            "--max-size" => o.max_size = num(value()?)? as usize,
            "--seed" => o.seed = num(value()?)?,
            "--proxy" => o.proxy = value()?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(o)
}

/// Who closes a tunnel, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// The client sends everything and its FIN; the upstream answers after EOF.
    ClientFin,
    /// The upstream sends everything and its FIN first; the client after EOF.
    UpstreamFin,
    /// Both send at once and FIN when done.
    Both,
    /// The client sends, then resets: the upstream must see an abortive end.
    ClientReset,
    /// The upstream sends, then resets: the client must see an abortive end.
    UpstreamReset,
}

const ORDERS: [Order; 5] = [
    Order::ClientFin,
    Order::UpstreamFin,
    Order::Both,
    Order::ClientReset,
    Order::UpstreamReset,
];

impl Order {
    fn name(self) -> &'static str {
        match self {
            Order::ClientFin => "client-fin",
            Order::UpstreamFin => "upstream-fin",
            Order::Both => "both",
            Order::ClientReset => "client-reset",
            Order::UpstreamReset => "upstream-reset",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        ORDERS.into_iter().find(|o| o.name() == s)
    }
}

/// One tunnel's plan, known to both ends.
#[derive(Debug, Clone, Copy)]
struct Plan {
    id: u64,
    order: Order,
    up: usize,
    down: usize,
    seed: u64,
}

fn plan_seeds(seed: u64) -> (u64, u64) {
    (seed | 1, seed.rotate_left(17) | 1)
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    s.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// What the upstream side concluded about each tunnel.
#[derive(Default)]
struct UpstreamVerdicts {
    done: AtomicUsize,
    failures: Mutex<HashMap<u64, String>>,
    notify: Notify,
}

impl UpstreamVerdicts {
    fn record(&self, id: u64, result: Result<(), String>) {
        if let Err(e) = result {
            self.failures.lock().unwrap().insert(id, e);
        }
        self.done.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    async fn wait_for(&self, n: usize) -> bool {
        tokio::time::timeout(WAIT, async {
            loop {
                let notified = self.notify.notified();
                if self.done.load(Ordering::Acquire) >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok()
    }
}

/// Writes `len` bytes generated from `seed`, in 64 KiB pieces.
async fn send<W: AsyncWrite + Unpin>(w: &mut W, mut seed: u64, len: usize) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        fill(&mut seed, &mut buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n;
    }
    Ok(())
}

/// Reads to EOF; returns (length, hash) or the read error.
async fn receive<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(usize, u64)> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok((len, h.finish()));
        }
        h.write(&buf[..n]);
        len += n;
    }
}

fn check(
    what: &str,
    got: std::io::Result<(usize, u64)>,
    seed: u64,
    len: usize,
) -> Result<(), String> {
    match got {
        Ok((n, hash)) if n == len && hash == Generated::hash(seed, len) => Ok(()),
        Ok((n, _)) if n != len => Err(format!("{what}: {n} bytes, {len} expected")),
        Ok(_) => Err(format!("{what}: {len} bytes, wrong content")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

fn expect_abort(what: &str, got: std::io::Result<(usize, u64)>) -> Result<(), String> {
    match got {
        Err(_) => Ok(()),
        Ok((n, _)) => Err(format!("{what}: a clean EOF after {n} bytes, not a reset")),
    }
}

/// Runs within [`WAIT`], or fails with `what`.
async fn bounded<T>(what: &str, fut: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| Err(format!("{what}: no end within {WAIT:?}")))
}

// ---- The upstream ----------------------------------------------------------

fn plan_of(req: &Request<Incoming>) -> Option<Plan> {
    let get = |k: &str| req.headers().get(k)?.to_str().ok();
    Some(Plan {
        id: get("x-id")?.parse().ok()?,
        order: Order::parse(get("x-order")?)?,
        up: get("x-up")?.parse().ok()?,
        down: get("x-down")?.parse().ok()?,
        seed: get("x-seed")?.parse().ok()?,
    })
}

async fn upstream_tunnel(io: hyper::upgrade::Upgraded, plan: Plan) -> Result<(), String> {
    let (up_seed, down_seed) = plan_seeds(plan.seed);
    // The raw socket, so that the reset case can reset it.
    let parts = io
        .downcast::<TokioIo<TcpStream>>()
        .map_err(|_| "upstream: not a TcpStream".to_owned())?;
    let mut io = Rewound {
        prefix: parts.read_buf,
        tcp: parts.io.into_inner(),
    };
    match plan.order {
        Order::ClientFin => {
            check("upstream read", receive(&mut io).await, up_seed, plan.up)?;
            send(&mut io, down_seed, plan.down)
                .await
                .map_err(|e| e.to_string())?;
            io.shutdown().await.map_err(|e| e.to_string())
        }
        Order::UpstreamFin => {
            let (mut r, mut w) = tokio::io::split(io);
            send(&mut w, down_seed, plan.down)
                .await
                .map_err(|e| e.to_string())?;
            w.shutdown().await.map_err(|e| e.to_string())?;
            check("upstream read", receive(&mut r).await, up_seed, plan.up)
        }
        Order::Both => {
            let (mut r, mut w) = tokio::io::split(io);
            let write = async {
                send(&mut w, down_seed, plan.down).await?;
                w.shutdown().await
            };
            let (read, write) = tokio::join!(receive(&mut r), write);
            write.map_err(|e| format!("upstream write: {e}"))?;
            check("upstream read", read, up_seed, plan.up)
        }
        Order::ClientReset => expect_abort("upstream read", receive(&mut io).await),
        Order::UpstreamReset => {
            send(&mut io, down_seed, plan.down)
                .await
                .map_err(|e| e.to_string())?;
            io.tcp.set_zero_linger().map_err(|e| e.to_string())?;
            drop(io);
            Ok(())
        }
    }
}

/// The upstream's socket after the 101, with hyper's read-ahead in front.
struct Rewound {
    prefix: Bytes,
    tcp: TcpStream,
}

impl AsyncRead for Rewound {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

async fn upstream_service(
    req: Request<Incoming>,
    verdicts: Arc<UpstreamVerdicts>,
) -> Result<Response<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>, Infallible> {
    if let Some(plan) = plan_of(&req) {
        let on = hyper::upgrade::on(req);
        tokio::spawn(async move {
            let result = match on.await {
                Ok(io) => bounded("upstream tunnel", upstream_tunnel(io, plan)).await,
                Err(e) => Err(format!("upstream upgrade: {e}")),
            };
            verdicts.record(plan.id, result);
        });
        let mut res = Response::new(Empty::new().map_err(|n| match n {}).boxed());
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        res.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        res.headers_mut().insert("upgrade", "soak".parse().unwrap());
        return Ok(res);
    }
    // Anything else: echo the body back, streamed.
    Ok(Response::new(req.into_body().boxed()))
}

async fn start_upstream(verdicts: Arc<UpstreamVerdicts>) -> std::io::Result<SocketAddr> {
    // A burst of new upstream connections must not overflow the backlog.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse().expect("an address"))?;
    let listener = socket.listen(4096)?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    eprintln!("soak: upstream accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let verdicts = verdicts.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req| upstream_service(req, verdicts.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok(addr)
}

// ---- The client ------------------------------------------------------------

async fn client_tunnel(proxy: SocketAddr, plan: Plan) -> Result<(), String> {
    let (up_seed, down_seed) = plan_seeds(plan.seed);
    let mut tcp = TcpStream::connect(proxy)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let head = format!(
        "GET /soak HTTP/1.1\r\nHost: soak\r\nConnection: upgrade\r\nUpgrade: soak\r\n\
         x-id: {}\r\nx-order: {}\r\nx-up: {}\r\nx-down: {}\r\nx-seed: {}\r\n\r\n",
        plan.id,
        plan.order.name(),
        plan.up,
        plan.down,
        plan.seed
    );
    tcp.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("request: {e}"))?;
    let res = read_head(&mut tcp).await.map_err(|e| format!("101: {e}"))?;
    if status_of(&res) != 101 || header_of(&res, "upgrade") != Some("soak") {
        return Err(format!("expected a 101, got {:?}", res.lines().next()));
    }
    match plan.order {
        Order::ClientFin => {
            send(&mut tcp, up_seed, plan.up)
                .await
                .map_err(|e| format!("client write: {e}"))?;
            tcp.shutdown()
                .await
                .map_err(|e| format!("client FIN: {e}"))?;
            check("client read", receive(&mut tcp).await, down_seed, plan.down)
        }
        Order::UpstreamFin => {
            check("client read", receive(&mut tcp).await, down_seed, plan.down)?;
            send(&mut tcp, up_seed, plan.up)
                .await
                .map_err(|e| format!("client write: {e}"))?;
            tcp.shutdown().await.map_err(|e| format!("client FIN: {e}"))
        }
        Order::Both => {
            let (mut r, mut w) = tcp.split();
            let write = async {
                send(&mut w, up_seed, plan.up).await?;
                w.shutdown().await
            };
            let (read, write) = tokio::join!(receive(&mut r), write);
            write.map_err(|e| format!("client write: {e}"))?;
            check("client read", read, down_seed, plan.down)
        }
        Order::ClientReset => {
            send(&mut tcp, up_seed, plan.up)
                .await
                .map_err(|e| format!("client write: {e}"))?;
            tcp.set_zero_linger().map_err(|e| e.to_string())?;
            drop(tcp);
            Ok(())
        }
        Order::UpstreamReset => expect_abort("client read", receive(&mut tcp).await),
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Generated,
>;

async fn client_request(
    client: Client,
    proxy: SocketAddr,
    seed: u64,
    len: usize,
) -> Result<(), String> {
    let req = Request::post(format!("http://{proxy}/echo"))
        .body(Generated::new(seed, len))
        .map_err(|e| e.to_string())?;
    let res = client
        .request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    if res.status() != StatusCode::OK {
        return Err(format!("status {}", res.status()));
    }
    let (n, hash) = hash_body(res.into_body()).await;
    if n != len || hash != Generated::hash(seed, len) {
        return Err(format!("echo: {n} bytes back of {len}, or wrong content"));
    }
    Ok(())
}

// ---- The proxy -------------------------------------------------------------

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Waits until the proxy has at most `most` descriptors open; returns the count.
async fn settle_fds(pid: u32, most: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = open_fds(pid);
        if n <= most || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run(o: Options) -> Result<bool, String> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let verdicts = Arc::new(UpstreamVerdicts::default());
    let upstream = start_upstream(verdicts.clone())
        .await
        .map_err(|e| format!("upstream: {e}"))?;

    let mut child = Command::new(&o.proxy)
        .args(["--listen", "127.0.0.1:0", "--upstream"])
        .arg(format!("http://{upstream}"))
        .args(["--upstream-idle-timeout", "1s", "--log-level", "error"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", o.proxy))?;
    let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
    let first = tokio::time::timeout(WAIT, stdout.next_line())
        .await
        .map_err(|_| "the proxy did not start".to_owned())?
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let proxy: SocketAddr = first
        .strip_prefix("listening on http://")
        .and_then(|a| a.parse().ok())
        .ok_or(format!("unexpected first line {first:?}"))?;
    let pid = child.id().ok_or("the proxy exited")?;
    let fds_before = open_fds(pid);

    // The work, shuffled: tunnels and requests interleaved, random sizes and orders.
    let mut rng = o.seed | 1;
    let mut jobs: Vec<(bool, u64)> = (0..o.tunnels)
        .map(|i| (true, i as u64))
        .chain((0..o.requests).map(|i| (false, i as u64)))
        .collect();
    for i in (1..jobs.len()).rev() {
        jobs.swap(i, (xorshift(&mut rng) % (i as u64 + 1)) as usize);
    }
    let client: Client =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let slots = Arc::new(Semaphore::new(o.concurrency));
    let bytes = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(jobs.len());
    for (tunnel, id) in jobs {
        let size = |rng: &mut u64| (xorshift(rng) % (o.max_size as u64 + 1)) as usize;
        let (a, b, seed) = (size(&mut rng), size(&mut rng), xorshift(&mut rng));
        let order = ORDERS[(xorshift(&mut rng) % ORDERS.len() as u64) as usize];
        let permit = slots.clone().acquire_owned().await.expect("open");
        let client = client.clone();
        let bytes = bytes.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let result = if tunnel {
                let plan = Plan {
                    id,
                    order,
                    up: a,
                    down: b,
                    seed,
                };
                bounded("tunnel", client_tunnel(proxy, plan)).await
            } else {
                bounded("request", client_request(client, proxy, seed, a)).await
            };
            bytes.fetch_add(
                if tunnel { (a + b) as u64 } else { 2 * a as u64 },
                Ordering::Relaxed,
            );
            (tunnel, id, order, result)
        }));
    }
    let mut failures: Vec<String> = Vec::new();
    let mut client_failed = HashMap::new();
    let mut request_failures = 0;
    for t in tasks {
        let (tunnel, id, order, result) = t.await.map_err(|e| e.to_string())?;
        if let Err(e) = result {
            if tunnel {
                client_failed.insert(id, format!("tunnel {id} ({}): {e}", order.name()));
            } else {
                request_failures += 1;
                failures.push(format!("request {id}: {e}"));
            }
        }
    }
    let all_upstream = verdicts.wait_for(o.tunnels).await;
    let upstream_failed = std::mem::take(&mut *verdicts.failures.lock().unwrap());
    let mut tunnel_failures = 0;
    for id in 0..o.tunnels as u64 {
        let c = client_failed.remove(&id);
        let u = upstream_failed.get(&id);
        if c.is_some() || u.is_some() {
            tunnel_failures += 1;
            failures.extend(c);
            failures.extend(u.map(|e| format!("tunnel {id} at the upstream: {e}")));
        }
    }
    if !all_upstream {
        failures.push("the upstream did not see every tunnel end".into());
    }
    let elapsed = started.elapsed();
    drop(client);

    // Back to the baseline: idle upstream connections expire after 1 s.
    let fds_after = settle_fds(pid, fds_before).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let mut left = String::new();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(WAIT, stdout.next_line()).await {
        if line.starts_with("shutting down") {
            left = line;
            break;
        }
    }
    let leftovers_ok = left.contains(" 0 connection(s) and 0 tunnel(s)");
    let exited = tokio::time::timeout(WAIT, child.wait()).await;
    let exited_ok = matches!(exited, Ok(Ok(s)) if s.success());

    println!("tunnels: {} ({} failed)", o.tunnels, tunnel_failures);
    println!("requests: {} ({} failed)", o.requests, request_failures);
    println!("bytes: {}", bytes.load(Ordering::Relaxed));
    println!("seconds: {:.1}", elapsed.as_secs_f64());
    println!("fds before: {fds_before}");
    println!("fds after: {fds_after}");
    println!("proxy at shutdown: {left}");
    let mut passed = o.tunnels - tunnel_failures + o.requests - request_failures;
    let mut failed = tunnel_failures + request_failures + usize::from(!all_upstream);
    for (ok, what) in [
        (
            fds_after <= fds_before,
            format!("fds back to {fds_before}: {fds_after} open"),
        ),
        (
            leftovers_ok,
            format!("no connection or tunnel left: {left:?}"),
        ),
        (
            exited_ok,
            format!("the proxy exits 0 on SIGTERM: {exited:?}"),
        ),
    ] {
        if ok {
            passed += 1;
        } else {
            failed += 1;
            failures.push(what);
        }
    }
    println!("failures: {failed}");
    for f in failures.iter().take(20) {
        println!("  {f}");
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match runtime.block_on(run(options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}
