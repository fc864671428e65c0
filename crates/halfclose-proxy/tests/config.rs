//! `--config FILE`: routes by host and path, certificates by SNI, reloads
//! (SIGHUP and `POST /reload`) that keep tunnels and refuse bad files, and
//! `check-config`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use e2e_tests::tls::*;
use e2e_tests::*;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{BIN, Proxy, admin_addr};

/// A scratch directory for one test's files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Dir {
        let dir =
            std::env::temp_dir().join(format!("halfclose-config-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    /// Writes `name`, replacing it at once (a rename), as editors and
    /// deploy tools do.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let tmp = self.0.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        let path = self.0.join(name);
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An upstream answering `NAME PATH` to every request.
async fn named(name: &'static str) -> std::net::SocketAddr {
    serve_fn(move |req: Request<Incoming>| async move {
        Response::new(format!("{name} {}", req.uri().path()))
    })
    .await
}

/// `GET path` with `Host: host` on a new connection: (status, body).
async fn get<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    host: &str,
    path: &str,
) -> (u16, String) {
    io.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = within("response head", read_head(io)).await.unwrap();
    let len: usize = header_of(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    within("response body", io.read_exact(&mut body))
        .await
        .unwrap();
    (
        status_of(&head),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn get_new(addr: std::net::SocketAddr, host: &str, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    get(&mut tcp, host, path).await
}

/// Opens a tunnel with `Host: host` through `proxy` to a raw upstream whose
/// request heads come through `heads`.
async fn tunnel(
    proxy: std::net::SocketAddr,
    host: &str,
    heads: &mut tokio::sync::mpsc::UnboundedReceiver<(String, TcpStream)>,
) -> (TcpStream, TcpStream) {
    let mut cli = TcpStream::connect(proxy).await.unwrap();
    cli.write_all(
        format!(
            "GET /chat HTTP/1.1\r\nHost: {host}\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (_, mut srv) = within("the upgrade at the upstream", heads.recv())
        .await
        .unwrap();
    switch_protocols(&mut srv, "echo").await;
    let head = within("101", read_head(&mut cli)).await.unwrap();
    assert_eq!(status_of(&head), 101, "{head}");
    (cli, srv)
}

/// `msg` from `from` arrives at `to`.
async fn carries<A: AsyncWrite + Unpin, B: AsyncRead + Unpin>(
    from: &mut A,
    to: &mut B,
    msg: &[u8],
) {
    from.write_all(msg).await.unwrap();
    let mut buf = vec![0; msg.len()];
    within("bytes through the tunnel", to.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(buf, msg);
}

/// The client closes its write half: the upstream reads EOF, still sends
/// (and the client reads it), then closes too, and the client reads EOF.
async fn half_close_works(cli: &mut TcpStream, srv: &mut TcpStream) {
    cli.shutdown().await.unwrap();
    let mut buf = [0u8; 16];
    let n = within("the FIN at the upstream", srv.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(n, 0, "EOF at the upstream");
    carries(srv, cli, b"after the client's FIN").await;
    srv.shutdown().await.unwrap();
    let n = within("the FIN at the client", cli.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(n, 0, "EOF at the client");
}

/// Two hosts and three routes (a WebSocket route, an API with a stripped
/// prefix, a catch-all for the host), on a plain listener and a TLS one
/// with a certificate per host chosen by SNI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_with_certificates_by_sni() {
    let dir = Dir::new("routes");
    let pki = Pki::new();
    let (ws_leaf, site_leaf) = (pki.leaf(&["ws.example.test"]), pki.leaf(&["example.test"]));
    dir.write("ws.pem", &ws_leaf.cert_pem);
    dir.write("ws-key.pem", &ws_leaf.key_pem);
    dir.write("site.pem", &site_leaf.cert_pem);
    dir.write("site-key.pem", &site_leaf.key_pem);
    let (chat, mut heads) = raw_upstream().await;
    let (api, web) = (named("api").await, named("web").await);
    let file = dir.write(
        "proxy.toml",
        &format!(
            r#"
[[listener]]
address = "127.0.0.1:0"

[[listener]]
address = "127.0.0.1:0"
tls = [{{ cert = "ws.pem", key = "ws-key.pem" }}, {{ cert = "site.pem", key = "site-key.pem" }}]

[[route]]
host = "ws.example.test"
upstream = "chat"

[[route]]
host = "example.test"
path = "/api"
strip_prefix = true
upstream = "api"

[[route]]
host = "example.test"
upstream = "web"

[upstream.chat]
servers = ["http://{chat}"]

[upstream.api]
servers = ["http://{api}"]

[upstream.web]
servers = ["http://{web}"]
"#
        ),
    );
    let (mut proxy, _logs) = Proxy::with_config(&file, &["--workers", "2"]).await;
    let plain = proxy.addr;
    let tls_line = proxy.line_starting("listening on https://").await;
    let tls: std::net::SocketAddr = tls_line["listening on https://".len()..].parse().unwrap();

    assert_eq!(
        get_new(plain, "example.test", "/").await,
        (200, "web /".into())
    );
    assert_eq!(
        get_new(plain, "example.test", "/api/users?x=1").await,
        (200, "api /users".into())
    );
    assert_eq!(
        get_new(plain, "EXAMPLE.test:80", "/api").await,
        (200, "api /".into())
    );
    assert_eq!(
        get_new(plain, "example.test", "/apix").await,
        (200, "web /apix".into())
    );
    // Matched and forwarded resolved: not a way out of the prefix.
    assert_eq!(
        get_new(plain, "example.test", "/api/../admin").await,
        (200, "web /admin".into())
    );
    assert_eq!(get_new(plain, "unknown.test", "/").await.0, 404);
    assert_eq!(get_new(plain, "ws.example.test.evil", "/").await.0, 404);

    // Each name gets its certificate, and its routes.
    let connector = pki.connector(&[b"http/1.1"]);
    let mut site = connect(&connector, tls, "example.test").await;
    assert_eq!(
        site.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
        site_leaf.cert.to_vec()
    );
    assert_eq!(
        get(&mut site, "example.test", "/api/v1").await,
        (200, "api /v1".into())
    );
    let ws = connect(&connector, tls, "ws.example.test").await;
    assert_eq!(
        ws.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
        ws_leaf.cert.to_vec()
    );

    // The WebSocket route: a tunnel whose half-close works.
    let (mut cli, mut srv) = tunnel(plain, "ws.example.test", &mut heads).await;
    carries(&mut cli, &mut srv, b"ping").await;
    carries(&mut srv, &mut cli, b"pong").await;
    half_close_works(&mut cli, &mut srv).await;
    proxy.stop().await;
}

fn chat_config(chat: &str, other_path: &str, idle: &str) -> String {
    format!(
        r#"
[[listener]]
address = "127.0.0.1:0"

[[route]]
host = "ws.example.test"
upstream = "chat"
tunnel_idle_timeout = "{idle}"

[[route]]
host = "example.test"
path = "{other_path}"
upstream = "web"

[upstream.chat]
servers = ["http://{chat}"]

[upstream.web]
servers = ["http://{chat}"]
"#
    )
}

/// A tunnel opened before a reload carries bytes both ways across three
/// reloads that change its route's upstream and the other routes, and its
/// half-close works after them; new tunnels go to the new upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_outlives_three_reloads_and_still_half_closes() {
    let dir = Dir::new("tunnel");
    let (first, mut first_heads) = raw_upstream().await;
    let (second, mut second_heads) = raw_upstream().await;
    let file = dir.write("proxy.toml", &chat_config(&first.to_string(), "/a", "1h"));
    let (mut proxy, _logs) = Proxy::with_config(&file, &[]).await;
    let (mut cli, mut srv) = tunnel(proxy.addr, "ws.example.test", &mut first_heads).await;

    let configs = [
        chat_config(&second.to_string(), "/a", "1h"),
        chat_config(&second.to_string(), "/b", "30m"),
        chat_config(&second.to_string(), "/c", "10m"),
    ];
    for (i, config) in configs.iter().enumerate() {
        dir.write("proxy.toml", config);
        proxy.signal("HUP");
        let line = proxy.line_starting("reloaded ").await;
        assert!(line.ends_with(&format!("generation {}", i + 2)), "{line}");
        carries(&mut cli, &mut srv, format!("ping {i}").as_bytes()).await;
        carries(&mut srv, &mut cli, format!("pong {i}").as_bytes()).await;
        // New tunnels go to the new upstream.
        let (mut c2, mut s2) = tunnel(proxy.addr, "ws.example.test", &mut second_heads).await;
        carries(&mut c2, &mut s2, b"new").await;
    }
    assert!(
        first_heads.try_recv().is_err(),
        "nothing new reached the old upstream"
    );
    half_close_works(&mut cli, &mut srv).await;
    proxy.stop().await;
}

/// With `drain_timeout`, a tunnel opened before a reload ends that long
/// after it with a FIN each way; one opened after it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_limit_ends_older_tunnels_with_a_fin_each_way() {
    let dir = Dir::new("drain");
    let (chat, mut heads) = raw_upstream().await;
    let config = format!(
        "drain_timeout = \"300ms\"\n{}",
        chat_config(&chat.to_string(), "/a", "1h")
    );
    let file = dir.write("proxy.toml", &config);
    let (mut proxy, _logs) = Proxy::with_config(&file, &[]).await;
    let (mut old_cli, mut old_srv) = tunnel(proxy.addr, "ws.example.test", &mut heads).await;
    // Sent before the reload, so relayed before the drain's FIN however
    // slow the machine.
    old_cli.write_all(b"last").await.unwrap();
    dir.write("proxy.toml", &config.replace("/a", "/b"));
    proxy.signal("HUP");
    proxy.line_starting("reloaded ").await;
    let (mut new_cli, mut new_srv) = tunnel(proxy.addr, "ws.example.test", &mut heads).await;
    // Bytes relayed before the FIN arrive, then the FIN, on both sides.
    let mut got = Vec::new();
    within("the FIN at the upstream", old_srv.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"last");
    let mut got = Vec::new();
    within("the FIN at the client", old_cli.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(got.is_empty());
    // The newer tunnel goes on.
    carries(&mut new_cli, &mut new_srv, b"still here").await;
    carries(&mut new_srv, &mut new_cli, b"and back").await;
    proxy.stop().await;
}

/// An invalid config on reload changes nothing: routes and certificates in
/// use stay, and one log line says why, with the file and line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_on_reload_changes_nothing_and_says_why() {
    let dir = Dir::new("invalid");
    let pki = Pki::new();
    let leaf = pki.leaf(&["example.test"]);
    dir.write("site.pem", &leaf.cert_pem);
    dir.write("site-key.pem", &leaf.key_pem);
    let (web, other) = (named("web").await, named("other").await);
    let good = format!(
        r#"[[listener]]
address = "127.0.0.1:0"

[[listener]]
address = "127.0.0.1:0"
tls = [{{ cert = "site.pem", key = "site-key.pem" }}]

[[route]]
host = "example.test"
upstream = "web"

[upstream.web]
servers = ["http://{web}"]

[upstream.other]
servers = ["http://{other}"]
"#
    );
    let file = dir.write("proxy.toml", &good);
    let (mut proxy, mut logs) = Proxy::with_config(&file, &["--admin-listen", "127.0.0.1:0"]).await;
    let tls_line = proxy.line_starting("listening on https://").await;
    let tls: std::net::SocketAddr = tls_line["listening on https://".len()..].parse().unwrap();
    let admin = admin_addr(&mut proxy).await;

    // Each breaks the file differently, and says where: (text, line, words).
    let broken = [
        (good.replace("[[route]]", "[[route]"), 8, "invalid"),
        (
            good.replace("upstream = \"web\"", "upstream = \"web\"\ncolour = \"red\""),
            11,
            "colour",
        ),
        (
            good.replace("upstream = \"web\"", "upstream = \"nowhere\""),
            10,
            "nowhere",
        ),
        (good.replace("site.pem", "gone.pem"), 6, "gone.pem"),
    ];
    for (n, (text, line, words)) in broken.iter().enumerate() {
        dir.write("proxy.toml", text);
        let at = format!("proxy.toml:{line}:");
        if n % 2 == 0 {
            proxy.signal("HUP");
        } else {
            let (status, body) = admin_post(&admin, "/reload").await;
            assert_eq!(status, 422, "{body}");
            assert!(body.contains(&at) && body.contains(words), "{body}");
        }
        let said = proxy.line_starting("config not reloaded").await;
        assert!(
            said.contains("generation 1") && said.contains(&at),
            "{said}"
        );
        let logged = logs.wait_for(&["config not reloaded", &at, words]).await;
        assert!(logged.contains("WARN"), "{logged}");
        logs.lines.clear();
        // The routes and the certificate in use stay.
        assert_eq!(
            get_new(proxy.addr, "example.test", "/x").await,
            (200, "web /x".into())
        );
        let tls_cli = connect(&pki.connector(&[b"http/1.1"]), tls, "example.test").await;
        assert_eq!(
            tls_cli.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
            leaf.cert.to_vec()
        );
    }
    // And a good one is taken again.
    dir.write(
        "proxy.toml",
        &good.replace("upstream = \"web\"", "upstream = \"other\""),
    );
    let (status, body) = admin_post(&admin, "/reload").await;
    assert_eq!((status, body.as_str()), (200, "reloaded: generation 2\n"));
    assert_eq!(
        get_new(proxy.addr, "example.test", "/x").await,
        (200, "other /x".into())
    );
    let (_, metrics) = common::admin_get(&admin, "/metrics").await;
    assert!(metrics.contains("proxy_config_generation 2"), "{metrics}");
    assert!(
        metrics.contains("proxy_config_reloads_total{result=\"failure\"} 4"),
        "{metrics}"
    );
    proxy.stop().await;
}

async fn admin_post(addr: &str, path: &str) -> (u16, String) {
    let mut cli = TcpStream::connect(addr).await.unwrap();
    cli.write_all(
        format!("POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (head, body) = read_response(&mut cli).await;
    (
        status_of(&head),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A client loop making requests (new connections and keep-alive ones)
/// during 20 reloads sees no refused connection and no error; a listener
/// added by a reload opens and one removed closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_during_twenty_reloads_never_fail() {
    let dir = Dir::new("loop");
    let (a, b) = (named("a").await, named("b").await);
    let config = |server: std::net::SocketAddr, extra_listener: bool| {
        let extra = match extra_listener {
            true => "[[listener]]\naddress = \"127.0.0.1:0\"\n\n",
            false => "",
        };
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\n{extra}[[route]]\nupstream = \"app\"\n\n[upstream.app]\nservers = [\"http://{server}\"]\n"
        )
    };
    let file = dir.write("proxy.toml", &config(a, false));
    let (mut proxy, _logs) =
        Proxy::with_config(&file, &["--admin-listen", "127.0.0.1:0", "--workers", "2"]).await;
    let admin = admin_addr(&mut proxy).await;
    let addr = proxy.addr;

    let stop = Arc::new(AtomicBool::new(false));
    // Requests answered so far.
    let (done, answered) = tokio::sync::watch::channel(0u64);
    let done = Arc::new(done);
    let clients: Vec<_> = (0..2)
        .map(|i| {
            let (stop, done) = (stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut keep_alive: Option<TcpStream> = None;
                while !stop.load(Ordering::Relaxed) {
                    // Client 0 opens a connection per request, client 1
                    // keeps one (a new one when the server closes it).
                    let (status, body) = if i == 0 {
                        let tcp = TcpStream::connect(addr).await;
                        let mut tcp = tcp.unwrap_or_else(|e| panic!("connection refused: {e}"));
                        get(&mut tcp, "any.test", "/p").await
                    } else {
                        let tcp = match keep_alive.take() {
                            Some(t) => t,
                            None => TcpStream::connect(addr).await.expect("connect"),
                        };
                        let mut tcp = tcp;
                        let r = get(&mut tcp, "any.test", "/p").await;
                        keep_alive = Some(tcp);
                        r
                    };
                    assert_eq!(status, 200, "{body}");
                    assert!(body == "a /p" || body == "b /p", "{body}");
                    done.send_modify(|n| *n += 1);
                }
            })
        })
        .collect();
    for i in 0..20 {
        let server = if i % 2 == 0 { b } else { a };
        dir.write("proxy.toml", &config(server, i % 4 == 0));
        let before = *answered.borrow();
        let (status, body) = admin_post(&admin, "/reload").await;
        assert_eq!(status, 200, "{body}");
        if i % 4 == 0 {
            let line = proxy.line_starting("listening on http://").await;
            let extra: std::net::SocketAddr = line["listening on http://".len()..].parse().unwrap();
            assert_eq!(get_new(extra, "x", "/p").await.0, 200);
        } else if i % 4 == 1 {
            proxy.line_starting("stopped listening on").await;
        }
        // Requests go on between reloads.
        let mut answered = answered.clone();
        within(
            "requests after a reload",
            answered.wait_for(|&n| n >= before + 2),
        )
        .await
        .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        within("the client loop", c).await.unwrap();
    }
    assert!(*answered.borrow() >= 40);
    // The last config (i = 19) sends to a.
    assert_eq!(get_new(addr, "x", "/p").await, (200, "a /p".into()));
    proxy.stop().await;
}

/// Every ```toml block of a document.
fn toml_blocks(doc: &str) -> Vec<String> {
    doc.split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("```").map(|(block, _)| block.to_owned()))
        .collect()
}

/// Writes a certificate for every `cert = "..."`, `key = "..."` pair of
/// `config` into `dir`.
fn make_certificates(dir: &Dir, pki: &Pki, config: &str) {
    let quoted = |key: &str| -> Vec<String> {
        config
            .split(&format!("{key} = \""))
            .skip(1)
            .filter_map(|r| r.split_once('"').map(|(v, _)| v.to_owned()))
            .collect()
    };
    for (cert, key) in quoted("cert").into_iter().zip(quoted("key")) {
        let leaf = pki.leaf(&["example.test"]);
        dir.write(&cert, &leaf.cert_pem);
        dir.write(&key, &leaf.key_pem);
    }
}

async fn check_config(file: &Path) -> (bool, String, String) {
    let out = within(
        "check-config",
        tokio::process::Command::new(BIN)
            .arg("check-config")
            .arg(file)
            .output(),
    )
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `check-config` passes the example configs of the README and the config
/// reference, printing their routes; broken files fail with every error
/// and its line.
#[tokio::test]
async fn check_config_passes_the_documented_examples_and_fails_broken_ones() {
    let dir = Dir::new("check");
    let pki = Pki::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut examples = Vec::new();
    for doc in ["README.md", "docs/config.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        examples.extend(toml_blocks(&text).into_iter().map(|b| (doc, b)));
    }
    assert!(!examples.is_empty(), "no ```toml example in the docs");
    for (i, (doc, example)) in examples.iter().enumerate() {
        make_certificates(&dir, &pki, example);
        let file = dir.write(&format!("example-{i}.toml"), example);
        let (ok, out, err) = check_config(&file).await;
        assert!(ok, "{doc} example {i}:\n{example}\n{err}");
        assert!(out.contains("routes, in the order they are tried"), "{out}");
    }

    let broken = dir.write(
        "broken.toml",
        "[[listener]]\naddress = \"127.0.0.1:8080\"\nspeed = 1\n\n[[route]]\nupstream = \"none\"\n",
    );
    let (ok, out, err) = check_config(&broken).await;
    assert!(!ok, "{out}");
    assert!(
        err.contains("broken.toml:3:") && err.contains("speed"),
        "{err}"
    );
    let broken = dir.write(
        "broken.toml",
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n\n[[route]]\nupstream = \"none\"\npath = \"x\"\n",
    );
    let (ok, _, err) = check_config(&broken).await;
    assert!(!ok);
    assert!(
        err.contains("broken.toml:5:") && err.contains("\"none\""),
        "{err}"
    );
    assert!(
        err.contains("broken.toml:6:") && err.contains("path"),
        "{err}"
    );
    assert!(err.contains("2 error(s)"), "{err}");
    let (ok, _, err) = check_config(&dir.0.join("missing.toml")).await;
    assert!(!ok && err.contains("cannot read"), "{err}");
}
