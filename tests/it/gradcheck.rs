//! Finite-difference gradient checks of the CPU reference path, in f64, for every
//! parameter scalar: both heads, both losses, both nonlinearities, one and two layers,
//! variable lengths. Then the f32 public path against the f64 one.
//!
//! The numeric gradient is the central difference `(L(θ+ε) − L(θ−ε)) / 2ε` with
//! `ε = 1e-5`; in f64 its truncation error is `O(ε²)` (about 1e-10) and its rounding
//! error about `1e-16 / ε` (about 1e-11), both far below the tolerance (with `ε = 1e-6`
//! rounding alone reaches 3e-7 of the `1e-6` budget). For relu the loss has kinks where a
//! pre-activation is exactly zero; with random inputs and parameters none lies within
//! `ε` of a probe (the seeds below are fixed), so the same tolerance applies.

use crate::common;

use common::{assert_close, assert_params_close, config, params, random_batch};
use unfold::internals::cpu;
use unfold::{Device, Rnn, RnnConfig, RnnParams};

/// Checks every scalar of the gradient of one random problem against central
/// differences; returns the analytic gradient and the largest relative error.
fn gradcheck(
    config: &RnnConfig,
    lengths: &[usize],
    values: bool,
    seed: u64,
) -> (RnnParams<f64>, f64) {
    let batch = random_batch(config, lengths, values, seed);
    let p = params(config, seed ^ 0x5eed).cast::<f64>();
    let (loss, grads) = cpu::loss_and_gradients::<f64>(config, &p, &batch);
    assert!(loss.is_finite() && loss > 0.0, "{config:?}: loss {loss}");
    let loss_alone = cpu::loss::<f64>(config, &p, &batch);
    assert!(
        (loss - loss_alone).abs() <= 1e-14 * loss.abs(),
        "loss and loss_and_gradients disagree: {loss_alone} vs {loss}"
    );

    assert_eq!(grads.len(), config.num_params());
    let what = format!("{config:?} lengths {lengths:?} values {values}");
    let (worst, at) =
        common::check_every_scalar(&what, &p, &grads, |q| cpu::loss(config, q, &batch));
    eprintln!(
        "{:?} {:?} L{} values={values} lengths {lengths:?}: max relative error {worst:.2e} at {at}",
        config.cell, config.head, config.num_layers
    );
    (grads, worst)
}

/// Every tensor of the gradient carries signal (so the check above is not vacuous).
fn assert_every_tensor_nonzero(what: &str, g: &RnnParams<f64>) {
    for (name, t) in g.tensors() {
        let norm = t.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!(norm > 1e-8, "{what}: gradient of {name} is zero ({norm:e})");
    }
}

#[test]
fn every_combination_matches_finite_differences() {
    let mut seed = 11;
    let mut overall: f64 = 0.0;
    for layers in [1, 2] {
        for relu in [false, true] {
            for last_step in [false, true] {
                for values in [false, true] {
                    seed += 1;
                    let c = config(3, 5, 4, layers, relu, last_step);
                    let (g, worst) = gradcheck(&c, &[3, 1, 4, 2], values, seed);
                    assert_every_tensor_nonzero(&format!("{c:?} values {values}"), &g);
                    overall = overall.max(worst);
                }
            }
        }
    }
    eprintln!("overall max relative error {overall:.2e}");
}

#[test]
fn fixed_length_batches_match_finite_differences() {
    // all sequences equally long: the dW_hh product takes the contiguous-rows branch
    for (relu, last_step, values) in [
        (false, false, false),
        (true, true, true),
        (false, true, false),
    ] {
        let c = config(2, 4, 3, 2, relu, last_step);
        let (g, _) = gradcheck(&c, &[3, 3, 3], values, 40 + relu as u64);
        assert_every_tensor_nonzero("fixed length", &g);
    }
}

#[test]
fn a_single_long_sequence_matches_finite_differences() {
    for relu in [false, true] {
        let c = config(2, 3, 2, 2, relu, false);
        let (g, _) = gradcheck(&c, &[9], true, 50);
        assert_every_tensor_nonzero("single sequence", &g);
    }
}

#[test]
fn length_one_sequences_have_no_recurrent_gradient() {
    // with one step there is no h(t-1): W_hh cannot influence the loss, and both the
    // analytic gradient and the finite differences must say zero
    for last_step in [false, true] {
        let c = config(3, 4, 3, 2, false, last_step);
        let (g, _) = gradcheck(&c, &[1, 1, 1], false, 60);
        for (k, l) in g.layers.iter().enumerate() {
            assert!(
                l.w_hh.iter().all(|&v| v == 0.0),
                "layer {k}: dW_hh should be exactly zero, got {:?}",
                l.w_hh
            );
            assert!(
                l.w_ih.iter().any(|&v| v != 0.0),
                "layer {k}: dW_ih should not be zero"
            );
        }
    }
}

#[test]
fn f32_public_path_agrees_with_f64_reference() {
    let mut seed = 70;
    for layers in [1, 2] {
        for relu in [false, true] {
            for last_step in [false, true] {
                for values in [false, true] {
                    seed += 1;
                    let c = config(3, 6, 4, layers, relu, last_step);
                    let batch = random_batch(&c, &[3, 1, 5, 2], values, seed);
                    let p = params(&c, seed);
                    let (loss64, g64) =
                        cpu::loss_and_gradients::<f64>(&c, &p.cast::<f64>(), &batch);
                    let mut rnn = Rnn::new(c.clone(), p, &Device::cpu()).expect("valid model");
                    let (loss32, g32) = rnn.loss_and_gradients(&batch).expect("valid batch");
                    let what = format!("{c:?} values {values}");
                    assert_close(&format!("{what} loss"), &[loss32], &[loss64 as f32], 1e-5);
                    assert_params_close(&what, &g32, &g64.cast::<f32>(), 1e-4);
                    let fwd = rnn.forward(&batch).expect("valid batch");
                    assert_close(
                        &format!("{what} forward loss"),
                        &[fwd.loss],
                        &[loss64 as f32],
                        1e-5,
                    );
                }
            }
        }
    }
}
