//! The bodies the access log needs: a request body that counts the bytes
//! read from it ([`Counted`]), and a response body that counts the bytes
//! written and logs the request's line when it is dropped ([`Logged`]),
//! after its end or when the client went away. Without an access log both
//! pass frames through and count nothing.
//!
//! Imports: `access_log`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::access_log::{AccessLog, RequestRecord};

pin_project! {
    /// A request body that adds the length of each data frame to `count`.
    pub(crate) struct Counted<B> {
        #[pin]
        inner: B,
        count: Option<Arc<AtomicU64>>,
    }
}

impl<B> Counted<B> {
    pub(crate) fn new(inner: B, count: Option<Arc<AtomicU64>>) -> Self {
        Counted { inner, count }
    }
}

impl<B: Body> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if let (Some(count), Poll::Ready(Some(Ok(f)))) = (this.count.as_ref(), &frame)
            && let Some(data) = f.data_ref()
        {
            count.fetch_add(data.remaining() as u64, Ordering::Relaxed);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request's line, waiting for its response to end.
pub(crate) struct Pending {
    pub(crate) log: AccessLog,
    pub(crate) record: RequestRecord,
    pub(crate) started: Instant,
    /// Shared with the request body's [`Counted`], when it has a body.
    pub(crate) bytes_in: Option<Arc<AtomicU64>>,
}

/// Writes the line once, when dropped.
pub(crate) struct Emit(Option<Box<Pending>>);

/// The status logged for a request whose client went away before its
/// response head (nginx's 499, "client closed request").
pub(crate) const CLIENT_CLOSED: u16 = 499;

impl Emit {
    /// Holds the line while the response is awaited: dropped before
    /// [`take`](Emit::take) (the client went away), it writes it with
    /// status 499.
    pub(crate) fn awaiting(pending: Option<Box<Pending>>) -> Emit {
        Emit(pending.map(|mut p| {
            p.record.status = CLIENT_CLOSED;
            p
        }))
    }

    /// The line, for the response's body to write.
    pub(crate) fn take(&mut self) -> Option<Box<Pending>> {
        self.0.take()
    }
}

impl Drop for Emit {
    fn drop(&mut self) {
        if let Some(mut p) = self.0.take() {
            p.record.duration = p.started.elapsed();
            p.record.bytes_in = p.bytes_in.as_ref().map_or(0, |n| n.load(Ordering::Relaxed));
            p.log.request(&p.record);
        }
    }
}

pin_project! {
    /// A response body that counts its data bytes into the pending line,
    /// which is written when the body is dropped.
    pub(crate) struct Logged<B> {
        #[pin]
        inner: B,
        emit: Emit,
    }
}

impl<B> Logged<B> {
    pub(crate) fn new(inner: B, pending: Option<Box<Pending>>) -> Self {
        Logged {
            inner,
            emit: Emit(pending),
        }
    }

    /// The body, without a line to write.
    #[cfg(test)]
    pub(crate) fn into_inner(mut self) -> B {
        self.emit.0 = None;
        let Logged { inner, .. } = self;
        inner
    }
}

impl<B: Body> Body for Logged<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if let (Some(p), Poll::Ready(Some(Ok(f)))) = (this.emit.0.as_mut(), &frame)
            && let Some(data) = f.data_ref()
        {
            p.record.bytes_out += data.remaining() as u64;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
