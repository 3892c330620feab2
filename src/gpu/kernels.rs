//! Compute pipelines, compiled once per device, and the uniform parameter block of each
//! kernel family, declared field for field as in its WGSL file.

use super::shaders;
use crate::{Cell, Error, Result};
use bytemuck::{Pod, Zeroable};

/// How a kernel binds each of its buffers (binding 0 is always its uniform block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    ReadWrite,
}

use Access::{Read, ReadWrite as Write};

pub(crate) struct Kernel {
    pub id: usize,
    pub name: &'static str,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    /// Size of the uniform block in bytes.
    pub uniform_size: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct MatmulParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub flags: u32,
    pub a_offset: u32,
    pub b_offset: u32,
    pub c_offset: u32,
    pub bias_offset: u32,
    pub lda: u32,
    pub ldb: u32,
    pub ldc: u32,
    pub alpha: f32,
    pub beta: f32,
    /// Split K: depth of each workgroup layer's K range (0: all of K).
    pub k_chunk: u32,
    /// `matmul_sum_splits`: how many partial products to add.
    pub splits: u32,
    /// Elements between consecutive partial products.
    pub split_stride: u32,
    /// Rows of op(A) that exist, the rest read as zero (0: all `m`).
    pub a_rows: u32,
    /// Element-wise work as C is stored: one of the `EPILOGUE_*` values.
    pub epilogue: u32,
    pub _pad: [u32; 2],
}

pub(crate) const TRANS_A: u32 = 1;
pub(crate) const TRANS_B: u32 = 2;
pub(crate) const ADD_BIAS: u32 = 4;
/// A is read from C's buffer (bound once, read-write).
pub(crate) const A_IN_C: u32 = 8;

pub(crate) const EPILOGUE_TANH: u32 = 1;
pub(crate) const EPILOGUE_RELU: u32 = 2;
/// Times tanh'(h), h read from the bias binding at C's position.
pub(crate) const EPILOGUE_TANH_SLOPE: u32 = 3;
pub(crate) const EPILOGUE_RELU_SLOPE: u32 = 4;
/// Times a mask read from the bias binding at C's position.
pub(crate) const EPILOGUE_MASK: u32 = 5;

/// One direction's step in a cell kernel (`shaders/cell_common.wgsl`): the packed rows it
/// runs, where its previous (forward) and next (backward) states are, and where its
/// parameters and columns are.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct DirStep {
    pub rows: u32,
    pub cur: u32,
    pub prev: u32,
    pub prev_rows: u32,
    pub next: u32,
    pub next_rows: u32,
    pub w_hh: u32,
    pub b_hh: u32,
    pub gate_col: u32,
    pub state_col: u32,
    pub initial: u32,
    pub aux: u32,
}

