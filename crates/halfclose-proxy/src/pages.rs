//! How the process's memory is paged.
//!
//! On Linux with transparent huge pages set to `always` (the kernel's setting,
//! not ours), the kernel backs every 2 MiB-aligned stretch of the heap that is
//! touched with one huge page. A proxy's heap is many small objects that live
//! long (one task and two socket registrations per idle tunnel), spread thin
//! over the allocator's pages: huge pages then cost resident memory in 2 MiB
//! steps and buy nothing measurable (see `docs/benchmarks.md`: the same small
//! request rate, 5 MiB less RSS at start and about 1 KB less per idle tunnel
//! at 3000 tunnels). So the proxy turns them off for itself, and only itself.
//!
//! And when the allocator gives memory back: see [`give_back`].
//!
//! Imports nothing of the crate: `main` calls it first.

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`),
/// for the memory it maps from now on and for what khugepaged would merge.
/// Elsewhere than Linux, there is nothing to turn off.
#[cfg(target_os = "linux")]
pub(crate) fn small_pages() -> std::io::Result<()> {
    // prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0), through rustix's safe wrapper.
    rustix::thread::disable_transparent_huge_pages(true).map_err(std::io::Error::from)
}

/// Elsewhere than Linux, there is nothing to turn off.
#[cfg(not(target_os = "linux"))]
pub(crate) fn small_pages() -> std::io::Result<()> {
    Ok(())
}

/// Hands the allocator's free pages back to the system, on the calling
/// thread: every worker calls it each [`GIVE_BACK_EVERY`].
///
/// mimalloc frees a page it no longer uses only when the thread that owns it
/// next calls into the allocator, after a short delay. A worker that is idle
/// after a burst (a reconnect storm: thousands of connections opening at
/// once, each with buffers for its request and its upstream exchange) would
/// keep the burst's memory resident for as long as it stays idle: some 1.4
/// MiB after 3,000 tunnels opened by 16 clients at once, or 470 bytes per
/// idle tunnel as `ps` sees it (`docs/benchmarks.md`). Without mimalloc (the
/// `mimalloc` feature off) there is nothing to do.
pub(crate) fn give_back() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: `mi_collect` has no preconditions: it may be called from any
    // thread at any time, takes no pointer, and only returns to the system
    // pages that no allocation uses. (`force`: at once, rather than at the
    // thread's next allocation after mimalloc's purge delay, which an idle
    // worker never makes.)
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

/// How often each worker calls [`give_back`]: seldom enough to cost nothing
/// (a pass over the thread's pages), soon enough that the memory of a burst
/// is back within a second or two.
pub(crate) const GIVE_BACK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The kernel reports the process's setting in /proc/self/status (Linux
    /// 5.0 and later): `THP_enabled: 0` once turned off.
    #[test]
    fn small_pages_turns_huge_pages_off_for_the_process() {
        super::small_pages().expect("prctl(PR_SET_THP_DISABLE)");
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("THP_enabled:"))
            .expect("a THP_enabled line in /proc/self/status");
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }

    /// The memory of a burst of allocations, freed, is back with the system
    /// after `give_back` on this thread. With the `mimalloc` feature off it
    /// runs and changes nothing.
    #[test]
    fn give_back_returns_freed_memory() {
        fn rss_kb() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        }
        // 64 MiB in small blocks, as many connections' buffers would be.
        let burst: Vec<Vec<u8>> = (0..8192).map(|_| vec![1u8; 8192]).collect();
        let full = rss_kb();
        drop(burst);
        super::give_back();
        let after = rss_kb();
        if cfg!(feature = "mimalloc") {
            assert!(
                after + 32 * 1024 < full,
                "RSS {after} KiB after giving back, {full} KiB with the burst"
            );
        }
    }
}
