//! The sans-IO rules of an HTTP reverse proxy.
//!
//! Every reverse proxy decides, for each request and response, which headers are
//! hop-by-hop, whether this is a protocol upgrade and whether the upstream's answer
//! to it is acceptable, which forwarding headers to add, and where the request
//! goes. Most proxy security bugs live here: headers stripped through
//! `Connection`, tunnels opened without a real `101`, spoofed `X-Forwarded-For`.
//!
//! This crate holds those rules and nothing else: it works on
//! [`http::request::Parts`], [`http::response::Parts`] and [`http::HeaderMap`],
//! with no IO, runtime or HTTP implementation, so it can be tested exhaustively
//! and used under any server or client.
//!
//! The entry point is [`ProxyRules`]: [`ProxyRules::prepare_request`] and
//! [`ProxyRules::prepare_response`] apply the whole pipeline in the right order.
//! The individual rules are public too ([`remove_hop_by_hop`],
//! [`requested_upgrade`], [`join_paths`]).
//!
//! ```
//! use http::Request;
//! use proxy_core::{ClientInfo, ForwardedHeaders, HostHeader, ProxyRules, UpgradePolicy};
//!
//! # fn main() -> Result<(), proxy_core::ProxyError> {
//! let rules = ProxyRules::new("http://10.0.0.2:8080")?
//!     .host_header(HostHeader::Preserve)
//!     .forwarded_headers(ForwardedHeaders::default().forwarded(true))
//!     .upgrade_policy(UpgradePolicy::only(["websocket"]));
//!
//! let (mut parts, ()) = Request::get("/").header("host", "example.com").body(()).unwrap().into_parts();
//! rules.prepare_request(&mut parts, &ClientInfo::new("2001:db8::7".parse().unwrap()))?;
//! assert_eq!(parts.headers["host"], "example.com");
//! assert_eq!(parts.headers["forwarded"], r#"for="[2001:db8::7]";host=example.com;proto=http"#);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod connect;
mod error;
mod forwarded;
mod hop;
mod path;
mod rules;
mod target;
mod upgrade;

pub use connect::{websocket_accept, websocket_key};
pub use error::ProxyError;
pub use forwarded::{
    ClientInfo, ForwardedHeaders, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
};
pub use hop::{has_token, hop_by_hop_fields, is_hop_by_hop, remove_hop_by_hop};
pub use path::normalize_path;
pub use rules::{HostHeader, Outcome, Prepared, ProxyRules};
pub use target::{clean_query, join_paths};
pub use upgrade::{UpgradePolicy, UpgradeRequest, requested_upgrade};
