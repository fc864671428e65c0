//! The binary under a low limit on open files (`ulimit -n` in a shell that
//! then runs it): the connection limit derived from it, the proxy shedding
//! at that limit instead of running out of descriptors, and its listeners
//! surviving when it does run out.

use e2e_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{Proxy, admin_addr, admin_get, warnings};

/// An upstream that answers every request with `101` to `Upgrade: echo`,
/// then echoes bytes until EOF and sends its own FIN.
async fn echo_upstream() -> std::net::SocketAddr {
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut tcp).await.is_err() {
                    return;
                }
                switch_protocols(&mut tcp, "echo").await;
                let (mut rd, mut wr) = tcp.split();
                if tokio::io::copy(&mut rd, &mut wr).await.is_ok() {
                    let _ = wr.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Sends a few bytes naming `i` through a tunnel and reads their echo.
async fn echo(tunnel: &mut TcpStream, i: usize) {
    let msg = format!("tunnel {i:05}");
    tunnel.write_all(msg.as_bytes()).await.unwrap();
    let mut back = vec![0; msg.len()];
    within("the echo", tunnel.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(back, msg.as_bytes());
}

/// Waits for the 101 of an upgrade request sent on `tunnel`.
async fn switched(tunnel: &mut TcpStream) {
    let head = within("the 101", read_head(tunnel)).await.unwrap();
    assert_eq!(status_of(&head), 101, "{head}");
}

/// Ends a tunnel with a FIN from the client; the upstream's FIN comes back.
async fn close(mut tunnel: TcpStream) {
    tunnel.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("the tunnel to end", tunnel.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());
}

/// With 800 open files, the default `--max-connections` is derived from
/// them (here (800 - 64 - 16 - 512) / 2 = 104), and said at start. More
/// tunnels than the descriptors could hold (104 open, then 300 more clients,
/// two descriptors each in the proxy): the proxy sheds at its own limit, the
/// clients past it wait, one WARN line says so, every open tunnel keeps
/// working, and the waiting clients are served once tunnels close. With a
/// default that ignored the descriptors (10,000 until 2026-12-02), the proxy
/// ran out of them instead: accepts and upstream connects failing with
/// EMFILE, and a WARN line every 50 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sheds_at_the_derived_limit_before_running_out_of_fds() {
    const LIMIT: usize = 104;
    const MORE: usize = 300;
    let upstream = format!("http://{}", echo_upstream().await);
    let (mut proxy, mut logs) = Proxy::start_with_fd_limit(
        800,
        &[
            "--upstream",
            &upstream,
            "--workers",
            "1",
            "--upstream-max-idle",
            "0",
        ],
    )
    .await;
    let line = proxy.line_starting("max connections ").await;
    assert_eq!(
        line,
        format!("max connections {LIMIT} (open file limit 800)")
    );

    let mut open = Vec::new();
    for i in 0..LIMIT {
        let mut t = send_upgrade(proxy.addr, "echo", b"").await;
        switched(&mut t).await;
        echo(&mut t, i).await;
        open.push(t);
    }
    let mut waiting = Vec::new();
    for _ in 0..MORE {
        waiting.push(send_upgrade(proxy.addr, "echo", b"").await);
    }
    logs.wait_for(&[" WARN ", "connection limit reached", "max_connections=104"])
        .await;
    // Every open tunnel still carries bytes.
    for (i, t) in open.iter_mut().enumerate() {
        echo(t, i).await;
    }
    // A negative check needs a bound: no client past the limit is answered
    // while every slot is taken.
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        waiting[0].read(&mut byte),
    )
    .await;
    assert!(
        early.is_err(),
        "a client was served past the limit: {early:?}"
    );

    // Tunnels close: the waiting clients are served, in turn.
    for t in open {
        close(t).await;
    }
    for (i, mut t) in waiting.into_iter().enumerate() {
        switched(&mut t).await;
        echo(&mut t, i).await;
        close(t).await;
    }

    proxy.stop().await;
    let lines = logs.all().await;
    let warns = warnings(&lines);
    assert_eq!(warns.len(), 1, "one WARN line, for the limit: {warns:#?}");
    assert!(
        !lines.iter().any(|l| l.contains("Too many open files")),
        "{lines:#?}"
    );
}

/// The proxy's and the admin port's accept loops survive running out of
/// file descriptors (`--max-connections` set past what 256 open files allow,
/// and silent clients taking them all): each says so once, waits, and
/// accepts again once descriptors are free; `/healthz` is answered and the
/// admin port keeps answering. The admin loop used to end for good at its
/// first accept error, and the proxy's wrote a WARN line every 50 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_survive_running_out_of_fds() {
    let upstream = serve_fn(|_req| async {
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from("up")))
    })
    .await;
    let upstream = format!("http://{upstream}");
    let (mut proxy, mut logs) = Proxy::start_with_fd_limit(
        256,
        &[
            "--upstream",
            &upstream,
            "--workers",
            "1",
            "--admin-listen",
            "127.0.0.1:0",
            "--max-connections",
            "1000",
            "--header-read-timeout",
            "60s",
        ],
    )
    .await;
    let line = proxy.line_starting("max connections ").await;
    assert_eq!(
        line,
        "max connections 1000 (set by --max-connections; open file limit 256)"
    );
    logs.wait_for(&[" WARN ", "more than the open file limit allows"])
        .await;
    let admin = admin_addr(&mut proxy).await;
    assert_eq!(admin_get(&admin, "/healthz").await.0, 200);

    // Silent clients until the proxy runs out of descriptors.
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    logs.wait_for(&[" WARN ", "accept failed", "listener=\"proxy\""])
        .await;
    // The admin port cannot take a connection either...
    let mut health = TcpStream::connect(&admin).await.unwrap();
    health
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await
        .unwrap();
    logs.wait_for(&[" WARN ", "accept failed", "listener=\"admin\""])
        .await;
    // ... until descriptors are free again.
    drop(silent);
    let (head, body) = read_response(&mut health).await;
    assert_eq!((status_of(&head), body.as_slice()), (200, &b"ok\n"[..]));
    assert_eq!(admin_get(&admin, "/healthz").await, (200, "ok\n".into()));
    let (head, body) = raw_get(proxy.addr, "/").await;
    assert_eq!((status_of(&head), body.as_slice()), (200, &b"up"[..]));

    proxy.stop().await;
    let lines = logs.all().await;
    let accept_failures: Vec<_> = warnings(&lines)
        .into_iter()
        .filter(|l| l.contains("accept failed"))
        .collect();
    assert_eq!(
        accept_failures.len(),
        2,
        "one line per listener: {accept_failures:#?}"
    );
}
