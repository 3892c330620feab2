//! Where a unit of work spends its time on the GPU: a timestamp before the first dispatch
//! of every compute pass and after every dispatch, read back once the work is done, and
//! summed per (phase, kernel, detail).
//!
//! A timestamp after a dispatch is written when the GPU has finished it (bottom of the
//! pipe), so the difference between two neighbouring timestamps is the time one dispatch
//! held the GPU, including its launch and the barrier before it: what a dependent chain of
//! dispatches (the time loop) pays per link. The recorder notes each dispatch's phase (set
//! by the model as it records: "layer 0: time loop, forward", …) and a detail where one is
//! known (a product's shape and plan, a step's rows), and the multiply-adds it does, so
//! that the profile can say how fast each kind of dispatch runs.

use super::GpuContext;
use crate::{Error, Result};

/// The adapter features a profile needs (timestamps inside compute passes).
pub(crate) const FEATURES: wgpu::Features =
    wgpu::Features::TIMESTAMP_QUERY.union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);

/// What the recorder notes about one dispatch while profiling.
#[derive(Clone, Debug, Default)]
pub(crate) struct DispatchNote {
    /// The part of the step it belongs to.
    pub phase: String,
    /// What it computes, where known (a product's shape and plan, a step's rows).
    pub detail: String,
    /// Floating-point operations it performs (2 per multiply-add), 0 where not counted.
    pub flops: f64,
}

/// One dispatch of a profiled submission: its note and its two timestamps.
struct TimedDispatch {
    kernel: &'static str,
    note: DispatchNote,
    before: u32,
    after: u32,
}

/// The timestamps of one submission: query sets of at most
/// [`wgpu::QUERY_SET_MAX_QUERIES`] each, resolved into one buffer and copied to a
/// mappable one.
pub(crate) struct Timestamps {
    sets: Vec<wgpu::QuerySet>,
    count: u32,
    resolved: wgpu::Buffer,
    staging: wgpu::Buffer,
    dispatches: Vec<TimedDispatch>,
    /// The index the next [`Timestamps::write`] uses.
    next: u32,
}

impl Timestamps {
    /// Room for `count` timestamps.
    pub fn new(device: &wgpu::Device, count: u32) -> Timestamps {
        let count = count.max(1);
        let per_set = wgpu::QUERY_SET_MAX_QUERIES;
        let sets = (0..count.div_ceil(per_set))
            .map(|i| {
                device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("unfold profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count: (count - i * per_set).min(per_set),
                })
            })
            .collect();
        // each set resolves at its own aligned offset (a whole set is 32 KiB, aligned)
        let bytes = count as u64 * wgpu::QUERY_SIZE as u64;
        let buffer = |label, usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        Timestamps {
            sets,
            count,
            resolved: buffer(
                "unfold profile resolve",
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            ),
            staging: buffer(
                "unfold profile read-back",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            dispatches: Vec::new(),
            next: 0,
        }
    }

    /// Writes the next timestamp in `pass`, returning its index.
    pub fn write(&mut self, pass: &mut wgpu::ComputePass<'_>) -> u32 {
        let per_set = wgpu::QUERY_SET_MAX_QUERIES;
        let index = self.next;
        debug_assert!(index < self.count, "room for every timestamp");
        pass.write_timestamp(&self.sets[(index / per_set) as usize], index % per_set);
        self.next += 1;
        index
    }

    /// Notes that `kernel`'s dispatch ran between timestamps `before` and `after`.
    pub fn note(&mut self, kernel: &'static str, note: DispatchNote, before: u32, after: u32) {
        self.dispatches.push(TimedDispatch {
            kernel,
            note,
            before,
            after,
        });
    }

    /// Records the copies that bring the timestamps written so far to the mappable buffer.
    pub fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        let per_set = wgpu::QUERY_SET_MAX_QUERIES;
        for (i, set) in self.sets.iter().enumerate() {
            let first = i as u32 * per_set;
            let written = self.next.saturating_sub(first).min(per_set);
            if written > 0 {
                encoder.resolve_query_set(
                    set,
                    0..written,
                    &self.resolved,
                    first as u64 * wgpu::QUERY_SIZE as u64,
                );
            }
        }
        if self.next > 0 {
            encoder.copy_buffer_to_buffer(
                &self.resolved,
                0,
                &self.staging,
                0,
                self.next as u64 * wgpu::QUERY_SIZE as u64,
            );
        }
    }
}

/// Time spent by the dispatches of one (phase, kernel, detail).
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// The part of the work: "layer 0: time loop, forward", "readout and loss", …
    pub phase: String,
    /// The kernel's entry point in `shaders/`.
    pub kernel: &'static str,
    /// What its dispatches compute, where known: a product's `m×n×k` (`ᵀ` on an operand
    /// read transposed), tile and K ranges; a step's rows.
    pub detail: String,
    /// How many dispatches.
    pub calls: usize,
    /// Their time in all.
    pub total: std::time::Duration,
    /// The longest of them.
    pub longest: std::time::Duration,
    /// Floating-point operations of all of them (2 per multiply-add; 0 where not counted).
    pub flops: f64,
}

