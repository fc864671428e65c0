//! One copy direction between two TCP sockets with `splice(2)`: socket to pipe,
//! pipe to socket, the bytes never entering user space. Linux only.
//!
//! A direction copies through user space, as [`OneWay`] does, until one read
//! brings at least half a buffer (a bulk transfer); from then on it moves
//! its bytes by pipe. The state machine is the one of [`OneWay`]: bytes
//! already in the pipe go out before anything more is read; EOF on the
//! source becomes a shutdown of the destination's write half once the pipe
//! is empty. A direction takes a
//! pipe from a pool shared by the process when bytes first flow and gives it
//! back whenever it waits for its source with the pipe empty, so an idle
//! tunnel holds no pipe. At most [`MAX_SPLICE_PIPES`] pipes are open in the
//! process at once, so the file descriptors they take are planned, not found
//! wanting. When no pipe can be had (all in use, or none can be made: EMFILE,
//! ENFILE, no pipe memory), the direction copies through user space as
//! [`OneWay`] does until it is idle again, then tries for a pipe the next
//! time bytes come: the tunnel goes on either way.
//!
//! The pool and the counts are process-wide, not per thread: on a
//! work-stealing runtime a tunnel may start on one thread and end on another,
//! and per-thread counts then kept pipes open for ever.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::MAX_SPLICE_PIPES;
use crate::direction::{Failure, OneWay, Progress, Pump, State, poll_pass_fin, write_zero};

/// Pipes kept for reuse, at most; and never more than there are splice
/// directions alive in the process, so that when the last tunnel ends its
/// pipes are closed and the process's file descriptors are back to their
/// baseline.
const POOL: usize = 64;

/// Both ends of a pipe; counted in [`OPEN`] while it lives.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Empty pipes for reuse, at most [`bound`] of them. One short lock per pipe
/// taken or given back (a direction gives its pipe back each time it has
/// moved what was there and waits for more).
static PIPES: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());
/// Splice directions alive in the process (made and not yet dropped).
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Pipes open in the process, pooled or in use: at most [`MAX_SPLICE_PIPES`].
static OPEN: AtomicUsize = AtomicUsize::new(0);

fn pool() -> MutexGuard<'static, Vec<Pipe>> {
    // Nothing panics while the lock is held; a poisoned pool is still a list
    // of good pipes.
    PIPES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The most pipes the pool may keep now. Read with the pool locked: a
/// direction that ends lowers `LIVE` before it locks the pool to trim it, so
/// whoever locks the pool last sees the lowest count.
fn bound() -> usize {
    LIVE.load(Ordering::Acquire).min(POOL)
}

/// An empty pipe from the pool, or a new one while fewer than
/// [`MAX_SPLICE_PIPES`] are open; `None` when none can be had.
fn take_pipe() -> Option<Pipe> {
    if let Some(p) = pool().pop() {
        return Some(p);
    }
    OPEN.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        (n < MAX_SPLICE_PIPES).then_some(n + 1)
    })
    .ok()?;
    match rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK) {
        Ok((read, write)) => Some(Pipe { read, write }),
        // Out of file descriptors or pipe memory: the caller copies instead.
        Err(_) => {
            OPEN.fetch_sub(1, Ordering::AcqRel);
            None
        }
    }
}

/// Puts an empty pipe back (or closes it when the pool is full), and closes
/// the pipes the pool keeps beyond its bound, which falls as directions end.
/// Pipes are closed after the lock is released.
fn give_back(pipe: Option<Pipe>) {
    let mut pool = pool();
    let bound = bound();
    let refused = match pipe {
        Some(p) if pool.len() < bound => {
            pool.push(p);
            None
        }
        other => other,
    };
    // At most a pipe or two: the bound falls by one per direction that ends.
    let surplus = (pool.len() > bound).then(|| pool.split_off(bound));
    drop(pool);
    drop((refused, surplus));
}

fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    Ok(rustix::pipe::splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
    )?)
}

/// One direction between two TCP sockets: it copies through user space
/// (the thread's scratch buffer, as [`OneWay`] does) until one read brings
/// at least half a buffer, then moves its bytes by pipe for the rest of its
/// life. Small messages (most WebSocket traffic, and the handshakes of every
/// tunnel) cost a `recv` and a `send`, while two `splice` calls and a pipe
/// from the pool would cost more; bulk transfers never enter user space.
pub(crate) struct SpliceDuplex {
    /// The copy through user space; its `state`, `read_eof` and `copied` are
    /// the direction's whichever way the bytes move.
    copy: OneWay,
    /// Bytes move by pipe (else through `copy`: before the first bulk
    /// read, and while no pipe can be had).
    spliced: bool,
    pipe: Option<Pipe>,
    /// Bytes in the pipe, not yet written to the destination.
    in_pipe: u32,
}

impl SpliceDuplex {
    pub(crate) fn new() -> Self {
        LIVE.fetch_add(1, Ordering::AcqRel);
        SpliceDuplex {
            copy: OneWay::new(),
            spliced: false,
            pipe: None,
            in_pipe: 0,
        }
    }

