//! Bad input: every kind gets its own `Error` variant, a message that names the problem,
//! no panic, and changes nothing (parameters and optimizer state stay as they were).

use crate::common;

use common::{config, param_bits, params, random_batch};
use std::path::PathBuf;
use unfold::ndarray::{Array1, Array2, ShapeBuilder};
use unfold::{Device, Error, Optimizer, Rnn, RnnConfig, RnnParams, SequenceBatch, Targets};

fn model(c: &RnnConfig) -> Rnn {
    Rnn::new(c.clone(), params(c, 1), &Device::cpu()).unwrap()
}

fn ones(rows: usize, cols: usize) -> Array2<f32> {
    Array2::from_elem((rows, cols), 0.5)
}

/// The error's message must mention each of `words`.
fn assert_says(e: &Error, words: &[&str]) {
    let msg = e.to_string();
    for w in words {
        assert!(msg.contains(w), "message {msg:?} does not mention {w:?}");
    }
    // an std::error::Error with a non-empty message
    let as_std: &dyn std::error::Error = e;
    assert!(!as_std.to_string().is_empty());
}

/// `forward`, `loss_and_gradients` and `train_step` on `batch` all fail with an error
/// that `check` accepts, and leave the parameters and the optimizer untouched; afterwards
/// the optimizer still works as a fresh one would.
fn assert_refused(c: &RnnConfig, batch: &SequenceBatch, check: impl Fn(&Error)) {
    let mut rnn = model(c);
    let before = rnn.params().unwrap();
    check(
        &rnn.forward(batch)
            .expect_err("forward accepted a bad batch"),
    );
    check(
        &rnn.loss_and_gradients(batch)
            .expect_err("loss_and_gradients accepted a bad batch"),
    );
    let mut adam = Optimizer::adam(1e-2);
    check(
        &rnn.train_step(batch, &mut adam)
            .expect_err("train_step accepted a bad batch"),
    );
    assert_eq!(
        rnn.params().unwrap(),
        before,
        "a refused batch changed the parameters"
    );
    assert_eq!(
        adam.steps(),
        0,
        "a refused batch counted as an optimizer step"
    );
    // the optimizer's state is untouched: a good step now equals a good step of a fresh
    // optimizer on a fresh model
    let good = random_batch(c, &[3, 2], false, 5);
    rnn.train_step(&good, &mut adam).unwrap();
    let mut fresh = model(c);
    fresh.train_step(&good, &mut Optimizer::adam(1e-2)).unwrap();
    assert_eq!(rnn.params().unwrap(), fresh.params().unwrap());
}

#[test]
fn empty_batch() {
    for targets in [Targets::Classes(vec![]), Targets::Values(vec![])] {
        let e = SequenceBatch::new(vec![], targets).unwrap_err();
        assert!(matches!(e, Error::EmptyBatch), "{e:?}");
        assert_says(&e, &["empty batch"]);
    }
}

#[test]
fn zero_length_sequence() {
    let inputs = vec![ones(3, 2), ones(2, 2), ones(0, 2), ones(1, 2)];
    let targets = Targets::Classes(vec![vec![0; 3], vec![0; 2], vec![], vec![0]]);
    let e = SequenceBatch::new(inputs, targets).unwrap_err();
    assert!(matches!(e, Error::ZeroLengthSequence { index: 2 }), "{e:?}");
    assert_says(&e, &["sequence 2", "length 0"]);
}

#[test]
fn feature_width_differs_from_input_size() {
    let c = RnnConfig::new(3, 4, 2);
    let batch = SequenceBatch::new(
        vec![ones(3, 5), ones(2, 5)],
        Targets::Classes(vec![vec![0; 3], vec![1; 2]]),
    )
    .unwrap();
    assert_refused(&c, &batch, |e| {
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
        assert_says(e, &["input_size", "3", "5"]);
    });
}

#[test]
fn sequences_of_differing_widths() {
    let e = SequenceBatch::new(
        vec![ones(3, 2), ones(2, 2), ones(4, 3)],
        Targets::Classes(vec![vec![0; 3], vec![0; 2], vec![0; 4]]),
    )
    .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    assert_says(&e, &["inputs[2]", "width", "2", "3"]);
}

