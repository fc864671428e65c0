//! Go's `TestReverseProxyWebSocketHalfTCP` (Go issue 35892), ported by name, with a
//! halfclose-io tunnel relaying between a client socket and a server socket, plus
//! the orderings of both sides closing.
//!
//! Through `Tunnel::copy` (bytes through user space).

mod common;

const SPLICED: bool = false;

include!("cases/go_half_tcp.rs");
