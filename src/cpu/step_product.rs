//! The product of one time step, `c (+)= a·b`: a step's states (or gate gradients) times
//! the recurrent weights. A general GEMM packs `b` (all of `W_hh`) into its kernel's
//! layout on every call, once per step; here the weights are packed once per pass into
//! [`Panels`] and every step's product streams through them in place: up to six rows of
//! `a` against 64 columns at a time, every partial sum in a register. Other element
//! types, machines without AVX-512 and columns that do not start a panel take the
//! general product.

use super::gemm;
use crate::real::Real;
use ndarray::{ArrayView2, ArrayViewMut2};
use std::any::TypeId;
use std::ops::Range;

/// Columns per panel: one AVX-512 register of `f32`.
const PANEL: usize = 16;
/// Floats per 64-byte cache line: panels start on one, so no load splits a line.
const LINE: usize = 16;

/// A matrix `[k, blocks·width]` packed for [`step_product`]: each block of `width`
/// columns (an LSTM's gates are four) cut into panels of 16 columns, a panel's `k` rows
/// of 16 contiguous and the columns past the block's end zero. Empty (`packed` false)
/// where the kernel cannot run: other element types, no AVX-512.
#[derive(Debug, Default)]
pub struct Panels {
    buf: Vec<f32>,
    /// The first float of `buf` on a cache-line boundary.
    start: usize,
    k: usize,
    width: usize,
    blocks: usize,
    packed: bool,
}

impl Panels {
    /// Packs `b` `[k, blocks·width]` (any strides) when the kernel can run here; otherwise
    /// leaves the panels empty and every product takes the general path.
    pub fn pack<F: Real>(&mut self, b: &ArrayView2<F>, width: usize) {
        self.packed = false;
        let (k, n) = b.dim();
        if !kernel_available::<F>() || width == 0 || n % width != 0 {
            return;
        }
        let blocks = n / width;
        let per_block = width.div_ceil(PANEL);
        let len = blocks * per_block * k * PANEL;
        self.buf.clear();
        self.buf.resize(len + LINE, 0.0);
        self.start = self.buf.as_ptr().align_offset(LINE * 4).min(LINE);
        let out = &mut self.buf[self.start..self.start + len];
        for blk in 0..blocks {
            for p in 0..per_block {
                let first = p * PANEL;
                let cols = (width - first).min(PANEL);
                let panel = &mut out[(blk * per_block + p) * k * PANEL..][..k * PANEL];
                let from = blk * width + first;
                let src = b.slice(ndarray::s![.., from..from + cols]);
                for (kk, row) in src.rows().into_iter().enumerate() {
                    let dst = &mut panel[kk * PANEL..(kk + 1) * PANEL];
                    for (d, &v) in dst.iter_mut().zip(row) {
                        // exact: `F` is `f32`
                        *d = v.to_f64() as f32;
                    }
                }
            }
        }
        (self.k, self.width, self.blocks, self.packed) = (k, width, blocks, true);
    }

    /// Whether the last [`pack`](Self::pack) packed its matrix.
    pub fn packed(&self) -> bool {
        self.packed
    }

    /// The panel holding column `col` of `b` (which starts one: `col % width` a multiple
    /// of 16), as a pointer to its first float.
    fn panel_of(&self, col: usize) -> *const f32 {
        let (blk, local) = (col / self.width, col % self.width);
        let index = blk * self.width.div_ceil(PANEL) + local / PANEL;
        self.buf[self.start + index * self.k * PANEL..].as_ptr()
    }
}

