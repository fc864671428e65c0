//! The proxy's own answers, and what they say about the upstream: the
//! error response (through the user's handler, logged at the right level),
//! the `Unsent` and `Verdict` marks the balancer reads, and the reading of a
//! client's error (unsent, invalid answer, 413, 503).
//!
//! May import the settings, the bodies, `origin` and the client's error
//! types; nothing that imports the proxy.

use bytes::Bytes;
use http::{Response, header};
use proxy_core::ProxyError;

use crate::origin::Origin;
use crate::settings::Config;
use crate::{BoxError, ProxyBody};

/// On an error response: the request could not be sent at all (no connection
/// to the upstream, or none free under its cap), so it may be sent elsewhere.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unsent;

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

/// The methods a 405 names in `Allow`: all but `CONNECT` are forwarded.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH";

pub(crate) fn error_response<B>(
    config: &Config,
    origin: &Origin,
    err: ProxyError,
) -> Response<ProxyBody<B>> {
    error_response_logged(config, origin, err, false, Verdict::NotJudged)
}

/// `quiet`: log at DEBUG whatever the error (a failure someone else handles,
/// like a balancer retrying an unsent request elsewhere).
pub(crate) fn error_response_logged<B>(
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

/// True if the client failed before sending a byte: it could not connect.
pub(crate) fn is_unsent(e: &(dyn std::error::Error + 'static)) -> bool {
    e.is::<crate::client::h1::ConnectError>()
        || e.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
}

/// True if the upstream answered, but not with valid HTTP (an answer,
/// however wrong: not a sign that the upstream is down).
pub(crate) fn is_invalid_answer(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(h1) = c.downcast_ref::<crate::client::h1::Error>() {
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
pub(crate) fn upstream_error(e: BoxError) -> ProxyError {
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
