//! Restart without a refused connection: a new process takes the old
//! one's listening sockets (`--take-over`, `--handover`) while a client
//! loop makes requests and 50 tunnels are open; the old process drains.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use e2e_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::Proxy;

const TUNNELS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_refuses_nothing_and_drains_the_old_process() {
    let dir = std::env::temp_dir().join(format!("halfclose-swap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("handover.sock").display().to_string();
    // The upstream: a proxy in front of its demo (page, echo tunnels), a
    // process of its own that outlives the swap.
    let upstream = Proxy::start(&[]).await;
    let up = format!("http://{}", upstream.addr);
    let old = Proxy::start(&[
        "--upstream",
        &up,
        "--handover",
        &path,
        "--shutdown-grace",
        "5s",
    ])
    .await;
    let addr = old.addr;

    let mut tunnels = Vec::new();
    for _ in 0..TUNNELS {
        let mut cli = send_upgrade(addr, "echo", b"").await;
        let head = within("101", read_head(&mut cli)).await.unwrap();
        assert_eq!(status_of(&head), 101, "{head}");
        tunnels.push(cli);
    }

    // A client loop: a new connection per request, every answer a 200.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, mut answered) = tokio::sync::watch::channel(0u64);
    let failures = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, failures) = (stop.clone(), failures.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let result = async {
                    let mut tcp = TcpStream::connect(addr)
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                        .await
                        .map_err(|e| format!("write: {e}"))?;
                    let head = within("a response head", read_head(&mut tcp))
                        .await
                        .map_err(|e| format!("read: {e}"))?;
                    match status_of(&head) {
                        200 => Ok(()),
                        s => Err(format!("status {s}")),
                    }
                }
                .await;
                if let Err(e) = result {
                    eprintln!("failed: {e}");
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                done.send_modify(|n| *n += 1);
            }
        })
    };
    within("requests before the swap", answered.wait_for(|&n| n >= 20))
        .await
        .unwrap();

    // The new process takes the sockets over: same port, no gap.
    let new = Proxy::start(&[
        "--upstream",
        &up,
        "--take-over",
        &path,
        "--handover",
        &path,
        "--workers",
        "3",
    ])
    .await;
    assert_eq!(new.addr, addr, "the same listening socket");
    let mut old = old;
    old.line_starting("handed ").await;

    // The tunnels still carry both ways on the old process, in its grace.
    for cli in &mut tunnels {
        cli.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        within("echo during the grace period", cli.read_exact(&mut buf))
            .await
            .unwrap();
        assert_eq!(&buf, b"ping");
    }
    // Then the grace period ends them with a FIN: EOF, nothing lost.
    for cli in &mut tunnels {
        let mut rest = Vec::new();
        within(
            "the FIN at the end of the grace period",
            cli.read_to_end(&mut rest),
        )
        .await
        .unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }
    let status = within("the old process to exit", old.child.wait())
        .await
        .unwrap();
    assert!(status.success(), "{status}");

    // Requests go on through the new process alone.
    let now = *answered.borrow();
    within(
        "requests after the swap",
        answered.wait_for(|&n| n >= now + 50),
    )
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    within("the client loop", client).await.unwrap();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "refused or failed requests"
    );
    new.stop().await;
    upstream.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
