//! The long-lived GPU context: one adapter, device and queue, and every pipeline compiled
//! once.

use super::kernels::{Kernels, ShaderChecks};
use crate::{Error, Result};

/// One adapter's device and queue with every pipeline compiled: built once per
/// [`crate::Device`] and shared by its models.
pub struct GpuContext {
    /// Kept for [`GpuContext::live_resources`]: wgpu's resource registry is the
    /// instance's.
    instance: wgpu::Instance,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: wgpu::AdapterInfo,
    pub(crate) limits: wgpu::Limits,
    pub(crate) kernels: Kernels,
    /// The cooperative matrices the matrix products run on, on a device created for
    /// mixed precision ([`GpuContext::new_mixed_precision`]); `None`: f32 throughout.
    pub(crate) coop: Option<CoopConfig>,
    /// What went to and from the device so far (see [`Transfers`]).
    transfers: std::sync::Mutex<Transfers>,
    /// The tilings measured fastest on this device, and the shapes recorded while
    /// [`crate::Rnn::autotune`] watches (see `gemm::Tuning`).
    pub(crate) tuning: std::sync::Mutex<super::gemm::Tuning>,
    /// Whether dispatches are timed, and the timed submissions not yet read (see
    /// `profile`).
    pub(crate) profiler: std::sync::Mutex<super::profile::Profiler>,
}

/// Live wgpu handles of one device (see [`GpuContext::live_resources`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveResources {
    /// Buffers.
    pub buffers: usize,
    /// Bind groups.
    pub bind_groups: usize,
}

/// Transfers between the host and a device, and the work submitted to it: totals of a
/// device so far, or what one call moved (the difference of two totals; see
/// [`crate::internals::gpu::last_transfers`]).
///
/// An *upload* is one host-to-device transfer of data, counted once however many queue
/// writes it takes: a batch (its inputs or token tables, targets, packing tables, initial
/// states and dropout masks: up to eight writes), the gradient on an encoder's states,
/// gradients for [`crate::Rnn::apply_gradients`], an optimizer's fresh moments, a model's
/// parameters. The dispatches' parameter blocks (uniforms), written once per submission,
/// are counted apart. A *read-back* is one copy into a mapped staging buffer that the host
/// waits for, however many regions it gathers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfers {
    /// Uploads of data.
    pub uploads: usize,
    /// The queue writes of those uploads.
    pub upload_writes: usize,
    /// Bytes uploaded.
    pub upload_bytes: u64,
    /// Read-backs.
    pub read_backs: usize,
    /// Bytes read back.
    pub read_back_bytes: u64,
    /// Compute dispatches submitted.
    pub dispatches: usize,
    /// Submissions of recorded work (not counting the copies of read-backs).
    pub submissions: usize,
    /// Bytes of dispatch parameters (uniforms) written, one write per submission.
    pub uniform_bytes: u64,
}

impl Transfers {
    /// What happened between `earlier` (totals) and these totals.
    pub fn since(&self, earlier: &Transfers) -> Transfers {
        Transfers {
            uploads: self.uploads - earlier.uploads,
            upload_writes: self.upload_writes - earlier.upload_writes,
            upload_bytes: self.upload_bytes - earlier.upload_bytes,
            read_backs: self.read_backs - earlier.read_backs,
            read_back_bytes: self.read_back_bytes - earlier.read_back_bytes,
            dispatches: self.dispatches - earlier.dispatches,
            submissions: self.submissions - earlier.submissions,
            uniform_bytes: self.uniform_bytes - earlier.uniform_bytes,
        }
    }
}

/// The cooperative matrices a mixed-precision device multiplies with: `fragment` ×
/// `fragment` f16 operands into an f32 accumulator, on subgroups of `subgroup`
/// invocations (`shaders/matmul_coop.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoopConfig {
    /// The side of a fragment: 16 or 8.
    pub fragment: u32,
    /// The adapter's subgroup size (fixed: its smallest and largest are the same).
    pub subgroup: u32,
    /// Whether the 128×128 tiling fits the adapter's workgroup limits (the 64×64 one
    /// always does on a mixed-precision device).
    pub wide: bool,
}

/// What a mixed-precision device requests: cooperative matrices, f16 in shaders, and
/// subgroups (the kernel's subgroup index).
const COOP_FEATURES: wgpu::Features = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
    .union(wgpu::Features::SHADER_F16)
    .union(wgpu::Features::SUBGROUP);

