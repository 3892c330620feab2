//! GPU path against the CPU reference path, relative error ≤ 1e-4: forward outputs,
//! final states, loss, every gradient, and parameters after SGD + clipping and after
//! several Adam steps, under every time loop, over randomized shapes that include sizes
//! off the 64/16 tile grid, batch 1, hidden 1, length-1 sequences, mixed lengths, 2
//! layers and products long enough to be split along K; and huge finite gradients.

use crate::common;

use unfold::internals::TimeLoop;
use unfold::rng::SplitMix64;
use unfold::{Cell, Device, Optimizer, Rnn, RnnConfig, RnnState, SequenceBatch};

const TOL: f64 = 1e-4;

struct Problem {
    label: String,
    config: RnnConfig,
    batch: SequenceBatch,
    seed: u64,
}

fn problem(config: RnnConfig, values: bool, lengths: &[usize], seed: u64) -> Problem {
    Problem {
        label: format!(
            "{config:?} {} lengths {lengths:?}",
            if values { "mse" } else { "ce" }
        ),
        batch: common::random_batch(&config, lengths, values, seed),
        config,
        seed,
    }
}

/// Fixed corner cases plus seeded random shapes.
fn problems() -> Vec<Problem> {
    let mut out = vec![
        problem(common::config(3, 1, 2, 1, false, false), false, &[1], 1), // batch 1, hidden 1, length 1
        problem(common::config(1, 1, 1, 2, true, true), true, &[2, 1, 3], 2), // everything 1-wide, 2 layers
        problem(
            common::config(5, 70, 67, 2, false, false),
            false,
            &[9, 1, 4, 9, 2],
            3,
        ), // off the tile grid
        problem(
            common::config(4, 17, 3, 1, true, false),
            true,
            &[6, 6, 6],
            4,
        ), // fixed length
        problem(
            common::config(66, 65, 5, 1, false, true),
            false,
            &[3, 7, 1, 5],
            5,
        ), // wide input, last step
    ];
    // many rows: bias-gradient column sums split over several chunks
    out.push(problem(
        common::config(3, 20, 6, 1, false, false),
        false,
        &[40, 33, 35, 12, 40, 7, 29, 40],
        6,
    ));
    // products long enough along K (600 inputs, 530 tokens) to be split into K ranges:
    // the hoisted input product with its bias, and every weight gradient
    out.push(problem(
        common::config(600, 9, 5, 2, false, false),
        false,
        &[150, 140, 130, 110],
        7,
    ));
    // the widest persistent loop: one thread per unit, nothing left to share the sum with
    out.push(problem(
        common::config(3, 256, 4, 1, true, false),
        true,
        &[5, 3],
        8,
    ));
    // the persistent loop stages its inputs 1024 / hidden steps at a time (16 at hidden
    // 64, 10 at hidden 100): sequences over several chunks, exactly one, one step short
    out.push(problem(
        common::config(4, 64, 3, 2, false, false),
        false,
        &[40, 16, 33, 15, 1],
        9,
    ));
    out.push(problem(
        common::config(6, 100, 5, 1, true, true),
        true,
        &[23, 10, 9, 21],
        10,
    ));
    // over 4 MiB of inputs (about 2,600 rows of 600 floats): packed for the upload on
    // several threads, each a run of steps
    let lengths: Vec<usize> = (0..48).map(|i| 30 + (i * 37) % 49).collect();
    out.push(problem(
        common::config(600, 8, 3, 1, false, false),
        false,
        &lengths,
        11,
    ));
    let mut rng = SplitMix64::new(2026);
    for k in 0..6 {
        let b = 1 + rng.below(7);
        let lengths: Vec<usize> = (0..b).map(|_| 1 + rng.below(12)).collect();
        let (i, h, o, layers) = (
            1 + rng.below(40),
            1 + rng.below(80),
            1 + rng.below(40),
            1 + rng.below(2),
        );
        let (relu, last, values) = (rng.below(2) == 1, rng.below(2) == 1, rng.below(2) == 1);
        out.push(problem(
            common::config(i, h, o, layers, relu, last),
            values,
            &lengths,
            100 + k,
        ));
    }
    out
}

/// A CPU model and a GPU model with the same parameters; the GPU one walks time as told.
fn pair(p: &Problem, gpu: &Device, time_loop: TimeLoop) -> (Rnn, Rnn) {
    let params = common::params(&p.config, p.seed);
    let mut dev = Rnn::new(p.config.clone(), params.clone(), gpu).expect("gpu model");
    dev.set_time_loop(time_loop)
        .expect("hidden sizes here fit every time loop");
    (
        Rnn::new(p.config.clone(), params, &Device::cpu()).expect("cpu model"),
        dev,
    )
}

/// Every time loop: persistent kernels, one fused dispatch per step, and each step's
/// product through the tiled matrix-product kernels.
const TIME_LOOPS: [TimeLoop; 3] = [
    TimeLoop::Persistent,
    TimeLoop::PerStep,
    TimeLoop::TiledSteps,
];

