//! The test binary's allocator: the system allocator, plus a per-thread watch that a
//! property test turns on around a call to learn the largest single allocation the call
//! asked for, and to refuse any above a hard cap. A parser that believes a header
//! declaring 10^12 series or a tensor of 2^40 elements would otherwise take the machine's
//! memory (or, with overcommit, seem to succeed); with the watch on, a refused request
//! aborts the test binary with "memory allocation of N bytes failed" instead.
//!
//! Threads without a watch (every other test) pay one thread-local read per allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Watched;

#[global_allocator]
static ALLOCATOR: Watched = Watched;

thread_local! {
    /// Largest single request this thread may make (`usize::MAX`: no watch).
    static CAP: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Largest single request this thread made since its watch began.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// Records a request of `size` bytes; false if it is above the cap.
fn admit(size: usize) -> bool {
    CAP.try_with(|cap| {
        let cap = cap.get();
        if cap == usize::MAX {
            return true;
        }
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        size <= cap
    })
    .unwrap_or(true)
}

// SAFETY: every call is passed on unchanged to `System`, or refused with a null pointer
// (which `GlobalAlloc` allows: the caller then reports an allocation failure).
unsafe impl GlobalAlloc for Watched {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !admit(new_size) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// A watch on this thread's allocations, from [`watch`] until dropped.
pub struct Watch {
    previous_cap: usize,
    previous_largest: usize,
}

/// Starts watching this thread's allocations: any single request above `cap` bytes is
/// refused (the process aborts, naming the size).
pub fn watch(cap: usize) -> Watch {
    let previous_cap = CAP.with(|c| c.replace(cap.min(usize::MAX - 1)));
    let previous_largest = LARGEST.with(|l| l.replace(0));
    Watch {
        previous_cap,
        previous_largest,
    }
}

impl Watch {
    /// The largest single allocation (bytes) requested since the watch began.
    pub fn largest(&self) -> usize {
        LARGEST.with(Cell::get)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        CAP.with(|c| c.set(self.previous_cap));
        LARGEST.with(|l| l.set(self.previous_largest));
    }
}

#[test]
fn the_watch_sees_the_largest_request() {
    let w = watch(1 << 30);
    let v: Vec<u8> = Vec::with_capacity(123_456);
    drop(v);
    let small = vec![0u8; 10];
    assert!(w.largest() >= 123_456, "{}", w.largest());
    drop(small);
    drop(w);
    // no watch: nothing is recorded or refused
    let w2 = watch(usize::MAX);
    drop(w2);
}
