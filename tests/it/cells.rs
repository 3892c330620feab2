//! The gated cells, bidirectional layers, dropout, initial (h, c) states and the encoder
//! API on the CPU reference path, each against an independent reference: central
//! differences in f64 (see gradcheck.rs for the tolerances' reasoning), the forward
//! direction run on reversed sequences, and the model with a readout.

use crate::common;

use common::{assert_close, random_batch};
use unfold::internals::cpu;
use unfold::ndarray::{s, Array2, Array3};
use unfold::rng::SplitMix64;
use unfold::{
    Cell, Device, Error, Head, Optimizer, Rnn, RnnConfig, RnnParams, RnnState, SequenceBatch,
    Targets,
};

use common::check_every_scalar;

/// Every recurrent tensor's gradient carries signal, so a check is not vacuous.
fn assert_recurrent_grads_nonzero(what: &str, g: &RnnParams<f64>) {
    for (name, t) in g.tensors() {
        if name.starts_with("layers") {
            let norm = t.iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!(norm > 1e-8, "{what}: gradient of {name} is zero");
        }
    }
}

fn cfg(cell: Cell, layers: usize, bidirectional: bool, head: Head) -> RnnConfig {
    RnnConfig::new(3, 4, 3)
        .cell(cell)
        .num_layers(layers)
        .bidirectional(bidirectional)
        .head(head)
}

#[test]
fn every_cell_and_direction_matches_finite_differences() {
    let mut seed = 100;
    for cell in [Cell::Lstm, Cell::Gru, Cell::Tanh, Cell::Relu] {
        for (layers, bidirectional, head, values) in [
            (1, false, Head::PerStep, false),
            (2, true, Head::LastStep, true),
            (2, false, Head::LastStep, false),
            (1, true, Head::PerStep, true),
        ] {
            seed += 1;
            let c = cfg(cell, layers, bidirectional, head);
            let batch = random_batch(&c, &[3, 1, 4, 2], values, seed);
            let p = RnnParams::init(&c, seed).cast::<f64>();
            let (loss, grads) = cpu::loss_and_gradients::<f64>(&c, &p, &batch);
            assert!(loss.is_finite());
            let what = format!("{cell} L{layers} bidirectional {bidirectional} {head:?}");
            let (worst, _) = check_every_scalar(&what, &p, &grads, |q| cpu::loss(&c, q, &batch));
            assert_recurrent_grads_nonzero(&what, &grads);
            eprintln!("{what}: max relative error {worst:.2e}");
        }
    }
}

#[test]
fn dropout_masks_are_part_of_the_gradient() {
    // between layers; before the readout of either head; both
    for (cell, layers, head, between, output) in [
        (Cell::Lstm, 3, Head::PerStep, 0.4, 0.0),
        (Cell::Gru, 3, Head::PerStep, 0.4, 0.0),
        (Cell::Tanh, 3, Head::PerStep, 0.4, 0.0),
        (Cell::Gru, 1, Head::PerStep, 0.0, 0.3),
        (Cell::Lstm, 2, Head::LastStep, 0.0, 0.3),
        (Cell::Tanh, 2, Head::PerStep, 0.4, 0.3),
    ] {
        let c = cfg(cell, layers, cell == Cell::Gru, head)
            .dropout(between)
            .output_dropout(output);
        let batch = random_batch(&c, &[4, 2, 3], false, 7);
        let p = RnnParams::init(&c, 8).cast::<f64>();
        let mut ws = cpu::Workspace::default();
        let seed = Some(99);
        let dropped = cpu::forward(&c, &p, &batch, None, seed, &mut ws);
        let grads = cpu::backward(&c, &p, &batch, &mut ws);
        let plain = cpu::loss(&c, &p, &batch);
        assert!(
            (dropped - plain).abs() > 1e-6,
            "{cell} {layers} {head:?}: dropout changed nothing ({dropped} vs {plain})"
        );
        let loss = |q: &RnnParams<f64>| {
            cpu::forward(&c, q, &batch, None, seed, &mut cpu::Workspace::default())
        };
        let what = format!("{cell} {layers} {head:?} with dropout {between}/{output}");
        check_every_scalar(&what, &p, &grads, loss);
    }
}

