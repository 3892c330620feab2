//! `GpuRnn`: the model's parameters and work buffers on one device, and the recording of
//! forward passes, backward passes and training steps.
//!
//! A forward pass is, per layer: the hoisted input projection of every step and gate
//! (one product per direction, or a lookup for tokens), then the layer's time loop
//! (`time_loop.rs`); then the readout and the loss. The backward pass mirrors it: the
//! readout's gradients, then per layer from the top the reverse time loop, the weight
//! gradients as one product over all steps each, and the gradient for the layer below.

use super::buffers::{check_fits, storage, BatchBuffers, Dropout, ParamLayout};
use super::gemm::{Epilogue, Matrix, Product};
use super::kernels::{CellKernels, EmbedParams, LossParams, OptimParams, ReduceParams, RowsParams};
use super::recorder::{self, read_back, Recorder, SharedCache};
use super::time_loop::{LayerLoop, LoopBuffers, LoopLayout, Strategy, UnitOffsets};
use super::{GpuContext, OptimizerBuffers, TimeLoop, PERSISTENT_MAX_HIDDEN};
use crate::batch::{Packing, SequenceBatch, Targets};
use crate::cpu::RnnState;
use crate::model::{RnnConfig, RnnParams};
use crate::optim::{update_overflow, AdamCoefficients, Optimizer, OptimizerKind, State};
use crate::rnn::{check_finite_step, Encoded, Forward, Gradients};
use crate::{Cell, Error, Head, Result};
use ndarray::{Array2, Array3, ArrayView2, Axis};
use std::sync::Arc;

pub(crate) struct GpuRnn {
    ctx: Arc<GpuContext>,
    /// The model's shape (the one it was created for).
    config: RnnConfig,
    layout: ParamLayout,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    /// `[loss, sum of squared gradients, clip scale, step ok]`
    scalars: wgpu::Buffer,
    partials: wgpu::Buffer,
    /// Per-chunk column sums, `[COLUMN_CHUNKS, max(gates·hidden, output)]`.
    column_scratch: wgpu::Buffer,
    /// Every layer's and direction's `W_hhᵀ` `[hidden, gates·hidden]` and a copy of
    /// `b_hh`: the persistent forward kernel's reads along it are contiguous across
    /// threads.
    w_hh_t: wgpu::Buffer,
    /// Bound where a kernel reads nothing (`[0]`, read-only bindings) or writes nothing
    /// (`[1]`, read-write bindings; a buffer may not be bound both ways in one dispatch).
    dummies: [wgpu::Buffer; 2],
    work: Option<BatchBuffers>,
    /// Bind groups across calls; shared (weakly) with the optimizers bound through it,
    /// which evict their groups when they go.
    cache: SharedCache,
    /// Host time spent recording, encoding and submitting the last step, and the
    /// number of dispatches it recorded.
    pub last_host: std::time::Duration,
    pub last_dispatches: usize,
    pub time_loop: TimeLoop,
    /// The batch (its id) and dropout key of the encoder's forward pass the work buffers
    /// hold, with the parameters as they are: what [`GpuRnn::encode`] (or a
    /// [`GpuRnn::backward`] that ran the layers forward) left there, for a backward pass
    /// that need not run them again. `None` once anything else wrote over them.
    encoded: Option<(u64, Option<u64>)>,
    /// What the gradient buffer holds, as the last [`GpuRnn::backward`] read it back or
    /// the last [`GpuRnn::apply_gradients`] uploaded it: gradients equal to these need no
    /// upload. `None` when unknown.
    grads_held: Option<Vec<f32>>,
    /// The batch (its id) whose inputs, targets and packing tables the work buffers hold,
    /// and whether its rows were laid out for an initial state: a call on the same batch
    /// uploads only what changes per call (initial states, dropout masks). `None` after
    /// the work buffers were replaced.
    batch_held: Option<(u64, bool)>,
}

const PARTIALS: usize = 256;
/// Slots of the scalars buffer: loss, the gradients' norm, clip scale, the optimizer's
/// flags, whether every gradient is finite (see `shaders/optimizer.wgsl`).
const SCALARS: usize = 7;
const NORM: u32 = 1;
const GRADS_FINITE: u32 = 6;
/// Most row chunks a column sum is split into.
const COLUMN_CHUNKS: usize = 64;

/// A training step whose forward pass records at least this many dispatches submits it
/// on its own before recording the backward pass.
const SPLIT_SUBMISSION_DISPATCHES: usize = 64;

/// What one recording runs on top of the batch: whether there are initial states,
/// whether dropout masks apply (a training pass with dropout), and whether the backward
/// pass forms the gradient with respect to the inputs.
#[derive(Clone, Copy, Debug, Default)]
struct Pass {
    initial: bool,
    /// Masks between layers.
    dropout: bool,
    /// A mask on the top layer's states before the readout.
    out_dropout: bool,
    input_grads: bool,
}

impl Pass {
    /// A pass from `initial` states (or zeros) with the masks of `dropout` that
    /// `config` draws (none without).
    fn new(config: &RnnConfig, initial: bool, dropout: Option<Dropout<'_>>) -> Self {
        Pass {
            initial,
            dropout: dropout.is_some() && config.drops_between(),
            out_dropout: dropout.is_some() && config.drops_output(),
            input_grads: false,
        }
    }
}

impl GpuRnn {
    pub fn new(ctx: Arc<GpuContext>, config: &RnnConfig, params: &RnnParams) -> Result<Self> {
        // compile the cell's kernels now, so that recording cannot fail on them
        ctx.cell_kernels(config.cell)?;
        let layout = ParamLayout::new(config);
        check_fits(&ctx, "the parameter buffer", layout.len)?;
        let buf = storage(&ctx, "params", layout.len);
        ctx.note_upload();
        ctx.write(&buf, bytemuck::cast_slice(&params.to_flat()));
        let grads = storage(&ctx, "grads", layout.len);
        let scalars = storage(&ctx, "scalars", SCALARS);
        // (scale, sum of squares) pairs for the norm
        let partials = storage(&ctx, "partials", 2 * PARTIALS);
        let column_scratch = storage(
            &ctx,
            "column sums",
            COLUMN_CHUNKS * config.gate_width().max(config.output_size),
        );
        let persistent_fits = config.hidden_size <= PERSISTENT_MAX_HIDDEN;
        let (h, gh) = (config.hidden_size, config.gate_width());
        let w_hh_t = storage(
            &ctx,
            "W_hh transposed",
            persistent_fits as usize * config.num_units() * (h * gh + gh),
        );
        let dummies = [
            storage(&ctx, "dummy (read)", 4),
            storage(&ctx, "dummy (write)", 4),
        ];
        Ok(GpuRnn {
            ctx,
            config: config.clone(),
            layout,
            params: buf,
            grads,
            scalars,
            partials,
            column_scratch,
            w_hh_t,
            dummies,
            work: None,
            cache: Default::default(),
            last_host: Default::default(),
            last_dispatches: 0,
            time_loop: TimeLoop::Auto,
            encoded: None,
            grads_held: None,
            batch_held: None,
        })
    }

