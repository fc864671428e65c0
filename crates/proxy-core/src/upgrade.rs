//! HTTP/1.1 protocol upgrades (RFC 9110 section 7.8): detection, policy, and the
//! check of the upstream's `101 Switching Protocols`.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Version};

use crate::ProxyError;
use crate::hop::{has_token, list_elements};

/// Which upgrade protocols may pass through the proxy.
///
/// The default allows every protocol except `h2c`: an `h2c` upgrade through a
/// reverse proxy turns the client's connection into an HTTP/2 connection straight
/// to the upstream, past every rule the proxy applies to later requests (so-called
/// h2c smuggling). Refused upgrades are answered `403 Forbidden`.
///
/// Protocols compare case-insensitively by name; a version suffix
/// (`name/version`) is ignored.
///
/// ```
/// use proxy_core::UpgradePolicy;
///
/// let default = UpgradePolicy::default();
/// assert!(default.allows("websocket") && !default.allows("h2c"));
///
/// let only_ws = UpgradePolicy::only(["websocket"]);
/// assert!(only_ws.allows("WebSocket") && !only_ws.allows("echo"));
///
/// assert!(UpgradePolicy::allow_all().allows("h2c"));
/// assert!(!UpgradePolicy::deny_all().allows("websocket"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradePolicy {
    rule: Rule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    AllExcept(Vec<String>),
    Only(Vec<String>),
}

impl Default for UpgradePolicy {
    fn default() -> Self {
        UpgradePolicy {
            rule: Rule::AllExcept(vec!["h2c".into()]),
        }
    }
}

fn lowercase_names<I, S>(names: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    names
        .into_iter()
        .map(|s| protocol_name(s.as_ref()).to_ascii_lowercase())
        .collect()
}

/// `websocket` of `websocket`, `HTTP` of `HTTP/2.0`.
fn protocol_name(token: &str) -> &str {
    token.split('/').next().unwrap_or(token).trim()
}

impl UpgradePolicy {
    /// Every protocol may pass, `h2c` included.
    pub fn allow_all() -> Self {
        UpgradePolicy {
            rule: Rule::AllExcept(Vec::new()),
        }
    }

    /// No upgrade may pass.
    pub fn deny_all() -> Self {
        UpgradePolicy {
            rule: Rule::Only(Vec::new()),
        }
    }

    /// Only the named protocols may pass.
    pub fn only<I, S>(protocols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        UpgradePolicy {
            rule: Rule::Only(lowercase_names(protocols)),
        }
    }

    /// Every protocol may pass except the named ones.
    pub fn all_except<I, S>(protocols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        UpgradePolicy {
            rule: Rule::AllExcept(lowercase_names(protocols)),
        }
    }

    /// True if an upgrade to `protocol` may pass.
    pub fn allows(&self, protocol: &str) -> bool {
        let name = protocol_name(protocol);
        let listed = |list: &[String]| list.iter().any(|p| p.eq_ignore_ascii_case(name));
        match &self.rule {
            Rule::AllExcept(denied) => !listed(denied),
            Rule::Only(allowed) => listed(allowed),
        }
    }
}

/// The upgrade a client asked for: the `Upgrade` field of its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// The request's `Upgrade` lines, as sent.
    value: Lines,
}

/// A request's `Upgrade` lines: almost always one, held without an
/// allocation of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lines {
    One(HeaderValue),
    Many(Vec<HeaderValue>),
}

impl UpgradeRequest {
    pub(crate) fn single(protocol: HeaderValue) -> Self {
        UpgradeRequest {
            value: Lines::One(protocol),
        }
    }

    /// The `Upgrade` values to forward upstream, as the client sent them.
    pub fn header_values(&self) -> &[HeaderValue] {
        match &self.value {
            Lines::One(v) => std::slice::from_ref(v),
            Lines::Many(v) => v,
        }
    }

    /// The requested protocols, in the client's order of preference.
    pub fn protocols(&self) -> impl Iterator<Item = &str> {
        self.header_values()
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|e| std::str::from_utf8(e.trim_ascii()).ok())
            .filter(|e| !e.is_empty())
    }

    fn offers(&self, protocol: &[u8]) -> bool {
        self.protocols()
            .any(|p| p.as_bytes().eq_ignore_ascii_case(protocol))
    }
}

