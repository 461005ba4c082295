//! Device buffers: matrices and vectors padded to whole vec4s, allocation checked against the
//! device's limits, uploads, and bounded read-backs.
//!
//! Layout: a matrix `rows × cols` is stored row-major with a row stride `ld = cols` rounded up to
//! 4 and `rows` rounded up to 4, the padding zero; a vector of `len` is stored as `len` rounded
//! up to 4, the padding zero. Kernels then load whole vec4s and handle no tails.

use super::context::{GpuContext, one_line};
use super::engine::{self, Pool};
use crate::error::{Error, Result};

/// `n` rounded up to a whole number of vec4s.
pub fn padded(n: usize) -> usize {
    n.next_multiple_of(4)
}

/// A dense row-major f32 matrix on the device; its buffer goes back to the pool when dropped.
pub struct GpuMatrix {
    pub(crate) buffer: wgpu::Buffer,
    pub rows: usize,
    pub cols: usize,
    pool: Pool,
}

impl Drop for GpuMatrix {
    fn drop(&mut self) {
        engine::give_back(&self.pool, self.buffer.clone());
    }
}

impl GpuMatrix {
    /// Row stride in elements.
    pub fn ld(&self) -> usize {
        padded(self.cols)
    }

    /// Row stride in vec4s.
    pub(crate) fn ld4(&self) -> u32 {
        (self.ld() / 4) as u32
    }
}

/// An f32 vector on the device; its buffer goes back to the pool when dropped.
pub struct GpuVector {
    pub(crate) buffer: wgpu::Buffer,
    pub len: usize,
    pool: Pool,
}

impl Drop for GpuVector {
    fn drop(&mut self) {
        engine::give_back(&self.pool, self.buffer.clone());
    }
}

impl GpuVector {
    /// Length in vec4s.
    pub(crate) fn n4(&self) -> u32 {
        (padded(self.len) / 4) as u32
    }
}

/// The most bytes one buffer may hold: the shaders index f32 elements with 32-bit integers.
pub const MAX_INDEXED_BYTES: u64 = 4 << 32;

/// Bytes of a `rows × cols` matrix in the padded layout.
pub fn matrix_bytes(rows: usize, cols: usize) -> Option<u64> {
    (padded(rows) as u64).checked_mul(padded(cols) as u64)?.checked_mul(4)
}

/// A read-back recorded now and collected later ([`GpuContext::read_later`]).
pub struct Later {
    staging: wgpu::Buffer,
    mapped: std::sync::mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>,
    sizes: Vec<u64>,
}

/// Matrices being read back, with their shapes.
pub struct PendingMatrices {
    pub(crate) later: Later,
    pub(crate) shapes: Vec<(usize, usize)>,
}

/// `m`'s rows as read back (`rows × ld`), without the padding columns.
pub fn unpad(m: &GpuMatrix, all: Vec<f32>) -> Vec<f32> {
    unpad_rows(m.rows, m.cols, all)
}

/// A `rows × cols` matrix's rows as read back (`rows × ld`), without the padding columns.
pub fn unpad_rows(rows: usize, cols: usize, mut all: Vec<f32>) -> Vec<f32> {
    let ld = padded(cols);
    all.truncate(rows * ld);
    if ld == cols {
        return all;
    }
    all.chunks_exact(ld).flat_map(|row| &row[..cols]).copied().collect()
}

