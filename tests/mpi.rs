//! Data-parallel training (`unfold::distributed`) under MPI. Run by
//! `scripts/mpi-tests.sh` as `mpirun -np 2 <this binary>`; started alone it is one rank
//! and checks the same things with a single shard. Every case runs on every rank in the
//! same order (the wrapper's calls are collective); each rank checks its own results, and
//! the ranks agree on the outcome at the end, so all exit with the same status.
//!
//! `<binary> --cli` runs the command-line cases instead (`mpi/cli.rs`): a plain process
//! that starts `mpirun` on the `unfold` binary itself.
//!
//! The reference is one process training on the whole global batch: every rank computes
//! it itself (the models are small) and compares the data-parallel run with it, step by
//! step.

use std::time::Instant;
use unfold::distributed::mpi::topology::SimpleCommunicator;
use unfold::distributed::mpi::traits::*;
use unfold::distributed::{
    local_rank, mpi, select, shard_indices, shard_range, split_batch, split_state, DataParallel,
    Split,
};
use unfold::ndarray::{s, Array3};
use unfold::rng::SplitMix64;
use unfold::{
    Cell, Device, Error, Head, Optimizer, OptimizerState, Rnn, RnnConfig, RnnParams, SequenceBatch,
    Targets,
};

const STEPS: usize = 20;
/// Relative agreement with one process: per-step losses, and the final parameters (the
/// largest difference against the largest magnitude).
const TOLERANCE: f32 = 1e-5;

type Outcome = std::result::Result<String, String>;
/// A named case: what it found, or why it failed.
type Cases<'a> = Vec<(&'static str, Box<dyn Fn() -> Outcome + 'a>)>;

#[path = "mpi/cli.rs"]
mod cli;

