//! The CPU reference path: the same model and semantics as the GPU path, computed with
//! ndarray in any [`Real`] precision (`f32` to train, `f64` for gradient checks).
//!
//! It is built the fast way: per layer and direction, the input projection of every step
//! (all gates) is one matrix product before the time loop; the loop does one small
//! product per step on the packed rows still running (see `src/batch.rs`) and the
//! cell's element-wise work (`cell.rs`, the only place cells differ); the weight
//! gradients are one product over all steps after it. The reverse direction walks the
//! same packed rows from the last step to the first: a sequence joins when its own last
//! step comes, so it runs within its own length. Buffers live in a [`Workspace`] reused
//! across calls, so the time loop allocates nothing.

mod cell;
mod gemm;
mod loss;
mod pool;
pub mod step_product;
mod team;

use crate::batch::{Packing, SequenceBatch};
use crate::model::{Cell, LayerParams, RnnConfig, RnnParams};
use crate::real::Real;
use crate::Head;
use cell::{backward_units, forward_units, UnitsBackward, UnitsForward};
use gemm::mat_mul;
use ndarray::{s, Array1, Array2, Array3, ArrayView2, ArrayViewMut2, Axis, Zip};
use std::ops::Range;
use step_product::{step_product, Panels};

pub use loss::{cross_entropy, pack_classes, pack_values, squared_error};

/// `c = a·b` through the product the CPU path runs on `f32` (the `gemm` crate's
/// kernels, cut into one piece per core when large), for benchmarks next to other
/// products. `c` is `[m, n]` for `a` `[m, k]` and `b` `[k, n]`; its content is
/// overwritten.
pub fn matmul(
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    c: &mut ArrayViewMut2<f32>,
) -> crate::Result<()> {
    let ((m, k), (k_b, n)) = (a.dim(), b.dim());
    if k != k_b || c.dim() != (m, n) {
        return Err(crate::Error::ShapeMismatch {
            what: "a matrix product's operands and destination".into(),
            expected: "a m × k, b k × n, c m × n".into(),
            got: format!(
                "a {m} × {k}, b {k_b} × {n}, c {} × {}",
                c.nrows(),
                c.ncols()
            ),
        });
    }
    mat_mul(1.0, &a, &b, 0.0, c);
    Ok(())
}

/// A recurrent state: `h` `[layers·directions, batch, hidden]` and, for the LSTM, `c` of
/// the same shape.
#[derive(Clone, Debug, PartialEq)]
pub struct RnnState {
    /// Hidden states, PyTorch's `h_0` / `h_n`.
    pub h: Array3<f32>,
    /// LSTM cell states, PyTorch's `c_0` / `c_n` (`None` for the other cells).
    pub c: Option<Array3<f32>>,
}

impl RnnState {
    /// A state with hidden states only (every cell but the LSTM).
    pub fn hidden(h: Array3<f32>) -> Self {
        RnnState { h, c: None }
    }
}

/// Buffers of one layer in one direction ("unit"), all in packed row order.
#[derive(Debug, Default)]
struct UnitBuffers<F> {
    /// `[tokens, gates·hidden]`: the input projection, then the gates after their
    /// nonlinearities.
    gates: Array2<F>,
    /// `[tokens, inputs + 1 + hidden]`: per row the unit's input (none for token ids), a
    /// one, and the state the step started from (previous step, initial state or zeros):
    /// the left operand of the input projection with its bias (`[in | 1]`, written once,
    /// not a bias row per output) and of every weight gradient at once (all of it).
    operand: Array2<F>,
    /// Columns of `operand` before its column of ones.
    inputs: usize,
    /// `[W_ih | b]` `[gates·hidden, inputs + 1]`: the input projection's weights and
    /// bias as the right operand of `[in | 1]` (feature inputs).
    w_in: Array2<F>,
    /// LSTM: `c(t)` (a step reads `c(t-1)` at the previous step's row, not from a copy);
    /// GRU: `W_hn h(t-1) + b_hn` in `hn`. Empty otherwise.
    c: Array2<F>,
    hn: Array2<F>,
    /// `W_hhᵀ` `[hidden, gates·hidden]` packed for the step product's kernel; where it
    /// cannot run, stored row-major for the general product instead, which runs 1.2–2×
    /// faster on it than on `W_hh` read transposed.
    w_hh_panels: Panels,
    w_hh_t: Array2<F>,
    /// Initial states in packed order `[batch, hidden]` (when given).
    h0: Option<Array2<F>>,
    c0: Option<Array2<F>>,
}

/// Reusable buffers of one model's forward and backward pass.
#[derive(Debug, Default)]
pub struct Workspace<F> {
    /// Packed inputs `[tokens, input]` (feature batches).
    x: Array2<F>,
    /// Packed token ids (token batches).
    token_ids: Vec<u32>,
    /// Per layer, its output `[tokens, directions·hidden]`: direction `d`'s states in
    /// columns `d·hidden ..`.
    outs: Vec<Array2<F>>,
    /// Per layer (from 1) on a step with dropout: the mask (0 or `1/(1-p)`) over its
    /// input, and the input after it.
    masks: Vec<Array2<F>>,
    dropped: Vec<Array2<F>>,
    dropout_used: bool,
    /// On a training step with output dropout: the mask over the top layer's states
    /// `[tokens, directions·hidden]`, and the states after it (what the readout reads).
    out_mask: Option<Array2<F>>,
    top_dropped: Array2<F>,
    units: Vec<UnitBuffers<F>>,
    /// How the time loops share their work among threads, when fixed (tests); by size
    /// otherwise.
    loop_split: Option<team::FixedSplit>,
    /// Last-step head: top-layer final states in packed order `[batch, directions·hidden]`.
    last: Array2<F>,
    /// Readout `[rows, output]` and its gradient.
    out: Array2<F>,
    d_out: Array2<F>,
    /// Gradient with respect to the current layer's output `[tokens, directions·hidden]`,
    /// and the one being formed for the layer below (or the inputs).
    dh: Array2<F>,
    d_below: Array2<F>,
    /// One unit's gradients (its states' are formed in place in `dh`): with respect to
    /// its cell states `[tokens, hidden]`, and its input projection and recurrent product
    /// `[tokens, gates·hidden]`.
    dc: Array2<F>,
    dgx: Array2<F>,
    dgh: Array2<F>,
    /// `W_hh` packed for the backward step product (see `UnitBuffers`).
    w_hh_panels: Panels,
    /// A unit's weight gradients as one product forms them (see `unit_backward`).
    weight_grads: Array2<F>,
    classes: Vec<u32>,
    values: Array2<F>,
}

