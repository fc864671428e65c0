//! Restart without a refused connection: the running process hands its
//! listening sockets to the new one over a Unix socket (`SCM_RIGHTS`), as
//! HAProxy (`-x`), Pingora and Sozu do, then stops accepting and drains.
//!
//! Why not `SO_REUSEPORT` alone: a new process can bind the same port
//! beside the old one, but when the old one closes its listening sockets,
//! the connections the kernel had already queued on them (handshake done,
//! not yet accepted) are reset, unless `net.ipv4.tcp_migrate_req` is set
//! (Linux 5.14 and later, a sysctl). A socket handed over stays open: its
//! queue is the new process's to accept from, and nothing is lost.
//!
//! The exchange, on a Unix stream socket at `PATH`:
//!
//! 1. The old process (`--handover PATH`) listens on PATH.
//! 2. The new process (`--take-over PATH`) connects and writes
//!    `take-over\n`.
//! 3. The old process removes PATH (the new one may bind it for the next
//!    swap) and answers one message: a line `ADDRESS RANK` per socket (the
//!    listener's address as configured, and its rank among listeners with
//!    that address), and the sockets themselves, in that order.
//! 4. The new process uses each socket for the listener with the same
//!    address and rank (binding the others), and once it serves, writes
//!    `ok\n`. Then, and only then, the old process shuts down as on
//!    SIGTERM: it stops accepting, gives requests and tunnels
//!    `--shutdown-grace`, then ends the tunnels left with a FIN each way.
//!    A new process that fails to start (or takes longer than 30 s) leaves
//!    the old one serving, listening on PATH again.
//!
//! Linux only. Imports nothing of the crate.

use std::io::{IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The most sockets one hand-over carries (listeners times workers).
pub(crate) const MAX_SOCKETS: usize = 64;
/// The request the new process writes.
const REQUEST: &[u8] = b"take-over\n";
/// Time the exchange may take, either side.
const LIMIT: Duration = Duration::from_secs(5);

/// A listener's identity across processes: its configured address and its
/// rank among listeners with that address.
pub(crate) type Key = (SocketAddr, usize);

/// The new process's side of the exchange, until it says it serves.
pub(crate) struct Taken {
    pub(crate) sockets: Vec<(Key, std::net::TcpListener)>,
    stream: UnixStream,
}

impl Taken {
    /// Tells the old process that this one serves: it may drain.
    pub(crate) fn serving(mut self) -> Result<(), String> {
        self.stream
            .write_all(CONFIRM)
            .map_err(|e| format!("cannot tell the old process we serve: {e}"))
    }
}

/// What the new process writes once it serves.
const CONFIRM: &[u8] = b"ok\n";
/// How long the old process waits for it.
const CONFIRM_LIMIT: Duration = Duration::from_secs(30);

/// Connects to the old process at `path` and takes its listening sockets.
pub(crate) fn take_over(path: &Path) -> Result<Taken, String> {
    let fail = |e: &dyn std::fmt::Display| format!("cannot take over from {}: {e}", path.display());
    let mut stream = UnixStream::connect(path).map_err(|e| fail(&e))?;
    stream.set_read_timeout(Some(LIMIT)).map_err(|e| fail(&e))?;
    stream
        .set_write_timeout(Some(LIMIT))
        .map_err(|e| fail(&e))?;
    stream.write_all(REQUEST).map_err(|e| fail(&e))?;

    let mut text = vec![0u8; 64 * MAX_SOCKETS];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut text)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| fail(&e))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let text = std::str::from_utf8(&text[..got.bytes]).map_err(|e| fail(&e))?;
    let keys = parse_keys(text).map_err(|e| fail(&e))?;
    if keys.len() != fds.len() || keys.is_empty() {
        return Err(fail(&format!(
            "{} socket(s) announced, {} received",
            keys.len(),
            fds.len()
        )));
    }
    let sockets = keys
        .into_iter()
        .zip(fds)
        .map(|(key, fd)| (key, std::net::TcpListener::from(fd)))
        .collect();
    Ok(Taken { sockets, stream })
}

/// The lines `ADDRESS RANK` of a hand-over.
pub(crate) fn parse_keys(text: &str) -> Result<Vec<Key>, String> {
    text.lines()
        .map(|line| {
            let (addr, rank) = line
                .split_once(' ')
                .ok_or_else(|| format!("not `ADDRESS RANK`: {line:?}"))?;
            let addr = addr
                .parse()
                .map_err(|_| format!("not an address: {addr:?}"))?;
            let rank = rank.parse().map_err(|_| format!("not a rank: {rank:?}"))?;
            Ok((addr, rank))
        })
        .collect()
}

/// The old process's side: waits for a new process at `path`.
pub(crate) struct Handover {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl Handover {
    /// Listens at `path`, replacing a file left there (by a process that
    /// handed over, or one that died).
    pub(crate) fn bind(path: &Path) -> Result<Handover, String> {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)
            .map_err(|e| format!("cannot listen on --handover {}: {e}", path.display()))?;
        Ok(Handover {
            listener,
            path: path.to_owned(),
        })
    }

