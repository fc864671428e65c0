//! One copy direction between two TCP sockets with `splice(2)`: socket to pipe,
//! pipe to socket, the bytes never entering user space. Linux only.
//!
//! The state machine is the one of [`OneWay`](crate::direction::OneWay):
//! bytes already in the pipe go out before anything more is read; EOF on the
//! source becomes a shutdown of the destination's write half once the pipe is
//! empty. A direction takes a pipe from a per-thread pool when bytes first
//! flow and gives it back whenever it waits for its source with the pipe empty,
//! so an idle tunnel holds no pipe.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::direction::{Failure, Progress, Pump, State, poll_pass_fin, write_zero};

/// Pipes kept per thread for reuse, at most; and never more than there are
/// directions alive on the thread, so that when the last tunnel ends, its pipes
/// are closed and the process's file descriptors are back to their baseline.
const POOL: usize = 64;

/// Both ends of a pipe.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

thread_local! {
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    /// Splice directions alive on this thread.
    static LIVE: Cell<usize> = const { Cell::new(0) };
}

/// The most pipes the pool may keep now.
fn pool_bound() -> usize {
    LIVE.try_with(Cell::get).unwrap_or(0).min(POOL)
}

fn take_pipe() -> io::Result<Pipe> {
    if let Some(p) = PIPES
        .try_with(|pool| pool.try_borrow_mut().ok()?.pop())
        .ok()
        .flatten()
    {
        return Ok(p);
    }
    let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    Ok(Pipe { read, write })
}

/// An empty pipe goes back to the pool (or is closed when the pool is full).
fn give_back(pipe: Pipe) {
    let bound = pool_bound();
    let _ = PIPES.try_with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut() {
            if pool.len() < bound {
                pool.push(pipe);
            }
        }
    });
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
    /// Bytes in the pipe, not yet written to the destination.
    in_pipe: usize,
    read_eof: bool,
    copied: u64,
}

impl SpliceDuplex {
    pub(crate) fn new() -> Self {
        let _ = LIVE.try_with(|n| n.set(n.get() + 1));
        SpliceDuplex {
            state: State::Copying,
            pipe: None,
            in_pipe: 0,
            read_eof: false,
            copied: 0,
        }
    }

    /// Writes what the pipe holds until it is empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>, to: &TcpStream) -> Poll<Result<(), Failure>> {
        while self.in_pipe > 0 {
            ready!(to.poll_write_ready(cx)).map_err(Failure::write)?;
            let Some(pipe) = &self.pipe else {
                unreachable!("bytes in a pipe that is not there")
            };
            match to.try_io(Interest::WRITABLE, || splice(&pipe.read, to, self.in_pipe)) {
                Ok(0) => return Poll::Ready(Err(write_zero())),
                Ok(n) => {
                    self.in_pipe -= n;
                    self.copied += n as u64;
                }
                // Readiness was cleared: the next `poll_write_ready` waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(Failure::write(e))),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for SpliceDuplex {
    fn drop(&mut self) {
        // A pipe with bytes in it is closed; an empty one is reused.
        let _ = LIVE.try_with(|n| n.set(n.get().saturating_sub(1)));
        if let (Some(pipe), 0) = (self.pipe.take(), self.in_pipe) {
            give_back(pipe);
        }
        // Fewer directions alive: fewer pipes kept.
        let bound = pool_bound();
        let _ = PIPES.try_with(|pool| {
            if let Ok(mut pool) = pool.try_borrow_mut() {
                pool.truncate(bound);
            }
        });
    }
}

impl Progress for SpliceDuplex {
    fn read_eof(&self) -> bool {
        self.read_eof
    }

    fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn copied(&self) -> u64 {
        self.copied
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
                                give_back(pipe);
                            }
                            return Poll::Pending;
                        }
                    }
                    let pipe = match self.pipe.take() {
                        Some(p) => p,
                        None => take_pipe().map_err(Failure::read)?,
                    };
                    let pipe = self.pipe.insert(pipe);
                    let src: &TcpStream = from;
                    match src.try_io(Interest::READABLE, || splice(src, &pipe.write, buffer_size)) {
                        Ok(0) => self.read_eof = true,
                        Ok(n) => self.in_pipe = n,
                        // Readiness was cleared: the next `poll_read_ready` waits.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(Failure::read(e))),
                    }
                }
                State::ShuttingDown => {
                    ready!(poll_pass_fin(cx, Pin::new(&mut *to)))?;
                    if let Some(pipe) = self.pipe.take() {
                        give_back(pipe);
                    }
                    self.state = State::Done;
                }
                State::Done => return Poll::Ready(Ok(())),
            }
        }
    }

    fn salvage(&mut self, cx: &mut Context<'_>, to: &mut TcpStream) {
        let _ = self.poll_drain(cx, to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pooled() -> usize {
        PIPES.with(|p| p.borrow().len())
    }

    /// Pipes are reused while directions are alive, and closed when the last
    /// one ends: no file descriptor outlives the tunnels.
    #[test]
    fn the_pool_never_outlives_the_tunnels() {
        let (a, b) = (SpliceDuplex::new(), SpliceDuplex::new());
        let pipes = [
            take_pipe().unwrap(),
            take_pipe().unwrap(),
            take_pipe().unwrap(),
        ];
        pipes.into_iter().for_each(give_back);
        assert_eq!(pooled(), 2, "at most one pipe per live direction");
        drop(a);
        assert_eq!(pooled(), 1);
        drop(b);
        assert_eq!(pooled(), 0);
    }
}
