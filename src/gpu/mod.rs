//! The GPU path: WGSL kernels (in `shaders/`) driven by a Rust host that owns the time
//! loop. A whole training step — hoisted input products, every forward step, readout,
//! loss, every backward step, weight-gradient products over all steps, clipping and the
//! update — is recorded into one command buffer and submitted once. Parameters and
//! optimizer state stay on the device; only the loss comes back each step.
//!
//! `context` picks the adapter and compiles the pipelines (`kernels`; each cell's time-loop
//! kernels on first use); `recorder` turns a list of dispatches into one submission;
//! `gemm` plans each matrix product (tiling, K splits) from its shape and describes one
//! (`Product`: its operands as blocks of buffers, bias and epilogue); `buffers` holds
//! the parameter layout, the work buffers and what is uploaded per batch; `time_loop` is
//! how one layer walks its steps, forward and backward, for every cell, direction and
//! [`TimeLoop`] (the cells' element-wise math is `shaders/cell_common.wgsl`); `model`
//! records a model's passes around it: input projections, readout and loss, weight
//! gradients, the update.

mod buffers;
mod context;
mod gemm;
mod kernels;
mod model;
mod profile;
mod recorder;
pub mod shaders;
mod time_loop;

pub(crate) use buffers::Dropout;
pub use context::{describe_adapter, list_adapters, GpuContext, LiveResources, Transfers};
pub(crate) use gemm::{is_tuned, tune_product, watch_products, watched_products};
pub use gemm::{GemmPlan, ProductShape, ResidentProduct, Tile, TunedProduct};
pub use kernels::ShaderChecks;
pub(crate) use model::GpuRnn;
pub use profile::{KernelProfile, KernelTime};

/// How the GPU path walks the time steps of a layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimeLoop {
    /// Persistent kernels where the hidden size allows (at most 256); else tiled steps
    /// when a step has at least [`TILED_STEP_MIN_WORK`] outputs (batch × hidden), else
    /// one fused dispatch per step.
    #[default]
    Auto,
    /// One fused dispatch per step, forward and backward (any hidden size): 16×16 outputs
    /// per workgroup, one per thread.
    PerStep,
    /// One dispatch per layer runs every step, each workgroup owning one sequence
    /// (hidden size at most [`PERSISTENT_MAX_HIDDEN`]).
    Persistent,
    /// Each step's product through the tiled matrix-product kernels (64×64 or 128×128
    /// tiles, K split when that pays), the step's element-wise work done as results are
    /// stored (any hidden size): for steps with many outputs.
    TiledSteps,
}

/// What [`crate::Rnn::autotune`] measured and chose.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Autotune {
    /// Each product shape measured, with the plan it ran with and the one kept.
    pub products: Vec<TunedProduct>,
    /// Shapes left on their plan because trying every tiling would have taken longer
    /// than the budget.
    pub skipped: Vec<ProductShape>,
    /// The time loops tried on the whole pass (forward and backward, seconds each,
    /// fastest first), the first of them kept; empty when the model's time loop was not
    /// [`TimeLoop::Auto`] or the persistent loop applies.
    pub time_loops: Vec<(TimeLoop, std::time::Duration)>,
}

/// Whether `time_loop` runs a layer of `hidden` units over `batch` sequences as one
/// persistent dispatch on `ctx`'s adapter.
pub(crate) fn runs_persistent(
    ctx: &GpuContext,
    time_loop: TimeLoop,
    hidden: usize,
    batch: usize,
) -> bool {
    time_loop::Strategy::choose(time_loop, hidden, batch, &ctx.limits)
        == time_loop::Strategy::Persistent
}

/// Outputs per step (batch × hidden) from which [`TimeLoop::Auto`] uses tiled steps when
/// the persistent loop does not apply. Measured on an H200 (BENCHMARKS.md): a fused
/// dispatch per step takes half the time of tiled steps at 32,768 outputs (`ref`) and
/// 1.15 times as long at 262,144 (`large`); one sequence of hidden 1024 also runs faster
/// per step.
pub const TILED_STEP_MIN_WORK: usize = 1 << 16;

/// Largest hidden size the persistent time loop handles (one thread per unit).
pub const PERSISTENT_MAX_HIDDEN: usize = 256;

/// Optimizer moments living on the GPU (see [`crate::Optimizer`]).
pub(crate) struct OptimizerBuffers {
    /// Momentum buffer or Adam's first moment (absent for plain SGD).
    pub m: Option<wgpu::Buffer>,
    /// Adam's second moment.
    pub v: Option<wgpu::Buffer>,
    pub len: usize,
    /// The context the buffers belong to.
    pub ctx: std::sync::Arc<GpuContext>,
    /// The bind-group caches of the models these buffers were bound through, held
    /// weakly: dropping the buffers evicts their groups from each cache still alive, so
    /// that no cached group keeps them (see [`recorder::BindGroupCache`]).
    bound_in: std::sync::Mutex<Vec<std::sync::Weak<std::sync::Mutex<recorder::BindGroupCache>>>>,
}

impl Drop for OptimizerBuffers {
    fn drop(&mut self) {
        let buffers: Vec<&wgpu::Buffer> = [&self.m, &self.v].into_iter().flatten().collect();
        let caches = std::mem::take(
            self.bound_in
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for cache in caches.iter().filter_map(std::sync::Weak::upgrade) {
            recorder::lock(&cache).evict(&buffers);
        }
    }
}

impl OptimizerBuffers {
    /// Moment buffers `m` and `v` (where present) for `len` parameters on `ctx`.
    pub fn new(
        m: Option<wgpu::Buffer>,
        v: Option<wgpu::Buffer>,
        len: usize,
        ctx: std::sync::Arc<GpuContext>,
    ) -> Self {
        OptimizerBuffers {
            m,
            v,
            len,
            ctx,
            bound_in: Default::default(),
        }
    }

