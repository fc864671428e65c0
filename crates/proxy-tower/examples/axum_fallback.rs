//! The whole app is a proxy, with one local route: `/health` is answered here,
//! everything else goes to the upstream.
//!
//! ```text
//! cargo run -p proxy-tower --example axum_fallback -- [UPSTREAM] [LISTEN]
//! curl http://127.0.0.1:8080/health
//! ```
//!
//! UPSTREAM defaults to http://127.0.0.1:3000, LISTEN to 127.0.0.1:8080.

use proxy_tower::ReverseProxy;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let upstream = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:3000".into());
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());

    let proxy = ReverseProxy::new(&upstream)?;
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .fallback_service(proxy);

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!(
        "listening on http://{}, forwarding to {upstream}",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}
