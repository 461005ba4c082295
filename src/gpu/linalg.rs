//! The GPU vector kernels (`shaders/linalg.wgsl`): symmetric matvec, dot product, axpy, xpby.

use super::Gpu;
use super::buffer::{GpuMatrix, GpuVector};
use super::context::GpuContext;
use super::kernel::{self, MAX_GROUPS};
use super::layout::shader_struct;
use super::shader::Variant;
use crate::backend::{self, BlasOps};
use crate::error::{Error, Result};

pub use super::sizes::WG;

shader_struct! {
    pub(crate) struct Params in "linalg" {
        pub n4: u32,
        pub ld4: u32,
        pub alpha: f32,
        pub count: u32,
    }
}

pub struct LinalgKernels {
    pub(crate) matvec: wgpu::ComputePipeline,
    dot_partial: wgpu::ComputePipeline,
    weighted_dot_partial: wgpu::ComputePipeline,
    dot_final: wgpu::ComputePipeline,
    axpy: wgpu::ComputePipeline,
    xpby: wgpu::ComputePipeline,
    add_diagonal: wgpu::ComputePipeline,
}

/// Workgroups of a one-vec4-per-invocation kernel over `n4` vec4s; errors past the 1-D limit.
pub fn vector_groups(n4: u32) -> Result<u32> {
    let groups = n4.div_ceil(WG);
    if groups > MAX_GROUPS {
        return Err(Error::TooLarge {
            buffer: "vector",
            shape: format!("{} f32", n4 as u64 * 4),
            bytes: n4 as u64 * 16,
            limit_name: "max_compute_workgroups_per_dimension × 1024 elements",
            limit: MAX_GROUPS as u64 * WG as u64 * 16,
        });
    }
    Ok(groups)
}

impl LinalgKernels {
    pub fn new(ctx: &GpuContext, variant: &Variant) -> Result<Self> {
        let module = kernel::compile(ctx, "linalg", variant)?;
        let p = |entry| kernel::pipeline(ctx, &module, entry, None);
        Ok(Self {
            matvec: p("matvec")?,
            dot_partial: p("dot_partial")?,
            weighted_dot_partial: p("weighted_dot_partial")?,
            dot_final: p("dot_final")?,
            axpy: p("axpy")?,
            xpby: p("xpby")?,
            add_diagonal: p("add_diagonal")?,
        })
    }

    /// Bytes of scratch the matvec writes its per-block partial sums to.
    pub fn matvec_partials_bytes(n4: u32) -> u64 {
        2 * n4 as u64 * 4
    }

    /// A bind group for the matvec `pipeline`: y = (A + λI) x, partial sums into `partials`.
    pub(crate) fn matvec_group(
        pipeline: &wgpu::ComputePipeline,
        ctx: &GpuContext,
        params: &wgpu::Buffer,
        a: &GpuMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        partials: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        kernel::bind(ctx, pipeline, "matvec", &[params, &a.buffer, x, y, partials])
    }

