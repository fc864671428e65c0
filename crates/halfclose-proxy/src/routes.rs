//! The routing table: which route a request's host and path select. Sans-IO:
//! strings in, a route out; the request path (`router`) and `check-config`
//! use it.
//!
//! The most specific match wins, as nginx's `server_name` and longest
//! `location` prefix decide:
//!
//! 1. The host: an exact name first, then wildcards (`*.example.com`), the
//!    longest first, then routes for any host.
//! 2. Within a host, the longest path prefix.
//!
//! Unlike nginx, a request whose host has routes but none for its path falls
//! through to the less specific hosts (a catch-all route for any host serves
//! `example.com/other` when `example.com` only has `/api`). A prefix matches
//! whole segments, as `ReverseProxyLayer`'s does: `/api` matches `/api` and
//! `/api/...`, not `/apix`; a prefix ending in `/` matches any path that
//! starts with it.
//!
//! Host names are matched without case, port or trailing dot. A wildcard
//! `*.example.com` matches `a.example.com` and `a.b.example.com`, not
//! `example.com` (nginx's rule).
//!
//! Imports nothing of the crate.

use std::collections::HashMap;
use std::fmt;

/// Which hosts a route serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum HostPattern {
    /// Any host (no `host` key).
    Any,
    /// One name, lower case.
    Exact(String),
    /// `*.example.com`: kept as the suffix `.example.com`, lower case.
    Wildcard(String),
}

impl HostPattern {
    /// Reads a route's `host`: a name, or `*.` and a name. Names are DNS
    /// names (letters, digits, `-`, `.`, `_`) or an IP address; no port.
    pub(crate) fn parse(s: &str) -> Result<HostPattern, String> {
        let lower = s.to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower),
        };
        let ip = !wild && (name.parse::<std::net::IpAddr>().is_ok() || is_bracketed_v6(name));
        let valid_name = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !(ip || valid_name) {
            return Err(format!(
                "invalid host {s:?} (a name such as example.com or *.example.com, no port)"
            ));
        }
        Ok(match (wild, ip) {
            (true, _) => HostPattern::Wildcard(format!(".{name}")),
            (false, true) if !name.starts_with('[') && name.contains(':') => {
                HostPattern::Exact(format!("[{name}]"))
            }
            (false, _) => HostPattern::Exact(name.to_owned()),
        })
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(name) => host == name,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(&**suffix),
        }
    }

    /// Greater is more specific.
    fn rank(&self) -> (u8, usize) {
        match self {
            HostPattern::Any => (0, 0),
            HostPattern::Wildcard(suffix) => (1, suffix.len()),
            HostPattern::Exact(_) => (2, 0),
        }
    }
}

fn is_bracketed_v6(s: &str) -> bool {
    s.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .is_some_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok())
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// The host a request names (its URI's authority, else its `Host`), as
/// routes match it: lower case, without port or trailing dot. An IPv6
/// literal keeps its brackets.
pub(crate) fn request_host(authority: &str) -> std::borrow::Cow<'_, str> {
    let host = match authority.rfind(':') {
        // `[::1]:8080`, `example.com:8080`; not `[::1]`.
        Some(i) if !authority[i..].contains(']') => &authority[..i],
        _ => authority,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    match host.bytes().any(|b| b.is_ascii_uppercase()) {
        true => std::borrow::Cow::Owned(host.to_ascii_lowercase()),
        false => std::borrow::Cow::Borrowed(host),
    }
}

/// `/api` matches `/api` and `/api/...` but not `/apix`; a prefix ending in
/// `/` matches any path that starts with it.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// `path` without `prefix` (which [`prefix_matches`] it), still rooted:
/// `/api/users` less `/api` is `/users`, `/api` less `/api` is `/`.
pub(crate) fn strip_prefix<'a>(prefix: &str, path: &'a str) -> std::borrow::Cow<'a, str> {
    let rest = &path[prefix.trim_end_matches('/').len().min(path.len())..];
    match rest.starts_with('/') {
        true => std::borrow::Cow::Borrowed(rest),
        false => std::borrow::Cow::Owned(format!("/{rest}")),
    }
}

/// Routes, in the order they are tried.
#[derive(Debug)]
pub(crate) struct Table<T> {
    /// Routes of one exact host, longest prefix first.
    exact: HashMap<String, Vec<Entry<T>>>,
    /// Wildcard routes, longest suffix first, then longest prefix; and the
    /// routes for any host, longest prefix first.
    rest: Vec<Entry<T>>,
    /// Whether a route names a host.
    by_host: bool,
}

/// One route of a [`Table`].
#[derive(Debug)]
pub(crate) struct Entry<T> {
    pub(crate) host: HostPattern,
    pub(crate) prefix: String,
    pub(crate) value: T,
}

