//! The encoder's round trip (`encode`, `backward`, `apply_gradients`) keeps on the device
//! everything but what it hands out and takes in: a batch the device holds is not
//! uploaded again, `backward` right after the `encode` of the same batch uploads only the
//! gradient on the states and runs no forward pass, and `apply_gradients` of the
//! gradients `backward` left on the device uploads nothing.
//! Counted with `internals::gpu::last_transfers`; results against the path that runs the
//! layers forward again (the same content in a batch built apart: bit for bit on the same
//! device) and against the CPU path. Anything between `encode` and `backward` that changes
//! the parameters or the buffers makes `backward` run forward again, with the right
//! results. Tiny shapes: the software adapter computes at about a GFLOP/s.

use crate::common;

use unfold::internals::gpu::{last_transfers, Transfers};
use unfold::internals::TimeLoop;
use unfold::ndarray::{Array2, Array3};
use unfold::rng::SplitMix64;
use unfold::{Cell, Device, Gradients, Head, Optimizer, Rnn, RnnConfig, RnnParams, SequenceBatch};

const LENGTHS: [usize; 3] = [4, 2, 3];
const INPUT: usize = 3;
const HIDDEN: usize = 8;
const LAYERS: usize = 2;

/// A two-layer LSTM of hidden size 8 over 3 inputs.
fn lstm(bidirectional: bool) -> RnnConfig {
    RnnConfig::new(INPUT, HIDDEN, 0)
        .cell(Cell::Lstm)
        .num_layers(LAYERS)
        .bidirectional(bidirectional)
        .head(Head::None)
}

/// Random input sequences of `LENGTHS`; the same seed gives the same content.
fn inputs(seed: u64) -> SequenceBatch {
    let mut rng = SplitMix64::new(seed);
    let x = LENGTHS
        .iter()
        .map(|&len| Array2::from_shape_simple_fn((len, INPUT), || rng.normal()))
        .collect();
    SequenceBatch::inputs_only(x).expect("valid inputs")
}

/// A gradient on the states of a `LENGTHS` batch.
fn grad_states(config: &RnnConfig, seed: u64) -> Array3<f32> {
    let mut rng = SplitMix64::new(seed);
    let shape = (LENGTHS.len(), 4, config.state_width());
    Array3::from_shape_simple_fn(shape, || rng.normal())
}

fn model(config: &RnnConfig, params: &RnnParams, device: &Device) -> Rnn {
    Rnn::new(config.clone(), params.clone(), device).expect("model")
}

fn counts(rnn: &Rnn) -> Transfers {
    last_transfers(rnn).expect("a GPU model counts its transfers")
}

fn is_gpu(rnn: &Rnn) -> bool {
    last_transfers(rnn).is_some()
}

/// Every bit of two sets of gradients, parameters and inputs, the same.
fn assert_same_gradients(what: &str, got: &Gradients, want: &Gradients) {
    assert_eq!(
        common::param_bits(&got.params),
        common::param_bits(&want.params),
        "{what}: parameter gradients differ"
    );
    assert_eq!(got.inputs.len(), want.inputs.len(), "{what}");
    for (i, (g, w)) in got.inputs.iter().zip(&want.inputs).enumerate() {
        let bits = |a: &Array2<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(g), bits(w), "{what}: input gradient {i} differs");
    }
}

fn assert_close_gradients(what: &str, got: &Gradients, want: &Gradients) {
    common::assert_params_close(what, &got.params, &want.params, 1e-4);
    for (i, (g, w)) in got.inputs.iter().zip(&want.inputs).enumerate() {
        common::assert_close(
            &format!("{what} input gradient {i}"),
            &common::flat(g),
            &common::flat(w),
            1e-4,
        );
    }
}

fn row(call: &str, t: &Transfers) -> String {
    format!(
        "| {call} | {} | {} / {} B | {} / {} B | {} |",
        t.dispatches, t.uploads, t.upload_bytes, t.read_backs, t.read_back_bytes, t.submissions
    )
}