impl GpuContext {
    /// A storage buffer of `bytes`, zero-filled, checked against the device's buffer and binding
    /// limits; `what` and `shape` name it in errors.
    pub fn storage_buffer(
        &self,
        what: &'static str,
        shape: &str,
        bytes: u64,
        extra: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        let too_large = |limit_name, limit| Error::TooLarge {
            buffer: what,
            shape: shape.to_owned(),
            bytes,
            limit_name,
            limit,
        };
        if bytes > self.limits.max_buffer_size {
            return Err(too_large("max_buffer_size", self.limits.max_buffer_size));
        }
        if bytes > MAX_INDEXED_BYTES {
            return Err(too_large(
                "32-bit element indexing of natgrad's kernels",
                MAX_INDEXED_BYTES,
            ));
        }
        if bytes > self.limits.max_storage_buffer_binding_size {
            return Err(too_large(
                "max_storage_buffer_binding_size",
                self.limits.max_storage_buffer_binding_size,
            ));
        }
        // wgpu rounds nothing: keep the size a multiple of 4 and never 0
        let size = bytes.max(16).next_multiple_of(4);
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST | extra;
        if let Some(buffer) = engine::take(self.engine.pool(), size, usage) {
            // zeroed in order behind whatever used it last
            self.engine.zero(&buffer);
            return Ok(buffer);
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size,
            usage,
            mapped_at_creation: false,
        });
        match pollster::block_on(scope.pop()) {
            None => Ok(buffer),
            Some(_) => Err(Error::OutOfMemory { buffer: what, bytes }),
        }
    }

    /// A `rows × cols` matrix of zeros.
    pub fn zeros_matrix(&self, what: &'static str, rows: usize, cols: usize) -> Result<GpuMatrix> {
        if rows == 0 || cols == 0 {
            return Err(Error::Empty(what));
        }
        let shape = format!("{rows}×{cols} f32");
        let bytes = matrix_bytes(rows, cols).ok_or_else(|| Error::Shape(format!("{what}: {shape} overflows")))?;
        let buffer = self.storage_buffer(what, &shape, bytes, wgpu::BufferUsages::empty())?;
        Ok(GpuMatrix {
            buffer,
            rows,
            cols,
            pool: self.engine.pool().clone(),
        })
    }

    /// Uploads `data` (`rows × cols`, row-major, already checked) into the padded layout.
    pub fn upload_matrix(&self, what: &'static str, rows: usize, cols: usize, data: &[f32]) -> Result<GpuMatrix> {
        let m = self.zeros_matrix(what, rows, cols)?;
        let ld = m.ld();
        if ld == cols {
            self.write(&m.buffer, 0, bytemuck::cast_slice(data))?;
        } else {
            let mut staged = vec![0.0f32; rows * ld];
            for (dst, src) in staged.chunks_exact_mut(ld).zip(data.chunks_exact(cols)) {
                dst[..cols].copy_from_slice(src);
            }
            self.write(&m.buffer, 0, bytemuck::cast_slice(&staged))?;
        }
        Ok(m)
    }

    /// A vector of `len` zeros.
    pub fn zeros_vector(&self, what: &'static str, len: usize) -> Result<GpuVector> {
        if len == 0 {
            return Err(Error::Empty(what));
        }
        let shape = format!("{len} f32");
        let buffer = self.storage_buffer(what, &shape, padded(len) as u64 * 4, wgpu::BufferUsages::empty())?;
        Ok(GpuVector {
            buffer,
            len,
            pool: self.engine.pool().clone(),
        })
    }

    /// Uploads `data` (already checked).
    pub fn upload_vector(&self, what: &'static str, data: &[f32]) -> Result<GpuVector> {
        let v = self.zeros_vector(what, data.len())?;
        self.write(&v.buffer, 0, bytemuck::cast_slice(data))?;
        Ok(v)
    }

    /// Records a copy of `data` into `buffer` at `offset`, in order with the recorded work.
    pub fn write(&self, buffer: &wgpu::Buffer, offset: u64, data: &[u8]) -> Result<()> {
        self.engine
            .write(&self.device, buffer, offset, data)
            .map_err(|e| self.mapping_failed("an upload's staging buffer", e))
    }

    /// A uniform buffer holding `value` (one per distinct value, cached).
    pub fn uniform<T: bytemuck::Pod>(&self, value: &T) -> Result<wgpu::Buffer> {
        self.engine
            .uniform(&self.device, bytemuck::bytes_of(value))
            .map_err(|e| self.mapping_failed("a uniform buffer", e))
    }

    /// A new buffer that could not be mapped: the device's own fault (lost, out of memory) when
    /// it reported one, which says more than the mapping's failure.
    fn mapping_failed(&self, what: &str, e: wgpu::MapRangeError) -> Error {
        // a lost device's callback runs when the device is next polled
        let _ = self.device.poll(wgpu::PollType::Poll);
        match self.check_fault() {
            Err(fault) => fault,
            Ok(()) => Error::Gpu(format!("filling {what}: {}", one_line(&e.to_string()))),
        }
    }

    /// Copies `size` bytes at `offset` of `buffer` back to the host after all recorded work,
    /// waiting at most the context's timeout: one submission and one host wait.
    pub fn read_back<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<T>> {
        let staging = self.record(|e| self.copy_to_staging(e, buffer, offset, size));
        let index = self.flush()?;
        self.map_staging(&staging, index)
    }

    /// Several ranges `(buffer, offset, size)` read back together after all recorded work: one
    /// submission and one host wait, however many values the host needs.
    pub fn read_back_many(&self, ranges: &[(&wgpu::Buffer, u64, u64)]) -> Result<Vec<Vec<u8>>> {
        let later = self.read_later(ranges);
        self.collect(later)
    }

    /// Records copies of the ranges into one staging buffer, mapped after the next submission:
    /// the values come back with whatever wait the host makes next.
    pub fn read_later(&self, ranges: &[(&wgpu::Buffer, u64, u64)]) -> Later {
        let total: u64 = ranges.iter().map(|r| r.2).sum();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back for later"),
            size: total.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.record(|e| {
            let mut at = 0;
            for &(buffer, offset, size) in ranges {
                e.copy_buffer_to_buffer(buffer, offset, &staging, at, size);
                at += size;
            }
        });
        let (sender, mapped) = std::sync::mpsc::channel();
        self.engine.map_after_submit(staging.clone(), sender);
        Later {
            staging,
            mapped,
            sizes: ranges.iter().map(|r| r.2).collect(),
        }
    }

    /// The ranges of a [`GpuContext::read_later`], waiting only if no wait has brought them yet.
    pub fn collect(&self, later: Later) -> Result<Vec<Vec<u8>>> {
        let status = match later.mapped.try_recv() {
            Ok(status) => status,
            Err(_) => {
                // not submitted, or not finished: submit what is recorded and wait for it
                self.finish()?;
                later
                    .mapped
                    .try_recv()
                    .map_err(|_| Error::Gpu("a read-back was not mapped after its work finished".into()))?
            }
        };
        status.map_err(|e| Error::Gpu(format!("mapping a read-back buffer: {e}")))?;
        let view = later
            .staging
            .get_mapped_range(..)
            .map_err(|e| Error::Gpu(format!("reading a mapped buffer: {e}")))?;
        let mut at = 0usize;
        let parts = later
            .sizes
            .iter()
            .map(|&size| {
                let part = view[at..at + size as usize].to_vec();
                at += size as usize;
                part
            })
            .collect();
        drop(view);
        later.staging.unmap();
        Ok(parts)
    }

    /// Records a copy of `buffer[offset .. offset + size]` into a new mappable buffer.
    pub fn copy_to_staging(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        buffer: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> wgpu::Buffer {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
        staging
    }

    /// Maps `staging` once `submission` is done (bounded wait) and returns its contents.
    pub fn map_staging<T: bytemuck::Pod>(
        &self,
        staging: &wgpu::Buffer,
        submission: wgpu::SubmissionIndex,
    ) -> Result<Vec<T>> {
        let (sender, receiver) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = sender.send(r);
        });
        self.wait(submission)?;
        match receiver.try_recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Gpu(format!("mapping a read-back buffer: {e}"))),
            Err(_) => {
                return Err(Error::Gpu(
                    "a read-back buffer was not mapped after its submission finished".into(),
                ));
            }
        }
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Gpu(format!("reading a mapped buffer: {e}")))?;
        // copied into a Vec<T> so the result is aligned for T whatever the mapping's alignment
        let count = view.len() / size_of::<T>();
        let mut out = vec![T::zeroed(); count];
        bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(&view[..count * size_of::<T>()]);
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// The matrix back on the host, without padding.
    pub fn download_matrix(&self, m: &GpuMatrix) -> Result<Vec<f32>> {
        let all: Vec<f32> = self.read_back(&m.buffer, 0, (m.rows * m.ld() * 4) as u64)?;
        Ok(unpad(m, all))
    }

    /// The vector back on the host.
    pub fn download_vector(&self, v: &GpuVector) -> Result<Vec<f32>> {
        let mut all: Vec<f32> = self.read_back(&v.buffer, 0, (padded(v.len) * 4) as u64)?;
        all.truncate(v.len);
        Ok(all)
    }
}