fn main() {
    // `--cli`: the command line under mpirun, from a plain process (no MPI here)
    if std::env::args().nth(1).as_deref() == Some("--cli") {
        return cli::main(std::env::args().nth(2));
    }
    let (universe, _) =
        mpi::initialize_with_threading(mpi::Threading::Funneled).expect("MPI initialises once");
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    // a panic on one rank would leave the others waiting in a collective: end the job
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        eprintln!("rank {rank}: panicked; aborting the MPI job");
        SimpleCommunicator::world().abort(101);
    }));

    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let gpu = gpu_device();
    let cases: Cases = vec![
        (
            "even_split_tanh_classes_adam_clipped",
            Box::new(|| {
                matches_one_process(&Case::new(tanh(), Split::Contiguous, 8), &Device::cpu())
            }),
        ),
        (
            "uneven_split_tanh_classes_adam_clipped",
            Box::new(|| {
                matches_one_process(&Case::new(tanh(), Split::Contiguous, 7), &Device::cpu())
            }),
        ),
        (
            "uneven_balanced_split_lstm_bidirectional_last_step_values_momentum",
            Box::new(|| {
                let config = RnnConfig::new(3, 6, 2)
                    .cell(Cell::Lstm)
                    .num_layers(2)
                    .bidirectional(true)
                    .head(Head::LastStep);
                let case = Case {
                    values: true,
                    optimizer: || Optimizer::sgd_momentum(0.05, 0.9).clip_grad_norm(0.5),
                    ..Case::new(config, Split::BalancedSteps, 5)
                };
                matches_one_process(&case, &Device::cpu())
            }),
        ),
        (
            "uneven_split_gru_tokens_sgd",
            Box::new(|| {
                let case = Case {
                    tokens: true,
                    optimizer: || Optimizer::sgd(0.1),
                    ..Case::new(
                        RnnConfig::new(11, 7, 11).cell(Cell::Gru),
                        Split::Contiguous,
                        5,
                    )
                };
                matches_one_process(&case, &Device::cpu())
            }),
        ),
        (
            "fewer_sequences_than_ranks",
            Box::new(|| {
                matches_one_process(&Case::new(tanh(), Split::Contiguous, 1), &Device::cpu())
            }),
        ),
        (
            "carried_state_streams_lstm_two_layers",
            Box::new(|| carried_state_matches(Cell::Lstm, &Device::cpu())),
        ),
        (
            "dropout_ranks_stay_in_sync",
            Box::new(|| dropout_in_sync(size, &Device::cpu())),
        ),
        (
            "gpu_even_and_uneven_split_elman_and_dropout",
            Box::new(|| match &gpu {
                Err(why) if gpu_required() => Err(format!("UNFOLD_REQUIRE_GPU=1: {why}")),
                Err(why) => Ok(format!("SKIPPED: {why}")),
                Ok(device) => {
                    let even =
                        matches_one_process(&Case::new(tanh(), Split::Contiguous, 8), device)?;
                    let uneven =
                        matches_one_process(&Case::new(tanh(), Split::Contiguous, 7), device)?;
                    let dropout = dropout_in_sync(size, device)?;
                    let carried = carried_state_matches(Cell::Tanh, device)?;
                    Ok(format!(
                        "even: {even}; uneven: {uneven}; two layers with dropout: in sync {dropout}; carried state: {carried}"
                    ))
                }
            }),
        ),
        (
            "fingerprint_mismatch_refused_everywhere",
            Box::new(|| fingerprint_mismatch(rank, size)),
        ),
        (
            "non_finite_refused_everywhere",
            Box::new(|| non_finite_refused(rank, size)),
        ),
        (
            "failed_rank_reported_everywhere",
            Box::new(|| failed_rank(rank, size)),
        ),
        (
            "sync_optimizer_gives_rank_0s_state",
            Box::new(|| sync_optimizer(rank)),
        ),
        (
            "shards_cover_every_sequence_once",
            Box::new(shards_partition),
        ),
        (
            "local_rank_on_one_machine",
            Box::new(|| {
                let got = local_rank(&SimpleCommunicator::world());
                if got == (rank, size) {
                    Ok(String::new())
                } else {
                    Err(format!(
                        "local_rank {got:?}, expected ({rank}, {size}) on one machine"
                    ))
                }
            }),
        ),
        (
            "select_keeps_inputs_and_targets",
            Box::new(select_keeps_everything),
        ),
    ];

    if rank == 0 {
        println!("unfold distributed tests: {size} rank(s)");
    }
    let mut failures = 0u32;
    let mut ran = 0;
    for (name, case) in &cases {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        ran += 1;
        let start = Instant::now();
        let outcome = case();
        let secs = start.elapsed().as_secs_f64();
        // every rank's verdict, so that rank 0 can say who failed
        let failed = u32::from(outcome.is_err());
        let mut all = vec![0u32; size];
        world.all_gather_into(&failed, &mut all[..]);
        match &outcome {
            Err(why) => {
                failures += 1;
                eprintln!("rank {rank}: {name} FAILED: {why}");
            }
            Ok(detail) if rank == 0 => {
                let verdict = if all.iter().any(|&f| f != 0) {
                    "FAILED on another rank"
                } else {
                    "ok"
                };
                println!("{name} ... {verdict} ({secs:.2} s) {detail}");
            }
            Ok(_) => {}
        }
    }
    let mut total = 0u32;
    world.all_reduce_into(
        &failures,
        &mut total,
        mpi::collective::SystemOperation::sum(),
    );
    if rank == 0 {
        println!(
            "{} ({ran} cases on {size} rank(s); {total} failure(s) summed over the ranks)",
            if total == 0 { "ok" } else { "FAILED" }
        );
    }
    drop(universe);
    if total != 0 {
        std::process::exit(1);
    }
}

fn tanh() -> RnnConfig {
    RnnConfig::new(4, 8, 5)
}

/// The GPU, when `Device::gpu()` finds one and `UNFOLD_MPI_GPU` is not `0`. Without an
/// adapter the GPU case is skipped, unless `UNFOLD_REQUIRE_GPU=1` (as in CI) makes that a
/// failure.
fn gpu_device() -> std::result::Result<Device, String> {
    if std::env::var("UNFOLD_MPI_GPU").as_deref() == Ok("0") {
        return Err("UNFOLD_MPI_GPU=0".into());
    }
    Device::gpu().map_err(|e| format!("no GPU: {e}"))
}

fn gpu_required() -> bool {
    std::env::var("UNFOLD_REQUIRE_GPU").as_deref() == Ok("1")
        && std::env::var("UNFOLD_MPI_GPU").as_deref() != Ok("0")
}

/// A data-parallel run to compare with one process.
struct Case {
    config: RnnConfig,
    split: Split,
    /// Sequences per global batch.
    sequences: usize,
    values: bool,
    tokens: bool,
    optimizer: fn() -> Optimizer,
}

