//! One copy direction: read from a source, write to a destination, then pass the
//! source's EOF on as a shutdown of the destination's write half.
//!
//! Buffering: every read goes into a per-thread scratch buffer and is written
//! straight on. Only the bytes the destination does not take at once are copied
//! into a buffer owned by this direction, sized to exactly those bytes, and that
//! buffer is freed as soon as they are written. So an idle direction holds no
//! buffer, one whose destination keeps up holds none either, and one whose
//! destination lags holds at most `buffer_size` bytes.

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Copying bytes; the source has not reached EOF or bytes are still pending.
    Copying,
    /// The source reached EOF and every byte was written: shutting down the
    /// destination's write half (this flushes it first).
    ShuttingDown,
    /// FIN passed on. Nothing more to do in this direction.
    Done,
}

/// A failure in one direction: which step failed and the IO error.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) kind: Kind,
    pub(crate) error: io::Error,
}

impl Failure {
    pub(crate) fn read(error: io::Error) -> Self {
        Failure {
            kind: Kind::Read,
            error,
        }
    }

    pub(crate) fn write(error: io::Error) -> Self {
        Failure {
            kind: Kind::Write,
            error,
        }
    }
}

/// Passes the FIN on: shuts the destination's write half down (which flushes
/// it first). A peer already gone (`NotConnected`, as macOS reports it) leaves
/// nobody to tell: the direction is finished all the same.
pub(crate) fn poll_pass_fin<W: AsyncWrite + ?Sized>(
    cx: &mut Context<'_>,
    writer: Pin<&mut W>,
) -> Poll<Result<(), Failure>> {
    match ready!(writer.poll_shutdown(cx)) {
        Ok(()) => Poll::Ready(Ok(())),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
        Err(error) => Poll::Ready(Err(Failure {
            kind: Kind::Shutdown,
            error,
        })),
    }
}

pub(crate) fn write_zero() -> Failure {
    Failure::write(io::Error::new(
        io::ErrorKind::WriteZero,
        "destination accepted no bytes",
    ))
}

/// What a tunnel needs to know of one copy direction, whatever moves its bytes.
pub(crate) trait Progress {
    /// The source has reached EOF (its peer sent FIN).
    fn read_eof(&self) -> bool;
    /// The direction has passed its FIN on and is finished.
    fn is_done(&self) -> bool;
    /// Bytes written to the destination.
    fn copied(&self) -> u64;
}

/// One copy direction, from a source `R` to a destination `W`.
pub(crate) trait Pump<R: ?Sized, W: ?Sized>: Progress {
    /// Drives the direction until it is done, fails, or must wait.
    fn poll_pump(
        &mut self,
        cx: &mut Context<'_>,
        buffer_size: usize,
        from: &mut R,
        to: &mut W,
    ) -> Poll<Result<(), Failure>>;

    /// On the way out after the other direction failed: offers the bytes already
    /// read to the destination once, without waiting, and ignores errors.
    fn salvage(&mut self, cx: &mut Context<'_>, to: &mut W);
}

impl Progress for OneWay {
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

impl<R, W> Pump<R, W> for OneWay
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    fn poll_pump(
        &mut self,
        cx: &mut Context<'_>,
        buffer_size: usize,
        from: &mut R,
        to: &mut W,
    ) -> Poll<Result<(), Failure>> {
        self.poll_copy(cx, buffer_size, Pin::new(from), Pin::new(to))
    }

