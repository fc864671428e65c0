//! The text of the access log's lines: a request's and a tunnel's record,
//! as JSON or in Apache's common log format, with every field a client
//! controls escaped; the time text, formatted once per second; numbers and
//! addresses without `core::fmt` (the line is written on the request path).
//!
//! Imports nothing of the crate; no IO.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The text of the current second, formatted once per second.
#[derive(Default)]
pub(super) struct Clock {
    second: u64,
    /// `2026-12-03T02:53:30`.
    rfc3339: Vec<u8>,
    /// `03/Dec/2026:02:53:30 +0000`.
    clf: Vec<u8>,
}

impl Clock {
    fn at(&mut self, t: SystemTime) -> u32 {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        if since.as_secs() != self.second || self.rfc3339.is_empty() {
            self.second = since.as_secs();
            self.rfc3339.clear();
            self.clf.clear();
            rfc3339_seconds(since.as_secs(), &mut self.rfc3339);
            clf_seconds(since.as_secs(), &mut self.clf);
        }
        since.subsec_millis()
    }

    /// `2026-12-03T02:53:30.123Z`.
    fn rfc3339(&mut self, t: SystemTime, out: &mut Vec<u8>) {
        let ms = self.at(t);
        out.extend_from_slice(&self.rfc3339);
        out.push(b'.');
        out.extend_from_slice(&[
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
        ]);
        out.push(b'Z');
    }

    /// `03/Dec/2026:02:53:30 +0000`.
    fn clf(&mut self, t: SystemTime, out: &mut Vec<u8>) {
        self.at(t);
        out.extend_from_slice(&self.clf);
    }
}

/// `n` in decimal, without `core::fmt`: two digits at a time.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    if n < 10 {
        out.push(b'0' + n as u8);
        return;
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        digits[i] = b'0' + n as u8;
    }
    out.extend_from_slice(&digits[i..]);
}

/// An address, IPv4 without `core::fmt`.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// What a request's line says.
pub(crate) struct RequestRecord {
    pub(crate) time: SystemTime,
    pub(crate) request_id: http::HeaderValue,
    pub(crate) client: Option<IpAddr>,
    pub(crate) method: http::Method,
    /// The URI's authority, else the `Host` header (clones share bytes).
    pub(crate) host: Option<http::HeaderValue>,
    /// The request target as the client sent it (its path and query are
    /// logged).
    pub(crate) target: http::Uri,
    pub(crate) version: http::Version,
    pub(crate) status: u16,
    /// The route's upstream group; `None` when no route matched.
    pub(crate) upstream: Option<Arc<str>>,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) head: Duration,
    pub(crate) duration: Duration,
}

impl RequestRecord {
    fn host_str(&self) -> &str {
        self.host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
    }

    fn target_str(&self) -> &str {
        self.target.path_and_query().map_or("/", |pq| pq.as_str())
    }