    /// Writes what the pipe holds until it is empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>, to: &TcpStream) -> Poll<Result<(), Failure>> {
        while self.in_pipe > 0 {
            ready!(to.poll_write_ready(cx)).map_err(Failure::write)?;
            let Some(pipe) = &self.pipe else {
                unreachable!("bytes in a pipe that is not there")
            };
            match to.try_io(Interest::WRITABLE, || {
                splice(&pipe.read, to, self.in_pipe as usize)
            }) {
                Ok(0) => return Poll::Ready(Err(write_zero())),
                Ok(n) => {
                    // At most what was asked for, which fits.
                    self.in_pipe -= n as u32;
                    self.copy.copied += n as u64;
                }
                // Readiness was cleared: the next `poll_write_ready` waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(Failure::write(e))),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Drives the copy through user space. Once it waits for its source
    /// with nothing held after a bulk read (or after it fell back for want
    /// of a pipe, which counts as one), the next bytes go by pipe. Called
    /// with no pipe and nothing in one, so nothing is lost or repeated.
    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        buffer_size: usize,
        from: &mut TcpStream,
        to: &mut TcpStream,
    ) -> Poll<Result<(), Failure>> {
        let polled = self.copy.poll_pump(cx, buffer_size, from, to);
        if polled.is_pending() && self.copy.is_idle() && self.copy.bulk {
            self.spliced = true;
        }
        polled
    }

    /// Moves bytes by pipe.
    fn poll_splice(
        &mut self,
        cx: &mut Context<'_>,
        buffer_size: usize,
        from: &mut TcpStream,
        to: &mut TcpStream,
    ) -> Poll<Result<(), Failure>> {
        loop {
            match self.copy.state {
                State::Copying => {
                    // 1. Bytes already read go out before anything else is read.
                    ready!(self.poll_drain(cx, to))?;
                    if self.copy.read_eof {
                        self.copy.state = State::ShuttingDown;
                        continue;
                    }
                    // 2. Read more into the (empty) pipe.
                    match from.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::read(e))),
                        Poll::Pending => {
                            // Idle with an empty pipe: no pipe is held while idle.
                            if let Some(pipe) = self.pipe.take() {
                                give_back(Some(pipe));
                            }
                            return Poll::Pending;
                        }
                    }
                    let pipe = match self.pipe.take().or_else(take_pipe) {
                        Some(p) => p,
                        None => {
                            self.spliced = false;
                            self.copy.bulk = true;
                            return self.poll_copy(cx, buffer_size, from, to);
                        }
                    };
                    let pipe = self.pipe.insert(pipe);
                    let src: &TcpStream = from;
                    let len = buffer_size.min(u32::MAX as usize);
                    match src.try_io(Interest::READABLE, || splice(src, &pipe.write, len)) {
                        Ok(0) => self.copy.read_eof = true,
                        Ok(n) => self.in_pipe = n as u32,
                        // Readiness was cleared: the next `poll_read_ready` waits.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(Failure::read(e))),
                    }
                }
                State::ShuttingDown => {
                    ready!(poll_pass_fin(cx, Pin::new(&mut *to)))?;
                    if let Some(pipe) = self.pipe.take() {
                        give_back(Some(pipe));
                    }
                    self.copy.state = State::Done;
                }
                State::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl Drop for SpliceDuplex {
    fn drop(&mut self) {
        // One direction fewer: fewer pipes kept. A pipe with bytes in it is
        // closed; an empty one may be reused.
        LIVE.fetch_sub(1, Ordering::AcqRel);
        let pipe = self.pipe.take().filter(|_| self.in_pipe == 0);
        give_back(pipe);
    }
}

impl Progress for SpliceDuplex {
    fn read_eof(&self) -> bool {
        self.copy.read_eof
    }

    fn is_done(&self) -> bool {
        self.copy.state == State::Done
    }

    fn copied(&self) -> u64 {
        self.copy.copied
    }
}

impl Pump<TcpStream, TcpStream> for SpliceDuplex {
    fn poll_pump(
        &mut self,
        cx: &mut Context<'_>,
        buffer_size: usize,
        from: &mut TcpStream,
        to: &mut TcpStream,
    ) -> Poll<Result<(), Failure>> {
        match self.spliced {
            false => self.poll_copy(cx, buffer_size, from, to),
            true => self.poll_splice(cx, buffer_size, from, to),
        }
    }

    fn salvage(&mut self, cx: &mut Context<'_>, to: &mut TcpStream) {
        match self.spliced {
            false => Pump::<TcpStream, TcpStream>::salvage(&mut self.copy, cx, to),
            true => {
                let _ = self.poll_drain(cx, to);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pooled() -> usize {
        pool().len()
    }

    /// Pipes are reused while directions are alive, and closed when the last
    /// one ends, whichever thread it ends on: no file descriptor outlives the
    /// tunnels. (The only test of this crate's own that makes splice
    /// directions: the pool is the process's.)
    #[test]
    fn the_pool_never_outlives_the_tunnels() {
        let (a, b) = (SpliceDuplex::new(), SpliceDuplex::new());
        let pipes = [
            take_pipe().unwrap(),
            take_pipe().unwrap(),
            take_pipe().unwrap(),
        ];
        pipes.into_iter().map(Some).for_each(give_back);
        assert_eq!(pooled(), 2, "at most one pipe per live direction");
        // A pipe taken again comes from the pool.
        let again = take_pipe().unwrap();
        assert_eq!(pooled(), 1);
        give_back(Some(again));
        assert_eq!(pooled(), 2);
        // Directions made here and dropped on another thread still count.
        std::thread::spawn(move || drop(a)).join().unwrap();
        assert_eq!(pooled(), 1);
        std::thread::spawn(move || drop(b)).join().unwrap();
        assert_eq!(pooled(), 0);
        assert_eq!(LIVE.load(Ordering::Acquire), 0);
        assert_eq!(OPEN.load(Ordering::Acquire), 0);

        // No more than MAX_SPLICE_PIPES are open at once; one closed makes
        // room for another.
        let mut all: Vec<Pipe> = std::iter::from_fn(take_pipe).take(1000).collect();
        assert_eq!(all.len(), MAX_SPLICE_PIPES);
        assert!(take_pipe().is_none());
        all.pop();
        assert!(take_pipe().is_some());
        drop(all);
        assert_eq!(OPEN.load(Ordering::Acquire), 0);
    }
}
