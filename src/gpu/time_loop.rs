//! How one layer walks its steps on the GPU, forward and backward, for every cell,
//! direction and [`TimeLoop`]: this is where a step of an LSTM (or any cell) runs.
//!
//! Before the loop, the layer's input projection `in·W_ihᵀ + b_ih` of every step and gate
//! has been written into the layer's gate buffer (`src/gpu/model.rs`); after the backward
//! loop, the weight gradients are products over all steps. What is left is the serial
//! part, per step: the recurrent product of all gates, `h(t-1)·W_hhᵀ + b_hh`, and the
//! cell's element-wise work (`shaders/cell_common.wgsl`, one pipeline per cell); backward,
//! the product `dgh(t+1)·W_hh` and the cell's backward. A [`Strategy`] says how:
//!
//! - [`Strategy::Persistent`]: one dispatch per layer (`sequence_forward` /
//!   `sequence_backward`), a workgroup per sequence and direction;
//! - [`Strategy::PerStep`]: one fused dispatch per step (`step_forward` / `step_backward`);
//! - [`Strategy::Tiled`]: each step's product through the tiled matrix-product kernels,
//!   the cell in the product's epilogue (Elman) or in a pointwise kernel after it
//!   (`cell_forward_rows` / `cell_backward_rows`).
//!
//! Direction is an index map over the packed rows, never a copy: a [`StepRows`] says which
//! rows a direction's step runs, which rows hold its previous state (forward pass) and
//! which rows continued it (backward pass), and each direction reads and writes its own
//! columns of the layer's buffers. Both directions of a layer advance in the same
//! dispatches (except the tiled steps' products, one per direction).

use super::gemm::{Epilogue, Matrix, Product};
use super::kernels::{CellKernels, CellStep, DirStep, Kernels, RowsParams};
use super::recorder::Recorder;
use super::{TimeLoop, PERSISTENT_MAX_HIDDEN, TILED_STEP_MIN_WORK};
use crate::batch::Packing;
use crate::Cell;

/// How a layer's steps run on the GPU (chosen per batch from a [`TimeLoop`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Strategy {
    /// One dispatch per layer runs every step: workgroup `(r, d)` owns sequence `r` in
    /// direction `d`, with workgroup barriers between steps.
    Persistent,
    /// One fused dispatch per step (both directions): the recurrent product and the cell.
    PerStep,
    /// Per step and direction, the recurrent product through the tiled matrix-product
    /// kernels; the cell in its epilogue (Elman) or one pointwise dispatch after it.
    Tiled,
}

impl Strategy {
    /// The strategy `time_loop` asks for on a batch of `batch` sequences: the persistent
    /// loop where the hidden size and the adapter allow (for `Auto` and `Persistent`);
    /// for `Auto` otherwise tiled steps from [`TILED_STEP_MIN_WORK`] outputs per step
    /// (batch × hidden), else one dispatch per step.
    pub fn choose(time_loop: TimeLoop, hidden: usize, batch: usize, limits: &wgpu::Limits) -> Self {
        let persistent_fits = hidden <= PERSISTENT_MAX_HIDDEN
            && limits.max_compute_invocations_per_workgroup >= 256
            && batch as u64 <= limits.max_compute_workgroups_per_dimension as u64;
        match time_loop {
            TimeLoop::Auto | TimeLoop::Persistent if persistent_fits => Strategy::Persistent,
            TimeLoop::Auto if batch * hidden >= TILED_STEP_MIN_WORK => Strategy::Tiled,
            TimeLoop::TiledSteps => Strategy::Tiled,
            TimeLoop::Auto | TimeLoop::Persistent | TimeLoop::PerStep => Strategy::PerStep,
        }
    }
}

/// One step of one direction on the packed rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct StepRows {
    /// The step.
    pub t: usize,
    /// Sequences running at it (the first `rows` of the packed order), from packed row `cur`.
    pub rows: u32,
    pub cur: u32,
    /// Its first `prev_rows` rows continue the state of the rows from `prev` (the step
    /// before in the direction's order); the others start from the initial state.
    pub prev: u32,
    pub prev_rows: u32,
    /// Its first `next_rows` rows are continued by the rows from `next` (the step after
    /// in the direction's order): where the recurrent gradient comes from.
    pub next: u32,
    pub next_rows: u32,
}

