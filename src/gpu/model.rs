//! `GpuRnn`: the model's parameters and work buffers on one device, and the recording of
//! forward passes and training steps.

use super::gemm;
use super::kernels::{
    self, EmbedParams, LossParams, MatmulParams, OptimParams, ReduceParams, RowsParams, StepParams,
};
use super::recorder::{read_back, BindGroupCache, Recorder};
use super::{GpuContext, OptimizerBuffers, TimeLoop, PERSISTENT_MAX_HIDDEN};
use crate::batch::{Packing, SequenceBatch, Targets};
use crate::cpu::RnnState;
use crate::model::{RnnConfig, RnnParams};
use crate::optim::{update_overflow, AdamCoefficients, Optimizer, OptimizerKind, State};
use crate::rnn::{check_finite_step, Forward};
use crate::{Cell, Error, Head, Result};
use ndarray::{Array3, ArrayView2, Axis};
use std::sync::Arc;

/// Element offsets of every tensor in the flat parameter (and gradient) buffer, in the
/// order of [`RnnParams::tensors`].
#[derive(Clone, Debug)]
struct ParamLayout {
    w_ih: Vec<u32>,
    w_hh: Vec<u32>,
    b_ih: Vec<u32>,
    b_hh: Vec<u32>,
    w_out: u32,
    b_out: u32,
    len: usize,
}

impl ParamLayout {
    fn new(config: &RnnConfig) -> Self {
        let h = config.hidden_size;
        let mut at = 0usize;
        let mut take = |n: usize| {
            let o = at as u32;
            at += n;
            o
        };
        let g = config.gate_width();
        let (mut w_ih, mut w_hh, mut b_ih, mut b_hh) = (vec![], vec![], vec![], vec![]);
        for u in 0..config.num_units() {
            w_ih.push(take(
                g * config.layer_input_size(u / config.num_directions()),
            ));
            w_hh.push(take(g * h));
            b_ih.push(take(g));
            b_hh.push(take(g));
        }
        let w_out = take(config.output_size * config.state_width());
        let b_out = take(config.output_size);
        ParamLayout {
            w_ih,
            w_hh,
            b_ih,
            b_hh,
            w_out,
            b_out,
            len: at,
        }
    }
}

/// Work buffers sized for batches up to a capacity.
struct BatchBuffers {
    tokens: usize,
    batch: usize,
    /// Rows of dense inputs `x` holds (0 while only token batches have been seen).
    x_tokens: usize,
    x: wgpu::Buffer,
    hs: Vec<wgpu::Buffer>,
    g: wgpu::Buffer,
    g_below: wgpu::Buffer,
    hprev: wgpu::Buffer,
    last: wgpu::Buffer,
    out: wgpu::Buffer,
    d_out: wgpu::Buffer,
    row_loss: wgpu::Buffer,
    classes: wgpu::Buffer,
    values: wgpu::Buffer,
    last_index: wgpu::Buffer,
    /// Step offsets, then sequence lengths in packed order (persistent time loop).
    packing: wgpu::Buffer,
    /// Initial states in packed order, `[num_layers, batch, hidden]`.
    initial: wgpu::Buffer,
    /// Token batches: packed ids, per-token row ranges, rows sorted by token.
    token_data: wgpu::Buffer,
    prev_index: wgpu::Buffer,
    final_h: wgpu::Buffer,
    /// Partial products of matrix products split along K, and its size in floats.
    split_scratch: (wgpu::Buffer, usize),
}

pub(crate) struct GpuRnn {
    ctx: Arc<GpuContext>,
    layout: ParamLayout,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    /// `[loss, sum of squared gradients, clip scale, step ok]`
    scalars: wgpu::Buffer,
    partials: wgpu::Buffer,
    /// Per-chunk column sums, `[COLUMN_CHUNKS, max(hidden, output)]`.
    column_scratch: wgpu::Buffer,
    /// Every layer's W_hh transposed, `[num_layers, hidden, hidden]`: the persistent
    /// forward kernel's reads along it are contiguous across threads.
    w_hh_t: wgpu::Buffer,
    dummies: [wgpu::Buffer; 3],
    work: Option<BatchBuffers>,
    cache: std::sync::Mutex<BindGroupCache>,
    /// Host time spent recording, encoding and submitting the last step, and the
    /// number of dispatches it recorded.
    pub last_host: std::time::Duration,
    pub last_dispatches: usize,
    pub time_loop: TimeLoop,
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

/// Inputs of at least this many bytes are packed on several threads: `large`'s 32 MB
/// took one thread of an H200 machine 5–6 ms, a third of the whole training step.
const PARALLEL_PACK_BYTES: usize = 4 << 20;
const MAX_PACK_THREADS: usize = 8;

/// Writes the batch's dense input rows into `out` in packed order (time-major, sequences
/// by length), splitting large batches by steps over several threads.
fn pack_inputs(batch: &SequenceBatch, out: wgpu::WriteOnly<'_, [u8]>) {
    let p = batch.packing();
    let row_bytes = batch.input_size() * 4;
    let threads = if out.len() >= PARALLEL_PACK_BYTES {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_PACK_THREADS)
    } else {
        1
    };
    if threads <= 1 {
        pack_steps(batch, 0..p.batch_sizes.len(), row_bytes, out);
        return;
    }
    // contiguous runs of steps with about the same number of rows each
    let (rows, steps) = (p.tokens(), p.batch_sizes.len());
    let first_row = |t: usize| p.offsets.get(t).copied().unwrap_or(rows);
    let mut rest = out;
    let mut first = 0;
    std::thread::scope(|scope| {
        for k in 1..=threads {
            let mut end = first;
            while end < steps && (k == threads || first_row(end) < rows * k / threads) {
                end += 1;
            }
            let bytes = (first_row(end) - first_row(first)) * row_bytes;
            let (piece, tail) = rest.split_at(bytes);
            rest = tail;
            let (range, piece) = (first..end, Piece(piece));
            scope.spawn(move || pack_steps(batch, range, row_bytes, piece.into_inner()));
            first = end;
        }
    });
}

