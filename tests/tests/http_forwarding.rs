//! Plain HTTP through the proxy: headers, big bodies both ways, upstream failures.

use std::time::Duration;

use bytes::Bytes;
use e2e_tests::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proxy_tower::ReverseProxy;
use tokio::io::AsyncWriteExt;

/// An upstream that answers with the request line and headers it received.
async fn mirror_upstream() -> std::net::SocketAddr {
    serve_fn(|req| async move {
        let mut text = format!("{} {}\n", req.method(), req.uri());
        for (k, v) in req.headers() {
            text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
        }
        Response::new(Full::new(Bytes::from(text)))
    })
    .await
}

fn seen(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[tokio::test]
async fn upstream_sees_clean_and_forwarding_headers() {
    let upstream = mirror_upstream().await;
    let proxy = serve(ReverseProxy::new(&format!("http://{upstream}/base")).unwrap()).await;
    let mut cli = tokio::net::TcpStream::connect(proxy).await.unwrap();
    cli.write_all(
        b"GET /path?q=1 HTTP/1.1\r\nHost: front.example\r\nConnection: keep-alive, X-Drop, X-Forwarded-For\r\n\
          X-Drop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic Zm9v\r\nTE: gzip, trailers\r\n\
          X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Keep: 1\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, body) = read_response(&mut cli).await;
    assert_eq!(status_of(&head), 200, "{head}");
    let text = seen(&body);
    assert!(text.starts_with("GET /base/path?q=1\n"), "{text}");
    for gone in ["x-drop", "keep-alive", "proxy-authorization", "connection"] {
        assert!(
            !text.lines().any(|l| l.starts_with(&format!("{gone}:"))),
            "{gone} reached the upstream:\n{text}"
        );
    }
    for line in [
        "te: trailers",
        "x-keep: 1",
        "x-forwarded-for: 127.0.0.1",
        "x-forwarded-host: front.example",
        "x-forwarded-proto: http",
        &format!("host: {upstream}"),
    ] {
        assert!(has_line(&text, line), "missing {line:?}:\n{text}");
    }
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_removed() {
    let upstream = serve_fn(|_req| async move {
        let mut res = Response::new(Full::new(Bytes::from_static(b"ok")));
        let h = res.headers_mut();
        h.insert("connection", "X-Internal".parse().unwrap());
        h.insert("x-internal", "1".parse().unwrap());
        h.insert("proxy-authenticate", "Basic".parse().unwrap());
        h.insert("x-public", "1".parse().unwrap());
        res
    })
    .await;
    let proxy = serve(ReverseProxy::new(&format!("http://{upstream}")).unwrap()).await;
    let (head, body) = raw_get(proxy, "/").await;
    assert_eq!(body, b"ok");
    assert_eq!(header_of(&head, "x-internal"), None, "{head}");
    assert_eq!(header_of(&head, "proxy-authenticate"), None, "{head}");
    assert_eq!(header_of(&head, "x-public"), Some("1"));
}

/// 50 MiB up and 50 MiB down through the proxy at once (the upstream echoes the
/// body as it arrives), verified by hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_each_way_by_hash() {
    const SIZE: usize = 50 * 1024 * 1024;
    let upstream =
        serve_fn(
            |req: Request<hyper::body::Incoming>| async move { Response::new(req.into_body()) },
        )
        .await;
    let proxy = serve(ReverseProxy::new(&format!("http://{upstream}")).unwrap()).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Generated>();
    let req = Request::post(format!("http://{proxy}/echo"))
        .body(Generated::new(7, SIZE))
        .unwrap();
    let work = async {
        let res = client.request(req).await.expect("response");
        assert_eq!(res.status(), StatusCode::OK);
        hash_body(res.into_body()).await
    };
    let (len, hash) = tokio::time::timeout(WAIT * 3, work)
        .await
        .expect("50 MiB in time");
    assert_eq!(len, SIZE);
    assert_eq!(hash, Generated::hash(7, SIZE), "bytes changed in transit");
}

#[tokio::test]
async fn upstream_down_is_502() {
    let down = closed_port().await;
    let proxy = serve(ReverseProxy::new(&format!("http://{down}")).unwrap()).await;
    let (head, body) = raw_get(proxy, "/").await;
    assert_eq!(status_of(&head), 502, "{head}");
    assert_eq!(body, b"Bad Gateway\n");
}

#[tokio::test]
async fn silent_upstream_is_504_after_the_response_timeout() {
    let (upstream, mut heads) = raw_upstream().await; // reads the request, never answers
    let proxy = ReverseProxy::builder(&format!("http://{upstream}"))
        .response_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let proxy = serve(proxy).await;
    let mut cli = tokio::net::TcpStream::connect(proxy).await.unwrap();
    cli.write_all(format!("GET / HTTP/1.1\r\nHost: {proxy}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (_head_at_upstream, _held) = within("request at upstream", heads.recv()).await.unwrap();
    let (head, _) = read_response(&mut cli).await;
    assert_eq!(status_of(&head), 504, "{head}");
}

#[tokio::test]
async fn error_handler_and_hooks_apply() {
    let upstream = mirror_upstream().await;
    let proxy = ReverseProxy::builder(&format!("http://{upstream}"))
        .rewrite(|req| {
            req.headers.insert("x-added", "by-rewrite".parse().unwrap());
        })
        .modify_response(|res| {
            res.headers.insert("x-modified", "yes".parse().unwrap());
        })
        .build()
        .unwrap();
    let proxy = serve(proxy).await;
    let mut cli = tokio::net::TcpStream::connect(proxy).await.unwrap();
    // The client cannot strip what the rewrite hook adds.
    cli.write_all(
        format!("GET / HTTP/1.1\r\nHost: {proxy}\r\nConnection: X-Added\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (head, body) = read_response(&mut cli).await;
    assert!(
        has_line(&seen(&body), "x-added: by-rewrite"),
        "{}",
        seen(&body)
    );
    assert_eq!(header_of(&head, "x-modified"), Some("yes"));

    let down = closed_port().await;
    let proxy = ReverseProxy::builder(&format!("http://{down}"))
        .error_handler(|err| {
            let mut res = Response::new(Bytes::from(format!("custom: {}", err.status().as_u16())));
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            res
        })
        .build()
        .unwrap();
    let proxy = serve(proxy).await;
    let (head, body) = raw_get(proxy, "/").await;
    assert_eq!(status_of(&head), 503);
    assert_eq!(body, b"custom: 502");
}

/// Go's TestReverseProxyFlushInterval, in spirit: a streamed response reaches the
/// client frame by frame, not when the upstream finishes (server-sent events,
/// long polls).
#[tokio::test]
async fn streamed_response_is_not_buffered() {
    use futures_util::StreamExt;
    use http_body::Frame;
    use http_body_util::StreamBody;
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let upstream = serve_fn(move |_req| {
        let mut release = release_rx.clone();
        async move {
            let first = futures_util::stream::once(async {
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"first;")))
            });
            let second = futures_util::stream::once(async move {
                let _ = release.wait_for(|go| *go).await;
                Ok(Frame::data(Bytes::from_static(b"second")))
            });
            Response::new(StreamBody::new(first.chain(second)))
        }
    })
    .await;
    let proxy = serve(ReverseProxy::new(&format!("http://{upstream}")).unwrap()).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    let res = within(
        "response head",
        client.get(format!("http://{proxy}/events").parse().unwrap()),
    )
    .await
    .unwrap();
    let mut body = res.into_body();
    use http_body_util::BodyExt;
    // The first frame arrives while the upstream is still holding the second.
    let frame = within("the first frame before the upstream finishes", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), "first;");
    release_tx.send(true).unwrap();
    let rest = within("the rest", body.collect()).await.unwrap().to_bytes();
    assert_eq!(rest, "second");
}

/// Go's TestReverseProxyCancellation, in spirit: a client that goes away in the
/// middle of a response releases the upstream connection (no leaked task or
/// socket).
#[tokio::test]
async fn client_going_away_releases_the_upstream() {
    let (upstream, mut heads) = raw_upstream().await;
    let proxy = serve(ReverseProxy::new(&format!("http://{upstream}")).unwrap()).await;
    let mut cli = tokio::net::TcpStream::connect(proxy).await.unwrap();
    cli.write_all(format!("GET /endless HTTP/1.1\r\nHost: {proxy}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (_, mut srv) = within("request at upstream", heads.recv()).await.unwrap();
    srv.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    let head = within("response head", read_head(&mut cli)).await.unwrap();
    assert_eq!(status_of(&head), 200);
    drop(cli);
    // The upstream keeps sending; once the proxy has dropped the exchange, its
    // connection to the upstream closes: reads see EOF and writes start failing.
    let (mut rd, mut wr) = srv.into_split();
    let writing = async { while wr.write_all(b"5\r\nmore.\r\n").await.is_ok() {} };
    let reading = async {
        let mut b = [0u8; 64];
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut rd, &mut b).await {
            if n == 0 {
                break;
            }
        }
    };
    within("the upstream connection to be released", async {
        tokio::select! {
            _ = writing => {}
            _ = reading => {}
        }
    })
    .await;
}

/// `Expect: 100-continue` (curl sends it for large bodies): the client gets its
/// `100 Continue`, sends the body, and the upstream receives it.
#[tokio::test]
async fn expect_100_continue() {
    let upstream =
        serve_fn(
            |req: Request<hyper::body::Incoming>| async move { Response::new(req.into_body()) },
        )
        .await;
    let proxy = serve(ReverseProxy::new(&format!("http://{upstream}")).unwrap()).await;
    let mut cli = tokio::net::TcpStream::connect(proxy).await.unwrap();
    cli.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: {proxy}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let interim = within("100 Continue", read_head(&mut cli)).await.unwrap();
    assert_eq!(status_of(&interim), 100, "{interim}");
    cli.write_all(b"hello").await.unwrap();
    let (head, body) = read_response(&mut cli).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(body, b"hello");
}

/// With an HTTP/2 upstream, the host goes in `:authority` and never disagrees
/// with a `host` field (RFC 9113 section 8.3.1): with `HostHeader::Preserve` the
/// client's Host, else the upstream's authority. The connection still goes to
/// the configured upstream, whatever the client's Host says.
#[tokio::test]
async fn http2_upstream_gets_the_host_as_authority() {
    let upstream = serve_fn(|req| async move {
        let authority = req.uri().authority().map(|a| a.to_string());
        let host = req
            .headers()
            .get("host")
            .map(|h| h.to_str().unwrap().to_owned());
        Response::new(Full::new(Bytes::from(format!(
            "{:?} authority={authority:?} host={host:?}",
            req.version()
        ))))
    })
    .await;
    for (policy, want) in [
        (
            proxy_tower::HostHeader::Preserve,
            "HTTP/2.0 authority=Some(\"front.example\") host=None".to_owned(),
        ),
        (
            proxy_tower::HostHeader::Upstream,
            format!("HTTP/2.0 authority=Some(\"{upstream}\") host=None"),
        ),
    ] {
        let proxy = ReverseProxy::builder(&format!("http://{upstream}"))
            .http2_only()
            .host_header(policy)
            .build()
            .unwrap();
        let addr = serve(proxy).await;
        let mut cli = tokio::net::TcpStream::connect(addr).await.unwrap();
        cli.write_all(b"GET /who HTTP/1.1\r\nHost: front.example\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut cli).await;
        assert_eq!(status_of(&head), 200, "{head}");
        assert_eq!(String::from_utf8_lossy(&body), want, "{policy:?}");
    }
}
