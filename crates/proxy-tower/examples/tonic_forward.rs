//! A tonic server that serves the gRPC health service itself and forwards every
//! call of `legacy.Legacy` to an upstream gRPC server over HTTP/2.
//!
//! ```text
//! cargo run -p proxy-tower --example tonic_forward -- [UPSTREAM] [LISTEN]
//! ```
//!
//! UPSTREAM defaults to http://127.0.0.1:50051, LISTEN to 127.0.0.1:50052.

use proxy_tower::ReverseProxyLayer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let upstream = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:50052".into());

    let (_reporter, my_service) = tonic_health::server::health_reporter();
    println!("listening on http://{listen}, /legacy.Legacy/ -> {upstream}");
    tonic::transport::Server::builder()
        .layer(
            ReverseProxyLayer::new(&upstream)?
                .http2_only()
                .path_prefix("/legacy.Legacy/"),
        )
        .add_service(my_service)
        .serve(listen.parse()?)
        .await?;
    Ok(())
}
