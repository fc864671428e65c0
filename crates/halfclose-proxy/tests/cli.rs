//! The `halfclose-proxy` binary, spawned as a process.

use std::process::Stdio;

use e2e_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

mod common;
use common::{BIN, Proxy, admin_addr, admin_get, probe, refuses};

/// In front of a test upstream: a request, an upgrade with half-close both ways,
/// and SIGTERM while the tunnel is open: the tunnel's data still completes, new
/// connections are refused, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_and_shuts_down_gracefully_with_an_open_tunnel() {
    let (upstream, mut heads) = raw_upstream().await;
    let mut proxy = Proxy::in_front_of(upstream, &["--shutdown-grace", "20s"]).await;
    let addr = proxy.addr;

    // A plain request.
    let mut cli = TcpStream::connect(addr).await.unwrap();
    cli.write_all(format!("GET /hello HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, mut srv) = within("request at upstream", heads.recv()).await.unwrap();
    assert!(head.starts_with("GET /hello HTTP/1.1\r\n"), "{head}");
    assert_eq!(header_of(&head, "x-forwarded-for"), Some("127.0.0.1"));
    // `connection: close`: the raw upstream serves one request per connection,
    // so the proxy must not reuse this one from its pool.
    srv.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi")
        .await
        .unwrap();
    drop(srv);
    let (head, body) = read_response(&mut cli).await;
    assert_eq!((status_of(&head), body.as_slice()), (200, &b"hi"[..]));

    // An upgrade; the client half-closes first.
    let (mut cli, mut srv) = open_tunnel(addr, &mut heads, "echo").await;
    cli.write_all(b"from client").await.unwrap();
    cli.shutdown().await.unwrap();
    let mut got = Vec::new();
    within("client data and FIN at upstream", srv.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"from client");

    // SIGTERM with the tunnel half-open.
    proxy.terminate();
    let line = proxy.line_starting("shutting down").await;
    assert!(line.contains("1 tunnel"), "{line}");
    let refused = TcpStream::connect(addr).await;
    assert!(refused.is_err(), "still accepting after SIGTERM");

    // The tunnel still carries the other direction, then the server's FIN.
    srv.write_all(b"reply after SIGTERM").await.unwrap();
    srv.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("reply and FIN at client", cli.read_to_end(&mut back))
        .await
        .unwrap();
    assert_eq!(back, b"reply after SIGTERM");

    let status = within("exit", proxy.child.wait()).await.unwrap();
    assert!(status.success(), "exit status {status}");
}

/// The front door: no flags but `--listen` starts the demo upstream;
/// `probe` against it passes every check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_mode_passes_the_probe() {
    let mut proxy = Proxy::start(&[]).await;
    proxy
        .line_starting("demo upstream on http://127.0.0.1:")
        .await;
    let url = format!("http://{}/echo", proxy.addr);
    let (passed, text) = probe(&[&url]).await;
    assert!(passed, "probe failed:\n{text}");
    assert_eq!(text.matches("PASS").count(), 5, "{text}");

    // The same over HTTP/2 (h2c): an extended CONNECT the proxy bridges to the
    // demo's HTTP/1.1 `Upgrade: echo`, END_STREAM crossing as FIN both ways.
    let (passed, text) = probe(&["--http2", &url]).await;
    assert!(passed, "probe --http2 failed:\n{text}");
    assert_eq!(text.matches("PASS").count(), 5, "{text}");
    assert!(text.contains("extended CONNECT"), "{text}");

    // The demo's page and body echo, through the proxy.
    let mut cli = TcpStream::connect(proxy.addr).await.unwrap();
    cli.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let (head, body) = read_response(&mut cli).await;
    assert_eq!((status_of(&head), body.as_slice()), (200, &b"hello"[..]));

    proxy.stop().await;
}

/// A path that cuts the reverse direction when the client sends FIN (what
/// proxies without half-close support do) fails the probe.
#[tokio::test]
async fn probe_fails_on_a_path_without_half_close() {
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        read_head(&mut tcp).await.unwrap();
        switch_protocols(&mut tcp, "echo").await;
        // Echo the ping, then tear everything down at the client's FIN.
        let mut ping = [0u8; 21];
        tcp.read_exact(&mut ping).await.unwrap();
        tcp.write_all(&ping).await.unwrap();
        let mut sink = Vec::new();
        let _ = tcp.read_to_end(&mut sink).await;
    });
    let (passed, text) = probe(&["--timeout", "5s", &format!("http://{addr}/echo")]).await;
    assert!(!passed, "probe passed a broken path:\n{text}");
    assert!(
        text.contains("FAIL  client FIN, reverse direction"),
        "{text}"
    );
}

