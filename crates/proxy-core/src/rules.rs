//! The whole pipeline, in order, for a request and for its response.

use http::header::{
    self, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
};
use http::{Method, StatusCode, Uri, request, response};

use crate::ProxyError;
use crate::connect::{Connect, websocket_accept, websocket_key};
use crate::forwarded::{ClientInfo, ForwardedHeaders};
use crate::hop::{UPGRADE, has_token, remove_hop_by_hop};
use crate::target::Target;
use crate::upgrade::{
    UpgradePolicy, UpgradeRequest, check_policy, check_switch, requested_upgrade,
};

/// Which `Host` the upstream sees. More policies may come (a fixed name, say):
/// a `match` on it needs a wildcard arm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostHeader {
    /// The upstream's own authority, from its URI (default; like Go's
    /// `SetURL`).
    #[default]
    Upstream,
    /// The Host the client sent (for upstreams that route on it).
    Preserve,
}

/// The rules of a reverse proxy in front of one upstream.
///
/// Build it once; apply [`prepare_request`](ProxyRules::prepare_request) to each
/// request before sending it upstream, and
/// [`prepare_response`](ProxyRules::prepare_response) to the upstream's answer.
/// Both apply every rule in the one right order, so callers cannot get it wrong.
///
/// ```
/// use http::{Request, Response, StatusCode};
/// use proxy_core::{ClientInfo, Outcome, ProxyRules};
///
/// # fn main() -> Result<(), proxy_core::ProxyError> {
/// let rules = ProxyRules::new("http://127.0.0.1:3000/base")?;
///
/// let (mut req, ()) = Request::get("/chat?room=1")
///     .header("host", "example.com")
///     .header("connection", "Upgrade, X-Secret")
///     .header("upgrade", "websocket")
///     .header("x-secret", "hop-by-hop")
///     .body(())
///     .unwrap()
///     .into_parts();
/// let client = ClientInfo::new("192.0.2.1".parse().unwrap());
/// let prepared = rules.prepare_request(&mut req, &client)?;
///
/// assert_eq!(req.uri, "http://127.0.0.1:3000/base/chat?room=1");
/// assert_eq!(req.headers["host"], "127.0.0.1:3000");
/// assert_eq!(req.headers["connection"], "upgrade");
/// assert_eq!(req.headers["upgrade"], "websocket");
/// assert!(!req.headers.contains_key("x-secret"));
/// assert_eq!(req.headers["x-forwarded-for"], "192.0.2.1");
/// assert_eq!(req.headers["x-forwarded-host"], "example.com");
///
/// let (mut res, ()) = Response::builder()
///     .status(StatusCode::SWITCHING_PROTOCOLS)
///     .header("connection", "upgrade")
///     .header("upgrade", "websocket")
///     .header("keep-alive", "timeout=5")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert_eq!(rules.prepare_response(&prepared, &mut res)?, Outcome::Tunnel);
/// assert!(!res.headers.contains_key("keep-alive"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ProxyRules {
    target: Target,
    host: HostHeader,
    forwarded: ForwardedHeaders,
    upgrades: UpgradePolicy,
}

/// What [`ProxyRules::prepare_request`] learnt about a request, needed to judge the
/// response.
#[derive(Debug, Clone)]
pub struct Prepared {
    upgrade: Option<UpgradeRequest>,
    connect: Option<Connect>,
}

impl Prepared {
    /// The upgrade the client asked for, if it did (and the policy allowed it);
    /// for an extended CONNECT, its `:protocol`.
    pub fn upgrade(&self) -> Option<&UpgradeRequest> {
        self.upgrade.as_ref()
    }

    /// True if the request asks for a protocol upgrade (an HTTP/1.1 upgrade or
    /// an extended CONNECT): its connection becomes a tunnel on success.
    pub fn is_upgrade(&self) -> bool {
        self.upgrade.is_some()
    }

    /// True for an extended CONNECT turned into an HTTP/1.1 WebSocket upgrade
    /// by [`ProxyRules::prepare_upgrade_bridge`].
    pub fn is_bridged(&self) -> bool {
        matches!(self.connect, Some(Connect::Bridged { .. }))
    }
}

/// A `:protocol` as the one protocol of an upgrade: a token (RFC 9110 section
/// 7.8 `protocol-name`, as RFC 8441 section 4 requires).
fn protocol_token(protocol: &str) -> Result<UpgradeRequest, ProxyError> {
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if protocol.is_empty() || !protocol.bytes().all(is_tchar) {
        return Err(ProxyError::bad_request(format!(
            "invalid :protocol {protocol:?}"
        )));
    }
    let value = HeaderValue::from_str(protocol).expect("a token is a valid header value");
    Ok(UpgradeRequest::single(value))
}

