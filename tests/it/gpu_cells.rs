//! GPU path against the CPU reference path for every cell (tanh, relu, LSTM, GRU), both
//! directions and every time loop, relative error ≤ 1e-4: outputs, final h and c, loss,
//! every gradient; initial states; training with clipped SGD and Adam; inter-layer
//! dropout with the same seed; the encoder API (encode, backward, apply_gradients); token
//! batches; and a hidden size past the persistent loop's (tiled steps). Shapes are tiny:
//! the software adapter of CI computes at about a GFLOP/s.

use crate::common;

use unfold::internals::TimeLoop;
use unfold::ndarray::{Array2, Array3};
use unfold::rng::SplitMix64;
use unfold::{Cell, Device, Head, Optimizer, Rnn, RnnConfig, RnnState, SequenceBatch, Targets};

const TOL: f64 = 1e-4;

const CELLS: [Cell; 4] = [Cell::Tanh, Cell::Relu, Cell::Lstm, Cell::Gru];

const TIME_LOOPS: [TimeLoop; 3] = [
    TimeLoop::Persistent,
    TimeLoop::PerStep,
    TimeLoop::TiledSteps,
];

/// A config of `layers` layers of `cell`, one or two directions.
fn config(
    cell: Cell,
    bidirectional: bool,
    (i, h, o): (usize, usize, usize),
    layers: usize,
) -> RnnConfig {
    RnnConfig::new(i, h, o)
        .cell(cell)
        .bidirectional(bidirectional)
        .num_layers(layers)
}

/// A CPU model and a GPU model with the same parameters; the GPU one walks time as told.
fn pair(config: &RnnConfig, gpu: &Device, time_loop: TimeLoop, seed: u64) -> (Rnn, Rnn) {
    let params = common::params(config, seed);
    let mut dev = Rnn::new(config.clone(), params.clone(), gpu).expect("gpu model");
    dev.set_time_loop(time_loop).expect("time loop fits");
    let cpu = Rnn::new(config.clone(), params, &Device::cpu()).expect("cpu model");
    (cpu, dev)
}

/// Random initial states for `config` and a batch of `batch` sequences (c for an LSTM).
fn initial_state(config: &RnnConfig, batch: usize, seed: u64) -> RnnState {
    let mut rng = SplitMix64::new(seed);
    let shape = (config.num_units(), batch, config.hidden_size);
    let mut draw = || Array3::from_shape_simple_fn(shape, || 0.5 * rng.normal());
    let h = draw();
    let c = config.cell.has_c().then(draw);
    RnnState { h, c }
}

fn close(what: &str, got: &[f32], want: &[f32]) {
    common::assert_close(what, got, want, TOL);
}

fn close_state(what: &str, got: Option<&Array3<f32>>, want: Option<&Array3<f32>>) {
    assert_eq!(
        got.is_some(),
        want.is_some(),
        "{what}: present on one side only"
    );
    if let (Some(g), Some(w)) = (got, want) {
        assert_eq!(g.shape(), w.shape(), "{what}");
        close(what, &common::flat(g), &common::flat(w));
    }
}

/// Forward (outputs, final h and c, loss) and gradients of both models on `batch`, from
/// `initial`.
fn compare_pass(
    label: &str,
    cpu: &mut Rnn,
    dev: &mut Rnn,
    batch: &SequenceBatch,
    initial: Option<&RnnState>,
) {
    let (want, got) = (
        cpu.forward_from(batch, initial).expect("cpu forward"),
        dev.forward_from(batch, initial).expect("gpu forward"),
    );
    assert_eq!(want.outputs.shape(), got.outputs.shape(), "{label}");
    close(
        &format!("{label} outputs"),
        &common::flat(&got.outputs),
        &common::flat(&want.outputs),
    );
    close_state(
        &format!("{label} final_hidden"),
        Some(&got.final_hidden),
        Some(&want.final_hidden),
    );
    close_state(
        &format!("{label} final_cell"),
        got.final_cell.as_ref(),
        want.final_cell.as_ref(),
    );
    close(&format!("{label} loss"), &[got.loss], &[want.loss]);
    let (want_loss, want_grads) = cpu
        .loss_and_gradients_from(batch, initial)
        .expect("cpu grads");
    let (got_loss, got_grads) = dev
        .loss_and_gradients_from(batch, initial)
        .expect("gpu grads");
    close(
        &format!("{label} loss (gradients)"),
        &[got_loss],
        &[want_loss],
    );
    common::assert_params_close(label, &got_grads, &want_grads, TOL);
}