#[test]
fn one_round_trip_uploads_the_batch_once_and_no_gradients() {
    let Some(gpu) = common::gpu() else { return };
    for bidirectional in [false, true] {
        let config = lstm(bidirectional);
        let params = common::params(&config, 1);
        let mut rnn = model(&config, &params, &gpu);
        let mut adam = Optimizer::adam(1e-2);
        let batch = inputs(2);
        let same_content = inputs(2);
        let grad = grad_states(&config, 3);
        // a first round trip uploads the batch and makes the optimizer's moments on the
        // device
        rnn.encode(&batch).unwrap();
        let first = counts(&rnn);
        let g = rnn.backward(&batch, &grad).unwrap();
        rnn.apply_gradients(&g.params, &mut adam).unwrap();

        rnn.encode(&batch).unwrap();
        let encode = counts(&rnn);
        let g = rnn.backward(&batch, &grad).unwrap();
        let backward = counts(&rnn);
        rnn.apply_gradients(&g.params, &mut adam).unwrap();
        let apply = counts(&rnn);
        // today's other paths: backward over a batch the device does not hold (the same
        // content, built apart), gradients the device does not hold
        rnn.encode(&batch).unwrap();
        let g = rnn.backward(&same_content, &grad).unwrap();
        let rerun = counts(&rnn);
        rnn.apply_gradients(&g.params.map(|v| 0.5 * v), &mut adam)
            .unwrap();
        let apply_upload = counts(&rnn);

        let (units, b) = (config.num_units(), LENGTHS.len());
        let tokens: usize = LENGTHS.iter().sum();
        let width = config.state_width();
        let floats = params.to_flat().len();
        let label = format!("bidirectional={bidirectional}");
        // encode: the batch up the first time only, the states and final h, c down
        assert_eq!((first.uploads, first.read_backs), (1, 1), "{label} encode");
        assert_eq!(
            (encode.uploads, encode.upload_bytes, encode.read_backs),
            (0, 0, 1),
            "{label} encode of the batch the device holds"
        );
        assert_eq!(
            encode.read_back_bytes,
            4 * (tokens * width + 2 * units * b * HIDDEN) as u64,
            "{label} encode read-back"
        );
        // backward: the gradient on the states up, one write; the gradients down
        assert_eq!(
            (backward.uploads, backward.upload_writes),
            (1, 1),
            "{label} backward"
        );
        assert_eq!(
            backward.upload_bytes,
            4 * (tokens * width) as u64,
            "{label} backward uploads only grad_states"
        );
        assert_eq!(backward.read_backs, 1, "{label} backward");
        assert_eq!(
            backward.read_back_bytes,
            4 * (floats + tokens * INPUT) as u64,
            "{label} backward read-back"
        );
        // the re-run uploads the batch too and runs encode's dispatches but the final
        // states' gathers (h and c of every layer and direction)
        assert_eq!(rerun.uploads, 2, "{label} re-run");
        assert_eq!(
            rerun.upload_bytes,
            first.upload_bytes + backward.upload_bytes,
            "{label} re-run"
        );
        assert_eq!(
            rerun.dispatches,
            backward.dispatches + encode.dispatches - 2 * units,
            "{label} re-run dispatches"
        );
        // apply: nothing up but for gradients the device does not hold; the step's
        // outcome down
        assert_eq!(
            (apply.uploads, apply.upload_bytes, apply.read_backs),
            (0, 0, 1),
            "{label} apply"
        );
        assert_eq!(
            (apply_upload.uploads, apply_upload.upload_bytes),
            (1, 4 * floats as u64),
            "{label} apply of other gradients"
        );
        assert_eq!(apply.dispatches, apply_upload.dispatches, "{label} apply");

        // training steps of the same network with a readout: the batch up (the first
        // time), the loss down
        let with_readout = RnnConfig {
            output_size: 2,
            ..config.clone()
        }
        .head(Head::PerStep);
        let targeted = common::random_batch(&with_readout, &LENGTHS, true, 4);
        let mut trained = model(&with_readout, &common::params(&with_readout, 5), &gpu);
        let mut adam = Optimizer::adam(1e-2);
        trained.train_step(&targeted, &mut adam).unwrap();
        let first_step = counts(&trained);
        trained.train_step(&targeted, &mut adam).unwrap();
        let step = counts(&trained);
        // the first step: the batch, and Adam's fresh moments
        assert_eq!(
            (first_step.uploads, first_step.read_backs),
            (2, 1),
            "{label} train_step"
        );
        assert_eq!(
            (step.uploads, step.read_backs),
            (0, 1),
            "{label} train_step on the batch the device holds"
        );

        eprintln!("LSTM encoder, 2 layers, hidden {HIDDEN}, input {INPUT}, lengths {LENGTHS:?}, {label}, {floats} parameters");
        eprintln!("| call | dispatches | uploads / bytes | read-backs / bytes | submissions |");
        for (call, t) in [
            ("encode (first)", &first),
            ("encode (the batch held)", &encode),
            ("backward (after encode)", &backward),
            ("apply_gradients (backward's)", &apply),
            ("backward (re-run: another batch)", &rerun),
            ("apply_gradients (other gradients)", &apply_upload),
            ("train_step (per-step readout, 2 outputs)", &first_step),
            ("train_step (the batch held)", &step),
        ] {
            eprintln!("{}", row(call, t));
        }
    }
}

