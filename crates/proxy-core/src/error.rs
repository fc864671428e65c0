//! The one error type of the proxy, and the HTTP status each failure maps to.

use std::error::Error as StdError;
use std::fmt;

use http::StatusCode;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Something a reverse proxy cannot forward, with the status to answer it with.
///
/// Opaque on purpose: ask it with [`status`](ProxyError::status) and the `is_*`
/// methods. Upstream failures (built with [`ProxyError::upstream`] and
/// [`ProxyError::timeout`]) carry their cause as [`source`](StdError::source).
///
/// | failure | status |
/// |---|---|
/// | invalid upstream URI (configuration) | 500 |
/// | request that cannot be forwarded (bad target, `CONNECT`) | 400 / 405 |
/// | upgrade to a protocol the policy refuses (e.g. `h2c`) | 403 |
/// | request body past a limit set in front of the proxy | 413 |
/// | upstream unreachable, reset, or invalid answer (bad 101) | 502 |
/// | upstream too slow | 504 |
/// | no upstream connection free in time (a cap) | 503 |
/// | the client stopped sending its request body | 408 |
pub struct ProxyError {
    kind: Kind,
    detail: Option<String>,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InvalidUpstream,
    BadRequest,
    MethodNotAllowed,
    UpgradeRefused,
    BodyTooLarge,
    BadUpgradeResponse,
    Upstream,
    Timeout,
    Overloaded,
    ClientTimeout,
}

impl ProxyError {
    fn new(kind: Kind, detail: impl Into<String>) -> Self {
        ProxyError {
            kind,
            detail: Some(detail.into()),
            source: None,
        }
    }

    /// The upstream URI cannot be used (a configuration error, answered 500 if it
    /// ever reaches a request).
    pub fn invalid_upstream(detail: impl Into<String>) -> Self {
        Self::new(Kind::InvalidUpstream, detail)
    }

    pub(crate) fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(Kind::BadRequest, detail)
    }

    pub(crate) fn method_not_allowed(detail: impl Into<String>) -> Self {
        Self::new(Kind::MethodNotAllowed, detail)
    }

    pub(crate) fn upgrade_refused(detail: impl Into<String>) -> Self {
        Self::new(Kind::UpgradeRefused, detail)
    }

    /// The request body is larger than the proxy accepts: answer 413 Content
    /// Too Large (RFC 9110 section 15.5.14).
    pub fn body_too_large(detail: impl Into<String>) -> Self {
        Self::new(Kind::BodyTooLarge, detail)
    }

    pub(crate) fn bad_upgrade_response(detail: impl Into<String>) -> Self {
        Self::new(Kind::BadUpgradeResponse, detail)
    }

    /// The upstream could not be reached, failed, or answered something that is not
    /// valid HTTP: answer 502 Bad Gateway.
    pub fn upstream(cause: impl Into<BoxError>) -> Self {
        ProxyError {
            kind: Kind::Upstream,
            detail: None,
            source: Some(cause.into()),
        }
    }

    /// The upstream did not answer in time: answer 504 Gateway Timeout.
    pub fn timeout(what: impl Into<String>) -> Self {
        Self::new(Kind::Timeout, what)
    }

    /// No connection to the upstream could be had in time (a cap on
    /// connections is reached): answer 503 Service Unavailable.
    pub fn overloaded(detail: impl Into<String>) -> Self {
        Self::new(Kind::Overloaded, detail)
    }

    /// The client stopped sending its request body for too long: answer 408
    /// Request Timeout (RFC 9110 section 15.5.9).
    pub fn client_timeout(detail: impl Into<String>) -> Self {
        Self::new(Kind::ClientTimeout, detail)
    }

    /// The status to answer the client with.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            Kind::InvalidUpstream => StatusCode::INTERNAL_SERVER_ERROR,
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::UpgradeRefused => StatusCode::FORBIDDEN,
            Kind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::BadUpgradeResponse | Kind::Upstream => StatusCode::BAD_GATEWAY,
            Kind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Kind::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// True if the client caused it (a 4xx: a bad target, `CONNECT`, a refused
    /// upgrade): worth a DEBUG line at most, so clients cannot flood the logs.
    pub fn is_client_error(&self) -> bool {
        self.status().is_client_error()
    }

    /// The upstream URI given to the proxy is not usable (not absolute `http` or
    /// `https` with a host).
    pub fn is_invalid_upstream(&self) -> bool {
        self.kind == Kind::InvalidUpstream
    }

    /// The client's request cannot be forwarded (400 or 405).
    pub fn is_bad_request(&self) -> bool {
        matches!(self.kind, Kind::BadRequest | Kind::MethodNotAllowed)
    }

    /// The client asked to upgrade to a protocol the upgrade policy refuses.
    pub fn is_upgrade_refused(&self) -> bool {
        self.kind == Kind::UpgradeRefused
    }

    /// The upstream switched protocols when it should not have: a 101 to a request
    /// that asked for no upgrade, or for another protocol.
    pub fn is_bad_upgrade_response(&self) -> bool {
        self.kind == Kind::BadUpgradeResponse
    }

    /// The upstream could not be reached or failed.
    pub fn is_upstream(&self) -> bool {
        self.kind == Kind::Upstream
    }

    /// The upstream did not answer in time.
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// No connection to the upstream was free in time.
    pub fn is_overloaded(&self) -> bool {
        self.kind == Kind::Overloaded
    }
}

impl fmt::Debug for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyError")
            .field("kind", &self.kind)
            .field("detail", &self.detail)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            Kind::InvalidUpstream => "invalid upstream URI",
            Kind::BadRequest => "request cannot be forwarded",
            Kind::MethodNotAllowed => "method not allowed",
            Kind::UpgradeRefused => "upgrade refused",
            Kind::BodyTooLarge => "request body too large",
            Kind::BadUpgradeResponse => "invalid upgrade response from upstream",
            Kind::Upstream => "upstream failed",
            Kind::Timeout => "upstream timed out",
            Kind::Overloaded => "no upstream connection free",
            Kind::ClientTimeout => "client too slow",
        };
        f.write_str(what)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        // The whole chain: "client error (SendRequest)" alone says little.
        let mut cause: Option<&(dyn StdError + 'static)> = self.source.as_deref().map(|s| s as _);
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

impl StdError for ProxyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
