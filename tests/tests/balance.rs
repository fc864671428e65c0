//! Several upstreams behind one `BalancedProxy`: requests spread over them,
//! a dead upstream is ejected without a client seeing an error for requests
//! that could be sent elsewhere, and it comes back once it is up again.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use e2e_tests::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy_tower::ReverseProxy;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// An upstream that answers its name, and can be killed (listener and every
/// connection closed) and started again on the same port.
struct Upstream {
    addr: SocketAddr,
    name: &'static str,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Upstream {
    async fn start(name: &'static str) -> Upstream {
        let (listener, addr) = listener().await;
        let up = Upstream {
            addr,
            name,
            tasks: Arc::default(),
        };
        up.run(listener);
        up
    }

    fn run(&self, listener: TcpListener) {
        let (name, tasks) = (self.name, self.tasks.clone());
        let accept = tokio::spawn({
            let tasks = tasks.clone();
            async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let conn = tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |_req| async move {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                    });
                    tasks.lock().unwrap().push(conn.abort_handle());
                }
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
    }

    /// Closes the listener and every connection.
    async fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        // The port refuses connections once the listener is dropped.
        within("the port to close", async {
            while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }

    async fn restart(&self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind");
        self.run(listener);
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Sends `n` GETs, 16 at a time; returns how many each upstream answered, and
/// the statuses that were not 200.
async fn spread(addr: SocketAddr, n: usize) -> (HashMap<String, usize>, Vec<u16>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let mut counts = HashMap::new();
    let mut errors = Vec::new();
    let mut left = n;
    while left > 0 {
        let batch = left.min(16);
        left -= batch;
        let mut calls = Vec::new();
        for _ in 0..batch {
            let req = Request::get(format!("http://{addr}/"))
                .body(Empty::new().boxed())
                .unwrap();
            calls.push(client.request(req));
        }
        for call in calls {
            let res = within("a response", call).await.expect("a response");
            let status = res.status().as_u16();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            if status == 200 {
                *counts
                    .entry(String::from_utf8_lossy(&body).into_owned())
                    .or_default() += 1;
            } else {
                errors.push(status);
            }
        }
    }
    (counts, errors)
}

/// Three upstreams, 3,000 requests: each gets its share within 20%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_the_upstreams() {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let proxy = ReverseProxy::builder(&format!("http://{}", ups[0].addr))
        .add_upstream(&format!("http://{}", ups[1].addr))
        .add_upstream(&format!("http://{}", ups[2].addr))
        .build_balanced()
        .unwrap();
    let addr = serve(proxy.clone()).await;
    let (counts, errors) = spread(addr, 3000).await;
    assert!(errors.is_empty(), "{errors:?}");
    for up in &ups {
        let got = counts.get(up.name).copied().unwrap_or(0);
        assert!(
            (800..=1200).contains(&got),
            "{}: {got} of 3000 ({counts:?})",
            up.name
        );
    }
    assert_eq!(proxy.upstreams().len(), 3);
    assert!(proxy.upstreams().iter().all(|u| u.healthy));
}

/// One upstream killed between requests: no client sees an error (the
/// requests that find it dead were never sent, and go to another), it is
/// ejected, and once it is up again it gets requests again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_is_ejected_and_comes_back() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let proxy = ReverseProxy::builder(&format!("http://{}", a.addr))
        .add_upstream(&format!("http://{}", b.addr))
        .outlier_detection(3, Duration::from_millis(300))
        .build_balanced()
        .unwrap();
    let addr = serve(proxy.clone()).await;
    let (counts, errors) = spread(addr, 200).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(counts.contains_key("b"), "{counts:?}");

    b.kill().await;
    let (counts, errors) = spread(addr, 300).await;
    assert!(errors.is_empty(), "clients saw {errors:?} while b was down");
    assert_eq!(counts.get("a"), Some(&300), "{counts:?}");
    let b_uri = format!("http://{}/", b.addr);
    let status = proxy.upstreams();
    let b_status = status.iter().find(|u| u.uri == b_uri.as_str()).unwrap();
    assert!(!b_status.healthy, "b still counted healthy: {status:?}");
    assert!(proxy.is_ready());

    b.restart().await;
    within("b to serve again", async {
        loop {
            let (counts, errors) = spread(addr, 16).await;
            assert!(errors.is_empty(), "{errors:?}");
            if counts.contains_key("b") {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// With every upstream down, the proxy still tries them (502, not a refusal
/// of its own), and serves again as soon as one is back, ejected or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_ejected_are_tried_anyway() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let proxy = ReverseProxy::builder(&format!("http://{}", a.addr))
        .add_upstream(&format!("http://{}", b.addr))
        .outlier_detection(1, Duration::from_secs(3600))
        .build_balanced()
        .unwrap();
    let addr = serve(proxy.clone()).await;
    a.kill().await;
    b.kill().await;
    let (_, errors) = spread(addr, 8).await;
    assert!(errors.iter().all(|&s| s == 502), "{errors:?}");
    assert!(!proxy.is_ready(), "{:?}", proxy.upstreams());
    a.restart().await;
    let (counts, errors) = spread(addr, 8).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(counts.get("a"), Some(&8));
}

/// A tunnel stays on the upstream that answered its 101: killing that
/// upstream ends only its tunnels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_stay_on_their_upstream() {
    let (up1, mut heads1) = raw_upstream().await;
    let (up2, mut heads2) = raw_upstream().await;
    let proxy = ReverseProxy::builder(&format!("http://{up1}"))
        .add_upstream(&format!("http://{up2}"))
        .build_balanced()
        .unwrap();
    let addr = serve(proxy).await;
    // Open tunnels until both upstreams hold one.
    let mut on1 = None;
    let mut on2 = None;
    within("a tunnel on each upstream", async {
        while on1.is_none() || on2.is_none() {
            let mut cli = send_upgrade(addr, "echo", b"").await;
            let (mut srv, slot) = tokio::select! {
                Some((_, srv)) = heads1.recv() => (srv, &mut on1),
                Some((_, srv)) = heads2.recv() => (srv, &mut on2),
            };
            switch_protocols(&mut srv, "echo").await;
            let head = read_head(&mut cli).await.unwrap();
            assert_eq!(status_of(&head), 101, "{head}");
            if slot.is_none() {
                *slot = Some((cli, srv));
            }
        }
    })
    .await;
    let (mut cli1, srv1) = on1.unwrap();
    let (mut cli2, mut srv2) = on2.unwrap();
    // Upstream 1 dies (its socket reset); tunnel 2 carries on.
    srv1.set_zero_linger().unwrap();
    drop(srv1);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut b = [0u8; 4];
    assert!(
        !matches!(within("tunnel 1 to end", cli1.read(&mut b)).await, Ok(n) if n > 0),
        "tunnel 1 still carries bytes"
    );
    cli2.write_all(b"ping").await.unwrap();
    within("tunnel 2", srv2.read_exact(&mut b)).await.unwrap();
    assert_eq!(&b, b"ping");
}

/// The active health check ejects an upstream whose check path fails (it then
/// gets no requests), and brings it back as soon as the path answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_check_ejects_and_restores() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let sick = Arc::new(AtomicBool::new(true));
    let a = serve_fn(|_req| async { Response::new(Full::new(Bytes::from("a"))) }).await;
    let b = serve_fn({
        let sick = sick.clone();
        move |req: Request<hyper::body::Incoming>| {
            let sick = sick.clone();
            async move {
                let mut res = Response::new(Full::new(Bytes::from("b")));
                if req.uri().path() == "/health" && sick.load(Ordering::SeqCst) {
                    *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                }
                res
            }
        }
    })
    .await;
    let proxy = ReverseProxy::builder(&format!("http://{a}"))
        .add_upstream(&format!("http://{b}"))
        .build_balanced()
        .unwrap();
    let addr = serve(proxy.clone()).await;
    let status = proxy.check_health("/health", Duration::from_secs(5)).await;
    let healthy: Vec<bool> = status.iter().map(|u| u.healthy).collect();
    assert_eq!(healthy, [true, false], "{status:?}");
    let (counts, errors) = spread(addr, 100).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(counts.get("a"), Some(&100), "{counts:?}");

    sick.store(false, Ordering::SeqCst);
    let status = proxy.check_health("/health", Duration::from_secs(5)).await;
    assert!(status.iter().all(|u| u.healthy), "{status:?}");
    let (counts, _) = spread(addr, 200).await;
    assert!(counts.get("b").copied().unwrap_or(0) > 0, "{counts:?}");
}

/// `build_discovered`: requests go to the upstreams the discover stream has
/// inserted and not removed, as they come and go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_upstreams_come_and_go() {
    use tower::discover::Change;
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Change<&'static str, http::Uri>>();
    let changes = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|c| c.map(Ok::<_, Infallible>))
    });
    let uri = |up: &Upstream| format!("http://{}", up.addr).parse::<http::Uri>().unwrap();
    tx.send(Change::Insert("a", uri(&a))).unwrap();
    let proxy = ReverseProxy::builder(&format!("http://{}", a.addr))
        .build_discovered(changes)
        .unwrap();
    let addr = serve(proxy.clone()).await;

    let (counts, errors) = spread(addr, 40).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(counts.get("a"), Some(&40), "{counts:?}");

    tx.send(Change::Insert("b", uri(&b))).unwrap();
    let (counts, errors) = spread(addr, 400).await;
    assert!(errors.is_empty(), "{errors:?}");
    for name in ["a", "b"] {
        let got = counts.get(name).copied().unwrap_or(0);
        assert!(got >= 100, "{name}: {got} of 400 ({counts:?})");
    }
    assert_eq!(proxy.upstreams().len(), 2);

    tx.send(Change::Remove("a")).unwrap();
    let (counts, errors) = spread(addr, 40).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(counts.get("b"), Some(&40), "{counts:?}");
    assert_eq!(proxy.upstreams().len(), 1);
}

