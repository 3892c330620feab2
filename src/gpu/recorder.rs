//! Records a whole unit of work (a training step, a forward pass) as a list of commands,
//! then encodes it into one command buffer and one submission.
//!
//! Every dispatch's parameters go into one uniform buffer, one aligned slot each, bound
//! with a dynamic offset; so all steps of a layer share one bind group, and bind groups
//! are cached across calls for as long as their buffers live (a cached group keeps its
//! buffers alive, so the cache forgets a buffer's groups when that buffer goes away:
//! see [`BindGroupCache`]).

use super::kernels::Kernel;
use super::profile::{DispatchNote, Timestamps};
use super::GpuContext;
use crate::{Error, Result};
use bytemuck::Pod;
use std::collections::HashMap;

enum Command<'a> {
    Dispatch {
        kernel: &'a Kernel,
        buffers: Vec<&'a wgpu::Buffer>,
        slot: u32,
        workgroups: [u32; 3],
    },
    Clear {
        buffer: &'a wgpu::Buffer,
    },
}

/// Bind groups that outlive one recording, keyed by kernel and buffers.
///
/// A bind group holds its buffers, so an entry would keep a buffer (and its memory)
/// alive after its owner dropped it. Entries therefore leave with their buffers: a
/// model's cache lives exactly as long as the model's own buffers, and is cleared when
/// its work buffers are replaced ([`BindGroupCache::clear`]); buffers bound from
/// outside the model — an optimizer's moments — evict their entries from every cache
/// they were bound through when they are dropped ([`BindGroupCache::evict`], called
/// from `OptimizerBuffers`'s `Drop`).
#[derive(Default)]
pub(crate) struct BindGroupCache {
    groups: HashMap<(usize, Vec<wgpu::Buffer>), wgpu::BindGroup>,
    uniforms: Option<wgpu::Buffer>,
}

/// A model's bind-group cache, shared with the optimizers bound through it (which hold
/// it weakly, to evict their buffers' entries when they go; see [`BindGroupCache`]).
pub(crate) type SharedCache = std::sync::Arc<std::sync::Mutex<BindGroupCache>>;

impl BindGroupCache {
    /// Drops every cached group (call when buffers are reallocated).
    pub fn clear(&mut self) {
        self.groups.clear();
    }

    /// Drops every cached group that binds one of `buffers` (call when they go away).
    pub fn evict(&mut self, buffers: &[&wgpu::Buffer]) {
        self.groups
            .retain(|(_, bound), _| !bound.iter().any(|b| buffers.contains(&b)));
    }
}

/// Locks a shared cache; a panic while it was held leaves nothing half-done in it (an
/// entry is inserted whole or not at all), so a poisoned lock is used as it is.
pub(crate) fn lock(
    cache: &std::sync::Mutex<BindGroupCache>,
) -> std::sync::MutexGuard<'_, BindGroupCache> {
    cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) struct Recorder<'a> {
    ctx: &'a GpuContext,
    commands: Vec<Command<'a>>,
    uniform_data: Vec<u8>,
    slot_size: usize,
    /// Dispatches already submitted by [`Recorder::submit_so_far`].
    submitted_dispatches: usize,
    /// While the device is profiled: the phase being recorded, and a note per dispatch
    /// recorded since the last submission (see `profile`).
    profiling: bool,
    phase: String,
    /// The phase is a time loop, whose products run on as many rows as a step has.
    step_rows: bool,
    notes: Vec<DispatchNote>,
}

