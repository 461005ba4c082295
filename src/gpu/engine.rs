//! The recording engine every GPU operation goes through (vello's engine is the model).
//!
//! Operations do not submit: they record their uploads (as copies from staging), dispatches and
//! copies into one open command encoder, and the engine submits it only when the host must wait
//! for the device: a read-back, a timing, [`crate::backend::Buffers::synchronize`]. A natural
//! gradient step is then one submission per value it reads back, and the count of those waits is
//! what decides a small model's step time on a real GPU.
//!
//! What a step records again and again is made once and cached: uniform buffers by content, bind
//! groups by pipeline (or layout) and buffers, split-k scratch by size, and the buffers of
//! batches by size, which come back to [`Pool`] when a batch is dropped. Reusing a buffer is safe
//! because every write to it, uploads included, is recorded in order behind the work that read it
//! before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Past this many entries a cache is emptied and starts again: a run uses a few hundred distinct
/// uniforms and bind groups per step shape, and the cache must not keep dead buffers alive.
const CACHE_CAPACITY: usize = 4096;

/// Waits and submissions since the device was opened: what `--profile` reports per step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Command buffers handed to the queue.
    pub submissions: u64,
    /// Times the host waited for the device (read-backs, timings, synchronisations).
    pub host_syncs: u64,
}

#[derive(PartialEq, Eq, Hash)]
enum Layout {
    Pipeline(wgpu::ComputePipeline),
    Explicit(wgpu::BindGroupLayout),
}

#[derive(PartialEq, Eq, Hash)]
struct GroupKey {
    layout: Layout,
    entries: Vec<(u32, wgpu::Buffer)>,
}

/// Storage buffers free for reuse, by size and usage, and the bytes they hold.
#[derive(Default)]
pub struct Free {
    buffers: HashMap<(u64, wgpu::BufferUsages), Vec<wgpu::Buffer>>,
    bytes: u64,
}

/// The free buffers, shared with every buffer that goes back to them when dropped.
pub type Pool = Arc<Mutex<Free>>;

/// The most bytes the pool keeps idle: enough for a step's batch, scratch and temporaries; a
/// dropped buffer past it is freed.
const POOL_BYTES: u64 = 512 << 20;

#[derive(Default)]
pub struct Engine {
    open: Mutex<Option<wgpu::CommandEncoder>>,
    /// reused buffers to zero before anything recorded after their reuse (see [`Engine::zero`])
    to_zero: Mutex<Vec<wgpu::Buffer>>,
    uniforms: Mutex<HashMap<Box<[u8]>, wgpu::Buffer>>,
    groups: Mutex<HashMap<GroupKey, wgpu::BindGroup>>,
    scratch: Mutex<HashMap<u64, wgpu::Buffer>>,
    pool: Pool,
    gate: Mutex<Option<Gate>>,
    /// read-backs recorded for later, to map once the submission holding their copies is made
    unmapped: Mutex<Vec<(wgpu::Buffer, MapSender)>>,
    submissions: AtomicU64,
    host_syncs: AtomicU64,
}

/// Dispatches recorded inside a loop whose iterations the device may stop (see
/// [`Engine::open_gate`]): each one reads its size from `args`, which a kernel at the top of each
/// iteration fills with the recorded sizes while the loop runs and with zeros once it has stopped.
struct Gate {
    args: wgpu::Buffer,
    /// slots `args` has room for
    capacity: usize,
    /// the sizes of the first iteration's dispatches, in order; later iterations must repeat them
    recorded: Vec<[u32; 3]>,
    /// the next dispatch's slot in this iteration
    cursor: usize,
    first: bool,
}

/// Bytes of one indirect dispatch's sizes.
pub const GATE_SLOT_BYTES: u64 = 12;

/// Where a staging buffer's mapping reports.
pub type MapSender = std::sync::mpsc::Sender<Result<(), wgpu::BufferAsyncError>>;

