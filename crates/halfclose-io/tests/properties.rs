//! The half-close contract under random interleavings: writes of random sizes on
//! both sides, FINs at random points, random pipe capacities and buffer sizes.
//! Every byte arrives in order, each FIN arrives after the bytes before it, the
//! tunnel ends only when both sides closed, and the counts match.

use std::time::Duration;

use halfclose_io::{Side, Transfer, Tunnel, TunnelError};
use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
enum Op {
    /// Side A writes this many bytes.
    A(usize),
    /// Side B writes this many bytes.
    B(usize),
    /// Side A sends FIN.
    CloseA,
    /// Side B sends FIN.
    CloseB,
    /// Let the other tasks run.
    Yield,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..20_000).prop_map(Op::A),
        4 => (1usize..20_000).prop_map(Op::B),
        1 => Just(Op::CloseA),
        1 => Just(Op::CloseB),
        2 => Just(Op::Yield),
    ]
}

/// The n-th byte a side sends: distinct per side, so mix-ups show.
fn byte(side: u8, n: usize) -> u8 {
    (n % 251) as u8 ^ side
}

async fn read_all<S: AsyncRead>(mut r: ReadHalf<S>) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).await.expect("read to EOF");
    v
}

struct Writer<S> {
    half: Option<WriteHalf<S>>,
    sent: usize,
    tag: u8,
}

impl<S: AsyncWrite> Writer<S> {
    async fn write(&mut self, n: usize) {
        if let Some(w) = self.half.as_mut() {
            let data: Vec<u8> = (self.sent..self.sent + n)
                .map(|i| byte(self.tag, i))
                .collect();
            w.write_all(&data).await.expect("write");
            self.sent += n;
        }
    }

    async fn close(&mut self) {
        if let Some(mut w) = self.half.take() {
            w.shutdown().await.expect("FIN");
        }
    }
}

fn run(ops: Vec<Op>, cap_a: usize, cap_b: usize, buffer: usize) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (a_user, mut a_tunnel) = tokio::io::duplex(cap_a);
        let (mut b_tunnel, b_user) = tokio::io::duplex(cap_b);
        let tunnel = tokio::spawn(async move {
            Tunnel::new()
                .buffer_size(buffer)
                .copy(&mut a_tunnel, &mut b_tunnel)
                .await
        });
        check(ops, a_user, b_user, tunnel).await
    })
}

/// The same over loopback TCP through `Tunnel::copy_tcp` (splice on Linux).
fn run_tcp(ops: Vec<Op>, buffer: usize) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let pair = || async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let (c, a) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
            (c.unwrap(), a.unwrap().0)
        };
        let (a_user, mut a_tunnel) = pair().await;
        let (mut b_tunnel, b_user) = pair().await;
        let tunnel = tokio::spawn(async move {
            Tunnel::new()
                .buffer_size(buffer)
                .copy_tcp(&mut a_tunnel, &mut b_tunnel)
                .await
        });
        check(ops, a_user, b_user, tunnel).await
    })
}

/// Plays `ops` on the two user ends of a running tunnel and checks the contract.
async fn check<S>(
    ops: Vec<Op>,
    a_user: S,
    b_user: S,
    tunnel: JoinHandle<Result<Transfer, TunnelError>>,
) -> Result<(), TestCaseError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    {
        let (a_rd, a_wr) = tokio::io::split(a_user);
        let (b_rd, b_wr) = tokio::io::split(b_user);
        let at_a = tokio::spawn(read_all(a_rd));
        let at_b = tokio::spawn(read_all(b_rd));
        let mut a = Writer {
            half: Some(a_wr),
            sent: 0,
            tag: 0,
        };
        let mut b = Writer {
            half: Some(b_wr),
            sent: 0,
            tag: 0x80,
        };

        let work = async {
            for op in &ops {
                match op {
                    Op::A(n) => a.write(*n).await,
                    Op::B(n) => b.write(*n).await,
                    Op::CloseA => a.close().await,
                    Op::CloseB => b.close().await,
                    Op::Yield => tokio::task::yield_now().await,
                }
            }
            // When exactly one side has closed, its FIN reaches the other side while
            // the tunnel keeps running; the other side closes only after that, so
            // the tunnel must name the first one.
            let (got_a, got_b, first) = match (a.half.is_some(), b.half.is_some()) {
                (false, true) => {
                    let got_b = at_b.await.unwrap();
                    assert!(!tunnel.is_finished(), "tunnel ended after one FIN");
                    b.close().await;
                    (at_a.await.unwrap(), got_b, Some(Side::A))
                }
                (true, false) => {
                    let got_a = at_a.await.unwrap();
                    assert!(!tunnel.is_finished(), "tunnel ended after one FIN");
                    a.close().await;
                    (got_a, at_b.await.unwrap(), Some(Side::B))
                }
                _ => {
                    a.close().await;
                    b.close().await;
                    (at_a.await.unwrap(), at_b.await.unwrap(), None)
                }
            };
            (got_a, got_b, first, tunnel.await.unwrap())
        };
        let (got_a, got_b, first, result) = tokio::time::timeout(Duration::from_secs(20), work)
            .await
            .map_err(|_| TestCaseError::fail("tunnel hung"))?;
        let t = result.map_err(|e| TestCaseError::fail(format!("tunnel failed: {e}")))?;

        let want_b: Vec<u8> = (0..a.sent).map(|i| byte(0, i)).collect();
        let want_a: Vec<u8> = (0..b.sent).map(|i| byte(0x80, i)).collect();
        prop_assert!(
            got_b == want_b,
            "a->b: {} bytes arrived, {} sent",
            got_b.len(),
            want_b.len()
        );
        prop_assert!(
            got_a == want_a,
            "b->a: {} bytes arrived, {} sent",
            got_a.len(),
            want_a.len()
        );
        prop_assert_eq!((t.a_to_b, t.b_to_a), (a.sent as u64, b.sent as u64));
        match first {
            Some(side) => prop_assert_eq!(t.first_eof, Some(side)),
            // Both FINs may be seen in the same poll: either side may be named.
            None => prop_assert!(t.first_eof.is_some()),
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_byte_and_fin_arrives(
        ops in prop::collection::vec(op(), 0..40),
        cap_a in 1usize..8192,
        cap_b in 1usize..8192,
        buffer in 1usize..70_000,
    ) {
        run(ops, cap_a, cap_b, buffer)?;
    }
}

proptest! {
    // Real sockets: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn every_byte_and_fin_arrives_over_tcp_with_splice(
        ops in prop::collection::vec(op(), 0..40),
        buffer in 1usize..70_000,
    ) {
        run_tcp(ops, buffer)?;
    }
}
