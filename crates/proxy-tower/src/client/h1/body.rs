//! The response body of the HTTP/1.1 path: the codec's body events over the
//! connection's bytes. The connection goes back to the pool once the body
//! has been read to its exact end; one dropped earlier is closed.
//!
//! Imports the codec, the pool and the path's errors; nothing above `h1`.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::codec::{BodyDecoder, Event};
use super::error::Error;
use super::pool::{Conn, Pool};
use crate::BoxError;

/// The response body from the fast path: streamed from the connection, which
/// returns to the pool once the body has been read to its end.
pub(crate) struct Body {
    state: State,
    /// The response allowed another request on the connection.
    keep_alive: bool,
    pool: Weak<Pool>,
}

enum State {
    /// The whole body, read with the head (the connection is back in the
    /// pool already).
    Ready(Bytes),
    Reading {
        conn: Conn,
        decoder: BodyDecoder,
    },
    Done,
}

impl Body {
    /// The body of a response whose head was read from `conn`: if the whole
    /// body is already in the buffer, it is taken and the connection given
    /// back to the pool at once.
    pub(super) fn new(
        pool: &Arc<Pool>,
        mut conn: Conn,
        mut decoder: BodyDecoder,
        keep_alive: bool,
    ) -> Result<Self, Error> {
        let mut body = Body {
            state: State::Done,
            keep_alive,
            pool: Arc::downgrade(pool),
        };
        // The common case of a small response: its body came with its head,
        // and the connection goes back to the pool before the response is
        // returned.
        let whole = decoder
            .size_hint()
            .exact()
            .is_some_and(|n| n <= conn.buf.len() as u64);
        if !whole {
            body.state = State::Reading { conn, decoder };
            return Ok(body);
        }
        match decoder.decode(&mut conn.buf).map_err(Error::Codec)? {
            Event::Data(data) => body.state = State::Ready(data),
            _ => debug_assert!(decoder.is_done(), "an empty body ends at once"),
        }
        pool.release(conn, keep_alive);
        Ok(body)
    }

    /// No body, and no connection behind it: a `101`'s, whose connection
    /// the tunnel takes.
    pub(super) fn empty(pool: &Arc<Pool>) -> Self {
        Body {
            state: State::Done,
            keep_alive: false,
            pool: Arc::downgrade(pool),
        }
    }

    /// The body has been read to its end: its connection goes back to the
    /// pool (if nothing is left over in it).
    fn finish(&mut self) {
        if let State::Reading { conn, .. } = std::mem::replace(&mut self.state, State::Done) {
            if let Some(pool) = self.pool.upgrade() {
                pool.release(conn, self.keep_alive);
            }
        }
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = State::Done;
        Poll::Ready(Some(Err(e.into())))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let (conn, decoder) = match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Ready(data) => {
                    let data = std::mem::take(data);
                    this.state = State::Done;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Reading { conn, decoder } => (conn, decoder),
            };
            let event = match decoder.decode(&mut conn.buf) {
                Ok(Event::NeedMore) => match ready!(conn.poll_fill(cx)) {
                    Ok(0) => decoder.eof(),
                    Ok(_) => continue,
                    Err(e) => return this.fail(Error::Io("reading the response body", e)),
                },
                other => other,
            };
            match event {
                Ok(Event::Data(data)) => {
                    if decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Event::Trailers(trailers)) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Event::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Event::NeedMore) => continue,
                Err(e) => return this.fail(Error::Codec(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Done => SizeHint::with_exact(0),
            State::Ready(data) => SizeHint::with_exact(data.len() as u64),
            State::Reading { decoder, .. } => decoder.size_hint(),
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("h1::Body")
    }
}
