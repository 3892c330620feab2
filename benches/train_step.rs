//! Training-step time, CPU path against GPU path on the same work, for DESIGN.md's
//! anchor workloads, fixed and variable length. Throughput is in tokens (valid
//! positions). Each GPU iteration ends with the loss read back, so the clock stops only
//! after the GPU has finished.
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

fn train_step(c: &mut Criterion) {
    let gpu = Device::gpu()
        .map_err(|e| eprintln!("no GPU benches: {e}"))
        .ok();
    let cpu_set = selected(&["latency", "small", "ref"]);
    let gpu_set = match &gpu {
        Some(d) if d.is_software() => selected(&["latency", "small"]),
        _ => selected(&["latency", "small", "ref"]),
    };
    for w in ANCHORS {
        let on_cpu = cpu_set.contains(&w);
        let on_gpu = gpu.is_some() && gpu_set.contains(&w);
        if !on_cpu && !on_gpu {
            continue;
        }
        for variable in [false, true] {
            let batch = w.batch(variable, 0);
            let mut group = c.benchmark_group(format!(
                "train_step/{}/{}",
                w.name,
                if variable { "variable" } else { "fixed" }
            ));
            group.throughput(Throughput::Elements(batch.tokens() as u64));
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(3));
            let params = RnnParams::init(&w.config(), 0);
            let mut devices = vec![];
            if on_cpu {
                devices.push(("cpu", Device::cpu()));
            }
            if let (true, Some(g)) = (on_gpu, &gpu) {
                devices.push(("gpu", g.clone()));
            }
            for (name, device) in devices {
                let mut rnn = Rnn::new(w.config(), params.clone(), &device).expect("model");
                let mut sgd = Optimizer::sgd(0.01);
                group.bench_function(name, |b| {
                    b.iter(|| rnn.train_step(&batch, &mut sgd).expect("step"))
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, train_step);
criterion_main!(benches);
