//! The response body of the proxy: the upstream's body, streamed, or a short
//! message the proxy wrote itself (errors, 101s).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::BoxError;

/// The body of requests sent to the upstream client: the incoming request's body,
/// boxed, so that one client serves every incoming body type.
pub struct RequestBody {
    inner: http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>,
    /// Told how far the body has been sent (set by the proxy for a request
    /// with a body).
    progress: Option<std::sync::Arc<crate::sent::Progress>>,
}

impl RequestBody {
    /// Wraps any body (for building requests to a custom client, e.g. in tests).
    /// A `RequestBody` is taken as it is, not boxed again.
    pub fn new<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        let mut slot = Some(body);
        if let Some(same) = (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<Self>>() {
            if let Some(body) = same.take() {
                return body;
            }
        }
        let body = slot.expect("still there unless it was a RequestBody");
        RequestBody {
            inner: body.map_err(Into::into).boxed_unsync(),
            progress: None,
        }
    }

    /// The same body, telling `progress` how far it has been sent.
    pub(crate) fn watched(mut self, progress: std::sync::Arc<crate::sent::Progress>) -> Self {
        self.progress = Some(progress);
        self
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(progress) = &this.progress else {
            return Pin::new(&mut this.inner).poll_frame(cx);
        };
        progress.taken();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => progress.sent(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => progress.sent(),
            Poll::Ready(Some(Ok(_))) => progress.handed(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
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

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestBody")
    }
}

pin_project! {
    /// Body of a response from [`ReverseProxy`](crate::ReverseProxy): the
    /// upstream's body `B`, streamed frame by frame (trailers included), or a
    /// message from the proxy itself.
    pub struct ProxyBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Upstream { #[pin] body: B },
        Message { data: Option<Bytes> },
    }
}

impl<B> ProxyBody<B> {
    pub(crate) fn upstream(body: B) -> Self {
        ProxyBody {
            kind: Kind::Upstream { body },
        }
    }

    pub(crate) fn message(data: Bytes) -> Self {
        ProxyBody {
            kind: Kind::Message {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn empty() -> Self {
        Self::message(Bytes::new())
    }
}

impl<B> Body for ProxyBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Upstream { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Message { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body } => body.is_end_stream(),
            Kind::Message { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body } => body.size_hint(),
            Kind::Message { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl<B> std::fmt::Debug for ProxyBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Upstream { .. } => f.write_str("ProxyBody::Upstream"),
            Kind::Message { data } => f.debug_tuple("ProxyBody::Message").field(data).finish(),
        }
    }
}

/// The response body of [`DefaultClient`](crate::DefaultClient): the
/// upstream's body as it is read from the connection. Requests the client's
/// own HTTP/1.1 path takes (see `DefaultClient`) are answered by it; the rest
/// by hyper.
pub struct UpstreamBody {
    inner: http_body_util::Either<hyper::body::Incoming, crate::h1::Body>,
}

impl UpstreamBody {
    pub(crate) fn hyper(body: hyper::body::Incoming) -> Self {
        UpstreamBody {
            inner: http_body_util::Either::Left(body),
        }
    }

    pub(crate) fn h1(body: crate::h1::Body) -> Self {
        UpstreamBody {
            inner: http_body_util::Either::Right(body),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
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
