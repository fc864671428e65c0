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
        }
    }
}

impl Body for RequestBody {
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

pin_project! {
    /// The response body of [`DefaultClient`](crate::DefaultClient): the
    /// upstream's body as it is read from the connection. Bodiless HTTP/1.1
    /// requests to `http` upstreams are answered by the client's own HTTP/1.1
    /// fast path; everything else by hyper.
    pub struct UpstreamBody {
        #[pin]
        kind: UpstreamKind,
    }
}

pin_project! {
    #[project = UpstreamProj]
    enum UpstreamKind {
        Hyper { #[pin] body: hyper::body::Incoming },
        H1 { body: crate::h1::Body },
    }
}

impl UpstreamBody {
    pub(crate) fn hyper(body: hyper::body::Incoming) -> Self {
        UpstreamBody {
            kind: UpstreamKind::Hyper { body },
        }
    }

    pub(crate) fn h1(body: crate::h1::Body) -> Self {
        UpstreamBody {
            kind: UpstreamKind::H1 { body },
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            UpstreamProj::Hyper { body } => body.poll_frame(cx).map_err(Into::into),
            UpstreamProj::H1 { body } => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            UpstreamKind::Hyper { body } => body.is_end_stream(),
            UpstreamKind::H1 { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            UpstreamKind::Hyper { body } => body.size_hint(),
            UpstreamKind::H1 { body } => body.size_hint(),
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            UpstreamKind::Hyper { body } => body.fmt(f),
            UpstreamKind::H1 { body } => body.fmt(f),
        }
    }
}
