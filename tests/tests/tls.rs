//! TLS on either side of the proxy: the four half-close cases of Go's test
//! with a TLS client (TLS client -> proxy -> plain upstream) and with a TLS
//! upstream (plain client -> proxy -> TLS upstream), truncation, and an
//! `https` upstream with a custom CA carrying requests, streamed bodies,
//! trailers, HTTP/2 by ALPN and a WebSocket. Certificates are made by the test.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use e2e_tests::tls::*;
use e2e_tests::*;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proxy_tower::ReverseProxy;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A stream with a TCP socket underneath (to shut its reading half down, or
/// to send a bare FIN under TLS).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    fn tcp(&mut self) -> &mut TcpStream;
}

impl Io for TcpStream {
    fn tcp(&mut self) -> &mut TcpStream {
        self
    }
}

impl Io for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&mut self) -> &mut TcpStream {
        self.get_mut().0
    }
}

impl Io for ServerTls {
    fn tcp(&mut self) -> &mut TcpStream {
        self.get_mut().0
    }
}

async fn must_read(conn: &mut impl Io, msg: &str) {
    let mut buf = vec![0; msg.len()];
    within("read", conn.read_exact(&mut buf))
        .await
        .expect("read");
    assert_eq!(String::from_utf8_lossy(&buf), msg);
}

/// A clean end: EOF (over TLS, `close_notify` then FIN), not an error.
async fn must_read_eof(conn: &mut impl Io) {
    let mut b = [0u8; 1];
    let n = within("EOF", conn.read(&mut b)).await.expect("a clean EOF");
    assert_eq!(n, 0, "expected EOF");
}

/// An abortive end: the read fails (a reset), never a clean EOF.
async fn must_read_reset(conn: &mut impl Io) {
    let mut b = [0u8; 1];
    match within("reset", conn.read(&mut b)).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a reset, read {n} byte(s) or EOF"),
    }
}

async fn must_write(conn: &mut impl Io, msg: &str) {
    within("write", conn.write_all(msg.as_bytes()))
        .await
        .expect("write");
    within("flush", conn.flush()).await.expect("flush");
}

type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// TLS client -> proxy (served over TLS) -> plain raw upstream, upgraded.
async fn tls_client_tunnel() -> (ClientTls, TcpStream) {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost"]);
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = ReverseProxy::new(&format!("http://{upstream}")).unwrap();
    let addr = serve_tls(proxy, leaf.acceptor(&[b"http/1.1"])).await;
    let mut cli = connect(&pki.connector(&[b"http/1.1"]), addr, "localhost").await;
    must_write(
        &mut cli,
        "GET /chat HTTP/1.1\r\nHost: front\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    let (_, mut srv) = within("upgrade request at the upstream", heads.recv())
        .await
        .unwrap();
    srv.set_nodelay(true).unwrap();
    switch_protocols(&mut srv, "websocket").await;
    let head = within("101", read_head(&mut cli)).await.unwrap();
    assert_eq!(status_of(&head), 101, "{head}");
    (cli, srv)
}

/// Plain client -> proxy -> raw upstream over TLS (trusted by a custom CA),
/// upgraded.
async fn tls_upstream_tunnel() -> (TcpStream, ServerTls) {
    let pki = Pki::new();
    let leaf = pki.leaf(&["127.0.0.1"]);
    let (upstream, mut heads) = raw_tls_upstream(leaf.acceptor(&[b"http/1.1"])).await;
    let proxy = ReverseProxy::builder(&format!("https://{upstream}"))
        .upstream_ca_pem(&pki.ca_pem)
        .build()
        .unwrap();
    let addr = serve(proxy).await;
    let mut cli = send_upgrade(addr, "websocket", b"").await;
    let (_, mut srv) = within("upgrade request at the upstream", heads.recv())
        .await
        .unwrap();
    switch_protocols(&mut srv, "websocket").await;
    within("flush", srv.flush()).await.unwrap();
    let head = within("101", read_head(&mut cli)).await.unwrap();
    assert_eq!(status_of(&head), 101, "{head}");
    (cli, srv)
}

async fn server_close_read(mut cli: impl Io, mut srv: impl Io) {
    shutdown_read(srv.tcp());
    must_write(&mut srv, "server sends").await;
    must_read(&mut cli, "server sends").await;
}

async fn server_close_write(mut cli: impl Io, mut srv: impl Io) {
    must_write(&mut srv, "last before FIN").await;
    srv.shutdown().await.unwrap();
    must_read(&mut cli, "last before FIN").await;
    must_write(&mut cli, "client sends").await;
    must_read(&mut srv, "client sends").await;
    must_read_eof(&mut cli).await;
}

async fn client_close_read(mut cli: impl Io, mut srv: impl Io) {
    shutdown_read(cli.tcp());
    must_write(&mut cli, "client sends").await;
    must_read(&mut srv, "client sends").await;
}

async fn client_close_write(mut cli: impl Io, mut srv: impl Io) {
    must_write(&mut cli, "last before FIN").await;
    cli.shutdown().await.unwrap();
    must_read(&mut srv, "last before FIN").await;
    must_write(&mut srv, "server sends").await;
    must_read(&mut cli, "server sends").await;
    must_read_eof(&mut srv).await;
    // And the other way after: the server's close reaches the client.
    srv.shutdown().await.unwrap();
    must_read_eof(&mut cli).await;
}

macro_rules! four_cases {
    ($setup:ident: $($name:ident => $case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (cli, srv) = $setup().await;
                $case(cli, srv).await;
            }
        )*
    };
}

