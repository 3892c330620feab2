//! The model's buffers on the device: where each parameter tensor sits in the flat
//! parameter buffer, the work buffers of a batch (and when they are reallocated), and
//! what is uploaded for each batch (packed inputs, targets, packing tables, initial
//! states, dropout masks).

use super::gemm;
use super::kernels::{INITIAL_ROW, NO_ROW};
use super::GpuContext;
use crate::batch::{Packing, SequenceBatch, Targets};
use crate::cpu::RnnState;
use crate::model::RnnConfig;
use crate::{Error, Head, Result};
use ndarray::Axis;

/// Element offsets of every tensor in the flat parameter (and gradient) buffer, in the
/// order of [`crate::RnnParams::tensors`]: per layer and direction (unit) `w_ih`, `w_hh`,
/// `b_ih`, `b_hh`, then `w_out`, `b_out`.
#[derive(Clone, Debug)]
pub(super) struct ParamLayout {
    pub w_ih: Vec<u32>,
    pub w_hh: Vec<u32>,
    pub b_ih: Vec<u32>,
    pub b_hh: Vec<u32>,
    pub w_out: u32,
    pub b_out: u32,
    pub len: usize,
}

impl ParamLayout {
    pub fn new(config: &RnnConfig) -> Self {
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

/// Work buffers sized for batches up to a capacity (all in packed row order; D
/// directions, H hidden, G gates).
pub(super) struct BatchBuffers {
    pub tokens: usize,
    pub batch: usize,
    /// Rows of dense inputs `x` holds (0 while only token batches have been seen).
    pub x_tokens: usize,
    /// Packed inputs `[tokens, input]`.
    pub x: wgpu::Buffer,
    /// Per layer, its output `[tokens, D·H]`.
    pub hs: Vec<wgpu::Buffer>,
    /// Per layer of a gated cell: its gates `[tokens, D·G·H]` (the input projection
    /// before the time loop), then `c` (LSTM) or `W_hn h + b_hn` (GRU) `[tokens, D·H]`.
    pub saved: Vec<wgpu::Buffer>,
    /// Per layer from 1, with dropout: its input after the mask `[tokens, D·H]`; and
    /// the masks (`crate::cpu::mask_layers`: of every layer from 1, then of the
    /// readout's input).
    pub dropped: Vec<wgpu::Buffer>,
    pub masks: wgpu::Buffer,
    /// With output dropout: the top layer's states after their mask `[tokens, D·H]`.
    pub top_dropped: wgpu::Buffer,
    /// The gradient with respect to a layer's output, and the one formed for the layer
    /// below: `[tokens, D·H]`.
    pub g: wgpu::Buffer,
    pub g_below: wgpu::Buffer,
    /// The gradient with respect to dense inputs `[tokens, input]`, made when first
    /// needed (the encoder's backward pass; see [`BatchBuffers::ensure_input_grads`]).
    pub d_inputs: Option<wgpu::Buffer>,
    /// A gated cell's gate gradients `[tokens, D·G·H]` (and the GRU's `dgh` after them).
    pub dgates: wgpu::Buffer,
    /// One direction's previous states `[tokens, H]` (for the `W_hh` gradient).
    pub hprev: wgpu::Buffer,
    /// Tiled steps of a gated cell: each direction's step product `[batch, G·H]`.
    pub step_scratch: wgpu::Buffer,
    /// Last-step head: its input `[batch, D·H]` and the gradient there.
    pub last: wgpu::Buffer,
    pub d_last: wgpu::Buffer,
    pub out: wgpu::Buffer,
    pub d_out: wgpu::Buffer,
    pub row_loss: wgpu::Buffer,
    pub classes: wgpu::Buffer,
    pub values: wgpu::Buffer,
    /// Per direction, the packed row of each sequence's final state `[D, batch]`.
    pub last_index: wgpu::Buffer,
    /// Step offsets, then sequence lengths in packed order (persistent time loop).
    pub packing: wgpu::Buffer,
    /// Per direction, the row each row's previous state is in `[D, tokens]` (see
    /// `shaders/rows.wgsl`'s `gather_previous`).
    pub prev_index: wgpu::Buffer,
    /// Initial states in packed order, `h` `[layers·D, batch, H]` then `c`.
    pub initial: wgpu::Buffer,
    /// Token batches: packed ids, per-token row ranges, rows sorted by token.
    pub token_data: wgpu::Buffer,
    /// Final states `[layers·D, batch, H]`, `h` then `c`.
    pub finals: wgpu::Buffer,
    /// Partial products of matrix products split along K, and its size in floats.
    pub split_scratch: (wgpu::Buffer, usize),
}

pub(super) fn storage(ctx: &GpuContext, label: &str, floats: usize) -> wgpu::Buffer {
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

pub(super) fn check_fits(ctx: &GpuContext, what: &str, floats: usize) -> Result<()> {
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

/// The model's sizes and those of the work buffers of a batch capacity that depend on
/// the cell and head: what [`BatchBuffers::check`] checks and [`BatchBuffers::new`]
/// allocates.
struct Sizes {
    /// Input features, hidden units, outputs, layers.
    i: usize,
    h: usize,
    o: usize,
    l: usize,
    /// Width of a layer's output (directions × hidden).
    dh: usize,
    /// Gate blocks of the cell.
    g: usize,
    /// 1 for a gated cell (LSTM, GRU), else 0.
    gated: usize,
    /// Layers × directions.
    units: usize,
    /// Rows of the readout: every position (per-step head) or every sequence.
    rows: usize,
    /// Floats of a layer's saved gates and `c` or `W_hn h + b_hn` (gated cells).
    saved: usize,
    /// Floats of the gate gradients (and the GRU's `dgh`).
    dgates: usize,
}

impl Sizes {
    fn new(config: &RnnConfig, tokens: usize, batch: usize) -> Sizes {
        let (dh, g) = (config.state_width(), config.cell.gates());
        let dgh = config.num_directions() * g * config.hidden_size;
        let gated = (g > 1) as usize;
        let gru = (config.cell == crate::Cell::Gru) as usize;
        Sizes {
            i: config.input_size,
            h: config.hidden_size,
            o: config.output_size,
            l: config.num_layers,
            dh,
            g,
            gated,
            units: config.num_units(),
            rows: if config.head == Head::PerStep {
                tokens
            } else {
                batch
            },
            saved: gated * tokens * (dgh + dh),
            dgates: gated * (1 + gru) * tokens * dgh,
        }
    }
}

impl BatchBuffers {
    /// Whether buffers for batches of up to `tokens` rows and `batch` sequences
    /// (`x_tokens` rows of dense inputs) fit the adapter's limits: an error saying which
    /// would not.
    pub fn check(
        ctx: &GpuContext,
        config: &RnnConfig,
        (tokens, batch, x_tokens): (usize, usize, usize),
    ) -> Result<()> {
        let Sizes {
            i,
            h,
            o,
            l,
            dh,
            g,
            gated,
            units,
            rows,
            saved,
            dgates,
        } = Sizes::new(config, tokens, batch);
        for (what, n) in [
            ("the packed inputs (tokens x input_size)", x_tokens * i),
            (
                "one layer's states (tokens x directions x hidden_size)",
                tokens * dh,
            ),
            (
                "one layer's gates (tokens x directions x gates x hidden_size)",
                saved,
            ),
            (
                "the gate gradients (tokens x directions x gates x hidden_size)",
                dgates,
            ),
            ("the outputs (rows x output_size)", rows * o),
            ("the per-row losses and class targets", rows),
            ("the dropout masks", l * tokens * dh),
            ("the final states", 2 * units * batch * h),
            (
                "the step products of tiled steps (2 x batch x gates x hidden_size)",
                gated * 2 * batch * g * h,
            ),
            (
                "the packing tables",
                (tokens + 1 + batch).max(2 * tokens).max(2 * batch),
            ),
            ("the token tables", 2 * tokens + i + 1),
        ] {
            check_fits(ctx, what, n)?;
        }
        let max_groups = ctx.limits.max_compute_workgroups_per_dimension as u64;
        let needed_groups = (tokens.max(rows) as u64).div_ceil(64);
        if needed_groups > max_groups {
            return Err(Error::ExceedsDeviceLimit {
                what: "workgroups per dimension of the batch-wide matrix products".into(),
                needed: needed_groups,
                limit: max_groups,
                hint: "use a smaller batch or shorter sequences",
            });
        }
        Ok(())
    }

    /// Buffers for batches of up to `tokens` rows and `batch` sequences (`x_tokens` rows
    /// of dense inputs), or an error saying which would exceed the adapter's limits.
    pub fn new(
        ctx: &GpuContext,
        config: &RnnConfig,
        (tokens, batch, x_tokens): (usize, usize, usize),
    ) -> Result<Self> {
        Self::check(ctx, config, (tokens, batch, x_tokens))?;
        let Sizes {
            i,
            h,
            o,
            l,
            dh,
            g,
            gated,
            units,
            rows,
            saved,
            dgates,
        } = Sizes::new(config, tokens, batch);
        // every product a step records, for the scratch its K splits need (a split that
        // does not fit runs unsplit)
        let (t32, b32, r32) = (tokens as u32, batch as u32, rows as u32);
        let (h32, o32, dh32, gh32) = (h as u32, o as u32, dh as u32, (g * h) as u32);
        let mut shapes = vec![
            (r32, o32, dh32),
            (o32, dh32, r32),
            (t32.max(b32), dh32, o32),
            (gh32, h32, t32),
            (gh32, h32, t32 - b32.min(t32)),
            (gh32, h32, b32),
            (b32, gh32, h32),
            (b32, h32, gh32),
        ];
        for layer in 0..l {
            let in_size = config.layer_input_size(layer) as u32;
            shapes.extend([
                (t32, gh32, in_size),
                (gh32, in_size, t32),
                (t32, in_size, gh32),
            ]);
        }
        let scratch_floats =
            gemm::scratch_for(ctx, &shapes).min((ctx.max_storage_binding() / 4) as usize);
        let dropout_layers = if config.drops_between() { l - 1 } else { 0 };
        let out_dropped = if config.drops_output() {
            tokens * dh
        } else {
            0
        };
        let masks = crate::cpu::mask_layers(config).len();
        Ok(BatchBuffers {
            tokens,
            batch,
            x_tokens,
            x: storage(ctx, "x", x_tokens * i),
            hs: (0..l).map(|_| storage(ctx, "hs", tokens * dh)).collect(),
            saved: (0..l).map(|_| storage(ctx, "saved", saved)).collect(),
            dropped: (0..dropout_layers)
                .map(|_| storage(ctx, "dropped", tokens * dh))
                .collect(),
            masks: storage(ctx, "masks", masks * tokens * dh),
            top_dropped: storage(ctx, "top_dropped", out_dropped),
            g: storage(ctx, "g", tokens * dh),
            g_below: storage(ctx, "g_below", tokens * dh),
            d_inputs: None,
            dgates: storage(ctx, "dgates", dgates),
            hprev: storage(ctx, "hprev", tokens * h),
            step_scratch: storage(ctx, "step scratch", gated * 2 * batch * g * h),
            last: storage(ctx, "last", batch * dh),
            d_last: storage(ctx, "d_last", batch * dh),
            out: storage(ctx, "out", rows * o),
            d_out: storage(ctx, "d_out", rows * o),
            row_loss: storage(ctx, "row_loss", rows),
            classes: storage(ctx, "classes", rows),
            values: storage(ctx, "values", rows * o),
            last_index: storage(ctx, "last_index", 2 * batch),
            packing: storage(ctx, "packing", tokens + 1 + batch),
            prev_index: storage(ctx, "prev_index", 2 * tokens),
            initial: storage(ctx, "initial", 2 * units * batch * h),
            token_data: storage(ctx, "token data", 2 * tokens + i + 1),
            finals: storage(ctx, "finals", 2 * units * batch * h),
            split_scratch: (
                storage(ctx, "split scratch", scratch_floats),
                scratch_floats,
            ),
        })
    }

    /// Makes the buffer of the inputs' gradient (dense batches, so `x_tokens` rows, like
    /// the inputs), refused if a kernel could not bind it.
    pub fn ensure_input_grads(&mut self, ctx: &GpuContext, config: &RnnConfig) -> Result<()> {
        if self.d_inputs.is_none() {
            let floats = self.x_tokens * config.input_size;
            let what = "the gradient of the inputs (tokens x input_size)";
            self.d_inputs = Some(storage_checked(ctx, what, floats)?);
        }
        Ok(())
    }

    /// Whether these buffers hold `batch`.
    pub fn fit(&self, batch: &SequenceBatch) -> bool {
        let p = batch.packing();
        let dense = batch.token_ids().is_none();
        self.tokens >= p.tokens()
            && self.batch >= p.batch()
            && (!dense || self.x_tokens >= p.tokens())
    }

    /// Uploads `batch` (packed inputs or token tables, targets, packing tables) unless
    /// these buffers hold it already (`held`: the same batch, laid out for an initial
    /// state or not as now), the initial states, and the masks of `dropout` (on training
    /// passes). Counted as one upload when anything is written.
    pub fn upload(
        &self,
        ctx: &GpuContext,
        config: &RnnConfig,
        batch: &SequenceBatch,
        held: bool,
        initial: Option<&RnnState>,
        dropout: Option<Dropout<'_>>,
    ) {
        let p = batch.packing();
        if held && initial.is_none() && dropout.is_none() {
            return;
        }
        // one upload, of up to eight writes
        ctx.note_upload();
        if let Some(state) = initial {
            // h of every layer and direction, then c, each [batch, hidden] in packed order
            let mut packed: Vec<f32> = Vec::with_capacity(2 * state.h.len());
            for s in std::iter::once(&state.h).chain(&state.c) {
                for unit in s.outer_iter() {
                    for &i in &p.order {
                        packed.extend(unit.index_axis(Axis(0), i).iter());
                    }
                }
            }
            ctx.write(&self.initial, bytemuck::cast_slice(&packed));
        }
        if let Some(dropout) = dropout {
            let flat = dropout.masks(config, p.tokens());
            ctx.write(&self.masks, bytemuck::cast_slice(&flat));
        }
        if !held {
            self.upload_batch(ctx, config, batch, initial.is_some());
        }
    }

    /// The batch's part of [`BatchBuffers::upload`]: what depends on the batch alone (and
    /// on whether its rows start from an initial state).
    fn upload_batch(
        &self,
        ctx: &GpuContext,
        config: &RnnConfig,
        batch: &SequenceBatch,
        has_initial: bool,
    ) {
        let p = batch.packing();
        let q = &ctx.queue;
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
            ctx.write(&self.token_data, bytemuck::cast_slice(&data));
        } else {
            // packed straight into the upload's staging memory: inputs are the largest
            // transfer of a step, and one host copy of them is all it takes
            let bytes = (p.tokens() * config.input_size * 4) as u64;
            if let Some(mut view) =
                wgpu::BufferSize::new(bytes).and_then(|b| q.write_buffer_with(&self.x, 0, b))
            {
                pack_inputs(batch, view.slice(..));
                ctx.note_write(bytes as usize);
            }
        }
        let per_step = config.head == Head::PerStep;
        match batch.targets() {
            None => {}
            Some(Targets::Classes(c)) => {
                let mut packed = Vec::new();
                crate::cpu::pack_classes(c, p, per_step, &mut packed);
                ctx.write(&self.classes, bytemuck::cast_slice(&packed));
            }
            Some(Targets::Values(v)) => {
                let mut packed = ndarray::Array2::<f32>::zeros((0, 0));
                crate::cpu::pack_values(v, p, per_step, &mut packed);
                ctx.write(
                    &self.values,
                    bytemuck::cast_slice(packed.as_slice().expect("fresh array")),
                );
            }
        }
        let to_u32 = |v: &[usize]| v.iter().map(|&r| r as u32).collect::<Vec<u32>>();
        // final states: the forward direction's at each sequence's last step, the
        // reverse direction's at its first
        let mut last = to_u32(&p.last_rows());
        last.extend(0..p.batch() as u32);
        ctx.write(&self.last_index, bytemuck::cast_slice(&last));
        let packing = to_u32(
            &p.offsets
                .iter()
                .chain(&p.sorted_lengths)
                .copied()
                .collect::<Vec<_>>(),
        );
        ctx.write(&self.packing, bytemuck::cast_slice(&packing));
        let prev = previous_rows(p, config.num_directions(), has_initial);
        ctx.write(&self.prev_index, bytemuck::cast_slice(&prev));
    }
}

/// The dropout masks of a training pass: those of the step's key at each packed row of
/// the batch, or, for a chunk of a batch split to fit the device (`crate::split`), at
/// the rows its positions have in the whole batch, so that a split batch draws the
/// masks the whole one would.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dropout<'a> {
    /// The training step's key (`crate::cpu::dropout_key`).
    pub key: u64,
    /// For a chunk: each of its packed rows' row in the whole batch.
    pub rows: Option<&'a [u32]>,
}

impl Dropout<'_> {
    /// The masks of the whole batch's own rows.
    pub fn whole(key: u64) -> Dropout<'static> {
        Dropout { key, rows: None }
    }

