//! The only place the CPU path tells the cells apart: the element-wise work of one step,
//! forward and backward, on one packed row and a range of hidden units. Everything around
//! it (the products, the loop over steps, layers and directions) is the same for every
//! cell.
//!
//! Gate blocks are stacked as PyTorch stacks them: LSTM `i, f, g, o`, GRU `r, z, n`; the
//! caller hands each block's slice for the units in hand separately, so a thread of a
//! time loop split by hidden units (see `mod.rs`) works on its own units only.
//!
//! The loops are written to vectorise: no branches, no library calls (`f32` tanh and exp
//! are polynomial approximations within a few ulps), each compiled for AVX-512 or
//! AVX2 + FMA as well as for the baseline, and picked at run time.

use crate::model::Cell;
use crate::real::{tanh_f32, Real};
use std::any::TypeId;

/// `e^x` for f32 (Cephes' `expf`: `2^n · e^r` with `|r| ≤ ln 2 / 2`, a degree-6 polynomial;
/// within 2 ulps), branch-free so that loops over it vectorise. Inputs are clamped to
/// where the result is a normal float: `e^x` below `e^-87.3` is that, not 0, which changes
/// nothing a sigmoid or softmax computes in f32.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // adding 1.5·2^23 rounds to an integer, kept in the low bits of the sum
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let n_int = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    e_r * f32::from_bits(((n_int + 127) as u32) << 23)
}

/// `f` on f32 when `F` is f32, `g` otherwise (f64: the exact functions); the test is on
/// types, so each instance keeps one branch.
#[inline(always)]
fn on_f32<F: Real>(x: F, f: impl Fn(f32) -> f32, g: impl Fn(F) -> F) -> F {
    if TypeId::of::<F>() == TypeId::of::<f32>() {
        // SAFETY: F is f32 here, so both copies are between values of the same type
        let y = f(unsafe { std::mem::transmute_copy::<F, f32>(&x) });
        unsafe { std::mem::transmute_copy::<f32, F>(&y) }
    } else {
        g(x)
    }
}

#[inline(always)]
fn sigmoid<F: Real>(x: F) -> F {
    on_f32(
        x,
        |x| 1.0 / (1.0 + exp_f32(-x)),
        |x| F::one() / (F::one() + (-x).exp()),
    )
}

#[inline(always)]
fn tanh<F: Real>(x: F) -> F {
    on_f32(x, tanh_f32, |x| x.tanh())
}

/// What one step of one row reads and writes in the forward pass, for a range of `u`
/// hidden units. Every slice has `u` elements, or none where the cell does not use it.
pub(super) struct UnitsForward<'a, F> {
    /// Per gate block: in, the pre-activation (Elman, LSTM, GRU's r and z: both
    /// products and both biases; GRU's n: `W_in in(t) + b_in`); out, the gate after its
    /// nonlinearity (Elman: `h`).
    pub gates: [&'a mut [F]; 4],
    /// GRU: in `W_hn h(t-1)`, out `W_hn h(t-1) + b_hn` (kept for the backward pass).
    pub hn: &'a mut [F],
    /// GRU: `b_hn`.
    pub b_hn: &'a [F],
    /// `h(t-1)` (GRU)
    pub h_prev: &'a [F],
    /// `c(t-1)` (LSTM)
    pub c_prev: &'a [F],
    /// Out: `h(t)`
    pub h: &'a mut [F],
    /// Out: `c(t)` (LSTM)
    pub c: &'a mut [F],
}

