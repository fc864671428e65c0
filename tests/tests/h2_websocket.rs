//! WebSockets over HTTP/2 (RFC 8441 extended CONNECT) through the proxy to
//! HTTP/1.1 upstreams: a real WebSocket client and server, Go's four
//! half-close cases mapped to HTTP/2 (END_STREAM is the stream's FIN), resets
//! both ways, and refusals.

use std::net::SocketAddr;

use bytes::Bytes;
use e2e_tests::*;
use futures_util::{SinkExt, StreamExt};
use h2::{Reason, RecvStream, SendStream};
use http::{Method, Request, StatusCode};
use proxy_tower::ReverseProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// An h2 client connection to `addr` whose server has enabled extended CONNECT.
async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = within("h2 handshake", h2::client::handshake(tcp))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = within("ready", client.ready()).await.unwrap();
    // The server's SETTINGS have arrived once a first request is answered:
    // one the proxy refuses itself (400), so the upstream never sees it.
    let (res, _) = client
        .send_request(
            Request::get(format!("http://{addr}/a/..%2fb"))
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    let res = within("a first response", res).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(
        client.is_extended_connect_protocol_enabled(),
        "the server did not advertise SETTINGS_ENABLE_CONNECT_PROTOCOL"
    );
    client
}

/// Sends an extended CONNECT for `protocol` on a new stream.
async fn extended_connect(
    client: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    protocol: &str,
) -> (http::Response<RecvStream>, SendStream<Bytes>) {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://{addr}/chat"))
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    req.extensions_mut()
        .insert(h2::ext::Protocol::from(protocol));
    let mut client = within("ready", client.clone().ready()).await.unwrap();
    let (res, send) = client.send_request(req, false).unwrap();
    let res = within("the CONNECT's answer", res).await.unwrap();
    (res, send)
}

/// At a raw upstream: answers a WebSocket upgrade with the right accept.
async fn accept_websocket(head: &str, srv: &mut TcpStream) {
    let key = header_of(head, "sec-websocket-key").expect("a Sec-WebSocket-Key");
    let accept = proxy_core::websocket_accept(key.as_bytes());
    let msg = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept.to_str().unwrap()
    );
    srv.write_all(msg.as_bytes()).await.unwrap();
}

/// (client stream, upstream socket) joined by the proxy: h2 extended CONNECT
/// in front, an HTTP/1.1 upgrade behind.
async fn bridged() -> (RecvStream, SendStream<Bytes>, TcpStream, String) {
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = serve(ReverseProxy::new(&format!("http://{upstream}")).unwrap()).await;
    let mut client = h2_client(proxy).await;
    let connect = extended_connect(&mut client, proxy, "websocket");
    let upstream_side = async {
        let (head, mut srv) = within("the upgrade at the upstream", heads.recv())
            .await
            .unwrap();
        accept_websocket(&head, &mut srv).await;
        (head, srv)
    };
    let ((res, send), (head, srv)) = tokio::join!(connect, upstream_side);
    assert_eq!(res.status(), StatusCode::OK);
    (res.into_body(), send, srv, head)
}

async fn recv_exact(recv: &mut RecvStream, want: &str) {
    let mut got = Vec::new();
    while got.len() < want.len() {
        let chunk = within("data on the stream", recv.data())
            .await
            .expect("data, not the stream's end")
            .expect("data, not a reset");
        let _ = recv.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8_lossy(&got), want);
}

/// END_STREAM (hyper sends it on an empty DATA frame, which h2 hands over as
/// an empty chunk first).
async fn recv_end_stream(recv: &mut RecvStream) {
    loop {
        match within("END_STREAM", recv.data()).await {
            None => return,
            Some(Ok(d)) if d.is_empty() => continue,
            Some(Ok(d)) => panic!("expected END_STREAM, got {d:?}"),
            Some(Err(e)) => panic!("expected END_STREAM, got {e}"),
        }
    }
}

async fn must_read(srv: &mut TcpStream, want: &str) {
    let mut buf = vec![0; want.len()];
    within("read at the upstream", srv.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&buf), want);
}

async fn must_read_eof(srv: &mut TcpStream) {
    let mut b = [0u8; 1];
    assert_eq!(within("EOF", srv.read(&mut b)).await.unwrap(), 0);
}