impl StepRows {
    /// Step `t` of the forward (`reverse = false`) or reverse direction. The reverse
    /// direction walks the same rows from the last step down: at step `t` its first
    /// `batch_sizes[t+1]` rows continue from step `t+1`, and the others (the sequences
    /// whose last step is `t`) start there from the initial state.
    pub fn new(p: &Packing, t: usize, reverse: bool) -> StepRows {
        let (sizes, offsets) = (&p.batch_sizes, &p.offsets);
        let last = p.max_len() - 1;
        let before = match reverse {
            false if t > 0 => Some((offsets[t - 1], sizes[t])),
            true if t < last => Some((offsets[t + 1], sizes[t + 1])),
            _ => None,
        };
        let after = match reverse {
            false if t < last => Some((offsets[t + 1], sizes[t + 1])),
            true if t > 0 => Some((offsets[t - 1], sizes[t])),
            _ => None,
        };
        let (prev, prev_rows) = before.unwrap_or((0, 0));
        let (next, next_rows) = after.unwrap_or((0, 0));
        StepRows {
            t,
            rows: sizes[t] as u32,
            cur: offsets[t] as u32,
            prev: prev as u32,
            prev_rows: prev_rows as u32,
            next: next as u32,
            next_rows: next_rows as u32,
        }
    }

    /// The step direction `d` visits at position `s` of a walk over `steps` steps: the
    /// forward pass runs the forward direction from step 0 and the reverse direction from
    /// the last step; the backward pass runs each the other way.
    pub fn walk(p: &Packing, s: usize, d: usize, backward: bool) -> StepRows {
        let reverse = d == 1;
        let t = if reverse != backward {
            p.max_len() - 1 - s
        } else {
            s
        };
        StepRows::new(p, t, reverse)
    }
}

/// Where one direction's parameters and initial state are.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct UnitOffsets {
    /// `W_hh` `[G·H, H]` and `b_hh` `[G·H]` in the parameter buffer.
    pub w_hh: u32,
    pub b_hh: u32,
    /// The initial state `[batch, H]` in the initial-state buffer.
    pub initial: u32,
    /// `W_hhᵀ` `[H, G·H]` then `b_hh` in the persistent loop's weight buffer.
    pub w_hh_t: u32,
    /// The tiled steps' product `[batch, G·H]` in the step scratch.
    pub step_product: u32,
}

/// The buffers a layer's time loop works on (see `shaders/cell_common.wgsl`).
pub(super) struct LoopBuffers<'a> {
    pub params: &'a wgpu::Buffer,
    /// The layer's output `[tokens, D·H]`.
    pub states: &'a wgpu::Buffer,
    /// A gated cell's gates and `c` / `W_hn h + b_hn` (Elman: a dummy; its input
    /// projection is in `states`).
    pub saved: &'a wgpu::Buffer,
    /// Initial states (a dummy without them).
    pub initial: &'a wgpu::Buffer,
    /// Step offsets and sequence lengths (persistent loops).
    pub packing: &'a wgpu::Buffer,
    /// `W_hhᵀ` of the persistent forward loop.
    pub w_hh_t: &'a wgpu::Buffer,
    /// The tiled steps' products.
    pub step_scratch: &'a wgpu::Buffer,
    /// Split-K scratch of the tiled steps' products, and its size in floats.
    pub split_scratch: (&'a wgpu::Buffer, usize),
    /// The gradient with respect to the layer's output `[tokens, D·H]` (backward).
    pub grad: &'a wgpu::Buffer,
    /// A gated cell's gate gradients (backward; Elman: a dummy, its gradients stay in
    /// `grad`).
    pub dgates: &'a wgpu::Buffer,
    /// Bound where a kernel reads or writes nothing (a read-write binding).
    pub dummy: &'a wgpu::Buffer,
}

/// Element offsets inside the layer's buffers that every dispatch shares.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct LoopLayout {
    /// `c` / `W_hn h + b_hn` in `saved`.
    pub saved_aux: u32,
    /// The GRU's `dgh` in `dgates` (0 for the other cells: `dgh` is `dgx`).
    pub dgh: u32,
    /// `c0` in the initial-state buffer.
    pub initial_c: u32,
    /// Where the sequences' lengths start in `packing`.
    pub lengths: u32,
}

