//! Not part of the stable API: the pieces the command line, the benches and the tests
//! reach into, which may change in any release. The CPU reference path in any float
//! precision (its functions expect a batch already checked against the config, and the
//! workspace of a forward pass for the backward one), the GPU path's adapter listing,
//! matrix-product plans, time loops and shader registry, the anchor workloads, and the
//! atomic file writer the trainer's checkpoints use.

// The modules live in their usual places; they are declared here so that their public
// items are reachable as `unfold::internals::...` and not from the crate root.
#[path = "cpu/mod.rs"]
pub mod cpu;
#[path = "gpu/mod.rs"]
pub mod gpu;
#[path = "workloads.rs"]
pub mod workloads;

pub use crate::checkpoint::write_atomically;
pub use crate::model::can_allocate;
pub use crate::real::Real;
pub use gpu::TimeLoop;
