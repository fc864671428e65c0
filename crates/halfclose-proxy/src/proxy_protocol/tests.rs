//! One test per rule of [`parse`](super::parse), and a differential
//! property test against the `ppp` crate.

use super::*;
use proptest::prelude::*;

fn header(len: usize, source: &str) -> Parsed {
    Parsed::Header {
        len,
        source: Some(source.parse().unwrap()),
    }
}

/// A v2 header: `ver_cmd`, `fam`, then `body`.
fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut h = SIGNATURE.to_vec();
    h.push(ver_cmd);
    h.push(fam);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(body);
    h
}

fn inet_body(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut b = src.to_vec();
    b.extend_from_slice(&[10, 0, 0, 1]);
    b.extend_from_slice(&sport.to_be_bytes());
    b.extend_from_slice(&443u16.to_be_bytes());
    b
}

#[test]
fn v1_tcp4_and_tcp6_give_the_source() {
    let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /";
    assert_eq!(parse(line), header(line.len() - 5, "192.0.2.1:56324"));
    let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
    assert_eq!(parse(line), header(line.len(), "[2001:db8::1]:1"));
}

#[test]
fn v1_unknown_keeps_the_connections_address() {
    for line in [
        &b"PROXY UNKNOWN\r\n"[..],
        b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
    ] {
        assert_eq!(
            parse(line),
            Parsed::Header {
                len: line.len(),
                source: None
            }
        );
    }
}

#[test]
fn v1_is_incomplete_until_its_crlf() {
    let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
    for n in 0..line.len() {
        assert_eq!(parse(&line[..n]), Parsed::Incomplete, "{n} bytes");
    }
}

#[test]
fn v1_longer_than_107_bytes_is_refused() {
    let mut line = b"PROXY UNKNOWN ".to_vec();
    line.resize(107, b'x');
    assert!(matches!(parse(&line), Parsed::Invalid(_)));
    let mut ok = b"PROXY UNKNOWN ".to_vec();
    ok.resize(105, b'x');
    ok.extend_from_slice(b"\r\n");
    assert_eq!(
        parse(&ok),
        Parsed::Header {
            len: 107,
            source: None
        }
    );
}

