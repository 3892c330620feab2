//! `unfold verify`: the same training steps from the same weights on the CPU path and on
//! the GPU, compared tensor by tensor at every step; fails past `--tolerance`.

use super::options::{at_least_one, make_optimizer, pick_gpu, OptimizerChoice, TimeLoopChoice};
use super::CliResult;
use clap::Args;
use std::process::ExitCode;
use unfold::internals::TimeLoop;
use unfold::ndarray::Array3;
use unfold::rng::SplitMix64;
use unfold::{Cell, Device, Forward, Head, Optimizer, Rnn, RnnConfig, RnnParams, SequenceBatch};

/// Every case, in the order `--config all` runs them.
const ALL_CASES: [&str; 7] = [
    "small",
    "relu",
    "lstm",
    "gru",
    "last-step",
    "values",
    "wide",
];
/// Sequences per batch, and the longest sequence.
const BATCH: usize = 8;
const MAX_LEN: usize = 20;

#[derive(Args)]
pub struct VerifyArgs {
    /// Training steps per config.
    #[arg(long, default_value_t = 5, value_parser = at_least_one::<usize>)]
    steps: usize,
    /// Comma-separated: small (2 tanh layers, per-step classes), relu, lstm, gru
    /// (small with that cell), last-step, values, wide (hidden 512); or all.
    #[arg(long, default_value = "small")]
    config: String,
    /// Largest allowed relative difference ‖gpu − cpu‖ / ‖cpu‖ of any tensor.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
    #[arg(long, value_enum, default_value = "adam")]
    optimizer: OptimizerChoice,
    #[arg(long, default_value_t = 1e-2)]
    lr: f32,
    /// Largest global gradient norm; 0 turns clipping off.
    #[arg(long, default_value_t = 1.0)]
    clip: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How the GPU path walks the steps (auto picks by hidden size and batch).
    #[arg(long, value_enum, default_value = "auto")]
    time_loop: TimeLoopChoice,
    /// Compile the GPU's kernels without wgpu's index checks, to check that setting
    /// against the CPU path. Unsafe: a kernel bug is then undefined behaviour.
    #[arg(long)]
    unchecked_shaders: bool,
}

impl VerifyArgs {
    fn optimizer(&self) -> Optimizer {
        // no weight decay, which every rule takes
        make_optimizer(self.optimizer, self.lr, self.clip, 0.0).expect("no weight decay")
    }
}

/// The largest relative difference seen so far, and where (`None`: nothing compared yet).
struct Worst(f64, Option<String>);

impl Worst {
    fn update(&mut self, d: f64, place: impl FnOnce() -> String) {
        if d > self.0 || d.is_nan() || self.1.is_none() {
            *self = Worst(d, Some(place()));
        }
    }

    fn place(&self) -> &str {
        self.1.as_deref().unwrap_or("nothing compared")
    }
}

/// Trains copies of one model on the CPU path and on the GPU with the same batches and
/// compares them at every step.
pub fn run(args: VerifyArgs) -> CliResult<ExitCode> {
    let tolerance = args.tolerance;
    if tolerance.is_nan() || tolerance < 0.0 {
        return Err(unfold::Error::InvalidConfig {
            what: "--tolerance",
            expected: ">= 0",
            got: tolerance.to_string(),
        }
        .into());
    }
    args.optimizer().validate()?;
    let names: Vec<&str> = if args.config.trim() == "all" {
        ALL_CASES.to_vec()
    } else {
        args.config.split(',').map(str::trim).collect()
    };
    let cases = names
        .iter()
        .map(|n| verify_case(n))
        .collect::<unfold::Result<Vec<_>>>()?;
    let gpu = pick_gpu(args.unchecked_shaders)?;
    println!("verifying {} against the CPU path", gpu.describe());
    let mut worst = Worst(0.0, None);
    for (name, (config, values)) in names.iter().zip(cases) {
        verify_one(&args, &gpu, name, &config, values, &mut worst)?;
    }
    if worst.0 > tolerance || worst.0.is_nan() {
        return Err(unfold::Error::VerificationFailed(format!(
            "largest relative difference {:.3e} ({}) exceeds the tolerance {tolerance:e}",
            worst.0,
            worst.place()
        ))
        .into());
    }
    println!(
        "ok: largest relative difference {:.3e} ({}) is within the tolerance {tolerance:e}",
        worst.0,
        worst.place()
    );
    Ok(ExitCode::SUCCESS)
}