/// A relay that closes the client's direction when the server sends its FIN
/// (HAProxy 2.6 does) passes the first four checks of `probe`, and fails the
/// fifth: the server's FIN first while the client keeps sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_fails_on_a_path_that_stops_the_client_at_the_server_fin() {
    let proxy = Proxy::start(&[]).await;
    let behind = proxy.addr;
    let (listener, relay) = listener().await;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let server = TcpStream::connect(behind).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                // Server to client; at the server's FIN, pass it on and stop
                // carrying the client's bytes.
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
                let _ = cw.shutdown().await;
                up.abort();
            });
        }
    });
    let (passed, text) = probe(&["--timeout", "3s", &format!("http://{relay}/echo")]).await;
    assert!(!passed, "probe passed a broken path:\n{text}");
    assert_eq!(text.matches("PASS").count(), 4, "{text}");
    assert!(
        text.contains("FAIL  server FIN first, client keeps sending"),
        "{text}"
    );
    proxy.stop().await;
}

/// The demo's WebSocket endpoint through the proxy, with a real client; and an
/// HTTP/2 (h2c) client on the proxy's listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_websocket_and_h2c_clients() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let proxy = Proxy::start(&[]).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut ws, _) = within(
        "ws handshake",
        tokio_tungstenite::client_async(format!("ws://{}/ws", proxy.addr), tcp),
    )
    .await
    .expect("websocket handshake through the proxy");
    ws.send(Message::text("hello demo")).await.unwrap();
    assert_eq!(
        within("ws echo", ws.next()).await.unwrap().unwrap(),
        Message::text("hello demo")
    );
    ws.close(None).await.unwrap();
    assert!(matches!(
        within("ws close", ws.next()).await,
        Some(Ok(Message::Close(_)))
    ));
    // The demo closed its side after the handshake; closing ours ends the tunnel
    // (held open, it would stay half-closed until the shutdown grace runs out).
    drop(ws);

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::post(format!("http://{}/echo", proxy.addr))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"over h2c",
        )))
        .unwrap();
    let res = within("h2c request", client.request(req)).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    use http_body_util::BodyExt;
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "over h2c"
    );

    proxy.stop().await;
}

