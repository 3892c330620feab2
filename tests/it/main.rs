//! The integration tests, in one binary: each module was once its own test crate, and
//! linking wgpu into twenty binaries was most of the time a fresh `cargo test` took.

mod alloc_watch;
mod common;

mod autotune;
mod bad_input;
mod bench_cli;
mod cells;
mod checkpoint;
mod classify_cli;
mod data_loader;
mod encoder_round_trip;
mod fuzz_parsers;
mod gemm;
mod golden;
mod gpu_cells;
mod gpu_device;
mod gpu_lifetimes;
mod gpu_parity;
mod gradcheck;
mod learning;
mod mixed_precision;
mod parameter_sharing;
mod profile;
mod properties;
mod shaders;
mod split;
mod text;
mod tokens_and_state;
mod trainer_cli;
mod ts_format;
mod variable_length;