/// One layer's time loop: everything a forward or backward walk over its steps needs.
pub(super) struct LayerLoop<'a> {
    pub cell: Cell,
    pub strategy: Strategy,
    pub hidden: u32,
    /// 1 or 2.
    pub dirs: u32,
    pub packing: &'a Packing,
    pub has_initial: bool,
    pub units: [UnitOffsets; 2],
    pub layout: LoopLayout,
    pub buffers: LoopBuffers<'a>,
    pub kernels: &'a Kernels,
    pub cell_kernels: &'a CellKernels,
}

impl<'a> LayerLoop<'a> {
    fn gates(&self) -> u32 {
        self.cell.gates() as u32
    }

    fn elman(&self) -> bool {
        self.gates() == 1
    }

    /// Floats per row of the layer's output and gradient: `D·H`.
    fn state_stride(&self) -> u32 {
        self.dirs * self.hidden
    }

    /// Floats per row of the gate buffers: `D·G·H`.
    fn gate_stride(&self) -> u32 {
        self.dirs * self.gates() * self.hidden
    }

    /// The parameter block of a dispatch that runs `steps[d]` in direction `d`.
    fn cell_step(&self, steps: [StepRows; 2]) -> CellStep {
        let (h, g) = (self.hidden, self.gates());
        let mut dir = [DirStep::default(); 2];
        for d in 0..self.dirs as usize {
            let (s, u) = (steps[d], self.units[d]);
            dir[d] = DirStep {
                rows: s.rows,
                cur: s.cur,
                prev: s.prev,
                prev_rows: s.prev_rows,
                next: s.next,
                next_rows: s.next_rows,
                w_hh: u.w_hh,
                b_hh: u.b_hh,
                gate_col: d as u32 * g * h,
                state_col: d as u32 * h,
                initial: u.initial,
                aux: u.step_product,
            };
        }
        CellStep {
            hidden: h,
            gate_stride: self.gate_stride(),
            state_stride: self.state_stride(),
            has_initial: self.has_initial as u32,
            lengths: self.layout.lengths,
            saved_aux: self.layout.saved_aux,
            dgh: self.layout.dgh,
            initial_c: self.layout.initial_c,
            dir,
        }
    }

    /// The cell kernels' bindings, `params` being the buffer the kernel reads weights from.
    fn bindings(&self, params: &'a wgpu::Buffer, backward: bool) -> [&'a wgpu::Buffer; 8] {
        let b = &self.buffers;
        let (grad, dgates) = if backward {
            (b.grad, b.dgates)
        } else {
            (b.dummy, b.dummy)
        };
        [
            params,
            b.states,
            b.saved,
            b.initial,
            grad,
            dgates,
            b.packing,
            b.step_scratch,
        ]
    }

    /// Each direction's step at walk position `s`.
    fn steps_at(&self, s: usize, backward: bool) -> [StepRows; 2] {
        let mut steps = [StepRows::default(); 2];
        for (d, step) in steps.iter_mut().enumerate().take(self.dirs as usize) {
            *step = StepRows::walk(self.packing, s, d, backward);
        }
        steps
    }

    /// A dispatch over `steps`: `units_per_group` units by 16 rows per workgroup, both
    /// directions (workgroup z). `product`: the kernel does the step's recurrent product
    /// (else only its element-wise part), for a profile's count of its work.
    fn dispatch_rows(
        &self,
        rec: &mut Recorder<'a>,
        kernel: &'a super::kernels::Kernel,
        steps: [StepRows; 2],
        units_per_group: u32,
        (backward, product): (bool, bool),
    ) {
        let rows = steps.iter().map(|s| s.rows).max().unwrap_or(0);
        rec.dispatch(
            kernel,
            self.cell_step(steps),
            &self.bindings(self.buffers.params, backward),
            [
                self.hidden.div_ceil(units_per_group),
                rows.div_ceil(16),
                self.dirs,
            ],
        );
        if rec.profiling() {
            // the rows the product runs on: those continuing a state (forward; all of
            // them with an initial state), those continued by a later step (backward)
            let product_rows: u32 = steps[..self.dirs as usize]
                .iter()
                .map(|s| match (backward, self.has_initial) {
                    (true, _) => s.next_rows,
                    (false, true) => s.rows,
                    (false, false) => s.prev_rows,
                })
                .sum();
            let flops = if product {
                self.product_flops(product_rows)
            } else {
                0.0
            };
            rec.note(self.describe_loop(), flops);
        }
    }

