//! `train` and `classify` launched by `mpirun` (cargo feature `mpi`): data-parallel over
//! the job's ranks with `unfold::distributed`.
//!
//! Under an MPI launcher (detected by the variables it sets: `OMPI_COMM_WORLD_SIZE`,
//! `PMI_SIZE`, `PMIX_RANK`; `UNFOLD_MPI=0` ignores them) the command initialises MPI and,
//! with more than one rank, every rank runs the same command on the same data:
//!
//! - each step's global batch (`--batch`, as the user set it) is split across the ranks,
//!   unevenly where it does not divide, and the gradients summed ([`Model`]); the step is
//!   one process's on the whole batch, to f32 rounding;
//! - rank 0 alone prints (the other ranks' standard output goes to `/dev/null`; their
//!   errors still show), evaluates, samples, plots and writes files; whatever depends on
//!   time or a Ctrl-C (stopping, the learning-rate schedule, evaluating) rank 0 decides
//!   for every rank ([`root_says`]);
//! - at the start the ranks agree that each could set up ([`agree`]) and compare
//!   fingerprints of their configuration, vocabulary and data: on a mismatch every rank
//!   stops with the same message, and nothing is written;
//! - each rank takes the GPU of its rank on its machine ([`gpu_index`]);
//! - a rank that fails on its own (an error outside the collective steps) ends the job
//!   with a message naming it ([`finish`]); checkpoints are written atomically, so the
//!   last one stays whole and `--resume` continues from it, with any number of ranks.

mod model;

pub use model::Model;

use super::CliResult;
use std::process::ExitCode;
use std::sync::OnceLock;

/// This process's place in a data-parallel job (more than one rank).
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub struct Job {
    pub rank: usize,
    pub size: usize,
    /// The rank among the ranks on this machine, and how many there are.
    pub local_rank: usize,
    pub local_size: usize,
}

static JOB: OnceLock<Job> = OnceLock::new();

/// The data-parallel job this process is a rank of, if any.
pub fn job() -> Option<Job> {
    JOB.get().copied()
}

/// Whether this process prints and writes files: rank 0, or the only process.
pub fn is_root() -> bool {
    job().is_none_or(|j| j.rank == 0)
}

/// The variables MPI launchers set in each rank's environment, with the number of ranks.
const LAUNCHER_SIZE: [&str; 2] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"];

/// Whether an MPI launcher started this process (`UNFOLD_MPI=0` says no, `1` yes).
fn launched_by_mpi() -> bool {
    match std::env::var("UNFOLD_MPI").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => {
            LAUNCHER_SIZE.iter().any(|v| std::env::var_os(v).is_some())
                || std::env::var_os("PMIX_RANK").is_some()
        }
    }
}

/// Keeps MPI initialised while the command runs (finalises it when dropped).
pub struct Session {
    #[cfg(feature = "mpi")]
    _universe: Option<unfold::distributed::mpi::environment::Universe>,
}

/// Starts MPI when an MPI launcher started this process, and records the job; without the
/// `mpi` feature, refuses a launch of several ranks (each would train alone and write the
/// same files).
pub fn start() -> CliResult<Session> {
    if !launched_by_mpi() {
        return Ok(Session {
            #[cfg(feature = "mpi")]
            _universe: None,
        });
    }
    #[cfg(feature = "mpi")]
    {
        start_mpi()
    }
    #[cfg(not(feature = "mpi"))]
    {
        let ranks = LAUNCHER_SIZE
            .iter()
            .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok());
        if ranks.is_some_and(|n| n > 1) {
            return Err(
                "launched as several MPI ranks, but this unfold was built without MPI: build it with `cargo build --release --features mpi` (or set UNFOLD_MPI=0 to run each rank alone)"
                    .into(),
            );
        }
        Ok(Session {})
    }
}