#[test]
fn forward_and_gradients_match_cpu() {
    let Some(gpu) = common::gpu() else { return };
    for (p, time_loop) in problems().iter().flat_map(|p| TIME_LOOPS.map(|t| (p, t))) {
        let (mut cpu, mut dev) = pair(p, &gpu, time_loop);
        let label = format!("{} {time_loop:?}", p.label);
        let (want, got) = (
            cpu.forward(&p.batch).expect("cpu"),
            dev.forward(&p.batch).expect("gpu"),
        );
        assert_eq!(want.outputs.shape(), got.outputs.shape(), "{label}");
        common::assert_close(
            &format!("{} outputs", label),
            &common::flat(&got.outputs),
            &common::flat(&want.outputs),
            TOL,
        );
        common::assert_close(
            &format!("{} final_hidden", label),
            &common::flat(&got.final_hidden),
            &common::flat(&want.final_hidden),
            TOL,
        );
        common::assert_close(&format!("{} loss", label), &[got.loss], &[want.loss], TOL);
        let (want_loss, want_grads) = cpu.loss_and_gradients(&p.batch).expect("cpu");
        let (got_loss, got_grads) = dev.loss_and_gradients(&p.batch).expect("gpu");
        common::assert_close(&format!("{} loss", label), &[got_loss], &[want_loss], TOL);
        common::assert_params_close(&label, &got_grads, &want_grads, TOL);
    }
}

#[test]
fn training_matches_cpu() {
    let Some(gpu) = common::gpu() else { return };
    type MakeOptimizer = fn() -> Optimizer;
    let optimizers: [(&str, MakeOptimizer, usize); 3] = [
        ("sgd+clip", || Optimizer::sgd(0.3).clip_grad_norm(0.05), 2),
        ("momentum", || Optimizer::sgd_momentum(0.1, 0.9), 3),
        ("adam+clip", || Optimizer::adam(0.01).clip_grad_norm(1.0), 5),
    ];
    for (k, p) in problems().iter().enumerate().step_by(2) {
        let time_loop = TIME_LOOPS[k / 2 % TIME_LOOPS.len()];
        for (name, make, steps) in optimizers {
            let (mut cpu, mut dev) = pair(p, &gpu, time_loop);
            let (mut o_cpu, mut o_gpu) = (make(), make());
            for s in 0..steps {
                let want = cpu.train_step(&p.batch, &mut o_cpu).expect("cpu step");
                let got = dev.train_step(&p.batch, &mut o_gpu).expect("gpu step");
                common::assert_close(
                    &format!("{} {time_loop:?} {name} loss at step {s}", p.label),
                    &[got],
                    &[want],
                    TOL,
                );
            }
            let label = format!(
                "{} {time_loop:?} {name} params after {steps} steps",
                p.label
            );
            common::assert_params_close(
                &label,
                &dev.params().expect("gpu params"),
                &cpu.params().expect("cpu params"),
                TOL,
            );
        }
    }
}

#[test]
fn buffers_are_reused_across_batch_shapes() {
    let Some(gpu) = common::gpu() else { return };
    let config = common::config(3, 9, 4, 2, false, false);
    let params = common::params(&config, 7);
    let mut cpu = Rnn::new(config.clone(), params.clone(), &Device::cpu()).expect("cpu");
    let mut dev = Rnn::new(config.clone(), params, &gpu).expect("gpu");
    // larger, smaller, then larger again: stale rows from a bigger batch must not leak
    for (k, lengths) in [vec![5, 3, 8], vec![2], vec![4, 4], vec![9, 1, 1, 7, 3]]
        .iter()
        .enumerate()
    {
        let batch = common::random_batch(&config, lengths, false, 50 + k as u64);
        let (want, got) = (
            cpu.forward(&batch).expect("cpu"),
            dev.forward(&batch).expect("gpu"),
        );
        common::assert_close(
            &format!("batch {k} outputs"),
            &common::flat(&got.outputs),
            &common::flat(&want.outputs),
            TOL,
        );
        let (_, want_g) = cpu.loss_and_gradients(&batch).expect("cpu");
        let (_, got_g) = dev.loss_and_gradients(&batch).expect("gpu");
        common::assert_params_close(&format!("batch {k}"), &got_g, &want_g, TOL);
    }
}

