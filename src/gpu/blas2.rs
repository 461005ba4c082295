//! Matrix-vector products with general (score) matrices and the element and column kernels around
//! them (`shaders/blas2.wgsl`), and the Gram block K = A·Bᵀ on the matmul kernel.

use super::buffer::{GpuMatrix, GpuVector};
use super::context::GpuContext;
use super::kernel::{self, MAX_GROUPS};
use super::layout::shader_struct;
use super::linalg::WG;
use super::matmul::{MatmulKernel, View};
use super::shader::Variant;
use crate::error::{Error, Result};

shader_struct! {
    pub(crate) struct Params in "blas2" {
        pub rows: u32,
        pub cols: u32,
        pub ld: u32,
        pub ld_out: u32,
        pub src0: u32,
        pub dst0: u32,
        pub scale: f32,
        pub accumulate: u32,
    }
}

pub struct Blas2Kernels {
    gemv: wgpu::ComputePipeline,
    gemv_t: wgpu::ComputePipeline,
    column_sq_sums: wgpu::ComputePipeline,
    scale_add: wgpu::ComputePipeline,
    divide: wgpu::ComputePipeline,
    scale_columns: wgpu::ComputePipeline,
    copy_columns: wgpu::ComputePipeline,
    copy_range: wgpu::ComputePipeline,
    matmul: MatmulKernel,
}

/// One invocation per element of `count`, folded into 2-D.
fn per_element(count: usize) -> Result<(u32, u32)> {
    let groups = u32::try_from(count.div_ceil(WG as usize))
        .map_err(|_| Error::Shape(format!("{count} elements: beyond the GPU grid")))?;
    Ok(kernel::grid(groups))
}

/// A 2-D grid: x over `cols` (256 per workgroup), y over `rows`.
fn per_cell(rows: usize, cols: usize) -> Result<(u32, u32)> {
    let x = cols.div_ceil(WG as usize);
    if x > MAX_GROUPS as usize || rows > MAX_GROUPS as usize {
        return Err(Error::Shape(format!("a {rows}×{cols} matrix is beyond the GPU grid")));
    }
    Ok((x as u32, rows as u32))
}

impl Blas2Kernels {
    pub fn new(ctx: &GpuContext, variant: &Variant, matmul: &MatmulKernel) -> Result<Self> {
        let module = kernel::compile(ctx, "blas2", variant)?;
        let p = |entry| kernel::pipeline(ctx, &module, entry, None);
        Ok(Self {
            gemv: p("gemv")?,
            gemv_t: p("gemv_t")?,
            column_sq_sums: p("column_sq_sums")?,
            scale_add: p("scale_add")?,
            divide: p("divide")?,
            scale_columns: p("scale_columns")?,
            copy_columns: p("copy_columns")?,
            copy_range: p("copy_range")?,
            matmul: matmul.clone(),
        })
    }

