//! The `Upgrade: echo` protocol as the demo upstream serves it and `probe`
//! checks it: what the two must agree on, so that `probe` builds without
//! the demo (feature `demo`) and still checks any demo upstream.
//!
//! Imports nothing of the crate: `demo` and `probe` import it.

/// Bytes the demo sends before its FIN in `fin-first` mode
/// (`Upgrade: echo`, `?fin-first=ID`).
pub(crate) const FIN_FIRST_BYTES: usize = 64 * 1024;
