//! Differential test of the codec against hyper's HTTP/1 client: the same
//! byte streams, generated from the rules' hard cases and mutated, go to both
//! (hyper's over an in-memory pipe). It fails when ours accepts a response
//! that hyper refuses, or reads another message from it (status, fields,
//! body, trailers). Being stricter than hyper is allowed.
//!
//! `cargo xtask test` runs a few hundred cases; `cargo xtask fuzz` runs the
//! same properties with many more (`PROPTEST_CASES`).

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use proptest::sample::select;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tests::{Message, decode_in, fields};

/// How hyper's client reads `input` as the answer to a `method` request;
/// `Err` with hyper's error when it refuses it.
fn hyper_reads(input: &[u8], method: &Method) -> Result<Message, String> {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
    }
    let input = input.to_vec();
    let method = method.clone();
    RT.with(|rt| {
        rt.block_on(async move {
            let read = async move {
                let (client, mut server) = tokio::io::duplex(1 << 16);
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(client))
                        .await
                        .map_err(|e| e.to_string())?;
                let conn = tokio::spawn(conn);
                let upstream = tokio::spawn(async move {
                    // Take the request head, then answer with the input and
                    // close the writing half, as a scripted upstream would.
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match server.read(&mut byte).await {
                            Ok(0) | Err(_) => return server,
                            Ok(n) => head.extend_from_slice(&byte[..n]),
                        }
                    }
                    let _ = server.write_all(&input).await;
                    let _ = server.shutdown().await;
                    server
                });
                let req = Request::builder()
                    .method(method)
                    .uri("/")
                    .header("host", "upstream")
                    .body(Empty::new())
                    .expect("a request");
                let res = sender.send_request(req).await.map_err(|e| e.to_string());
                let res = match res {
                    Ok(res) => {
                        let (parts, body) = res.into_parts();
                        match body.collect().await {
                            Ok(collected) => {
                                let trailers = collected.trailers().map(fields);
                                let body = collected.to_bytes().to_vec();
                                let reason = parts
                                    .extensions
                                    .get::<hyper::ext::ReasonPhrase>()
                                    .map(|r| r.as_bytes().to_vec())
                                    .filter(|r| !r.is_empty());
                                Ok(Message {
                                    status: parts.status.as_u16(),
                                    version: parts.version,
                                    headers: fields(&parts.headers),
                                    reason,
                                    body,
                                    trailers,
                                })
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Err(e) => Err(e),
                };
                drop(sender);
                conn.abort();
                let _server = upstream.await;
                res
            };
            tokio::time::timeout(std::time::Duration::from_secs(10), read)
                .await
                .unwrap_or_else(|_| Err("hyper did not finish within 10 s".into()))
        })
    })
}

/// What the codec forwards in place of what hyper hands on as it came: one
/// `Content-Length` for a list of equal values (RFC 9110 section 8.6), none
/// beside `Transfer-Encoding` (RFC 9112 section 6.3).
fn normalise(mut m: Message, method: &Method) -> Message {
    let bodiless = method == Method::HEAD || matches!(m.status, 100..=199 | 204 | 304);
    if bodiless {
        return m;
    }
    let has_te = m.headers.iter().any(|(n, _)| n == "transfer-encoding");
    let lengths: Vec<Vec<u8>> = m
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.clone())
        .collect();
    if has_te {
        m.headers.retain(|(n, _)| n != "content-length");
    } else if lengths.len() > 1 || lengths.first().is_some_and(|v| v.contains(&b',')) {
        // As a number: `05, 5` is forwarded as `5`.
        let one = String::from_utf8_lossy(&lengths[0])
            .split(',')
            .next()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|n| n.to_string().into_bytes())
            .unwrap_or_default();
        m.headers.retain(|(n, _)| n != "content-length");
        m.headers.push(("content-length".to_owned(), one));
        m.headers.sort_by(|a, b| a.0.cmp(&b.0));
    }
    m
}

/// Status lines, good and bad.
const STATUS_LINES: &[&str] = &[
    "HTTP/1.1 200 OK",
    "HTTP/1.1 200 OK",
    "HTTP/1.1 200 OK",
    "HTTP/1.0 200 OK",
    "HTTP/1.1 201 Created",
    "HTTP/1.1 204 No Content",
    "HTTP/1.1 304 Not Modified",
    "HTTP/1.1 404 Not Found",
    "HTTP/1.1 200 Fine",
    "HTTP/1.1 200 ",
    "HTTP/1.1 200",
    "HTTP/1.1 999 Odd",
    "HTTP/1.1 099 Low",
    "HTTP/1.1 2000 OK",
    "HTTP/1.1 20 OK",
    "HTTP/1.1  200 OK",
    "HTTP/2.0 200 OK",
    "http/1.1 200 OK",
    "HTTP/1.1 101 Switching Protocols",
    "HTTP/1.1 200 O\u{1}K",
];

