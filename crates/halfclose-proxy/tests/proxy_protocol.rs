//! `--proxy-protocol`: the address in a PROXY protocol header (v1 or v2)
//! is the client's; untrusted sources, malformed and truncated headers
//! are closed without a hang.

use std::time::Duration;

use e2e_tests::*;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::Proxy;

/// An upstream answering with the X-Forwarded-For it got.
async fn xff_upstream() -> std::net::SocketAddr {
    serve_fn(|req: Request<Incoming>| async move {
        let xff = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        Response::new(xff)
    })
    .await
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n";

/// Sends `header` and a GET in one write: the X-Forwarded-For the upstream
/// saw.
async fn xff_after(proxy: std::net::SocketAddr, header: &[u8]) -> String {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    let mut msg = header.to_vec();
    msg.extend_from_slice(GET);
    tcp.write_all(&msg).await.unwrap();
    let (head, body) = read_response(&mut tcp).await;
    assert_eq!(status_of(&head), 200, "{head}");
    String::from_utf8(body).unwrap()
}

fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(body);
    h
}

/// The connection ends (EOF or reset) without a response.
async fn closed_without_answer(tcp: &mut TcpStream) {
    let mut buf = Vec::new();
    let read = within("the proxy to close", tcp.read_to_end(&mut buf)).await;
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    // A reset is a close too.
    let _ = read;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_address_is_the_client_address() {
    let up = xff_upstream().await;
    let proxy = Proxy::in_front_of(up, &["--proxy-protocol"]).await;
    assert_eq!(
        xff_after(proxy.addr, b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 443\r\n").await,
        "192.0.2.7"
    );
    assert_eq!(
        xff_after(
            proxy.addr,
            b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n"
        )
        .await,
        "2001:db8::7"
    );
    let mut body = vec![198, 51, 100, 9, 10, 0, 0, 1];
    body.extend_from_slice(&40000u16.to_be_bytes());
    body.extend_from_slice(&443u16.to_be_bytes());
    // A TLV (AWS's VPC endpoint ID, type 0xEA) is skipped.
    body.extend_from_slice(&[0xea, 0, 4, b'v', b'p', b'c', b'e']);
    assert_eq!(
        xff_after(proxy.addr, &v2(1, 0x11, &body)).await,
        "198.51.100.9"
    );
    // LOCAL (a balancer's health check) and UNKNOWN: the connection's own.
    assert_eq!(xff_after(proxy.addr, &v2(0, 0x00, &[])).await, "127.0.0.1");
    assert_eq!(
        xff_after(proxy.addr, b"PROXY UNKNOWN\r\n").await,
        "127.0.0.1"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_after_the_header_keeps_half_close() {
    let (up, mut heads) = raw_upstream().await;
    let proxy = Proxy::in_front_of(up, &["--proxy-protocol"]).await;
    let mut cli = TcpStream::connect(proxy.addr).await.unwrap();
    cli.write_all(
        b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 443\r\nGET /chat HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, mut srv) = within("the upgrade at the upstream", heads.recv())
        .await
        .unwrap();
    assert_eq!(
        header_of(&head, "x-forwarded-for"),
        Some("192.0.2.7"),
        "{head}"
    );
    switch_protocols(&mut srv, "echo").await;
    let head = within("101", read_head(&mut cli)).await.unwrap();
    assert_eq!(status_of(&head), 101, "{head}");
    cli.shutdown().await.unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(within("FIN upstream", srv.read(&mut buf)).await.unwrap(), 0);
    srv.write_all(b"late").await.unwrap();
    srv.shutdown().await.unwrap();
    let mut got = Vec::new();
    within("late bytes and FIN", cli.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"late");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_headers_and_untrusted_sources_are_closed_without_a_hang() {
    let up = xff_upstream().await;
    let proxy = Proxy::in_front_of(up, &["--proxy-protocol", "--header-read-timeout", "1s"]).await;
    // No header at all, a malformed one, a v2 of another version.
    for bad in [
        GET.to_vec(),
        b"PROXY TCP4 192.0.2.7 10.0.0.1 99999 443\r\n".to_vec(),
        b"PROXY TCP4 192.0.2.7\n".to_vec(),
        {
            let mut h = v2(1, 0x11, &[0; 12]);
            h[12] = 0x31;
            h
        },
    ] {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(&bad).await.unwrap();
        closed_without_answer(&mut tcp).await;
    }
    // A truncated header, then silence: closed by the header-read timeout.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 192.0.2.7 10.0").await.unwrap();
    let started = std::time::Instant::now();
    closed_without_answer(&mut tcp).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    // The proxy still serves.
    assert_eq!(
        xff_after(proxy.addr, b"PROXY TCP4 192.0.2.8 10.0.0.1 1 2\r\n").await,
        "192.0.2.8"
    );
    proxy.stop().await;

    // Only 10.0.0.0/8 may connect: loopback is closed at once.
    let proxy = Proxy::in_front_of(
        up,
        &["--proxy-protocol", "--proxy-protocol-trusted", "10.0.0.0/8"],
    )
    .await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let _ = tcp
        .write_all(b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 443\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    closed_without_answer(&mut tcp).await;
    proxy.stop().await;

    // And loopback, once trusted, is served.
    let proxy = Proxy::in_front_of(
        up,
        &[
            "--proxy-protocol",
            "--proxy-protocol-trusted",
            "10.0.0.0/8,127.0.0.1",
        ],
    )
    .await;
    assert_eq!(
        xff_after(proxy.addr, b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 443\r\n").await,
        "192.0.2.7"
    );
    proxy.stop().await;
}