impl Case {
    fn new(config: RnnConfig, split: Split, sequences: usize) -> Case {
        Case {
            config,
            split,
            sequences,
            values: false,
            tokens: false,
            optimizer: || Optimizer::adam(0.02).clip_grad_norm(0.3),
        }
    }

    /// The global batch of step `step`, the same on every rank: lengths in 1..=12.
    fn batch(&self, step: usize) -> SequenceBatch {
        let mut rng = SplitMix64::new(1000 + step as u64);
        let lengths: Vec<usize> = (0..self.sequences).map(|_| 1 + rng.below(12)).collect();
        if !self.tokens {
            return unfold::internals::workloads::random_batch(
                &self.config,
                &lengths,
                self.values,
                &mut rng,
            )
            .expect("valid batch");
        }
        let vocab = self.config.input_size;
        let ids: Vec<Vec<u32>> = lengths
            .iter()
            .map(|&l| (0..l).map(|_| rng.below(vocab) as u32).collect())
            .collect();
        let targets = ids
            .iter()
            .map(|s| {
                s.iter()
                    .map(|&t| (t + 1) % self.config.output_size as u32)
                    .collect()
            })
            .collect();
        SequenceBatch::from_tokens(ids, vocab, Targets::Classes(targets)).expect("valid batch")
    }
}

/// `STEPS` steps of one process on each global batch against the data-parallel run on
/// this rank's shards: per-step losses and final parameters within `TOLERANCE`.
fn matches_one_process(case: &Case, device: &Device) -> Outcome {
    let world = SimpleCommunicator::world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let params = RnnParams::init(&case.config, 42);
    let err = |what: &str, e: Error| format!("{what}: {e}");

    let mut one =
        Rnn::new(case.config.clone(), params.clone(), device).map_err(|e| err("Rnn::new", e))?;
    let mut opt_one = (case.optimizer)();
    // rank 0's parameters are broadcast: the others start from something else
    let start = if rank == 0 {
        params
    } else {
        RnnParams::init(&case.config, 7)
    };
    let mut dp = DataParallel::new(world, case.config.clone(), start, device)
        .map_err(|e| err("DataParallel::new", e))?;
    let mut opt_dp = (case.optimizer)();
    let (mut worst_loss, mut shard_sizes, mut clipped) = (0f32, Vec::new(), 0);
    for step in 0..STEPS {
        let batch = case.batch(step);
        if let Some(max_norm) = opt_one.clip() {
            // whether clipping acts on this step (the global norm matters)
            let (_, g) = one
                .loss_and_gradients(&batch)
                .map_err(|e| err("gradients", e))?;
            let norm = g.to_flat().iter().map(|x| x * x).sum::<f32>().sqrt();
            clipped += usize::from(norm > max_norm);
        }
        let expected = one
            .train_step(&batch, &mut opt_one)
            .map_err(|e| err("one process", e))?;
        let shard = split_batch(&batch, rank, size, case.split).map_err(|e| err("split", e))?;
        if step == 0 {
            shard_sizes = (0..size)
                .map(|r| {
                    let s = split_batch(&batch, r, size, case.split).unwrap();
                    format!(
                        "{}/{}",
                        s.as_ref().map_or(0, |b| b.len()),
                        s.map_or(0, |b| b.tokens())
                    )
                })
                .collect();
        }
        let got = match dp.train_step(shard.as_ref(), &mut opt_dp) {
            Ok(loss) => loss,
            Err(Error::Unsupported(why)) if device.is_gpu() => {
                return Ok(format!("SKIPPED on the GPU: {why}"));
            }
            Err(e) => return Err(err(&format!("data-parallel step {step}"), e)),
        };
        let rel = relative(got, expected);
        worst_loss = worst_loss.max(rel);
        if rel > TOLERANCE {
            return Err(format!(
                "step {step}: loss {got} against one process's {expected} (relative {rel:.1e})"
            ));
        }
    }
    let a = dp.rnn().params().map_err(|e| err("params", e))?.to_flat();
    let b = one.params().map_err(|e| err("params", e))?.to_flat();
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    if diff > TOLERANCE * scale {
        return Err(format!(
            "final parameters differ by {diff:.2e} (largest magnitude {scale:.3})"
        ));
    }
    if opt_dp.steps() != opt_one.steps() {
        return Err(format!(
            "{} optimizer steps against {}",
            opt_dp.steps(),
            opt_one.steps()
        ));
    }
    dp.check_in_sync().map_err(|e| err("check_in_sync", e))?;
    Ok(format!(
        "[shards sequences/positions {}; clipped on {clipped}/{STEPS} steps; worst loss rel. {worst_loss:.1e}, params rel. {:.1e}]",
        shard_sizes.join(" "),
        diff / scale
    ))
}