    /// Makes sure the work buffers fit `batch`, reallocating (to the new size) when not.
    fn ensure_work(&mut self, batch: &SequenceBatch) -> Result<()> {
        if self.work.as_ref().is_some_and(|w| w.fit(batch)) {
            return Ok(());
        }
        let p = batch.packing();
        let dense = batch.token_ids().is_none() as usize;
        let own = (p.tokens(), p.batch(), dense * p.tokens());
        let grown = match &self.work {
            Some(w) => (
                w.tokens.max(own.0),
                w.batch.max(own.1),
                w.x_tokens.max(own.2),
            ),
            None => own,
        };
        // room for this batch and the ones before; where that exceeds a limit (some
        // buffers add up sizes), room for this batch alone: whether a batch fits never
        // depends on the batches before it (the chunks of a split batch rely on that).
        // Nothing changes when it does not fit.
        let dims = match BatchBuffers::check(&self.ctx, &self.config, grown) {
            Ok(()) => grown,
            Err(_) => {
                BatchBuffers::check(&self.ctx, &self.config, own)?;
                own
            }
        };
        // the old buffers go: so do the groups that bind them, and what they held
        recorder::lock(&self.cache).clear();
        self.work = None;
        self.encoded = None;
        self.batch_held = None;
        self.work = Some(BatchBuffers::new(&self.ctx, &self.config, dims)?);
        Ok(())
    }

    /// The device's context.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Drops the work buffers: the next pass allocates them anew, sized for the plans
    /// the products run with then (a tuned split may need more scratch).
    pub fn release_work(&mut self) {
        recorder::lock(&self.cache).clear();
        self.work = None;
        self.encoded = None;
        self.batch_held = None;
    }

    fn work(&self) -> &BatchBuffers {
        self.work.as_ref().expect("ensure_work ran")
    }

    fn cell_kernels(&self) -> &CellKernels {
        self.ctx
            .cell_kernels(self.config.cell)
            .expect("compiled in GpuRnn::new")
    }

    /// The split-K scratch of the matrix products.
    fn split_scratch(&self) -> (&wgpu::Buffer, usize) {
        let (buffer, floats) = &self.work().split_scratch;
        (buffer, *floats)
    }

