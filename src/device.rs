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

    /// [`Device::gpu`] if an adapter exists, else [`Device::cpu`]; says which on stderr.
    pub fn auto() -> Device {
        match Device::gpu() {
            Ok(d) => {
                eprintln!("unfold: using {}", d.describe());
                d
            }
            Err(e) => {
                eprintln!("unfold: no usable GPU ({e}); using the CPU path");
                Device::cpu()
            }
        }
    }

    pub fn is_gpu(&self) -> bool {
        matches!(self.kind, DeviceKind::Gpu(_))
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