#[test]
fn dropout_applies_to_training_steps_only_and_follows_its_seed() {
    let c = cfg(Cell::Lstm, 2, false, Head::PerStep);
    let p = RnnParams::init(&c, 3);
    let batch = random_batch(&c, &[5, 3], false, 4);
    let dev = Device::cpu();
    let mut plain = Rnn::new(c.clone(), p.clone(), &dev).unwrap();
    let mut dropping = Rnn::new(c.clone().dropout(0.5), p.clone(), &dev).unwrap();
    // inference never drops
    assert_eq!(
        plain.forward(&batch).unwrap(),
        dropping.forward(&batch).unwrap()
    );
    let step = |rnn: &mut Rnn, seed: u64| {
        rnn.set_dropout_seed(seed);
        let mut sgd = Optimizer::sgd(0.1);
        rnn.train_step(&batch, &mut sgd).unwrap();
        rnn.params().unwrap()
    };
    let a = step(
        &mut Rnn::new(c.clone().dropout(0.5), p.clone(), &dev).unwrap(),
        1,
    );
    let b = step(
        &mut Rnn::new(c.clone().dropout(0.5), p.clone(), &dev).unwrap(),
        1,
    );
    let other = step(
        &mut Rnn::new(c.clone().dropout(0.5), p.clone(), &dev).unwrap(),
        2,
    );
    let none = step(&mut plain, 1);
    assert_eq!(a, b, "one seed, one trajectory");
    assert_ne!(a, other, "another seed draws other masks");
    assert_ne!(a, none, "the masks change the step");
    // one layer has nothing between layers to drop
    let one = cfg(Cell::Gru, 1, true, Head::PerStep);
    let p1 = RnnParams::init(&one, 5);
    let with = step(
        &mut Rnn::new(one.clone().dropout(0.5), p1.clone(), &dev).unwrap(),
        1,
    );
    let without = step(&mut Rnn::new(one.clone(), p1.clone(), &dev).unwrap(), 1);
    assert_eq!(with, without);
    // but it has a readout's input to drop
    let out = |p| {
        step(
            &mut Rnn::new(one.clone().output_dropout(p), p1.clone(), &dev).unwrap(),
            1,
        )
    };
    assert_ne!(out(0.5), without);
    assert_eq!(out(0.5), out(0.5));
    assert_ne!(out(0.5), out(0.2));
}

#[test]
fn initial_states_carry_h_and_c_into_the_gradient() {
    // both directions: the reverse one starts rows from the initial state at every step
    // where a sequence ends
    for (cell, bidirectional) in [(Cell::Lstm, false), (Cell::Gru, false), (Cell::Lstm, true)] {
        let c = cfg(cell, 2, bidirectional, Head::PerStep);
        let batch = random_batch(&c, &[3, 1, 2], true, 12);
        let p = RnnParams::init(&c, 13).cast::<f64>();
        let mut rng = SplitMix64::new(14);
        let units = c.num_units();
        let mut state = || Array3::from_shape_simple_fn((units, 3, 4), || 0.5 * rng.normal());
        let initial = RnnState {
            h: state(),
            c: (cell == Cell::Lstm).then(&mut state),
        };
        let mut ws = cpu::Workspace::default();
        cpu::forward(&c, &p, &batch, Some(&initial), None, &mut ws);
        let grads = cpu::backward(&c, &p, &batch, &mut ws);
        let loss = |q: &RnnParams<f64>| {
            cpu::forward(
                &c,
                q,
                &batch,
                Some(&initial),
                None,
                &mut cpu::Workspace::default(),
            )
        };
        let what = format!("{cell} bidirectional {bidirectional} from an initial state");
        check_every_scalar(&what, &p, &grads, loss);
        // and the state matters
        assert!((loss(&p) - cpu::loss(&c, &p, &batch)).abs() > 1e-6);
    }
}

