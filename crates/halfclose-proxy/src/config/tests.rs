//! One test per rule of the config file (see `docs/config.md`).

use std::path::Path;
use std::time::Duration;

use super::dns::DnsServer;
use super::*;
use crate::cli::ServeArgs;

/// The file of issue 21, as written: programs and docs outside depend on it.
pub(super) const AS_WRITTEN: &str = r#"
[[listener]]
address = "127.0.0.1:8080"

[[listener]]
address = "127.0.0.1:8443"
tls = [{ cert = "a.pem", key = "a-key.pem" }, { cert = "b.pem", key = "b-key.pem" }]

[[route]]
host = "ws.example.test"
upstream = "chat"

[[route]]
host = "example.test"
path = "/api"
strip_prefix = true
upstream = "api"

[upstream.chat]
servers = ["http://127.0.0.1:3001"]

[upstream.api]
servers = ["http://127.0.0.1:3002", "http://127.0.0.1:3003"]
"#;

fn defaults() -> Defaults {
    Defaults::from_args(&ServeArgs::defaults())
}

fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    Config::parse(text, Path::new("/etc/halfclose"), &defaults())
}

/// The errors of `text`, which must not parse.
fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text) {
        Ok(c) => panic!("parsed: {c:?}"),
        Err(e) => e,
    }
}

/// The one error of `text`: its line and message.
fn error(text: &str) -> (Option<usize>, String) {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:?}");
    (e[0].line, e[0].message.clone())
}

const MINIMAL: &str = r#"
[[listener]]
address = "127.0.0.1:8080"

[[route]]
upstream = "app"

[upstream.app]
servers = ["http://127.0.0.1:3000"]
"#;

#[cfg(feature = "tls")]
#[test]
fn the_file_as_written_parses() {
    let c = parse(AS_WRITTEN).unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert!(c.listeners[0].tls.is_empty() && c.listeners[0].http2);
    let tls = &c.listeners[1].tls;
    assert_eq!(tls.len(), 2);
    // Relative to the file's directory.
    assert_eq!(tls[0].cert, Path::new("/etc/halfclose/a.pem"));
    assert_eq!(tls[1].key, Path::new("/etc/halfclose/b-key.pem"));
    assert_eq!(tls[0].line, Some(7));
    assert_eq!(c.routes.len(), 2);
    assert_eq!(
        c.routes[0].host,
        HostPattern::Exact("ws.example.test".into())
    );
    assert_eq!(c.routes[0].path, "/");
    assert!(!c.routes[0].strip_prefix);
    assert_eq!(c.routes[1].path, "/api");
    assert!(c.routes[1].strip_prefix);
    assert_eq!(c.groups["api"].servers.len(), 2);
    assert_eq!(c.drain_timeout, None);
}

#[test]
fn a_syntax_error_says_its_line() {
    let (line, msg) = error("[[listener]]\naddress = \"127.0.0.1:80\"\n[[route]\n");
    assert_eq!(line, Some(3), "{msg}");
}

#[test]
fn an_unknown_key_is_an_error_with_its_line() {
    let text = MINIMAL.replace(
        "upstream = \"app\"",
        "upstream = \"app\"\nuptsream_typo = 1",
    );
    let (line, msg) = error(&text);
    assert_eq!(line, Some(7));
    assert!(msg.contains("uptsream_typo"), "{msg}");
    let text = MINIMAL.replace("servers =", "server_list = []\nservers =");
    let (_, msg) = error(&text);
    assert!(msg.contains("server_list"), "{msg}");
    let (_, msg) = error(&format!("colour = \"blue\"\n{MINIMAL}"));
    assert!(msg.contains("colour"), "{msg}");
}

#[test]
fn a_route_to_a_missing_group_is_an_error() {
    let (line, msg) = error(&MINIMAL.replace("upstream = \"app\"", "upstream = \"ap\""));
    assert_eq!(line, Some(6));
    assert!(
        msg.contains("\"ap\"") && msg.contains("defined: app"),
        "{msg}"
    );
}

