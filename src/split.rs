//! Batches larger than a device allows, run as chunks of their sequences.
//!
//! A batch whose buffers would exceed a GPU adapter's limits (the size of a storage
//! binding, the workgroups of a dispatch, the dispatches of one submission) is not
//! refused: the operation runs on chunks of its sequences — the two halves of the batch,
//! halved again while still too large — and the chunks' results are combined into the
//! whole batch's:
//!
//! - outputs, states, final states and input gradients are assembled in the batch's
//!   order; initial states and the gradient on the states are split by sequence;
//! - a loss is the mean of the chunks' losses weighted by each chunk's share of the
//!   loss's terms (valid positions for the per-step head, sequences for the last-step
//!   head; value targets also count the output units, the same factor in every chunk),
//!   and the gradients of that loss are combined with the same weights, so that they are
//!   the gradient of the whole batch's mean loss; the gradients of an outside loss
//!   ([`crate::Rnn::backward`]) are summed;
//! - dropout masks are the whole batch's: a chunk draws the masks of the rows its
//!   positions have in the whole batch's packing.
//!
//! Sequences of a batch meet only in those sums, so a split batch gives the whole batch's
//! results to f32 rounding (the sums are taken in another order), dropout included. The
//! gradients are combined on the host, one read-back per chunk. A sequence that alone
//! exceeds a limit is refused with [`Error::ExceedsDeviceLimit`], saying so.
//!
//! Nothing here depends on the device: each operation is a closure run on a chunk, and
//! only [`Error::ExceedsDeviceLimit`] makes a batch split.

use crate::batch::{Packing, SequenceBatch, Targets};
use crate::cpu::RnnState;
use crate::gpu::Dropout;
use crate::model::{RnnConfig, RnnParams};
use crate::rnn::{Encoded, Forward, Gradients};
use crate::{Error, Head, Result};
use ndarray::{s, Array3, Axis};

/// A chunk of a batch, as the operation sees it.
struct Chunk<'a> {
    /// The chunk as a batch of its own (the whole batch when it is not split).
    batch: &'a SequenceBatch,
    /// Its sequences, as indices into the whole batch (`None`: the whole batch).
    seqs: Option<&'a [usize]>,
    /// For each of its packed rows, the row in the whole batch (`None`: the whole batch).
    rows: Option<Vec<u32>>,
}

impl Chunk<'_> {
    /// `state` (`[layers·D, batch, H]` for the whole batch) for the chunk's sequences.
    fn state(&self, state: Option<&RnnState>) -> Option<RnnState> {
        let (state, seqs) = (state?, self.seqs?);
        Some(RnnState {
            h: state.h.select(Axis(1), seqs),
            c: state.c.as_ref().map(|c| c.select(Axis(1), seqs)),
        })
    }

    /// The dropout masks of the training pass keyed `key`, as the whole batch draws them.
    fn dropout(&self, key: Option<u64>) -> Option<Dropout<'_>> {
        key.map(|key| Dropout {
            key,
            rows: self.rows.as_deref(),
        })
    }
}

/// What an operation gave: for the whole batch at once, or for chunks of its sequences
/// (each with its sequences' indices in the whole batch; together every sequence once).
enum Outcome<R> {
    Whole(R),
    Split(Vec<(Vec<usize>, R)>),
}

fn exceeds(e: &Error) -> bool {
    matches!(e, Error::ExceedsDeviceLimit { .. })
}