#[test]
fn a_carried_lstm_state_continues_the_sequence() {
    let c = cfg(Cell::Lstm, 2, false, Head::PerStep);
    let mut rnn = Rnn::new(c.clone(), RnnParams::init(&c, 2), &Device::cpu()).unwrap();
    let whole = random_batch(&c, &[7, 7], false, 3);
    let part = |r: std::ops::Range<usize>| {
        let x = whole
            .inputs()
            .iter()
            .map(|x| x.slice(s![r.clone(), ..]).to_owned())
            .collect();
        SequenceBatch::inputs_only(x).unwrap()
    };
    let all = rnn.forward(&whole).unwrap();
    let first = rnn.forward(&part(0..3)).unwrap();
    let state = RnnState {
        h: first.final_hidden,
        c: first.final_cell,
    };
    let rest = rnn.forward_from(&part(3..7), Some(&state)).unwrap();
    assert!(rest.loss.is_nan(), "no targets, no loss");
    let want = all.outputs.slice(s![.., 3.., ..]).to_owned();
    assert_close(
        "outputs after the cut",
        &common::flat(&rest.outputs),
        &common::flat(&want),
        1e-6,
    );
    assert_close(
        "c_n",
        &common::flat(&rest.final_cell.unwrap()),
        &common::flat(&all.final_cell.unwrap()),
        1e-6,
    );
}

/// The reverse direction of a sequence is the forward direction run on the sequence
/// reversed, within its own length: checked with a one-layer model whose reverse
/// parameters drive a unidirectional one.
#[test]
fn the_reverse_direction_reads_each_sequence_backwards_within_its_length() {
    for cell in [Cell::Lstm, Cell::Gru, Cell::Tanh] {
        let bi = cfg(cell, 1, true, Head::None);
        let p = RnnParams::init(&bi, 21);
        let lengths = [5, 2, 4, 1];
        let batch = random_batch(&bi, &lengths, false, 22);
        let both = Rnn::new(bi.clone(), p.clone(), &Device::cpu())
            .unwrap()
            .encode(&batch)
            .unwrap();
        let uni = cfg(cell, 1, false, Head::None);
        let rev_only = RnnParams {
            layers: vec![p.layers[1].clone()],
            w_out: Array2::zeros((0, 4)),
            b_out: Default::default(),
        };
        let mut forward_on_reversed = Rnn::new(uni, rev_only, &Device::cpu()).unwrap();
        for (i, &len) in lengths.iter().enumerate() {
            let reversed = batch.inputs()[i].slice(s![..;-1, ..]).to_owned();
            let one = SequenceBatch::inputs_only(vec![reversed]).unwrap();
            let r = forward_on_reversed.encode(&one).unwrap();
            for t in 0..len {
                let got = both.states.slice(s![i, t, 4..]).to_vec();
                let want = r.states.slice(s![0, len - 1 - t, ..]).to_vec();
                assert_close(&format!("{cell} sequence {i} step {t}"), &got, &want, 1e-6);
            }
            assert!(
                both.states
                    .slice(s![i, len.., ..])
                    .iter()
                    .all(|&v| v == 0.0),
                "zero past the length"
            );
            let final_rev = both.final_hidden.slice(s![1, i, ..]).to_vec();
            assert_close(
                "h_n reverse",
                &final_rev,
                &r.final_hidden.slice(s![0, 0, ..]).to_vec(),
                1e-6,
            );
        }
    }
}