/// Whether the cooperative-matrix product with `tile` × `tile` blocks of C fits
/// `limits` on subgroups of `subgroup` with `fragment`-sided fragments: its invocations,
/// and its workgroup memory (two staged f16 slices 32 deep, one f32 fragment per
/// subgroup and two counters).
fn coop_fits(tile: u32, fragment: u32, subgroup: u32, limits: &wgpu::Limits) -> bool {
    let subgroups = super::shaders::coop_subgroups(tile);
    let bytes = 2 * tile * 32 * 2 + subgroups * fragment * fragment * 4 + 8;
    subgroups * subgroup <= limits.max_compute_invocations_per_workgroup
        && bytes <= limits.max_compute_workgroup_storage_size
}

/// The cooperative matrices `adapter` offers for the mixed-precision product, or why it
/// cannot run it.
fn coop_config(adapter: &wgpu::Adapter) -> std::result::Result<CoopConfig, String> {
    let missing: Vec<&str> = [
        (
            wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX,
            "cooperative matrices (VK_KHR_cooperative_matrix)",
        ),
        (wgpu::Features::SHADER_F16, "f16 in shaders"),
        (wgpu::Features::SUBGROUP, "subgroup operations"),
    ]
    .into_iter()
    .filter(|(f, _)| !adapter.features().contains(*f))
    .map(|(_, name)| name)
    .collect();
    if !missing.is_empty() {
        return Err(format!("it lacks {}", missing.join(", ")));
    }
    let offered = adapter.cooperative_matrix_properties();
    let fragment = [16, 8]
        .into_iter()
        .find(|&f| {
            offered.iter().any(|p| {
                (p.m_size, p.n_size, p.k_size) == (f, f, f)
                    && p.ab_type == wgpu::CooperativeScalarType::F16
                    && p.cr_type == wgpu::CooperativeScalarType::F32
            })
        })
        .ok_or_else(|| {
            format!("it offers no 16×16×16 or 8×8×8 f16 × f16 → f32 cooperative matrix (offered: {offered:?})")
        })?;
    let info = adapter.get_info();
    let subgroup = info.subgroup_max_size;
    if subgroup == 0 || info.subgroup_min_size != subgroup {
        return Err(format!(
            "its subgroup size varies ({} to {subgroup}); the kernel needs a fixed one",
            info.subgroup_min_size
        ));
    }
    let limits = adapter.limits();
    if !coop_fits(64, fragment, subgroup, &limits) {
        return Err(format!(
            "a workgroup of four subgroups of {subgroup} with their staged operands exceeds its workgroup limits"
        ));
    }
    Ok(CoopConfig {
        fragment,
        subgroup,
        wide: coop_fits(128, fragment, subgroup, &limits),
    })
}

/// Rank of an adapter type: lower is preferred.
fn type_rank(t: wgpu::DeviceType, low_power: bool) -> u8 {
    use wgpu::DeviceType::*;
    match (t, low_power) {
        (DiscreteGpu, false) | (IntegratedGpu, true) => 0,
        (IntegratedGpu, false) | (DiscreteGpu, true) => 1,
        (VirtualGpu, _) => 2,
        (Cpu, _) => 3,
        (Other, _) => 4,
    }
}

/// Every adapter wgpu sees through the backends `WGPU_BACKEND` allows (all by default).
pub fn list_adapters() -> Vec<wgpu::AdapterInfo> {
    let instance = new_instance();
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all().with_env()))
        .iter()
        .map(|a| a.get_info())
        .collect()
}

fn new_instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = wgpu::Backends::all().with_env();
    wgpu::Instance::new(desc)
}

/// One line about an adapter: name, backend, type.
pub fn describe_adapter(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

/// Picks the adapter: `WGPU_ADAPTER_NAME` (case-insensitive substring) if set, else the
/// best type, honouring `WGPU_POWER_PREF=low`. GL adapters rank after the others at equal
/// type, since compute on GL lacks what wgpu needs on some drivers. With `index`, the
/// adapter `index` (modulo their number) of the choice's peers instead ([`peers`]).
fn choose_adapter(instance: &wgpu::Instance, index: Option<usize>) -> Result<wgpu::Adapter> {
    let adapters =
        pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all().with_env()));
    let seen: Vec<String> = adapters
        .iter()
        .map(|a| describe_adapter(&a.get_info()))
        .collect();
    let ranked: Vec<wgpu::Adapter> = if let Ok(want) = std::env::var("WGPU_ADAPTER_NAME") {
        let want_lower = want.to_lowercase();
        let matching: Vec<wgpu::Adapter> = adapters
            .into_iter()
            .filter(|a| a.get_info().name.to_lowercase().contains(&want_lower))
            .collect();
        if matching.is_empty() {
            return Err(Error::NoAdapter {
                detail: format!(
                    " matching WGPU_ADAPTER_NAME={want:?} (adapters seen: {})",
                    list_or_none(&seen)
                ),
            });
        }
        matching
    } else {
        let low_power = wgpu::PowerPreference::from_env() == Some(wgpu::PowerPreference::LowPower);
        let mut all = adapters;
        // stable: the first of equally ranked adapters stays first
        all.sort_by_key(|a| {
            let info = a.get_info();
            (
                type_rank(info.device_type, low_power),
                info.backend == wgpu::Backend::Gl,
            )
        });
        all
    };
    let mut peers = peers(ranked);
    if peers.is_empty() {
        return Err(Error::NoAdapter {
            detail: String::new(),
        });
    }
    let at = index.unwrap_or(0) % peers.len();
    Ok(peers.swap_remove(at))
}

