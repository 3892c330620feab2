//! The threads of one time loop split by hidden units: each thread owns a range of units
//! (their columns in every gate block, state and gradient), computes its columns of each
//! step's product and the cell's work on them, and meets the others at a barrier once per
//! step, where the next product needs every thread's columns. The split keeps each
//! thread's slice of `W_hh` in its own core's cache across steps.
//!
//! [`Shared`] is how the threads reach the same matrices: a raw view whose accessors are
//! `unsafe`, under one rule that the time loops in `mod.rs` keep: between two barriers a
//! thread writes only its own units' columns (or rows no one reads in that interval), and
//! reads other threads' columns only of rows that were written before the last barrier.

use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// A matrix with contiguous rows, shared by the threads of a time loop (see the module
/// documentation for the rule its `unsafe` accessors rely on).
pub(super) struct Shared<F> {
    ptr: *mut F,
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<F> Clone for Shared<F> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<F> Copy for Shared<F> {}

// SAFETY: a `Shared` is a pointer into a matrix that outlives the time loop (it is made from
// a mutable borrow held for the whole loop); the accessors' callers keep the threads'
// accesses disjoint or ordered by the barrier.
unsafe impl<F: Send> Send for Shared<F> {}
unsafe impl<F: Send> Sync for Shared<F> {}

impl<F> Shared<F> {
    /// `a` must have contiguous rows (column stride 1, or one column), or be empty.
    pub fn new(mut a: ArrayViewMut2<F>) -> Self {
        let (rows, cols) = a.dim();
        let empty = rows == 0 || cols == 0;
        // an axis of length 1 may have any stride
        assert!(
            empty || cols == 1 || a.strides()[1] == 1,
            "rows must be contiguous: {:?} {:?}",
            a.dim(),
            a.strides()
        );
        Shared {
            ptr: a.as_mut_ptr(),
            rows: if empty { 0 } else { rows },
            cols: if empty { 0 } else { cols },
            row_stride: if empty { 0 } else { a.strides()[0] as usize },
        }
    }

    fn check(&self, rows: &Range<usize>, cols: &Range<usize>) {
        assert!(
            rows.start <= rows.end
                && rows.end <= self.rows
                && cols.start <= cols.end
                && cols.end <= self.cols,
            "[{rows:?}, {cols:?}] out of [{}, {}]",
            self.rows,
            self.cols
        );
    }

    /// Columns `cols` of row `r`; empty when the matrix is (an unused buffer).
    ///
    /// # Safety
    /// No thread writes these elements while the slice lives.
    pub unsafe fn get<'a>(&self, r: usize, cols: Range<usize>) -> &'a [F] {
        if self.rows == 0 {
            return &[];
        }
        self.check(&(r..r + 1), &cols);
        std::slice::from_raw_parts(self.ptr.add(r * self.row_stride + cols.start), cols.len())
    }

    /// Columns `cols` of row `r`, to write; empty when the matrix is.
    ///
    /// # Safety
    /// No other thread reads or writes these elements while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get_mut<'a>(&self, r: usize, cols: Range<usize>) -> &'a mut [F] {
        if self.rows == 0 {
            return &mut [];
        }
        self.check(&(r..r + 1), &cols);
        std::slice::from_raw_parts_mut(self.ptr.add(r * self.row_stride + cols.start), cols.len())
    }

    /// The block `[rows, cols]` as a view.
    ///
    /// # Safety
    /// As for [`Shared::get`], on every element of the block.
    pub unsafe fn view<'a>(&self, rows: Range<usize>, cols: Range<usize>) -> ArrayView2<'a, F> {
        self.check(&rows, &cols);
        let shape = (rows.len(), cols.len()).strides((self.row_stride.max(1), 1));
        ArrayView2::from_shape_ptr(
            shape,
            self.ptr.add(rows.start * self.row_stride + cols.start),
        )
    }

    /// The block `[rows, cols]` as a view to write.
    ///
    /// # Safety
    /// As for [`Shared::get_mut`], on every element of the block.
    pub unsafe fn view_mut<'a>(
        &self,
        rows: Range<usize>,
        cols: Range<usize>,
    ) -> ArrayViewMut2<'a, F> {
        self.check(&rows, &cols);
        let shape = (rows.len(), cols.len()).strides((self.row_stride.max(1), 1));
        ArrayViewMut2::from_shape_ptr(
            shape,
            self.ptr.add(rows.start * self.row_stride + cols.start),
        )
    }
}

/// A reusable barrier for the threads of one time loop: they spin briefly (a step of a
/// loop worth splitting takes tens of microseconds), then yield their core.
pub(super) struct Barrier {
    threads: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl Barrier {
    pub fn new(threads: usize) -> Self {
        Barrier {
            threads,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    pub fn wait(&self) {
        if self.threads == 1 {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if spins < 2000 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Runs `work(thread, units)` on `threads` threads (the calling one among them), each
/// on its own range of `hidden` units: ranges in multiples of 16 units (a cache line of
/// f32), the last one taking the rest.
pub(super) fn run(threads: usize, hidden: usize, work: impl Fn(usize, Range<usize>) + Sync) {
    let range = |t: usize| {
        let edge = |t: usize| (hidden * t / threads / 16 * 16).min(hidden);
        edge(t)..if t + 1 == threads {
            hidden
        } else {
            edge(t + 1)
        }
    };
    if threads <= 1 {
        return work(0, 0..hidden);
    }
    let work = &work;
    std::thread::scope(|s| {
        for t in 1..threads {
            s.spawn(move || work(t, range(t)));
        }
        work(0, range(0));
    });
}

/// How many threads a time loop over `rows` rows of `hidden` units and `gates` gate
/// blocks uses: one, unless a step's product (`rows · gates·hidden · hidden`
/// multiply-adds) is large enough to pay for a barrier per step; then one per core, up
/// to one per 64 units.
pub(super) fn threads_for(rows: usize, hidden: usize, gates: usize) -> usize {
    /// About 10 µs of one core's work per step on a 2-core AVX-512 machine: `ref`
    /// (64 · 512 · 512 and up) splits, `small` (16 · 512 · 128 at most) does not.
    const MIN_STEP_WORK: usize = 1 << 22;
    static CORES: OnceLock<usize> = OnceLock::new();
    if rows * gates * hidden * hidden < MIN_STEP_WORK {
        return 1;
    }
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    cores.min(hidden / 64).max(1)
}