#[test]
fn listeners_and_routes_are_required() {
    let e = errors("[upstream.app]\nservers = [\"http://127.0.0.1:3000\"]\n");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].message.contains("[[listener]]"));
    assert!(e[1].message.contains("[[route]]"));
}

#[test]
fn a_listener_address_must_parse_and_be_given_once() {
    let (line, msg) = error(&MINIMAL.replace("127.0.0.1:8080", "localhost:80"));
    assert_eq!(line, Some(3));
    assert!(msg.contains("invalid address"), "{msg}");
    let twice = MINIMAL.replace(
        "[[route]]",
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n\n[[route]]",
    );
    let (line, msg) = error(&twice);
    assert_eq!(line, Some(5));
    assert!(msg.contains("twice"), "{msg}");
    // Port 0 twice is two ports, each its own listener across reloads.
    let zeros = twice.replace("8080", "0");
    let c = parse(&zeros).unwrap();
    assert_eq!(c.listeners[0].key, ("127.0.0.1:0".parse().unwrap(), 0));
    assert_eq!(c.listeners[1].key, ("127.0.0.1:0".parse().unwrap(), 1));
}

#[test]
fn an_empty_tls_list_is_an_error() {
    let (line, msg) = error(&MINIMAL.replace(
        "address = \"127.0.0.1:8080\"",
        "address = \"127.0.0.1:8080\"\ntls = []",
    ));
    assert_eq!(line, Some(4));
    assert!(
        msg.contains("no certificate") || msg.contains("no TLS"),
        "{msg}"
    );
}

#[test]
fn hosts_are_names_or_wildcards_without_port() {
    for bad in ["example.com:80", "*.*.x", "a b", ""] {
        let text = MINIMAL.replace("[[route]]", &format!("[[route]]\nhost = {bad:?}"));
        let (line, msg) = error(&text);
        assert_eq!(line, Some(6), "{bad}");
        assert!(msg.contains("invalid host"), "{msg}");
    }
    let text = MINIMAL.replace("[[route]]", "[[route]]\nhost = \"*.Example.com\"");
    assert_eq!(
        parse(&text).unwrap().routes[0].host,
        HostPattern::Wildcard(".example.com".into())
    );
}

#[test]
fn paths_are_rooted_prefixes_without_query_or_dot_segments() {
    for bad in ["api", "/api?x=1", "/a/../b", "/a/./b", "/a b"] {
        let text = MINIMAL.replace("[[route]]", &format!("[[route]]\npath = {bad:?}"));
        let (line, msg) = error(&text);
        assert_eq!(line, Some(6), "{bad}");
        assert!(msg.contains("path"), "{msg}");
    }
}

#[test]
fn two_routes_for_the_same_host_and_path_are_an_error() {
    let text = MINIMAL.replace(
        "[upstream.app]",
        "[[route]]\nupstream = \"app\"\npath = \"/\"\n\n[upstream.app]",
    );
    let (line, msg) = error(&text);
    // The second route's header.
    assert_eq!(line, Some(8));
    assert!(msg.contains("second route"), "{msg}");
}

#[test]
fn strip_prefix_needs_a_path() {
    let text = MINIMAL.replace("[[route]]", "[[route]]\nstrip_prefix = true");
    let (line, msg) = error(&text);
    assert_eq!(line, Some(6));
    assert!(msg.contains("strip_prefix"), "{msg}");
    let root = MINIMAL.replace("[[route]]", "[[route]]\npath = \"/\"\nstrip_prefix = true");
    assert!(error(&root).1.contains("other than /"));
}