    fn salvage(&mut self, cx: &mut Context<'_>, to: &mut W) {
        let _ = self.poll_write_pending(cx, Pin::new(to));
    }
}

/// The state of one copy direction. (A splice direction drives its
/// `state`, `read_eof` and `copied` too, while it moves bytes by pipe.)
#[derive(Debug)]
pub(crate) struct OneWay {
    pub(crate) state: State,
    /// Bytes read but not yet taken by the destination; `None` when there are none.
    buf: Option<Box<[u8]>>,
    /// Pending bytes are `buf[pos..]` (reads are capped at `u32::MAX`
    /// bytes, so a `u32` holds it, and the state of an idle tunnel stays
    /// small).
    pos: u32,
    /// The source returned EOF.
    pub(crate) read_eof: bool,
    /// Bytes were written since the last flush.
    need_flush: bool,
    /// The last read brought at least half a buffer: a bulk transfer, which
    /// a splice direction then moves by pipe.
    pub(crate) bulk: bool,
    /// Bytes written to the destination.
    pub(crate) copied: u64,
}

thread_local! {
    /// Per-thread buffer that reads land in first. Only unwritten leftovers are
    /// copied out of it, so an idle direction needs no buffer of its own. Its
    /// length stays 0: reads go into its spare capacity through
    /// `ReadBuf::uninit`, so the bytes a tunnel read before are never counted as
    /// initialized for the next read, and a reader that claims bytes it did not
    /// write cannot expose another tunnel's data.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch buffer of `len` bytes of spare capacity: the thread's
/// own if it is free, a temporary one otherwise (re-entrant polls, or
/// thread-local teardown).
fn with_scratch<T>(len: usize, f: impl FnOnce(&mut [MaybeUninit<u8>]) -> T) -> T {
    let mut f = Some(f);
    let res = SCRATCH.try_with(|cell| {
        let mut scratch = cell.try_borrow_mut().ok()?;
        scratch.reserve(len);
        let f = f.take()?;
        Some(f(&mut scratch.spare_capacity_mut()[..len]))
    });
    match (res, f) {
        (Ok(Some(out)), _) => out,
        (_, Some(f)) => f(&mut Vec::with_capacity(len).spare_capacity_mut()[..len]),
        // `f` was taken only when the scratch buffer was lent, which returned `Some`.
        (_, None) => unreachable!("scratch closure consumed without a result"),
    }
}

impl OneWay {
    pub(crate) fn new() -> Self {
        OneWay {
            state: State::Copying,
            buf: None,
            pos: 0,
            read_eof: false,
            need_flush: false,
            bulk: false,
            copied: 0,
        }
    }

    /// Waiting for its source with nothing held: no pending bytes, nothing
    /// to flush, no EOF yet (what a splice direction that copies waits for
    /// before its next bytes go by pipe).
    #[cfg(all(target_os = "linux", feature = "splice"))]
    pub(crate) fn is_idle(&self) -> bool {
        self.state == State::Copying && self.buf.is_none() && !self.read_eof && !self.need_flush
    }

    /// Bytes of owned buffer memory this direction holds now.
    #[cfg(test)]
    pub(crate) fn buffer_bytes(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.len())
    }

    /// Drives this direction until it is done, fails, or must wait.
    pub(crate) fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        buffer_size: usize,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<Result<(), Failure>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            match self.state {
                State::Copying => {
                    // 1. Bytes already read go out before anything else is read.
                    ready!(self.poll_write_pending(cx, writer.as_mut()))?;
                    if self.read_eof {
                        self.state = State::ShuttingDown;
                        continue;
                    }
                    // 2. Read more, and write it straight on.
                    match self.poll_read_scratch(cx, buffer_size, reader.as_mut(), writer.as_mut())
                    {
                        Poll::Ready(Ok(0)) => self.read_eof = true,
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(failure)) => return Poll::Ready(Err(failure)),
                        Poll::Pending => {
                            // Nothing to read now: the direction is idle. Flush what
                            // was written.
                            if self.need_flush {
                                ready!(writer.as_mut().poll_flush(cx)).map_err(Failure::write)?;
                                self.need_flush = false;
                            }
                            return Poll::Pending;
                        }
                    }
                }
                State::ShuttingDown => {
                    ready!(poll_pass_fin(cx, writer.as_mut()))?;
                    self.need_flush = false;
                    self.state = State::Done;
                }
                State::Done => return Poll::Ready(Ok(())),
            }
        }
    }

    /// Writes the pending bytes until there are none, then frees their buffer.
    fn poll_write_pending<W>(
        &mut self,
        cx: &mut Context<'_>,
        mut writer: Pin<&mut W>,
    ) -> Poll<Result<(), Failure>>
    where
        W: AsyncWrite + ?Sized,
    {
        let Some(buf) = self.buf.as_deref() else {
            return Poll::Ready(Ok(()));
        };
        while (self.pos as usize) < buf.len() {
            let n = ready!(writer.as_mut().poll_write(cx, &buf[self.pos as usize..]))
                .map_err(Failure::write)?;
            if n == 0 {
                return Poll::Ready(Err(write_zero()));
            }
            // At most what is left, which fits.
            self.pos += n as u32;
            self.copied += n as u64;
            self.need_flush = true;
        }
        self.buf = None;
        self.pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads into the thread's scratch buffer and writes straight on; whatever the
    /// destination does not take now is kept in a new owned buffer. Returns the
    /// number of bytes read (0 at EOF).
    fn poll_read_scratch<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        buffer_size: usize,
        reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<Result<usize, Failure>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        let buffer_size = buffer_size.min(u32::MAX as usize);
        with_scratch(buffer_size, |scratch| {
            let mut rb = ReadBuf::uninit(scratch);
            ready!(reader.poll_read(cx, &mut rb)).map_err(Failure::read)?;
            let data = rb.filled();
            let n = data.len();
            self.bulk = n > 0 && n >= buffer_size / 2;
            let mut written = 0;
            while written < n {
                match writer.as_mut().poll_write(cx, &data[written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(write_zero())),
                    Poll::Ready(Ok(m)) => {
                        written += m;
                        self.copied += m as u64;
                        self.need_flush = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::write(e))),
                    Poll::Pending => break,
                }
            }
            if written < n {
                // The destination is slow: keep exactly the rest. The waker is
                // registered by the `Pending` write above.
                self.buf = Some(data[written..].into());
                self.pos = 0;
            }
            Poll::Ready(Ok(n))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;
    use tokio::io::DuplexStream;

    /// Reads what `rd` has now, without waiting.
    fn drain(cx: &mut Context<'_>, rd: &mut DuplexStream, out: &mut Vec<u8>) {
        let mut buf = [0u8; 64];
        loop {
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut *rd).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    out.extend_from_slice(rb.filled())
                }
                _ => return,
            }
        }
    }

    #[test]
    fn holds_a_buffer_only_while_the_destination_lags() {
        let mut cx = Context::from_waker(Waker::noop());
        let (mut src_w, mut src_r) = tokio::io::duplex(1024);
        let (mut dst_w, mut dst_r) = tokio::io::duplex(16);
        let mut dir = OneWay::new();

        // Nothing to read: pending, and no buffer.
        assert!(
            dir.poll_copy(&mut cx, 256, Pin::new(&mut src_r), Pin::new(&mut dst_w))
                .is_pending()
        );
        assert_eq!(dir.buffer_bytes(), 0);

        // 100 bytes into a 16-byte pipe: 16 go through, exactly the rest is kept.
        let data: Vec<u8> = (0..100).collect();
        assert!(Pin::new(&mut src_w).poll_write(&mut cx, &data).is_ready());
        assert!(
            dir.poll_copy(&mut cx, 256, Pin::new(&mut src_r), Pin::new(&mut dst_w))
                .is_pending()
        );
        assert_eq!(dir.buffer_bytes(), 84);
        assert_eq!(dir.copied, 16);

        // The destination drains: everything arrives, and the buffer is given back.
        let mut got = Vec::new();
        while got.len() < data.len() {
            drain(&mut cx, &mut dst_r, &mut got);
            let _ = dir.poll_copy(&mut cx, 256, Pin::new(&mut src_r), Pin::new(&mut dst_w));
        }
        assert_eq!(got, data);
        assert_eq!(dir.buffer_bytes(), 0);

        // EOF on the source becomes a shutdown of the destination.
        assert!(Pin::new(&mut src_w).poll_shutdown(&mut cx).is_ready());
        assert!(matches!(
            dir.poll_copy(&mut cx, 256, Pin::new(&mut src_r), Pin::new(&mut dst_w)),
            Poll::Ready(Ok(()))
        ));
        assert!(Progress::read_eof(&dir) && Progress::is_done(&dir));
        let mut rest = Vec::new();
        drain(&mut cx, &mut dst_r, &mut rest);
        let mut rb_buf = [0u8; 1];
        let mut rb = ReadBuf::new(&mut rb_buf);
        assert!(matches!(
            Pin::new(&mut dst_r).poll_read(&mut cx, &mut rb),
            Poll::Ready(Ok(()))
        ));
        assert!(rb.filled().is_empty(), "destination sees EOF");
    }
}