/// What to do with an upstream response, as decided by
/// [`ProxyRules::prepare_response`]. More outcomes may come: a `match` on it
/// needs a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// An ordinary HTTP response: forward it; the client connection stays HTTP.
    Forward,
    /// A checked `101 Switching Protocols`: forward it, then upgrade both
    /// connections and relay bytes between them.
    Tunnel,
}

impl ProxyRules {
    /// Rules for the upstream at `upstream`, an absolute `http` or `https` URI; its
    /// path (if any) prefixes every request path, and its query is merged into
    /// every request's.
    pub fn new(upstream: &str) -> Result<Self, ProxyError> {
        let uri: Uri = upstream
            .parse()
            .map_err(|e| ProxyError::invalid_upstream(format!("{upstream:?}: {e}")))?;
        Self::from_uri(uri)
    }

    /// Like [`new`](ProxyRules::new), from a parsed URI.
    pub fn from_uri(upstream: Uri) -> Result<Self, ProxyError> {
        Ok(ProxyRules {
            target: Target::parse(upstream)?,
            host: HostHeader::default(),
            forwarded: ForwardedHeaders::default(),
            upgrades: UpgradePolicy::default(),
        })
    }

    /// The same rules for another upstream (one of several behind a balancer):
    /// the policies stay, the target changes.
    pub fn for_upstream(&self, upstream: Uri) -> Result<Self, ProxyError> {
        Ok(ProxyRules {
            target: Target::parse(upstream)?,
            ..self.clone()
        })
    }

    /// Which `Host` the upstream sees (default: the upstream's authority).
    pub fn host_header(mut self, host: HostHeader) -> Self {
        self.host = host;
        self
    }

    /// Which forwarding headers to add (default: X-Forwarded-*, replacing the
    /// client's).
    pub fn forwarded_headers(mut self, forwarded: ForwardedHeaders) -> Self {
        self.forwarded = forwarded;
        self
    }

    /// Which upgrade protocols may pass (default: all but `h2c`).
    pub fn upgrade_policy(mut self, policy: UpgradePolicy) -> Self {
        self.upgrades = policy;
        self
    }

    /// The upstream base URI.
    pub fn upstream(&self) -> &Uri {
        self.target.uri()
    }

    /// Turns a client's request head into the one to send upstream, in this order:
    ///
    /// 1. `CONNECT` is refused (405): a reverse proxy is not a tunnel endpoint.
    /// 2. The upgrade request, if any, is detected and checked against the upgrade
    ///    policy (403 if refused).
    /// 3. Hop-by-hop fields are removed, with every field named in `Connection`
    ///    (RFC 9110 section 7.6.1). `TE: trailers` is put back if the client sent
    ///    it (gRPC needs it), and so are `Connection: upgrade` and `Upgrade` on an
    ///    upgrade. `Trailer` stays: it announces the trailers that follow.
    /// 4. The URI becomes the upstream's, with the request's path and query joined
    ///    on (unparsable query parameters dropped, see
    ///    [`clean_query`](crate::clean_query)), and `Host` is set by the
    ///    [`HostHeader`] policy.
    /// 5. Only then are the forwarding headers added, so a client cannot strip them
    ///    by naming them in `Connection`.
    ///
    /// The request version and body are left alone.
    pub fn prepare_request(
        &self,
        parts: &mut request::Parts,
        client: &ClientInfo,
    ) -> Result<Prepared, ProxyError> {
        if parts.method == Method::CONNECT {
            return Err(ProxyError::method_not_allowed(
                "CONNECT is not supported by a reverse proxy",
            ));
        }
        let upgrade = requested_upgrade(&parts.headers, parts.version, &parts.method);
        if let Some(up) = &upgrade {
            check_policy(up, &self.upgrades)?;
        }
        self.rewrite_head(parts, client, upgrade.as_ref())?;
        Ok(Prepared {
            upgrade,
            connect: None,
        })
    }

