//! The product of one time step on few rows, `c (+)= a·b`: a step's states (or gate
//! gradients) times the recurrent weights. A general GEMM packs `b` (all of `W_hh`) on
//! every call, which for a step of a few sequences costs about as much as the product
//! itself; this kernel reads `b` in place instead, four rows of `a` and up to 64 columns
//! of `b` at a time with every partial sum in a register. Larger steps, other element
//! types and machines without AVX-512 take the general product.

use super::gemm;
use crate::real::Real;
use ndarray::{ArrayView2, ArrayViewMut2};
use std::any::TypeId;

/// Steps with more rows than this take the general product: the kernel streams `b` once
/// per four rows, and packing pays off once `b` would be streamed more than a few times.
const MAX_ROWS: usize = 16;

/// `c = a·b`, or `c += a·b` with `accumulate`, on the calling thread (`a` `[m, k]`, `b`
/// `[k, n]`, `c` `[m, n]`).
///
/// # Panics
/// If the shapes do not match.
pub(crate) fn step_product<F: Real>(
    a: &ArrayView2<F>,
    b: &ArrayView2<F>,
    accumulate: bool,
    c: &mut ArrayViewMut2<F>,
) {
    let beta = if accumulate { F::one() } else { F::zero() };
    #[cfg(target_arch = "x86_64")]
    if TypeId::of::<F>() == TypeId::of::<f32>()
        && a.nrows() <= MAX_ROWS
        && [a.view(), b.view()].iter().all(rows_contiguous)
        && rows_contiguous(&c.view())
        && a.ncols() == b.nrows()
        && c.dim() == (a.nrows(), b.ncols())
        && std::arch::is_x86_feature_detected!("avx512f")
    {
        let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
        if m == 0 || n == 0 {
            return;
        }
        // SAFETY: `F` is `f32` (checked above), so the casts are identities; the shapes
        // are checked above and each view has unit column stride (or one column), so
        // every element the kernel addresses, `ptr + row·stride + col` with row and col
        // inside the view's shape, lies inside that view; `c` is borrowed mutably, so it
        // overlaps neither `a` nor `b`; AVX-512F is available (checked above).
        unsafe {
            avx512::product(
                (m, k, n),
                (a.as_ptr() as *const f32, row_stride(&a.view())),
                (b.as_ptr() as *const f32, row_stride(&b.view())),
                (c.as_mut_ptr() as *mut f32, row_stride(&c.view())),
                accumulate,
            );
        }
        return;
    }
    gemm::mat_mul_serial(F::one(), a, b, beta, c);
}

/// Rows are contiguous (unit column stride, or a single column) with a non-negative row
/// stride.
fn rows_contiguous<F>(x: &ArrayView2<F>) -> bool {
    (x.ncols() <= 1 || x.strides()[1] == 1) && x.strides()[0] >= 0
}

