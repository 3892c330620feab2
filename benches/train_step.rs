//! CPU path against GPU path on the same work, side by side in criterion groups:
//!
//! - `train_step/{cell}/{workload}/{fixed|variable}` and `forward/…`: ARCHITECTURE.md's
//!   anchor workloads with each cell; throughput in tokens (valid positions).
//!   `UNFOLD_BENCH_CONFIGS=latency,small,ref,large` picks the workloads (default: latency,
//!   small, ref on the CPU; on the GPU the same with a hardware adapter, latency and small
//!   on a software one such as lavapipe, which runs about 1 GFLOP/s);
//!   `UNFOLD_BENCH_CELLS=tanh,relu,lstm,gru` the cells (default tanh, lstm, gru).
//! - `matmul/{m}x{n}x{k}`: the matrix product alone: the CPU path's (`cpu`, the `gemm`
//!   crate's kernels) and ndarray's (`cpu-ndarray`) against each GPU tiling, unsplit
//!   (`gpu` is the plan the library picks for the shape); throughput in floating-point
//!   operations, so criterion's "elem/s" reads as FLOP/s. `UNFOLD_BENCH_MATMUL=4096x4096x4096,…`
//!   picks the shapes.
//! - `time_step/h{hidden}`: one dependent time step, a forward pass over one sequence of
//!   `UNFOLD_BENCH_STEPS` steps (default 1000; 64 on a software adapter); throughput in
//!   steps, so 1 / (elem/s) is the time per step; each GPU time loop separately.
//! - `step_product/{m}x{k}x{cols}`: the CPU time loop's per-step product on one thread
//!   (`m` rows of states against `cols` columns of `W_hh` of depth `k`, as one thread of
//!   a `ref` or `small` LSTM step sees it), on `W_hh` packed once into panels against
//!   the general product, which packs at every call; throughput in floating-point
//!   operations.
//!
//! Every GPU iteration waits for the GPU (a read-back, or a wait on the submission), so
//! the clock stops only after the GPU has finished.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use std::sync::OnceLock;
use std::time::Duration;
use unfold::internals::gpu::{GemmPlan, ResidentProduct};
use unfold::internals::workloads::{Workload, ANCHORS};
use unfold::internals::TimeLoop;
use unfold::ndarray::Array2;
use unfold::{Cell, Device, Optimizer, Rnn, RnnConfig, RnnParams, SequenceBatch, Targets};

/// The GPU, once for every group (`None` without an adapter).
fn gpu() -> Option<Device> {
    static GPU: OnceLock<Option<Device>> = OnceLock::new();
    GPU.get_or_init(|| {
        Device::gpu()
            .map_err(|e| eprintln!("no GPU benches: {e}"))
            .ok()
    })
    .clone()
}

fn software(gpu: &Option<Device>) -> bool {
    gpu.as_ref().is_some_and(Device::is_software)
}

fn selected(default: &[&str]) -> Vec<Workload> {
    let list = std::env::var("UNFOLD_BENCH_CONFIGS").unwrap_or_else(|_| default.join(","));
    list.split(',')
        .map(|n| {
            Workload::named(n.trim()).unwrap_or_else(|| {
                panic!(
                    "unknown workload {n:?}; known: {:?}",
                    ANCHORS.map(|w| w.name)
                )
            })
        })
        .collect()
}

/// The cells of the training-step groups (`UNFOLD_BENCH_CELLS`).
fn cells() -> Vec<Cell> {
    let list = std::env::var("UNFOLD_BENCH_CELLS").unwrap_or_else(|_| "tanh,lstm,gru".into());
    list.split(',')
        .map(|n| match n.trim() {
            "tanh" => Cell::Tanh,
            "relu" => Cell::Relu,
            "lstm" => Cell::Lstm,
            "gru" => Cell::Gru,
            other => panic!("UNFOLD_BENCH_CELLS: unknown cell {other:?} (tanh, relu, lstm, gru)"),
        })
        .collect()
}

/// Which workloads run on which device: `(workload, on_cpu, on_gpu)`.
fn plan(gpu: &Option<Device>) -> Vec<(Workload, bool, bool)> {
    let cpu_set = selected(&["latency", "small", "ref"]);
    let gpu_set = match gpu {
        Some(d) if d.is_software() => selected(&["latency", "small"]),
        _ => selected(&["latency", "small", "ref"]),
    };
    ANCHORS
        .iter()
        .map(|w| {
            (
                *w,
                cpu_set.contains(w),
                gpu.is_some() && gpu_set.contains(w),
            )
        })
        .filter(|(_, on_cpu, on_gpu)| *on_cpu || *on_gpu)
        .collect()
}

