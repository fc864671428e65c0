//! A layer in front of a local app: `/api/...` goes to the upstream, the rest is
//! served locally.
//!
//! ```text
//! cargo run -p proxy-tower --example axum_layer -- [UPSTREAM] [LISTEN]
//! curl http://127.0.0.1:8080/         # local
//! curl http://127.0.0.1:8080/api/x    # upstream
//! ```
//!
//! UPSTREAM defaults to http://127.0.0.1:3000, LISTEN to 127.0.0.1:8080.

use proxy_tower::ReverseProxyLayer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let upstream = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:3000".into());
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());

    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "local" }))
        .layer(ReverseProxyLayer::new(&upstream)?.path_prefix("/api"));

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!(
        "listening on http://{}, /api -> {upstream}",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}