    /// Waits for a new process that asks for the sockets.
    pub(crate) async fn asked(&mut self) -> tokio::net::UnixStream {
        loop {
            let Ok((mut stream, _)) = self.listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut request = [0u8; REQUEST.len()];
            use tokio::io::AsyncReadExt;
            match tokio::time::timeout(LIMIT, stream.read_exact(&mut request)).await {
                Ok(Ok(_)) if request == REQUEST => return stream,
                _ => tracing::warn!(
                    "--handover: a connection that did not ask to take over; ignored"
                ),
            }
        }
    }

    /// The path it listens on.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the path, gives `sockets` to the process on `stream`, and
    /// waits for it to say it serves.
    pub(crate) async fn give(
        self,
        stream: tokio::net::UnixStream,
        sockets: &[(Key, BorrowedFd<'_>)],
    ) -> Result<(), String> {
        if sockets.len() > MAX_SOCKETS || sockets.is_empty() {
            return Err(format!(
                "{} listening sockets: a hand-over carries 1 to {MAX_SOCKETS}",
                sockets.len()
            ));
        }
        let _ = std::fs::remove_file(&self.path);
        let text: String = sockets
            .iter()
            .map(|((addr, rank), _)| format!("{addr} {rank}\n"))
            .collect();
        let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| *fd).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err("the sockets do not fit in one message".into());
        }
        // A small message on a fresh socket: it fits in the buffer at once.
        let stream = stream.into_std().map_err(|e| format!("--handover: {e}"))?;
        stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_write_timeout(Some(LIMIT)))
            .map_err(|e| format!("--handover: {e}"))?;
        rustix::net::sendmsg(
            stream.as_fd(),
            &[IoSlice::new(text.as_bytes())],
            &mut control,
            SendFlags::empty(),
        )
        .map_err(|e| format!("--handover: cannot send the sockets: {e}"))?;
        // Until the new process serves, this one does.
        stream
            .set_nonblocking(true)
            .map_err(|e| format!("--handover: {e}"))?;
        let mut stream =
            tokio::net::UnixStream::from_std(stream).map_err(|e| format!("--handover: {e}"))?;
        let mut confirm = [0u8; CONFIRM.len()];
        use tokio::io::AsyncReadExt;
        match tokio::time::timeout(CONFIRM_LIMIT, stream.read_exact(&mut confirm)).await {
            Ok(Ok(_)) if confirm == CONFIRM => Ok(()),
            Ok(_) => Err("the new process did not start".into()),
            Err(_) => Err(format!(
                "the new process did not say it serves within {CONFIRM_LIMIT:?}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_address_and_rank_lines() {
        let keys = parse_keys("127.0.0.1:8080 0\n[::1]:0 1\n").unwrap();
        assert_eq!(
            keys,
            [
                ("127.0.0.1:8080".parse().unwrap(), 0),
                ("[::1]:0".parse().unwrap(), 1)
            ]
        );
        assert!(parse_keys("127.0.0.1:8080\n").is_err());
        assert!(parse_keys("nowhere 0\n").is_err());
        assert!(parse_keys("127.0.0.1:1 x\n").is_err());
        assert_eq!(parse_keys("").unwrap(), []);
    }

    /// The sockets cross: a connection queued on the listener before the
    /// hand-over is accepted from the copy received.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sockets_cross_and_keep_their_queue() {
        let dir = std::env::temp_dir().join(format!("halfclose-handover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.sock");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Queued, not accepted.
        let _queued = std::net::TcpStream::connect(addr).unwrap();

        let mut handover = Handover::bind(&path).unwrap();
        let taker = {
            let path = path.clone();
            std::thread::spawn(move || take_over(&path))
        };
        let stream = handover.asked().await;
        let key: Key = ("127.0.0.1:0".parse().unwrap(), 0);
        let sockets = [(key, listener.as_fd())];
        let give = handover.give(stream, &sockets);
        let (given, taken) = tokio::join!(give, async {
            let taken = tokio::task::spawn_blocking(move || taker.join().unwrap())
                .await
                .unwrap()
                .unwrap();
            assert!(!path.exists(), "the path is free for the next swap");
            let sockets = taken
                .sockets
                .iter()
                .map(|(k, l)| (*k, l.try_clone().unwrap()))
                .collect::<Vec<_>>();
            taken.serving().unwrap();
            sockets
        });
        given.unwrap();
        drop(listener);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, key);
        assert_eq!(taken[0].1.local_addr().unwrap(), addr);
        taken[0].1.set_nonblocking(false).unwrap();
        let (accepted, _) = taken[0].1.accept().unwrap();
        assert_eq!(accepted.local_addr().unwrap(), addr);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A new process that takes the sockets but never says it serves
    /// leaves the old one serving.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_process_that_fails_leaves_the_old_one_serving() {
        let dir =
            std::env::temp_dir().join(format!("halfclose-handover-fail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.sock");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut handover = Handover::bind(&path).unwrap();
        let taker = {
            let path = path.clone();
            // Takes the sockets, then exits without a word.
            std::thread::spawn(move || drop(take_over(&path).unwrap()))
        };
        let stream = handover.asked().await;
        let key: Key = ("127.0.0.1:0".parse().unwrap(), 0);
        let e = handover
            .give(stream, &[(key, listener.as_fd())])
            .await
            .unwrap_err();
        assert!(e.contains("did not start"), "{e}");
        taker.join().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
