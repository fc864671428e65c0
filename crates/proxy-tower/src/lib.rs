//! A tower reverse proxy whose upgraded connections keep TCP half-close intact.
//!
//! [`ReverseProxy`] is a tower [`Service`](tower_service::Service) that forwards
//! requests to one upstream; [`ReverseProxyLayer`] forwards the requests that
//! match and lets the rest reach the service it wraps (an axum router, a tonic
//! server). Both drop into any tower stack: the proxy's `Error` is `Infallible`
//! and every failure is an HTTP response.
//!
//! Upgrades (WebSocket, or any protocol switched with `101 Switching Protocols`)
//! become tunnels relayed by [`halfclose_io`]: when one side sends FIN, the other
//! side gets it, and bytes keep flowing the other way until that side closes too.
//! The tunnel opens only after the upstream's 101 has been checked against the
//! request; any other answer is relayed as plain HTTP and the client connection
//! stays HTTP.
//!
//! WebSockets over HTTP/2 (RFC 8441: `CONNECT` with `:protocol websocket`)
//! are bridged to the HTTP/1.1 upgrade the upstream knows, END_STREAM mapped
//! to FIN both ways, or passed on as they are with
//! [`http2_only`](Builder::http2_only). The server in front must advertise
//! extended CONNECT: hyper's `http2::Builder::enable_connect_protocol()` (axum
//! does with its `http2` feature). The HTTP rules themselves (hop-by-hop headers, forwarding headers,
//! target URIs, upgrade checks) come from [`proxy_core`].
//!
//! # The whole app is a proxy, or the proxy is axum's fallback
//!
//! ```no_run
//! use proxy_tower::ReverseProxy;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let proxy = ReverseProxy::new("http://127.0.0.1:3000")?;
//! let app = axum::Router::new()
//!     .route("/health", axum::routing::get(|| async { "ok" }))
//!     .fallback_service(proxy);
//! axum::serve(tokio::net::TcpListener::bind("127.0.0.1:8080").await?, app).await?;
//! # Ok(()) }
//! ```
//!
//! # A layer in front of a local app
//!
//! ```no_run
//! use proxy_tower::ReverseProxyLayer;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // /api/... goes upstream, the rest stays local.
//! let app = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "local" }))
//!     .layer(ReverseProxyLayer::new("http://127.0.0.1:3000")?.path_prefix("/api"));
//! axum::serve(tokio::net::TcpListener::bind("127.0.0.1:8080").await?, app).await?;
//! # Ok(()) }
//! ```
//!
//! # A gRPC server that forwards some services to another server
//!
//! ```no_run
//! use proxy_tower::ReverseProxyLayer;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (_reporter, my_service) = tonic_health::server::health_reporter();
//! tonic::transport::Server::builder()
//!     .layer(ReverseProxyLayer::new("http://127.0.0.1:50051")?.http2_only().path_prefix("/legacy.Legacy/"))
//!     .add_service(my_service)
//!     .serve("127.0.0.1:50052".parse()?)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # An `https` upstream
//!
//! With the `tls` feature (on by default), `https://` upstreams work as they
//! are: rustls verifies the upstream against the bundled web PKI roots, or
//! against your own CA bundle, sends the host as SNI, and offers `h2` and
//! `http/1.1` by ALPN. Upgrades and their tunnels work over TLS, half-close
//! included (`close_notify` + FIN on one side is FIN on the other).
//!
//! ```no_run
//! use proxy_tower::ReverseProxy;
//!
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let public = ReverseProxy::new("https://api.example.com")?;
//! let private = ReverseProxy::builder("https://10.0.0.7:8443")
//!     .upstream_ca_pem(std::fs::read("internal-ca.pem")?)
//!     .build()?;
//! # let _ = (public, private); Ok(()) }
//! ```
//!
//! # Where the client address comes from
//!
//! X-Forwarded-For needs the client's address. The proxy reads a [`ClientInfo`]
//! from the request's extensions (servers built on hyper can insert one per
//! connection), or asks the hook set with [`Builder::client_info`]. Without
//! either, no X-Forwarded-For element is added. Under a plain `axum::serve`,
//! that is one line: a hook that reads axum's `ConnectInfo` (shown at
//! [`Builder::client_info`]), with the app served by
//! `into_make_service_with_connect_info::<SocketAddr>()`;
//! `examples/tower_http_stack.rs` runs it.

#![deny(missing_docs)]

// The layout, from the top down: each module imports only the ones below
// it (its module doc says which). `layer` and `balance` are built on
// `proxy`; `proxy` on `client` and `tunnel`; those on `body`, `io`,
// `settings` and the plain values at the bottom (`tunnels`, `sent`,
// `origin`, `reset`, `tls`, `metrics`, `tunnel_end`, `dns`).
mod layer;

mod balance;

mod proxy;

mod client;
mod tunnel;

mod body;
mod io;
mod settings;

#[cfg(feature = "dns")]
pub mod dns;
pub mod metrics;
mod origin;
mod reset;
mod sent;
#[cfg(feature = "tls")]
pub mod tls;
mod tunnel_end;
mod tunnels;

pub use balance::{BalancedProxy, MAX_EJECTION, UpstreamStatus};
pub use body::{ProxyBody, RequestBody};
pub use client::{DefaultClient, DefaultClientFuture, UpstreamBody};
pub use io::ClientIo;
pub use layer::{ProxyOr, ProxyOrFuture, ReverseProxyLayer};
pub use proxy::{Builder, ResponseFuture, ReverseProxy};
pub use proxy_core::{ClientInfo, ForwardedHeaders, HostHeader, ProxyError, UpgradePolicy};
pub use reset::{ResetHandle, ResettableIo};
pub use settings::{
    DEFAULT_BASE_EJECTION, DEFAULT_CONNECT_TIMEOUT, DEFAULT_EJECT_AFTER, DEFAULT_POOL_IDLE_TIMEOUT,
    DEFAULT_POOL_MAX_IDLE, DEFAULT_QUEUE_TIMEOUT, DEFAULT_READ_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT,
    DEFAULT_UPSTREAM_MAX_CONNECTIONS,
};
pub use tunnel_end::{TunnelEnd, TunnelEnding, TunnelSide};
pub use tunnels::Tunnels;

/// The boxed error type of bodies and clients.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
