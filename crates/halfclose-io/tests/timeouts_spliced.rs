//! The cases of `timeouts.rs` through `Tunnel::copy_tcp`: with splice(2) on
//! Linux, so both paths keep the same contract.

mod common;

const SPLICED: bool = true;

include!("cases/timeouts.rs");
