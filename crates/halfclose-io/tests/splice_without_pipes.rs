//! A spliced tunnel in a process out of file descriptors: no pipe can be
//! made, and the tunnel copies through user space instead of failing; once
//! descriptors are free again, its bytes go through a pipe again.
//!
//! The test runs itself again in a child process with a low limit on open
//! files (`ulimit -n`), where it uses every descriptor left before the tunnel
//! moves its first byte.

#![cfg(all(target_os = "linux", feature = "splice"))]

mod common;

const SPLICED: bool = true;

use common::{fin_both, pipes, tcp_pair, within};
use halfclose_io::Tunnel;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// `up` from the client and `down` from the server, both at once.
async fn round(client: &mut TcpStream, server: &mut TcpStream, up: &[u8], down: &[u8]) {
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let mut at_server = vec![0; up.len()];
    let mut at_client = vec![0; down.len()];
    tokio::try_join!(
        cw.write_all(up),
        sr.read_exact(&mut at_server),
        sw.write_all(down),
        cr.read_exact(&mut at_client),
    )
    .unwrap();
    assert!(at_server == up, "the upstream got other bytes");
    assert!(at_client == down, "the client got other bytes");
}

fn out_of_fds() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, mut a) = tcp_pair().await;
        let (mut b, mut server) = tcp_pair().await;
        let baseline = pipes();
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
        // One free, for `pipes()` to read /proc: a pipe takes two.
        hog.pop();

        let up: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..LEN).map(|i| (i % 241) as u8).collect();
        let traffic = async {
            round(&mut client, &mut server, &up, &down).await;
            assert_eq!(pipes(), baseline, "a pipe while out of descriptors");
            // Descriptors to spare again: the next bytes take a pipe (which
            // the pool keeps while the tunnel lives).
            drop(hog);
            round(&mut client, &mut server, &up, &down).await;
            assert!(pipes() > baseline, "no pipe once descriptors were free");
            fin_both(&mut client, &mut server).await;
        };
        // A small buffer: any read of 2 KiB is a bulk one, which moves a
        // direction to splice (or tries to).
        let copy = Tunnel::new().buffer_size(4096).copy_tcp(&mut a, &mut b);
        let (transfer, ()) = within("the tunnel without pipes", async {
            tokio::join!(copy, traffic)
        })
        .await;
        let transfer = transfer.expect("the tunnel copies instead of failing");
        let both = 2 * LEN as u64;
        assert_eq!((transfer.a_to_b, transfer.b_to_a), (both, both));
        // The tunnel is over: its pipes are closed.
        assert_eq!(pipes(), baseline, "pipes left after the tunnel");
    });
}
