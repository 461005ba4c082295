//! First-order updates on the GPU (`shaders/optim.wgsl`): SGD with momentum, and Adam.

use super::Gpu;
use super::buffer::GpuVector;
use super::context::GpuContext;
use super::kernel;
use super::layout::shader_struct;
use super::linalg::vector_groups;
use super::shader::Variant;
use crate::backend::AdamStep;
use crate::backend::{self, OptimOps};
use crate::error::Result;

shader_struct! {
    pub(crate) struct Params in "optim" {
        n4: u32,
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        bias1: f32,
        bias2: f32,
        pad: u32,
    }
}

pub struct OptimKernels {
    sgd: wgpu::ComputePipeline,
    adam: wgpu::ComputePipeline,
}

impl OptimKernels {
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        let module = kernel::compile(ctx, "optim", &Variant::default())?;
        Ok(Self {
            sgd: kernel::pipeline(ctx, &module, "sgd_step", None)?,
            adam: kernel::pipeline(ctx, &module, "adam_step", None)?,
        })
    }

    fn record(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        pipeline: &wgpu::ComputePipeline,
        params: Params,
        buffers: &[(u32, &wgpu::Buffer)],
    ) -> Result<()> {
        let groups = vector_groups(params.n4)?;
        let uniform = ctx.uniform(&params)?;
        let mut entries = vec![(0, &uniform)];
        entries.extend_from_slice(buffers);
        let group = kernel::bind_some(ctx, pipeline, "optim", &entries);
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups(groups, 1, 1);
        Ok(())
    }

    /// velocity ← μ·velocity + g; θ ← θ − lr·velocity.
    #[allow(clippy::too_many_arguments)]
    pub fn record_sgd(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        theta: &GpuVector,
        g: &GpuVector,
        velocity: &GpuVector,
        lr: f32,
        momentum: f32,
    ) -> Result<()> {
        let params = Params {
            n4: theta.n4(),
            lr,
            beta1: momentum,
            beta2: 0.0,
            eps: 0.0,
            bias1: 1.0,
            bias2: 1.0,
            pad: 0,
        };
        self.record(
            ctx,
            encoder,
            &self.sgd,
            params,
            &[(1, &theta.buffer), (2, &g.buffer), (3, &velocity.buffer)],
        )
    }

    /// One Adam update of θ with moments m and v.
    #[allow(clippy::too_many_arguments)]
    pub fn record_adam(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        theta: &GpuVector,
        g: &GpuVector,
        m: &GpuVector,
        v: &GpuVector,
        step: AdamStep,
    ) -> Result<()> {
        let (bias1, bias2) = step.bias_corrections();
        let params = Params {
            n4: theta.n4(),
            lr: step.lr,
            beta1: step.beta1,
            beta2: step.beta2,
            eps: step.eps,
            bias1,
            bias2,
            pad: 0,
        };
        let buffers = [(1, &theta.buffer), (2, &g.buffer), (3, &m.buffer), (4, &v.buffer)];
        self.record(ctx, encoder, &self.adam, params, &buffers)
    }
}

impl OptimOps for Gpu {
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
            self.optim()?
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
        self.submit(|encoder| self.optim()?.record_adam(&self.ctx, encoder, theta, g, m, v, step))
    }
}