fn relative(a: f32, b: f32) -> f32 {
    (a - b).abs() / a.abs().max(b.abs()).max(f32::MIN_POSITIVE)
}

/// With dropout every rank draws its own masks: a single rank is exactly one process
/// (rank 0 keeps the model's seed); with more, the copies must stay identical.
fn dropout_in_sync(size: usize, device: &Device) -> Outcome {
    let config = RnnConfig::new(4, 8, 5).num_layers(2).dropout(0.3);
    let case = Case::new(config, Split::Contiguous, 6);
    if size == 1 {
        return matches_one_process(&case, device);
    }
    let world = SimpleCommunicator::world();
    let rank = world.rank() as usize;
    let mut dp = DataParallel::new(
        world,
        case.config.clone(),
        RnnParams::init(&case.config, 1),
        device,
    )
    .map_err(|e| e.to_string())?;
    dp.set_dropout_seed(9);
    let mut opt = (case.optimizer)();
    for step in 0..5 {
        let batch = case.batch(step);
        let shard = split_batch(&batch, rank, size, case.split).map_err(|e| e.to_string())?;
        let loss = dp
            .train_step(shard.as_ref(), &mut opt)
            .map_err(|e| e.to_string())?;
        if !loss.is_finite() {
            return Err(format!("loss {loss}"));
        }
    }
    dp.check_in_sync().map_err(|e| e.to_string())?;
    Ok(String::new())
}

/// Ranks with different models (or different caller fingerprints) all get the same
/// error and no model.
fn fingerprint_mismatch(rank: usize, size: usize) -> Outcome {
    if size == 1 {
        return Ok("SKIPPED: needs two ranks".into());
    }
    let hidden = if rank == 1 { 9 } else { 8 };
    let config = RnnConfig::new(4, hidden, 5);
    let params = RnnParams::init(&config, 0);
    let msg = match DataParallel::new(
        SimpleCommunicator::world(),
        config.clone(),
        params.clone(),
        &Device::cpu(),
    ) {
        Ok(_) => return Err("ranks with different hidden sizes were accepted".into()),
        Err(Error::Distributed(m)) => m,
        Err(e) => return Err(format!("wrong error: {e}")),
    };
    let want = "rank 1 disagrees with rank 0 on the model's configuration";
    if !msg.contains(want) || !msg.contains("parameters against rank 0's") {
        return Err(format!("message {msg:?} does not say {want:?}"));
    }
    // same model, different data
    let config = RnnConfig::new(4, 8, 5);
    let extra = if rank == 1 { b"vocab-b" } else { b"vocab-a" };
    match DataParallel::with_fingerprint(
        SimpleCommunicator::world(),
        config.clone(),
        RnnParams::init(&config, 0),
        &Device::cpu(),
        extra,
    ) {
        Err(Error::Distributed(m))
            if m.contains("rank 1 disagrees with rank 0 on the run's fingerprint") =>
        {
            Ok(format!("[{msg}]"))
        }
        Err(e) => Err(format!("wrong error: {e}")),
        Ok(_) => Err("different fingerprints were accepted".into()),
    }
}