/// The proxy closes `cli` (possibly after a 408): the read ends, with nothing
/// else on the way.
async fn expect_cut_off(cli: &mut TcpStream, what: &str) {
    let mut rest = Vec::new();
    let _ = within(what, cli.read_to_end(&mut rest)).await;
    let text = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

/// A client that never finishes its request head is cut off after
/// `--header-read-timeout` (slowloris).
#[tokio::test]
async fn slow_request_head_is_cut_off() {
    let proxy = Proxy::start(&["--header-read-timeout", "500ms"]).await;
    let mut cli = TcpStream::connect(proxy.addr).await.unwrap();
    cli.write_all(b"GET / HTTP/1.1\r\nHost: slow\r\nX-Drip: ")
        .await
        .unwrap();
    expect_cut_off(&mut cli, "the proxy to close a slow connection").await;
    proxy.stop().await;
}

/// A later request head on a keep-alive connection that never completes is
/// cut off after `--header-read-timeout` too, not only the first one (hyper's
/// timer, on a `HeadTimer` of the connection's own).
#[tokio::test]
async fn slow_later_request_head_is_cut_off() {
    let proxy = Proxy::start(&["--header-read-timeout", "500ms"]).await;
    let mut cli = TcpStream::connect(proxy.addr).await.unwrap();
    for _ in 0..2 {
        cli.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = within("a response", read_response(&mut cli)).await;
        assert_eq!(status_of(&head), 200, "{head}");
    }
    cli.write_all(b"GET / HTTP/1.1\r\nHost: slow\r\nX-Drip: ")
        .await
        .unwrap();
    // The idle timeout (75 s) is far away: only the header-read timeout
    // closes the connection within `within`'s bound.
    expect_cut_off(&mut cli, "the proxy to close a slow keep-alive connection").await;
    proxy.stop().await;
}

/// A keep-alive connection that waits between requests longer than the
/// header-read timeout stays open (the idle timeout is the one that closes
/// it, like nginx's `keepalive_timeout`): the next request is served on it.
#[tokio::test]
async fn keep_alive_outlasts_the_header_read_timeout() {
    let proxy = Proxy::start(&["--header-read-timeout", "300ms", "--idle-timeout", "20s"]).await;
    let mut cli = TcpStream::connect(proxy.addr).await.unwrap();
    for wait_ms in [0, 1200] {
        // Long enough for the header-read timer to fire, maybe twice.
        tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
        cli.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = within("a response", read_response(&mut cli)).await;
        assert_eq!(status_of(&head), 200, "after {wait_ms} ms: {head:?}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn bad_input_is_one_line_and_non_zero() {
    for args in [
        vec!["--listen", "nonsense"],
        vec!["--listen", "127.0.0.1:0", "--upstream", "not a url"],
        vec!["--listen", "127.0.0.1:0", "--upstream", "ftp://host/"],
        vec!["--listen", "127.0.0.1:0", "--response-timeout", "soon"],
        vec!["probe", "ftp://example/"],
    ] {
        refuses(&args).await;
    }
}

/// Started with a low soft limit on open files, the proxy raises it to the hard
/// limit (as Go does), so many connections do not run into EMFILE.
#[tokio::test]
async fn raises_the_open_file_limit() {
    let hard = std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .unwrap();
    let mut child = Command::new("sh")
        .args([
            "-c",
            &format!("ulimit -Sn 256 && exec {BIN} --listen 127.0.0.1:0 --log-level warn"),
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    within("first line", stdout.next_line())
        .await
        .unwrap()
        .expect("listening line");
    let pid = child.id().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .unwrap();
    assert_eq!(soft, hard, "{limits}");
    child.kill().await.unwrap();
}

/// A second SIGTERM during the grace period ends the process at once (exit 0),
/// closing the tunnels still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_exits_at_once() {
    let (upstream, mut heads) = raw_upstream().await;
    let mut proxy = Proxy::in_front_of(upstream, &["--shutdown-grace", "1h"]).await;
    let (mut cli, _srv) = open_tunnel(proxy.addr, &mut heads, "echo").await;

    proxy.terminate();
    proxy.line_starting("shutting down").await;
    proxy.terminate();
    proxy.line_starting("second signal").await;
    assert!(within("exit", proxy.child.wait()).await.unwrap().success());
    // "Now": the open tunnel was reset, not closed cleanly.
    let mut rest = Vec::new();
    match within(
        "the client's connection to close",
        cli.read_to_end(&mut rest),
    )
    .await
    {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("a clean close after {n} bytes, expected a reset"),
    }
}

/// When the grace period runs out, the tunnels still open get a FIN each way
/// (a clean close both peers can tell from a crash), then the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_over_closes_tunnels_with_fin() {
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = Proxy::in_front_of(upstream, &["--shutdown-grace", "300ms"]).await;
    let (mut cli, mut srv) = open_tunnel(proxy.addr, &mut heads, "echo").await;
    proxy.stop().await;
    for (side, conn) in [("client", &mut cli), ("upstream", &mut srv)] {
        let mut rest = Vec::new();
        within("EOF", conn.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|e| panic!("{side}: {e}, expected a clean FIN"));
    }
}

/// The policy flags reach the library: the upstream sees the client's Host, an
/// RFC 7239 `Forwarded` and `Via`; only the allowed upgrade protocol passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_flags_are_applied() {
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = Proxy::in_front_of(
        upstream,
        &[
            "--preserve-host",
            "--forwarded",
            "--via",
            "edge",
            "--allow-upgrade",
            "echo",
        ],
    )
    .await;
    let mut cli = TcpStream::connect(proxy.addr).await.unwrap();
    cli.write_all(b"GET /x HTTP/1.1\r\nHost: front.example\r\n\r\n")
        .await
        .unwrap();
    let (head, mut srv) = within("request at upstream", heads.recv()).await.unwrap();
    assert_eq!(header_of(&head, "host"), Some("front.example"), "{head}");
    assert_eq!(
        header_of(&head, "forwarded"),
        Some("for=127.0.0.1;host=front.example;proto=http"),
        "{head}"
    );
    assert_eq!(header_of(&head, "via"), Some("1.1 edge"), "{head}");
    srv.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    drop(srv);
    let (head, _) = read_response(&mut cli).await;
    assert_eq!(status_of(&head), 204);
    assert_eq!(header_of(&head, "via"), Some("1.1 edge"), "{head}");

    let mut ws = send_upgrade(proxy.addr, "websocket", b"").await;
    let (head, _) = read_response(&mut ws).await;
    assert_eq!(
        status_of(&head),
        403,
        "websocket is not in --allow-upgrade: {head}"
    );
    assert!(
        heads.try_recv().is_err(),
        "a refused upgrade reached the upstream"
    );

    proxy.stop().await;
}

/// `--max-connections` counts upgraded connections: while a tunnel holds the only
/// slot, the next connection waits; when the tunnel closes, it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_counts_tunnels() {
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = Proxy::in_front_of(upstream, &["--max-connections", "1"]).await;
    let (mut cli, mut srv) = open_tunnel(proxy.addr, &mut heads, "echo").await;

    let mut second = TcpStream::connect(proxy.addr).await.unwrap(); // waits in the backlog
    second
        .write_all(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // A negative check needs a bound: the request must not be forwarded while
    // the tunnel holds the slot.
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), heads.recv()).await;
    assert!(
        early.is_err(),
        "a second connection was served past --max-connections 1"
    );

    cli.shutdown().await.unwrap();
    srv.shutdown().await.unwrap();
    let (head, mut srv2) = within("the second request once the tunnel closed", heads.recv())
        .await
        .unwrap();
    assert!(head.starts_with("GET /second "), "{head}");
    srv2.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut second).await;
    assert_eq!(status_of(&head), 204);

    proxy.stop().await;
}

