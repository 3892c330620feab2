//! Batches past the device's storage-binding limit are split into chunks of sequences,
//! not refused: on a GPU device limited to 16 KiB per binding (lavapipe in CI), batches
//! whose states alone need more give the outputs, final states, loss, gradients and
//! training trajectory of the same model on the CPU path and on the unlimited GPU, to
//! 1e-5 relative: per-step and last-step heads, class and value targets, tokens and
//! dense inputs, initial states (truncated BPTT), a gated bidirectional model, dropout
//! (the chunks draw the whole batch's masks) and the encoder API. A sequence that alone
//! exceeds the limit is still refused, clearly.

use crate::common;

use std::sync::OnceLock;
use unfold::internals::gpu::{device_with_storage_limit, max_storage_binding};
use unfold::ndarray::Array3;
use unfold::rng::SplitMix64;
use unfold::{
    Cell, Device, Error, Head, Optimizer, Rnn, RnnConfig, RnnState, SequenceBatch, Targets,
};

/// The storage-binding limit of the limited device, in bytes.
const LIMIT: u64 = 16 << 10;

const TOL: f64 = 1e-5;

/// The GPU limited to [`LIMIT`] per binding and the unlimited one, shared by the tests
/// (compiling every pipeline takes the software adapter a while); `None` without a GPU.
fn gpus() -> Option<(Device, Device)> {
    static GPUS: OnceLock<Option<(Device, Device)>> = OnceLock::new();
    GPUS.get_or_init(|| {
        let full = common::gpu()?;
        let limited = device_with_storage_limit(LIMIT).expect("a device with a smaller limit");
        assert_eq!(max_storage_binding(&limited), Some(LIMIT));
        Some((limited, full))
    })
    .clone()
}

/// The same model (parameters from `seed`) on the limited GPU, the unlimited GPU and the
/// CPU, with the same dropout seed.
fn models(config: &RnnConfig, limited: &Device, full: &Device, seed: u64) -> [Rnn; 3] {
    let params = common::params(config, seed);
    [limited, full, &Device::cpu()].map(|device| {
        let mut rnn = Rnn::new(config.clone(), params.clone(), device).expect("model");
        rnn.set_dropout_seed(17);
        rnn
    })
}

const NAMES: [&str; 2] = ["unsplit GPU", "CPU"];

fn close(what: &str, got: &[f32], want: &[f32]) {
    common::assert_close(what, got, want, TOL);
}

fn close_arrays(what: &str, got: &Array3<f32>, want: &Array3<f32>) {
    assert_eq!(got.shape(), want.shape(), "{what}");
    close(what, &common::flat(got), &common::flat(want));
}

fn close_states(what: &str, got: &RnnState, want: &RnnState) {
    close_arrays(&format!("{what} h"), &got.h, &want.h);
    assert_eq!(got.c.is_some(), want.c.is_some(), "{what} c");
    if let (Some(g), Some(w)) = (&got.c, &want.c) {
        close_arrays(&format!("{what} c"), g, w);
    }
}

/// Lengths in `1..=max_len` until the batch has at least `tokens` positions.
fn lengths(tokens: usize, max_len: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::new();
    while out.iter().sum::<usize>() < tokens {
        out.push(1 + rng.below(max_len));
    }
    out
}

/// Random initial states for `config` and `batch` sequences.
fn initial_state(config: &RnnConfig, batch: usize, seed: u64) -> RnnState {
    let mut rng = SplitMix64::new(seed);
    let shape = (config.num_units(), batch, config.hidden_size);
    let mut draw = || Array3::from_shape_simple_fn(shape, || 0.5 * rng.normal());
    let h = draw();
    let c = config.cell.has_c().then(draw);
    RnnState { h, c }
}

/// Asserts that `batch` cannot run in one piece on the limited device: one layer's
/// states alone exceed the limit.
fn assert_needs_split(label: &str, config: &RnnConfig, batch: &SequenceBatch) {
    let bytes = batch.tokens() * config.state_width() * 4;
    assert!(
        bytes as u64 > LIMIT,
        "{label}: the batch's states ({bytes} bytes) fit the limit: nothing to split"
    );
}