/// `upstream(..)` then `build()` would drop the upstreams added: an error,
/// never a silent drop; `build_balanced` uses them.
#[test]
fn added_upstreams_are_never_dropped() {
    let builder = || {
        ReverseProxy::builder("http://127.0.0.1:1")
            .add_upstream("http://127.0.0.1:2")
            .outlier_detection(1, Duration::from_secs(1))
    };
    let err = builder().build().unwrap_err();
    assert!(err.is_invalid_upstream(), "{err}");
    assert!(err.to_string().contains("build_balanced"), "{err}");
    assert!(builder().build_with_client(()).is_err());
    assert_eq!(builder().build_balanced().unwrap().upstreams().len(), 2);
}

/// An upstream that reads the whole body before it answers its name.
async fn reads_then_answers(name: &'static str) -> SocketAddr {
    serve_fn(move |req: Request<hyper::body::Incoming>| async move {
        let _ = req.into_body().collect().await;
        Response::new(Full::new(Bytes::from(name)))
    })
    .await
}

/// Sends a POST whose body (`parts` pieces of 2 bytes, one every `gap`) is
/// slower than the response timeout; chunked, or with a Content-Length.
async fn slow_post(addr: SocketAddr, parts: usize, gap: Duration, chunked: bool) -> (u16, String) {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let framing = match chunked {
        true => "transfer-encoding: chunked".to_owned(),
        false => format!("content-length: {}", parts * 2),
    };
    tcp.write_all(format!("POST / HTTP/1.1\r\nhost: x\r\n{framing}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    for _ in 0..parts {
        // The client is slow: this pause is its input, not a wait for an event.
        tokio::time::sleep(gap).await;
        let piece: &[u8] = if chunked { b"2\r\nab\r\n" } else { b"ab" };
        tcp.write_all(piece).await.unwrap();
    }
    if chunked {
        tcp.write_all(b"0\r\n\r\n").await.unwrap();
    }
    let (head, body) = within("the answer", read_response(&mut tcp)).await;
    (
        status_of(&head),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// The response timeout starts once the whole request is sent: a client
/// that sends its body slowly gets its answer, and ejects nothing, on
/// either client path (a small body of known length, or a chunked one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_body_ejects_nothing() {
    let (a, b) = (reads_then_answers("a").await, reads_then_answers("b").await);
    let proxy = ReverseProxy::builder(&format!("http://{a}"))
        .add_upstream(&format!("http://{b}"))
        .response_timeout(Duration::from_millis(300))
        .outlier_detection(1, Duration::from_secs(3600))
        .build_balanced()
        .unwrap();
    let addr = serve(proxy.clone()).await;
    let gap = Duration::from_millis(150);
    let slow = [
        slow_post(addr, 5, gap, false),
        slow_post(addr, 5, gap, true),
        slow_post(addr, 5, gap, false),
        slow_post(addr, 5, gap, true),
    ];
    for (status, body) in futures_util::future::join_all(slow).await {
        assert_eq!(status, 200, "{body}");
        assert!(body == "a" || body == "b", "{body}");
    }
    let status = proxy.upstreams();
    assert!(status.iter().all(|u| u.healthy), "{status:?}");
}

/// A 504 (or any status) the upstream sends is its answer, not its failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answering_504_is_not_ejected() {
    let gateway_timeout = serve_fn(|_req| async {
        let mut res = Response::new(Full::new(Bytes::from("mine")));
        *res.status_mut() = http::StatusCode::GATEWAY_TIMEOUT;
        res
    })
    .await;
    let ok = Upstream::start("ok").await;
    let proxy = ReverseProxy::builder(&format!("http://{gateway_timeout}"))
        .add_upstream(&format!("http://{}", ok.addr))
        .outlier_detection(1, Duration::from_secs(3600))
        .build_balanced()
        .unwrap();
    let addr = serve(proxy.clone()).await;
    let (counts, errors) = spread(addr, 64).await;
    assert!(
        !errors.is_empty() && errors.iter().all(|&s| s == 504),
        "{errors:?}"
    );
    assert!(counts.contains_key("ok"), "{counts:?}");
    let status = proxy.upstreams();
    assert!(status.iter().all(|u| u.healthy), "{status:?}");
}

/// An upstream that takes the request and then fails (closes without an
/// answer, or says nothing within the response timeout) is ejected, even
/// when a custom error handler answers 200 for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_that_fail_after_the_request_are_ejected() {
    use tokio::io::AsyncWriteExt;
    for silent in [false, true] {
        let (dead, mut conns) = raw_upstream().await;
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some((_, mut tcp)) = conns.recv().await {
                match silent {
                    true => held.push(tcp),
                    false => drop(tcp.shutdown().await),
                }
            }
        });
        let ok = Upstream::start("ok").await;
        let proxy = ReverseProxy::builder(&format!("http://{dead}"))
            .add_upstream(&format!("http://{}", ok.addr))
            .response_timeout(Duration::from_millis(200))
            .outlier_detection(2, Duration::from_secs(3600))
            .error_handler(|_| Response::new(Bytes::from_static(b"sorry")))
            .build_balanced()
            .unwrap();
        let addr = serve(proxy.clone()).await;
        let dead_uri = format!("http://{dead}/");
        within("the failing upstream to be ejected", async {
            loop {
                let (_, errors) = spread(addr, 4).await;
                assert!(errors.is_empty(), "the handler answers 200: {errors:?}");
                let status = proxy.upstreams();
                let d = status.iter().find(|u| u.uri == dead_uri.as_str()).unwrap();
                if !d.healthy {
                    return;
                }
            }
        })
        .await;
    }
}
