//! The `ReverseProxy` service.

use std::convert::Infallible;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, Version, header};
use http_body::Body;
use hyper::upgrade::OnUpgrade;
use proxy_core::{Outcome, ProxyError};
use tower_service::Service;

use crate::config::{Builder, Config};
use crate::{BoxError, DefaultClient, ProxyBody, RequestBody, sent, tunnel};

/// A tower [`Service`] that forwards every request to one upstream.
///
/// - Bodies stream both ways, trailers included; nothing is buffered whole.
/// - Upgrades (WebSocket, any `101 Switching Protocols`) become tunnels that keep
///   TCP half-close intact: once the upstream's 101 has been checked, one spawned
///   task relays bytes both ways with [`halfclose_io`], passing each side's FIN on.
/// - It never fails: `Error = Infallible`. Every failure becomes a response (502
///   upstream unreachable or invalid answer, 504 upstream timeout, 403 refused
///   upgrade, ...), built by a replaceable error handler.
///
/// Serving it in axum, behind a tower-http stack or under tonic is shown in the
/// [crate docs](crate) and the crate's `examples/`. Called directly, it is a
/// plain tower service:
///
/// ```no_run
/// use http_body_util::Empty;
/// use proxy_tower::ReverseProxy;
/// use tower::ServiceExt;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let proxy = ReverseProxy::new("http://127.0.0.1:3000")?;
/// let req = http::Request::get("/status").body(Empty::<bytes::Bytes>::new())?;
/// let res = proxy.oneshot(req).await?; // never an error: a 502 at worst
/// println!("{}", res.status());
/// # Ok(()) }
/// ```
pub struct ReverseProxy<C = DefaultClient> {
    pub(crate) config: Arc<Config>,
    client: C,
}

impl<C: Clone> Clone for ReverseProxy<C> {
    fn clone(&self) -> Self {
        ReverseProxy {
            config: self.config.clone(),
            client: self.client.clone(),
        }
    }
}

impl<C> fmt::Debug for ReverseProxy<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReverseProxy")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ReverseProxy {
    /// A proxy to `upstream` (an absolute `http://` or `https://` URI; its path prefixes every
    /// request path) with default options.
    pub fn new(upstream: &str) -> Result<Self, ProxyError> {
        Self::builder(upstream).build()
    }

    /// A builder for a proxy to `upstream`, to set options.
    pub fn builder(upstream: &str) -> Builder {
        Builder::new(upstream)
    }

    pub(crate) fn from_config(config: Config) -> Self {
        let client = DefaultClient::new(&config);
        ReverseProxy {
            config: Arc::new(config),
            client,
        }
    }

    /// The same proxy, speaking HTTP/2 with prior knowledge to the upstream.
    pub(crate) fn into_http2_only(self) -> Self {
        let mut config = (*self.config).clone();
        config.http2_only = true;
        Self::from_config(config)
    }
}

impl<C> ReverseProxy<C> {
    pub(crate) fn with_client(config: Config, client: C) -> Self {
        ReverseProxy {
            config: Arc::new(config),
            client,
        }
    }

    /// The upstream base URI.
    pub fn upstream(&self) -> &http::Uri {
        self.config.rules.upstream()
    }

    /// The tunnels this proxy (and its clones) have open.
    pub fn tunnels(&self) -> crate::Tunnels {
        self.config.tunnels.clone()
    }
}

impl<B, C, CB> Service<Request<B>> for ReverseProxy<C>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    C: Service<Request<RequestBody>, Response = Response<CB>> + Clone + Send + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
    CB: Body<Data = Bytes> + Send + 'static,
    CB::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody<CB>>;
    type Error = Infallible;
    type Future = ResponseFuture<CB>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The client's readiness is awaited inside each call, on its own clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let config = self.config.clone();
        let client = self.client.clone();
        // No span per request here: tower-http's `TraceLayer` in front of the
        // proxy makes one where it is wanted (the binary does). Errors and
        // tunnels log at WARN/INFO with the request's method, path and
        // `x-request-id` themselves.
        let fut = async move {
            let mut upstream_time = None;
            let res = forward(&config, client, req, &mut upstream_time).await;
            config.metrics.response(res.status(), upstream_time);
            res
        };
        ResponseFuture {
            inner: Box::pin(fut),
        }
    }
}

/// The boxed work of one request: it always ends in a response.
type Forwarding<B> = Pin<Box<dyn Future<Output = Response<ProxyBody<B>>> + Send>>;

/// The future of a [`ReverseProxy`] response.
pub struct ResponseFuture<B> {
    inner: Forwarding<B>,
}

impl<B> ResponseFuture<B> {
    pub(crate) fn new(fut: impl Future<Output = Response<ProxyBody<B>>> + Send + 'static) -> Self {
        ResponseFuture {
            inner: Box::pin(fut),
        }
    }
}

