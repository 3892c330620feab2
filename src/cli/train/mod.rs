//! `unfold train`: a character-level language model on a text file (by default the
//! bundled *Persuasion*), trained by truncated BPTT over parallel streams, with
//! checkpoints that `--resume` continues and `unfold sample` generates from.
//!
//! - `setup`: the text, the configuration, the output directory, the model;
//! - `config`: defaults, the recorded configuration, resuming's rules;
//! - `trainer`: the training loop;
//! - `eval`: held-out loss and samples during training;
//! - `checkpoint`: the checkpoint directory's three files;
//! - `plot`: the loss plot;
//! - `report`: the lines printed before and after;
//! - `interrupt`: Ctrl-C.

mod config;
mod eval;
mod interrupt;
mod metrics;
mod plot;
mod report;
mod setup;
mod trainer;

pub mod checkpoint;

pub use eval::default_prime;

use super::options::{at_least_one, CellChoice, DeviceChoice, OptimizerChoice, Schedule};
use super::parallel;
use super::CliResult;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use trainer::{Goal, Trainer};

/// Minutes of training when neither `--minutes` nor `--steps` is given.
const DEFAULT_MINUTES: f64 = 10.0;

#[derive(Args)]
pub struct TrainArgs {
    /// UTF-8 text file to learn [default: the bundled Persuasion by Jane Austen, 467 KB;
    /// with --resume: the checkpoint's text].
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Directory for the checkpoint and the loss plot [default: a new runs/charlm-N; with
    /// --resume: the resumed directory].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Training steps (chunks of --seq-len characters per stream) in this run; with
    /// --minutes, whichever comes first.
    #[arg(long)]
    steps: Option<u64>,
    /// Wall-clock minutes for this run [default: 10 when --steps is not given].
    #[arg(long)]
    minutes: Option<f64>,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// With --device gpu: every matrix product on cooperative matrices (tensor cores),
    /// f16 operands scaled per block, f32 accumulation, parameters and optimizer state in
    /// f32 (`Device::gpu_mixed_precision`; an error where the adapter has none). wgpu
    /// marks cooperative matrices experimental: a bug in them may be undefined behaviour.
    #[arg(long)]
    mixed_precision: bool,
    /// Recurrent cell [default: gru, or the checkpoint's].
    #[arg(long, value_enum)]
    cell: Option<CellChoice>,
    /// Hidden units per layer [default: 448, or the checkpoint's].
    #[arg(long)]
    hidden: Option<usize>,
    /// Recurrent layers [default: 2, or the checkpoint's].
    #[arg(long)]
    layers: Option<usize>,
    /// Probability of dropping each input of layers 2.. on training steps [default: 0.5
    /// with more than one layer, else 0; or the checkpoint's].
    #[arg(long)]
    dropout: Option<f32>,
    /// Probability of dropping each of the top layer's states before the readout on
    /// training steps [default: 0, or the checkpoint's].
    #[arg(long = "out-dropout")]
    out_dropout: Option<f32>,
    /// Steps of back-propagation through time per chunk; the state carries on from one
    /// chunk to the next [default: 100, or the checkpoint's].
    #[arg(long = "seq-len")]
    seq_len: Option<usize>,
    /// Parallel streams over the text [default: 32, or the checkpoint's].
    #[arg(long)]
    batch: Option<usize>,
    /// [default: adam, or the checkpoint's]
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerChoice>,
    /// Learning rate [default: 2e-3, or the checkpoint's].
    #[arg(long)]
    lr: Option<f32>,
    /// Decoupled weight decay, as AdamW (--optimizer adam only) [default: 0.1 with adam,
    /// else 0; or the checkpoint's].
    #[arg(long = "weight-decay")]
    weight_decay: Option<f32>,
    /// How the learning rate moves over this run: cosine warms up over 100 steps, then
    /// decays to a twentieth at the end of --minutes / --steps [default: cosine, or the
    /// checkpoint's].
    #[arg(long, value_enum)]
    schedule: Option<Schedule>,
    /// Stop after this many evaluations in a row without a new best held-out loss.
    #[arg(long, value_parser = at_least_one::<u32>)]
    patience: Option<u32>,
    /// Largest global gradient norm, 0 for none [default: 5, or the checkpoint's].
    #[arg(long)]
    clip: Option<f32>,
    /// Seed of the initial weights, the samples and the dropout masks [default: 0, or the
    /// checkpoint's].
    #[arg(long)]
    seed: Option<u64>,
    /// Continue the training in this checkpoint directory (weights, optimizer state,
    /// position in the text, the streams' state); writes there unless --out says
    /// otherwise.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Fraction of the text, at its end, held out for evaluation [default: 0.05, or the
    /// checkpoint's].
    #[arg(long = "held-out")]
    held_out: Option<f64>,
    /// Evaluate, show a sample and write a checkpoint every N steps [default: every 30 s].
    #[arg(long = "eval-every", value_parser = at_least_one::<u64>)]
    eval_every: Option<u64>,
    /// Characters in the sample shown at each evaluation.
    #[arg(long = "sample-len", default_value_t = 120)]
    sample_len: usize,
    /// Write one JSON object per line to FILE as the run goes: each step's `step`, `loss`
    /// and `chars_per_s`, and `held_out` when the model was evaluated after it (the
    /// evaluation before a new run's first step: `step` 0 and `held_out` alone). A
    /// resumed run appends to it.
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
}

impl TrainArgs {
    /// When this run ends.
    fn goal(&self) -> Goal {
        let minutes = match (self.minutes, self.steps) {
            (Some(m), _) => Some(m),
            (None, None) => Some(DEFAULT_MINUTES),
            (None, Some(_)) => None,
        };
        Goal {
            steps: self.steps,
            budget: minutes.map(|m| Duration::from_secs_f64(m * 60.0)),
        }
    }
}

/// `unfold train`. Returns exit code 130 after a Ctrl-C (with a last checkpoint written).
pub fn run(args: TrainArgs) -> CliResult<ExitCode> {
    let (mut trainer, device) = setup::prepare(&args)?;
    report::print_header(&trainer, &device, args.resume.as_deref());
    if !trainer.resuming() {
        let line = trainer.evaluate()?;
        println!("{line}");
        // a checkpoint with every evaluation, this first one included (it may stay the best)
        trainer.save()?;
    }
    if trainer.train_until(&args.goal(), args.eval_every, args.patience)? {
        return stop_after_interrupt(&mut trainer);
    }
    finish(&mut trainer)
}

/// After a Ctrl-C: a last checkpoint and plot, and how to continue.
fn stop_after_interrupt(t: &mut Trainer) -> CliResult<ExitCode> {
    if let Some(m) = &mut t.metrics {
        m.flush_pending()?;
    }
    t.save()?;
    if parallel::is_root() {
        plot::plot_losses(
            &t.out.join(plot::PLOT_FILE),
            &t.meta.history,
            &report::plot_title(t),
        )?;
    }
    println!(
        "interrupted at step {}: checkpoint written to {} (continue with --resume {})",
        t.meta.progress.step,
        t.out.display(),
        t.out.display()
    );
    Ok(ExitCode::from(130))
}

/// At the goal: a last evaluation (unless one was just made), checkpoint, plot and
/// summary.
fn finish(t: &mut Trainer) -> CliResult<ExitCode> {
    if t.run.evaluated_at != t.meta.progress.step || t.meta.history.is_empty() {
        let line = t.evaluate()?;
        println!("{line}");
    }
    if let Some(m) = &mut t.metrics {
        m.flush_pending()?;
    }
    t.save()?;
    let plot = t.out.join(plot::PLOT_FILE);
    if parallel::is_root() {
        plot::plot_losses(&plot, &t.meta.history, &report::plot_title(t))?;
    }
    println!("{}", report::summary(t, &plot));
    Ok(ExitCode::SUCCESS)
}
