//! The GPU backend: wgpu plumbing and one typed wrapper per WGSL kernel.
//!
//! Every operation records its dispatches and submits them at once; nothing waits for the GPU
//! except read-backs, each bounded by the context's timeout.

pub(crate) mod blas2;
pub(crate) mod buffer;
pub(crate) mod cg;
pub mod context;
pub(crate) mod engine;
pub(crate) mod fisher;
pub(crate) mod kernel;
pub(crate) mod layout;
pub(crate) mod linalg;
pub(crate) mod matmul;
pub(crate) mod mlp;
pub(crate) mod optim;
pub(crate) mod pcg;
#[doc(hidden)]
pub mod shader;
pub(crate) mod sizes;
pub(crate) mod timer;

pub use buffer::{GpuMatrix, GpuVector};
pub use context::GpuContext;
pub use mlp::GpuBatch;

use crate::backend::{self, Buffers};
use crate::error::{Error, Result};
use std::sync::OnceLock;

use shader::Variant;

/// Choices that specialise the kernels; the defaults follow the adapter.
#[derive(Clone, Copy, Debug)]
pub struct GpuOptions {
    /// Use subgroup reductions where the adapter has them.
    pub subgroups: bool,
    /// Fisher register blocking (1: 64-wide tiles, 2: 128-wide); `None` picks by adapter.
    pub fisher_blocking: Option<u32>,
    /// The matrix product without workgroup memory; `None`: on CPU adapters (lavapipe,
    /// llvmpipe), where barriers are dear.
    pub direct_matmul: Option<bool>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            subgroups: true,
            fisher_blocking: None,
            direct_matmul: None,
        }
    }
}

/// A kernel family, compiled on first use: a run pays only for the kernels it dispatches (on
/// drivers that compile at pipeline creation, the ones it never uses would otherwise cost
/// start-up time).
struct Lazy<T>(OnceLock<T>);

impl<T> Lazy<T> {
    fn new() -> Self {
        Self(OnceLock::new())
    }

    fn get(&self, make: impl FnOnce() -> Result<T>) -> Result<&T> {
        if let Some(family) = self.0.get() {
            return Ok(family);
        }
        let family = make()?;
        Ok(self.0.get_or_init(|| family))
    }
}

/// A GPU device and natgrad's kernels for it, each family compiled when first used.
pub struct Gpu {
    ctx: GpuContext,
    fisher: Lazy<fisher::FisherKernel>,
    /// the matrix product; on CPU adapters it also builds the Fisher (see `fisher.rs`)
    matmul: Lazy<matmul::MatmulKernel>,
    linalg: Lazy<linalg::LinalgKernels>,
    cg: Lazy<cg::CgKernels>,
    pcg: Lazy<pcg::PcgKernels>,
    mlp: Lazy<mlp::MlpKernels>,
    optim: Lazy<optim::OptimKernels>,
    blas2: Lazy<blas2::Blas2Kernels>,
    /// the specialisation the kernels are compiled to
    variant: Variant,
    subgroups: bool,
    fisher_blocking: u32,
    direct_matmul: bool,
}

impl Gpu {
    /// The best adapter whose name contains `adapter` (any adapter if `None`), with default options.
    pub fn open(adapter: Option<&str>) -> Result<Self> {
        Self::with_context(GpuContext::open(adapter)?, GpuOptions::default())
    }

    /// natgrad's kernels for `ctx`, specialised by `options` (each family is compiled when a
    /// run first uses it; [`Gpu::compile_all`] compiles them all now).
    pub fn with_context(ctx: GpuContext, options: GpuOptions) -> Result<Self> {
        let subgroups = options.subgroups && ctx.has_subgroups();
        Ok(Self {
            fisher: Lazy::new(),
            matmul: Lazy::new(),
            linalg: Lazy::new(),
            cg: Lazy::new(),
            pcg: Lazy::new(),
            mlp: Lazy::new(),
            optim: Lazy::new(),
            blas2: Lazy::new(),
            variant: Variant::default().define("SUBGROUPS", subgroups),
            subgroups,
            fisher_blocking: options
                .fisher_blocking
                .unwrap_or_else(|| fisher::default_blocking(&ctx.info)),
            direct_matmul: options.direct_matmul.unwrap_or(!context::is_hardware(&ctx.info)),
            ctx,
        })
    }

    /// Compiles every kernel family now: a kernel that cannot be built on this adapter is then
    /// an error here rather than at its first use.
    pub fn compile_all(&self) -> Result<()> {
        self.fisher()?;
        self.cg()?;
        self.pcg()?;
        self.mlp()?;
        self.optim()?;
        self.blas2()?;
        Ok(())
    }

    fn fisher(&self) -> Result<&fisher::FisherKernel> {
        self.fisher
            .get(|| fisher::FisherKernel::new(&self.ctx, self.fisher_blocking))
    }

    fn matmul(&self) -> Result<&matmul::MatmulKernel> {
        self.matmul
            .get(|| matmul::MatmulKernel::new(&self.ctx, self.direct_matmul))
    }

    fn linalg(&self) -> Result<&linalg::LinalgKernels> {
        self.linalg.get(|| linalg::LinalgKernels::new(&self.ctx, &self.variant))
    }

    fn cg(&self) -> Result<&cg::CgKernels> {
        self.cg
            .get(|| cg::CgKernels::new(&self.ctx, &self.variant, self.linalg()?))
    }

    fn pcg(&self) -> Result<&pcg::PcgKernels> {
        self.pcg.get(|| pcg::PcgKernels::new(&self.ctx, &self.variant))
    }

