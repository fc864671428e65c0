//! A spliced tunnel in a process out of file descriptors: no pipe can be
//! made, and the tunnel copies through user space instead of failing.
//!
//! The test runs itself again in a child process with a low limit on open
//! files (`ulimit -n`), where it uses every descriptor left before the tunnel
//! moves its first byte.

#![cfg(all(target_os = "linux", feature = "splice"))]

mod common;

const SPLICED: bool = true;

use common::{tcp_pair, within};
use halfclose_io::Tunnel;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Set in the child process, which runs the test itself.
const CHILD: &str = "HALFCLOSE_IO_TEST_OUT_OF_FDS";
const TEST: &str = "a_tunnel_with_no_pipe_to_be_had_copies_instead";
/// Bytes each way: several reads' worth.
const LEN: usize = 256 * 1024;

#[test]
fn a_tunnel_with_no_pipe_to_be_had_copies_instead() {
    if std::env::var_os(CHILD).is_some() {
        return out_of_fds();
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" \"$@\"")
        .arg(exe)
        .args(["--exact", TEST, "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1")
        .output()
        .expect("run the test in a child process");
    assert!(
        out.status.success(),
        "the child failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A filter that matched nothing would pass too.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1 passed"),
        "the child ran no test:\n{stdout}"
    );
}

fn out_of_fds() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, mut a) = tcp_pair().await;
        let (mut b, mut server) = tcp_pair().await;
        // Use up every file descriptor left.
        let mut hog = Vec::new();
        let full = loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => hog.push(f),
                Err(e) => break e,
            }
            assert!(hog.len() < 1024, "`ulimit -n 64` did not take");
        };
        assert_eq!(full.raw_os_error(), Some(24), "EMFILE expected: {full}");

        let up: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..LEN).map(|i| (i % 241) as u8).collect();
        let traffic = async {
            let (mut cr, mut cw) = client.split();
            let (mut sr, mut sw) = server.split();
            let client_side = async {
                cw.write_all(&up).await.unwrap();
                cw.shutdown().await.unwrap();
                let mut got = Vec::new();
                cr.read_to_end(&mut got).await.unwrap();
                got
            };
            let server_side = async {
                sw.write_all(&down).await.unwrap();
                sw.shutdown().await.unwrap();
                let mut got = Vec::new();
                sr.read_to_end(&mut got).await.unwrap();
                got
            };
            tokio::join!(client_side, server_side)
        };
        let copy = Tunnel::new().copy_tcp(&mut a, &mut b);
        let (transfer, (at_client, at_server)) = within("the tunnel without pipes", async {
            tokio::join!(copy, traffic)
        })
        .await;
        let transfer = transfer.expect("the tunnel copies instead of failing");
        assert!(at_server == up, "the upstream got other bytes");
        assert!(at_client == down, "the client got other bytes");
        assert_eq!((transfer.a_to_b, transfer.b_to_a), (LEN as u64, LEN as u64));
        // Still out of descriptors: no pipe was made behind our back.
        assert!(std::fs::File::open("/dev/null").is_err());
        drop(hog);
    });
}
