//! Heap used by tunnels, counted by a global allocator in this test binary.
//!
//! One `#[test]` runs every scenario in turn so that no other test allocates on
//! another thread while a scenario is measured.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hash::Hasher;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's own arguments, so
// `System`'s guarantees carry over; the counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours, forwarded.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours, forwarded.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (we forward all allocations).
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours, forwarded.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const TUNNELS: usize = 500;

/// Starts `TUNNELS` tunnels with `spawn_tunnel`, pushes 32 KiB each way through
/// each (through 1 KiB pipes, so the destination is slower than the source and
/// the tunnel has to hold bytes), lets them go idle, and returns the heap bytes
/// owned per idle tunnel: the heap while they idle minus the heap once their
/// futures are dropped (aborted). The pipes stay alive and keep the tasks' wakers,
/// so task cells are not counted: this is the heap a tunnel's future owns beyond
/// its inline state (copy buffers and anything else it allocated).
async fn idle_heap_per_tunnel(
    spawn_tunnel: fn(DuplexStream, DuplexStream) -> JoinHandle<()>,
) -> usize {
    let mut ends = Vec::with_capacity(TUNNELS);
    let mut pairs = Vec::with_capacity(TUNNELS);
    for _ in 0..TUNNELS {
        let (client, a) = tokio::io::duplex(1024);
        let (b, server) = tokio::io::duplex(1024);
        ends.push((client, server));
        pairs.push((a, b));
    }
    let payload = vec![1u8; 32 * 1024];
    let mut sink = vec![0u8; 32 * 1024];
    let tasks: Vec<JoinHandle<()>> = pairs.into_iter().map(|(a, b)| spawn_tunnel(a, b)).collect();
    for (client, server) in &mut ends {
        let (w, r) = tokio::join!(client.write_all(&payload), server.read_exact(&mut sink));
        w.unwrap();
        r.unwrap();
        let (w, r) = tokio::join!(server.write_all(&payload), client.read_exact(&mut sink));
        w.unwrap();
        r.unwrap();
    }
    // Every tunnel has written its last byte and found nothing more to read.
    tokio::task::yield_now().await;
    let idle = LIVE.load(Relaxed);
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    let gone = LIVE.load(Relaxed);
    drop(ends);
    idle.saturating_sub(gone) / TUNNELS
}

/// Sends 8 MiB through a tunnel to a reader that takes 1 KiB at a time; returns
/// (peak heap growth during the transfer, bytes received, hashes equal).
async fn slow_reader_peak() -> (usize, usize, bool) {
    const TOTAL: usize = 8 * 1024 * 1024;
    let (mut client, mut a) = tokio::io::duplex(16 * 1024);
    let (mut b, mut server) = tokio::io::duplex(16 * 1024);
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut small = vec![0u8; 1024];
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let tunnel =
        tokio::spawn(async move { halfclose_io::copy_bidirectional(&mut a, &mut b).await });
    let writer = async {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for _ in 0..TOTAL / chunk.len() {
            h.write(&chunk);
            client.write_all(&chunk).await.unwrap();
        }
        client.shutdown().await.unwrap();
        h.finish()
    };
    let reader = async {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut got = 0;
        loop {
            let n = server.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            h.write(&small[..n]);
            got += n;
            tokio::task::yield_now().await;
        }
        (got, h.finish())
    };
    let (sent_hash, (got, got_hash)) = tokio::join!(writer, reader);
    let peak = PEAK.load(Relaxed).saturating_sub(base);
    drop(server);
    let _ = tunnel.await;
    (peak, got, sent_hash == got_hash)
}

#[test]
fn tunnel_memory() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            // Warm up: thread-local scratch buffer, runtime internals.
            let _ = idle_heap_per_tunnel(spawn_ours).await;

            let ours = idle_heap_per_tunnel(spawn_ours).await;
            let tokio_s = idle_heap_per_tunnel(|mut a, mut b| {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                })
            })
            .await;
            let (mut x, mut y) = tokio::io::duplex(1);
            let ours_inline = std::mem::size_of_val(&halfclose_io::copy_bidirectional(&mut x, &mut y));
            let tokio_inline = std::mem::size_of_val(&tokio::io::copy_bidirectional(&mut x, &mut y));
            println!(
                "idle tunnel: heap owned halfclose-io {ours} B vs tokio::io::copy_bidirectional {tokio_s} B; \
                 inline future {ours_inline} B vs {tokio_inline} B"
            );
            // One copy buffer of tokio's alone is 8 KiB; ours would be up to 64 KiB.
            assert!(ours < 2048, "an idle tunnel holds {ours} bytes of heap");
            // The harness does see buffers: tokio's holds two 8 KiB ones.
            assert!(tokio_s >= 16 * 1024, "tokio's tunnel measured at {tokio_s} bytes");

            let (peak, got, same) = slow_reader_peak().await;
            println!("slow reader: peak heap growth {peak} B while relaying 8 MiB");
            assert_eq!(got, 8 * 1024 * 1024, "bytes lost");
            assert!(same, "bytes changed in transit");
            assert!(peak < 256 * 1024, "memory grew by {peak} bytes: no backpressure?");
        })
        .await
        .expect("memory scenarios finished in time");
    });
}

fn spawn_ours(mut a: DuplexStream, mut b: DuplexStream) -> JoinHandle<()> {
    tokio::spawn(async move {
        let _ = halfclose_io::copy_bidirectional(&mut a, &mut b).await;
    })
}