#[test]
fn every_cell_direction_and_time_loop_matches_cpu() {
    let Some(gpu) = common::gpu() else { return };
    // a length-1 sequence, equal lengths, and a sequence that only the reverse direction
    // starts late in
    let lengths = [4, 1, 3, 4];
    for (c, &cell) in CELLS.iter().enumerate() {
        for bidirectional in [false, true] {
            for (k, &time_loop) in TIME_LOOPS.iter().enumerate() {
                let variant = c + 2 * k + bidirectional as usize;
                let head = if variant.is_multiple_of(2) {
                    Head::PerStep
                } else {
                    Head::LastStep
                };
                let config = config(cell, bidirectional, (3, 5, 4), 2).head(head);
                let seed = 10 + variant as u64;
                let batch =
                    common::random_batch(&config, &lengths, variant.is_multiple_of(3), seed);
                let (mut cpu, mut dev) = pair(&config, &gpu, time_loop, seed);
                let label = format!("{cell} bidirectional={bidirectional} {time_loop:?} {head:?}");
                compare_pass(&label, &mut cpu, &mut dev, &batch, None);
                let initial = initial_state(&config, lengths.len(), seed);
                compare_pass(
                    &format!("{label} from an initial state"),
                    &mut cpu,
                    &mut dev,
                    &batch,
                    Some(&initial),
                );
            }
        }
    }
}

#[test]
fn fixed_lengths_and_single_steps_match_cpu() {
    // equal lengths read the previous states in place for the W_hh gradient; one step
    // has no recurrence at all
    let Some(gpu) = common::gpu() else { return };
    for cell in CELLS {
        for (lengths, time_loop) in [
            (&[3usize, 3][..], TimeLoop::PerStep),
            (&[1, 1, 1][..], TimeLoop::Persistent),
        ] {
            let config = config(cell, true, (2, 4, 3), 1);
            let batch = common::random_batch(&config, lengths, true, 3);
            let (mut cpu, mut dev) = pair(&config, &gpu, time_loop, 3);
            let label = format!("{cell} lengths {lengths:?} {time_loop:?}");
            compare_pass(&label, &mut cpu, &mut dev, &batch, None);
            let initial = initial_state(&config, lengths.len(), 4);
            compare_pass(
                &format!("{label} from an initial state"),
                &mut cpu,
                &mut dev,
                &batch,
                Some(&initial),
            );
        }
    }
}

#[test]
fn persistent_loops_over_several_staged_chunks_match_cpu() {
    // the persistent loops stage a chunk of steps at a time: 1024 / (G·H) steps forward
    // (4 for an LSTM of hidden 64, 5 for a GRU) and 1024 / H backward (16): sequences
    // over several chunks of both, in both directions
    let Some(gpu) = common::gpu() else { return };
    for cell in [Cell::Lstm, Cell::Gru] {
        let config = config(cell, true, (3, 64, 2), 1).head(Head::LastStep);
        let batch = common::random_batch(&config, &[21, 7, 1, 16], true, 8);
        let (mut cpu, mut dev) = pair(&config, &gpu, TimeLoop::Persistent, 8);
        let initial = initial_state(&config, 4, 9);
        let label = format!("{cell} hidden 64 persistent");
        compare_pass(&label, &mut cpu, &mut dev, &batch, Some(&initial));
    }
}

#[test]
fn hidden_past_the_persistent_loop_matches_cpu() {
    // hidden 260: past the persistent loop, and a gated cell's G·H columns (780, 1040)
    // past one workgroup's threads
    let Some(gpu) = common::gpu() else { return };
    for cell in [Cell::Tanh, Cell::Lstm, Cell::Gru] {
        for time_loop in [TimeLoop::TiledSteps, TimeLoop::PerStep] {
            let config = config(cell, true, (3, 260, 2), 1);
            let batch = common::random_batch(&config, &[3, 1, 2], false, 5);
            let (mut cpu, mut dev) = pair(&config, &gpu, time_loop, 5);
            let initial = initial_state(&config, 3, 6);
            compare_pass(
                &format!("{cell} hidden 260 {time_loop:?}"),
                &mut cpu,
                &mut dev,
                &batch,
                Some(&initial),
            );
        }
    }
    // a second bidirectional layer reads 520 features a step, and the loop the library
    // picks itself (Auto) past the persistent loop's hidden size; that loop is refused
    let deep = config(Cell::Gru, true, (3, 260, 2), 2).head(Head::LastStep);
    let batch = common::random_batch(&deep, &[2, 3], true, 9);
    let (mut cpu, mut dev) = pair(&deep, &gpu, TimeLoop::Auto, 9);
    compare_pass(
        "gru 2 layers hidden 260 Auto",
        &mut cpu,
        &mut dev,
        &batch,
        None,
    );
    let e = dev
        .set_time_loop(TimeLoop::Persistent)
        .expect_err("a persistent loop of 260 units");
    assert!(e.to_string().contains("at most 256"), "{e}");
    // the persistent loop at its widest: an LSTM's 1024 gate columns per step
    let config = config(Cell::Lstm, false, (2, 256, 2), 1);
    let batch = common::random_batch(&config, &[3, 2], true, 7);
    let (mut cpu, mut dev) = pair(&config, &gpu, TimeLoop::Persistent, 7);
    compare_pass(
        "lstm hidden 256 persistent",
        &mut cpu,
        &mut dev,
        &batch,
        None,
    );
}

