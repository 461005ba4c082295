//! Device buffers: matrices and vectors padded to whole vec4s, allocation checked against the
//! device's limits, uploads, and bounded read-backs.
//!
//! Layout: a matrix `rows × cols` is stored row-major with a row stride `ld = cols` rounded up to
//! 4 and `rows` rounded up to 4, the padding zero; a vector of `len` is stored as `len` rounded
//! up to 4, the padding zero. Kernels then load whole vec4s and handle no tails.

use wgpu::util::DeviceExt;

use super::context::GpuContext;
use crate::error::{Error, Result};

/// `n` rounded up to a whole number of vec4s.
pub fn padded(n: usize) -> usize {
    n.next_multiple_of(4)
}

/// A dense row-major f32 matrix on the device.
pub struct GpuMatrix {
    pub(crate) buffer: wgpu::Buffer,
    pub rows: usize,
    pub cols: usize,
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

/// An f32 vector on the device.
pub struct GpuVector {
    pub(crate) buffer: wgpu::Buffer,
    pub len: usize,
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
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            // wgpu rounds nothing: keep the size a multiple of 4 and never 0
            size: bytes.max(16).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST | extra,
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
        Ok(GpuMatrix { buffer, rows, cols })
    }

    /// Uploads `data` (`rows × cols`, row-major, already checked) into the padded layout.
    pub fn upload_matrix(&self, what: &'static str, rows: usize, cols: usize, data: &[f32]) -> Result<GpuMatrix> {
        let m = self.zeros_matrix(what, rows, cols)?;
        let ld = m.ld();
        if ld == cols {
            self.queue.write_buffer(&m.buffer, 0, bytemuck::cast_slice(data));
        } else {
            let mut staged = vec![0.0f32; rows * ld];
            for (dst, src) in staged.chunks_exact_mut(ld).zip(data.chunks_exact(cols)) {
                dst[..cols].copy_from_slice(src);
            }
            self.queue.write_buffer(&m.buffer, 0, bytemuck::cast_slice(&staged));
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
        Ok(GpuVector { buffer, len })
    }

    /// Uploads `data` (already checked).
    pub fn upload_vector(&self, what: &'static str, data: &[f32]) -> Result<GpuVector> {
        let v = self.zeros_vector(what, data.len())?;
        self.queue.write_buffer(&v.buffer, 0, bytemuck::cast_slice(data));
        Ok(v)
    }

    /// A small uniform buffer holding `value`.
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::bytes_of(value),
            usage: wgpu::BufferUsages::UNIFORM,
        })
    }

    /// Copies `size` bytes at `offset` of `buffer` back to the host after all queued work,
    /// waiting at most the context's timeout.
    pub fn read_back<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<T>> {
        let mut encoder = self.device.create_command_encoder(&Default::default());
        let staging = self.copy_to_staging(&mut encoder, buffer, offset, size);
        let index = self.queue.submit([encoder.finish()]);
        self.map_staging(&staging, index)
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
        let ld = m.ld();
        let all: Vec<f32> = self.read_back(&m.buffer, 0, (m.rows * ld * 4) as u64)?;
        if ld == m.cols {
            return Ok(all);
        }
        Ok(all.chunks_exact(ld).flat_map(|row| &row[..m.cols]).copied().collect())
    }

    /// The vector back on the host.
    pub fn download_vector(&self, v: &GpuVector) -> Result<Vec<f32>> {
        let mut all: Vec<f32> = self.read_back(&v.buffer, 0, (padded(v.len) * 4) as u64)?;
        all.truncate(v.len);
        Ok(all)
    }
}