/// On an error response: the request could not be sent at all (no connection
/// to the upstream), so it may be sent elsewhere. Set by the proxy; the
/// balancer adds which upstream it was.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unsent(pub(crate) Option<u64>);

/// On every response the proxy wrote itself: whether it says the upstream
/// failed. A response without it is the upstream's own answer, whatever its
/// status. Set after the error handler ran, so a custom handler changes
/// nothing of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// What the proxy itself observed of the upstream: connection refused or
    /// timed out, reset or closed before a response head after the whole
    /// request was sent, no response head within the response timeout after
    /// it was sent.
    Failed,
    /// Nothing about the upstream: a refused request, a client that failed
    /// or sent its body slowly, an invalid answer, a full connection cap.
    NotJudged,
}

impl<B> Future for ResponseFuture<B> {
    type Output = Result<Response<ProxyBody<B>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx).map(Ok)
    }
}

impl<B> fmt::Debug for ResponseFuture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

/// Which request a log line is about (cheap clones: `Uri` shares its bytes).
pub(crate) struct Origin {
    pub(crate) method: http::Method,
    pub(crate) uri: http::Uri,
    /// The request's `x-request-id`, as the client or a layer in front set it.
    pub(crate) request_id: Option<http::HeaderValue>,
}

impl Origin {
    /// The request id, for log fields.
    pub(crate) fn request_id(&self) -> Option<&str> {
        self.request_id.as_ref().and_then(|v| v.to_str().ok())
    }
}

/// `X-Request-Id`: set by tower-http's `SetRequestIdLayer` (the binary's) or
/// by the client, forwarded upstream, and named in the proxy's log lines.
const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The methods a 405 names in `Allow`: all but `CONNECT` are forwarded.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH";

fn error_response<B>(config: &Config, origin: &Origin, err: ProxyError) -> Response<ProxyBody<B>> {
    error_response_logged(config, origin, err, false, Verdict::NotJudged)
}

/// `quiet`: log at DEBUG whatever the error (a failure someone else handles,
/// like a balancer retrying an unsent request elsewhere).
fn error_response_logged<B>(
    config: &Config,
    origin: &Origin,
    err: ProxyError,
    quiet: bool,
    verdict: Verdict,
) -> Response<ProxyBody<B>> {
    // A client can cause 4xx answers at will: DEBUG, so it cannot flood the logs.
    macro_rules! log {
        ($level:ident) => {
            match origin.request_id() {
                Some(id) => tracing::$level!(
                    method = %origin.method,
                    path = origin.uri.path(),
                    request_id = id,
                    upstream = %config.rules.upstream(),
                    error = %err,
                    status = err.status().as_u16(),
                    "request not forwarded"
                ),
                None => tracing::$level!(
                    method = %origin.method,
                    path = origin.uri.path(),
                    upstream = %config.rules.upstream(),
                    error = %err,
                    status = err.status().as_u16(),
                    "request not forwarded"
                ),
            }
        };
    }
    // A full connection cap logs once per burst itself (client.rs).
    if quiet || err.is_client_error() || err.is_overloaded() {
        log!(debug);
    } else {
        log!(warn);
    }
    let mut res = match &config.error_handler {
        Some(handler) => handler(&err),
        None => {
            let status = err.status();
            let mut res = Response::new(Bytes::from(format!(
                "{}\n",
                status.canonical_reason().unwrap_or("error")
            )));
            *res.status_mut() = status;
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            res
        }
    };
    // RFC 9110 section 15.5.6: a 405 names the methods that are allowed.
    if res.status() == http::StatusCode::METHOD_NOT_ALLOWED {
        res.headers_mut()
            .entry(header::ALLOW)
            .or_insert(http::HeaderValue::from_static(ALLOWED_METHODS));
    }
    res.extensions_mut().insert(verdict);
    res.map(ProxyBody::message)
}

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

/// True if the client failed before sending a byte: it could not connect.
fn is_unsent(e: &(dyn std::error::Error + 'static)) -> bool {
    e.is::<crate::h1::ConnectError>()
        || e.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
}

/// True if the upstream answered, but not with valid HTTP (an answer,
/// however wrong: not a sign that the upstream is down).
fn is_invalid_answer(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(h1) = c.downcast_ref::<crate::h1::Error>() {
            return h1.is_invalid_answer();
        }
        if let Some(hyper) = c.downcast_ref::<hyper::Error>() {
            return hyper.is_parse() || hyper.is_parse_status();
        }
        cause = c.source();
    }
    false
}

/// The error of a failed upstream call: 413 when the request body hit a size
/// limit set in front of the proxy (tower-http's `RequestBodyLimitLayer`, or
/// any `http_body_util::Limited`), else 502.
fn upstream_error(e: BoxError) -> ProxyError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return ProxyError::body_too_large("the request body is over the limit");
        }
        if let Some(busy) = c.downcast_ref::<crate::client::Busy>() {
            return ProxyError::overloaded(busy.0.clone());
        }
        cause = c.source();
    }
    ProxyError::upstream(e)
}