    /// Records `product` under the tiling its shape chooses.
    fn product<'a>(&'a self, rec: &mut Recorder<'a>, product: Product<'a>) {
        product.record(rec, &self.ctx.kernels, self.split_scratch());
    }

    // ---- sizes and places ----

    fn hidden(&self) -> u32 {
        self.config.hidden_size as u32
    }

    fn dirs(&self) -> u32 {
        self.config.num_directions() as u32
    }

    /// `G·H`: the width of one direction's gates.
    fn gate_width(&self) -> u32 {
        self.config.gate_width() as u32
    }

    fn gated(&self) -> bool {
        self.config.cell.gates() > 1
    }

    /// Layer `l`'s output `[tokens, D·H]`.
    fn states(&self, l: usize) -> Matrix<'_> {
        Matrix::new(&self.work().hs[l], 0, self.dirs() * self.hidden())
    }

    /// Direction `d` of layer `l`'s gates `[tokens, G·H]` (an Elman cell's are its states).
    fn gates(&self, l: usize, d: usize) -> Matrix<'_> {
        if self.gated() {
            let width = self.gate_width();
            Matrix::new(&self.work().saved[l], 0, self.dirs() * width).at(0, d as u32 * width)
        } else {
            self.states(l).at(0, d as u32 * self.hidden())
        }
    }

    /// Direction `d`'s gradient with respect to its input projection, `dgx`, in the
    /// backward pass of a layer whose output gradient was in `g` (where an Elman cell
    /// leaves it).
    fn dgx<'a>(&'a self, g: &'a wgpu::Buffer, d: usize) -> Matrix<'a> {
        if self.gated() {
            let width = self.gate_width();
            Matrix::new(&self.work().dgates, 0, self.dirs() * width).at(0, d as u32 * width)
        } else {
            Matrix::new(g, 0, self.dirs() * self.hidden()).at(0, d as u32 * self.hidden())
        }
    }

    /// ... and with respect to its recurrent product, `dgh` (the same but for the GRU).
    fn dgh<'a>(&'a self, g: &'a wgpu::Buffer, d: usize, p: &Packing) -> Matrix<'a> {
        let dgx = self.dgx(g, d);
        match self.config.cell {
            Cell::Gru => Matrix {
                offset: dgx.offset + self.dgh_offset(p),
                ..dgx
            },
            _ => dgx,
        }
    }

    /// Where the GRU's `dgh` starts in `dgates` (0 for the other cells).
    fn dgh_offset(&self, p: &Packing) -> u32 {
        match self.config.cell {
            Cell::Gru => p.tokens() as u32 * self.dirs() * self.gate_width(),
            _ => 0,
        }
    }

    /// Layer `l`'s input: the packed inputs, or the layer below's output (after its
    /// dropout mask on a pass with dropout).
    fn layer_input(&self, l: usize, pass: Pass) -> Matrix<'_> {
        let w = self.work();
        match l {
            0 => Matrix::new(&w.x, 0, self.config.input_size as u32),
            _ if pass.dropout => Matrix::new(&w.dropped[l - 1], 0, self.dirs() * self.hidden()),
            _ => self.states(l - 1),
        }
    }

    /// Layer `l - 1`'s dropout mask `[tokens, D·H]` (l ≥ 1).
    fn mask(&self, l: usize, p: &Packing) -> Matrix<'_> {
        let width = self.dirs() * self.hidden();
        Matrix::new(
            &self.work().masks,
            (l as u32 - 1) * p.tokens() as u32 * width,
            width,
        )
    }

    /// The mask on the top layer's states before the readout `[tokens, D·H]` (after
    /// those between layers).
    fn output_mask(&self, p: &Packing) -> Matrix<'_> {
        let width = self.dirs() * self.hidden();
        let between = crate::cpu::mask_layers(&self.config).len() as u32 - 1;
        Matrix::new(
            &self.work().masks,
            between * p.tokens() as u32 * width,
            width,
        )
    }

    /// Layer `l`'s time loop over `p`, reading its output gradient from `g` backward.
    fn layer_loop<'a>(
        &'a self,
        l: usize,
        p: &'a Packing,
        pass: Pass,
        g: &'a wgpu::Buffer,
    ) -> LayerLoop<'a> {
        let w = self.work();
        let (h, gh, dirs) = (self.hidden(), self.gate_width(), self.dirs());
        let b = p.batch() as u32;
        let units_total = self.config.num_units() as u32;
        let mut units = [UnitOffsets::default(); 2];
        for (d, unit) in units.iter_mut().enumerate().take(dirs as usize) {
            let u = l * dirs as usize + d;
            *unit = UnitOffsets {
                w_hh: self.layout.w_hh[u],
                b_hh: self.layout.b_hh[u],
                initial: u as u32 * b * h,
                w_hh_t: u as u32 * (h * gh + gh),
                step_product: d as u32 * b * gh,
            };
        }
        let gated = self.gated();
        let dummy = &self.dummies[1];
        LayerLoop {
            cell: self.config.cell,
            strategy: Strategy::choose(
                self.time_loop,
                self.config.hidden_size,
                p.batch(),
                &self.ctx.limits,
            ),
            hidden: h,
            dirs,
            packing: p,
            has_initial: pass.initial,
            units,
            layout: LoopLayout {
                saved_aux: p.tokens() as u32 * dirs * gh,
                dgh: self.dgh_offset(p),
                initial_c: units_total * b * h,
                lengths: p.offsets.len() as u32,
            },
            buffers: LoopBuffers {
                params: &self.params,
                states: &w.hs[l],
                saved: if gated { &w.saved[l] } else { dummy },
                initial: if pass.initial {
                    &w.initial
                } else {
                    &self.dummies[0]
                },
                packing: &w.packing,
                w_hh_t: &self.w_hh_t,
                step_scratch: if gated { &w.step_scratch } else { dummy },
                split_scratch: self.split_scratch(),
                grad: g,
                dgates: if gated { &w.dgates } else { dummy },
                dummy,
            },
            kernels: &self.ctx.kernels,
            cell_kernels: self.cell_kernels(),
        }
    }

    // ---- forward ----

    /// Records the recurrent layers forward, leaving every layer's states in `hs` (and a
    /// gated cell's gates in `saved`).
    fn record_layers<'a>(&'a self, rec: &mut Recorder<'a>, batch: &'a SequenceBatch, pass: Pass) {
        let k = &self.ctx.kernels;
        let w = self.work();
        let p = batch.packing();
        let (gh, dirs) = (self.gate_width(), self.dirs());
        let tokens = p.tokens() as u32;
        for l in 0..self.config.num_layers {
            rec.phase(format_args!("layer {l}: input projection"));
            if l > 0 && pass.dropout {
                // the layer's input: the layer below's output times its mask
                self.record_times_mask(rec, p, &w.hs[l - 1], &w.dropped[l - 1], self.mask(l, p));
            }
            for d in 0..dirs as usize {
                let u = l * dirs as usize + d;
                let gates = self.gates(l, d);
                if l == 0 && batch.token_ids().is_some() {
                    // tokens: the input projection is a column of W_ih
                    rec.dispatch_1d(
                        &k.embed,
                        EmbedParams {
                            stride: gates.stride,
                            col_offset: gates.offset,
                            ..self.embed_params(p, u)
                        },
                        &[&w.token_data, &self.params, gates.buffer],
                        (tokens * gh) as usize,
                    );
                } else {
                    // hoisted: W_ih in(t) + b_ih for every step and gate at once
                    let input = self.layer_input(l, pass);
                    let in_size = self.config.layer_input_size(l) as u32;
                    self.product(
                        rec,
                        Product {
                            b_transposed: true,
                            bias: Some((&self.params, self.layout.b_ih[u])),
                            ..Product::new(
                                (tokens, gh, in_size),
                                input,
                                Matrix::new(&self.params, self.layout.w_ih[u], in_size),
                                gates,
                            )
                        },
                    );
                }
            }
            rec.steps_phase(format_args!("layer {l}: time loop, forward"));
            self.layer_loop(l, p, pass, &self.dummies[1])
                .record_forward(rec);
        }
    }

    /// The readout's input: the top layer's states (after their mask, on a pass with
    /// output dropout; per-step head) or each sequence's final states gathered from them
    /// into `last` (last-step head); and its rows. With `rec`, records what forms it.
    fn head_input<'a>(
        &'a self,
        mut rec: Option<&mut Recorder<'a>>,
        p: &Packing,
        pass: Pass,
    ) -> (Matrix<'a>, u32) {
        let w = self.work();
        let (h, dh) = (self.hidden(), self.dirs() * self.hidden());
        let mut top = self.states(self.config.num_layers - 1);
        if pass.out_dropout {
            let dropped = Matrix::new(&w.top_dropped, 0, dh);
            if let Some(rec) = rec.as_deref_mut() {
                self.record_times_mask(rec, p, top.buffer, dropped.buffer, self.output_mask(p));
            }
            top = dropped;
        }
        if self.config.head != Head::LastStep {
            return (top, p.tokens() as u32);
        }
        let b = p.batch() as u32;
        if let Some(rec) = rec {
            for d in 0..self.dirs() {
                rec.dispatch_1d(
                    &self.ctx.kernels.gather_rows,
                    RowsParams {
                        rows: b,
                        cols: h,
                        src_offset: d * h,
                        dst_offset: d * h,
                        src_stride: dh,
                        dst_stride: dh,
                        index_offset: d * b,
                        extra_offset: 0,
                    },
                    &[&w.last_index, top.buffer, &w.last],
                    (b * h) as usize,
                );
            }
        }
        (Matrix::new(&w.last, 0, dh), b)
    }

    /// Records `dst = src * mask` over `[tokens, D·H]` (all dense at offset 0 but the
    /// mask's).
    fn record_times_mask<'a>(
        &'a self,
        rec: &mut Recorder<'a>,
        p: &Packing,
        src: &'a wgpu::Buffer,
        dst: &'a wgpu::Buffer,
        mask: Matrix<'a>,
    ) {
        let w = self.work();
        let (tokens, dh) = (p.tokens() as u32, self.dirs() * self.hidden());
        rec.dispatch_1d(
            &self.ctx.kernels.apply_mask,
            RowsParams {
                rows: tokens,
                cols: dh,
                extra_offset: mask.offset,
                ..Default::default()
            },
            &[&w.packing, src, dst, mask.buffer],
            (tokens * dh) as usize,
        );
    }

    /// Records the readout and the loss (into `scalars[0]`, with `d_out`).
    fn record_head<'a>(&'a self, rec: &mut Recorder<'a>, batch: &'a SequenceBatch, pass: Pass) {
        let k = &self.ctx.kernels;
        let w = self.work();
        let p = batch.packing();
        let o = self.config.output_size as u32;
        let dh = self.dirs() * self.hidden();
        rec.phase(format_args!("readout and loss"));
        let (head_in, rows) = self.head_input(Some(rec), p, pass);
        self.product(
            rec,
            Product {
                b_transposed: true,
                bias: Some((&self.params, self.layout.b_out)),
                ..Product::new(
                    (rows, o, dh),
                    head_in,
                    Matrix::new(&self.params, self.layout.w_out, dh),
                    Matrix::new(&w.out, 0, o),
                )
            },
        );
        let (kernel, scale, finish_scale) = match batch.targets() {
            // inference without targets: no loss (the host reports NaN)
            None => return,
            Some(Targets::Classes(_)) => (&k.cross_entropy, 1.0 / rows as f32, 1.0 / rows as f64),
            Some(Targets::Values(_)) => (
                &k.squared_error,
                2.0 / (rows as f32 * o as f32),
                1.0 / (rows as f64 * o as f64),
            ),
        };
        rec.dispatch_1d(
            kernel,
            LossParams {
                rows,
                cols: o,
                scale,
                _pad: 0,
            },
            &[&w.out, &w.d_out, &w.row_loss, &w.classes, &w.values],
            rows as usize,
        );
        self.record_sum(rec, &w.row_loss, rows as usize, 0, finish_scale as f32);
    }

    /// Parameters of the token kernels for unit `u` (of layer 0).
    fn embed_params(&self, p: &Packing, u: usize) -> EmbedParams {
        let tokens = p.tokens() as u32;
        EmbedParams {
            rows: tokens,
            width: self.gate_width(),
            vocab: self.config.input_size as u32,
            w_offset: self.layout.w_ih[u],
            b_offset: self.layout.b_ih[u],
            ranges_offset: tokens,
            order_offset: tokens + self.config.input_size as u32 + 1,
            ..Default::default()
        }
    }

    // ---- backward ----

    /// Records the readout's gradients and the gradient reaching the top layer's states,
    /// into `g`.
    fn record_head_backward<'a>(&'a self, rec: &mut Recorder<'a>, p: &Packing, pass: Pass) {
        let w = self.work();
        let lay = &self.layout;
        let o = self.config.output_size as u32;
        let (h, dh) = (self.hidden(), self.dirs() * self.hidden());
        let (head_in, rows) = self.head_input(None, p, pass);
        rec.phase(format_args!("readout, backward"));
        let d_out = Matrix::new(&w.d_out, 0, o);
        let w_out = Matrix::new(&self.params, lay.w_out, dh);
        // dW_out = d_outᵀ · head_in, db_out = Σ rows d_out
        self.product(
            rec,
            Product {
                a_transposed: true,
                ..Product::new(
                    (o, dh, rows),
                    d_out,
                    head_in,
                    Matrix::new(&self.grads, lay.w_out, dh),
                )
            },
        );
        self.record_column_sums(rec, d_out, rows, o, lay.b_out);
        let g = Matrix::new(&w.g, 0, dh);
        match self.config.head {
            // times the output dropout's mask, on a pass with one
            Head::PerStep => self.product(
                rec,
                Product {
                    epilogue: if pass.out_dropout {
                        Epilogue::TimesMask(self.output_mask(p))
                    } else {
                        Epilogue::None
                    },
                    ..Product::new((rows, dh, o), d_out, w_out, g)
                },
            ),
            Head::LastStep => {
                // each direction's gradient at the row its final state came from (in
                // `top_dropped`, free by now, when a mask is still to apply)
                let scattered = if pass.out_dropout {
                    &w.top_dropped
                } else {
                    &w.g
                };
                rec.clear(scattered);
                let d_last = Matrix::new(&w.d_last, 0, dh);
                self.product(rec, Product::new((rows, dh, o), d_out, w_out, d_last));
                for d in 0..self.dirs() {
                    rec.dispatch_1d(
                        &self.ctx.kernels.scatter_rows,
                        RowsParams {
                            rows,
                            cols: h,
                            src_offset: d * h,
                            dst_offset: d * h,
                            src_stride: dh,
                            dst_stride: dh,
                            index_offset: d * rows,
                            extra_offset: 0,
                        },
                        &[&w.last_index, &w.d_last, scattered],
                        (rows * h) as usize,
                    );
                }
                if pass.out_dropout {
                    self.record_times_mask(rec, p, scattered, &w.g, self.output_mask(p));
                }
            }
            Head::None => unreachable!("an encoder's gradient comes from the caller"),
        }
    }

    /// Records back-propagation through the recurrent layers after
    /// [`GpuRnn::record_layers`], from the gradient with respect to the top layer's
    /// output in `g`, writing every recurrent parameter's gradient into the gradient
    /// buffer. With `pass.input_grads` (dense batches), also the gradient with respect
    /// to the inputs, into `d_inputs`, which it returns.
    fn record_layers_backward<'a>(
        &'a self,
        rec: &mut Recorder<'a>,
        batch: &'a SequenceBatch,
        pass: Pass,
    ) -> &'a wgpu::Buffer {
        let w = self.work();
        let lay = &self.layout;
        let p = batch.packing();
        let (gh, dirs) = (self.gate_width(), self.dirs() as usize);
        let tokens = p.tokens() as u32;
        let dense = batch.token_ids().is_none();
        let (mut g, mut g_below) = (&w.g, &w.g_below);
        for l in (0..self.config.num_layers).rev() {
            rec.steps_phase(format_args!("layer {l}: time loop, backward"));
            self.layer_loop(l, p, pass, g).record_backward(rec);
            let input = self.layer_input(l, pass);
            let in_size = self.config.layer_input_size(l) as u32;
            let below = l > 0 || (pass.input_grads && dense);
            for d in 0..dirs {
                let u = l * dirs + d;
                let (dgx, dgh) = (self.dgx(g, d), self.dgh(g, d, p));
                rec.phase(format_args!("layer {l}: weight gradients"));
                if l == 0 && !dense {
                    // tokens: each column of dW_ih sums the rows that looked it up
                    let e = EmbedParams {
                        stride: dgx.stride,
                        col_offset: dgx.offset,
                        ..self.embed_params(p, u)
                    };
                    rec.dispatch_1d(
                        &self.ctx.kernels.embed_grad,
                        e,
                        &[&w.token_data, dgx.buffer, &self.grads],
                        (e.vocab * gh) as usize,
                    );
                } else {
                    // dW_ih = Σ_t dgx(t)ᵀ in(t): one product over all steps
                    self.product(
                        rec,
                        Product {
                            a_transposed: true,
                            ..Product::new(
                                (gh, in_size, tokens),
                                dgx,
                                input,
                                Matrix::new(&self.grads, lay.w_ih[u], in_size),
                            )
                        },
                    );
                }
                self.record_column_sums(rec, dgx, tokens, gh, lay.b_ih[u]);
                self.record_column_sums(rec, dgh, tokens, gh, lay.b_hh[u]);
                self.record_recurrent_weight_gradient(rec, l, d, dgh, p, pass);
                if below {
                    // the gradient reaching the layer's input: Σ_d dgx_d · W_ih_d, times
                    // the dropout mask the input went through
                    rec.phase(format_args!("layer {l}: gradient for the layer below"));
                    let last = d + 1 == dirs;
                    let target = match l {
                        0 => w.d_inputs.as_ref().expect("ensure_input_grads ran"),
                        _ => g_below,
                    };
                    self.product(
                        rec,
                        Product {
                            accumulate: d > 0,
                            epilogue: if l > 0 && pass.dropout && last {
                                Epilogue::TimesMask(self.mask(l, p))
                            } else {
                                Epilogue::None
                            },
                            ..Product::new(
                                (tokens, in_size, gh),
                                dgx,
                                Matrix::new(&self.params, lay.w_ih[u], in_size),
                                Matrix::new(target, 0, in_size),
                            )
                        },
                    );
                }
            }
            if l > 0 {
                std::mem::swap(&mut g, &mut g_below);
            }
        }
        w.d_inputs.as_ref().unwrap_or(g)
    }

    /// `dW_hh = Σ_t dgh(t)ᵀ · h(t-1)` of layer `l`'s direction `d`, one product over all
    /// rows. With every sequence of the same length the previous states of the rows that
    /// have one are a contiguous block of the layer's output, read in place (plus the
    /// initial state's rows, if any); otherwise every row's previous state is gathered
    /// first.
    fn record_recurrent_weight_gradient<'a>(
        &'a self,
        rec: &mut Recorder<'a>,
        l: usize,
        d: usize,
        dgh: Matrix<'a>,
        p: &Packing,
        pass: Pass,
    ) {
        let w = self.work();
        let (h, gh) = (self.hidden(), self.gate_width());
        let u = l * self.dirs() as usize + d;
        let (tokens, b) = (p.tokens() as u32, p.batch() as u32);
        let dw_hh = Matrix::new(&self.grads, self.layout.w_hh[u], h);
        let states = self.states(l).at(0, d as u32 * h);
        let initial = Matrix::new(&w.initial, u as u32 * b * h, h);
        let product = |k, a: Matrix<'a>, b: Matrix<'a>, accumulate| Product {
            a_transposed: true,
            accumulate,
            ..Product::new((gh, h, k), a, b, dw_hh)
        };
        if p.batch_sizes.iter().all(|&n| n as u32 == b) {
            // forward: rows from b on continue rows from 0; reverse: the other way round
            let later = tokens - b;
            let (continuing, previous, starting) = if d == 0 { (b, 0, 0) } else { (0, b, later) };
            self.product(
                rec,
                product(later, dgh.at(continuing, 0), states.at(previous, 0), false),
            );
            if pass.initial {
                self.product(rec, product(b, dgh.at(starting, 0), initial, true));
            }
            return;
        }
        rec.dispatch_1d(
            &self.ctx.kernels.gather_previous,
            RowsParams {
                rows: tokens,
                cols: h,
                src_offset: states.offset,
                dst_offset: 0,
                src_stride: states.stride,
                dst_stride: h,
                index_offset: d as u32 * tokens,
                extra_offset: initial.offset,
            },
            &[
                &w.prev_index,
                states.buffer,
                &w.hprev,
                if pass.initial {
                    &w.initial
                } else {
                    &self.dummies[0]
                },
            ],
            (tokens * h) as usize,
        );
        self.product(
            rec,
            product(tokens, dgh, Matrix::new(&w.hprev, 0, h), false),
        );
    }

    /// `grads[out_offset + c] = Σ_r input[r, c]` (bias gradients), in two passes.
    fn record_column_sums<'a>(
        &'a self,
        rec: &mut Recorder<'a>,
        input: Matrix<'a>,
        rows: u32,
        cols: u32,
        out_offset: u32,
    ) {
        let k = &self.ctx.kernels;
        let chunks = rows.div_ceil(64).clamp(1, COLUMN_CHUNKS as u32);
        let chunk_rows = rows.div_ceil(chunks);
        let params = ReduceParams {
            len: rows,
            offset: input.offset,
            stride: input.stride,
            cols,
            out_offset,
            scale: 1.0,
            chunk_rows,
            ..Default::default()
        };
        rec.dispatch(
            &k.column_partials,
            params,
            &[input.buffer, &self.column_scratch],
            [cols.div_ceil(64), chunks, 1],
        );
        rec.dispatch_1d(
            &k.column_finish,
            ReduceParams {
                chunk_rows: chunks,
                ..params
            },
            &[&self.column_scratch, &self.grads],
            cols as usize,
        );
    }

    // ---- reductions and the update ----

    /// `scalars[slot] = scale * Σ input[..len]`.
    fn record_sum<'a>(
        &'a self,
        rec: &mut Recorder<'a>,
        input: &'a wgpu::Buffer,
        len: usize,
        slot: u32,
        scale: f32,
    ) {
        let k = &self.ctx.kernels;
        let params = ReduceParams {
            out_offset: slot,
            scale,
            ..Default::default()
        };
        self.record_reduction(rec, [&k.partial_sums, &k.finish_sum], input, len, params);
    }

    /// A two-pass reduction of `input[..len]` into the scalars: `passes[0]` leaves one
    /// partial result per workgroup in `partials`, `passes[1]` (one workgroup) combines
    /// them as `params` says.
    fn record_reduction<'a>(
        &'a self,
        rec: &mut Recorder<'a>,
        passes: [&'a super::kernels::Kernel; 2],
        input: &'a wgpu::Buffer,
        len: usize,
        params: ReduceParams,
    ) {
        let groups = len.div_ceil(256).clamp(1, PARTIALS) as u32;
        let first = ReduceParams {
            len: len as u32,
            ..params
        };
        rec.dispatch(passes[0], first, &[input, &self.partials], [groups, 1, 1]);
        let second = ReduceParams {
            len: groups,
            ..params
        };
        rec.dispatch(
            passes[1],
            second,
            &[&self.partials, &self.scalars],
            [1, 1, 1],
        );
    }

    /// Records the update of the parameters from the gradient buffer: the gradients'
    /// norm (and whether all are finite), the clipping scale, and the optimizer's step,
    /// committed only if every new value is finite (see `shaders/optimizer.wgsl`).
    /// Returns the optimizer's step number this update is.
    fn record_update<'a>(&'a self, rec: &mut Recorder<'a>, optimizer: &'a Optimizer) -> u64 {
        let State::Gpu(state) = &optimizer.state else {
            unreachable!("ensure_optimizer set the state")
        };
        let k = &self.ctx.kernels;
        let n = self.layout.len;
        rec.phase(format_args!("gradient norm and update"));
        let norm = ReduceParams {
            out_offset: NORM,
            flag_offset: GRADS_FINITE,
            ..Default::default()
        };
        let passes = [&k.partial_norms, &k.finish_norm];
        self.record_reduction(rec, passes, &self.grads, n, norm);
        let step = optimizer.steps + 1;
        let mut params = OptimParams {
            len: n as u32,
            has_clip: optimizer.clip().is_some() as u32,
            max_norm: optimizer.clip().unwrap_or(0.0),
            ..Default::default()
        };
        let (check, kernel) = match optimizer.kind() {
            OptimizerKind::Sgd { lr } => {
                params.lr = lr;
                (&k.check_sgd, &k.sgd)
            }
            OptimizerKind::Momentum { lr, momentum } => {
                params.lr = lr;
                params.momentum = momentum;
                (&k.check_momentum, &k.momentum)
            }
            OptimizerKind::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                params.decay = 1.0 - lr * weight_decay;
                let c = AdamCoefficients::new(lr, beta1, beta2, step);
                params.lr = lr;
                params.momentum = beta1;
                params.beta2 = beta2;
                params.eps = eps;
                params.step_size = c.step_size;
                params.bias_correction2_sqrt = c.bias_correction2_sqrt;
                (&k.check_adam, &k.adam)
            }
        };
        // the moments' groups are cached with the model's: the optimizer evicts them when
        // it drops its buffers
        state.bind_through(&self.cache);
        let m = state.m.as_ref().unwrap_or(&self.dummies[0]);
        let v = state.v.as_ref().unwrap_or(&self.dummies[1]);
        let buffers = [&self.scalars, &self.grads, &self.params, m, v];
        // prepare, check every new value, then commit only if all were finite: a refused
        // step writes nothing
        rec.dispatch(&k.prepare_update, params, &buffers, [1, 1, 1]);
        rec.dispatch_1d(check, params, &buffers, n);
        rec.dispatch_1d(kernel, params, &buffers, n);
        step
    }

    /// The outcome of a recorded update from the scalars read back: an error if the loss
    /// or gradients were not finite or the update would have overflowed (nothing was
    /// written then), else the optimizer counts the step.
    fn finish_update(
        scalars: &[f32],
        loss: f32,
        optimizer: &mut Optimizer,
        step: u64,
    ) -> Result<()> {
        let (grads_finite, ok) = (scalars[GRADS_FINITE as usize] != 0.0, scalars[3]);
        check_finite_step(loss, grads_finite)?;
        debug_assert_eq!(ok, 1.0);
        let (params_overflow, moments_overflow) = (scalars[4] != 0.0, scalars[5] != 0.0);
        if params_overflow || moments_overflow {
            return Err(update_overflow(params_overflow, moments_overflow));
        }
        optimizer.steps = step;
        Ok(())
    }

    // ---- final states ----

    /// Records the gather of each sequence's final state in every layer and direction
    /// into `finals`: `h` `[layers·D, batch, H]`, then (LSTM) `c`.
    fn record_final_states<'a>(&'a self, rec: &mut Recorder<'a>, p: &Packing) {
        let w = self.work();
        let (h, dirs, b) = (self.hidden(), self.dirs(), p.batch() as u32);
        let units = self.config.num_units() as u32;
        rec.phase(format_args!("final states"));
        for l in 0..self.config.num_layers {
            for d in 0..dirs {
                let u = l as u32 * dirs + d;
                let mut sources = vec![(&w.hs[l], d * h, 0)];
                if self.config.cell.has_c() {
                    let c = p.tokens() as u32 * dirs * self.gate_width() + d * h;
                    sources.push((&w.saved[l], c, units * b * h));
                }
                for (src, src_offset, block) in sources {
                    rec.dispatch_1d(
                        &self.ctx.kernels.gather_rows,
                        RowsParams {
                            rows: b,
                            cols: h,
                            src_offset,
                            dst_offset: block + u * b * h,
                            src_stride: dirs * h,
                            dst_stride: h,
                            index_offset: d * b,
                            extra_offset: 0,
                        },
                        &[&w.last_index, src, &w.finals],
                        (b * h) as usize,
                    );
                }
            }
        }
    }

    /// How many floats of `finals` to read back: `h`, and `c` for the LSTM.
    fn finals_len(&self, p: &Packing) -> usize {
        let n = self.config.num_units() * p.batch() * self.config.hidden_size;
        n * (1 + self.config.cell.has_c() as usize)
    }

    /// `finals` as read back (packed order) to `[layers·D, batch, H]` in the batch's order.
    fn unpack_final_states(&self, p: &Packing, data: &[f32]) -> RnnState {
        let (units, h, b) = (self.config.num_units(), self.config.hidden_size, p.batch());
        let block = |at: usize| {
            let mut out = Array3::zeros((units, b, h));
            for u in 0..units {
                let start = at + u * b * h;
                let rows = ArrayView2::from_shape((b, h), &data[start..start + b * h])
                    .expect("sized by the model");
                out.index_axis_mut(Axis(0), u)
                    .assign(&p.unpack_sequences(rows));
            }
            out
        };
        RnnState {
            h: block(0),
            c: self.config.cell.has_c().then(|| block(units * b * h)),
        }
    }

    /// Uploads what a pass over `batch` needs (see [`BatchBuffers::upload`]): the batch
    /// itself only if the work buffers do not hold it already, laid out for `initial`.
    fn upload(
        &mut self,
        batch: &SequenceBatch,
        initial: Option<&RnnState>,
        dropout: Option<Dropout<'_>>,
    ) {
        let key = (batch.id(), initial.is_some());
        let held = self.batch_held == Some(key);
        self.work()
            .upload(&self.ctx, &self.config, batch, held, initial, dropout);
        self.batch_held = Some(key);
    }

    fn submit(&self, rec: Recorder<'_>) -> Result<()> {
        rec.submit(&mut recorder::lock(&self.cache))?;
        Ok(())
    }

    // ---- the operations ----

    pub fn forward(
        &mut self,
        _config: &RnnConfig,
        batch: &SequenceBatch,
        initial: Option<&RnnState>,
    ) -> Result<Forward> {
        let p = batch.packing();
        self.encoded = None;
        self.ensure_work(batch)?;
        self.upload(batch, initial, None);
        let pass = Pass {
            initial: initial.is_some(),
            ..Default::default()
        };
        let mut rec = Recorder::new(&self.ctx);
        self.record_layers(&mut rec, batch, pass);
        self.record_head(&mut rec, batch, pass);
        self.record_final_states(&mut rec, p);
        self.submit(rec)?;
        let w = self.work();
        let rows = if self.config.head == Head::PerStep {
            p.tokens()
        } else {
            p.batch()
        };
        let o = self.config.output_size;
        let data = read_back(
            &self.ctx,
            &[
                (&w.out, 0, rows * o),
                (&w.finals, 0, self.finals_len(p)),
                (&self.scalars, 0, 1),
            ],
        )?;
        let out = ArrayView2::from_shape((rows, o), &data[0]).expect("sized above");
        let outputs = match self.config.head {
            Head::PerStep | Head::None => p.unpack_steps(out),
            Head::LastStep => p.unpack_sequences(out).insert_axis(Axis(1)),
        };
        let finals = self.unpack_final_states(p, &data[1]);
        let loss = if batch.targets().is_some() {
            data[2][0]
        } else {
            f32::NAN
        };
        Ok(Forward {
            outputs,
            final_hidden: finals.h,
            final_cell: finals.c,
            loss,
        })
    }

    /// The loss of `batch` and every parameter's gradient, with the masks of `dropout`
    /// between layers (a training pass) or none; with `want_final`, also each sequence's
    /// final state.
    pub fn loss_and_gradients(
        &mut self,
        _config: &RnnConfig,
        batch: &SequenceBatch,
        initial: Option<&RnnState>,
        dropout: Option<Dropout<'_>>,
        want_final: bool,
    ) -> Result<(f32, RnnParams, Option<RnnState>)> {
        let p = batch.packing();
        self.encoded = None;
        self.grads_held = None;
        self.ensure_work(batch)?;
        self.upload(batch, initial, dropout);
        let pass = Pass::new(&self.config, initial.is_some(), dropout);
        let mut rec = Recorder::new(&self.ctx);
        self.record_layers(&mut rec, batch, pass);
        self.record_head(&mut rec, batch, pass);
        if want_final {
            self.record_final_states(&mut rec, p);
        }
        self.record_head_backward(&mut rec, p, pass);
        self.record_layers_backward(&mut rec, batch, pass);
        self.submit(rec)?;
        let finals = if want_final { self.finals_len(p) } else { 0 };
        let data = read_back(
            &self.ctx,
            &[
                (&self.scalars, 0, 1),
                (&self.grads, 0, self.layout.len),
                (&self.work().finals, 0, finals),
            ],
        )?;
        let mut grads = RnnParams::zeros(&self.config);
        grads.assign_flat(&data[1])?;
        let last = want_final.then(|| self.unpack_final_states(p, &data[2]));
        Ok((data[0][0], grads, last))
    }

    /// One training step in one submission; with `want_final`, also each sequence's
    /// final state (from the parameters before the update).
    pub fn train_step(
        &mut self,
        _config: &RnnConfig,
        batch: &SequenceBatch,
        initial: Option<&RnnState>,
        dropout: Option<Dropout<'_>>,
        optimizer: &mut Optimizer,
        want_final: bool,
    ) -> Result<(f32, Option<RnnState>)> {
        let start = std::time::Instant::now();
        self.encoded = None;
        self.grads_held = None;
        self.ensure_work(batch)?;
        let replaced = self.ensure_optimizer(optimizer)?;
        let result = self.run_train_step(batch, initial, dropout, optimizer, want_final, start);
        if result.is_err() {
            // a refused step leaves the optimizer as it was: fresh, or with its state on
            // the CPU, and not counted
            if let Some(previous) = replaced {
                optimizer.state = previous;
            }
        }
        result
    }

    /// [`GpuRnn::train_step`] once the optimizer's state is on this device.
    fn run_train_step(
        &mut self,
        batch: &SequenceBatch,
        initial: Option<&RnnState>,
        dropout: Option<Dropout<'_>>,
        optimizer: &mut Optimizer,
        want_final: bool,
        start: std::time::Instant,
    ) -> Result<(f32, Option<RnnState>)> {
        let p = batch.packing();
        self.upload(batch, initial, dropout);
        let pass = Pass::new(&self.config, initial.is_some(), dropout);
        let mut rec = Recorder::new(&self.ctx);
        self.record_layers(&mut rec, batch, pass);
        self.record_head(&mut rec, batch, pass);
        if want_final {
            self.record_final_states(&mut rec, p);
        }
        // with a dispatch per step, recording the backward pass takes the host about as
        // long as the GPU takes for the forward pass: submit the forward pass first so
        // that the two overlap (a second submission costs tens of µs, so not for the
        // few dispatches of the persistent loops)
        if rec.dispatches() >= SPLIT_SUBMISSION_DISPATCHES {
            rec.submit_so_far(&mut recorder::lock(&self.cache))?;
        }
        self.record_head_backward(&mut rec, p, pass);
        self.record_layers_backward(&mut rec, batch, pass);
        let step = self.record_update(&mut rec, optimizer);
        let dispatches = rec.dispatches();
        self.submit(rec)?;
        self.last_host = start.elapsed();
        self.last_dispatches = dispatches;
        let w = self.work();
        let finals = if want_final { self.finals_len(p) } else { 0 };
        let data = read_back(
            &self.ctx,
            &[(&self.scalars, 0, SCALARS), (&w.finals, 0, finals)],
        )?;
        let loss = data[0][0];
        Self::finish_update(&data[0], loss, optimizer, step)?;
        Ok((
            loss,
            want_final.then(|| self.unpack_final_states(p, &data[1])),
        ))
    }

    /// Gives the optimizer its moment buffers on this device: zeros for a fresh one,
    /// uploaded for one whose state is on the CPU (imported, or from a CPU model of the
    /// same size); refuses state that belongs to another model or device. Returns the
    /// state it replaced (`None` when the buffers were already there).
    fn ensure_optimizer(&self, optimizer: &mut Optimizer) -> Result<Option<State>> {
        let n = self.layout.len;
        let (needs_m, needs_v) = optimizer.kind().moments();
        let start = match &optimizer.state {
            State::Gpu(s) if s.len == n && Arc::ptr_eq(&s.ctx, &self.ctx) => return Ok(None),
            State::Gpu(s) => {
                return Err(Error::OptimizerMismatch(format!(
                    "state is for {} parameters on {}, this model has {n} on {}",
                    s.len,
                    if Arc::ptr_eq(&s.ctx, &self.ctx) {
                        "this device"
                    } else {
                        "another device"
                    },
                    self.ctx.describe()
                )))
            }
            State::Cpu(c) => {
                c.check(n, needs_m, needs_v)?;
                Some(c)
            }
            State::Fresh => None,
        };
        let buffer = |label, data: Option<&Vec<f32>>| {
            let b = storage(&self.ctx, label, n);
            let zeros;
            let data = match data {
                Some(d) => d,
                None => {
                    zeros = vec![0f32; n];
                    &zeros
                }
            };
            self.ctx.write(&b, bytemuck::cast_slice(data));
            b
        };
        if needs_m || needs_v {
            self.ctx.note_upload();
        }
        let buffers = OptimizerBuffers::new(
            needs_m.then(|| buffer("optimizer m", start.map(|c| &c.m))),
            needs_v.then(|| buffer("optimizer v", start.map(|c| &c.v))),
            n,
            self.ctx.clone(),
        );
        Ok(Some(std::mem::replace(
            &mut optimizer.state,
            State::Gpu(buffers),
        )))
    }

    /// The top layer's states and the final states (the encoder's forward pass), with
    /// the dropout masks of `dropout` between layers. The states stay on the device too.
    pub fn encode(
        &mut self,
        _config: &RnnConfig,
        batch: &SequenceBatch,
        dropout: Option<Dropout<'_>>,
    ) -> Result<Encoded> {
        let p = batch.packing();
        self.encoded = None;
        self.ensure_work(batch)?;
        self.upload(batch, None, dropout);
        let pass = Pass::new(&self.config, false, dropout);
        let mut rec = Recorder::new(&self.ctx);
        self.record_layers(&mut rec, batch, pass);
        self.record_final_states(&mut rec, p);
        self.submit(rec)?;
        let width = self.config.state_width();
        let top = &self.work().hs[self.config.num_layers - 1];
        let data = read_back(
            &self.ctx,
            &[
                (top, 0, p.tokens() * width),
                (&self.work().finals, 0, self.finals_len(p)),
            ],
        )?;
        let states = ArrayView2::from_shape((p.tokens(), width), &data[0]).expect("sized above");
        let finals = self.unpack_final_states(p, &data[1]);
        self.encoded = Self::encoded_key(batch, dropout);
        Ok(Encoded {
            states: p.unpack_steps(states),
            final_hidden: finals.h,
            final_cell: finals.c,
        })
    }

    /// The key of an encoder's forward pass over `batch` with `dropout` (see
    /// [`GpuRnn::encoded`]); `None` for a chunk of a split batch, whose dropout masks are
    /// drawn at its rows in the whole batch.
    fn encoded_key(
        batch: &SequenceBatch,
        dropout: Option<Dropout<'_>>,
    ) -> Option<(u64, Option<u64>)> {
        match dropout {
            Some(Dropout { rows: Some(_), .. }) => None,
            _ => Some((batch.id(), dropout.map(|d| d.key))),
        }
    }

    /// The encoder's backward pass: back-propagation from `grad_states` (`[batch,
    /// max_len, D·H]`, values past each length ignored) through the layers' forward pass
    /// with the masks of `dropout`. With `reuse`, when the work buffers still hold that
    /// forward pass (the last [`GpuRnn::encode`] was of this batch, with these masks, and
    /// nothing has written over it since; the caller vouches that the parameters are
    /// those it ran with), only `grad_states` is uploaded and only the backward pass runs;
    /// otherwise the batch is uploaded and the layers run forward again first. Returns
    /// every parameter's gradient (the readout's zero) and, for dense batches, each
    /// sequence's input gradient. The forward pass stays in the work buffers.
    pub fn backward(
        &mut self,
        _config: &RnnConfig,
        batch: &SequenceBatch,
        grad_states: &Array3<f32>,
        dropout: Option<Dropout<'_>>,
        reuse: bool,
    ) -> Result<Gradients> {
        let p = batch.packing();
        let dense = batch.token_ids().is_none();
        // the gradient buffer is written below: unknown until read back
        self.grads_held = None;
        self.ensure_work(batch)?;
        if dense {
            let work = self.work.as_mut().expect("ensure_work ran");
            work.ensure_input_grads(&self.ctx, &self.config)?;
        }
        let key = Self::encoded_key(batch, dropout);
        let resident = reuse && key.is_some() && self.encoded == key;
        // from here until the read-back the forward pass in the buffers is either this
        // batch's or being made
        self.encoded = None;
        if !resident {
            self.upload(batch, None, dropout);
        }
        let width = self.config.state_width();
        let mut packed: Vec<f32> = Vec::with_capacity(p.tokens() * width);
        for (t, &n) in p.batch_sizes.iter().enumerate() {
            for &i in &p.order[..n] {
                packed.extend(grad_states.index_axis(Axis(0), i).row(t).iter());
            }
        }
        self.ctx.note_upload();
        self.ctx
            .write(&self.work().g, bytemuck::cast_slice(&packed));
        let pass = Pass {
            input_grads: dense,
            ..Pass::new(&self.config, false, dropout)
        };
        let mut rec = Recorder::new(&self.ctx);
        // the readout's gradients are zero: the loss is the caller's
        rec.clear(&self.grads);
        if !resident {
            self.record_layers(&mut rec, batch, pass);
        }
        let inputs = self.record_layers_backward(&mut rec, batch, pass);
        self.submit(rec)?;
        let input_size = self.config.input_size;
        let input_floats = if dense { p.tokens() * input_size } else { 0 };
        let mut data = read_back(
            &self.ctx,
            &[(&self.grads, 0, self.layout.len), (inputs, 0, input_floats)],
        )?;
        let mut params = RnnParams::zeros(&self.config);
        params.assign_flat(&data[0])?;
        self.grads_held = Some(std::mem::take(&mut data[0]));
        self.encoded = key;
        let inputs = if dense {
            let rows =
                ArrayView2::from_shape((p.tokens(), input_size), &data[1]).expect("sized above");
            let padded = p.unpack_steps(rows);
            batch
                .lengths()
                .iter()
                .enumerate()
                .map(|(i, &len)| padded.slice(ndarray::s![i, ..len, ..]).to_owned())
                .collect::<Vec<Array2<f32>>>()
        } else {
            Vec::new()
        };
        Ok(Gradients { params, inputs })
    }

    /// Applies `grads` with the optimizer exactly as a training step applies its own:
    /// in the gradient buffer, then the same clipping, update and refusal of non-finite
    /// steps. Gradients bitwise equal to what the buffer holds already (those the last
    /// [`GpuRnn::backward`] read back, or the last ones applied) are not uploaded again.
    pub fn apply_gradients(&mut self, grads: &RnnParams, optimizer: &mut Optimizer) -> Result<()> {
        let replaced = self.ensure_optimizer(optimizer)?;
        // the parameters change: no forward pass in the work buffers is theirs
        self.encoded = None;
        if !self
            .grads_held
            .as_ref()
            .is_some_and(|held| same_bits(held, grads))
        {
            let flat = grads.to_flat();
            self.ctx.note_upload();
            self.ctx.write(&self.grads, bytemuck::cast_slice(&flat));
            self.grads_held = Some(flat);
        }
        let result = (|| {
            let mut rec = Recorder::new(&self.ctx);
            // no loss goes with these gradients: the loss slot holds the last pass's, which
            // must not refuse this update (a zero does not), and the rest is set anew
            rec.clear(&self.scalars);
            let step = self.record_update(&mut rec, optimizer);
            self.submit(rec)?;
            let data = read_back(&self.ctx, &[(&self.scalars, 0, SCALARS)])?;
            Self::finish_update(&data[0], 0.0, optimizer, step)
        })();
        if result.is_err() {
            if let Some(previous) = replaced {
                optimizer.state = previous;
            }
        }
        result
    }

    /// What went to and from this model's device so far.
    pub fn transfers(&self) -> super::Transfers {
        self.ctx.transfers()
    }

    pub fn params(&self, config: &RnnConfig) -> Result<RnnParams> {
        let data = read_back(&self.ctx, &[(&self.params, 0, self.layout.len)])?;
        let mut params = RnnParams::zeros(config);
        params.assign_flat(&data[0])?;
        Ok(params)
    }
}

/// Whether `params`, as one flat vector, is `flat` bit for bit (NaN payloads and signed
/// zeros included), compared tensor by tensor without flattening.
fn same_bits(flat: &[f32], params: &RnnParams) -> bool {
    let mut at = 0;
    for (_, t) in params.tensors() {
        let Some(held) = flat.get(at..at + t.len()) else {
            return false;
        };
        if bytemuck::cast_slice::<f32, u32>(held) != bytemuck::cast_slice::<f32, u32>(t) {
            return false;
        }
        at += t.len();
    }
    at == flat.len()
}