/// The parameter block of every cell kernel (`recurrent.wgsl`, `cells.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct CellStep {
    pub hidden: u32,
    pub gate_stride: u32,
    pub state_stride: u32,
    pub has_initial: u32,
    pub lengths: u32,
    pub saved_aux: u32,
    pub dgh: u32,
    pub initial_c: u32,
    pub dir: [DirStep; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct LossParams {
    pub rows: u32,
    pub cols: u32,
    pub scale: f32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct ReduceParams {
    pub len: u32,
    pub offset: u32,
    pub stride: u32,
    pub cols: u32,
    pub out_offset: u32,
    pub scale: f32,
    pub chunk_rows: u32,
    pub flag_offset: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct RowsParams {
    pub rows: u32,
    pub cols: u32,
    pub src_offset: u32,
    pub dst_offset: u32,
    pub src_stride: u32,
    pub dst_stride: u32,
    pub index_offset: u32,
    pub extra_offset: u32,
}

/// `gather_previous`'s index values (`shaders/rows.wgsl`): a row of the initial state
/// (ORed with its number), or none (a zero state).
pub(crate) const INITIAL_ROW: u32 = 0x8000_0000;
pub(crate) const NO_ROW: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct OptimParams {
    pub len: u32,
    pub has_clip: u32,
    pub max_norm: f32,
    pub lr: f32,
    pub momentum: f32,
    pub beta2: f32,
    pub eps: f32,
    pub step_size: f32,
    pub bias_correction2_sqrt: f32,
    /// Adam: `1 - lr · weight_decay` (decoupled weight decay; 1 for none)
    pub decay: f32,
    pub _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct EmbedParams {
    pub rows: u32,
    pub width: u32,
    pub vocab: u32,
    pub w_offset: u32,
    pub b_offset: u32,
    pub ranges_offset: u32,
    pub order_offset: u32,
    pub stride: u32,
    pub col_offset: u32,
    pub _pad: [u32; 3],
}

/// Every pipeline unfold uses.
pub(crate) struct Kernels {
    pub matmul_tile32: Kernel,
    pub matmul_tile64: Kernel,
    pub matmul_tile128: Kernel,
    pub matmul_sum_splits: Kernel,
    /// The product on cooperative matrices (`shaders/matmul_coop.wgsl`), 64×64 and
    /// 128×128 tiles: only on a mixed-precision device (the 128×128 one where it fits
    /// the adapter's workgroup limits).
    pub matmul_coop64: Option<Kernel>,
    pub matmul_coop128: Option<Kernel>,
    pub cross_entropy: Kernel,
    pub squared_error: Kernel,
    pub partial_sums: Kernel,
    pub finish_sum: Kernel,
    pub partial_norms: Kernel,
    pub finish_norm: Kernel,
    pub column_partials: Kernel,
    pub column_finish: Kernel,
    pub gather_rows: Kernel,
    pub scatter_rows: Kernel,
    pub gather_previous: Kernel,
    pub apply_mask: Kernel,
    pub transpose_with_column: Kernel,
    pub prepare_update: Kernel,
    pub check_sgd: Kernel,
    pub check_momentum: Kernel,
    pub check_adam: Kernel,
    pub sgd: Kernel,
    pub momentum: Kernel,
    pub adam: Kernel,
    pub embed: Kernel,
    pub embed_grad: Kernel,
    /// Each cell's kernels, compiled on first use ([`Kernels::cell`]).
    cells: [std::sync::OnceLock<CellKernels>; 4],
    checks: ShaderChecks,
}

/// The kernels of one cell (the WGSL constant `CELL` fixed at pipeline creation): the
/// time loops' kernels (`recurrent.wgsl`) and the element-wise step on its own
/// (`cells.wgsl`). All bind the same buffers (`shaders/cell_common.wgsl`).
pub(crate) struct CellKernels {
    pub step_forward: Kernel,
    pub step_backward: Kernel,
    pub sequence_forward: Kernel,
    /// `sequence_forward` for steps of more than 256 gate columns (gated cells past
    /// hidden 64 or 85; `None` for Elman cells, which never have them).
    pub sequence_forward_wide: Option<Kernel>,
    pub sequence_backward: Kernel,
    pub cell_forward_rows: Kernel,
    pub cell_backward_rows: Kernel,
}

/// How the cell kernels bind their buffers: params, states, saved, initial, grad,
/// dgates, packing, aux (see `shaders/cell_common.wgsl`).
pub(crate) const CELL_BINDINGS: [Access; 8] = [Read, Write, Write, Read, Write, Write, Read, Write];

/// The WGSL value of the constant `CELL`.
fn cell_constant(cell: Cell) -> f64 {
    match cell {
        Cell::Tanh => 0.0,
        Cell::Relu => 1.0,
        Cell::Lstm => 2.0,
        Cell::Gru => 3.0,
    }
}

fn cell_index(cell: Cell) -> usize {
    cell_constant(cell) as usize
}

/// Which of wgpu's run-time safety checks the kernels are compiled with.
///
/// wgpu's defaults (`All`) clamp every computed index into an array, put a counter into
/// every loop in case it never ends, and zero each workgroup's memory before a kernel
/// starts. The loop counters keep drivers from unrolling the kernels' inner loops: on an
/// H200 they halved the matrix product's speed (BENCHMARKS.md). `Bounds` (the default)
/// keeps the index checks and drops the rest. The environment variable
/// `UNFOLD_SHADER_CHECKS` chooses between these two ([`ShaderChecks::from_env`]).
///
/// `None` also drops the index checks and the guards of integer division: a kernel bug
/// then reads or writes out of bounds, which is undefined behaviour, so it is only
/// reachable through an `unsafe` constructor
/// ([`crate::Device::gpu_without_bounds_checks`]), never from the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShaderChecks {
    /// wgpu's defaults: index clamping, loop counters, zeroed workgroup memory.
    All,
    /// Index clamping only.
    Bounds,
    /// No run-time checks (only through an `unsafe` constructor).
    None,
}

impl ShaderChecks {
    /// What the kernels are compiled with unless asked otherwise.
    pub const DEFAULT: ShaderChecks = ShaderChecks::Bounds;

    /// The setting `UNFOLD_SHADER_CHECKS` asks for (the default when it is unset): `all`
    /// or `bounds`. `none` is refused with an error that says how to opt in to kernels
    /// without bounds checks, which the environment cannot do.
    pub fn from_env() -> Result<ShaderChecks> {
        let Some(raw) = std::env::var_os("UNFOLD_SHADER_CHECKS") else {
            return Ok(Self::DEFAULT);
        };
        let value = raw.to_str().map(|v| v.trim().to_ascii_lowercase());
        match value.as_deref() {
            Some("") => Ok(Self::DEFAULT),
            Some("all") => Ok(ShaderChecks::All),
            Some("bounds") => Ok(ShaderChecks::Bounds),
            Some("none") => Err(Error::InvalidConfig {
                what: "UNFOLD_SHADER_CHECKS",
                expected: "all or bounds (kernels without bounds checks, where a kernel bug is undefined behaviour, are an unsafe opt-in that no environment setting makes: `unsafe { Device::gpu_without_bounds_checks() }` in code, or `--unchecked-shaders` on `unfold verify` and `unfold bench`)",
                got: raw.to_string_lossy().into_owned(),
            }),
            _ => Err(Error::InvalidConfig {
                what: "UNFOLD_SHADER_CHECKS",
                expected: "all or bounds",
                got: raw.to_string_lossy().into_owned(),
            }),
        }
    }
}

impl Kernels {
    /// The largest uniform block of any kernel, in bytes.
    pub fn largest_uniform(&self) -> u64 {
        [
            std::mem::size_of::<MatmulParams>(),
            std::mem::size_of::<CellStep>(),
            std::mem::size_of::<LossParams>(),
            std::mem::size_of::<ReduceParams>(),
            std::mem::size_of::<RowsParams>(),
            std::mem::size_of::<OptimParams>(),
            std::mem::size_of::<EmbedParams>(),
        ]
        .into_iter()
        .max()
        .unwrap_or(0) as u64
    }

    /// Compiles every kernel inside a validation error scope, so that a shader or layout
    /// mismatch is an `Err`, not a panic.
    pub fn new(
        device: &wgpu::Device,
        checks: ShaderChecks,
        coop: Option<super::context::CoopConfig>,
    ) -> Result<Self> {
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = |name: &str, source: &str| shader_module(device, checks, name, source);
        let matmul = module("matmul", shaders::MATMUL);
        let loss = module("loss", shaders::LOSS);
        let reduce = module("reduce", shaders::REDUCE);
        let rows = module("rows", shaders::ROWS);
        let optimizer = module("optimizer", shaders::OPTIMIZER);
        let embedding = module("embedding", shaders::EMBEDDING);
        let kernel =
            |module: &wgpu::ShaderModule, name: &'static str, uniform: usize, access: &[Access]| {
                Kernel::new(device, module, name, uniform as u64, access, checks, &[])
            };
        use std::mem::size_of;
        // the cooperative-matrix product for the adapter's fragments and `tile`-sided tiles
        let coop_kernel = |c: super::context::CoopConfig, tile: u32| {
            kernel(
                &module(
                    &format!("matmul_coop{tile}"),
                    &shaders::matmul_coop(c.fragment, c.subgroup, tile),
                ),
                "matmul_coop",
                size_of::<MatmulParams>(),
                &[Read, Read, Read, Write],
            )
        };
        let kernels = Kernels {
            // one kernel at two sizes: TILE_THREADS² threads of a 4×4 block each
            matmul_tile32: Kernel::new(
                device,
                &matmul,
                "matmul_tile",
                size_of::<MatmulParams>() as u64,
                &[Read, Read, Read, Write],
                checks,
                &[("TILE_THREADS", 8.0)],
            ),
            matmul_tile64: Kernel::new(
                device,
                &matmul,
                "matmul_tile",
                size_of::<MatmulParams>() as u64,
                &[Read, Read, Read, Write],
                checks,
                &[("TILE_THREADS", 16.0)],
            ),
            matmul_tile128: kernel(
                &matmul,
                "matmul_tile128",
                size_of::<MatmulParams>(),
                &[Read, Read, Read, Write],
            ),
            matmul_sum_splits: kernel(
                &matmul,
                "matmul_sum_splits",
                size_of::<MatmulParams>(),
                &[Read, Read, Read, Write],
            ),
            matmul_coop64: coop.map(|c| coop_kernel(c, 64)),
            matmul_coop128: coop.filter(|c| c.wide).map(|c| coop_kernel(c, 128)),
            cross_entropy: kernel(
                &loss,
                "cross_entropy",
                size_of::<LossParams>(),
                &[Read, Write, Write, Read, Read],
            ),
            squared_error: kernel(
                &loss,
                "squared_error",
                size_of::<LossParams>(),
                &[Read, Write, Write, Read, Read],
            ),
            partial_sums: kernel(
                &reduce,
                "partial_sums",
                size_of::<ReduceParams>(),
                &[Read, Write],
            ),
            finish_sum: kernel(
                &reduce,
                "finish_sum",
                size_of::<ReduceParams>(),
                &[Read, Write],
            ),
            partial_norms: kernel(
                &reduce,
                "partial_norms",
                size_of::<ReduceParams>(),
                &[Read, Write],
            ),
            finish_norm: kernel(
                &reduce,
                "finish_norm",
                size_of::<ReduceParams>(),
                &[Read, Write],
            ),
            column_partials: kernel(
                &reduce,
                "column_partials",
                size_of::<ReduceParams>(),
                &[Read, Write],
            ),
            column_finish: kernel(
                &reduce,
                "column_finish",
                size_of::<ReduceParams>(),
                &[Read, Write],
            ),
            gather_rows: kernel(
                &rows,
                "gather_rows",
                size_of::<RowsParams>(),
                &[Read, Read, Write],
            ),
            scatter_rows: kernel(
                &rows,
                "scatter_rows",
                size_of::<RowsParams>(),
                &[Read, Read, Write],
            ),
            gather_previous: kernel(
                &rows,
                "gather_previous",
                size_of::<RowsParams>(),
                &[Read, Read, Write, Read],
            ),
            apply_mask: kernel(
                &rows,
                "apply_mask",
                size_of::<RowsParams>(),
                &[Read, Read, Write, Read],
            ),
            transpose_with_column: kernel(
                &rows,
                "transpose_with_column",
                size_of::<RowsParams>(),
                &[Read, Read, Write],
            ),
            prepare_update: kernel(
                &optimizer,
                "prepare",
                size_of::<OptimParams>(),
                &[Write, Read, Write, Write, Write],
            ),
            check_sgd: kernel(
                &optimizer,
                "check_sgd",
                size_of::<OptimParams>(),
                &[Write, Read, Write, Write, Write],
            ),
            check_momentum: kernel(
                &optimizer,
                "check_momentum",
                size_of::<OptimParams>(),
                &[Write, Read, Write, Write, Write],
            ),
            check_adam: kernel(
                &optimizer,
                "check_adam",
                size_of::<OptimParams>(),
                &[Write, Read, Write, Write, Write],
            ),
            sgd: kernel(
                &optimizer,
                "sgd",
                size_of::<OptimParams>(),
                &[Write, Read, Write, Write, Write],
            ),
            momentum: kernel(
                &optimizer,
                "momentum",
                size_of::<OptimParams>(),
                &[Write, Read, Write, Write, Write],
            ),
            adam: kernel(
                &optimizer,
                "adam",
                size_of::<OptimParams>(),
                &[Write, Read, Write, Write, Write],
            ),
            embed: kernel(
                &embedding,
                "embed",
                size_of::<EmbedParams>(),
                &[Read, Read, Write],
            ),
            embed_grad: kernel(
                &embedding,
                "embed_grad",
                size_of::<EmbedParams>(),
                &[Read, Read, Write],
            ),
            cells: Default::default(),
            checks,
        };
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("compiling the kernels: {e}")));
        }
        Ok(kernels)
    }

    /// The kernels of `cell`, compiled on first use (a compilation error is returned, and
    /// tried again on the next call).
    pub fn cell(&self, device: &wgpu::Device, cell: Cell) -> Result<&CellKernels> {
        let slot = &self.cells[cell_index(cell)];
        if let Some(k) = slot.get() {
            return Ok(k);
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let checks = self.checks;
        let recurrent = shader_module(device, checks, "recurrent", shaders::RECURRENT);
        let cells = shader_module(device, checks, "cells", shaders::CELLS);
        let constants = [("CELL", cell_constant(cell))];
        let wide = [("CELL", cell_constant(cell)), ("WIDE_PRODUCTS", 1.0)];
        let kernel =
            |module: &wgpu::ShaderModule, name: &'static str, constants: &[(&str, f64)]| {
                Kernel::new(
                    device,
                    module,
                    name,
                    std::mem::size_of::<CellStep>() as u64,
                    &CELL_BINDINGS,
                    checks,
                    constants,
                )
            };
        let compiled = CellKernels {
            step_forward: kernel(&recurrent, "step_forward", &constants),
            step_backward: kernel(&recurrent, "step_backward", &constants),
            sequence_forward: kernel(&recurrent, "sequence_forward", &constants),
            sequence_forward_wide: (cell.gates() > 1)
                .then(|| kernel(&recurrent, "sequence_forward", &wide)),
            sequence_backward: kernel(&recurrent, "sequence_backward", &constants),
            cell_forward_rows: kernel(&cells, "cell_forward_rows", &constants),
            cell_backward_rows: kernel(&cells, "cell_backward_rows", &constants),
        };
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "compiling the {cell} cell's kernels: {e}"
            )));
        }
        // a concurrent first use may have won: either copy works
        let _ = slot.set(compiled);
        Ok(slot.get().expect("just set"))
    }
}

