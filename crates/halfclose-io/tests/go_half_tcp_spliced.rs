//! The cases of `go_half_tcp.rs` through `Tunnel::copy_tcp`: with splice(2) on
//! Linux, so both paths keep the same contract.

mod common;

const SPLICED: bool = true;

include!("cases/go_half_tcp.rs");
