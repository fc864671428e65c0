// The cases of `tests/timeouts.rs` and `tests/timeouts_spliced.rs`.


use std::io;
use std::time::Duration;

use common::*;
use halfclose_io::{Direction, Side, Tunnel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Virtual-time bound: with the clock paused, this never races the timeouts under test.
async fn eventually<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(24 * 3600), fut)
        .await
        .expect("never finished")
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_counts_from_the_last_byte() {
    let (mut client, mut a) = tokio::io::duplex(1024);
    let (mut b, mut server) = tokio::io::duplex(1024);
    let tunnel = tokio::spawn(async move {
        Tunnel::new()
            .idle_timeout(Duration::from_secs(60))
            .copy(&mut a, &mut b)
            .await
    });
    let mut byte = [0u8; 1];
    tokio::time::sleep(Duration::from_secs(50)).await;
    client.write_all(b"x").await.unwrap();
    server.read_exact(&mut byte).await.unwrap();
    tokio::time::sleep(Duration::from_secs(50)).await; // t = 100 s: 50 s since the byte.
    assert!(
        !tunnel.is_finished(),
        "idle timeout fired while bytes were moving"
    );
    let err = eventually(tunnel).await.unwrap().expect_err("idle timeout");
    assert!(err.is_idle_timeout() && err.is_timeout(), "{err}");
    assert_eq!(err.direction(), None);
    assert_eq!(err.reset_side(), None);
    assert_eq!(err.transfer().duration, Duration::from_secs(110));
    assert_eq!(err.transfer().a_to_b, 1);
    assert_eq!(io::Error::from(err).kind(), io::ErrorKind::TimedOut);
}

#[tokio::test(start_paused = true)]
async fn no_timeout_by_default() {
    let (_client, mut a) = tokio::io::duplex(1024);
    let (mut b, _server) = tokio::io::duplex(1024);
    let tunnel = tokio::spawn(async move { Tunnel::new().copy(&mut a, &mut b).await });
    tokio::time::sleep(Duration::from_secs(7 * 24 * 3600)).await;
    assert!(!tunnel.is_finished());
}

/// tokio issues 3876 and 4556: the client sends FIN, the server never does. With a
/// half-close timeout the tunnel ends and both relay sockets are closed, instead of
/// sitting in CLOSE_WAIT forever.
#[tokio::test(start_paused = true)]
async fn half_close_timeout_releases_a_peer_that_never_sends_fin() {
    let mut r = relay(Tunnel::new().half_close_timeout(Duration::from_secs(10))).await;
    let start = tokio::time::Instant::now();
    close_write(&mut r.client).await;
    let mut buf = [0u8; 16];
    assert_eq!(
        eventually(r.server.read(&mut buf)).await.unwrap(),
        0,
        "FIN passed on"
    );
    // The open direction still works inside the window.
    r.server.write_all(b"late").await.unwrap();
    eventually(r.client.read_exact(&mut buf[..4]))
        .await
        .unwrap();
    assert_eq!(&buf[..4], b"late");

    let err = eventually(r.tunnel)
        .await
        .unwrap()
        .expect_err("half-close timeout");
    assert!(err.is_half_close_timeout(), "{err}");
    assert_eq!(err.direction(), Some(Direction::BToA));
    assert_eq!(err.transfer().first_eof, Some(Side::A));
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    // The relay dropped its sockets: the client sees EOF, not a hang.
    assert_eq!(eventually(r.client.read(&mut buf)).await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn half_close_timeout_does_not_fire_when_both_close_in_time() {
    let mut r = relay(Tunnel::new().half_close_timeout(Duration::from_secs(10))).await;
    close_write(&mut r.client).await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    close_write(&mut r.server).await;
    let t = eventually(r.tunnel).await.unwrap().expect("clean end");
    assert_eq!(t.first_eof, Some(Side::A));
}

/// The half-close timeout is an inactivity timeout: a client that sends its
/// request and its FIN (`nc -N`, batch uploaders) keeps a download that is still
/// streaming, however long it runs; once the download stalls, the tunnel ends
/// one timeout after the last byte.
#[tokio::test(start_paused = true)]
async fn half_close_timeout_spares_a_download_still_streaming() {
    let mut r = relay(Tunnel::new().half_close_timeout(Duration::from_secs(10))).await;
    close_write(&mut r.client).await;
    let mut buf = [0u8; 16];
    assert_eq!(eventually(r.server.read(&mut buf)).await.unwrap(), 0);
    // 60 s of download, a chunk every 5 s: six times the timeout in all.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        r.server.write_all(b"chunk").await.unwrap();
        eventually(r.client.read_exact(&mut buf[..5]))
            .await
            .unwrap();
        assert!(!r.tunnel.is_finished(), "a streaming download was cut");
    }
    let last_byte = tokio::time::Instant::now();
    let err = eventually(r.tunnel)
        .await
        .unwrap()
        .expect_err("half-close timeout once the download stalls");
    assert!(err.is_half_close_timeout(), "{err}");
    assert_eq!(last_byte.elapsed(), Duration::from_secs(10));
    assert_eq!(err.transfer().b_to_a, 60);
}

/// A source that is always busy: each read spends the task's whole cooperative
/// budget and asks to be polled again, moving no byte (a socket whose reads
/// keep being deferred by tokio's budget behaves so).
struct Busy;

impl tokio::io::AsyncRead for Busy {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        _buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::future::Future;
        loop {
            let spend = std::pin::pin!(tokio::task::consume_budget());
            // Pending once the budget is gone; it has then woken the task.
            if spend.poll(cx).is_pending() {
                return std::task::Poll::Pending;
            }
        }
    }
}

impl tokio::io::AsyncWrite for Busy {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// No amount of readiness keeps a timer from firing: with a side that spends
/// the whole cooperative budget on every poll, the timers cannot be polled
/// with budget left, and the deadline must still end the tunnel. (Real time: a
/// task that never waits keeps paused time from moving.)
#[tokio::test]
async fn timers_fire_while_a_side_spends_the_whole_budget() {
    let (_peer, mut b) = tokio::io::duplex(1024);
    let mut a = Busy;
    let res = within(
        "the idle timeout beside a busy side",
        Tunnel::new()
            .idle_timeout(Duration::from_millis(50))
            .copy(&mut a, &mut b),
    )
    .await;
    assert!(res.expect_err("idle timeout").is_idle_timeout());

    let (mut peer, mut b) = tokio::io::duplex(1024);
    peer.shutdown().await.unwrap();
    let res = within(
        "the half-close timeout beside a busy side",
        Tunnel::new()
            .half_close_timeout(Duration::from_millis(50))
            .copy(&mut Busy, &mut b),
    )
    .await;
    assert!(res.expect_err("half-close timeout").is_half_close_timeout());
}