/// A piece of the mapped upload memory, handed to one packing thread.
struct Piece<'a>(wgpu::WriteOnly<'a, [u8]>);

// SAFETY: a `WriteOnly<[u8]>` is a unique borrow of mapped memory disjoint from every
// other piece, like `&mut [u8]`, which is `Send`; wgpu implements `Send` for
// `WriteOnly<T>` only where `T` is sized, which leaves slices out.
unsafe impl Send for Piece<'_> {}

impl<'a> Piece<'a> {
    /// The view (a method, so that a closure moves the whole `Piece` to its thread).
    fn into_inner(self) -> wgpu::WriteOnly<'a, [u8]> {
        self.0
    }
}

/// Writes the input rows of `steps` (in packed order) into `out`, which holds exactly them.
fn pack_steps(
    batch: &SequenceBatch,
    steps: std::ops::Range<usize>,
    row_bytes: usize,
    mut out: wgpu::WriteOnly<'_, [u8]>,
) {
    let p = batch.packing();
    let mut at = 0;
    let mut gathered = Vec::new();
    for t in steps {
        for &i in &p.order[..p.batch_sizes[t]] {
            let row = batch.inputs()[i].row(t);
            let floats = match row.as_slice() {
                Some(s) => s,
                None => {
                    gathered.clear();
                    gathered.extend(row.iter());
                    &gathered[..]
                }
            };
            out.slice(at..at + row_bytes)
                .copy_from_slice(bytemuck::cast_slice(floats));
            at += row_bytes;
        }
    }
}

