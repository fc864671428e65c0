//! `proxy_tower::dns::DnsDiscover` with a resolver the test controls (no
//! real DNS): addresses added are used, addresses removed get no new
//! requests, and a tunnel to a removed address keeps working; a failed
//! resolution keeps the last addresses.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e_tests::*;
use http::{Request, Response};
use hyper::body::Incoming;
use proxy_tower::ReverseProxy;
use proxy_tower::dns::{DnsDiscover, Resolving};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the test's resolver answers: the addresses, or an error.
#[derive(Clone, Default)]
struct Records(Arc<Mutex<Option<Vec<SocketAddr>>>>, Arc<AtomicUsize>);

impl Records {
    /// Waits until the resolver has been asked twice more: what it answers
    /// now has been taken in.
    async fn asked_twice_more(&self) {
        let from = self.1.load(Ordering::SeqCst);
        within("two more resolutions", async {
            while self.1.load(Ordering::SeqCst) < from + 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    fn set(&self, addrs: Option<Vec<SocketAddr>>) {
        *self.0.lock().unwrap() = addrs;
    }

    fn resolver(&self) -> impl Fn(&str, u16) -> Resolving + Send + Sync + 'static {
        let records = self.clone();
        move |host: &str, _port: u16| -> Resolving {
            assert_eq!(host, "chat.test");
            let answer = records.0.lock().unwrap().clone();
            records.1.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { answer.ok_or_else(|| std::io::Error::other("SERVFAIL")) })
        }
    }
}

async fn named(name: &'static str) -> SocketAddr {
    serve_fn(move |_req: Request<Incoming>| async move { Response::new(name.to_owned()) }).await
}

/// Waits until the balancer knows exactly `want`.
async fn until_known(proxy: &proxy_tower::BalancedProxy, want: &[SocketAddr]) {
    let mut want: Vec<String> = want.iter().map(|a| format!("http://{a}/")).collect();
    want.sort();
    within("the balancer to see the DNS change", async {
        loop {
            let mut known: Vec<String> = proxy
                .upstreams()
                .iter()
                .map(|u| u.uri.to_string())
                .collect();
            known.sort();
            if known == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_follow_the_records_and_tunnels_outlive_them() {
    let (a, b) = (named("a").await, named("b").await);
    let (tunnel_up, mut heads) = raw_upstream().await;
    let records = Records::default();
    records.set(Some(vec![a, tunnel_up]));
    let discover = DnsDiscover::builder("chat.test", 80)
        .interval(Duration::from_millis(20))
        .resolver(records.resolver())
        .build();
    let proxy = ReverseProxy::builder("http://chat.test")
        .build_discovered(discover)
        .unwrap();
    until_known(&proxy, &[a, tunnel_up]).await;
    let addr = serve(proxy.clone()).await;

    // A tunnel to the address that will go (the balancer picks among two:
    // retry until one lands on the raw upstream).
    let (mut cli, mut srv) = loop {
        let mut cli = send_upgrade(addr, "echo", b"").await;
        let landed = tokio::select! {
            head = heads.recv() => head,
            _ = async {
                let head = within("a response", read_head(&mut cli)).await.unwrap();
                // "a" answers the upgrade with a plain 200.
                assert_eq!(status_of(&head), 200, "{head}");
            } => None,
        };
        if let Some((_, mut srv)) = landed {
            switch_protocols(&mut srv, "echo").await;
            let head = within("101", read_head(&mut cli)).await.unwrap();
            assert_eq!(status_of(&head), 101, "{head}");
            break (cli, srv);
        }
    };

    // The tunnel's address disappears, b appears.
    records.set(Some(vec![a, b]));
    until_known(&proxy, &[a, b]).await;
    for _ in 0..20 {
        let (head, body) = raw_get(addr, "/").await;
        assert_eq!(status_of(&head), 200);
        assert!(body == b"a" || body == b"b", "{body:?}");
    }
    // The tunnel to the removed address still carries both ways, and half-closes.
    cli.write_all(b"still").await.unwrap();
    let mut buf = [0u8; 5];
    within("bytes upstream", srv.read_exact(&mut buf))
        .await
        .unwrap();
    srv.write_all(b"there").await.unwrap();
    within("bytes back", cli.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"there");
    cli.shutdown().await.unwrap();
    assert_eq!(within("FIN", srv.read(&mut buf)).await.unwrap(), 0);

    // A failed resolution keeps the last addresses.
    records.set(None);
    records.asked_twice_more().await;
    let mut known: Vec<String> = proxy
        .upstreams()
        .iter()
        .map(|u| u.uri.to_string())
        .collect();
    known.sort();
    let mut want = vec![format!("http://{a}/"), format!("http://{b}/")];
    want.sort();
    assert_eq!(known, want);
    let (head, _) = raw_get(addr, "/").await;
    assert_eq!(status_of(&head), 200);
    // And an empty answer is taken as a failure too.
    records.set(Some(Vec::new()));
    records.asked_twice_more().await;
    assert_eq!(proxy.upstreams().len(), 2);
}
