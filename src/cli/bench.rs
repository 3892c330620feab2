//! `unfold bench`: median training-step times on the anchor workloads, or matrix products
//! alone, as JSON lines shaped like `scripts/torch_rnn_bench.py`'s.

use super::options::{at_least_one, pick_checked, CellChoice, DeviceChoice, TimeLoopChoice};
use super::{ensure_allocatable, CliResult};
use clap::Args;
use std::process::ExitCode;
use std::time::Instant;
use unfold::internals::workloads::Workload;
use unfold::internals::TimeLoop;
use unfold::{Cell, Device, Optimizer, Rnn, RnnParams, SequenceBatch};

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Comma-separated: latency, small, ref, large, or any shape written BxTxIxHxC
    /// (batch, steps, input, hidden, classes; e.g. 64x4096x128x512x128).
    #[arg(long, default_value = "latency,small,ref")]
    configs: String,
    /// Which batches of each workload: fixed-length, variable-length, or both.
    #[arg(long, value_enum, default_value = "both")]
    lengths: Lengths,
    /// The recurrent cell of the workloads.
    #[arg(long, value_enum, default_value = "tanh")]
    cell: CellChoice,
    /// Both directions in each layer (the per-step readout then reads 2·hidden).
    #[arg(long)]
    bidirectional: bool,
    /// Timed steps per case (after 3 warm-up steps); the median is reported.
    #[arg(long, default_value_t = 10, value_parser = at_least_one::<usize>)]
    reps: usize,
    /// Instead of training steps: matrix products alone, `MxNxK,…` (e.g.
    /// 4096x4096x4096), with each GPU tiling, or ndarray's product on the CPU.
    #[arg(long)]
    matmul: Option<String>,
    /// How the GPU path walks the steps (auto picks by hidden size and batch).
    #[arg(long, value_enum, default_value = "auto")]
    time_loop: TimeLoopChoice,
    /// With --device gpu: compile the kernels without wgpu's index checks. Unsafe: a
    /// kernel bug is then undefined behaviour (run `unfold verify --unchecked-shaders`
    /// on the adapter first).
    #[arg(long)]
    unchecked_shaders: bool,
    /// With --device gpu: every matrix product on cooperative matrices (tensor cores),
    /// f16 operands scaled per block, f32 accumulation (`Device::gpu_mixed_precision`;
    /// an error where the adapter has none). wgpu marks cooperative matrices
    /// experimental: a bug in them may be undefined behaviour. With --matmul, the
    /// cooperative-matrix tiling's splits instead of the f32 tilings.
    #[arg(long)]
    mixed_precision: bool,
    /// With --device gpu: before timing, measure every tiling of each product a step
    /// records (and, under --time-loop auto, both step-wise time loops) and keep the
    /// fastest (`Rnn::autotune`); at most this many seconds of trials per product shape.
    #[arg(long, value_name = "SECONDS")]
    autotune: Option<f64>,
    /// With --device gpu: after timing, one more step with every dispatch timed on the
    /// GPU; where its time went (per phase, kernel and product shape) as JSON lines
    /// ("profile" rows) and a table on stderr.
    #[arg(long)]
    profile: bool,
    /// Alternate between two batches of the workload, so that every step uploads its
    /// batch (by default the steps reuse one batch, which a GPU model keeps on the device
    /// after the first step, as PyTorch's benchmark keeps its tensors there).
    #[arg(long)]
    upload_each_step: bool,
}

