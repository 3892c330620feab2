//! Training: the loss falls with every optimizer; each optimizer's update is the one its
//! rule prescribes (derived here from the gradient that `loss_and_gradients` returns);
//! gradient clipping caps the global norm; `train_step` returns the loss before the update.

use crate::common;

use common::{assert_close, config, params, random_batch};
use unfold::ndarray::Array2;
use unfold::rng::SplitMix64;
use unfold::{Device, Optimizer, Rnn, RnnConfig, RnnParams, SequenceBatch, Targets};

/// A learnable toy task: the class at each step is the index of the largest of the
/// current step's 3 input features.
fn argmax_batch(seed: u64, lengths: &[usize]) -> SequenceBatch {
    let mut rng = SplitMix64::new(seed);
    let mut inputs = Vec::new();
    let mut targets = Vec::new();
    for &len in lengths {
        let x = Array2::from_shape_simple_fn((len, 3), || rng.normal());
        let y = x
            .rows()
            .into_iter()
            .map(|r| {
                let mut best = 0;
                for k in 1..3 {
                    if r[k] > r[best] {
                        best = k;
                    }
                }
                best as u32
            })
            .collect();
        inputs.push(x);
        targets.push(y);
    }
    SequenceBatch::new(inputs, Targets::Classes(targets)).unwrap()
}

fn model(config: &RnnConfig, seed: u64) -> Rnn {
    Rnn::new(config.clone(), params(config, seed), &Device::cpu()).unwrap()
}

/// Trains on a fixed set of batches and returns the held-out loss before and after.
fn loss_falls(mut optimizer: Optimizer, steps: usize) -> (f32, f32) {
    let c = RnnConfig::new(3, 16, 3);
    let mut rnn = model(&c, 1);
    let train: Vec<SequenceBatch> = (0..8)
        .map(|k| argmax_batch(100 + k, &[6, 3, 8, 5, 7, 2, 8, 4]))
        .collect();
    let held_out = argmax_batch(7, &[8, 5, 7, 3, 6, 8]);
    let before = rnn.forward(&held_out).unwrap().loss;
    for step in 0..steps {
        let loss = rnn
            .train_step(&train[step % train.len()], &mut optimizer)
            .unwrap();
        assert!(loss.is_finite());
    }
    assert_eq!(optimizer.steps(), steps as u64);
    let after = rnn.forward(&held_out).unwrap().loss;
    (before, after)
}

#[test]
fn loss_falls_with_sgd() {
    let (before, after) = loss_falls(Optimizer::sgd(0.5), 300);
    eprintln!("sgd: held-out loss {before:.4} -> {after:.4}");
    assert!(
        after < 0.4 * before,
        "sgd: held-out loss {before} -> {after}"
    );
}

#[test]
fn loss_falls_with_sgd_momentum() {
    let (before, after) = loss_falls(Optimizer::sgd_momentum(0.1, 0.9), 300);
    eprintln!("sgd momentum: held-out loss {before:.4} -> {after:.4}");
    assert!(
        after < 0.4 * before,
        "sgd momentum: held-out loss {before} -> {after}"
    );
}

#[test]
fn loss_falls_with_adam() {
    let (before, after) = loss_falls(Optimizer::adam(1e-2), 300);
    eprintln!("adam: held-out loss {before:.4} -> {after:.4}");
    assert!(
        after < 0.4 * before,
        "adam: held-out loss {before} -> {after}"
    );
}

#[test]
fn loss_falls_with_two_relu_layers_and_value_targets() {
    // mse on a last-step head: learn to output the mean of each input feature
    let c = config(2, 12, 2, 2, true, true);
    let mut rnn = model(&c, 3);
    let mut rng = SplitMix64::new(4);
    let mut make = |n: usize| {
        let lengths: Vec<usize> = (0..n).map(|_| 1 + rng.below(6)).collect();
        let inputs: Vec<Array2<f32>> = lengths
            .iter()
            .map(|&len| Array2::from_shape_simple_fn((len, 2), || rng.uniform(-1.0, 1.0)))
            .collect();
        let targets = inputs
            .iter()
            .map(|x| {
                x.mean_axis(unfold::ndarray::Axis(0))
                    .unwrap()
                    .insert_axis(unfold::ndarray::Axis(0))
            })
            .collect();
        SequenceBatch::new(inputs, Targets::Values(targets)).unwrap()
    };
    let train: Vec<SequenceBatch> = (0..8).map(|_| make(16)).collect();
    let held_out = make(32);
    let before = rnn.forward(&held_out).unwrap().loss;
    let mut adam = Optimizer::adam(3e-3);
    for step in 0..400 {
        rnn.train_step(&train[step % train.len()], &mut adam)
            .unwrap();
    }
    let after = rnn.forward(&held_out).unwrap().loss;
    eprintln!("relu, 2 layers, mse: held-out loss {before:.4} -> {after:.4}");
    assert!(after < 0.3 * before, "held-out loss {before} -> {after}");
}