/// Informational heads that may come first.
const INFORMATIONAL: &[&str] = &[
    "HTTP/1.1 100 Continue\r\n\r\n",
    "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n",
    "HTTP/1.1 102 Processing\r\n\r\n",
];

/// Field lines, framing ones and hostile ones among them.
const FIELDS: &[&str] = &[
    "Content-Length: 5",
    "Content-Length: 5",
    "Content-Length: 0",
    "Content-Length: 3",
    "Content-Length: 12",
    "Content-Length: 5, 5",
    "Content-Length: 5,5",
    "Content-Length: 5, 7",
    "Content-Length: +5",
    "Content-Length: -1",
    "Content-Length: 0x5",
    "Content-Length: 05",
    "Content-Length:  5 ",
    "Content-Length: ",
    "Content-Length: 5,",
    "Content-Length: 18446744073709551615",
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: Chunked",
    "Transfer-Encoding: gzip, chunked",
    "Transfer-Encoding: chunked, gzip",
    "Transfer-Encoding: chunked, chunked",
    "Transfer-Encoding: chunked,",
    "Transfer-Encoding: gzip",
    "Transfer-Encoding: identity",
    "Transfer-Encoding:  chunked ",
    "Transfer-Encoding: \u{80}chunked",
    "Connection: close",
    "Connection: keep-alive",
    "Trailer: X-Sum",
    "X-A: one\r\n two",
    "X-A: a\rb",
    "X-A: a\u{0}b",
    "X-A: a\u{7f}b",
    "X A: b",
    "X-A : b",
    "X-A:b",
    "X-A: \tb\t",
    "Set-Cookie: a=b",
    "Set-Cookie: c=d",
    "X-Empty:",
    "Content-Type: text/plain",
];

/// Chunk-size lines, good and bad.
const CHUNK_LINES: &[&str] = &[
    "{x}\r\n",
    "{x}\r\n",
    "{X}\r\n",
    "{x};ext=1\r\n",
    "{x} ;ext\r\n",
    "{x}\t\r\n",
    "0{x}\r\n",
    "{x}\n",
    "{x};a\nb\r\n",
    "{x};a\rb\r\n",
    "{x};a\u{0}\r\n",
    "-{x}\r\n",
    "0x{x}\r\n",
    "{x} {x}\r\n",
    "1ffffffffffffffff\r\n",
];

const TRAILERS: &[&str] = &[
    "",
    "",
    "X-Sum: 42\r\n",
    "X-Sum: 42\r\nX-Other: a\r\n",
    "X-Sum: 42\n",
    "X-Sum: a\r\n b\r\n",
    "Bad Name: 1\r\n",
    "Content-Length: 99\r\n",
];

fn chunk(line: &'static str, data: Vec<u8>, end: &'static str) -> Vec<u8> {
    let size = data.len();
    let mut out = line
        .replace("{x}", &format!("{size:x}"))
        .replace("{X}", &format!("{size:X}"))
        .into_bytes();
    out.extend_from_slice(&data);
    out.extend_from_slice(end.as_bytes());
    out
}

fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    let one = (
        select(CHUNK_LINES),
        prop::collection::vec(any::<u8>(), 1..20),
        select(&["\r\n", "\r\n", "\r\n", "\n", "", "XX"][..]),
    )
        .prop_map(|(line, data, end)| chunk(line, data, end));
    (
        prop::collection::vec(one, 0..4),
        select(&["0\r\n", "0\r\n", "0;x\r\n", "0\n", "00\r\n"][..]),
        select(TRAILERS),
        select(&["\r\n", "\r\n", "\n", ""][..]),
    )
        .prop_map(|(chunks, last, trailers, end)| {
            let mut out = chunks.concat();
            out.extend_from_slice(last.as_bytes());
            out.extend_from_slice(trailers.as_bytes());
            out.extend_from_slice(end.as_bytes());
            out
        })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(b"hello".to_vec()),
        prop::collection::vec(any::<u8>(), 0..24),
        chunked_body(),
    ]
}

/// Bytes after the message: nothing, stray bytes, a planted response.
fn tail() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(Vec::new()),
        1 => prop::collection::vec(any::<u8>(), 1..8),
        1 => Just(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nplant!".to_vec()),
    ]
}

