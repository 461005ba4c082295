//! The GPU backend: wgpu plumbing and one typed wrapper per WGSL kernel.
//!
//! Every operation records its dispatches and submits them at once; nothing waits for the GPU
//! except read-backs, each bounded by the context's timeout.

pub mod buffer;
pub mod cg;
pub mod context;
pub mod curvature;
pub mod fisher;
pub mod kernel;
pub mod linalg;
pub mod matmul;
pub mod mlp;
pub mod optim;
pub mod shader;
pub mod timer;

pub use buffer::{GpuMatrix, GpuVector};
pub use context::GpuContext;

use std::ops::Range;

use crate::backend::AdamStep;
use crate::backend::cg::{BREAKDOWN_RATIO, CgParams, CgReport};
use crate::backend::{self, Backend, BatchLoss};
use crate::error::{Error, Result};
use crate::model::Mlp;
use crate::model::{FisherKind, SampleKey};
use shader::Variant;

/// Choices that specialise the kernels; the defaults follow the adapter.
#[derive(Clone, Copy, Debug)]
pub struct GpuOptions {
    /// Use subgroup reductions where the adapter has them.
    pub subgroups: bool,
    /// Fisher register blocking (1: 64-wide tiles, 2: 128-wide); `None` picks by adapter.
    pub fisher_blocking: Option<u32>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            subgroups: true,
            fisher_blocking: None,
        }
    }
}

/// A GPU device with natgrad's kernels compiled for it.
pub struct Gpu {
    ctx: GpuContext,
    fisher: fisher::FisherKernel,
    linalg: linalg::LinalgKernels,
    cg: cg::CgKernels,
    mlp: mlp::MlpKernels,
    optim: optim::OptimKernels,
    curvature: curvature::CurvatureKernels,
    subgroups: bool,
}

impl Gpu {
    /// The best adapter whose name contains `adapter` (any adapter if `None`), with default options.
    pub fn open(adapter: Option<&str>) -> Result<Self> {
        Self::with_context(GpuContext::open(adapter)?, GpuOptions::default())
    }

    /// Compiles the kernels for `ctx`.
    pub fn with_context(ctx: GpuContext, options: GpuOptions) -> Result<Self> {
        let subgroups = options.subgroups && ctx.has_subgroups();
        let variant = Variant::default()
            .define("SUBGROUPS", subgroups)
            .with_f32("BREAKDOWN_RATIO", BREAKDOWN_RATIO);
        let linalg_variant = Variant::default().define("SUBGROUPS", subgroups);
        let nb = options
            .fisher_blocking
            .unwrap_or_else(|| fisher::default_blocking(&ctx.info));
        let linalg = linalg::LinalgKernels::new(&ctx, &linalg_variant)?;
        Ok(Self {
            fisher: fisher::FisherKernel::new(&ctx, nb)?,
            cg: cg::CgKernels::new(&ctx, &variant, &linalg)?,
            mlp: mlp::MlpKernels::new(&ctx, &linalg_variant)?,
            optim: optim::OptimKernels::new(&ctx)?,
            curvature: curvature::CurvatureKernels::new(&ctx, &linalg_variant)?,
            linalg,
            subgroups,
            ctx,
        })
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
        self.fisher.tile()
    }

    fn submit(&self, record: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<()>) -> Result<()> {
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        record(&mut encoder)?;
        self.ctx.queue.submit([encoder.finish()]);
        self.ctx.check_fault()
    }
}

impl Backend for Gpu {
    type Matrix = GpuMatrix;
    type Vector = GpuVector;
    type Batch = mlp::GpuBatch;

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

    fn shape(&self, m: &GpuMatrix) -> (usize, usize) {
        (m.rows, m.cols)
    }

    fn len(&self, v: &GpuVector) -> usize {
        v.len
    }

    fn fisher_accumulate(&self, f: &mut GpuMatrix, g: &GpuMatrix, scale: f32, accumulate: bool) -> Result<()> {
        backend::check_fisher((f.rows, f.cols), (g.rows, g.cols))?;
        self.submit(|encoder| self.fisher.record(&self.ctx, encoder, g, f, scale, accumulate))
    }