/// Resizes `a` to `[rows, cols]`, reallocating only when the shape changes. The content
/// is unspecified afterwards.
pub(crate) fn resize<F: Real>(a: &mut Array2<F>, rows: usize, cols: usize) {
    if a.dim() != (rows, cols) {
        *a = Array2::zeros((rows, cols));
    }
}

/// Row `r` of `a` as a slice; empty when `a` is an unused (empty) buffer.
fn row<F: Real>(a: &Array2<F>, r: usize) -> &[F] {
    if a.is_empty() {
        return &[];
    }
    a.row(r)
        .to_slice()
        .expect("rows of standard-layout arrays are contiguous")
}

/// The masks a training step draws, as `(layer, probability)`: the inputs of layers 1..
/// with dropout between layers, then the top layer's states before the readout (as
/// layer `num_layers`) with output dropout.
pub(crate) fn mask_layers(config: &RnnConfig) -> Vec<(usize, f32)> {
    let between = (1..config.num_layers)
        .filter(|_| config.drops_between())
        .map(|layer| (layer, config.dropout));
    let output = config
        .drops_output()
        .then_some((config.num_layers, config.output_dropout));
    between.chain(output).collect()
}

/// Every mask of one training step, in the order of [`mask_layers`] (see
/// [`dropout_mask`]).
pub(crate) fn dropout_masks<F: Real>(
    config: &RnnConfig,
    tokens: usize,
    key: u64,
    row_of: impl Fn(usize) -> u32 + Copy,
) -> Vec<Array2<F>> {
    mask_layers(config)
        .into_iter()
        .map(|layer| dropout_mask(config, tokens, key, layer, row_of))
        .collect()
}

/// Layer `layer`'s dropout mask on one training step: `[tokens, directions·hidden]` of 0
/// (dropped, probability `p`) or `1/(1-p)`, in packed row order; `row_of` maps a row to
/// the row of the whole batch it is drawn for (a chunk of a split batch draws the whole
/// batch's masks). Each entry is drawn by [`keeps`] from its own key (the step's `key`,
/// the layer, the row and the unit), not from a stream, so any path — the CPU, the GPU, a
/// kernel computing it in place — draws the same masks. A last-step head reads the
/// output mask's entries at the rows it gathers.
pub(crate) fn dropout_mask<F: Real>(
    config: &RnnConfig,
    tokens: usize,
    key: u64,
    (layer, p): (usize, f32),
    row_of: impl Fn(usize) -> u32,
) -> Array2<F> {
    let (keep, width) = (F::from_f32(1.0 / (1.0 - p)), config.state_width());
    let mut mask = Array2::zeros((tokens, width));
    for (r, mut row) in mask.outer_iter_mut().enumerate() {
        // the hash of everything but the unit, once per row
        let seed = row_seed(key, layer as u32, row_of(r));
        for (unit, m) in row.iter_mut().enumerate() {
            if keeps(seed, unit as u32, p) {
                *m = keep;
            }
        }
    }
    mask
}

/// Whether dropout with probability `p` keeps input `unit` of packed row `row` of layer
/// `layer` on the training step keyed `key` (one entry of a [`dropout_mask`]).
#[cfg(test)]
pub(crate) fn dropout_keeps(key: u64, layer: u32, row: u32, unit: u32, p: f32) -> bool {
    keeps(row_seed(key, layer, row), unit, p)
}

