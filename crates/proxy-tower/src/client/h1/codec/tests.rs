//! Unit tests of the HTTP/1.1 codec: one per rule of RFC 9112 section 6 and
//! 7, and per reuse rule, on byte slices. The differential test against
//! hyper's client is in `differential.rs`; the request encoder's tests are
//! in `request.rs`.

use bytes::BytesMut;
use http::{HeaderMap, Method, Version};

use super::*;

/// What a response decodes to, in a form two parsers can be compared on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Message {
    pub(super) status: u16,
    pub(super) version: Version,
    pub(super) headers: Vec<(String, Vec<u8>)>,
    pub(super) reason: Option<Vec<u8>>,
    pub(super) body: Vec<u8>,
    pub(super) trailers: Option<Vec<(String, Vec<u8>)>>,
}

/// The fields by name (stable: values of one name keep their order; the
/// order between names carries no meaning).
pub(super) fn fields(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<_> = map
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields
}

/// A response as this codec reads it, and what the connection is left with.
#[derive(Debug)]
pub(super) struct Decoded {
    pub(super) message: Message,
    pub(super) keep_alive: bool,
    /// Bytes after the message's end (never used as a response).
    pub(super) leftover: usize,
}

impl Decoded {
    /// Whether the connection may carry the next request: the rule the pool
    /// applies (kept alive, body read to its end, nothing left over).
    pub(super) fn reusable(&self) -> bool {
        self.keep_alive && self.leftover == 0
    }
}

/// Decodes `input` as the response to `method`, fed in pieces of the sizes
/// in `pieces` (the rest in one piece), then the connection's end.
pub(super) fn decode_in(input: &[u8], method: &Method, pieces: &[usize]) -> Result<Decoded, Error> {
    let mut rest = input;
    let mut sizes = pieces.iter().copied();
    let mut buf = BytesMut::new();
    // Feeds the next piece; false at the end of the input.
    let mut feed = |buf: &mut BytesMut| -> bool {
        if rest.is_empty() {
            return false;
        }
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        true
    };
    let mut reader = ResponseReader::new(method);
    let head = loop {
        if let Some(head) = reader.read(&mut buf)? {
            break head;
        }
        if !feed(&mut buf) {
            return Err(reader.truncated(&buf));
        }
    };
    let mut decoder = BodyDecoder::new(head.body);
    let mut body = Vec::new();
    let mut trailers = None;
    loop {
        let event = match decoder.decode(&mut buf)? {
            Event::NeedMore if feed(&mut buf) => continue,
            Event::NeedMore => decoder.eof()?,
            event => event,
        };
        match event {
            Event::Data(data) => body.extend_from_slice(&data),
            Event::Trailers(t) => {
                trailers = Some(fields(&t));
                break;
            }
            Event::End => break,
            Event::NeedMore => unreachable!("handled above"),
        }
    }
    assert!(decoder.is_done());
    assert_eq!(decoder.decode(&mut buf), Ok(Event::End), "stays done");
    let reason = head
        .response
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| r.as_bytes().to_vec());
    Ok(Decoded {
        message: Message {
            status: head.response.status().as_u16(),
            version: head.response.version(),
            headers: fields(head.response.headers()),
            reason,
            body,
            trailers,
        },
        keep_alive: head.keep_alive,
        leftover: buf.len() + rest.len(),
    })
}

fn get(input: &[u8]) -> Result<Decoded, Error> {
    decode_in(input, &Method::GET, &[])
}

/// Decoded whole and byte by byte, with the same result.
fn ok(input: &[u8]) -> Decoded {
    let whole = get(input).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(input)));
    let trickled = decode_in(input, &Method::GET, &vec![1; input.len()]).unwrap();
    assert_eq!(whole.message, trickled.message);
    assert_eq!(whole.reusable(), trickled.reusable());
    whole
}

fn invalid_(input: &[u8]) -> Error {
    let e = get(input).expect_err(&format!("{:?} accepted", String::from_utf8_lossy(input)));
    let trickled = decode_in(input, &Method::GET, &vec![1; input.len()]).unwrap_err();
    assert_eq!(
        std::mem::discriminant(&e),
        std::mem::discriminant(&trickled),
        "{e} / {trickled}"
    );
    e
}