/// As many silent sockets as `--max-connections` do not lock clients out: each
/// is closed once the header-read timeout passes, and a real client that comes
/// next gets its answer within that timeout plus one second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_do_not_lock_clients_out() {
    let proxy = Proxy::start(&["--max-connections", "20", "--header-read-timeout", "2s"]).await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    let served = tokio::time::timeout(std::time::Duration::from_secs(3), raw_get(proxy.addr, "/"))
        .await
        .expect("no answer within the header-read timeout plus one second");
    assert_eq!(status_of(&served.0), 200, "{}", served.0);
    // Every silent socket was closed by the proxy.
    for mut s in silent {
        let mut rest = Vec::new();
        within("a silent socket to be closed", s.read_to_end(&mut rest))
            .await
            .ok();
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    }
    proxy.stop().await;
}

/// An HTTP/2 client that sends part of the preface and then nothing is closed
/// after the header-read timeout too.
#[tokio::test]
async fn partial_http2_preface_is_cut_off() {
    let proxy = Proxy::start(&["--header-read-timeout", "500ms"]).await;
    let mut cli = TcpStream::connect(proxy.addr).await.unwrap();
    // The whole preface, but no SETTINGS frame.
    cli.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    within(
        "the proxy to close the connection",
        cli.read_to_end(&mut rest),
    )
    .await
    .ok();
    assert!(rest.is_empty(), "{rest:?}");
    proxy.stop().await;
}

/// At the connection limit, keep-alive connections that sit idle give their
/// slot up to a new client at once (well before any timeout would free one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_shed_at_the_limit() {
    let proxy = Proxy::start(&["--max-connections", "2", "--header-read-timeout", "60s"]).await;
    let addr = proxy.addr;
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (head, _) = read_response(&mut c).await;
        assert_eq!(status_of(&head), 200, "{head}");
        idle.push(c);
    }
    // Both slots are held by idle keep-alive connections; a third client is
    // served without waiting for the 60 s timeout.
    let (head, _) = within("a client at the limit to be served", raw_get(addr, "/")).await;
    assert_eq!(status_of(&head), 200, "{head}");
    // One of the idle connections was closed to make room.
    let mut closed = 0;
    for mut c in idle {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(std::time::Duration::from_millis(500), c.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert!(closed >= 1, "no idle connection was shed");
    proxy.stop().await;
}

/// The proxy starts with its upstream down, answers 502, and serves normally
/// once the upstream listens, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_before_its_upstream() {
    let down = closed_port().await;
    let proxy = Proxy::in_front_of(down, &[]).await;
    let (head, _) = raw_get(proxy.addr, "/early").await;
    assert_eq!(status_of(&head), 502, "{head}");

    let upstream = tokio::net::TcpListener::bind(down).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = upstream.accept().await {
            tokio::spawn(async move {
                if read_head(&mut tcp).await.is_ok() {
                    let _ = tcp
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nup")
                        .await;
                }
            });
        }
    });
    let (head, body) = raw_get(proxy.addr, "/later").await;
    assert_eq!(
        (status_of(&head), body.as_slice()),
        (200, &b"up"[..]),
        "{head}"
    );
    proxy.stop().await;
}

/// A client that sends an upgrade request and its FIN in one go still gets its
/// 101 and its tunnel; the FIN reaches the upstream, and the upstream's answer
/// comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_and_fin_at_once_still_tunnels() {
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = Proxy::in_front_of(upstream, &[]).await;
    let mut cli = send_upgrade(proxy.addr, "echo", b"ping").await;
    cli.shutdown().await.unwrap();
    let (_, mut srv) = within("the upgrade at the upstream", heads.recv())
        .await
        .unwrap();
    switch_protocols(&mut srv, "echo").await;
    let mut got = Vec::new();
    within(
        "client bytes and FIN at the upstream",
        srv.read_to_end(&mut got),
    )
    .await
    .unwrap();
    assert_eq!(got, b"ping");
    srv.write_all(b"pong").await.unwrap();
    srv.shutdown().await.unwrap();
    let head = within("the 101", read_head(&mut cli)).await.unwrap();
    assert_eq!(status_of(&head), 101, "{head}");
    let mut back = Vec::new();
    within("the answer at the client", cli.read_to_end(&mut back))
        .await
        .unwrap();
    assert_eq!(back, b"pong");
    proxy.stop().await;
}

/// An upstream's reset reaches the client as a reset: the binary serves each
/// socket as a `ClientIo`, which the tunnel recovers after the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_reaches_the_client_as_a_reset() {
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = Proxy::in_front_of(upstream, &[]).await;
    let (mut cli, srv) = open_tunnel(proxy.addr, &mut heads, "echo").await;
    srv.set_zero_linger().unwrap();
    drop(srv);
    let mut buf = [0u8; 16];
    match within("the reset at the client", cli.read(&mut buf)).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("client saw a clean close ({n} bytes), not a reset"),
    }
    proxy.stop().await;
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the proxy's fd table")
        .count()
}

