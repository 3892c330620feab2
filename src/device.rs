//! Where a model computes: the CPU reference path or a wgpu adapter.

use crate::gpu::GpuContext;
use crate::Result;
use std::sync::Arc;

/// A compute device. Cloning is cheap: clones share one GPU context (device, queue,
/// compiled pipelines).
#[derive(Clone)]
pub struct Device {
    pub(crate) kind: DeviceKind,
}

#[derive(Clone)]
pub(crate) enum DeviceKind {
    Cpu,
    Gpu(Arc<GpuContext>),
}

impl Device {
    /// The CPU reference path (ndarray).
    pub fn cpu() -> Device {
        Device {
            kind: DeviceKind::Cpu,
        }
    }

    /// A wgpu adapter chosen through wgpu's environment conventions: `WGPU_BACKEND`
    /// (e.g. `vulkan`), `WGPU_ADAPTER_NAME` (a substring, e.g. `llvmpipe`) and
    /// `WGPU_POWER_PREF` (`high` or `low`); otherwise the best of discrete > integrated >
    /// virtual > cpu adapters.
    pub fn gpu() -> Result<Device> {
        Ok(Device {
            kind: DeviceKind::Gpu(Arc::new(GpuContext::new()?)),
        })
    }

    /// The GPU `index` (modulo their number) of the adapters like the one [`Device::gpu`]
    /// chooses — of its backend and device type, among those `WGPU_ADAPTER_NAME` matches
    /// if it is set, best first; index 0 is [`Device::gpu`]'s adapter. For one process
    /// per GPU on a machine with several: process `i` of a machine takes `gpu_at(i)`, and
    /// with more processes than GPUs, several share one.
    pub fn gpu_at(index: usize) -> Result<Device> {
        Ok(Device {
            kind: DeviceKind::Gpu(Arc::new(GpuContext::with_adapter_index(index)?)),
        })
    }

    /// [`Device::gpu`] with the kernels compiled without wgpu's run-time index checks
    /// and the guards of integer division (`ShaderChecks::None` in
    /// `unfold::internals::gpu`): a few percent faster on some matrix products
    /// (BENCHMARKS.md). The environment variable `UNFOLD_SHADER_CHECKS` chooses only
    /// between the checked settings; this is the one way to drop the index checks.
    ///
    /// # Safety
    ///
    /// Without the checks, a kernel that indexes a buffer out of range reads or writes
    /// memory it does not own, which is undefined behaviour (on a GPU that shares memory
    /// with the host, possibly the process's own memory). Every kernel of this crate is
    /// written to keep its indices in range (each global index is tested against the
    /// shape in its parameter block; no divisor is zero), and `unfold verify` checks
    /// these kernels against the CPU path; by calling this the caller trusts that there
    /// is no bug that would break it, on its adapter and for the shapes it runs. Use
    /// [`Device::gpu`] unless measurements show the checks matter.
    pub unsafe fn gpu_without_bounds_checks() -> Result<Device> {
        // SAFETY: the caller accepts the contract above, which is that of
        // `GpuContext::new_without_bounds_checks`.
        let ctx = unsafe { GpuContext::new_without_bounds_checks()? };
        Ok(Device {
            kind: DeviceKind::Gpu(Arc::new(ctx)),
        })
    }

    /// [`Device::gpu`] with every matrix product in mixed precision, where the adapter
    /// offers cooperative matrices (tensor cores on NVIDIA; Mesa's lavapipe from 25.x on
    /// emulates them): f16 operands, f32 accumulation, f32 everywhere else (parameters,
    /// optimizer state, the recurrent cells' arithmetic, the per-step and persistent time
    /// loops, which are not products). Like TF32 or automatic mixed precision in
    /// PyTorch, results differ from the f32 path by about f16's precision (2⁻¹¹ relative
    /// per operand); unlike plain f16, each staged 64×32 block of an operand is scaled by
    /// a power of two before it is rounded, so small gradients do not flush to zero and
    /// no loss scaling is needed. [`crate::Rnn::autotune`] on this device only tunes how
    /// products split, never their precision.
    ///
    /// An [`crate::Error::Unsupported`] where the adapter lacks cooperative matrices with
    /// f16 operands and an f32 accumulator at 16×16×16 or 8×8×8, f16 in shaders,
    /// subgroups, or a fixed subgroup size.
    ///
    /// # Safety
    ///
    /// wgpu 30 exposes cooperative matrices as an experimental feature and documents
    /// that its implementation may have bugs that are undefined behaviour when hit. This
    /// crate's one kernel that uses them is checked against the CPU path on lavapipe; by
    /// calling this the caller accepts wgpu's caveat for its adapter and driver. Use
    /// [`Device::gpu`] for f32 throughout.
    pub unsafe fn gpu_mixed_precision() -> Result<Device> {
        // SAFETY: the caller accepts the contract above, which is that of
        // `GpuContext::new_mixed_precision`.
        let ctx = unsafe { GpuContext::new_mixed_precision()? };
        Ok(Device {
            kind: DeviceKind::Gpu(Arc::new(ctx)),
        })
    }

    /// Whether this device runs its matrix products in mixed precision
    /// ([`Device::gpu_mixed_precision`]).
    pub fn is_mixed_precision(&self) -> bool {
        matches!(&self.kind, DeviceKind::Gpu(ctx) if ctx.coop.is_some())
    }

    /// [`Device::gpu`] if a hardware adapter exists, else [`Device::cpu`]. A software
    /// adapter (type `Cpu`, such as lavapipe) is only used when asked for by
    /// `WGPU_ADAPTER_NAME`: on the same cores the CPU path is far faster.
    /// [`Device::auto_with_reason`] also says why the GPU was not taken.
    pub fn auto() -> Device {
        Device::auto_with_reason().0
    }

    /// [`Device::auto`], and when it took the CPU path, why: a sentence for the user
    /// (no usable GPU and the error, or only a software adapter). `None` when it took the
    /// GPU. The library prints nothing; a program shows this where it wants.
    pub fn auto_with_reason() -> (Device, Option<String>) {
        match Device::gpu() {
            Ok(d) if d.is_software() && std::env::var_os("WGPU_ADAPTER_NAME").is_none() => {
                let reason = format!(
                    "only a software adapter found ({}); using the CPU path (set WGPU_ADAPTER_NAME to use it anyway)",
                    d.describe()
                );
                (Device::cpu(), Some(reason))
            }
            Ok(d) => (d, None),
            Err(e) => (
                Device::cpu(),
                Some(format!("no usable GPU ({e}); using the CPU path")),
            ),
        }
    }

    /// Whether this is a GPU device.
    pub fn is_gpu(&self) -> bool {
        matches!(self.kind, DeviceKind::Gpu(_))
    }

    /// True for a software adapter (wgpu device type `Cpu`, such as lavapipe).
    pub fn is_software(&self) -> bool {
        matches!(&self.kind, DeviceKind::Gpu(ctx) if ctx.adapter_info().device_type == wgpu::DeviceType::Cpu)
    }

    /// A one-line description: `cpu`, or the adapter's name, backend and type.
    pub fn describe(&self) -> String {
        match &self.kind {
            DeviceKind::Cpu => "cpu (ndarray reference path)".to_string(),
            DeviceKind::Gpu(ctx) => ctx.describe(),
        }
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}
