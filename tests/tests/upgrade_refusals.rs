//! Upgrades that must not become tunnels.

use bytes::Bytes;
use e2e_tests::*;
use http::{Response, StatusCode};
use http_body_util::Full;
use proxy_tower::ReverseProxy;
use tokio::io::AsyncWriteExt;

/// An upstream that refuses upgrades with `status` and answers other requests
/// with what it saw.
async fn refusing_upstream(status: StatusCode) -> std::net::SocketAddr {
    serve_fn(move |req| async move {
        if req.headers().contains_key("upgrade") {
            let mut res = Response::new(Full::new(Bytes::from_static(b"no upgrade for you")));
            *res.status_mut() = status;
            res.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            res
        } else {
            let xff = req
                .headers()
                .get("x-forwarded-for")
                .map(|v| v.to_str().unwrap().to_owned());
            Response::new(Full::new(Bytes::from(format!(
                "{} via {}",
                req.uri().path(),
                xff.unwrap_or_default()
            ))))
        }
    })
    .await
}

/// The upstream answers 426 or 200 to an upgrade request: the client gets that
/// answer, no tunnel opens, and the bytes it sent right behind (in the same
/// packet) are parsed as the next HTTP request, not relayed raw.
#[tokio::test]
async fn non_101_answer_keeps_the_connection_http() {
    for status in [StatusCode::UPGRADE_REQUIRED, StatusCode::OK] {
        let upstream = refusing_upstream(status).await;
        let proxy = serve(ReverseProxy::new(&format!("http://{upstream}")).unwrap()).await;
        let pipelined = format!("GET /next HTTP/1.1\r\nHost: {proxy}\r\n\r\n");
        let mut cli = send_upgrade(proxy, "websocket", pipelined.as_bytes()).await;
        let (head, body) = read_response(&mut cli).await;
        assert_eq!(status_of(&head), status.as_u16(), "{head}");
        assert_eq!(body, b"no upgrade for you");
        assert_eq!(
            header_of(&head, "upgrade"),
            None,
            "hop-by-hop Upgrade leaked: {head}"
        );
        // The pipelined bytes were a request, forwarded by the proxy's HTTP path.
        let (head, body) = read_response(&mut cli).await;
        assert_eq!(status_of(&head), 200, "{head}");
        assert_eq!(String::from_utf8_lossy(&body), "/next via 127.0.0.1");
    }
}

/// A 101 for a protocol the client did not ask for is a 502; no tunnel opens.
#[tokio::test]
async fn switch_to_another_protocol_is_502() {
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = serve(ReverseProxy::new(&format!("http://{upstream}")).unwrap()).await;
    let mut cli = send_upgrade(proxy, "websocket", b"").await;
    let (_, mut srv) = within("request at upstream", heads.recv()).await.unwrap();
    switch_protocols(&mut srv, "echo").await;
    let (head, _) = read_response(&mut cli).await;
    assert_eq!(status_of(&head), 502, "{head}");
}