/// The upstream got an HTTP/1.1 WebSocket upgrade for the path, with a key.
#[tokio::test]
async fn extended_connect_reaches_the_upstream_as_an_http1_upgrade() {
    let (_recv, _send, _srv, head) = bridged().await;
    assert!(head.starts_with("GET /chat HTTP/1.1\r\n"), "{head}");
    assert_eq!(header_of(&head, "upgrade"), Some("websocket"));
    assert_eq!(
        header_of(&head, "connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("upgrade")
    );
    assert_eq!(header_of(&head, "sec-websocket-version"), Some("13"));
    assert_eq!(
        header_of(&head, "sec-websocket-key").map(str::len),
        Some(24)
    );
}

/// Client END_STREAM reaches the upstream as EOF while the upstream keeps
/// sending (Go's "client close write").
#[tokio::test]
async fn client_end_stream_is_a_fin_upstream() {
    let (mut recv, mut send, mut srv, _) = bridged().await;
    send.send_data(Bytes::from_static(b"last words"), true)
        .unwrap();
    must_read(&mut srv, "last words").await;
    must_read_eof(&mut srv).await;
    srv.write_all(b"reply after your END_STREAM").await.unwrap();
    recv_exact(&mut recv, "reply after your END_STREAM").await;
    srv.shutdown().await.unwrap();
    recv_end_stream(&mut recv).await;
}

/// Upstream FIN reaches the client as END_STREAM while the client keeps
/// sending (Go's "server close write").
#[tokio::test]
async fn upstream_fin_is_end_stream_to_the_client() {
    let (mut recv, mut send, mut srv, _) = bridged().await;
    srv.write_all(b"last before FIN").await.unwrap();
    srv.shutdown().await.unwrap();
    recv_exact(&mut recv, "last before FIN").await;
    recv_end_stream(&mut recv).await;
    send.send_data(Bytes::from_static(b"client still sends"), false)
        .unwrap();
    must_read(&mut srv, "client still sends").await;
    send.send_data(Bytes::new(), true).unwrap();
    must_read_eof(&mut srv).await;
}

/// The upstream stops reading (Go's "server close read"): the client still
/// gets what the upstream sends.
#[tokio::test]
async fn upstream_close_read_keeps_the_other_direction() {
    let (mut recv, _send, srv, _) = bridged().await;
    shutdown_read(&srv);
    let mut srv = srv;
    srv.write_all(b"server sends").await.unwrap();
    recv_exact(&mut recv, "server sends").await;
}

/// The client stops reading (Go's "client close read", as an h2 client that
/// drops its receiving half): the upstream still gets what the client sends.
#[tokio::test]
async fn client_close_read_keeps_the_other_direction() {
    let (recv, mut send, mut srv, _) = bridged().await;
    drop(recv);
    send.send_data(Bytes::from_static(b"client sends"), false)
        .unwrap();
    must_read(&mut srv, "client sends").await;
}

/// A client's RST_STREAM reaches the upstream as a TCP reset, not a FIN.
#[tokio::test]
async fn client_reset_is_a_reset_upstream() {
    let (_recv, mut send, mut srv, _) = bridged().await;
    send.send_data(Bytes::from_static(b"before"), false)
        .unwrap();
    must_read(&mut srv, "before").await;
    send.send_reset(Reason::CANCEL);
    // The proxy learns of the reset at once, or at its next write.
    let mut buf = [0u8; 64];
    let outcome = within("the reset at the upstream", async {
        loop {
            match srv.read(&mut buf).await {
                Ok(0) => {
                    // A FIN first: writing on makes the proxy notice the reset.
                    let _ = srv.write_all(b"anyone there?").await;
                    tokio::task::yield_now().await;
                }
                Ok(_) => continue,
                Err(e) => return e.kind(),
            }
        }
    })
    .await;
    assert_eq!(outcome, std::io::ErrorKind::ConnectionReset);
}

/// An upstream's TCP reset ends the client's stream with RST_STREAM, not
/// with a clean END_STREAM alone: the client's sending half is closed too,
/// where an upstream FIN leaves it open (see the test above).
///
/// The reason is NO_ERROR, not CANCEL: hyper gives a server no way to reset
/// an upgraded HTTP/2 stream; dropping it sends END_STREAM, and h2 then
/// resets the half the client still has open. docs/half-close.md says so.
#[tokio::test]
async fn upstream_reset_resets_the_client_stream() {
    let (mut recv, mut send, srv, _) = bridged().await;
    srv.set_zero_linger().unwrap();
    drop(srv);
    let reason = within(
        "RST_STREAM at the client",
        std::future::poll_fn(|cx| send.poll_reset(cx)),
    )
    .await
    .expect("a reset reason");
    assert!(
        matches!(
            reason,
            Reason::NO_ERROR | Reason::CANCEL | Reason::CONNECT_ERROR
        ),
        "{reason:?}"
    );
    while let Some(frame) = within("the stream to end", recv.data()).await {
        if frame.is_err() {
            break;
        }
    }
}

/// An upstream that answers the upgrade with anything but a valid 101: the
/// client gets an error status and no stream.
#[tokio::test]
async fn upstream_refusals_are_error_statuses() {
    let cases: &[(&str, u16)] = &[
        ("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", 403),
        ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 502),
        (
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: d3Jvbmc=\r\n\r\n",
            502,
        ),
        (
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            502,
        ),
    ];
    for (answer, status) in cases {
        let (upstream, mut heads) = raw_upstream().await;
        let proxy = serve(ReverseProxy::new(&format!("http://{upstream}")).unwrap()).await;
        let mut client = h2_client(proxy).await;
        let upstream_side = async {
            let (_, mut srv) = within("the upgrade at the upstream", heads.recv())
                .await
                .unwrap();
            srv.write_all(answer.as_bytes()).await.unwrap();
            srv
        };
        let ((res, _send), _srv) = tokio::join!(
            extended_connect(&mut client, proxy, "websocket"),
            upstream_side
        );
        assert_eq!(res.status().as_u16(), *status, "{answer}");
    }
}

