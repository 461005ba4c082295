//! The CPU backend: the fast path where there is no GPU (and the twin every GPU kernel is tested
//! against), plus f64 references in [`reference`].

pub(crate) mod blas2;
pub(crate) mod cg;
pub(crate) mod fisher;
pub(crate) mod linalg;
pub(crate) mod matmul;
pub(crate) mod mlp;
pub(crate) mod optim;
pub mod reference;

pub use mlp::CpuBatch;

use crate::backend::{self, Buffers};
use crate::error::{Error, Result};

/// The most a G chunk takes on the CPU: large enough that chunking costs nothing, small enough
/// to leave memory for F.
const MAX_MATRIX_BYTES: u64 = 256 << 20;

/// How a [`CpuMatrix`]'s elements are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Every element is stored.
    General,
    /// Symmetric, and only the upper triangle (j ≥ i) is meaningful: how a Fisher built on the
    /// CPU is kept. Downloads fill in the lower triangle.
    SymmetricUpper,
}

/// A dense row-major matrix in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
    pub layout: Layout,
}

impl CpuMatrix {
    /// Every element, row-major: the lower triangle filled in for a symmetric-upper matrix.
    pub fn full(&self) -> std::borrow::Cow<'_, [f32]> {
        match self.layout {
            Layout::General => std::borrow::Cow::Borrowed(&self.data),
            Layout::SymmetricUpper => {
                let mut data = self.data.clone();
                fisher::mirror_upper(&mut data, self.rows);
                std::borrow::Cow::Owned(data)
            }
        }
    }

    /// `y = (A + λI) x` for this square matrix, reading what its layout keeps.
    pub fn matvec(&self, damping: f32, x: &[f32], y: &mut [f32]) {
        match self.layout {
            Layout::General => linalg::matvec(&self.data, damping, x, y),
            Layout::SymmetricUpper => linalg::symv_upper(&self.data, damping, x, y),
        }
    }
}

/// The CPU device: rayon's thread pool and the widest SIMD the processor has.
#[derive(Clone, Debug, Default)]
pub struct Cpu;

/// Allocations from this size up are first held against the memory available: asking the
/// allocator for more than the machine has aborts the process (or wakes the OOM killer later).
const CHECKED_ALLOCATION_BYTES: u64 = 64 << 20;

impl Cpu {
    pub fn new() -> Self {
        Self
    }

    /// `len` zeros for the buffer `what` (of `shape`), or the error that it does not fit.
    fn zeros(&self, what: &'static str, len: usize, shape: impl Fn() -> String) -> Result<Vec<f32>> {
        let bytes = (len as u64).saturating_mul(4);
        let too_large = |limit| Error::TooLarge {
            buffer: what,
            shape: shape(),
            bytes,
            limit_name: "available memory",
            limit,
        };
        if bytes >= CHECKED_ALLOCATION_BYTES
            && let Some(available) = self.memory_available()
            && bytes > available
        {
            return Err(too_large(available));
        }
        // zeroed by the allocator (fresh pages cost nothing to zero), as vec![0.0; len] is, but
        // a refusal is an error rather than an abort
        bytemuck::allocation::try_zeroed_slice_box(len)
            .map(Vec::from)
            .map_err(|()| too_large(self.memory_available().unwrap_or(0)))
    }
}

/// The vector instruction set the CPU kernels will use here.
fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "AVX-512";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return "AVX2";
        }
    }
    "baseline SIMD"
}

impl Buffers for Cpu {
    type Matrix = CpuMatrix;
    type Vector = Vec<f32>;
    /// Read at once: the CPU's matrices are on the host already.
    type Pending = Vec<Vec<f32>>;

    fn describe(&self) -> String {
        format!("CPU ({} threads, {})", rayon::current_num_threads(), simd_level())
    }

    fn kind(&self) -> &'static str {
        "cpu"
    }

    fn upload_matrix(&self, what: &'static str, rows: usize, cols: usize, data: &[f32]) -> Result<CpuMatrix> {
        backend::check_upload(what, rows, cols, data)?;
        Ok(CpuMatrix {
            rows,
            cols,
            data: data.to_vec(),
            layout: Layout::General,
        })
    }

    fn upload_symmetric(&self, what: &'static str, dim: usize, data: &[f32]) -> Result<CpuMatrix> {
        let mut m = self.upload_matrix(what, dim, dim, data)?;
        m.layout = Layout::SymmetricUpper;
        Ok(m)
    }

    fn upload_vector(&self, what: &'static str, data: &[f32]) -> Result<Vec<f32>> {
        if data.is_empty() {
            return Err(Error::Empty(what));
        }
        crate::error::check_finite(what, 1, data)?;
        Ok(data.to_vec())
    }

    fn zeros_matrix(&self, what: &'static str, rows: usize, cols: usize) -> Result<CpuMatrix> {
        if rows == 0 || cols == 0 {
            return Err(Error::Empty(what));
        }
        let len = rows
            .checked_mul(cols)
            .ok_or_else(|| Error::Shape(format!("{what}: {rows}×{cols} overflows")))?;
        Ok(CpuMatrix {
            rows,
            cols,
            data: self.zeros(what, len, || format!("{rows}×{cols} f32"))?,
            layout: Layout::General,
        })
    }

    fn zeros_vector(&self, what: &'static str, len: usize) -> Result<Vec<f32>> {
        if len == 0 {
            return Err(Error::Empty(what));
        }
        self.zeros(what, len, || format!("{len} f32"))
    }

    fn download_matrices_later(&self, ms: &[&CpuMatrix]) -> Result<Vec<Vec<f32>>> {
        self.download_matrices(ms)
    }

    fn collect(&self, pending: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>> {
        Ok(pending)
    }

    fn download_matrix(&self, m: &CpuMatrix) -> Result<Vec<f32>> {
        let mut data = m.data.clone();
        if m.layout == Layout::SymmetricUpper {
            fisher::mirror_upper(&mut data, m.rows);
        }
        Ok(data)
    }

    fn download_vector(&self, v: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(v.clone())
    }

    fn shape(&self, m: &CpuMatrix) -> (usize, usize) {
        (m.rows, m.cols)
    }

    fn len(&self, v: &Vec<f32>) -> usize {
        v.len()
    }

    fn copy(&self, src: &Vec<f32>, dst: &mut Vec<f32>) -> Result<()> {
        backend::check_same_len(src.len(), dst.len())?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn copy_range(&self, src: &Vec<f32>, src0: usize, dst: &mut Vec<f32>, dst0: usize, len: usize) -> Result<()> {
        backend::check_range("source range", src0, len, src.len())?;
        backend::check_range("target range", dst0, len, dst.len())?;
        dst[dst0..dst0 + len].copy_from_slice(&src[src0..src0 + len]);
        Ok(())
    }

    fn copy_columns(&self, src: &CpuMatrix, col0: usize, dst: &mut CpuMatrix) -> Result<()> {
        backend::check_same_len(src.rows, dst.rows)?;
        backend::check_range("columns", col0, dst.cols, src.cols)?;
        let full = src.full();
        for (d, s) in dst.data.chunks_exact_mut(dst.cols).zip(full.chunks_exact(src.cols)) {
            d.copy_from_slice(&s[col0..col0 + dst.cols]);
        }
        dst.layout = Layout::General;
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn memory_available(&self) -> Option<u64> {
        // Linux: the kernel's estimate of memory available without swapping
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    fn max_matrix_bytes(&self) -> u64 {
        MAX_MATRIX_BYTES
    }
}