/// The finaliser of MurmurHash3, chained over the key's halves and the counters.
fn mix(mut h: u32, v: u32) -> u32 {
    h ^= v
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The hash of the step's key and the layer and row of a mask entry: what [`keeps`] draws
/// the row's entries from.
fn row_seed(key: u64, layer: u32, row: u32) -> u32 {
    [key as u32, (key >> 32) as u32, layer, row]
        .into_iter()
        .fold(0x9747_b28c, mix)
}

/// Whether dropout with probability `p` keeps unit `unit` of the row hashed to `seed`: a
/// counter-based draw (a 32-bit integer hash of the key's halves, the layer, the row and
/// the unit, so that a WGSL kernel can compute it too) compared against `p` with 24 bits.
fn keeps(seed: u32, unit: u32, p: f32) -> bool {
    (mix(seed, unit) >> 8) as f32 * (1.0 / (1u32 << 24) as f32) >= p
}

/// The key of training step `step` of a model whose dropout seed is `seed`.
pub(crate) fn dropout_key(seed: u64, step: u64) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where a step's previous state comes from in the packed rows: `(first row, count)` of
/// the rows holding it for the first `count` rows of step `t`; the rest start from the
/// initial state. Forward: step `t-1`, for every row. Reverse: step `t+1`, for the
/// sequences that are still running there.
fn previous_rows(p: &Packing, t: usize, reverse: bool) -> Option<(usize, usize)> {
    if !reverse {
        (t > 0).then(|| (p.offsets[t - 1], p.batch_sizes[t]))
    } else {
        (t + 1 < p.max_len()).then(|| (p.offsets[t + 1], p.batch_sizes[t + 1]))
    }
}

/// The packed row of the final state of the sequence at packed position `j` in direction
/// `d`: its last step going forward, its first going backward.
fn final_row(p: &Packing, j: usize, d: usize) -> usize {
    if d == 0 {
        p.last_row(j)
    } else {
        p.row(0, j)
    }
}

/// The steps in the order a direction visits them.
fn steps(p: &Packing, reverse: bool) -> Box<dyn Iterator<Item = usize>> {
    if reverse {
        Box::new((0..p.max_len()).rev())
    } else {
        Box::new(0..p.max_len())
    }
}

/// Runs the recurrent layers over `batch` (already checked against `config`), leaving
/// every layer's states in `ws`. `dropout`: the seed of this step's dropout masks
/// (training steps of a model with dropout and several layers), or `None`.
pub fn forward_layers<F: Real>(
    config: &RnnConfig,
    params: &RnnParams<F>,
    batch: &SequenceBatch,
    initial: Option<&RnnState>,
    dropout: Option<u64>,
    ws: &mut Workspace<F>,
) {
    let p = batch.packing();
    let tokens = p.tokens();
    let (h, dirs) = (config.hidden_size, config.num_directions());
    match batch.packed_token_ids() {
        Some(ids) => ws.token_ids = ids,
        None => pack_inputs(batch, &mut ws.x),
    }
    let tokens_in = batch.token_ids().is_some();
    ws.outs.resize_with(config.num_layers, Default::default);
    ws.units.resize_with(config.num_units(), Default::default);
    ws.dropout_used = dropout.is_some() && config.drops_between();
    // between layers first, then (last) before the readout
    ws.masks = dropout.map_or_else(Vec::new, |key| {
        dropout_masks(config, tokens, key, |r| r as u32)
    });
    ws.out_mask = match dropout {
        Some(_) if config.drops_output() => ws.masks.pop(),
        _ => None,
    };
    if ws.dropout_used {
        ws.dropped
            .resize_with(config.num_layers - 1, Default::default);
    }
    for l in 0..config.num_layers {
        let (below, rest) = ws.outs.split_at_mut(l);
        let out = &mut rest[0];
        resize(out, tokens, dirs * h);
        let input = match l {
            0 if tokens_in => LayerInput::Tokens(&ws.token_ids),
            0 => LayerInput::Dense(&ws.x),
            _ if ws.dropout_used => {
                let dropped = &mut ws.dropped[l - 1];
                *dropped = &below[l - 1] * &ws.masks[l - 1];
                LayerInput::Dense(dropped)
            }
            _ => LayerInput::Dense(&below[l - 1]),
        };
        for d in 0..dirs {
            let u = l * dirs + d;
            let unit = &mut ws.units[u];
            unit.h0 = initial.map(|s| pack_initial(s.h.index_axis(Axis(0), u), p));
            unit.c0 = initial
                .and_then(|s| s.c.as_ref())
                .map(|c| pack_initial(c.index_axis(Axis(0), u), p));
            unit_forward(
                config.cell,
                &params.layers[u],
                p,
                &input,
                d == 1,
                unit,
                ws.loop_split,
                out.slice_mut(s![.., d * h..(d + 1) * h]),
            );
        }
    }
}

/// Runs the model forward over `batch` (already checked against `config`, with targets),
/// leaving the states in `ws`, and returns the loss.
pub fn forward<F: Real>(
    config: &RnnConfig,
    params: &RnnParams<F>,
    batch: &SequenceBatch,
    initial: Option<&RnnState>,
    dropout: Option<u64>,
    ws: &mut Workspace<F>,
) -> F {
    forward_layers(config, params, batch, initial, dropout, ws);
    let p = batch.packing();
    if let Some(mask) = &ws.out_mask {
        ws.top_dropped = &ws.outs[config.num_layers - 1] * mask;
    }
    let top = readout_states(&ws.outs, ws.out_mask.as_ref(), &ws.top_dropped);
    let per_step = config.head == Head::PerStep;
    let head_in = if per_step {
        top
    } else {
        gather_last(config, p, top, &mut ws.last);
        &ws.last
    };
    resize(&mut ws.out, head_in.nrows(), config.output_size);
    linear(
        head_in.view(),
        &params.w_out,
        &params.b_out,
        &mut ws.out.view_mut(),
    );
    match batch.targets() {
        Some(targets) => loss::loss_and_d_out(
            targets,
            p,
            per_step,
            &ws.out,
            &mut ws.d_out,
            &mut ws.classes,
            &mut ws.values,
        ),
        None => F::nan(),
    }
}

/// The top layer's states as the readout reads them: after the output dropout mask on a
/// training step that has one.
/// (The workspace's `outs`, `out_mask` and `top_dropped`.)
fn readout_states<'a, F: Real>(
    outs: &'a [Array2<F>],
    out_mask: Option<&Array2<F>>,
    top_dropped: &'a Array2<F>,
) -> &'a Array2<F> {
    match out_mask {
        Some(_) => top_dropped,
        None => outs.last().expect("a model has at least one layer"),
    }
}

/// `a *= mask`, element by element: a gradient through a dropout mask.
fn times_mask<F: Real>(a: &mut Array2<F>, mask: &Array2<F>) {
    Zip::from(a).and(mask).for_each(|d, &m| *d = *d * m);
}

/// Each sequence's final top-layer states in packed order, `[batch, directions·hidden]`:
/// the forward direction's at the sequence's last step, the reverse direction's at its
/// first.
fn gather_last<F: Real>(config: &RnnConfig, p: &Packing, top: &Array2<F>, last: &mut Array2<F>) {
    let h = config.hidden_size;
    resize(last, p.batch(), config.state_width());
    for j in 0..p.batch() {
        for d in 0..config.num_directions() {
            let r = final_row(p, j, d);
            last.slice_mut(s![j, d * h..(d + 1) * h])
                .assign(&top.slice(s![r, d * h..(d + 1) * h]));
        }
    }
}

/// `out = input · wᵀ + b`
fn linear<F: Real>(input: ArrayView2<F>, w: &Array2<F>, b: &Array1<F>, out: &mut ArrayViewMut2<F>) {
    for mut row in out.rows_mut() {
        row.assign(b);
    }
    mat_mul(F::one(), &input, &w.t(), F::one(), out);
}

