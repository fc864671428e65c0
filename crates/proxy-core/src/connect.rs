//! Extended CONNECT (RFC 8441): a WebSocket over one HTTP/2 stream, bridged to
//! an HTTP/1.1 upgrade for upstreams that only speak that, or passed on as it
//! is to an HTTP/2 upstream.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderValue;
use sha1::{Digest, Sha1};

/// RFC 6455 section 1.3: the GUID a server appends to the key.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Key` for a 16-byte nonce: its base64 (RFC 6455 section
/// 4.1).
pub fn websocket_key(nonce: [u8; 16]) -> HeaderValue {
    HeaderValue::from_str(&BASE64.encode(nonce)).expect("base64 is a valid header value")
}

/// The `Sec-WebSocket-Accept` a server answers `key` with: the base64 of the
/// SHA-1 of the key and the RFC's GUID (RFC 6455 section 4.2.2).
///
/// ```
/// // The example of RFC 6455 section 1.3.
/// let accept = proxy_core::websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ==");
/// assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// ```
pub fn websocket_accept(key: &[u8]) -> HeaderValue {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    HeaderValue::from_str(&BASE64.encode(sha.finalize())).expect("base64 is a valid header value")
}

/// How an extended CONNECT request goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Connect {
    /// As an HTTP/1.1 upgrade; for a WebSocket, the upstream's 101 must carry
    /// this `Sec-WebSocket-Accept`.
    Bridged { accept: Option<HeaderValue> },
    /// As extended CONNECT, to an HTTP/2 upstream.
    PassThrough,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientInfo, Outcome, ProxyRules, UpgradePolicy};
    use http::{Method, Request, Response, StatusCode, Version, request, response};
    use proptest::prelude::*;

    fn connect(extra: &[(&str, &str)]) -> request::Parts {
        let mut b = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri("https://front.example/chat?room=1");
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn answer(status: u16, extra: &[(&str, &str)]) -> response::Parts {
        let mut b = Response::builder().status(status);
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn rules() -> ProxyRules {
        ProxyRules::new("http://10.0.0.1:3000").unwrap()
    }

    #[test]
    fn bridged_request_is_an_http1_websocket_upgrade() {
        let mut req = connect(&[
            ("sec-websocket-version", "13"),
            ("sec-websocket-protocol", "chat, superchat"),
            ("sec-websocket-extensions", "permessage-deflate"),
            ("sec-websocket-key", "client-chose-this"),
            ("te", "gzip"),
        ]);
        let client = ClientInfo::new("192.0.2.9".parse().unwrap()).tls(true);
        let p = rules()
            .prepare_upgrade_bridge(&mut req, &client, "websocket", [1; 16])
            .unwrap();
        assert!(p.is_upgrade() && p.is_bridged());
        assert_eq!(req.method, Method::GET);
        assert_eq!(req.uri, "http://10.0.0.1:3000/chat?room=1");
        let h = &req.headers;
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], websocket_key([1; 16]));
        assert_eq!(h["sec-websocket-version"], "13");
        assert_eq!(h["sec-websocket-protocol"], "chat, superchat");
        assert_eq!(h["sec-websocket-extensions"], "permessage-deflate");
        assert_eq!(h["x-forwarded-host"], "front.example");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(!h.contains_key("te"));
    }

    #[test]
    fn bridged_requests_are_refused_when_they_cannot_be_bridged() {
        let client = ClientInfo::unknown();
        let status = |r: Result<_, crate::ProxyError>| r.unwrap_err().status().as_u16();
        let mut req = connect(&[("sec-websocket-version", "13")]);
        assert_eq!(
            status(rules().prepare_upgrade_bridge(&mut req, &client, "not a token", [0; 16])),
            400
        );
        let mut req = connect(&[]);
        assert_eq!(
            status(rules().prepare_upgrade_bridge(&mut req, &client, "websocket", [0; 16])),
            400
        );
        let mut req = connect(&[("sec-websocket-version", "13")]);
        let deny = rules().upgrade_policy(UpgradePolicy::deny_all());
        assert_eq!(
            status(deny.prepare_upgrade_bridge(&mut req, &client, "websocket", [0; 16])),
            403
        );
    }

    #[test]
    fn bridged_answers_other_than_101_are_not_tunnels() {
        let r = rules();
        let mut req = connect(&[("sec-websocket-version", "13")]);
        let p = r
            .prepare_upgrade_bridge(&mut req, &ClientInfo::unknown(), "websocket", [2; 16])
            .unwrap();
        // A 200 to the upgrade is not a WebSocket: the client must not think so.
        let mut ok = answer(200, &[]);
        assert_eq!(r.prepare_response(&p, &mut ok).unwrap_err().status(), 502);
        // Refusals reach the client as they are.
        let mut refused = answer(403, &[("connection", "close")]);
        assert_eq!(
            r.prepare_response(&p, &mut refused).unwrap(),
            Outcome::Forward
        );
        assert_eq!(refused.status, 403);
        assert!(!refused.headers.contains_key("connection"));
        // A 101 for another protocol, or without the right accept: 502.
        let accept = websocket_accept(websocket_key([2; 16]).as_bytes());
        let accept = accept.to_str().unwrap();
        let mut other = answer(101, &[("upgrade", "h2c"), ("sec-websocket-accept", accept)]);
        assert_eq!(
            r.prepare_response(&p, &mut other).unwrap_err().status(),
            502
        );
        let mut missing = answer(101, &[("connection", "upgrade"), ("upgrade", "websocket")]);
        assert_eq!(
            r.prepare_response(&p, &mut missing).unwrap_err().status(),
            502
        );
    }

    #[test]
    fn other_protocols_bridge_without_websocket_fields() {
        let r = rules();
        let mut req = connect(&[("sec-websocket-key", "stale")]);
        let p = r
            .prepare_upgrade_bridge(&mut req, &ClientInfo::unknown(), "echo", [3; 16])
            .unwrap();
        assert_eq!(req.headers["upgrade"], "echo");
        assert!(!req.headers.contains_key("sec-websocket-key"));
        let mut res = answer(101, &[("connection", "upgrade"), ("upgrade", "echo")]);
        assert_eq!(r.prepare_response(&p, &mut res).unwrap(), Outcome::Tunnel);
        assert_eq!(res.status, StatusCode::OK);
    }

    #[test]
    fn passed_through_connect_tunnels_on_2xx() {
        let r = rules();
        let mut req = connect(&[
            ("sec-websocket-version", "13"),
            ("connection", "x-drop"),
            ("x-drop", "1"),
        ]);
        let p = r
            .prepare_extended_connect(&mut req, &ClientInfo::unknown(), "websocket")
            .unwrap();
        assert!(p.is_upgrade() && !p.is_bridged());
        assert_eq!(req.method, Method::CONNECT);
        assert!(!req.headers.contains_key("x-drop"));
        assert!(!req.headers.contains_key("upgrade"));
        let mut ok = answer(200, &[]);
        assert_eq!(r.prepare_response(&p, &mut ok).unwrap(), Outcome::Tunnel);
        let mut no = answer(404, &[]);
        assert_eq!(r.prepare_response(&p, &mut no).unwrap(), Outcome::Forward);
        let deny = rules().upgrade_policy(UpgradePolicy::only(["websocket"]));
        let mut req = connect(&[]);
        let err = deny
            .prepare_extended_connect(&mut req, &ClientInfo::unknown(), "connect-udp")
            .unwrap_err();
        assert_eq!(err.status(), 403);
    }

    proptest! {
        /// For any nonce: the upstream's 101 with the matching accept opens a
        /// tunnel and becomes a 200 without the HTTP/1.1 upgrade fields; a 101
        /// with any other accept is a 502.
        #[test]
        fn only_the_matching_accept_opens_the_bridge(
            nonce in any::<[u8; 16]>(),
            other in any::<[u8; 16]>(),
        ) {
            let r = rules();
            let mut req = connect(&[("sec-websocket-version", "13")]);
            let p = r.prepare_upgrade_bridge(&mut req, &ClientInfo::unknown(), "websocket", nonce).unwrap();
            let key = req.headers["sec-websocket-key"].clone();
            let good = websocket_accept(key.as_bytes());
            let mut res = answer(101, &[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-accept", good.to_str().unwrap()),
                ("sec-websocket-protocol", "chat"),
            ]);
            prop_assert_eq!(r.prepare_response(&p, &mut res).unwrap(), Outcome::Tunnel);
            prop_assert_eq!(res.status, StatusCode::OK);
            prop_assert!(!res.headers.contains_key("upgrade"));
            prop_assert!(!res.headers.contains_key("connection"));
            prop_assert!(!res.headers.contains_key("sec-websocket-accept"));
            prop_assert_eq!(&res.headers["sec-websocket-protocol"], "chat");

            prop_assume!(other != nonce);
            let bad = websocket_accept(websocket_key(other).as_bytes());
            let mut res = answer(101, &[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-accept", bad.to_str().unwrap()),
            ]);
            prop_assert_eq!(r.prepare_response(&p, &mut res).unwrap_err().status(), StatusCode::BAD_GATEWAY);
        }

        #[test]
        fn keys_are_24_base64_chars_and_accepts_28(nonce in any::<[u8; 16]>()) {
            let key = websocket_key(nonce);
            prop_assert_eq!(key.len(), 24);
            prop_assert_eq!(BASE64.decode(key.as_bytes()).unwrap(), nonce.to_vec());
            prop_assert_eq!(websocket_accept(key.as_bytes()).len(), 28);
        }
    }
}