    /// Floating-point operations of the recurrent product on `rows` rows: `G·H × H`
    /// multiply-adds each.
    fn product_flops(&self, rows: u32) -> f64 {
        2.0 * rows as f64 * (self.gates() * self.hidden) as f64 * self.hidden as f64
    }

    /// The loop's dispatches in a profile: the cell, its size, the sequences.
    fn describe_loop(&self) -> String {
        format!(
            "{} H {}, {} sequences{}",
            self.cell,
            self.hidden,
            self.packing.batch(),
            if self.dirs == 2 {
                ", both directions"
            } else {
                ""
            }
        )
    }

    /// Records the forward walk: every step of both directions, leaving `h` in `states`
    /// (and a gated cell's gates and `c` / `W_hn h + b_hn` in `saved`).
    pub fn record_forward(&self, rec: &mut Recorder<'a>) {
        let ck = self.cell_kernels;
        match self.strategy {
            Strategy::Persistent => {
                // the persistent kernel reads W_hh along its rows' contiguous dimension:
                // each direction's W_hhᵀ, with b_hh as one more row
                let (h, gh) = (self.hidden, self.gates() * self.hidden);
                let mut step = self.cell_step(Default::default());
                for d in 0..self.dirs as usize {
                    let u = self.units[d];
                    rec.dispatch_1d(
                        &self.kernels.transpose_with_column,
                        RowsParams {
                            rows: gh,
                            cols: h,
                            src_offset: u.w_hh,
                            dst_offset: u.w_hh_t,
                            extra_offset: u.b_hh,
                            ..Default::default()
                        },
                        &[
                            self.buffers.packing,
                            self.buffers.params,
                            self.buffers.w_hh_t,
                        ],
                        (gh * (h + 1)) as usize,
                    );
                    step.dir[d].w_hh = u.w_hh_t;
                    step.dir[d].b_hh = u.w_hh_t + h * gh;
                }
                let kernel = match &ck.sequence_forward_wide {
                    Some(wide) if gh > 256 => wide,
                    _ => &ck.sequence_forward,
                };
                rec.dispatch(
                    kernel,
                    step,
                    &self.bindings(self.buffers.w_hh_t, false),
                    [self.packing.batch() as u32, self.dirs, 1],
                );
                self.note_persistent(rec, false);
            }
            Strategy::PerStep => {
                // a workgroup covers 16 gate columns: all gates of 16 / G units
                let units = 16 / self.gates();
                for s in 0..self.packing.max_len() {
                    self.dispatch_rows(
                        rec,
                        &ck.step_forward,
                        self.steps_at(s, false),
                        units,
                        (false, true),
                    );
                }
            }
            Strategy::Tiled => {
                for s in 0..self.packing.max_len() {
                    let steps = self.steps_at(s, false);
                    for (d, step) in steps.iter().enumerate().take(self.dirs as usize) {
                        self.record_tiled_product(rec, d, step);
                    }
                    if !self.elman() {
                        self.dispatch_rows(rec, &ck.cell_forward_rows, steps, 16, (false, false));
                    }
                }
            }
        }
    }

    /// Notes the persistent loop's dispatch for a profile: every step of every sequence,
    /// the product on each row that continues a state (forward) or is continued
    /// (backward).
    fn note_persistent(&self, rec: &mut Recorder<'a>, backward: bool) {
        if !rec.profiling() {
            return;
        }
        let (tokens, batch) = (self.packing.tokens() as u32, self.packing.batch() as u32);
        // every row but each sequence's first (forward, from a zero state) or last
        // (backward) has a product
        let rows = if self.has_initial && !backward {
            tokens
        } else {
            tokens - batch
        };
        rec.note(self.describe_loop(), self.product_flops(rows * self.dirs));
    }

