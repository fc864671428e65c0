//! A tunnel's outcome is reported with `tracing`: bytes each way, who sent FIN
//! first, how it ended, and which request it was.

use std::io::Write;
use std::sync::{Arc, Mutex};

use e2e_tests::*;
use proxy_tower::ReverseProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures this thread's log lines at `level` and above, until the guard
/// is dropped.
fn capture(level: tracing::Level) -> (Captured, tracing::subscriber::DefaultGuard) {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(level)
        .with_writer(move || writer.clone())
        .finish();
    (out, tracing::subscriber::set_default(subscriber))
}

// Current-thread runtime: the tunnel task runs on this thread, under the
// subscriber set for it.
#[tokio::test]
async fn tunnel_outcome_is_logged() {
    // A clean end is a DEBUG line.
    let (out, _guard) = capture(tracing::Level::DEBUG);

    let (upstream, mut heads) = raw_upstream().await;
    let proxy = ReverseProxy::new(&format!("http://{upstream}")).unwrap();
    let tunnels = proxy.tunnels();
    let addr = serve(proxy).await;
    let (mut cli, mut srv) = open_tunnel(addr, &mut heads, "websocket").await;
    cli.write_all(b"12345").await.unwrap();
    cli.shutdown().await.unwrap();
    let mut got = Vec::new();
    within("client bytes at upstream", srv.read_to_end(&mut got))
        .await
        .unwrap();
    srv.write_all(b"abc").await.unwrap();
    srv.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("upstream bytes at client", cli.read_to_end(&mut back))
        .await
        .unwrap();
    within("tunnel end", tunnels.wait_idle()).await;

    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("tunnel closed"))
        .unwrap_or_else(|| panic!("no tunnel line in:\n{text}"));
    for part in [
        "client_to_upstream=5",
        "upstream_to_client=3",
        "first_eof=\"client\"",
        "path=\"/chat\"",
        "method=GET",
    ] {
        assert!(line.contains(part), "{part} missing from: {line}");
    }
}

/// The request's `x-request-id` (set by the client, or by tower-http's
/// `SetRequestIdLayer` in front of the proxy) names the tunnel in its log
/// line, and reaches the upstream.
#[tokio::test]
async fn tunnel_log_names_the_request_id() {
    let (out, _guard) = capture(tracing::Level::DEBUG);

    let (upstream, mut heads) = raw_upstream().await;
    let proxy = ReverseProxy::new(&format!("http://{upstream}")).unwrap();
    let tunnels = proxy.tunnels();
    let addr = serve(proxy).await;
    let mut cli = tokio::net::TcpStream::connect(addr).await.unwrap();
    cli.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nX-Request-Id: req-42\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let (head, mut srv) = within("upgrade at the upstream", heads.recv())
        .await
        .unwrap();
    assert_eq!(header_of(&head, "x-request-id"), Some("req-42"), "{head}");
    switch_protocols(&mut srv, "websocket").await;
    let res = within("101", read_head(&mut cli)).await.unwrap();
    assert_eq!(status_of(&res), 101);
    drop((cli, srv));
    within("tunnel end", tunnels.wait_idle()).await;
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("tunnel"))
        .unwrap_or_else(|| panic!("no tunnel line in:\n{text}"));
    assert!(line.contains("request_id=\"req-42\""), "{line}");
}

/// Refusals a client can cause at will (400, 403, 405) are logged at DEBUG, so a
/// client cannot flood the logs; an upstream failure (502) is a WARN line.
#[tokio::test]
async fn client_caused_refusals_log_at_debug() {
    let (out, _guard) = capture(tracing::Level::DEBUG);

    let down = closed_port().await;
    let addr = serve(ReverseProxy::new(&format!("http://{down}")).unwrap()).await;
    let mut cli = tokio::net::TcpStream::connect(addr).await.unwrap();
    for (req, status) in [
        ("GET /a/..%2fb HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", 405),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
            403,
        ),
        ("GET /down HTTP/1.1\r\nHost: x\r\n\r\n", 502),
    ] {
        cli.write_all(req.as_bytes()).await.unwrap();
        let (head, _) = read_response(&mut cli).await;
        assert_eq!(status_of(&head), status, "{req}: {head}");
    }
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let refusals: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("request not forwarded"))
        .collect();
    assert_eq!(refusals.len(), 4, "{text}");
    for line in &refusals {
        let client_caused = ["status=400", "status=403", "status=405"]
            .iter()
            .any(|s| line.contains(s));
        let level = if client_caused { "DEBUG" } else { "WARN" };
        assert!(line.contains(level), "{level} expected: {line}");
    }
}

/// The log lines of `out` at WARN.
fn warnings(out: &Captured) -> (String, usize) {
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let warns = text.lines().filter(|l| l.contains(" WARN ")).count();
    (text, warns)
}