    /// Notes that these buffers are bound through `cache` (a model's), so that dropping
    /// them evicts their groups there.
    pub fn bind_through(&self, cache: &recorder::SharedCache) {
        let mut caches = self
            .bound_in
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // forget caches whose models are gone; note this one once
        caches.retain(|c| c.strong_count() > 0);
        if !caches
            .iter()
            .any(|c| std::ptr::eq(c.as_ptr(), std::sync::Arc::as_ptr(cache)))
        {
            caches.push(std::sync::Arc::downgrade(cache));
        }
    }

    /// The moments read back (empty where absent).
    pub fn read(&self) -> crate::Result<(Vec<f32>, Vec<f32>)> {
        let regions: Vec<(&wgpu::Buffer, u64, usize)> = [&self.m, &self.v]
            .into_iter()
            .flatten()
            .map(|b| (b, 0, self.len))
            .collect();
        let mut data = recorder::read_back(&self.ctx, &regions)?.into_iter();
        let m = if self.m.is_some() {
            data.next().unwrap_or_default()
        } else {
            Vec::new()
        };
        let v = if self.v.is_some() {
            data.next().unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok((m, v))
    }
}

impl std::fmt::Debug for OptimizerBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OptimizerBuffers({} parameters on {})",
            self.len,
            self.ctx.describe()
        )
    }
}

/// A GPU device (chosen as [`crate::Device::gpu`] chooses) whose storage bindings are
/// limited to `bytes`, as on a smaller adapter: batches that need larger buffers are
/// split into chunks. For testing that on any adapter.
pub fn device_with_storage_limit(bytes: u64) -> crate::Result<crate::Device> {
    Ok(crate::Device {
        kind: crate::device::DeviceKind::Gpu(std::sync::Arc::new(GpuContext::with_storage_limit(
            bytes,
        )?)),
    })
}

/// Live buffers and bind groups of `device` (see [`GpuContext::live_resources`]; `None`
/// for the CPU).
pub fn live_resources(device: &crate::Device) -> Option<LiveResources> {
    match &device.kind {
        crate::device::DeviceKind::Gpu(ctx) => ctx.live_resources(),
        crate::device::DeviceKind::Cpu => None,
    }
}

/// Bytes of device memory in live allocations on `device` (every buffer of every model on
/// it, as wgpu's memory allocator counts them); `None` for the CPU and where the backend
/// does not say.
pub fn device_memory_in_use(device: &crate::Device) -> Option<u64> {
    match &device.kind {
        crate::device::DeviceKind::Gpu(ctx) => ctx.memory_in_use(),
        crate::device::DeviceKind::Cpu => None,
    }
}

/// Runs `work` (training steps, forward passes, … of models on `device`) with every GPU
/// dispatch timed, and returns its result with where the GPU's time went: per phase of
/// the step (input products, each layer's time loop forward and backward, weight
/// gradients, readout and loss, update), kernel and product shape. The timestamps change
/// nothing computed; they add a little to each dispatch. Everything submitted on the
/// device meanwhile counts, from any thread. An error for the CPU, for an adapter without
/// timestamp queries inside compute passes, and when the device is being profiled
/// already.
pub fn profile<T>(
    device: &crate::Device,
    work: impl FnOnce() -> crate::Result<T>,
) -> crate::Result<(T, KernelProfile)> {
    let crate::device::DeviceKind::Gpu(ctx) = &device.kind else {
        return Err(crate::Error::Unsupported(
            "a kernel profile of the CPU path (it has no GPU dispatches; use perf)".into(),
        ));
    };
    ctx.start_profile()?;
    let result = work();
    // always stop (and wait), so that a failed run leaves the device unprofiled
    let profile = ctx.finish_profile();
    Ok((result?, profile?))
}

/// What went to and from `device` so far, every model on it together (`None` for the
/// CPU); see [`Transfers`].
pub fn transfers(device: &crate::Device) -> Option<Transfers> {
    match &device.kind {
        crate::device::DeviceKind::Gpu(ctx) => Some(ctx.transfers()),
        crate::device::DeviceKind::Cpu => None,
    }
}

/// What the last call of `rnn` that takes it mutably (a forward pass, a training step,
/// `encode`, `backward`, `apply_gradients`, ...) moved between the host and its GPU, and
/// the work it submitted, whether it succeeded or not; `None` on the CPU and before the
/// first such call. Everything on the model's device during the call counts: another
/// model used on the same device meanwhile, from another thread, would count too.
pub fn last_transfers(rnn: &crate::Rnn) -> Option<Transfers> {
    rnn.last_transfers()
}

/// The largest storage buffer a kernel may bind on `device`'s adapter, in bytes (`None`
/// for the CPU).
pub fn max_storage_binding(device: &crate::Device) -> Option<u64> {
    match &device.kind {
        crate::device::DeviceKind::Gpu(ctx) => Some(ctx.max_storage_binding()),
        crate::device::DeviceKind::Cpu => None,
    }
}

/// The tilings matrix products may run on on `device` (each is a [`GemmPlan`]'s `tile`):
/// the three f32 ones, or on a mixed-precision device the cooperative-matrix ones it has
/// (empty for the CPU).
pub fn tilings(device: &crate::Device) -> Vec<Tile> {
    match &device.kind {
        crate::device::DeviceKind::Gpu(ctx) => gemm::tilings(ctx),
        crate::device::DeviceKind::Cpu => Vec::new(),
    }
}
