//! splice(2)'s pipes on a multi-thread runtime: tunnels that start on one
//! thread and end on another leave no pipe open. The pool and the count of
//! live directions were per thread; a tunnel made on a worker and dropped
//! elsewhere left that worker's count high for good, and its pool kept up to
//! 64 pipes (128 file descriptors) that nothing would close.
//!
//! The only test of this binary: it counts the process's file descriptors,
//! which tests running beside it would change.

#![cfg(all(target_os = "linux", feature = "splice"))]

mod common;

const SPLICED: bool = true;

use std::future::Future;
use std::pin::Pin;

use common::{across, fin_both, within};
use halfclose_io::{Transfer, Tunnel, TunnelError};
use tokio::net::{TcpListener, TcpStream};

/// Tunnels in all.
const TUNNELS: usize = 5_000;
/// Bytes each side sends before the tunnel changes threads, and again after.
const CHUNK: usize = 2048;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// The soft limit on open files (`None`: unlimited).
fn fd_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// A connected pair of loopback sockets, through `listener` (one connection
/// at a time, so the accepted socket is the one just connected).
async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let addr = listener.local_addr().unwrap();
    let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (connected.unwrap(), accepted.unwrap().0)
}

type Running = Pin<Box<dyn Future<Output = Result<Transfer, TunnelError>> + Send>>;

/// One tunnel's ends and its copy, with bytes moved both ways and the copy
/// still running.
struct Open {
    client: TcpStream,
    server: TcpStream,
    tunnel: Running,
}

/// Opens a tunnel over two socket pairs and moves bytes each way through it.
async fn start(ends: [TcpStream; 4]) -> Open {
    let [mut client, mut a, mut b, mut server] = ends;
    // The splice directions are made at the first poll, on this thread. A
    // 4 KiB buffer, so that a read of a chunk is a bulk one, which moves the
    // direction to splice.
    let mut tunnel: Running = Box::pin(async move {
        Tunnel::new()
            .buffer_size(2 * CHUNK)
            .copy_tcp(&mut a, &mut b)
            .await
    });
    let traffic = async {
        across(&mut client, &mut server, &[b'c'; CHUNK]).await;
        across(&mut server, &mut client, &[b's'; CHUNK]).await;
    };
    tokio::select! {
        () = traffic => {}
        ended = &mut tunnel => panic!("the tunnel ended early: {ended:?}"),
    }
    Open {
        client,
        server,
        tunnel,
    }
}

/// Moves bytes each way again, then FIN from each side: the tunnel ends.
async fn finish(mut open: Open) {
    let traffic = async {
        across(&mut open.client, &mut open.server, &[b'C'; CHUNK]).await;
        across(&mut open.server, &mut open.client, &[b'S'; CHUNK]).await;
        fin_both(&mut open.client, &mut open.server).await;
    };
    let (transfer, ()) = tokio::join!(&mut open.tunnel, traffic);
    let transfer = transfer.expect("a clean end");
    assert_eq!(transfer.a_to_b, 2 * CHUNK as u64);
    assert_eq!(transfer.b_to_a, 2 * CHUNK as u64);
}

/// 5,000 spliced tunnels, each started on the runtime's worker threads (where
/// tokio's scheduler may move it between them) and ended on a thread outside
/// the runtime: the process's file descriptors are back to their baseline.
#[test]
fn pipes_go_back_to_baseline_when_tunnels_end_on_other_threads() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let baseline = open_fds();
    // Each open tunnel holds four sockets, and at most two pipes while bytes
    // move: batches fit under the limit on open files, whatever it is.
    let batch = fd_limit()
        .map_or(500, |limit| {
            (limit.saturating_sub(baseline + 64) / 8).min(500)
        })
        .max(1);
    let mut done = 0;
    while done < TUNNELS {
        let n = batch.min(TUNNELS - done);
        let started = rt.block_on(async {
            let mut tasks = Vec::with_capacity(n);
            for _ in 0..n {
                let (client, a) = pair(&listener).await;
                let (b, server) = pair(&listener).await;
                tasks.push(tokio::spawn(start([client, a, b, server])));
            }
            let mut open = Vec::with_capacity(n);
            for t in tasks {
                open.push(within("a tunnel to start", t).await.unwrap());
            }
            open
        });
        // Handed to a thread of its own: `Handle::block_on` polls the
        // tunnels there (the runtime's workers still drive the sockets).
        let handle = rt.handle().clone();
        std::thread::spawn(move || {
            let local = tokio::task::LocalSet::new();
            handle.block_on(local.run_until(async {
                let tasks: Vec<_> = started
                    .into_iter()
                    .map(|open| tokio::task::spawn_local(finish(open)))
                    .collect();
                for t in tasks {
                    within("a tunnel to end", t).await.unwrap();
                }
            }));
        })
        .join()
        .expect("the tunnels ended cleanly");
        done += n;
    }
    // Every socket is closed by now; the pipes must be too.
    let deadline = std::time::Instant::now() + common::WAIT;
    while open_fds() > baseline && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        open_fds(),
        baseline,
        "file descriptors left open after {TUNNELS} tunnels"
    );
}
