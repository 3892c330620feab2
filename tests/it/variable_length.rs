//! Variable-length minibatches: nothing past a sequence's length influences anything.
//!
//! Batches hold exact-length arrays, so "changing the padding" cannot be expressed;
//! instead: growing the *other* sequences changes nothing for a sequence; a sequence gives
//! the same outputs, final state and (weighted) gradient alone as inside a batch; outputs
//! are zero past each length; the final state is the state at the sequence's own last
//! step (checked against a naive step-by-step reference written here); permuting the
//! batch permutes the results.

use crate::common;

use common::{assert_close, config, flat, params, random_batch};
use unfold::internals::cpu;
use unfold::ndarray::{s, Array2, Axis};
use unfold::rng::SplitMix64;
use unfold::{Cell, Device, Head, Rnn, RnnConfig, RnnParams, SequenceBatch, Targets};

const LENGTHS: [usize; 4] = [3, 1, 4, 2];

/// Every (head, target kind, nonlinearity) with two layers.
fn configs() -> Vec<(RnnConfig, bool)> {
    let mut out = Vec::new();
    for last_step in [false, true] {
        for relu in [false, true] {
            for values in [false, true] {
                out.push((config(3, 5, 4, 2, relu, last_step), values));
            }
        }
    }
    out
}

fn rnn(config: &RnnConfig, seed: u64) -> Rnn {
    Rnn::new(config.clone(), params(config, seed), &Device::cpu()).expect("valid model")
}

/// Sequence `i` of `batch` (inputs and targets) as a batch of its own.
fn alone(batch: &SequenceBatch, i: usize) -> SequenceBatch {
    sub_batch(batch, &[i])
}

/// The sequences `which` of `batch`, in that order.
fn sub_batch(batch: &SequenceBatch, which: &[usize]) -> SequenceBatch {
    let inputs = which.iter().map(|&i| batch.inputs()[i].clone()).collect();
    let targets = match batch.targets().unwrap() {
        Targets::Classes(c) => Targets::Classes(which.iter().map(|&i| c[i].clone()).collect()),
        Targets::Values(v) => Targets::Values(which.iter().map(|&i| v[i].clone()).collect()),
    };
    SequenceBatch::new(inputs, targets).expect("valid sub-batch")
}

/// A naive reference: the recurrence of ARCHITECTURE.md step by step in f64 for one sequence.
/// Returns the readout at every step and the final state of every layer.
fn reference(config: &RnnConfig, p: &RnnParams, x: &Array2<f32>) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let h = config.hidden_size;
    let phi = |v: f64| match config.cell {
        Cell::Relu => v.max(0.0),
        Cell::Tanh => v.tanh(),
        other => unreachable!("an Elman reference, not {other}"),
    };
    let mut state = vec![vec![0.0f64; h]; config.num_layers];
    let mut outputs = Vec::new();
    for t in 0..x.nrows() {
        let mut input: Vec<f64> = x.row(t).iter().map(|&v| v as f64).collect();
        for (l, layer) in p.layers.iter().enumerate() {
            let next: Vec<f64> = (0..h)
                .map(|r| {
                    let a: f64 = (0..input.len())
                        .map(|c| layer.w_ih[[r, c]] as f64 * input[c])
                        .sum::<f64>()
                        + (0..h)
                            .map(|c| layer.w_hh[[r, c]] as f64 * state[l][c])
                            .sum::<f64>()
                        + layer.b_ih[r] as f64
                        + layer.b_hh[r] as f64;
                    phi(a)
                })
                .collect();
            state[l] = next.clone();
            input = next;
        }
        let o = (0..config.output_size)
            .map(|r| {
                (0..h)
                    .map(|c| p.w_out[[r, c]] as f64 * input[c])
                    .sum::<f64>()
                    + p.b_out[r] as f64
            })
            .collect();
        outputs.push(o);
    }
    (outputs, state)
}

/// Elements of any array or view in logical order.
trait FlatVec {
    fn flat_vec(&self) -> Vec<f32>;
}