    /// Turns an extended CONNECT (RFC 8441: `:method CONNECT` with a
    /// `:protocol`, over HTTP/2) into the HTTP/1.1 upgrade request an upstream
    /// that speaks only HTTP/1.1 expects: `GET`, `Connection: upgrade`,
    /// `Upgrade: <protocol>`. For `websocket` (RFC 8441 section 5, RFC 6455
    /// section 4.1) it adds a `Sec-WebSocket-Key` made from `nonce` (16 random
    /// bytes), and the client's `Sec-WebSocket-Version` (required: 400
    /// without it), `-Protocol` and `-Extensions` pass on. Then the rules of
    /// [`prepare_request`](ProxyRules::prepare_request) apply (hop-by-hop
    /// fields, target, `Host`, forwarding headers).
    /// [`prepare_response`](ProxyRules::prepare_response) then accepts only a
    /// 101 to that protocol (for a WebSocket, with the `Sec-WebSocket-Accept`
    /// of the key sent), and turns it into the `200` an extended CONNECT
    /// expects.
    ///
    /// `protocol` is the request's `:protocol` (hyper's `ext::Protocol`); it
    /// must be one token allowed by the upgrade policy (403).
    ///
    /// ```
    /// use http::{Method, Request, Response, StatusCode, Version};
    /// use proxy_core::{ClientInfo, Outcome, ProxyRules, websocket_accept};
    ///
    /// # fn main() -> Result<(), proxy_core::ProxyError> {
    /// let rules = ProxyRules::new("http://127.0.0.1:3000")?;
    /// let (mut req, ()) = Request::builder()
    ///     .method(Method::CONNECT)
    ///     .version(Version::HTTP_2)
    ///     .uri("https://example.com/chat")
    ///     .header("sec-websocket-version", "13")
    ///     .body(())
    ///     .unwrap()
    ///     .into_parts();
    /// let prepared = rules.prepare_upgrade_bridge(&mut req, &ClientInfo::unknown(), "websocket", [7; 16])?;
    /// assert_eq!(req.method, Method::GET);
    /// assert_eq!(req.headers["upgrade"], "websocket");
    /// let key = req.headers["sec-websocket-key"].clone();
    ///
    /// let (mut res, ()) = Response::builder()
    ///     .status(StatusCode::SWITCHING_PROTOCOLS)
    ///     .header("connection", "upgrade")
    ///     .header("upgrade", "websocket")
    ///     .header("sec-websocket-accept", websocket_accept(key.as_bytes()))
    ///     .body(())
    ///     .unwrap()
    ///     .into_parts();
    /// assert_eq!(rules.prepare_response(&prepared, &mut res)?, Outcome::Tunnel);
    /// assert_eq!(res.status, StatusCode::OK);
    /// assert!(!res.headers.contains_key("upgrade"));
    /// # Ok(()) }
    /// ```
    pub fn prepare_upgrade_bridge(
        &self,
        parts: &mut request::Parts,
        client: &ClientInfo,
        protocol: &str,
        nonce: [u8; 16],
    ) -> Result<Prepared, ProxyError> {
        let upgrade = protocol_token(protocol)?;
        check_policy(&upgrade, &self.upgrades)?;
        let websocket = protocol.eq_ignore_ascii_case("websocket");
        if websocket && !parts.headers.contains_key(SEC_WEBSOCKET_VERSION) {
            return Err(ProxyError::bad_request(
                "a WebSocket extended CONNECT needs sec-websocket-version (RFC 8441 section 5)",
            ));
        }
        parts.method = Method::GET;
        self.rewrite_head(parts, client, Some(&upgrade))?;
        parts.headers.remove(SEC_WEBSOCKET_ACCEPT);
        parts.headers.remove(SEC_WEBSOCKET_KEY);
        let accept = websocket.then(|| {
            let key = websocket_key(nonce);
            let accept = websocket_accept(key.as_bytes());
            parts.headers.insert(SEC_WEBSOCKET_KEY, key);
            accept
        });
        Ok(Prepared {
            upgrade: Some(upgrade),
            connect: Some(Connect::Bridged { accept }),
        })
    }

    /// Prepares an extended CONNECT (RFC 8441) for an upstream that speaks
    /// HTTP/2 and accepts extended CONNECT itself: the request stays a
    /// `CONNECT` with its `:protocol`, and the rules of
    /// [`prepare_request`](ProxyRules::prepare_request) apply to its head. A
    /// 2xx answer opens the tunnel. `protocol` must be allowed by the upgrade
    /// policy (403).
    pub fn prepare_extended_connect(
        &self,
        parts: &mut request::Parts,
        client: &ClientInfo,
        protocol: &str,
    ) -> Result<Prepared, ProxyError> {
        let upgrade = protocol_token(protocol)?;
        check_policy(&upgrade, &self.upgrades)?;
        self.rewrite_head(parts, client, None)?;
        Ok(Prepared {
            upgrade: Some(upgrade),
            connect: Some(Connect::PassThrough),
        })
    }

    /// Steps 3 to 5 of [`prepare_request`](ProxyRules::prepare_request).
    fn rewrite_head(
        &self,
        parts: &mut request::Parts,
        client: &ClientInfo,
        upgrade: Option<&UpgradeRequest>,
    ) -> Result<(), ProxyError> {
        let headers = &mut parts.headers;
        // The target's authority wins over Host: RFC 9112 section 3.2.2 (an
        // absolute-form request target) and RFC 9113 section 8.3.1 (HTTP/2's
        // :authority). Otherwise Host (RFC 9110 section 7.2).
        let original_host = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| headers.get(header::HOST).cloned());
        // RFC 9110 section 10.1.4: TE is hop-by-hop, but "trailers" says the client
        // accepts trailers, which the upstream needs to know (gRPC).
        let te_trailers = has_token(headers, &header::TE, "trailers");

