//! The CPU reference path: the same model and semantics as the GPU path, computed with
//! ndarray in any [`Real`] precision (`f32` to train, `f64` for gradient checks).
//!
//! It is built the fast way: per layer, the input projection of every step is one
//! matrix product before the time loop; the loop does one small product per step on the
//! packed rows still running (see [`crate::batch`]); the weight gradients are one product
//! over all steps after it. Buffers live in a [`Workspace`] reused across calls, so the
//! time loop allocates nothing.

mod loss;

use crate::batch::{Packing, SequenceBatch};
use crate::model::{LayerParams, RnnConfig, RnnParams};
use crate::real::Real;
use crate::{Head, Nonlinearity};
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array1, Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut2, Axis, Zip};

pub use loss::{cross_entropy, pack_classes, pack_values, squared_error};

/// Reusable buffers of one model's forward and backward pass.
#[derive(Debug, Default)]
pub struct Workspace<F> {
    /// Packed inputs `[tokens, input]` (feature batches).
    x: Array2<F>,
    /// Packed token ids (token batches).
    token_ids: Vec<u32>,
    /// Per layer, packed states `[tokens, hidden]`.
    hs: Vec<Array2<F>>,
    /// Per layer, initial states in packed order `[batch, hidden]` (when given).
    h0: Vec<Array2<F>>,
    /// Last-step head: top-layer final states in packed order `[batch, hidden]`.
    last: Array2<F>,
    /// Readout `[rows, output]` and its gradient.
    out: Array2<F>,
    d_out: Array2<F>,
    /// Gradient with respect to the pre-activations of the current layer, and the one
    /// being formed for the layer below.
    g: Array2<F>,
    g_below: Array2<F>,
    /// Previous states of steps 1.. gathered into one matrix for the `dW_hh` product.
    hprev: Array2<F>,
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

/// `a = φ(a)` in place.
fn activate<F: Real>(n: Nonlinearity, mut a: ArrayViewMut2<F>) {
    match n {
        Nonlinearity::Tanh => a.mapv_inplace(F::fast_tanh),
        Nonlinearity::Relu => a.mapv_inplace(|v| v.max(F::zero())),
    }
}

/// `d *= φ'(pre)`, with φ' written in terms of the output `h = φ(pre)`.
fn times_derivative<F: Real>(n: Nonlinearity, d: ArrayViewMut2<F>, h: ArrayView2<F>) {
    match n {
        Nonlinearity::Tanh => Zip::from(d)
            .and(h)
            .for_each(|d, &h| *d = *d * (F::one() - h * h)),
        Nonlinearity::Relu => Zip::from(d).and(h).for_each(|d, &h| {
            if h <= F::zero() {
                *d = F::zero()
            }
        }),
    }
}

/// Runs the model forward over `batch` (already checked against `config`), leaving the
/// states in `ws`, and returns the loss.
pub fn forward<F: Real>(
    config: &RnnConfig,
    params: &RnnParams<F>,
    batch: &SequenceBatch,
    initial: Option<ArrayView3<f32>>,
    ws: &mut Workspace<F>,
) -> F {
    let p = batch.packing();
    let tokens = p.tokens();
    let h = config.hidden_size;
    match batch.packed_token_ids() {
        Some(ids) => ws.token_ids = ids,
        None => pack_inputs(batch, &mut ws.x),
    }
    let tokens_in = batch.token_ids().is_some();
    ws.hs.resize_with(config.num_layers, Default::default);
    ws.h0.resize_with(config.num_layers, Default::default);
    for (l, layer) in params.layers.iter().enumerate() {
        let (below, rest) = ws.hs.split_at_mut(l);
        let input = match l {
            0 if tokens_in => LayerInput::Tokens(&ws.token_ids),
            0 => LayerInput::Dense(&ws.x),
            _ => LayerInput::Dense(&below[l - 1]),
        };
        let hs = &mut rest[0];
        resize(hs, tokens, h);
        let h0 = initial.map(|s| {
            pack_initial(s.index_axis(Axis(0), l), p, &mut ws.h0[l]);
            &ws.h0[l]
        });
        layer_forward(config.nonlinearity, layer, p, input, h0, hs);
    }
    let top = &ws.hs[config.num_layers - 1];
    let per_step = config.head == Head::PerStep;
    let head_in = if per_step {
        top
    } else {
        resize(&mut ws.last, p.batch(), h);
        for j in 0..p.batch() {
            ws.last.row_mut(j).assign(&top.row(p.last_row(j)));
        }
        &ws.last
    };
    resize(&mut ws.out, head_in.nrows(), config.output_size);
    linear(head_in, &params.w_out, &params.b_out, &mut ws.out);
    loss::loss_and_d_out(
        batch.targets(),
        p,
        per_step,
        &ws.out,
        &mut ws.d_out,
        &mut ws.classes,
        &mut ws.values,
    )
}

/// `out = input · wᵀ + b`
fn linear<F: Real>(input: &Array2<F>, w: &Array2<F>, b: &Array1<F>, out: &mut Array2<F>) {
    for mut row in out.rows_mut() {
        row.assign(b);
    }
    general_mat_mul(F::one(), input, &w.t(), F::one(), out);
}

/// What a layer reads at each packed row: feature vectors, or token ids.
enum LayerInput<'a, F> {
    Dense(&'a Array2<F>),
    Tokens(&'a [u32]),
}

/// One layer over all steps: the hoisted input product (for tokens a column lookup in
/// `W_ih`), then one recurrent product per step on the rows still running.
fn layer_forward<F: Real>(
    nonlinearity: Nonlinearity,
    layer: &LayerParams<F>,
    p: &Packing,
    input: LayerInput<F>,
    h0: Option<&Array2<F>>,
    hs: &mut Array2<F>,
) {
    match input {
        LayerInput::Dense(x) => linear(x, &layer.w_ih, &layer.b, hs),
        LayerInput::Tokens(ids) => {
            for (mut row, &id) in hs.rows_mut().into_iter().zip(ids) {
                Zip::from(&mut row)
                    .and(layer.w_ih.column(id as usize))
                    .and(&layer.b)
                    .for_each(|h, &w, &b| *h = w + b);
            }
        }
    }
    for (t, &n) in p.batch_sizes.iter().enumerate() {
        let off = p.offsets[t];
        let (prev, mut cur) = hs.view_mut().split_at(Axis(0), off);
        let mut cur = cur.slice_mut(s![..n, ..]);
        if t > 0 {
            let prev_off = p.offsets[t - 1];
            general_mat_mul(
                F::one(),
                &prev.slice(s![prev_off..prev_off + n, ..]),
                &layer.w_hh.t(),
                F::one(),
                &mut cur,
            );
        } else if let Some(h0) = h0 {
            general_mat_mul(F::one(), h0, &layer.w_hh.t(), F::one(), &mut cur);
        }
        activate(nonlinearity, cur);
    }
}

/// Back-propagation through time after [`forward`] on the same arguments: returns the
/// gradient of the loss with respect to every parameter.
pub fn backward<F: Real>(
    config: &RnnConfig,
    params: &RnnParams<F>,
    batch: &SequenceBatch,
    initial: Option<ArrayView3<f32>>,
    ws: &mut Workspace<F>,
) -> RnnParams<F> {
    let p = batch.packing();
    let tokens = p.tokens();
    let h = config.hidden_size;
    let top = config.num_layers - 1;
    let mut grads = RnnParams::<F>::zeros(config);

    // readout
    let head_in = if config.head == Head::PerStep {
        &ws.hs[top]
    } else {
        &ws.last
    };
    general_mat_mul(
        F::one(),
        &ws.d_out.t(),
        head_in,
        F::zero(),
        &mut grads.w_out,
    );
    grads.b_out = ws.d_out.sum_axis(Axis(0));
    resize(&mut ws.g, tokens, h);
    match config.head {
        Head::PerStep => general_mat_mul(F::one(), &ws.d_out, &params.w_out, F::zero(), &mut ws.g),
        Head::LastStep => {
            ws.g.fill(F::zero());
            let d_last = ws.d_out.dot(&params.w_out);
            for j in 0..p.batch() {
                ws.g.row_mut(p.last_row(j)).assign(&d_last.row(j));
            }
        }
    }

    for l in (0..config.num_layers).rev() {
        let layer = &params.layers[l];
        let hs = &ws.hs[l];
        layer_backward_steps(config.nonlinearity, layer, p, hs, &mut ws.g);
        let input = if l == 0 { &ws.x } else { &ws.hs[l - 1] };
        let gl = &mut grads.layers[l];
        if l == 0 && batch.token_ids().is_some() {
            // a column lookup's gradient: each row's dA added into its token's column
            for (g_row, &id) in ws.g.rows().into_iter().zip(&ws.token_ids) {
                Zip::from(gl.w_ih.column_mut(id as usize))
                    .and(&g_row)
                    .for_each(|w, &g| *w = *w + g);
            }
        } else {
            // dW_ih = Σ_t dA(t)ᵀ · in(t), one product over all steps
            general_mat_mul(F::one(), &ws.g.t(), input, F::zero(), &mut gl.w_ih);
        }
        gl.b = ws.g.sum_axis(Axis(0));
        // dW_hh = Σ_t dA(t)ᵀ · h(t-1)
        let b = p.batch();
        if tokens > b {
            let fixed_length = p.batch_sizes.iter().all(|&n| n == b);
            let prev = if fixed_length {
                hs.slice(s![..tokens - b, ..])
            } else {
                resize(&mut ws.hprev, tokens - b, h);
                for t in 1..p.max_len() {
                    let n = p.batch_sizes[t];
                    let (src, dst) = (p.offsets[t - 1], p.offsets[t] - b);
                    ws.hprev
                        .slice_mut(s![dst..dst + n, ..])
                        .assign(&hs.slice(s![src..src + n, ..]));
                }
                ws.hprev.view()
            };
            general_mat_mul(
                F::one(),
                &ws.g.slice(s![b.., ..]).t(),
                &prev,
                F::zero(),
                &mut gl.w_hh,
            );
        }
        if initial.is_some() {
            general_mat_mul(
                F::one(),
                &ws.g.slice(s![..b, ..]).t(),
                &ws.h0[l],
                F::one(),
                &mut gl.w_hh,
            );
        }
        if l > 0 {
            // gradient with respect to the layer below's states: one product over all steps
            resize(&mut ws.g_below, tokens, h);
            general_mat_mul(F::one(), &ws.g, &layer.w_ih, F::zero(), &mut ws.g_below);
            std::mem::swap(&mut ws.g, &mut ws.g_below);
        }
    }
    grads
}

/// Turns `g`, the gradient with respect to the layer's states from outside the
/// recurrence (readout or layer above), into the gradient with respect to its
/// pre-activations, walking the steps backwards:
/// `dA(t) = (g(t) + W_hhᵀ dA(t+1)) ⊙ φ'(h(t))`.
fn layer_backward_steps<F: Real>(
    nonlinearity: Nonlinearity,
    layer: &LayerParams<F>,
    p: &Packing,
    hs: &Array2<F>,
    g: &mut Array2<F>,
) {
    for t in (0..p.max_len()).rev() {
        let off = p.offsets[t];
        let n = p.batch_sizes[t];
        if t + 1 < p.max_len() {
            let next_off = p.offsets[t + 1];
            let n_next = p.batch_sizes[t + 1];
            let (mut cur, next) = g.view_mut().split_at(Axis(0), next_off);
            general_mat_mul(
                F::one(),
                &next.slice(s![..n_next, ..]),
                &layer.w_hh,
                F::one(),
                &mut cur.slice_mut(s![off..off + n_next, ..]),
            );
        }
        times_derivative(
            nonlinearity,
            g.slice_mut(s![off..off + n, ..]),
            hs.slice(s![off..off + n, ..]),
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

fn pack_initial<F: Real>(state: ndarray::ArrayView2<f32>, p: &Packing, dst: &mut Array2<F>) {
    resize(dst, p.batch(), state.ncols());
    for (j, &i) in p.order.iter().enumerate() {
        dst.row_mut(j)
            .iter_mut()
            .zip(state.row(i))
            .for_each(|(d, &s)| *d = F::from_f32(s));
    }
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
        Head::PerStep => p.unpack_steps(rows.view()),
        Head::LastStep => p.unpack_sequences(rows.view()).insert_axis(Axis(1)),
    }
}

/// Each sequence's state at its own last valid step, `[num_layers, batch, hidden]`.
pub fn final_hidden<F: Real>(
    config: &RnnConfig,
    batch: &SequenceBatch,
    ws: &Workspace<F>,
) -> Array3<f32> {
    let p = batch.packing();
    let mut out = Array3::zeros((config.num_layers, p.batch(), config.hidden_size));
    let last = p.last_rows();
    for (l, hs) in ws.hs.iter().enumerate().take(config.num_layers) {
        let finals = hs.select(Axis(0), &last).mapv(|v| v.to_f64() as f32);
        out.index_axis_mut(Axis(0), l)
            .assign(&p.unpack_sequences(finals.view()));
    }
    out
}

/// Loss and gradients in precision `F`, for gradient checks: the whole reference path in
/// one call. `batch` must have been checked against `config`.
pub fn loss_and_gradients<F: Real>(
    config: &RnnConfig,
    params: &RnnParams<F>,
    batch: &SequenceBatch,
) -> (F, RnnParams<F>) {
    let mut ws = Workspace::default();
    let loss = forward(config, params, batch, None, &mut ws);
    let grads = backward(config, params, batch, None, &mut ws);
    (loss, grads)
}

/// The loss alone in precision `F` (for finite differences).
pub fn loss<F: Real>(config: &RnnConfig, params: &RnnParams<F>, batch: &SequenceBatch) -> F {
    forward(config, params, batch, None, &mut Workspace::default())
}