/// What a layer reads at each packed row: feature vectors, or token ids.
enum LayerInput<'a, F> {
    Dense(&'a Array2<F>),
    Tokens(&'a [u32]),
}

/// One layer in one direction over all steps: the hoisted input product for all gates
/// with both biases (for tokens a column lookup in `W_ih`), then per step the recurrent
/// product on the rows still running, accumulated straight into the gates' pre-activations
/// (GRU's n block apart, into `hn`), and the cell's element-wise work, which also writes
/// each state where the next step reads it. A loop large enough runs on several threads,
/// split by hidden units or by sequences (`team.rs`).
#[allow(clippy::too_many_arguments)]
fn unit_forward<F: Real>(
    cell: Cell,
    layer: &LayerParams<F>,
    p: &Packing,
    input: &LayerInput<F>,
    reverse: bool,
    unit: &mut UnitBuffers<F>,
    split: Option<team::FixedSplit>,
    states: ArrayViewMut2<F>,
) {
    let (tokens, h) = (p.tokens(), states.ncols());
    let g = layer.w_hh.nrows();
    let gates = g / h;
    resize(&mut unit.gates, tokens, g);
    let inputs = match input {
        LayerInput::Dense(x) => x.ncols(),
        LayerInput::Tokens(_) => 0,
    };
    unit.inputs = inputs;
    resize(&mut unit.operand, tokens, inputs + 1 + h);
    let (c_rows, hn_rows) = match cell {
        Cell::Lstm => (tokens, 0),
        Cell::Gru => (0, tokens),
        Cell::Tanh | Cell::Relu => (0, 0),
    };
    resize(&mut unit.c, c_rows, h);
    resize(&mut unit.hn, hn_rows, h);
    unit.w_hh_panels.pack(&layer.w_hh.t(), h);
    if !unit.w_hh_panels.packed() {
        resize(&mut unit.w_hh_t, h, g);
        unit.w_hh_t.assign(&layer.w_hh.t());
    }
    // the recurrent product lands in the gates, so their bias carries b_hh too (but for
    // GRU's n block, whose recurrent part stays apart)
    let in_gates = if cell == Cell::Gru { 2 * h } else { g };
    let mut bias = layer.b_ih.clone();
    add_into(
        bias.slice_mut(s![..in_gates]),
        layer.b_hh.slice(s![..in_gates]),
    );
    unit.operand.column_mut(inputs).fill(F::one());
    match input {
        // [in | 1]·[W_ih | b]ᵀ: the bias comes with the product, which writes the gates
        // once (a bias row per output first, then the product added to it, took 7 of the
        // 18 ms of `ref` LSTM's projection: its input is narrow, its output wide)
        LayerInput::Dense(x) => {
            unit.operand.slice_mut(s![.., ..inputs]).assign(*x);
            resize(&mut unit.w_in, g, inputs + 1);
            unit.w_in.slice_mut(s![.., ..inputs]).assign(&layer.w_ih);
            unit.w_in.column_mut(inputs).assign(&bias);
            mat_mul(
                F::one(),
                &unit.operand.slice(s![.., ..inputs + 1]),
                &unit.w_in.t(),
                F::zero(),
                &mut unit.gates.view_mut(),
            );
        }
        LayerInput::Tokens(ids) => {
            for (mut row, &id) in unit.gates.rows_mut().into_iter().zip(*ids) {
                Zip::from(&mut row)
                    .and(layer.w_ih.column(id as usize))
                    .and(&bias)
                    .for_each(|a, &w, &b| *a = w + b);
            }
        }
    }
    // rows that start from the initial state (or zeros): all of the first step forward;
    // in reverse, at each step those whose sequence ends there
    for t in 0..p.max_len() {
        let (off, n) = (p.offsets[t], p.batch_sizes[t]);
        let m = previous_rows(p, t, reverse).map_or(0, |(_, m)| m);
        for j in m..n {
            let mut dst = unit.operand.slice_mut(s![off + j, inputs + 1..]);
            match &unit.h0 {
                Some(h0) => dst.assign(&h0.row(j)),
                None => dst.fill(F::zero()),
            }
        }
    }
    let zeros = vec![F::zero(); h];
    let split = team::Split::of(split, &p.sorted_lengths, h, gates);
    let barrier = split.barrier();
    let panels = &unit.w_hh_panels;
    let w_hh_t = if panels.packed() {
        layer.w_hh.t()
    } else {
        unit.w_hh_t.view()
    };
    let b_hn = if cell == Cell::Gru {
        layer.b_hh.slice(s![2 * h..]).to_vec()
    } else {
        Vec::new()
    };
    let c0 = unit.c0.as_ref();
    let [gates_m, h_prev, c, hn, states] = [
        unit.gates.view_mut(),
        unit.operand.slice_mut(s![.., inputs + 1..]),
        unit.c.view_mut(),
        unit.hn.view_mut(),
        states,
    ]
    .map(team::Shared::new);
    team::run(&split, h, |units, ranks| {
        for (i, t) in steps(p, reverse).enumerate() {
            let (off, n) = (p.offsets[t], p.batch_sizes[t]);
            // this thread's rows of the step: all of them when split by units
            let (a, b) = (ranks.start.min(n), ranks.end.min(n));
            if i > 0 {
                // every thread's part of this step's previous states is written
                barrier.wait();
            }
            if a == b {
                continue;
            }
            // SAFETY (every access below, see team.rs): this thread writes only its own
            // units' columns of its own rows of this step (gates, hn, states, c) and of
            // the next step (h_prev, c_prev); it reads all columns of its rows of this
            // step's h_prev, written before the barrier above (or before the loop) — by
            // itself alone when split by rows.
            unsafe {
                let h_rows = h_prev.view(off + a..off + b, 0..h);
                // this step's product for this thread's gate columns, straight into the
                // gates (GRU's n block into hn): in one piece per destination when the
                // thread has every unit, else a piece per gate block
                let product = |cols: Range<usize>| {
                    if cols.start < in_gates {
                        let mut dst = gates_m.view_mut(off + a..off + b, cols.clone());
                        step_product(&h_rows, &w_hh_t, panels, cols, true, &mut dst);
                    } else {
                        let local = cols.start - in_gates..cols.end - in_gates;
                        let mut dst = hn.view_mut(off + a..off + b, local);
                        step_product(&h_rows, &w_hh_t, panels, cols, false, &mut dst);
                    }
                };
                if units.len() == h {
                    product(0..in_gates);
                    if in_gates < g {
                        product(in_gates..g);
                    }
                } else {
                    for b in 0..gates {
                        product(b * h + units.start..b * h + units.end);
                    }
                }
                let next = next_rows(p, t, reverse);
                let prev = previous_rows(p, t, reverse);
                for j in a..b {
                    let r = off + j;
                    let block = |b: usize| {
                        if b < gates {
                            gates_m.get_mut(r, b * h + units.start..b * h + units.end)
                        } else {
                            &mut []
                        }
                    };
                    let h_out = states.get_mut(r, units.clone());
                    let c_out = c.get_mut(r, units.clone());
                    forward_units(
                        cell,
                        UnitsForward {
                            gates: [block(0), block(1), block(2), block(3)],
                            hn: hn.get_mut(r, units.clone()),
                            b_hn: b_hn.get(units.clone()).unwrap_or(&[]),
                            h_prev: h_prev.get(r, units.clone()),
                            c_prev: match prev.filter(|&(_, m)| j < m) {
                                Some((prev_off, _)) => c.get(prev_off + j, units.clone()),
                                None => initial_c(c0, &zeros, j, units.clone()),
                            },
                            h: &mut *h_out,
                            c: &mut *c_out,
                        },
                    );
                    // where the next step reads this state
                    if let Some((next_off, _)) = next.filter(|&(_, m)| j < m) {
                        h_prev
                            .get_mut(next_off + j, units.clone())
                            .copy_from_slice(h_out);
                    }
                }
            }
        }
    });
}

/// `c(t-1)` of a row that starts from the initial state: rank `j`'s initial cell state
/// (packed order), or `zeros` without one; columns `units`. Empty for cells without `c`.
fn initial_c<'a, F: Real>(
    c0: Option<&'a Array2<F>>,
    zeros: &'a [F],
    j: usize,
    units: Range<usize>,
) -> &'a [F] {
    match c0 {
        Some(c0) => &row(c0, j)[units],
        None => &zeros[units],
    }
}

