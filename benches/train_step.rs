//! Training-step and forward-only time, CPU path against GPU path on the same work, for
//! DESIGN.md's anchor workloads, fixed and variable length. Throughput is in tokens
//! (valid positions). Each GPU iteration ends with a read-back (the loss, or the
//! outputs), so the clock stops only after the GPU has finished.
//!
//! `UNFOLD_BENCH_CONFIGS=latency,small,ref,large` picks the workloads (default: latency,
//! small, ref on the CPU; on the GPU the same with a hardware adapter, latency and small
//! on a software one such as lavapipe, which runs about 1 GFLOP/s).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;
use unfold::workloads::{Workload, ANCHORS};
use unfold::{Device, Optimizer, Rnn, RnnParams};

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

/// Runs `body` for every planned workload, fixed and variable length, on each of its
/// devices, in a criterion group named `{what}/{workload}/{fixed|variable}`.
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
    let gpu = Device::gpu()
        .map_err(|e| eprintln!("no GPU benches: {e}"))
        .ok();
    for (w, on_cpu, on_gpu) in plan(&gpu) {
        for variable in [false, true] {
            let batch = w.batch(variable, 0);
            let mut group = c.benchmark_group(format!(
                "{what}/{}/{}",
                w.name,
                if variable { "variable" } else { "fixed" }
            ));
            group.throughput(Throughput::Elements(batch.tokens() as u64));
            group
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
                    Rnn::new(w.config(), RnnParams::init(&w.config(), 0), &device).expect("model");
                body(&mut group, name, rnn, &batch);
            }
            group.finish();
        }
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

criterion_group!(benches, train_step, forward);
criterion_main!(benches);
