//! The axum uses of proxy-tower, as its issue writes them.

use bytes::Bytes;
use e2e_tests::*;
use http::Response;
use http_body_util::Full;
use proxy_tower::{ReverseProxy, ReverseProxyLayer};
use tokio::io::AsyncWriteExt;

async fn upstream() -> std::net::SocketAddr {
    serve_fn(|req| async move {
        Response::new(Full::new(Bytes::from(format!(
            "upstream {}",
            req.uri().path()
        ))))
    })
    .await
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut cli = tokio::net::TcpStream::connect(addr).await.unwrap();
    cli.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut cli).await;
    (
        status_of(&head),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn serve_axum(app: axum::Router) -> std::net::SocketAddr {
    let (listener, addr) = listener().await;
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn fallback_app(
    up: std::net::SocketAddr,
) -> Result<axum::Router, Box<dyn std::error::Error>> {
    // 1. The whole app is a proxy, or the proxy is axum's fallback:
    let proxy = ReverseProxy::new(&format!("http://{up}"))?;
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .fallback_service(proxy);
    Ok(app)
}

async fn layer_app(up: std::net::SocketAddr) -> Result<axum::Router, Box<dyn std::error::Error>> {
    // 2. A layer in front of a local app: /api/... goes upstream, the rest stays local.
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "local" }))
        .layer(ReverseProxyLayer::new(&format!("http://{up}"))?.path_prefix("/api"));
    Ok(app)
}

#[tokio::test]
async fn proxy_as_axum_fallback() {
    let up = upstream().await;
    let addr = serve_axum(fallback_app(up).await.unwrap()).await;
    assert_eq!(get(addr, "/health").await, (200, "ok".into()));
    assert_eq!(
        get(addr, "/anything/else").await,
        (200, "upstream /anything/else".into())
    );
}

#[tokio::test]
async fn layer_forwards_only_its_prefix() {
    let up = upstream().await;
    let addr = serve_axum(layer_app(up).await.unwrap()).await;
    assert_eq!(get(addr, "/").await, (200, "local".into()));
    assert_eq!(get(addr, "/api").await, (200, "upstream /api".into()));
    assert_eq!(
        get(addr, "/api/users").await,
        (200, "upstream /api/users".into())
    );
    assert_eq!(
        get(addr, "/apiary").await.0,
        404,
        "a prefix matches whole segments"
    );
}