/// The shapes `verify` checks: small enough for a software adapter (lavapipe); `wide`
/// has a hidden size past the persistent loop's, with products long enough to be split.
/// The flag says whether the targets are values (else classes).
fn verify_case(name: &str) -> unfold::Result<(RnnConfig, bool)> {
    let small = RnnConfig::new(8, 32, 5).num_layers(2);
    Ok(match name {
        "small" => (small, false),
        "relu" => (small.cell(Cell::Relu), false),
        "lstm" => (small.cell(Cell::Lstm), false),
        "gru" => (small.cell(Cell::Gru), false),
        "last-step" => (small.head(Head::LastStep), false),
        "values" => (small, true),
        "wide" => (RnnConfig::new(16, 512, 10), false),
        _ => return Err(unfold::Error::InvalidConfig {
            what: "--config",
            expected:
                "a comma-separated list of small, relu, lstm, gru, last-step, values, wide, or all",
            got: name.to_string(),
        }),
    })
}

/// One case: `args.steps` training steps on both devices, a line per step.
fn verify_one(
    args: &VerifyArgs,
    gpu: &Device,
    name: &str,
    config: &RnnConfig,
    values: bool,
    worst: &mut Worst,
) -> unfold::Result<()> {
    println!(
        "{name}: input {}, hidden {}, output {}, {} layers, {:?}, {:?} head, {} targets, batch {BATCH}, lengths up to {MAX_LEN}",
        config.input_size,
        config.hidden_size,
        config.output_size,
        config.num_layers,
        config.cell,
        config.head,
        if values { "value" } else { "class" }
    );
    let mut copies = Copies::new(args, config, gpu)?;
    let mut rng = SplitMix64::new(args.seed ^ 0x7e57_da7a);
    for step in 1..=args.steps {
        let batch = verify_batch(config, values, &mut rng)?;
        let d = copies.step(&batch)?;
        println!(
            "step {step:>3}  loss cpu {:.6} gpu {:.6}  largest relative difference: outputs {:.2e}  gradients {:.2e}  parameters {:.2e}",
            d.loss_cpu, d.loss_gpu, d.outputs.0, d.gradients.0, d.parameters.0
        );
        for ((d, tensor), what, kind) in [
            (d.outputs, "", "outputs"),
            (d.gradients, "gradient of ", "gradients"),
            (d.parameters, "", "parameters"),
        ] {
            worst.update(d, || format!("{name}, step {step}, {kind}: {what}{tensor}"));
        }
    }
    Ok(())
}

/// Two copies of one model, on the CPU path and on the GPU, each with its optimizer.
struct Copies<'a> {
    cpu: Rnn,
    gpu: Rnn,
    optimizers: (Optimizer, Optimizer),
    device: &'a Device,
    time_loop: TimeLoop,
}

/// What one step of [`Copies::step`] found: the losses, and the largest relative
/// differences (and where) of the outputs, the gradients and the updated parameters.
struct StepDifferences {
    loss_cpu: f32,
    loss_gpu: f32,
    outputs: (f64, String),
    gradients: (f64, String),
    parameters: (f64, String),
}

impl<'a> Copies<'a> {
    fn new(args: &VerifyArgs, config: &RnnConfig, device: &'a Device) -> unfold::Result<Self> {
        let time_loop = args.time_loop.into();
        let params = RnnParams::init(config, args.seed);
        let cpu = Rnn::new(config.clone(), params.clone(), &Device::cpu())?;
        let mut gpu = Rnn::new(config.clone(), params, device)?;
        gpu.set_time_loop(time_loop)?;
        Ok(Copies {
            cpu,
            gpu,
            optimizers: (args.optimizer(), args.optimizer()),
            device,
            time_loop,
        })
    }

