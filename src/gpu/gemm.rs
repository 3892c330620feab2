//! Matrix products on the GPU (`shaders/matmul.wgsl`): which tiling runs a product of a
//! given shape, split K for long products with few output tiles, and [`ResidentProduct`],
//! a product whose operands stay on the device (for benchmarks and kernel checks).

use super::kernels::{self, Kernels, MatmulParams, A_IN_C, TRANS_A, TRANS_B};
use super::recorder::{read_back, BindGroupCache, Recorder};
use super::GpuContext;
use crate::device::DeviceKind;
use crate::{Cell, Device, Error, Result};
use ndarray::{Array2, ArrayView2};
use std::sync::Arc;

/// The block of C that one workgroup computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tile {
    /// 64×64, a 4×4 block per thread: many small workgroups.
    Tile64,
    /// 128×128, an 8×8 block per thread, double-buffered: for large products.
    Tile128,
}

impl Tile {
    /// The tile's side in elements.
    pub fn size(self) -> u32 {
        match self {
            Tile::Tile64 => 64,
            Tile::Tile128 => 128,
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
        let tiles64 = (m.div_ceil(64) * n.div_ceil(64)).max(1);
        let splits = (TARGET_WORKGROUPS / tiles64)
            .min(k / MIN_SPLIT_DEPTH)
            .clamp(1, MAX_SPLITS);
        GemmPlan {
            tile: Tile::Tile64,
            splits,
        }
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

/// Scratch floats for the largest of these `(m, n, k)` products under their chosen plans.
pub(crate) fn scratch_for(shapes: &[(u32, u32, u32)]) -> usize {
    shapes
        .iter()
        .map(|&(m, n, k)| GemmPlan::choose(m, n, k).scratch_floats(m, n, k))
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
/// its shape chooses. `buffers` are A, B, bias, C as the kernel binds them (with
/// [`A_IN_C`], A's entry is ignored). A split that `scratch` (with room for
/// `scratch_floats` floats) cannot hold runs unsplit instead.
pub(crate) fn record_product<'a>(
    rec: &mut Recorder<'a>,
    kernels: &'a Kernels,
    params: MatmulParams,
    buffers: [&'a wgpu::Buffer; 4],
    scratch: (&'a wgpu::Buffer, usize),
) {
    let plan = GemmPlan::choose(params.m, params.n, params.k);
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
    let kernel = match plan.tile {
        Tile::Tile64 => &kernels.matmul_tile64,
        Tile::Tile128 => &kernels.matmul_tile128,
    };
    let size = plan.tile.size();
    let (m, n, k) = (params.m, params.n, params.k);
    let groups = [n.div_ceil(size), m.div_ceil(size), 1];
    let needed = plan.scratch_floats(m, n, k);
    if needed == 0 || needed > scratch_floats {
        let whole = MatmulParams {
            k_chunk: 0,
            splits: 1,
            split_stride: 0,
            ..params
        };
        rec.dispatch(kernel, whole, &[a, b, bias, c], groups);
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
        let plan = plan.unwrap_or_else(|| GemmPlan::choose(m32, n32, k32));
        if plan.splits == 0 {
            return Err(Error::InvalidConfig {
                what: "GemmPlan::splits",
                expected: "at least 1",
                got: "0".into(),
            });
        }
        let scratch_floats = plan.scratch_floats(m32, n32, k32);
        let max_groups = ctx.limits.max_compute_workgroups_per_dimension;
        let size = plan.tile.size();
        for (what, needed) in [
            ("workgroups along N", n32.div_ceil(size)),
            ("workgroups along M", m32.div_ceil(size)),
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
        let scratch = super::buffers::storage_checked(ctx, "matmul scratch", scratch_floats)?;
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
        Ok(ResidentProduct {
            ctx: ctx.clone(),
            plan,
            params,
            a: a_buf,
            b: b_buf,
            c,
            scratch,
            scratch_floats,
            cache: Default::default(),
        })
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
