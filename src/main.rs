//! The `unfold` command line.
//!
//! `train` currently trains on a generated task (the sign of a running sum, a per-step
//! classification whose answer depends on the whole prefix) and then shows that the
//! shared parameters carry over to sequences five times longer than any seen in
//! training. `devices` lists the adapters wgpu sees.

use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;
use std::time::Instant;
use unfold::ndarray::Array2;
use unfold::rng::SplitMix64;
use unfold::{Device, Head, Optimizer, Rnn, RnnConfig, RnnParams, SequenceBatch, Targets};

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

#[derive(Clone, Copy, ValueEnum)]
enum DeviceChoice {
    Auto,
    Cpu,
    Gpu,
}

#[derive(Subcommand)]
enum Command {
    /// Train an RNN on the generated running-sum task and test it on longer sequences.
    Train {
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
        #[arg(long, default_value_t = 1000)]
        steps: usize,
        #[arg(long, default_value_t = 32)]
        hidden: usize,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Longest training sequence; lengths are uniform in [seq_len/2, seq_len].
        #[arg(long = "seq-len", default_value_t = 20)]
        seq_len: usize,
        #[arg(long, default_value_t = 0.01)]
        lr: f32,
        #[arg(long, default_value_t = 1.0)]
        clip: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Time training steps on DESIGN.md's anchor workloads; one JSON line per case.
    Bench {
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
        /// Comma-separated: latency, small, ref, large.
        #[arg(long, default_value = "latency,small,ref")]
        configs: String,
        /// Timed steps per case (after 3 warm-up steps); the median is reported.
        #[arg(long, default_value_t = 10)]
        reps: usize,
    },
    /// List the adapters wgpu sees and the one `--device auto` picks.
    Devices,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> unfold::Result<()> {
    match cli.command {
        Command::Devices => {
            let adapters = unfold::gpu::list_adapters();
            if adapters.is_empty() {
                println!("no adapters (install a Vulkan driver: apt-get install mesa-vulkan-drivers libvulkan1)");
            }
            for a in &adapters {
                println!("{}", unfold::gpu::describe_adapter(a));
            }
            println!("auto picks: {}", Device::auto().describe());
            Ok(())
        }
        Command::Bench {
            device,
            configs,
            reps,
        } => bench(&pick(device)?, &configs, reps.max(1)),
        Command::Train {
            device,
            steps,
            hidden,
            batch,
            seq_len,
            lr,
            clip,
            seed,
        } => train_running_sum(
            &pick(device)?,
            steps,
            hidden,
            batch,
            seq_len.max(2),
            lr,
            clip,
            seed,
        ),
    }
}

fn pick(choice: DeviceChoice) -> unfold::Result<Device> {
    Ok(match choice {
        DeviceChoice::Auto => Device::auto(),
        DeviceChoice::Cpu => Device::cpu(),
        DeviceChoice::Gpu => Device::gpu()?,
    })
}

/// Median training-step time of each workload, fixed and variable length, as JSON lines
/// shaped like `torch_rnn_bench.py`'s.
fn bench(device: &Device, configs: &str, reps: usize) -> unfold::Result<()> {
    for name in configs.split(',') {
        let w = unfold::workloads::Workload::named(name.trim()).ok_or_else(|| {
            unfold::Error::InvalidConfig {
                what: "--configs",
                expected: "a list of latency, small, ref, large",
                got: name.to_string(),
            }
        })?;
        for variable in [false, true] {
            let batch = w.batch(variable, 0);
            let mut rnn = Rnn::new(w.config(), RnnParams::init(&w.config(), 0), device)?;
            let mut sgd = Optimizer::sgd(0.01);
            for _ in 0..3 {
                rnn.train_step(&batch, &mut sgd)?;
            }
            let mut times = Vec::with_capacity(reps);
            let mut host = Vec::with_capacity(reps);
            for _ in 0..reps {
                let t0 = Instant::now();
                rnn.train_step(&batch, &mut sgd)?;
                times.push(t0.elapsed().as_secs_f64());
                host.push(
                    rnn.last_step_profile()
                        .map(|(h, _)| h.as_secs_f64())
                        .unwrap_or(0.0),
                );
            }
            times.sort_by(f64::total_cmp);
            host.sort_by(f64::total_cmp);
            let med = times[reps / 2];
            let dispatches = rnn.last_step_profile().map(|(_, d)| d).unwrap_or(0);
            println!(
                "{{\"impl\": \"unfold\", \"device\": {:?}, \"config\": {:?}, \"B\": {}, \"T\": {}, \"I\": {}, \"H\": {}, \"C\": {}, \"variable\": {variable}, \"train_step_ms\": {:.3}, \"tokens_per_s\": {:.0}, \"gflops\": {:.1}, \"host_record_ms\": {:.3}, \"dispatches\": {dispatches}}}",
                device.describe(),
                w.name,
                w.batch,
                w.steps,
                w.input,
                w.hidden,
                w.classes,
                med * 1e3,
                batch.tokens() as f64 / med,
                w.train_flops(batch.tokens()) as f64 / med / 1e9,
                host[reps / 2] * 1e3,
            );
        }
    }
    Ok(())
}

/// Inputs ±1 with noise; the class at each step is 1 when the running sum of the signs is
/// positive, else 0.
fn running_sum_batch(
    rng: &mut SplitMix64,
    batch: usize,
    min_len: usize,
    max_len: usize,
) -> unfold::Result<SequenceBatch> {
    let mut inputs = Vec::with_capacity(batch);
    let mut classes = Vec::with_capacity(batch);
    for _ in 0..batch {
        let len = min_len + rng.below(max_len - min_len + 1);
        let mut sum = 0i64;
        let mut x = Array2::zeros((len, 1));
        let mut y = Vec::with_capacity(len);
        for t in 0..len {
            let sign = if rng.below(2) == 0 { -1 } else { 1 };
            sum += sign;
            x[[t, 0]] = sign as f32 * (0.5 + rng.next_f32());
            y.push((sum > 0) as u32);
        }
        inputs.push(x);
        classes.push(y);
    }
    SequenceBatch::new(inputs, Targets::Classes(classes))
}

#[allow(clippy::too_many_arguments)]
fn train_running_sum(
    device: &Device,
    steps: usize,
    hidden: usize,
    batch: usize,
    seq_len: usize,
    lr: f32,
    clip: f32,
    seed: u64,
) -> unfold::Result<()> {
    let config = RnnConfig::new(1, hidden, 2).head(Head::PerStep);
    let mut rnn = Rnn::new(config.clone(), RnnParams::init(&config, seed), device)?;
    let mut optimizer = Optimizer::adam(lr).clip_grad_norm(clip);
    let mut rng = SplitMix64::new(seed ^ 0x5eed);
    println!(
        "training {hidden} tanh units on {}: sign of a running sum, lengths {}..={seq_len}",
        device.describe(),
        seq_len / 2
    );
    let start = Instant::now();
    let mut tokens = 0;
    for step in 1..=steps {
        let b = running_sum_batch(&mut rng, batch, seq_len / 2, seq_len)?;
        tokens += b.tokens();
        let loss = rnn.train_step(&b, &mut optimizer)?;
        if step % (steps / 10).max(1) == 0 || step == 1 {
            println!(
                "step {step:>5}  loss {loss:.4}  {:>8.0} tokens/s",
                tokens as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
    for factor in [1, 5] {
        let test = running_sum_batch(&mut rng, 64, seq_len * factor / 2, seq_len * factor)?;
        let out = rnn.forward(&test)?;
        let Targets::Classes(classes) = test.targets() else {
            unreachable!("classes")
        };
        let (mut right, mut total) = (0, 0);
        for (i, seq) in classes.iter().enumerate() {
            for (t, &c) in seq.iter().enumerate() {
                let predicted = (out.outputs[[i, t, 1]] > out.outputs[[i, t, 0]]) as u32;
                right += (predicted == c) as usize;
                total += 1;
            }
        }
        println!(
            "accuracy on lengths up to {:>4} ({factor}x training): {:.3}",
            seq_len * factor,
            right as f64 / total as f64
        );
    }
    Ok(())
}