/// Waits until the process has at most `most` file descriptors open.
async fn fds_settle(pid: u32, most: usize, what: &str) {
    within(what, async {
        while open_fds(pid) > most {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A burst of BURST concurrent requests through a proxy started with `flags`;
/// returns the proxy and its file descriptors before the burst.
async fn burst_through(flags: &[&str]) -> (Proxy, usize) {
    use std::sync::Arc;
    const BURST: usize = 100;
    // Every request waits for all the others: the burst needs BURST upstream
    // connections at once.
    let barrier = Arc::new(tokio::sync::Barrier::new(BURST));
    let upstream = serve_fn(move |_req| {
        let barrier = barrier.clone();
        async move {
            barrier.wait().await;
            http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")))
        }
    })
    .await;
    let proxy = Proxy::in_front_of(upstream, flags).await;
    let baseline = open_fds(proxy.child.id().unwrap());
    let burst: Vec<_> = (0..BURST)
        .map(|_| tokio::spawn(raw_get(proxy.addr, "/burst")))
        .collect();
    for r in burst {
        let (head, _) = within("a burst response", r).await.unwrap();
        assert_eq!(status_of(&head), 200, "{head}");
    }
    (proxy, baseline)
}

/// After a burst, the idle upstream pool keeps at most `--upstream-max-idle`
/// connections (here with no idle timeout, so only the bound can close them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_pool_keeps_at_most_max_idle_after_a_burst() {
    let (proxy, baseline) =
        burst_through(&["--upstream-max-idle", "4", "--upstream-idle-timeout", "0"]).await;
    let pid = proxy.child.id().unwrap();
    fds_settle(
        pid,
        baseline + 4,
        "the pool to keep at most 4 idle connections",
    )
    .await;
    proxy.terminate();
}

/// After a burst, idle upstream connections expire after
/// `--upstream-idle-timeout` (here with no bound on their number): the proxy's
/// file descriptors come back to their baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_pool_expires_idle_connections() {
    let (proxy, baseline) = burst_through(&[
        "--upstream-max-idle",
        "1000",
        "--upstream-idle-timeout",
        "1s",
    ])
    .await;
    let pid = proxy.child.id().unwrap();
    fds_settle(pid, baseline, "idle upstream connections to expire").await;
    proxy.terminate();
}

/// `--idle-timeout` closes a keep-alive HTTP/1 connection that has no request
/// in flight (here well before the header-read timeout would).
#[tokio::test]
async fn idle_http1_connection_is_closed() {
    let proxy = Proxy::start(&["--idle-timeout", "300ms", "--header-read-timeout", "60s"]).await;
    let mut cli = TcpStream::connect(proxy.addr).await.unwrap();
    cli.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut cli).await;
    assert_eq!(status_of(&head), 200, "{head}");
    let mut rest = Vec::new();
    within(
        "the idle connection to be closed",
        cli.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    assert!(rest.is_empty());
    proxy.stop().await;
}

/// `--idle-timeout` closes an HTTP/2 connection with no open stream (GOAWAY,
/// then close), though the client answers every ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connection_is_closed() {
    let proxy = Proxy::start(&["--idle-timeout", "300ms", "--header-read-timeout", "60s"]).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/", proxy.addr))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = within("an h2c response", send.send_request(req))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    drop(res);
    within("the idle HTTP/2 connection to be closed", conn)
        .await
        .unwrap()
        .expect("a clean close");
    proxy.stop().await;
}

/// `--workers N` runs N worker threads, each with its own listener on the same
/// port; every connection is served whichever worker the kernel gives it to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_the_port() {
    let proxy = Proxy::start(&["--workers", "3"]).await;
    let pid = proxy.child.id().unwrap();
    let workers = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with("proxy-worker-"))
            .count()
    };
    // A thread takes its name once it runs: wait for all three.
    within("three named worker threads", async {
        while workers() < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(workers(), 3);
    let gets: Vec<_> = (0..30)
        .map(|_| tokio::spawn(raw_get(proxy.addr, "/")))
        .collect();
    for g in gets {
        let (head, _) = within("a response", g).await.unwrap();
        assert_eq!(status_of(&head), 200, "{head}");
    }
    proxy.stop().await;
}

/// A closed stdout (`halfclose-proxy | head -1`) does not stop the proxy: it
/// keeps serving and still shuts down cleanly, though it can no longer print.
#[tokio::test]
async fn closed_stdout_is_not_fatal() {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--log-level", "warn"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = within("first line", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    let addr: std::net::SocketAddr = first
        .strip_prefix("listening on http://")
        .unwrap()
        .parse()
        .unwrap();
    drop(lines);
    let (head, _) = raw_get(addr, "/").await;
    assert_eq!(status_of(&head), 200, "{head}");
    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = within("exit", child.wait()).await.unwrap();
    assert!(status.success(), "exit status {status}");
}

/// HTTP/2 keep-alive pings find a peer that stopped answering: a client that
/// sends its preface and SETTINGS, then never reads nor answers a PING, is
/// closed after `--http2-ping-interval` plus as long again (the idle timeout is
/// off here, so only the pings can close it).
#[tokio::test]
async fn unanswered_http2_pings_close_the_connection() {
    let proxy = Proxy::start(&[
        "--http2-ping-interval",
        "200ms",
        "--idle-timeout",
        "0",
        "--header-read-timeout",
        "60s",
    ])
    .await;
    let mut cli = TcpStream::connect(proxy.addr).await.unwrap();
    // The preface and an empty SETTINGS frame (RFC 9113 sections 3.4 and 6.5).
    cli.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    // Read what the proxy sends (its SETTINGS, PINGs, GOAWAY) without ever
    // answering, until it closes the connection.
    let mut sink = Vec::new();
    let _ = within(
        "the proxy to give up on a peer that does not answer pings",
        cli.read_to_end(&mut sink),
    )
    .await;
    proxy.stop().await;
}

/// Every request carries an `X-Request-Id` to the upstream and back to the
/// client: the client's own when it sent one, else a fresh one per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_reach_the_upstream_and_come_back() {
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = Proxy::in_front_of(upstream, &[]).await;
    let mut seen = Vec::new();
    for own in [None, None, Some("client-chose-7")] {
        let mut cli = TcpStream::connect(proxy.addr).await.unwrap();
        let extra = own
            .map(|id| format!("X-Request-Id: {id}\r\n"))
            .unwrap_or_default();
        cli.write_all(format!("GET /x HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes())
            .await
            .unwrap();
        let (head, mut srv) = within("request at the upstream", heads.recv())
            .await
            .unwrap();
        let id = header_of(&head, "x-request-id")
            .unwrap_or_else(|| panic!("no x-request-id upstream: {head}"))
            .to_owned();
        match own {
            Some(own) => assert_eq!(id, own),
            None => assert_eq!(id.len(), 16, "{id}"),
        }
        srv.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        let (res, _) = read_response(&mut cli).await;
        assert_eq!(header_of(&res, "x-request-id"), Some(id.as_str()), "{res}");
        seen.push(id);
    }
    assert_ne!(seen[0], seen[1], "each request gets its own id");
    proxy.stop().await;
}

/// `--max-request-body`: a body announced larger is refused at once, a chunked
/// body that grows past the limit ends with 413 as it streams, and a body
/// within the limit passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_past_the_limit_are_413() {
    let proxy = Proxy::start(&["--max-request-body", "1k"]).await;
    let post = |head: String, body: Vec<u8>| async move {
        let mut cli = TcpStream::connect(proxy.addr).await.unwrap();
        cli.write_all(head.as_bytes()).await.unwrap();
        // The proxy may answer and close before taking it all.
        let _ = cli.write_all(&body).await;
        read_response(&mut cli).await
    };
    let (head, _) = post(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n".into(),
        vec![b'a'; 2000],
    )
    .await;
    assert_eq!(status_of(&head), 413, "{head}");

    let mut chunked = Vec::new();
    for _ in 0..4 {
        chunked.extend_from_slice(b"200\r\n");
        chunked.extend_from_slice(&[b'b'; 0x200]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (head, _) = post(
        "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
        chunked,
    )
    .await;
    assert_eq!(status_of(&head), 413, "{head}");

    let (head, body) = post(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n".into(),
        vec![b'c'; 500],
    )
    .await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(body, vec![b'c'; 500]);
    proxy.stop().await;
}

/// `--upstream` twice: requests spread over both; with one of them down,
/// clients still get every answer (the unsent requests go to the other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_upstreams_are_balanced() {
    let named = |name: &'static str| {
        serve_fn(move |_req| async move {
            http::Response::new(http_body_util::Full::new(bytes::Bytes::from(name)))
        })
    };
    let (a, b) = (named("a").await, named("b").await);
    let down = closed_port().await;
    let (ua, ub, ud) = (
        format!("http://{a}"),
        format!("http://{b}"),
        format!("http://{down}"),
    );
    let proxy = Proxy::start(&["--upstream", &ua, "--upstream", &ub]).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let (head, body) = raw_get(proxy.addr, "/").await;
        assert_eq!(status_of(&head), 200, "{head}");
        seen.insert(body);
    }
    assert_eq!(seen.len(), 2, "both upstreams answered");
    proxy.stop().await;

    let proxy = Proxy::start(&["--upstream", &ua, "--upstream", &ud]).await;
    for _ in 0..20 {
        let (head, body) = raw_get(proxy.addr, "/").await;
        assert_eq!(
            (status_of(&head), body.as_slice()),
            (200, &b"a"[..]),
            "{head}"
        );
    }
    proxy.stop().await;
}

