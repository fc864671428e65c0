//! How far a request body has been sent, as the body itself sees it: the
//! response-head timeout starts only once the whole request is sent (a
//! client that sends its body slowly is not the upstream's fault), and only
//! an upstream that fails after the whole request was sent is judged
//! unhealthy for it.
//!
//! The body is watched where it is polled (in [`RequestBody`](crate::RequestBody)):
//! each frame handed to the client marks "waiting for the upstream to take
//! more", each poll for the next clears it, the end marks "sent". No channel
//! and no wake-up: the deadline reads two atomics when its timer fires,
//! and sleeps again if the request has moved on since (at most once per
//! period).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The progress of one request body (shared by the body and the deadline).
#[derive(Debug)]
pub(crate) struct Progress {
    start: Instant,
    /// When the body ended, in nanoseconds after `start`, plus one; 0: not yet.
    sent_at: AtomicU64,
    /// When a frame was handed over and the next one not asked for yet, in
    /// nanoseconds after `start`, plus one; 0: not waiting on the upstream.
    handed_at: AtomicU64,
    /// When the next frame was last asked for after one was handed over
    /// (since when the client's body is awaited), as above; 0: since `start`.
    asked_at: AtomicU64,
}

/// Why the deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Late {
    /// The whole request was sent and no response head came in time.
    Head,
    /// The upstream took no more of the request body in time.
    Body,
    /// The client sent none of its body in time.
    ClientBody,
}

impl Progress {
    pub(crate) fn new() -> Self {
        Progress {
            start: Instant::now(),
            sent_at: AtomicU64::new(0),
            handed_at: AtomicU64::new(0),
            asked_at: AtomicU64::new(0),
        }
    }

    fn stamp(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64 + 1
    }

    fn at(&self, stamp: u64) -> Option<Instant> {
        (stamp != 0).then(|| self.start + Duration::from_nanos(stamp - 1))
    }

    /// The body's last frame went out.
    pub(crate) fn sent(&self) {
        self.handed_at.store(0, Ordering::Relaxed);
        self.sent_at.store(self.stamp(), Ordering::Release);
    }

    /// A frame was handed to the client; the next is not asked for yet.
    pub(crate) fn handed(&self) {
        self.handed_at.store(self.stamp(), Ordering::Relaxed);
    }

    /// The client asks for the next frame: from now on, the client's body
    /// is awaited.
    pub(crate) fn taken(&self) {
        if self.handed_at.load(Ordering::Relaxed) != 0 {
            self.asked_at.store(self.stamp(), Ordering::Relaxed);
            self.handed_at.store(0, Ordering::Relaxed);
        }
    }

    /// True once the whole body has been sent.
    pub(crate) fn is_sent(&self) -> bool {
        self.sent_at.load(Ordering::Acquire) != 0
    }
}

/// Completes when the exchange is late, that is when one side has kept it
/// waiting for `limit`: the upstream's response head, `limit` after the whole
/// request was sent (at once, without `progress`: a request with no body);
/// the upstream, taking none of the request body for `limit`; or the client,
/// sending none of it for `limit`.
pub(crate) async fn late(progress: Option<&Progress>, limit: Duration) -> Late {
    let Some(p) = progress else {
        tokio::time::sleep(limit).await;
        return Late::Head;
    };
    loop {
        if let Some(sent) = p.at(p.sent_at.load(Ordering::Acquire)) {
            tokio::time::sleep_until(sent + limit).await;
            return Late::Head;
        }
        let handed = p.handed_at.load(Ordering::Relaxed);
        let asked = p.asked_at.load(Ordering::Relaxed);
        let (since, late) = match p.at(handed) {
            Some(handed) => (handed, Late::Body),
            None => (p.at(asked).unwrap_or(p.start), Late::ClientBody),
        };
        if since + limit > Instant::now() {
            tokio::time::sleep_until(since + limit).await;
            continue;
        }
        // Late, unless the body moved between the two reads above.
        let moved = p.handed_at.load(Ordering::Relaxed) != handed
            || p.asked_at.load(Ordering::Relaxed) != asked
            || p.is_sent();
        if !moved {
            return late;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    /// Runs `late` to its end (paused time moves on by itself) and says when
    /// it fired, from the start.
    async fn fired(p: Option<&Progress>) -> (Late, Duration) {
        let start = Instant::now();
        let why = late(p, LIMIT).await;
        (why, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_body_the_head_is_due_limit_after_the_start() {
        assert_eq!(fired(None).await, (Late::Head, LIMIT));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_client_delays_the_deadline() {
        let p = Progress::new();
        // The client takes 25 s to send its body; the deadline counts from
        // the end of it.
        let timer = fired(Some(&p));
        let client = async {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                p.handed();
                p.taken();
            }
            p.sent();
        };
        let ((why, after), ()) = tokio::join!(timer, client);
        assert_eq!(why, Late::Head);
        assert_eq!(after, Duration::from_secs(25) + LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_sending_its_body_is_late() {
        let p = Progress::new();
        // One frame at 4 s, taken at once; then nothing.
        tokio::time::sleep(Duration::from_secs(4)).await;
        p.handed();
        p.taken();
        let (why, after) = fired(Some(&p)).await;
        assert_eq!(why, Late::ClientBody);
        assert_eq!(after, LIMIT);
        // A client silent from the start is late `limit` after the start.
        let p = Progress::new();
        assert_eq!(fired(Some(&p)).await, (Late::ClientBody, LIMIT));
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_that_stops_taking_the_body_is_late() {
        let p = Progress::new();
        tokio::time::sleep(Duration::from_secs(3)).await;
        p.handed();
        let (why, after) = fired(Some(&p)).await;
        assert_eq!(why, Late::Body);
        assert_eq!(after, LIMIT);
    }
}
