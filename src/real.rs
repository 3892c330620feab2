//! The float types the CPU reference path runs in: `f32` for training, `f64` for
//! gradient checks.

use ndarray::LinalgScalar;
use num_traits::Float;
use std::fmt::{Debug, Display};

/// A float type the CPU path computes in (`f32` or `f64`).
pub trait Real: LinalgScalar + Float + Debug + Display + Send + Sync + Default + 'static {
    fn from_f32(x: f32) -> Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl Real for f32 {
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
