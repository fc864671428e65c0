//! Loopback fixtures shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::Shutdown;
use std::time::Duration;

use halfclose_io::{Transfer, Tunnel, TunnelError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// Fails the test if `fut` does not finish within [`WAIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A connected pair of loopback TCP sockets.
pub async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let connected = connected.expect("connect");
    let (accepted, _) = accepted.expect("accept");
    connected.set_nodelay(true).expect("nodelay");
    accepted.set_nodelay(true).expect("nodelay");
    (connected, accepted)
}

/// A client socket and a server socket with a halfclose-io tunnel relaying
/// between them: `a` is the relay's client-facing socket, `b` its server-facing one.
pub struct Relay {
    pub client: TcpStream,
    pub server: TcpStream,
    pub tunnel: JoinHandle<Result<Transfer, TunnelError>>,
}

/// A relay through `Tunnel::copy`, or `Tunnel::copy_tcp` (splice) where the
/// test binary sets `SPLICED`.
pub async fn relay(tunnel: Tunnel) -> Relay {
    let (client, mut a) = tcp_pair().await;
    let (mut b, server) = tcp_pair().await;
    let tunnel = tokio::spawn(async move {
        if crate::SPLICED {
            tunnel.copy_tcp(&mut a, &mut b).await
        } else {
            tunnel.copy(&mut a, &mut b).await
        }
    });
    Relay {
        client,
        server,
        tunnel,
    }
}

impl Relay {
    pub async fn finish(self) -> Result<Transfer, TunnelError> {
        within("the tunnel to end", self.tunnel)
            .await
            .expect("tunnel task panicked")
    }
}

pub async fn must_read(conn: &mut TcpStream, msg: &str) {
    let mut buf = vec![0; msg.len()];
    within("a read", conn.read_exact(&mut buf))
        .await
        .expect("read");
    assert_eq!(String::from_utf8_lossy(&buf), msg);
}

pub async fn must_read_eof(conn: &mut TcpStream) {
    let mut buf = [0u8; 1];
    let n = within("EOF", conn.read(&mut buf)).await.expect("read");
    assert_eq!(n, 0, "expected EOF, got a byte");
}

pub async fn must_write(conn: &mut TcpStream, msg: &str) {
    within("a write", conn.write_all(msg.as_bytes()))
        .await
        .expect("write");
}

/// Sends `msg` on `from` and reads it whole at `to`.
pub async fn across(from: &mut TcpStream, to: &mut TcpStream, msg: &[u8]) {
    from.write_all(msg).await.unwrap();
    let mut got = vec![0; msg.len()];
    to.read_exact(&mut got).await.unwrap();
    assert!(got == msg, "bytes changed on the way");
}

/// A FIN from each end of a tunnel; each end then reads the other's FIN
/// with no byte before it.
pub async fn fin_both(client: &mut TcpStream, server: &mut TcpStream) {
    client.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).await.unwrap();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

/// `shutdown(SHUT_WR)`: sends FIN, keeps reading.
pub async fn close_write(conn: &mut TcpStream) {
    conn.shutdown().await.expect("shutdown write half");
}

/// `shutdown(SHUT_RD)`: local only, nothing is sent.
pub fn close_read(conn: TcpStream) -> TcpStream {
    let std = conn.into_std().expect("into_std");
    std.shutdown(Shutdown::Read).expect("shutdown read half");
    TcpStream::from_std(std).expect("from_std")
}

/// Pipes open in this process (stdout and stderr may be some).
#[cfg(target_os = "linux")]
pub fn pipes() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("pipe:"))
        .count()
}