    fn matvec(&self, a: &GpuMatrix, damping: f32, x: &GpuVector, y: &mut GpuVector) -> Result<()> {
        backend::check_matvec((a.rows, a.cols), x.len, y.len)?;
        self.submit(|encoder| self.linalg.record_matvec(&self.ctx, encoder, a, damping, x, y))
    }

    fn dot(&self, x: &GpuVector, y: &GpuVector) -> Result<f32> {
        backend::check_same_len(x.len, y.len)?;
        self.linalg.dot(&self.ctx, x, y, None)
    }

    fn axpy(&self, alpha: f32, x: &GpuVector, y: &mut GpuVector) -> Result<()> {
        backend::check_same_len(x.len, y.len)?;
        self.submit(|encoder| self.linalg.record_update(&self.ctx, encoder, alpha, x, y, false))
    }

    fn xpby(&self, x: &GpuVector, beta: f32, y: &mut GpuVector) -> Result<()> {
        backend::check_same_len(x.len, y.len)?;
        self.submit(|encoder| self.linalg.record_update(&self.ctx, encoder, beta, x, y, true))
    }

    fn cg_solve(
        &self,
        a: &GpuMatrix,
        damping: f32,
        g: &GpuVector,
        d: &mut GpuVector,
        params: &CgParams,
    ) -> Result<CgReport> {
        params.validate(damping)?;
        backend::check_matvec((a.rows, a.cols), g.len, d.len)?;
        self.cg.solve(&self.ctx, a, damping, g, d, params)
    }

    fn synchronize(&self) -> Result<()> {
        let index = self.ctx.queue.submit([]);
        self.ctx.wait(index)
    }