    /// Records y = (A + λI) x (shapes already checked).
    pub fn record_matvec(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        a: &GpuMatrix,
        damping: f32,
        x: &GpuVector,
        y: &GpuVector,
    ) -> Result<()> {
        let n4 = x.n4();
        let params = ctx.uniform(&Params {
            n4,
            ld4: a.ld4(),
            alpha: damping,
            count: 0,
        })?;
        let partials = ctx.storage_buffer(
            "matvec partial sums",
            "scratch",
            Self::matvec_partials_bytes(n4),
            wgpu::BufferUsages::empty(),
        )?;
        let group = Self::matvec_group(&self.matvec, ctx, &params, a, &x.buffer, &y.buffer, &partials);
        let (gx, gy) = kernel::grid(n4);
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&self.matvec);
        pass.set_bind_group(0, &group, &[]);
        ctx.dispatch(&mut pass, (gx, gy, 1))?;
        Ok(())
    }

    /// xᵀy, or Σ xᵢ wᵢ yᵢ with `weights`, read back (waits for the device).
    pub fn dot(&self, ctx: &GpuContext, x: &GpuVector, y: &GpuVector, weights: Option<&GpuVector>) -> Result<f64> {
        let (buffer, offset) = self.record_dot(ctx, x, y, weights)?;
        Ok(ctx.read_back::<f32>(&buffer, offset, 4)?[0] as f64)
    }

    /// Records xᵀy (or Σ xᵢ wᵢ yᵢ) into a scratch buffer; returns it and the sum's byte offset, for
    /// the caller to read back, alone or with other values.
    pub fn record_dot(
        &self,
        ctx: &GpuContext,
        x: &GpuVector,
        y: &GpuVector,
        weights: Option<&GpuVector>,
    ) -> Result<(wgpu::Buffer, u64)> {
        let n4 = x.n4();
        let groups = vector_groups(n4)?;
        let partial = ctx.storage_buffer(
            "dot partial sums",
            "scratch",
            (groups as u64 + 1) * 4,
            wgpu::BufferUsages::empty(),
        )?;
        let params = ctx.uniform(&Params {
            n4,
            ld4: 0,
            alpha: 0.0,
            count: groups,
        })?;
        let mut entries = vec![(0, &params), (2, &x.buffer), (5, &y.buffer), (4, &partial)];
        let first_pipeline = match weights {
            Some(w) => {
                entries.push((1, &w.buffer));
                &self.weighted_dot_partial
            }
            None => &self.dot_partial,
        };
        let first = kernel::bind_some(ctx, first_pipeline, "dot", &entries);
        let second = kernel::bind_some(ctx, &self.dot_final, "dot final", &[(0, &params), (4, &partial)]);
        ctx.record(|encoder| {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(first_pipeline);
            pass.set_bind_group(0, &first, &[]);
            pass.dispatch_workgroups(groups, 1, 1);
            pass.set_pipeline(&self.dot_final);
            pass.set_bind_group(0, &second, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        });
        Ok((partial, groups as u64 * 4))
    }

    /// Records A_ii += d_i (shapes already checked).
    pub fn record_add_diagonal(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        a: &GpuMatrix,
        d: &GpuVector,
    ) -> Result<()> {
        // one invocation per diagonal element
        let groups = vector_groups(d.len as u32)?;
        let params = ctx.uniform(&Params {
            n4: d.n4(),
            ld4: a.ld4(),
            alpha: 0.0,
            count: d.len as u32,
        })?;
        let group = kernel::bind_some(
            ctx,
            &self.add_diagonal,
            "add_diagonal",
            &[(0, &params), (2, &d.buffer), (6, &a.buffer)],
        );
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&self.add_diagonal);
        pass.set_bind_group(0, &group, &[]);
        ctx.dispatch(&mut pass, (groups, 1, 1))?;
        Ok(())
    }

    /// Records y ← y + α x (axpy) or y ← x + β y (xpby, `beta_form`).
    pub fn record_update(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        coefficient: f32,
        x: &GpuVector,
        y: &GpuVector,
        beta_form: bool,
    ) -> Result<()> {
        let n4 = x.n4();
        let groups = vector_groups(n4)?;
        let pipeline = if beta_form { &self.xpby } else { &self.axpy };
        let params = ctx.uniform(&Params {
            n4,
            ld4: 0,
            alpha: coefficient,
            count: 0,
        })?;
        let group = kernel::bind_some(ctx, pipeline, "axpy", &[(0, &params), (2, &x.buffer), (3, &y.buffer)]);
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &group, &[]);
        ctx.dispatch(&mut pass, (groups, 1, 1))?;
        Ok(())
    }
}

