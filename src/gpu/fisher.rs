//! The GPU Fisher build (`shaders/fisher.wgsl`): `F ← (accumulate ? F : 0) + scale · GᵀG`.

use super::Gpu;
use super::buffer::GpuMatrix;
use super::context::GpuContext;
use super::kernel::{self, MAX_GROUPS};
use super::layout::shader_struct;
use super::matmul::View;
use super::shader::Variant;
use super::sizes::{FISHER_KSTEP, FISHER_TILE};
use crate::backend::{self, FisherOps};
use crate::error::{Error, Result};

shader_struct! {
    pub(crate) struct Params in "fisher" {
        m: u32,
        p: u32,
        ldg4: u32,
        ldf4: u32,
        scale: f32,
        accumulate: u32,
        row0: u32,
        pad: u32,
    }
}

/// Rows of G one dispatch reduces over. Some drivers end a workgroup's loop after a few thousand
/// barriers (Mesa 22's lavapipe stops near 52,000 rows, silently); longer G is split across
/// dispatches that accumulate, which costs a real GPU one dispatch per this many rows.
pub const MAX_ROWS_PER_DISPATCH: usize = 16384;

/// The tiled, register-blocked symmetric rank-k update.
pub struct FisherKernel {
    pipeline: wgpu::ComputePipeline,
    /// 4×4 register blocks per invocation along each axis: tiles are 64·nb wide.
    nb: u32,
}

/// Edge of the F tile one workgroup computes at register blocking `nb`.
pub fn tile(nb: u32) -> u32 {
    FISHER_TILE * nb
}

/// Register blocking for an adapter: 8×8 per invocation (128-wide tiles) on discrete GPUs, whose
/// register files hold it and whose bandwidth needs the reuse; 4×4 (64-wide) elsewhere.
pub fn default_blocking(info: &wgpu::AdapterInfo) -> u32 {
    if info.device_type == wgpu::DeviceType::DiscreteGpu {
        2
    } else {
        1
    }
}

/// Workgroup memory the kernel stages G through, in bytes: two operands of KSTEP rows × TILE
/// floats (the blocking cancels out).
const STAGE_BYTES: u32 = 2 * FISHER_KSTEP * FISHER_TILE * 4;

impl FisherKernel {
    pub fn new(ctx: &GpuContext, nb: u32) -> Result<Self> {
        if !matches!(nb, 1 | 2) {
            return Err(Error::InvalidArgument {
                name: "Fisher register blocking",
                reason: format!("{nb} (use 1 or 2)"),
            });
        }
        if ctx.limits.max_compute_workgroup_storage_size < STAGE_BYTES
            || ctx.limits.max_compute_invocations_per_workgroup < 256
        {
            return Err(Error::Gpu(format!(
                "adapter {} allows {} bytes of workgroup memory and {} invocations per workgroup; the Fisher kernel needs {STAGE_BYTES} and 256",
                ctx.info.name,
                ctx.limits.max_compute_workgroup_storage_size,
                ctx.limits.max_compute_invocations_per_workgroup
            )));
        }
        let module = kernel::compile(ctx, "fisher", &Variant::default().with_u32("NB", nb))?;
        let pipeline = kernel::pipeline(ctx, &module, "fisher_build", None)?;
        Ok(Self { pipeline, nb })
    }

    /// Edge of the F tile one workgroup computes.
    pub fn tile(&self) -> u32 {
        tile(self.nb)
    }

    /// Records `F ← (accumulate ? F : 0) + scale · GᵀG` (shapes already checked).
    pub fn record(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        g: &GpuMatrix,
        f: &GpuMatrix,
        scale: f32,
        accumulate: bool,
    ) -> Result<()> {
        let tiles = (f.rows as u64).div_ceil(self.tile() as u64);
        if tiles > MAX_GROUPS as u64 {
            return Err(Error::TooLarge {
                buffer: "Fisher matrix F",
                shape: format!("{0}×{0}", f.rows),
                bytes: f.rows as u64 * f.ld() as u64 * 4,
                limit_name: "max_compute_workgroups_per_dimension (tiles per row)",
                limit: MAX_GROUPS as u64,
            });
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("fisher"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.pipeline);
        for row0 in (0..g.rows).step_by(MAX_ROWS_PER_DISPATCH) {
            let params = Params {
                m: (g.rows - row0).min(MAX_ROWS_PER_DISPATCH) as u32,
                p: g.cols as u32,
                ldg4: g.ld4(),
                ldf4: f.ld4(),
                scale,
                accumulate: (accumulate || row0 > 0) as u32,
                row0: row0 as u32,
                pad: 0,
            };
            let uniform = ctx.uniform(&params)?;
            let group = kernel::bind(ctx, &self.pipeline, "fisher", &[&uniform, &g.buffer, &f.buffer]);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(tiles as u32, tiles as u32, 1);
        }
        Ok(())
    }
}

impl FisherOps for Gpu {
    fn fisher_accumulate(&self, f: &mut GpuMatrix, g: &GpuMatrix, scale: f32, accumulate: bool) -> Result<()> {
        backend::check_fisher((f.rows, f.cols), (g.rows, g.cols))?;
        if self.matmul()?.is_direct() {
            // CPU adapters: GᵀG as a symmetric product of the direct kernel, which needs no
            // barriers (the tiled kernel here spends most of its time in them on lavapipe)
            return self.submit(|encoder| {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                self.matmul()?.record_symmetric(
                    &self.ctx,
                    &mut pass,
                    (g.cols, g.rows),
                    View::transposed(&g.buffer, 0, g.ld()),
                    View::rows(&g.buffer, 0, g.ld()),
                    View::rows(&f.buffer, 0, f.ld()),
                    scale,
                    if accumulate { 1.0 } else { 0.0 },
                )
            });
        }
        self.submit(|encoder| self.fisher()?.record(&self.ctx, encoder, g, f, scale, accumulate))
    }
}