/// Forward pass, loss and gradients (from `initial`), then three clipped Adam steps
/// (with dropout where the config has it) on the limited GPU, compared with the
/// unlimited GPU and the CPU at every step.
fn check_case(label: &str, config: &RnnConfig, batch: &SequenceBatch, initial: Option<&RnnState>) {
    let Some((limited, full)) = gpus() else {
        return;
    };
    assert_needs_split(label, config, batch);
    let [mut split, mut references @ ..] = models(config, &limited, &full, 5);
    let got = split.forward_from(batch, initial).expect("split forward");
    for (name, reference) in NAMES.iter().zip(&mut references) {
        let want = reference.forward_from(batch, initial).expect("forward");
        let what = format!("{label}: forward against the {name}:");
        close_arrays(&format!("{what} outputs"), &got.outputs, &want.outputs);
        close_arrays(
            &format!("{what} final_hidden"),
            &got.final_hidden,
            &want.final_hidden,
        );
        assert_eq!(got.final_cell.is_some(), want.final_cell.is_some());
        if let (Some(g), Some(w)) = (&got.final_cell, &want.final_cell) {
            close_arrays(&format!("{what} final_cell"), g, w);
        }
        close(&format!("{what} loss"), &[got.loss], &[want.loss]);
    }
    let (loss, grads) = split
        .loss_and_gradients_from(batch, initial)
        .expect("split gradients");
    for (name, reference) in NAMES.iter().zip(&mut references) {
        let (want_loss, want) = reference
            .loss_and_gradients_from(batch, initial)
            .expect("gradients");
        let what = format!("{label}: gradients against the {name}");
        close(&format!("{what}: loss"), &[loss], &[want_loss]);
        common::assert_params_close(&what, &grads, &want, TOL);
    }
    let mut optimizers: [Optimizer; 3] =
        std::array::from_fn(|_| Optimizer::adam(0.02).clip_grad_norm(0.5));
    let [split_opt, ref_opts @ ..] = &mut optimizers;
    for step in 0..3 {
        let got = split.train_step(batch, split_opt).expect("split step");
        for ((name, reference), opt) in NAMES.iter().zip(&mut references).zip(&mut *ref_opts) {
            let want = reference.train_step(batch, opt).expect("step");
            let what = format!("{label}: step {step} against the {name}");
            close(&format!("{what}: loss"), &[got], &[want]);
            common::assert_params_close(
                &what,
                &split.params().unwrap(),
                &reference.params().unwrap(),
                TOL,
            );
        }
    }
    assert_eq!(split_opt.steps(), 3);
    if !config.bidirectional {
        // truncated BPTT: initial states split by sequence, final states assembled
        let initial = initial_state(config, batch.len(), 9);
        let (got_loss, got) = split
            .train_step_from(batch, Some(&initial), split_opt)
            .expect("split step from a state");
        for ((name, reference), opt) in NAMES.iter().zip(&mut references).zip(&mut *ref_opts) {
            let (want_loss, want) = reference
                .train_step_from(batch, Some(&initial), opt)
                .expect("step from a state");
            let what = format!("{label}: train_step_from against the {name}");
            close(&format!("{what}: loss"), &[got_loss], &[want_loss]);
            close_states(&format!("{what}: final state"), &got, &want);
            common::assert_params_close(
                &what,
                &split.params().unwrap(),
                &reference.params().unwrap(),
                TOL,
            );
        }
    }
}

#[test]
fn per_step_classes_on_dense_inputs_from_an_initial_state() {
    let config = common::config(3, 8, 4, 2, false, false);
    let lengths = lengths(600, 24, 1);
    let batch = common::random_batch(&config, &lengths, false, 2);
    let initial = initial_state(&config, batch.len(), 3);
    check_case("tanh per-step classes", &config, &batch, Some(&initial));
}

#[test]
fn last_step_values() {
    let config = common::config(3, 8, 2, 1, true, true);
    let lengths = lengths(600, 30, 4);
    let batch = common::random_batch(&config, &lengths, true, 5);
    check_case("relu last-step values", &config, &batch, None);
}

#[test]
fn per_step_values_and_last_step_classes_of_gated_bidirectional_models() {
    let lstm = RnnConfig::new(3, 8, 2)
        .cell(Cell::Lstm)
        .bidirectional(true)
        .num_layers(2);
    let batch = common::random_batch(&lstm, &lengths(300, 16, 6), true, 7);
    check_case("bidirectional LSTM per-step values", &lstm, &batch, None);
    let gru = RnnConfig::new(3, 8, 3)
        .cell(Cell::Gru)
        .bidirectional(true)
        .head(Head::LastStep);
    let batch = common::random_batch(&gru, &lengths(300, 16, 8), false, 9);
    check_case("bidirectional GRU last-step classes", &gru, &batch, None);
}