#[test]
fn target_count_differs_from_sequence_count() {
    let e = SequenceBatch::new(
        vec![ones(3, 2), ones(2, 2)],
        Targets::Classes(vec![vec![0; 3]]),
    )
    .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    assert_says(&e, &["number of target sequences", "2", "1"]);
    let e = SequenceBatch::new(
        vec![ones(3, 2)],
        Targets::Values(vec![ones(3, 2), ones(2, 2)]),
    )
    .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    assert_says(&e, &["number of target sequences"]);
}

#[test]
fn target_length_differs_from_sequence_length() {
    // neither one per step nor one per sequence: refused when the batch is built
    let e = SequenceBatch::new(
        vec![ones(3, 2), ones(4, 2)],
        Targets::Classes(vec![vec![0; 3], vec![0; 2]]),
    )
    .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    assert_says(&e, &["targets[1] length", "4", "2"]);
    let e = SequenceBatch::new(
        vec![ones(3, 2), ones(4, 2)],
        Targets::Values(vec![ones(3, 2), ones(5, 2)]),
    )
    .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    assert_says(&e, &["targets[1] length"]);
}

#[test]
fn targets_of_the_wrong_head() {
    // one target per sequence for a per-step head: refused against the model
    let per_step = RnnConfig::new(2, 4, 3);
    let batch = SequenceBatch::new(
        vec![ones(3, 2), ones(1, 2)],
        Targets::Classes(vec![vec![0], vec![1]]),
    )
    .unwrap();
    assert_refused(&per_step, &batch, |e| {
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
        assert_says(e, &["targets[0] length", "per-step"]);
    });
    // one target per step for a last-step head
    let last_step = config(2, 4, 3, 1, false, true);
    let batch = SequenceBatch::new(
        vec![ones(1, 2), ones(3, 2)],
        Targets::Classes(vec![vec![0], vec![1, 2, 0]]),
    )
    .unwrap();
    assert_refused(&last_step, &batch, |e| {
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
        assert_says(e, &["targets[1] length", "last-step"]);
    });
}

#[test]
fn value_targets_of_the_wrong_width() {
    let c = RnnConfig::new(2, 4, 3);
    let batch = SequenceBatch::new(
        vec![ones(3, 2), ones(2, 2)],
        Targets::Values(vec![ones(3, 4), ones(2, 4)]),
    )
    .unwrap();
    assert_refused(&c, &batch, |e| {
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
        assert_says(e, &["output_size", "3", "4"]);
    });
    // and value targets of differing widths within one batch
    let e = SequenceBatch::new(
        vec![ones(3, 2), ones(2, 2)],
        Targets::Values(vec![ones(3, 3), ones(2, 4)]),
    )
    .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    assert_says(&e, &["targets[1] width"]);
}

#[test]
fn class_index_out_of_range() {
    let c = RnnConfig::new(2, 4, 3);
    let batch = SequenceBatch::new(
        vec![ones(3, 2), ones(4, 2)],
        Targets::Classes(vec![vec![0, 1, 2], vec![2, 0, 3, 1]]),
    )
    .unwrap();
    assert_refused(&c, &batch, |e| {
        assert!(
            matches!(
                e,
                Error::ClassOutOfRange {
                    sequence: 1,
                    step: 2,
                    class: 3,
                    output_size: 3
                }
            ),
            "{e:?}"
        );
        assert_says(
            e,
            &["class target 3", "sequence 1", "step 2", "output_size is 3"],
        );
    });
}

#[test]
fn non_finite_inputs() {
    for (bad, word) in [
        (f32::NAN, "NaN"),
        (f32::INFINITY, "inf"),
        (f32::NEG_INFINITY, "-inf"),
    ] {
        let mut x = ones(4, 2);
        x[[2, 1]] = bad;
        let e = SequenceBatch::new(
            vec![ones(3, 2), x],
            Targets::Classes(vec![vec![0; 3], vec![0; 4]]),
        )
        .unwrap_err();
        assert!(matches!(e, Error::NonFinite { .. }), "{e:?}");
        assert_says(&e, &["non-finite", "inputs[1]", "row 2", "column 1", word]);
    }
}

