//! Idle and half-close timeouts, on paused tokio time (deterministic: the clock
//! only moves when every task is waiting).
//!
//! Through `Tunnel::copy` (bytes through user space).

mod common;

const SPLICED: bool = false;

include!("cases/timeouts.rs");