#[test]
fn a_batch_the_device_holds_is_not_uploaded_again_and_never_stale() {
    let Some(gpu) = common::gpu() else { return };
    // an LSTM (h and c initial states); the table of the rows each step continues from
    // differs with and without an initial state
    let config = common::config(3, 6, 4, 2, false, false).cell(Cell::Lstm);
    let params = common::params(&config, 8);
    let mut cpu = Rnn::new(config.clone(), params.clone(), &Device::cpu()).expect("cpu");
    let mut dev = Rnn::new(config.clone(), params, &gpu).expect("gpu");
    let a = common::random_batch(&config, &[5, 2, 4], false, 60);
    let b = common::random_batch(&config, &[3, 6], false, 61);
    let mut rng = unfold::rng::SplitMix64::new(62);
    let mut state = || {
        unfold::ndarray::Array3::from_shape_simple_fn((config.num_units(), 3, 6), || {
            0.5 * rng.normal()
        })
    };
    let initial = RnnState {
        h: state(),
        c: Some(state()),
    };
    let (mut o_cpu, mut o_dev) = (Optimizer::sgd(0.2), Optimizer::sgd(0.2));
    // (batch, initial state, whether the batch is uploaded: where the device does not
    // hold it, laid out for an initial state or not as now); the initial state is
    // uploaded whenever there is one
    let calls = [
        (&a, None, true),
        (&a, None, false),
        (&b, None, true),
        (&a.clone(), None, true),
        (&a, Some(&initial), true),
        (&a, Some(&initial), false),
        (&a, None, true),
        (&b, None, true),
    ];
    // the batch's writes: inputs, targets and three tables
    let batch_writes = 5;
    for (k, (batch, init, batch_up)) in calls.into_iter().enumerate() {
        let want = cpu
            .train_step_from(batch, init, &mut o_cpu)
            .expect("cpu step");
        let got = dev
            .train_step_from(batch, init, &mut o_dev)
            .expect("gpu step");
        let label = format!("call {k}");
        common::assert_close(&label, &[got.0], &[want.0], TOL);
        let moved = unfold::internals::gpu::last_transfers(&dev).expect("a GPU model");
        let writes = batch_up as usize * batch_writes + init.is_some() as usize;
        assert_eq!(
            (moved.uploads, moved.upload_writes),
            ((writes > 0) as usize, writes),
            "{label}: {moved:?}"
        );
    }
    common::assert_params_close(
        "after the calls",
        &dev.params().expect("gpu"),
        &cpu.params().expect("cpu"),
        TOL,
    );
}

#[test]
fn diverging_step_is_refused_on_gpu() {
    let Some(gpu) = common::gpu() else { return };
    let config = common::config(2, 4, 3, 1, true, false);
    let params = common::params(&config, 3);
    let mut rnn = Rnn::new(config.clone(), params.clone(), &gpu).expect("gpu");
    let mut inputs = common::random_batch(&config, &[3, 2], true, 9)
        .inputs()
        .to_vec();
    inputs[0][[0, 0]] = 1e30; // finite input, overflowing loss
    let batch = SequenceBatch::new(
        inputs,
        unfold::Targets::Values(vec![
            unfold::ndarray::Array2::zeros((3, 3)),
            unfold::ndarray::Array2::zeros((2, 3)),
        ]),
    )
    .expect("finite batch");
    let mut opt = Optimizer::sgd(0.1);
    let err = rnn
        .train_step(&batch, &mut opt)
        .expect_err("non-finite loss must be refused");
    assert!(matches!(err, unfold::Error::NonFinite { .. }), "{err}");
    assert_eq!(
        rnn.params().expect("params"),
        params,
        "a refused step changes nothing"
    );
    assert_eq!(opt.steps(), 0);
}

#[test]
fn huge_finite_gradients_are_clipped_as_on_the_cpu() {
    // squared error against targets of 1e18, through a readout scaled up 100 times: the
    // loss (~1e36) and every gradient are finite, but the sum of their squares is not in
    // f32; the norm must still come out right (the CPU sums in f64), so that clipping
    // scales the step as it should
    let Some(gpu) = common::gpu() else { return };
    let config = common::config(2, 32, 2, 1, false, false);
    let inputs = vec![unfold::ndarray::Array2::from_elem((3, 2), 0.5)];
    let targets = unfold::Targets::Values(vec![unfold::ndarray::Array2::from_elem((3, 2), 1e18)]);
    let batch = SequenceBatch::new(inputs, targets).unwrap();
    let mut params = common::params(&config, 5);
    params.w_out.mapv_inplace(|w| w * 100.0);
    let mut cpu = Rnn::new(config.clone(), params.clone(), &Device::cpu()).unwrap();
    let mut dev = Rnn::new(config, params, &gpu).unwrap();
    let (_, grads) = cpu.loss_and_gradients(&batch).unwrap();
    let flat = grads.to_flat();
    assert!(
        flat.iter().all(|g| g.is_finite()),
        "the setup should keep gradients finite"
    );
    let sum_sq: f32 = flat.iter().map(|g| g * g).sum();
    assert!(
        sum_sq.is_infinite(),
        "the setup should overflow f32's sum of squares"
    );
    for step in 0..2 {
        let mut opt = Optimizer::sgd(0.1).clip_grad_norm(1.0);
        let want = cpu.train_step(&batch, &mut opt).unwrap();
        let mut opt = Optimizer::sgd(0.1).clip_grad_norm(1.0);
        let got = dev
            .train_step(&batch, &mut opt)
            .expect("finite gradients were refused");
        common::assert_close(&format!("loss at step {step}"), &[got], &[want], TOL);
        common::assert_params_close(
            &format!("params after step {step}"),
            &dev.params().unwrap(),
            &cpu.params().unwrap(),
            TOL,
        );
    }
}
