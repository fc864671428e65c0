//! Bounds on what one upstream gets from this proxy: the cap on requests
//! in flight ([`Slots`], a semaphore with a bounded wait), the error a
//! request past a bound gets ([`Busy`], answered 503), and the WARN that
//! says so once per burst ([`Refusals`]). Imports nothing of the crate.

use std::fmt;
use std::sync::Arc;

use http::Uri;
use tokio::sync::OwnedSemaphorePermit;

use crate::BoxError;

/// Requests in flight to one upstream, at most, and how long a request
/// waits for a slot.
pub(super) struct Slots {
    pub(super) permits: Arc<tokio::sync::Semaphore>,
    pub(super) max: usize,
    pub(super) wait: std::time::Duration,
    pub(super) refusals: Refusals,
    pub(super) upstream: Uri,
}

impl Slots {
    /// A slot now, or after a wait of up to `wait`, else [`Busy`].
    pub(super) async fn acquire(&self) -> Result<OwnedSemaphorePermit, BoxError> {
        let wait = self.wait;
        match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                self.refusals
                    .count(&self.upstream, "upstream connection cap reached");
                Err(Box::new(Busy(format!(
                    "{} requests in flight to the upstream; no slot free within {wait:?}",
                    self.max
                ))))
            }
        }
    }
}

/// Requests refused at the cap, logged once per burst: a WARN at the first,
/// then at most one every [`Refusals::EVERY`] while they go on, with their
/// number (each refusal alone is a DEBUG line).
#[derive(Default)]
pub(super) struct Refusals {
    since_logged: std::sync::atomic::AtomicU64,
    /// When the last WARN was written, in seconds after the first refusal's
    /// epoch, plus one; 0: never.
    logged_at: std::sync::atomic::AtomicU64,
}

impl Refusals {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    pub(super) fn count(&self, upstream: &Uri, why: &'static str) {
        use std::sync::atomic::Ordering;
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now = EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs()
            + 1;
        self.since_logged.fetch_add(1, Ordering::Relaxed);
        let last = self.logged_at.load(Ordering::Relaxed);
        if last != 0 && now < last + Self::EVERY.as_secs() {
            return;
        }
        if self
            .logged_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let refused = self.since_logged.swap(0, Ordering::Relaxed);
            tracing::warn!(
                %upstream,
                refused,
                "{why}: requests answered 503 (logged at most every 10 s)"
            );
        }
    }
}

/// The upstream could take no more of this proxy's requests in time (its
/// connection cap, or its HTTP/2 streams): nothing was sent.
#[derive(Debug)]
pub(crate) struct Busy(pub(crate) String);

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Busy {}