    pub(super) fn json(&self, out: &mut Vec<u8>, clock: &mut Clock) {
        out.extend_from_slice(b"{\"time\":\"");
        clock.rfc3339(self.time, out);
        out.extend_from_slice(b"\",\"type\":\"request\",\"request_id\":");
        json_str(self.request_id.to_str().unwrap_or(""), out);
        out.extend_from_slice(b",\"client\":");
        json_ip(self.client, out);
        out.extend_from_slice(b",\"method\":");
        json_str(self.method.as_str(), out);
        out.extend_from_slice(b",\"host\":");
        json_str(self.host_str(), out);
        out.extend_from_slice(b",\"path\":");
        json_str(self.target_str(), out);
        out.extend_from_slice(b",\"protocol\":\"");
        out.extend_from_slice(version(self.version).as_bytes());
        out.extend_from_slice(b"\",\"status\":");
        push_u64(out, u64::from(self.status));
        out.extend_from_slice(b",\"upstream\":");
        match &self.upstream {
            Some(u) => json_str(u, out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"bytes_in\":");
        push_u64(out, self.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        push_u64(out, self.bytes_out);
        out.extend_from_slice(b",\"head_us\":");
        push_u64(out, self.head.as_micros() as u64);
        out.extend_from_slice(b",\"duration_us\":");
        push_u64(out, self.duration.as_micros() as u64);
        out.push(b'}');
    }

    /// `client - - [time] "METHOD target PROTOCOL" status bytes_out`, then
    /// host, upstream, bytes in, microseconds to the head and in all, and
    /// the request id.
    pub(super) fn common(&self, out: &mut Vec<u8>, clock: &mut Clock) {
        match self.client {
            Some(ip) => push_ip(out, ip),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" - - [");
        clock.clf(self.time, out);
        out.extend_from_slice(b"] \"");
        clf_str(self.method.as_str(), out);
        out.push(b' ');
        clf_str(self.target_str(), out);
        out.push(b' ');
        out.extend_from_slice(version(self.version).as_bytes());
        out.extend_from_slice(b"\" ");
        push_u64(out, u64::from(self.status));
        out.push(b' ');
        push_u64(out, self.bytes_out);
        out.extend_from_slice(b" \"");
        clf_str(self.host_str(), out);
        out.extend_from_slice(b"\" ");
        match &self.upstream {
            Some(u) => clf_str(u, out),
            None => out.push(b'-'),
        }
        for n in [
            self.bytes_in,
            self.head.as_micros() as u64,
            self.duration.as_micros() as u64,
        ] {
            out.push(b' ');
            push_u64(out, n);
        }
        out.push(b' ');
        clf_str(self.request_id.to_str().unwrap_or("-"), out);
    }
}

/// What a tunnel's line says.
pub(super) struct TunnelRecord<'a> {
    pub(super) time: SystemTime,
    pub(super) upstream: &'a str,
    pub(super) end: &'a proxy_tower::TunnelEnd,
}

impl TunnelRecord<'_> {
    pub(super) fn json(&self, out: &mut Vec<u8>, clock: &mut Clock) {
        let e = self.end;
        out.extend_from_slice(b"{\"time\":\"");
        clock.rfc3339(self.time, out);
        out.extend_from_slice(b"\",\"type\":\"tunnel\",\"request_id\":");
        match e.request_id.as_ref().and_then(|v| v.to_str().ok()) {
            Some(id) => json_str(id, out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"client\":");
        json_ip(e.client, out);
        out.extend_from_slice(b",\"upstream\":");
        json_str(self.upstream, out);
        out.extend_from_slice(b",\"server\":");
        json_str(&e.upstream.to_string(), out);
        out.extend_from_slice(b",\"protocol\":");
        match &e.protocol {
            Some(p) => json_str(p, out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"client_to_upstream\":");
        push_u64(out, e.client_to_upstream);
        out.extend_from_slice(b",\"upstream_to_client\":");
        push_u64(out, e.upstream_to_client);
        out.extend_from_slice(b",\"first_eof\":\"");
        out.extend_from_slice(e.first_eof.map_or("none", |s| s.as_str()).as_bytes());
        out.extend_from_slice(b"\",\"end\":\"");
        out.extend_from_slice(e.ending.as_str().as_bytes());
        out.extend_from_slice(b"\",\"duration_us\":");
        push_u64(out, e.duration.as_micros() as u64);
        out.push(b'}');
    }

    /// `client - - [time] "TUNNEL protocol" end client_to_upstream
    /// upstream_to_client first_eof upstream duration_us request_id`.
    pub(super) fn common(&self, out: &mut Vec<u8>, clock: &mut Clock) {
        let e = self.end;
        match e.client {
            Some(ip) => push_ip(out, ip),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" - - [");
        clock.clf(self.time, out);
        out.extend_from_slice(b"] \"TUNNEL ");
        clf_str(e.protocol.as_deref().unwrap_or("-"), out);
        out.extend_from_slice(b"\" ");
        out.extend_from_slice(e.ending.as_str().as_bytes());
        for n in [e.client_to_upstream, e.upstream_to_client] {
            out.push(b' ');
            push_u64(out, n);
        }
        out.push(b' ');
        out.extend_from_slice(e.first_eof.map_or("none", |s| s.as_str()).as_bytes());
        out.push(b' ');
        clf_str(self.upstream, out);
        out.push(b' ');
        push_u64(out, e.duration.as_micros() as u64);
        out.push(b' ');
        clf_str(
            e.request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
            out,
        );
    }
}

/// An address as a JSON string, or `null`.
fn json_ip(ip: Option<IpAddr>, out: &mut Vec<u8>) {
    match ip {
        Some(ip) => {
            out.push(b'"');
            push_ip(out, ip);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// `s` as a JSON string: quoted, with `"`, `\` and control bytes escaped.
fn json_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let mut bytes = s.as_bytes();
    // Runs of bytes that need no escape are copied whole.
    while let Some(i) = first_to_escape(bytes, JSON) {
        out.extend_from_slice(&bytes[..i]);
        let b = bytes[i];
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
        bytes = &bytes[i + 1..];
    }
    out.extend_from_slice(bytes);
    out.push(b'"');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The index of the first byte of `bytes` that `format` escapes. Eight
/// bytes at a time while none is: the usual word tricks find a byte below
/// a bound, or equal to one, in a `u64` with a few operations.
fn first_to_escape(bytes: &[u8], format: u8) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A high bit where a byte of `x` is below `n` (n <= 128).
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGHS;
    let equal = |x: u64, b: u8| below(x ^ (ONES * u64::from(b)), 1);
    let mut i = 0;
    while i + 8 <= bytes.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[i..i + 8]);
        let x = u64::from_le_bytes(word);
        let hit = match format {
            JSON => below(x, 0x20) | equal(x, b'"') | equal(x, b'\\') | equal(x, 0x7f),
            // Below 0x21 takes the space; a high bit, any byte from 0x80.
            _ => below(x, 0x21) | equal(x, b'"') | equal(x, b'\\') | equal(x, 0x7f) | (x & HIGHS),
        };
        if hit != 0 {
            break;
        }
        i += 8;
    }
    bytes[i..]
        .iter()
        .position(|&b| ESCAPE[usize::from(b)] & format != 0)
        .map(|p| i + p)
}

/// Which bytes each format escapes, a bit per format.
const JSON: u8 = 1;
const CLF: u8 = 2;
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let control = b < 0x20 || b == 0x7f;
        if control || b == b'"' as usize || b == b'\\' as usize {
            table[b] |= JSON;
        }
        if control || b >= 0x80 || b == b'"' as usize || b == b'\\' as usize || b == b' ' as usize {
            table[b] |= CLF;
        }
        b += 1;
    }
    table
};