impl<T> Table<T> {
    /// A table of `routes`. Two routes with the same host pattern and prefix
    /// are the caller's to refuse: the first is kept.
    pub(crate) fn new(routes: impl IntoIterator<Item = Entry<T>>) -> Self {
        let mut exact: HashMap<String, Vec<Entry<T>>> = HashMap::new();
        let mut rest = Vec::new();
        for e in routes {
            match &e.host {
                HostPattern::Exact(name) => exact.entry(name.clone()).or_default().push(e),
                _ => rest.push(e),
            }
        }
        // Stable sorts: of two equal routes, the first stays first.
        for list in exact.values_mut() {
            list.sort_by_key(|e| std::cmp::Reverse(e.prefix.len()));
        }
        rest.sort_by_key(|e| std::cmp::Reverse((e.host.rank(), e.prefix.len())));
        let by_host = !exact.is_empty() || rest.iter().any(|e| e.host != HostPattern::Any);
        Table {
            exact,
            rest,
            by_host,
        }
    }

    /// Whether any route names a host: when none does, the request's host
    /// need not be read.
    pub(crate) fn by_host(&self) -> bool {
        self.by_host
    }

    /// The route for `host` (as [`request_host`] gives it; `None` when the
    /// request names none) and `path` (resolved of dot-segments).
    pub(crate) fn find(&self, host: Option<&str>, path: &str) -> Option<&Entry<T>> {
        let exact = host.and_then(|h| self.exact.get(h)).into_iter().flatten();
        exact
            .chain(self.rest.iter().filter(|e| match (&e.host, host) {
                (HostPattern::Any, _) => true,
                (pattern, Some(h)) => pattern.matches(h),
                (_, None) => false,
            }))
            .find(|e| prefix_matches(&e.prefix, path))
    }

