//! The CPU path's matrix products: `c = alpha·a·b + beta·c` on views of any strides.
//!
//! `f32` (training) goes through the `gemm` crate's kernels (sarah-quinones' `gemm-f32`:
//! AVX-512 with its `x86-v4` feature, AVX2/FMA, NEON, chosen at run time), a product
//! large enough to pay for a second thread cut into one piece per core, each piece on
//! one of the CPU path's threads (`pool.rs`; 1.2–2.3× gemm's own rayon split on the
//! `small` shapes, whose woken threads often started late).
//! Measured on the anchor shapes it is 1.1–1.5× ndarray's `matrixmultiply` on one thread
//! on most products and 5–8× on the one-row step products of `latency` (BENCHMARKS.md).
//! We depend on `gemm-f32` itself rather than the `gemm` front crate, which would also
//! compile the complex and f64 kernels; this file does the little the front crate adds
//! (orienting the product for the kernels, which prefer a column-major destination).
//!
//! `f64` is only for gradient checks and stays on ndarray's `general_mat_mul`.

use super::pool;
use crate::real::Real;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use std::any::TypeId;

/// Products with at least this many multiply-adds (`m·n·k`) run on every core: about
/// 10 µs of work on one core of a 2-core AVX-512 machine, enough to pay for waking the
/// second thread. A time step of `small` (16·512·128) stays on one, one of `ref`
/// (64·512·512 and up) uses both.
const PARALLEL_MIN_WORK: usize = 1 << 21;

/// `c = alpha·a·b + beta·c` for views of any strides (`a` `[m, k]`, `b` `[k, n]`, `c`
/// `[m, n]`). With `beta` zero, `c`'s previous content is ignored (NaN included).
///
/// # Panics
/// If the shapes do not match.
pub(crate) fn mat_mul<F: Real>(
    alpha: F,
    a: &ArrayView2<F>,
    b: &ArrayView2<F>,
    beta: F,
    c: &mut ArrayViewMut2<F>,
) {
    product(true, alpha, a, b, beta, c)
}

/// [`mat_mul`] on the calling thread alone, whatever the size (for the threads of a time
/// loop, which split the work themselves).
pub(crate) fn mat_mul_serial<F: Real>(
    alpha: F,
    a: &ArrayView2<F>,
    b: &ArrayView2<F>,
    beta: F,
    c: &mut ArrayViewMut2<F>,
) {
    product(false, alpha, a, b, beta, c)
}

