//! The `unfold` command line.
//!
//! `train` trains a character-level language model on a text file (by default the
//! bundled *Persuasion*) and `sample` generates text from its checkpoints (both in
//! `charlm.rs`). `devices` lists the adapters wgpu sees. `classify` trains a sequence
//! classifier on a UEA/UCR `.ts` dataset (by default the bundled JapaneseVowels).
//! `verify` runs the same training steps on the CPU path and on the GPU and compares them.

mod charlm;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use unfold::data::{
    parse_ts, predict, read_ts, BatchLoader, ConfusionMatrix, Dataset, Standardizer,
};
use unfold::rng::SplitMix64;
use unfold::{Device, Head, Nonlinearity, Optimizer, Rnn, RnnConfig, RnnParams, SequenceBatch};

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

/// `--time-loop`: how the GPU path walks the steps (see `unfold::TimeLoop`).
#[derive(Clone, Copy, ValueEnum)]
enum TimeLoopChoice {
    Auto,
    PerStep,
    Persistent,
    TiledSteps,
}

impl From<TimeLoopChoice> for unfold::TimeLoop {
    fn from(choice: TimeLoopChoice) -> Self {
        match choice {
            TimeLoopChoice::Auto => unfold::TimeLoop::Auto,
            TimeLoopChoice::PerStep => unfold::TimeLoop::PerStep,
            TimeLoopChoice::Persistent => unfold::TimeLoop::Persistent,
            TimeLoopChoice::TiledSteps => unfold::TimeLoop::TiledSteps,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Train a character-level language model on a text file (by default the bundled
    /// Persuasion by Jane Austen), with checkpoints, a loss plot and samples.
    Train(charlm::TrainArgs),
    /// Generate text from a checkpoint written by `train`.
    Sample(charlm::SampleArgs),
    /// Time training steps on the anchor workloads (ARCHITECTURE.md); one JSON line per case.
    Bench {
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
        /// Comma-separated: latency, small, ref, large.
        #[arg(long, default_value = "latency,small,ref")]
        configs: String,
        /// Timed steps per case (after 3 warm-up steps); the median is reported.
        #[arg(long, default_value_t = 10)]
        reps: usize,
        /// Instead of training steps: matrix products alone, `MxNxK,…` (e.g.
        /// 4096x4096x4096), with each GPU tiling, or ndarray's product on the CPU.
        #[arg(long)]
        matmul: Option<String>,
        /// How the GPU path walks the steps (auto picks by hidden size and batch).
        #[arg(long, value_enum, default_value = "auto")]
        time_loop: TimeLoopChoice,
    },
    /// List the adapters wgpu sees and the one `--device auto` picks.
    Devices,
    /// Train a sequence classifier (last-step head) on a UEA/UCR `.ts` dataset and report
    /// its test accuracy and confusion matrix. Without --train/--test: the bundled
    /// JapaneseVowels dataset (speaker recognition, 12 features, 9 classes).
    Classify {
        /// Training set (`.ts` with class labels); goes with --test.
        #[arg(long, requires = "test")]
        train: Option<PathBuf>,
        /// Test set (`.ts` with the same class labels as the training set).
        #[arg(long, requires = "train")]
        test: Option<PathBuf>,
        #[arg(long, default_value_t = 96)]
        hidden: usize,
        #[arg(long, default_value_t = 1)]
        layers: usize,
        #[arg(long, default_value_t = 60)]
        epochs: usize,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[arg(long, value_enum, default_value = "adam")]
        optimizer: OptimizerChoice,
        #[arg(long, default_value_t = 3e-3)]
        lr: f32,
        /// Largest global gradient norm; 0 turns clipping off.
        #[arg(long, default_value_t = 1.0)]
        clip: f32,
        /// Batches per length-sorting pool (1: plain shuffling).
        #[arg(long, default_value_t = 8)]
        pool: usize,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Run the same training steps from the same weights on the CPU path and on the GPU
    /// (`Device::gpu()`, honouring WGPU_ADAPTER_NAME) and compare losses, parameters, and
    /// (from the CPU copy's parameters at each step) outputs and gradients; fails past
    /// --tolerance.
    Verify {
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Comma-separated: small (2 tanh layers, per-step classes), relu, last-step, values.
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
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OptimizerChoice {
    Sgd,
    /// SGD with momentum 0.9.
    Momentum,
    Adam,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> charlm::CliResult<ExitCode> {
    let done: unfold::Result<()> = match cli.command {
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
            matmul,
            time_loop,
        } => match matmul {
            Some(shapes) => bench_matmul(&pick(device)?, &shapes, reps.max(1)),
            None => bench(&pick(device)?, &configs, reps.max(1), time_loop.into()),
        },
        Command::Train(args) => return charlm::train(args),
        Command::Sample(args) => return charlm::sample(args),
        Command::Classify {
            train,
            test,
            hidden,
            layers,
            epochs,
            batch,
            optimizer,
            lr,
            clip,
            pool,
            device,
            seed,
        } => classify(ClassifyArgs {
            train,
            test,
            hidden,
            layers,
            epochs,
            batch,
            optimizer: make_optimizer(optimizer, lr, clip),
            pool,
            device,
            seed,
        }),
        Command::Verify {
            steps,
            config,
            tolerance,
            optimizer,
            lr,
            clip,
            seed,
            time_loop,
        } => verify(
            steps,
            &config,
            tolerance,
            || make_optimizer(optimizer, lr, clip),
            seed,
            time_loop.into(),
        ),
    };
    done?;
    Ok(ExitCode::SUCCESS)
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
fn bench(
    device: &Device,
    configs: &str,
    reps: usize,
    time_loop: unfold::TimeLoop,
) -> unfold::Result<()> {
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
            rnn.set_time_loop(time_loop)?;
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
            let med = median(times);
            let dispatches = rnn.last_step_profile().map(|(_, d)| d).unwrap_or(0);
            println!(
                "{{\"impl\": \"unfold\", \"device\": {:?}, \"time_loop\": \"{time_loop:?}\", \"config\": {:?}, \"B\": {}, \"T\": {}, \"I\": {}, \"H\": {}, \"C\": {}, \"variable\": {variable}, \"train_step_ms\": {:.3}, \"tokens_per_s\": {:.0}, \"gflops\": {:.1}, \"host_record_ms\": {:.3}, \"dispatches\": {dispatches}}}",
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
                median(host) * 1e3,
            );
        }
    }
    Ok(())
}

/// `unfold bench --matmul`: one JSON line per shape and tiling (median of `reps` runs after
/// one warm-up run), the library's own choice first.
fn bench_matmul(device: &Device, shapes: &str, reps: usize) -> unfold::Result<()> {
    use unfold::gpu::{GemmPlan, ResidentProduct, Tile};
    use unfold::ndarray::{linalg::general_mat_mul, Array2};
    for (m, n, k) in unfold::workloads::parse_matmul_shapes(shapes)? {
        let (a, b) = unfold::workloads::matmul_operands(m, n, k);
        let flops = 2.0 * (m * n * k) as f64;
        let report = |plan: &str, seconds: f64| {
            println!(
                "{{\"impl\": \"unfold\", \"device\": {:?}, \"matmul\": \"{m}x{n}x{k}\", \"plan\": {plan:?}, \"ms\": {:.4}, \"tflops\": {:.3}}}",
                device.describe(),
                seconds * 1e3,
                flops / seconds / 1e12
            )
        };
        if !device.is_gpu() {
            let mut c = Array2::<f32>::zeros((m, n));
            let seconds = median_time(reps, || {
                general_mat_mul(1.0, &a, &b, 0.0, &mut c);
                Ok(())
            })?;
            report("ndarray", seconds);
            continue;
        }
        // each tiling unsplit, and split 2, 4 and 8 ways where K is long enough for that
        let split_counts: &[u32] = if k >= 512 { &[1, 2, 4, 8] } else { &[1] };
        let forced = [Tile::Tile64, Tile::Tile128].into_iter().flat_map(|tile| {
            split_counts
                .iter()
                .map(move |&splits| Some(GemmPlan { tile, splits }))
        });
        for plan in std::iter::once(None).chain(forced) {
            let mut product =
                ResidentProduct::new(device, a.view(), b.view(), (false, false), plan)?;
            let chosen = product.plan();
            let seconds = median_time(reps, || product.run(1))?;
            let label = format!(
                "{}{:?} splits {}",
                if plan.is_none() { "auto: " } else { "" },
                chosen.tile,
                chosen.splits
            );
            report(&label, seconds);
        }
    }
    Ok(())
}

/// The median of `values` (at least one).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The median time of `reps` runs of `run`, after warming up.
fn median_time(reps: usize, mut run: impl FnMut() -> unfold::Result<()>) -> unfold::Result<f64> {
    // warm up for a tenth of a second (at least one run): a GPU that sat idle while the
    // host prepared the operands runs its first milliseconds at lower clocks
    let warm = Instant::now();
    run()?;
    while warm.elapsed().as_secs_f64() < 0.1 {
        run()?;
    }
    let times = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            run().map(|_| t0.elapsed().as_secs_f64())
        })
        .collect::<unfold::Result<Vec<f64>>>()?;
    Ok(median(times))
}

/// An optimizer from the command line; a clip of 0 means no clipping.
fn make_optimizer(choice: OptimizerChoice, lr: f32, clip: f32) -> Optimizer {
    let optimizer = match choice {
        OptimizerChoice::Sgd => Optimizer::sgd(lr),
        OptimizerChoice::Momentum => Optimizer::sgd_momentum(lr, 0.9),
        OptimizerChoice::Adam => Optimizer::adam(lr),
    };
    if clip == 0.0 {
        optimizer
    } else {
        optimizer.clip_grad_norm(clip)
    }
}

/// The bundled JapaneseVowels dataset (see data/JapaneseVowels/README.md).
const JAPANESE_VOWELS_TRAIN: &str = include_str!("../data/JapaneseVowels/JapaneseVowels_TRAIN.ts");
const JAPANESE_VOWELS_TEST: &str = include_str!("../data/JapaneseVowels/JapaneseVowels_TEST.ts");

struct ClassifyArgs {
    train: Option<PathBuf>,
    test: Option<PathBuf>,
    hidden: usize,
    layers: usize,
    epochs: usize,
    batch: usize,
    optimizer: Optimizer,
    pool: usize,
    device: DeviceChoice,
    seed: u64,
}

fn describe_lengths(data: &Dataset) -> String {
    let lengths = data.lengths();
    let min = lengths.iter().min().copied().unwrap_or(0);
    let max = lengths.iter().max().copied().unwrap_or(0);
    format!("{} sequences of lengths {min}..={max}", data.len())
}

/// Trains a last-step-head classifier on standardised inputs and reports its accuracy on
/// the test set.
fn classify(args: ClassifyArgs) -> unfold::Result<()> {
    let start = Instant::now();
    let (name, train, test) = match (&args.train, &args.test) {
        (Some(train), Some(test)) => (
            train
                .file_stem()
                .map(|s| s.to_string_lossy().trim_end_matches("_TRAIN").to_string())
                .unwrap_or_default(),
            read_ts(train)?,
            read_ts(test)?,
        ),
        (None, None) => (
            "JapaneseVowels (bundled)".to_string(),
            parse_ts(
                JAPANESE_VOWELS_TRAIN,
                "data/JapaneseVowels/JapaneseVowels_TRAIN.ts",
            )?,
            parse_ts(
                JAPANESE_VOWELS_TEST,
                "data/JapaneseVowels/JapaneseVowels_TEST.ts",
            )?,
        ),
        _ => {
            return Err(unfold::Error::InvalidConfig {
                what: "--train and --test",
                expected: "given together (or neither, for the bundled JapaneseVowels)",
                got: "only one of them".into(),
            })
        }
    };
    if test.num_features() != train.num_features() {
        return Err(unfold::Error::InvalidData(format!(
            "the training set has {} features per step, the test set {}",
            train.num_features(),
            test.num_features()
        )));
    }
    if test.class_names() != train.class_names() {
        return Err(unfold::Error::InvalidData(format!(
            "the training set's classes ({}) differ from the test set's ({})",
            train.class_names().join(" "),
            test.class_names().join(" ")
        )));
    }
    // statistics of the training set only, applied to both
    let standardizer = Standardizer::fit(&train);
    let train = standardizer.apply(&train)?;
    let test = standardizer.apply(&test)?;

    let device = pick(args.device)?;
    let config = RnnConfig::new(train.num_features(), args.hidden, train.num_classes())
        .num_layers(args.layers)
        .head(Head::LastStep);
    config.validate()?;
    let mut optimizer = args.optimizer;
    optimizer.validate()?;
    let mut rnn = Rnn::new(config.clone(), RnnParams::init(&config, args.seed), &device)?;
    let loader = BatchLoader::new(&train, args.batch)?
        .seed(args.seed)
        .pool_batches(args.pool);
    let shuffled = BatchLoader::new(&train, args.batch)?
        .seed(args.seed)
        .pool_batches(1);

    println!(
        "{name}: train {}, test {}; {} features, {} classes",
        describe_lengths(&train),
        describe_lengths(&test),
        train.num_features(),
        train.num_classes()
    );
    println!(
        "model: {} layer(s) of {} tanh units, last-step head, {} parameters, on {}",
        config.num_layers,
        config.hidden_size,
        config.num_params(),
        device.describe()
    );
    println!(
        "training: {} epochs of {} batches of {} ({:.1}% padding with pools of {} batches, {:.1}% shuffled plainly), {:?}, clip {}, seed {}",
        args.epochs,
        loader.num_batches(),
        args.batch,
        100.0 * loader.padding_fraction(0),
        args.pool.max(1),
        100.0 * shuffled.padding_fraction(0),
        optimizer.kind(),
        optimizer
            .clip()
            .map_or("off".to_string(), |c| c.to_string()),
        args.seed
    );
    let eval_batch = 128;
    for epoch in 1..=args.epochs {
        let t0 = Instant::now();
        let mut loss_sum = 0.0f64;
        for batch in loader.epoch(epoch as u64) {
            let batch = batch?;
            loss_sum += rnn.train_step(&batch, &mut optimizer)? as f64 * batch.len() as f64;
        }
        let (predicted, _) = predict(&mut rnn, &train, eval_batch)?;
        let accuracy =
            ConfusionMatrix::new(train.labels(), &predicted, train.num_classes())?.accuracy();
        println!(
            "epoch {epoch:>3}/{}  loss {:.4}  train accuracy {accuracy:.3}  {:.2} s",
            args.epochs,
            loss_sum / train.len() as f64,
            t0.elapsed().as_secs_f64()
        );
    }
    let (predicted, test_loss) = predict(&mut rnn, &test, eval_batch)?;
    let confusion = ConfusionMatrix::new(test.labels(), &predicted, test.num_classes())?;
    println!(
        "test loss {test_loss:.4} on {} sequences; {:.1} s in all",
        test.len(),
        start.elapsed().as_secs_f64()
    );
    println!("test accuracy: {:.3}", confusion.accuracy());
    println!("confusion matrix (rows: true class, columns: predicted class):");
    print!("{}", confusion.render(test.class_names()));
    Ok(())
}

/// The shapes `verify` checks: small enough for a software adapter (lavapipe); `wide`
/// has a hidden size past the persistent loop's, with products long enough to be split.
fn verify_case(name: &str) -> unfold::Result<(RnnConfig, bool)> {
    let small = RnnConfig::new(8, 32, 5).num_layers(2);
    Ok(match name {
        "small" => (small, false),
        "relu" => (small.nonlinearity(Nonlinearity::Relu), false),
        "last-step" => (small.head(Head::LastStep), false),
        "values" => (small, true),
        "wide" => (RnnConfig::new(16, 512, 10), false),
        _ => {
            return Err(unfold::Error::InvalidConfig {
                what: "--config",
                expected: "a comma-separated list of small, relu, last-step, values, wide, or all",
                got: name.to_string(),
            })
        }
    })
}

/// Random inputs and targets for `config`: `batch` sequences, the first of `max_len`
/// steps, the others of 1..=max_len.
fn verify_batch(
    config: &RnnConfig,
    batch: usize,
    max_len: usize,
    values: bool,
    rng: &mut SplitMix64,
) -> unfold::Result<SequenceBatch> {
    let lengths: Vec<usize> = (0..batch)
        .map(|i| {
            if i == 0 {
                max_len
            } else {
                1 + rng.below(max_len)
            }
        })
        .collect();
    unfold::workloads::random_batch(config, &lengths, values, rng)
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

/// Trains copies of one model on the CPU path and on the GPU with the same batches and
/// compares them at every step.
fn verify(
    steps: usize,
    configs: &str,
    tolerance: f64,
    make_optimizer: impl Fn() -> Optimizer,
    seed: u64,
    time_loop: unfold::TimeLoop,
) -> unfold::Result<()> {
    if tolerance.is_nan() || tolerance < 0.0 {
        return Err(unfold::Error::InvalidConfig {
            what: "--tolerance",
            expected: ">= 0",
            got: tolerance.to_string(),
        });
    }
    make_optimizer().validate()?;
    let names: Vec<&str> = if configs.trim() == "all" {
        vec!["small", "relu", "last-step", "values", "wide"]
    } else {
        configs.split(',').map(str::trim).collect()
    };
    let cases = names
        .iter()
        .map(|n| verify_case(n))
        .collect::<unfold::Result<Vec<_>>>()?;
    let gpu = Device::gpu()?;
    let cpu = Device::cpu();
    println!("verifying {} against the CPU path", gpu.describe());
    let (batch_size, max_len) = (8, 20);
    let mut worst = (0.0f64, String::from("nothing compared"));
    for (name, (config, values)) in names.iter().zip(cases) {
        println!(
            "{name}: input {}, hidden {}, output {}, {} layers, {:?}, {:?} head, {} targets, batch {batch_size}, lengths up to {max_len}",
            config.input_size,
            config.hidden_size,
            config.output_size,
            config.num_layers,
            config.cell,
            config.head,
            if values { "value" } else { "class" }
        );
        let params = RnnParams::init(&config, seed);
        let mut on_cpu = Rnn::new(config.clone(), params.clone(), &cpu)?;
        let mut on_gpu = Rnn::new(config.clone(), params, &gpu)?;
        on_gpu.set_time_loop(time_loop)?;
        let (mut opt_cpu, mut opt_gpu) = (make_optimizer(), make_optimizer());
        let mut rng = SplitMix64::new(seed ^ 0x7e57_da7a);
        for step in 1..=steps {
            let batch = verify_batch(&config, batch_size, max_len, values, &mut rng)?;
            // outputs and gradients from the same parameters (the CPU model's), so that
            // they measure the kernels' rounding, not how far the two trained copies
            // have drifted apart (Adam turns a sign flip of a tiny gradient into a whole
            // step of lr); the copies' drift shows in the parameters
            let mut probe = Rnn::new(config.clone(), on_cpu.params()?, &gpu)?;
            probe.set_time_loop(time_loop)?;
            let (fc, fg) = (on_cpu.forward(&batch)?, probe.forward(&batch)?);
            let (gc, gg) = (
                on_cpu.loss_and_gradients(&batch)?.1,
                probe.loss_and_gradients(&batch)?.1,
            );
            let loss_cpu = on_cpu.train_step(&batch, &mut opt_cpu)?;
            let loss_gpu = on_gpu.train_step(&batch, &mut opt_gpu)?;
            let (pc, pg) = (on_cpu.params()?, on_gpu.params()?);
            let (lc, lg) = ([loss_cpu, fc.loss], [loss_gpu, fg.loss]);
            let outputs = worst_of([
                ("loss".to_string(), lg.as_slice(), lc.as_slice()),
                (
                    "outputs".to_string(),
                    fg.outputs.as_slice().unwrap_or(&[]),
                    fc.outputs.as_slice().unwrap_or(&[]),
                ),
                (
                    "final hidden".to_string(),
                    fg.final_hidden.as_slice().unwrap_or(&[]),
                    fc.final_hidden.as_slice().unwrap_or(&[]),
                ),
            ]);
            let grads = worst_of(param_pairs(&gg, &gc));
            let parameters = worst_of(param_pairs(&pg, &pc));
            println!(
                "step {step:>3}  loss cpu {loss_cpu:.6} gpu {loss_gpu:.6}  largest relative difference: outputs {:.2e}  gradients {:.2e}  parameters {:.2e}",
                outputs.0, grads.0, parameters.0
            );
            for (d, what, kind) in [
                (outputs, "", "outputs"),
                (grads, "gradient of ", "gradients"),
                (parameters, "", "parameters"),
            ] {
                if d.0 > worst.0 || d.0.is_nan() || worst.1 == "nothing compared" {
                    worst = (d.0, format!("{name}, step {step}, {kind}: {what}{}", d.1));
                }
            }
        }
    }
    if worst.0 > tolerance || worst.0.is_nan() {
        return Err(unfold::Error::VerificationFailed(format!(
            "largest relative difference {:.3e} ({}) exceeds the tolerance {tolerance:e}",
            worst.0, worst.1
        )));
    }
    println!(
        "ok: largest relative difference {:.3e} ({}) is within the tolerance {tolerance:e}",
        worst.0, worst.1
    );
    Ok(())
}