#[test]
fn non_finite_value_target() {
    let mut y = ones(3, 2);
    y[[1, 0]] = f32::NAN;
    let e = SequenceBatch::new(
        vec![ones(2, 2), ones(3, 2)],
        Targets::Values(vec![ones(2, 2), y]),
    )
    .unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e:?}");
    assert_says(&e, &["non-finite", "targets[1]", "NaN"]);
}

#[test]
fn zero_sizes_in_the_config() {
    let base = RnnConfig::new(2, 3, 4);
    let cases = [
        (
            "input_size",
            RnnConfig {
                input_size: 0,
                ..base.clone()
            },
        ),
        (
            "hidden_size",
            RnnConfig {
                hidden_size: 0,
                ..base.clone()
            },
        ),
        (
            "output_size",
            RnnConfig {
                output_size: 0,
                ..base.clone()
            },
        ),
        ("num_layers", base.clone().num_layers(0)),
    ];
    for (what, c) in cases {
        // parameters shaped for the (bad) config, so that only the config is wrong
        let p = RnnParams::<f32>::zeros(&c);
        let e = Rnn::new(c, p, &Device::cpu())
            .err()
            .expect("a zero size was accepted");
        assert!(
            matches!(e, Error::InvalidConfig { what: w, .. } if w == what),
            "{what}: {e:?}"
        );
        assert_says(&e, &["invalid configuration", what, "at least 1", "0"]);
    }
}

#[test]
fn params_that_do_not_fit_the_config() {
    let c = config(3, 4, 2, 2, false, false);
    let good = params(&c, 1);
    type Edit = fn(&mut RnnParams);
    let cases: [(&str, Edit); 8] = [
        ("number of layers", |p| {
            p.layers.pop();
        }),
        ("layers[0].w_ih", |p| {
            p.layers[0].w_ih = Array2::zeros((4, 2))
        }),
        ("layers[1].w_ih", |p| {
            p.layers[1].w_ih = Array2::zeros((4, 3))
        }),
        ("layers[1].w_hh", |p| {
            p.layers[1].w_hh = Array2::zeros((4, 5))
        }),
        ("layers[0].b_ih", |p| p.layers[0].b_ih = Array1::zeros(5)),
        ("layers[0].b_hh", |p| p.layers[0].b_hh = Array1::zeros(5)),
        ("w_out", |p| p.w_out = Array2::zeros((3, 4))),
        ("b_out", |p| p.b_out = Array1::zeros(3)),
    ];
    for (what, edit) in cases {
        let mut p = good.clone();
        edit(&mut p);
        let e = Rnn::new(c.clone(), p, &Device::cpu())
            .err()
            .expect("misshapen parameters were accepted");
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{what}: {e:?}");
        assert_says(&e, &["shape mismatch", what]);
    }
    // and a NaN parameter
    let mut p = good;
    p.layers[1].w_hh[[2, 3]] = f32::NAN;
    let e = Rnn::new(c, p, &Device::cpu())
        .err()
        .expect("a NaN parameter was accepted");
    assert!(matches!(e, Error::NonFinite { .. }), "{e:?}");
    assert_says(&e, &["non-finite", "weight_hh_l1", "NaN"]);
}

