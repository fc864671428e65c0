//! When a spliced tunnel takes to pipes: small messages go through user
//! space (a `recv` and a `send` cost less than two `splice` calls and a
//! pipe), and a direction moves to splice once one read brings at least
//! half a buffer.
//!
//! The only test of this binary: it counts the process's pipes, which tests
//! running beside it would change.

#![cfg(all(target_os = "linux", feature = "splice"))]

mod common;

const SPLICED: bool = true;

use common::{across, fin_both, pipes, tcp_pair, within};
use halfclose_io::Tunnel;

#[tokio::test]
async fn small_messages_take_no_pipe_and_a_bulk_read_does() {
    let (mut client, mut a) = tcp_pair().await;
    let (mut b, mut server) = tcp_pair().await;
    let baseline = pipes();
    // 48 KiB waiting before the tunnel's first read of the bulk phase: more
    // than half of the default 64 KiB buffer in one read.
    let bulk: Vec<u8> = (0..48 * 1024).map(|i| (i % 251) as u8).collect();
    let small: Vec<u8> = (0..200).map(|i| i as u8).collect();

    let traffic = async {
        for _ in 0..200 {
            across(&mut client, &mut server, &small).await;
            across(&mut server, &mut client, &small).await;
        }
        assert_eq!(pipes(), baseline, "a pipe for small messages");
        across(&mut client, &mut server, &bulk).await;
        across(&mut server, &mut client, &bulk).await;
        // The next bytes go by pipe, small or large; the pool keeps the
        // pipes while the tunnel lives.
        across(&mut client, &mut server, &small).await;
        across(&mut server, &mut client, &bulk).await;
        assert!(pipes() > baseline, "no pipe after a bulk read");
        fin_both(&mut client, &mut server).await;
    };
    // The copy is dropped with this block, before the last count.
    let (transfer, ()) = within("the tunnel", async {
        tokio::join!(Tunnel::new().copy_tcp(&mut a, &mut b), traffic)
    })
    .await;
    let transfer = transfer.expect("a clean end");
    let up = 201 * small.len() + bulk.len();
    let down = 200 * small.len() + 2 * bulk.len();
    assert_eq!((transfer.a_to_b, transfer.b_to_a), (up as u64, down as u64));
    assert_eq!(pipes(), baseline, "pipes left after the tunnel");
}
