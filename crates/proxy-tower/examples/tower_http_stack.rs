//! The proxy inside a stack of tower-http layers, as the command-line proxy
//! runs it: request IDs (`X-Request-Id` set when absent, sent upstream and
//! back), a trace span per request, and a panic in a hook turned into a 500
//! and a log line. Also: the client's address from axum's `ConnectInfo`, so
//! the upstream gets `X-Forwarded-For`.
//!
//! ```text
//! cargo run -p proxy-tower --example tower_http_stack -- [UPSTREAM] [LISTEN]
//! curl -i http://127.0.0.1:8080/
//! ```
//!
//! UPSTREAM defaults to http://127.0.0.1:3000, LISTEN to 127.0.0.1:8080.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use proxy_tower::{ClientInfo, ReverseProxy};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter("info,tower_http=debug")
        .init();
    let mut args = std::env::args().skip(1);
    let upstream = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:3000".into());
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());

    let proxy = ReverseProxy::builder(&upstream)
        // The one line that gives the proxy the client's address under axum.
        .client_info(
            |req| match req.extensions.get::<ConnectInfo<SocketAddr>>() {
                Some(ConnectInfo(addr)) => ClientInfo::new(addr.ip()),
                None => ClientInfo::unknown(),
            },
        )
        .build()?;
    let app = axum::Router::new().fallback_service(proxy).layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(TraceLayer::new_for_http())
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(CatchPanicLayer::new()),
    );

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!(
        "listening on http://{}, forwarding to {upstream}",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
