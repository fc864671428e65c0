//! The connection limit the open file limit allows: the soft limit raised,
//! the descriptors planned ([`Needs`]), and `--max-connections` derived or
//! checked ([`connection_limit`]).
//!
//! Imports nothing of the crate (the admin port's cap comes in as a value,
//! [`Needs::admin_connections`]).
//!
//! Every client connection is a file descriptor, and nearly always one more
//! for its upstream connection (a tunnel holds both for its whole life);
//! idle upstream connections kept for reuse, listeners, the runtimes' epoll
//! and eventfd descriptors, the admin port's connections and splice(2)'s
//! pipes take more. A default `--max-connections` that ignores the limit
//! lets the kernel refuse sockets first: accepts fail with EMFILE and
//! upstream connects too (502s), where the proxy could have shed at its own
//! limit (closing idle keep-alive connections, else letting the accepted
//! client wait for a slot and the rest wait in the listen backlog). So the
//! default is derived from the limit:
//!
//! ```text
//! max_connections = (open file limit - reserve - idle upstream) / per connection
//! reserve         = 64 + 16 per worker + 2 x MAX_SPLICE_PIPES (512)
//!                   + 64 with --admin-listen (its connection cap)
//! idle upstream   = --upstream-max-idle x upstreams (x 2 with the demo upstream)
//! per connection  = 2 (client and upstream sockets; 3 with the demo upstream,
//!                   whose end of each connection is in this process too)
//! ```
//!
//! The 64 cover stdio, listeners, the demo upstream's listener, the main
//! runtime, DNS lookups and spare; the 16 per worker its runtime's
//! descriptors and its listener. The idle pools fill only from requests in
//! flight at once, at most one per connection: when `--upstream-max-idle` is
//! more than that, each connection is counted with one idle upstream
//! connection instead (`(limit - reserve) / 3`, `/ 5` with the demo
//! upstream), so that a low limit (1,024) is not eaten by a pool that cannot
//! fill. At least [`MIN_CONNECTIONS`].

/// Raises the soft limit on open files to the hard one, as Go does at start
/// (many systems default to a soft 1,024), and returns the limit in force:
/// `None` when there is none to plan by.
pub(crate) fn raise_open_file_limit() -> Option<u64> {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open file limit");
            current_soft_limit()
        }
    };
    tracing::debug!(?limit, "open file limit");
    // No limit (platforms without RLIMIT_NOFILE, or "unlimited").
    limit.filter(|&l| l != u64::MAX)
}

#[cfg(unix)]
fn current_soft_limit() -> Option<u64> {
    rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft)
}

#[cfg(not(unix))]
fn current_soft_limit() -> Option<u64> {
    None
}

/// `--max-connections` when there is no open file limit to derive it from.
pub(crate) const FALLBACK_CONNECTIONS: usize = 10_000;

/// The floor of the derived limit, for very low open file limits.
pub(crate) const MIN_CONNECTIONS: usize = 16;
/// The ceiling of the derived limit (an "unlimited" open file limit).
const MAX_CONNECTIONS: usize = 1 << 20;

const BASE_RESERVE: u64 = 64;
const PER_WORKER: u64 = 16;
const PIPES: u64 = 2 * halfclose_io::MAX_SPLICE_PIPES as u64;

/// What the process is made of, as far as file descriptors go.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Needs {
    pub(crate) workers: usize,
    /// Upstreams, each with its own idle pool (1 for the demo upstream).
    pub(crate) upstreams: usize,
    pub(crate) upstream_max_idle: usize,
    /// The admin port's connection cap (`--admin-listen`; 0 without it):
    /// up to that many more.
    pub(crate) admin_connections: usize,
    /// The built-in demo upstream, whose sockets are in this process too.
    pub(crate) demo: bool,
}

impl Needs {
    /// Descriptors that do not grow with the client connections.
    fn reserve(&self) -> u64 {
        BASE_RESERVE + PER_WORKER * self.workers as u64 + PIPES + self.admin_connections as u64
    }

    fn per_connection(&self) -> u64 {
        if self.demo { 3 } else { 2 }
    }

    /// Descriptors of the idle upstream connections kept for reuse.
    fn idle(&self) -> u64 {
        let idle = (self.upstream_max_idle as u64).saturating_mul(self.upstreams as u64);
        idle.saturating_mul(self.per_connection() - 1)
    }