#[test]
fn bad_optimizer_hyper_parameters() {
    let c = RnnConfig::new(2, 4, 3);
    let batch = random_batch(&c, &[3, 2], false, 2);
    let cases = [
        ("learning rate", Optimizer::sgd(-0.1)),
        ("learning rate", Optimizer::sgd(f32::NAN)),
        ("learning rate", Optimizer::adam(-1e-3)),
        ("learning rate", Optimizer::sgd_momentum(f32::INFINITY, 0.9)),
        ("momentum", Optimizer::sgd_momentum(0.1, 1.5)),
        ("momentum", Optimizer::sgd_momentum(0.1, -0.5)),
        ("max_norm", Optimizer::sgd(0.1).clip_grad_norm(0.0)),
        ("max_norm", Optimizer::adam(1e-3).clip_grad_norm(-1.0)),
        ("max_norm", Optimizer::adam(1e-3).clip_grad_norm(f32::NAN)),
    ];
    for (what, mut opt) in cases {
        let mut rnn = model(&c);
        let before = rnn.params().unwrap();
        let e = rnn
            .train_step(&batch, &mut opt)
            .expect_err("bad hyper-parameter accepted");
        assert!(matches!(e, Error::InvalidConfig { .. }), "{what}: {e:?}");
        assert_says(&e, &["invalid configuration", what]);
        assert_eq!(rnn.params().unwrap(), before, "{what}: parameters changed");
        assert_eq!(opt.steps(), 0, "{what}: counted as a step");
    }
}

/// A model whose readout overflows f32: outputs are infinite, so the squared error is
/// not finite.
fn overflowing_model(c: &RnnConfig) -> Rnn {
    let mut p = params(c, 1);
    p.w_out.fill(3e38);
    Rnn::new(c.clone(), p, &Device::cpu()).unwrap()
}

#[test]
fn non_finite_loss_is_refused_and_changes_nothing() {
    let c = RnnConfig::new(2, 8, 2);
    let batch = random_batch(&c, &[3, 2], true, 3);
    for mut opt in [
        Optimizer::sgd(0.1),
        Optimizer::adam(1e-3),
        Optimizer::sgd_momentum(0.1, 0.9),
    ] {
        let mut rnn = overflowing_model(&c);
        assert!(
            !rnn.forward(&batch).unwrap().loss.is_finite(),
            "the setup should overflow"
        );
        let before = param_bits(&rnn.params().unwrap());
        let e = rnn
            .train_step(&batch, &mut opt)
            .expect_err("a non-finite step was applied");
        assert!(matches!(e, Error::NonFinite { .. }), "{e:?}");
        assert_says(&e, &["non-finite", "training step", "not updated"]);
        assert_eq!(
            param_bits(&rnn.params().unwrap()),
            before,
            "a refused step changed the parameters"
        );
        assert_eq!(
            opt.steps(),
            0,
            "a refused step counted as an optimizer step"
        );
    }
}

#[test]
fn a_refused_step_leaves_the_optimizer_tied_as_before() {
    // a refused step changes nothing, which parameters the optimizer belongs to included
    let c = RnnConfig::new(2, 8, 2);
    let batch = random_batch(&c, &[3, 2], true, 3);
    let other = RnnConfig::new(3, 4, 2);
    let other_batch = random_batch(&other, &[2, 2], true, 4);
    // refused on its first step: still fresh, free to serve another model
    let mut adam = Optimizer::adam(1e-3);
    overflowing_model(&c)
        .train_step(&batch, &mut adam)
        .expect_err("an overflowing step");
    model(&other)
        .train_step(&other_batch, &mut adam)
        .expect("a fresh optimizer, refused once");
    // tied by an applied step: still tied after a refused one
    let mut adam = Optimizer::adam(1e-3);
    model(&c).train_step(&batch, &mut adam).unwrap();
    overflowing_model(&c)
        .train_step(&batch, &mut adam)
        .expect_err("an overflowing step");
    let e = model(&other)
        .train_step(&other_batch, &mut adam)
        .expect_err("an optimizer of another model");
    assert!(matches!(e, Error::OptimizerMismatch(_)), "{e:?}");
}