/// A real WebSocket over HTTP/2 (hyper's client with extended CONNECT, then
/// tokio-tungstenite frames over the stream) to an HTTP/1.1 tokio-tungstenite
/// server: messages both ways and the close handshake.
#[tokio::test]
async fn websocket_over_http2_to_an_http1_server() {
    let (listener, upstream) = listener().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp)
            .await
            .expect("server handshake");
        let mut echoed = 0;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                ws.send(msg).await.unwrap();
                echoed += 1;
            }
        }
        echoed
    });
    let proxy = serve(ReverseProxy::new(&format!("http://{upstream}")).unwrap()).await;
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, http_body_util::Empty<Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    // A first request, so that the server's SETTINGS have arrived.
    let warm = send
        .send_request(
            Request::get(format!("http://{proxy}/a/..%2fb"))
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(warm.status(), StatusCode::BAD_REQUEST);
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://{proxy}/socket"))
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let res = within("the CONNECT's answer", send.send_request(req))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let stream = within("the upgrade", hyper::upgrade::on(res))
        .await
        .unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(stream),
        Role::Client,
        None,
    )
    .await;
    ws.send(Message::text("over h2")).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::text("over h2")
    );
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::binary(blob)
    );
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = within("the close handshake", ws.next()).await {}
    assert_eq!(within("the server to finish", server).await.unwrap(), 2);
}

/// An HTTP/2 upstream that accepts extended CONNECT itself gets it as it is
/// (no bridge): the tunnel joins two HTTP/2 streams, END_STREAM passing
/// both ways.
#[tokio::test]
async fn extended_connect_passes_through_to_an_http2_upstream() {
    use http_body_util::Empty;
    let upstream = serve_fn(|mut req: Request<hyper::body::Incoming>| async move {
        assert_eq!(req.method(), Method::CONNECT, "{req:?}");
        assert_eq!(
            req.extensions()
                .get::<hyper::ext::Protocol>()
                .map(|p| p.as_str()),
            Some("websocket")
        );
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let io = on.await.expect("upstream stream");
            let mut io = hyper_util::rt::TokioIo::new(io);
            // Echo until the client's END_STREAM, then end ours.
            let mut all = Vec::new();
            io.read_to_end(&mut all).await.unwrap();
            io.write_all(&all).await.unwrap();
            io.shutdown().await.unwrap();
        });
        http::Response::new(Empty::<Bytes>::new())
    })
    .await;
    let proxy = ReverseProxy::builder(&format!("http://{upstream}"))
        .http2_only()
        .build()
        .unwrap();
    let proxy = serve(proxy).await;
    let mut client = h2_client(proxy).await;
    let (res, mut send) = extended_connect(&mut client, proxy, "websocket").await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut recv = res.into_body();
    send.send_data(Bytes::from_static(b"through two streams"), true)
        .unwrap();
    recv_exact(&mut recv, "through two streams").await;
    recv_end_stream(&mut recv).await;
}
