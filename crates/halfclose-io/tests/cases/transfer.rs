// The cases of `tests/transfer.rs` and `tests/transfer_spliced.rs`.


use std::hash::Hasher;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use common::*;
use halfclose_io::{Direction, Tunnel};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Deterministic pseudo-random bytes (xorshift64*), different per seed.
fn fill(seed: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        let v = seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// Writes `total` pseudo-random bytes then FIN; returns their hash.
async fn send<W: AsyncWrite + Unpin>(mut w: W, mut seed: u64, total: usize) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = total;
    while left > 0 {
        let n = left.min(buf.len());
        fill(&mut seed, &mut buf[..n]);
        h.write(&buf[..n]);
        w.write_all(&buf[..n]).await.expect("send");
        left -= n;
    }
    w.shutdown().await.expect("FIN");
    h.finish()
}

/// Reads to EOF; returns (bytes, hash).
async fn receive<R: AsyncRead + Unpin>(mut r: R) -> (usize, u64) {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.expect("receive");
        if n == 0 {
            return (total, h.finish());
        }
        h.write(&buf[..n]);
        total += n;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_at_once_then_fin_both_ways() {
    const SIZE: usize = 64 * 1024 * 1024;
    let r = relay(Tunnel::new()).await;
    let (client_rd, client_wr) = r.client.into_split();
    let (server_rd, server_wr) = r.server.into_split();
    let work = async {
        tokio::join!(
            send(client_wr, 1, SIZE),
            send(server_wr, 2, SIZE),
            receive(server_rd),
            receive(client_rd),
        )
    };
    let (sent_up, sent_down, got_up, got_down) = tokio::time::timeout(WAIT * 12, work)
        .await
        .expect("64 MiB each way in time");
    assert_eq!(
        got_up,
        (SIZE, sent_up),
        "client->server bytes or hash differ"
    );
    assert_eq!(
        got_down,
        (SIZE, sent_down),
        "server->client bytes or hash differ"
    );
    let t = within("tunnel end", r.tunnel)
        .await
        .unwrap()
        .expect("clean end");
    assert_eq!((t.a_to_b, t.b_to_a), (SIZE as u64, SIZE as u64));
}

#[tokio::test]
async fn client_reset_ends_tunnel_with_read_error_and_counts() {
    let mut r = relay(Tunnel::new()).await;
    must_write(&mut r.client, "before the reset").await;
    must_read(&mut r.server, "before the reset").await;
    must_write(&mut r.server, "reply").await;
    must_read(&mut r.client, "reply").await;
    r.client.set_zero_linger().expect("SO_LINGER 0");
    drop(r.client);
    let err = within("tunnel end", r.tunnel)
        .await
        .unwrap()
        .expect_err("a reset is an error");
    assert_eq!(err.direction(), Some(Direction::AToB));
    assert!(err.is_read() && err.is_reset(), "{err}");
    assert_eq!(err.reset_side(), Some(halfclose_io::Side::A));
    assert_eq!((err.transfer().a_to_b, err.transfer().b_to_a), (16, 5));
    let io: io::Error = err.into();
    assert_eq!(io.kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reset_mid_transfer_is_an_error_naming_a_direction() {
    let mut r = relay(Tunnel::new()).await;
    // The client streams; the server reads a first part, then resets.
    let mut client = r.client;
    let streamer = tokio::spawn(async move {
        let chunk = vec![7u8; 16 * 1024];
        while client.write_all(&chunk).await.is_ok() {}
        client
    });
    let mut first = vec![0u8; 100_000];
    within("first part", r.server.read_exact(&mut first))
        .await
        .expect("read");
    r.server.set_zero_linger().expect("SO_LINGER 0");
    drop(r.server);
    let err = within("tunnel end", r.tunnel)
        .await
        .unwrap()
        .expect_err("a reset is an error");
    assert!(err.direction().is_some(), "{err}");
    assert!(err.is_reset(), "{err}");
    assert!(err.transfer().a_to_b >= 100_000, "{err}");
    // The client's socket is dropped by the relay, so its writes fail and it stops.
    let _client = within("client to stop", streamer).await.unwrap();
}

/// A stream whose shutdown reports `NotConnected`, as macOS does when the peer is
/// already gone.
struct NotConnectedOnShutdown<T>(T);

impl<T: AsyncRead + Unpin> AsyncRead for NotConnectedOnShutdown<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for NotConnectedOnShutdown<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
    }
}

#[tokio::test]
async fn not_connected_on_shutdown_ends_that_direction_cleanly() {
    let (mut client, mut a) = tokio::io::duplex(1024);
    let (b, mut server) = tokio::io::duplex(1024);
    let mut b = NotConnectedOnShutdown(b);
    let tunnel =
        tokio::spawn(async move { halfclose_io::copy_bidirectional(&mut a, &mut b).await });
    client.write_all(b"bye").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    within("server read", server.read_buf(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"bye");
    server.write_all(b"ok").await.unwrap();
    server.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("client read to EOF", client.read_to_end(&mut back))
        .await
        .unwrap();
    assert_eq!(back, b"ok");
    let t = within("tunnel end", tunnel)
        .await
        .unwrap()
        .expect("NotConnected is not an error");
    assert_eq!((t.a_to_b, t.b_to_a), (3, 2));
}

/// Writes fail with this error after a given number of bytes.
struct FailAfter<T> {
    inner: T,
    left: usize,
}

impl<T: AsyncRead + Unpin> AsyncRead for FailAfter<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FailAfter<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.left == 0 {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = buf.len().min(self.left);
        let res = Pin::new(&mut self.inner).poll_write(cx, &buf[..n]);
        if let Poll::Ready(Ok(m)) = res {
            self.left -= m;
        }
        res
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn write_error_names_the_direction_and_counts_what_got_through() {
    let (mut client, mut a) = tokio::io::duplex(1024);
    let (b, mut server) = tokio::io::duplex(1024);
    let mut b = FailAfter { inner: b, left: 10 };
    let tunnel =
        tokio::spawn(async move { halfclose_io::copy_bidirectional(&mut a, &mut b).await });
    client.write_all(b"0123456789abcdef").await.unwrap();
    let err = within("tunnel end", tunnel)
        .await
        .unwrap()
        .expect_err("write failure");
    assert_eq!(err.direction(), Some(Direction::AToB));
    assert!(err.is_write() && !err.is_read(), "{err}");
    // A broken pipe on writing to b: b is the side that went away.
    assert_eq!(err.reset_side(), Some(halfclose_io::Side::B));
    assert_eq!(err.transfer().a_to_b, 10);
    let mut got = [0u8; 10];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"0123456789");
    assert!(err.to_string().contains("a->b write failed"), "{err}");
}

/// A direction that always has data must not starve the other one: here a->b
/// reads an endless stream into a sink that always accepts (both use tokio's
/// cooperative budget), and a small message must still cross b->a.
#[tokio::test]
async fn a_busy_direction_does_not_starve_the_other() {
    let (mut a_peer, a_out) = tokio::io::duplex(1024);
    let (mut b_peer, b_in) = tokio::io::duplex(1024);
    let mut a = tokio::io::join(tokio::io::repeat(7), a_out);
    let mut b = tokio::io::join(b_in, tokio::io::sink());
    let tunnel =
        tokio::spawn(async move { halfclose_io::copy_bidirectional(&mut a, &mut b).await });
    b_peer.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    within(
        "ping across the quiet direction",
        a_peer.read_exact(&mut got),
    )
    .await
    .unwrap();
    assert_eq!(&got, b"ping");
    tunnel.abort();
}

/// A reader that claims bytes it never wrote: it asks the buffer to be
/// initialized and marks 16 bytes filled. Then EOF.
struct OverReporting {
    done: bool,
}

impl AsyncRead for OverReporting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.done {
            self.done = true;
            buf.initialize_unfilled_to(16);
            buf.advance(16);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for OverReporting {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Tunnels share a per-thread scratch buffer: a reader that claims bytes it
/// did not write gets zeros, never the bytes another tunnel read before.
#[tokio::test]
async fn a_reader_that_over_reports_cannot_see_another_tunnels_bytes() {
    let secret = [0xA5u8; 64];
    // Tunnel 1, on this thread: the secret passes through the scratch buffer.
    let (mut client, mut a) = tokio::io::duplex(1024);
    let (mut b, mut server) = tokio::io::duplex(1024);
    client.write_all(&secret).await.unwrap();
    client.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
    let (t, got) = tokio::join!(Tunnel::new().copy(&mut a, &mut b), async {
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        got
    });
    t.unwrap();
    assert_eq!(got, secret);

    // Tunnel 2, same thread: the over-reporting reader's 16 bytes reach the
    // other side, and they are not the secret.
    let mut liar = OverReporting { done: false };
    let (mut b, mut server) = tokio::io::duplex(1024);
    server.shutdown().await.unwrap();
    let (t, got) = tokio::join!(Tunnel::new().copy(&mut liar, &mut b), async {
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        got
    });
    t.unwrap();
    assert_eq!(got, [0u8; 16], "another tunnel's bytes leaked");
}