#[test]
fn backward_after_encode_gives_the_re_run_gradients_bit_for_bit() {
    let lstm_cpu = |bidirectional| lstm(bidirectional).dropout(0.25);
    for device in common::devices() {
        for (bidirectional, time_loop) in [(false, TimeLoop::Persistent), (true, TimeLoop::PerStep)]
        {
            let config = lstm_cpu(bidirectional);
            let params = common::params(&config, 10);
            let label = format!(
                "{} bidirectional={bidirectional} {time_loop:?}",
                device.describe()
            );
            let batch = inputs(11);
            let grad = grad_states(&config, 12);
            let run = |other_batch: Option<&SequenceBatch>| {
                let mut rnn = model(&config, &params, &device);
                rnn.set_time_loop(time_loop).unwrap();
                rnn.set_training(true);
                rnn.set_dropout_seed(13);
                rnn.encode(&batch).unwrap();
                let g = rnn.backward(other_batch.unwrap_or(&batch), &grad).unwrap();
                let uploads = last_transfers(&rnn).map(|t| t.uploads);
                (rnn, g, uploads)
            };
            let (mut reused, g_reused, reused_uploads) = run(None);
            let same_content = inputs(11);
            let (_, g_rerun, rerun_uploads) = run(Some(&same_content));
            // a clone is the same batch: its forward pass is the one the device holds
            let clone = batch.clone();
            let (_, g_clone, clone_uploads) = run(Some(&clone));
            if is_gpu(&reused) {
                assert_eq!(reused_uploads, Some(1), "{label}: grad_states only");
                assert_eq!(clone_uploads, Some(1), "{label}: a clone is the same batch");
                assert_eq!(rerun_uploads, Some(2), "{label}: another batch is uploaded");
            }
            assert_same_gradients(&format!("{label} reused vs re-run"), &g_reused, &g_rerun);
            assert_same_gradients(&format!("{label} clone vs re-run"), &g_clone, &g_rerun);
            // and the CPU path's numbers
            let mut cpu = model(&config, &params, &Device::cpu());
            cpu.set_training(true);
            cpu.set_dropout_seed(13);
            cpu.encode(&batch).unwrap();
            let want = cpu.backward(&batch, &grad).unwrap();
            assert_close_gradients(&format!("{label} against the CPU path"), &g_reused, &want);

            // the gradients left on the device are applied as if uploaded
            let mut uploaded = model(&config, &params, &device);
            let (mut a1, mut a2) = (Optimizer::adam(1e-2), Optimizer::adam(1e-2));
            reused.apply_gradients(&g_reused.params, &mut a1).unwrap();
            uploaded.apply_gradients(&g_reused.params, &mut a2).unwrap();
            if is_gpu(&reused) {
                assert_eq!(
                    counts(&reused).uploads + 1,
                    counts(&uploaded).uploads,
                    "{label}: the gradients are not uploaded again"
                );
            }
            assert_eq!(
                common::param_bits(&reused.params().unwrap()),
                common::param_bits(&uploaded.params().unwrap()),
                "{label}: parameters after apply_gradients"
            );
            // and again after the update: the parameters changed, so backward runs the
            // layers forward again, over the new parameters
            let g_after = reused.backward(&batch, &grad).unwrap();
            if is_gpu(&reused) {
                assert_eq!(
                    counts(&reused).uploads,
                    2,
                    "{label}: re-run after the update"
                );
            }
            let mut fresh = model(&config, &reused.params().unwrap(), &device);
            fresh.set_time_loop(time_loop).unwrap();
            fresh.set_training(true);
            fresh.set_dropout_seed(13);
            fresh.encode(&batch).unwrap();
            let want = fresh.backward(&batch, &grad).unwrap();
            assert_same_gradients(&format!("{label} after the update"), &g_after, &want);
        }
    }
}

/// Gradients of `encode(batch)` + `backward(batch)` on a fresh model with `params`.
fn reference(
    config: &RnnConfig,
    params: &RnnParams,
    device: &Device,
    batch: &SequenceBatch,
    grad: &Array3<f32>,
) -> Gradients {
    let mut rnn = model(config, params, device);
    rnn.encode(batch).unwrap();
    rnn.backward(batch, grad).unwrap()
}

