//! Property tests over generated header sets.

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Version};
use proptest::prelude::*;
use proptest::sample::select;
use proxy_core::{ClientInfo, ProxyRules, hop_by_hop_fields};

/// Names a client might send: hop-by-hop ones, forwarding ones, ordinary ones.
const POOL: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
    "via",
    "host",
    "x-a",
    "x-b",
    "x-c",
    "content-type",
    "accept",
    "cookie",
    "sec-websocket-key",
];

/// Fields the proxy itself sets after removal; naming them in Connection cannot
/// remove them.
const SET_BY_PROXY: &[&str] = &[
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

fn mixed_case(name: &'static str, mask: u32) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 32) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// A Connection value: tokens from the pool in mixed case, odd spacing, empty elements.
fn connection_value() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            select(POOL),
            any::<u32>(),
            0usize..3,
            0usize..3,
            any::<bool>(),
        ),
        0..6,
    )
    .prop_map(|els| {
        let mut parts = Vec::new();
        for (name, mask, pre, post, empty) in els {
            if empty {
                parts.push(" ".repeat(pre));
            }
            let token = if name == "upgrade" && mask % 3 == 0 {
                "Upgrade"
            } else {
                name
            };
            parts.push(format!(
                "{}{}{}",
                " ".repeat(pre),
                mixed_case(token, mask),
                " ".repeat(post)
            ));
        }
        parts.join(",")
    })
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("trailers".to_string()),
        Just("gzip, trailers".to_string()),
        Just("websocket".to_string()),
        Just("h2c".to_string()),
        Just("upgrade".to_string()),
        Just("keep-alive, Upgrade".to_string()),
        "[a-z0-9 .=]{0,12}",
    ]
}

#[derive(Debug, Clone)]
struct Case {
    headers: Vec<(&'static str, String)>,
    connection: Vec<String>,
    version: Version,
    ip: [u8; 4],
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((select(POOL), value()), 0..20),
        prop::collection::vec(connection_value(), 0..3),
        select(vec![Version::HTTP_10, Version::HTTP_11, Version::HTTP_2]),
        any::<[u8; 4]>(),
    )
        .prop_map(|(headers, connection, version, ip)| Case {
            headers,
            connection,
            version,
            ip,
        })
}

fn build(case: &Case) -> http::request::Parts {
    let mut h = HeaderMap::new();
    for (k, v) in &case.headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.append(HeaderName::from_static(k), v);
        }
    }
    for c in &case.connection {
        h.append("connection", HeaderValue::from_str(c).unwrap());
    }
    let (mut parts, ()) = Request::builder()
        .method(Method::GET)
        .uri("/p?q=1")
        .body(())
        .unwrap()
        .into_parts();
    parts.headers = h;
    parts.version = case.version;
    parts
}

/// Lowercased names listed in the original Connection lines.
fn listed(parts: &http::request::Parts) -> Vec<String> {
    parts
        .headers
        .get_all("connection")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    // Differential: the one-walk removal against the plain rule (every field
    // Connection names, then each fixed hop-by-hop name, removed by name).
    #[test]
    fn remove_hop_by_hop_matches_removing_every_name(case in case()) {
        let original = build(&case);
        let mut walked = original.headers.clone();
        proxy_core::remove_hop_by_hop(&mut walked);
        let mut model = original.headers.clone();
        for name in listed(&original) {
            model.remove(name.as_str());
        }
        for name in hop_by_hop_fields() {
            model.remove(name);
        }
        prop_assert_eq!(walked, model);
    }

    #[test]
    fn no_hop_by_hop_field_survives(case in case()) {
        let rules = ProxyRules::new("http://upstream:9000").unwrap();
        let client = ClientInfo::new(case.ip.into());
        let original = build(&case);
        let original_host = original.headers.get("host").cloned();
        let named = listed(&original);
        let mut parts = original.clone();
        let Ok(prepared) = rules.prepare_request(&mut parts, &client) else {
            // Only a refused upgrade (h2c) may fail here.
            prop_assert!(original.headers.get_all("upgrade").iter().any(|v| v.to_str().unwrap().contains("h2c")));
            return Ok(());
        };
        for name in hop_by_hop_fields() {
            let Some(v) = parts.headers.get(name) else { continue };
            match name.as_str() {
                "connection" => prop_assert!(prepared.is_upgrade() && v == "upgrade"),
                "upgrade" => prop_assert!(prepared.is_upgrade()),
                "te" => prop_assert_eq!(v, "trailers"),
                other => prop_assert!(false, "{} survived", other),
            }
        }
        for name in &named {
            if SET_BY_PROXY.contains(&name.as_str()) || ["connection", "upgrade", "te"].contains(&name.as_str()) {
                continue;
            }
            prop_assert!(!parts.headers.contains_key(name.as_str()), "{} named in Connection survived", name);
        }
        // The forwarding headers are present and right, whatever the client sent.
        let ip = std::net::IpAddr::from(case.ip).to_string();
        prop_assert_eq!(parts.headers.get_all("x-forwarded-for").iter().collect::<Vec<_>>(), vec![ip.as_str()]);
        prop_assert_eq!(parts.headers.get_all("x-forwarded-proto").iter().collect::<Vec<_>>(), vec!["http"]);
        match original_host {
            Some(h) => prop_assert_eq!(parts.headers.get("x-forwarded-host"), Some(&h)),
            None => prop_assert!(!parts.headers.contains_key("x-forwarded-host")),
        }
        prop_assert_eq!(&parts.headers["host"], "upstream:9000");
        prop_assert!(!parts.headers.contains_key("forwarded"));
        prop_assert_eq!(parts.uri.to_string(), "http://upstream:9000/p?q=1");
        // HTTP/1.0 and HTTP/2 requests are never upgrades.
        if case.version != Version::HTTP_11 {
            prop_assert!(!prepared.is_upgrade());
        }
    }

    #[test]
    fn prepare_request_is_deterministic(case in case()) {
        let rules = ProxyRules::new("http://upstream:9000/base").unwrap();
        let client = ClientInfo::new(case.ip.into());
        let mut one = build(&case);
        let mut two = build(&case);
        let r1 = rules.prepare_request(&mut one, &client).map(|p| p.is_upgrade()).map_err(|e| e.status());
        let r2 = rules.prepare_request(&mut two, &client).map(|p| p.is_upgrade()).map_err(|e| e.status());
        prop_assert_eq!(r1, r2);
        prop_assert_eq!(one.headers, two.headers);
        prop_assert_eq!(one.uri, two.uri);
    }
}
