//! Go's `TestReverseProxyWebSocketHalfTCP` (Go issue 35892) end to end: a raw TCP
//! client sends an upgrade request through the proxy to an upstream that answers
//! 101 and then uses the raw connection. Each case asserts what the Go case
//! asserts. The proxy is served by hyper-util and by axum.

use std::net::{Shutdown, SocketAddr};

use e2e_tests::*;
use proxy_tower::ReverseProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug)]
enum Server {
    Hyper,
    Axum,
}

async fn serve_proxy(server: Server, upstream: SocketAddr) -> SocketAddr {
    let proxy = ReverseProxy::new(&format!("http://{upstream}")).unwrap();
    match server {
        Server::Hyper => serve(proxy).await,
        Server::Axum => {
            let app = axum::Router::new().fallback_service(proxy);
            let (listener, addr) = listener().await;
            tokio::spawn(async move { axum::serve(listener, app).await });
            addr
        }
    }
}

/// (client, server) sockets joined through the proxy by an upgrade, with the
/// 101 checked as the Go test checks it.
async fn upgraded(server: Server, early: &[u8]) -> (TcpStream, TcpStream, String) {
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = serve_proxy(server, upstream).await;
    let mut cli = send_upgrade(proxy, "websocket", early).await;
    let (head, mut srv) = within("upgrade request at the upstream", heads.recv())
        .await
        .unwrap();
    switch_protocols(&mut srv, "WebSocket").await;
    let res = within("101 at the client", read_head(&mut cli))
        .await
        .unwrap();
    assert_eq!(status_of(&res), 101, "{res}");
    assert_eq!(
        header_of(&res, "upgrade")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("websocket")
    );
    assert_eq!(
        header_of(&res, "connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("upgrade")
    );
    (cli, srv, head)
}

async fn must_read(conn: &mut TcpStream, msg: &str) {
    let mut buf = vec![0; msg.len()];
    within("read", conn.read_exact(&mut buf))
        .await
        .expect("read");
    assert_eq!(String::from_utf8_lossy(&buf), msg);
}

async fn must_read_eof(conn: &mut TcpStream) {
    let mut b = [0u8; 1];
    assert_eq!(
        within("EOF", conn.read(&mut b)).await.expect("read"),
        0,
        "expected EOF"
    );
}

async fn must_write(conn: &mut TcpStream, msg: &str) {
    within("write", conn.write_all(msg.as_bytes()))
        .await
        .expect("write");
}

fn close_read(conn: TcpStream) -> TcpStream {
    let std = conn.into_std().unwrap();
    std.shutdown(Shutdown::Read).unwrap();
    TcpStream::from_std(std).unwrap()
}

async fn server_close_read(server: Server) {
    let (mut cli, srv, _) = upgraded(server, b"").await;
    let mut srv = close_read(srv);
    must_write(&mut srv, "server sends").await;
    must_read(&mut cli, "server sends").await;
}

async fn server_close_write(server: Server) {
    let (mut cli, mut srv, _) = upgraded(server, b"").await;
    srv.shutdown().await.unwrap();
    must_write(&mut cli, "client sends").await;
    must_read(&mut srv, "client sends").await;
    must_read_eof(&mut cli).await;
}

async fn client_close_read(server: Server) {
    let (cli, mut srv, _) = upgraded(server, b"").await;
    let mut cli = close_read(cli);
    must_write(&mut cli, "client sends").await;
    must_read(&mut srv, "client sends").await;
}

async fn client_close_write(server: Server) {
    let (mut cli, mut srv, _) = upgraded(server, b"").await;
    cli.shutdown().await.unwrap();
    must_write(&mut srv, "server sends").await;
    must_read(&mut cli, "server sends").await;
    must_read_eof(&mut srv).await;
}

#[tokio::test]
async fn server_close_read_hyper() {
    server_close_read(Server::Hyper).await;
}
#[tokio::test]
async fn server_close_read_axum() {
    server_close_read(Server::Axum).await;
}
#[tokio::test]
async fn server_close_write_hyper() {
    server_close_write(Server::Hyper).await;
}
#[tokio::test]
async fn server_close_write_axum() {
    server_close_write(Server::Axum).await;
}
#[tokio::test]
async fn client_close_read_hyper() {
    client_close_read(Server::Hyper).await;
}
#[tokio::test]
async fn client_close_read_axum() {
    client_close_read(Server::Axum).await;
}
#[tokio::test]
async fn client_close_write_hyper() {
    client_close_write(Server::Hyper).await;
}
#[tokio::test]
async fn client_close_write_axum() {
    client_close_write(Server::Axum).await;
}

/// Beyond Go: after the client's FIN reaches the server, the server keeps
/// sending, then closes; both FINs arrive and the tunnel is gone.
#[tokio::test]
async fn both_directions_close_in_turn() {
    for server in [Server::Hyper, Server::Axum] {
        let (mut cli, mut srv, _) = upgraded(server, b"").await;
        must_write(&mut cli, "last words").await;
        cli.shutdown().await.unwrap();
        must_read(&mut srv, "last words").await;
        must_read_eof(&mut srv).await;
        must_write(&mut srv, "reply after your FIN").await;
        srv.shutdown().await.unwrap();
        must_read(&mut cli, "reply after your FIN").await;
        must_read_eof(&mut cli).await;
    }
}

/// Bytes the client sends right behind the upgrade request head, before the 101,
/// reach the upstream once the upgrade succeeded (Go loses them: Go issue 80875).
#[tokio::test]
async fn bytes_behind_the_upgrade_request_are_not_lost() {
    for server in [Server::Hyper, Server::Axum] {
        let (mut cli, mut srv, _) = upgraded(server, b"early bytes").await;
        must_read(&mut srv, "early bytes").await;
        must_write(&mut cli, " then more").await;
        must_read(&mut srv, " then more").await;
    }
}

/// The upstream sees one Connection: upgrade and the Upgrade; the client's 101
/// carries no other hop-by-hop header (Go leaks Keep-Alive and Connection-listed
/// ones there).
#[tokio::test]
async fn upgrade_headers_both_ways() {
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = serve_proxy(Server::Hyper, upstream).await;
    let mut cli = TcpStream::connect(proxy).await.unwrap();
    cli.write_all(
        b"GET /chat HTTP/1.1\r\nHost: front\r\nConnection: keep-alive, Upgrade, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, mut srv) = within("request at upstream", heads.recv()).await.unwrap();
    assert_eq!(
        header_of(&head, "connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("upgrade"),
        "{head}"
    );
    assert_eq!(header_of(&head, "upgrade"), Some("websocket"));
    assert_eq!(header_of(&head, "x-hop"), None, "{head}");
    assert_eq!(header_of(&head, "keep-alive"), None, "{head}");
    assert_eq!(header_of(&head, "x-forwarded-for"), Some("127.0.0.1"));
    srv.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nUpgrade: websocket\r\nX-Kept: yes\r\n\r\n",
    )
    .await
    .unwrap();
    let res = within("101", read_head(&mut cli)).await.unwrap();
    assert_eq!(status_of(&res), 101);
    assert_eq!(header_of(&res, "keep-alive"), None, "{res}");
    assert_eq!(header_of(&res, "x-secret"), None, "{res}");
    assert_eq!(header_of(&res, "x-kept"), Some("yes"), "{res}");
    assert_eq!(header_of(&res, "upgrade"), Some("websocket"));
}

/// The proxy counts its open tunnels, and `wait_idle` completes once the last
/// one has ended (what a graceful shutdown waits for).
#[tokio::test]
async fn tunnels_are_counted_until_both_sides_close() {
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = ReverseProxy::new(&format!("http://{upstream}")).unwrap();
    let tunnels = proxy.tunnels();
    let addr = serve(proxy).await;
    let (mut cli, mut srv) = open_tunnel(addr, &mut heads, "websocket").await;
    assert_eq!(tunnels.active(), 1);
    let idle = tokio::spawn({
        let tunnels = tunnels.clone();
        async move { tunnels.wait_idle().await }
    });
    cli.shutdown().await.unwrap();
    must_read_eof(&mut srv).await;
    assert!(!idle.is_finished(), "half-closed tunnel counted as gone");
    srv.shutdown().await.unwrap();
    must_read_eof(&mut cli).await;
    within("tunnel count back to zero", idle).await.unwrap();
    assert_eq!(tunnels.active(), 0);
}

/// An abortive close (RST) by the client becomes an abortive close towards the
/// upstream, not a FIN that would look like a clean end.
#[tokio::test]
async fn client_reset_reaches_the_upstream_as_a_reset() {
    let (mut cli, mut srv, _) = upgraded(Server::Hyper, b"").await;
    must_write(&mut cli, "before").await;
    must_read(&mut srv, "before").await;
    cli.set_zero_linger().unwrap();
    drop(cli);
    let mut buf = [0u8; 16];
    let res = within("the reset at the upstream", srv.read(&mut buf)).await;
    match res {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("upstream saw a clean close ({n} bytes), not a reset"),
    }
}

/// Bytes the upstream sends right behind its 101 (same packet) reach the client.
#[tokio::test]
async fn bytes_behind_the_101_are_not_lost() {
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = serve_proxy(Server::Hyper, upstream).await;
    let mut cli = send_upgrade(proxy, "websocket", b"").await;
    let (_, mut srv) = within("upgrade at upstream", heads.recv()).await.unwrap();
    srv.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nhello at once")
        .await
        .unwrap();
    assert_eq!(
        status_of(&within("101", read_head(&mut cli)).await.unwrap()),
        101
    );
    must_read(&mut cli, "hello at once").await;
    srv.shutdown().await.unwrap();
    must_read_eof(&mut cli).await;
}

/// And the other way: an upstream's reset reaches the client as a reset, when the
/// server wraps its sockets in `ResettableIo` (the test server does; the binary
/// serves `ClientIo`, see its own test).
#[tokio::test]
async fn upstream_reset_reaches_the_client_as_a_reset() {
    let (mut cli, mut srv, _) = upgraded(Server::Hyper, b"").await;
    must_write(&mut srv, "before").await;
    must_read(&mut cli, "before").await;
    srv.set_zero_linger().unwrap();
    drop(srv);
    let mut buf = [0u8; 16];
    match within("the reset at the client", cli.read(&mut buf)).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("client saw a clean close ({n} bytes), not a reset"),
    }
}

/// `Tunnels::shutdown` ends the tunnels still open with a FIN to each side, and
/// later tunnels too; `wait_idle` then completes.
#[tokio::test]
async fn tunnels_shutdown_sends_fin_both_ways() {
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = ReverseProxy::new(&format!("http://{upstream}")).unwrap();
    let tunnels = proxy.tunnels();
    let addr = serve(proxy).await;
    let (mut cli, mut srv) = open_tunnel(addr, &mut heads, "websocket").await;
    must_write(&mut cli, "in flight").await;
    must_read(&mut srv, "in flight").await;
    tunnels.shutdown();
    must_read_eof(&mut srv).await;
    must_read_eof(&mut cli).await;
    within("no tunnel left", tunnels.wait_idle()).await;
    // A tunnel opened after the shutdown is ended as well.
    let (mut cli, mut srv) = open_tunnel(addr, &mut heads, "websocket").await;
    must_read_eof(&mut srv).await;
    must_read_eof(&mut cli).await;
}

/// `Tunnels::reset` resets both sides.
#[tokio::test]
async fn tunnels_abort_resets_both_sides() {
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = ReverseProxy::new(&format!("http://{upstream}")).unwrap();
    let tunnels = proxy.tunnels();
    let addr = serve(proxy).await;
    let (mut cli, mut srv) = open_tunnel(addr, &mut heads, "websocket").await;
    tunnels.reset();
    for (side, conn) in [("upstream", &mut srv), ("client", &mut cli)] {
        let mut b = [0u8; 8];
        match within("a reset", conn.read(&mut b)).await {
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{side}: {e}"),
            Ok(n) => panic!("{side}: read {n} bytes or EOF, expected a reset"),
        }
    }
    within("no tunnel left", tunnels.wait_idle()).await;
}