#[test]
fn v1_fields_are_checked() {
    for bad in [
        &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n"[..],
        b"PROXY TCP4  192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
        b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 01 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n",
        b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",
        b"PROXY TCP4 192.0.2.1\r198.51.100.2 1 2\r\n",
        b"PROXY TCP4 \xc3\xa9.0.2.1 198.51.100.2 1 2\r\n",
    ] {
        assert!(
            matches!(parse(bad), Parsed::Invalid(_)),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn anything_else_is_refused_at_once() {
    for bad in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"PROXX",
        b"\x16\x03\x01",
        b"\r\n\r\n\0\r\nQUIX",
    ] {
        assert!(matches!(parse(bad), Parsed::Invalid(_)), "{bad:?}");
    }
    assert_eq!(parse(b""), Parsed::Incomplete);
    assert_eq!(parse(b"PRO"), Parsed::Incomplete);
    assert_eq!(parse(b"\r\n\r\n\0"), Parsed::Incomplete);
}

#[test]
fn v2_inet_and_inet6_give_the_source_and_skip_tlvs() {
    let mut body = inet_body([192, 0, 2, 1], 56324);
    body.extend_from_slice(&[0x04, 0, 2, 0xaa, 0xbb]); // a NOOP TLV
    let mut h = v2(0x21, 0x11, &body);
    let len = h.len();
    h.extend_from_slice(b"GET /");
    assert_eq!(parse(&h), header(len, "192.0.2.1:56324"));

    let mut body = [0u8; 36];
    body[..16].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    body[32..34].copy_from_slice(&8080u16.to_be_bytes());
    assert_eq!(
        parse(&v2(0x21, 0x21, &body)),
        header(52, "[2001:db8::1]:8080")
    );
}

#[test]
fn v2_local_unspec_and_unix_keep_the_connections_address() {
    for h in [
        v2(0x20, 0x11, &inet_body([192, 0, 2, 1], 1)),
        // LOCAL ignores its family: TCP4 with no addresses is fine.
        v2(0x20, 0x11, &[]),
        v2(0x20, 0x45, &[1]),
        v2(0x20, 0x00, &[]),
        v2(0x21, 0x00, &[1, 2, 3]),
        v2(0x21, 0x31, &[0; 216]),
    ] {
        assert_eq!(
            parse(&h),
            Parsed::Header {
                len: h.len(),
                source: None
            },
            "{h:?}"
        );
    }
}

#[test]
fn v2_is_incomplete_until_its_last_byte() {
    let h = v2(0x21, 0x11, &inet_body([192, 0, 2, 1], 1));
    for n in 0..h.len() {
        assert_eq!(parse(&h[..n]), Parsed::Incomplete, "{n} bytes");
    }
}

#[test]
fn v2_other_versions_commands_families_and_short_bodies_are_refused() {
    let body = inet_body([192, 0, 2, 1], 1);
    for h in [
        v2(0x11, 0x11, &body),
        v2(0x31, 0x11, &body),
        v2(0x22, 0x11, &body),
        v2(0x21, 0x41, &body),
        v2(0x21, 0x13, &body),
        v2(0x21, 0x11, &body[..11]),
        v2(0x21, 0x21, &[0; 35]),
        v2(0x21, 0x31, &[0; 100]),
    ] {
        assert!(matches!(parse(&h), Parsed::Invalid(_)), "{h:?}");
    }
    // Said from the version byte, before the rest arrives.
    assert!(matches!(
        parse(&v2(0x11, 0x11, &body)[..13]),
        Parsed::Invalid(_)
    ));
}

#[test]
fn v2_longer_than_the_limit_is_refused_from_its_length() {
    let mut h = SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11]);
    h.extend_from_slice(&((MAX_V2 - 16 + 1) as u16).to_be_bytes());
    assert!(matches!(parse(&h), Parsed::Invalid(_)), "at 16 bytes");
    let body = vec![0u8; MAX_V2 - 16];
    assert!(matches!(
        parse(&v2(0x21, 0x11, &body)),
        Parsed::Header { .. }
    ));
}

#[test]
fn networks_contain_their_addresses() {
    let net = Cidr::parse("10.0.0.0/8").unwrap();
    assert!(net.contains("10.200.1.1".parse().unwrap()));
    assert!(
        net.contains("::ffff:10.1.1.1".parse().unwrap()),
        "IPv4-mapped"
    );
    assert!(!net.contains("11.0.0.1".parse().unwrap()));
    assert!(!net.contains("::1".parse().unwrap()));
    let one = Cidr::parse("2001:db8::5").unwrap();
    assert!(one.contains("2001:db8::5".parse().unwrap()));
    assert!(!one.contains("2001:db8::6".parse().unwrap()));
    assert!(
        Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap())
    );
    assert!(
        Cidr::parse("::/0")
            .unwrap()
            .contains("2001:db8::1".parse().unwrap())
    );
    for bad in [
        "10.0.0.0/33",
        "::/129",
        "10.0.0/8",
        "10.0.0.0/+8",
        "10.0.0.0/",
        "x",
    ] {
        assert!(Cidr::parse(bad).is_err(), "{bad}");
    }
}

/// What `ppp` makes of `bytes`: `None` while incomplete, else the header's
/// length and source (`None` for LOCAL, UNKNOWN, UNSPEC and UNIX), or an
/// error.
fn reference(bytes: &[u8]) -> Option<Result<(usize, Option<SocketAddr>), ()>> {
    use ppp::{HeaderResult, PartialResult};
    let result = HeaderResult::parse(bytes);
    if result.is_incomplete() {
        return None;
    }
    Some(match result {
        HeaderResult::V1(Ok(h)) => Ok((
            h.header.len(),
            match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                ppp::v1::Addresses::Unknown => None,
            },
        )),
        HeaderResult::V2(Ok(h)) => Ok((
            h.len(),
            match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (_, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                _ => None,
            },
        )),
        _ => Err(()),
    })
}