impl<'a> Recorder<'a> {
    /// The context the dispatches are for.
    pub fn ctx(&self) -> &'a GpuContext {
        self.ctx
    }

    pub fn new(ctx: &'a GpuContext) -> Self {
        // every kernel's uniform block fits one slot; slots start at aligned offsets
        let align = ctx.limits.min_uniform_buffer_offset_alignment.max(16) as usize;
        let slot_size = (ctx.kernels.largest_uniform() as usize).next_multiple_of(align);
        Recorder {
            ctx,
            commands: Vec::new(),
            uniform_data: Vec::new(),
            slot_size,
            submitted_dispatches: 0,
            profiling: ctx.profiling(),
            phase: String::new(),
            step_rows: false,
            notes: Vec::new(),
        }
    }

    /// Whether the dispatches are being profiled (notes are worth making).
    pub fn profiling(&self) -> bool {
        self.profiling
    }

    /// Names the part of the work the dispatches recorded from now on belong to, for a
    /// profile (nothing is kept when the device is not profiled).
    pub fn phase(&mut self, name: std::fmt::Arguments<'_>) {
        self.start_phase(name, false);
    }

    /// [`Recorder::phase`] for a time loop: its products' row counts vary from step to
    /// step (variable lengths), so a profile counts them together whatever their rows.
    pub fn steps_phase(&mut self, name: std::fmt::Arguments<'_>) {
        self.start_phase(name, true);
    }

    fn start_phase(&mut self, name: std::fmt::Arguments<'_>, step_rows: bool) {
        if self.profiling {
            self.phase = name.to_string();
            self.step_rows = step_rows;
        }
    }

    /// Whether the phase being recorded is a time loop's (see [`Recorder::steps_phase`]).
    pub fn in_steps(&self) -> bool {
        self.step_rows
    }

    /// Says what the last dispatch computes and how many floating-point operations it
    /// does, for a profile (call only when [`Recorder::profiling`]).
    pub fn note(&mut self, detail: String, flops: f64) {
        if let Some(last) = self.notes.last_mut() {
            last.detail = detail;
            last.flops = flops;
        }
    }

    /// A dispatch of `kernel` with `params` as its uniform block and `buffers` bound
    /// at 1.. in order.
    pub fn dispatch<P: Pod>(
        &mut self,
        kernel: &'a Kernel,
        params: P,
        buffers: &[&'a wgpu::Buffer],
        workgroups: [u32; 3],
    ) {
        debug_assert_eq!(
            std::mem::size_of::<P>() as u64,
            kernel.uniform_size,
            "{}",
            kernel.name
        );
        if workgroups.contains(&0) {
            return;
        }
        let slot = (self.uniform_data.len() / self.slot_size) as u32;
        self.uniform_data
            .extend_from_slice(bytemuck::bytes_of(&params));
        self.uniform_data
            .resize((slot as usize + 1) * self.slot_size, 0);
        self.commands.push(Command::Dispatch {
            kernel,
            buffers: buffers.to_vec(),
            slot,
            workgroups,
        });
        if self.profiling {
            self.notes.push(DispatchNote {
                phase: self.phase.clone(),
                ..Default::default()
            });
        }
    }

    /// A one-dimensional dispatch of `threads` threads in workgroups of 256, folded into
    /// two dimensions past the adapter's per-dimension limit (kernels index with
    /// `gid.x + gid.y * num_workgroups.x * 256`).
    pub fn dispatch_1d<P: Pod>(
        &mut self,
        kernel: &'a Kernel,
        params: P,
        buffers: &[&'a wgpu::Buffer],
        threads: usize,
    ) {
        let groups = threads.div_ceil(256) as u32;
        let max = self.ctx.limits.max_compute_workgroups_per_dimension.max(1);
        let (x, y) = if groups <= max {
            (groups, 1)
        } else {
            (max, groups.div_ceil(max))
        };
        self.dispatch(kernel, params, buffers, [x, y, 1]);
    }

    /// Number of dispatches recorded so far (including those already submitted).
    pub fn dispatches(&self) -> usize {
        self.submitted_dispatches
            + self
                .commands
                .iter()
                .filter(|c| matches!(c, Command::Dispatch { .. }))
                .count()
    }

    pub fn clear(&mut self, buffer: &'a wgpu::Buffer) {
        self.commands.push(Command::Clear { buffer });
    }

    /// Writes the uniforms, encodes every command (dispatches in as few compute passes as
    /// the copies and clears allow), and submits it all at once.
    pub fn submit(mut self, cache: &mut BindGroupCache) -> Result<wgpu::SubmissionIndex> {
        self.submit_so_far(cache)
    }

    /// Submits what is recorded so far, as [`Recorder::submit`] does, so that the GPU
    /// starts on it while the rest is recorded; recording goes on from an empty list (its
    /// uniforms overwrite these only after the GPU has run them: writes to a buffer are
    /// ordered after the submissions before them).
    pub fn submit_so_far(&mut self, cache: &mut BindGroupCache) -> Result<wgpu::SubmissionIndex> {
        let index = self.encode_and_submit(cache)?;
        self.submitted_dispatches = self.dispatches();
        self.commands.clear();
        self.uniform_data.clear();
        self.notes.clear();
        Ok(index)
    }

    fn encode_and_submit(&self, cache: &mut BindGroupCache) -> Result<wgpu::SubmissionIndex> {
        let device = &self.ctx.device;
        let needed = self.uniform_data.len().max(self.slot_size) as u64;
        let max_dispatches = self.ctx.limits.max_buffer_size / self.slot_size as u64;
        if needed > self.ctx.limits.max_buffer_size {
            return Err(Error::ExceedsDeviceLimit {
                what: "the dispatches of one step".into(),
                needed: needed / self.slot_size as u64,
                limit: max_dispatches,
                hint: "use shorter sequences or split them with truncated BPTT",
            });
        }
        if cache.uniforms.as_ref().is_none_or(|u| u.size() < needed) {
            cache.groups.clear();
            cache.uniforms = Some(
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("unfold uniforms"),
                    size: needed
                        .next_power_of_two()
                        .min(self.ctx.limits.max_buffer_size.max(needed)),
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
            );
        }
        let uniforms = cache.uniforms.clone().expect("just created");
        if !self.uniform_data.is_empty() {
            self.ctx
                .queue
                .write_buffer(&uniforms, 0, &self.uniform_data);
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        // bind groups first: the pass borrows them
        let mut keys = Vec::with_capacity(self.commands.len());
        for cmd in &self.commands {
            if let Command::Dispatch {
                kernel, buffers, ..
            } = cmd
            {
                let key = (
                    kernel.id,
                    buffers.iter().map(|b| (*b).clone()).collect::<Vec<_>>(),
                );
                if !cache.groups.contains_key(&key) {
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &uniforms,
                            offset: 0,
                            size: wgpu::BufferSize::new(kernel.uniform_size),
                        }),
                    }];
                    for (i, b) in buffers.iter().enumerate() {
                        entries.push(wgpu::BindGroupEntry {
                            binding: i as u32 + 1,
                            resource: b.as_entire_binding(),
                        });
                    }
                    let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(kernel.name),
                        layout: &kernel.layout,
                        entries: &entries,
                    });
                    cache.groups.insert(key.clone(), group);
                }
                keys.push(Some(key));
            } else {
                keys.push(None);
            }
        }
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("unfold step"),
        });
        let dispatches = keys.iter().filter(|k| k.is_some()).count();
        // profiled: a timestamp before each pass's first dispatch and after every dispatch
        let mut timestamps = (self.profiling && self.ctx.profiling()).then(|| {
            let passes = self
                .commands
                .iter()
                .zip(std::iter::once(None).chain(self.commands.iter().map(Some)))
                .filter(|(c, before)| {
                    matches!(c, Command::Dispatch { .. })
                        && !matches!(before, Some(Command::Dispatch { .. }))
                })
                .count();
            Timestamps::new(device, (dispatches + passes) as u32)
        });
        let mut notes = self.notes.iter();
        let mut i = 0;
        while i < self.commands.len() {
            match &self.commands[i] {
                Command::Dispatch { .. } => {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("unfold"),
                        timestamp_writes: None,
                    });
                    let mut before = timestamps.as_mut().map(|t| t.write(&mut pass));
                    while let Some(Command::Dispatch {
                        kernel,
                        slot,
                        workgroups,
                        ..
                    }) = self.commands.get(i)
                    {
                        let group = &cache.groups[keys[i].as_ref().expect("dispatch has a key")];
                        pass.set_pipeline(&kernel.pipeline);
                        pass.set_bind_group(0, group, &[slot * self.slot_size as u32]);
                        pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
                        if let (Some(t), Some(start)) = (timestamps.as_mut(), before) {
                            let after = t.write(&mut pass);
                            let note = notes.next().cloned().unwrap_or_default();
                            t.note(kernel.name, note, start, after);
                            before = Some(after);
                        }
                        i += 1;
                    }
                }
                Command::Clear { buffer } => {
                    encoder.clear_buffer(buffer, 0, None);
                    i += 1;
                }
            }
        }
        if let Some(t) = &timestamps {
            t.resolve(&mut encoder);
        }
        let index = self.ctx.queue.submit([encoder.finish()]);
        if let Some(t) = timestamps {
            self.ctx.profiler().push(t);
        }
        self.ctx
            .note_submission(dispatches, self.uniform_data.len());
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("recording a step: {e}")));
        }
        Ok(index)
    }
}