four_cases!(tls_client_tunnel:
    tls_client_server_close_read => server_close_read,
    tls_client_server_close_write => server_close_write,
    tls_client_client_close_read => client_close_read,
    tls_client_client_close_write => client_close_write,
);

four_cases!(tls_upstream_tunnel:
    tls_upstream_server_close_read => server_close_read,
    tls_upstream_server_close_write => server_close_write,
    tls_upstream_client_close_read => client_close_read,
    tls_upstream_client_close_write => client_close_write,
);

/// A TLS client that sends FIN without `close_notify` (a truncation attack, or
/// a crash mid-write) is not a clean end: the upstream gets a reset, not EOF.
#[tokio::test]
async fn truncated_tls_client_becomes_a_reset_upstream() {
    let (mut cli, mut srv) = tls_client_tunnel().await;
    must_write(&mut cli, "before").await;
    must_read(&mut srv, "before").await;
    // FIN on the TCP socket, under TLS: no close_notify.
    cli.tcp().shutdown().await.unwrap();
    must_read_reset(&mut srv).await;
}

/// The mirror case: a TLS upstream's FIN without `close_notify` reaches the
/// plain client as a reset.
#[tokio::test]
async fn truncated_tls_upstream_becomes_a_reset_to_the_client() {
    let (mut cli, mut srv) = tls_upstream_tunnel().await;
    must_write(&mut srv, "before").await;
    must_read(&mut cli, "before").await;
    srv.tcp().shutdown().await.unwrap();
    must_read_reset(&mut cli).await;
}

fn trailers(name: &'static str, value: &'static str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert(name, value.parse().unwrap());
    t
}

type Boxed = http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>;

/// An HTTPS upstream (HTTP/2 and HTTP/1.1 by ALPN): `/version` names the
/// protocol the request came in, `/echo` streams the body back, `/trailers`
/// answers with trailers.
async fn https_upstream(leaf: &Leaf) -> SocketAddr {
    let svc = tower::service_fn(|req: Request<Incoming>| async move {
        let res: Response<Boxed> = match req.uri().path() {
            "/version" => Response::new(
                http_body_util::Full::new(Bytes::from(format!("{:?}", req.version())))
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            ),
            "/echo" => Response::new(req.into_body().boxed_unsync()),
            _ => {
                let body = StreamBody::new(futures_util::stream::iter(vec![
                    Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(b"with trailers"))),
                    Ok(Frame::trailers(trailers("x-res-trailer", "2"))),
                ]));
                let mut res = Response::new(body.boxed_unsync());
                res.headers_mut()
                    .insert("trailer", "x-res-trailer".parse().unwrap());
                res
            }
        };
        Ok::<_, Infallible>(res)
    });
    serve_tls(svc, leaf.acceptor(&[b"h2", b"http/1.1"])).await
}

