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
}