/// The value of a sample of `name` whose labels include `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// `--admin-listen`: `/healthz`, `/readyz` (503 once the upstream is gone),
/// and `/metrics` in the Prometheus text format, whose counters match what
/// the test did: requests by class, a tunnel with its bytes and FIN order, a
/// half-close timeout, a reset passed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_what_happened() {
    let (upstream, mut heads) = raw_upstream().await;
    let mut proxy = Proxy::in_front_of(
        upstream,
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--tunnel-half-close-timeout",
            "300ms",
        ],
    )
    .await;
    let admin = admin_addr(&mut proxy).await;
    assert_eq!(admin_get(&admin, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(admin_get(&admin, "/readyz").await.0, 200);

    // Three plain requests: 204, 204, 404.
    for status in ["204 No Content", "204 No Content", "404 Not Found"] {
        let mut cli = TcpStream::connect(proxy.addr).await.unwrap();
        cli.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (_, mut srv) = within("request", heads.recv()).await.unwrap();
        srv.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
            .await
            .unwrap();
        read_response(&mut cli).await;
    }
    // A clean tunnel: 5 bytes up, 3 down, the client's FIN first.
    let (mut cli, mut srv) = open_tunnel(proxy.addr, &mut heads, "echo").await;
    cli.write_all(b"12345").await.unwrap();
    cli.shutdown().await.unwrap();
    let mut got = Vec::new();
    within("EOF upstream", srv.read_to_end(&mut got))
        .await
        .unwrap();
    srv.write_all(b"abc").await.unwrap();
    srv.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("EOF at the client", cli.read_to_end(&mut back))
        .await
        .unwrap();
    // A tunnel left half-closed until the half-close timeout ends it.
    let (mut cli2, mut srv2) = open_tunnel(proxy.addr, &mut heads, "echo").await;
    cli2.shutdown().await.unwrap();
    within("EOF upstream", srv2.read_to_end(&mut got))
        .await
        .unwrap();
    let _ = within("the timeout to end the tunnel", cli2.read_to_end(&mut back)).await;
    // An upstream reset, passed on to the client.
    let (mut cli3, srv3) = open_tunnel(proxy.addr, &mut heads, "echo").await;
    srv3.set_zero_linger().unwrap();
    drop(srv3);
    let _ = within("the reset", cli3.read_to_end(&mut back)).await;

    let scrape = within("metrics to settle", async {
        loop {
            let (status, text) = admin_get(&admin, "/metrics").await;
            assert_eq!(status, 200);
            let lines = text.lines().map(|l| Ok(l.to_owned()));
            let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
            if sample(&scrape, "proxy_tunnels_open", &[]) == 0.0
                && sample(&scrape, "proxy_tunnels_closed_total", &[]) >= 3.0
            {
                return scrape;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        sample(&scrape, "proxy_requests_total", &[("class", "2xx")]),
        2.0
    );
    assert_eq!(
        sample(&scrape, "proxy_requests_total", &[("class", "4xx")]),
        1.0
    );
    assert_eq!(
        sample(&scrape, "proxy_requests_total", &[("class", "1xx")]),
        3.0
    );
    assert_eq!(sample(&scrape, "proxy_tunnels_opened_total", &[]), 3.0);
    assert_eq!(
        sample(&scrape, "proxy_tunnels_closed_total", &[("how", "clean")]),
        1.0
    );
    assert_eq!(
        sample(
            &scrape,
            "proxy_tunnels_closed_total",
            &[("how", "half_close_timeout")]
        ),
        1.0
    );
    assert_eq!(
        sample(&scrape, "proxy_tunnels_closed_total", &[("how", "reset")]),
        1.0
    );
    assert_eq!(
        sample(&scrape, "proxy_resets_passed_total", &[("side", "client")]),
        1.0
    );
    assert_eq!(
        sample(
            &scrape,
            "proxy_tunnel_bytes_total",
            &[("direction", "client_to_upstream")]
        ),
        5.0
    );
    assert_eq!(
        sample(
            &scrape,
            "proxy_tunnel_bytes_total",
            &[("direction", "upstream_to_client")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &scrape,
            "proxy_tunnel_first_eof_total",
            &[("side", "client")]
        ),
        2.0
    );

    proxy.stop().await;
}

/// `/readyz` says 503 when no upstream takes connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_without_an_upstream() {
    let mut proxy =
        Proxy::in_front_of(closed_port().await, &["--admin-listen", "127.0.0.1:0"]).await;
    let admin = admin_addr(&mut proxy).await;
    assert_eq!(admin_get(&admin, "/healthz").await.0, 200);
    assert_eq!(admin_get(&admin, "/readyz").await.0, 503);
    assert_eq!(admin_get(&admin, "/nothing").await.0, 404);
    proxy.stop().await;
}

/// The admin listener keeps answering after 100 silent connections: at its
/// cap of 64, a new connection makes those that never sent a request close,
/// so `/healthz` answers at once (well before the header-read timeout could
/// free a slot), and no more than 64 admin connections are ever open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_answers_after_100_silent_connections() {
    let mut proxy = Proxy::start(&["--admin-listen", "127.0.0.1:0", "--workers", "1"]).await;
    let admin = admin_addr(&mut proxy).await;
    assert_eq!(admin_get(&admin, "/healthz").await.0, 200);
    let pid = proxy.child.id().unwrap();
    let baseline = open_fds(pid);
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(&admin).await.unwrap());
    }
    // The admin header-read timeout is 5 s: only the cap's shedding answers
    // within 2 s.
    let answered = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        admin_get(&admin, "/healthz"),
    )
    .await
    .expect("/healthz behind 100 silent connections");
    assert_eq!(answered, (200, "ok\n".into()));
    // Connections are accepted in order: all 100 silent ones were taken
    // before the one that got its answer, and at most 64 are open.
    let open = open_fds(pid) - baseline;
    assert!(
        open <= 64,
        "{open} admin connections open past the cap of 64"
    );
    drop(silent);
    proxy.stop().await;
}