/// Headers of every kind, valid, then sometimes cut, bytes changed or
/// inserted, and followed by request bytes.
fn headers() -> impl Strategy<Value = Vec<u8>> {
    let v1 = (
        prop::sample::select(vec!["TCP4", "TCP6", "UNKNOWN", "TCP5"]),
        any::<[u8; 4]>(),
        any::<[u16; 8]>(),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(|(family, v4, v6, sport, dport)| {
            let (src, dst) = match family {
                "TCP6" | "UNKNOWN" => (
                    Ipv6Addr::from(v6).to_string(),
                    Ipv6Addr::new(1, 2, 3, 4, 5, 6, 7, 8).to_string(),
                ),
                _ => (Ipv4Addr::from(v4).to_string(), "198.51.100.2".to_owned()),
            };
            format!("PROXY {family} {src} {dst} {sport} {dport}\r\n").into_bytes()
        });
    let v2 = (
        prop::sample::select(vec![0x20u8, 0x21, 0x22, 0x11]),
        prop::sample::select(vec![0x00u8, 0x11, 0x12, 0x21, 0x22, 0x31, 0x14]),
        prop::collection::vec(any::<u8>(), 0..300),
        any::<bool>(),
    )
        .prop_map(|(ver_cmd, fam, mut body, exact)| {
            let needed = match fam >> 4 {
                1 => 12,
                2 => 36,
                3 => 216,
                _ => 0,
            };
            if exact && body.len() < needed {
                body.resize(needed, 7);
            }
            v2(ver_cmd, fam, &body)
        });
    (
        prop_oneof![v1, v2],
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 0..3),
        prop::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(|(mut h, edits, cut)| {
            for (at, byte, how) in edits {
                let i = at.index(h.len() + 1);
                match how {
                    0 if i < h.len() => h[i] = byte,
                    1 => h.insert(i, byte),
                    2 if i < h.len() => {
                        h.remove(i);
                    }
                    _ => {}
                }
            }
            if let Some(cut) = cut {
                h.truncate(cut.index(h.len() + 1));
            }
            h.extend_from_slice(b"GET / HTTP/1.1\r\n");
            h
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Never looser than `ppp`: what we accept, it accepts alike; what it
    /// accepts, we accept alike or refuse (we are stricter), never wait for.
    #[test]
    fn ours_agrees_with_ppp_or_is_stricter(bytes in headers()) {
        let ours = parse(&bytes);
        match (&ours, reference(&bytes)) {
            (Parsed::Header { len, source }, Some(Ok(theirs))) => {
                prop_assert_eq!((*len, *source), theirs)
            }
            // The spec says to ignore what follows UNKNOWN; ppp reads it.
            (Parsed::Header { source: None, .. }, _) if bytes.starts_with(b"PROXY UNKNOWN") => {}
            // So it says to ignore a LOCAL header's family; ppp checks it.
            (Parsed::Header { source: None, .. }, _) if bytes.get(12) == Some(&0x20) => {}
            (Parsed::Header { .. }, other) => {
                prop_assert!(false, "we accept what ppp does not: {:?} {:?}", ours, other)
            }
            (Parsed::Incomplete, Some(Ok(theirs))) => {
                prop_assert!(false, "we wait where ppp read {:?}", theirs)
            }
            _ => {}
        }
    }

    /// The bytes may come in any pieces: every prefix shorter than the
    /// header is incomplete (or already refused), and the result is the same.
    #[test]
    fn pieces_change_nothing(bytes in headers()) {
        let whole = parse(&bytes);
        let end = match whole {
            Parsed::Header { len, .. } => len,
            _ => bytes.len(),
        };
        for n in 0..end {
            match parse(&bytes[..n]) {
                Parsed::Incomplete => {}
                Parsed::Invalid(_) => prop_assert!(matches!(whole, Parsed::Invalid(_))),
                h => prop_assert!(false, "a header at {} bytes: {:?}, whole: {:?}", n, h, whole),
            }
        }
    }
}