/// Where a step's states are read next: `(first row, count)` of the next step's rows that
/// continue from the first `count` rows of step `t`. Forward: step `t+1`; reverse: step
/// `t-1`, for every row.
fn next_rows(p: &Packing, t: usize, reverse: bool) -> Option<(usize, usize)> {
    if !reverse {
        (t + 1 < p.max_len()).then(|| (p.offsets[t + 1], p.batch_sizes[t + 1]))
    } else {
        (t > 0).then(|| (p.offsets[t - 1], p.batch_sizes[t]))
    }
}

/// Back-propagation through time after [`forward`] on the same arguments: returns the
/// gradient of the loss with respect to every parameter.
pub fn backward<F: Real>(
    config: &RnnConfig,
    params: &RnnParams<F>,
    batch: &SequenceBatch,
    ws: &mut Workspace<F>,
) -> RnnParams<F> {
    let p = batch.packing();
    let h = config.hidden_size;
    let mut grads = RnnParams::<F>::zeros(config);

    // readout
    let head_in = if config.head == Head::PerStep {
        readout_states(&ws.outs, ws.out_mask.as_ref(), &ws.top_dropped)
    } else {
        &ws.last
    };
    mat_mul(
        F::one(),
        &ws.d_out.t(),
        &head_in.view(),
        F::zero(),
        &mut grads.w_out.view_mut(),
    );
    grads.b_out = ws.d_out.sum_axis(Axis(0));
    resize(&mut ws.dh, p.tokens(), config.state_width());
    match config.head {
        Head::PerStep => mat_mul(
            F::one(),
            &ws.d_out.view(),
            &params.w_out.view(),
            F::zero(),
            &mut ws.dh.view_mut(),
        ),
        Head::LastStep => {
            ws.dh.fill(F::zero());
            let d_last = ws.d_out.dot(&params.w_out);
            for j in 0..p.batch() {
                for d in 0..config.num_directions() {
                    let r = final_row(p, j, d);
                    ws.dh
                        .slice_mut(s![r, d * h..(d + 1) * h])
                        .assign(&d_last.slice(s![j, d * h..(d + 1) * h]));
                }
            }
        }
        Head::None => ws.dh.fill(F::zero()),
    }
    if let Some(mask) = &ws.out_mask {
        times_mask(&mut ws.dh, mask);
    }
    backward_layers(config, params, batch, ws, &mut grads, false);
    grads
}

/// Back-propagation through the recurrent layers, from the gradient with respect to the
/// top layer's output in `ws.dh` (packed rows), after [`forward_layers`]. Adds every
/// recurrent parameter's gradient into `grads`; with `input_grads`, leaves the gradient
/// with respect to the packed inputs in `ws.dh` (feature batches only).
pub fn backward_layers<F: Real>(
    config: &RnnConfig,
    params: &RnnParams<F>,
    batch: &SequenceBatch,
    ws: &mut Workspace<F>,
    grads: &mut RnnParams<F>,
    input_grads: bool,
) {
    let p = batch.packing();
    let (h, dirs) = (config.hidden_size, config.num_directions());
    let tokens_in = batch.token_ids().is_some();
    for l in (0..config.num_layers).rev() {
        let below = l > 0 || (input_grads && !tokens_in);
        if below {
            resize(&mut ws.d_below, p.tokens(), config.layer_input_size(l));
            ws.d_below.fill(F::zero());
        }
        // the unit's operand holds a dense input; token ids are read here
        let token_ids = (l == 0 && tokens_in).then_some(&ws.token_ids[..]);
        for d in 0..dirs {
            let u = l * dirs + d;
            let scratch = StepGradients {
                dc: &mut ws.dc,
                dgx: &mut ws.dgx,
                dgh: &mut ws.dgh,
                w_hh_panels: &mut ws.w_hh_panels,
                weights: &mut ws.weight_grads,
            };
            unit_backward(
                config.cell,
                &params.layers[u],
                p,
                token_ids,
                d == 1,
                &ws.units[u],
                ws.loop_split,
                ws.dh.slice_mut(s![.., d * h..(d + 1) * h]),
                scratch,
                &mut grads.layers[u],
                below.then_some(&mut ws.d_below),
            );
        }
        if below {
            if l > 0 && ws.dropout_used {
                times_mask(&mut ws.d_below, &ws.masks[l - 1]);
            }
            std::mem::swap(&mut ws.dh, &mut ws.d_below);
        }
    }
}

/// Columns `cols` of row `r` of `a`; empty when `a` is an unused (empty) buffer.
fn part<F: Real>(a: &Array2<F>, r: usize, cols: Range<usize>) -> &[F] {
    row(a, r).get(cols).unwrap_or(&[])
}

/// `dst += src`
fn add_into<F: Real, D: ndarray::Dimension>(
    dst: ndarray::ArrayViewMut<F, D>,
    src: ndarray::ArrayView<F, D>,
) {
    Zip::from(dst).and(src).for_each(|d, &s| *d = *d + s);
}

/// A unit's gradient buffers (see [`Workspace`]).
struct StepGradients<'a, F> {
    dc: &'a mut Array2<F>,
    dgx: &'a mut Array2<F>,
    dgh: &'a mut Array2<F>,
    w_hh_panels: &'a mut Panels,
    weights: &'a mut Array2<F>,
}