    fn time_device(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Option<f64>> {
        timer::time(&self.ctx, work)
    }

    fn weighted_dot(&self, x: &GpuVector, w: &GpuVector, y: &GpuVector) -> Result<f32> {
        backend::check_same_len(x.len, y.len)?;
        backend::check_same_len(x.len, w.len)?;
        self.linalg.dot(&self.ctx, x, y, Some(w))
    }

    fn copy(&self, src: &GpuVector, dst: &mut GpuVector) -> Result<()> {
        backend::check_same_len(src.len, dst.len)?;
        self.submit(|encoder| {
            encoder.copy_buffer_to_buffer(&src.buffer, 0, &dst.buffer, 0, src.buffer.size());
            Ok(())
        })
    }

    fn sgd_step(
        &self,
        theta: &mut GpuVector,
        g: &GpuVector,
        velocity: &mut GpuVector,
        lr: f32,
        momentum: f32,
    ) -> Result<()> {
        backend::check_same_len(theta.len, g.len)?;
        backend::check_same_len(theta.len, velocity.len)?;
        self.submit(|encoder| {
            self.optim
                .record_sgd(&self.ctx, encoder, theta, g, velocity, lr, momentum)
        })
    }

    fn adam_step(
        &self,
        theta: &mut GpuVector,
        g: &GpuVector,
        m: &mut GpuVector,
        v: &mut GpuVector,
        step: AdamStep,
    ) -> Result<()> {
        for len in [g.len, m.len, v.len] {
            backend::check_same_len(theta.len, len)?;
        }
        self.submit(|encoder| self.optim.record_adam(&self.ctx, encoder, theta, g, m, v, step))
    }

    fn gemv(&self, a: &GpuMatrix, x: &GpuVector, y: &mut GpuVector) -> Result<()> {
        backend::check_same_len(a.cols, x.len)?;
        backend::check_same_len(a.rows, y.len)?;
        self.curvature.gemv(&self.ctx, a, x, y)
    }

    fn gemv_t(&self, a: &GpuMatrix, x: &GpuVector, scale: f32, accumulate: bool, y: &mut GpuVector) -> Result<()> {
        backend::check_same_len(a.rows, x.len)?;
        backend::check_same_len(a.cols, y.len)?;
        self.curvature.gemv_t(&self.ctx, a, x, scale, accumulate, y)
    }

    fn scale_add(&self, w: &GpuVector, x: &GpuVector, beta: f32, y: &mut GpuVector) -> Result<()> {
        backend::check_same_len(w.len, y.len)?;
        backend::check_same_len(x.len, y.len)?;
        self.curvature.scale_add(&self.ctx, w, x, beta, y)
    }

    fn divide(&self, x: &GpuVector, w: &GpuVector, y: &mut GpuVector) -> Result<()> {
        backend::check_same_len(w.len, y.len)?;
        backend::check_same_len(x.len, y.len)?;
        self.curvature.divide(&self.ctx, x, w, y)
    }

    fn column_sq_sums(&self, a: &GpuMatrix, scale: f32, accumulate: bool, y: &mut GpuVector) -> Result<()> {
        backend::check_same_len(a.cols, y.len)?;
        self.curvature.column_sq_sums(&self.ctx, a, scale, accumulate, y)
    }

    fn scale_columns(&self, a: &mut GpuMatrix, s: &GpuVector) -> Result<()> {
        backend::check_same_len(a.cols, s.len)?;
        self.curvature.scale_columns(&self.ctx, a, s)
    }

    fn gram_block(&self, k: &mut GpuMatrix, a: &GpuMatrix, b: &GpuMatrix, row0: usize, col0: usize) -> Result<()> {
        backend::check_gram((k.rows, k.cols), (a.rows, a.cols), (b.rows, b.cols), row0, col0)?;
        self.curvature.gram_block(&self.ctx, k, a, b, row0, col0)
    }

    fn copy_columns(&self, src: &GpuMatrix, col0: usize, dst: &mut GpuMatrix) -> Result<()> {
        backend::check_same_len(src.rows, dst.rows)?;
        backend::check_range("columns", col0, dst.cols, src.cols)?;
        self.curvature.copy_columns(&self.ctx, src, col0, dst)
    }

    fn copy_range(&self, src: &GpuVector, src0: usize, dst: &mut GpuVector, dst0: usize, len: usize) -> Result<()> {
        backend::check_range("source range", src0, len, src.len)?;
        backend::check_range("target range", dst0, len, dst.len)?;
        self.curvature.copy_range(&self.ctx, src, src0, dst, dst0, len)
    }

    fn add_diagonal(&self, a: &mut GpuMatrix, d: &GpuVector) -> Result<()> {
        backend::check_matvec((a.rows, a.cols), d.len, d.len)?;
        self.submit(|encoder| self.linalg.record_add_diagonal(&self.ctx, encoder, a, d))
    }

    fn max_matrix_bytes(&self) -> u64 {
        self.ctx
            .limits
            .max_storage_buffer_binding_size
            .min(self.ctx.limits.max_buffer_size)
    }

    fn upload_batch(&self, mlp: &Mlp, x: &[f32], targets: &[f32]) -> Result<mlp::GpuBatch> {
        self.mlp.upload(&self.ctx, mlp, x, targets)
    }

    fn batch_size(&self, batch: &mlp::GpuBatch) -> usize {
        mlp::MlpKernels::batch_size(batch)
    }

    fn forward(&self, mlp: &Mlp, theta: &GpuVector, batch: &mut mlp::GpuBatch) -> Result<()> {
        self.mlp.forward(&self.ctx, mlp, theta, batch)
    }

    fn outputs(&self, mlp: &Mlp, batch: &mlp::GpuBatch) -> Result<Vec<f32>> {
        self.mlp.outputs(&self.ctx, mlp, batch)
    }

    fn batch_loss(&self, mlp: &Mlp, batch: &mlp::GpuBatch) -> Result<BatchLoss> {
        self.mlp.batch_loss(&self.ctx, mlp, batch)
    }

    fn gradient(
        &self,
        mlp: &Mlp,
        theta: &GpuVector,
        batch: &mut mlp::GpuBatch,
        weight_decay: f32,
        g: &mut GpuVector,
    ) -> Result<()> {
        self.mlp.gradient(&self.ctx, mlp, theta, batch, weight_decay, g)
    }

    fn score_rows(
        &self,
        mlp: &Mlp,
        theta: &GpuVector,
        batch: &mut mlp::GpuBatch,
        kind: FisherKind,
        key: SampleKey,
        rows: Range<usize>,
        out: &mut GpuMatrix,
    ) -> Result<()> {
        backend::check_score_rows(mlp, self.batch_size(batch), kind, &rows, (out.rows, out.cols))?;
        self.mlp.score_rows(&self.ctx, mlp, theta, batch, kind, key, rows, out)
    }
}