    /// The most client connections `nofile` descriptors allow.
    pub(crate) fn max_connections(&self, nofile: u64) -> usize {
        let left = nofile.saturating_sub(self.reserve());
        let per = self.per_connection();
        // With a pool as large as it may be, or with one idle upstream
        // connection per client connection, whichever allows more.
        let n = (left.saturating_sub(self.idle()) / per).max(left / (2 * per - 1));
        usize::try_from(n)
            .unwrap_or(usize::MAX)
            .clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
    }

    /// About how many descriptors `connections` client connections need.
    pub(crate) fn fds_for(&self, connections: usize) -> u64 {
        let per = self.per_connection();
        let connections = connections as u64;
        let idle = self.idle().min(connections.saturating_mul(per - 1));
        connections
            .saturating_mul(per)
            .saturating_add(self.reserve())
            .saturating_add(idle)
    }
}

/// `--max-connections`, or the limit the open file limit allows; and what
/// the figure comes from, for the start-up line. A limit set past what the
/// open files allow is kept, with one WARN line.
pub(crate) fn connection_limit(
    set: Option<usize>,
    nofile: Option<u64>,
    needs: Needs,
) -> (usize, String) {
    match (set, nofile) {
        (Some(n), Some(nofile)) => {
            let allowed = needs.max_connections(nofile);
            if n > allowed {
                tracing::warn!(
                    max_connections = n,
                    open_file_limit = nofile,
                    fds_needed = needs.fds_for(n),
                    allowed,
                    "--max-connections is more than the open file limit allows: past about {allowed} connections, \
                     accepts and upstream connects fail (EMFILE) instead of the proxy shedding; raise the limit \
                     (ulimit -n, systemd's LimitNOFILE=) or leave --max-connections out"
                );
            }
            (
                n.max(1),
                format!("set by --max-connections; open file limit {nofile}"),
            )
        }
        (Some(n), None) => (n.max(1), "set by --max-connections".to_owned()),
        (None, Some(nofile)) => (
            needs.max_connections(nofile),
            format!("open file limit {nofile}"),
        ),
        (None, None) => (FALLBACK_CONNECTIONS, "no open file limit".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: Needs = Needs {
        workers: 2,
        upstreams: 1,
        upstream_max_idle: 512,
        admin_connections: 0,
        demo: false,
    };

    #[test]
    fn the_limit_follows_the_open_file_limit() {
        // 20,000 - (64 + 2 x 16 + 512) - 512 = 18,880; two per connection.
        assert_eq!(ONE.max_connections(20_000), 9_440);
        assert_eq!(ONE.fds_for(9_440), 20_000);
        // The admin port's 64, more workers, more upstreams each take theirs.
        let admin = Needs {
            admin_connections: 64,
            ..ONE
        };
        assert_eq!(admin.max_connections(20_000), 9_408);
        let workers = Needs { workers: 8, ..ONE };
        assert_eq!(workers.max_connections(20_000), 9_392);
        let three = Needs {
            upstreams: 3,
            ..ONE
        };
        assert_eq!(three.max_connections(20_000), 8_928);
        // The demo upstream's ends are in the process: three per connection,
        // two per idle one.
        let demo = Needs { demo: true, ..ONE };
        assert_eq!(demo.max_connections(20_000), (20_000 - 608 - 1_024) / 3);
        // A large limit; a small one, where the pool could not fill and
        // each connection is counted with one idle upstream connection; none.
        assert_eq!(ONE.max_connections(1_048_576), (1_048_576 - 1_120) / 2);
        assert_eq!(ONE.max_connections(1_024), (1_024 - 608) / 3);
        assert_eq!(ONE.fds_for(138), 1_022);
        assert_eq!(demo.max_connections(1_024), (1_024 - 608) / 5);
        assert_eq!(ONE.max_connections(500), MIN_CONNECTIONS);
        assert_eq!(ONE.max_connections(0), MIN_CONNECTIONS);
        assert_eq!(ONE.max_connections(u64::MAX), MAX_CONNECTIONS);
        let lean = Needs {
            workers: 1,
            upstream_max_idle: 0,
            ..ONE
        };
        assert_eq!(lean.max_connections(1_024), (1_024 - 592) / 2);
        // Whatever the limit, the connections it allows fit in it.
        for nofile in [700, 1_024, 4_096, 20_000, 65_536] {
            for needs in [ONE, admin, workers, three, demo, lean] {
                let n = needs.max_connections(nofile);
                let fits = n == MIN_CONNECTIONS || needs.fds_for(n) <= nofile;
                assert!(fits, "{needs:?} at {nofile}: {n}");
            }
        }
    }
}