/// The adapters of the same backend and device type as the first of `ranked` (the one
/// chosen without an index), in `ranked`'s order: the GPUs of a machine that several
/// processes on it share out, each physical adapter once (not again through another
/// backend) and without a software adapter among hardware ones.
fn peers(ranked: Vec<wgpu::Adapter>) -> Vec<wgpu::Adapter> {
    let Some(first) = ranked.first().map(|a| a.get_info()) else {
        return Vec::new();
    };
    ranked
        .into_iter()
        .filter(|a| {
            let info = a.get_info();
            info.backend == first.backend && info.device_type == first.device_type
        })
        .collect()
}

fn list_or_none(seen: &[String]) -> String {
    if seen.is_empty() {
        "none".into()
    } else {
        seen.join(", ")
    }
}

impl GpuContext {
    /// The best adapter by wgpu's environment conventions, its device and the pipelines,
    /// compiled with the run-time checks `UNFOLD_SHADER_CHECKS` asks for (`all` or
    /// `bounds`; see [`ShaderChecks::from_env`]).
    pub fn new() -> Result<Self> {
        Self::create(ShaderChecks::from_env()?, None, None, false)
    }

    /// [`GpuContext::new`] with every matrix product on cooperative matrices: f16
    /// operands (scaled by a power of two per staged block), f32 accumulation. An error
    /// where the adapter offers no usable cooperative matrix.
    ///
    /// # Safety
    ///
    /// wgpu exposes cooperative matrices as an experimental feature, which it documents
    /// may have bugs that are undefined behaviour when hit (see
    /// [`crate::Device::gpu_mixed_precision`]).
    pub unsafe fn new_mixed_precision() -> Result<Self> {
        Self::create(ShaderChecks::from_env()?, None, None, true)
    }

    /// [`GpuContext::new`] on the adapter `index` (modulo their number) of the adapters
    /// like the one [`GpuContext::new`] would choose: of its backend and device type,
    /// among those `WGPU_ADAPTER_NAME` matches if it is set, best first (index 0 is
    /// [`GpuContext::new`]'s). For one process per GPU on a machine with several.
    pub fn with_adapter_index(index: usize) -> Result<Self> {
        Self::create(ShaderChecks::from_env()?, None, Some(index), false)
    }

    /// [`GpuContext::new`] with kernels compiled without wgpu's index clamping and the
    /// guards of integer division ([`ShaderChecks::None`]).
    ///
    /// # Safety
    ///
    /// A kernel that indexes out of range (or divides by zero) is then undefined
    /// behaviour on the GPU: it may read or write other buffers of this process. The
    /// kernels are written so that every index is in range by construction; the caller
    /// asserts that it trusts them to be (see [`crate::Device::gpu_without_bounds_checks`]).
    pub unsafe fn new_without_bounds_checks() -> Result<Self> {
        Self::create(ShaderChecks::None, None, None, false)
    }

    /// [`GpuContext::new`] on a device that allows storage bindings of at most `bytes`
    /// (at most the adapter's own limit): the device is requested with that limit, so
    /// wgpu itself refuses a binding past it, and batches that would need larger buffers
    /// are split as on an adapter with that limit. For testing the splitting on any
    /// adapter.
    pub fn with_storage_limit(bytes: u64) -> Result<Self> {
        Self::create(ShaderChecks::from_env()?, Some(bytes), None, false)
    }

