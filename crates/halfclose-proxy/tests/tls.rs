//! The binary's HTTPS listener (`--tls-cert`/`--tls-key`) and https upstreams
//! (`--upstream https://...`, `--upstream-ca`). Certificates are made by the
//! tests.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use e2e_tests::tls::*;
use e2e_tests::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{Proxy, probe, refuses};

/// A scratch directory for one test's PEM files, removed on drop.
struct Files(PathBuf);

impl Files {
    fn new(test: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("halfclose-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Files(dir)
    }

    /// Writes `leaf` as cert.pem and key.pem, replacing the files at once (a
    /// rename), as certificate renewal tools do.
    fn install(&self, leaf: &Leaf) -> (String, String) {
        let write = |name: &str, text: &str| {
            let tmp = self.0.join(format!("{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.0.join(name)).unwrap();
            self.0.join(name).display().to_string()
        };
        (
            write("cert.pem", &leaf.cert_pem),
            write("key.pem", &leaf.key_pem),
        )
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary serving HTTPS with `leaf`, with `args`.
async fn https_proxy(files: &Files, leaf: &Leaf, args: &[&str]) -> Proxy {
    let (cert, key) = files.install(leaf);
    let mut all = vec!["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    all.extend_from_slice(args);
    Proxy::start(&all).await
}

fn peer_cert(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn get_over_http1(tls: &mut tokio_rustls::client::TlsStream<TcpStream>) -> String {
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    within("response head", read_head(tls)).await.unwrap()
}

/// HTTPS with the demo upstream: HTTP/2 and HTTP/1.1 chosen by ALPN, and the
/// first stdout line says https.
#[tokio::test]
async fn https_listener_speaks_http1_and_http2_by_alpn() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost"]);
    let files = Files::new("alpn");
    let proxy = https_proxy(&files, &leaf, &[]).await;

    let mut h1 = connect(&pki.connector(&[b"http/1.1"]), proxy.addr, "localhost").await;
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let head = get_over_http1(&mut h1).await;
    assert_eq!(status_of(&head), 200, "{head}");

    let h2 = connect(
        &pki.connector(&[b"h2", b"http/1.1"]),
        proxy.addr,
        "localhost",
    )
    .await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(h2))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://localhost/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = within("h2 response", send.send_request(req)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), http::Version::HTTP_2);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(!body.is_empty());
    proxy.stop().await;
}

/// A TLS client that half-closes (`close_notify` + FIN, what Go's
/// `tls.Conn.CloseWrite` sends) through the HTTPS listener: the upstream reads
/// the last bytes and EOF, keeps sending, and its FIN comes back as
/// `close_notify` + FIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_half_close_crosses_the_https_listener() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost"]);
    let files = Files::new("halfclose");
    let (upstream, mut heads) = raw_upstream().await;
    let up = format!("http://{upstream}");
    let proxy = https_proxy(&files, &leaf, &["--upstream", &up]).await;

    let mut cli = connect(&pki.connector(&[b"http/1.1"]), proxy.addr, "localhost").await;
    cli.write_all(
        b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let (request, mut srv) = within("upgrade at the upstream", heads.recv())
        .await
        .unwrap();
    assert_eq!(
        header_of(&request, "x-forwarded-proto"),
        Some("https"),
        "{request}"
    );
    switch_protocols(&mut srv, "echo").await;
    let head = within("101", read_head(&mut cli)).await.unwrap();
    assert_eq!(status_of(&head), 101, "{head}");

    cli.write_all(b"last words").await.unwrap();
    cli.shutdown().await.unwrap(); // close_notify, then FIN
    let mut got = Vec::new();
    within("data and EOF at the upstream", srv.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"last words");
    srv.write_all(b"reply after your FIN").await.unwrap();
    srv.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(
        "reply and a clean EOF at the client",
        cli.read_to_end(&mut back),
    )
    .await
    .expect("close_notify before FIN: a clean end");
    assert_eq!(back, b"reply after your FIN");
    proxy.stop().await;
}

/// Ten stalled TLS handshakes (silent sockets, or a ClientHello cut short) at
/// `--max-connections 10` do not lock a good client out: the handshake counts
/// against the header-read timeout, each stalled socket is closed, and the good
/// client gets its answer within the timeout plus two seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_handshakes_do_not_delay_a_good_client() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost"]);
    let files = Files::new("stalled");
    let proxy = https_proxy(
        &files,
        &leaf,
        &["--max-connections", "10", "--header-read-timeout", "1s"],
    )
    .await;
    let mut stalled = Vec::new();
    for i in 0..10 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        if i % 2 == 1 {
            // A TLS record header announcing a handshake message that never comes.
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .unwrap();
        }
        stalled.push(s);
    }
    let good = async {
        let mut tls = connect(&pki.connector(&[b"http/1.1"]), proxy.addr, "localhost").await;
        get_over_http1(&mut tls).await
    };
    let head = tokio::time::timeout(Duration::from_secs(3), good)
        .await
        .expect("the good client answered within the timeout plus two seconds");
    assert_eq!(status_of(&head), 200, "{head}");
    for mut s in stalled {
        let mut rest = Vec::new();
        let _ = within("a stalled socket to be closed", s.read_to_end(&mut rest)).await;
    }
    proxy.stop().await;
}

/// SIGHUP with a new certificate on disk: new connections get it, a tunnel
/// opened before keeps running both ways, and a broken file keeps the
/// certificate in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_keeps_tunnels() {
    let pki = Pki::new();
    let (old, new) = (pki.leaf(&["localhost"]), pki.leaf(&["localhost"]));
    let files = Files::new("sighup");
    let (upstream, mut heads) = raw_upstream().await;
    let up = format!("http://{upstream}");
    let mut proxy = https_proxy(&files, &old, &["--upstream", &up]).await;
    let connector = pki.connector(&[b"http/1.1"]);

    let mut cli = connect(&connector, proxy.addr, "localhost").await;
    assert_eq!(peer_cert(&cli), old.cert.to_vec());
    cli.write_all(
        b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let (_, mut srv) = within("upgrade at the upstream", heads.recv())
        .await
        .unwrap();
    switch_protocols(&mut srv, "echo").await;
    let head = within("101", read_head(&mut cli)).await.unwrap();
    assert_eq!(status_of(&head), 101, "{head}");

    files.install(&new);
    proxy.signal("HUP");
    proxy.line_starting("reloaded TLS certificate").await;
    // A new client (no TLS session to resume, which would carry the old
    // certificate's authentication over).
    let fresh = connect(&pki.connector(&[b"http/1.1"]), proxy.addr, "localhost").await;
    assert_eq!(peer_cert(&fresh), new.cert.to_vec());

    // The tunnel made with the old certificate still carries bytes both ways.
    cli.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    within("ping at the upstream", srv.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"ping");
    srv.write_all(b"pong").await.unwrap();
    within("pong at the client", cli.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"pong");

    // A broken file on SIGHUP: the certificate in use stays.
    std::fs::write(files.path("cert.pem"), "not a certificate").unwrap();
    proxy.signal("HUP");
    let line = proxy.line_starting("TLS certificate not reloaded").await;
    assert!(line.contains("cert.pem"), "{line}");
    let after = connect(&pki.connector(&[b"http/1.1"]), proxy.addr, "localhost").await;
    assert_eq!(peer_cert(&after), new.cert.to_vec());
    drop((cli, srv));
    proxy.stop().await;
}

/// `--upstream https://...` with `--upstream-ca`: requests and the half-close
/// probe pass through to a TLS upstream (here, a second proxy serving HTTPS in
/// front of the demo upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_upstream_ca_passes_the_probe() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost", "127.0.0.1"]);
    let files = Files::new("upstream-ca");
    let back = https_proxy(&files, &leaf, &[]).await;
    std::fs::write(files.path("ca.pem"), &pki.ca_pem).unwrap();
    let up = format!("https://127.0.0.1:{}", back.addr.port());
    let ca = files.path("ca.pem");
    let front = Proxy::start(&["--upstream", &up, "--upstream-ca", &ca]).await;

    let (head, _) = raw_get(front.addr, "/").await;
    assert_eq!(status_of(&head), 200, "{head}");
    let (passed, text) = probe(&[&format!("http://{}/echo", front.addr)]).await;
    assert!(passed, "{text}");
    assert_eq!(text.matches("PASS").count(), 5, "{text}");
    front.stop().await;
    back.stop().await;
}

/// `probe https://...` against the HTTPS listener in front of the demo
/// upstream: every check passes, our `close_notify` + FIN crossing the proxy
/// and the server's coming back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_over_https_passes() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost"]);
    let files = Files::new("probe-https");
    let proxy = https_proxy(&files, &leaf, &[]).await;
    std::fs::write(files.path("ca.pem"), &pki.ca_pem).unwrap();
    let url = format!("https://localhost:{}/echo", proxy.addr.port());
    let ca = files.path("ca.pem");
    for http2 in [false, true] {
        let mut args = vec![url.as_str(), "--ca", ca.as_str()];
        if http2 {
            // HTTP/2 by ALPN, the echo on an extended CONNECT stream.
            args.push("--http2");
        }
        let (passed, text) = probe(&args).await;
        assert!(passed, "{text}");
        assert_eq!(text.matches("PASS").count(), 5, "{text}");
    }
    // Without the CA, the certificate is not trusted: the connect check fails.
    let (passed, text) = probe(&[&url]).await;
    assert!(!passed, "{text}");
    assert!(text.starts_with("FAIL  connect"), "{text}");
    proxy.stop().await;
}

/// Missing or malformed certificate files, or a bad CA bundle: one line, a
/// non-zero exit, at start.
#[tokio::test]
async fn bad_tls_files_are_one_line_at_start() {
    let files = Files::new("bad");
    let pki = Pki::new();
    let (cert, key) = files.install(&pki.leaf(&["localhost"]));
    std::fs::write(files.path("junk.pem"), "junk").unwrap();
    let junk = files.path("junk.pem");
    let missing = files.path("missing.pem");
    let cases: Vec<Vec<&str>> = vec![
        vec!["--tls-cert", &missing, "--tls-key", &key],
        vec!["--tls-cert", &junk, "--tls-key", &key],
        vec!["--tls-cert", &cert, "--tls-key", &junk],
        vec!["--tls-cert", &cert],
        vec!["--upstream", "https://127.0.0.1:1", "--upstream-ca", &junk],
        vec![
            "--upstream",
            "https://127.0.0.1:1",
            "--upstream-ca",
            &missing,
        ],
    ];
    for args in cases {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend(args);
        refuses(&all).await;
    }
}