/// An `https` upstream trusted through a custom CA: requests, a streamed body
/// both ways, trailers, and HTTP/2 chosen by ALPN (not prior knowledge).
#[tokio::test]
async fn https_upstream_with_a_custom_ca() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost", "127.0.0.1"]);
    let upstream = https_upstream(&leaf).await;
    let proxy = ReverseProxy::builder(&format!("https://localhost:{}", upstream.port()))
        .upstream_ca_pem(&pki.ca_pem)
        .build()
        .unwrap();
    let addr = serve(proxy).await;
    let client = Client::builder(TokioExecutor::new())
        .build_http::<http_body_util::combinators::BoxBody<Bytes, Infallible>>();

    let get = |path: &str| {
        Request::get(format!("http://{addr}{path}"))
            .header("te", "trailers")
            .body(Empty::new().boxed())
            .unwrap()
    };
    let res = within("GET /version", client.request(get("/version")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body, "HTTP/2.0",
        "the upstream offered h2 and should get it"
    );

    const LEN: usize = 3 * 1024 * 1024 + 17;
    let req = Request::post(format!("http://{addr}/echo"))
        .body(Generated::new(7, LEN).boxed())
        .unwrap();
    let res = within("POST /echo", client.request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (len, hash) = within("echoed body", hash_body(res.into_body())).await;
    assert_eq!(len, LEN);
    assert_eq!(hash, Generated::hash(7, LEN));

    let res = within("GET /trailers", client.request(get("/trailers")))
        .await
        .unwrap();
    let collected = res.into_body().collect().await.unwrap();
    let t = collected.trailers().cloned();
    assert_eq!(collected.to_bytes(), "with trailers");
    assert_eq!(
        t.as_ref().and_then(|t| t.get("x-res-trailer")).unwrap(),
        "2"
    );
}

/// A WebSocket through the proxy to a `wss` upstream that offers both h2 and
/// http/1.1: the upgrade goes over an HTTP/1.1 connection (ALPN), messages
/// cross both ways, and the close handshake completes.
#[tokio::test]
async fn websocket_to_a_tls_upstream() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["127.0.0.1"]);
    let acceptor = leaf.acceptor(&[b"h2", b"http/1.1"]);
    let (listener, upstream) = listener().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let mut ws = tokio_tungstenite::accept_async(tls)
            .await
            .expect("server handshake");
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                ws.send(msg).await.unwrap();
            }
        }
    });
    let proxy = ReverseProxy::builder(&format!("https://{upstream}"))
        .upstream_ca_pem(&pki.ca_pem)
        .build()
        .unwrap();
    let addr = serve(proxy).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut ws, res) = within(
        "client handshake",
        tokio_tungstenite::client_async(format!("ws://{addr}/socket"), tcp),
    )
    .await
    .expect("client handshake");
    assert_eq!(res.status(), 101);
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::text("over tls")
    );
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = within("close handshake", ws.next()).await {}
    within("server to finish", server).await.unwrap();
}

/// An upstream whose certificate does not name the host the proxy connects
/// to: 502, and the error says why.
#[tokio::test]
async fn upstream_certificate_for_another_name_is_a_502() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["other.example"]);
    let upstream = https_upstream(&leaf).await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let proxy = ReverseProxy::builder(&format!("https://127.0.0.1:{}", upstream.port()))
        .upstream_ca_pem(&pki.ca_pem)
        .error_handler({
            let seen = seen.clone();
            move |e| {
                *seen.lock().unwrap() = e.to_string();
                Response::builder()
                    .status(e.status())
                    .body(Bytes::new())
                    .unwrap()
            }
        })
        .build()
        .unwrap();
    let addr = serve(proxy).await;
    let (head, _) = raw_get(addr, "/version").await;
    assert_eq!(status_of(&head), 502, "{head}");
    let why = seen.lock().unwrap().clone();
    assert!(
        why.contains("certificate") && why.contains("127.0.0.1") && !why.contains('\n'),
        "{why}"
    );
}

/// A self-signed upstream certificate marked as a CA (Go's `httptest`, `openssl
/// req -x509`) is trusted when it is itself in the CA bundle, as Go trusts
/// it; another certificate in the bundle does not make it trusted.
#[tokio::test]
async fn self_signed_ca_flagged_upstream_is_trusted_when_pinned() {
    let own = Leaf::self_signed_ca(&["127.0.0.1"]);
    let upstream = https_upstream(&own).await;
    let proxy = ReverseProxy::builder(&format!("https://{upstream}"))
        .upstream_ca_pem(&own.cert_pem)
        .build()
        .unwrap();
    let (head, body) = raw_get(serve(proxy).await, "/version").await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(body, b"HTTP/2.0");

    let stranger = Leaf::self_signed_ca(&["127.0.0.1"]);
    let proxy = ReverseProxy::builder(&format!("https://{upstream}"))
        .upstream_ca_pem(&stranger.cert_pem)
        .build()
        .unwrap();
    let (head, _) = raw_get(serve(proxy).await, "/version").await;
    assert_eq!(status_of(&head), 502, "{head}");

    // Pinned, but for another name: refused.
    let named = Leaf::self_signed_ca(&["other.example"]);
    let upstream = https_upstream(&named).await;
    let proxy = ReverseProxy::builder(&format!("https://{upstream}"))
        .upstream_ca_pem(&named.cert_pem)
        .build()
        .unwrap();
    let (head, _) = raw_get(serve(proxy).await, "/version").await;
    assert_eq!(status_of(&head), 502, "{head}");
}

/// A CA bundle with no certificate is refused when the proxy is built.
#[test]
fn empty_ca_bundle_is_a_build_error() {
    let err = ReverseProxy::builder("https://127.0.0.1:1")
        .upstream_ca_pem("no certificates here")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("CA bundle"), "{err}");
}