/// The encoder's backward pass, given the gradient a readout would send, gives the
/// recurrent gradients of the model with that readout; its input gradient matches
/// central differences of that model's loss.
#[test]
fn encoder_backward_agrees_with_the_model_with_a_readout() {
    for (cell, bidirectional, layers) in [
        (Cell::Lstm, true, 2),
        (Cell::Gru, false, 2),
        (Cell::Relu, true, 1),
    ] {
        let full = cfg(cell, layers, bidirectional, Head::PerStep);
        let p = RnnParams::init(&full, 31);
        let lengths = [4, 2, 3];
        let batch = random_batch(&full, &lengths, true, 32);
        let mut model = Rnn::new(full.clone(), p.clone(), &Device::cpu()).unwrap();
        let (_, want) = model.loss_and_gradients(&batch).unwrap();
        // dL/dstates = W_outᵀ · 2 (o − y) / (positions · outputs), from the outputs
        let out = model.forward(&batch).unwrap().outputs;
        let Targets::Values(y) = batch.targets().unwrap() else {
            unreachable!()
        };
        let count = (lengths.iter().sum::<usize>() * 3) as f32;
        let width = full.state_width();
        let mut grad_states = Array3::zeros((3, 4, width));
        for (i, &len) in lengths.iter().enumerate() {
            for t in 0..len {
                let d = (&out.slice(s![i, t, ..]) - &y[i].row(t)) * (2.0 / count);
                grad_states.slice_mut(s![i, t, ..]).assign(&d.dot(&p.w_out));
            }
        }
        // past the lengths is ignored
        grad_states[[0, 3, 0]] += 0.0;
        grad_states[[1, 3, 1]] = 7.0;
        let enc_config = full.clone().head(Head::None);
        let enc_params = RnnParams {
            w_out: Array2::zeros((0, width)),
            b_out: Default::default(),
            ..p.clone()
        };
        let mut encoder = Rnn::new(enc_config, enc_params, &Device::cpu()).unwrap();
        let encoded = encoder.encode(&batch).unwrap();
        assert_eq!(encoded.states.dim(), (3, 4, width));
        let got = encoder.backward(&batch, &grad_states).unwrap();
        let label = format!("{cell} bidirectional {bidirectional}");
        for (u, (g, w)) in got.params.layers.iter().zip(&want.layers).enumerate() {
            for (name, a, b) in [
                ("w_ih", g.w_ih.view(), w.w_ih.view()),
                ("w_hh", g.w_hh.view(), w.w_hh.view()),
            ] {
                assert_close(
                    &format!("{label} layers[{u}].{name}"),
                    &a.iter().copied().collect::<Vec<_>>(),
                    &b.iter().copied().collect::<Vec<_>>(),
                    1e-5,
                );
            }
            assert_close(
                &format!("{label} b_ih"),
                &g.b_ih.to_vec(),
                &w.b_ih.to_vec(),
                1e-5,
            );
            assert_close(
                &format!("{label} b_hh"),
                &g.b_hh.to_vec(),
                &w.b_hh.to_vec(),
                1e-5,
            );
        }
        // input gradient against central differences of the full model's f64 loss
        let p64 = p.cast::<f64>();
        let h = 2f32.powi(-10);
        for (i, &len) in lengths.iter().enumerate() {
            assert_eq!(got.inputs[i].dim(), (len, 3));
            for (t, k) in [(0, 0), (len - 1, 2)] {
                let shifted = |by: f32| {
                    let mut x = batch.inputs().to_vec();
                    x[i][[t, k]] += by;
                    let b = SequenceBatch::new(x, batch.targets().unwrap().clone()).unwrap();
                    cpu::loss::<f64>(&full, &p64, &b)
                };
                let numeric = (shifted(h) - shifted(-h)) / (2.0 * h as f64);
                let analytic = got.inputs[i][[t, k]] as f64;
                assert!(
                    (numeric - analytic).abs() <= 1e-3 * numeric.abs().max(1e-3),
                    "{label} d loss / d x[{i}][{t},{k}]: analytic {analytic} numeric {numeric}"
                );
            }
        }
        // the update from those gradients is the optimizer's
        let mut adam = Optimizer::adam(0.01).clip_grad_norm(0.5);
        encoder.apply_gradients(&got.params, &mut adam).unwrap();
        let mut reference = Rnn::new(full.clone(), p.clone(), &Device::cpu()).unwrap();
        let mut adam2 = Optimizer::adam(0.01).clip_grad_norm(0.5);
        let mut grads = want.clone();
        grads.w_out.fill(0.0);
        grads.b_out.fill(0.0);
        reference.apply_gradients(&grads, &mut adam2).unwrap();
        let (a, b) = (encoder.params().unwrap(), reference.params().unwrap());
        for (x, y) in a.layers.iter().zip(&b.layers) {
            assert_close(
                "updated w_hh",
                &x.w_hh.iter().copied().collect::<Vec<_>>(),
                &y.w_hh.iter().copied().collect::<Vec<_>>(),
                1e-4,
            );
        }
    }
}