    fn mlp(&self) -> Result<&mlp::MlpKernels> {
        self.mlp
            .get(|| mlp::MlpKernels::new(&self.ctx, &self.variant, self.matmul()?))
    }

    fn optim(&self) -> Result<&optim::OptimKernels> {
        self.optim.get(|| optim::OptimKernels::new(&self.ctx))
    }

    fn blas2(&self) -> Result<&blas2::Blas2Kernels> {
        self.blas2
            .get(|| blas2::Blas2Kernels::new(&self.ctx, &self.variant, self.matmul()?))
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Whether the reductions run on subgroups.
    pub fn uses_subgroups(&self) -> bool {
        self.subgroups
    }

    /// Edge of the Fisher tile one workgroup computes.
    pub fn fisher_tile(&self) -> u32 {
        fisher::tile(self.fisher_blocking)
    }

    /// Records an operation into the open recording (see [`engine`]); nothing is submitted.
    fn submit(&self, record: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<()>) -> Result<()> {
        self.ctx.record(record)
    }
}

impl Buffers for Gpu {
    type Matrix = GpuMatrix;
    type Vector = GpuVector;
    type Pending = buffer::PendingMatrices;

    fn describe(&self) -> String {
        context::describe(&self.ctx.info)
    }

    fn kind(&self) -> &'static str {
        "gpu"
    }

    fn upload_matrix(&self, what: &'static str, rows: usize, cols: usize, data: &[f32]) -> Result<GpuMatrix> {
        backend::check_upload(what, rows, cols, data)?;
        self.ctx.upload_matrix(what, rows, cols, data)
    }

    fn upload_vector(&self, what: &'static str, data: &[f32]) -> Result<GpuVector> {
        if data.is_empty() {
            return Err(Error::Empty(what));
        }
        crate::error::check_finite(what, 1, data)?;
        self.ctx.upload_vector(what, data)
    }

    fn zeros_matrix(&self, what: &'static str, rows: usize, cols: usize) -> Result<GpuMatrix> {
        self.ctx.zeros_matrix(what, rows, cols)
    }

    fn zeros_vector(&self, what: &'static str, len: usize) -> Result<GpuVector> {
        self.ctx.zeros_vector(what, len)
    }

    fn download_matrix(&self, m: &GpuMatrix) -> Result<Vec<f32>> {
        self.ctx.download_matrix(m)
    }

    fn download_vector(&self, v: &GpuVector) -> Result<Vec<f32>> {
        self.ctx.download_vector(v)
    }

    fn download_matrices(&self, ms: &[&GpuMatrix]) -> Result<Vec<Vec<f32>>> {
        let pending = self.download_matrices_later(ms)?;
        self.collect(pending)
    }

    fn download_matrices_later(&self, ms: &[&GpuMatrix]) -> Result<buffer::PendingMatrices> {
        let ranges: Vec<_> = ms
            .iter()
            .map(|m| (&m.buffer, 0, (m.rows * m.ld() * 4) as u64))
            .collect();
        Ok(buffer::PendingMatrices {
            later: self.ctx.read_later(&ranges),
            shapes: ms.iter().map(|m| (m.rows, m.cols)).collect(),
        })
    }

    fn collect(&self, pending: buffer::PendingMatrices) -> Result<Vec<Vec<f32>>> {
        let bytes = self.ctx.collect(pending.later)?;
        Ok(pending
            .shapes
            .iter()
            .zip(bytes)
            .map(|(&(rows, cols), b)| buffer::unpad_rows(rows, cols, bytemuck::pod_collect_to_vec(&b)))
            .collect())
    }

    fn sync_counts(&self) -> Option<backend::SyncCounts> {
        let c = self.ctx.counts();
        Some(backend::SyncCounts {
            submissions: c.submissions,
            host_syncs: c.host_syncs,
        })
    }

    fn shape(&self, m: &GpuMatrix) -> (usize, usize) {
        (m.rows, m.cols)
    }

    fn len(&self, v: &GpuVector) -> usize {
        v.len
    }

    fn copy(&self, src: &GpuVector, dst: &mut GpuVector) -> Result<()> {
        backend::check_same_len(src.len, dst.len)?;
        self.submit(|encoder| {
            encoder.copy_buffer_to_buffer(&src.buffer, 0, &dst.buffer, 0, src.buffer.size());
            Ok(())
        })
    }

    fn copy_range(&self, src: &GpuVector, src0: usize, dst: &mut GpuVector, dst0: usize, len: usize) -> Result<()> {
        backend::check_range("source range", src0, len, src.len)?;
        backend::check_range("target range", dst0, len, dst.len)?;
        self.blas2()?.copy_range(&self.ctx, src, src0, dst, dst0, len)
    }

    fn copy_columns(&self, src: &GpuMatrix, col0: usize, dst: &mut GpuMatrix) -> Result<()> {
        backend::check_same_len(src.rows, dst.rows)?;
        backend::check_range("columns", col0, dst.cols, src.cols)?;
        self.blas2()?.copy_columns(&self.ctx, src, col0, dst)
    }

    fn synchronize(&self) -> Result<()> {
        self.ctx.finish()
    }

    fn time_device(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Option<f64>> {
        timer::time(&self.ctx, work)
    }

    fn max_matrix_bytes(&self) -> u64 {
        self.ctx
            .limits
            .max_storage_buffer_binding_size
            .min(self.ctx.limits.max_buffer_size)
    }
}