#[cfg(feature = "mpi")]
fn start_mpi() -> CliResult<Session> {
    use unfold::distributed::{local_rank, mpi};
    let Some((universe, _)) = mpi::initialize_with_threading(mpi::Threading::Funneled) else {
        return Err("MPI could not be initialised".into());
    };
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    if size > 1 {
        let (local_rank, local_size) = local_rank(&world);
        let _ = JOB.set(Job {
            rank,
            size,
            local_rank,
            local_size,
        });
        if rank != 0 {
            silence_stdout();
        }
    }
    Ok(Session {
        _universe: Some(universe),
    })
}

#[cfg(feature = "mpi")]
use unfold::distributed::mpi::traits::*;

/// Points this process's standard output at `/dev/null` (ranks other than 0).
#[cfg(all(feature = "mpi", unix))]
fn silence_stdout() {
    use std::os::fd::AsRawFd;
    extern "C" {
        fn dup2(old: i32, new: i32) -> i32;
    }
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 on two open descriptors; fd 1 is replaced atomically, and nothing
        // has been written to it yet (the standard library's buffer is empty)
        unsafe {
            dup2(null.as_raw_fd(), 1);
        }
    }
}

#[cfg(all(feature = "mpi", not(unix)))]
fn silence_stdout() {}

/// The world communicator of the running job.
#[cfg(feature = "mpi")]
fn world() -> unfold::distributed::mpi::topology::SimpleCommunicator {
    unfold::distributed::mpi::topology::SimpleCommunicator::world()
}

/// Rank 0's `values`, on every rank (collective in a job; `values` itself otherwise):
/// for decisions that must be the same everywhere but depend on rank 0's clock or
/// signals.
pub fn root_says<const N: usize>(values: [f64; N]) -> [f64; N] {
    #[cfg(feature = "mpi")]
    if job().is_some() {
        let mut buf = values;
        world().process_at_rank(0).broadcast_into(&mut buf[..]);
        return buf;
    }
    values
}

/// [`root_says`] for one flag.
pub fn root_decides(yes: bool) -> bool {
    root_says([f64::from(u8::from(yes))])[0] != 0.0
}

/// An error every rank of the job reports at the same point, so that each can return it
/// and end normally; any other error on a rank in a job ends the whole job ([`finish`]).
#[derive(Debug)]
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub struct Agreed(pub String);

impl std::fmt::Display for Agreed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Agreed {}

/// Whether `e` came back on every rank at once: [`Agreed`], or the library's distributed
/// errors, which it returns on every rank.
#[cfg(feature = "mpi")]
fn is_agreed(e: &(dyn std::error::Error + 'static)) -> bool {
    e.is::<Agreed>() || matches!(e.downcast_ref(), Some(unfold::Error::Distributed(_)))
}

/// Each rank's outcome of `local` made one for all (collective in a job): `Ok` on every
/// rank when every rank succeeded, else the same [`Agreed`] error everywhere — the
/// message itself when every rank failed with the same one, else each failed rank's.
pub fn agree<T>(local: CliResult<T>, what: &str) -> CliResult<T> {
    #[cfg(feature = "mpi")]
    if let Some(job) = job() {
        return agree_in(job, local, what);
    }
    let _ = what;
    local
}

#[cfg(feature = "mpi")]
fn agree_in<T>(job: Job, local: CliResult<T>, what: &str) -> CliResult<T> {
    let world = world();
    let failed = u8::from(local.is_err());
    let mut all = vec![0u8; job.size];
    world.all_gather_into(&failed, &mut all[..]);
    if all.iter().all(|&f| f == 0) {
        return local;
    }
    // every rank's message (empty where it succeeded)
    let mine = local.err().map(|e| e.to_string()).unwrap_or_default();
    let messages = unfold::distributed::all_gather_strings(&world, &mine);
    let failed: Vec<usize> = (0..job.size).filter(|&r| all[r] != 0).collect();
    let message = |r: usize| messages[r].clone();
    let first = message(failed[0]);
    let text = if failed.len() == job.size && failed.iter().all(|&r| message(r) == first) {
        first
    } else {
        let who: Vec<String> = failed.iter().map(|r| r.to_string()).collect();
        let each: Vec<String> = failed
            .iter()
            .map(|&r| format!("rank {r}: {}", message(r)))
            .collect();
        format!(
            "rank{} {} {what}: {}",
            if failed.len() > 1 { "s" } else { "" },
            who.join(", "),
            each.join("; ")
        )
    };
    Err(Box::new(Agreed(text)))
}

/// The command's end on this rank. In a job, an error that only this rank has (rank 0
/// could not write a checkpoint, a GPU failed outside a step) cannot simply return: the
/// other ranks would wait for it forever. It is printed naming the rank, and the whole job
/// is aborted; the checkpoint written last stays whole. An error every rank has is
/// printed by every rank, and the ranks meet once more before any of them exits: mpirun
/// ends the whole job as soon as one rank exits with a failure, which would cut off the
/// ranks still printing.
pub fn finish(result: CliResult<ExitCode>) -> CliResult<ExitCode> {
    #[cfg(feature = "mpi")]
    if let (Some(job), Err(e)) = (job(), &result) {
        if !is_agreed(e.as_ref()) {
            eprintln!(
                "error: rank {} of {}: {e}\nunfold: rank {} failed: aborting the MPI job (the last checkpoint written stays whole; --resume continues from it)",
                job.rank, job.size, job.rank
            );
            world().abort(1);
        }
        eprintln!("error: {e}");
        world().barrier();
        return Ok(ExitCode::FAILURE);
    }
    result
}

/// The adapter index this process should take: `UNFOLD_ADAPTER` if set, else in a job the
/// rank's place on its machine (so ranks on one machine spread over its GPUs, and share
/// them when there are more ranks than GPUs); `None` for the default adapter.
pub fn gpu_index() -> unfold::Result<Option<usize>> {
    if let Ok(text) = std::env::var("UNFOLD_ADAPTER") {
        return text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| unfold::Error::InvalidConfig {
                what: "UNFOLD_ADAPTER",
                expected: "an index 0, 1, ... among the GPUs like the one --device gpu takes",
                got: format!("{text:?}"),
            });
    }
    Ok(job().map(|j| j.local_rank))
}