/// A shard with an overflowing loss on the last rank: every rank refuses the step with
/// `NonFinite`, and nothing changes anywhere (parameters, optimizer, dropout stream); the next step runs.
fn non_finite_refused(rank: usize, size: usize) -> Outcome {
    // two layers with dropout: a refused step also leaves the dropout stream as it was
    let config = RnnConfig::new(3, 6, 2).num_layers(2).dropout(0.2);
    let world = SimpleCommunicator::world();
    let mut dp = DataParallel::new(
        world,
        config.clone(),
        RnnParams::init(&config, 3),
        &Device::cpu(),
    )
    .map_err(|e| e.to_string())?;
    let mut opt = Optimizer::adam(0.01);
    let mut rng = SplitMix64::new(5 + rank as u64);
    let mut shard = |huge: bool| {
        let b =
            unfold::internals::workloads::random_batch(&config, &[4, 3], true, &mut rng).unwrap();
        if !huge {
            return b;
        }
        let Some(Targets::Values(v)) = b.targets() else {
            unreachable!()
        };
        let v = v.iter().map(|y| y.mapv(|_| 3e38f32)).collect();
        SequenceBatch::new(b.inputs().to_vec(), Targets::Values(v)).unwrap()
    };
    dp.train_step(Some(&shard(false)), &mut opt)
        .map_err(|e| e.to_string())?;
    let before = dp.rnn().params().unwrap();
    let state = opt.export_state().unwrap();
    let dropout = dp.dropout_state();
    let bad = shard(rank == size - 1);
    match dp.train_step(Some(&bad), &mut opt) {
        Err(Error::NonFinite { detail, .. }) => {
            if !detail.contains(&format!("rank {}", size - 1)) {
                return Err(format!(
                    "the refusal does not name rank {}: {detail}",
                    size - 1
                ));
            }
            if dp.rnn().params().unwrap() != before
                || opt.export_state().unwrap() != state
                || dp.dropout_state() != dropout
            {
                return Err(
                    "a refused step changed the parameters, the optimizer or the dropout stream"
                        .into(),
                );
            }
            dp.train_step(Some(&shard(false)), &mut opt)
                .map_err(|e| e.to_string())?;
            if opt.steps() != 2 {
                return Err(format!("{} optimizer steps, expected 2", opt.steps()));
            }
            dp.check_in_sync().map_err(|e| e.to_string())?;
            Ok(format!("[{detail}]"))
        }
        Err(e) => Err(format!("wrong error: {e}")),
        Ok(loss) => Err(format!("accepted a step with loss {loss}")),
    }
}

/// A shard that does not fit the model on the last rank: every rank returns the same
/// `Distributed` error with that rank's message, and nothing changes.
fn failed_rank(rank: usize, size: usize) -> Outcome {
    let config = RnnConfig::new(3, 6, 2);
    let mut dp = DataParallel::new(
        SimpleCommunicator::world(),
        config.clone(),
        RnnParams::init(&config, 3),
        &Device::cpu(),
    )
    .map_err(|e| e.to_string())?;
    let mut opt = Optimizer::sgd(0.1);
    let mut rng = SplitMix64::new(11);
    let width = if rank == size - 1 { 4 } else { 3 };
    let bad = unfold::internals::workloads::random_batch(
        &RnnConfig::new(width, 6, 2),
        &[2, 5],
        false,
        &mut rng,
    )
    .unwrap();
    let before = dp.rnn().params().unwrap();
    match dp.train_step(Some(&bad), &mut opt) {
        Err(Error::Distributed(m)) => {
            let want = format!(
                "the step failed on rank {0}, so no rank updated: rank {0}: shape mismatch",
                size - 1
            );
            if !m.starts_with(&want) {
                return Err(format!("message {m:?} does not start with {want:?}"));
            }
            if dp.rnn().params().unwrap() != before || opt.steps() != 0 {
                return Err("a failed step changed something".into());
            }
            Ok(format!("[{m}]"))
        }
        Err(e) => Err(format!("wrong error: {e}")),
        Ok(_) => Err("accepted a shard of the wrong width".into()),
    }
}

/// Rank 0's optimizer state (as read from a checkpoint) reaches every rank.
fn sync_optimizer(rank: usize) -> Outcome {
    let config = RnnConfig::new(3, 6, 2);
    let dp = DataParallel::new(
        SimpleCommunicator::world(),
        config.clone(),
        RnnParams::init(&config, 3),
        &Device::cpu(),
    )
    .map_err(|e| e.to_string())?;
    let n = config.num_params();
    let state = OptimizerState {
        layout: config.param_layout(),
        steps: 17,
        m: (0..n).map(|i| i as f32 * 1e-3).collect(),
        v: (0..n).map(|i| i as f32 * 1e-6).collect(),
    };
    let mut opt = Optimizer::adam(0.01);
    if rank == 0 {
        opt.import_state(state.clone()).unwrap();
    }
    dp.sync_optimizer(&mut opt).map_err(|e| e.to_string())?;
    if opt.export_state().unwrap().as_ref() != Some(&state) || opt.steps() != 17 {
        return Err("the state did not arrive".into());
    }
    // and a fresh state on rank 0 makes every rank fresh
    let mut fresh = Optimizer::adam(0.01);
    let mut other = Optimizer::adam(0.01);
    if rank != 0 {
        other.import_state(state).unwrap();
    }
    let opt = if rank == 0 { &mut fresh } else { &mut other };
    dp.sync_optimizer(opt).map_err(|e| e.to_string())?;
    if opt.export_state().unwrap().is_some() || opt.steps() != 0 {
        return Err("rank 0's fresh state did not arrive".into());
    }
    // different hyper-parameters are refused everywhere
    let mut odd = Optimizer::adam(if rank == 0 { 0.01 } else { 0.02 });
    match (dp.sync_optimizer(&mut odd), dp.size()) {
        (Ok(()), 1) => Ok(String::new()),
        (Err(Error::Distributed(m)), _) if m.contains("with rank 0 on the optimizer") => {
            Ok(format!("[{m}]"))
        }
        (r, _) => Err(format!("different learning rates: {r:?}")),
    }
}

