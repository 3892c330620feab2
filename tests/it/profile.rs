//! `internals::gpu::profile`: a profiled step computes exactly what an unprofiled one
//! does, every dispatch of it is timed once, each is put in the phase of the step that
//! recorded it, and the recurrent products' work adds up to what the batch's rows need.

use crate::common;

use unfold::internals::gpu::{profile, KernelProfile};
use unfold::internals::TimeLoop;
use unfold::{Device, Error, Optimizer, Rnn, RnnConfig, RnnParams};

const HIDDEN: usize = 24;

/// Floating-point operations `profile` counts in rows whose phase is `phase`.
fn flops_in(p: &KernelProfile, phase: &str) -> f64 {
    p.rows
        .iter()
        .filter(|r| r.phase == phase)
        .map(|r| r.flops)
        .sum()
}

#[test]
fn a_profiled_step_computes_the_same_and_times_every_dispatch() {
    let Some(gpu) = common::gpu() else { return };
    let config = RnnConfig::new(5, HIDDEN, 4);
    let lengths = [9, 4, 7];
    let batch = common::random_batch(&config, &lengths, false, 11);
    let tokens: usize = lengths.iter().sum();
    let params = RnnParams::init(&config, 2);
    for time_loop in [
        TimeLoop::PerStep,
        TimeLoop::TiledSteps,
        TimeLoop::Persistent,
    ] {
        let model = || {
            let mut rnn = Rnn::new(config.clone(), params.clone(), &gpu).unwrap();
            rnn.set_time_loop(time_loop).unwrap();
            rnn
        };
        let (mut plain, mut profiled) = (model(), model());
        let (mut sgd, mut sgd_profiled) = (Optimizer::sgd(0.1), Optimizer::sgd(0.1));
        let loss = plain.train_step(&batch, &mut sgd).unwrap();
        let (profiled_loss, p) =
            profile(&gpu, || profiled.train_step(&batch, &mut sgd_profiled)).unwrap();
        let what = format!("{time_loop:?}");

        // the timestamps change nothing computed
        assert_eq!(profiled_loss.to_bits(), loss.to_bits(), "{what}: loss");
        assert_eq!(
            common::param_bits(&profiled.params().unwrap()),
            common::param_bits(&plain.params().unwrap()),
            "{what}: updated parameters"
        );

        // every dispatch of the step, once; the rows add up
        let submitted = unfold::internals::gpu::last_transfers(&profiled).unwrap();
        assert_eq!(p.dispatches, submitted.dispatches, "{what}: {p:#?}");
        assert_eq!(
            p.rows.iter().map(|r| r.calls).sum::<usize>(),
            p.dispatches,
            "{what}"
        );
        let total: std::time::Duration = p.rows.iter().map(|r| r.total).sum();
        assert_eq!(total, p.dispatch_time, "{what}");
        assert!(!p.dispatch_time.is_zero(), "{what}: no time measured");
        assert!(p.gpu_time >= p.dispatch_time, "{what}: {p:#?}");
        for r in &p.rows {
            assert!(r.calls > 0 && r.longest <= r.total, "{what}: {r:?}");
            assert!(r.longest >= r.mean(), "{what}: {r:?}");
        }

        // the step's parts, in the order they were recorded
        let mut phases: Vec<&str> = p.rows.iter().map(|r| r.phase.as_str()).collect();
        phases.dedup();
        assert_eq!(
            phases,
            [
                "layer 0: input projection",
                "layer 0: time loop, forward",
                "readout and loss",
                "readout, backward",
                "layer 0: time loop, backward",
                "layer 0: weight gradients",
                "gradient norm and update",
            ],
            "{what}"
        );

        // the recurrent product runs on every row that continues a state (no initial
        // state: all but each sequence's first), H × H multiply-adds each; backward on
        // every row continued by a later one, except that tiled steps multiply all of a
        // step's rows (those with no later step by zeros)
        let per_row = 2.0 * (HIDDEN * HIDDEN) as f64;
        let continued = (tokens - lengths.len()) as f64 * per_row;
        assert_eq!(
            flops_in(&p, "layer 0: time loop, forward"),
            continued,
            "{what}"
        );
        let backward = flops_in(&p, "layer 0: time loop, backward");
        if time_loop == TimeLoop::TiledSteps {
            // every step but the last has a later one: all rows of steps 0..8
            let rows_before_last: usize = (0..8)
                .map(|t| lengths.iter().filter(|&&l| l > t).count())
                .sum();
            assert_eq!(backward, rows_before_last as f64 * per_row, "{what}");
        } else {
            assert_eq!(backward, continued, "{what}");
        }
    }
}

#[test]
fn a_long_submission_is_timed_across_several_query_sets() {
    let Some(gpu) = common::gpu() else { return };
    // one sequence of 4,200 steps, a dispatch each way per step: the forward pass's
    // submission alone needs more timestamps than one query set holds (4,096)
    let config = RnnConfig::new(2, 3, 2);
    let steps = 4200;
    let batch = common::random_batch(&config, &[steps], false, 5);
    let mut rnn = Rnn::new(config.clone(), RnnParams::init(&config, 6), &gpu).unwrap();
    rnn.set_time_loop(TimeLoop::PerStep).unwrap();
    let start = std::time::Instant::now();
    let (_, p) = profile(&gpu, || rnn.loss_and_gradients(&batch)).unwrap();
    let wall = start.elapsed();
    let submitted = unfold::internals::gpu::last_transfers(&rnn).unwrap();
    assert_eq!(p.dispatches, submitted.dispatches);
    assert!(p.dispatches > 2 * steps, "{}", p.dispatches);
    // timestamps read from the wrong place (zeros, or another set's) would span more
    // than the call took
    assert!(
        p.gpu_time <= wall,
        "{:?} of GPU time in {wall:?}",
        p.gpu_time
    );
    assert!(p.dispatch_time <= p.gpu_time);
    let forward = p
        .rows
        .iter()
        .find(|r| r.phase == "layer 0: time loop, forward")
        .expect("the forward loop");
    assert_eq!(forward.calls, steps);
    assert_eq!(forward.flops, 2.0 * ((steps - 1) * 3 * 3) as f64);
}

#[test]
fn a_profile_needs_a_gpu_and_one_at_a_time() {
    let unsupported = |r: Result<((), KernelProfile), Error>| match r {
        Err(Error::Unsupported(why)) => why,
        other => panic!("expected Unsupported, got {other:?}"),
    };
    let why = unsupported(profile(&Device::cpu(), || Ok(())));
    assert!(why.contains("CPU"), "{why}");

    let Some(gpu) = common::gpu() else { return };
    let (inner, outer) = profile(&gpu, || Ok(profile(&gpu, || Ok(())))).unwrap();
    let why = unsupported(inner);
    assert!(why.contains("already"), "{why}");
    assert_eq!(outer.dispatches, 0);
    // and the device is free again afterwards, also after a failed run
    let failed: Result<((), KernelProfile), Error> =
        profile(&gpu, || Err(Error::Unsupported("test".into())));
    assert!(failed.is_err());
    assert!(profile(&gpu, || Ok(())).is_ok());
}
