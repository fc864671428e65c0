//! The cost of the proxy, against going straight to the upstream in the same run.
//!
//! - `http_get`: 32 concurrent GETs of a small body over pooled keep-alive
//!   connections, direct vs through `ReverseProxy` served by hyper-util.
//! - `tunnel`: an upgrade, then 8 MiB each way and FIN both ways, direct vs
//!   through the proxy's half-close tunnel.
//!
//! `cargo xtask bench -- http_get` or `-- tunnel` runs one group.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy_tower::ReverseProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

const EACH_WAY: usize = 8 * 1024 * 1024;
const CONCURRENT: usize = 32;

/// A small HTTP upstream; upgrade requests for `bench` get a 101 and then send
/// EACH_WAY bytes while reading to EOF, then FIN.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                    if req.headers().contains_key("upgrade") {
                        let on = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let io = TokioIo::new(on.await.unwrap());
                            let (rd, wr) = tokio::io::split(io);
                            pump(rd, wr).await;
                        });
                        let res = Response::builder()
                            .status(101)
                            .header("connection", "upgrade")
                            .header("upgrade", "bench")
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        return Ok::<_, Infallible>(res);
                    }
                    Ok(Response::new(Full::new(Bytes::from_static(
                        b"hello from upstream",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn proxy_to(upstream: SocketAddr) -> SocketAddr {
    let proxy = ReverseProxy::new(&format!("http://{upstream}")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = tcp.set_nodelay(true);
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    proxy.clone().oneshot(req)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// Sends EACH_WAY bytes then FIN, while reading to EOF.
async fn pump<R, W>(mut rd: R, mut wr: W)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let send = async {
        let chunk = vec![0x5au8; 64 * 1024];
        for _ in 0..EACH_WAY / chunk.len() {
            wr.write_all(&chunk).await.unwrap();
        }
        wr.shutdown().await.unwrap();
    };
    let recv = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        loop {
            let n = rd.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        assert_eq!(got, EACH_WAY);
    };
    tokio::join!(send, recv);
}

async fn gets(client: &Client<HttpConnector, Empty<Bytes>>, addr: SocketAddr) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENT {
        let client = client.clone();
        set.spawn(async move {
            let res = client
                .get(format!("http://{addr}/").parse().unwrap())
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            res.into_body().collect().await.unwrap();
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

async fn tunnel(addr: SocketAddr) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.write_all(
        format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: upgrade\r\nUpgrade: bench\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tcp.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let (rd, wr) = tcp.into_split();
    pump(rd, wr).await;
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (up, via) = rt.block_on(async {
        let up = upstream().await;
        (up, proxy_to(up).await)
    });
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();

    let mut group = c.benchmark_group("http_get");
    group.throughput(Throughput::Elements(CONCURRENT as u64));
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("direct", |b| b.to_async(&rt).iter(|| gets(&client, up)));
    group.bench_function("via_proxy", |b| b.to_async(&rt).iter(|| gets(&client, via)));
    group.finish();

    let mut group = c.benchmark_group("tunnel");
    group.throughput(Throughput::Bytes(2 * EACH_WAY as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("direct", |b| b.to_async(&rt).iter(|| tunnel(up)));
    group.bench_function("via_proxy", |b| b.to_async(&rt).iter(|| tunnel(via)));
    group.finish();
}

criterion_group!(proxy, benches);
criterion_main!(proxy);
