//! Bulk transfer, resets and odd shutdown results through a halfclose-io tunnel.
//!
//! Through `Tunnel::copy` (bytes through user space).

mod common;

const SPLICED: bool = false;

include!("cases/transfer.rs");