/// Both splits deal every sequence to exactly one rank; contiguous blocks differ by at
/// most one sequence, balanced ones by at most the longest sequence's steps.
fn shards_partition() -> Outcome {
    for len in 0..20 {
        for size in 1..6 {
            let mut next = 0;
            for rank in 0..size {
                let r = shard_range(len, rank, size);
                if r.start != next || (r.len() != len / size && r.len() != len / size + 1) {
                    return Err(format!("shard_range({len}, {rank}, {size}) = {r:?}"));
                }
                next = r.end;
            }
            if next != len {
                return Err(format!(
                    "shard_range over {size} ranks covers {next} of {len}"
                ));
            }
        }
    }
    let lengths = [10, 1, 9, 2, 8, 3, 7, 4];
    for size in 1..5 {
        let mut seen = vec![0; lengths.len()];
        let mut loads = Vec::new();
        for rank in 0..size {
            let mine = shard_indices(&lengths, rank, size, Split::BalancedSteps);
            if !mine.windows(2).all(|w| w[0] < w[1]) {
                return Err(format!(
                    "rank {rank} of {size}: {mine:?} not in the batch's order"
                ));
            }
            mine.iter().for_each(|&i| seen[i] += 1);
            loads.push(mine.iter().map(|&i| lengths[i]).sum::<usize>());
        }
        let (lo, hi) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
        if seen.iter().any(|&s| s != 1) || hi - lo > 10 {
            return Err(format!(
                "{size} ranks: seen {seen:?}, steps per rank {loads:?}"
            ));
        }
    }
    let two = shard_indices(&lengths, 0, 2, Split::BalancedSteps);
    if two != [0, 1, 6, 7] {
        return Err(format!("balanced over 2 ranks, rank 0: {two:?}"));
    }
    Ok(String::new())
}

/// `select` keeps each sequence's inputs (dense or tokens) and targets, in the order asked.
fn select_keeps_everything() -> Outcome {
    let mut rng = SplitMix64::new(3);
    let config = RnnConfig::new(3, 4, 2);
    let batch =
        unfold::internals::workloads::random_batch(&config, &[3, 1, 2], true, &mut rng).unwrap();
    let sub = select(&batch, &[2, 0]).map_err(|e| e.to_string())?;
    let (Some(Targets::Values(a)), Some(Targets::Values(b))) = (sub.targets(), batch.targets())
    else {
        return Err("value targets lost".into());
    };
    if sub.lengths() != [2, 3] || sub.inputs()[0] != batch.inputs()[2] || a[1] != b[0] {
        return Err("dense inputs or targets not kept".into());
    }
    let tokens = SequenceBatch::tokens_only(vec![vec![1, 2], vec![0]], 3).unwrap();
    let sub = select(&tokens, &[1]).map_err(|e| e.to_string())?;
    if sub.token_ids() != Some(&[vec![0]][..]) || sub.targets().is_some() || sub.input_size() != 3 {
        return Err("tokens not kept".into());
    }
    Ok(String::new())
}