#[test]
fn what_the_gated_cells_and_encoders_refuse() {
    let dev = Device::cpu();
    let lstm = cfg(Cell::Lstm, 1, false, Head::PerStep);
    let gru = cfg(Cell::Gru, 1, false, Head::PerStep);
    let batch = random_batch(&lstm, &[2, 3], false, 1);
    // parameters of another cell's shapes name the cell
    let e = Rnn::new(gru.clone(), RnnParams::init(&lstm, 1), &dev)
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::ShapeMismatch { .. }) && e.to_string().contains("gru"),
        "{e}"
    );
    // a c for a cell without one, and an LSTM state without c
    let h = Array3::zeros((1, 2, 4));
    let mut g = Rnn::new(gru.clone(), RnnParams::init(&gru, 1), &dev).unwrap();
    let with_c = RnnState {
        h: h.clone(),
        c: Some(h.clone()),
    };
    assert!(matches!(
        g.forward_from(&batch, Some(&with_c)),
        Err(Error::InvalidConfig { .. })
    ));
    let mut l = Rnn::new(lstm.clone(), RnnParams::init(&lstm, 1), &dev).unwrap();
    let before = l.params().unwrap();
    let mut sgd = Optimizer::sgd(0.1);
    assert!(matches!(
        l.train_step_from(&batch, Some(&RnnState::hidden(h.clone())), &mut sgd),
        Err(Error::InvalidConfig { .. })
    ));
    let wrong = RnnState {
        h: h.clone(),
        c: Some(Array3::zeros((1, 3, 4))),
    };
    assert!(matches!(
        l.forward_from(&batch, Some(&wrong)),
        Err(Error::ShapeMismatch { .. })
    ));
    assert_eq!(l.params().unwrap(), before, "refused steps change nothing");
    assert_eq!(sgd.steps(), 0);
    // truncated BPTT needs one direction
    let bi = cfg(Cell::Lstm, 1, true, Head::PerStep);
    let mut b = Rnn::new(bi.clone(), RnnParams::init(&bi, 1), &dev).unwrap();
    assert!(matches!(
        b.train_step_from(&batch, None, &mut sgd),
        Err(Error::Unsupported(_))
    ));
    // an encoder has no forward / train_step; a batch without targets trains nothing
    let enc = cfg(Cell::Gru, 1, false, Head::None);
    let mut e = Rnn::new(enc.clone(), RnnParams::init(&enc, 1), &dev).unwrap();
    let err = e.forward(&batch).unwrap_err();
    assert!(
        matches!(err, Error::Unsupported(_)) && err.to_string().contains("encode"),
        "{err}"
    );
    let bare = SequenceBatch::inputs_only(batch.inputs().to_vec()).unwrap();
    assert!(matches!(
        l.train_step(&bare, &mut sgd),
        Err(Error::MissingTargets { .. })
    ));
    let f = l.forward(&bare).unwrap();
    assert!(f.loss.is_nan() && f.outputs.iter().all(|v| v.is_finite()));
    // gradients on the states must have the states' shape and be finite
    assert!(matches!(
        e.backward(&batch, &Array3::zeros((2, 3, 5))),
        Err(Error::ShapeMismatch { .. })
    ));
    let mut nan = Array3::zeros((2, 3, 4));
    nan[[0, 0, 0]] = f32::NAN;
    assert!(matches!(
        e.backward(&batch, &nan),
        Err(Error::NonFinite { .. })
    ));
    // gradients of the wrong shape are refused by apply_gradients
    let e_before = e.params().unwrap();
    assert!(matches!(
        e.apply_gradients(&RnnParams::init(&lstm, 2), &mut sgd),
        Err(Error::ShapeMismatch { .. })
    ));
    assert_eq!(e.params().unwrap(), e_before);
    // dropout out of range, before the readout too
    assert!(matches!(
        Rnn::new(
            lstm.clone().output_dropout(-0.1),
            RnnParams::init(&lstm, 1),
            &dev
        ),
        Err(Error::InvalidConfig {
            what: "output_dropout",
            ..
        })
    ));
    assert!(matches!(
        Rnn::new(lstm.clone().dropout(1.0), RnnParams::init(&lstm, 1), &dev),
        Err(Error::InvalidConfig { .. })
    ));
}

