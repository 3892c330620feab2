//! Matrix products on the GPU (`shaders/matmul.wgsl`): which tiling runs a product of a
//! given shape, split K for long products with few output tiles, and [`ResidentProduct`],
//! a product whose operands stay on the device (for benchmarks and kernel checks).

use super::kernels::{self, Kernel, Kernels, MatmulParams, A_IN_C, TRANS_A, TRANS_B};
use super::recorder::{read_back, BindGroupCache, Recorder};
use super::GpuContext;
use crate::device::DeviceKind;
use crate::{Cell, Device, Error, Result};
use ndarray::{Array2, ArrayView2};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

/// The block of C that one workgroup computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tile {
    /// 32×32, a 4×4 block per thread, 64 threads: the most workgroups, for products whose
    /// output is too small to fill the GPU with larger tiles (a time step's), without
    /// splitting K. Only [`crate::Rnn::autotune`] or a forced plan choose it.
    Tile32,
    /// 64×64, a 4×4 block per thread: many small workgroups.
    Tile64,
    /// 128×128, an 8×8 block per thread, double-buffered: for large products.
    Tile128,
    /// 64×64 on cooperative matrices: f16 operands (scaled by a power of two per staged
    /// block), f32 accumulation, four subgroups of 32×32 each. Only on a mixed-precision
    /// device ([`crate::Device::gpu_mixed_precision`]), where every product of a model
    /// runs on this tiling or the next.
    Coop64,
    /// 128×128 on cooperative matrices, eight subgroups of 64×32 each: for large products
    /// on a mixed-precision device.
    Coop128,
}

impl Tile {
    /// Every tiling, f32 and cooperative.
    const ALL: [Tile; 5] = [
        Tile::Tile32,
        Tile::Tile64,
        Tile::Tile128,
        Tile::Coop64,
        Tile::Coop128,
    ];

    /// Whether the tiling runs on cooperative matrices (a mixed-precision device's).
    pub fn is_cooperative(self) -> bool {
        matches!(self, Tile::Coop64 | Tile::Coop128)
    }

    /// The kernel that runs the tiling on a device with `kernels`: `None` for a
    /// cooperative tiling the device did not compile (an f32 device, or an adapter
    /// without room for the 128×128 one).
    fn kernel(self, kernels: &Kernels) -> Option<&Kernel> {
        match self {
            Tile::Tile32 => Some(&kernels.matmul_tile32),
            Tile::Tile64 => Some(&kernels.matmul_tile64),
            Tile::Tile128 => Some(&kernels.matmul_tile128),
            Tile::Coop64 => kernels.matmul_coop64.as_ref(),
            Tile::Coop128 => kernels.matmul_coop128.as_ref(),
        }
    }
    /// The tile's side in elements.
    pub fn size(self) -> u32 {
        match self {
            Tile::Tile32 => 32,
            Tile::Tile64 | Tile::Coop64 => 64,
            Tile::Tile128 | Tile::Coop128 => 128,
        }
    }
}

/// How one product runs: its tiling, and into how many K ranges it is split (1: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmPlan {
    /// The workgroup tile.
    pub tile: Tile,
    /// K ranges computed apart and summed (1: none).
    pub splits: u32,
}

/// Below this many 128×128 tiles a product uses 64×64 tiles: a large GPU runs around a
/// hundred workgroups of the larger tile at once, and fewer would leave it idle.
const MIN_TILES128: u32 = 96;
/// Weight gradients of wide layers (at least this many 128×128 tiles, K at least this
/// long: every token of a batch) run on 128×128 tiles split along K into about
/// TARGET_WORKGROUPS128 workgroups, at most MAX_SPLITS128 ranges. Measured on an H200
/// (BENCHMARKS.md): 1024×1024×16384 in 1.53 ms split 4 ways against 2.6 ms on split
/// 64×64 tiles, 1024×512×16384 in 0.81 ms split 8 ways against 1.4 ms.
const MIN_TILES128_SPLIT: u32 = 16;
const MIN_K_TILE128_SPLIT: u32 = 4096;
const TARGET_WORKGROUPS128: u32 = 256;
const MAX_SPLITS128: u32 = 8;
/// Split K aims at about this many workgroups (several per multiprocessor on a large GPU)...
const TARGET_WORKGROUPS: u32 = 512;
/// ...keeping each K range at least this deep (each range's partial product costs a write
/// and a read of M×N floats; a range walks its depth in dependent slices of 16, each
/// waiting on a global load, so short ranges are what make a long K fast).
const MIN_SPLIT_DEPTH: u32 = 128;
const MAX_SPLITS: u32 = 32;
/// Every K range is a whole number of the 64×64 kernel's K slices.
const K_SLICE: u32 = 16;

