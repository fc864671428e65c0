//! Accepting connections through accept errors, for every listener of the
//! process (the proxy's workers, the admin port, the demo upstream).
//!
//! `accept(2)` fails for two kinds of reasons. The process or the system is
//! out of something (EMFILE, ENFILE: file descriptors; ENOBUFS, ENOMEM:
//! memory): the connection stays in the listen backlog, the next accept
//! fails the same way at once, and a loop that retries at once spins a core
//! and writes a log line per turn. Or one connection went wrong before it
//! was taken (ECONNABORTED: the client reset it in the backlog; the network
//! errors Linux's accept(2) reports from the new socket): the next
//! connection is unaffected.
//!
//! So an [`Acceptor`] keeps accepting whatever happens: after a failure of
//! the first kind it waits, 10 ms doubling to 1 s (back to 10 ms after an
//! accept that works), and logs one WARN line when such a burst of failures
//! starts and one INFO line when it is over, never a line per failure. A
//! burst is over when an accept works a second or more after the last
//! failure: at the edge of the limit, accepts that work and fail by turns
//! (each closed connection frees a descriptor that the next accept takes)
//! are one burst, not a pair of lines per connection. Failures of the second
//! kind are a client's doing, logged at DEBUG, and the next accept follows
//! at once.
//!
//! Imports nothing of the crate: `listen`, `admin` and `demo` import it.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

/// The first wait after an accept fails for want of resources.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// The longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A burst of failures is over when an accept works this long after the
/// last one.
const QUIET: Duration = Duration::from_secs(1);

/// A listener whose [`accept`](Acceptor::accept) never fails.
pub(crate) struct Acceptor {
    listener: TcpListener,
    burst: Burst,
}

impl Acceptor {
    /// `name` says which listener it is in log lines (`proxy`, `admin`...).
    pub(crate) fn new(listener: TcpListener, name: &'static str) -> Self {
        Acceptor {
            listener,
            burst: Burst::new(name),
        }
    }

    /// The next connection, however many accepts fail first. Cancel-safe:
    /// dropping the future (for shutdown) loses no connection and keeps the
    /// count of the current burst.
    pub(crate) async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    self.burst.succeeded(Instant::now());
                    return accepted;
                }
                Err(e) => {
                    if let Some(wait) = self.burst.failed(&e, Instant::now()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
    }
}

/// Errors that concern one connection only (it went wrong before it was
/// taken), not the listener nor the process: accept again at once. Linux's
/// accept(2) asks for the network errors of the new socket to be treated
/// like EAGAIN (ENETDOWN, EPROTO, ENOPROTOOPT, EHOSTDOWN, ENONET,
/// EHOSTUNREACH, EOPNOTSUPP, ENETUNREACH), and EPERM is a firewall rule
/// refusing that connection. The rest (EMFILE, ENFILE, ENOBUFS, ENOMEM, and
/// anything unknown) may last: back off. EPROTO and a few others have no
/// `ErrorKind` of their own and back off too, which costs at most a few
/// milliseconds.
fn concerns_one_connection(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted
            | ConnectionReset
            | ConnectionRefused
            | Interrupted
            | WouldBlock
            | PermissionDenied
            | NetworkDown
            | NetworkUnreachable
            | HostUnreachable
    )
}

/// The failures of one listener in the current burst, and what has been
/// said about them.
struct Burst {
    listener: &'static str,
    /// Failures (of the lasting kind) in the current burst; 0 outside one.
    failures: u64,
    /// All failures of the lasting kind since start.
    total: u64,
    /// When the last of them happened.
    last_failure: Option<Instant>,
    backoff: Duration,
}

impl Burst {
    fn new(listener: &'static str) -> Self {
        Burst {
            listener,
            failures: 0,
            total: 0,
            last_failure: None,
            backoff: FIRST_BACKOFF,
        }
    }

    /// An accept failed with `e` at `now`: how long to wait before the next
    /// one (`None`: at once). Logs the first failure of a burst only.
    fn failed(&mut self, e: &io::Error, now: Instant) -> Option<Duration> {
        if concerns_one_connection(e) {
            tracing::debug!(listener = self.listener, error = %e, "accept failed for one connection");
            return None;
        }
        self.failures += 1;
        self.total += 1;
        self.last_failure = Some(now);
        if self.failures == 1 {
            tracing::warn!(
                listener = self.listener,
                error = %e,
                failures_since_start = self.total,
                "accept failed; retrying with backoff (up to {MAX_BACKOFF:?}), quietly until it works again"
            );
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Some(wait)
    }

    /// An accept worked at `now`: the next failure waits the least again,
    /// and the burst, if any, is over when the last failure is old enough.
    fn succeeded(&mut self, now: Instant) {
        self.backoff = FIRST_BACKOFF;
        let quiet = self
            .last_failure
            .is_none_or(|t| now.saturating_duration_since(t) >= QUIET);
        if self.failures > 0 && quiet {
            tracing::info!(
                listener = self.listener,
                failures = self.failures,
                "accepting again after {} failures",
                self.failures
            );
            self.failures = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(24)
    }

    /// A burst of failures is one WARN line and one INFO line, whatever its
    /// length, and accepts that work in its midst do not end it; the waits
    /// double from 10 ms to 1 s and start over after an accept that works; a
    /// client's aborted connection is neither waited for nor logged above
    /// DEBUG.
    #[test]
    fn a_burst_is_one_line_and_backs_off() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut burst = Burst::new("proxy");
        let waits: Vec<u64> = (0..100)
            .map(|i| burst.failed(&emfile(), at(i)).unwrap().as_millis() as u64)
            .collect();
        assert_eq!(
            &waits[..9],
            &[10, 20, 40, 80, 160, 320, 640, 1000, 1000],
            "{waits:?}"
        );
        assert!(waits[9..].iter().all(|&w| w == 1000), "{waits:?}");
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(burst.failed(&aborted, at(100)), None);
        // At the edge: an accept works, the next fails, and so on; one
        // burst, whose waits start over after each accept that works.
        for i in 0..50 {
            burst.succeeded(at(100 + 2 * i));
            assert_eq!(
                burst.failed(&emfile(), at(101 + 2 * i)),
                Some(FIRST_BACKOFF)
            );
        }
        // Accepts work for a second: the burst is over.
        burst.succeeded(at(500));
        burst.succeeded(at(1_300));
        burst.succeeded(at(1_400));
        // A second burst says how many came before.
        assert_eq!(burst.failed(&emfile(), at(2_000)), Some(FIRST_BACKOFF));
        assert_eq!(
            burst.failed(&io::Error::from(io::ErrorKind::OutOfMemory), at(2_001)),
            Some(FIRST_BACKOFF * 2)
        );

        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let warns: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warns.len(), 2, "one WARN per burst:\n{text}");
        assert!(warns[0].contains("failures_since_start=1"), "{}", warns[0]);
        assert!(
            warns[1].contains("failures_since_start=151"),
            "{}",
            warns[1]
        );
        let infos: Vec<&str> = text.lines().filter(|l| l.contains("INFO")).collect();
        assert_eq!(infos.len(), 1, "one INFO per burst's end:\n{text}");
        assert!(
            infos[0].contains("accepting again after 150 failures"),
            "{}",
            infos[0]
        );
        assert!(!text.contains("for one connection"), "{text}");
    }
}
