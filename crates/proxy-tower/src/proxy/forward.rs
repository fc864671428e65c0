//! One request through the proxy, from the rules to the response: the
//! request rules (proxy-core), the upstream call under the response
//! timeout, the response rules, and on a checked 101 the tunnel's task.
//!
//! May import the settings, the bodies, `sent`, `origin`, the client's error
//! types and the tunnel; never the balancer or the layer.

use std::future::{Future as _, poll_fn};

use futures_util::future::Either;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::Body;
use hyper::upgrade::OnUpgrade;
use proxy_core::{Outcome, ProxyError};
use tower_service::Service;

use super::answer::{
    Unsent, Verdict, error_response, error_response_logged, is_invalid_answer, is_unsent,
    upstream_error,
};
use crate::origin::Origin;
use crate::settings::Config;
use crate::{BoxError, ProxyBody, RequestBody, sent, tunnel};

/// A `Sec-WebSocket-Key` nonce: 16 bytes from std's per-process random
/// SipHash keys (RFC 6455 asks for a fresh random nonce; it protects against
/// caches that replay answers, not against attackers, so no CSPRNG is needed).
fn nonce() -> [u8; 16] {
    use std::hash::BuildHasher;
    let state = std::collections::hash_map::RandomState::new();
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&state.hash_one(1u8).to_le_bytes());
    out[8..].copy_from_slice(&state.hash_one(2u8).to_le_bytes());
    out
}

/// What the request rules made of a request, before the upstream call: all
/// the exchange needs of it afterwards.
struct Started {
    /// The request to send upstream.
    out: Request<RequestBody>,
    origin: Origin,
    client_info: proxy_core::ClientInfo,
    /// The protocol of an extended CONNECT.
    protocol: Option<String>,
    prepared: proxy_core::Prepared,
    /// The client connection's upgrade handle (dropping it leaves the client
    /// connection speaking HTTP) and, if the server gave one, its reset
    /// handle.
    client_upgrade: Option<OnUpgrade>,
    client_reset: Option<crate::ResetHandle>,
    /// How far a request body has been sent, for one that has a body.
    progress: Option<Arc<sent::Progress>>,
}

/// One request through the proxy: rules, upstream call, response rules, and the
/// tunnel on a checked 101; the response counted in the metrics.
///
/// The request rules run at once, when `ReverseProxy::call` calls this,
/// and the future holds what they made once, not the request beside its
/// parts: it is boxed for every request, and an `async fn` keeps its
/// arguments and its locals apart (the request path's future was 1,904
/// bytes this way, copied whole into its box).
pub(super) fn forward<B, C, CB>(
    config: Arc<Config>,
    client: C,
    req: Request<B>,
) -> impl std::future::Future<Output = Response<ProxyBody<CB>>> + Send + 'static
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    C: Service<Request<RequestBody>, Response = Response<CB>> + Send + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
    CB: Send + 'static,
{
    match start(&config, req) {
        Ok(started) => Either::Left(exchange(config, client, started)),
        Err(refused) => {
            config.metrics.response(refused.status(), None);
            Either::Right(std::future::ready(refused))
        }
    }
}

