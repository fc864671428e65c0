//! The default client with [`http2_only`](crate::Builder::http2_only): one
//! multiplexed HTTP/2 connection to the upstream, made again when it
//! closes, with a bounded wait for a stream under the peer's
//! `SETTINGS_MAX_CONCURRENT_STREAMS`. Imports the connector and `slots`.

use std::sync::Arc;

use http::header::HOST;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use super::connect::Connector;
use super::slots::{Busy, Refusals};
use crate::{BoxError, RequestBody};

/// One HTTP/2 connection to the upstream, shared by every request.
pub(super) struct Http2 {
    pub(super) connector: Connector,
    pub(super) upstream: Uri,
    /// Held while connecting, so that one connection is made at a time.
    pub(super) conn: tokio::sync::Mutex<Option<(http2::SendRequest<RequestBody>, Arc<Streams>)>>,
    /// How long a request waits for a free stream (the upstream's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`) before it is answered 503.
    pub(super) stream_wait: std::time::Duration,
    pub(super) refusals: Refusals,
}

impl Http2 {
    pub(super) async fn send(
        &self,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, StreamSlot), BoxError> {
        // RFC 9113 section 8.3.1: `:authority` carries the host; a `host` field
        // that disagrees with it is malformed. The connection does not depend on
        // it: it always goes to `self.upstream`.
        if let Some(host) = req.headers_mut().remove(HOST) {
            let authority = http::uri::Authority::try_from(host.as_bytes())
                .map_err(|e| format!("Host {host:?} is not a valid authority: {e}"))?;
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.authority = Some(authority);
            *req.uri_mut() = Uri::from_parts(parts)?;
        }
        let (mut sender, streams) = self.sender(false).await?;
        let slot = self.stream(&streams).await?;
        match sender.try_send_request(req).await {
            Ok(res) => Ok((res, slot)),
            // The connection closed before the request went out: once more, on
            // a new one.
            Err(mut e) => match e.take_message() {
                Some(req) => {
                    drop(slot);
                    let (mut sender, streams) = self.sender(true).await?;
                    let slot = self.stream(&streams).await?;
                    Ok((sender.send_request(req).await?, slot))
                }
                None => Err(e.into_error().into()),
            },
        }
    }

    /// A ready sender on the current connection, or on a new one, and the
    /// connection's count of open streams.
    async fn sender(
        &self,
        fresh: bool,
    ) -> Result<(http2::SendRequest<RequestBody>, Arc<Streams>), BoxError> {
        let mut conn = self.conn.lock().await;
        if let Some((sender, streams)) = conn.as_mut() {
            if !fresh && !sender.is_closed() {
                let (mut sender, streams) = (sender.clone(), streams.clone());
                drop(conn);
                self.ready(&mut sender).await?;
                return Ok((sender, streams));
            }
        }
        let io = self.connector.clone().call(self.upstream.clone()).await?;
        let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await?;
        // The peer's stream limit, read from the connection handle each time
        // it is polled: hyper drives the h2 connection in a task of its own
        // and polls this handle when a request is handed over, so the figure
        // lags the peer's SETTINGS by at most one request.
        let streams = Arc::new(Streams::default());
        streams.set_max(connection.current_max_send_streams());
        let limit = streams.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = std::future::poll_fn(|cx| {
                let polled = connection.as_mut().poll(cx);
                limit.set_max(connection.current_max_send_streams());
                polled
            })
            .await;
            if let Err(e) = ended {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        *conn = Some((sender.clone(), streams.clone()));
        drop(conn);
        self.ready(&mut sender).await?;
        Ok((sender, streams))
    }

    /// Waits for the connection to take a request, up to `stream_wait`.
    async fn ready(&self, sender: &mut http2::SendRequest<RequestBody>) -> Result<(), BoxError> {
        let wait = self.stream_wait;
        match tokio::time::timeout(wait, sender.ready()).await {
            Ok(ready) => Ok(ready?),
            Err(_) => Err(self.busy()),
        }
    }

    /// A stream under the peer's `SETTINGS_MAX_CONCURRENT_STREAMS`, waiting
    /// up to `stream_wait` for one to close (h2 would otherwise queue the
    /// request itself, for as long as it takes).
    async fn stream(&self, streams: &Arc<Streams>) -> Result<StreamSlot, BoxError> {
        use std::sync::atomic::Ordering;
        let deadline = tokio::time::Instant::now() + self.stream_wait;
        loop {
            let freed = streams.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            let open = streams.open.load(Ordering::Acquire);
            if open < streams.max.load(Ordering::Acquire) {
                if streams
                    .open
                    .compare_exchange(open, open + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Ok(StreamSlot(streams.clone()));
                }
                continue;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(self.busy());
            }
        }
    }

    fn busy(&self) -> BoxError {
        self.refusals
            .count(&self.upstream, "every HTTP/2 stream to the upstream busy");
        Box::new(Busy(format!(
            "no HTTP/2 stream to the upstream free within {:?}",
            self.stream_wait
        )))
    }
}

/// Streams open on one HTTP/2 connection to the upstream, and the most the
/// peer allows.
#[derive(Default)]
pub(super) struct Streams {
    open: std::sync::atomic::AtomicUsize,
    max: std::sync::atomic::AtomicUsize,
    /// Told when a stream closes, or the limit grows.
    freed: tokio::sync::Notify,
}

impl Streams {
    fn set_max(&self, max: usize) {
        let before = self.max.swap(max, std::sync::atomic::Ordering::AcqRel);
        if max > before {
            self.freed.notify_waiters();
        }
    }
}

/// One open stream of an HTTP/2 connection, held by its response body.
pub(crate) struct StreamSlot(Arc<Streams>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}