/// A poisoned lock only means another thread panicked mid-record; the maps stay usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    /// Runs `f` on the open encoder (opening one if none is), after zeroing the buffers reused
    /// since the last recording. `f` must not record itself: the encoder is locked while it runs.
    pub fn record<T>(&self, device: &wgpu::Device, f: impl FnOnce(&mut wgpu::CommandEncoder) -> T) -> T {
        let mut open = lock(&self.open);
        let encoder = open.get_or_insert_with(|| device.create_command_encoder(&Default::default()));
        for buffer in lock(&self.to_zero).drain(..) {
            encoder.clear_buffer(&buffer, 0, None);
        }
        f(encoder)
    }

    /// Zeroes `buffer` ahead of whatever is recorded next. A buffer taken from the pool inside a
    /// recording (split-k or reduction scratch, which the kernels overwrite before they read) is
    /// zeroed at the next recording instead, after its first use.
    pub fn zero(&self, buffer: &wgpu::Buffer) {
        lock(&self.to_zero).push(buffer.clone());
    }

    /// Submits what has been recorded (an empty submission if nothing has), and returns its index.
    pub fn flush(&self, device: &wgpu::Device, queue: &wgpu::Queue) -> wgpu::SubmissionIndex {
        // zero what is still waiting, so that nothing reads a reused buffer's old contents
        if !lock(&self.to_zero).is_empty() {
            self.record(device, |_| ());
        }
        let encoder = lock(&self.open).take();
        self.submissions.fetch_add(1, Ordering::Relaxed);
        let index = match encoder {
            Some(e) => queue.submit([e.finish()]),
            None => queue.submit([]),
        };
        // their copies are in this submission: the mappings complete with it, at the next wait
        for (staging, sender) in lock(&self.unmapped).drain(..) {
            staging.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = sender.send(r);
            });
        }
        index
    }

    /// Registers `staging`, whose copies are recorded, to be mapped after the next submission.
    pub fn map_after_submit(&self, staging: wgpu::Buffer, sender: MapSender) {
        lock(&self.unmapped).push((staging, sender));
    }

    /// Counts one wait of the host on the device.
    pub fn count_sync(&self) {
        self.host_syncs.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> Counts {
        Counts {
            submissions: self.submissions.load(Ordering::Relaxed),
            host_syncs: self.host_syncs.load(Ordering::Relaxed),
        }
    }

    /// Records a copy of `data` into `buffer` at `offset`, ordered after everything recorded
    /// before it (unlike `Queue::write_buffer`, which lands before the whole next submission).
    pub fn write(
        &self,
        device: &wgpu::Device,
        buffer: &wgpu::Buffer,
        offset: u64,
        data: &[u8],
    ) -> Result<(), wgpu::MapRangeError> {
        if data.is_empty() {
            return Ok(());
        }
        let staging = buffer_holding(device, "upload", data, wgpu::BufferUsages::COPY_SRC)?;
        self.record(device, |e| {
            e.copy_buffer_to_buffer(&staging, 0, buffer, offset, data.len() as u64)
        });
        Ok(())
    }

    /// A uniform buffer holding `bytes`, made once per distinct content.
    pub fn uniform(&self, device: &wgpu::Device, bytes: &[u8]) -> Result<wgpu::Buffer, wgpu::MapRangeError> {
        let mut cache = lock(&self.uniforms);
        if let Some(b) = cache.get(bytes) {
            return Ok(b.clone());
        }
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        let buffer = buffer_holding(device, "params", bytes, wgpu::BufferUsages::UNIFORM)?;
        cache.insert(bytes.into(), buffer.clone());
        Ok(buffer)
    }

    /// The bind group of `pipeline`'s group 0 (or of `layout`, when the pipeline has an explicit
    /// one) with `(binding, buffer)` entries, made once per distinct set of buffers.
    pub fn bind_group(
        &self,
        device: &wgpu::Device,
        pipeline: &wgpu::ComputePipeline,
        layout: Option<&wgpu::BindGroupLayout>,
        label: &str,
        entries: &[(u32, &wgpu::Buffer)],
    ) -> wgpu::BindGroup {
        let key = GroupKey {
            layout: match layout {
                Some(l) => Layout::Explicit(l.clone()),
                None => Layout::Pipeline(pipeline.clone()),
            },
            entries: entries.iter().map(|(i, b)| (*i, (*b).clone())).collect(),
        };
        let mut cache = lock(&self.groups);
        if let Some(g) = cache.get(&key) {
            return g.clone();
        }
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        let derived;
        let layout = match layout {
            Some(l) => l,
            None => {
                derived = pipeline.get_bind_group_layout(0);
                &derived
            }
        };
        let entries: Vec<wgpu::BindGroupEntry> = entries
            .iter()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: *i,
                resource: b.as_entire_binding(),
            })
            .collect();
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout,
            entries: &entries,
        });
        cache.insert(key, group.clone());
        group
    }

    /// A scratch buffer of `bytes` (storage), one per size: dispatches that use it in turn are
    /// ordered by the pass, so one buffer serves every product of that size.
    pub fn scratch(
        &self,
        bytes: u64,
        make: impl FnOnce() -> crate::error::Result<wgpu::Buffer>,
    ) -> crate::error::Result<wgpu::Buffer> {
        let mut cache = lock(&self.scratch);
        if let Some(b) = cache.get(&bytes) {
            return Ok(b.clone());
        }
        if cache.len() >= 64 {
            cache.clear();
        }
        let buffer = make()?;
        cache.insert(bytes, buffer.clone());
        Ok(buffer)
    }

    /// Records a dispatch of `(x, y, z)` workgroups: direct, or inside an open gate indirect
    /// through the gate's next slot.
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass, (x, y, z): (u32, u32, u32)) -> crate::error::Result<()> {
        let mut gate = lock(&self.gate);
        let Some(g) = gate.as_mut() else {
            pass.dispatch_workgroups(x, y, z);
            return Ok(());
        };
        let slot = g.cursor;
        g.cursor += 1;
        if g.first {
            if slot >= g.capacity {
                return Err(crate::error::Error::Gpu(format!(
                    "a recorded solve's iteration has more than {} dispatches",
                    g.capacity
                )));
            }
            g.recorded.push([x, y, z]);
        } else if g.recorded.get(slot) != Some(&[x, y, z]) {
            return Err(crate::error::Error::Gpu(
                "a recorded solve's iterations differ in their dispatches: the operator must record the same work each time".into(),
            ));
        }
        pass.dispatch_workgroups_indirect(&g.args, slot as u64 * GATE_SLOT_BYTES);
        Ok(())
    }

    /// Starts gating: the dispatches recorded until [`Engine::close_gate`] take their sizes from
    /// `args` (INDIRECT | STORAGE, `capacity` slots).
    pub fn open_gate(&self, args: wgpu::Buffer, capacity: usize) {
        *lock(&self.gate) = Some(Gate {
            args,
            capacity,
            recorded: Vec::new(),
            cursor: 0,
            first: true,
        });
    }

    /// Starts the next iteration of the gated loop.
    pub fn next_iteration(&self) {
        if let Some(g) = lock(&self.gate).as_mut() {
            g.first = g.first && g.cursor == 0;
            g.cursor = 0;
        }
    }

    /// Whether a gate is open: nothing may be submitted then, since the gate's recorded sizes
    /// reach the device only with [`Engine::close_gate`].
    pub fn gated(&self) -> bool {
        lock(&self.gate).is_some()
    }

    /// Ends gating; returns the sizes every iteration recorded, in slot order.
    pub fn close_gate(&self) -> Vec<[u32; 3]> {
        lock(&self.gate).take().map(|g| g.recorded).unwrap_or_default()
    }

    /// The pool batches return their buffers to.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// A free buffer of `size` and `usage` from `pool`, if one is there.