/// A shader module under the run-time checks `checks` asks for.
fn shader_module(
    device: &wgpu::Device,
    checks: ShaderChecks,
    name: &str,
    source: &str,
) -> wgpu::ShaderModule {
    let desc = wgpu::ShaderModuleDescriptor {
        label: Some(name),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    };
    match checks {
        ShaderChecks::All => device.create_shader_module(desc),
        // SAFETY: wgpu's loop bounding only guards against loops that never end;
        // every loop in shaders/ runs a counter up to (or a stride down from) a
        // bound taken from its uniform block or a constant, with a step of at
        // least 1, and no bound is near u32::MAX (they count elements of
        // buffers no larger than the device's binding limit).
        ShaderChecks::Bounds => unsafe {
            let mut checks = wgpu::ShaderRuntimeChecks::checked();
            checks.force_loop_bounding = false;
            device.create_shader_module_trusted(desc, checks)
        },
        // SAFETY: only reached from `GpuContext::new_without_bounds_checks`, an `unsafe
        // fn` whose caller accepts the following: as above for loops; every index into a
        // buffer or a workgroup array is in range by construction (the kernels test each global index
        // against the shape in their uniform block; workgroup indices are
        // thread ids and constant-bounded loop counters); and no integer divisor
        // is zero (hidden sizes, and column counts of dispatches that have
        // threads). `unfold verify` checks this setting against the CPU path
        // (tests/it/classify_cli.rs).
        ShaderChecks::None => unsafe {
            device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
        },
    }
}

impl Kernel {
    /// A pipeline for entry point `name` of `module`, with `constants` for its
    /// pipeline-overridable constants.
    fn new(
        device: &wgpu::Device,
        module: &wgpu::ShaderModule,
        name: &'static str,
        uniform_size: u64,
        access: &[Access],
        checks: ShaderChecks,
        constants: &[(&str, f64)],
    ) -> Kernel {
        // bind groups are cached by kernel id: unique across every context and cell
        static NEXT_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: wgpu::BufferSize::new(uniform_size),
            },
            count: None,
        }];
        for (i, a) in access.iter().enumerate() {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: i as u32 + 1,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: *a == Access::Read,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(name),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(name),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: Some(&pipeline_layout),
            module,
            entry_point: Some(name),
            // every kernel writes its workgroup memory before reading it, so zeroing it
            // first (wgpu's default, kept with ShaderChecks::All) is wasted work
            compilation_options: wgpu::PipelineCompilationOptions {
                zero_initialize_workgroup_memory: checks == ShaderChecks::All,
                constants,
            },
            cache: None,
        });
        Kernel {
            id,
            name,
            pipeline,
            layout,
            uniform_size,
        }
    }
}