impl GemmPlan {
    /// The plan for an `m × k` by `k × n` product: 128×128 tiles when there are enough of
    /// them to fill a large GPU, else 64×64 tiles, split along K when few output tiles
    /// would each walk a long K (weight gradients: K is every token of the batch).
    pub fn choose(m: u32, n: u32, k: u32) -> GemmPlan {
        let tiles128 = m.div_ceil(128) * n.div_ceil(128);
        if m >= 128 && n >= 128 && tiles128 >= MIN_TILES128 {
            return GemmPlan {
                tile: Tile::Tile128,
                splits: 1,
            };
        }
        if m >= 128 && n >= 128 && tiles128 >= MIN_TILES128_SPLIT && k >= MIN_K_TILE128_SPLIT {
            return GemmPlan {
                tile: Tile::Tile128,
                splits: (TARGET_WORKGROUPS128 / tiles128).clamp(1, MAX_SPLITS128),
            };
        }
        GemmPlan {
            tile: Tile::Tile64,
            splits: Self::splits64(m, n, k),
        }
    }

    /// The plan for a product on a mixed-precision device: [`GemmPlan::choose`]'s, each
    /// f32 tiling replaced by the cooperative one of its size (64×64 for 32×32 and 64×64;
    /// 128×128 where `wide`, the adapter having room for it, else 64×64 split as
    /// [`GemmPlan::choose`] splits those).
    pub fn choose_mixed(m: u32, n: u32, k: u32, wide: bool) -> GemmPlan {
        match GemmPlan::choose(m, n, k) {
            GemmPlan {
                tile: Tile::Tile128,
                splits,
            } if wide => GemmPlan {
                tile: Tile::Coop128,
                splits,
            },
            GemmPlan {
                tile: Tile::Tile128,
                ..
            } => GemmPlan {
                tile: Tile::Coop64,
                splits: Self::splits64(m, n, k),
            },
            plan => GemmPlan {
                tile: Tile::Coop64,
                ..plan
            },
        }
    }

    /// K ranges for a product on 64×64 tiles: enough workgroups to fill a large GPU,
    /// each range at least [`MIN_SPLIT_DEPTH`] deep.
    fn splits64(m: u32, n: u32, k: u32) -> u32 {
        let tiles64 = (m.div_ceil(64) * n.div_ceil(64)).max(1);
        (TARGET_WORKGROUPS / tiles64)
            .min(k / MIN_SPLIT_DEPTH)
            .clamp(1, MAX_SPLITS)
    }

    /// Depth of each K range, and how many ranges that makes (at most `splits`).
    fn k_chunk(&self, k: u32) -> (u32, u32) {
        let chunk = k
            .div_ceil(self.splits.max(1))
            .next_multiple_of(K_SLICE)
            .max(K_SLICE);
        (chunk, k.div_ceil(chunk).max(1))
    }

    /// Floats of scratch memory the partial products need (0 without a split).
    pub fn scratch_floats(&self, m: u32, n: u32, k: u32) -> usize {
        match self.k_chunk(k) {
            (_, ranges) if self.splits > 1 && ranges > 1 => ranges as usize * (m * n) as usize,
            _ => 0,
        }
    }
}

/// A product's shape as a tiling sees it: `op(A)` `m × k`, `op(B)` `k × n`, and whether
/// each operand is read transposed (which changes how its loads fall in memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProductShape {
    /// Rows of `op(A)` and C.
    pub m: u32,
    /// Columns of `op(B)` and C.
    pub n: u32,
    /// The depth the product sums over.
    pub k: u32,
    /// A is stored as `k × m` and read transposed.
    pub transpose_a: bool,
    /// B is stored as `n × k` and read transposed.
    pub transpose_b: bool,
}

impl ProductShape {
    fn of(params: &MatmulParams) -> ProductShape {
        ProductShape {
            m: params.m,
            n: params.n,
            k: params.k,
            transpose_a: params.flags & TRANS_A != 0,
            transpose_b: params.flags & TRANS_B != 0,
        }
    }
}

/// What [`crate::Rnn::autotune`] learned on one device: the plan measured fastest for
/// each product shape it tried (kept for every model on the device, for as long as the
/// device lives), and while it watches a pass, the shapes that pass records.
#[derive(Default)]
pub(crate) struct Tuning {
    plans: HashMap<ProductShape, GemmPlan>,
    watched: Option<HashSet<ProductShape>>,
}

fn tuning(ctx: &GpuContext) -> MutexGuard<'_, Tuning> {
    // a map and a set: a panic while one was held leaves nothing half-done
    ctx.tuning.lock().unwrap_or_else(|e| e.into_inner())
}