    /// Every route, in the order of specificity (exact hosts by name).
    pub(crate) fn entries(&self) -> Vec<&Entry<T>> {
        let mut hosts: Vec<_> = self.exact.iter().collect();
        hosts.sort_by(|a, b| a.0.cmp(b.0));
        hosts
            .into_iter()
            .flat_map(|(_, list)| list)
            .chain(&self.rest)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(routes: &[(&str, &str, u32)]) -> Table<u32> {
        Table::new(routes.iter().map(|&(host, prefix, value)| Entry {
            host: match host {
                "" => HostPattern::Any,
                h => HostPattern::parse(h).unwrap(),
            },
            prefix: prefix.to_owned(),
            value,
        }))
    }

    fn find(t: &Table<u32>, host: &str, path: &str) -> Option<u32> {
        t.find(Some(&request_host(host)), path).map(|e| e.value)
    }

    #[test]
    fn an_exact_host_beats_a_wildcard_which_beats_any_host() {
        let t = table(&[
            ("", "/", 1),
            ("*.example.com", "/", 2),
            ("a.example.com", "/", 3),
        ]);
        assert_eq!(find(&t, "a.example.com", "/x"), Some(3));
        assert_eq!(find(&t, "b.example.com", "/x"), Some(2));
        assert_eq!(find(&t, "other.test", "/x"), Some(1));
    }

    #[test]
    fn the_longest_wildcard_wins() {
        let t = table(&[("*.example.com", "/", 1), ("*.eu.example.com", "/", 2)]);
        assert_eq!(find(&t, "a.eu.example.com", "/"), Some(2));
        assert_eq!(find(&t, "a.us.example.com", "/"), Some(1));
    }

    #[test]
    fn a_wildcard_needs_a_label_before_it_and_takes_several() {
        let t = table(&[("*.example.com", "/", 1)]);
        assert_eq!(find(&t, "example.com", "/"), None);
        assert_eq!(find(&t, "a.b.example.com", "/"), Some(1));
        assert_eq!(find(&t, "aexample.com", "/"), None);
    }

    #[test]
    fn the_longest_prefix_wins_within_a_host() {
        let t = table(&[("h", "/", 1), ("h", "/api", 2), ("h", "/api/v2", 3)]);
        assert_eq!(find(&t, "h", "/"), Some(1));
        assert_eq!(find(&t, "h", "/api"), Some(2));
        assert_eq!(find(&t, "h", "/api/v1/x"), Some(2));
        assert_eq!(find(&t, "h", "/api/v2/x"), Some(3));
        assert_eq!(find(&t, "h", "/apix"), Some(1), "whole segments only");
    }

    #[test]
    fn a_host_without_a_matching_path_falls_through_to_less_specific_hosts() {
        let t = table(&[("h", "/api", 1), ("", "/", 2)]);
        assert_eq!(find(&t, "h", "/api/x"), Some(1));
        assert_eq!(find(&t, "h", "/other"), Some(2));
    }

    #[test]
    fn a_table_without_hosts_needs_no_host() {
        assert!(!table(&[("", "/", 1), ("", "/api", 2)]).by_host());
        assert!(table(&[("", "/", 1), ("*.a.com", "/", 2)]).by_host());
        assert!(table(&[("a.com", "/", 1)]).by_host());
    }

    #[test]
    fn no_route_is_none() {
        let t = table(&[("h", "/", 1), ("g", "/api", 2)]);
        assert_eq!(find(&t, "unknown", "/"), None);
        assert_eq!(find(&t, "g", "/"), None);
        assert_eq!(t.find(None, "/").map(|e| e.value), None);
    }

    #[test]
    fn hosts_match_without_case_port_or_trailing_dot() {
        let t = table(&[("Example.COM", "/", 1), ("::1", "/", 2)]);
        assert_eq!(find(&t, "EXAMPLE.com:8080", "/"), Some(1));
        assert_eq!(find(&t, "example.com.", "/"), Some(1));
        assert_eq!(find(&t, "[::1]:80", "/"), Some(2));
        assert_eq!(find(&t, "[::1]", "/"), Some(2));
    }

    #[test]
    fn a_prefix_ending_in_a_slash_matches_what_starts_with_it() {
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(!prefix_matches("/api/", "/api"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn stripping_keeps_the_path_rooted() {
        assert_eq!(strip_prefix("/api", "/api/users"), "/users");
        assert_eq!(strip_prefix("/api", "/api"), "/");
        assert_eq!(strip_prefix("/api/", "/api/users"), "/users");
        assert_eq!(strip_prefix("/", "/x"), "/x");
    }

    #[test]
    fn host_patterns_refuse_ports_empty_labels_and_odd_bytes() {
        for bad in [
            "",
            "*.",
            "a..b",
            "a.com:80",
            "a b",
            "*.*.a.com",
            "a/b",
            "é.com",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
        for good in [
            "a.com",
            "*.a.com",
            "localhost",
            "127.0.0.1",
            "::1",
            "[::1]",
            "a_b.com.",
        ] {
            assert!(HostPattern::parse(good).is_ok(), "{good:?}");
        }
    }

    /// The obvious definition: of every route whose host and prefix match,
    /// the most specific host, then the longest prefix, then the first.
    fn naive<'a>(routes: &'a [Entry<u32>], host: &str, path: &str) -> Option<&'a Entry<u32>> {
        let mut best: Option<&Entry<u32>> = None;
        for e in routes {
            if e.host.matches(host) && prefix_matches(&e.prefix, path) {
                let better = match best {
                    None => true,
                    Some(b) => (e.host.rank(), e.prefix.len()) > (b.host.rank(), b.prefix.len()),
                };
                if better {
                    best = Some(e);
                }
            }
        }
        best
    }

    fn host_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..4)
            .prop_map(|labels| labels.join("."))
    }

    fn route_strategy() -> impl Strategy<Value = (String, String)> {
        let host = prop_oneof![
            Just(String::new()),
            host_strategy(),
            host_strategy().prop_map(|h| format!("*.{h}")),
        ];
        let prefix = prop::collection::vec(prop::sample::select(vec!["x", "y", ""]), 0..3)
            .prop_map(|segs| format!("/{}", segs.join("/")));
        (host, prefix)
    }

    proptest! {
        #[test]
        fn the_table_picks_what_the_naive_definition_picks(
            routes in prop::collection::vec(route_strategy(), 0..12),
            host in host_strategy(),
            path in prop::collection::vec(prop::sample::select(vec!["x", "y", "z", ""]), 0..4)
                .prop_map(|segs| format!("/{}", segs.join("/"))),
        ) {
            // Distinct (host, prefix) pairs, as the config ensures.
            let mut seen = std::collections::HashSet::new();
            let entries: Vec<Entry<u32>> = routes
                .into_iter()
                .filter(|r| seen.insert(r.clone()))
                .enumerate()
                .map(|(i, (h, p))| Entry {
                    host: if h.is_empty() { HostPattern::Any } else { HostPattern::parse(&h).unwrap() },
                    prefix: p,
                    value: i as u32,
                })
                .collect();
            let want = naive(&entries, &host, &path).map(|e| e.value);
            let copy: Vec<Entry<u32>> = entries
                .iter()
                .map(|e| Entry { host: e.host.clone(), prefix: e.prefix.clone(), value: e.value })
                .collect();
            let t = Table::new(copy);
            prop_assert_eq!(t.find(Some(&host), &path).map(|e| e.value), want);
        }
    }
}