/// A 101 to a request that asked for no upgrade is a 502 too.
#[tokio::test]
async fn unrequested_switch_is_502() {
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = serve(ReverseProxy::new(&format!("http://{upstream}")).unwrap()).await;
    let mut cli = tokio::net::TcpStream::connect(proxy).await.unwrap();
    cli.write_all(format!("GET / HTTP/1.1\r\nHost: {proxy}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (_, mut srv) = within("request at upstream", heads.recv()).await.unwrap();
    switch_protocols(&mut srv, "websocket").await;
    let (head, _) = read_response(&mut cli).await;
    assert_eq!(status_of(&head), 502, "{head}");
}

/// `Upgrade: h2c` is refused (403) by default, before the upstream is contacted;
/// the policy can allow it.
#[tokio::test]
async fn h2c_refused_by_default() {
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = serve(ReverseProxy::new(&format!("http://{upstream}")).unwrap()).await;
    let mut cli = send_upgrade(proxy, "h2c", b"").await;
    let (head, body) = read_response(&mut cli).await;
    assert_eq!(status_of(&head), 403, "{head}");
    assert_eq!(body, b"Forbidden\n");
    assert!(heads.try_recv().is_err(), "the upstream was contacted");

    let allowing = ReverseProxy::builder(&format!("http://{upstream}"))
        .upgrade_policy(proxy_tower::UpgradePolicy::allow_all())
        .build()
        .unwrap();
    let proxy = serve(allowing).await;
    let _cli = send_upgrade(proxy, "h2c", b"").await;
    let (head, _) = within("h2c request at upstream", heads.recv())
        .await
        .unwrap();
    assert_eq!(header_of(&head, "upgrade"), Some("h2c"));
}

/// `CONNECT` is refused with 405, and the 405 names the allowed methods.
#[tokio::test]
async fn connect_is_refused_with_allow() {
    let up = refusing_upstream(StatusCode::OK).await;
    let addr = serve(ReverseProxy::new(&format!("http://{up}")).unwrap()).await;
    let mut cli = tokio::net::TcpStream::connect(addr).await.unwrap();
    cli.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut cli).await;
    assert_eq!(status_of(&head), 405, "{head}");
    let allow = header_of(&head, "allow").expect("an Allow field");
    assert!(
        allow.contains("GET") && !allow.contains("CONNECT"),
        "{allow}"
    );
}

/// An upgrade request that carries a body is not an upgrade: it goes upstream
/// as plain HTTP, without the upgrade pair, so an upstream that answers
/// upgrade requests (426) without reading their body never takes the body for
/// its next request. The exact bytes of the attack.
#[tokio::test]
async fn upgrade_with_a_body_cannot_smuggle_a_request() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    // The upstream: answers upgrade requests 426 at once, without reading their
    // body; reads the body of any other request. Reports every request line.
    let (listener, upstream) = listener().await;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                let mut conn = BufReader::new(tcp);
                loop {
                    let mut head = Vec::new();
                    loop {
                        let mut line = String::new();
                        if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push(line.trim_end().to_owned());
                    }
                    let _ = seen_tx.send(head[0].clone());
                    let field = |name: &str| {
                        head.iter().skip(1).find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                        })
                    };
                    let answer = if field("upgrade").is_some() {
                        "HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n".to_owned()
                    } else {
                        let len: usize = field("content-length")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        let mut body = vec![0; len];
                        conn.read_exact(&mut body).await.unwrap();
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n")
                            + &String::from_utf8_lossy(&body)
                    };
                    conn.get_mut().write_all(answer.as_bytes()).await.unwrap();
                }
            });
        }
    });
    let proxy = serve(ReverseProxy::new(&format!("http://{upstream}")).unwrap()).await;

    let smuggled = b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(smuggled.len(), 32);
    let mut cli = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let mut attack = b"POST /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 32\r\n\r\n".to_vec();
    attack.extend_from_slice(smuggled);
    cli.write_all(&attack).await.unwrap();
    let (head, body) = read_response(&mut cli).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(body, smuggled, "the body reached the upstream as a body");
    assert_eq!(
        within("the request at the upstream", seen.recv())
            .await
            .unwrap(),
        "POST /ws HTTP/1.1"
    );
    // One more request through the same pooled upstream connection: the
    // upstream sees it, and never a request for /admin.
    cli.write_all(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut cli).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(
        within("the next request at the upstream", seen.recv())
            .await
            .unwrap(),
        "GET /after HTTP/1.1"
    );
    assert!(seen.try_recv().is_err(), "the upstream saw another request");
}

/// An upgrade request whose client connection cannot be handed over (its
/// server gave no `OnUpgrade`) is answered before the upstream is contacted, so
/// no upstream connection is switched for nothing.
#[tokio::test]
async fn upgrade_without_an_upgradable_client_never_reaches_the_upstream() {
    use tower::ServiceExt;
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = ReverseProxy::new(&format!("http://{upstream}")).unwrap();
    let req = http::Request::get("/chat")
        .header("host", "x")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let res = within("the answer", proxy.oneshot(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let contacted = tokio::time::timeout(std::time::Duration::from_millis(300), heads.recv()).await;
    assert!(contacted.is_err(), "the upstream was contacted");
}
