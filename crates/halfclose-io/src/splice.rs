//! One copy direction between two TCP sockets with `splice(2)`: socket to pipe,
//! pipe to socket, the bytes never entering user space. Linux only.
//!
//! The state machine is the one of [`OneWay`]: bytes already in the pipe go
//! out before anything more is read; EOF on the source becomes a shutdown of
//! the destination's write half once the pipe is empty. A direction takes a
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

/// One direction moved by splice.
pub(crate) struct SpliceDuplex {
    state: State,
    pipe: Option<Pipe>,
    /// Bytes in the pipe, not yet written to the destination (a `u32`, and
    /// reads capped to fit, so that the fallback below costs no room).
    in_pipe: u32,
    read_eof: bool,
    copied: u64,
    /// Set while this direction copies through user space, for want of a
    /// pipe; dropped when it is idle again. Boxed: it is rare, and the
    /// tunnel's future stays small.
    fallback: Option<Box<OneWay>>,
}

impl SpliceDuplex {
    pub(crate) fn new() -> Self {
        LIVE.fetch_add(1, Ordering::AcqRel);
        SpliceDuplex {
            state: State::Copying,
            pipe: None,
            in_pipe: 0,
            read_eof: false,
            copied: 0,
            fallback: None,
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
                    self.copied += n as u64;
                }
                // Readiness was cleared: the next `poll_write_ready` waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(Failure::write(e))),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// No pipe to be had: copy through user space until idle. Called with
    /// no pipe and the source not at EOF, so nothing is lost or repeated.
    fn fall_back(&mut self) -> &mut OneWay {
        let mut copy = OneWay::new();
        copy.copied = self.copied;
        self.fallback.insert(Box::new(copy))
    }

    /// Drives the user-space copy; once it waits for its source with nothing
    /// held, the next bytes go through a pipe again.
    fn poll_fallback(
        &mut self,
        cx: &mut Context<'_>,
        buffer_size: usize,
        from: &mut TcpStream,
        to: &mut TcpStream,
    ) -> Poll<Result<(), Failure>> {
        let Some(copy) = &mut self.fallback else {
            unreachable!("no fallback to drive")
        };
        let polled = copy.poll_pump(cx, buffer_size, from, to);
        if polled.is_pending() && copy.is_idle() {
            self.copied = copy.copied;
            self.fallback = None;
        }
        polled
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
        match &self.fallback {
            Some(copy) => copy.read_eof(),
            None => self.read_eof,
        }
    }

    fn is_done(&self) -> bool {
        match &self.fallback {
            Some(copy) => copy.is_done(),
            None => self.state == State::Done,
        }
    }

    fn copied(&self) -> u64 {
        match &self.fallback {
            Some(copy) => copy.copied(),
            None => self.copied,
        }
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
        if self.fallback.is_some() {
            return self.poll_fallback(cx, buffer_size, from, to);
        }
        loop {
            match self.state {
                State::Copying => {
                    // 1. Bytes already read go out before anything else is read.
                    ready!(self.poll_drain(cx, to))?;
                    if self.read_eof {
                        self.state = State::ShuttingDown;
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
                            self.fall_back();
                            return self.poll_fallback(cx, buffer_size, from, to);
                        }
                    };
                    let pipe = self.pipe.insert(pipe);
                    let src: &TcpStream = from;
                    let len = buffer_size.min(u32::MAX as usize);
                    match src.try_io(Interest::READABLE, || splice(src, &pipe.write, len)) {
                        Ok(0) => self.read_eof = true,
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
                    self.state = State::Done;
                }
                State::Done => return Poll::Ready(Ok(())),
            }
        }
    }

    fn salvage(&mut self, cx: &mut Context<'_>, to: &mut TcpStream) {
        match &mut self.fallback {
            Some(copy) => Pump::<TcpStream, TcpStream>::salvage(&mut **copy, cx, to),
            None => {
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