    fn dispatch(
        &self,
        ctx: &GpuContext,
        pipeline: &wgpu::ComputePipeline,
        params: Params,
        buffers: &[(u32, &wgpu::Buffer)],
        groups: (u32, u32),
    ) -> Result<()> {
        let uniform = ctx.uniform(&params)?;
        let mut entries = vec![(0, &uniform)];
        entries.extend_from_slice(buffers);
        let group = kernel::bind_some(ctx, pipeline, "blas2", &entries);
        ctx.record(|encoder| -> Result<()> {
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, &group, &[]);
                ctx.dispatch(&mut pass, (groups.0, groups.1, 1))?;
            }
            Ok(())
        })
    }

    fn matrix_params(a: &GpuMatrix) -> Params {
        Params {
            rows: a.rows as u32,
            cols: a.cols as u32,
            ld: a.ld() as u32,
            ..Default::default()
        }
    }

    pub fn gemv(&self, ctx: &GpuContext, a: &GpuMatrix, x: &GpuVector, y: &GpuVector) -> Result<()> {
        let groups = kernel::grid(u32::try_from(a.rows).map_err(|_| Error::Shape("too many rows".into()))?);
        let buffers = [(1, &a.buffer), (2, &x.buffer), (4, &y.buffer)];
        self.dispatch(ctx, &self.gemv, Self::matrix_params(a), &buffers, groups)
    }

    pub fn gemv_t(
        &self,
        ctx: &GpuContext,
        a: &GpuMatrix,
        x: &GpuVector,
        scale: f32,
        accumulate: bool,
        y: &GpuVector,
    ) -> Result<()> {
        let params = Params {
            scale,
            accumulate: accumulate as u32,
            ..Self::matrix_params(a)
        };
        let buffers = [(1, &a.buffer), (2, &x.buffer), (4, &y.buffer)];
        self.dispatch(ctx, &self.gemv_t, params, &buffers, per_element(a.cols)?)
    }

    pub fn column_sq_sums(
        &self,
        ctx: &GpuContext,
        a: &GpuMatrix,
        scale: f32,
        accumulate: bool,
        y: &GpuVector,
    ) -> Result<()> {
        let params = Params {
            scale,
            accumulate: accumulate as u32,
            ..Self::matrix_params(a)
        };
        self.dispatch(
            ctx,
            &self.column_sq_sums,
            params,
            &[(1, &a.buffer), (4, &y.buffer)],
            per_element(a.cols)?,
        )
    }

    pub fn scale_add(&self, ctx: &GpuContext, w: &GpuVector, x: &GpuVector, beta: f32, y: &GpuVector) -> Result<()> {
        let params = Params {
            cols: y.len as u32,
            scale: beta,
            ..Default::default()
        };
        let buffers = [(2, &x.buffer), (3, &w.buffer), (4, &y.buffer)];
        self.dispatch(ctx, &self.scale_add, params, &buffers, per_element(y.len)?)
    }

    pub fn divide(&self, ctx: &GpuContext, x: &GpuVector, w: &GpuVector, y: &GpuVector) -> Result<()> {
        let params = Params {
            cols: y.len as u32,
            ..Default::default()
        };
        let buffers = [(2, &x.buffer), (3, &w.buffer), (4, &y.buffer)];
        self.dispatch(ctx, &self.divide, params, &buffers, per_element(y.len)?)
    }

    pub fn scale_columns(&self, ctx: &GpuContext, a: &GpuMatrix, s: &GpuVector) -> Result<()> {
        let buffers = [(1, &a.buffer), (3, &s.buffer)];
        self.dispatch(
            ctx,
            &self.scale_columns,
            Self::matrix_params(a),
            &buffers,
            per_cell(a.rows, a.cols)?,
        )
    }

    pub fn copy_columns(&self, ctx: &GpuContext, src: &GpuMatrix, col0: usize, dst: &GpuMatrix) -> Result<()> {
        let params = Params {
            rows: dst.rows as u32,
            cols: dst.cols as u32,
            ld: src.ld() as u32,
            ld_out: dst.ld() as u32,
            src0: col0 as u32,
            ..Default::default()
        };
        let buffers = [(1, &src.buffer), (5, &dst.buffer)];
        self.dispatch(ctx, &self.copy_columns, params, &buffers, per_cell(dst.rows, dst.cols)?)
    }

    pub fn copy_range(
        &self,
        ctx: &GpuContext,
        src: &GpuVector,
        src0: usize,
        dst: &GpuVector,
        dst0: usize,
        len: usize,
    ) -> Result<()> {
        let params = Params {
            cols: len as u32,
            src0: src0 as u32,
            dst0: dst0 as u32,
            ..Default::default()
        };
        let buffers = [(2, &src.buffer), (4, &dst.buffer)];
        self.dispatch(ctx, &self.copy_range, params, &buffers, per_element(len)?)
    }

    /// K[row0.., col0..] = A·Bᵀ for A: ra×c and B: rb×c.
    pub fn gram_block(
        &self,
        ctx: &GpuContext,
        k: &GpuMatrix,
        a: &GpuMatrix,
        b: &GpuMatrix,
        row0: usize,
        col0: usize,
    ) -> Result<()> {
        ctx.record(|encoder| -> Result<()> {
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                self.matmul.record(
                    ctx,
                    &mut pass,
                    (a.rows, b.rows, a.cols),
                    View::rows(&a.buffer, 0, a.ld()),
                    View::transposed(&b.buffer, 0, b.ld()),
                    View::rows(&k.buffer, row0 * k.ld() + col0, k.ld()),
                    1.0,
                    0.0,
                )?;
            }
            Ok(())
        })
    }
}