pub fn take(pool: &Pool, size: u64, usage: wgpu::BufferUsages) -> Option<wgpu::Buffer> {
    let mut free = lock(pool);
    let buffer = free.buffers.get_mut(&(size, usage)).and_then(Vec::pop)?;
    free.bytes -= size;
    Some(buffer)
}

/// Gives `buffer` back to `pool`, unless the pool already holds its fill.
pub fn give_back(pool: &Pool, buffer: wgpu::Buffer) {
    let mut free = lock(pool);
    let size = buffer.size();
    if free.bytes + size <= POOL_BYTES {
        free.bytes += size;
        free.buffers.entry((size, buffer.usage())).or_default().push(buffer);
    }
}

/// A new buffer holding `contents`: `DeviceExt::create_buffer_init` without its panic. On a lost
/// device the buffer is born invalid and mapping it fails; that is the caller's error to report.
fn buffer_holding(
    device: &wgpu::Device,
    label: &str,
    contents: &[u8],
    usage: wgpu::BufferUsages,
) -> Result<wgpu::Buffer, wgpu::MapRangeError> {
    // a mapped buffer's size is a multiple of COPY_BUFFER_ALIGNMENT and above 0
    let align = wgpu::COPY_BUFFER_ALIGNMENT;
    let size = (contents.len() as u64).div_ceil(align).max(1) * align;
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage,
        mapped_at_creation: true,
    });
    buffer
        .get_mapped_range_mut(..)?
        .slice(..contents.len())
        .copy_from_slice(contents);
    buffer.unmap();
    Ok(buffer)
}
