//! `RequestBody::new` on a `RequestBody` keeps it as it is: no second box
//! (the balancer hands the proxy bodies it has wrapped already). Counted
//! with a counting global allocator, so this file is its own test binary,
//! with one test (no other test allocates meanwhile).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use proxy_tower::RequestBody;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; this only
// counts allocations.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_of(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    f();
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[test]
fn a_request_body_is_not_boxed_twice() {
    let body = || Full::new(Bytes::from_static(b"abc"));
    let once = allocations_of(|| drop(RequestBody::new(body())));
    let twice = allocations_of(|| drop(RequestBody::new(RequestBody::new(body()))));
    assert!(once > 0, "boxing a body allocates");
    assert_eq!(twice, once, "a RequestBody was boxed again");
}