#[tokio::test]
async fn layer_tunnels_upgrades_with_half_close() {
    let (up, mut heads) = raw_upstream().await;
    let addr = serve_axum(layer_app(up).await.unwrap()).await;
    let mut cli = tokio::net::TcpStream::connect(addr).await.unwrap();
    cli.write_all(
        format!(
            "GET /api/ws HTTP/1.1\r\nHost: {addr}\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (_, mut srv) = within("upgrade at upstream", heads.recv()).await.unwrap();
    switch_protocols(&mut srv, "echo").await;
    let head = within("101", read_head(&mut cli)).await.unwrap();
    assert_eq!(status_of(&head), 101, "{head}");
    use tokio::io::AsyncReadExt;
    cli.write_all(b"ping").await.unwrap();
    cli.shutdown().await.unwrap();
    let mut got = Vec::new();
    within(
        "client bytes and FIN at upstream",
        srv.read_to_end(&mut got),
    )
    .await
    .unwrap();
    assert_eq!(got, b"ping");
    srv.write_all(b"pong after FIN").await.unwrap();
    srv.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("reply and FIN at client", cli.read_to_end(&mut back))
        .await
        .unwrap();
    assert_eq!(back, b"pong after FIN");
}

/// `matching`: a predicate picks what goes upstream; with a prefix, both must hold.
#[tokio::test]
async fn layer_with_a_predicate() {
    let up = upstream().await;
    let layer = ReverseProxyLayer::new(&format!("http://{up}"))
        .unwrap()
        .path_prefix("/api")
        .matching(|req| req.headers.contains_key("x-canary"));
    let app = axum::Router::new()
        .route("/api/users", axum::routing::get(|| async { "local users" }))
        .layer(layer);
    let addr = serve_axum(app).await;
    assert_eq!(get(addr, "/api/users").await, (200, "local users".into()));
    let mut cli = tokio::net::TcpStream::connect(addr).await.unwrap();
    cli.write_all(
        format!("GET /api/users HTTP/1.1\r\nHost: {addr}\r\nX-Canary: 1\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (head, body) = read_response(&mut cli).await;
    assert_eq!(
        (status_of(&head), body.as_slice()),
        (200, &b"upstream /api/users"[..])
    );
}

/// A path prefix cannot be escaped with dot-segments, plain or percent-encoded:
/// such paths are judged (and forwarded) with their dot-segments resolved, and
/// those that hide a dot-segment behind an encoded slash are refused with 400.
#[tokio::test]
async fn layer_prefix_cannot_be_escaped_with_dot_segments() {
    let up = upstream().await;
    let app = axum::Router::new()
        .route("/admin", axum::routing::get(|| async { "local admin" }))
        .layer(
            ReverseProxyLayer::new(&format!("http://{up}"))
                .unwrap()
                .path_prefix("/api"),
        );
    let addr = serve_axum(app).await;
    for escape in [
        "/api/../admin",
        "/api/%2e%2e/admin",
        "/api/.%2E/admin",
        "/api/./../admin",
    ] {
        let (status, body) = get(addr, escape).await;
        assert!(
            !body.starts_with("upstream"),
            "{escape} reached the upstream as {body:?}"
        );
        assert_ne!(status, 200, "{escape}");
    }
    assert_eq!(
        get(addr, "/api/x/../users").await,
        (200, "upstream /api/users".into())
    );
    assert_eq!(
        get(addr, "/api/./users/%2e").await,
        (200, "upstream /api/users/".into())
    );
    for hidden in ["/api/..%2fadmin", "/api/..%5Cadmin"] {
        assert_eq!(get(addr, hidden).await.0, 400, "{hidden}");
    }
}

/// The proxy on its own keeps every request under its upstream's base path.
#[tokio::test]
async fn base_path_cannot_be_escaped() {
    let up = upstream().await;
    let proxy = ReverseProxy::new(&format!("http://{up}/base")).unwrap();
    let addr = serve_axum(axum::Router::new().fallback_service(proxy)).await;
    assert_eq!(
        get(addr, "/../admin").await,
        (200, "upstream /base/admin".into())
    );
    assert_eq!(
        get(addr, "/%2e%2e/%2E%2E/admin").await,
        (200, "upstream /base/admin".into())
    );
    assert_eq!(get(addr, "/..%2F..%2Fadmin").await.0, 400);
}

/// The stack of `examples/tower_http_stack.rs`: the client's address from
/// axum's `ConnectInfo` reaches the upstream as X-Forwarded-For; a request id
/// is set, sent upstream and returned; a panic in a hook is a 500 and the
/// connection and server live on.
#[tokio::test]
async fn tower_http_stack_with_connect_info() {
    use std::net::SocketAddr;

    use axum::extract::ConnectInfo;
    use proxy_tower::ClientInfo;
    use tower::ServiceBuilder;
    use tower_http::catch_panic::CatchPanicLayer;
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    use tower_http::trace::TraceLayer;

    let up = serve_fn(|req| async move {
        let h = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        Response::new(Full::new(Bytes::from(format!(
            "xff={} id={}",
            h("x-forwarded-for"),
            h("x-request-id")
        ))))
    })
    .await;
    let proxy = ReverseProxy::builder(&format!("http://{up}"))
        .client_info(
            |req| match req.extensions.get::<ConnectInfo<SocketAddr>>() {
                Some(ConnectInfo(addr)) => ClientInfo::new(addr.ip()),
                None => ClientInfo::unknown(),
            },
        )
        .rewrite(|req| {
            if req.uri.path().ends_with("/boom") {
                panic!("a hook that panics");
            }
        })
        .build()
        .unwrap();
    let app = axum::Router::new().fallback_service(proxy).layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(TraceLayer::new_for_http())
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(CatchPanicLayer::new()),
    );
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });

    let mut cli = tokio::net::TcpStream::connect(addr).await.unwrap();
    cli.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut cli).await;
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status_of(&head), 200, "{head}");
    let id = header_of(&head, "x-request-id")
        .expect("a request id")
        .to_owned();
    assert_eq!(body, format!("xff=127.0.0.1 id={id}"));

    // The panic is a 500 on the same connection, which stays usable.
    cli.write_all(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut cli).await;
    assert_eq!(status_of(&head), 500, "{head}");
    cli.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut cli).await;
    assert_eq!(status_of(&head), 200, "{head}");
}