#[test]
fn training_matches_cpu() {
    let Some(gpu) = common::gpu() else { return };
    type MakeOptimizer = fn() -> Optimizer;
    let optimizers: [(&str, MakeOptimizer, usize); 2] = [
        ("sgd+clip", || Optimizer::sgd(0.3).clip_grad_norm(0.05), 2),
        ("adam+clip", || Optimizer::adam(0.01).clip_grad_norm(1.0), 2),
    ];
    for (c, &cell) in CELLS.iter().enumerate() {
        for (bidirectional, time_loop) in [false, true]
            .into_iter()
            .flat_map(|b| TIME_LOOPS.map(|t| (b, t)))
        {
            let config = config(cell, bidirectional, (3, 6, 3), 1).head(Head::LastStep);
            let batch = common::random_batch(&config, &[5, 2, 4], false, 20 + c as u64);
            for (name, make, steps) in optimizers {
                let (mut cpu, mut dev) = pair(&config, &gpu, time_loop, 30 + c as u64);
                let (mut o_cpu, mut o_gpu) = (make(), make());
                let label = format!("{cell} bidirectional={bidirectional} {time_loop:?} {name}");
                for s in 0..steps {
                    let want = cpu.train_step(&batch, &mut o_cpu).expect("cpu step");
                    let got = dev.train_step(&batch, &mut o_gpu).expect("gpu step");
                    close(&format!("{label} loss at step {s}"), &[got], &[want]);
                }
                common::assert_params_close(
                    &format!("{label} params after {steps} steps"),
                    &dev.params().expect("gpu params"),
                    &cpu.params().expect("cpu params"),
                    TOL,
                );
            }
        }
    }
}

#[test]
fn truncated_bptt_carries_h_and_c_as_on_the_cpu() {
    let Some(gpu) = common::gpu() else { return };
    for (k, cell) in CELLS.into_iter().enumerate() {
        let time_loop = TIME_LOOPS[k % TIME_LOOPS.len()];
        let config = config(cell, false, (2, 5, 3), 2);
        let (mut cpu, mut dev) = pair(&config, &gpu, time_loop, 40);
        let (mut o_cpu, mut o_gpu) = (Optimizer::sgd(0.1), Optimizer::sgd(0.1));
        let (mut s_cpu, mut s_gpu) = (None::<RnnState>, None::<RnnState>);
        for chunk in 0..3u64 {
            let batch = common::random_batch(&config, &[3, 3], true, 50 + chunk);
            let (want, next_cpu) = cpu
                .train_step_from(&batch, s_cpu.as_ref(), &mut o_cpu)
                .expect("cpu step");
            let (got, next_gpu) = dev
                .train_step_from(&batch, s_gpu.as_ref(), &mut o_gpu)
                .expect("gpu step");
            let label = format!("{cell} {time_loop:?} chunk {chunk}");
            close(&format!("{label} loss"), &[got], &[want]);
            close_state(&format!("{label} h"), Some(&next_gpu.h), Some(&next_cpu.h));
            close_state(
                &format!("{label} c"),
                next_gpu.c.as_ref(),
                next_cpu.c.as_ref(),
            );
            (s_cpu, s_gpu) = (Some(next_cpu), Some(next_gpu));
        }
    }
}

