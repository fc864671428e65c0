//! Throughput of a loopback TCP relay: halfclose-io against
//! `tokio::io::copy_bidirectional_with_sizes` with the same buffer size (64 KiB
//! each way), in the same run, so that the ratio measures the design and not
//! the buffer size.
//!
//! Each iteration connects client -> relay -> server, sends 8 MiB each way at the
//! same time, then FIN both ways, and waits for the tunnel to end.
//!
//! `cargo xtask bench -- relay` runs only this group.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const EACH_WAY: usize = 8 * 1024 * 1024;

async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (c, a) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (c.unwrap(), a.unwrap().0)
}

async fn pump(stream: TcpStream) {
    let (mut rd, mut wr) = stream.into_split();
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

#[derive(Clone, Copy)]
enum Impl {
    HalfcloseIo,
    Tokio,
}

async fn one_relay(which: Impl) {
    let (client, mut a) = pair().await;
    let (mut b, server) = pair().await;
    let tunnel = tokio::spawn(async move {
        match which {
            Impl::HalfcloseIo => halfclose_io::copy_bidirectional(&mut a, &mut b)
                .await
                .map(|t| (t.a_to_b, t.b_to_a))
                .unwrap(),
            Impl::Tokio => {
                let size = halfclose_io::DEFAULT_BUFFER_SIZE;
                tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, size, size)
                    .await
                    .unwrap()
            }
        }
    });
    tokio::join!(pump(client), pump(server));
    let (up, down) = tunnel.await.unwrap();
    assert_eq!((up, down), (EACH_WAY as u64, EACH_WAY as u64));
}

fn relay(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("relay");
    group.throughput(Throughput::Bytes(2 * EACH_WAY as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    for (name, which) in [
        ("halfclose_io", Impl::HalfcloseIo),
        ("tokio_copy_bidirectional_64KiB", Impl::Tokio),
    ] {
        group.bench_with_input(
            BenchmarkId::new(name, "8MiB_each_way"),
            &which,
            |bench, &which| {
                bench.to_async(&rt).iter(|| one_relay(which));
            },
        );
    }
    group.finish();
}

criterion_group!(benches, relay);
criterion_main!(benches);