fn storage(ctx: &GpuContext, label: &str, floats: usize) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: (floats.max(1) * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

/// A storage buffer of `floats` floats, refused if a kernel could not bind it.
pub(crate) fn storage_checked(
    ctx: &GpuContext,
    label: &str,
    floats: usize,
) -> Result<wgpu::Buffer> {
    check_fits(ctx, label, floats)?;
    Ok(storage(ctx, label, floats))
}

fn check_fits(ctx: &GpuContext, what: &str, floats: usize) -> Result<()> {
    let bytes = floats as u64 * 4;
    let limit = ctx.max_storage_binding();
    if bytes > limit || floats > u32::MAX as usize {
        return Err(Error::ExceedsDeviceLimit {
            what: what.to_string(),
            needed: bytes,
            limit,
            hint: "use a smaller batch or shorter sequences",
        });
    }
    Ok(())
}

impl GpuRnn {
    pub fn new(ctx: Arc<GpuContext>, config: &RnnConfig, params: &RnnParams) -> Result<Self> {
        let elman = matches!(config.cell, Cell::Tanh | Cell::Relu);
        if !elman || config.bidirectional || config.dropout > 0.0 || config.head == Head::None {
            return Err(Error::Unsupported(format!(
                "the GPU path does not run this configuration yet ({} cell{}{}{}): use Device::cpu()",
                config.cell,
                if config.bidirectional { ", bidirectional" } else { "" },
                if config.dropout > 0.0 { ", dropout" } else { "" },
                if config.head == Head::None { ", no readout" } else { "" },
            )));
        }
        let layout = ParamLayout::new(config);
        check_fits(&ctx, "the parameter buffer", layout.len)?;
        let buf = storage(&ctx, "params", layout.len);
        ctx.queue
            .write_buffer(&buf, 0, bytemuck::cast_slice(&params.to_flat()));
        let grads = storage(&ctx, "grads", layout.len);
        let scalars = storage(&ctx, "scalars", SCALARS);
        // (scale, sum of squares) pairs for the norm
        let partials = storage(&ctx, "partials", 2 * PARTIALS);
        let column_scratch = storage(
            &ctx,
            "column sums",
            COLUMN_CHUNKS * config.hidden_size.max(config.output_size),
        );
        let persistent_fits = config.hidden_size <= PERSISTENT_MAX_HIDDEN;
        let w_hh_t = storage(
            &ctx,
            "W_hh transposed",
            persistent_fits as usize * config.num_layers * config.hidden_size.pow(2),
        );
        let dummies = [
            storage(&ctx, "dummy0", 4),
            storage(&ctx, "dummy1", 4),
            storage(&ctx, "dummy2", 4),
        ];
        Ok(GpuRnn {
            ctx,
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
        })
    }

    /// Makes sure the work buffers fit `batch`, reallocating (to the new size) when not.
    fn ensure_work(&mut self, config: &RnnConfig, sequences: &SequenceBatch) -> Result<()> {
        let p = sequences.packing();
        let (tokens, batch) = (p.tokens(), p.batch());
        // token batches look their inputs up in W_ih and need no dense input buffer
        let dense = sequences.token_ids().is_none();
        if let Some(w) = &self.work {
            if w.tokens >= tokens && w.batch >= batch && (!dense || w.x_tokens >= tokens) {
                return Ok(());
            }
        }
        let (tokens, batch, x_tokens) = match &self.work {
            Some(w) => (
                w.tokens.max(tokens),
                w.batch.max(batch),
                w.x_tokens.max(dense as usize * tokens),
            ),
            None => (tokens, batch, dense as usize * tokens),
        };
        let (i, h, o, l) = (
            config.input_size,
            config.hidden_size,
            config.output_size,
            config.num_layers,
        );
        let rows = if config.head == Head::PerStep {
            tokens
        } else {
            batch
        };
        for (what, n) in [
            ("the packed inputs (tokens x input_size)", x_tokens * i),
            ("one layer's states (tokens x hidden_size)", tokens * h),
            ("the outputs (rows x output_size)", rows * o),
            ("the final states", l * batch * h),
        ] {
            check_fits(&self.ctx, what, n)?;
        }
        let max_groups = self.ctx.limits.max_compute_workgroups_per_dimension as u64;
        let needed_groups = (tokens.max(rows) as u64).div_ceil(64);
        if needed_groups > max_groups {
            return Err(Error::ExceedsDeviceLimit {
                what: "workgroups per dimension of the batch-wide matrix products".into(),
                needed: needed_groups,
                limit: max_groups,
                hint: "use a smaller batch or shorter sequences",
            });
        }
        // every product a step records, for the scratch its K splits need (a split that
        // does not fit runs unsplit)
        let (t32, b32, r32) = (tokens as u32, batch as u32, rows as u32);
        let (h32, o32) = (h as u32, o as u32);
        let mut shapes = vec![
            (r32, o32, h32),
            (o32, h32, r32),
            (t32.max(b32), h32, o32),
            (h32, h32, t32 - b32.min(t32)),
            (h32, h32, b32),
            (t32, h32, h32),
            (b32, h32, h32),
        ];
        for layer in 0..l {
            let in_size = config.layer_input_size(layer) as u32;
            shapes.extend([(t32, h32, in_size), (h32, in_size, t32)]);
        }
        let scratch_floats =
            gemm::scratch_for(&shapes).min((self.ctx.max_storage_binding() / 4) as usize);
        let ctx = &self.ctx;
        self.cache.get_mut().expect("bind group cache").clear();
        self.work = Some(BatchBuffers {
            tokens,
            batch,
            x_tokens,
            x: storage(ctx, "x", x_tokens * i),
            hs: (0..l).map(|_| storage(ctx, "hs", tokens * h)).collect(),
            g: storage(ctx, "g", tokens * h),
            g_below: storage(ctx, "g_below", tokens * h),
            hprev: storage(ctx, "hprev", tokens * h),
            last: storage(ctx, "last", batch * h),
            out: storage(ctx, "out", rows * o),
            d_out: storage(ctx, "d_out", rows * o),
            row_loss: storage(ctx, "row_loss", rows),
            classes: storage(ctx, "classes", rows),
            values: storage(ctx, "values", rows * o),
            last_index: storage(ctx, "last_index", batch),
            packing: storage(ctx, "packing", tokens + 1 + batch),
            initial: storage(ctx, "initial", l * batch * h),
            token_data: storage(ctx, "token data", 2 * tokens + i + 1),
            prev_index: storage(ctx, "prev_index", tokens),
            final_h: storage(ctx, "final_h", l * batch * h),
            split_scratch: (
                storage(ctx, "split scratch", scratch_floats),
                scratch_floats,
            ),
        });
        Ok(())
    }

    /// Uploads the batch: packed inputs, packed targets and the row indices.
    fn upload(&self, config: &RnnConfig, batch: &SequenceBatch, initial: Option<&RnnState>) {
        let w = self.work.as_ref().expect("ensure_work ran");
        let p = batch.packing();
        let q = &self.ctx.queue;
        if let Some(ids) = batch.packed_token_ids() {
            // ids, then for each token the range of its rows in the rows sorted by token
            let vocab = config.input_size;
            let mut counts = vec![0u32; vocab + 1];
            for &id in &ids {
                counts[id as usize + 1] += 1;
            }
            for v in 0..vocab {
                counts[v + 1] += counts[v];
            }
            let mut order: Vec<u32> = (0..ids.len() as u32).collect();
            order.sort_by_key(|&r| ids[r as usize]);
            let data: Vec<u32> = ids.iter().chain(&counts).chain(&order).copied().collect();
            q.write_buffer(&w.token_data, 0, bytemuck::cast_slice(&data));
        } else {
            // packed straight into the upload's staging memory: inputs are the largest
            // transfer of a step, and one host copy of them is all it takes
            let bytes = (p.tokens() * config.input_size * 4) as u64;
            if let Some(mut view) =
                wgpu::BufferSize::new(bytes).and_then(|b| q.write_buffer_with(&w.x, 0, b))
            {
                pack_inputs(batch, view.slice(..));
            }
        }
        if let Some(state) = initial {
            let mut packed: Vec<f32> = Vec::with_capacity(state.h.len());
            for layer in state.h.outer_iter() {
                for &i in &p.order {
                    packed.extend(layer.row(i).iter());
                }
            }
            q.write_buffer(&w.initial, 0, bytemuck::cast_slice(&packed));
        }
        let per_step = config.head == Head::PerStep;
        match batch.targets() {
            None => {}
            Some(Targets::Classes(c)) => {
                let mut packed = Vec::new();
                crate::cpu::pack_classes(c, p, per_step, &mut packed);
                q.write_buffer(&w.classes, 0, bytemuck::cast_slice(&packed));
            }
            Some(Targets::Values(v)) => {
                let mut packed = ndarray::Array2::<f32>::zeros((0, 0));
                crate::cpu::pack_values(v, p, per_step, &mut packed);
                q.write_buffer(
                    &w.values,
                    0,
                    bytemuck::cast_slice(packed.as_slice().expect("fresh array")),
                );
            }
        }
        let to_u32 = |v: Vec<usize>| v.into_iter().map(|r| r as u32).collect::<Vec<u32>>();
        q.write_buffer(
            &w.last_index,
            0,
            bytemuck::cast_slice(&to_u32(p.last_rows())),
        );
        let packing = to_u32(p.offsets.iter().chain(&p.sorted_lengths).copied().collect());
        q.write_buffer(&w.packing, 0, bytemuck::cast_slice(&packing));
        let prev = to_u32(p.previous_rows());
        if !prev.is_empty() {
            q.write_buffer(&w.prev_index, 0, bytemuck::cast_slice(&prev));
        }
    }

    /// Records a matrix product (`buffers`: A, B, bias, C) under the tiling its shape
    /// chooses, splitting K into the work scratch where that pays.
    fn product<'a>(
        &'a self,
        rec: &mut Recorder<'a>,
        params: MatmulParams,
        buffers: [&'a wgpu::Buffer; 4],
    ) {
        let w = self.work.as_ref().expect("ensure_work ran");
        let (scratch, floats) = &w.split_scratch;
        gemm::record_product(rec, &self.ctx.kernels, params, buffers, (scratch, *floats));
    }

    /// Records the forward pass and the loss (into `scalars[0]`, with `d_out`).
    fn record_forward<'a>(
        &'a self,
        rec: &mut Recorder<'a>,
        config: &RnnConfig,
        batch: &SequenceBatch,
        has_initial: bool,
    ) {
        let k = &self.ctx.kernels;
        let w = self.work.as_ref().expect("ensure_work ran");
        let p = batch.packing();
        let (h, o) = (config.hidden_size as u32, config.output_size as u32);
        let tokens = p.tokens() as u32;
        let relu = (config.cell == Cell::Relu) as u32;
        let b = p.batch() as u32;
        for l in 0..config.num_layers {
            let input = if l == 0 { &w.x } else { &w.hs[l - 1] };
            let in_size = config.layer_input_size(l) as u32;
            if l == 0 && batch.token_ids().is_some() {
                // tokens: the input term is a column of W_ih
                rec.dispatch_1d(
                    &k.embed,
                    self.embed_params(config, p),
                    &[&w.token_data, &self.params, &w.hs[0]],
                    (tokens * h) as usize,
                );
            } else {
                // hoisted: W_ih x(t) + b for every step at once
                self.product(
                    rec,
                    matmul(
                        tokens,
                        h,
                        in_size,
                        kernels::TRANS_B | kernels::ADD_BIAS,
                        (0, in_size),
                        (self.layout.w_ih[l], in_size),
                        (0, h),
                        self.layout.b_ih[l],
                    ),
                    [input, &self.params, &self.params, &w.hs[l]],
                );
            }
            // + b_hh on every row (a product with K = 0 adds only its bias)
            self.product(
                rec,
                MatmulParams {
                    beta: 1.0,
                    ..matmul(
                        tokens,
                        h,
                        0,
                        kernels::ADD_BIAS,
                        (0, h),
                        (0, h),
                        (0, h),
                        self.layout.b_hh[l],
                    )
                },
                [&self.dummies[0], &self.params, &self.params, &w.hs[l]],
            );
            let initial = if has_initial {
                &w.initial
            } else {
                &self.dummies[0]
            };
            if self.persistent(config, p) {
                let w_t = l as u32 * h * h;
                rec.dispatch_1d(
                    &k.transpose,
                    RowsParams {
                        rows: h,
                        cols: h,
                        src_offset: self.layout.w_hh[l],
                        dst_offset: w_t,
                    },
                    &[&self.dummies[2], &self.params, &self.w_hh_t],
                    (h * h) as usize,
                );
                let mut params = self.sequence_params(config, p, l);
                params.w_offset = w_t;
                if has_initial {
                    params.has_other = 2;
                    params.cur_offset = l as u32 * b * h;
                }
                rec.dispatch(
                    &k.forward_sequence,
                    params,
                    &[&self.w_hh_t, &w.hs[l], initial, &w.packing],
                    [p.batch() as u32, 1, 1],
                );
                continue;
            }
            if self.tiled_steps(config, p) {
                // h(t) = phi(pre(t) + h(t-1) W_hhᵀ): C = the rows of step t, A = those of
                // step t-1 in the same buffer (or the initial state), phi as C is stored
                for (t, &n) in p.batch_sizes.iter().enumerate() {
                    let epilogue = [kernels::EPILOGUE_TANH, kernels::EPILOGUE_RELU][relu as usize];
                    let mut step =
                        self.step_product(l, h, n as u32, p.offsets[t] as u32 * h, epilogue);
                    step.flags = kernels::TRANS_B;
                    let a = if t > 0 {
                        step.flags |= kernels::A_IN_C;
                        step.a_offset = p.offsets[t - 1] as u32 * h;
                        &self.params
                    } else if has_initial {
                        step.a_offset = l as u32 * b * h;
                        &w.initial
                    } else {
                        step.k = 0; // a zero initial state: only phi
                        &self.params
                    };
                    self.product(rec, step, [a, &self.params, &self.dummies[1], &w.hs[l]]);
                }
                continue;
            }
            for (t, &n) in p.batch_sizes.iter().enumerate() {
                let step = StepParams {
                    rows: n as u32,
                    rows_next: 0,
                    hidden: h,
                    cur_offset: p.offsets[t] as u32 * h,
                    other_offset: if t > 0 {
                        p.offsets[t - 1] as u32 * h
                    } else {
                        l as u32 * b * h
                    },
                    w_offset: self.layout.w_hh[l],
                    relu,
                    has_other: if t > 0 {
                        1
                    } else if has_initial {
                        2
                    } else {
                        0
                    },
                };
                rec.dispatch(
                    &k.forward_step,
                    step,
                    &[&self.params, &w.hs[l], initial, &self.dummies[1]],
                    [h.div_ceil(16), (n as u32).div_ceil(16), 1],
                );
            }
        }
        let top = &w.hs[config.num_layers - 1];
        let (head_in, rows) = match config.head {
            Head::PerStep | Head::None => (top, tokens),
            Head::LastStep => {
                let b = p.batch() as u32;
                rec.dispatch_1d(
                    &k.gather_rows,
                    RowsParams {
                        rows: b,
                        cols: h,
                        src_offset: 0,
                        dst_offset: 0,
                    },
                    &[&w.last_index, top, &w.last],
                    (b * h) as usize,
                );
                (&w.last, b)
            }
        };
        self.product(
            rec,
            matmul(
                rows,
                o,
                h,
                kernels::TRANS_B | kernels::ADD_BIAS,
                (0, h),
                (self.layout.w_out, h),
                (0, o),
                self.layout.b_out,
            ),
            [head_in, &self.params, &self.params, &w.out],
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

    /// Parameters of the token kernels (layer 0).
    fn embed_params(&self, config: &RnnConfig, p: &Packing) -> EmbedParams {
        let tokens = p.tokens() as u32;
        EmbedParams {
            rows: tokens,
            hidden: config.hidden_size as u32,
            vocab: config.input_size as u32,
            w_offset: self.layout.w_ih[0],
            b_offset: self.layout.b_ih[0],
            ranges_offset: tokens,
            order_offset: tokens + config.input_size as u32 + 1,
            _pad: 0,
        }
    }

    /// Whether this batch's layers run the persistent time loop.
    fn persistent(&self, config: &RnnConfig, p: &Packing) -> bool {
        let fits = config.hidden_size <= PERSISTENT_MAX_HIDDEN
            && self.ctx.limits.max_compute_invocations_per_workgroup >= 256
            && p.batch() as u32 <= self.ctx.limits.max_compute_workgroups_per_dimension;
        match self.time_loop {
            TimeLoop::PerStep | TimeLoop::TiledSteps => false,
            TimeLoop::Auto | TimeLoop::Persistent => fits,
        }
    }

    /// The product of one step of layer `l` in the tiled time loop: `rows` rows of C at
    /// `c_offset` (hidden wide) plus the previous or next step's rows times W_hh, then
    /// `epilogue`; the caller sets where A is and whether W_hh is read transposed.
    fn step_product(
        &self,
        l: usize,
        h: u32,
        rows: u32,
        c_offset: u32,
        epilogue: u32,
    ) -> MatmulParams {
        MatmulParams {
            m: rows,
            n: h,
            k: h,
            lda: h,
            b_offset: self.layout.w_hh[l],
            ldb: h,
            c_offset,
            ldc: h,
            alpha: 1.0,
            beta: 1.0,
            epilogue,
            ..Default::default()
        }
    }

    /// Whether each step runs through the tiled matrix-product kernels.
    fn tiled_steps(&self, config: &RnnConfig, p: &Packing) -> bool {
        match self.time_loop {
            TimeLoop::TiledSteps => true,
            TimeLoop::Auto => {
                !self.persistent(config, p)
                    && p.batch() * config.hidden_size >= super::TILED_STEP_MIN_WORK
            }
            TimeLoop::PerStep | TimeLoop::Persistent => false,
        }
    }

    /// Parameters of the persistent kernels for layer `l`.
    fn sequence_params(&self, config: &RnnConfig, p: &Packing, l: usize) -> StepParams {
        StepParams {
            rows: p.batch() as u32,
            rows_next: p.offsets.len() as u32,
            hidden: config.hidden_size as u32,
            w_offset: self.layout.w_hh[l],
            relu: (config.cell == Cell::Relu) as u32,
            ..Default::default()
        }
    }

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

    /// The gradients' norm into `scalars[NORM]` and whether all are finite into
    /// `scalars[GRADS_FINITE]`, scaled so that finite gradients never overflow it.
    fn record_grad_norm<'a>(&'a self, rec: &mut Recorder<'a>) {
        let k = &self.ctx.kernels;
        let params = ReduceParams {
            out_offset: NORM,
            flag_offset: GRADS_FINITE,
            ..Default::default()
        };
        let kernels = [&k.partial_norms, &k.finish_norm];
        self.record_reduction(rec, kernels, &self.grads, self.layout.len, params);
    }

    /// A two-pass reduction of `input[..len]` into the scalars: `passes[0]` leaves one
    /// partial result per workgroup in `partials`, `passes[1]` (one workgroup) combines
    /// them as `params` says.
    fn record_reduction<'a>(
        &'a self,
        rec: &mut Recorder<'a>,
        passes: [&'a kernels::Kernel; 2],
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

    /// Records back-propagation through time after [`GpuRnn::record_forward`], writing
    /// every gradient into the flat gradient buffer.
    fn record_backward<'a>(
        &'a self,
        rec: &mut Recorder<'a>,
        config: &RnnConfig,
        batch: &SequenceBatch,
        has_initial: bool,
    ) {
        let k = &self.ctx.kernels;
        let w = self.work.as_ref().expect("ensure_work ran");
        let lay = &self.layout;
        let p = batch.packing();
        let (h, o) = (config.hidden_size as u32, config.output_size as u32);
        let tokens = p.tokens() as u32;
        let b = p.batch() as u32;
        let top = config.num_layers - 1;
        let relu = (config.cell == Cell::Relu) as u32;
        let (head_in, rows) = match config.head {
            Head::PerStep | Head::None => (&w.hs[top], tokens),
            Head::LastStep => (&w.last, b),
        };
        // readout: dW_out = d_outᵀ · head_in, db_out = Σ rows d_out
        self.product(
            rec,
            matmul(
                o,
                h,
                rows,
                kernels::TRANS_A,
                (0, o),
                (0, h),
                (lay.w_out, h),
                0,
            ),
            [&w.d_out, head_in, &self.params, &self.grads],
        );
        self.record_column_sums(rec, &w.d_out, rows, o, lay.b_out);
        // gradient arriving at the top layer's states
        match config.head {
            Head::PerStep | Head::None => self.product(
                rec,
                matmul(tokens, h, o, 0, (0, o), (lay.w_out, h), (0, h), 0),
                [&w.d_out, &self.params, &self.params, &w.g],
            ),
            Head::LastStep => {
                rec.clear(&w.g);
                self.product(
                    rec,
                    matmul(b, h, o, 0, (0, o), (lay.w_out, h), (0, h), 0),
                    [&w.d_out, &self.params, &self.params, &w.hprev],
                );
                rec.dispatch_1d(
                    &k.scatter_rows,
                    RowsParams {
                        rows: b,
                        cols: h,
                        src_offset: 0,
                        dst_offset: 0,
                    },
                    &[&w.last_index, &w.hprev, &w.g],
                    (b * h) as usize,
                );
            }
        }
        let (mut g, mut g_below) = (&w.g, &w.g_below);
        for l in (0..config.num_layers).rev() {
            let hs = &w.hs[l];
            if self.persistent(config, p) {
                let params = self.sequence_params(config, p, l);
                rec.dispatch(
                    &k.backward_sequence,
                    params,
                    &[&self.params, g, hs, &w.packing],
                    [b, 1, 1],
                );
            } else if self.tiled_steps(config, p) {
                // dA(t) = (g(t) + dA(t+1) W_hh) * phi'(h(t)): A = the rows of step t+1 in
                // g itself (rows past n_next read as zero), h(t) through the bias binding
                for t in (0..p.max_len()).rev() {
                    let n = p.batch_sizes[t] as u32;
                    let n_next = p.batch_sizes.get(t + 1).copied().unwrap_or(0) as u32;
                    let cur = p.offsets[t] as u32 * h;
                    let epilogue =
                        [kernels::EPILOGUE_TANH_SLOPE, kernels::EPILOGUE_RELU_SLOPE][relu as usize];
                    let step = MatmulParams {
                        k: if n_next > 0 { h } else { 0 },
                        flags: kernels::A_IN_C,
                        a_offset: p.offsets.get(t + 1).map_or(0, |&o| o as u32 * h),
                        a_rows: n_next,
                        bias_offset: cur,
                        ..self.step_product(l, h, n, cur, epilogue)
                    };
                    self.product(rec, step, [&self.params, &self.params, hs, g]);
                }
            } else {
                for t in (0..p.max_len()).rev() {
                    let n = p.batch_sizes[t] as u32;
                    let n_next = p.batch_sizes.get(t + 1).copied().unwrap_or(0) as u32;
                    let step = StepParams {
                        rows: n,
                        rows_next: n_next,
                        hidden: h,
                        cur_offset: p.offsets[t] as u32 * h,
                        other_offset: if n_next > 0 {
                            p.offsets[t + 1] as u32 * h
                        } else {
                            0
                        },
                        w_offset: lay.w_hh[l],
                        relu,
                        has_other: 0,
                    };
                    rec.dispatch(
                        &k.backward_step,
                        step,
                        &[&self.params, g, hs, &self.dummies[0]],
                        [h.div_ceil(16), n.div_ceil(16), 1],
                    );
                }
            }
            let input = if l == 0 { &w.x } else { &w.hs[l - 1] };
            let in_size = config.layer_input_size(l) as u32;
            if l == 0 && batch.token_ids().is_some() {
                // tokens: each column of dW_ih sums the rows that looked it up
                let e = self.embed_params(config, p);
                rec.dispatch_1d(
                    &k.embed_grad,
                    e,
                    &[&w.token_data, g, &self.grads],
                    (e.vocab * h) as usize,
                );
            } else {
                // dW_ih = Σ_t dA(t)ᵀ in(t): one product over all steps
                self.product(
                    rec,
                    matmul(
                        h,
                        in_size,
                        tokens,
                        kernels::TRANS_A,
                        (0, h),
                        (0, in_size),
                        (lay.w_ih[l], in_size),
                        0,
                    ),
                    [g, input, &self.params, &self.grads],
                );
            }
            // both biases receive the same gradient (an Elman cell adds them)
            self.record_column_sums(rec, g, tokens, h, lay.b_ih[l]);
            self.record_column_sums(rec, g, tokens, h, lay.b_hh[l]);
            // dW_hh = Σ_{t≥1} dA(t)ᵀ h(t-1); fixed-length batches read h(t-1) in place
            let later = tokens - b;
            let fixed_length = p.batch_sizes.iter().all(|&n| n as u32 == b);
            let prev = if fixed_length || later == 0 {
                hs
            } else {
                rec.dispatch_1d(
                    &k.gather_rows,
                    RowsParams {
                        rows: later,
                        cols: h,
                        src_offset: 0,
                        dst_offset: 0,
                    },
                    &[&w.prev_index, hs, &w.hprev],
                    (later * h) as usize,
                );
                &w.hprev
            };
            self.product(
                rec,
                matmul(
                    h,
                    h,
                    later,
                    kernels::TRANS_A,
                    (b * h, h),
                    (0, h),
                    (lay.w_hh[l], h),
                    0,
                ),
                [g, prev, &self.params, &self.grads],
            );
            if has_initial {
                // the first step's term: dA(0)ᵀ h(-1), added to the rest
                let mut first = matmul(
                    h,
                    h,
                    b,
                    kernels::TRANS_A,
                    (0, h),
                    (l as u32 * b * h, h),
                    (lay.w_hh[l], h),
                    0,
                );
                first.beta = 1.0;
                self.product(rec, first, [g, &w.initial, &self.params, &self.grads]);
            }
            if l > 0 {
                // the gradient reaching the layer below's states: one product over all steps
                self.product(
                    rec,
                    matmul(tokens, h, h, 0, (0, h), (lay.w_ih[l], h), (0, h), 0),
                    [g, &self.params, &self.params, g_below],
                );
                std::mem::swap(&mut g, &mut g_below);
            }
        }
    }

    /// `grads[out_offset + c] = Σ_r input[r, c]` (bias gradients), in two passes.
    fn record_column_sums<'a>(
        &'a self,
        rec: &mut Recorder<'a>,
        input: &'a wgpu::Buffer,
        rows: u32,
        cols: u32,
        out_offset: u32,
    ) {
        let k = &self.ctx.kernels;
        let chunks = rows.div_ceil(64).clamp(1, COLUMN_CHUNKS as u32);
        let chunk_rows = rows.div_ceil(chunks);
        let params = ReduceParams {
            len: rows,
            cols,
            out_offset,
            scale: 1.0,
            chunk_rows,
            ..Default::default()
        };
        rec.dispatch(
            &k.column_partials,
            params,
            &[input, &self.column_scratch],
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

    /// Records the gather of each sequence's last state of every layer into `final_h`.
    fn record_final_states<'a>(&'a self, rec: &mut Recorder<'a>, config: &RnnConfig, p: &Packing) {
        let w = self.work.as_ref().expect("ensure_work ran");
        let (h, b) = (config.hidden_size as u32, p.batch() as u32);
        for l in 0..config.num_layers {
            let params = RowsParams {
                rows: b,
                cols: h,
                src_offset: 0,
                dst_offset: l as u32 * b * h,
            };
            rec.dispatch_1d(
                &self.ctx.kernels.gather_rows,
                params,
                &[&w.last_index, &w.hs[l], &w.final_h],
                (b * h) as usize,
            );
        }
    }

    /// `final_h` as read back (packed order) to `[num_layers, batch, hidden]` in the
    /// batch's order.
    fn unpack_final_states(config: &RnnConfig, p: &Packing, data: &[f32]) -> Array3<f32> {
        let (hu, bu) = (config.hidden_size, p.batch());
        let mut final_hidden = Array3::zeros((config.num_layers, bu, hu));
        for l in 0..config.num_layers {
            let rows = ArrayView2::from_shape((bu, hu), &data[l * bu * hu..(l + 1) * bu * hu])
                .expect("sized by the model");
            final_hidden
                .index_axis_mut(Axis(0), l)
                .assign(&p.unpack_sequences(rows));
        }
        final_hidden
    }

    pub fn forward(
        &mut self,
        config: &RnnConfig,
        batch: &SequenceBatch,
        initial: Option<&RnnState>,
    ) -> Result<Forward> {
        let p = batch.packing();
        self.ensure_work(config, batch)?;
        self.upload(config, batch, initial);
        let mut rec = Recorder::new(&self.ctx);
        self.record_forward(&mut rec, config, batch, initial.is_some());
        self.record_final_states(&mut rec, config, p);
        let w = self.work.as_ref().expect("ensure_work ran");
        rec.submit(&mut self.cache.lock().expect("bind group cache"))?;
        let rows = if config.head == Head::PerStep {
            p.tokens()
        } else {
            p.batch()
        };
        let (o, hu, bu) = (config.output_size, config.hidden_size, p.batch());
        let data = read_back(
            &self.ctx,
            &[
                (&w.out, 0, rows * o),
                (&w.final_h, 0, config.num_layers * bu * hu),
                (&self.scalars, 0, 1),
            ],
        )?;
        let out = ArrayView2::from_shape((rows, o), &data[0]).expect("sized above");
        let outputs = match config.head {
            Head::PerStep | Head::None => p.unpack_steps(out),
            Head::LastStep => p.unpack_sequences(out).insert_axis(Axis(1)),
        };
        let final_hidden = Self::unpack_final_states(config, p, &data[1]);
        let loss = if batch.targets().is_some() {
            data[2][0]
        } else {
            f32::NAN
        };
        Ok(Forward {
            outputs,
            final_hidden,
            final_cell: None,
            loss,
        })
    }

    pub fn loss_and_gradients(
        &mut self,
        config: &RnnConfig,
        batch: &SequenceBatch,
        initial: Option<&RnnState>,
    ) -> Result<(f32, RnnParams)> {
        self.ensure_work(config, batch)?;
        self.upload(config, batch, initial);
        let mut rec = Recorder::new(&self.ctx);
        self.record_forward(&mut rec, config, batch, initial.is_some());
        self.record_backward(&mut rec, config, batch, initial.is_some());
        rec.submit(&mut self.cache.lock().expect("bind group cache"))?;
        let data = read_back(
            &self.ctx,
            &[(&self.scalars, 0, 1), (&self.grads, 0, self.layout.len)],
        )?;
        let mut grads = RnnParams::zeros(config);
        grads.assign_flat(&data[1]);
        Ok((data[0][0], grads))
    }

    /// One training step in one submission; with `want_final`, also each sequence's
    /// final state (from the parameters before the update).
    pub fn train_step(
        &mut self,
        config: &RnnConfig,
        batch: &SequenceBatch,
        initial: Option<&RnnState>,
        _dropout: Option<u64>,
        optimizer: &mut Optimizer,
        want_final: bool,
    ) -> Result<(f32, Option<RnnState>)> {
        let start = std::time::Instant::now();
        self.ensure_work(config, batch)?;
        let replaced = self.ensure_optimizer(optimizer)?;
        let result = self.run_train_step(config, batch, initial, optimizer, want_final, start);
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
        config: &RnnConfig,
        batch: &SequenceBatch,
        initial: Option<&RnnState>,
        optimizer: &mut Optimizer,
        want_final: bool,
        start: std::time::Instant,
    ) -> Result<(f32, Option<RnnState>)> {
        let p = batch.packing();
        self.upload(config, batch, initial);
        let State::Gpu(state) = &optimizer.state else {
            unreachable!("ensure_optimizer set the state")
        };
        let mut rec = Recorder::new(&self.ctx);
        self.record_forward(&mut rec, config, batch, initial.is_some());
        if want_final {
            self.record_final_states(&mut rec, config, p);
        }
        // with a dispatch per step, recording the backward pass takes the host about as
        // long as the GPU takes for the forward pass: submit the forward pass first so
        // that the two overlap (a second submission costs tens of µs, so not for the
        // few dispatches of the persistent loops)
        if rec.dispatches() >= SPLIT_SUBMISSION_DISPATCHES {
            rec.submit_so_far(&mut self.cache.lock().expect("bind group cache"))?;
        }
        self.record_backward(&mut rec, config, batch, initial.is_some());
        let k = &self.ctx.kernels;
        let n = self.layout.len;
        self.record_grad_norm(&mut rec);
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
        let m = state.m.as_ref().unwrap_or(&self.dummies[1]);
        let v = state.v.as_ref().unwrap_or(&self.dummies[2]);
        let buffers = [&self.scalars, &self.grads, &self.params, m, v];
        // prepare, check every new value, then commit only if all were finite: a refused
        // step writes nothing (see shaders/optimizer.wgsl)
        rec.dispatch(&k.prepare_update, params, &buffers, [1, 1, 1]);
        rec.dispatch_1d(check, params, &buffers, n);
        rec.dispatch_1d(kernel, params, &buffers, n);
        let dispatches = rec.dispatches();
        rec.submit(&mut self.cache.lock().expect("bind group cache"))?;
        self.last_host = start.elapsed();
        self.last_dispatches = dispatches;
        let w = self.work.as_ref().expect("ensure_work ran");
        let finals = if want_final {
            config.num_layers * p.batch() * config.hidden_size
        } else {
            0
        };
        let data = read_back(
            &self.ctx,
            &[(&self.scalars, 0, SCALARS), (&w.final_h, 0, finals)],
        )?;
        let s = &data[0];
        let (loss, grads_finite, ok) = (s[0], s[GRADS_FINITE as usize] != 0.0, s[3]);
        check_finite_step(loss, grads_finite)?;
        debug_assert_eq!(ok, 1.0);
        let (params_overflow, moments_overflow) = (s[4] != 0.0, s[5] != 0.0);
        if params_overflow || moments_overflow {
            return Err(update_overflow(params_overflow, moments_overflow));
        }
        optimizer.steps = step;
        Ok((
            loss,
            want_final.then(|| RnnState::hidden(Self::unpack_final_states(config, p, &data[1]))),
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
            self.ctx
                .queue
                .write_buffer(&b, 0, bytemuck::cast_slice(data));
            b
        };
        let buffers = OptimizerBuffers {
            m: needs_m.then(|| buffer("optimizer m", start.map(|c| &c.m))),
            v: needs_v.then(|| buffer("optimizer v", start.map(|c| &c.v))),
            len: n,
            ctx: self.ctx.clone(),
        };
        Ok(Some(std::mem::replace(
            &mut optimizer.state,
            State::Gpu(buffers),
        )))
    }

    /// The encoder API on the GPU (not yet offered: `new` refuses `Head::None`, and
    /// other heads are served by the CPU path's encoder until the GPU records it).
    pub fn encode(
        &mut self,
        _config: &RnnConfig,
        _batch: &SequenceBatch,
        _dropout: Option<u64>,
    ) -> Result<crate::Encoded> {
        Err(Error::Unsupported(
            "Rnn::encode does not run on the GPU yet: use Device::cpu()".into(),
        ))
    }

    /// See [`GpuRnn::encode`].
    pub fn backward(
        &mut self,
        _config: &RnnConfig,
        _batch: &SequenceBatch,
        _grad_states: &Array3<f32>,
        _dropout: Option<u64>,
    ) -> Result<crate::Gradients> {
        Err(Error::Unsupported(
            "Rnn::backward does not run on the GPU yet: use Device::cpu()".into(),
        ))
    }

    /// See [`GpuRnn::encode`].
    pub fn apply_gradients(
        &mut self,
        _grads: &RnnParams,
        _optimizer: &mut Optimizer,
    ) -> Result<()> {
        Err(Error::Unsupported(
            "Rnn::apply_gradients does not run on the GPU yet: use Device::cpu()".into(),
        ))
    }

    pub fn params(&self, config: &RnnConfig) -> Result<RnnParams> {
        let data = read_back(&self.ctx, &[(&self.params, 0, self.layout.len)])?;
        let mut params = RnnParams::zeros(config);
        params.assign_flat(&data[0]);
        Ok(params)
    }
}

/// A matrix product's parameters: `(offset, stride)` of A, B and C.
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    a: (u32, u32),
    b: (u32, u32),
    c: (u32, u32),
    bias_offset: u32,
) -> MatmulParams {
    MatmulParams {
        m,
        n,
        k,
        flags,
        a_offset: a.0,
        b_offset: b.0,
        c_offset: c.0,
        bias_offset,
        lda: a.1,
        ldb: b.1,
        ldc: c.1,
        alpha: 1.0,
        ..Default::default()
    }
}
