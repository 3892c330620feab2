//! The float types the CPU reference path runs in: `f32` for training, `f64` for
//! gradient checks.

use ndarray::LinalgScalar;
use num_traits::Float;
use std::fmt::{Debug, Display};

/// A float type the CPU path computes in (`f32` or `f64`).
pub trait Real: LinalgScalar + Float + Debug + Display + Send + Sync + Default + 'static {
    /// The nearest value to an `f32`.
    fn from_f32(x: f32) -> Self;
    /// The nearest value to an `f64`.
    fn from_f64(x: f64) -> Self;
    /// The value as an `f64`.
    fn to_f64(self) -> f64;
    /// tanh as the CPU path computes it: exact for `f64`, a vectorisable rational
    /// approximation for `f32` (error within a few f32 ulps; see `src/real.rs`).
    fn fast_tanh(self) -> Self {
        self.tanh()
    }
}

/// tanh for f32 as a rational function on the clamped input (the approximation Eigen uses
/// for float): no branches or library calls, so loops over it vectorise; its error is a
/// few f32 ulps, below the rounding differences between any two tanh implementations.
/// Plain multiply-adds, not `mul_add`: without a compile-time FMA target that becomes a
/// call to libm's `fmaf` per term.
#[inline]
pub fn tanh_f32(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    let x = x.clamp(-CLAMP, CLAMP);
    let x2 = x * x;
    let mut p = x2 * -2.760_768_5e-16 + 2.000_188e-13;
    p = x2 * p + -8.604_672e-11;
    p = x2 * p + 5.122_297e-8;
    p = x2 * p + 1.485_722_4e-5;
    p = x2 * p + 6.372_619_3e-4;
    p = x2 * p + 4.893_524_6e-3;
    let mut q = x2 * 1.198_258_4e-6 + 1.185_347_1e-4;
    q = x2 * q + 2.268_434_6e-3;
    q = x2 * q + 4.893_525e-3;
    x * p / q
}

impl Real for f32 {
    fn fast_tanh(self) -> Self {
        tanh_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        x
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    fn from_f32(x: f32) -> Self {
        x as f64
    }
    fn from_f64(x: f64) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fast_tanh_matches_std_tanh() {
        let mut worst = 0.0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4; // [-20, 20]
            let (got, want) = (super::tanh_f32(x) as f64, (x as f64).tanh());
            worst = worst.max((got - want).abs() / want.abs().max(1e-30));
        }
        assert!(worst < 1e-6, "worst relative error {worst:e}");
        assert_eq!(super::tanh_f32(0.0), 0.0);
        assert_eq!(super::tanh_f32(f32::INFINITY), super::tanh_f32(100.0));
    }
}