/// One unit backwards: walks its steps in reverse, turning the gradient with respect to
/// its states from outside the recurrence (`dh`: readout or layer above; in place, adding
/// what reaches each state through the recurrence) into the gradients with respect to
/// its input projection and recurrent product, then forms the weight gradients as one
/// product over all steps each from the operand the forward pass left in `unit` (token
/// inputs, `token_ids`, by a scatter-add), and adds the gradient with respect to its input
/// into `d_below`. The walk is split by hidden units over threads
/// as the forward one is (`team.rs`).
#[allow(clippy::too_many_arguments)]
fn unit_backward<F: Real>(
    cell: Cell,
    layer: &LayerParams<F>,
    p: &Packing,
    token_ids: Option<&[u32]>,
    reverse: bool,
    unit: &UnitBuffers<F>,
    split: Option<team::FixedSplit>,
    dh: ArrayViewMut2<F>,
    b: StepGradients<F>,
    grads: &mut LayerParams<F>,
    d_below: Option<&mut Array2<F>>,
) {
    let (tokens, h) = (p.tokens(), dh.ncols());
    let g = layer.w_hh.nrows();
    let gates = g / h;
    let (lstm, gru) = (cell == Cell::Lstm, cell == Cell::Gru);
    resize(b.dc, if lstm { tokens } else { 0 }, h);
    b.dc.fill(F::zero());
    resize(b.dgx, tokens, g);
    resize(b.dgh, if gru { tokens } else { 0 }, g);
    let split = team::Split::of(split, &p.sorted_lengths, h, gates);
    let barrier = split.barrier();
    let w_hh = layer.w_hh.view();
    b.w_hh_panels.pack(&w_hh, h);
    let panels = &*b.w_hh_panels;
    let zeros = vec![F::zero(); h];
    // this unit's columns of h(t-1) in its operand
    let h_cols = |u: Range<usize>| unit.inputs + 1 + u.start..unit.inputs + 1 + u.end;
    let [dh, dc, dgx, dgh] =
        [dh, b.dc.view_mut(), b.dgx.view_mut(), b.dgh.view_mut()].map(team::Shared::new);
    // what the step products read: dgh for GRU, dgx (the same values) otherwise
    let d_rec = if gru { dgh } else { dgx };
    team::run(&split, h, |units, ranks| {
        for t in steps(p, !reverse) {
            let (off, n) = (p.offsets[t], p.batch_sizes[t]);
            let prev = previous_rows(p, t, reverse);
            // this thread's rows of the step: all of them when split by units
            let (a, b) = (ranks.start.min(n), ranks.end.min(n));
            // SAFETY (every access below, see team.rs): this thread writes only its own
            // units' columns of its own rows (of this step's dgx and dgh, of the previous
            // step's dh and dc) and reads its own columns of its rows of this step's dh
            // and dc, which only it writes; the product reads all columns of its rows of
            // this step's dgx / dgh, written before the barrier that precedes it — by
            // itself alone when split by rows.
            unsafe {
                for j in a..b {
                    let r = off + j;
                    let block = |m: &team::Shared<F>, b: usize| -> &mut [F] {
                        if b < gates {
                            m.get_mut(r, b * h + units.start..b * h + units.end)
                        } else {
                            &mut []
                        }
                    };
                    let read = |b: usize| -> &[F] {
                        if b < gates {
                            part(&unit.gates, r, b * h + units.start..b * h + units.end)
                        } else {
                            &[]
                        }
                    };
                    let prev_row = prev.filter(|&(_, m)| j < m).map(|(po, _)| po + j);
                    backward_units(
                        cell,
                        UnitsBackward {
                            gates: [0, 1, 2, 3].map(read),
                            h_prev: part(&unit.operand, r, h_cols(units.clone())),
                            c_prev: match prev_row {
                                Some(pr) => part(&unit.c, pr, units.clone()),
                                None => initial_c(unit.c0.as_ref(), &zeros, j, units.clone()),
                            },
                            c: part(&unit.c, r, units.clone()),
                            hn: part(&unit.hn, r, units.clone()),
                            dh: dh.get(r, units.clone()),
                            dc: dc.get(r, units.clone()),
                            dgx: [0, 1, 2, 3].map(|b| block(&dgx, b)),
                            dgh: [0, 1, 2, 3].map(|b| block(&dgh, b)),
                            dh_prev: prev_row
                                .filter(|_| gru)
                                .map(|pr| dh.get_mut(pr, units.clone())),
                            dc_prev: prev_row
                                .filter(|_| lstm)
                                .map(|pr| dc.get_mut(pr, units.clone())),
                        },
                    );
                }
                let Some((prev_off, m)) = prev else {
                    continue;
                };
                // every thread's columns of this step's gradients are written
                barrier.wait();
                // what reaches the previous step's state through W_hh, for this thread's
                // units and rows
                let (a, b) = (a.min(m), b.min(m));
                if a == b {
                    continue;
                }
                step_product(
                    &d_rec.view(off + a..off + b, 0..g),
                    &w_hh,
                    panels,
                    units.clone(),
                    true,
                    &mut dh.view_mut(prev_off + a..prev_off + b, units.clone()),
                );
            }
        }
    });
    // the weight gradients, one product over all steps each: dgxᵀ·[in | 1] gives dW_ih
    // and db_ih, dghᵀ·[1 | h(t-1)] gives db_hh and dW_hh (rows that started from zeros
    // add nothing), and where dgh is dgx (but for GRU) dgxᵀ·[in | 1 | h(t-1)] gives all
    // four in one pass over dgx; token inputs' dW_ih is added row by row
    let inputs = unit.inputs;
    if let Some(ids) = token_ids {
        for (g_row, &id) in b.dgx.rows().into_iter().zip(ids) {
            Zip::from(grads.w_ih.column_mut(id as usize))
                .and(&g_row)
                .for_each(|w, &g| *w = *w + g);
        }
    }
    // `left`ᵀ times columns `cols` of the operand, added into the input side's gradients
    // and / or the recurrent side's, the column of ones giving each side's bias
    let all = unit.operand.ncols();
    resize(b.weights, g, all);
    let mut gradient = |left: &Array2<F>, cols: Range<usize>, input: bool, recurrent: bool| {
        let mut weights = b.weights.slice_mut(s![.., ..cols.len()]);
        mat_mul(
            F::one(),
            &left.t(),
            &unit.operand.slice(s![.., cols.clone()]),
            F::zero(),
            &mut weights,
        );
        let weights = weights.view();
        let at = |c: usize| c - cols.start;
        if input {
            if token_ids.is_none() {
                add_into(grads.w_ih.view_mut(), weights.slice(s![.., ..inputs]));
            }
            add_into(grads.b_ih.view_mut(), weights.column(at(inputs)));
        }
        if recurrent {
            add_into(grads.b_hh.view_mut(), weights.column(at(inputs)));
            add_into(
                grads.w_hh.view_mut(),
                weights.slice(s![.., at(inputs + 1)..]),
            );
        }
    };
    if gru {
        gradient(b.dgx, 0..inputs + 1, true, false);
        gradient(b.dgh, inputs..all, false, true);
    } else {
        gradient(b.dgx, 0..all, true, true);
    }
    if let Some(d_below) = d_below {
        mat_mul(
            F::one(),
            &b.dgx.view(),
            &layer.w_ih.view(),
            F::one(),
            &mut d_below.view_mut(),
        );
    }
}

fn pack_inputs<F: Real>(batch: &SequenceBatch, x: &mut Array2<F>) {
    let p = batch.packing();
    resize(x, p.tokens(), batch.input_size());
    let inputs = batch.inputs();
    for (t, &n) in p.batch_sizes.iter().enumerate() {
        for (j, &i) in p.order[..n].iter().enumerate() {
            x.row_mut(p.offsets[t] + j)
                .iter_mut()
                .zip(inputs[i].row(t))
                .for_each(|(d, &s)| *d = F::from_f32(s));
        }
    }
}