/// `rank 1 (local 1 of 2): ` in a job, nothing otherwise: for lines each rank prints.
pub fn rank_prefix() -> String {
    job().map_or(String::new(), |j| {
        format!(
            "rank {} (local {} of {}): ",
            j.rank, j.local_rank, j.local_size
        )
    })
}

/// The bytes the ranks of a job compare before training on `data` ([`Model::new`]'s
/// fingerprint): its sequences, labels and classes, and `settings` (whatever else must be
/// the same on every rank, such as the batch size and the seed of the shuffles).
pub fn fingerprint_dataset(data: &unfold::data::Dataset, settings: &[u64]) -> Vec<u8> {
    let mut bytes: Vec<u8> = settings.iter().flat_map(|s| s.to_le_bytes()).collect();
    for (x, label) in data.inputs().iter().zip(data.labels()) {
        bytes.extend((x.nrows() as u64).to_le_bytes());
        bytes.extend(label.to_le_bytes());
        bytes.extend(x.iter().flat_map(|v| v.to_bits().to_le_bytes()));
    }
    for name in data.class_names() {
        bytes.extend(name.as_bytes());
        bytes.push(0);
    }
    bytes
}

/// A test hook (`UNFOLD_TEST_FAULT`, for the MPI tests only): `crash:R:S` kills rank R of
/// a job (SIGKILL) before training step S, as a crash would; `fail:R:S` makes it fail
/// there with an error of its own. Nothing outside a job.
pub fn injected_fault(step: u64) -> CliResult<()> {
    let (Some(job), Ok(spec)) = (job(), std::env::var("UNFOLD_TEST_FAULT")) else {
        return Ok(());
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let [kind, rank, at] = parts[..] else {
        return Ok(());
    };
    if rank.parse::<usize>() != Ok(job.rank) || at.parse::<u64>() != Ok(step) {
        return Ok(());
    }
    match kind {
        "crash" => {
            // SIGKILL, as the kernel's OOM killer would: no message, no unwinding
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &std::process::id().to_string()])
                .status();
            std::process::exit(86)
        }
        "fail" => Err(format!("UNFOLD_TEST_FAULT: a failure injected at step {step}").into()),
        _ => Ok(()),
    }
}