#[test]
fn a_group_needs_valid_servers() {
    let (line, msg) = error(&MINIMAL.replace("[\"http://127.0.0.1:3000\"]", "[]"));
    assert_eq!(line, Some(9));
    assert!(msg.contains("no servers"), "{msg}");
    let (line, msg) = error(&MINIMAL.replace("http://127.0.0.1:3000", "ftp://x"));
    assert_eq!(line, Some(9));
    assert!(msg.contains("invalid upstream"), "{msg}");
}

#[test]
fn durations_and_sizes_are_checked_and_zero_is_off() {
    let text = MINIMAL.replace(
        "servers =",
        "read_timeout = \"soon\"\nresponse_timeout = \"0\"\nservers =",
    );
    let (line, msg) = error(&text);
    assert_eq!(line, Some(9));
    assert!(msg.starts_with("read_timeout: invalid duration"), "{msg}");
    let text = MINIMAL.replace("[[route]]", "[[route]]\nmax_request_body = \"ten\"");
    let (_, msg) = error(&text);
    assert!(msg.starts_with("max_request_body"), "{msg}");

    let text = MINIMAL
        .replace(
            "[[route]]",
            "[[route]]\nmax_request_body = \"1m\"\ntunnel_idle_timeout = \"0\"",
        )
        .replace(
            "servers =",
            "response_timeout = \"0\"\nconnect_timeout = \"250ms\"\nservers =",
        );
    let c = parse(&text).unwrap();
    let r = &c.routes[0].options;
    assert_eq!(r.max_request_body, Some(1 << 20));
    assert_eq!(r.tunnel_idle_timeout, None);
    let g = &c.groups["app"].options;
    assert_eq!(g.response_timeout, None);
    assert_eq!(g.connect_timeout, Some(Duration::from_millis(250)));
    let text = MINIMAL.replace("[[route]]", "[[route]]\nmax_request_body = 4096");
    assert_eq!(
        parse(&text).unwrap().routes[0].options.max_request_body,
        Some(4096)
    );
}

#[test]
fn keys_left_out_take_the_flags_values() {
    let args = crate::cli::Cli::try_parse_from([
        "halfclose-proxy",
        "--preserve-host",
        "--read-timeout",
        "5s",
        "--allow-upgrade",
        "websocket",
    ])
    .unwrap()
    .serve;
    let d = Defaults::from_args(&args);
    let c = Config::parse(MINIMAL, Path::new("."), &d).unwrap();
    assert!(c.routes[0].options.preserve_host);
    assert_eq!(c.routes[0].options.allow_upgrade, ["websocket"]);
    assert_eq!(
        c.groups["app"].options.read_timeout,
        Some(Duration::from_secs(5))
    );
    // And a key overrides its flag.
    let text = MINIMAL.replace("[[route]]", "[[route]]\npreserve_host = false");
    let c = Config::parse(&text, Path::new("."), &d).unwrap();
    assert!(!c.routes[0].options.preserve_host);
}

#[test]
fn every_error_is_reported_at_once() {
    let text = r#"
[[listener]]
address = "nowhere"

[[route]]
host = "bad host"
upstream = "app"

[[route]]
upstream = "missing"

[upstream.app]
servers = []
"#;
    let e = errors(text);
    let lines: Vec<_> = e.iter().map(|e| e.line).collect();
    assert_eq!(lines, [Some(3), Some(13), Some(6), Some(10)], "{e:?}");
}

#[test]
fn error_lines_name_the_file_and_line() {
    let e = Errors {
        file: Some("proxy.toml".into()),
        list: vec![
            ConfigError {
                line: Some(3),
                message: "bad".into(),
            },
            ConfigError {
                line: None,
                message: "worse".into(),
            },
        ],
    };
    assert_eq!(e.lines(), ["proxy.toml:3: bad", "proxy.toml: worse"]);
    assert_eq!(e.to_string(), "proxy.toml:3: bad; proxy.toml: worse");
}