/// Truncated back-propagation through time over token streams split across ranks, as the
/// `train` command runs it: each rank carries its own streams' state from chunk to chunk
/// (`train_step_from`), and losses, carried states and final parameters match one
/// process carrying every stream.
fn carried_state_matches(cell: Cell, device: &Device) -> Outcome {
    let world = SimpleCommunicator::world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let (vocab, streams, chunk) = (9, 5, 6);
    let config = RnnConfig::new(vocab, 7, vocab).cell(cell).num_layers(2);
    let params = RnnParams::init(&config, 5);
    let err = |what: &str, e: Error| format!("{what}: {e}");
    let mut one =
        Rnn::new(config.clone(), params.clone(), device).map_err(|e| err("Rnn::new", e))?;
    let mut dp = DataParallel::new(world, config.clone(), params, device)
        .map_err(|e| err("DataParallel::new", e))?;
    let optimizer = || Optimizer::adam(0.02).clip_grad_norm(0.3);
    let (mut opt_one, mut opt_dp) = (optimizer(), optimizer());
    let mine = shard_range(streams, rank, size);
    let indices: Vec<usize> = mine.clone().collect();
    let (mut carried_one, mut carried_dp): (Option<unfold::RnnState>, Option<unfold::RnnState>) =
        (None, None);
    let (mut worst_loss, mut worst_state) = (0f32, 0f32);
    for step in 0..STEPS {
        let mut rng = SplitMix64::new(77 + step as u64);
        let ids: Vec<Vec<u32>> = (0..streams)
            .map(|_| (0..chunk).map(|_| rng.below(vocab) as u32).collect())
            .collect();
        let targets = ids
            .iter()
            .map(|s| s.iter().map(|&t| (t * 2 + 1) % vocab as u32).collect())
            .collect();
        let batch = SequenceBatch::from_tokens(ids, vocab, Targets::Classes(targets))
            .map_err(|e| err("batch", e))?;
        let (expected, state_one) = one
            .train_step_from(&batch, carried_one.as_ref(), &mut opt_one)
            .map_err(|e| err("one process", e))?;
        let shard = if indices.is_empty() {
            None
        } else {
            Some(select(&batch, &indices).map_err(|e| err("select", e))?)
        };
        let (got, state_dp) = dp
            .train_step_from(shard.as_ref(), carried_dp.as_ref(), &mut opt_dp)
            .map_err(|e| err(&format!("data-parallel step {step}"), e))?;
        let rel = relative(got, expected);
        worst_loss = worst_loss.max(rel);
        if rel > TOLERANCE {
            return Err(format!(
                "step {step}: loss {got} against {expected} ({rel:.1e})"
            ));
        }
        if let Some(state) = &state_dp {
            let pairs = [
                (Some(&state.h), Some(&state_one.h)),
                (state.c.as_ref(), state_one.c.as_ref()),
            ];
            for (a, b) in pairs {
                let (Some(a), Some(b)) = (a, b) else { continue };
                let b: Array3<f32> = b.slice(s![.., mine.clone(), ..]).to_owned();
                let diff = (a - &b).fold(0f32, |m, x| m.max(x.abs()));
                worst_state = worst_state.max(diff);
                if diff > 1e-4 {
                    return Err(format!("step {step}: carried state differs by {diff:.2e}"));
                }
            }
        }
        carried_one = Some(state_one);
        carried_dp = state_dp;
    }
    // every stream's state, gathered for a checkpoint, and split again for a resume
    let all = dp
        .gather_state(carried_dp.as_ref(), streams)
        .map_err(|e| err("gather_state", e))?;
    let full = carried_one.expect("20 steps ran");
    let gathered = [
        (Some(&all.h), Some(&full.h)),
        (all.c.as_ref(), full.c.as_ref()),
    ];
    for (a, b) in gathered {
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (None, None) => continue,
            _ => return Err("gather_state lost or made up the cell state".into()),
        };
        let diff = (a - b).fold(0f32, |m, x| m.max(x.abs()));
        if a.dim() != b.dim() || diff > 1e-4 {
            return Err(format!(
                "gathered state {:?} differs by {diff:.2e}",
                a.dim()
            ));
        }
    }
    if split_state(&all, rank, size) != carried_dp {
        return Err("split_state does not give back this rank's state".into());
    }
    let a = dp.rnn().params().map_err(|e| err("params", e))?.to_flat();
    let b = one.params().map_err(|e| err("params", e))?.to_flat();
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    if diff > TOLERANCE * scale {
        return Err(format!(
            "final parameters differ by {diff:.2e} (largest {scale:.3})"
        ));
    }
    Ok(format!(
        "[streams {mine:?} of {streams}; worst loss rel. {worst_loss:.1e}, carried state abs. {worst_state:.1e}, params rel. {:.1e}]",
        diff / scale
    ))
}
