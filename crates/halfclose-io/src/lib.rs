//! Bidirectional copy between two async byte streams that keeps TCP half-close
//! intact.
//!
//! A relay (a TCP proxy, a tunnel, a TLS terminator, a reverse proxy after an HTTP
//! upgrade) holds two connections and copies bytes between them. TCP lets each
//! side close only its *write* half (send FIN) and keep reading. This crate copies
//! both ways and, when one side's read half reaches EOF, shuts down the write half
//! of the other side, so the FIN travels through the relay, while the opposite
//! direction keeps running until its own EOF. The copy ends when both directions
//! are done.
//!
//! ```no_run
//! use std::time::Duration;
//! use halfclose_io::Tunnel;
//! use tokio::net::{TcpListener, TcpStream};
//!
//! # async fn run() -> std::io::Result<()> {
//! let listener = TcpListener::bind("127.0.0.1:8080").await?;
//! loop {
//!     let (mut client, _) = listener.accept().await?;
//!     tokio::spawn(async move {
//!         let mut server = TcpStream::connect("127.0.0.1:9000").await?;
//!         let transfer = Tunnel::new()
//!             .idle_timeout(Duration::from_secs(300))
//!             .half_close_timeout(Duration::from_secs(30))
//!             .copy(&mut client, &mut server)
//!             .await?;
//!         println!("{transfer}");
//!         std::io::Result::Ok(())
//!     });
//! }
//! # }
//! ```
//!
//! Compared with `tokio::io::copy_bidirectional`, which also passes each EOF
//! on as a shutdown and keeps the other direction running until it ends:
//!
//! - an IO error never silently drops bytes that were already read while their
//!   destination can still take them;
//! - an idle tunnel holds no copy buffer (reads land in a per-thread scratch
//!   buffer; only bytes the destination cannot take yet are kept);
//! - optional idle and half-close timeouts, so a peer that never sends its FIN
//!   cannot hold two sockets forever;
//! - the two directions take turns at going first, so one that always has data
//!   cannot use up tokio's cooperative budget and starve the other (with tokio's
//!   version, a reply can wait behind an endless stream the other way);
//! - the result ([`Transfer`]) says who closed first and how long the tunnel lived,
//!   and the error ([`TunnelError`]) says which direction failed, with the bytes
//!   that got through, and which side reset, so that a proxy can pass a reset
//!   on as a reset rather than as a FIN.
//!
//! `examples/tcp_relay.rs` is a complete TCP relay built on this crate.

#![deny(missing_docs)]

mod direction;
mod error;
#[cfg(all(target_os = "linux", feature = "splice"))]
mod splice;
mod transfer;
mod tunnel;

/// The most pipes [`Tunnel::copy_tcp`] has open at once in the process, each
/// two file descriptors (on Linux, with the `splice` feature; elsewhere it
/// makes none). They are taken only while bytes are moving, and at most 64
/// are kept for reuse; a direction that finds none left, or cannot make one
/// (the process is out of file descriptors), copies through user space
/// until it is idle again. A server that plans its file descriptors (the
/// `halfclose-proxy` binary derives its connection limit from them) can
/// count on at most twice this many for pipes.
pub const MAX_SPLICE_PIPES: usize = 256;

pub use error::TunnelError;
pub use transfer::{Direction, Side, Transfer};
pub use tunnel::{DEFAULT_BUFFER_SIZE, Tunnel, copy_bidirectional};