#[test]
fn dropout_with_the_same_seed_matches_cpu() {
    let Some(gpu) = common::gpu() else { return };
    for (k, cell) in CELLS.into_iter().enumerate() {
        let time_loop = TIME_LOOPS[k % TIME_LOOPS.len()];
        // between layers alone, before the readout too (both heads), and before the
        // readout of one layer (no masks between layers ahead of its own)
        let (layers, between, output, head) = match k {
            0 => (3, 0.4, 0.0, Head::PerStep),
            1 => (3, 0.4, 0.25, Head::PerStep),
            2 => (2, 0.3, 0.25, Head::LastStep),
            _ => (1, 0.0, 0.3, Head::PerStep),
        };
        let config = config(cell, k.is_multiple_of(2), (3, 6, 4), layers)
            .head(head)
            .dropout(between)
            .output_dropout(output);
        let batch = common::random_batch(&config, &[4, 2, 3], false, 60);
        let (mut cpu, mut dev) = pair(&config, &gpu, time_loop, 61);
        cpu.set_dropout_seed(99);
        dev.set_dropout_seed(99);
        let (mut o_cpu, mut o_gpu) = (Optimizer::adam(0.01), Optimizer::adam(0.01));
        let label =
            format!("{cell} {layers} layers {head:?} {time_loop:?} dropout {between}/{output}");
        for s in 0..3 {
            let want = cpu.train_step(&batch, &mut o_cpu).expect("cpu step");
            let got = dev.train_step(&batch, &mut o_gpu).expect("gpu step");
            close(&format!("{label} loss at step {s}"), &[got], &[want]);
        }
        common::assert_params_close(
            &label,
            &dev.params().expect("gpu params"),
            &cpu.params().expect("cpu params"),
            TOL,
        );
        // no dropout in a forward pass
        let (want, got) = (cpu.forward(&batch).unwrap(), dev.forward(&batch).unwrap());
        close(
            &format!("{label} forward"),
            &common::flat(&got.outputs),
            &common::flat(&want.outputs),
        );
    }
}

/// A random gradient on the encoder's states `[batch, max_len, D·H]`.
fn grad_states(config: &RnnConfig, lengths: &[usize], seed: u64) -> Array3<f32> {
    let mut rng = SplitMix64::new(seed);
    let max_len = lengths.iter().copied().max().unwrap_or(0);
    Array3::from_shape_simple_fn((lengths.len(), max_len, config.state_width()), || {
        rng.normal()
    })
}

#[test]
fn encoder_matches_cpu() {
    let Some(gpu) = common::gpu() else { return };
    let lengths = [3, 5, 1];
    for (k, cell) in CELLS.into_iter().enumerate() {
        for bidirectional in [false, true] {
            let time_loop = TIME_LOOPS[(k + bidirectional as usize) % TIME_LOOPS.len()];
            let config = config(cell, bidirectional, (4, 5, 0), 2)
                .head(Head::None)
                .dropout(0.3);
            let mut rng = SplitMix64::new(70 + k as u64);
            let inputs: Vec<Array2<f32>> = lengths
                .iter()
                .map(|&len| Array2::from_shape_simple_fn((len, 4), || rng.normal()))
                .collect();
            let batch = SequenceBatch::inputs_only(inputs).expect("batch");
            let (mut cpu, mut dev) = pair(&config, &gpu, time_loop, 71);
            let label = format!("{cell} bidirectional={bidirectional} {time_loop:?} encoder");
            for training in [false, true] {
                cpu.set_training(training);
                dev.set_training(training);
                cpu.set_dropout_seed(5);
                dev.set_dropout_seed(5);
                let label = format!("{label} training={training}");
                let (want, got) = (cpu.encode(&batch).unwrap(), dev.encode(&batch).unwrap());
                close(
                    &format!("{label} states"),
                    &common::flat(&got.states),
                    &common::flat(&want.states),
                );
                close_state(
                    &format!("{label} final_hidden"),
                    Some(&got.final_hidden),
                    Some(&want.final_hidden),
                );
                close_state(
                    &format!("{label} final_cell"),
                    got.final_cell.as_ref(),
                    want.final_cell.as_ref(),
                );
                let grad = grad_states(&config, &lengths, 72);
                let (want, got) = (
                    cpu.backward(&batch, &grad).unwrap(),
                    dev.backward(&batch, &grad).unwrap(),
                );
                common::assert_params_close(
                    &format!("{label} gradients"),
                    &got.params,
                    &want.params,
                    TOL,
                );
                assert_eq!(got.inputs.len(), want.inputs.len());
                for (i, (g, w)) in got.inputs.iter().zip(&want.inputs).enumerate() {
                    assert_eq!(g.shape(), w.shape(), "{label} input gradient {i}");
                    close(
                        &format!("{label} input gradient {i}"),
                        &common::flat(g),
                        &common::flat(w),
                    );
                }
                let mut o_cpu = Optimizer::adam(0.01).clip_grad_norm(0.5);
                let mut o_gpu = Optimizer::adam(0.01).clip_grad_norm(0.5);
                cpu.apply_gradients(&want.params, &mut o_cpu).unwrap();
                dev.apply_gradients(&want.params, &mut o_gpu).unwrap();
                common::assert_params_close(
                    &format!("{label} params after apply_gradients"),
                    &dev.params().unwrap(),
                    &cpu.params().unwrap(),
                    TOL,
                );
            }
        }
    }
}