/// The upgrade a request asks for, if any.
///
/// A request is an upgrade when `Connection` has the token `upgrade` (any case,
/// any position, any number of `Connection` lines) and `Upgrade` is present (RFC
/// 9110 section 7.8). HTTP/1.0 requests are never upgrades (RFC 9110 section 7.8:
/// a server must ignore `Upgrade` received in an HTTP/1.0 request), and neither are
/// HTTP/2 or HTTP/3 requests (RFC 9113 section 8.6: those protocols have no
/// `Upgrade`; they use extended CONNECT instead).
///
/// A request that carries a body (`Content-Length` other than 0, or any
/// `Transfer-Encoding`) is never an upgrade either: after a switch, the bytes
/// behind the head belong to the new protocol, so a body would be read as
/// protocol data by one side and as a request by the other (an upstream that
/// answers 426 without reading the body would take the body for its next
/// request). Such a request is forwarded as plain HTTP, its `Upgrade` removed
/// with the other hop-by-hop fields, as HAProxy does.
///
/// ```
/// use http::Request;
///
/// let req = Request::get("/chat")
///     .header("connection", "keep-alive, Upgrade")
///     .header("upgrade", "websocket")
///     .body(())
///     .unwrap();
/// let (parts, _) = req.into_parts();
/// let upgrade = proxy_core::requested_upgrade(&parts.headers, parts.version, &parts.method).unwrap();
/// assert_eq!(upgrade.protocols().collect::<Vec<_>>(), ["websocket"]);
/// ```
pub fn requested_upgrade(
    headers: &HeaderMap,
    version: Version,
    method: &Method,
) -> Option<UpgradeRequest> {
    if version != Version::HTTP_11 || method == Method::CONNECT {
        return None;
    }
    if !has_token(headers, &header::CONNECTION, "upgrade") {
        return None;
    }
    if carries_body(headers) {
        return None;
    }
    // An Upgrade field with no protocol in it asks for nothing.
    list_elements(headers, &header::UPGRADE).next()?;
    let mut lines = headers.get_all(header::UPGRADE).iter();
    let first = lines.next()?.clone();
    let value = match lines.next() {
        None => Lines::One(first),
        Some(second) => Lines::Many(
            [first, second.clone()]
                .into_iter()
                .chain(lines.cloned())
                .collect(),
        ),
    };
    Some(UpgradeRequest { value })
}

/// True if the head announces a body (RFC 9112 section 6.3).
fn carries_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes().iter().any(|&c| c != b'0'))
}

/// Refuses the upgrade if any requested protocol is not allowed by `policy`.
pub(crate) fn check_policy(
    upgrade: &UpgradeRequest,
    policy: &UpgradePolicy,
) -> Result<(), ProxyError> {
    match upgrade.protocols().find(|p| !policy.allows(p)) {
        Some(p) => Err(ProxyError::upgrade_refused(format!(
            "upgrade to {p:?} is not allowed through this proxy"
        ))),
        None => Ok(()),
    }
}

