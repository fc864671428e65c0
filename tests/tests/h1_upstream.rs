//! The default client's own HTTP/1.1 path (bodiless requests to `http`
//! upstreams): response framing, trailers, informational responses, invalid
//! answers, and connection reuse, against an upstream scripted byte by byte.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use e2e_tests::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use proxy_tower::ReverseProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tower::ServiceExt;

/// What the scripted upstream does with one request.
#[derive(Clone)]
enum Answer {
    /// Write these bytes and keep the connection for the next request.
    Keep(&'static [u8]),
    /// Write these bytes one at a time (every read the proxy makes is short).
    Trickle(&'static [u8]),
    /// Write these bytes, then close.
    Close(&'static [u8]),
    /// Close without answering.
    Hang,
}

/// An upstream that answers the `n`th request it reads (counted over all
/// connections) with `script[n]`, and reports each request as (connection
/// number, request head).
async fn scripted(script: Vec<Answer>) -> (SocketAddr, mpsc::UnboundedReceiver<(usize, String)>) {
    let (listener, addr) = listener().await;
    let (tx, rx) = mpsc::unbounded_channel();
    let script = std::sync::Arc::new(std::sync::Mutex::new(script.into_iter()));
    tokio::spawn(async move {
        let mut conns = 0;
        while let Ok((mut tcp, _)) = listener.accept().await {
            conns += 1;
            let (tx, script, conn) = (tx.clone(), script.clone(), conns);
            tokio::spawn(async move {
                while let Ok(head) = read_head(&mut tcp).await {
                    let _ = tx.send((conn, head));
                    let next = script.lock().unwrap().next();
                    match next {
                        Some(Answer::Keep(b)) => tcp.write_all(b).await.unwrap(),
                        Some(Answer::Trickle(b)) => {
                            for byte in b {
                                tcp.write_all(&[*byte]).await.unwrap();
                                tcp.flush().await.unwrap();
                                tokio::task::yield_now().await;
                            }
                        }
                        Some(Answer::Close(b)) => {
                            tcp.write_all(b).await.unwrap();
                            return;
                        }
                        Some(Answer::Hang) | None => return,
                    }
                }
            });
        }
    });
    (addr, rx)
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path).body(Empty::new()).unwrap()
}

fn request(method: &str, path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .body(Empty::new())
        .unwrap()
}

/// Sends `req` through `proxy`; returns status, body and trailers.
async fn fetch(
    proxy: &ReverseProxy,
    req: Request<Empty<Bytes>>,
) -> (StatusCode, Result<(Bytes, Option<http::HeaderMap>), String>) {
    let res = within("the proxy's response", proxy.clone().oneshot(req))
        .await
        .unwrap();
    let status = res.status();
    let body = within("the body", res.into_body().collect())
        .await
        .map(|c| {
            let trailers = c.trailers().cloned();
            (c.to_bytes(), trailers)
        })
        .map_err(|e| e.to_string());
    (status, body)
}

/// `req` through `proxy` is answered 200 with the body `expected`.
async fn expect_ok(proxy: &ReverseProxy, req: Request<Empty<Bytes>>, expected: &'static str) {
    let (status, body) = fetch(proxy, req).await;
    assert_eq!(
        (status, body.unwrap().0),
        (StatusCode::OK, Bytes::from(expected))
    );
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(usize, String)>) -> (usize, String) {
    within("a request at the upstream", rx.recv())
        .await
        .expect("upstream running")
}

#[tokio::test]
async fn chunked_bodies_and_trailers_are_decoded_across_short_reads() {
    let (up, mut seen) = scripted(vec![
        Answer::Trickle(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
              5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: abc\r\n\r\n",
        ),
        Answer::Keep(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
    ])
    .await;
    let proxy = ReverseProxy::new(&format!("http://{up}")).unwrap();

    let (status, body) = fetch(&proxy, get("/one")).await;
    assert_eq!(status, StatusCode::OK);
    let (bytes, trailers) = body.unwrap();
    assert_eq!(bytes, "hello world");
    assert_eq!(trailers.unwrap()["x-sum"], "abc");
    let (conn, head) = next(&mut seen).await;
    assert!(head.starts_with("GET /one HTTP/1.1\r\n"), "{head}");
    assert!(header_of(&head, "host").is_some(), "{head}");
    assert!(header_of(&head, "transfer-encoding").is_none(), "{head}");

    // The connection went back to the pool once the last chunk was read.
    expect_ok(&proxy, get("/two"), "abc").await;
    assert_eq!(next(&mut seen).await.0, conn);
}

#[tokio::test]
async fn length_and_close_delimited_bodies() {
    let (up, mut seen) = scripted(vec![
        Answer::Trickle(b"HTTP/1.1 200 Fine\r\nContent-Length: 10\r\n\r\n0123456789"),
        // No length: the body runs to the close, and the connection is not reused.
        Answer::Close(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
        Answer::Keep(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        Answer::Keep(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ])
    .await;
    let proxy = ReverseProxy::new(&format!("http://{up}")).unwrap();

    let res = within("response", proxy.clone().oneshot(get("/a")))
        .await
        .unwrap();
    // A reason phrase other than the usual one is kept, as hyper keeps it.
    let reason = res.extensions().get::<hyper::ext::ReasonPhrase>().cloned();
    assert_eq!(reason.unwrap().as_bytes(), b"Fine");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "0123456789");
    let (first, _) = next(&mut seen).await;

    expect_ok(&proxy, get("/b"), "until the end").await;
    assert_eq!(next(&mut seen).await.0, first);

    // HTTP/1.0 without keep-alive: answered, then not reused.
    expect_ok(&proxy, get("/c"), "ok").await;
    let (third, _) = next(&mut seen).await;
    assert_ne!(third, first);
    let (status, _) = fetch(&proxy, get("/d")).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(next(&mut seen).await.0, third);
}

#[tokio::test]
async fn bodiless_responses_keep_the_connection() {
    let (up, mut seen) = scripted(vec![
        Answer::Keep(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        Answer::Keep(b"HTTP/1.1 204 No Content\r\n\r\n"),
        Answer::Keep(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"),
        Answer::Keep(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ])
    .await;
    let proxy = ReverseProxy::new(&format!("http://{up}")).unwrap();

    let res = within("HEAD", proxy.clone().oneshot(request("HEAD", "/")))
        .await
        .unwrap();
    assert_eq!(res.headers()["content-length"], "1000");
    assert!(
        res.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
    let (conn, head) = next(&mut seen).await;
    assert!(head.starts_with("HEAD / HTTP/1.1"), "{head}");

    let (status, body) = fetch(&proxy, get("/")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(body.unwrap().0.is_empty());
    let (status, body) = fetch(&proxy, get("/")).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.unwrap().0.is_empty());
    // Informational responses are read past; the final one is relayed.
    expect_ok(&proxy, get("/"), "ok").await;
    for _ in 0..3 {
        assert_eq!(next(&mut seen).await.0, conn);
    }
}

#[tokio::test]
async fn invalid_answers_are_502() {
    let answers: [&'static [u8]; 7] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"",
    ];
    for answer in answers {
        let (up, _seen) = scripted(vec![Answer::Close(answer)]).await;
        let proxy = ReverseProxy::new(&format!("http://{up}")).unwrap();
        let (status, _) = fetch(&proxy, get("/")).await;
        assert_eq!(
            status,
            StatusCode::BAD_GATEWAY,
            "{}",
            String::from_utf8_lossy(answer)
        );
    }
}

#[tokio::test]
async fn bodies_cut_short_are_errors() {
    let answers: [&'static [u8]; 3] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ];
    for answer in answers {
        let (up, _seen) = scripted(vec![Answer::Close(answer)]).await;
        let proxy = ReverseProxy::new(&format!("http://{up}")).unwrap();
        let (status, body) = fetch(&proxy, get("/")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_err(), "{}", String::from_utf8_lossy(answer));
    }
}

/// A pooled connection the upstream closes as the next request arrives: an
/// idempotent request is sent again on a new connection, a POST is not.
#[tokio::test]
async fn only_idempotent_requests_are_retried_on_a_stale_connection() {
    let ok: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let (up, mut seen) = scripted(vec![
        Answer::Keep(ok),
        Answer::Hang,
        Answer::Keep(ok),
        Answer::Hang,
    ])
    .await;
    let proxy = ReverseProxy::new(&format!("http://{up}")).unwrap();

    assert_eq!(fetch(&proxy, get("/")).await.0, StatusCode::OK);
    let (first, _) = next(&mut seen).await;
    // GET: refused on the pooled connection, answered on a new one.
    expect_ok(&proxy, get("/again"), "ok").await;
    assert_eq!(next(&mut seen).await.0, first);
    let (second, head) = next(&mut seen).await;
    assert_ne!(second, first);
    assert!(head.starts_with("GET /again"), "{head}");
    // POST without a body: sent once, then a 502.
    let (status, _) = fetch(&proxy, request("POST", "/once")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let (conn, head) = next(&mut seen).await;
    assert_eq!(conn, second);
    assert!(head.starts_with("POST /once"), "{head}");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), seen.recv())
            .await
            .is_err(),
        "the POST was sent twice"
    );
}

#[tokio::test]
async fn pooling_follows_max_idle_and_idle_timeout() {
    let ok: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    // Sequential requests share one connection.
    let (up, mut seen) = scripted(vec![Answer::Keep(ok); 3]).await;
    let proxy = ReverseProxy::new(&format!("http://{up}")).unwrap();
    for _ in 0..3 {
        assert_eq!(fetch(&proxy, get("/")).await.0, StatusCode::OK);
        assert_eq!(next(&mut seen).await.0, 1);
    }

    // With no idle connections allowed, each request opens its own.
    let (up, mut seen) = scripted(vec![Answer::Keep(ok); 3]).await;
    let proxy = ReverseProxy::builder(&format!("http://{up}"))
        .pool_max_idle(0)
        .build()
        .unwrap();
    for n in 1..=3 {
        assert_eq!(fetch(&proxy, get("/")).await.0, StatusCode::OK);
        assert_eq!(next(&mut seen).await.0, n);
    }

    // An idle connection is closed once the idle timeout has passed.
    let (listener, addr) = listener().await;
    let proxy = ReverseProxy::builder(&format!("http://{addr}"))
        .pool_idle_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let call = tokio::spawn(fetch_status(proxy.clone()));
    let (mut tcp, _) = within("accept", listener.accept()).await.unwrap();
    read_head(&mut tcp).await.unwrap();
    tcp.write_all(ok).await.unwrap();
    assert_eq!(call.await.unwrap(), StatusCode::OK);
    let mut rest = Vec::new();
    let read = within(
        "the pool to close the idle connection",
        tcp.read_to_end(&mut rest),
    )
    .await;
    assert_eq!(read.unwrap(), 0);
}

async fn fetch_status(proxy: ReverseProxy) -> StatusCode {
    fetch(&proxy, get("/")).await.0
}

/// An idle connection the upstream has closed is noticed before it is used,
/// so even a request that is never retried (a POST) gets a fresh one.
#[tokio::test]
async fn an_idle_connection_closed_by_the_upstream_is_not_used() {
    let ok: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let (listener, addr) = listener().await;
    let proxy = ReverseProxy::new(&format!("http://{addr}")).unwrap();
    let call = tokio::spawn(fetch_status(proxy.clone()));
    let (mut tcp, _) = within("accept", listener.accept()).await.unwrap();
    read_head(&mut tcp).await.unwrap();
    tcp.write_all(ok).await.unwrap();
    assert_eq!(call.await.unwrap(), StatusCode::OK);
    drop(tcp);
    // Let the runtime's I/O driver see the FIN (yield_now runs after it).
    tokio::task::yield_now().await;

    let call = tokio::spawn(async move { fetch(&proxy, request("POST", "/")).await.0 });
    let (mut tcp, _) = within("a new connection", listener.accept()).await.unwrap();
    let head = read_head(&mut tcp).await.unwrap();
    assert!(head.starts_with("POST / "), "{head}");
    tcp.write_all(ok).await.unwrap();
    assert_eq!(call.await.unwrap(), StatusCode::OK);
}

/// Many requests at once over the fast path, through a real hyper upstream:
/// every body arrives whole, on as many connections as were needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_their_own_answers() {
    let up = serve_fn(|req: Request<hyper::body::Incoming>| async move {
        let path = req.uri().path().to_owned();
        http::Response::new(http_body_util::Full::new(Bytes::from(path.repeat(100))))
    })
    .await;
    let proxy = ReverseProxy::new(&format!("http://{up}")).unwrap();
    let mut calls = Vec::new();
    // Each request without an idle connection opens one, as nginx does: stay
    // under the test listener's backlog (std's 128).
    for i in 0..100 {
        let proxy = proxy.clone();
        calls.push(tokio::spawn(async move {
            let path = format!("/{i}");
            let (status, body) = fetch(&proxy, get(&path)).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body.unwrap().0, path.repeat(100));
        }));
    }
    for call in calls {
        within("a call", call).await.unwrap();
    }
}

/// A proxy that outlives the runtime it first ran on (tests that build one
/// runtime after another): connections parked by the old runtime are not
/// used, and idle connections still expire on the new one.
#[test]
fn the_pool_outlives_its_runtime() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let (mut conn, closed_tx) = (conn.unwrap(), closed_tx.clone());
            std::thread::spawn(move || {
                let (mut buf, mut head) = ([0u8; 1024], Vec::new());
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .unwrap();
                conn.set_read_timeout(Some(WAIT)).unwrap();
                let closed = matches!(conn.read(&mut buf), Ok(0));
                let _ = closed_tx.send((n, closed));
            });
        }
    });
    let proxy = ReverseProxy::builder(&format!("http://{addr}"))
        .pool_idle_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    assert_eq!(
        runtime().block_on(fetch_status(proxy.clone())),
        StatusCode::OK
    );
    runtime().block_on(async move {
        assert_eq!(fetch_status(proxy.clone()).await, StatusCode::OK);
        let closed = tokio::task::spawn_blocking(move || {
            let mut closed: Vec<_> = (0..2).map(|_| closed_rx.recv_timeout(WAIT)).collect();
            closed.sort_by_key(|c| c.as_ref().map(|c| c.0).ok());
            closed
        });
        let closed = closed.await.unwrap();
        // The first runtime's connection, dropped on the second; the second's,
        // closed by the second runtime's sweeper.
        assert_eq!(closed, [Ok((0, true)), Ok((1, true))]);
        drop(proxy);
    });
}

/// RFC 9112 section 6.3's order: HEAD has no body whatever the fields say;
/// Transfer-Encoding wins over Content-Length (and the connection is not
/// reused); `Connection: close` ends reuse.
#[tokio::test]
async fn framing_follows_rfc_9112_order() {
    let (up, mut seen) = scripted(vec![
        Answer::Keep(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Answer::Keep(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        Answer::Keep(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"),
        Answer::Keep(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ])
    .await;
    let proxy = ReverseProxy::new(&format!("http://{up}")).unwrap();

    let (status, body) = fetch(&proxy, request("HEAD", "/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.unwrap().0.is_empty());
    let (first, _) = next(&mut seen).await;

    let res = within("TE and CL", proxy.clone().oneshot(get("/")))
        .await
        .unwrap();
    assert!(res.headers().get("content-length").is_none());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "ok");
    assert_eq!(next(&mut seen).await.0, first);

    let (status, _) = fetch(&proxy, get("/")).await;
    assert_eq!(status, StatusCode::OK);
    let (second, _) = next(&mut seen).await;
    assert_ne!(second, first, "a connection with TE and CL was reused");
    let (status, _) = fetch(&proxy, get("/")).await;
    assert_eq!(status, StatusCode::OK);
    let (third, _) = next(&mut seen).await;
    assert_ne!(third, second, "a `Connection: close` connection was reused");
}

/// A large body arrives whole over many reads, then the connection is reused.
#[tokio::test]
async fn a_large_body_streams_through() {
    let up = serve_fn(|_req: Request<hyper::body::Incoming>| async move {
        http::Response::new(http_body_util::Full::new(Bytes::from(vec![7u8; 3 << 20])))
    })
    .await;
    let proxy = ReverseProxy::new(&format!("http://{up}")).unwrap();
    for _ in 0..2 {
        let (status, body) = fetch(&proxy, get("/")).await;
        assert_eq!(status, StatusCode::OK);
        let body = body.unwrap().0;
        assert_eq!(body.len(), 3 << 20);
        assert!(body.iter().all(|b| *b == 7));
    }
}

/// A request body of a known length (up to 64 KiB) goes whole with its head
/// on the fast path, and the connection is reused after it.
#[tokio::test]
async fn small_bodies_go_with_their_head() {
    let ok: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let (listener, addr) = listener().await;
    let proxy = ReverseProxy::new(&format!("http://{addr}")).unwrap();
    let post = |body: &'static str| {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let req = Request::post("/submit")
                .body(http_body_util::Full::new(Bytes::from_static(
                    body.as_bytes(),
                )))
                .unwrap();
            let res = proxy.oneshot(req).await.unwrap();
            res.status()
        })
    };
    let call = post("hello");
    let (mut tcp, _) = within("accept", listener.accept()).await.unwrap();
    let head = read_head(&mut tcp).await.unwrap();
    assert!(head.starts_with("POST /submit HTTP/1.1\r\n"), "{head}");
    assert_eq!(header_of(&head, "content-length"), Some("5"), "{head}");
    let mut body = [0u8; 5];
    within("the body", tcp.read_exact(&mut body)).await.unwrap();
    assert_eq!(&body, b"hello");
    tcp.write_all(ok).await.unwrap();
    assert_eq!(call.await.unwrap(), StatusCode::OK);

    // The same connection carries the next one.
    let call = post("again!");
    let head = within("the second request", read_head(&mut tcp))
        .await
        .unwrap();
    assert_eq!(header_of(&head, "content-length"), Some("6"), "{head}");
    let mut body = [0u8; 6];
    within("the body", tcp.read_exact(&mut body)).await.unwrap();
    tcp.write_all(ok).await.unwrap();
    assert_eq!(call.await.unwrap(), StatusCode::OK);
}

/// An upstream that answers before reading the body (a 413, say) is heard.
#[tokio::test]
async fn an_early_answer_is_relayed() {
    let (up, mut seen) = scripted(vec![Answer::Keep(
        b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )])
    .await;
    let proxy = ReverseProxy::new(&format!("http://{up}")).unwrap();
    let req = Request::put("/big")
        .body(http_body_util::Full::new(Bytes::from(vec![1u8; 60 * 1024])))
        .unwrap();
    let res = within("response", proxy.oneshot(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(next(&mut seen).await.1.starts_with("PUT /big"));
}

/// A body that fails, or ends short of the length it announced, is not sent.
#[tokio::test]
async fn a_failing_body_is_not_sent() {
    struct Short(bool);
    impl http_body::Body for Short {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
            let fail = self.0;
            self.0 = false;
            std::task::Poll::Ready(match fail {
                true => Some(Err(std::io::Error::other("client went away"))),
                false => None,
            })
        }
        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(10)
        }
    }
    let (up, mut seen) = scripted(vec![]).await;
    let proxy = ReverseProxy::new(&format!("http://{up}")).unwrap();
    for fails in [true, false] {
        let req = Request::post("/").body(Short(fails)).unwrap();
        let res = within("response", proxy.clone().oneshot(req))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), seen.recv())
            .await
            .is_err(),
        "a request with a broken body reached the upstream"
    );
}

/// An idle connection parked by one thread serves a request made on another
/// (a work-stealing runtime moves tasks between threads).
#[test]
fn idle_connections_are_shared_between_threads() {
    let ok: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let (conns_tx, conns_rx) = std::sync::mpsc::channel();
    let (proxy_tx, proxy_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let (up, mut seen) = scripted(vec![Answer::Keep(ok); 2]).await;
            let proxy = ReverseProxy::new(&format!("http://{up}")).unwrap();
            assert_eq!(fetch_status(proxy.clone()).await, StatusCode::OK);
            proxy_tx.send(proxy).unwrap();
            while let Some((conn, _)) = seen.recv().await {
                let _ = conns_tx.send(conn);
            }
        })
    });
    let proxy = proxy_rx.recv_timeout(WAIT).expect("the first request");
    assert_eq!(runtime().block_on(fetch_status(proxy)), StatusCode::OK);
    let first = conns_rx.recv_timeout(WAIT).unwrap();
    let second = conns_rx.recv_timeout(WAIT).unwrap();
    assert_eq!((first, second), (1, 1));
}

