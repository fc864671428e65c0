//! hyper's server on a connection whose protocol is known: the HTTP/1
//! builder (upgrades, half-close, the header-read timeout on a `HeadTimer`
//! of the connection's own) or the HTTP/2 one, and the service each request
//! goes through on its way to the proxy (client address and scheme as
//! `ClientInfo`, the request counted in flight until its response body
//! ends), all run under the connection's `Watch`.
//!
//! Imports: `shared`, `watch`, `head_timer`. `open` imports it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use proxy_tower::{BoxError, ClientInfo};
use tokio::time::Instant;
use tower::ServiceExt;

use super::head_timer::HeadTimer;
use super::shared::{Protocol, RequestService, Settings, Signals};
use super::watch::{Activity, InFlight, Tracked, Watch};

/// A connection whose protocol is known.
pub(super) struct Conn<'a, S> {
    pub(super) peer: SocketAddr,
    /// Served over TLS: the client's scheme is `https` (X-Forwarded-Proto).
    pub(super) tls: bool,
    pub(super) protocol: Protocol,
    pub(super) first_head_by: Instant,
    pub(super) received: Arc<AtomicU64>,
    pub(super) proxy: S,
    pub(super) settings: &'a Settings,
    pub(super) signals: Signals,
}

impl<S> Conn<'_, S> {
    /// Serves `io` with hyper until the connection ends.
    pub(super) async fn run<I, B>(self, io: TokioIo<I>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: RequestService<B>,
        B: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
    {
        let Conn {
            peer,
            tls,
            protocol,
            first_head_by,
            received,
            proxy,
            settings,
            signals:
                Signals {
                    shutdown,
                    pressure,
                    running: _running,
                },
        } = self;
        let activity = Arc::new(Activity::new(pressure.clone()));
        let client = ClientInfo::new(peer.ip().to_canonical()).tls(tls);
        let svc = {
            let activity = activity.clone();
            hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                let in_flight = InFlight::start(&activity);
                req.extensions_mut().insert(client);
                let mut proxy = proxy.clone();
                // The request path is ready at once (`Edge` and the proxies
                // under it always are): call it here, so that the future
                // hyper holds is the path's own (a box), not a `Oneshot`
                // carrying the request and the service. Otherwise, wait.
                let noop = &mut Context::from_waker(std::task::Waker::noop());
                let call = match proxy.poll_ready(noop) {
                    Poll::Ready(Ok(())) => futures_util::future::Either::Left(proxy.call(req)),
                    Poll::Ready(Err(never)) => match never {},
                    Poll::Pending => {
                        futures_util::future::Either::Right(Box::pin(proxy.oneshot(req)))
                    }
                };
                async move {
                    let res = call.await?;
                    Ok::<_, std::convert::Infallible>(res.map(|body| Tracked {
                        body,
                        _in_flight: in_flight,
                    }))
                }
            })
        };
        let watch = Watch {
            peer,
            protocol,
            activity: &activity,
            idle_timeout: settings.idle_timeout,
            shutdown,
            pressure,
        };
        match protocol {
            Protocol::Http1 => {
                // A timer of its own for the header-read timeout (head_timer.rs).
                let mut http1 = settings.http1.clone();
                http1.timer(HeadTimer::new(settings.header_read_timeout, received));
                let conn = http1.serve_connection(io, svc).with_upgrades();
                // Boxed, each protocol in a box of its size: in place, the
                // larger of the two took room in every connection's task
                // (which every spawn and end copies whole), HTTP/2's 4 KB
                // in an HTTP/1 connection's.
                Box::pin(watch.drive(conn, Some(first_head_by), |c| c.graceful_shutdown())).await
            }
            Protocol::Http2 => {
                let conn = settings.http2.serve_connection(io, svc);
                Box::pin(watch.drive(conn, None, |c| c.graceful_shutdown())).await
            }
        }
    }
}