/// One unit's initial state `[batch, hidden]` in packed order.
fn pack_initial<F: Real>(state: ArrayView2<f32>, p: &Packing) -> Array2<F> {
    Array2::from_shape_fn((p.batch(), state.ncols()), |(j, k)| {
        F::from_f32(state[[p.order[j], k]])
    })
}

/// The readout of the last [`forward`] in the batch's original order:
/// `[batch, max_len, output]` with zeros past each length (per-step head) or
/// `[batch, 1, output]` (last-step head).
pub fn outputs<F: Real>(
    config: &RnnConfig,
    batch: &SequenceBatch,
    ws: &Workspace<F>,
) -> Array3<f32> {
    let p = batch.packing();
    let rows = ws.out.mapv(|v| v.to_f64() as f32);
    match config.head {
        Head::LastStep => p.unpack_sequences(rows.view()).insert_axis(Axis(1)),
        Head::PerStep | Head::None => p.unpack_steps(rows.view()),
    }
}

/// The top layer's states of the last [`forward_layers`], `[batch, max_len,
/// directions·hidden]` in the batch's order, zero past each length.
pub fn top_states<F: Real>(
    config: &RnnConfig,
    batch: &SequenceBatch,
    ws: &Workspace<F>,
) -> Array3<f32> {
    let top = ws.outs[config.num_layers - 1].mapv(|v| v.to_f64() as f32);
    batch.packing().unpack_steps(top.view())
}

/// Each sequence's final state in every layer and direction (PyTorch's `h_n`, and `c_n`
/// for the LSTM), `[layers·directions, batch, hidden]`: the forward direction's at the
/// sequence's last step, the reverse direction's at its first.
pub fn final_state<F: Real>(
    config: &RnnConfig,
    batch: &SequenceBatch,
    ws: &Workspace<F>,
) -> RnnState {
    let p = batch.packing();
    let (h, dirs) = (config.hidden_size, config.num_directions());
    let finals = |states: &dyn Fn(usize) -> Array2<f32>| {
        let mut out = Array3::zeros((config.num_units(), p.batch(), h));
        for u in 0..config.num_units() {
            let rows: Vec<usize> = (0..p.batch()).map(|j| final_row(p, j, u % dirs)).collect();
            let picked = states(u).select(Axis(0), &rows);
            out.index_axis_mut(Axis(0), u)
                .assign(&p.unpack_sequences(picked.view()));
        }
        out
    };
    let to_f32 = |a: ArrayView2<F>| a.mapv(|v| v.to_f64() as f32);
    let hidden = finals(&|u| {
        let d = u % dirs;
        to_f32(ws.outs[u / dirs].slice(s![.., d * h..(d + 1) * h]))
    });
    let cell = config
        .cell
        .has_c()
        .then(|| finals(&|u| to_f32(ws.units[u].c.view())));
    RnnState { h: hidden, c: cell }
}

/// The encoder's backward pass: runs the layers forward over `batch` again (with the
/// dropout masks of `dropout`), then back-propagates `grad_states` (`[batch, max_len,
/// directions·hidden]`, the gradient on the top layer's states; values past each length
/// ignored). Returns every parameter's gradient (the readout's zero) and, for feature
/// batches, each sequence's input gradient `[len_i, input]`.
pub fn encoder_backward<F: Real>(
    config: &RnnConfig,
    params: &RnnParams<F>,
    batch: &SequenceBatch,
    grad_states: &Array3<f32>,
    dropout: Option<u64>,
    ws: &mut Workspace<F>,
) -> (RnnParams<F>, Vec<Array2<f32>>) {
    forward_layers(config, params, batch, None, dropout, ws);
    encoder_backward_after_forward(config, params, batch, grad_states, ws)
}

/// [`encoder_backward`] from the forward pass `ws` holds: the last [`forward_layers`]
/// over `batch` with `params` from a zero initial state (with its dropout masks), as
/// [`crate::Rnn::encode`] leaves it. The backward pass leaves that forward pass in `ws`.
pub fn encoder_backward_after_forward<F: Real>(
    config: &RnnConfig,
    params: &RnnParams<F>,
    batch: &SequenceBatch,
    grad_states: &Array3<f32>,
    ws: &mut Workspace<F>,
) -> (RnnParams<F>, Vec<Array2<f32>>) {
    let p = batch.packing();
    resize(&mut ws.dh, p.tokens(), config.state_width());
    for (t, &n) in p.batch_sizes.iter().enumerate() {
        for (j, &i) in p.order[..n].iter().enumerate() {
            ws.dh
                .row_mut(p.row(t, j))
                .iter_mut()
                .zip(grad_states.slice(s![i, t, ..]))
                .for_each(|(d, &g)| *d = F::from_f32(g));
        }
    }
    let mut grads = RnnParams::zeros(config);
    backward_layers(config, params, batch, ws, &mut grads, true);
    let inputs = if batch.token_ids().is_some() {
        Vec::new()
    } else {
        let padded = p.unpack_steps(ws.dh.mapv(|v| v.to_f64() as f32).view());
        batch
            .lengths()
            .iter()
            .enumerate()
            .map(|(i, &len)| padded.slice(s![i, ..len, ..]).to_owned())
            .collect()
    };
    (grads, inputs)
}

/// Loss and gradients in precision `F`, for gradient checks: the whole reference path in
/// one call. `batch` must have been checked against `config`.
pub fn loss_and_gradients<F: Real>(
    config: &RnnConfig,
    params: &RnnParams<F>,
    batch: &SequenceBatch,
) -> (F, RnnParams<F>) {
    let mut ws = Workspace::default();
    let loss = forward(config, params, batch, None, None, &mut ws);
    let grads = backward(config, params, batch, &mut ws);
    (loss, grads)
}