impl<S: unfold::ndarray::Data<Elem = f32>, D: unfold::ndarray::Dimension> FlatVec
    for unfold::ndarray::ArrayBase<S, D>
{
    fn flat_vec(&self) -> Vec<f32> {
        self.iter().copied().collect()
    }
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[test]
fn outputs_and_final_states_match_a_naive_reference() {
    for (c, values) in configs() {
        let batch = random_batch(&c, &LENGTHS, values, 1);
        let mut model = rnn(&c, 2);
        let p = model.params().unwrap();
        let fwd = model.forward(&batch).unwrap();
        for (i, x) in batch.inputs().iter().enumerate() {
            let (outs, finals) = reference(&c, &p, x);
            let what = format!("{:?} {:?} sequence {i}", c.cell, c.head);
            match c.head {
                Head::PerStep | Head::None => {
                    for (t, o) in outs.iter().enumerate() {
                        let got = fwd.outputs.slice(s![i, t, ..]).flat_vec();
                        assert_close(
                            &format!("{what} output at step {t}"),
                            &got,
                            &to_f32(o),
                            1e-5,
                        );
                    }
                }
                Head::LastStep => {
                    let got = fwd.outputs.slice(s![i, 0, ..]).flat_vec();
                    assert_close(
                        &format!("{what} output"),
                        &got,
                        &to_f32(outs.last().unwrap()),
                        1e-5,
                    );
                }
            }
            for (l, f) in finals.iter().enumerate() {
                let got = fwd.final_hidden.slice(s![l, i, ..]).flat_vec();
                assert_close(
                    &format!("{what} final state of layer {l}"),
                    &got,
                    &to_f32(f),
                    1e-5,
                );
            }
        }
    }
}

/// Sequence 0 of lengths [3, 1, 4, 2], and the same batch with the other three
/// sequences made longer (their first steps unchanged).
fn batch_and_grown(c: &RnnConfig, values: bool, seed: u64) -> (SequenceBatch, SequenceBatch) {
    let batch = random_batch(c, &LENGTHS, values, seed);
    let extra = 5;
    let mut rng = SplitMix64::new(seed + 100);
    let grown_inputs: Vec<Array2<f32>> = batch
        .inputs()
        .iter()
        .enumerate()
        .map(|(i, x)| {
            if i == 0 {
                return x.clone();
            }
            let more = Array2::from_shape_simple_fn((extra, c.input_size), || rng.normal());
            unfold::ndarray::concatenate(Axis(0), &[x.view(), more.view()]).unwrap()
        })
        .collect();
    let per_step = c.head == Head::PerStep;
    let grown_targets = match batch.targets().unwrap() {
        Targets::Classes(t) => Targets::Classes(
            t.iter()
                .enumerate()
                .map(|(i, seq)| {
                    let mut seq = seq.clone();
                    if i > 0 && per_step {
                        seq.extend((0..extra).map(|_| rng.below(c.output_size) as u32));
                    }
                    seq
                })
                .collect(),
        ),
        Targets::Values(t) => Targets::Values(
            t.iter()
                .enumerate()
                .map(|(i, y)| {
                    if i > 0 && per_step {
                        let more =
                            Array2::from_shape_simple_fn((extra, c.output_size), || rng.normal());
                        unfold::ndarray::concatenate(Axis(0), &[y.view(), more.view()]).unwrap()
                    } else {
                        y.clone()
                    }
                })
                .collect(),
        ),
    };
    let grown = SequenceBatch::new(grown_inputs, grown_targets).unwrap();
    // sequence 0 is now the shortest but one, so its packed position moves too
    assert_eq!(grown.lengths(), &[3, 6, 9, 7]);
    (batch, grown)
}

#[test]
fn growing_other_sequences_changes_nothing_for_a_sequence() {
    for (c, values) in configs() {
        let (batch, grown) = batch_and_grown(&c, values, 3);
        let mut model = rnn(&c, 4);
        let a = model.forward(&batch).unwrap();
        let b = model.forward(&grown).unwrap();
        let what = format!("{:?} {:?} values {values}", c.cell, c.head);
        // sequence 0: every output and its final state of every layer
        let steps = if c.head == Head::PerStep { 3 } else { 1 };
        assert_close(
            &format!("{what}: outputs of sequence 0"),
            &a.outputs.slice(s![0, ..steps, ..]).flat_vec(),
            &b.outputs.slice(s![0, ..steps, ..]).flat_vec(),
            1e-6,
        );
        assert_close(
            &format!("{what}: final state of sequence 0"),
            &a.final_hidden.slice(s![.., 0, ..]).flat_vec(),
            &b.final_hidden.slice(s![.., 0, ..]).flat_vec(),
            1e-6,
        );
        assert!(
            b.outputs
                .slice(s![0, steps.., ..])
                .iter()
                .all(|&v| v == 0.0),
            "{what}: sequence 0 has outputs past its length"
        );
        if c.head == Head::PerStep {
            // the future never influences the past: the other sequences' early outputs
            // are unchanged too
            for (i, &len) in LENGTHS.iter().enumerate().skip(1) {
                assert_close(
                    &format!("{what}: first {len} outputs of sequence {i}"),
                    &a.outputs.slice(s![i, ..len, ..]).flat_vec(),
                    &b.outputs.slice(s![i, ..len, ..]).flat_vec(),
                    1e-6,
                );
            }
        }
        // and the grown sequences' final states did change (the test can see a change)
        for i in 1..4 {
            let d: f32 = (&a.final_hidden.slice(s![.., i, ..])
                - &b.final_hidden.slice(s![.., i, ..]))
                .iter()
                .map(|v| v.abs())
                .sum();
            assert!(
                d > 1e-3,
                "{what}: growing sequence {i} did not change its final state"
            );
        }
    }
}

#[test]
fn a_sequence_alone_equals_its_part_of_the_batch() {
    for (c, values) in configs() {
        let batch = random_batch(&c, &LENGTHS, values, 5);
        let mut model = rnn(&c, 6);
        let p64 = model.params().unwrap().cast::<f64>();
        let fwd = model.forward(&batch).unwrap();
        let (loss, grads) = cpu::loss_and_gradients::<f64>(&c, &p64, &batch);
        let what = format!("{:?} {:?} values {values}", c.cell, c.head);

        // the batch loss and gradient are the loss-weighted sums of the sequences':
        // per-step head: weight n_i / N (mean over all valid positions);
        // last-step head: weight 1 / B (mean over sequences)
        let total: usize = LENGTHS.iter().sum();
        let mut weighted_loss = 0.0;
        let mut weighted = vec![0.0f64; grads.len()];
        for (i, &len) in LENGTHS.iter().enumerate() {
            let one = alone(&batch, i);
            let f1 = model.forward(&one).unwrap();
            let steps = if c.head == Head::PerStep { len } else { 1 };
            assert_eq!(f1.outputs.dim(), (1, steps, c.output_size));
            assert_close(
                &format!("{what}: outputs of sequence {i} alone"),
                &flat(&f1.outputs),
                &fwd.outputs.slice(s![i, ..steps, ..]).flat_vec(),
                1e-6,
            );
            assert_close(
                &format!("{what}: final state of sequence {i} alone"),
                &flat(&f1.final_hidden),
                &fwd.final_hidden.slice(s![.., i, ..]).flat_vec(),
                1e-6,
            );
            let (l1, g1) = cpu::loss_and_gradients::<f64>(&c, &p64, &one);
            let w = match c.head {
                Head::PerStep | Head::None => len as f64 / total as f64,
                Head::LastStep => 1.0 / LENGTHS.len() as f64,
            };
            weighted_loss += w * l1;
            for (acc, g) in weighted.iter_mut().zip(g1.to_flat()) {
                *acc += w * g;
            }
        }
        assert!(
            (loss - weighted_loss).abs() <= 1e-12 * loss.abs(),
            "{what}: batch loss {loss} but weighted sum of the sequences' losses {weighted_loss}"
        );
        let g = grads.to_flat();
        let diff = g
            .iter()
            .zip(&weighted)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm = g.iter().map(|a| a * a).sum::<f64>().sqrt();
        assert!(norm > 1e-6, "{what}: zero gradient");
        assert!(
            diff <= 1e-12 * norm,
            "{what}: batch gradient differs from the weighted sum of the sequences' gradients: {diff:e} (norm {norm:e})"
        );
    }
}

#[test]
fn outputs_are_exactly_zero_past_each_length() {
    for (c, values) in configs() {
        let batch = random_batch(&c, &LENGTHS, values, 7);
        let fwd = rnn(&c, 8).forward(&batch).unwrap();
        let n = LENGTHS.len();
        assert_eq!(fwd.final_hidden.dim(), (c.num_layers, n, c.hidden_size));
        match c.head {
            Head::PerStep | Head::None => {
                assert_eq!(fwd.outputs.dim(), (n, 4, c.output_size));
                for (i, &len) in LENGTHS.iter().enumerate() {
                    for t in 0..4 {
                        let row = fwd.outputs.slice(s![i, t, ..]);
                        if t < len {
                            assert!(
                                row.iter().any(|&v| v != 0.0),
                                "sequence {i} step {t}: valid output is all zero"
                            );
                        } else {
                            assert!(
                                row.iter().all(|&v| v == 0.0),
                                "sequence {i} step {t} is past length {len}: {row}"
                            );
                        }
                    }
                }
            }
            Head::LastStep => {
                assert_eq!(fwd.outputs.dim(), (n, 1, c.output_size));
                assert!(fwd.outputs.iter().all(|v| v.is_finite()));
            }
        }
    }
}

#[test]
fn final_hidden_is_the_state_at_the_sequences_own_last_step() {
    for (c, values) in configs() {
        // shorter sequences between two of the longest, and a tie in length
        let lengths = [4, 2, 1, 3, 4];
        let batch = random_batch(&c, &lengths, values, 9);
        let mut model = rnn(&c, 10);
        let fwd = model.forward(&batch).unwrap();
        for (i, &len) in lengths.iter().enumerate() {
            // each sequence run alone ends in the state the batch reports for it
            let single = model.forward(&alone(&batch, i)).unwrap();
            assert_close(
                &format!(
                    "{:?} {:?}: final state of sequence {i} (length {len})",
                    c.cell, c.head
                ),
                &fwd.final_hidden.slice(s![.., i, ..]).flat_vec(),
                &flat(&single.final_hidden),
                1e-6,
            );
        }
        // the final state of a prefix is the state at the prefix's last step (checked
        // against the reference), not the state after more steps
        let x0 = &batch.inputs()[0];
        let prefix = |k: usize| {
            let inputs = vec![x0.slice(s![..k, ..]).to_owned()];
            let rows = if c.head == Head::PerStep { k } else { 1 };
            let targets = Targets::Classes(vec![vec![0; rows]]);
            SequenceBatch::new(inputs, targets).unwrap()
        };
        let h2 = model.forward(&prefix(2)).unwrap().final_hidden;
        let h4 = model.forward(&prefix(4)).unwrap().final_hidden;
        let p = model.params().unwrap();
        let (_, ref2) = reference(&c, &p, &x0.slice(s![..2, ..]).to_owned());
        assert_close(
            "state after 2 steps",
            &flat(&h2),
            &to_f32(&ref2.concat()),
            1e-5,
        );
        let d: f32 = (&h2 - &h4).iter().map(|v| v.abs()).sum();
        assert!(d > 1e-3, "state after 2 steps equals state after 4");
    }
}

#[test]
fn permuting_the_batch_permutes_the_results() {
    for (c, values) in configs() {
        // equal lengths included: the packing's tie-breaking must not matter
        let lengths = [3, 1, 4, 2, 3, 4];
        let batch = random_batch(&c, &lengths, values, 11);
        let perm = [4, 2, 0, 5, 3, 1];
        let permuted = sub_batch(&batch, &perm);
        let mut model = rnn(&c, 12);
        let a = model.forward(&batch).unwrap();
        let b = model.forward(&permuted).unwrap();
        let what = format!("{:?} {:?} values {values}", c.cell, c.head);
        for (j, &i) in perm.iter().enumerate() {
            assert_close(
                &format!("{what}: outputs of sequence {i} at position {j}"),
                &b.outputs.slice(s![j, .., ..]).flat_vec(),
                &a.outputs.slice(s![i, .., ..]).flat_vec(),
                1e-6,
            );
            assert_close(
                &format!("{what}: final state of sequence {i} at position {j}"),
                &b.final_hidden.slice(s![.., j, ..]).flat_vec(),
                &a.final_hidden.slice(s![.., i, ..]).flat_vec(),
                1e-6,
            );
        }
        assert_close(&format!("{what}: loss"), &[b.loss], &[a.loss], 1e-6);
        let (_, ga) = model.loss_and_gradients(&batch).unwrap();
        let (_, gb) = model.loss_and_gradients(&permuted).unwrap();
        common::assert_params_close(&format!("{what}: gradients"), &gb, &ga, 1e-5);
    }
}

#[test]
fn loss_is_the_mean_over_valid_positions_only() {
    // computed here from the outputs: cross-entropy averaged over valid (sequence, step)
    // positions (per-step head) or sequences (last-step head); squared error averaged over
    // valid positions and output units; the zeros past each length count nowhere
    for (c, values) in configs() {
        let batch = random_batch(&c, &LENGTHS, values, 13);
        let fwd = rnn(&c, 14).forward(&batch).unwrap();
        let per_step = c.head == Head::PerStep;
        let (mut total, mut count) = (0.0f64, 0usize);
        for (i, &len) in LENGTHS.iter().enumerate() {
            let rows = if per_step { len } else { 1 };
            for t in 0..rows {
                let o: Vec<f64> = fwd
                    .outputs
                    .slice(s![i, t, ..])
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                match batch.targets().unwrap() {
                    Targets::Classes(y) => {
                        let max = o.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let lse = max + o.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                        total += lse - o[y[i][t] as usize];
                        count += 1;
                    }
                    Targets::Values(y) => {
                        for (k, ok) in o.iter().enumerate() {
                            total += (ok - y[i][[t, k]] as f64).powi(2);
                            count += 1;
                        }
                    }
                }
            }
        }
        let want = total / count as f64;
        assert_close(
            &format!("{:?} {:?} values {values}: loss", c.cell, c.head),
            &[fwd.loss],
            &[want as f32],
            1e-5,
        );
    }
}