/// The `Content-Length` sent is the length of the body sent, whatever the
/// request's field said.
#[tokio::test]
async fn the_length_sent_is_the_length_read() {
    let ok: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let (up, mut seen) = scripted(vec![Answer::Keep(ok), Answer::Keep(ok)]).await;
    let proxy = ReverseProxy::new(&format!("http://{up}")).unwrap();
    let req = Request::delete("/x")
        .header("content-length", "5")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = within("response", proxy.clone().oneshot(req))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (conn, head) = next(&mut seen).await;
    assert_eq!(header_of(&head, "content-length"), Some("0"), "{head}");
    // The connection is still in step: the next request is read on it.
    assert_eq!(fetch(&proxy, get("/y")).await.0, StatusCode::OK);
    assert_eq!(next(&mut seen).await.0, conn);
}

/// The answer a planted response carries: a client that reads it got
/// another exchange's bytes.
const PLANTED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nPLANTED";

/// A hostile upstream plants a second response: after a body of stated
/// length, as the body of a HEAD, 204 or 304 answer, or later, on the idle
/// connection. A second client, on a connection of its own, gets the real
/// answer to its request from a new upstream connection, never a planted
/// byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_responses_never_reach_another_client() {
    struct Case {
        method: &'static str,
        first: &'static [u8],
        later: bool,
    }
    let cases = [
        Case {
            method: "GET",
            first: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            later: false,
        },
        Case {
            method: "HEAD",
            first: b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
            later: false,
        },
        Case {
            method: "GET",
            first: b"HTTP/1.1 204 No Content\r\n\r\n",
            later: false,
        },
        Case {
            method: "GET",
            first: b"HTTP/1.1 304 Not Modified\r\n\r\n",
            later: false,
        },
        Case {
            method: "GET",
            first: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            later: true,
        },
    ];
    for case in cases {
        let (up, mut conns) = raw_upstream().await;
        let addr = serve(ReverseProxy::new(&format!("http://{up}")).unwrap()).await;
        let first = tokio::spawn(async move {
            let mut cli = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = format!("{} / HTTP/1.1\r\nHost: x\r\n\r\n", case.method);
            cli.write_all(head.as_bytes()).await.unwrap();
            let head = within("the first answer", read_head(&mut cli))
                .await
                .unwrap();
            (head, cli)
        });
        let (_, mut srv1) = within("the first request", conns.recv()).await.unwrap();
        let mut bytes = case.first.to_vec();
        if !case.later {
            bytes.extend_from_slice(PLANTED);
        }
        srv1.write_all(&bytes).await.unwrap();
        let (head, _cli) = within("the first client", first).await.unwrap();
        assert!(status_of(&head) < 400, "{head}");
        if case.later {
            // The first exchange is over: plant on the idle connection.
            srv1.write_all(PLANTED).await.unwrap();
        }
        // The second client. Its request reaches the upstream on a new
        // connection; the old one answers it (if it is ever reused) with a
        // marker of its own.
        let second = tokio::spawn(raw_get(addr, "/second"));
        let mut reused = [0u8; 1];
        let mut planted_open = true;
        let (conn2_head, mut srv2) = within("the second request", async {
            loop {
                tokio::select! {
                    got = conns.recv() => break got.unwrap(),
                    n = srv1.read(&mut reused), if planted_open => match n {
                        // Closed by the proxy: right.
                        Ok(0) | Err(_) => planted_open = false,
                        Ok(_) => panic!("the planted connection was reused"),
                    },
                }
            }
        })
        .await;
        assert!(conn2_head.starts_with("GET /second"), "{conn2_head}");
        srv2.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
            .await
            .unwrap();
        let (head, body) = within("the second answer", second).await.unwrap();
        assert_eq!(status_of(&head), 200, "{head}");
        assert_eq!(body, b"fresh", "{}", String::from_utf8_lossy(&body));
    }
}
