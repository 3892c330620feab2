//! The `unfold` command line: one module per command, each with its clap-derived
//! arguments and a `run` that returns the process's exit code.
//!
//! - `train` trains a character-level language model on a text file (by default the
//!   bundled *Persuasion*), with checkpoints, samples and a loss plot (`train/`);
//! - `sample` generates text from those checkpoints;
//! - `classify` trains a sequence classifier on a UEA/UCR `.ts` dataset (by default the
//!   bundled JapaneseVowels);
//! - `bench` times training steps or matrix products, one JSON line each;
//! - `devices` lists the adapters wgpu sees;
//! - `verify` runs the same training steps on the CPU path and on the GPU and compares.
//!
//! The library never prints: what it has to say (such as why `Device::auto` fell back to
//! the CPU path) comes back to these modules, which print it.

mod bench;
mod classify;
mod devices;
mod options;
mod parallel;
mod plot;
mod runtime_dir;
mod sample;
mod train;
mod verify;

use clap::{Parser, Subcommand};
use std::path::Path;
use std::process::ExitCode;

/// Errors of the command line: the library's, and the commands' own messages.
pub type CliResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[derive(Parser)]
#[command(
    name = "unfold",
    version,
    about = "Recurrent neural networks trained by back-propagation through time, on the GPU (wgpu) or the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a character-level language model on a text file (by default the bundled
    /// Persuasion by Jane Austen), with checkpoints, a loss plot and samples.
    Train(train::TrainArgs),
    /// Generate text from a checkpoint written by `train`.
    Sample(sample::SampleArgs),
    /// Time training steps on the anchor workloads (ARCHITECTURE.md); one JSON line per case.
    Bench(bench::BenchArgs),
    /// List the adapters wgpu sees and the one `--device auto` picks.
    Devices,
    /// Train a sequence classifier (last-step head) on a UEA/UCR `.ts` dataset and report
    /// its test accuracy and confusion matrix. Without --train/--test: the bundled
    /// JapaneseVowels dataset (speaker recognition, 12 features, 9 classes).
    Classify(classify::ClassifyArgs),
    /// Run the same training steps from the same weights on the CPU path and on the GPU
    /// (`Device::gpu()`, honouring WGPU_ADAPTER_NAME) and compare losses, parameters, and
    /// (from the CPU copy's parameters at each step) outputs and gradients; fails past
    /// --tolerance.
    Verify(verify::VerifyArgs),
}

/// Parses the command line, runs the command, and reports an error as `error: …` on
/// stderr with a failing exit code.
pub fn run() -> ExitCode {
    flush_subnormals();
    die_quietly_on_a_closed_pipe();
    let cli = Cli::parse();
    // before any thread starts and before Vulkan is loaded
    let _runtime_dir = runtime_dir::quiet_window_system_probe();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> CliResult<ExitCode> {
    // under mpirun, `train` and `classify` run data-parallel over the ranks (feature `mpi`)
    let _mpi = match command {
        Command::Train(_) | Command::Classify(_) => Some(parallel::start()?),
        _ => None,
    };
    match command {
        Command::Train(args) => parallel::finish(train::run(args)),
        Command::Sample(args) => sample::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Devices => devices::run(),
        Command::Classify(args) => parallel::finish(classify::run(args)),
        Command::Verify(args) => verify::run(args),
    }
}

/// Restores the default action of SIGPIPE (end the process quietly), which Rust's runtime
/// sets to "ignore": a write to a closed pipe then fails instead, and `println!` panics on
/// it. With the default, `unfold sample … | head -c 100` ends like any Unix tool.
/// Checkpoints, results and plots are written to a temporary name and renamed, so ending
/// mid-run leaves none of them half-written.
fn die_quietly_on_a_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Refuses, with an error instead of an abort, work that needs more memory than this
/// machine will ever allocate: `floats` f32 values for `what` (a typo such as `--hidden
/// 1000000` asks for terabytes, and a failed allocation aborts the process).
pub(crate) fn ensure_allocatable(floats: u128, what: &str) -> CliResult<()> {
    let bytes = floats.saturating_mul(4);
    let fits = usize::try_from(bytes)
        .ok()
        .is_some_and(unfold::internals::can_allocate);
    if fits {
        return Ok(());
    }
    Err(format!(
        "{what} would need {:.1} GB, more memory than this machine can allocate",
        bytes as f64 / 1e9
    )
    .into())
}

/// [`ensure_allocatable`] for a model to train: its parameters, their gradients and an
/// optimizer's two moments.
pub(crate) fn ensure_model_fits(config: &unfold::RnnConfig) -> CliResult<()> {
    ensure_allocatable(4 * config.num_params() as u128, "a model of this size")
}

/// Sets flush-to-zero and denormals-are-zero (x86-64's MXCSR) for this thread and the
/// threads it starts later, which inherit it. Arithmetic on subnormal floats takes a slow
/// microcode path there, and back-propagation through hundreds of steps makes them: the
/// gradients reaching early steps decay through the subnormal range, and with them an
/// epoch of `classify` on 300-step sequences took 3.7 times as long (BENCHMARKS.md). The
/// results change only where a value below 1.2e-38 is rounded to zero instead.
fn flush_subnormals() {
    #[cfg(target_arch = "x86_64")]
    #[allow(deprecated)] // the intrinsics are deprecated in favour of inline assembly
    // SAFETY: only how subnormal inputs and results round changes (to zero); no Rust code
    // here relies on subnormals
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        const FLUSH_TO_ZERO: u32 = 0x8000;
        const DENORMALS_ARE_ZERO: u32 = 0x0040;
        _mm_setcsr(_mm_getcsr() | FLUSH_TO_ZERO | DENORMALS_ARE_ZERO);
    }
}

/// Fails now, not after minutes of training, when `dir` cannot take the files a command
/// writes there (atomically, through a temporary file in the same directory).
pub fn ensure_writable(dir: &Path) -> CliResult<()> {
    let probe = dir.join(".unfold-write-probe");
    unfold::internals::write_atomically(&probe, b"probe").map_err(|e| {
        format!(
            "the output directory {} is not writable: {e}",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