#[test]
fn checkpoints_of_every_cell_and_direction_round_trip_and_refuse_another_cell() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cells-checkpoints");
    std::fs::create_dir_all(&dir).unwrap();
    for cell in [Cell::Lstm, Cell::Gru, Cell::Relu] {
        for (layers, bidirectional) in [(1, true), (2, true), (2, false)] {
            let c = cfg(cell, layers, bidirectional, Head::LastStep);
            let p = RnnParams::init(&c, 5);
            let path = dir.join(format!("{cell}-{layers}-{bidirectional}.safetensors"));
            p.save_for(&c, &path).unwrap();
            assert_eq!(RnnParams::load_for(&c, &path).unwrap(), p);
            assert_eq!(RnnParams::load(&path).unwrap(), p);
            let names = safetensors::SafeTensors::deserialize(&std::fs::read(&path).unwrap())
                .unwrap()
                .names()
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>();
            assert_eq!(
                names.iter().any(|n| n == "rnn.weight_hh_l0_reverse"),
                bidirectional,
                "{names:?}"
            );
            let other = if cell == Cell::Lstm {
                Cell::Gru
            } else {
                Cell::Lstm
            };
            let e = RnnParams::load_for(&c.clone().cell(other), &path).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(cell.name()) && msg.contains(other.name()),
                "{msg}"
            );
        }
    }
    // an encoder writes no readout
    let enc = cfg(Cell::Gru, 1, true, Head::None);
    let p = RnnParams::init(&enc, 1);
    let path = dir.join("encoder.safetensors");
    p.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(file.names().iter().all(|n| !n.starts_with("out.")));
    assert_eq!(RnnParams::load_for(&enc, &path).unwrap(), p);
}

/// An optimizer's state belongs to the parameters it first updated: another model with
/// as many parameters but other shapes is refused, changing nothing, on every device.
#[test]
fn optimizer_state_is_matched_by_name_and_shape() {
    for device in common::devices() {
        let (a, b) = (RnnConfig::new(3, 4, 2), RnnConfig::new(5, 3, 4));
        assert_eq!(a.num_params(), b.num_params(), "same count, other shapes");
        let batch_a = random_batch(&a, &[3, 2], false, 1);
        let batch_b = random_batch(&b, &[3, 2], false, 1);
        let mut rnn_a = Rnn::new(a.clone(), RnnParams::init(&a, 1), &device).unwrap();
        let mut rnn_b = Rnn::new(b.clone(), RnnParams::init(&b, 1), &device).unwrap();
        let mut adam = Optimizer::adam(0.01);
        rnn_a.train_step(&batch_a, &mut adam).unwrap();
        let before = (rnn_b.params().unwrap(), adam.export_state().unwrap());
        let err = rnn_b.train_step(&batch_b, &mut adam).unwrap_err();
        assert!(matches!(err, Error::OptimizerMismatch(_)), "{err}");
        assert!(err.to_string().contains("rnn.weight_ih_l0"), "{err}");
        let (grads, _) = (rnn_b.loss_and_gradients(&batch_b).unwrap().1, ());
        assert!(matches!(
            rnn_b.apply_gradients(&grads, &mut adam),
            Err(Error::OptimizerMismatch(_))
        ));
        assert_eq!(
            (rnn_b.params().unwrap(), adam.export_state().unwrap()),
            before
        );
        // the exported state carries the layout, so an import refuses the other model too
        let mut imported = Optimizer::adam(0.01);
        imported
            .import_state(adam.export_state().unwrap().unwrap())
            .unwrap();
        assert!(rnn_b.train_step(&batch_b, &mut imported).is_err());
        rnn_a.train_step(&batch_a, &mut imported).unwrap();
    }
}