/// An admin connection that sends nothing is closed after the header-read
/// timeout (`--header-read-timeout`, at most 5 s on the admin port): hyper's
/// timer starts at the connection's first poll.
#[tokio::test]
async fn silent_admin_connection_is_closed() {
    let mut proxy = Proxy::start(&[
        "--admin-listen",
        "127.0.0.1:0",
        "--header-read-timeout",
        "300ms",
    ])
    .await;
    let admin = admin_addr(&mut proxy).await;
    let mut silent = TcpStream::connect(&admin).await.unwrap();
    let mut rest = Vec::new();
    let _ = within(
        "the admin port to close a silent connection",
        silent.read_to_end(&mut rest),
    )
    .await;
    let text = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    proxy.stop().await;
}

/// `--health-check PATH`: an upstream whose check fails stops getting
/// requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_takes_a_failing_upstream_out() {
    let a = serve_fn(|_req| async {
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from("a")))
    })
    .await;
    let b = serve_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let mut res = http::Response::new(http_body_util::Full::new(bytes::Bytes::from("b")));
        if req.uri().path() == "/health" {
            *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        }
        res
    })
    .await;
    let (ua, ub) = (format!("http://{a}"), format!("http://{b}"));
    let proxy = Proxy::start(&[
        "--upstream",
        &ua,
        "--upstream",
        &ub,
        "--health-check",
        "/health",
        "--health-check-interval",
        "100ms",
    ])
    .await;
    // Once the check has run, only `a` answers.
    within("b to be taken out", async {
        let mut only_a = 0;
        while only_a < 30 {
            let (head, body) = raw_get(proxy.addr, "/").await;
            assert_eq!(status_of(&head), 200, "{head}");
            only_a = if body == b"a" { only_a + 1 } else { 0 };
        }
    })
    .await;
    proxy.stop().await;
}