    /// Creates the device (with the adapter's limits, or a smaller storage-binding limit)
    /// and compiles the pipelines with `checks`; [`ShaderChecks::None`] only from
    /// [`GpuContext::new_without_bounds_checks`].
    fn create(
        checks: ShaderChecks,
        storage_limit: Option<u64>,
        index: Option<usize>,
        mixed: bool,
    ) -> Result<Self> {
        let instance = new_instance();
        let adapter = choose_adapter(&instance, index)?;
        let info = adapter.get_info();
        let coop = if mixed {
            Some(coop_config(&adapter).map_err(|why| {
                Error::Unsupported(format!(
                    "mixed precision needs cooperative matrices, and {} cannot run them: {why}",
                    describe_adapter(&info)
                ))
            })?)
        } else {
            None
        };
        let mut limits = adapter.limits();
        if let Some(bytes) = storage_limit {
            let allowed = limits.max_storage_buffer_binding_size;
            if bytes == 0 || bytes > allowed {
                return Err(Error::InvalidConfig {
                    what: "storage-binding limit",
                    expected: "between 1 byte and the adapter's own limit",
                    got: format!("{bytes} (the adapter allows {allowed})"),
                });
            }
            limits.max_storage_buffer_binding_size = bytes;
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("unfold"),
            // timestamps, where offered, for kernel profiles (they cost nothing unused)
            required_features: (adapter.features() & super::profile::FEATURES)
                | if coop.is_some() {
                    COOP_FEATURES
                } else {
                    wgpu::Features::empty()
                },
            required_limits: limits.clone(),
            experimental_features: if coop.is_some() {
                // SAFETY: only for a mixed-precision device, whose constructor is an
                // `unsafe fn` that passes wgpu's caveat on to its caller
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            } else {
                wgpu::ExperimentalFeatures::disabled()
            },
            ..Default::default()
        }))
        .map_err(|e| {
            Error::Gpu(format!(
                "requesting a device from {}: {e}",
                describe_adapter(&info)
            ))
        })?;
        let kernels = Kernels::new(&device, checks, coop)?;
        Ok(GpuContext {
            instance,
            device,
            queue,
            info,
            limits,
            kernels,
            coop,
            transfers: Default::default(),
            tuning: Default::default(),
            profiler: Default::default(),
        })
    }

    /// The kernels of `cell`, compiled on first use.
    pub(crate) fn cell_kernels(&self, cell: crate::Cell) -> Result<&super::kernels::CellKernels> {
        self.kernels.cell(&self.device, cell)
    }

    /// The adapter in one line: name, kind and backend.
    pub fn describe(&self) -> String {
        match self.coop {
            Some(c) => format!(
                "GPU {}, mixed precision ({f}×{f} f16 cooperative matrices, f32 accumulation)",
                describe_adapter(&self.info),
                f = c.fragment
            ),
            None => format!("GPU {}", describe_adapter(&self.info)),
        }
    }

    /// What wgpu says about the adapter.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The largest storage buffer a kernel may bind, in bytes.
    pub fn max_storage_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// How many buffers and bind groups of this device the program holds (wgpu's count
    /// of live handles), to check that nothing leaks; `None` where wgpu cannot say.
    pub fn live_resources(&self) -> Option<LiveResources> {
        let report = self.instance.generate_report()?;
        let hub = report.hub_report();
        Some(LiveResources {
            buffers: hub.buffers.num_kept_from_user,
            bind_groups: hub.bind_groups.num_kept_from_user,
        })
    }

    /// Bytes in live device-memory allocations (wgpu's allocator report); `None` where
    /// the backend keeps no report.
    pub fn memory_in_use(&self) -> Option<u64> {
        self.device
            .generate_allocator_report()
            .map(|r| r.total_allocated_bytes)
    }

    /// What went to and from this device so far.
    pub fn transfers(&self) -> Transfers {
        *self.count()
    }

    fn count(&self) -> std::sync::MutexGuard<'_, Transfers> {
        // plain counters: a panic while one was held leaves nothing half-done
        self.transfers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes `data` at the start of `buffer` as one queue write of an upload (see
    /// [`GpuContext::note_upload`]).
    pub(crate) fn write(&self, buffer: &wgpu::Buffer, data: &[u8]) {
        self.queue.write_buffer(buffer, 0, data);
        self.note_write(data.len());
    }

    /// Counts a queue write of `bytes` bytes made otherwise (`write_buffer_with`).
    pub(crate) fn note_write(&self, bytes: usize) {
        let mut count = self.count();
        count.upload_writes += 1;
        count.upload_bytes += bytes as u64;
    }

    /// Counts one upload: call once for the writes that make it.
    pub(crate) fn note_upload(&self) {
        self.count().uploads += 1;
    }

    /// Counts a read-back of `bytes` bytes.
    pub(crate) fn note_read_back(&self, bytes: usize) {
        let mut count = self.count();
        count.read_backs += 1;
        count.read_back_bytes += bytes as u64;
    }

    /// Counts a submission of `dispatches` dispatches with `uniform_bytes` of parameters.
    pub(crate) fn note_submission(&self, dispatches: usize, uniform_bytes: usize) {
        let mut count = self.count();
        count.submissions += 1;
        count.dispatches += dispatches;
        count.uniform_bytes += uniform_bytes as u64;
    }

    /// Waits for all submitted work, turning a lost device into an error.
    pub(crate) fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: None,
            })
            .map(|_| ())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))
    }
}