fn product<F: Real>(
    may_split: bool,
    alpha: F,
    a: &ArrayView2<F>,
    b: &ArrayView2<F>,
    beta: F,
    c: &mut ArrayViewMut2<F>,
) {
    let ((m, k), (k2, n)) = (a.dim(), b.dim());
    assert!(
        k == k2 && c.dim() == (m, n),
        "matrix product of [{m}, {k}] by [{k2}, {n}] into {:?}",
        c.dim()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || alpha == F::zero() {
        if beta == F::zero() {
            c.fill(F::zero());
        } else if beta != F::one() {
            c.mapv_inplace(|v| v * beta);
        }
        return;
    }
    if TypeId::of::<F>() != TypeId::of::<f32>() {
        return general_mat_mul(alpha, a, b, beta, c);
    }
    let (alpha, beta) = (alpha.to_f64() as f32, beta.to_f64() as f32);
    let (a_rs, a_cs) = (a.strides()[0], a.strides()[1]);
    let (b_rs, b_cs) = (b.strides()[0], b.strides()[1]);
    let (c_rs, c_cs) = (c.strides()[0], c.strides()[1]);
    let (a_ptr, b_ptr, c_ptr) = (
        a.as_ptr() as *const f32,
        b.as_ptr() as *const f32,
        c.as_mut_ptr() as *mut f32,
    );
    let parts = if may_split && m.saturating_mul(n).saturating_mul(k) >= PARALLEL_MIN_WORK {
        pool::cores()
    } else {
        1
    };
    // the destination's longer side in `parts` pieces of whole 16-element blocks, one per
    // thread: rows of `c` with their rows of `a`, or columns with their columns of `b`
    let by_rows = m >= n;
    let long = if by_rows { m } else { n };
    let parts = parts.min(long.div_ceil(16)).max(1);
    let operands = Operands {
        a: (a_ptr, a_rs, a_cs),
        b: (b_ptr, b_rs, b_cs),
        c: (c_ptr, c_rs, c_cs),
    };
    // the whole struct, not its fields (which alone are not `Sync`), goes to the threads
    let operands = &operands;
    pool::run(parts, &|t| {
        let std::ops::Range { start, end } = pool::piece(long, parts, t);
        if start == end {
            return;
        }
        let Operands { a, b, c } = *operands;
        let o = |(ptr, rs, cs): (*const f32, isize, isize), along_rows: bool| {
            (
                ptr.wrapping_offset(start as isize * if along_rows { rs } else { cs }),
                rs,
                cs,
            )
        };
        let (a, b, c, shape) = if by_rows {
            let c = o((c.0 as *const f32, c.1, c.2), true);
            (o(a, true), b, c, (end - start, n, k))
        } else {
            let c = o((c.0 as *const f32, c.1, c.2), false);
            (a, o(b, false), c, (m, end - start, k))
        };
        // SAFETY: `F` is `f32` (checked above), so the pointer casts are identities; every
        // pointer and stride comes from a view of the shape checked above and this part
        // keeps to rows (or columns) `start..end` of `c` and the matching ones of `a` (or
        // `b`), so each element the kernel addresses (row·rs + col·cs from its view's
        // pointer, negative strides included) lies inside that view; `c` is borrowed
        // mutably, so it overlaps neither `a` nor `b`, and the parts' pieces of `c` are
        // disjoint.
        unsafe { f32_product(shape, (c.0 as *mut f32, c.1, c.2), a, b, alpha, beta) }
    });
}

/// The operands of one product as (pointer, row stride, column stride), shared by the
/// threads that compute its pieces.
#[derive(Clone, Copy)]
struct Operands {
    a: (*const f32, isize, isize),
    b: (*const f32, isize, isize),
    c: (*mut f32, isize, isize),
}

// SAFETY: the pointers come from views borrowed for the whole product; each thread
// writes only its own piece of `c` (see `product`).
unsafe impl Sync for Operands {}

/// `c = alpha·a·b + beta·c` through `gemm-f32` on the calling thread; `(pointer, row stride, column stride)`
/// per operand, sizes non-zero. What the `gemm` front crate's `gemm` does before its
/// dispatch: the kernels prefer a column-major destination, so a row-major product is
/// computed as its transpose `cᵀ = bᵀ·aᵀ` (no data moves, only strides).
///
/// # Safety
/// As for [`mat_mul`]'s views: every addressed element in bounds, `c` disjoint from `a`
/// and `b`.
unsafe fn f32_product(
    (m, n, k): (usize, usize, usize),
    (c, c_rs, c_cs): (*mut f32, isize, isize),
    (a, a_rs, a_cs): (*const f32, isize, isize),
    (b, b_rs, b_cs): (*const f32, isize, isize),
    alpha: f32,
    beta: f32,
) {
    let (m, n, c_rs, c_cs, a, a_rs, a_cs, b, b_rs, b_cs) = if c_cs.abs() < c_rs.abs() {
        (n, m, c_cs, c_rs, b, b_cs, b_rs, a, a_cs, a_rs)
    } else {
        (m, n, c_rs, c_cs, a, a_rs, a_cs, b, b_rs, b_cs)
    };
    // the kernels want non-negative destination strides and a non-negative K stride on
    // the left: walk such an axis from its other end (and the operand sharing it too)
    let (mut c, mut c_rs, mut c_cs, mut a, mut a_rs, mut a_cs, mut b, mut b_rs, mut b_cs) =
        (c, c_rs, c_cs, a, a_rs, a_cs, b, b_rs, b_cs);
    if c_rs < 0 {
        c = c.offset((m - 1) as isize * c_rs);
        a = a.offset((m - 1) as isize * a_rs);
        (c_rs, a_rs) = (-c_rs, -a_rs);
    }
    if c_cs < 0 {
        c = c.offset((n - 1) as isize * c_cs);
        b = b.offset((n - 1) as isize * b_cs);
        (c_cs, b_cs) = (-c_cs, -b_cs);
    }
    if a_cs < 0 {
        a = a.offset((k - 1) as isize * a_cs);
        b = b.offset((k - 1) as isize * b_rs);
        (a_cs, b_rs) = (-a_cs, -b_rs);
    }
    // gemm's convention: dst = alpha·dst + beta·lhs·rhs, dst read only when asked
    gemm_f32::gemm::f32::get_gemm_fn()(
        m,
        n,
        k,
        c,
        c_cs,
        c_rs,
        beta != 0.0,
        a,
        a_cs,
        a_rs,
        b,
        b_cs,
        b_rs,
        beta,
        alpha,
        false,
        false,
        false,
        gemm_common::Parallelism::None,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array2, ShapeBuilder};

    fn filled(rows: usize, cols: usize, seed: u32, column_major: bool) -> Array2<f32> {
        let shape = (rows, cols).set_f(column_major);
        let mut state = seed.wrapping_mul(0x9e37_79b9) | 1;
        Array2::from_shape_fn(shape, |_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
    }

    /// The product in f64, from scratch.
    fn naive(
        alpha: f32,
        a: &ArrayView2<f32>,
        b: &ArrayView2<f32>,
        beta: f32,
        c: &Array2<f32>,
    ) -> Array2<f64> {
        let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
        Array2::from_shape_fn((m, n), |(i, j)| {
            let dot: f64 = (0..k).map(|p| a[[i, p]] as f64 * b[[p, j]] as f64).sum();
            alpha as f64 * dot
                + if beta == 0.0 {
                    0.0
                } else {
                    beta as f64 * c[[i, j]] as f64
                }
        })
    }

    fn check(alpha: f32, a: ArrayView2<f32>, b: ArrayView2<f32>, beta: f32, c: ArrayViewMut2<f32>) {
        let mut c = c;
        let before = c.to_owned();
        let want = naive(alpha, &a, &b, beta, &before);
        mat_mul(alpha, &a, &b, beta, &mut c);
        let k = a.ncols() as f64;
        for ((i, j), &got) in c.indexed_iter() {
            let w = want[[i, j]];
            assert!(
                (got as f64 - w).abs() <= 1e-6 * (k + 1.0) * (1.0 + w.abs()),
                "[{i}, {j}] of [{}, {}]x[{}, {}]: {got} against {w}",
                a.nrows(),
                a.ncols(),
                b.nrows(),
                b.ncols()
            );
        }
    }

    #[test]
    fn agrees_with_a_naive_product_on_odd_shapes_and_layouts() {
        let shapes = [
            (1, 1, 1),
            (1, 64, 64),
            (1, 256, 64),
            (3, 5, 7),
            (16, 512, 128),
            (17, 33, 65),
            (64, 31, 200),
            (130, 70, 3),
            // above PARALLEL_MIN_WORK: cut into pieces by rows, and by columns
            (257, 129, 96),
            (37, 301, 190),
        ];
        let mut seed = 1;
        for &(m, n, k) in &shapes {
            for layout in 0..8 {
                let (a_f, b_f, c_f) = (layout & 1 != 0, layout & 2 != 0, layout & 4 != 0);
                seed += 3;
                let a = filled(m, k, seed, a_f);
                let b = filled(k, n, seed + 1, b_f);
                for (alpha, beta) in [(1.0, 0.0), (1.0, 1.0), (-0.5, 2.0)] {
                    let mut c = filled(m, n, seed + 2, c_f);
                    if beta == 0.0 {
                        c.fill(f32::NAN); // ignored, not multiplied by zero
                    }
                    check(alpha, a.view(), b.view(), beta, c.view_mut());
                }
            }
        }
    }

    #[test]
    fn takes_strided_sliced_and_reversed_views() {
        let a = filled(40, 30, 7, false);
        let b = filled(50, 60, 8, true);
        let mut c = filled(90, 80, 9, false);
        // every other row and column, transposed, reversed, an inner block
        check(
            1.0,
            a.slice(s![..;2, 1..;3]),
            b.slice(s![5..15, ..;2]),
            1.0,
            c.slice_mut(s![3..23, 1..31]),
        );
        check(
            0.5,
            a.slice(s![..;-1, ..]),
            b.slice(s![..30, ..;-3]),
            0.0,
            c.slice_mut(s![..40;1, ..;-4]),
        );
        check(
            1.0,
            a.t(),
            b.slice(s![..40, 3..9]),
            -1.0,
            c.slice_mut(s![10..40, 70..76])
                .reversed_axes()
                .reversed_axes(),
        );
        // large enough to be cut into pieces, on reversed and strided views, both ways
        let a = filled(150, 240, 10, false);
        let b = filled(240, 300, 11, true);
        let mut c = filled(300, 300, 12, false);
        check(
            1.0,
            a.slice(s![..;-1, ..;2]),
            b.slice(s![..120, ..;-2]),
            1.0,
            c.slice_mut(s![..;-2, 3..153]),
        );
        check(
            -1.0,
            b.slice(s![..;-2, ..]).reversed_axes(),
            a.slice(s![..120, ..;-1]),
            0.5,
            c.slice_mut(s![..;-1, 30..270;-1]),
        );
    }

    #[test]
    fn zero_sizes_scale_or_leave_the_destination() {
        let a = Array2::<f32>::zeros((3, 0));
        let b = Array2::<f32>::zeros((0, 4));
        let mut c = Array2::from_elem((3, 4), 2.0f32);
        mat_mul(1.0, &a.view(), &b.view(), 1.0, &mut c.view_mut());
        assert!(c.iter().all(|&v| v == 2.0));
        mat_mul(1.0, &a.view(), &b.view(), 0.5, &mut c.view_mut());
        assert!(c.iter().all(|&v| v == 1.0));
        mat_mul(1.0, &a.view(), &b.view(), 0.0, &mut c.view_mut());
        assert!(c.iter().all(|&v| v == 0.0));
        let (a, b) = (Array2::<f32>::zeros((0, 5)), Array2::<f32>::zeros((5, 4)));
        let mut c = Array2::<f32>::zeros((0, 4));
        mat_mul(1.0, &a.view(), &b.view(), 0.0, &mut c.view_mut());
        let mut c = Array2::<f32>::zeros((3, 0));
        mat_mul(
            1.0,
            &filled(3, 5, 1, false).view(),
            &Array2::zeros((5, 0)).view(),
            1.0,
            &mut c.view_mut(),
        );
    }

    #[test]
    fn f64_takes_the_same_route_as_ndarray() {
        let a = filled(20, 30, 3, false).mapv(f64::from);
        let b = filled(30, 10, 4, true).mapv(f64::from);
        let mut got = Array2::<f64>::ones((20, 10));
        let mut want = got.clone();
        mat_mul(2.0, &a.view(), &b.view(), 1.0, &mut got.view_mut());
        general_mat_mul(2.0, &a, &b, 1.0, &mut want);
        assert_eq!(got, want);
    }

    #[test]
    #[should_panic(expected = "matrix product")]
    fn refuses_mismatched_shapes() {
        let a = Array2::<f32>::zeros((3, 4));
        let b = Array2::<f32>::zeros((5, 2));
        let mut c = Array2::<f32>::zeros((3, 2));
        mat_mul(1.0, &a.view(), &b.view(), 0.0, &mut c.view_mut());
    }
}
