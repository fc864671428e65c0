//! Idle and half-close timeouts, on paused tokio time (deterministic: the clock
//! only moves when every task is waiting).

mod common;

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
