//! The response body of the proxy: the upstream's body, streamed, or a short
//! message the proxy wrote itself (errors, 101s).
//!
//! Imports `sent` only (a request body tells how far it has been sent).

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

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
        Upstream { #[pin] body: B, silence: Option<Silence> },
        Message { data: Option<Bytes> },
    }
}

/// The read timeout of an upstream body: the longest silence between two
/// frames while the body is being read. Armed when the body first has
/// nothing to give, disarmed by the next frame; the timer is made only for a
/// body that ever waits (not for one that came whole with its head).
struct Silence {
    limit: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
    expired: bool,
}

impl Silence {
    fn new(limit: Duration) -> Self {
        Silence {
            limit,
            sleep: None,
            armed: false,
            expired: false,
        }
    }

    /// The body had nothing to give: true once the silence has lasted the
    /// limit.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            let deadline = tokio::time::Instant::now() + self.limit;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let sleep = self.sleep.as_mut().expect("armed above");
        self.expired = sleep.as_mut().poll(cx).is_ready();
        self.expired
    }
}

/// The upstream sent no byte of a response body for the read timeout.
#[derive(Debug)]
pub(crate) struct ReadTimedOut(Duration);

impl std::fmt::Display for ReadTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the upstream sent nothing of the response body for {:?} (read timeout)",
            self.0
        )
    }
}

impl std::error::Error for ReadTimedOut {}

impl<B> ProxyBody<B> {
    /// The upstream's body, cut with an error after `read_timeout` of
    /// silence.
    pub(crate) fn upstream(body: B, read_timeout: Option<Duration>) -> Self {
        ProxyBody {
            kind: Kind::Upstream {
                body,
                silence: read_timeout.map(Silence::new),
            },
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
            KindProj::Upstream { body, silence } => {
                let Some(silence) = silence else {
                    return body.poll_frame(cx).map_err(Into::into);
                };
                if silence.expired {
                    return Poll::Ready(None);
                }
                match body.poll_frame(cx) {
                    Poll::Ready(frame) => {
                        silence.armed = false;
                        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
                    }
                    Poll::Pending if silence.poll_expired(cx) => {
                        let e = ReadTimedOut(silence.limit);
                        tracing::warn!(error = %e, "response body cut");
                        Poll::Ready(Some(Err(e.into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            KindProj::Message { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body, silence } => {
                body.is_end_stream() || silence.as_ref().is_some_and(|s| s.expired)
            }
            Kind::Message { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body, .. } => body.size_hint(),
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
