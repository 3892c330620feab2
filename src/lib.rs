//! # unfold
//!
//! Recurrent neural networks trained by back-propagation through time, on the GPU through
//! WebGPU compute shaders (wgpu + WGSL) or on the CPU reference path (ndarray), with the
//! same semantics on both.
//!
//! A recurrence `h(t) = φ(W_ih x(t) + W_hh h(t-1) + b)` applies one shared set of
//! parameters at every step; it is *unfolded* into a graph with one repeated piece per
//! step and trained through it. Sequences in a batch have different lengths; nothing past
//! a sequence's length influences anything.
//!
//! ```
//! use unfold::ndarray::Array2;
//! use unfold::{Device, Optimizer, Rnn, RnnConfig, RnnParams, SequenceBatch, Targets};
//!
//! let config = RnnConfig::new(2, 8, 3); // input 2, hidden 8, 3 classes
//! let params = RnnParams::init(&config, 0);
//! let mut rnn = Rnn::new(config, params, &Device::cpu())?;
//!
//! // two sequences of lengths 3 and 2, one class per step
//! let inputs = vec![Array2::from_elem((3, 2), 0.5), Array2::from_elem((2, 2), -0.5)];
//! let batch = SequenceBatch::new(inputs, Targets::Classes(vec![vec![0, 1, 2], vec![2, 1]]))?;
//!
//! let mut adam = Optimizer::adam(1e-2).clip_grad_norm(1.0);
//! let first = rnn.train_step(&batch, &mut adam)?;
//! for _ in 0..50 {
//!     rnn.train_step(&batch, &mut adam)?;
//! }
//! assert!(rnn.forward(&batch)?.loss < first);
//! # Ok::<(), unfold::Error>(())
//! ```

#![warn(missing_docs)]

mod batch;
mod checkpoint;
pub mod data;
mod device;
#[cfg(feature = "mpi")]
pub mod distributed;
mod error;
pub mod generate;
mod model;
mod optim;
mod real;
pub mod rng;
mod rnn;
mod split;
pub mod text;

pub use ndarray;

pub use batch::{SequenceBatch, Targets};
pub use cpu::RnnState;
pub use device::Device;
pub use error::{Error, Result};
pub use model::{Cell, Head, LayerParams, Nonlinearity, RnnConfig, RnnParams};
pub use optim::{Optimizer, OptimizerKind, OptimizerState};
pub use rnn::{Encoded, Forward, Gradients, Rnn};

pub mod internals;

// the crate itself keeps its short paths
pub(crate) use internals::{cpu, gpu};

/// The README's example runs as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