impl BlasOps for Gpu {
    fn matvec(&self, a: &GpuMatrix, damping: f32, x: &GpuVector, y: &mut GpuVector) -> Result<()> {
        backend::check_matvec((a.rows, a.cols), x.len, y.len)?;
        self.submit(|encoder| self.linalg()?.record_matvec(&self.ctx, encoder, a, damping, x, y))
    }

    fn dot(&self, x: &GpuVector, y: &GpuVector) -> Result<f64> {
        backend::check_same_len(x.len, y.len)?;
        self.linalg()?.dot(&self.ctx, x, y, None)
    }

    fn weighted_dot(&self, x: &GpuVector, w: &GpuVector, y: &GpuVector) -> Result<f64> {
        backend::check_same_len(x.len, y.len)?;
        backend::check_same_len(x.len, w.len)?;
        self.linalg()?.dot(&self.ctx, x, y, Some(w))
    }

    fn axpy(&self, alpha: f32, x: &GpuVector, y: &mut GpuVector) -> Result<()> {
        backend::check_same_len(x.len, y.len)?;
        self.submit(|encoder| self.linalg()?.record_update(&self.ctx, encoder, alpha, x, y, false))
    }

    fn xpby(&self, x: &GpuVector, beta: f32, y: &mut GpuVector) -> Result<()> {
        backend::check_same_len(x.len, y.len)?;
        self.submit(|encoder| self.linalg()?.record_update(&self.ctx, encoder, beta, x, y, true))
    }

    fn add_diagonal(&self, a: &mut GpuMatrix, d: &GpuVector) -> Result<()> {
        backend::check_matvec((a.rows, a.cols), d.len, d.len)?;
        self.submit(|encoder| self.linalg()?.record_add_diagonal(&self.ctx, encoder, a, d))
    }

    fn gemv(&self, a: &GpuMatrix, x: &GpuVector, y: &mut GpuVector) -> Result<()> {
        backend::check_same_len(a.cols, x.len)?;
        backend::check_same_len(a.rows, y.len)?;
        self.blas2()?.gemv(&self.ctx, a, x, y)
    }

    fn gemv_t(&self, a: &GpuMatrix, x: &GpuVector, scale: f32, accumulate: bool, y: &mut GpuVector) -> Result<()> {
        backend::check_same_len(a.rows, x.len)?;
        backend::check_same_len(a.cols, y.len)?;
        self.blas2()?.gemv_t(&self.ctx, a, x, scale, accumulate, y)
    }

    fn scale_add(&self, w: &GpuVector, x: &GpuVector, beta: f32, y: &mut GpuVector) -> Result<()> {
        backend::check_same_len(w.len, y.len)?;
        backend::check_same_len(x.len, y.len)?;
        self.blas2()?.scale_add(&self.ctx, w, x, beta, y)
    }

    fn divide(&self, x: &GpuVector, w: &GpuVector, y: &mut GpuVector) -> Result<()> {
        backend::check_same_len(w.len, y.len)?;
        backend::check_same_len(x.len, y.len)?;
        self.blas2()?.divide(&self.ctx, x, w, y)
    }

    fn column_sq_sums(&self, a: &GpuMatrix, scale: f32, accumulate: bool, y: &mut GpuVector) -> Result<()> {
        backend::check_same_len(a.cols, y.len)?;
        self.blas2()?.column_sq_sums(&self.ctx, a, scale, accumulate, y)
    }

    fn scale_columns(&self, a: &mut GpuMatrix, s: &GpuVector) -> Result<()> {
        backend::check_same_len(a.cols, s.len)?;
        self.blas2()?.scale_columns(&self.ctx, a, s)
    }

    fn gram_block(&self, k: &mut GpuMatrix, a: &GpuMatrix, b: &GpuMatrix, row0: usize, col0: usize) -> Result<()> {
        backend::check_gram((k.rows, k.cols), (a.rows, a.cols), (b.rows, b.cols), row0, col0)?;
        self.blas2()?.gram_block(&self.ctx, k, a, b, row0, col0)
    }
}
