//! The general strided matrix product (`shaders/matmul.wgsl`): `C = α·A·B + β·C` on views.

use super::context::GpuContext;
use super::kernel::{self, MAX_GROUPS};
use super::shader::Variant;
use crate::error::{Error, Result};

/// A strided view of a buffer as a matrix: element (r, c) at `offset + r·row_stride + c·col_stride`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// Row-major with `cols` columns.
    pub fn rows(buffer: &'a wgpu::Buffer, offset: usize, cols: usize) -> Self {
        Self {
            buffer,
            offset,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(buffer: &'a wgpu::Buffer, offset: usize, cols: usize) -> Self {
        Self {
            buffer,
            offset,
            row_stride: 1,
            col_stride: cols,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_off: u32,
    a_rs: u32,
    a_cs: u32,
    b_off: u32,
    b_rs: u32,
    b_cs: u32,
    c_off: u32,
    c_rs: u32,
    alpha: f32,
    beta: f32,
    pad: [u32; 3],
}

const TILE: usize = 64;

/// The inner dimension one dispatch reduces over: longer products are split into dispatches that
/// accumulate (some drivers end a workgroup's loop after a few thousand barriers; Mesa 22's
/// lavapipe stops near k = 58,000, silently).
pub const MAX_K_PER_DISPATCH: usize = 16384;

pub struct MatmulKernel {
    pipeline: wgpu::ComputePipeline,
}

fn to_u32(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Shape(format!("index {v} beyond the 32-bit addressing of the GPU kernels")))
}

impl MatmulKernel {
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        let module = kernel::compile(ctx, "matmul", &Variant::default())?;
        Ok(Self {
            pipeline: kernel::pipeline(ctx, &module, "matmul", None)?,
        })
    }

    /// Records `C = α·A·B + β·C` for A: m×k, B: k×n and C: m×n (row-major, row stride `c.row_stride`).
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass,
        (m, n, k): (usize, usize, usize),
        a: View,
        b: View,
        c: View,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        let (gx, gy) = (n.div_ceil(TILE), m.div_ceil(TILE));
        if gx > MAX_GROUPS as usize || gy > MAX_GROUPS as usize {
            return Err(Error::Shape(format!("a {m}×{n} product is beyond the GPU grid")));
        }
        pass.set_pipeline(&self.pipeline);
        let layout = self.pipeline.get_bind_group_layout(0);
        // k = 0 still writes C = β·C (α times an empty sum)
        for k0 in (0..k.max(1)).step_by(MAX_K_PER_DISPATCH) {
            let params = Params {
                m: to_u32(m)?,
                n: to_u32(n)?,
                k: to_u32(k.saturating_sub(k0).min(MAX_K_PER_DISPATCH))?,
                a_off: to_u32(a.offset + k0 * a.col_stride)?,
                a_rs: to_u32(a.row_stride)?,
                a_cs: to_u32(a.col_stride)?,
                b_off: to_u32(b.offset + k0 * b.row_stride)?,
                b_rs: to_u32(b.row_stride)?,
                b_cs: to_u32(b.col_stride)?,
                c_off: to_u32(c.offset)?,
                c_rs: to_u32(c.row_stride)?,
                alpha,
                beta: if k0 == 0 { beta } else { 1.0 },
                pad: [0; 3],
            };
            let uniform = ctx.uniform("matmul params", &params);
            let group = kernel::bind(ctx, &layout, "matmul", &[&uniform, a.buffer, b.buffer, c.buffer]);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(gx as u32, gy as u32, 1);
        }
        Ok(())
    }
}