/// One request through the proxy: rules, upstream call, response rules, and the
/// tunnel on a checked 101.
async fn forward<B, C, CB>(
    config: &Config,
    mut client: C,
    req: Request<B>,
    upstream_time: &mut Option<std::time::Duration>,
) -> Response<ProxyBody<CB>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    C: Service<Request<RequestBody>, Response = Response<CB>>,
    C::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let origin = Origin {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        request_id: parts.headers.get(X_REQUEST_ID).cloned(),
    };
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
        Err(e) => return error_response(config, &origin, e),
    };
    // The client connection's upgrade handle (dropping it leaves the client
    // connection speaking HTTP) and, if the server gave one, its abort handle.
    let (client_upgrade, client_abort) = if prepared.is_upgrade() {
        (
            parts.extensions.remove::<OnUpgrade>(),
            parts.extensions.get::<crate::ResetHandle>().cloned(),
        )
    } else {
        (None, None)
    };
    if prepared.is_upgrade() && config.http2_only && protocol.is_none() {
        return error_response(
            config,
            &origin,
            ProxyError::upstream("the upstream speaks HTTP/2, which has no Upgrade"),
        );
    }
    // Before the upstream switches protocols: a client connection its server
    // cannot hand over (no `OnUpgrade`) would leave an upgraded upstream
    // connection with nowhere to go.
    if prepared.is_upgrade() && client_upgrade.is_none() {
        return error_response(
            config,
            &origin,
            ProxyError::upstream("the client connection cannot be upgraded by its server"),
        );
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
    let out = Request::from_parts(parts, body);

    let sent_at = std::time::Instant::now();
    let call = async {
        poll_fn(|cx| client.poll_ready(cx))
            .await
            .map_err(Into::into)?;
        client.call(out).await.map_err(Into::into)
    };
    let result = match config.response_timeout {
        Some(limit) => {
            let late = sent::late(progress.as_deref(), limit);
            let (mut call, mut late) = (std::pin::pin!(call), std::pin::pin!(late));
            let raced = poll_fn(|cx| match call.as_mut().poll(cx) {
                Poll::Ready(r) => Poll::Ready(Ok(r)),
                Poll::Pending => late.as_mut().poll(cx).map(Err),
            })
            .await;
            match raced {
                Ok(r) => r,
                Err(sent::Late::Head) => {
                    return error_response_logged(
                        config,
                        &origin,
                        ProxyError::timeout(format!(
                            "no response head within {limit:?} of sending the request"
                        )),
                        false,
                        Verdict::Failed,
                    );
                }
                Err(sent::Late::Body) => {
                    return error_response(
                        config,
                        &origin,
                        ProxyError::timeout(format!(
                            "the upstream took none of the request body for {limit:?}"
                        )),
                    );
                }
            }
        }
        None => call.await,
    };
    let res = match result {
        Ok(res) => {
            *upstream_time = Some(sent_at.elapsed());
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
            let whole_request = progress.as_ref().is_none_or(|p| p.is_sent());
            let verdict = match !busy && (unsent || (whole_request && !is_invalid_answer(&*e))) {
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
            let mut res = error_response_logged(config, &origin, err, quiet, verdict);
            if unsent {
                res.extensions_mut().insert(Unsent(None));
            }
            return res;
        }
    };

    let (mut parts, body) = res.into_parts();
    let outcome = match config.rules.prepare_response(&prepared, &mut parts) {
        Ok(o) => o,
        Err(e) => return error_response(config, &origin, e),
    };
    if outcome == Outcome::Tunnel {
        let upstream_upgrade = parts.extensions.remove::<OnUpgrade>();
        let (Some(client_io), Some(upstream_io)) = (client_upgrade, upstream_upgrade) else {
            return error_response(
                config,
                &origin,
                ProxyError::upstream("the upstream connection cannot be upgraded"),
            );
        };
        // The hook sees the 101 before any tunnel byte moves.
        if let Some(modify) = &config.modify_response {
            modify(&mut parts);
        }
        let client_side = match protocol {
            Some(_) => tunnel::ClientSide::H2Stream,
            None => tunnel::ClientSide::Connection(client_abort),
        };
        let upstream_side = match protocol.is_some() && config.http2_only {
            true => tunnel::UpstreamSide::H2Stream,
            false => tunnel::UpstreamSide::Connection,
        };
        tunnel::spawn(
            client_io,
            upstream_io,
            client_side,
            upstream_side,
            config,
            &origin,
        );
    } else if let Some(modify) = &config.modify_response {
        modify(&mut parts);
    }
    let body = match outcome {
        Outcome::Forward => ProxyBody::upstream(body, config.read_timeout),
        Outcome::Tunnel => ProxyBody::empty(),
    };
    Response::from_parts(parts, body)
}