/// `after − before` for every scalar, in f64 (exact for f32 inputs).
fn delta(before: &RnnParams, after: &RnnParams) -> Vec<f64> {
    before
        .to_flat()
        .iter()
        .zip(after.to_flat())
        .map(|(&b, a)| a as f64 - b as f64)
        .collect()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn as_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// A model, a batch, its gradient, and the parameters before a step.
fn setup(seed: u64) -> (Rnn, SequenceBatch, Vec<f64>, RnnParams) {
    let c = config(3, 6, 4, 2, false, false);
    let batch = random_batch(&c, &[4, 2, 5, 1], false, seed);
    let mut rnn = model(&c, seed);
    let (_, g) = rnn.loss_and_gradients(&batch).unwrap();
    let g: Vec<f64> = g.to_flat().iter().map(|&v| v as f64).collect();
    let before = rnn.params().unwrap();
    (rnn, batch, g, before)
}

#[test]
fn sgd_update_is_minus_lr_times_gradient() {
    let (mut rnn, batch, g, before) = setup(10);
    let lr = 0.05;
    rnn.train_step(&batch, &mut Optimizer::sgd(lr)).unwrap();
    let d = delta(&before, &rnn.params().unwrap());
    let want: Vec<f64> = g.iter().map(|&g| -(lr as f64) * g).collect();
    assert_close("sgd update", &as_f32(&d), &as_f32(&want), 1e-4);
}

#[test]
fn momentum_accumulates_the_gradients() {
    // torch.optim.SGD(momentum=m): buf = m·buf + g; p -= lr·buf, buf starting at g
    let (mut rnn, batch, g1, p0) = setup(11);
    let (lr, m) = (0.05f64, 0.9f64);
    let mut opt = Optimizer::sgd_momentum(lr as f32, m as f32);
    rnn.train_step(&batch, &mut opt).unwrap();
    let p1 = rnn.params().unwrap();
    let want1: Vec<f64> = g1.iter().map(|&g| -lr * g).collect();
    assert_close(
        "momentum step 1",
        &as_f32(&delta(&p0, &p1)),
        &as_f32(&want1),
        1e-4,
    );

    let (_, g2) = rnn.loss_and_gradients(&batch).unwrap();
    rnn.train_step(&batch, &mut opt).unwrap();
    let p2 = rnn.params().unwrap();
    let want2: Vec<f64> = g1
        .iter()
        .zip(g2.to_flat())
        .map(|(&a, b)| -lr * (m * a + b as f64))
        .collect();
    assert_close(
        "momentum step 2",
        &as_f32(&delta(&p1, &p2)),
        &as_f32(&want2),
        1e-4,
    );
    // and it is not plain sgd on the second step
    let plain: Vec<f64> = g2.to_flat().iter().map(|&b| -lr * b as f64).collect();
    let off = norm(
        &delta(&p1, &p2)
            .iter()
            .zip(&plain)
            .map(|(a, b)| a - b)
            .collect::<Vec<_>>(),
    );
    assert!(
        off > 0.1 * norm(&plain),
        "second momentum step looks like plain sgd"
    );
}

#[test]
fn adam_first_step_moves_each_parameter_by_lr_against_its_gradient_sign() {
    // step 1: m̂ = g, v̂ = g², so Δ = −lr · g / (|g| + eps) with eps = 1e-8
    let (mut rnn, batch, g, before) = setup(12);
    let lr = 1e-2f64;
    let mut adam = Optimizer::adam(lr as f32);
    rnn.train_step(&batch, &mut adam).unwrap();
    assert_eq!(adam.steps(), 1);
    let d = delta(&before, &rnn.params().unwrap());
    let want: Vec<f64> = g.iter().map(|&g| -lr * g / (g.abs() + 1e-8)).collect();
    assert_close("adam first step", &as_f32(&d), &as_f32(&want), 1e-4);
}

#[test]
fn clipping_caps_the_global_gradient_norm() {
    let (_, _, g, _) = setup(13);
    let g_norm = norm(&g);
    assert!(g_norm > 1e-3, "gradient norm {g_norm}");
    let lr = 0.05f64;
    for max_norm in [0.1 * g_norm, 0.5 * g_norm, 2.0 * g_norm, 10.0 * g_norm] {
        let (mut rnn, batch, g, before) = setup(13);
        let mut opt = Optimizer::sgd(lr as f32).clip_grad_norm(max_norm as f32);
        rnn.train_step(&batch, &mut opt).unwrap();
        let d = delta(&before, &rnn.params().unwrap());
        let step_norm = norm(&d) / lr;
        // clip_grad_norm_: g · min(1, max_norm / (‖g‖ + 1e-6)), one factor for all tensors
        let scale = (max_norm / (g_norm + 1e-6)).min(1.0);
        let want: Vec<f64> = g.iter().map(|&g| -lr * scale * g).collect();
        assert_close(
            &format!("clipped update (max_norm {max_norm:.4})"),
            &as_f32(&d),
            &as_f32(&want),
            1e-4,
        );
        if g_norm > max_norm {
            assert!(
                step_norm <= max_norm * (1.0 + 1e-4),
                "‖Δ‖/lr = {step_norm} exceeds max_norm {max_norm} (‖g‖ = {g_norm})"
            );
            assert!(
                step_norm >= max_norm * (1.0 - 1e-4),
                "‖Δ‖/lr = {step_norm} well under max_norm {max_norm}"
            );
        } else {
            assert!(
                (step_norm - g_norm).abs() <= 1e-4 * g_norm,
                "below max_norm {max_norm} the update should be unclipped: ‖Δ‖/lr = {step_norm}, ‖g‖ = {g_norm}"
            );
        }
    }
}

#[test]
fn clipping_is_global_not_per_tensor() {
    // with a max_norm far below ‖g‖ the update keeps the gradient's direction across all
    // tensors; per-tensor clipping would give each tensor the same norm instead
    let (mut rnn, batch, g, before) = setup(14);
    let lr = 1.0f64;
    let max_norm = 1e-3;
    rnn.train_step(
        &batch,
        &mut Optimizer::sgd(lr as f32).clip_grad_norm(max_norm as f32),
    )
    .unwrap();
    let after = rnn.params().unwrap();
    let d = delta(&before, &after);
    let scale = max_norm / (norm(&g) + 1e-6);
    let want: Vec<f64> = g.iter().map(|&g| -lr * scale * g).collect();
    // one tensor at a time, so that a per-tensor rule cannot hide behind the total
    let mut at = 0;
    for (name, t) in before.tensors() {
        let range = at..at + t.len();
        at += t.len();
        assert_close(
            &format!("clipped update of {name}"),
            &as_f32(&d[range.clone()]),
            &as_f32(&want[range]),
            1e-3,
        );
    }
}

#[test]
fn train_step_returns_the_loss_before_the_update() {
    for (kind, mut opt) in [
        ("sgd", Optimizer::sgd(0.1)),
        ("momentum", Optimizer::sgd_momentum(0.1, 0.9)),
        ("adam", Optimizer::adam(1e-2)),
    ] {
        let c = config(3, 8, 4, 2, false, false);
        let batch = random_batch(&c, &[5, 3, 4], false, 20);
        let mut rnn = model(&c, 21);
        for step in 0..3 {
            let before = rnn.forward(&batch).unwrap().loss;
            let (lg_loss, _) = rnn.loss_and_gradients(&batch).unwrap();
            let returned = rnn.train_step(&batch, &mut opt).unwrap();
            let after = rnn.forward(&batch).unwrap().loss;
            assert_eq!(
                returned, before,
                "{kind} step {step}: train_step returned {returned}, forward before said {before}"
            );
            assert_eq!(
                lg_loss, before,
                "{kind} step {step}: loss_and_gradients and forward disagree"
            );
            assert!(
                after < before,
                "{kind} step {step}: loss did not fall ({before} -> {after})"
            );
        }
    }
}

#[test]
fn forward_and_loss_and_gradients_do_not_change_the_parameters() {
    let c = config(3, 8, 4, 1, false, true);
    let batch = random_batch(&c, &[5, 3, 4], true, 30);
    let mut rnn = model(&c, 31);
    let p = rnn.params().unwrap();
    rnn.forward(&batch).unwrap();
    rnn.loss_and_gradients(&batch).unwrap();
    assert_eq!(rnn.params().unwrap(), p);
    // and a zero learning rate is a valid step that changes nothing
    rnn.train_step(&batch, &mut Optimizer::sgd(0.0)).unwrap();
    assert_eq!(rnn.params().unwrap(), p);
}