/// `s` in a common-log field: `"`, `\`, spaces and control bytes escaped
/// as `\xHH` (Apache's way), so that a field never splits a line or a
/// field.
fn clf_str(s: &str, out: &mut Vec<u8>) {
    let mut bytes = s.as_bytes();
    while let Some(i) = first_to_escape(bytes, CLF) {
        out.extend_from_slice(&bytes[..i]);
        let b = bytes[i];
        out.extend_from_slice(&[
            b'\\',
            b'x',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ]);
        bytes = &bytes[i + 1..];
    }
    out.extend_from_slice(bytes);
}

/// Days since 1970-01-01 as (year, month, day): Howard Hinnant's
/// `civil_from_days`.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `HTTP/1.1`, as the request line says it.
fn version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// `2026-12-03T02:53:30` for `secs` after the epoch.
fn rfc3339_seconds(secs: u64, out: &mut Vec<u8>) {
    let (y, m, d) = civil((secs / 86_400) as i64);
    let s = secs % 86_400;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    );
}

/// `03/Dec/2026:02:53:30 +0000` for `secs` after the epoch.
fn clf_seconds(secs: u64, out: &mut Vec<u8>) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d) = civil((secs / 86_400) as i64);
    let s = secs % 86_400;
    let _ = write!(
        out,
        "{d:02}/{}/{y:04}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        s / 3600,
        s / 60 % 60,
        s % 60
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
    }

    #[test]
    fn times_are_utc_rfc3339_and_clf() {
        let mut clock = Clock::default();
        let mut s = Vec::new();
        clock.rfc3339(at(0, 0), &mut s);
        assert_eq!(s, b"1970-01-01T00:00:00.000Z");
        s.clear();
        // `date -u -d @1796266410` is Thu Dec 3 02:53:30 UTC 2026.
        clock.rfc3339(at(1_796_266_410, 123), &mut s);
        assert_eq!(s, b"2026-12-03T02:53:30.123Z");
        s.clear();
        // The same second again, from the cache.
        clock.rfc3339(at(1_796_266_410, 7), &mut s);
        assert_eq!(s, b"2026-12-03T02:53:30.007Z");
        s.clear();
        clock.clf(at(1_796_266_410, 0), &mut s);
        assert_eq!(s, b"03/Dec/2026:02:53:30 +0000");
        s.clear();
        // A leap day.
        clock.rfc3339(at(951_782_400, 999), &mut s);
        assert_eq!(s, b"2000-02-29T00:00:00.999Z");
    }

    #[test]
    fn numbers_and_addresses_are_written_as_display_writes_them() {
        for n in [0, 7, 10, 99, 100, 101, 999, 1_000_001, 12_345, u64::MAX] {
            let mut s = Vec::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string().as_bytes());
        }
        for ip in [
            "0.0.0.0",
            "192.0.2.1",
            "255.255.255.255",
            "2001:db8::1",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut s = Vec::new();
            push_ip(&mut s, ip);
            assert_eq!(s, ip.to_string().as_bytes());
        }
    }

    fn record() -> RequestRecord {
        RequestRecord {
            time: at(1_796_266_410, 5),
            request_id: http::HeaderValue::from_static("abc\"1"),
            client: Some("192.0.2.1".parse().unwrap()),
            method: http::Method::GET,
            host: Some(http::HeaderValue::from_static("ex \"a\\mple\"")),
            target: http::Uri::from_static("/a%20%22b%22?q=1"),
            version: http::Version::HTTP_11,
            status: 200,
            upstream: Some(Arc::from("api")),
            bytes_in: 3,
            bytes_out: 64,
            head: Duration::from_micros(900),
            duration: Duration::from_micros(1234),
        }
    }

    #[test]
    fn a_request_line_is_json_any_parser_reads_back() {
        let mut line = Vec::new();
        record().json(&mut line, &mut Clock::default());
        let line = String::from_utf8(line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).expect(&line);
        assert_eq!(v["time"], "2026-12-03T02:53:30.005Z");
        assert_eq!(v["type"], "request");
        assert_eq!(v["request_id"], "abc\"1");
        assert_eq!(v["client"], "192.0.2.1");
        assert_eq!(v["path"], "/a%20%22b%22?q=1");
        assert_eq!(v["host"], "ex \"a\\mple\"");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["upstream"], "api");
        assert_eq!(v["bytes_in"], 3);
        assert_eq!(v["bytes_out"], 64);
        assert_eq!(v["head_us"], 900);
        assert_eq!(v["duration_us"], 1234);
        assert!(!line.contains('\n'));
    }

    #[test]
    fn a_common_line_keeps_its_fields_apart() {
        let mut line = Vec::new();
        record().common(&mut line, &mut Clock::default());
        let line = String::from_utf8(line).unwrap();
        assert_eq!(
            line,
            "192.0.2.1 - - [03/Dec/2026:02:53:30 +0000] \"GET /a%20%22b%22?q=1 HTTP/1.1\" 200 64 \"ex\\x20\\x22a\\x5cmple\\x22\" api 3 900 1234 abc\\x221"
        );
    }

    proptest::proptest! {
        /// Whatever a client puts in a field, the line is one JSON object
        /// that reads back the same.
        #[test]
        fn any_string_reads_back_from_json(s in "\\PC*|[\\x00-\\x7f]*") {
            let mut out = Vec::new();
            json_str(&s, &mut out);
            let out = String::from_utf8(out).unwrap();
            let back: String = serde_json::from_str(&out).unwrap();
            proptest::prop_assert_eq!(back, s);
            proptest::prop_assert!(!out.contains('\n'));
        }

        /// The word-at-a-time search finds what the table says, for
        /// both formats.
        #[test]
        fn the_word_search_agrees_with_the_table(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            for format in [JSON, CLF] {
                let want = bytes.iter().position(|&b| ESCAPE[usize::from(b)] & format != 0);
                proptest::prop_assert_eq!(first_to_escape(&bytes, format), want);
            }
        }

        /// A common-log field is one word of printable ASCII whatever it
        /// holds, and `\xHH` decodes back to it.
        #[test]
        fn any_string_is_one_clf_word(s in "\\PC*|[\\x00-\\x7f]*") {
            let mut out = Vec::new();
            clf_str(&s, &mut out);
            proptest::prop_assert!(out.iter().all(|&b| b.is_ascii_graphic() && b != b'"'));
            let mut back = Vec::new();
            let mut i = 0;
            while i < out.len() {
                if out[i] == b'\\' {
                    let hex = std::str::from_utf8(&out[i + 2..i + 4]).unwrap();
                    back.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 4;
                } else {
                    back.push(out[i]);
                    i += 1;
                }
            }
            proptest::prop_assert_eq!(back, s.as_bytes());
        }
    }
}