/// The request rules, up to the request to send upstream; or the response
/// that refuses it.
#[expect(
    clippy::result_large_err,
    reason = "the refusal is the rare path, and a box would cost each refusal an allocation"
)]
fn start<B, CB>(config: &Config, req: Request<B>) -> Result<Started, Response<ProxyBody<CB>>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let origin = Origin::of(&parts);
    let client_info = config.client_info(&parts);
    // Extended CONNECT (RFC 8441): a WebSocket, or another upgraded protocol,
    // over one HTTP/2 stream.
    let protocol = match parts.method == http::Method::CONNECT {
        true => parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .map(|p| p.as_str().to_owned()),
        false => None,
    };
    let prepared = match &protocol {
        // An HTTP/2 upstream takes the extended CONNECT as it is.
        Some(p) if config.http2_only => {
            config
                .rules
                .prepare_extended_connect(&mut parts, &client_info, p)
        }
        // An HTTP/1.1 upstream gets the upgrade it knows.
        Some(p) => {
            parts.extensions.remove::<hyper::ext::Protocol>();
            config
                .rules
                .prepare_upgrade_bridge(&mut parts, &client_info, p, nonce())
        }
        None => config.rules.prepare_request(&mut parts, &client_info),
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => return Err(error_response(config, &origin, e)),
    };
    // The client connection's upgrade handle (dropping it leaves the client
    // connection speaking HTTP) and, if the server gave one, its reset handle.
    let (client_upgrade, client_reset) = if prepared.is_upgrade() {
        (
            parts.extensions.remove::<OnUpgrade>(),
            parts.extensions.get::<crate::ResetHandle>().cloned(),
        )
    } else {
        (None, None)
    };
    if prepared.is_upgrade() && config.http2_only && protocol.is_none() {
        return Err(error_response(
            config,
            &origin,
            ProxyError::upstream("the upstream speaks HTTP/2, which has no Upgrade"),
        ));
    }
    // Before the upstream switches protocols: a client connection its server
    // cannot hand over (no `OnUpgrade`) would leave an upgraded upstream
    // connection with nowhere to go.
    if prepared.is_upgrade() && client_upgrade.is_none() {
        return Err(error_response(
            config,
            &origin,
            ProxyError::upstream("the client connection cannot be upgraded by its server"),
        ));
    }
    parts.version = if config.http2_only {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if let Some(rewrite) = &config.rewrite {
        rewrite(&mut parts);
    }
    // A request with a body tells how far it has been sent: the response
    // timeout starts at its end, and only then is a failure the upstream's.
    let progress = (!body.is_end_stream()).then(|| Arc::new(sent::Progress::new()));
    let body = match &progress {
        Some(p) => RequestBody::new(body).watched(p.clone()),
        None => RequestBody::new(body),
    };
    Ok(Started {
        out: Request::from_parts(parts, body),
        origin,
        client_info,
        protocol,
        prepared,
        client_upgrade,
        client_reset,
        progress,
    })
}