/// The built-in plan for an `m × k` by `k × n` product on `ctx`'s device:
/// [`GemmPlan::choose_mixed`]'s on a mixed-precision device, else [`GemmPlan::choose`]'s.
fn built_in(ctx: &GpuContext, m: u32, n: u32, k: u32) -> GemmPlan {
    if let Some(coop) = ctx.coop {
        GemmPlan::choose_mixed(m, n, k, coop.wide)
    } else {
        GemmPlan::choose(m, n, k)
    }
}

/// The plan a product of `shape` runs with on `ctx`'s device: the tuned one, if any,
/// else the built-in one ([`built_in`]).
fn plan_for(ctx: &GpuContext, shape: ProductShape) -> GemmPlan {
    let mut tuning = tuning(ctx);
    if let Some(watched) = &mut tuning.watched {
        watched.insert(shape);
    }
    tuning
        .plans
        .get(&shape)
        .copied()
        .unwrap_or_else(|| built_in(ctx, shape.m, shape.n, shape.k))
}

/// Starts noting the shape of every product recorded on `ctx`'s device.
pub(crate) fn watch_products(ctx: &GpuContext) {
    tuning(ctx).watched = Some(HashSet::new());
}

/// Stops noting product shapes; those noted since [`watch_products`], in order.
pub(crate) fn watched_products(ctx: &GpuContext) -> Vec<ProductShape> {
    let mut shapes: Vec<_> = tuning(ctx).watched.take().into_iter().flatten().collect();
    shapes.sort();
    shapes
}

/// Whether a plan for `shape` was already measured on `ctx`'s device.
pub(crate) fn is_tuned(ctx: &GpuContext, shape: ProductShape) -> bool {
    tuning(ctx).plans.contains_key(&shape)
}

/// Scratch floats for the largest of these `(m, n, k)` products under the plans they may
/// run with on `ctx`'s device (built-in or tuned, either way round).
pub(crate) fn scratch_for(ctx: &GpuContext, shapes: &[(u32, u32, u32)]) -> usize {
    let tuning = tuning(ctx);
    shapes
        .iter()
        .map(|&(m, n, k)| {
            let tuned = tuning
                .plans
                .iter()
                .filter(|(s, _)| (s.m, s.n, s.k) == (m, n, k))
                .map(|(_, plan)| plan.scratch_floats(m, n, k));
            tuned
                .chain([built_in(ctx, m, n, k).scratch_floats(m, n, k)])
                .max()
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0)
}

/// A matrix inside a buffer: where its first element is, and how far apart its rows are
/// (in floats), so that a block of a wider matrix (one direction's columns, one step's
/// rows, a tensor of the flat parameter buffer) is read or written in place.
#[derive(Clone, Copy)]
pub(crate) struct Matrix<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u32,
    pub stride: u32,
}

impl<'a> Matrix<'a> {
    pub fn new(buffer: &'a wgpu::Buffer, offset: u32, stride: u32) -> Self {
        Matrix {
            buffer,
            offset,
            stride,
        }
    }

    /// The block from row `row`, column `col` on.
    pub fn at(self, row: u32, col: u32) -> Self {
        Matrix {
            offset: self.offset + row * self.stride + col,
            ..self
        }
    }
}

