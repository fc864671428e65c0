//! `--upstream dns://NAME:PORT`: the binary proxies to the addresses the
//! name resolves to (here `localhost`, from the hosts file: no DNS server
//! is asked).

use e2e_tests::*;
use http::{Request, Response};
use hyper::body::Incoming;

mod common;
use common::Proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_upstream_is_resolved_and_served() {
    let up = serve_fn(|_req: Request<Incoming>| async { Response::new("found".to_owned()) }).await;
    let dns = format!("dns://localhost:{}", up.port());
    let proxy = Proxy::start(&["--upstream", &dns, "--dns-interval", "100ms"]).await;
    // The first resolution may come after the first request: a 503 then.
    let body = within("a response from the resolved upstream", async {
        loop {
            let (head, body) = raw_get(proxy.addr, "/").await;
            match status_of(&head) {
                200 => return body,
                502 | 503 => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                other => panic!("{other}: {head}"),
            }
        }
    })
    .await;
    assert_eq!(body, b"found");
    for _ in 0..10 {
        let (head, body) = raw_get(proxy.addr, "/").await;
        assert_eq!((status_of(&head), body.as_slice()), (200, &b"found"[..]));
    }
    proxy.stop().await;
}