/// Reads `sizes[i]` f32 values from each buffer region after everything submitted so far,
/// through one mapped staging buffer.
pub(crate) fn read_back(
    ctx: &GpuContext,
    regions: &[(&wgpu::Buffer, u64, usize)],
) -> Result<Vec<Vec<f32>>> {
    let total: u64 = regions
        .iter()
        .map(|(_, _, n)| (*n as u64 * 4).next_multiple_of(8))
        .sum();
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("unfold read-back"),
        size: total.max(8),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("read-back"),
        });
    let mut at = 0;
    for (buf, offset, n) in regions {
        if *n > 0 {
            encoder.copy_buffer_to_buffer(buf, offset * 4, &staging, at, *n as u64 * 4);
        }
        at += (*n as u64 * 4).next_multiple_of(8);
    }
    ctx.queue.submit([encoder.finish()]);
    ctx.note_read_back(regions.iter().map(|(_, _, n)| n * 4).sum());
    read_mapped(ctx, &staging, .., |view| {
        let mut out = Vec::with_capacity(regions.len());
        let mut at = 0usize;
        for (_, _, n) in regions {
            out.push(bytemuck::pod_collect_to_vec::<u8, f32>(
                &view[at..at + n * 4],
            ));
            at += (n * 4).next_multiple_of(8);
        }
        out
    })
}

/// Maps `range` of `buffer` (a mappable read-back buffer) once the work submitted so far
/// is done, hands its bytes to `read`, and unmaps it.
pub(crate) fn read_mapped<T>(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    range: impl std::ops::RangeBounds<wgpu::BufferAddress>,
    read: impl FnOnce(&[u8]) -> T,
) -> Result<T> {
    let slice = buffer.slice(range);
    let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = sender.send(r);
    });
    ctx.wait()?;
    pollster::block_on(receiver.receive())
        .ok_or_else(|| Error::Gpu("read-back was cancelled".into()))?
        .map_err(|e| Error::Gpu(format!("mapping the read-back buffer: {e}")))?;
    let view = slice
        .get_mapped_range()
        .map_err(|e| Error::Gpu(format!("reading the mapped buffer: {e}")))?;
    let out = read(&view);
    drop(view);
    buffer.unmap();
    Ok(out)
}
