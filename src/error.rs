//! One error type for the whole crate: every bad input is an `Err` that says what was
//! wrong and with which numbers, never a panic.

use std::path::PathBuf;

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in unfold.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range (a size of zero, an unknown name, ...).
    #[error("invalid configuration: {what} must be {expected}, got {got}")]
    InvalidConfig {
        /// The setting.
        what: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What it was.
        got: String,
    },
    /// A batch with no sequences.
    #[error("empty batch: a batch needs at least one sequence")]
    EmptyBatch,
    /// A sequence with no steps.
    #[error("sequence {index} has length 0: every sequence needs at least one step")]
    ZeroLengthSequence {
        /// The sequence's index in the batch.
        index: usize,
    },
    /// A batch without targets given to an operation that computes a loss.
    #[error(
        "{action} needs targets: this batch was made without them (SequenceBatch::inputs_only)"
    )]
    MissingTargets {
        /// The operation that needed them.
        action: &'static str,
    },
    /// An operation the model's configuration does not offer (the message says what to
    /// use instead).
    #[error("{0}")]
    Unsupported(String),
    /// An array has the wrong shape.
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// The array.
        what: String,
        /// The shape it must have.
        expected: String,
        /// The shape it had.
        got: String,
    },
    /// A class target outside `0..output_size`.
    #[error("class target {class} of sequence {sequence} at step {step} is out of range: output_size is {output_size}")]
    ClassOutOfRange {
        /// The sequence's index in the batch.
        sequence: usize,
        /// The step within it.
        step: usize,
        /// The class given.
        class: u32,
        /// The model's number of outputs.
        output_size: usize,
    },
    /// A token id outside `0..vocab_size`.
    #[error("token {token} of sequence {sequence} at step {step} is out of range: vocab_size is {vocab_size}")]
    TokenOutOfRange {
        /// The sequence's index in the batch.
        sequence: usize,
        /// The step within it.
        step: usize,
        /// The token given.
        token: u32,
        /// The vocabulary's size.
        vocab_size: usize,
    },
    /// A NaN or infinite value where finite numbers are required.
    #[error("non-finite value in {what}: {detail}")]
    NonFinite {
        /// Where.
        what: String,
        /// Which element, and what else happened (or did not).
        detail: String,
    },
    /// A checkpoint that cannot be read as unfold parameters.
    #[error("invalid checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file system error, with the path it concerned.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// No GPU adapter could be found.
    #[error("no GPU adapter found{detail}: install a Vulkan driver (on Debian, `apt-get install mesa-vulkan-drivers libvulkan1` gives the software adapter lavapipe)")]
    NoAdapter {
        /// What was asked for, when something was (`WGPU_ADAPTER_NAME`, ...).
        detail: String,
    },
    /// The GPU reported an error (device lost, validation error, out of memory).
    #[error("GPU error: {0}")]
    Gpu(String),
    /// Work that does not fit the adapter's limits.
    #[error("{what} needs {needed} but the adapter allows at most {limit} ({hint})")]
    ExceedsDeviceLimit {
        /// The buffer or dispatch.
        what: String,
        /// What it needs.
        needed: u64,
        /// What the adapter allows.
        limit: u64,
        /// What to change.
        hint: &'static str,
    },
    /// An optimizer whose state belongs to another model or device.
    #[error("optimizer state mismatch: {0}")]
    OptimizerMismatch(String),
    /// A data file that cannot be parsed, with the (1-based) line at fault.
    #[error("{path}:{line}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line at fault, from 1.
        line: usize,
        /// What is wrong there.
        reason: String,
    },
    /// A dataset whose parts do not fit together (labels, class names, feature widths).
    #[error("invalid dataset: {0}")]
    InvalidData(String),
    /// Data-parallel training across processes (`distributed`, feature `mpi`): ranks that
    /// disagree, or a rank that failed, as every rank reports it.
    #[error("distributed training: {0}")]
    Distributed(String),
    /// Two computations that should agree (the CPU and GPU paths) differ by more than
    /// the tolerance.
    #[error("verification failed: {0}")]
    VerificationFailed(String),
}

impl Error {
    pub(crate) fn shape(
        what: impl Into<String>,
        expected: impl ToString,
        got: impl ToString,
    ) -> Self {
        Error::ShapeMismatch {
            what: what.into(),
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }
}