#[test]
fn diverging_training_is_refused_and_changes_nothing() {
    // a huge learning rate: the first steps blow the parameters up, until a step's loss
    // or gradients are no longer finite; that step is refused and leaves the parameters
    // as they were
    for (kind, mut opt) in [
        ("sgd", Optimizer::sgd(1e30)),
        ("adam", Optimizer::adam(1e30)),
    ] {
        let c = RnnConfig::new(2, 8, 2);
        let batch = random_batch(&c, &[3, 2], true, 4);
        let mut rnn = model(&c);
        let mut refused = None;
        for step in 0..10 {
            let before = param_bits(&rnn.params().unwrap());
            let steps_before = opt.steps();
            match rnn.train_step(&batch, &mut opt) {
                Ok(loss) => assert!(loss.is_finite(), "{kind} step {step}: Ok with loss {loss}"),
                Err(e) => {
                    assert!(
                        matches!(e, Error::NonFinite { .. }),
                        "{kind} step {step}: {e:?}"
                    );
                    assert_says(&e, &["non-finite", "training step"]);
                    assert_eq!(
                        param_bits(&rnn.params().unwrap()),
                        before,
                        "{kind}: the refused step changed the parameters"
                    );
                    assert_eq!(
                        opt.steps(),
                        steps_before,
                        "{kind}: the refused step counted"
                    );
                    refused = Some(step);
                    break;
                }
            }
        }
        let step =
            refused.unwrap_or_else(|| panic!("{kind}: lr 1e30 never produced a non-finite step"));
        assert!(
            step > 0,
            "{kind}: the first step cannot diverge, the parameters were finite"
        );
    }
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bad_input-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn assert_bad_checkpoint(path: &std::path::Path, words: &[&str]) {
    let e = RnnParams::load(path).expect_err("a bad checkpoint loaded");
    assert!(
        matches!(&e, Error::Checkpoint { path: p, .. } if p == path),
        "{e:?}"
    );
    assert_says(&e, &["invalid checkpoint"]);
    assert_says(&e, words);
    assert!(
        e.to_string().contains(&path.display().to_string()),
        "message does not name the file: {e}"
    );
}

#[test]
fn truncated_checkpoint() {
    let dir = scratch("truncated");
    let c = config(3, 4, 2, 2, false, false);
    let path = dir.join("model.safetensors");
    params(&c, 1).save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for keep in [0, 4, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        let cut = dir.join(format!("cut{keep}.safetensors"));
        std::fs::write(&cut, &bytes[..keep]).unwrap();
        assert_bad_checkpoint(&cut, &["not a valid safetensors file"]);
    }
}

#[test]
fn corrupt_checkpoint() {
    let dir = scratch("corrupt");
    let mut rng = unfold::rng::SplitMix64::new(9);
    for (k, len) in [1usize, 7, 64, 1000].into_iter().enumerate() {
        let path = dir.join(format!("random{k}.safetensors"));
        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        std::fs::write(&path, bytes).unwrap();
        assert_bad_checkpoint(&path, &["not a valid safetensors file"]);
    }
}

#[test]
fn checkpoint_with_a_missing_tensor() {
    let dir = scratch("missing");
    let c = config(3, 4, 2, 2, false, false);
    let p = params(&c, 1);
    // the complete file loads (so what follows tests only the missing tensor)
    let complete = dir.join("complete.safetensors");
    common::write_pytorch_checkpoint(&complete, &p, "");
    assert_eq!(RnnParams::load(&complete).unwrap(), p);
    for missing in [
        "out.bias",
        "out.weight",
        "rnn.bias_hh_l1",
        "rnn.weight_hh_l1",
        "rnn.bias_ih_l0",
        "rnn.weight_ih_l0",
    ] {
        let path = dir.join(format!("without-{missing}.safetensors"));
        common::write_pytorch_checkpoint(&path, &p, missing);
        assert_bad_checkpoint(&path, &["missing tensor", missing]);
    }
}

#[test]
fn missing_checkpoint_file() {
    let dir = scratch("no-file");
    let path = dir.join("nothing-here.safetensors");
    let e = RnnParams::load(&path).expect_err("a missing file loaded");
    assert!(
        matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{e:?}"
    );
    assert_says(&e, &["nothing-here.safetensors"]);
    assert!(
        std::error::Error::source(&e).is_some(),
        "an Io error keeps its cause"
    );
}

#[test]
fn optimizer_state_of_another_model() {
    // an optimizer whose moments were made for a model of another size
    let small = RnnConfig::new(2, 4, 3);
    let big = RnnConfig::new(2, 6, 3);
    let mut adam = Optimizer::adam(1e-2);
    model(&small)
        .train_step(&random_batch(&small, &[3, 2], false, 6), &mut adam)
        .unwrap();
    assert_eq!(adam.steps(), 1);
    let mut rnn = model(&big);
    let before = rnn.params().unwrap();
    let e = rnn
        .train_step(&random_batch(&big, &[3, 2], false, 7), &mut adam)
        .expect_err("mismatched optimizer state accepted");
    assert!(matches!(e, Error::OptimizerMismatch(_)), "{e:?}");
    assert_says(
        &e,
        &[
            "optimizer state",
            &small.num_params().to_string(),
            &big.num_params().to_string(),
        ],
    );
    assert_eq!(rnn.params().unwrap(), before);
    assert_eq!(adam.steps(), 1);
}

/// Bitwise copy of an optimizer's state: step count and moments (`None` while fresh).
fn state_bits(opt: &Optimizer) -> Option<(u64, Vec<u32>, Vec<u32>)> {
    opt.export_state().unwrap().map(|s| {
        let b = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        (s.steps, b(&s.m), b(&s.v))
    })
}

fn sgd_momentum(lr: f32) -> Optimizer {
    Optimizer::sgd_momentum(lr, 0.9)
}

/// Makes an optimizer with a learning rate.
type WithLr = fn(f32) -> Optimizer;

/// Each optimizer rule.
const RULES: [(&str, WithLr); 3] = [
    ("sgd", Optimizer::sgd),
    ("sgd_momentum", sgd_momentum),
    ("adam", Optimizer::adam),
];

/// `train_step`, or `train_step_from` when `from`, keeping only the loss.
fn step(
    rnn: &mut Rnn,
    batch: &SequenceBatch,
    opt: &mut Optimizer,
    from: bool,
) -> Result<f32, Error> {
    if from {
        rnn.train_step_from(batch, None, opt).map(|(loss, _)| loss)
    } else {
        rnn.train_step(batch, opt)
    }
}

/// The error of a step refused because its update would overflow the parameters.
fn assert_overflow_refused(e: &Error, what: &str) {
    assert!(matches!(e, Error::NonFinite { .. }), "{what}: {e:?}");
    assert_says(
        e,
        &[
            "non-finite",
            "training step",
            "would make the parameters",
            "not updated",
        ],
    );
}

#[test]
fn an_update_that_overflows_the_parameters_is_refused() {
    // loss and gradients are finite, the learning rate is finite and valid, but lr · g
    // overflows f32 (for Adam, lr / (1 - beta1) already does): the step is refused, says
    // why, and changes nothing — parameters, moments, step count — on either device; the
    // optimizer then goes on as if the refused step had never been tried
    let c = RnnConfig::new(2, 8, 2);
    let batch = SequenceBatch::new(
        vec![ones(3, 2)],
        Targets::Values(vec![Array2::from_elem((3, 2), 100.0)]),
    )
    .unwrap();
    for device in common::devices() {
        for (kind, make) in RULES {
            let what = format!("{kind} on {}", device.describe());
            let new_model = || Rnn::new(c.clone(), params(&c, 1), &device).unwrap();
            // refused as the very first step: the optimizer stays fresh
            let mut rnn = new_model();
            let before = param_bits(&rnn.params().unwrap());
            let mut fresh = make(f32::MAX);
            let e = rnn
                .train_step(&batch, &mut fresh)
                .expect_err(&format!("{what}: an overflowing first step was applied"));
            assert_overflow_refused(&e, &what);
            assert_eq!(
                param_bits(&rnn.params().unwrap()),
                before,
                "{what}: a refused first step changed the parameters"
            );
            assert_eq!(fresh.steps(), 0, "{what}: a refused first step counted");
            assert_eq!(
                state_bits(&fresh),
                None,
                "{what}: a refused first step left optimizer state"
            );

            // refused after a good step, when the moments are not zeros; `twin` never
            // sees the refused steps
            let (mut twin, mut twin_opt) = (new_model(), make(1e-3));
            let mut opt = make(1e-3);
            rnn.train_step(&batch, &mut opt).unwrap();
            twin.train_step(&batch, &mut twin_opt).unwrap();
            let before = param_bits(&rnn.params().unwrap());
            let state_before = state_bits(&opt);
            opt.set_lr(f32::MAX);
            for from in [false, true] {
                let e = step(&mut rnn, &batch, &mut opt, from)
                    .expect_err(&format!("{what}: an overflowing step was applied"));
                assert_overflow_refused(&e, &what);
                assert_eq!(
                    param_bits(&rnn.params().unwrap()),
                    before,
                    "{what}: a refused step changed the parameters"
                );
                assert_eq!(
                    state_bits(&opt),
                    state_before,
                    "{what}: a refused step changed the optimizer's state"
                );
            }
            assert_eq!(opt.steps(), 1, "{what}: a refused step counted");
            opt.set_lr(1e-3);
            rnn.train_step(&batch, &mut opt).unwrap();
            twin.train_step(&batch, &mut twin_opt).unwrap();
            assert_eq!(
                param_bits(&rnn.params().unwrap()),
                param_bits(&twin.params().unwrap()),
                "{what}: the refused steps changed what came after"
            );
            assert_eq!(state_bits(&opt), state_bits(&twin_opt), "{what}");
        }
    }
}

#[test]
fn an_update_that_overflows_adams_second_moment_is_refused() {
    // a huge readout makes finite logits of ~1e25 (the loss is finite: softmax
    // cross-entropy is computed stably) and finite gradients of ~1e24 reaching the
    // recurrent weights, whose squares overflow Adam's second moment; the parameters
    // themselves would stay finite (the step divides by an infinite denominator)
    let c = RnnConfig::new(2, 8, 2);
    let batch = random_batch(&c, &[3, 2], false, 3);
    let mut p = params(&c, 1);
    p.w_out.mapv_inplace(|w| w * 1e25);
    for device in common::devices() {
        let what = device.describe();
        let mut rnn = Rnn::new(c.clone(), p.clone(), &device).unwrap();
        let (loss, grads) = rnn.loss_and_gradients(&batch).unwrap();
        assert!(loss.is_finite(), "{what}: the setup needs a finite loss");
        assert!(
            grads.to_flat().iter().all(|g| g.is_finite()),
            "{what}: the setup needs finite gradients"
        );
        let mut adam = Optimizer::adam(1e-3);
        let before = param_bits(&rnn.params().unwrap());
        let e = rnn
            .train_step(&batch, &mut adam)
            .expect_err(&format!("{what}: an overflowing step was applied"));
        assert!(matches!(e, Error::NonFinite { .. }), "{what}: {e:?}");
        assert_says(
            &e,
            &[
                "non-finite",
                "training step",
                "not updated",
                "would make the optimizer's moments non-finite",
            ],
        );
        assert_eq!(
            param_bits(&rnn.params().unwrap()),
            before,
            "{what}: a refused step changed the parameters"
        );
        assert_eq!(adam.steps(), 0, "{what}: a refused step counted");
        assert_eq!(state_bits(&adam), None, "{what}: a refused step left state");
    }
}

/// The flat view of the parameters works on any memory layout, and a flat vector of the
/// wrong length is an error that changes nothing.
#[test]
fn flat_parameters_of_any_layout_and_the_wrong_length() {
    let c = config(3, 5, 2, 1, false, false);
    let p = params(&c, 4);
    // the same values, column-major
    let column_major = |a: &Array2<f32>| {
        let mut f = Array2::zeros(a.raw_dim().f());
        f.assign(a);
        f
    };
    let mut transposed = p.clone();
    transposed.w_out = column_major(&p.w_out);
    transposed.layers[0].w_hh = column_major(&p.layers[0].w_hh);
    assert!(!transposed.w_out.is_standard_layout());
    assert_eq!(transposed.to_flat(), p.to_flat());
    let mut q = RnnParams::zeros(&c);
    q.assign_flat(&transposed.to_flat()).unwrap();
    assert_eq!(q, p);
    for len in [0, p.len() - 1, p.len() + 5] {
        let e = q
            .assign_flat(&vec![1.0; len])
            .expect_err("a flat vector of the wrong length");
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
        assert_says(&e, &[&p.len().to_string(), &len.to_string()]);
        assert_eq!(q, p);
    }
}

/// A model too large for any machine is an error from `try_init`, not an abort.
#[test]
fn parameters_too_large_to_allocate() {
    let huge = RnnConfig::new(4, 1 << 20, 3).cell(unfold::Cell::Lstm);
    let e = RnnParams::try_init(&huge, 0).expect_err("17.6 TB of parameters");
    assert!(matches!(e, Error::InvalidConfig { .. }), "{e:?}");
    assert_says(&e, &["GB", &huge.num_params().to_string()]);
    let e = RnnParams::try_init(&RnnConfig::new(4, 0, 3), 0).expect_err("hidden 0");
    assert!(matches!(e, Error::InvalidConfig { .. }), "{e:?}");
    let small = config(3, 5, 2, 1, false, false);
    assert_eq!(
        RnnParams::try_init(&small, 7).unwrap(),
        RnnParams::init(&small, 7)
    );
}

/// A checkpoint is never written with a parameter no load would accept, and loading with
/// a bad config blames the config, not the file.
#[test]
fn checkpoints_of_non_finite_parameters_and_bad_configs() {
    let dir = scratch("non-finite-save");
    let c = config(3, 5, 2, 1, false, false);
    let mut p = params(&c, 2);
    let good = dir.join("good.safetensors");
    p.save_for(&c, &good).unwrap();
    p.w_out[[0, 0]] = f32::NAN;
    for save in [
        p.save_for(&c, dir.join("nan.safetensors")),
        p.save(dir.join("nan.safetensors")),
    ] {
        let e = save.expect_err("NaN parameters saved");
        assert!(matches!(e, Error::NonFinite { .. }), "{e:?}");
        assert_says(&e, &["w_out"]);
    }
    assert!(!dir.join("nan.safetensors").exists());
    let e = RnnParams::load_for(&c.clone().dropout(2.0), &good).expect_err("dropout 2");
    assert!(matches!(e, Error::InvalidConfig { .. }), "{e:?}");
    // the error names the file the caller gave, not the temporary one beside it
    let missing = dir.join("no/such/dir/x.safetensors");
    let e = params(&c, 2)
        .save_for(&c, &missing)
        .expect_err("no directory");
    assert_says(&e, &[&missing.display().to_string()]);
}

/// Imported optimizer state that no optimizer could have written is refused; gradients
/// that are not finite are refused by `apply_gradients` with a message about them.
#[test]
fn impossible_optimizer_state_and_non_finite_applied_gradients() {
    let c = config(3, 5, 2, 1, false, false);
    let n = params(&c, 1).len();
    let mut adam = Optimizer::adam(1e-3);
    let state = unfold::OptimizerState {
        layout: Vec::new(),
        steps: 3,
        m: vec![0.0; n],
        v: vec![-1.0; n],
    };
    let e = adam
        .import_state(state)
        .expect_err("negative second moments");
    assert_says(&e, &["second moments", "-1"]);
    let mut rnn = model(&c);
    let before = param_bits(&rnn.params().unwrap());
    let mut grads = params(&c, 3);
    grads.layers[0].b_hh[1] = f32::INFINITY;
    let e = rnn
        .apply_gradients(&grads, &mut Optimizer::sgd(0.1))
        .expect_err("infinite gradient applied");
    assert!(matches!(e, Error::NonFinite { .. }), "{e:?}");
    assert_says(&e, &["gradients", "not updated"]);
    assert!(!e.to_string().contains("loss"), "{e}");
    assert_eq!(param_bits(&rnn.params().unwrap()), before);
}