#[test]
fn token_inputs() {
    let (vocab, classes) = (7, 3);
    let config = RnnConfig::new(vocab, 8, classes).cell(Cell::Gru);
    let lengths = lengths(600, 24, 10);
    let mut rng = SplitMix64::new(11);
    let tokens = lengths
        .iter()
        .map(|&len| (0..len).map(|_| rng.below(vocab) as u32).collect())
        .collect();
    let targets = lengths
        .iter()
        .map(|&len| (0..len).map(|_| rng.below(classes) as u32).collect())
        .collect();
    let batch = SequenceBatch::from_tokens(tokens, vocab, Targets::Classes(targets)).unwrap();
    check_case("GRU tokens", &config, &batch, None);
}

#[test]
fn dropout_masks_are_the_whole_batch_ones() {
    // each chunk draws the masks of its rows in the whole batch: the same training steps
    // as the CPU path with the same seed
    let config = common::config(3, 8, 4, 3, false, false).dropout(0.3);
    let batch = common::random_batch(&config, &lengths(600, 24, 12), false, 13);
    check_case("tanh dropout", &config, &batch, None);
    // and the mask before the readout, of each head
    for head in [Head::PerStep, Head::LastStep] {
        let config = config.clone().output_dropout(0.25).head(head);
        let batch = common::random_batch(&config, &lengths(600, 24, 12), false, 14);
        check_case(
            &format!("tanh output dropout {head:?}"),
            &config,
            &batch,
            None,
        );
    }
}

#[test]
fn encoder_states_and_gradients() {
    let Some((limited, full)) = gpus() else {
        return;
    };
    let config = RnnConfig::new(3, 8, 0)
        .cell(Cell::Gru)
        .bidirectional(true)
        .num_layers(2)
        .head(Head::None)
        .dropout(0.25);
    let lengths = lengths(300, 16, 14);
    let batch = common::random_batch(&config, &lengths, false, 15);
    assert_needs_split("encoder", &config, &batch);
    let mut rng = SplitMix64::new(16);
    let max_len = batch.max_len();
    let grad = Array3::from_shape_simple_fn((batch.len(), max_len, config.state_width()), || {
        rng.normal()
    });
    let [mut split, mut references @ ..] = models(&config, &limited, &full, 17);
    for training in [false, true] {
        for rnn in std::iter::once(&mut split).chain(&mut references) {
            rnn.set_training(training);
        }
        let got = split.encode(&batch).expect("split encode");
        let got_grads = split.backward(&batch, &grad).expect("split backward");
        for (name, reference) in NAMES.iter().zip(&mut references) {
            let what = format!("encoder (training {training}) against the {name}");
            let want = reference.encode(&batch).expect("encode");
            close_arrays(&format!("{what}: states"), &got.states, &want.states);
            close_arrays(
                &format!("{what}: final_hidden"),
                &got.final_hidden,
                &want.final_hidden,
            );
            let want = reference.backward(&batch, &grad).expect("backward");
            common::assert_params_close(&what, &got_grads.params, &want.params, TOL);
            assert_eq!(got_grads.inputs.len(), want.inputs.len());
            for (i, (g, w)) in got_grads.inputs.iter().zip(&want.inputs).enumerate() {
                assert_eq!(g.shape(), w.shape(), "{what}: input gradient {i}");
                close(
                    &format!("{what}: input gradient {i}"),
                    &common::flat(g),
                    &common::flat(w),
                );
            }
        }
    }
}

#[test]
fn a_sequence_too_long_alone_is_refused_clearly() {
    let Some((limited, _)) = gpus() else { return };
    let config = common::config(3, 8, 4, 1, false, false);
    // 600 steps of 8 states are 19,200 bytes: past the limit even alone
    let batch = common::random_batch(&config, &[5, 600, 7], false, 20);
    let mut rnn = Rnn::new(config.clone(), common::params(&config, 21), &limited).unwrap();
    let before = rnn.params().unwrap();
    let mut adam = Optimizer::adam(0.01);
    let check = |e: Error| {
        let message = e.to_string();
        assert!(
            matches!(e, Error::ExceedsDeviceLimit { .. })
                && message.contains("for a single sequence")
                && message.contains("shorter sequences"),
            "{message}"
        );
    };
    check(rnn.forward(&batch).unwrap_err());
    check(rnn.loss_and_gradients(&batch).unwrap_err());
    check(rnn.train_step(&batch, &mut adam).unwrap_err());
    // the refused step changed nothing, and the model still runs what fits
    assert_eq!(adam.steps(), 0);
    assert_eq!(
        common::param_bits(&rnn.params().unwrap()),
        common::param_bits(&before)
    );
    let fits = common::random_batch(&config, &[5, 60, 7], false, 22);
    rnn.train_step(&fits, &mut adam).expect("a batch that fits");
    assert_eq!(adam.steps(), 1);
}
