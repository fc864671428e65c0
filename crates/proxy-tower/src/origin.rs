//! Which request a log line is about: the method, the path and the
//! request id, kept apart from the request itself (which is consumed by the
//! call) for the proxy's and the tunnel's log lines. At the bottom of the
//! crate: imports nothing of it.

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
pub(crate) const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

impl Origin {
    /// The origin of the request whose head is `parts`.
    pub(crate) fn of(parts: &http::request::Parts) -> Self {
        Origin {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            request_id: parts.headers.get(X_REQUEST_ID).cloned(),
        }
    }
}
