//! Ports of the header tests of Go's `net/http/httputil/reverseproxy_test.go` that
//! apply to a sans-IO layer.

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, request, response};
use proxy_core::{ClientInfo, ForwardedHeaders, HostHeader, Outcome, ProxyRules};

fn client() -> ClientInfo {
    ClientInfo::new("127.0.0.1".parse().unwrap())
}

fn req(headers: &[(&str, &str)]) -> request::Parts {
    let mut b = Request::get("/some/path?k=v").header("host", "some-name");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn res(status: StatusCode, headers: &[(&str, &str)]) -> response::Parts {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn names(h: &HeaderMap) -> Vec<&str> {
    let mut v: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    v.sort();
    v
}

// TestReverseProxy: hop-by-hop request headers are removed, `Te: trailers`
// survives, and hop-by-hop response headers are removed.
#[test]
fn reverse_proxy_hop_headers() {
    let rules = ProxyRules::new("http://backend").unwrap();
    let mut r = req(&[
        ("connection", "close"),
        ("proxy-connection", "should be deleted"),
        ("keep-alive", "should be deleted"),
        ("proxy-authorization", "should be deleted"),
        ("te", "foo"),
        ("te", "bar, trailers"),
        ("upgrade", "foo"),
        ("x-kept", "1"),
    ]);
    let prepared = rules.prepare_request(&mut r, &client()).unwrap();
    assert!(!prepared.is_upgrade());
    assert_eq!(
        names(&r.headers),
        [
            "host",
            "te",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-kept"
        ]
    );
    assert_eq!(r.headers["te"], "trailers");
    assert_eq!(r.uri, "http://backend/some/path?k=v");

    let mut resp = res(
        StatusCode::OK,
        &[
            ("connection", "close, X-Per-Hop"),
            ("x-per-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("x-foo", "bar"),
        ],
    );
    assert_eq!(
        rules.prepare_response(&prepared, &mut resp).unwrap(),
        Outcome::Forward
    );
    assert_eq!(names(&resp.headers), ["x-foo"]);
}

// TestReverseProxyStripHeadersPresentInConnection: every field named in any
// Connection line is removed, in requests and in responses.
#[test]
fn strip_headers_present_in_connection() {
    let rules = ProxyRules::new("http://backend").unwrap();
    let fake = "X-Fake-Connection-Token";
    let mut r = req(&[
        ("connection", &format!("Upgrade, {fake}")),
        ("connection", "X-Some-Conn-Header"),
        ("x-some-conn-header", "should be deleted"),
        (fake, "should be deleted"),
    ]);
    let prepared = rules.prepare_request(&mut r, &client()).unwrap();
    for gone in [
        "connection",
        "upgrade",
        "x-some-conn-header",
        "x-fake-connection-token",
    ] {
        assert!(!r.headers.contains_key(gone), "{gone} survived");
    }
    let mut resp = res(
        StatusCode::OK,
        &[
            ("connection", "Upgrade, X-Fake-Connection-Token"),
            ("x-fake-connection-token", "x"),
            ("upgrade", "foo"),
        ],
    );
    rules.prepare_response(&prepared, &mut resp).unwrap();
    assert!(resp.headers.is_empty(), "{:?}", resp.headers);
}

// TestXForwardedFor: with a trusted prior value, the client's address is appended.
#[test]
fn x_forwarded_for_appends_when_trusted() {
    let rules = ProxyRules::new("http://backend")
        .unwrap()
        .forwarded_headers(ForwardedHeaders::default().trust_incoming(true));
    let mut r = req(&[("x-forwarded-for", "127.0.0.2")]);
    rules.prepare_request(&mut r, &client()).unwrap();
    assert_eq!(r.headers["x-forwarded-for"], "127.0.0.2, 127.0.0.1");
}

// TestSetXForwarded (ProxyRequest.SetXForwarded): untrusted incoming values are
// replaced by the proxy's own.
#[test]
fn set_x_forwarded_replaces_incoming() {
    let rules = ProxyRules::new("http://backend").unwrap();
    let mut r = req(&[
        ("x-forwarded-for", "spoofed"),
        ("x-forwarded-host", "spoofed"),
        ("x-forwarded-proto", "spoofed"),
    ]);
    rules
        .prepare_request(
            &mut r,
            &ClientInfo::new("192.0.2.1".parse().unwrap()).tls(true),
        )
        .unwrap();
    assert_eq!(r.headers["x-forwarded-for"], "192.0.2.1");
    assert_eq!(r.headers["x-forwarded-host"], "some-name");
    assert_eq!(r.headers["x-forwarded-proto"], "https");
}

// TestXForwardedFor_Omit: the proxy can be told to add no X-Forwarded-For.
#[test]
fn x_forwarded_for_omitted() {
    let rules = ProxyRules::new("http://backend")
        .unwrap()
        .forwarded_headers(ForwardedHeaders::none());
    let mut r = req(&[("x-forwarded-for", "127.0.0.2")]);
    rules.prepare_request(&mut r, &client()).unwrap();
    assert!(!r.headers.contains_key("x-forwarded-for"));
}

// The forwarding headers are added after hop-by-hop removal: a client cannot strip
// them by naming them in Connection.
#[test]
fn connection_cannot_strip_forwarding_headers() {
    let rules = ProxyRules::new("http://backend").unwrap();
    let mut r = req(&[(
        "connection",
        "X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto, Host",
    )]);
    rules.prepare_request(&mut r, &client()).unwrap();
    assert_eq!(r.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(r.headers["x-forwarded-host"], "some-name");
    assert_eq!(r.headers["x-forwarded-proto"], "http");
    assert_eq!(r.headers["host"], "backend");
}

// TestReverseProxy_Host / SetURL: by default Host becomes the upstream's; with
// Preserve the client's Host reaches the upstream.
#[test]
fn host_policy() {
    let mut r = req(&[]);
    ProxyRules::new("http://backend:8080")
        .unwrap()
        .prepare_request(&mut r, &client())
        .unwrap();
    assert_eq!(r.headers["host"], "backend:8080");

    let mut r = req(&[]);
    ProxyRules::new("http://backend:8080")
        .unwrap()
        .host_header(HostHeader::Preserve)
        .prepare_request(&mut r, &client())
        .unwrap();
    assert_eq!(r.headers["host"], "some-name");
    assert_eq!(r.uri.authority().unwrap(), "backend:8080");
}

/// RFC 9112 section 3.2.2: with an absolute-form target, its authority wins over
/// Host, for Preserve and for X-Forwarded-Host.
#[test]
fn absolute_form_authority_wins_over_host() {
    let (mut r, ()) = Request::get("http://front.example/x")
        .header("host", "other.example")
        .body(())
        .unwrap()
        .into_parts();
    ProxyRules::new("http://backend:8080")
        .unwrap()
        .host_header(HostHeader::Preserve)
        .prepare_request(&mut r, &client())
        .unwrap();
    assert_eq!(r.headers["host"], "front.example");
    assert_eq!(r.headers["x-forwarded-host"], "front.example");
    assert_eq!(r.uri, "http://backend:8080/x");
}

// TestReverseProxyWebSocket (header part): an upgrade request keeps exactly
// Connection: upgrade and Upgrade; the 101 reaches the client with them and without
// the other hop-by-hop headers (Go leaks Keep-Alive here).
#[test]
fn websocket_upgrade_headers() {
    let rules = ProxyRules::new("http://backend").unwrap();
    let mut r = req(&[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("keep-alive", "x"),
    ]);
    let prepared = rules.prepare_request(&mut r, &client()).unwrap();
    assert!(prepared.is_upgrade());
    assert_eq!(r.headers["connection"], "upgrade");
    assert_eq!(r.headers["upgrade"], "websocket");
    assert!(!r.headers.contains_key("keep-alive"));

    let mut resp = res(
        StatusCode::SWITCHING_PROTOCOLS,
        &[
            ("connection", "Upgrade, X-Hop"),
            ("upgrade", "WebSocket"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("sec-websocket-accept", "abc"),
        ],
    );
    assert_eq!(
        rules.prepare_response(&prepared, &mut resp).unwrap(),
        Outcome::Tunnel
    );
    assert_eq!(
        names(&resp.headers),
        ["connection", "sec-websocket-accept", "upgrade"]
    );
    assert_eq!(resp.headers["upgrade"], "WebSocket");
}

// TestReverseProxyWebSocket... "backend tried to switch protocol": a 101 for
// another protocol, or to a request that asked for none, is a 502.
#[test]
fn switch_to_unrequested_protocol_is_502() {
    let rules = ProxyRules::new("http://backend").unwrap();
    let mut r = req(&[("connection", "upgrade"), ("upgrade", "websocket")]);
    let prepared = rules.prepare_request(&mut r, &client()).unwrap();
    let mut resp = res(
        StatusCode::SWITCHING_PROTOCOLS,
        &[("connection", "upgrade"), ("upgrade", "echo")],
    );
    assert_eq!(
        rules
            .prepare_response(&prepared, &mut resp)
            .unwrap_err()
            .status(),
        StatusCode::BAD_GATEWAY
    );

    let mut plain = req(&[]);
    let prepared = rules.prepare_request(&mut plain, &client()).unwrap();
    let mut resp = res(
        StatusCode::SWITCHING_PROTOCOLS,
        &[("connection", "upgrade"), ("upgrade", "websocket")],
    );
    assert_eq!(
        rules
            .prepare_response(&prepared, &mut resp)
            .unwrap_err()
            .status(),
        StatusCode::BAD_GATEWAY
    );
}

// A non-101 answer to an upgrade request is forwarded as plain HTTP.
#[test]
fn refused_upgrade_stays_http() {
    let rules = ProxyRules::new("http://backend").unwrap();
    let mut r = req(&[("connection", "upgrade"), ("upgrade", "websocket")]);
    let prepared = rules.prepare_request(&mut r, &client()).unwrap();
    for status in [StatusCode::OK, StatusCode::UPGRADE_REQUIRED] {
        let mut resp = res(
            status,
            &[("upgrade", "websocket"), ("connection", "upgrade")],
        );
        assert_eq!(
            rules.prepare_response(&prepared, &mut resp).unwrap(),
            Outcome::Forward
        );
        assert!(resp.headers.is_empty());
    }
}

#[test]
fn h2c_upgrade_refused_with_403() {
    let rules = ProxyRules::new("http://backend").unwrap();
    let mut r = req(&[
        ("connection", "Upgrade, HTTP2-Settings"),
        ("upgrade", "h2c"),
        ("http2-settings", "AAMAAABkAAQAAP__"),
    ]);
    let err = rules.prepare_request(&mut r, &client()).unwrap_err();
    assert_eq!(err.status(), StatusCode::FORBIDDEN);
    assert!(err.to_string().contains("h2c"), "{err}");
}

#[test]
fn connect_is_405_and_http10_is_never_an_upgrade() {
    let rules = ProxyRules::new("http://backend").unwrap();
    let (mut c, ()) = Request::connect("backend:443")
        .body(())
        .unwrap()
        .into_parts();
    assert_eq!(
        rules
            .prepare_request(&mut c, &client())
            .unwrap_err()
            .status(),
        StatusCode::METHOD_NOT_ALLOWED
    );

    let mut r = req(&[("connection", "upgrade"), ("upgrade", "websocket")]);
    r.version = Version::HTTP_10;
    let prepared = rules.prepare_request(&mut r, &client()).unwrap();
    assert!(!prepared.is_upgrade());
    assert!(!r.headers.contains_key("upgrade"));
}

// RFC 9110 section 6.6.2: Trailer is end-to-end; an HTTP/1.1 sender needs it to
// send the announced trailers (Go removes and re-announces it: same effect).
#[test]
fn trailer_announcement_survives_both_ways() {
    let rules = ProxyRules::new("http://backend").unwrap();
    let mut r = req(&[("trailer", "x-checksum"), ("te", "trailers")]);
    rules.prepare_request(&mut r, &client()).unwrap();
    assert_eq!(r.headers["trailer"], "x-checksum");

    let rules = ProxyRules::new("http://backend").unwrap();
    let prepared = rules.prepare_request(&mut req(&[]), &client()).unwrap();
    let mut resp = res(
        StatusCode::OK,
        &[
            ("trailer", "grpc-status, grpc-message"),
            ("transfer-encoding", "chunked"),
        ],
    );
    rules.prepare_response(&prepared, &mut resp).unwrap();
    assert_eq!(
        resp.headers.get("trailer"),
        Some(&HeaderValue::from_static("grpc-status, grpc-message"))
    );
    assert!(!resp.headers.contains_key("transfer-encoding"));
}

// TestReverseProxyQueryParameterSmugglingRewrite: unparsable query parameters are
// removed before forwarding.
#[test]
fn query_parameter_smuggling() {
    let rules = ProxyRules::new("http://backend").unwrap();
    for (raw, clean) in [("a=1&a=2;b=3", "a=1"), ("a=1&a=%zz&b=3", "a=1&b=3")] {
        let (mut r, ()) = Request::get(format!("/?{raw}"))
            .body(())
            .unwrap()
            .into_parts();
        rules.prepare_request(&mut r, &client()).unwrap();
        assert_eq!(r.uri.query(), Some(clean), "{raw}");
    }
}