fn is_invalid(e: &Error) -> bool {
    matches!(e, Error::Invalid(_))
}

fn header<'a>(d: &'a Decoded, name: &str) -> Vec<&'a [u8]> {
    d.message
        .headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
        .collect()
}

// RFC 9112 section 6.3 rule 5, and reuse after an exact body.
#[test]
fn a_content_length_body_is_read_exactly_and_the_connection_reused() {
    let d = ok(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(d.message.body, b"hello");
    assert!(d.reusable());
}

// Section 6.3 rule 3: Transfer-Encoding overrides Content-Length; the
// connection is closed after.
#[test]
fn transfer_encoding_wins_over_content_length_and_ends_reuse() {
    let d = ok(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(d.message.body, b"hello");
    assert!(header(&d, "content-length").is_empty(), "not forwarded");
    assert!(!d.reusable());
}

// RFC 9110 section 8.6: 1*DIGIT, nothing else.
#[test]
fn malformed_content_lengths_are_refused() {
    for value in [
        "+5", "-1", "0x5", "5, 7", "", " ", "5,", ",5", "5 5", "5.0", "1e3", "٥",
    ] {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\nhello");
        let e = invalid_(head.as_bytes());
        assert!(is_invalid(&e), "{value:?}: {e}");
    }
    // Two fields that disagree.
    let e = invalid_(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello");
    assert!(is_invalid(&e));
    // Past what hyper's client takes.
    let e = invalid_(b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n");
    assert!(is_invalid(&e));
    let e = invalid_(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n");
    assert!(is_invalid(&e));
}

// RFC 9110 section 8.6: a list of equal values is one value, forwarded once.
#[test]
fn a_repeated_content_length_is_forwarded_once() {
    for head in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    ] {
        let d = ok(head);
        assert_eq!(d.message.body, b"hello");
        assert_eq!(header(&d, "content-length"), [b"5"]);
        assert!(d.reusable());
    }
}

// Section 6.3 rule 1: no body after HEAD, 1xx, 204, 304, whatever the fields
// say; bytes after such a response are not a response to the next request.
#[test]
fn bodiless_responses_with_stray_bytes_end_reuse() {
    let head = decode_in(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        &Method::HEAD,
        &[],
    )
    .unwrap();
    assert!(head.message.body.is_empty());
    assert!(head.reusable());
    let stray = decode_in(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        &Method::HEAD,
        &[],
    )
    .unwrap();
    assert!(stray.message.body.is_empty());
    assert!(!stray.reusable());
    for status in ["204 No Content", "304 Not Modified"] {
        let clean = ok(format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\n\r\n").as_bytes());
        assert!(clean.message.body.is_empty());
        assert!(clean.reusable(), "{status}");
        let planted = ok(format!(
            "HTTP/1.1 {status}\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nplant!"
        )
        .as_bytes());
        assert!(planted.message.body.is_empty());
        assert!(!planted.reusable(), "{status}");
    }
}

// A planted second response after a whole one is left over: never read as
// the answer to the next request.
#[test]
fn bytes_after_a_body_end_reuse() {
    let d = ok(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nplant!");
    assert_eq!(d.message.body, b"hi");
    assert!(!d.reusable());
    let d = ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nX");
    assert_eq!(d.message.body, b"hi");
    assert!(!d.reusable());
}

// Section 6.3 rule 8: neither field: the body ends with the connection.
#[test]
fn a_close_delimited_body_reads_to_the_end_and_is_not_reused() {
    let d = ok(b"HTTP/1.1 200 OK\r\n\r\nall of this");
    assert_eq!(d.message.body, b"all of this");
    assert!(!d.keep_alive);
    let d = ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzipped");
    assert_eq!(d.message.body, b"zipped");
    assert!(!d.keep_alive);
}

// Section 8: an incomplete message is an error, not a short body.
#[test]
fn a_truncated_body_is_an_error() {
    for input in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"",
    ] {
        let e = invalid_(input);
        assert!(matches!(e, Error::Truncated(_)), "{e}");
    }
}

// Section 5.2: obs-fold is refused by a proxy's client (hyper refuses it too).
#[test]
fn obs_fold_is_refused() {
    assert!(is_invalid(&invalid_(
        b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 0\r\n\r\n"
    )));
    assert!(is_invalid(&invalid_(
        b"HTTP/1.1 200 OK\r\nX-A: one\r\n\ttwo\r\nContent-Length: 0\r\n\r\n"
    )));
}

// Section 5.5: no bare CR, NUL or other control in a field value.
#[test]
fn control_characters_in_fields_are_refused() {
    for value in [&b"a\rb"[..], b"a\0b", b"a\x01b", b"a\x7fb"] {
        let mut head = b"HTTP/1.1 200 OK\r\nX-A: ".to_vec();
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
        assert!(is_invalid(&invalid_(&head)), "{value:?}");
    }
    // A field name with a space or a colon-less line.
    assert!(is_invalid(&invalid_(b"HTTP/1.1 200 OK\r\nX A: b\r\n\r\n")));
    assert!(is_invalid(&invalid_(b"HTTP/1.1 200 OK\r\nX-A : b\r\n\r\n")));
    assert!(is_invalid(&invalid_(
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"
    )));
}

// Section 2.2: a recipient MAY take a bare LF as a line end in the head (as
// hyper does); the message is the same.
#[test]
fn bare_lf_ends_head_lines() {
    let d = ok(b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: b\n\nhi");
    assert_eq!(d.message.body, b"hi");
    assert_eq!(header(&d, "x-a"), [b"b"]);
    assert!(d.reusable());
}

// Section 4: HTTP-version SP 3DIGIT SP reason-phrase.
#[test]
fn malformed_status_lines_are_refused() {
    for line in [
        "HTTP/1.1 2000 OK",
        "HTTP/1.1 20 OK",
        "HTTP/1.1 abc OK",
        "HTTP/2.0 200 OK",
        "HTTP/1.2 200 OK",
        "http/1.1 200 OK",
        "HTTP/1.1 099 Low",
        "HTTP/1.1 200 O\x01K",
        "ICY 200 OK",
        "HTTP/1.1",
        "200 OK",
    ] {
        let head = format!("{line}\r\nContent-Length: 0\r\n\r\n");
        assert!(is_invalid(&invalid_(head.as_bytes())), "{line:?}");
    }
}

// A reason phrase of its own is kept (hyper's `ReasonPhrase`).
#[test]
fn a_custom_reason_phrase_is_kept() {
    let d = ok(b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(d.message.reason.as_deref(), Some(&b"Fine Thanks"[..]));
    let d = ok(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(d.message.reason, None);
}

#[test]
fn oversized_heads_are_refused() {
    let big = "x".repeat(MAX_HEAD);
    let whole = format!("HTTP/1.1 200 OK\r\nX-Big: {big}\r\nContent-Length: 0\r\n\r\n");
    assert!(matches!(invalid_(whole.as_bytes()), Error::TooLarge(_)));
    // Still arriving: refused once the buffer holds the limit, not later.
    let partial = format!("HTTP/1.1 200 OK\r\nX-Big: {big}");
    let e = decode_in(partial.as_bytes(), &Method::GET, &[1024; 100]).unwrap_err();
    assert!(matches!(e, Error::TooLarge(_)), "{e}");
    // Just under the limit is fine.
    let fits = "x".repeat(MAX_HEAD - 100);
    ok(format!("HTTP/1.1 200 OK\r\nX-Big: {fits}\r\nContent-Length: 0\r\n\r\n").as_bytes());
}

#[test]
fn too_many_fields_are_refused() {
    let fields = |n: usize| {
        let mut head = "HTTP/1.1 200 OK\r\n".to_owned();
        for i in 0..n - 1 {
            head.push_str(&format!("X-{i}: v\r\n"));
        }
        head.push_str("Content-Length: 0\r\n\r\n");
        head
    };
    ok(fields(MAX_HEADERS).as_bytes());
    assert!(is_invalid(&invalid_(fields(MAX_HEADERS + 1).as_bytes())));
}

// Section 15.2 of RFC 9110: 1xx heads come before the final one; bounded.
#[test]
fn informational_responses_are_skipped_up_to_a_bound() {
    let with = |n: usize| {
        let mut input = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(n.saturating_sub(1));
        if n > 0 {
            input.extend_from_slice(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
        }
        input.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
        input
    };
    for n in [0, 1, MAX_INFORMATIONAL] {
        let d = ok(&with(n));
        assert_eq!((d.message.status, &d.message.body[..]), (200, &b"hi"[..]));
        assert!(d.reusable());
    }
    assert!(matches!(
        invalid_(&with(MAX_INFORMATIONAL + 1)),
        Error::TooLarge(_)
    ));
    // 101 is never an informational answer to skip: nothing asked to switch.
    assert!(is_invalid(&invalid_(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"
    )));
}

// RFC 9110 section 15.2.2: to a request that asked to switch protocols, a
// 101 is the final answer, after any other 1xx, and the bytes after its head
// are the new protocol's, left where they are.
#[test]
fn a_101_ends_the_exchange_of_an_upgrade() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\nhello"[..],
    );
    let mut reader = ResponseReader::new(&Method::GET).upgrading(true);
    let head = reader.read(&mut buf).unwrap().expect("a final head");
    assert_eq!(head.response.status(), 101);
    assert_eq!(head.response.headers()["upgrade"], "echo");
    assert_eq!(
        &buf[..],
        b"hello",
        "the new protocol's bytes stay in the buffer"
    );
    // Cut anywhere, it waits for the rest of the head.
    let whole = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n\r\n";
    for cut in 1..whole.len() {
        let mut buf = BytesMut::from(&whole[..cut]);
        let mut reader = ResponseReader::new(&Method::GET).upgrading(true);
        assert!(reader.read(&mut buf).unwrap().is_none(), "cut at {cut}");
        buf.extend_from_slice(&whole[cut..]);
        assert_eq!(
            reader.read(&mut buf).unwrap().unwrap().response.status(),
            101
        );
        assert!(buf.is_empty());
    }
    // Without the ask, still refused.
    let mut buf = BytesMut::from(&whole[..]);
    assert!(ResponseReader::new(&Method::GET).read(&mut buf).is_err());
}

// Section 6.1: no Transfer-Encoding in HTTP/1.0; chunked once, and last.
#[test]
fn transfer_encoding_rules() {
    assert!(is_invalid(&invalid_(
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )));
    for te in ["chunked, chunked", "chunked,", ", chunked", "gzip,,chunked"] {
        let head = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n");
        assert!(is_invalid(&invalid_(head.as_bytes())), "{te:?}");
    }
    let twice = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert!(is_invalid(&invalid_(twice)));
    // Chunked last (any case): decoded; not last: read until close.
    let d = ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n");
    assert_eq!(d.message.body, b"hi");
    assert!(d.reusable());
    let d = ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n2\r\nhi\r\n0\r\n\r\n");
    assert_eq!(d.message.body, b"2\r\nhi\r\n0\r\n\r\n");
    assert!(!d.keep_alive);
}

// RFC 9112 section 9.3: persistence.
#[test]
fn connection_close_and_http_1_0_end_reuse() {
    let d = ok(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    assert!(!d.reusable());
    let d = ok(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n");
    assert!(!d.reusable());
    let d = ok(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(!d.reusable());
    let d = ok(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
    assert!(d.reusable());
}

// Section 7.1: chunks, extensions ignored, trailers kept.
#[test]
fn chunked_bodies_extensions_and_trailers() {
    let d = ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\nA \t; x\r\n, world!!!\r\n0\r\nX-Sum: 42\r\nX-Other: a\r\n\r\n");
    assert_eq!(d.message.body, b"hello, world!!!");
    assert_eq!(
        d.message.trailers,
        Some(vec![
            ("x-other".to_owned(), b"a".to_vec()),
            ("x-sum".to_owned(), b"42".to_vec())
        ])
    );
    assert!(d.reusable());
}

#[test]
fn chunk_size_lines_are_strict() {
    let body = |chunks: &[u8]| {
        let mut input = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        input.extend_from_slice(chunks);
        input
    };
    for bad in [
        &b"5\nhello\r\n0\r\n\r\n"[..],      // bare LF ends the size line
        b"5;a\nb\r\nhello\r\n0\r\n\r\n",    // bare LF inside an extension
        b"5;a\rb\r\nhello\r\n0\r\n\r\n",    // bare CR inside an extension
        b"5;a\0b\r\nhello\r\n0\r\n\r\n",    // NUL inside an extension
        b"5 5\r\nhello\r\n0\r\n\r\n",       // a space inside the size
        b"-5\r\nhello\r\n0\r\n\r\n",        // a sign
        b"0x5\r\nhello\r\n0\r\n\r\n",       // a prefix
        b"\r\nhello\r\n0\r\n\r\n",          // no size
        b";x\r\n\r\n",                      // no size, an extension: httparse reads a size of 0
        b" 5\r\nhello\r\n0\r\n\r\n",        // space before the size
        b"5\r\nhello\n0\r\n\r\n",           // bare LF after the data
        b"5\r\nhelloXX0\r\n\r\n",           // no CRLF after the data
        b"5\r\nhello\r\n0\r\nX-T: 1\n\r\n", // bare LF in the trailers
        b"5\r\nhello\r\n0\r\nX-T: 1\r\n two\r\n\r\n", // obs-fold in the trailers
        b"5\r\nhello\r\n0\r\nX-T:\x01\r\n\r\n", // a control in a trailer
    ] {
        let e = invalid_(&body(bad));
        assert!(is_invalid(&e), "{:?}: {e}", String::from_utf8_lossy(bad));
    }
    // Overflow: more hex digits than a u64 holds.
    assert!(is_invalid(&invalid_(&body(b"1ffffffffffffffff\r\n"))));
    assert!(is_invalid(&invalid_(&body(
        b"00000000000000005\r\nhello\r\n0\r\n\r\n"
    ))));
    // The largest size is a size (the upstream then streams forever).
    let d = decode_in(&body(b"ffffffffffffffff\r\nabc"), &Method::GET, &[]).unwrap_err();
    assert!(matches!(d, Error::Truncated(_)));
}

#[test]
fn chunk_lines_extensions_and_trailers_are_bounded() {
    let body = |chunks: Vec<u8>| {
        let mut input = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        input.extend_from_slice(&chunks);
        input
    };
    // One line over the bound, whole or still arriving.
    let mut long = b"1;".to_vec();
    long.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE));
    long.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
    assert!(matches!(invalid_(&body(long.clone())), Error::TooLarge(_)));
    // Many lines under the bound, over the body's bound.
    let mut many = Vec::new();
    let ext = "e".repeat(MAX_CHUNK_LINE - 10);
    for _ in 0..=MAX_CHUNK_EXTENSIONS / ext.len() {
        many.extend_from_slice(format!("1;{ext}\r\nx\r\n").as_bytes());
    }
    many.extend_from_slice(b"0\r\n\r\n");
    assert!(matches!(invalid_(&body(many)), Error::TooLarge(_)));
    // A trailer section over its bound.
    let mut trailers = b"0\r\n".to_vec();
    for i in 0..MAX_TRAILERS / 50 + 1 {
        trailers.extend_from_slice(format!("X-{i:04}: {}\r\n", "v".repeat(40)).as_bytes());
    }
    trailers.extend_from_slice(b"\r\n");
    assert!(matches!(invalid_(&body(trailers)), Error::TooLarge(_)));
    // Too many trailer fields.
    let mut trailers = b"0\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        trailers.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    trailers.extend_from_slice(b"\r\n");
    assert!(is_invalid(&invalid_(&body(trailers))));
}
