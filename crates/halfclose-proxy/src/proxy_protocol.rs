//! The PROXY protocol header (HAProxy's, versions 1 and 2) an L4 load
//! balancer sends first on each connection, with the client's address.
//! Sans-IO: [`parse`] looks at the bytes received so far; `conn` reads them.
//!
//! The rules, from HAProxy's `proxy-protocol.txt`:
//!
//! - v1 is one text line: `PROXY TCP4|TCP6|UNKNOWN ...\r\n`, at most 107
//!   bytes. `TCP4`/`TCP6` carry source and destination addresses and ports,
//!   separated by single spaces: addresses in their usual text form (IPv4
//!   dotted quad, IPv6 as `Ipv6Addr` reads it), ports decimal 0 to 65535
//!   without sign or leading zero. `UNKNOWN` may carry anything up to the CRLF (the spec
//!   says to ignore it; a bare CR or LF is refused as anywhere in the line):
//!   the connection's own address is used.
//! - v2 is binary: the 12-byte signature, version 2 and a command (LOCAL
//!   or PROXY), an address family and transport, a 16-bit length, then the
//!   addresses and TLVs. LOCAL (a balancer's own health check) keeps the
//!   connection's own address, its family and block ignored, as the spec
//!   says; so do the UNSPEC and UNIX families of PROXY. INET and INET6 must
//!   be long enough for their addresses. TLVs are skipped
//!   unread. Other versions, commands, families or transports are refused.
//! - A v2 header longer than [`MAX_V2`] is refused: a balancer's TLVs are a
//!   few hundred bytes, and a connection must not make us buffer 64 KiB.
//! - Anything else (a client speaking HTTP at once) is refused: a listener
//!   that expects the header gets it or closes.
//!
//! Imports nothing of the crate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature.
const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included.
pub(crate) const MAX_V1: usize = 107;
/// The longest v2 header accepted, its 16 fixed bytes included.
pub(crate) const MAX_V2: usize = 4096;

/// What the bytes received so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A header may still come whole: read more.
    Incomplete,
    /// A header of `len` bytes; `source` is the client's address, `None`
    /// when the connection's own is to be used (v1 UNKNOWN, v2 LOCAL, UNSPEC
    /// or UNIX).
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// Not a valid header: close the connection.
    Invalid(&'static str),
}

/// Parses the start of `buf`.
pub(crate) fn parse(buf: &[u8]) -> Parsed {
    let n = buf.len().min(SIGNATURE.len());
    if buf[..n] == SIGNATURE[..n] {
        if n < SIGNATURE.len() {
            return Parsed::Incomplete;
        }
        return parse_v2(buf);
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        if n < 6 {
            return Parsed::Incomplete;
        }
        return parse_v1(buf);
    }
    Parsed::Invalid("no PROXY protocol header")
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let window = &buf[..buf.len().min(MAX_V1)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return match buf.len() >= MAX_V1 {
            true => Parsed::Invalid("PROXY v1 line longer than 107 bytes"),
            // No CRLF yet: an LF, or a CR that is not the last byte, is
            // bare and can never become one.
            false if window[..window.len() - 1].contains(&b'\r') || window.contains(&b'\n') => {
                Parsed::Invalid("PROXY v1 line with a bare CR or LF")
            }
            false => Parsed::Incomplete,
        };
    };
    let len = end + 2;
    if buf[6..end].iter().any(|&b| b == b'\r' || b == b'\n') {
        return Parsed::Invalid("PROXY v1 line with a bare CR or LF");
    }
    let Ok(line) = std::str::from_utf8(&buf[6..end]) else {
        return Parsed::Invalid("PROXY v1 line not ASCII");
    };
    if !line.is_ascii() {
        return Parsed::Invalid("PROXY v1 line not ASCII");
    }
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        return Parsed::Header { len, source: None };
    }
    let parts: Vec<&str> = line.split(' ').collect();
    let [family, src, dst, sport, dport] = parts.as_slice() else {
        return Parsed::Invalid("PROXY v1 line without its five fields");
    };
    let ip = match *family {
        "TCP4" => match (src.parse::<Ipv4Addr>(), dst.parse::<Ipv4Addr>()) {
            (Ok(s), Ok(_)) => IpAddr::V4(s),
            _ => return Parsed::Invalid("PROXY v1 TCP4 with an invalid address"),
        },
        "TCP6" => match (src.parse::<Ipv6Addr>(), dst.parse::<Ipv6Addr>()) {
            (Ok(s), Ok(_)) => IpAddr::V6(s),
            _ => return Parsed::Invalid("PROXY v1 TCP6 with an invalid address"),
        },
        _ => return Parsed::Invalid("PROXY v1 protocol neither TCP4, TCP6 nor UNKNOWN"),
    };
    match (port(sport), port(dport)) {
        (Some(sport), Some(_)) => Parsed::Header {
            len,
            source: Some(SocketAddr::new(ip, sport)),
        },
        _ => Parsed::Invalid("PROXY v1 with an invalid port"),
    }
}

/// A decimal port: digits only, no leading zero, 0 to 65535.
fn port(s: &str) -> Option<u16> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    match digits && (s == "0" || !s.starts_with('0')) {
        true => s.parse().ok(),
        false => None,
    }
}

fn parse_v2(buf: &[u8]) -> Parsed {
    if buf.len() < 16 {
        return match buf.get(12) {
            Some(&v) if v >> 4 != 2 => Parsed::Invalid("PROXY v2 header of another version"),
            _ => Parsed::Incomplete,
        };
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Parsed::Invalid("PROXY v2 header of another version");
    }
    let (family, transport) = (buf[13] >> 4, buf[13] & 0x0f);
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if len > MAX_V2 {
        return Parsed::Invalid("PROXY v2 header longer than 4096 bytes");
    }
    if command > 1 {
        return Parsed::Invalid("PROXY v2 command neither LOCAL nor PROXY");
    }
    // LOCAL (a balancer's own connection, a health check): the family and
    // the addresses are to be ignored, whatever they say.
    if command == 0 {
        return match buf.len() < len {
            true => Parsed::Incomplete,
            false => Parsed::Header { len, source: None },
        };
    }
    if family > 3 || transport > 2 {
        return Parsed::Invalid("PROXY v2 unknown address family or transport");
    }
    let needed = match family {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    if body < needed {
        return Parsed::Invalid("PROXY v2 header too short for its addresses");
    }
    if buf.len() < len {
        return Parsed::Incomplete;
    }
    let a = &buf[16..];
    let source = match (command, family) {
        // LOCAL: the balancer's own connection (a health check).
        (0, _) => None,
        (_, 1) => Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            u16::from_be_bytes([a[8], a[9]]),
        )),
        (_, 2) => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&a[..16]);
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(ip)),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        // UNSPEC, UNIX: no address of use to us.
        _ => None,
    };
    Parsed::Header { len, source }
}

/// A network (`10.0.0.0/8`, `2001:db8::/32`, or one address) the header
/// may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub(crate) fn parse(s: &str) -> Result<Cidr, String> {
        let invalid =
            || format!("invalid network {s:?} (try 10.0.0.0/8, 2001:db8::/32 or 10.1.2.3)");
        let (ip, bits) = match s.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (s, None),
        };
        let net: IpAddr = ip.parse().map_err(|_| invalid())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(text) => match text.parse::<u8>() {
                Ok(b) if b <= max && text.bytes().all(|c| c.is_ascii_digit()) => b,
                _ => return Err(invalid()),
            },
        };
        Ok(Cidr { net, bits })
    }

    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address as its
    /// IPv4 one).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.bits)
    }
}

#[cfg(test)]
mod tests;
