//! Passive health of one upstream (outlier detection): failures in a row
//! eject it for a cool-down that doubles while it keeps failing; an active
//! check's verdict ejects it or brings it back at once.
//!
//! Knows nothing of requests or of the balancer: it is told of successes
//! and failures. Imports `metrics` only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::Uri;
use tokio::time::Instant;

/// The longest ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Passive health of one upstream (outlier detection).
pub(crate) struct Health {
    metrics: Arc<crate::metrics::Upstream>,
    eject_after: u32,
    base_ejection: Duration,
    failures: AtomicU32,
    /// Ejections in a row (reset by a success), for the growing cool-down.
    ejections: AtomicU32,
    /// When the current ejection ends, in nanoseconds after `EPOCH`; 0: none.
    ejected_until: AtomicU64,
}

/// The reference point of `Health::ejected_until`.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    Instant::from_std(*EPOCH.get_or_init(std::time::Instant::now))
}

impl Health {
    pub(crate) fn new(
        eject_after: u32,
        base_ejection: Duration,
        metrics: Arc<crate::metrics::Upstream>,
    ) -> Self {
        Health {
            metrics,
            eject_after,
            base_ejection,
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }

    pub(crate) fn ejected_until(&self) -> Option<Instant> {
        match self.ejected_until.load(Ordering::Acquire) {
            0 => None,
            n => {
                let until = epoch() + Duration::from_nanos(n);
                (until > Instant::now()).then_some(until)
            }
        }
    }

    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected_until().is_some()
    }

    /// An active check's verdict: a failure ejects now, a success ends any
    /// ejection.
    pub(crate) fn report(&self, healthy: bool, uri: &Uri) {
        if healthy {
            if self.is_ejected() {
                tracing::info!(upstream = %uri, "upstream passed its health check; back in");
            }
            self.ejected_until.store(0, Ordering::Release);
            self.success();
        } else if !self.is_ejected() {
            self.eject(uri, "failed its health check");
        }
    }

    pub(crate) fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.ejections.store(0, Ordering::Release);
    }

    pub(crate) fn failure(&self, uri: &Uri) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if self.eject_after == 0 || n < self.eject_after || self.is_ejected() {
            return;
        }
        self.eject(uri, "failed in a row");
    }

    /// Ejects the upstream unless it is ejected already: of failures that
    /// reach the bound at the same time, one ejects.
    pub(crate) fn eject(&self, uri: &Uri, why: &'static str) {
        let now = Instant::now();
        let mut current = self.ejected_until.load(Ordering::Acquire);
        let cool_down = loop {
            if current != 0 && epoch() + Duration::from_nanos(current) > now {
                return;
            }
            let k = self.ejections.load(Ordering::Acquire);
            let cool_down = self
                .base_ejection
                .saturating_mul(1u32 << k.min(16))
                .min(MAX_EJECTION);
            let until = (now + cool_down - epoch()).as_nanos().max(1) as u64;
            match self.ejected_until.compare_exchange(
                current,
                until,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break cool_down,
                Err(other) => current = other,
            }
        };
        self.ejections.fetch_add(1, Ordering::AcqRel);
        self.failures.store(0, Ordering::Release);
        tracing::warn!(upstream = %uri, why, ?cool_down, "upstream ejected");
        self.metrics.ejection();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{DEFAULT_BASE_EJECTION, DEFAULT_EJECT_AFTER};

    fn health() -> Health {
        let label = metrics::SharedString::from("http://test/");
        Health::new(
            DEFAULT_EJECT_AFTER,
            DEFAULT_BASE_EJECTION,
            Arc::new(crate::metrics::Upstream::new(&label)),
        )
    }

    /// Failures that reach the bound at the same time eject once: one
    /// ejection counted, the cool-down not doubled.
    #[test]
    fn concurrent_failures_eject_once() {
        let health = health();
        let uri = Uri::from_static("http://test/");
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..DEFAULT_EJECT_AFTER {
                        health.failure(&uri);
                    }
                });
            }
        });
        assert!(health.is_ejected());
        assert_eq!(health.ejections.load(Ordering::Acquire), 1);
        let until = health.ejected_until().unwrap();
        assert!(
            until <= Instant::now() + DEFAULT_BASE_EJECTION,
            "cool-down doubled"
        );
    }
}