/// What is done to each element of C as it is stored.
#[derive(Clone, Copy)]
pub(crate) enum Epilogue<'a> {
    None,
    /// An Elman cell's nonlinearity.
    Activate(Cell),
    /// Times the Elman cell's derivative at its output h, a matrix laid out as C.
    TimesSlope(Cell, Matrix<'a>),
    /// Times a mask laid out as C.
    TimesMask(Matrix<'a>),
}

/// One matrix product, `C = op(A)·op(B) (+ C) (+ bias)`, then its epilogue.
#[derive(Clone, Copy)]
pub(crate) struct Product<'a> {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub a: Matrix<'a>,
    pub a_transposed: bool,
    pub b: Matrix<'a>,
    pub b_transposed: bool,
    pub c: Matrix<'a>,
    /// Adds to C instead of overwriting it.
    pub accumulate: bool,
    /// A vector of `n` added to every row of C: its buffer and offset.
    pub bias: Option<(&'a wgpu::Buffer, u32)>,
    pub epilogue: Epilogue<'a>,
    /// Rows of op(A) that exist, the rest reading as zero (`None`: all `m`).
    pub a_rows: Option<u32>,
}

impl<'a> Product<'a> {
    /// `C = op(A)·op(B)` for `op(A)` of `m × k` and `op(B)` of `k × n`, both as stored.
    pub fn new((m, n, k): (u32, u32, u32), a: Matrix<'a>, b: Matrix<'a>, c: Matrix<'a>) -> Self {
        Product {
            m,
            n,
            k,
            a,
            a_transposed: false,
            b,
            b_transposed: false,
            c,
            accumulate: false,
            bias: None,
            epilogue: Epilogue::None,
            a_rows: None,
        }
    }

    /// Records the product under the plan its shape chooses, splitting K into `scratch`
    /// (room for `scratch.1` floats) where that pays. A that lives in C's buffer is read
    /// from there (the kernel binds that buffer once).
    pub fn record(
        self,
        rec: &mut Recorder<'a>,
        kernels: &'a Kernels,
        scratch: (&'a wgpu::Buffer, usize),
    ) {
        let mut flags = 0;
        if self.a_transposed {
            flags |= TRANS_A;
        }
        if self.b_transposed {
            flags |= TRANS_B;
        }
        // bindings a product does not read get B's buffer, which it reads anyway: never
        // C's, which is bound for writing
        debug_assert!(
            self.b.buffer != self.c.buffer,
            "B may not live in C's buffer"
        );
        let a = if self.a.buffer == self.c.buffer {
            flags |= A_IN_C;
            self.b.buffer
        } else {
            self.a.buffer
        };
        let (epilogue, bias) = match self.epilogue {
            Epilogue::None => (0, None),
            Epilogue::Activate(cell) => (
                match cell {
                    Cell::Relu => kernels::EPILOGUE_RELU,
                    _ => kernels::EPILOGUE_TANH,
                },
                None,
            ),
            Epilogue::TimesSlope(cell, h) => (
                match cell {
                    Cell::Relu => kernels::EPILOGUE_RELU_SLOPE,
                    _ => kernels::EPILOGUE_TANH_SLOPE,
                },
                Some(h),
            ),
            Epilogue::TimesMask(mask) => (kernels::EPILOGUE_MASK, Some(mask)),
        };
        // an epilogue reading a matrix reads it through the bias binding, laid out as C
        let (bias_buffer, bias_offset) = match (self.bias, bias) {
            (Some(_), Some(_)) => unreachable!("a bias and an epilogue matrix share a binding"),
            (Some((buffer, offset)), None) => {
                flags |= kernels::ADD_BIAS;
                (buffer, offset)
            }
            (None, Some(matrix)) => {
                debug_assert_eq!(matrix.stride, self.c.stride, "laid out as C");
                (matrix.buffer, matrix.offset)
            }
            (None, None) => (self.b.buffer, 0),
        };
        debug_assert!(
            bias_buffer != self.c.buffer,
            "the bias binding is read-only"
        );
        // no rows of A: no product (the kernel reads a_rows 0 as all of them)
        let k = if self.a_rows == Some(0) { 0 } else { self.k };
        let params = MatmulParams {
            m: self.m,
            n: self.n,
            k,
            flags,
            a_offset: self.a.offset,
            b_offset: self.b.offset,
            c_offset: self.c.offset,
            bias_offset,
            lda: self.a.stride,
            ldb: self.b.stride,
            ldc: self.c.stride,
            alpha: 1.0,
            beta: if self.accumulate { 1.0 } else { 0.0 },
            a_rows: self.a_rows.unwrap_or(0),
            epilogue,
            ..Default::default()
        };
        record_product(
            rec,
            kernels,
            params,
            [a, self.b.buffer, bias_buffer, self.c.buffer],
            scratch,
        );
    }
}

/// Records `C = alpha·op(A)·op(B) + beta·C (+ bias)` (and its epilogue) under the plan
/// its shape runs with on this device (tuned, or [`GemmPlan::choose`]'s). `buffers` are
/// A, B, bias, C as the kernel binds them (with [`A_IN_C`], A's entry is ignored). A
/// split that `scratch` (with room for `scratch_floats` floats) cannot hold runs unsplit
/// instead.
pub(crate) fn record_product<'a>(
    rec: &mut Recorder<'a>,
    kernels: &'a Kernels,
    params: MatmulParams,
    buffers: [&'a wgpu::Buffer; 4],
    scratch: (&'a wgpu::Buffer, usize),
) {
    let plan = plan_for(rec.ctx(), ProductShape::of(&params));
    record_planned(rec, kernels, plan, params, buffers, scratch);
}

fn record_planned<'a>(
    rec: &mut Recorder<'a>,
    kernels: &'a Kernels,
    plan: GemmPlan,
    params: MatmulParams,
    [a, b, bias, c]: [&'a wgpu::Buffer; 4],
    (scratch, scratch_floats): (&'a wgpu::Buffer, usize),
) {
    // plans come from `plan_for` or a `ResidentProduct` on this device, which refuse a
    // tiling without a kernel here; the f32 tile of the same size stands in regardless
    let kernel = plan
        .tile
        .kernel(kernels)
        .unwrap_or(if plan.tile.size() == 128 {
            &kernels.matmul_tile128
        } else {
            &kernels.matmul_tile64
        });
    let size = plan.tile.size();
    let (m, n, k) = (params.m, params.n, params.k);
    let groups = [n.div_ceil(size), m.div_ceil(size), 1];
    let needed = plan.scratch_floats(m, n, k);
    let flops = 2.0 * m as f64 * n as f64 * k as f64;
    if needed == 0 || needed > scratch_floats {
        let whole = MatmulParams {
            k_chunk: 0,
            splits: 1,
            split_stride: 0,
            ..params
        };
        rec.dispatch(kernel, whole, &[a, b, bias, c], groups);
        if rec.profiling() {
            rec.note(describe_product(rec, &params, plan.tile, 1), flops);
        }
        return;
    }
    let (k_chunk, ranges) = plan.k_chunk(k);
    // the partial products go to the scratch: A that lived in C's buffer is bound as A
    let a = if params.flags & A_IN_C != 0 { c } else { a };
    let partial = MatmulParams {
        flags: params.flags & !A_IN_C,
        c_offset: 0,
        ldc: n,
        k_chunk,
        splits: ranges,
        split_stride: m * n,
        ..params
    };
    rec.dispatch(
        kernel,
        partial,
        &[a, b, bias, scratch],
        [groups[0], groups[1], ranges],
    );
    if rec.profiling() {
        rec.note(describe_product(rec, &params, plan.tile, ranges), flops);
    }
    let sum = MatmulParams {
        k_chunk: 0,
        splits: ranges,
        split_stride: m * n,
        ..params
    };
    rec.dispatch_1d(
        &kernels.matmul_sum_splits,
        sum,
        &[scratch, b, bias, c],
        (m * n) as usize,
    );
    if rec.profiling() {
        let rows = product_rows(rec, m);
        rec.note(format!("{rows}×{n}, {ranges} partial products"), 0.0);
    }
}

/// A product's rows in a profile: `m`, or "rows" in a time loop, whose steps' products
/// are counted together.
fn product_rows(rec: &Recorder<'_>, m: u32) -> String {
    if rec.in_steps() {
        "rows".into()
    } else {
        m.to_string()
    }
}

/// A product for a profile: `m×n×k` (`ᵀ` on an operand read transposed), its tile and
/// K ranges.
fn describe_product(rec: &Recorder<'_>, params: &MatmulParams, tile: Tile, ranges: u32) -> String {
    let shape = ProductShape::of(params);
    let t = |transposed, name| if transposed { name } else { "" };
    format!(
        "{}×{}×{}{}{}, {}×{} tiles, {} K range{}",
        product_rows(rec, shape.m),
        shape.n,
        shape.k,
        t(shape.transpose_a, " Aᵀ"),
        t(shape.transpose_b, " Bᵀ"),
        tile.size(),
        tile.size(),
        ranges,
        if ranges == 1 { "" } else { "s" }
    )
}

/// `C = op(A)·op(B)` with A, B and C kept on the GPU, run as many times as asked in one
/// submission: the matrix product alone, for benchmarks (`cargo bench`'s `matmul` group)
/// and for checking every tiling against the CPU.
pub struct ResidentProduct {
    ctx: Arc<GpuContext>,
    plan: GemmPlan,
    params: MatmulParams,
    a: wgpu::Buffer,
    b: wgpu::Buffer,
    c: wgpu::Buffer,
    scratch: wgpu::Buffer,
    scratch_floats: usize,
    cache: BindGroupCache,
}

impl ResidentProduct {
    /// Uploads `a` and `b`. `op(A)` is `a` or, with `transpose_a`, `aᵀ` (likewise B);
    /// `op(A)` must be `m × k` and `op(B)` `k × n`. `plan` forces a tiling and split
    /// (`None`: the one the library would choose for this shape).
    pub fn new(
        device: &Device,
        a: ArrayView2<f32>,
        b: ArrayView2<f32>,
        (transpose_a, transpose_b): (bool, bool),
        plan: Option<GemmPlan>,
    ) -> Result<ResidentProduct> {
        let DeviceKind::Gpu(ctx) = &device.kind else {
            return Err(Error::InvalidConfig {
                what: "the device of a resident matrix product",
                expected: "a GPU device",
                got: device.describe(),
            });
        };
        Self::on(ctx, a, b, (transpose_a, transpose_b), plan)
    }

    /// [`ResidentProduct::new`] on a context.
    fn on(
        ctx: &Arc<GpuContext>,
        a: ArrayView2<f32>,
        b: ArrayView2<f32>,
        (transpose_a, transpose_b): (bool, bool),
        plan: Option<GemmPlan>,
    ) -> Result<ResidentProduct> {
        // the shape of op(X): X's, or reversed
        let op = |x: &ArrayView2<f32>, t: bool| if t { (x.ncols(), x.nrows()) } else { x.dim() };
        let (m, k) = op(&a, transpose_a);
        let (k_b, n) = op(&b, transpose_b);
        if k != k_b || m == 0 || n == 0 || k == 0 {
            return Err(Error::ShapeMismatch {
                what: "a matrix product's operands".into(),
                expected: "op(A) m × k and op(B) k × n, all sizes at least 1".into(),
                got: format!("op(A) {m} × {k}, op(B) {k_b} × {n}"),
            });
        }
        let as_u32 = |v: usize| {
            u32::try_from(v).map_err(|_| Error::ExceedsDeviceLimit {
                what: "a matrix dimension".into(),
                needed: v as u64,
                limit: u32::MAX as u64,
                hint: "use smaller matrices",
            })
        };
        let (m32, n32, k32) = (as_u32(m)?, as_u32(n)?, as_u32(k)?);
        let upload = |label: &str, x: ArrayView2<f32>| -> Result<wgpu::Buffer> {
            let data: Vec<f32> = x.as_standard_layout().iter().copied().collect();
            let buffer = super::buffers::storage_checked(ctx, label, data.len())?;
            ctx.queue
                .write_buffer(&buffer, 0, bytemuck::cast_slice(&data));
            Ok(buffer)
        };
        // stored layouts: A is [m, k] or, transposed, [k, m]; likewise B
        let a_buf = upload("matmul a", a)?;
        let b_buf = upload("matmul b", b)?;
        let c = super::buffers::storage_checked(ctx, "matmul c", m * n)?;
        let flags = if transpose_a { TRANS_A } else { 0 } | if transpose_b { TRANS_B } else { 0 };
        let params = MatmulParams {
            m: m32,
            n: n32,
            k: k32,
            flags,
            lda: a.ncols() as u32,
            ldb: b.ncols() as u32,
            ldc: n32,
            alpha: 1.0,
            ..Default::default()
        };
        let default = plan_for(ctx, ProductShape::of(&params));
        let mut product = ResidentProduct {
            ctx: ctx.clone(),
            plan: default,
            params,
            a: a_buf,
            b: b_buf,
            c,
            scratch: super::buffers::storage(ctx, "matmul scratch", 0),
            scratch_floats: 0,
            cache: Default::default(),
        };
        product.set_plan(plan.unwrap_or(default))?;
        Ok(product)
    }

    /// Runs the product under `plan` from now on (its tiling and split).
    pub fn set_plan(&mut self, plan: GemmPlan) -> Result<()> {
        let ctx = &self.ctx;
        let MatmulParams { m, n, k, .. } = self.params;
        if plan.splits == 0 {
            return Err(Error::InvalidConfig {
                what: "GemmPlan::splits",
                expected: "at least 1",
                got: "0".into(),
            });
        }
        if plan.tile.kernel(&ctx.kernels).is_none() {
            return Err(Error::Unsupported(format!(
                "the cooperative-matrix tiling {:?} runs only on a mixed-precision device (Device::gpu_mixed_precision) with room for it, not on {}",
                plan.tile,
                ctx.describe()
            )));
        }
        let max_groups = ctx.limits.max_compute_workgroups_per_dimension;
        let size = plan.tile.size();
        for (what, needed) in [
            ("workgroups along N", n.div_ceil(size)),
            ("workgroups along M", m.div_ceil(size)),
            ("K splits", plan.splits),
        ] {
            if needed > max_groups {
                return Err(Error::ExceedsDeviceLimit {
                    what: what.into(),
                    needed: needed as u64,
                    limit: max_groups as u64,
                    hint: "use smaller matrices",
                });
            }
        }
        let scratch_floats = plan.scratch_floats(m, n, k);
        if scratch_floats > self.scratch_floats {
            self.scratch = super::buffers::storage_checked(ctx, "matmul scratch", scratch_floats)?;
            self.scratch_floats = scratch_floats;
            // the groups bound the old scratch
            self.cache = Default::default();
        }
        self.plan = plan;
        Ok(())
    }

    /// The tiling and split this product runs with.
    pub fn plan(&self) -> GemmPlan {
        self.plan
    }

    /// Runs the product `repeats` times (one submission) and waits for the GPU.
    pub fn run(&mut self, repeats: usize) -> Result<()> {
        let ctx = self.ctx.clone();
        let mut rec = Recorder::new(&ctx);
        for _ in 0..repeats {
            record_planned(
                &mut rec,
                &ctx.kernels,
                self.plan,
                self.params,
                [&self.a, &self.b, &self.a, &self.c],
                (&self.scratch, self.scratch_floats),
            );
        }
        rec.submit(&mut self.cache)?;
        ctx.wait()
    }

    /// C as last computed (zeros before the first [`ResidentProduct::run`]).
    pub fn output(&self) -> Result<Array2<f32>> {
        let (m, n) = (self.params.m as usize, self.params.n as usize);
        let data = read_back(&self.ctx, &[(&self.c, 0, m * n)])?
            .pop()
            .unwrap_or_default();
        Array2::from_shape_vec((m, n), data).map_err(|e| Error::Gpu(format!("read-back: {e}")))
    }
}

/// One product shape as [`crate::Rnn::autotune`] measured it: the plan it ran with
/// before and the plan kept, each with its time per product.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TunedProduct {
    /// The product's shape.
    pub shape: ProductShape,
    /// The plan it ran with before, and its time per product.
    pub before: (GemmPlan, Duration),
    /// The plan kept, and its time per product.
    pub chosen: (GemmPlan, Duration),
}

/// A measured plan replaces the built-in one only when faster by this fraction: less
/// is timing noise.
const TUNE_MARGIN: f64 = 0.03;
/// Each timing repeats the product in one submission until it takes about this long,
/// so that the submission's round trip does not swamp small products.
const TUNE_TIMING: Duration = Duration::from_millis(1);
const TUNE_MAX_REPEATS: u32 = 32;
/// Timings per plan; the fastest counts.
const TUNE_TIMINGS: u32 = 3;

/// The plans worth measuring for `shape`, `first` first: each tiling of `tiles` (the
/// f32 ones, or on a mixed-precision device the cooperative ones it has, so that tuning
/// never changes a model's precision) unsplit and split 2 to 16 ways where K is deep
/// enough, each distinct split (number of K ranges) once, a 128×128 tile only where it
/// covers at least one whole tile, and no tiling that would need more workgroups along a
/// side than the adapter dispatches.
fn candidates(
    shape: ProductShape,
    first: GemmPlan,
    limits: &wgpu::Limits,
    tiles: &[Tile],
) -> Vec<GemmPlan> {
    let ProductShape { m, n, k, .. } = shape;
    let mut plans = vec![first];
    let mut seen = HashSet::from([(first.tile, first.k_chunk(k).1)]);
    for &tile in tiles {
        let side = tile.size();
        let groups = m.div_ceil(side).max(n.div_ceil(side));
        if side == 128 && (m < 128 || n < 128)
            || groups > limits.max_compute_workgroups_per_dimension
        {
            continue;
        }
        for splits in [1, 2, 4, 8, 16] {
            let plan = GemmPlan { tile, splits };
            let ranges = plan.k_chunk(k).1;
            let floats = plan.scratch_floats(m, n, k) as u64 * 4;
            if floats <= limits.max_storage_buffer_binding_size && seen.insert((tile, ranges)) {
                plans.push(plan);
            }
        }
    }
    plans
}

/// Measures the product of `shape` on `ctx`'s device under each candidate plan and keeps
/// the fastest for that shape on this device (the built-in plan unless another beats it
/// by [`TUNE_MARGIN`]). `None`, and nothing kept, when trying every plan would take more
/// than `budget` (estimated from one run of the built-in plan).
pub(crate) fn tune_product(
    ctx: &Arc<GpuContext>,
    shape: ProductShape,
    budget: Duration,
) -> Result<Option<TunedProduct>> {
    let ProductShape { m, n, k, .. } = shape;
    let (a, b) = crate::internals::workloads::matmul_operands(m as usize, n as usize, k as usize);
    // stored as the model stores them: a transposed operand is kept as its transpose
    let a = if shape.transpose_a { a.t() } else { a.view() };
    let b = if shape.transpose_b { b.t() } else { b.view() };
    let mut product = ResidentProduct::on(ctx, a, b, (shape.transpose_a, shape.transpose_b), None)?;
    let before = product.plan();
    let plans = candidates(shape, before, &ctx.limits, &tilings(ctx));
    product.run(1)?;
    let once = timed(|| product.run(1))?;
    let repeats = (TUNE_TIMING.as_secs_f64() / once.as_secs_f64().max(1e-9))
        .ceil()
        .clamp(1.0, TUNE_MAX_REPEATS as f64) as u32;
    let estimate = once * plans.len() as u32 * (1 + TUNE_TIMINGS * repeats);
    if estimate > budget {
        return Ok(None);
    }
    let mut times = Vec::with_capacity(plans.len());
    for &plan in &plans {
        product.set_plan(plan)?;
        product.run(1)?;
        let mut best = Duration::MAX;
        for _ in 0..TUNE_TIMINGS {
            best = best.min(timed(|| product.run(repeats as usize))? / repeats);
        }
        times.push((plan, best));
    }
    let before = times[0];
    let fastest = *times
        .iter()
        .min_by_key(|(_, t)| *t)
        .expect("one plan at least");
    let chosen = if fastest.1.as_secs_f64() < before.1.as_secs_f64() * (1.0 - TUNE_MARGIN) {
        fastest
    } else {
        before
    };
    tuning(ctx).plans.insert(shape, chosen.0);
    Ok(Some(TunedProduct {
        shape,
        before,
        chosen,
    }))
}

/// The tilings products may run on on `ctx`'s device: the f32 ones, or on a
/// mixed-precision device the cooperative ones its kernels have.
pub(crate) fn tilings(ctx: &GpuContext) -> Vec<Tile> {
    Tile::ALL
        .into_iter()
        .filter(|t| t.is_cooperative() == ctx.coop.is_some() && t.kernel(&ctx.kernels).is_some())
        .collect()
}

/// How long `run` takes.
fn timed(run: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let start = Instant::now();
    run()?;
    Ok(start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(m: u32, n: u32, k: u32) -> ProductShape {
        ProductShape {
            m,
            n,
            k,
            transpose_a: false,
            transpose_b: false,
        }
    }

    #[test]
    fn candidates_fit_the_adapter_and_try_each_split_once() {
        let limits = wgpu::Limits {
            max_compute_workgroups_per_dimension: 100,
            ..wgpu::Limits::default()
        };
        // 5,000 rows: 157 tiles of 32 along M, past the limit; 79 of 64 and 40 of 128
        let s = shape(5000, 200, 1024);
        let first = GemmPlan::choose(s.m, s.n, s.k);
        let f32_tiles = [Tile::Tile32, Tile::Tile64, Tile::Tile128];
        let plans = candidates(s, first, &limits, &f32_tiles);
        assert_eq!(plans[0], first);
        assert!(plans.iter().all(|p| p.tile != Tile::Tile32), "{plans:?}");
        for tile in [Tile::Tile64, Tile::Tile128] {
            let ranges: Vec<u32> = plans
                .iter()
                .filter(|p| p.tile == tile)
                .map(|p| p.k_chunk(s.k).1)
                .collect();
            let mut distinct = ranges.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), ranges.len(), "{tile:?}: {ranges:?}");
            assert_eq!(distinct, [1, 2, 4, 8, 16], "{tile:?}");
        }
        // a small product: every tiling but the 128×128 one, which would be mostly idle
        let plans = candidates(
            shape(8, 300, 300),
            GemmPlan::choose(8, 300, 300),
            &limits,
            &f32_tiles,
        );
        assert!(plans.iter().any(|p| p.tile == Tile::Tile32));
        assert!(plans.iter().all(|p| p.tile != Tile::Tile128), "{plans:?}");
        assert!(plans.iter().all(|p| !p.tile.is_cooperative()), "{plans:?}");
        // a mixed-precision device tunes among its own tilings only
        let first = GemmPlan::choose_mixed(s.m, s.n, s.k, true);
        let plans = candidates(s, first, &limits, &[Tile::Coop64, Tile::Coop128]);
        assert_eq!(plans[0], first);
        assert!(plans.iter().all(|p| p.tile.is_cooperative()), "{plans:?}");
        assert!(plans.iter().any(|p| p.tile == Tile::Coop128), "{plans:?}");
        assert!(plans.len() > 2, "{plans:?}");
    }

    #[test]
    fn mixed_precision_plans_mirror_the_f32_ones() {
        for (m, n, k) in [
            (4096, 4096, 4096),
            (1024, 1024, 16384),
            (256, 1024, 1024),
            (8, 8, 200),
        ] {
            let f32_plan = GemmPlan::choose(m, n, k);
            let wide = GemmPlan::choose_mixed(m, n, k, true);
            assert!(wide.tile.is_cooperative());
            assert_eq!(
                wide.tile.size(),
                f32_plan.tile.size().max(64),
                "{m}x{n}x{k}"
            );
            assert_eq!(wide.splits, f32_plan.splits, "{m}x{n}x{k}");
            // without room for the 128×128 tile: the 64×64 one, split to fill the GPU
            let narrow = GemmPlan::choose_mixed(m, n, k, false);
            assert_eq!(narrow.tile, Tile::Coop64, "{m}x{n}x{k}");
            assert_eq!(narrow.splits, GemmPlan::splits64(m, n, k), "{m}x{n}x{k}");
        }
    }
}