/// Checks a `101 Switching Protocols` from the upstream against the request.
///
/// The 101 must carry an `Upgrade` naming only protocols the client offered (RFC
/// 9110 section 7.8: "A server MUST NOT switch to a protocol that was not indicated
/// by the client in the corresponding request's Upgrade header field"). A 101 to a
/// request that asked for no upgrade is invalid too. Either way the answer is 502 and
/// no tunnel is opened. Returns the protocol value to send on to the client.
pub(crate) fn check_switch(
    requested: Option<&UpgradeRequest>,
    response: &HeaderMap,
) -> Result<HeaderValue, ProxyError> {
    let Some(requested) = requested else {
        return Err(ProxyError::bad_upgrade_response(
            "upstream switched protocols but no upgrade was requested",
        ));
    };
    let mut switched = list_elements(response, &header::UPGRADE).peekable();
    if switched.peek().is_none() {
        return Err(ProxyError::bad_upgrade_response(
            "upstream sent 101 without an Upgrade field",
        ));
    }
    if let Some(other) = switched.find(|p| !requested.offers(p)) {
        return Err(ProxyError::bad_upgrade_response(format!(
            "upstream switched to {:?}, which was not requested",
            String::from_utf8_lossy(other)
        )));
    }
    // Send the client the upstream's own value, joined if it came in several
    // lines (one line, the usual case, costs no allocation).
    let lines = response.get_all(header::UPGRADE);
    let mut iter = lines.iter();
    match (iter.next(), iter.next()) {
        (Some(one), None) => Ok(one.clone()),
        _ => {
            let joined: Vec<&[u8]> = lines.iter().map(|v| v.as_bytes()).collect();
            HeaderValue::from_bytes(&joined.join(&b", "[..]))
                .map_err(|_| ProxyError::bad_upgrade_response("invalid Upgrade field in 101"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn upgrade_of(pairs: &[(&str, &str)], version: Version) -> Option<UpgradeRequest> {
        requested_upgrade(&headers(pairs), version, &Method::GET)
    }

    // RFC 9110 section 7.8: Connection: upgrade + Upgrade make an upgrade request;
    // the token may be anywhere, in any case, on any Connection line.
    #[test]
    fn a_request_with_a_body_is_never_an_upgrade() {
        let up = [("connection", "upgrade"), ("upgrade", "websocket")];
        let get = |extra: &[(&str, &str)]| {
            let mut all = up.to_vec();
            all.extend_from_slice(extra);
            requested_upgrade(&headers(&all), Version::HTTP_11, &Method::POST)
        };
        assert!(get(&[]).is_some());
        assert!(get(&[("content-length", "0")]).is_some());
        assert!(get(&[("content-length", "32")]).is_none());
        assert!(get(&[("transfer-encoding", "chunked")]).is_none());
    }

    #[test]
    fn detects_upgrade_token_anywhere() {
        for conn in [
            &["Upgrade"][..],
            &["keep-alive, UPGRADE"],
            &["keep-alive", " upgrade "],
            &[",upgrade,"],
        ] {
            let mut pairs: Vec<(&str, &str)> = conn.iter().map(|c| ("connection", *c)).collect();
            pairs.push(("upgrade", "websocket"));
            assert!(upgrade_of(&pairs, Version::HTTP_11).is_some(), "{conn:?}");
        }
    }

    #[test]
    fn no_upgrade_without_both_fields() {
        assert!(upgrade_of(&[("upgrade", "websocket")], Version::HTTP_11).is_none());
        assert!(upgrade_of(&[("connection", "upgrade")], Version::HTTP_11).is_none());
        assert!(
            upgrade_of(
                &[("connection", "upgrade"), ("upgrade", " , ")],
                Version::HTTP_11
            )
            .is_none()
        );
        assert!(
            upgrade_of(
                &[("connection", "upgraded"), ("upgrade", "websocket")],
                Version::HTTP_11
            )
            .is_none()
        );
    }

    // RFC 9110 section 7.8: Upgrade in an HTTP/1.0 request is ignored. RFC 9113
    // section 8.6: HTTP/2 has no Upgrade.
    #[test]
    fn never_for_http10_or_http2() {
        let pairs = [("connection", "upgrade"), ("upgrade", "websocket")];
        assert!(upgrade_of(&pairs, Version::HTTP_10).is_none());
        assert!(upgrade_of(&pairs, Version::HTTP_2).is_none());
        assert!(upgrade_of(&pairs, Version::HTTP_3).is_none());
    }

    #[test]
    fn h2c_is_refused_by_default_and_configurable() {
        let up = upgrade_of(
            &[("connection", "upgrade"), ("upgrade", "h2c")],
            Version::HTTP_11,
        )
        .unwrap();
        let err = check_policy(&up, &UpgradePolicy::default()).unwrap_err();
        assert!(err.is_upgrade_refused());
        assert_eq!(err.status(), http::StatusCode::FORBIDDEN);
        assert!(check_policy(&up, &UpgradePolicy::allow_all()).is_ok());
        // One refused protocol among several refuses the request.
        let mixed = upgrade_of(
            &[("connection", "upgrade"), ("upgrade", "websocket, H2C")],
            Version::HTTP_11,
        )
        .unwrap();
        assert!(check_policy(&mixed, &UpgradePolicy::default()).is_err());
    }

    // RFC 9110 section 7.8: the server may only switch to a protocol the client offered.
    #[test]
    fn switch_must_match_requested_protocol() {
        let up = upgrade_of(
            &[("connection", "upgrade"), ("upgrade", "websocket")],
            Version::HTTP_11,
        )
        .unwrap();
        let ok = check_switch(Some(&up), &headers(&[("upgrade", "WebSocket")])).unwrap();
        assert_eq!(ok, "WebSocket");
        assert!(
            check_switch(Some(&up), &headers(&[("upgrade", "h2c")]))
                .unwrap_err()
                .is_bad_upgrade_response()
        );
        assert!(check_switch(Some(&up), &headers(&[])).is_err());
        let unasked = check_switch(None, &headers(&[("upgrade", "websocket")])).unwrap_err();
        assert_eq!(unasked.status(), http::StatusCode::BAD_GATEWAY);
    }

    // RFC 9110 section 5.3: several `Upgrade` lines are one list, in order.
    #[test]
    fn several_upgrade_lines_are_kept_as_sent_and_read_as_one_list() {
        let one = upgrade_of(
            &[("connection", "upgrade"), ("upgrade", "websocket, echo")],
            Version::HTTP_11,
        )
        .unwrap();
        assert_eq!(one.header_values(), ["websocket, echo"]);
        let two = upgrade_of(
            &[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("upgrade", "echo, h2c"),
                ("upgrade", "tls/1.3"),
            ],
            Version::HTTP_11,
        )
        .unwrap();
        assert_eq!(two.header_values(), ["websocket", "echo, h2c", "tls/1.3"]);
        let protocols: Vec<&str> = two.protocols().collect();
        assert_eq!(protocols, ["websocket", "echo", "h2c", "tls/1.3"]);
        assert_ne!(one, two);
    }

    // A 101 whose `Upgrade` came in several lines is sent on as one line.
    #[test]
    fn a_switch_in_several_lines_is_joined_and_each_protocol_checked() {
        let up = upgrade_of(
            &[("connection", "upgrade"), ("upgrade", "websocket, echo")],
            Version::HTTP_11,
        )
        .unwrap();
        let two = headers(&[("upgrade", "echo"), ("upgrade", "websocket")]);
        assert_eq!(check_switch(Some(&up), &two).unwrap(), "echo, websocket");
        let one_unasked = headers(&[("upgrade", "echo"), ("upgrade", "h2c")]);
        assert!(
            check_switch(Some(&up), &one_unasked)
                .unwrap_err()
                .is_bad_upgrade_response()
        );
    }
}