        remove_hop_by_hop(headers);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if let Some(up) = upgrade {
            // RFC 9110 section 7.8: Upgrade is only valid with Connection: upgrade.
            headers.insert(header::CONNECTION, UPGRADE);
            for v in up.header_values() {
                headers.append(header::UPGRADE, v.clone());
            }
        }

        parts.uri = self.target.rewrite(&parts.uri)?;
        match self.host {
            HostHeader::Upstream => {
                headers.insert(header::HOST, self.target.host().clone());
            }
            HostHeader::Preserve => match &original_host {
                Some(h) => {
                    headers.insert(header::HOST, h.clone());
                }
                None => {
                    headers.insert(header::HOST, self.target.host().clone());
                }
            },
        }

        self.forwarded
            .apply(headers, client, original_host.as_ref(), parts.version);
        Ok(())
    }

    /// Turns the upstream's response head into the one to send the client, and says
    /// whether to open a tunnel.
    ///
    /// - A `101` is accepted only if the request asked for an upgrade and the
    ///   upstream switched to a protocol the client offered (RFC 9110 section 7.8);
    ///   otherwise this is an error (502) and no tunnel may be opened. An accepted
    ///   101 keeps `Connection: upgrade` and `Upgrade` and loses every other
    ///   hop-by-hop field.
    /// - Any other status is [`Outcome::Forward`]: the response is relayed as plain
    ///   HTTP, even to an upgrade request (the client connection stays HTTP). Its
    ///   hop-by-hop fields are removed (RFC 9110 section 7.6.1).
    pub fn prepare_response(
        &self,
        prepared: &Prepared,
        parts: &mut response::Parts,
    ) -> Result<Outcome, ProxyError> {
        if let Some(connect) = &prepared.connect {
            return self.prepare_connect_response(prepared, connect, parts);
        }
        let outcome = if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            let protocol = check_switch(prepared.upgrade.as_ref(), &parts.headers)?;
            remove_hop_by_hop(&mut parts.headers);
            parts.headers.insert(header::CONNECTION, UPGRADE);
            parts.headers.insert(header::UPGRADE, protocol);
            Outcome::Tunnel
        } else {
            remove_hop_by_hop(&mut parts.headers);
            Outcome::Forward
        };
        self.forwarded.add_via(&mut parts.headers, parts.version);
        Ok(outcome)
    }

    /// The answer to an extended CONNECT: a tunnel on success, else relayed.
    fn prepare_connect_response(
        &self,
        prepared: &Prepared,
        connect: &Connect,
        parts: &mut response::Parts,
    ) -> Result<Outcome, ProxyError> {
        let outcome = match connect {
            Connect::Bridged { accept } if parts.status == StatusCode::SWITCHING_PROTOCOLS => {
                check_switch(prepared.upgrade.as_ref(), &parts.headers)?;
                if accept.is_some() && parts.headers.get(SEC_WEBSOCKET_ACCEPT) != accept.as_ref() {
                    return Err(ProxyError::bad_upgrade_response(
                        "upstream's Sec-WebSocket-Accept does not match the key sent",
                    ));
                }
                remove_hop_by_hop(&mut parts.headers);
                parts.headers.remove(SEC_WEBSOCKET_ACCEPT);
                // RFC 8441 section 5: success is a 2xx to the CONNECT.
                parts.status = StatusCode::OK;
                Outcome::Tunnel
            }
            // A 2xx that did not switch would tell the client its WebSocket is
            // open while the upstream speaks HTTP.
            Connect::Bridged { .. } if parts.status.is_success() => {
                return Err(ProxyError::bad_upgrade_response(format!(
                    "upstream answered {} to an upgrade, not 101",
                    parts.status
                )));
            }
            Connect::PassThrough if parts.status.is_success() => {
                remove_hop_by_hop(&mut parts.headers);
                Outcome::Tunnel
            }
            Connect::Bridged { .. } | Connect::PassThrough
                if parts.status == StatusCode::SWITCHING_PROTOCOLS =>
            {
                return Err(ProxyError::bad_upgrade_response(
                    "upstream switched protocols on an HTTP/2 stream",
                ));
            }
            _ => {
                remove_hop_by_hop(&mut parts.headers);
                Outcome::Forward
            }
        };
        self.forwarded.add_via(&mut parts.headers, parts.version);
        Ok(outcome)
    }
}
