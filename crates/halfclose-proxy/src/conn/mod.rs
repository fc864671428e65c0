//! One client connection, from accept to close: protocol detection under the
//! header-read timeout, then hyper's HTTP/1 or HTTP/2 server, closed when idle,
//! shed under pressure, and shut down gracefully on a signal.
//!
//! hyper-util's auto builder received a connection's first bytes to tell HTTP/1
//! from HTTP/2 with no time limit, so a socket that sends nothing holds its
//! connection slot forever. Here the first bytes (for HTTP/2, the preface and
//! the first SETTINGS frame) must arrive within the header-read timeout, and
//! an HTTP/1 connection must have sent a whole request head by then.
//!
//! The parts, in the order a connection meets them, with what each imports
//! (the arrows point down this list):
//!
//! - `open` (imports `server`, `shared`): the TLS handshake or the protocol
//!   sniff, under the first-request deadline; the `ClientIo`.
//! - `server` (`watch`, `head_timer`, `shared`): hyper's HTTP/1 or HTTP/2
//!   server, and the per-request service (client info, in-flight guard).
//! - `watch` (`doorbell`, `shared`): the loop around the hyper connection
//!   (first-head deadline, idle timeout, pressure, shutdown) and the
//!   in-flight tracking it judges idleness by.
//! - `doorbell`, `head_timer`, `shared` (nothing of the crate): cheap
//!   wake-ups for the loop's rare events; hyper's header-read timer, one per
//!   connection; the settings, signals, service trait and protocol.
//!
//! This module re-exports what `listen` and `serve` use. Outside `conn` it
//! imports `proxy_protocol` alone (the header a listener may expect): it
//! knows nothing of `serve`, `listen` or the upstreams (the service comes
//! in as a type parameter).

mod doorbell;
mod head_timer;
mod open;
mod server;
mod shared;
mod watch;

pub(crate) use open::serve;
pub(crate) use shared::{Pressure, RequestService, Settings, Signals, shutting_down};