#[test]
fn encoder_api_on_a_model_with_a_readout_matches_cpu() {
    // encode and backward work under any head; the readout's gradients are zero
    let Some(gpu) = common::gpu() else { return };
    let config = config(Cell::Gru, true, (3, 4, 2), 1).head(Head::LastStep);
    let batch = common::random_batch(&config, &[2, 3], false, 80);
    let (mut cpu, mut dev) = pair(&config, &gpu, TimeLoop::Auto, 81);
    let (want, got) = (cpu.encode(&batch).unwrap(), dev.encode(&batch).unwrap());
    close(
        "states",
        &common::flat(&got.states),
        &common::flat(&want.states),
    );
    // a training step first: its readout gradients must not leak into backward's
    dev.train_step(&batch, &mut Optimizer::sgd(0.0)).unwrap();
    cpu.train_step(&batch, &mut Optimizer::sgd(0.0)).unwrap();
    let grad = grad_states(&config, &[2, 3], 82);
    let (want, got) = (
        cpu.backward(&batch, &grad).unwrap(),
        dev.backward(&batch, &grad).unwrap(),
    );
    assert!(
        got.params.w_out.iter().all(|&v| v == 0.0) && got.params.b_out.iter().all(|&v| v == 0.0)
    );
    common::assert_params_close("gradients", &got.params, &want.params, TOL);
}

/// Token sequences over `vocab` with class targets per step.
fn token_batch(lengths: &[usize], vocab: usize, classes: usize, seed: u64) -> SequenceBatch {
    let mut rng = SplitMix64::new(seed);
    let tokens: Vec<Vec<u32>> = lengths
        .iter()
        .map(|&len| (0..len).map(|_| rng.below(vocab) as u32).collect())
        .collect();
    let targets = Targets::Classes(
        lengths
            .iter()
            .map(|&len| (0..len).map(|_| rng.below(classes) as u32).collect())
            .collect(),
    );
    SequenceBatch::from_tokens(tokens, vocab, targets).expect("token batch")
}

#[test]
fn token_batches_match_cpu() {
    let Some(gpu) = common::gpu() else { return };
    for (k, cell) in [Cell::Lstm, Cell::Gru, Cell::Tanh].into_iter().enumerate() {
        let time_loop = TIME_LOOPS[k % TIME_LOOPS.len()];
        let config = config(cell, true, (7, 5, 3), 2);
        let batch = token_batch(&[4, 2, 4], 7, 3, 90 + k as u64);
        let (mut cpu, mut dev) = pair(&config, &gpu, time_loop, 91);
        compare_pass(
            &format!("{cell} {time_loop:?} tokens"),
            &mut cpu,
            &mut dev,
            &batch,
            None,
        );
        let (mut o_cpu, mut o_gpu) = (Optimizer::sgd(0.2), Optimizer::sgd(0.2));
        for _ in 0..2 {
            let want = cpu.train_step(&batch, &mut o_cpu).unwrap();
            let got = dev.train_step(&batch, &mut o_gpu).unwrap();
            close(&format!("{cell} tokens loss"), &[got], &[want]);
        }
        // an encoder over tokens has parameter gradients only
        let encoder = config.clone().head(Head::None);
        let params = common::params(&encoder, 92);
        let mut cpu = Rnn::new(encoder.clone(), params.clone(), &Device::cpu()).unwrap();
        let mut dev = Rnn::new(encoder.clone(), params, &gpu).unwrap();
        let inputs = SequenceBatch::tokens_only(vec![vec![1, 2, 3], vec![6]], 7).unwrap();
        let grad = grad_states(&encoder, &[3, 1], 93);
        let (want, got) = (
            cpu.backward(&inputs, &grad).unwrap(),
            dev.backward(&inputs, &grad).unwrap(),
        );
        assert!(got.inputs.is_empty() && want.inputs.is_empty());
        common::assert_params_close(
            &format!("{cell} token encoder"),
            &got.params,
            &want.params,
            TOL,
        );
    }
}
