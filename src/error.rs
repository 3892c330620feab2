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
        what: &'static str,
        expected: &'static str,
        got: String,
    },
    /// A batch with no sequences.
    #[error("empty batch: a batch needs at least one sequence")]
    EmptyBatch,
    /// A sequence with no steps.
    #[error("sequence {index} has length 0: every sequence needs at least one step")]
    ZeroLengthSequence { index: usize },
    /// A batch without targets given to an operation that computes a loss.
    #[error(
        "{action} needs targets: this batch was made without them (SequenceBatch::inputs_only)"
    )]
    MissingTargets { action: &'static str },
    /// An operation the model's configuration does not offer (the message says what to
    /// use instead).
    #[error("{0}")]
    Unsupported(String),
    /// An array has the wrong shape.
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    ShapeMismatch {
        what: String,
        expected: String,
        got: String,
    },
    /// A class target outside `0..output_size`.
    #[error("class target {class} of sequence {sequence} at step {step} is out of range: output_size is {output_size}")]
    ClassOutOfRange {
        sequence: usize,
        step: usize,
        class: u32,
        output_size: usize,
    },
    /// A token id outside `0..vocab_size`.
    #[error("token {token} of sequence {sequence} at step {step} is out of range: vocab_size is {vocab_size}")]
    TokenOutOfRange {
        sequence: usize,
        step: usize,
        token: u32,
        vocab_size: usize,
    },
    /// A NaN or infinite value where finite numbers are required.
    #[error("non-finite value in {what}: {detail}")]
    NonFinite { what: String, detail: String },
    /// A checkpoint that cannot be read as unfold parameters.
    #[error("invalid checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    /// A file system error, with the path it concerned.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No GPU adapter could be found.
    #[error("no GPU adapter found{detail}: install a Vulkan driver (on Debian, `apt-get install mesa-vulkan-drivers libvulkan1` gives the software adapter lavapipe)")]
    NoAdapter { detail: String },
    /// The GPU reported an error (device lost, validation error, out of memory).
    #[error("GPU error: {0}")]
    Gpu(String),
    /// Work that does not fit the adapter's limits.
    #[error("{what} needs {needed} but the adapter allows at most {limit} ({hint})")]
    ExceedsDeviceLimit {
        what: String,
        needed: u64,
        limit: u64,
        hint: &'static str,
    },
    /// An optimizer whose state belongs to another model or device.
    #[error("optimizer state mismatch: {0}")]
    OptimizerMismatch(String),
    /// A data file that cannot be parsed, with the (1-based) line at fault.
    #[error("{path}:{line}: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
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