impl KernelTime {
    /// The mean time per dispatch.
    pub fn mean(&self) -> std::time::Duration {
        self.total / self.calls.max(1) as u32
    }

    /// Floating-point operations per second, where counted.
    pub fn flops_per_second(&self) -> Option<f64> {
        (self.flops > 0.0 && !self.total.is_zero()).then(|| self.flops / self.total.as_secs_f64())
    }
}

/// Where the GPU's time went during [`crate::internals::gpu::profile`]d work.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelProfile {
    /// Per (phase, kernel, detail), in the order they were first recorded.
    pub rows: Vec<KernelTime>,
    /// Dispatches timed.
    pub dispatches: usize,
    /// Their time in all (the sum of the rows).
    pub dispatch_time: std::time::Duration,
    /// From the first timestamp to the last of each submission, summed: the dispatches'
    /// time plus what ran between passes (clears and copies).
    pub gpu_time: std::time::Duration,
}

/// The profiling state of a device: `None` when off, else the submissions made since it
/// started, waiting to be read.
#[derive(Default)]
pub(crate) struct Profiler {
    pending: Option<Vec<Timestamps>>,
}

impl Profiler {
    pub fn active(&self) -> bool {
        self.pending.is_some()
    }

    pub fn push(&mut self, timestamps: Timestamps) {
        if let Some(pending) = &mut self.pending {
            pending.push(timestamps);
        }
    }
}

impl GpuContext {
    /// Whether work recorded now is timed per dispatch.
    pub(crate) fn profiling(&self) -> bool {
        self.profiler().active()
    }

    pub(crate) fn profiler(&self) -> std::sync::MutexGuard<'_, Profiler> {
        // a list of submitted work: a panic while it was held leaves nothing half-done
        self.profiler
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts timing every dispatch submitted on this device.
    pub(crate) fn start_profile(&self) -> Result<()> {
        if !self.device.features().contains(FEATURES) {
            return Err(Error::Unsupported(format!(
                "a kernel profile needs timestamp queries inside compute passes, which {} does not offer",
                self.describe()
            )));
        }
        let mut profiler = self.profiler();
        if profiler.active() {
            return Err(Error::Unsupported(
                "a kernel profile of a device that is already being profiled".into(),
            ));
        }
        profiler.pending = Some(Vec::new());
        Ok(())
    }

    /// Stops timing, waits for the work submitted since [`GpuContext::start_profile`] and
    /// sums its dispatches' times.
    pub(crate) fn finish_profile(&self) -> Result<KernelProfile> {
        // each submission's read-back waits for the work before it
        let pending = self.profiler().pending.take().unwrap_or_default();
        let tick = self.queue.get_timestamp_period() as f64;
        let ns = |ticks: u64| std::time::Duration::from_nanos((ticks as f64 * tick).round() as u64);
        let mut profile = KernelProfile::default();
        let mut row_of = std::collections::HashMap::new();
        for submission in pending {
            let stamps = read_timestamps(self, &submission)?;
            if let (Some(first), Some(last)) = (stamps.iter().min(), stamps.iter().max()) {
                profile.gpu_time += ns(last - first);
            }
            for d in submission.dispatches {
                let took = ns(stamps[d.after as usize].saturating_sub(stamps[d.before as usize]));
                let key = (d.note.phase.clone(), d.kernel, d.note.detail.clone());
                let at = *row_of.entry(key).or_insert_with(|| {
                    profile.rows.push(KernelTime {
                        phase: d.note.phase,
                        kernel: d.kernel,
                        detail: d.note.detail,
                        calls: 0,
                        total: Default::default(),
                        longest: Default::default(),
                        flops: 0.0,
                    });
                    profile.rows.len() - 1
                });
                let row = &mut profile.rows[at];
                row.calls += 1;
                row.total += took;
                row.longest = row.longest.max(took);
                row.flops += d.note.flops;
                profile.dispatches += 1;
                profile.dispatch_time += took;
            }
        }
        Ok(profile)
    }
}

/// The raw timestamps of one submission (after the device is idle).
fn read_timestamps(ctx: &GpuContext, t: &Timestamps) -> Result<Vec<u64>> {
    if t.next == 0 {
        return Ok(Vec::new());
    }
    let bytes = t.next as u64 * wgpu::QUERY_SIZE as u64;
    super::recorder::read_mapped(ctx, &t.staging, ..bytes, |view| {
        bytemuck::pod_collect_to_vec::<u8, u64>(view)
    })
}
