//! The bounds on the upstream side: the connection cap and its queue, the
//! wait for an HTTP/2 stream, the read timeout of response bodies, and the
//! response timeout against an upstream that takes none of the body.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use e2e_tests::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy_tower::ReverseProxy;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

/// An upstream that counts the connections it accepted and the requests it
/// got, and answers every request 200 once `release` turns true.
async fn held_upstream(
    accepted: Arc<AtomicUsize>,
    release: watch::Receiver<bool>,
) -> std::net::SocketAddr {
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let release = release.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let mut release = release.clone();
                    async move {
                        let _ = release.wait_for(|go| *go).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("done"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// 2,000 requests at once to an upstream that answers none until told: the
/// proxy opens no more than its cap of connections, every request past the
/// cap is answered 503 by the queue timeout alone (the upstream has answered
/// nothing yet when they arrive), and the requests that got a slot are
/// answered once the upstream is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_and_sheds_with_503() {
    const CAP: usize = 50;
    const REQUESTS: usize = 2000;
    let accepted = Arc::new(AtomicUsize::new(0));
    let (release, held) = watch::channel(false);
    let upstream = held_upstream(accepted.clone(), held).await;
    let proxy = ReverseProxy::builder(&format!("http://{upstream}"))
        .upstream_max_connections(CAP)
        .queue_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        let proxy = proxy.clone();
        // Both client paths: bodiless GETs (this crate's HTTP/1 path) and
        // chunked POSTs (hyper-util's).
        calls.spawn(async move {
            let res = if i % 2 == 0 {
                let req = Request::get("/").body(Empty::<Bytes>::new()).unwrap();
                proxy.oneshot(req).await
            } else {
                let chunks = futures_util::stream::iter([Ok::<_, Infallible>(
                    http_body::Frame::data(Bytes::from("x")),
                )]);
                let req = Request::post("/").body(StreamBody::new(chunks)).unwrap();
                proxy.oneshot(req).await
            };
            let res = res.unwrap();
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        });
    }
    let mut shed = 0;
    within("every request past the cap to be shed", async {
        while shed < REQUESTS - CAP {
            let (status, _) = calls.join_next().await.unwrap().unwrap();
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            shed += 1;
        }
    })
    .await;
    assert_eq!(accepted.load(Ordering::SeqCst), CAP, "upstream connections");
    // The held requests now get their answers.
    release.send_replace(true);
    let answered = within("the held requests", async {
        let mut answered = 0;
        while let Some(done) = calls.join_next().await {
            let (status, body) = done.unwrap();
            assert_eq!((status, &body[..]), (StatusCode::OK, &b"done"[..]));
            answered += 1;
        }
        answered
    })
    .await;
    assert_eq!(answered, CAP);
    assert_eq!(accepted.load(Ordering::SeqCst), CAP, "upstream connections");
}

/// A tunnel gives its slot back once its 101 is in: with a cap of one,
/// a tunnel stays open and requests still pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_do_not_hold_connection_slots() {
    let (upstream, mut conns) = raw_upstream().await;
    let proxy = ReverseProxy::builder(&format!("http://{upstream}"))
        .upstream_max_connections(1)
        .queue_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let addr = serve(proxy).await;
    let mut cli = send_upgrade(addr, "echo", b"").await;
    let (_, mut srv) = within("the upgrade", conns.recv()).await.unwrap();
    switch_protocols(&mut srv, "echo").await;
    let head = within("the 101", read_head(&mut cli)).await.unwrap();
    assert_eq!(status_of(&head), 101, "{head}");
    // A plain request on another connection: the slot is free.
    let get = tokio::spawn(raw_get(addr, "/"));
    let (_, mut srv2) = within("the request", conns.recv()).await.unwrap();
    srv2.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .await
        .unwrap();
    let (head, body) = within("the answer", get).await.unwrap();
    assert_eq!((status_of(&head), &body[..]), (200, &b"ok"[..]), "{head}");
}

