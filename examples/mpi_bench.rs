//! Data-parallel throughput on the anchor workloads (BENCHMARKS.md, "Data-parallel
//! training on MPI"): the same global batch trained by however many ranks `mpirun`
//! starts, on the CPU path. Rank 0 prints one JSON line per workload.
//!
//! ```sh
//! cargo build --release --features mpi --example mpi_bench
//! mpirun -np 1 target/release/examples/mpi_bench small ref
//! MATMUL_NUM_THREADS=1 mpirun -np 2 --bind-to core target/release/examples/mpi_bench small ref
//! ```
//!
//! Arguments: workload names (default `small ref`), `--steps N` (measured steps, default
//! 10; `ref` and `large` take fewer), `--variable` (lengths uniform in [T/2, T]),
//! `--balanced` (`Split::BalancedSteps` instead of consecutive blocks). Besides
//! the training steps it times a bare allreduce of the same buffer, for the cost of the
//! exchange without the wait for the slowest rank.

use std::time::Instant;
use unfold::distributed::mpi::collective::SystemOperation;
use unfold::distributed::mpi::traits::*;
use unfold::distributed::{mpi, split_batch, DataParallel, Split};
use unfold::internals::workloads::Workload;
use unfold::{Device, Optimizer, RnnParams};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let (universe, _) =
        mpi::initialize_with_threading(mpi::Threading::Funneled).expect("MPI initialises once");
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let mut names = Vec::new();
    let (mut steps, mut variable, mut split) = (10usize, false, Split::Contiguous);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--steps" => steps = args.next().and_then(|s| s.parse().ok()).expect("--steps N"),
            "--variable" => variable = true,
            "--balanced" => split = Split::BalancedSteps,
            name => names.push(name.to_string()),
        }
    }
    if names.is_empty() {
        names = vec!["small".into(), "ref".into()];
    }
    for name in &names {
        let w = Workload::named(name).unwrap_or_else(|| panic!("no workload {name}"));
        let steps = match w.name {
            "ref" => steps.min(6),
            "large" => steps.min(3),
            _ => steps,
        };
        let config = w.config();
        let params = RnnParams::init(&config, 0);
        let world = universe.world();
        let mut dp = DataParallel::new(world, config, params, &Device::cpu()).expect("start");
        let mut sgd = Optimizer::sgd(0.01);
        let batch = w.batch(variable, 1);
        let shard = split_batch(&batch, rank, size, split).expect("split");
        let tokens = batch.tokens();
        // every rank's valid positions: how evenly the split shares the work
        let shard_tokens: Vec<String> = (0..size)
            .map(|r| {
                let s = split_batch(&batch, r, size, split).expect("split");
                s.map_or(0, |b| b.tokens()).to_string()
            })
            .collect();
        let (mut step_s, mut compute_s, mut reduce_s, mut update_s) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..steps + 1 {
            dp.communicator().barrier();
            let start = Instant::now();
            dp.train_step(shard.as_ref(), &mut sgd).expect("step");
            let t = start.elapsed().as_secs_f64();
            if i == 0 {
                continue; // warm-up: workspaces
            }
            let p = dp.last_step_profile();
            step_s.push(t);
            compute_s.push(p.compute.as_secs_f64());
            reduce_s.push(p.allreduce.as_secs_f64());
            update_s.push(p.update.as_secs_f64());
        }
        // the slowest rank's compute: what everyone waits for
        let compute = median(compute_s);
        let mut slowest = 0f64;
        dp.communicator()
            .all_reduce_into(&compute, &mut slowest, SystemOperation::max());
        // the bare exchange: the same buffer, ranks aligned by a barrier first
        let n = dp.last_step_profile().buffer_bytes / 4;
        let (send, mut recv) = (vec![1f32; n], vec![0f32; n]);
        let mut bare = Vec::new();
        for _ in 0..20 {
            dp.communicator().barrier();
            let start = Instant::now();
            dp.communicator()
                .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
            bare.push(start.elapsed().as_secs_f64());
        }
        let step = median(step_s);
        let reduce = median(reduce_s);
        let shard = shard_tokens.join(",");
        if rank == 0 {
            println!(
                "{{\"workload\":\"{}\",\"variable\":{variable},\"split\":\"{split:?}\",\"ranks\":{size},\"matmul_threads\":\"{}\",\"steps\":{steps},\"global_tokens\":{tokens},\"shard_tokens\":[{shard}],\"step_ms\":{:.2},\"tokens_per_s\":{:.0},\"compute_ms_rank0\":{:.2},\"compute_ms_slowest\":{:.2},\"allreduce_ms\":{:.3},\"allreduce_share\":{:.4},\"bare_allreduce_ms\":{:.3},\"update_ms\":{:.3},\"buffer_bytes\":{}}}",
                w.name,
                std::env::var("MATMUL_NUM_THREADS").unwrap_or_else(|_| "default".into()),
                step * 1e3,
                tokens as f64 / step,
                compute * 1e3,
                slowest * 1e3,
                reduce * 1e3,
                reduce / step,
                median(bare) * 1e3,
                median(update_s) * 1e3,
                n * 4,
            );
        }
    }
}