/// f32 on a machine with AVX-512F.
fn kernel_available<F: 'static>() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        TypeId::of::<F>() == TypeId::of::<f32>() && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `c = a·b[:, cols]`, or `c += …` with `accumulate`, on the calling thread (`a` `[m, k]`,
/// `b` `[k, n]`, `c` `[m, cols.len()]`), through `panels` when they hold `b` packed and
/// each block's part of `cols` starts a panel; `cols` may span blocks.
///
/// # Panics
/// If the shapes do not match, or `panels` hold a matrix of another shape.
pub fn step_product<F: Real>(
    a: &ArrayView2<F>,
    b: &ArrayView2<F>,
    panels: &Panels,
    cols: Range<usize>,
    accumulate: bool,
    c: &mut ArrayViewMut2<F>,
) {
    let (m, k) = a.dim();
    assert!(
        b.nrows() == k && cols.end <= b.ncols() && c.dim() == (m, cols.len()),
        "step product: a {:?}, b {:?}, columns {cols:?}, c {:?}",
        a.dim(),
        b.dim(),
        c.dim()
    );
    if panels.packed {
        assert_eq!((panels.k, panels.blocks * panels.width), b.dim());
    }
    #[cfg(target_arch = "x86_64")]
    if panels.packed
        && (cols.start % panels.width).is_multiple_of(PANEL)
        && rows_contiguous(a)
        && rows_contiguous(&c.view())
    {
        if m == 0 || cols.is_empty() {
            return;
        }
        if k == 0 {
            if !accumulate {
                c.fill(F::zero());
            }
            return;
        }
        let mut col = cols.start;
        while col < cols.end {
            // this block's part of the columns
            let end = cols.end.min((col / panels.width + 1) * panels.width);
            // SAFETY: `packed` means `F` is `f32` and AVX-512F is available (`pack`
            // checked both), so the casts are identities; the shapes are checked above
            // and each view has unit column stride (or one column), so every element the
            // kernel addresses, `ptr + row·stride + col` with row and col inside the
            // view's shape, lies inside that view; the panels from `col` on hold
            // `end - col` columns (rounded up to whole panels) of `k` rows; `c` is
            // borrowed mutably, so it overlaps neither `a` nor `b`.
            unsafe {
                avx512::product(
                    (m, k, end - col),
                    (a.as_ptr() as *const f32, row_stride(a)),
                    panels.panel_of(col),
                    (
                        c.as_mut_ptr().add(col - cols.start) as *mut f32,
                        row_stride(&c.view()),
                    ),
                    accumulate,
                );
            }
            col = end;
        }
        return;
    }
    let beta = if accumulate { F::one() } else { F::zero() };
    let b = b.slice(ndarray::s![.., cols]);
    gemm::mat_mul_serial(F::one(), a, &b, beta, c);
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
    use super::PANEL;
    use std::arch::x86_64::*;

    /// Panels per block of columns: four registers of 16.
    const BLOCK_PANELS: usize = 4;
    /// Rows per block: with four panels, 24 registers of sums.
    const BLOCK_ROWS: usize = 6;
    /// Rows of the panels per pass over the row blocks: 64 KiB of them, which the row
    /// blocks then read from L1/L2 in turn (a few percent faster than whole panels on a
    /// `k` of 2,048; the same on 512).
    const K_CHUNK: usize = 256;

    /// `c (+)= a·b` over row-major `a` and `c` given as (pointer, row stride) and `b` as
    /// consecutive panels of `k` rows of 16 from `panels` on: 64 columns at a time, each
    /// in chunks of `k`, each chunk against every block of six rows.
    ///
    /// # Safety
    /// AVX-512F available; `a` `[m, k]` and `c` `[m, n]` in bounds at those strides,
    /// `n.div_ceil(16)` panels of `k·16` floats from `panels`; `c` disjoint from both.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn product(
        (m, k, n): (usize, usize, usize),
        a: (*const f32, usize),
        panels: *const f32,
        c: (*mut f32, usize),
        accumulate: bool,
    ) {
        let mut col = 0;
        while col < n {
            let cols = (n - col).min(BLOCK_PANELS * PANEL);
            let mut k0 = 0;
            while k0 < k {
                let kc = (k - k0).min(K_CHUNK);
                let b = panels.add(col / PANEL * k * PANEL + k0 * PANEL);
                let mut r = 0;
                while r < m {
                    let rows = (m - r).min(BLOCK_ROWS);
                    let args = (
                        (kc, k),
                        cols,
                        (a.0.add(r * a.1 + k0), a.1),
                        b,
                        (c.0.add(r * c.1 + col), c.1),
                        accumulate || k0 > 0,
                    );
                    match (rows, cols.div_ceil(PANEL)) {
                        (6, 4) => block::<6, 4>(args),
                        (6, 3) => block::<6, 3>(args),
                        (6, 2) => block::<6, 2>(args),
                        (6, _) => block::<6, 1>(args),
                        (5, 4) => block::<5, 4>(args),
                        (5, 3) => block::<5, 3>(args),
                        (5, 2) => block::<5, 2>(args),
                        (5, _) => block::<5, 1>(args),
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
                    r += rows;
                }
                k0 += kc;
            }
            col += cols;
        }
    }

    type BlockArgs = (
        (usize, usize),
        usize,
        (*const f32, usize),
        *const f32,
        (*mut f32, usize),
        bool,
    );

    /// `R` rows by `cols` (≤ 16·`V`) columns of `c` from `V` panels (each `panel_rows`
    /// long; `k` of those rows, from `b` on): the sums over `k` in `R·V` registers, the last register's columns masked to what is left on the way
    /// out (the panels' padding is zero, so loads need no mask).
    ///
    /// # Safety
    /// As for [`product`], for this block.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block<const R: usize, const V: usize>(
        ((k, panel_rows), cols, (a, lda), b, (c, ldc), accumulate): BlockArgs,
    ) {
        let tail = cols - PANEL * (V - 1);
        let mask = |v: usize| -> __mmask16 {
            if v + 1 == V {
                (((1u32 << tail) - 1) & 0xffff) as __mmask16
            } else {
                0xffff
            }
        };
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for kk in 0..k {
            let mut w = [_mm512_setzero_ps(); V];
            for (v, w) in w.iter_mut().enumerate() {
                *w = _mm512_loadu_ps(b.add((v * panel_rows + kk) * PANEL));
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
                let dst = c.add(r * ldc + PANEL * v);
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

    /// Row counts around the six-row blocks, column ranges around the panels and their
    /// 64-column groups, within a block, from a block's start across later blocks, and
    /// not starting a panel (the general path); strided views of `a` and `c` (slices of
    /// wider matrices, as the time loops pass) and `b` read transposed, packed or not,
    /// with and without accumulation: the same as the product in f64 to f32 rounding.
    #[test]
    fn agrees_with_the_product_in_f64() {
        for m in [1, 2, 5, 6, 7, 12, 13, 64, 65] {
            for (k, width, blocks, cols) in [
                (0, 3, 2, 0..6),
                (1, 1, 1, 0..1),
                (5, 15, 2, 0..30),
                (7, 16, 1, 0..16),
                (33, 17, 3, 17..51),
                (128, 64, 4, 64..192),
                (64, 100, 2, 16..100),
                (64, 100, 2, 32..164),
                (9, 200, 1, 48..131),
                (9, 200, 1, 5..131),
                (20, 70, 3, 70..140),
            ] {
                let n = width * blocks;
                let a_wide = filled(m, k + 3, m as u64);
                // `b` is a transposed view, as the forward loop packs `W_hhᵀ`
                let b_t = filled(n + 5, k, k as u64 + 100);
                let (a, b) = (a_wide.slice(s![.., 1..k + 1]), b_t.slice(s![2..n + 2, ..]));
                let b = b.t();
                let a64 = a.mapv(f64::from);
                let b64 = b.slice(s![.., cols.clone()]).mapv(f64::from);
                for pack in [true, false] {
                    let mut panels = Panels::default();
                    if pack {
                        panels.pack(&b, width);
                    }
                    for accumulate in [false, true] {
                        let nc = cols.len();
                        let mut c_wide = filled(m, nc + 7, 7);
                        let before = c_wide.slice(s![.., 3..nc + 3]).to_owned();
                        let mut c = c_wide.slice_mut(s![.., 3..nc + 3]);
                        step_product(&a, &b, &panels, cols.clone(), accumulate, &mut c);
                        let mut want = a64.dot(&b64);
                        if accumulate {
                            want = want + before.mapv(f64::from);
                        }
                        let got = c_wide.slice(s![.., 3..nc + 3]);
                        for ((i, j), &w) in want.indexed_iter() {
                            let g = got[[i, j]] as f64;
                            assert!(
                                (g - w).abs() <= 1e-5 * (k as f64).sqrt() * (1.0 + w.abs()),
                                "m {m} k {k} {cols:?} pack {pack} acc {accumulate}: \
                                 [{i}, {j}] {g} against {w}"
                            );
                        }
                        // columns outside the view are untouched
                        let fresh = filled(m, nc + 7, 7);
                        assert_eq!(c_wide.column(0), fresh.column(0));
                        assert_eq!(c_wide.column(nc + 3), fresh.column(nc + 3));
                    }
                }
            }
        }
    }

    /// Packing again for another shape, or for the f64 path (which never packs), leaves
    /// no stale panels behind.
    #[test]
    fn repacking_follows_the_matrix() {
        let mut panels = Panels::default();
        let (b1, b2) = (filled(8, 32, 1), filled(4, 48, 2));
        panels.pack(&b1.view(), 16);
        panels.pack(&b2.view(), 48);
        let a = filled(3, 4, 3);
        let mut c = Array2::zeros((3, 48));
        step_product(
            &a.view(),
            &b2.view(),
            &panels,
            0..48,
            false,
            &mut c.view_mut(),
        );
        let want = a.dot(&b2);
        assert!(c.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-4));
        let b64 = b1.mapv(f64::from);
        let mut p64 = Panels::default();
        p64.pack(&b64.view(), 16);
        assert!(!p64.packed);
    }
}