/// An upstream that sends part of a body, then nothing: the body is cut
/// after the read timeout; one that trickles its body, each piece within the
/// timeout, is read whole however long it takes altogether.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_timeout_is_the_silence_between_reads() {
    let (upstream, mut conns) = raw_upstream().await;
    let proxy = ReverseProxy::builder(&format!("http://{upstream}"))
        .read_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    // Stalls after 5 of 10 bytes.
    let stalled = tokio::spawn({
        let proxy = proxy.clone();
        async move {
            let req = Request::get("/stall").body(Empty::<Bytes>::new()).unwrap();
            let res = proxy.oneshot(req).await.unwrap();
            (res.status(), res.into_body().collect().await.map(|_| ()))
        }
    });
    let (_, mut srv) = within("the request", conns.recv()).await.unwrap();
    srv.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
        .await
        .unwrap();
    let (status, body) = within("the body to be cut", stalled).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let err = body.unwrap_err().to_string();
    assert!(err.contains("read timeout"), "{err}");
    drop(srv);

    // Trickles 8 pieces, one every 100 ms: 800 ms in all, over the timeout.
    let trickled = tokio::spawn({
        let proxy = proxy.clone();
        async move {
            let req = Request::get("/trickle")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let res = proxy.oneshot(req).await.unwrap();
            res.into_body().collect().await.map(|c| c.to_bytes())
        }
    });
    let (_, mut srv) = within("the request", conns.recv()).await.unwrap();
    srv.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..8 {
        // The upstream is slow: this pause is its input, not a wait.
        tokio::time::sleep(Duration::from_millis(100)).await;
        srv.write_all(b"x").await.unwrap();
    }
    let body = within("the whole body", trickled).await.unwrap().unwrap();
    assert_eq!(&body[..], b"xxxxxxxx");
}

/// An upstream that reads the head and none of the body: 504 after the
/// response timeout, though the request was never sent whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_takes_no_body_is_504() {
    let (upstream, mut conns) = raw_upstream().await;
    let proxy = ReverseProxy::builder(&format!("http://{upstream}"))
        .response_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    // 8 MiB, more than socket buffers hold, streamed (hyper-util's path).
    let chunks =
        futures_util::stream::iter((0..128).map(|_| {
            Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(vec![b'x'; 1 << 16])))
        }));
    let call = tokio::spawn(async move {
        let req = Request::post("/").body(StreamBody::new(chunks)).unwrap();
        proxy.oneshot(req).await.unwrap().status()
    });
    let (_, _held) = within("the request head", conns.recv()).await.unwrap();
    let status = within("the 504", call).await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
}

/// An HTTP/2 upstream that allows one stream at a time: a second request
/// waits for the queue timeout, then is answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_for_an_http2_stream_is_bounded() {
    let (release, held) = watch::channel(false);
    let (arrived, mut arrivals) = mpsc::unbounded_channel();
    let (listener, upstream) = listener().await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (held, arrived) = (held.clone(), arrived.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<_>| {
                    let (mut held, arrived) = (held.clone(), arrived.clone());
                    async move {
                        if req.uri().path() != "/warm" {
                            let _ = arrived.send(());
                            let _ = held.wait_for(|go| *go).await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("h2"))))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(1)
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let proxy = ReverseProxy::builder(&format!("http://{upstream}"))
        .http2_only()
        .queue_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let get = |proxy: ReverseProxy, path: &'static str| async move {
        let req = Request::get(path).body(Empty::<Bytes>::new()).unwrap();
        proxy.oneshot(req).await.unwrap().status()
    };
    // A first exchange: its answer comes after the upstream's SETTINGS, so
    // the proxy knows the limit from here on.
    assert_eq!(
        within("a warm-up", get(proxy.clone(), "/warm")).await,
        StatusCode::OK
    );
    let first = tokio::spawn(get(proxy.clone(), "/"));
    within("the first request at the upstream", arrivals.recv()).await;
    // The only stream is taken: the second waits, then gets a 503.
    let second = within("the 503", get(proxy.clone(), "/")).await;
    assert_eq!(second, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        arrivals.try_recv().is_err(),
        "the second reached the upstream"
    );
    release.send_replace(true);
    assert_eq!(
        within("the first answer", first).await.unwrap(),
        StatusCode::OK
    );
}

/// A client that sends part of its body, then nothing: 408 after the
/// response timeout (its own silence), on either client path, and the
/// upstream is not blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_sending_its_body_gets_408() {
    let upstream = serve_fn(|req: Request<hyper::body::Incoming>| async move {
        let _ = req.into_body().collect().await;
        Response::new(Full::new(Bytes::from("read it all")))
    })
    .await;
    let proxy = ReverseProxy::builder(&format!("http://{upstream}"))
        .response_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let addr = serve(proxy).await;
    for framing in ["content-length: 10", "transfer-encoding: chunked"] {
        let mut cli = tokio::net::TcpStream::connect(addr).await.unwrap();
        let part: &[u8] = if framing.starts_with("content") {
            b"ab"
        } else {
            b"2\r\nab\r\n"
        };
        cli.write_all(format!("POST / HTTP/1.1\r\nhost: x\r\n{framing}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        cli.write_all(part).await.unwrap();
        let (head, _) = within("the 408", read_response(&mut cli)).await;
        assert_eq!(status_of(&head), 408, "{framing}: {head}");
    }
}