fn row_stride<F>(x: &ArrayView2<F>) -> usize {
    x.strides()[0] as usize
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Columns per block: four 16-float registers.
    const BLOCK_COLS: usize = 64;
    /// Rows per block.
    const BLOCK_ROWS: usize = 4;

    /// `c (+)= a·b` over row-major operands given as (pointer, row stride).
    ///
    /// # Safety
    /// AVX-512F available; `a` `[m, k]`, `b` `[k, n]`, `c` `[m, n]` in bounds at those
    /// strides; `c` disjoint from `a` and `b`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn product(
        (m, k, n): (usize, usize, usize),
        a: (*const f32, usize),
        b: (*const f32, usize),
        c: (*mut f32, usize),
        accumulate: bool,
    ) {
        let mut r = 0;
        while r < m {
            let rows = (m - r).min(BLOCK_ROWS);
            let mut col = 0;
            while col < n {
                let cols = (n - col).min(BLOCK_COLS);
                let a_block = (a.0.add(r * a.1), a.1);
                let b_block = (b.0.add(col), b.1);
                let c_block = (c.0.add(r * c.1 + col), c.1);
                let args = (k, cols, a_block, b_block, c_block, accumulate);
                match (rows, cols.div_ceil(16)) {
                    (4, 4) => block::<4, 4>(args),
                    (4, 3) => block::<4, 3>(args),
                    (4, 2) => block::<4, 2>(args),
                    (4, _) => block::<4, 1>(args),
                    (3, 4) => block::<3, 4>(args),
                    (3, 3) => block::<3, 3>(args),
                    (3, 2) => block::<3, 2>(args),
                    (3, _) => block::<3, 1>(args),
                    (2, 4) => block::<2, 4>(args),
                    (2, 3) => block::<2, 3>(args),
                    (2, 2) => block::<2, 2>(args),
                    (2, _) => block::<2, 1>(args),
                    (_, 4) => block::<1, 4>(args),
                    (_, 3) => block::<1, 3>(args),
                    (_, 2) => block::<1, 2>(args),
                    (_, _) => block::<1, 1>(args),
                }
                col += cols;
            }
            r += rows;
        }
    }

    type BlockArgs = (
        usize,
        usize,
        (*const f32, usize),
        (*const f32, usize),
        (*mut f32, usize),
        bool,
    );

    /// `R` rows by `cols` (≤ 16·`V`) columns of `c`: the sums over `k` in `R·V` registers,
    /// the last register's columns masked to what is left.
    ///
    /// # Safety
    /// As for [`product`], for this block.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block<const R: usize, const V: usize>(
        (k, cols, (a, lda), (b, ldb), (c, ldc), accumulate): BlockArgs,
    ) {
        let tail = cols - 16 * (V - 1);
        let mask = |v: usize| -> __mmask16 {
            if v + 1 == V {
                (((1u32 << tail) - 1) & 0xffff) as __mmask16
            } else {
                0xffff
            }
        };
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for kk in 0..k {
            let b_row = b.add(kk * ldb);
            let mut w = [_mm512_setzero_ps(); V];
            for (v, w) in w.iter_mut().enumerate() {
                *w = _mm512_maskz_loadu_ps(mask(v), b_row.add(16 * v));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add(r * lda + kk));
                for (acc, w) in acc.iter_mut().zip(&w) {
                    *acc = _mm512_fmadd_ps(x, *w, *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (v, acc) in acc.iter().enumerate() {
                let dst = c.add(r * ldc + 16 * v);
                let sum = if accumulate {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask(v), dst), *acc)
                } else {
                    *acc
                };
                _mm512_mask_storeu_ps(dst, mask(v), sum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array2};

    fn filled(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
        let mut rng = crate::rng::SplitMix64::new(seed);
        Array2::from_shape_fn((rows, cols), |_| rng.normal())
    }

    /// Every row count up to the limit and column counts around the 16- and 64-column
    /// blocks, on strided views (a slice of wider matrices, as the time loops pass),
    /// with and without accumulation: the same as the product in f64 to f32 rounding.
    #[test]
    fn agrees_with_the_product_in_f64() {
        for m in 1..=MAX_ROWS + 1 {
            for (k, n) in [
                (1, 1),
                (5, 15),
                (7, 16),
                (33, 17),
                (128, 64),
                (64, 100),
                (9, 200),
            ] {
                let a_wide = filled(m, k + 3, m as u64);
                let b_wide = filled(k, n + 5, k as u64 + 100);
                let (a, b) = (
                    a_wide.slice(s![.., 1..k + 1]),
                    b_wide.slice(s![.., 2..n + 2]),
                );
                for accumulate in [false, true] {
                    let mut c_wide = filled(m, n + 7, 7);
                    let before = c_wide.slice(s![.., 3..n + 3]).to_owned();
                    step_product(&a, &b, accumulate, &mut c_wide.slice_mut(s![.., 3..n + 3]));
                    let (a64, b64) = (a.mapv(f64::from), b.mapv(f64::from));
                    let mut want = a64.dot(&b64);
                    if accumulate {
                        want = want + before.mapv(f64::from);
                    }
                    let got = c_wide.slice(s![.., 3..n + 3]);
                    for ((i, j), &w) in want.indexed_iter() {
                        let g = got[[i, j]] as f64;
                        assert!(
                            (g - w).abs() <= 1e-5 * (k as f64).sqrt() * (1.0 + w.abs()),
                            "m {m} k {k} n {n} acc {accumulate}: [{i}, {j}] {g} against {w}"
                        );
                    }
                    // columns outside the view are untouched
                    assert_eq!(c_wide.column(0), filled(m, n + 7, 7).column(0));
                    assert_eq!(c_wide.column(n + 3), filled(m, n + 7, 7).column(n + 3));
                }
            }
        }
    }
}