    /// Every mask of the pass `[tokens, D·H]` (`crate::cpu::mask_layers`: between
    /// layers, then before the readout), one after the other.
    fn masks(&self, config: &RnnConfig, tokens: usize) -> Vec<f32> {
        debug_assert!(self.rows.is_none_or(|rows| rows.len() == tokens));
        let row_of = |r: usize| self.rows.map_or(r as u32, |rows| rows[r]);
        let masks: Vec<ndarray::Array2<f32>> =
            crate::cpu::dropout_masks(config, tokens, self.key, row_of);
        masks.iter().flat_map(|m| m.iter().copied()).collect()
    }
}

/// For each direction and packed row, where the state it started from is (see
/// `gather_previous` in `shaders/rows.wgsl`): the row of the step before in the
/// direction's order, else the sequence's row of the initial state, or none.
fn previous_rows(p: &Packing, directions: usize, has_initial: bool) -> Vec<u32> {
    let mut out = Vec::with_capacity(directions * p.tokens());
    for d in 0..directions {
        for t in 0..p.max_len() {
            let step = super::time_loop::StepRows::new(p, t, d == 1);
            for j in 0..step.rows {
                out.push(if j < step.prev_rows {
                    step.prev + j
                } else if has_initial {
                    INITIAL_ROW | j
                } else {
                    NO_ROW
                });
            }
        }
    }
    out
}

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
