//! The built-in demo upstream: a page, a body echo, and upgrade endpoints that
//! make half-close visible.
//!
//! Built with the feature `demo` (a default one; the WebSocket echo is what
//! needs tokio-tungstenite).
//!
//! Imports: `accept` and `echo` (the size `probe` checks). It knows nothing
//! of the proxy: it is an upstream like any other, which `serve` starts when
//! no `--upstream` is given.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::accept::Acceptor;
use crate::echo::FIN_FIRST_BYTES;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

const PAGE: &str = "halfclose-proxy demo upstream

This server stands behind halfclose-proxy to show TCP half-close surviving an
HTTP upgrade.

  GET  /                this page
  POST /echo            echoes the request body
  Upgrade: echo         (any path) echoes bytes until your FIN, then sends its own FIN
  Upgrade: echo, ?fin-first=ID
                        sends 64 KiB and its FIN first, then counts what you
                        still send until your FIN
  GET  /?fin-first-result=ID
                        how many bytes that connection got after its FIN
  Upgrade: websocket    (any path) echoes WebSocket messages until you close

Check a path for half-close with:  halfclose-proxy probe http://HOST:PORT/echo
";

/// Starts the demo upstream on a loopback port.
pub(crate) async fn start() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // Out of file descriptors and the like: back off, one line per burst.
    let mut listener = Acceptor::new(listener, "demo upstream");
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await;
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(
                        TokioIo::new(tcp),
                        hyper::service::service_fn(handle),
                    )
                    .await;
            });
        }
    });
    Ok(addr)
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut res = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().unwrap(),
    );
    res
}

fn switching(protocol: &'static str) -> Response<Body> {
    let mut res = text(StatusCode::SWITCHING_PROTOCOLS, "");
    res.headers_mut().remove(header::CONTENT_TYPE);
    res.headers_mut()
        .insert(header::CONNECTION, "upgrade".parse().unwrap());
    res.headers_mut()
        .insert(header::UPGRADE, protocol.parse().unwrap());
    res
}

/// The one protocol an upgrade request asks for, lowercased (proxy-core's
/// detection: `Connection: upgrade` and `Upgrade`, HTTP/1.1, no body).
fn requested_upgrade(req: &Request<Incoming>) -> Option<String> {
    let up = proxy_core::requested_upgrade(req.headers(), req.version(), req.method())?;
    up.protocols().next().map(str::to_ascii_lowercase)
}

/// What `fin-first` connections received after their FIN, by ID; a waiter
/// for a count not yet in is woken when it comes.
#[derive(Default)]
struct Counts {
    done: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    changed: tokio::sync::Notify,
}

fn counts() -> &'static Counts {
    static COUNTS: std::sync::OnceLock<Counts> = std::sync::OnceLock::new();
    COUNTS.get_or_init(Counts::default)
}

/// The value of query parameter `name`.
fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// Sends its data and FIN first, then counts the client's bytes to its FIN.
async fn fin_first(io: TokioIo<hyper::upgrade::Upgraded>, id: String) {
    use tokio::io::AsyncReadExt;
    let (mut rd, mut wr) = tokio::io::split(io);
    let data = vec![b'f'; FIN_FIRST_BYTES];
    let sent = async {
        wr.write_all(&data).await?;
        wr.shutdown().await
    };
    if sent.await.is_err() {
        return;
    }
    let mut got = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = rd.read(&mut buf).await {
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let c = counts();
    let mut done = c.done.lock().unwrap_or_else(|e| e.into_inner());
    // Bounded: old entries go first.
    if done.len() > 10_000 {
        done.clear();
    }
    done.insert(id, got);
    drop(done);
    c.changed.notify_waiters();
}

/// The count of a `fin-first` connection, waiting up to 10 s for it.
async fn fin_first_result(id: String) -> Option<u64> {
    let c = counts();
    let wait = async {
        loop {
            let changed = c.changed.notified();
            if let Some(n) = c.done.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
                return n;
            }
            changed.await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), wait)
        .await
        .ok()
}

async fn handle(mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if let Some(id) = query_param(&req, "fin-first-result") {
        return Ok(match fin_first_result(id).await {
            Some(n) => Response::new(
                Full::new(Bytes::from(n.to_string()))
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            ),
            None => text(
                StatusCode::NOT_FOUND,
                "no such fin-first connection ended\n",
            ),
        });
    }
    match requested_upgrade(&req).as_deref() {
        Some("echo") if query_param(&req, "fin-first").is_some() => {
            let id = query_param(&req, "fin-first").unwrap_or_default();
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(io) = on.await {
                    fin_first(TokioIo::new(io), id).await;
                }
            });
            return Ok(switching("echo"));
        }
        Some("echo") => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(io) = on.await {
                    echo_until_eof(TokioIo::new(io)).await;
                }
            });
            return Ok(switching("echo"));
        }
        Some("websocket") => {
            let Some(key) = req.headers().get("sec-websocket-key") else {
                return Ok(text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n"));
            };
            let accept = proxy_core::websocket_accept(key.as_bytes());
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(io) = on.await {
                    echo_websocket(TokioIo::new(io)).await;
                }
            });
            let mut res = switching("websocket");
            res.headers_mut().insert("sec-websocket-accept", accept);
            return Ok(res);
        }
        _ => {}
    }
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => text(StatusCode::OK, PAGE),
        (&Method::POST, "/echo") => Response::new(req.into_body().boxed_unsync()),
        _ => text(StatusCode::NOT_FOUND, "not found; see GET /\n"),
    })
}

/// Echoes bytes until the client's FIN, then sends its own FIN.
async fn echo_until_eof(io: TokioIo<hyper::upgrade::Upgraded>) {
    let (mut rd, mut wr) = tokio::io::split(io);
    if tokio::io::copy(&mut rd, &mut wr).await.is_ok() {
        let _ = wr.shutdown().await;
    }
}

async fn echo_websocket(io: TokioIo<hyper::upgrade::Upgraded>) {
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(m) if m.is_text() || m.is_binary() => {
                if ws.send(m).await.is_err() {
                    break;
                }
            }
            Ok(_) => {} // ping/pong and close are answered by tungstenite
            Err(_) => break,
        }
    }
}