/// Runs `run` on the whole batch or, where that exceeds a device limit, on chunks of it.
fn in_chunks<R, F>(whole: &SequenceBatch, mut run: F) -> Result<Outcome<R>>
where
    F: FnMut(&Chunk<'_>) -> Result<R>,
{
    let all = Chunk {
        batch: whole,
        seqs: None,
        rows: None,
    };
    match run(&all) {
        Ok(r) => return Ok(Outcome::Whole(r)),
        Err(e) if !exceeds(&e) => return Err(e),
        Err(e) if whole.len() == 1 => return Err(alone(e)),
        Err(_) => {}
    }
    let mut parts = Vec::new();
    let (first, second) = halves(whole, (0..whole.len()).collect());
    run_chunk(whole, first, &mut run, &mut parts)?;
    run_chunk(whole, second, &mut run, &mut parts)?;
    Ok(Outcome::Split(parts))
}

/// Runs `run` on the chunk of the sequences `seqs` of `whole`, or on its halves (and so
/// on) where that exceeds a device limit, adding the results to `parts`.
fn run_chunk<R, F>(
    whole: &SequenceBatch,
    seqs: Vec<usize>,
    run: &mut F,
    parts: &mut Vec<(Vec<usize>, R)>,
) -> Result<()>
where
    F: FnMut(&Chunk<'_>) -> Result<R>,
{
    let batch = select(whole, &seqs)?;
    let chunk = Chunk {
        batch: &batch,
        seqs: Some(&seqs),
        rows: Some(rows_in_whole(whole.packing(), batch.packing(), &seqs)),
    };
    match run(&chunk) {
        Ok(r) => {
            parts.push((seqs, r));
            Ok(())
        }
        Err(e) if !exceeds(&e) => Err(e),
        Err(e) if seqs.len() == 1 => Err(alone(e)),
        Err(_) => {
            drop(chunk);
            let (first, second) = halves(whole, seqs);
            run_chunk(whole, first, run, parts)?;
            run_chunk(whole, second, run, parts)
        }
    }
}

/// The error of a single sequence that exceeds a limit: no split helps it.
fn alone(e: Error) -> Error {
    match e {
        Error::ExceedsDeviceLimit {
            what,
            needed,
            limit,
            ..
        } => Error::ExceedsDeviceLimit {
            what: format!("{what}, for a single sequence,"),
            needed,
            limit,
            hint: "a batch is split into chunks of sequences to fit the device, but a sequence is not: use shorter sequences, such as chunks of a long one carried over with Rnn::train_step_from",
        },
        e => e,
    }
}

/// `seqs` (at least two, in the batch's order) in two parts of about the same number of
/// valid positions, each with at least one sequence.
fn halves(whole: &SequenceBatch, mut seqs: Vec<usize>) -> (Vec<usize>, Vec<usize>) {
    let lengths = whole.lengths();
    let total: usize = seqs.iter().map(|&i| lengths[i]).sum();
    let mut at = 1;
    let mut sum = lengths[seqs[0]];
    while at + 1 < seqs.len() && 2 * (sum + lengths[seqs[at]]) <= total {
        sum += lengths[seqs[at]];
        at += 1;
    }
    let second = seqs.split_off(at);
    (seqs, second)
}

/// The batch of the sequences `seqs` of `whole`, with their targets.
fn select(whole: &SequenceBatch, seqs: &[usize]) -> Result<SequenceBatch> {
    let targets = whole.targets().map(|t| match t {
        Targets::Classes(c) => Targets::Classes(seqs.iter().map(|&i| c[i].clone()).collect()),
        Targets::Values(v) => Targets::Values(seqs.iter().map(|&i| v[i].clone()).collect()),
    });
    match whole.token_ids() {
        Some(ids) => {
            let ids = seqs.iter().map(|&i| ids[i].clone()).collect();
            let vocab = whole.input_size();
            match targets {
                Some(t) => SequenceBatch::from_tokens(ids, vocab, t),
                None => SequenceBatch::tokens_only(ids, vocab),
            }
        }
        None => {
            let inputs = seqs.iter().map(|&i| whole.inputs()[i].clone()).collect();
            match targets {
                Some(t) => SequenceBatch::new(inputs, t),
                None => SequenceBatch::inputs_only(inputs),
            }
        }
    }
}

/// For each packed row of a chunk (the sequences `seqs` of the whole batch), its row in
/// the whole batch.
fn rows_in_whole(whole: &Packing, chunk: &Packing, seqs: &[usize]) -> Vec<u32> {
    let mut position = vec![0; whole.batch()];
    for (j, &i) in whole.order.iter().enumerate() {
        position[i] = j;
    }
    let mut rows = Vec::with_capacity(chunk.tokens());
    for (t, &n) in chunk.batch_sizes.iter().enumerate() {
        for &k in &chunk.order[..n] {
            rows.push((whole.offsets[t] + position[seqs[k]]) as u32);
        }
    }
    rows
}

/// The number of terms the batch's mean loss averages (per output unit).
fn loss_terms(config: &RnnConfig, batch: &SequenceBatch) -> usize {
    match config.head {
        Head::LastStep => batch.len(),
        Head::PerStep | Head::None => batch.tokens(),
    }
}

/// Each chunk's weight in the whole batch's mean loss.
fn loss_weights<R>(
    config: &RnnConfig,
    whole: &SequenceBatch,
    parts: &[(Vec<usize>, R)],
) -> Vec<f64> {
    let total = loss_terms(config, whole) as f64;
    let lengths = whole.lengths();
    parts
        .iter()
        .map(|(seqs, _)| {
            let terms = match config.head {
                Head::LastStep => seqs.len(),
                Head::PerStep | Head::None => seqs.iter().map(|&i| lengths[i]).sum(),
            };
            terms as f64 / total
        })
        .collect()
}

/// An array with the whole batch's sequences along `axis`, each chunk's (`part`, its
/// sequences `seqs` along `axis`) in its place; `dim` is its shape, zeros where no chunk
/// writes (past each sequence's length).
fn assemble<'a>(
    dim: (usize, usize, usize),
    axis: Axis,
    parts: impl IntoIterator<Item = (&'a [usize], &'a Array3<f32>)>,
) -> Array3<f32> {
    let mut out = Array3::zeros(dim);
    for (seqs, part) in parts {
        for (k, &i) in seqs.iter().enumerate() {
            let src = part.index_axis(axis, k);
            let (rows, cols) = src.dim();
            out.index_axis_mut(axis, i)
                .slice_mut(s![..rows, ..cols])
                .assign(&src);
        }
    }
    out
}

/// Final states `[layers·D, batch, H]` (and `c`) of the chunks, in the batch's order.
fn assemble_states<'a>(
    batch: usize,
    parts: impl Iterator<Item = (&'a [usize], (&'a Array3<f32>, Option<&'a Array3<f32>>))> + Clone,
) -> RnnState {
    let dim = |a: &Array3<f32>| (a.dim().0, batch, a.dim().2);
    let first = parts.clone().next().expect("at least one chunk").1;
    let h = assemble(
        dim(first.0),
        Axis(1),
        parts.clone().map(|(s, (h, _))| (s, h)),
    );
    let c = first.1.map(|c0| {
        assemble(
            dim(c0),
            Axis(1),
            parts.map(|(s, (_, c))| (s, c.expect("every chunk has c"))),
        )
    });
    RnnState { h, c }
}

/// `Σ weights[i] · grads[i]`, summed in f64.
fn combine_gradients<'a>(
    config: &RnnConfig,
    grads: impl Iterator<Item = (f64, &'a RnnParams)>,
) -> RnnParams {
    let mut sum: Vec<f64> = Vec::new();
    for (w, g) in grads {
        let flat = g.to_flat();
        sum.resize(flat.len(), 0.0);
        for (s, v) in sum.iter_mut().zip(flat) {
            *s += w * v as f64;
        }
    }
    let mut out = RnnParams::zeros(config);
    out.assign_flat(&sum.iter().map(|&v| v as f32).collect::<Vec<f32>>())
        .expect("a sum of gradients of this model");
    out
}

/// `Σ weights[i] · losses[i]`.
fn combine_losses(losses: impl Iterator<Item = (f64, f32)>) -> f32 {
    losses.map(|(w, l)| w * l as f64).sum::<f64>() as f32
}

/// A forward pass over `batch` from `initial`, run by `run` on the batch or its chunks.
pub(crate) fn forward(
    config: &RnnConfig,
    batch: &SequenceBatch,
    initial: Option<&RnnState>,
    mut run: impl FnMut(&SequenceBatch, Option<&RnnState>) -> Result<Forward>,
) -> Result<Forward> {
    let outcome = in_chunks(batch, |chunk| {
        let state = chunk.state(initial);
        run(chunk.batch, state.as_ref().or(initial))
    })?;
    let parts = match outcome {
        Outcome::Whole(f) => return Ok(f),
        Outcome::Split(parts) => parts,
    };
    let weights = loss_weights(config, batch, &parts);
    let out_dim = {
        let o = parts[0].1.outputs.dim();
        let steps = if config.head == Head::LastStep {
            1
        } else {
            batch.max_len()
        };
        (batch.len(), steps, o.2)
    };
    let outputs = assemble(
        out_dim,
        Axis(0),
        parts.iter().map(|(s, f)| (&s[..], &f.outputs)),
    );
    let finals = assemble_states(
        batch.len(),
        parts
            .iter()
            .map(|(s, f)| (&s[..], (&f.final_hidden, f.final_cell.as_ref()))),
    );
    let loss = combine_losses(weights.iter().zip(&parts).map(|(&w, (_, f))| (w, f.loss)));
    Ok(Forward {
        outputs,
        final_hidden: finals.h,
        final_cell: finals.c,
        loss,
    })
}

/// The loss of `batch` and its gradients (with the dropout masks of the training pass
/// keyed `dropout`, if any) and, with `want_final`, each sequence's final state; run by
/// `run` on the batch or its chunks.
pub(crate) fn gradients(
    config: &RnnConfig,
    batch: &SequenceBatch,
    initial: Option<&RnnState>,
    dropout: Option<u64>,
    want_final: bool,
    mut run: impl FnMut(
        &SequenceBatch,
        Option<&RnnState>,
        Option<Dropout<'_>>,
        bool,
    ) -> Result<(f32, RnnParams, Option<RnnState>)>,
) -> Result<(f32, RnnParams, Option<RnnState>)> {
    let outcome = in_chunks(batch, |chunk| {
        let state = chunk.state(initial);
        run(
            chunk.batch,
            state.as_ref().or(initial),
            chunk.dropout(dropout),
            want_final,
        )
    })?;
    let parts = match outcome {
        Outcome::Whole(r) => return Ok(r),
        Outcome::Split(parts) => parts,
    };
    let weights = loss_weights(config, batch, &parts);
    let loss = combine_losses(weights.iter().zip(&parts).map(|(&w, (_, r))| (w, r.0)));
    let grads = combine_gradients(
        config,
        weights.iter().zip(&parts).map(|(&w, (_, r))| (w, &r.1)),
    );
    let finals = want_final.then(|| {
        assemble_states(
            batch.len(),
            parts.iter().map(|(s, r)| {
                let state = r.2.as_ref().expect("asked for final states");
                (&s[..], (&state.h, state.c.as_ref()))
            }),
        )
    });
    Ok((loss, grads, finals))
}

/// The encoder's forward pass over `batch` (with the dropout masks keyed `dropout`),
/// run by `run` on the batch or its chunks.
pub(crate) fn encode(
    batch: &SequenceBatch,
    dropout: Option<u64>,
    mut run: impl FnMut(&SequenceBatch, Option<Dropout<'_>>) -> Result<Encoded>,
) -> Result<Encoded> {
    let parts = match in_chunks(batch, |chunk| run(chunk.batch, chunk.dropout(dropout)))? {
        Outcome::Whole(e) => return Ok(e),
        Outcome::Split(parts) => parts,
    };
    let width = parts[0].1.states.dim().2;
    let states = assemble(
        (batch.len(), batch.max_len(), width),
        Axis(0),
        parts.iter().map(|(s, e)| (&s[..], &e.states)),
    );
    let finals = assemble_states(
        batch.len(),
        parts
            .iter()
            .map(|(s, e)| (&s[..], (&e.final_hidden, e.final_cell.as_ref()))),
    );
    Ok(Encoded {
        states,
        final_hidden: finals.h,
        final_cell: finals.c,
    })
}

/// The encoder's backward pass from `grad_states` (`[batch, max_len, D·H]`), run by
/// `run` on the batch or its chunks: the chunks' parameter gradients add up (the loss is
/// the caller's), their input gradients are each sequence's.
pub(crate) fn backward(
    config: &RnnConfig,
    batch: &SequenceBatch,
    grad_states: &Array3<f32>,
    dropout: Option<u64>,
    mut run: impl FnMut(&SequenceBatch, &Array3<f32>, Option<Dropout<'_>>) -> Result<Gradients>,
) -> Result<Gradients> {
    let outcome = in_chunks(batch, |chunk| match chunk.seqs {
        None => run(chunk.batch, grad_states, chunk.dropout(dropout)),
        Some(seqs) => {
            let grad = grad_states
                .select(Axis(0), seqs)
                .slice(s![.., ..chunk.batch.max_len(), ..])
                .to_owned();
            run(chunk.batch, &grad, chunk.dropout(dropout))
        }
    })?;
    let parts = match outcome {
        Outcome::Whole(g) => return Ok(g),
        Outcome::Split(parts) => parts,
    };
    let params = combine_gradients(config, parts.iter().map(|(_, g)| (1.0, &g.params)));
    let dense = batch.token_ids().is_none();
    let mut inputs = vec![None; if dense { batch.len() } else { 0 }];
    for (seqs, g) in parts {
        for (&i, x) in seqs.iter().zip(g.inputs) {
            inputs[i] = Some(x);
        }
    }
    let inputs = inputs
        .into_iter()
        .map(|x| x.expect("every sequence is in one chunk"))
        .collect();
    Ok(Gradients { params, inputs })
}