    /// One training step of each copy on `batch`, compared.
    fn step(&mut self, batch: &SequenceBatch) -> unfold::Result<StepDifferences> {
        // outputs and gradients from the same parameters (the CPU copy's), so that they
        // measure the kernels' rounding, not how far the two trained copies have drifted
        // apart (Adam turns a sign flip of a tiny gradient into a whole step of lr); the
        // copies' drift shows in the parameters
        let config = self.cpu.config().clone();
        let mut probe = Rnn::new(config, self.cpu.params()?, self.device)?;
        probe.set_time_loop(self.time_loop)?;
        let (fc, fg) = (self.cpu.forward(batch)?, probe.forward(batch)?);
        let gradients = worst_of(param_pairs(
            &probe.loss_and_gradients(batch)?.1,
            &self.cpu.loss_and_gradients(batch)?.1,
        ));
        let loss_cpu = self.cpu.train_step(batch, &mut self.optimizers.0)?;
        let loss_gpu = self.gpu.train_step(batch, &mut self.optimizers.1)?;
        let outputs = worst_output(&fg, &fc, [loss_gpu, fg.loss], [loss_cpu, fc.loss]);
        let parameters = worst_of(param_pairs(&self.gpu.params()?, &self.cpu.params()?));
        Ok(StepDifferences {
            loss_cpu,
            loss_gpu,
            outputs,
            gradients,
            parameters,
        })
    }
}

/// The largest relative difference of the losses (training step's and forward pass's),
/// the outputs and the final states, the GPU's against the CPU's, and where it is.
fn worst_output(
    gpu: &Forward,
    cpu: &Forward,
    loss_gpu: [f32; 2],
    loss_cpu: [f32; 2],
) -> (f64, String) {
    let mut pairs = vec![
        ("loss".to_string(), &loss_gpu[..], &loss_cpu[..]),
        (
            "outputs".to_string(),
            slice(&gpu.outputs),
            slice(&cpu.outputs),
        ),
        (
            "final hidden".to_string(),
            slice(&gpu.final_hidden),
            slice(&cpu.final_hidden),
        ),
    ];
    if let (Some(g), Some(c)) = (&gpu.final_cell, &cpu.final_cell) {
        pairs.push(("final cell".to_string(), slice(g), slice(c)));
    }
    worst_of(pairs)
}

/// The values of an array in standard layout (none otherwise, which compares as a
/// mismatch).
fn slice(a: &Array3<f32>) -> &[f32] {
    a.as_slice().unwrap_or(&[])
}

/// Random inputs and targets for `config`: `BATCH` sequences, the first of `MAX_LEN`
/// steps, the others of 1..=MAX_LEN.
fn verify_batch(
    config: &RnnConfig,
    values: bool,
    rng: &mut SplitMix64,
) -> unfold::Result<SequenceBatch> {
    let lengths: Vec<usize> = (0..BATCH)
        .map(|i| {
            if i == 0 {
                MAX_LEN
            } else {
                1 + rng.below(MAX_LEN)
            }
        })
        .collect();
    unfold::internals::workloads::random_batch(config, &lengths, values, rng)
}

/// ‖got − want‖ / ‖want‖ (‖want‖ floored at 1e-6); infinite if anything is not finite.
fn relative_difference(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() || got.iter().chain(want).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
    diff / norm.max(1e-6)
}

/// The largest relative difference over named tensor pairs, and the tensor it is in.
fn worst_of<'a>(pairs: impl IntoIterator<Item = (String, &'a [f32], &'a [f32])>) -> (f64, String) {
    pairs
        .into_iter()
        .map(|(name, got, want)| (relative_difference(got, want), name))
        .fold((0.0, String::new()), |m, x| {
            if x.0 > m.0 || x.0.is_nan() {
                x
            } else {
                m
            }
        })
}

fn param_pairs<'a>(
    gpu: &'a RnnParams,
    cpu: &'a RnnParams,
) -> impl Iterator<Item = (String, &'a [f32], &'a [f32])> {
    gpu.tensors()
        .into_iter()
        .zip(cpu.tensors())
        .map(|((name, g), (_, c))| (name, g, c))
}