#[test]
fn a_training_step_between_encode_and_backward_makes_it_run_forward_again() {
    // a readout, for train_step; encode and backward work under any head
    let config = RnnConfig::new(INPUT, HIDDEN, 2)
        .cell(Cell::Lstm)
        .num_layers(LAYERS)
        .bidirectional(true);
    let params = common::params(&config, 20);
    let batch = common::random_batch(&config, &LENGTHS, true, 21);
    let grad = grad_states(&config, 22);
    let mut results = Vec::new();
    for device in common::devices() {
        let label = device.describe();
        let mut rnn = model(&config, &params, &device);
        let before = rnn.encode(&batch).unwrap();
        rnn.train_step(&batch, &mut Optimizer::sgd(0.5)).unwrap();
        let g = rnn.backward(&batch, &grad).unwrap();
        if is_gpu(&rnn) {
            // the batch is still on the device (the step's): grad_states only; that the
            // layers ran forward again shows in the gradients below
            assert_eq!(counts(&rnn).uploads, 1, "{label}: grad_states only");
        }
        let after = rnn.params().unwrap();
        assert_ne!(common::param_bits(&after), common::param_bits(&params));
        let want = reference(&config, &after, &device, &batch, &grad);
        assert_same_gradients(&format!("{label} after train_step"), &g, &want);
        let stale = reference(&config, &params, &device, &batch, &grad);
        assert_ne!(
            common::param_bits(&g.params),
            common::param_bits(&stale.params),
            "{label}: gradients of the parameters before the step"
        );
        // the same with apply_gradients in between
        let states = rnn.encode(&batch).unwrap();
        assert_ne!(states, before, "{label}: the step changed the states");
        rnn.apply_gradients(&g.params, &mut Optimizer::sgd(0.5))
            .unwrap();
        let g = rnn.backward(&batch, &grad).unwrap();
        let want = reference(&config, &rnn.params().unwrap(), &device, &batch, &grad);
        assert_same_gradients(&format!("{label} after apply_gradients"), &g, &want);
        results.push(g);
    }
    if let [cpu, gpu] = &results[..] {
        assert_close_gradients("GPU against the CPU path", gpu, cpu);
    }
}

#[test]
fn backward_of_a_batch_encoded_before_another_runs_forward_again() {
    let config = lstm(true);
    let params = common::params(&config, 30);
    let (a, b) = (inputs(31), inputs(32));
    let grad = grad_states(&config, 33);
    let mut results = Vec::new();
    for device in common::devices() {
        let label = device.describe();
        let mut rnn = model(&config, &params, &device);
        rnn.encode(&a).unwrap();
        rnn.encode(&b).unwrap();
        let g = rnn.backward(&a, &grad).unwrap();
        if is_gpu(&rnn) {
            assert_eq!(counts(&rnn).uploads, 2, "{label}: A again");
        }
        let want = reference(&config, &params, &device, &a, &grad);
        assert_same_gradients(&format!("{label} backward(A) after encode(B)"), &g, &want);
        // backward(A) left A's forward pass: B's is gone
        let g_b = rnn.backward(&b, &grad).unwrap();
        if is_gpu(&rnn) {
            assert_eq!(counts(&rnn).uploads, 2, "{label}: B again");
        }
        let want_b = reference(&config, &params, &device, &b, &grad);
        assert_same_gradients(&format!("{label} backward(B) after that"), &g_b, &want_b);
        // and a second backward of the same batch needs nothing but its grad_states
        let again = rnn.backward(&b, &grad).unwrap();
        if is_gpu(&rnn) {
            assert_eq!(counts(&rnn).uploads, 1, "{label}: B is still there");
        }
        assert_same_gradients(&format!("{label} backward(B) twice"), &again, &want_b);
        results.push(g);
    }
    if let [cpu, gpu] = &results[..] {
        assert_close_gradients("GPU against the CPU path", gpu, cpu);
    }
}

#[test]
fn apply_gradients_after_a_pass_with_an_infinite_loss_applies_them() {
    // the GPU's update reads the step's loss from a slot the last pass with targets
    // wrote; the gradients of apply_gradients come with no loss, and an infinite one left
    // there must not refuse (or silently skip) their update
    let config = RnnConfig::new(2, 4, 1);
    let params = common::params(&config, 40);
    let x = vec![Array2::from_elem((3, 2), 0.5)];
    let huge = vec![Array2::from_elem((3, 1), 3e38f32)];
    let batch = SequenceBatch::new(x, unfold::Targets::Values(huge)).unwrap();
    let mut results = Vec::new();
    for device in common::devices() {
        let label = device.describe();
        let mut rnn = model(&config, &params, &device);
        let loss = rnn.forward(&batch).unwrap().loss;
        assert!(loss.is_infinite(), "{label}: the loss overflows ({loss})");
        rnn.encode(&batch).unwrap();
        let g = rnn
            .backward(&batch, &Array3::from_elem((1, 3, 4), 0.1))
            .unwrap();
        let mut sgd = Optimizer::sgd(0.1);
        rnn.apply_gradients(&g.params, &mut sgd)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(sgd.steps(), 1, "{label}");
        let after = rnn.params().unwrap();
        assert_ne!(after, params, "{label}: nothing was applied");
        results.push(after);
    }
    if let [cpu, gpu] = &results[..] {
        common::assert_params_close("GPU against the CPU path", gpu, cpu, 1e-5);
    }
}