/// A mutation of the assembled bytes: none, or a byte changed, inserted or
/// removed somewhere.
#[derive(Debug, Clone)]
enum Mutation {
    None,
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        Just(b'\r'),
        Just(b'\n'),
        Just(b' '),
        Just(b','),
        Just(b'0'),
        Just(b';'),
        any::<u8>()
    ];
    prop_oneof![
        4 => Just(Mutation::None),
        1 => (any::<prop::sample::Index>(), byte.clone()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => (any::<prop::sample::Index>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Remove),
    ]
}

/// A response as an upstream might send it, and the request's method.
fn response() -> impl Strategy<Value = (Vec<u8>, Method)> {
    (
        prop::collection::vec(select(INFORMATIONAL), 0..3),
        select(STATUS_LINES),
        prop::collection::vec(select(FIELDS), 0..5),
        prop::bool::weighted(0.1),
        body(),
        tail(),
        mutation(),
        prop::bool::weighted(0.15),
    )
        .prop_map(
            |(informational, status, fields, bare_lf, body, tail, mutation, head)| {
                let eol = if bare_lf { "\n" } else { "\r\n" };
                let mut out = informational.concat().into_bytes();
                out.extend_from_slice(status.as_bytes());
                out.extend_from_slice(eol.as_bytes());
                for f in fields {
                    out.extend_from_slice(f.as_bytes());
                    out.extend_from_slice(eol.as_bytes());
                }
                out.extend_from_slice(eol.as_bytes());
                out.extend_from_slice(&body);
                out.extend_from_slice(&tail);
                match mutation {
                    Mutation::None => {}
                    Mutation::Set(i, b) if !out.is_empty() => {
                        let i = i.index(out.len());
                        out[i] = b;
                    }
                    Mutation::Insert(i, b) => {
                        let i = i.index(out.len() + 1);
                        out.insert(i, b);
                    }
                    Mutation::Remove(i) if !out.is_empty() => {
                        out.remove(i.index(out.len()));
                    }
                    _ => {}
                }
                let method = if head { Method::HEAD } else { Method::GET };
                (out, method)
            },
        )
}

/// A few hundred cases in `cargo xtask test`; `PROPTEST_CASES` (set by
/// `cargo xtask fuzz`) for more.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(400);
    ProptestConfig {
        cases,
        // Failures shrink to a short, readable response; no files written.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// What the codec accepts, hyper's client accepts too, and reads as the
/// same message. Prints how many cases were run, and how many of them both
/// accepted (and were compared), ours alone refused, or both refused.
#[test]
fn the_codec_reads_no_message_hyper_refuses_or_reads_otherwise() {
    use proptest::test_runner::{TestCaseError, TestRunner};
    use std::cell::Cell;
    let (compared, stricter, refused) = (Cell::new(0u64), Cell::new(0u64), Cell::new(0u64));
    let mut runner = TestRunner::new(config());
    let result = runner.run(&response(), |(input, method)| {
        let ours = decode_in(&input, &method, &[]);
        let theirs = hyper_reads(&input, &method).map(|m| normalise(m, &method));
        match (ours, theirs) {
            (Ok(ours), theirs) => {
                compared.set(compared.get() + 1);
                prop_assert_eq!(
                    Ok(&ours.message),
                    theirs.as_ref(),
                    "input: {:?}",
                    String::from_utf8_lossy(&input)
                );
            }
            (Err(_), Ok(_)) => stricter.set(stricter.get() + 1),
            (Err(_), Err(_)) => refused.set(refused.get() + 1),
        }
        Ok::<(), TestCaseError>(())
    });
    let (compared, stricter, refused) = (compared.get(), stricter.get(), refused.get());
    eprintln!(
        "differential: {} cases: {compared} accepted by both and read alike, {stricter} refused by ours alone, {refused} refused by both",
        compared + stricter + refused
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

proptest! {
    #![proptest_config(config())]

    /// Bytes that arrive in other pieces give the same answer: the codec
    /// keeps no state that depends on where reads end.
    #[test]
    fn the_pieces_bytes_arrive_in_change_nothing(
        (input, method) in response(),
        pieces in prop::collection::vec(1usize..7, 0..64),
    ) {
        let whole = decode_in(&input, &method, &[]);
        let split = decode_in(&input, &method, &pieces);
        match (&whole, &split) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(&a.message, &b.message);
                prop_assert_eq!(a.reusable(), b.reusable());
            }
            (Err(a), Err(b)) => prop_assert_eq!(std::mem::discriminant(a), std::mem::discriminant(b), "{} / {}", a, b),
            _ => prop_assert!(false, "whole: {:?}, in pieces: {:?}, input {:?}", whole.map(|d| d.message), split.map(|d| d.message), String::from_utf8_lossy(&input)),
        }
    }
}
