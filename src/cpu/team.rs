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

/// How one time loop's work is shared among threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Split {
    /// By hidden units: each of this many threads owns a range of units of every row and
    /// meets the others at a barrier once per step.
    Units(usize),
    /// By sequences: each thread walks its own range of packed ranks (the `j`-th longest
    /// sequence has rank `j` at every step) over all units, with no barrier, since a
    /// sequence's recurrence reads only its own rows.
    Rows(Vec<Range<usize>>),
}

/// How a test fixes a time loop's split (see [`Split`]): the thread count and the kind.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
pub(super) enum FixedSplit {
    Units(usize),
    Rows(usize),
}

impl Split {
    /// The split of a loop over `p`'s packed rows with `hidden` units and `gates` gate
    /// blocks: `fixed` if given, else by size (see [`Split::choose`]).
    pub fn of(fixed: Option<FixedSplit>, lengths: &[usize], hidden: usize, gates: usize) -> Split {
        match fixed {
            Some(FixedSplit::Units(threads)) => Split::Units(threads.max(1)),
            Some(FixedSplit::Rows(threads)) => Split::Rows(rank_ranges(lengths, threads)),
            None => Split::choose(lengths, hidden, gates),
        }
    }

    /// By units when one step's product (`rows · gates·hidden · hidden` multiply-adds) is
    /// large enough to pay for a barrier per step (`ref`: 64 · 2048 · 512); else by
    /// sequences when there are enough of them and the whole loop is worth a second
    /// thread (`small`: 16 sequences of up to 128 steps); else one thread.
    fn choose(lengths: &[usize], hidden: usize, gates: usize) -> Split {
        /// About 10 µs of one core's work per step on a 2-core AVX-512 machine.
        const MIN_STEP_WORK: usize = 1 << 22;
        /// About 100 µs of one core's work over the whole loop: a thread costs ~10 µs.
        const MIN_LOOP_WORK: usize = 1 << 23;
        /// Fewer sequences per thread than this make products too thin to split by rows.
        const MIN_ROWS_PER_THREAD: usize = 4;
        let cores = super::pool::cores();
        let rows = lengths.len();
        let per_row = gates * hidden * hidden;
        if rows.saturating_mul(per_row) >= MIN_STEP_WORK {
            return Split::Units(cores.min(hidden / 64).max(1));
        }
        let tokens: usize = lengths.iter().sum();
        let threads = cores.min(rows / MIN_ROWS_PER_THREAD);
        if threads > 1 && tokens.saturating_mul(per_row) >= MIN_LOOP_WORK {
            return Split::Rows(rank_ranges(lengths, threads));
        }
        Split::Units(1)
    }

    fn threads(&self) -> usize {
        match self {
            Split::Units(t) => *t,
            Split::Rows(ranges) => ranges.len(),
        }
    }

    /// The barrier the loop's threads meet at every step (one that does nothing when they
    /// need not meet).
    pub fn barrier(&self) -> Barrier {
        match self {
            Split::Units(t) => Barrier::new(*t),
            Split::Rows(_) => Barrier::new(1),
        }
    }
}

/// `threads` contiguous ranges of packed ranks (sequences sorted longest first, with
/// these `lengths`) with about equal steps each, so that the threads finish together.
fn rank_ranges(lengths: &[usize], threads: usize) -> Vec<Range<usize>> {
    let threads = threads.clamp(1, lengths.len().max(1));
    let mut sorted = lengths.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let total: usize = sorted.iter().sum();
    let (mut ranges, mut start, mut done) = (Vec::with_capacity(threads), 0, 0);
    for (j, len) in sorted.iter().enumerate() {
        done += len;
        let t = ranges.len();
        // close this thread's range once it holds its share, leaving a rank for each of
        // the threads still to come
        let left_after = sorted.len() - (j + 1);
        if t + 1 < threads && done * threads >= total * (t + 1) && left_after >= threads - t - 1 {
            ranges.push(start..j + 1);
            start = j + 1;
        }
    }
    ranges.push(start..sorted.len());
    ranges
}

/// Runs `work(units, ranks)` on the threads of `split` (the calling one among them, the
/// others from `pool.rs`): by units, each on its own range of `hidden` units (in
/// multiples of 16, a cache line of f32; the last takes the rest) and every rank; by
/// rows, each on its own ranks and every unit.
pub(super) fn run(split: &Split, hidden: usize, work: impl Fn(Range<usize>, Range<usize>) + Sync) {
    let threads = split.threads();
    let part = |t: usize| match split {
        Split::Units(_) => (super::pool::piece(hidden, threads, t), 0..usize::MAX),
        Split::Rows(ranges) => (0..hidden, ranges[t].clone()),
    };
    super::pool::run(threads, &|t| {
        let (units, ranks) = part(t);
        work(units, ranks)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_ranges_cover_every_rank_once_with_balanced_steps() {
        for (lengths, threads) in [
            (vec![128; 16], 2),
            (vec![100, 90, 80, 70, 60, 50, 40, 30], 2),
            (vec![1000, 1, 1, 1], 2),
            (vec![5, 4, 3], 3),
            (vec![7, 7, 7, 7, 7], 4),
            (vec![3], 2),
        ] {
            let ranges = rank_ranges(&lengths, threads);
            assert_eq!(ranges.len(), threads.min(lengths.len()), "{lengths:?}");
            let mut next = 0;
            for r in &ranges {
                assert_eq!(r.start, next, "{lengths:?}: {ranges:?}");
                assert!(!r.is_empty(), "{lengths:?}: {ranges:?}");
                next = r.end;
            }
            assert_eq!(next, lengths.len());
        }
        // equal lengths split evenly; one long sequence gets a thread of its own
        assert_eq!(rank_ranges(&[128; 16], 2), vec![0..8, 8..16]);
        assert_eq!(rank_ranges(&[1000, 1, 1, 1], 2), vec![0..1, 1..4]);
    }

    #[test]
    fn small_loops_split_by_rows_large_steps_by_units() {
        if super::super::pool::cores() < 2 {
            return;
        }
        // `small` LSTM: 16 sequences of 128 steps, 128 units
        assert!(matches!(Split::choose(&[128; 16], 128, 4), Split::Rows(_)));
        // `ref`: 64 · 4·512 · 512 per step
        assert!(matches!(Split::choose(&[100; 64], 512, 4), Split::Units(t) if t > 1));
        // one sequence (`latency`) or a tiny loop: one thread
        assert_eq!(Split::choose(&[1000], 64, 4), Split::Units(1));
        assert_eq!(Split::choose(&[3; 8], 8, 1), Split::Units(1));
    }
}