/// The upstream call under the response timeout, the response rules, and
/// the tunnel on a checked 101; the response counted in the metrics. A plain
/// function around an `async move` block, so that its arguments are the
/// future's only copy of them; fields of `started` are used where they are
/// (a local taken from it would be another slot in the future).
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` would keep its arguments beside their moved copies: 560 more bytes in every request's future"
)]
fn exchange<C, CB>(
    config: Arc<Config>,
    mut client: C,
    started: Started,
) -> impl std::future::Future<Output = Response<ProxyBody<CB>>> + Send + 'static
where
    C: Service<Request<RequestBody>, Response = Response<CB>> + Send + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
    CB: Send + 'static,
{
    async move {
        let config = &*config;
        // When the response head came, for the metrics.
        let mut upstream_time = None;
        // Every way out gives the response (`break 'answer`), counted below.
        let res = 'answer: {
            let sent_at = std::time::Instant::now();
            let call = async {
                poll_fn(|cx| client.poll_ready(cx))
                    .await
                    .map_err(Into::into)?;
                client.call(started.out).await.map_err(Into::into)
            };
            let result = match config.response_timeout {
                Some(limit) => {
                    let late = sent::late(started.progress.as_deref(), limit);
                    let (mut call, mut late) = (std::pin::pin!(call), std::pin::pin!(late));
                    let raced = poll_fn(|cx| match call.as_mut().poll(cx) {
                        Poll::Ready(r) => Poll::Ready(Ok(r)),
                        Poll::Pending => late.as_mut().poll(cx).map(Err),
                    })
                    .await;
                    match raced {
                        Ok(r) => r,
                        Err(late) => {
                            let (err, verdict) = match late {
                                sent::Late::Head => (
                                    ProxyError::timeout(format!(
                                        "no response head within {limit:?} of sending the request"
                                    )),
                                    Verdict::Failed,
                                ),
                                sent::Late::Body => (
                                    ProxyError::timeout(format!(
                                        "the upstream took none of the request body for {limit:?}"
                                    )),
                                    Verdict::NotJudged,
                                ),
                                // The client's fault: 408, logged as client errors are.
                                sent::Late::ClientBody => (
                                    ProxyError::client_timeout(format!(
                                        "the client sent none of its body for {limit:?}"
                                    )),
                                    Verdict::NotJudged,
                                ),
                            };
                            break 'answer error_response_logged(
                                config,
                                &started.origin,
                                err,
                                false,
                                verdict,
                            );
                        }
                    }
                }
                None => call.await,
            };
            let res = match result {
                Ok(res) => {
                    upstream_time = Some(sent_at.elapsed());
                    res
                }
                Err(e) => {
                    let busy = e.is::<crate::client::Busy>();
                    let unsent = busy || is_unsent(&*e);
                    if unsent && !busy {
                        config.metrics.connect_failure();
                    }
                    // The upstream failed if it took no connection, or if it ended
                    // the exchange without a valid answer once it had the whole
                    // request (before that, the client's body may be what failed).
                    let whole_request = started.progress.as_ref().is_none_or(|p| p.is_sent());
                    let verdict =
                        match !busy && (unsent || (whole_request && !is_invalid_answer(&*e))) {
                            true => Verdict::Failed,
                            false => Verdict::NotJudged,
                        };
                    // Behind a balancer, an unsent request is retried elsewhere, and
                    // an upstream that keeps refusing is ejected with a WARN line.
                    let quiet = unsent && config.balanced;
                    let err = upstream_error(e);
                    let verdict = match err.status() {
                        http::StatusCode::PAYLOAD_TOO_LARGE => Verdict::NotJudged,
                        _ => verdict,
                    };
                    let mut res =
                        error_response_logged(config, &started.origin, err, quiet, verdict);
                    if unsent {
                        res.extensions_mut().insert(Unsent);
                    }
                    break 'answer res;
                }
            };

            let (mut parts, body) = res.into_parts();
            let outcome = match config.rules.prepare_response(&started.prepared, &mut parts) {
                Ok(o) => o,
                Err(e) => break 'answer error_response(config, &started.origin, e),
            };
            if outcome == Outcome::Tunnel {
                // From the default client's own HTTP/1.1 path, the connection
                // itself; from hyper's, the promise of it.
                let upstream_upgrade =
                    match parts.extensions.remove::<crate::client::h1::Upgraded>() {
                        Some(ready) => ready
                            .take()
                            .map(|r| tunnel::UpstreamEnd::Ready(Box::new(r))),
                        None => parts
                            .extensions
                            .remove::<OnUpgrade>()
                            .map(tunnel::UpstreamEnd::Pending),
                    };
                let (Some(client_io), Some(upstream_io)) =
                    (started.client_upgrade, upstream_upgrade)
                else {
                    break 'answer error_response(
                        config,
                        &started.origin,
                        ProxyError::upstream("the upstream connection cannot be upgraded"),
                    );
                };
                // The hook sees the 101 before any tunnel byte moves.
                if let Some(modify) = &config.modify_response {
                    modify(&mut parts);
                }
                let client_side = match started.protocol {
                    Some(_) => tunnel::ClientSide::H2Stream,
                    None => tunnel::ClientSide::Connection(started.client_reset),
                };
                let upstream_side = match started.protocol.is_some() && config.http2_only {
                    true => tunnel::UpstreamSide::H2Stream,
                    false => tunnel::UpstreamSide::Connection,
                };
                // What the tunnel's end reports, gathered only for a hook.
                let report = config.on_tunnel_end.clone().map(|hook| tunnel::Report {
                    hook,
                    client: started.client_info.addr(),
                    protocol: started.protocol.clone().or_else(|| {
                        parts
                            .headers
                            .get(http::header::UPGRADE)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    }),
                });
                tunnel::spawn(
                    client_io,
                    upstream_io,
                    client_side,
                    upstream_side,
                    config,
                    &started.origin,
                    report,
                );
            } else if let Some(modify) = &config.modify_response {
                modify(&mut parts);
            }
            let body = match outcome {
                Outcome::Tunnel => ProxyBody::empty(),
                _ => ProxyBody::upstream(body, config.read_timeout),
            };
            Response::from_parts(parts, body)
        };
        config.metrics.response(res.status(), upstream_time);
        res
    }
}
