//! Idle upstream connections of the HTTP/1.1 path, kept per thread for
//! reuse, and one connection with the bytes read from it but not used yet.
//!
//! A connection is parked only when its last response was read to its exact
//! end, with no byte left over, on a connection both sides keep alive; one
//! that turned readable while parked (the upstream closed it, or sent bytes
//! nobody asked for) is closed at checkout, never used.

use std::collections::VecDeque;
use std::future::Future as _;
use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::thread::ThreadId;
use std::time::Duration;

use bytes::BytesMut;
use http::Uri;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use tower_service::Service as _;

use super::error::ConnectError;
use crate::BoxError;
use crate::client::connect::{Connector, UpstreamIo};

/// Buffer space reserved before each read.
const READ_SIZE: usize = 16 * 1024;

/// Connections to one upstream, and the idle ones kept for reuse.
pub(crate) struct Pool {
    connector: Connector,
    upstream: Uri,
    max_idle: usize,
    idle_timeout: Option<Duration>,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    /// Per thread, oldest first.
    threads: Vec<(ThreadId, VecDeque<Parked>)>,
    count: usize,
    sweeping: bool,
}

struct Parked {
    conn: Conn,
    since: Instant,
}

/// One connection to the upstream and the bytes read from it but not used yet.
pub(super) struct Conn {
    pub(super) io: TcpStream,
    pub(super) buf: BytesMut,
}

thread_local! {
    static THREAD: ThreadId = std::thread::current().id();
}

fn this_thread() -> ThreadId {
    THREAD.with(|t| *t)
}

impl Pool {
    pub(crate) fn new(
        connector: Connector,
        upstream: Uri,
        max_idle: usize,
        idle_timeout: Option<Duration>,
    ) -> Arc<Self> {
        Arc::new(Pool {
            connector,
            upstream,
            max_idle,
            idle_timeout,
            idle: Mutex::default(),
        })
    }

    /// A new connection to the upstream.
    pub(super) async fn connect(&self) -> Result<Conn, BoxError> {
        let io = self
            .connector
            .clone()
            .call(self.upstream.clone())
            .await
            .map_err(|e| Box::new(ConnectError(e)) as BoxError)?;
        match io.into_inner() {
            UpstreamIo::Tcp(io) => Ok(Conn {
                io,
                buf: BytesMut::new(),
            }),
            #[cfg(feature = "tls")]
            UpstreamIo::Tls(_) => Err("the HTTP/1 fast path is for plain http upstreams".into()),
        }
    }

    /// An idle connection that is still open: this thread's newest first,
    /// else another thread's (on a work-stealing runtime all threads share
    /// one I/O driver; elsewhere the connection still works, its wake-ups
    /// going through the runtime that opened it).
    pub(super) fn checkout(&self) -> Option<Conn> {
        let now = Instant::now();
        let thread = this_thread();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let Idle { threads, count, .. } = &mut *idle;
        let own = threads.iter().position(|(t, _)| *t == thread);
        let others = (0..threads.len()).filter(|i| Some(*i) != own);
        for i in own.into_iter().chain(others) {
            let parked = &mut threads[i].1;
            while let Some(p) = parked.pop_back() {
                *count -= 1;
                if self.expired(&p, now) {
                    // The rest are older still.
                    *count -= parked.len();
                    parked.clear();
                    break;
                }
                let mut conn = p.conn;
                if conn.is_open() {
                    return Some(conn);
                }
            }
        }
        None
    }

    fn expired(&self, p: &Parked, now: Instant) -> bool {
        self.idle_timeout
            .is_some_and(|limit| now.saturating_duration_since(p.since) >= limit)
    }

    /// Parks `conn` for reuse when it can be, else closes it.
    pub(super) fn release(self: &Arc<Self>, conn: Conn, reusable: bool) {
        if !reusable || !conn.buf.is_empty() || self.max_idle == 0 {
            return;
        }
        let thread = this_thread();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let Idle {
            threads,
            count,
            sweeping,
        } = &mut *idle;
        let parked = match threads.iter().position(|(t, _)| *t == thread) {
            Some(i) => &mut threads[i].1,
            None => {
                threads.push((thread, VecDeque::new()));
                &mut threads.last_mut().expect("just pushed").1
            }
        };
        if *count >= self.max_idle {
            // Full: this thread's oldest makes room, or this one is closed.
            if parked.pop_front().is_none() {
                return;
            }
            *count -= 1;
        }
        parked.push_back(Parked {
            conn,
            since: Instant::now(),
        });
        *count += 1;
        if *sweeping {
            return;
        }
        if let (Some(limit), Ok(rt)) = (self.idle_timeout, tokio::runtime::Handle::try_current()) {
            *sweeping = true;
            // Not under the lock: a runtime shutting down drops the task at
            // once, and `Running` takes the lock.
            drop(idle);
            rt.spawn(sweep(Running(Arc::downgrade(self)), limit));
        }
    }
}

/// Closes connections idle past the timeout, until none is left idle (the
/// next parked connection starts it again) or the pool is dropped.
async fn sweep(mut running: Running, limit: Duration) {
    let every = limit.max(Duration::from_millis(100));
    let pool = running.0.clone();
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        let Idle {
            threads,
            count,
            sweeping,
        } = &mut *idle;
        for (_, parked) in threads.iter_mut() {
            while parked.front().is_some_and(|p| pool.expired(p, now)) {
                parked.pop_front();
                *count -= 1;
            }
        }
        if *count == 0 {
            *sweeping = false;
            running.0 = Weak::new();
            return;
        }
    }
}

/// Marks a pool's sweeper as gone when its task ends, run or not (a task
/// dropped by a runtime that shut down): the next parked connection starts
/// another.
struct Running(Weak<Pool>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(pool) = self.0.upgrade() {
            pool.idle.lock().unwrap_or_else(|e| e.into_inner()).sweeping = false;
        }
    }
}

impl Conn {
    /// False if the upstream closed the idle connection, or sent bytes
    /// nobody asked for (a planted response must never be read as the answer
    /// to the next request). Asks the socket itself with one non-blocking
    /// peek: the runtime's readiness may not have seen bytes that arrived
    /// since its last turn.
    pub(super) fn is_open(&mut self) -> bool {
        let mut byte = [std::mem::MaybeUninit::uninit(); 1];
        match socket2::SockRef::from(&self.io).peek(&mut byte) {
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            // EOF, or bytes nobody asked for.
            Ok(_) => false,
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at EOF.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_SIZE);
        let read = self.io.read_buf(&mut self.buf);
        std::pin::pin!(read).poll(cx)
    }

    pub(super) async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}