pub fn run(args: BenchArgs) -> CliResult<ExitCode> {
    let device = pick_checked(args.device, args.unchecked_shaders, args.mixed_precision)?;
    let reps = args.reps;
    // what only a GPU has: the CPU path has one time loop and no product plans to tune
    let gpu_only = [
        ("--autotune", args.autotune.is_some()),
        (
            "--time-loop",
            !matches!(args.time_loop, TimeLoopChoice::Auto),
        ),
    ];
    if let Some((flag, _)) = gpu_only.iter().find(|(_, set)| *set && !device.is_gpu()) {
        return Err(unfold::Error::InvalidConfig {
            what: flag,
            expected: "used on a GPU (--device gpu)",
            got: device.describe(),
        }
        .into());
    }
    if args.profile && (!device.is_gpu() || args.matmul.is_some()) {
        return Err(unfold::Error::InvalidConfig {
            what: "--profile",
            expected: "training steps on a GPU (--device gpu, without --matmul)",
            got: format!(
                "{}{}",
                device.describe(),
                if args.matmul.is_some() {
                    " with --matmul"
                } else {
                    ""
                }
            ),
        }
        .into());
    }
    match &args.matmul {
        Some(shapes) => bench_matmul(&device, shapes, reps)?,
        None => {
            let model = Model {
                cell: args.cell.into(),
                bidirectional: args.bidirectional,
            };
            let variable_modes: &[bool] = match args.lengths {
                Lengths::Fixed => &[false],
                Lengths::Variable => &[true],
                Lengths::Both => &[false, true],
            };
            let autotune = args
                .autotune
                .map(|seconds| {
                    std::time::Duration::try_from_secs_f64(seconds).map_err(|_| {
                        unfold::Error::InvalidConfig {
                            what: "--autotune",
                            expected: "a number of seconds, at least 0",
                            got: seconds.to_string(),
                        }
                    })
                })
                .transpose()?;
            let how = How {
                time_loop: args.time_loop.into(),
                autotune,
                profile: args.profile,
                upload_each_step: args.upload_each_step,
            };
            for spec in args.configs.split(',') {
                let w = Workload::parse(spec)?;
                ensure_allocatable(workload_floats(&w, model), &format!("workload {spec}"))?;
                for &variable in variable_modes {
                    bench_steps(&device, &w, model, variable, reps, how)?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// About how many f32 values a training step of `w` holds on the host: the batch's
/// inputs, the parameters with their gradients, the states and gates of every layer, the
/// readout (an estimate to refuse absurd shapes with, not a budget).
fn workload_floats(w: &Workload, model: Model) -> u128 {
    let config = w
        .config()
        .cell(model.cell)
        .bidirectional(model.bidirectional);
    let tokens = (w.batch as u128) * (w.steps as u128);
    let per_token = (w.input + w.classes) as u128
        + (config.num_layers * config.num_directions()) as u128
            * (config.gate_width() + 2 * config.hidden_size) as u128;
    tokens.saturating_mul(per_token) + 2 * config.num_params() as u128
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Lengths {
    Fixed,
    Variable,
    Both,
}

/// What a workload's layer is: its cell and whether it reads both ways.
#[derive(Clone, Copy)]
struct Model {
    cell: Cell,
    bidirectional: bool,
}

/// How the steps run: the time loop asked for, the autotuning budget per product shape
/// (`None`: no tuning), whether one more step is profiled, and whether the steps
/// alternate between two batches (each step uploads its own).
#[derive(Clone, Copy)]
struct How {
    time_loop: TimeLoop,
    autotune: Option<std::time::Duration>,
    profile: bool,
    upload_each_step: bool,
}

/// One JSON line: the median time of `reps` training steps (after 3 warm-up steps) of
/// workload `w` with `model`, fixed or variable length.
fn bench_steps(
    device: &Device,
    w: &Workload,
    model: Model,
    variable: bool,
    reps: usize,
    How {
        time_loop,
        autotune,
        profile,
        upload_each_step,
    }: How,
) -> unfold::Result<()> {
    let Model {
        cell,
        bidirectional,
    } = model;
    let resident_before = process_memory("VmRSS:");
    let batch = w.batch(variable, 0);
    let config = w.config().cell(cell).bidirectional(bidirectional);
    let mut rnn = Rnn::new(config.clone(), RnnParams::init(&config, 0), device)?;
    rnn.set_time_loop(time_loop)?;
    if let Some(budget) = autotune {
        let report = rnn.autotune(&batch, budget)?;
        eprintln!("{}: {}", w.label(), describe_tuning(&report));
    }
    // what autotuning kept (the CPU has no time loop to report but the one asked for)
    let time_loop = if device.is_gpu() {
        rnn.time_loop()
    } else {
        time_loop
    };
    // the batch, or two of the same content built apart, which the steps alternate
    // between so that each uploads its batch
    let batches = if upload_each_step {
        let targets = batch.targets().cloned().expect("workloads have targets");
        let twin = SequenceBatch::new(batch.inputs().to_vec(), targets)?;
        vec![batch.clone(), twin]
    } else {
        vec![batch.clone()]
    };
    let mut sgd = Optimizer::sgd(0.01);
    for i in 0..3 {
        rnn.train_step(&batches[i % batches.len()], &mut sgd)?;
    }
    let (mut times, mut host) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    for i in 0..reps {
        let step_batch = &batches[(i + 1) % batches.len()];
        let t0 = Instant::now();
        rnn.train_step(step_batch, &mut sgd)?;
        times.push(t0.elapsed().as_secs_f64());
        host.push(
            rnn.last_step_profile()
                .map_or(0.0, |(h, _)| h.as_secs_f64()),
        );
    }
    let med = median(times);
    let dispatches = rnn.last_step_profile().map_or(0, |(_, d)| d);
    let (memory, memory_kind) = step_memory(device, resident_before);
    println!(
        "{{\"impl\": \"unfold\", \"device\": {:?}, \"time_loop\": \"{time_loop:?}\", \"cell\": \"{cell}\", \"bidirectional\": {bidirectional}, \"config\": {:?}, \"B\": {}, \"T\": {}, \"I\": {}, \"H\": {}, \"C\": {}, \"variable\": {variable}, \"train_step_ms\": {:.3}, \"tokens_per_s\": {:.0}, \"gflops\": {:.1}, \"host_record_ms\": {:.3}, \"dispatches\": {dispatches}, \"memory_bytes\": {memory}, \"memory\": {memory_kind:?}, \"autotuned\": {}, \"batch_upload\": {:?}, \"precision\": {:?}}}",
        device.describe(),
        w.label(),
        w.batch,
        w.steps,
        w.input,
        w.hidden,
        w.classes,
        med * 1e3,
        batch.tokens() as f64 / med,
        train_flops(w, model, &batch) / med / 1e9,
        median(host) * 1e3,
        autotune.is_some(),
        if upload_each_step {
            "every step"
        } else {
            "first step"
        },
        if device.is_mixed_precision() {
            "mixed"
        } else {
            "fp32"
        },
    );
    if profile {
        let (_, kernels) =
            unfold::internals::gpu::profile(device, || rnn.train_step(&batch, &mut sgd))?;
        let case = format!(
            "{} ({cell}{}, {} lengths, {time_loop:?}; {} ms a step untimed)",
            w.label(),
            if bidirectional {
                ", both directions"
            } else {
                ""
            },
            if variable { "variable" } else { "fixed" },
            (med * 1e3 * 100.0).round() / 100.0,
        );
        print_profile(&kernels, &case, |row| {
            format!(
                "{{\"profile\": {:?}, \"cell\": \"{cell}\", \"bidirectional\": {bidirectional}, \"variable\": {variable}, \"time_loop\": \"{time_loop:?}\", \"autotuned\": {}, {row}}}",
                w.label(),
                autotune.is_some()
            )
        });
    }
    Ok(())
}

/// A kernel profile: one JSON line per row (each made whole by `line` from the row's own
/// fields) on stdout, and a table on stderr, headed by `case`.
fn print_profile(
    profile: &unfold::internals::gpu::KernelProfile,
    case: &str,
    line: impl Fn(String) -> String,
) {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let share =
        |d: std::time::Duration| d.as_secs_f64() / profile.dispatch_time.as_secs_f64().max(1e-12);
    eprintln!(
        "where the GPU's time went, {case}: {:.3} ms in {} dispatches, {:.3} ms from first to last timestamp",
        ms(profile.dispatch_time),
        profile.dispatches,
        ms(profile.gpu_time)
    );
    eprintln!(
        "  {:<36} {:<24} {:>6} {:>9} {:>9} {:>6} {:>8}  detail",
        "phase", "kernel", "calls", "total ms", "mean µs", "share", "GFLOP/s"
    );
    for r in &profile.rows {
        let rate = r.flops_per_second().map(|f| f / 1e9);
        eprintln!(
            "  {:<36} {:<24} {:>6} {:>9.3} {:>9.1} {:>5.1}% {:>8}  {}",
            r.phase,
            r.kernel,
            r.calls,
            ms(r.total),
            r.mean().as_secs_f64() * 1e6,
            share(r.total) * 100.0,
            rate.map_or(String::new(), |g| format!("{g:.1}")),
            r.detail
        );
        println!(
            "{}",
            line(format!(
                "\"phase\": {:?}, \"kernel\": {:?}, \"detail\": {:?}, \"calls\": {}, \"total_ms\": {:.4}, \"mean_us\": {:.2}, \"longest_us\": {:.2}, \"share\": {:.4}, \"gflops\": {}",
                r.phase,
                r.kernel,
                r.detail,
                r.calls,
                ms(r.total),
                r.mean().as_secs_f64() * 1e6,
                r.longest.as_secs_f64() * 1e6,
                share(r.total),
                rate.map_or("null".into(), |g| format!("{g:.3}"))
            ))
        );
    }
}

/// What autotuning measured and kept, in a few lines.
fn describe_tuning(report: &unfold::internals::gpu::Autotune) -> String {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let mut lines = vec![match report.skipped.len() {
        0 => format!("{} product shapes tuned", report.products.len()),
        left => format!(
            "{} product shapes tuned, {left} left (over budget)",
            report.products.len()
        ),
    }];
    for t in &report.products {
        let s = t.shape;
        let (before, chosen) = (t.before, t.chosen);
        lines.push(format!(
            "  {}x{}x{}{}{}: {:?} split {} {:.3} ms -> {:?} split {} {:.3} ms",
            s.m,
            s.n,
            s.k,
            if s.transpose_a { " Aᵀ" } else { "" },
            if s.transpose_b { " Bᵀ" } else { "" },
            before.0.tile,
            before.0.splits,
            ms(before.1),
            chosen.0.tile,
            chosen.0.splits,
            ms(chosen.1)
        ));
    }
    for (time_loop, pass) in &report.time_loops {
        lines.push(format!(
            "  time loop {time_loop:?}: {:.2} ms per pass",
            ms(*pass)
        ));
    }
    lines.join("\n")
}

/// The memory a training step holds, and what was measured: on a GPU, the bytes of
/// device memory in live allocations after the steps (every buffer the model keeps
/// between steps, which is all it allocates); on the CPU, how far the process's peak
/// resident memory rose above `resident_before` (Linux; 0 elsewhere), a clean figure
/// for the first workload of a process.
fn step_memory(device: &Device, resident_before: u64) -> (u64, &'static str) {
    if device.is_gpu() {
        let bytes = unfold::internals::gpu::device_memory_in_use(device);
        return (bytes.unwrap_or(0), "device, live allocations");
    }
    let peak = process_memory("VmHWM:");
    (
        peak.saturating_sub(resident_before),
        "process, peak resident growth",
    )
}

/// A memory figure of `/proc/self/status` (`VmRSS:`, `VmHWM:`) in bytes; 0 where there
/// is none.
fn process_memory(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    kib.unwrap_or(0) * 1024
}

/// Floating-point operations of one training step: [`Workload::train_flops`], with each
/// recurrent product `gates` times as wide for a gated cell and every product twice for
/// a bidirectional layer (element-wise work not counted).
fn train_flops(w: &Workload, model: Model, batch: &SequenceBatch) -> f64 {
    let directions = if model.bidirectional { 2 } else { 1 };
    let recurrent = w.input * w.hidden + w.hidden * w.hidden;
    let per_token = directions * (model.cell.gates() * recurrent + w.hidden * w.classes);
    // forward 2 flops per multiply-add; backward twice the forward
    6.0 * (batch.tokens() * per_token) as f64
}

/// `unfold bench --matmul`: one JSON line per shape and tiling (median of `reps` runs after
/// one warm-up run), the library's own choice first; on the CPU, the CPU path's product
/// and ndarray's.
fn bench_matmul(device: &Device, shapes: &str, reps: usize) -> CliResult<()> {
    use unfold::internals::gpu::{GemmPlan, ResidentProduct};
    use unfold::ndarray::{linalg::general_mat_mul, Array2};
    for (m, n, k) in unfold::internals::workloads::parse_matmul_shapes(shapes)? {
        let floats = [(m, k), (k, n), (m, n)].map(|(r, c)| r as u128 * c as u128);
        ensure_allocatable(floats.iter().sum(), &format!("the product {m}x{n}x{k}"))?;
        let (a, b) = unfold::internals::workloads::matmul_operands(m, n, k);
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
            // the product the CPU path runs, then ndarray's (matrixmultiply) for reference
            let mut c = Array2::<f32>::zeros((m, n));
            let seconds = median_time(reps, || {
                unfold::internals::cpu::matmul(a.view(), b.view(), &mut c.view_mut())
            })?;
            report("cpu path (gemm-f32)", seconds);
            let seconds = median_time(reps, || {
                general_mat_mul(1.0, &a, &b, 0.0, &mut c);
                Ok(())
            })?;
            report("ndarray", seconds);
            continue;
        }
        // each tiling the device has (the f32 ones, or a mixed-precision device's
        // cooperative ones) unsplit, and split 2, 4 and 8 ways where K is long enough
        let split_counts: &[u32] = if k >= 512 { &[1, 2, 4, 8] } else { &[1] };
        let tiles = unfold::internals::gpu::tilings(device);
        let forced = tiles.into_iter().flat_map(|tile| {
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