    /// The recurrent product of direction `d`'s `step` through the tiled kernels, in two
    /// row ranges: the rows continuing from the step before (A: its rows of `states`),
    /// and those starting from the initial state (A: its rows there; a zero state has no
    /// product, only `b_hh`). An Elman cell's product adds into the input projection
    /// already in its rows of `states` and applies the nonlinearity as it is stored; a
    /// gated cell's goes to the step scratch for `cell_forward_rows`.
    fn record_tiled_product(&self, rec: &mut Recorder<'a>, d: usize, step: &StepRows) {
        let b = &self.buffers;
        let (h, gh) = (self.hidden, self.gates() * self.hidden);
        let u = self.units[d];
        let col = d as u32 * h;
        let states = Matrix::new(b.states, 0, self.state_stride());
        let initial = Matrix::new(b.initial, u.initial, h);
        let ranges = [
            (0..step.prev_rows, states.at(step.prev, col), h),
            (
                step.prev_rows..step.rows,
                initial.at(step.prev_rows, 0),
                if self.has_initial { h } else { 0 },
            ),
        ];
        for (rows, a, k) in ranges {
            if rows.is_empty() {
                continue;
            }
            let c = if self.elman() {
                states.at(step.cur + rows.start, col)
            } else {
                Matrix::new(b.step_scratch, u.step_product, gh).at(rows.start, 0)
            };
            Product {
                b_transposed: true,
                accumulate: self.elman(),
                bias: Some((b.params, u.b_hh)),
                epilogue: if self.elman() {
                    Epilogue::Activate(self.cell)
                } else {
                    Epilogue::None
                },
                ..Product::new(
                    (rows.len() as u32, gh, k),
                    a,
                    Matrix::new(b.params, u.w_hh, h),
                    c,
                )
            }
            .record(rec, self.kernels, b.split_scratch);
        }
    }

    /// Records the backward walk (after [`LayerLoop::record_forward`] on the same batch):
    /// from the gradient with respect to the layer's output in `grad`, every step of both
    /// directions in reverse, leaving the gradient with respect to the input projection
    /// (`dgx`) and the recurrent product (`dgh`) of every row: in `dgates` for a gated
    /// cell, in `grad` itself for an Elman cell (where both are the same).
    pub fn record_backward(&self, rec: &mut Recorder<'a>) {
        let ck = self.cell_kernels;
        match self.strategy {
            Strategy::Persistent => {
                rec.dispatch(
                    &ck.sequence_backward,
                    self.cell_step(Default::default()),
                    &self.bindings(self.buffers.params, true),
                    [self.packing.batch() as u32, self.dirs, 1],
                );
                self.note_persistent(rec, true);
            }
            Strategy::PerStep => {
                for s in 0..self.packing.max_len() {
                    self.dispatch_rows(
                        rec,
                        &ck.step_backward,
                        self.steps_at(s, true),
                        16,
                        (true, true),
                    );
                }
            }
            Strategy::Tiled => {
                for s in 0..self.packing.max_len() {
                    let steps = self.steps_at(s, true);
                    for (d, step) in steps.iter().enumerate().take(self.dirs as usize) {
                        self.record_tiled_gradient(rec, d, step);
                    }
                    if !self.elman() {
                        self.dispatch_rows(rec, &ck.cell_backward_rows, steps, 16, (true, false));
                    }
                }
            }
        }
    }

    /// What reaches direction `d`'s `step` through `W_hh` from the step that continued
    /// it, `dgh(next)·W_hh`, added to its rows of `grad` by the tiled kernels. An Elman
    /// cell's product reads `dgh` from `grad` itself and multiplies by the slope at `h` as
    /// it is stored (every row: those with no next step get the slope alone); a gated
    /// cell's is left for `cell_backward_rows`.
    fn record_tiled_gradient(&self, rec: &mut Recorder<'a>, d: usize, step: &StepRows) {
        let b = &self.buffers;
        let (h, gh) = (self.hidden, self.gates() * self.hidden);
        let u = self.units[d];
        let col = d as u32 * h;
        let grad = Matrix::new(b.grad, 0, self.state_stride());
        let w_hh = Matrix::new(b.params, u.w_hh, h);
        let product = if self.elman() {
            let states = Matrix::new(b.states, 0, self.state_stride());
            Product {
                accumulate: true,
                a_rows: Some(step.next_rows),
                epilogue: Epilogue::TimesSlope(self.cell, states.at(step.cur, col)),
                ..Product::new(
                    (step.rows, h, h),
                    grad.at(step.next, col),
                    w_hh,
                    grad.at(step.cur, col),
                )
            }
        } else {
            if step.next_rows == 0 {
                return;
            }
            let dgh = Matrix::new(b.dgates, self.layout.dgh, self.gate_stride());
            Product {
                accumulate: true,
                ..Product::new(
                    (step.next_rows, h, gh),
                    dgh.at(step.next, d as u32 * gh),
                    w_hh,
                    grad.at(step.cur, col),
                )
            }
        };
        product.record(rec, self.kernels, b.split_scratch);
    }
}