/// A client connection that ends after the proxy has switched protocols and
/// before the 101 is written (here its server task is aborted at that
/// moment): the client's end cannot be upgraded, and the proxy says so at
/// DEBUG: a client can make it happen at will, so it must not fill the logs
/// at WARN.
#[tokio::test]
async fn client_gone_before_the_101_logs_at_debug() {
    use std::convert::Infallible;
    use tower::ServiceExt;

    let (out, _guard) = capture(tracing::Level::DEBUG);
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = ReverseProxy::new(&format!("http://{upstream}")).unwrap();
    let tunnels = proxy.tunnels();
    let (listener, addr) = listener().await;
    let (switched, has_switched) = tokio::sync::oneshot::channel();
    let switched = Arc::new(Mutex::new(Some(switched)));
    // Serves one connection; its response is held back once the proxy has
    // answered, so the 101 is never written.
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let svc = hyper::service::service_fn(move |req| {
            let (proxy, switched) = (proxy.clone(), switched.clone());
            async move {
                let res = proxy.oneshot(req).await;
                if let Some(tx) = switched.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                std::future::pending::<()>().await;
                res.map_err(|e: Infallible| e)
            }
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
            .with_upgrades()
            .await
    });
    let _cli = send_upgrade(addr, "websocket", b"").await;
    let (_, mut srv) = within("the upgrade at the upstream", heads.recv())
        .await
        .unwrap();
    switch_protocols(&mut srv, "websocket").await;
    within("the proxy to switch", has_switched).await.unwrap();
    // The client's connection goes before its 101 does.
    server.abort();
    let _ = server.await;
    // The tunnel gives up and lets the upstream go.
    let mut rest = Vec::new();
    let _ = within("the upstream to be let go", srv.read_to_end(&mut rest)).await;
    within("tunnel end", tunnels.wait_idle()).await;
    let (text, warns) = warnings(&out);
    assert!(
        text.lines()
            .any(|l| l.contains("DEBUG") && l.contains("client connection could not be upgraded")),
        "no DEBUG line for the client's end:\n{text}"
    );
    assert_eq!(warns, 0, "{text}");
}

/// A client's reset ends its tunnel with a DEBUG line (and is passed on to
/// the upstream); an upstream's reset is a WARN line naming the upstream.
#[tokio::test]
async fn resets_log_at_debug_from_the_client_and_at_warn_from_the_upstream() {
    let (out, _guard) = capture(tracing::Level::DEBUG);
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = ReverseProxy::new(&format!("http://{upstream}")).unwrap();
    let tunnels = proxy.tunnels();
    let addr = serve(proxy).await;

    let (cli, mut srv) = open_tunnel(addr, &mut heads, "websocket").await;
    cli.set_zero_linger().unwrap();
    drop(cli);
    let mut rest = Vec::new();
    let _ = within("the reset at the upstream", srv.read_to_end(&mut rest)).await;
    within("tunnel end", tunnels.wait_idle()).await;
    let (text, warns) = warnings(&out);
    let line = text
        .lines()
        .find(|l| l.contains("tunnel failed"))
        .unwrap_or_else(|| panic!("no tunnel line in:\n{text}"));
    assert!(
        line.contains("DEBUG") && line.contains("failed=\"client\""),
        "{line}"
    );
    assert_eq!(warns, 0, "{text}");

    let (mut cli, srv) = open_tunnel(addr, &mut heads, "websocket").await;
    srv.set_zero_linger().unwrap();
    drop(srv);
    let _ = within("the reset at the client", cli.read_to_end(&mut rest)).await;
    within("tunnel end", tunnels.wait_idle()).await;
    let (text, warns) = warnings(&out);
    assert_eq!(warns, 1, "{text}");
    let line = text.lines().find(|l| l.contains(" WARN ")).unwrap();
    assert!(
        line.contains("tunnel failed") && line.contains("failed=\"upstream\""),
        "{line}"
    );
}

/// `Builder::on_tunnel_end` gets what the log line says, typed: bytes each
/// way, who sent FIN first, how it ended, the protocol, the client, the
/// upstream and the request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_tunnel_end_reports_each_tunnel_once() {
    let (upstream, mut heads) = raw_upstream().await;
    let (tx, mut ends) = tokio::sync::mpsc::unbounded_channel();
    let proxy = ReverseProxy::builder(&format!("http://{upstream}"))
        .on_tunnel_end(move |end| {
            let _ = tx.send(end.clone());
        })
        .build()
        .unwrap();
    let addr = serve(proxy).await;
    let (mut cli, mut srv) = open_tunnel(addr, &mut heads, "websocket").await;
    cli.write_all(b"12345").await.unwrap();
    srv.write_all(b"abc").await.unwrap();
    let mut buf = [0u8; 3];
    within("upstream bytes", cli.read_exact(&mut buf))
        .await
        .unwrap();
    srv.shutdown().await.unwrap();
    let mut got = Vec::new();
    within(
        "client bytes and EOF at the client",
        cli.read_to_end(&mut got),
    )
    .await
    .unwrap();
    cli.shutdown().await.unwrap();
    let mut got = Vec::new();
    within("client bytes at upstream", srv.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"12345");
    let end = within("the report", ends.recv()).await.unwrap();
    assert_eq!(end.client_to_upstream, 5);
    assert_eq!(end.upstream_to_client, 3);
    assert_eq!(end.first_eof, Some(proxy_tower::TunnelSide::Upstream));
    assert_eq!(end.ending, proxy_tower::TunnelEnding::Clean);
    assert_eq!(end.protocol.as_deref(), Some("websocket"));
    assert_eq!(end.client, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(end.upstream, format!("http://{upstream}/").as_str());
    assert!(end.duration < WAIT);
    // Once.
    assert!(ends.try_recv().is_err());
}
