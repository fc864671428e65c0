//! [`ReverseProxy`], the tower service, and its [`Builder`]: by concern,
//! `service` the service, `builder` the options (and the constructors that
//! take them), `forward` one request through the proxy, `answer` the
//! proxy's own answers and what they say about the upstream. This file
//! only hands their names on.
//!
//! May import the settings, the bodies, the client, the tunnel and the
//! bottom modules; never the balancer or the layer (they import it).

mod answer;
mod builder;
mod forward;
mod service;

pub(crate) use answer::{Unsent, Verdict};
pub use builder::Builder;
pub(crate) use builder::check_scheme;
pub use service::{ResponseFuture, ReverseProxy};
