//! [`UpstreamBody`], the default client's response body: hyper's, or the
//! HTTP/1.1 path's own, holding the request's slots ([`Held`]) until it
//! ends.
//!
//! Imports the HTTP/1.1 path's body and the HTTP/2 stream slot; nothing
//! above the client.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use super::h1;
use super::http2::StreamSlot;
use crate::BoxError;

/// What a response body holds until it ends: its slot under the connection
/// cap, and its HTTP/2 stream's.
#[derive(Default)]
pub(crate) struct Held {
    // Held for their `Drop`.
    pub(super) _permit: Option<OwnedSemaphorePermit>,
    pub(super) _stream: Option<StreamSlot>,
}

impl Held {
    pub(super) fn permit(permit: Option<OwnedSemaphorePermit>) -> Self {
        Held {
            _permit: permit,
            _stream: None,
        }
    }
}

/// The response body of [`DefaultClient`](crate::DefaultClient): the
/// upstream's body as it is read from the connection. Requests the client's
/// own HTTP/1.1 path takes (see `DefaultClient`) are answered by it; the rest
/// by hyper.
pub struct UpstreamBody {
    inner: http_body_util::Either<hyper::body::Incoming, h1::Body>,
    /// The request's slots (under the upstream's connection cap, on an
    /// HTTP/2 connection), given back when the body ends or is dropped.
    held: Held,
}

impl UpstreamBody {
    pub(crate) fn hyper(body: hyper::body::Incoming) -> Self {
        UpstreamBody {
            inner: http_body_util::Either::Left(body),
            held: Default::default(),
        }
    }

    pub(crate) fn h1(body: h1::Body) -> Self {
        UpstreamBody {
            inner: http_body_util::Either::Right(body),
            held: Default::default(),
        }
    }

    /// The same body, holding `held` until it ends.
    pub(crate) fn holding(mut self, held: Held) -> Self {
        self.held = held;
        self
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // The body's end (or failure) frees the slot at once, whatever
        // holds the body after it.
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.held = Default::default();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            http_body_util::Either::Left(body) => body.fmt(f),
            http_body_util::Either::Right(body) => body.fmt(f),
        }
    }
}