/// `--upstream-max-connections` and `--upstream-queue-timeout` as written:
/// with a cap of 2 and an upstream that holds every request, two requests
/// reach it on two connections and a third is answered 503 after the wait;
/// `--http2-max-streams` is what an HTTP/2 client is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_cap_and_client_streams_as_written() {
    let (upstream, mut held) = raw_upstream().await;
    let mut proxy = Proxy::in_front_of(
        upstream,
        &[
            "--workers",
            "1",
            "--upstream-max-connections",
            "2",
            "--upstream-queue-timeout",
            "200ms",
            "--http2-max-streams",
            "7",
        ],
    )
    .await;
    let _ = proxy.line_starting("forwarding to").await;
    let addr = proxy.addr;
    let first = tokio::spawn(raw_get(addr, "/1"));
    let second = tokio::spawn(raw_get(addr, "/2"));
    let (_, srv1) = within("the first request", held.recv()).await.unwrap();
    let (_, srv2) = within("the second request", held.recv()).await.unwrap();
    let (head, _) = within("the third answer", raw_get(addr, "/3")).await;
    assert_eq!(status_of(&head), 503, "{head}");
    assert!(held.try_recv().is_err(), "a third upstream connection");
    drop((srv1, srv2));
    for held in [first, second] {
        let (head, _) = within("a held answer", held).await.unwrap();
        assert_eq!(status_of(&head), 502, "{head}");
    }

    // An HTTP/2 client learns the stream limit from the proxy's SETTINGS.
    // hyper's client reads it into its connection handle when a request is
    // handed over: after a first exchange (the SETTINGS came before its
    // answer), the second one shows it.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let (seen_tx, seen) = tokio::sync::watch::channel(0usize);
    tokio::spawn(async move {
        let mut conn = std::pin::pin!(conn);
        let _ = std::future::poll_fn(|cx| {
            let polled = conn.as_mut().poll(cx);
            seen_tx.send_replace(conn.current_max_send_streams());
            polled
        })
        .await;
    });
    for _ in 0..2 {
        let req = http::Request::get(format!("http://{addr}/"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let answer = tokio::spawn(sender.send_request(req));
        let (_, mut srv) = within("the HTTP/2 request", held.recv()).await.unwrap();
        srv.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let res = within("the HTTP/2 answer", answer).await.unwrap().unwrap();
        assert_eq!(res.status(), 200);
    }
    let mut seen = seen;
    within("the stream limit", seen.wait_for(|n| *n == 7))
        .await
        .unwrap();
}
