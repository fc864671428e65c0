//! `--access-log`: a line per request when its response ends and a line
//! per tunnel when it ends, read back as JSON and matched against what the
//! test did; the common format; SIGUSR1 reopens a rotated file.

use std::path::PathBuf;
use std::time::Duration;

use e2e_tests::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::Proxy;

/// The next access log line on the proxy's stdout (`--access-log -`).
async fn next_line(proxy: &mut Proxy, first: char) -> String {
    loop {
        let line = proxy.line_starting("").await;
        if line.starts_with(first) {
            return line;
        }
    }
}

async fn next_json(proxy: &mut Proxy) -> Value {
    let line = next_line(proxy, '{').await;
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

async fn request(proxy: std::net::SocketAddr, raw: &str) -> (String, Vec<u8>) {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(raw.as_bytes()).await.unwrap();
    read_response(&mut tcp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_tunnels_are_logged_as_json() {
    let mut proxy = Proxy::start(&["--access-log", "-"]).await;
    let addr = proxy.addr;

    let (head, _) = request(
        addr,
        "GET /?q=1 HTTP/1.1\r\nHost: example.test\r\nX-Request-Id: req-1\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 200);
    let line = next_json(&mut proxy).await;
    assert_eq!(line["type"], "request");
    assert_eq!(line["request_id"], "req-1");
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["host"], "example.test");
    assert_eq!(line["path"], "/?q=1");
    assert_eq!(line["protocol"], "HTTP/1.1");
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream"], "default");
    assert_eq!(line["bytes_in"], 0);
    let body_len: u64 = header_of(&head, "content-length").unwrap().parse().unwrap();
    assert_eq!(line["bytes_out"], body_len);
    assert!(line["head_us"].as_u64().unwrap() <= line["duration_us"].as_u64().unwrap());
    assert!(line["time"].as_str().unwrap().ends_with('Z'));

    let (head, body) = request(
        addr,
        "POST /echo HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!((status_of(&head), body.as_slice()), (200, &b"hello"[..]));
    let line = next_json(&mut proxy).await;
    assert_eq!(
        (line["method"].as_str(), line["path"].as_str()),
        (Some("POST"), Some("/echo"))
    );
    assert_eq!(
        (line["bytes_in"].as_u64(), line["bytes_out"].as_u64()),
        (Some(5), Some(5))
    );
    let id = line["request_id"].as_str().unwrap();
    assert_eq!(id.len(), 16, "the proxy's own id");

    // A tunnel: its 101 is a request line, its end a tunnel line.
    let mut cli = send_upgrade(addr, "echo", b"").await;
    let head = within("101", read_head(&mut cli)).await.unwrap();
    assert_eq!(status_of(&head), 101);
    let request_id = header_of(&head, "x-request-id").unwrap().to_owned();
    let line = next_json(&mut proxy).await;
    assert_eq!(
        (line["status"].as_u64(), line["type"].as_str()),
        (Some(101), Some("request"))
    );
    cli.write_all(b"abcdef").await.unwrap();
    let mut buf = [0u8; 6];
    within("echo", cli.read_exact(&mut buf)).await.unwrap();
    cli.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("the echo's FIN", cli.read_to_end(&mut rest))
        .await
        .unwrap();
    let line = next_json(&mut proxy).await;
    assert_eq!(line["type"], "tunnel");
    assert_eq!(line["request_id"], request_id.as_str());
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["upstream"], "default");
    assert!(
        line["server"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
    assert_eq!(line["protocol"], "echo");
    assert_eq!(line["client_to_upstream"], 6);
    assert_eq!(line["upstream_to_client"], 6);
    assert_eq!(line["first_eof"], "client");
    assert_eq!(line["end"], "clean");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_common_format_has_the_apache_fields_first() {
    let mut proxy = Proxy::start(&["--access-log", "-", "--access-log-format", "common"]).await;
    let (head, body) = request(
        proxy.addr,
        "GET /x%20y HTTP/1.1\r\nHost: h.test\r\nX-Request-Id: r\"2\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 404, "{head}");
    let line = next_line(&mut proxy, '1').await;
    let (start, rest) = line.split_once(" [").unwrap();
    assert_eq!(start, "127.0.0.1 - -");
    let (_, rest) = rest.split_once("] ").unwrap();
    let want = format!(
        "\"GET /x%20y HTTP/1.1\" 404 {} \"h.test\" default 0 ",
        body.len()
    );
    assert!(rest.starts_with(&want), "{rest}");
    assert!(rest.ends_with(" r\\x222"), "{rest}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_a_rotated_file() {
    let dir = std::env::temp_dir().join(format!("halfclose-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.log");
    let path_str = path.display().to_string();
    let proxy = Proxy::start(&["--access-log", &path_str]).await;
    request(proxy.addr, "GET /one HTTP/1.1\r\nHost: x\r\n\r\n").await;
    wait_for_line(&path, "/one").await;
    let rotated: PathBuf = dir.join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    proxy.signal("USR1");
    // Lines go to the new file once it is reopened: wait for it to appear.
    within("the reopened file", async {
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    request(proxy.addr, "GET /two HTTP/1.1\r\nHost: x\r\n\r\n").await;
    wait_for_line(&path, "/two").await;
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("/one") && !old.contains("/two"), "{old}");
    // A line still in a worker's batch at shutdown is written before exit.
    request(proxy.addr, "GET /three HTTP/1.1\r\nHost: x\r\n\r\n").await;
    proxy.stop().await;
    let new = std::fs::read_to_string(&path).unwrap();
    assert!(new.contains("/three"), "{new}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Waits for a line with `what` in the file (the writer flushes when idle).
async fn wait_for_line(path: &std::path::Path, what: &str) {
    within(&format!("{what} in the access log"), async {
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().any(|l| l.contains(what)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}