#[cfg(feature = "tls")]
#[test]
fn a_missing_certificate_file_is_an_error_with_its_line() {
    let dir = std::env::temp_dir().join(format!("halfclose-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("proxy.toml");
    std::fs::write(&file, AS_WRITTEN).unwrap();
    let e = Config::load(&file, &defaults()).unwrap_err();
    assert_eq!(e.list.len(), 1, "{e}");
    assert_eq!(e.list[0].line, Some(7));
    assert!(e.list[0].message.contains("a.pem"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

use clap::Parser as _;

#[test]
fn proxy_protocol_and_its_trusted_networks_are_checked() {
    let on = MINIMAL.replace(
        "address = \"127.0.0.1:8080\"",
        "address = \"127.0.0.1:8080\"\nproxy_protocol = true\ntrusted = [\"10.0.0.0/8\", \"2001:db8::1\"]",
    );
    let c = parse(&on).unwrap();
    let trusted = c.listeners[0].proxy_protocol.as_ref().unwrap();
    assert_eq!(trusted.len(), 2);
    assert!(trusted[0].contains("10.1.2.3".parse().unwrap()));
    let bad = on.replace("10.0.0.0/8", "10.0.0.0/99");
    let (line, msg) = error(&bad);
    assert_eq!(line, Some(5));
    assert!(msg.contains("invalid network"), "{msg}");
    let without = on.replace("proxy_protocol = true\n", "");
    let (line, msg) = error(&without);
    assert_eq!(line, Some(4));
    assert!(msg.contains("needs proxy_protocol"), "{msg}");
    // Off by default; the flags turn it on for every listener.
    assert_eq!(parse(MINIMAL).unwrap().listeners[0].proxy_protocol, None);
    let args = crate::cli::Cli::try_parse_from([
        "halfclose-proxy",
        "--proxy-protocol",
        "--proxy-protocol-trusted",
        "192.0.2.0/24",
    ])
    .unwrap()
    .serve;
    let c = Config::parse(MINIMAL, Path::new("."), &Defaults::from_args(&args)).unwrap();
    let trusted = c.listeners[0].proxy_protocol.as_ref().unwrap();
    assert!(trusted[0].contains("192.0.2.9".parse().unwrap()));
    let off = MINIMAL.replace(
        "address = \"127.0.0.1:8080\"",
        "address = \"127.0.0.1:8080\"\nproxy_protocol = false",
    );
    let c = Config::parse(&off, Path::new("."), &Defaults::from_args(&args)).unwrap();
    assert_eq!(c.listeners[0].proxy_protocol, None);
}

#[test]
fn dns_servers_name_a_host_and_port() {
    let ok = |s: &str| dns_server(s).unwrap().unwrap();
    assert_eq!(
        ok("dns://chat.default.svc.cluster.local:8080"),
        DnsServer {
            host: "chat.default.svc.cluster.local".into(),
            port: 8080,
            https: false
        }
    );
    assert_eq!(ok("dns://chat").port, 80);
    assert_eq!(ok("dns+https://chat").port, 443);
    assert!(ok("dns+https://chat:8443/").https);
    assert_eq!(ok("dns://[::1]:81").host, "::1");
    assert_eq!(ok("dns://[::1]:81").uri(), "http://[::1]:81");
    assert!(dns_server("http://chat").is_none());
    for bad in [
        "dns://",
        "dns://chat:0",
        "dns://chat:99999",
        "dns://ch at:80",
        "dns://chat:x",
    ] {
        assert!(dns_server(bad).unwrap().is_err(), "{bad}");
    }
    // In a group, next to fixed servers.
    let text = MINIMAL.replace(
        "servers = [\"http://127.0.0.1:3000\"]",
        "servers = [\"http://127.0.0.1:3000\", \"dns://chat.test:8080\"]\ndns_interval = \"2s\"",
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.groups["app"].options.dns_interval, Duration::from_secs(2));
    let (line, msg) = error(&MINIMAL.replace("http://127.0.0.1:3000", "dns://bad host"));
    assert_eq!(line, Some(9));
    assert!(msg.contains("dns://"), "{msg}");
}
