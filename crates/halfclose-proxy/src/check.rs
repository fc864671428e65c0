//! `halfclose-proxy check-config FILE`: reads and checks a config file as
//! the proxy would at start (certificate and CA files included), and prints
//! its routing table (listeners, then routes in the order they are tried,
//! each with its upstreams and options), or every error with its line.
//!
//! Imports: `cli` (the flags' defaults), `config` and `routes`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::ServeArgs;
use crate::config::{Config, Defaults, RouteOptions};
use crate::routes::{Entry, HostPattern, Table};

/// Exit status 0 when `file` is a valid config, 1 when not.
pub(crate) fn run(file: &Path) -> ExitCode {
    let defaults = Defaults::from_args(&ServeArgs::defaults());
    match Config::load(file, &defaults) {
        Ok(config) => {
            say!("{}: ok", file.display());
            say!("{}", routing_table(&config).trim_end());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for line in errors.lines() {
                eprintln!("{line}");
            }
            eprintln!(
                "{}: {} error(s); not a valid config",
                file.display(),
                errors.list.len()
            );
            ExitCode::FAILURE
        }
    }
}

fn time(d: Option<Duration>) -> String {
    match d {
        None => "off".into(),
        Some(d) if d.as_secs() >= 3600 && d.as_secs() % 3600 == 0 => {
            format!("{}h", d.as_secs() / 3600)
        }
        Some(d) if d.as_secs() >= 60 && d.as_secs() % 60 == 0 => format!("{}m", d.as_secs() / 60),
        Some(d) if d.subsec_millis() == 0 => format!("{}s", d.as_secs()),
        Some(d) => format!("{}ms", d.as_millis()),
    }
}

fn options(o: &RouteOptions) -> String {
    let upgrades = match o.allow_upgrade.as_slice() {
        [] => "all but h2c".to_owned(),
        l => l.join(","),
    };
    let mut s = format!(
        "upgrades {upgrades}; tunnel idle {}, half-close {}; host {}; ",
        time(o.tunnel_idle_timeout),
        time(o.tunnel_half_close_timeout),
        if o.preserve_host {
            "client's"
        } else {
            "upstream's"
        },
    );
    s.push_str(match (o.trust_forwarded, o.forwarded) {
        (false, false) => "x-forwarded-*",
        (false, true) => "x-forwarded-* and forwarded",
        (true, false) => "x-forwarded-* (appended)",
        (true, true) => "x-forwarded-* and forwarded (appended)",
    });
    if let Some(via) = &o.via {
        let _ = write!(s, "; via {via}");
    }
    let _ = write!(
        s,
        "; body limit {}",
        o.max_request_body
            .map_or("none".to_owned(), |n| format!("{n} bytes"))
    );
    s
}

/// The routing table of `config`, as `check-config` prints it.
pub(crate) fn routing_table(config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} listener(s), {} route(s), {} upstream group(s)",
        config.listeners.len(),
        config.routes.len(),
        config.groups.len()
    );
    let _ = writeln!(out, "listeners:");
    for l in &config.listeners {
        let scheme = if l.tls.is_empty() { "http" } else { "https" };
        let _ = write!(
            out,
            "  {scheme}://{}  {}",
            l.address,
            if l.http2 { "http/1.1+h2" } else { "http/1.1" }
        );
        match l.proxy_protocol.as_deref() {
            Some([]) => out.push_str("  PROXY protocol from any source"),
            Some(nets) => {
                let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
                let _ = write!(out, "  PROXY protocol from {}", nets.join(", "));
            }
            None => {}
        }
        #[cfg(feature = "tls")]
        if let Some(certs) = &l.certificates {
            let _ = write!(out, "  certificates: {}", certs.describe());
        }
        out.push('\n');
    }
    let _ = writeln!(out, "routes, in the order they are tried:");
    let table = Table::new(config.routes.iter().enumerate().map(|(i, r)| Entry {
        host: r.host.clone(),
        prefix: r.path.clone(),
        value: i,
    }));
    let entries = table.entries();
    let host_w = entries
        .iter()
        .map(|e| e.host.to_string().len())
        .max()
        .unwrap_or(4)
        .max(4);
    let path_w = entries
        .iter()
        .map(|e| e.prefix.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "  {:host_w$}  {:path_w$}  STRIP  UPSTREAM",
        "HOST", "PATH"
    );
    for e in entries {
        let r = &config.routes[e.value];
        let servers = config
            .groups
            .get(&r.group)
            .map(|g| g.servers.join(", "))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:host_w$}  {:path_w$}  {:5}  {} ({servers})",
            r.host.to_string(),
            r.path,
            if r.strip_prefix { "yes" } else { "no" },
            r.group,
        );
        let _ = writeln!(out, "  {:host_w$}  {}", "", options(&r.options));
    }
    let catch_all = config
        .routes
        .iter()
        .any(|r| r.host == HostPattern::Any && r.path == "/");
    if !catch_all {
        let _ = writeln!(out, "other hosts and paths: 404");
    }
    for (name, g) in &config.groups {
        let o = &g.options;
        let _ = writeln!(
            out,
            "upstream {name}: {}; connect {}, response {}, read {}; {} in flight (queue {}); {} idle for {}{}{}",
            g.servers.join(", "),
            time(o.connect_timeout),
            time(o.response_timeout),
            time(o.read_timeout),
            o.max_connections
                .map_or("--max-connections".to_owned(), |n| n.to_string()),
            time(Some(o.queue_timeout)),
            o.max_idle,
            time(o.idle_timeout),
            if o.http2 { "; http2" } else { "" },
            match &o.health_check {
                Some(_)
                    if g.servers.len() < 2
                        && !g
                            .servers
                            .iter()
                            .any(|s| crate::config::dns_server(s).is_some()) =>
                {
                    "; no health check (one server)".to_owned()
                }
                Some(p) => format!(
                    "; health check GET {p} every {}",
                    time(Some(o.health_check_interval))
                ),
                None => String::new(),
            },
        );
        if !config.routes.iter().any(|r| &r.group == name) {
            let _ = writeln!(out, "  (no route uses it)");
        }
    }
    if let Some(d) = config.drain_timeout {
        let _ = writeln!(
            out,
            "after a reload, older tunnels end {} later",
            time(Some(d))
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[listener]]
address = "127.0.0.1:8080"

[[route]]
upstream = "app"

[upstream.app]
servers = ["http://127.0.0.1:3000"]
"#;

    #[test]
    fn the_routing_table_lists_routes_most_specific_first() {
        let text = format!(
            "{MINIMAL}\n[[route]]\nhost = \"example.test\"\npath = \"/api\"\nstrip_prefix = true\nupstream = \"app\"\n"
        );
        let table = routing_table(
            &Config::parse(
                &text,
                Path::new("."),
                &Defaults::from_args(&ServeArgs::defaults()),
            )
            .unwrap(),
        );
        let api = table.find("example.test  /api").expect(&table);
        let any = table.find("*             /").expect(&table);
        assert!(api < any, "{table}");
        // A catch-all route leaves no 404; without one, the rest is 404.
        assert!(!table.contains("404"), "{table}");
        let text = text.replace(
            "[[route]]\nupstream = \"app\"",
            "[[route]]\nhost = \"a.test\"\nupstream = \"app\"",
        );
        let table = routing_table(
            &Config::parse(
                &text,
                Path::new("."),
                &Defaults::from_args(&ServeArgs::defaults()),
            )
            .unwrap(),
        );
        assert!(table.contains("other hosts and paths: 404"), "{table}");
    }
}