/// One row of one step forward, on the units the slices hold.
pub(super) fn forward_units<F: Real>(cell: Cell, r: UnitsForward<F>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the function is compiled for
            return unsafe { forward_avx512(cell, r) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above
            return unsafe { forward_avx2(cell, r) };
        }
    }
    forward_impl(cell, r)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn forward_avx512<F: Real>(cell: Cell, r: UnitsForward<F>) {
    forward_impl(cell, r)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_avx2<F: Real>(cell: Cell, r: UnitsForward<F>) {
    forward_impl(cell, r)
}

#[inline(always)]
fn forward_impl<F: Real>(cell: Cell, r: UnitsForward<F>) {
    let u = r.h.len();
    let h = &mut r.h[..u];
    let [g0, g1, g2, g3] = r.gates;
    match cell {
        Cell::Tanh => {
            for (a, h) in g0[..u].iter_mut().zip(h) {
                *a = tanh(*a);
                *h = *a;
            }
        }
        Cell::Relu => {
            for (a, h) in g0[..u].iter_mut().zip(h) {
                *a = a.max(F::zero());
                *h = *a;
            }
        }
        Cell::Lstm => {
            let (gi, gf, gg, go) = (&mut g0[..u], &mut g1[..u], &mut g2[..u], &mut g3[..u]);
            let (c, c_prev) = (&mut r.c[..u], &r.c_prev[..u]);
            for k in 0..u {
                let i = sigmoid(gi[k]);
                let f = sigmoid(gf[k]);
                let g = tanh(gg[k]);
                let o = sigmoid(go[k]);
                let ck = f * c_prev[k] + i * g;
                gi[k] = i;
                gf[k] = f;
                gg[k] = g;
                go[k] = o;
                c[k] = ck;
                h[k] = o * tanh(ck);
            }
        }
        Cell::Gru => {
            let (gr, gz, gn) = (&mut g0[..u], &mut g1[..u], &mut g2[..u]);
            let (hn, b_hn, h_prev) = (&mut r.hn[..u], &r.b_hn[..u], &r.h_prev[..u]);
            for k in 0..u {
                let rg = sigmoid(gr[k]);
                let z = sigmoid(gz[k]);
                let hnk = hn[k] + b_hn[k];
                let n = tanh(gn[k] + rg * hnk);
                gr[k] = rg;
                gz[k] = z;
                gn[k] = n;
                hn[k] = hnk;
                h[k] = (F::one() - z) * n + z * h_prev[k];
            }
        }
    }
}

/// What one step of one row reads and writes in the backward pass, for a range of `u`
/// hidden units. Every slice has `u` elements, or none where the cell does not use it.
pub(super) struct UnitsBackward<'a, F> {
    /// The gates as the forward pass left them (Elman: `h`), per block.
    pub gates: [&'a [F]; 4],
    /// `h(t-1)` (GRU), `c(t-1)` and `c(t)` (LSTM), `W_hn h(t-1) + b_hn` (GRU).
    pub h_prev: &'a [F],
    pub c_prev: &'a [F],
    pub c: &'a [F],
    pub hn: &'a [F],
    /// The loss's gradient with respect to `h(t)` (and `c(t)`, LSTM), everything after
    /// step `t` included.
    pub dh: &'a [F],
    pub dc: &'a [F],
    /// Out, per block: the gradient with respect to the pre-activation (for GRU's n
    /// block, with respect to `W_in in(t) + b_in`).
    pub dgx: [&'a mut [F]; 4],
    /// Out (GRU only), per block: the gradient with respect to `W_hh h(t-1) + b_hh`; for
    /// the other cells it equals `dgx`.
    pub dgh: [&'a mut [F]; 4],
    /// Where the gradient reaching `h(t-1)` other than through `W_hh` (GRU's `z ⊙ dh`)
    /// and reaching `c(t-1)` (LSTM's `f ⊙ dc`) is added: the previous step's rows of
    /// `dh` and `dc`, or none when the row has no previous step.
    pub dh_prev: Option<&'a mut [F]>,
    pub dc_prev: Option<&'a mut [F]>,
}

/// One row of one step backward, on the units the slices hold.
pub(super) fn backward_units<F: Real>(cell: Cell, r: UnitsBackward<F>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the function is compiled for
            return unsafe { backward_avx512(cell, r) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above
            return unsafe { backward_avx2(cell, r) };
        }
    }
    backward_impl(cell, r)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn backward_avx512<F: Real>(cell: Cell, r: UnitsBackward<F>) {
    backward_impl(cell, r)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_avx2<F: Real>(cell: Cell, r: UnitsBackward<F>) {
    backward_impl(cell, r)
}

#[inline(always)]
fn backward_impl<F: Real>(cell: Cell, r: UnitsBackward<F>) {
    let u = r.dh.len();
    let one = F::one();
    let dh = &r.dh[..u];
    let [d0, d1, d2, d3] = r.dgx;
    match cell {
        Cell::Tanh => {
            for ((d, &v), &g) in d0[..u].iter_mut().zip(&r.gates[0][..u]).zip(dh) {
                *d = g * (one - v * v);
            }
        }
        Cell::Relu => {
            for ((d, &v), &g) in d0[..u].iter_mut().zip(&r.gates[0][..u]).zip(dh) {
                *d = if v > F::zero() { g } else { F::zero() };
            }
        }
        Cell::Lstm => {
            let [gi, gf, gg, go] = r.gates;
            let (gi, gf, gg, go) = (&gi[..u], &gf[..u], &gg[..u], &go[..u]);
            let (c, c_prev, dc_in) = (&r.c[..u], &r.c_prev[..u], &r.dc[..u]);
            let (di, df, dg, d_o) = (&mut d0[..u], &mut d1[..u], &mut d2[..u], &mut d3[..u]);
            let mut dc_prev = r.dc_prev.map(|d| &mut d[..u]);
            for k in 0..u {
                let (i, f, g, o) = (gi[k], gf[k], gg[k], go[k]);
                let tc = tanh(c[k]);
                let dc = dc_in[k] + dh[k] * o * (one - tc * tc);
                di[k] = dc * g * i * (one - i);
                df[k] = dc * c_prev[k] * f * (one - f);
                dg[k] = dc * i * (one - g * g);
                d_o[k] = dh[k] * tc * o * (one - o);
                if let Some(dp) = dc_prev.as_deref_mut() {
                    dp[k] = dp[k] + dc * f;
                }
            }
        }
        Cell::Gru => {
            let [gr, gz, gn, _] = r.gates;
            let (gr, gz, gn) = (&gr[..u], &gz[..u], &gn[..u]);
            let (h_prev, hn) = (&r.h_prev[..u], &r.hn[..u]);
            let (dr_x, dz_x, dn_x) = (&mut d0[..u], &mut d1[..u], &mut d2[..u]);
            let [e0, e1, e2, _] = r.dgh;
            let (dr_h, dz_h, dn_h) = (&mut e0[..u], &mut e1[..u], &mut e2[..u]);
            let mut dh_prev = r.dh_prev.map(|d| &mut d[..u]);
            for k in 0..u {
                let (rg, z, n) = (gr[k], gz[k], gn[k]);
                let d = dh[k];
                let dn = d * (one - z) * (one - n * n);
                let dz = d * (h_prev[k] - n) * z * (one - z);
                let dr = dn * hn[k] * rg * (one - rg);
                dr_x[k] = dr;
                dz_x[k] = dz;
                dn_x[k] = dn;
                dr_h[k] = dr;
                dz_h[k] = dz;
                dn_h[k] = dn * rg;
                if let Some(dp) = dh_prev.as_deref_mut() {
                    dp[k] = dp[k] + d * z;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_within_two_ulps_of_exp() {
        let mut worst = 0.0f64;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let (got, want) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) > 0.0 && exp_f32(-1000.0) < 1e-37);
        assert!(exp_f32(1000.0).is_finite());
        assert_eq!(sigmoid(1000.0f32), 1.0);
        assert!(sigmoid(-1000.0f32) < 1e-37);
    }
}