/// Runs `body` for every cell and planned workload, fixed and variable length, on each of
/// its devices, in a criterion group named `{what}/{cell}/{workload}/{fixed|variable}`.
fn each_case(
    c: &mut Criterion,
    what: &str,
    mut body: impl FnMut(
        &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
        &str,
        Rnn,
        &unfold::SequenceBatch,
    ),
) {
    let gpu = gpu();
    for cell in cells() {
        for (w, on_cpu, on_gpu) in plan(&gpu) {
            each_length(c, what, cell, w, (on_cpu, on_gpu), &mut body);
        }
    }
}

/// [`each_case`]'s work for one cell and workload.
fn each_length(
    c: &mut Criterion,
    what: &str,
    cell: Cell,
    w: Workload,
    (on_cpu, on_gpu): (bool, bool),
    body: &mut impl FnMut(
        &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
        &str,
        Rnn,
        &unfold::SequenceBatch,
    ),
) {
    let gpu = gpu();
    let config = w.config().cell(cell);
    for variable in [false, true] {
        let batch = w.batch(variable, 0);
        let mut group = c.benchmark_group(format!(
            "{what}/{cell}/{}/{}",
            w.name,
            if variable { "variable" } else { "fixed" }
        ));
        group.throughput(Throughput::Elements(batch.tokens() as u64));
        // flat sampling: as many iterations in every sample (one, when an iteration
        // takes a second as on a software adapter) instead of 1, 2, ..., 10 of them
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        let mut devices = vec![];
        if on_cpu {
            devices.push(("cpu", Device::cpu()));
        }
        if let (true, Some(g)) = (on_gpu, &gpu) {
            devices.push(("gpu", g.clone()));
        }
        for (name, device) in devices {
            let rnn =
                Rnn::new(config.clone(), RnnParams::init(&config, 0), &device).expect("model");
            body(&mut group, name, rnn, &batch);
        }
        group.finish();
    }
}

fn train_step(c: &mut Criterion) {
    each_case(c, "train_step", |group, name, mut rnn, batch| {
        let mut sgd = Optimizer::sgd(0.01);
        group.bench_function(name, |b| {
            b.iter(|| rnn.train_step(batch, &mut sgd).expect("step"))
        });
    });
}

fn forward(c: &mut Criterion) {
    each_case(c, "forward", |group, name, mut rnn, batch| {
        group.bench_function(name, |b| b.iter(|| rnn.forward(batch).expect("forward")));
    });
}

/// `UNFOLD_BENCH_MATMUL` (`MxNxK,…`) or shapes sized for the adapter: square products,
/// and the products of the `ref` workload (per-step, hoisted input, weight gradient).
fn matmul_shapes(software: bool) -> Vec<(usize, usize, usize)> {
    let default = if software {
        "128x128x128,256x256x256,64x256x256,256x256x1024"
    } else {
        "1024x1024x1024,2048x2048x2048,4096x4096x4096,64x512x512,6400x512x128,512x512x6400"
    };
    let list = std::env::var("UNFOLD_BENCH_MATMUL").unwrap_or_else(|_| default.into());
    unfold::internals::workloads::parse_matmul_shapes(&list)
        .unwrap_or_else(|e| panic!("UNFOLD_BENCH_MATMUL: {e}"))
}

fn matmul(c: &mut Criterion) {
    let gpu = gpu();
    // enough work per iteration that submitting and waiting do not dominate
    let work_per_iter: u64 = if software(&gpu) { 1 << 26 } else { 1 << 34 };
    for (m, n, k) in matmul_shapes(software(&gpu)) {
        let flops = 2 * (m * n * k) as u64;
        let mut group = c.benchmark_group(format!("matmul/{m}x{n}x{k}"));
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        let (a, b) = unfold::internals::workloads::matmul_operands(m, n, k);
        if flops <= 1 << 34 {
            group.throughput(Throughput::Elements(flops));
            let mut out = Array2::<f32>::zeros((m, n));
            group.bench_function("cpu", |bench| {
                bench.iter(|| {
                    unfold::internals::cpu::matmul(a.view(), b.view(), &mut out.view_mut())
                        .expect("product on the CPU path")
                })
            });
            group.bench_function("cpu-ndarray", |bench| {
                bench.iter(|| unfold::ndarray::linalg::general_mat_mul(1.0, &a, &b, 0.0, &mut out))
            });
        }
        let Some(gpu) = &gpu else {
            group.finish();
            continue;
        };
        let repeats = (work_per_iter / flops).clamp(1, 256) as usize;
        group.throughput(Throughput::Elements(flops * repeats as u64));
        // the library's plan, then each tiling the device has, unsplit
        let tilings = unfold::internals::gpu::tilings(gpu)
            .into_iter()
            .map(|tile| {
                let name = format!("gpu-{tile:?}").to_lowercase();
                (name, Some(GemmPlan { tile, splits: 1 }))
            });
        let plans = std::iter::once(("gpu".to_string(), None)).chain(tilings);
        for (name, plan) in plans {
            let mut product = ResidentProduct::new(gpu, a.view(), b.view(), (false, false), plan)
                .expect("matrix product on the GPU");
            group.bench_function(&name, |bench| {
                bench.iter(|| product.run(repeats).expect("product"))
            });
        }
        group.finish();
    }
}