/// The loss alone in precision `F` (for finite differences).
pub fn loss<F: Real>(config: &RnnConfig, params: &RnnParams<F>, batch: &SequenceBatch) -> F {
    forward(config, params, batch, None, None, &mut Workspace::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The public product is the path's: it agrees with ndarray's on a product large
    /// enough to be split across threads, and a mismatched shape is an error, not a panic.
    #[test]
    fn matmul_agrees_with_ndarray_and_refuses_mismatched_shapes() {
        let a = Array2::from_shape_fn((130, 300), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.0);
        let b = Array2::from_shape_fn((300, 90), |(i, j)| ((i * 5 + j) % 13) as f32 / 4.0);
        let mut got = Array2::<f32>::from_elem((130, 90), f32::NAN);
        matmul(a.view(), b.view(), &mut got.view_mut()).unwrap();
        // small integers and quarters: every partial sum is exact in f32
        assert_eq!(got, a.dot(&b));
        let mut wrong = Array2::<f32>::zeros((130, 91));
        let err = matmul(a.view(), b.view(), &mut wrong.view_mut()).unwrap_err();
        assert!(matches!(err, crate::Error::ShapeMismatch { .. }), "{err}");
        let err = matmul(a.view(), a.view(), &mut got.view_mut()).unwrap_err();
        assert!(matches!(err, crate::Error::ShapeMismatch { .. }), "{err}");
    }

    /// A time loop split over threads, by hidden units or by sequences, computes what one
    /// thread does: every cell, both directions, two layers, variable lengths (threads
    /// whose sequences end early), initial states, hidden sizes that the threads share
    /// unevenly (one unit: a thread with none, and one-column buffers whose strides
    /// ndarray leaves arbitrary).
    #[test]
    fn time_loops_split_over_threads_agree_with_one_thread() {
        use crate::internals::workloads::random_batch;
        use crate::rng::SplitMix64;
        for (cell, hidden) in [
            (Cell::Tanh, 80),
            (Cell::Relu, 64),
            (Cell::Lstm, 72),
            (Cell::Gru, 96),
            (Cell::Lstm, 1),
        ] {
            let config = RnnConfig::new(5, hidden, 4)
                .cell(cell)
                .num_layers(2)
                .bidirectional(true);
            let mut rng = SplitMix64::new(3);
            let batch = random_batch(&config, &[7, 3, 7, 1, 5], false, &mut rng).unwrap();
            let params = RnnParams::<f32>::init(&config, 1);
            let shape = (config.num_units(), batch.len(), hidden);
            let initial = RnnState {
                h: Array3::from_shape_simple_fn(shape, || rng.normal()),
                c: cell
                    .has_c()
                    .then(|| Array3::from_shape_simple_fn(shape, || rng.normal())),
            };
            let run = |split: team::FixedSplit| {
                let mut ws = Workspace {
                    loop_split: Some(split),
                    ..Workspace::default()
                };
                let loss = forward(&config, &params, &batch, Some(&initial), None, &mut ws);
                let state = final_state(&config, &batch, &ws);
                let grads = backward(&config, &params, &batch, &mut ws);
                let flat: Vec<f32> = grads
                    .tensors()
                    .iter()
                    .flat_map(|(_, t)| t.to_vec())
                    .collect();
                (loss, state, flat)
            };
            let (loss, state, grads) = run(team::FixedSplit::Units(1));
            for threads in [
                team::FixedSplit::Units(2),
                team::FixedSplit::Units(3),
                team::FixedSplit::Rows(2),
                team::FixedSplit::Rows(3),
            ] {
                let (l, s, g) = run(threads);
                let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * (1.0 + b.abs());
                assert!(
                    close(l, loss),
                    "{cell:?} {threads:?}: loss {l} against {loss}"
                );
                for (a, b) in s.h.iter().zip(&state.h) {
                    assert!(close(*a, *b), "{cell:?} {threads:?}: h {a} against {b}");
                }
                for (a, b) in s.c.iter().flatten().zip(state.c.iter().flatten()) {
                    assert!(close(*a, *b), "{cell:?} {threads:?}: c {a} against {b}");
                }
                for (i, (a, b)) in g.iter().zip(&grads).enumerate() {
                    assert!(
                        close(*a, *b),
                        "{cell:?} {threads:?}: gradient {i}: {a} against {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn dropout_drops_at_its_rate_and_scales_what_it_keeps() {
        for p in [0.1f32, 0.5, 0.8] {
            let config = RnnConfig::new(3, 50, 2)
                .num_layers(3)
                .bidirectional(true)
                .dropout(p)
                .output_dropout(p);
            let masks: Vec<Array2<f32>> =
                dropout_masks(&config, 400, dropout_key(7, 1), |r| r as u32);
            // between layers 0-1 and 1-2, and before the readout
            assert_eq!(masks.len(), 3);
            for m in &masks {
                let n = m.len() as f64;
                let dropped = m.iter().filter(|&&v| v == 0.0).count() as f64;
                // binomial: within 5 standard deviations of n·p
                let sd = (n * p as f64 * (1.0 - p as f64)).sqrt();
                assert!(
                    (dropped - n * p as f64).abs() < 5.0 * sd,
                    "p {p}: {dropped} of {n}"
                );
                let keep = 1.0 / (1.0 - p);
                assert!(m.iter().all(|&v| v == 0.0 || v == keep));
            }
            assert_ne!(masks[0], masks[1], "layers draw independently");
            assert_ne!(masks[1], masks[2], "the output mask too");
            // entry by entry what `dropout_keeps` draws
            for ((row, unit), &m) in masks[2].indexed_iter().step_by(37) {
                let kept = dropout_keeps(dropout_key(7, 1), 3, row as u32, unit as u32, p);
                assert_eq!(m != 0.0, kept);
            }
        }
        // other steps and seeds draw other masks; the same key the same ones
        let c = RnnConfig::new(3, 8, 2).num_layers(2).dropout(0.5);
        let at = |seed, step| -> Vec<Array2<f32>> {
            dropout_masks(&c, 20, dropout_key(seed, step), |r| r as u32)
        };
        // what a model draws: between layers if it has several, before a readout if
        // it has one
        let only_output = RnnConfig::new(3, 8, 2).dropout(0.5).output_dropout(0.2);
        assert_eq!(mask_layers(&only_output), vec![(1, 0.2)]);
        assert_eq!(mask_layers(&c), vec![(1, 0.5)]);
        let encoder = c.clone().output_dropout(0.2).head(crate::Head::None);
        assert_eq!(mask_layers(&encoder), vec![(1, 0.5)]);
        assert!(!RnnConfig::new(3, 8, 2).num_layers(2).drops());
        assert_eq!(at(1, 1), at(1, 1));
        assert_ne!(at(1, 1), at(1, 2));
        assert_ne!(at(1, 1), at(2, 1));
        // every part of the key counts, its high half as much as its low half
        let draws = |key: u64| -> Vec<bool> {
            (0..256)
                .map(|unit| dropout_keeps(key, 1, 0, unit, 0.5))
                .collect()
        };
        for bit in [0, 31, 32, 63] {
            assert_ne!(draws(7), draws(7 ^ (1 << bit)), "key bit {bit}");
        }
    }
}