/// One sequence of `steps` steps: the time loop alone, nothing to run in parallel.
fn single_sequence(config: &RnnConfig, steps: usize) -> SequenceBatch {
    let x = Array2::from_shape_fn((steps, config.input_size), |(t, i)| {
        ((t * 3 + i) % 7) as f32 / 7.0 - 0.5
    });
    SequenceBatch::new(vec![x], Targets::Classes(vec![vec![0; steps]])).expect("batch")
}

fn time_step(c: &mut Criterion) {
    let gpu = gpu();
    let default_steps = if software(&gpu) { 64 } else { 1000 };
    let steps = std::env::var("UNFOLD_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_steps);
    let hidden: &[usize] = if software(&gpu) {
        &[64, 256]
    } else {
        &[64, 256, 1024]
    };
    for &h in hidden {
        let config = RnnConfig::new(32, h, 32);
        let batch = single_sequence(&config, steps);
        let mut group = c.benchmark_group(format!("time_step/h{h}"));
        group
            .throughput(Throughput::Elements(steps as u64))
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        let mut cases = vec![("cpu", Device::cpu(), TimeLoop::Auto)];
        if let Some(g) = &gpu {
            cases.push(("gpu-per-step", g.clone(), TimeLoop::PerStep));
            cases.push(("gpu-tiled-steps", g.clone(), TimeLoop::TiledSteps));
            if h <= unfold::internals::gpu::PERSISTENT_MAX_HIDDEN {
                cases.push(("gpu-persistent", g.clone(), TimeLoop::Persistent));
            }
        }
        for (name, device, time_loop) in cases {
            let mut rnn =
                Rnn::new(config.clone(), RnnParams::init(&config, 0), &device).expect("model");
            rnn.set_time_loop(time_loop).expect("time loop");
            group.bench_function(name, |b| b.iter(|| rnn.forward(&batch).expect("forward")));
        }
        group.finish();
    }
}

/// One thread's step products in the CPU time loops: `(m, k, width, blocks)` multiplies
/// `m` rows by the first `width / 2` columns of each of `blocks` gate blocks of `width`
/// (two threads split the units): `ref` LSTM forward and backward, `small` LSTM forward
/// and backward (split by rows: all units, eight rows each).
fn step_product(c: &mut Criterion) {
    use unfold::internals::cpu::step_product::{step_product, Panels};
    for (m, k, width, blocks, cols) in [
        (64, 512, 512, 4, 256),
        (64, 2048, 512, 1, 256),
        (8, 128, 128, 4, 128),
        (8, 512, 128, 1, 128),
    ] {
        let (a, b) = unfold::internals::workloads::matmul_operands(m, width * blocks, k);
        let mut group = c.benchmark_group(format!("step_product/{m}x{k}x{}", cols * blocks));
        group
            .throughput(Throughput::Elements(2 * (m * k * cols * blocks) as u64))
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2));
        let mut packed = Panels::default();
        packed.pack(&b.view(), width);
        for (name, panels) in [("panels", &packed), ("general", &Panels::default())] {
            let mut out = Array2::<f32>::zeros((m, cols));
            group.bench_function(name, |bench| {
                bench.iter(|| {
                    for blk in 0..blocks {
                        let cols = blk * width..blk * width + cols;
                        step_product(
                            &a.view(),
                            &b.view(),
                            panels,
                            cols,
                            true,
                            &mut out.view_mut(),
                        );
                    }
                })
            });
        }
        group.finish();
    }
}

criterion_group!(
    benches,
    train_step,
    forward,
    matmul,
    time_step,
    step_product
);
criterion_main!(benches);
