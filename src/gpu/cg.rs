//! The GPU conjugate-gradient solve: `shaders/cg.wgsl` around linalg's matvec.
//!
//! Iterations are recorded ahead, up to [`ITERATIONS_PER_SUBMISSION`] per submission; the GPU
//! decides when to stop and sets later iterations' dispatch sizes to zero, so a solve of up to
//! that many iterations is one submission and one read-back of its report.

use super::Gpu;
use super::buffer::{GpuMatrix, GpuVector};
use super::context::GpuContext;
use super::kernel;
use super::layout::shader_struct;
use super::linalg::{self, LinalgKernels};
use super::shader::Variant;
use super::sizes::CG_RUNNING;
use crate::backend::cg::{CgOutcome, CgParams, CgReport, Operator, Preconditioner};
use crate::backend::{self, CgOps};
use crate::error::{Error, Result};

/// Iterations recorded per submission. Past it, the solve reads its 32-byte state back to decide
/// whether to record more. Iterations recorded past convergence cost three empty indirect
/// dispatches each, so this is large enough that every solve natgrad runs (Woodbury's small
/// system runs up to its m ≤ a few thousand iterations) is one submission and one read-back.
pub const ITERATIONS_PER_SUBMISSION: usize = 4096;

shader_struct! {
    pub(crate) struct Params in "cg" {
        n4: u32,
        tol2: f32,
        max_iters: u32,
        vec_groups: u32,
    }
}

shader_struct! {
    /// The solver state as the shader lays it out.
    pub(crate) struct State in "cg" {
        rr: f32,
        gg: f32,
        mu: f32,
        rel_residual: f32,
        iters: u32,
        status: u32,
        restart: u32,
        pad: u32,
    }
}

const STATE_BYTES: u64 = size_of::<State>() as u64;
const ARGS_BYTES: u64 = 6 * 4;

pub struct CgKernels {
    layout: wgpu::BindGroupLayout,
    /// linalg's matvec, shared: the first dispatch of every iteration
    matvec: wgpu::ComputePipeline,
    init: wgpu::ComputePipeline,
    init_state: wgpu::ComputePipeline,
    restart: wgpu::ComputePipeline,
    update: wgpu::ComputePipeline,
    direction: wgpu::ComputePipeline,
    final_residual: wgpu::ComputePipeline,
    final_state: wgpu::ComputePipeline,
}

/// The bindings of `cg.wgsl`: (binding, read-only, is uniform).
const BINDINGS: [(u32, bool, bool); 10] = [
    (0, true, true),   // params
    (1, true, false),  // g
    (2, false, false), // d
    (3, false, false), // r
    (4, false, false), // s
    (5, true, false),  // q
    (6, false, false), // partial
    (7, true, false),  // state_in
    (8, false, false), // state_out
    (9, false, false), // next_args
];

impl CgKernels {
    pub fn new(ctx: &GpuContext, variant: &Variant, linalg: &LinalgKernels) -> Result<Self> {
        let module = kernel::compile(ctx, "cg", variant)?;
        // One explicit layout for every entry point, so one bind group per parity serves them all.
        let layout = kernel::buffer_layout(ctx, "cg", &BINDINGS);
        let pipeline_layout = kernel::pipeline_layout(ctx, "cg", &layout);
        let p = |entry| kernel::pipeline(ctx, &module, entry, Some(&pipeline_layout));
        Ok(Self {
            init: p("cg_init")?,
            init_state: p("cg_init_state")?,
            restart: p("cg_restart")?,
            update: p("cg_update")?,
            direction: p("cg_direction")?,
            final_residual: p("cg_final_residual")?,
            final_state: p("cg_final_state")?,
            matvec: linalg.matvec.clone(),
            layout,
        })
    }

    /// Solves `(A + λI) d = g` from the `d` given (shapes and parameters already checked).
    pub fn solve(
        &self,
        ctx: &GpuContext,
        a: &GpuMatrix,
        damping: f32,
        g: &GpuVector,
        d: &GpuVector,
        params: &CgParams,
    ) -> Result<CgReport> {
        let state = self.record(ctx, a, damping, g, d, params)?;
        report(ctx.read_back::<State>(&state, 0, STATE_BYTES)?[0])
    }

    /// Solves several systems `(A_i + λI) d_i = g_i`, recorded one after another and their
    /// reports read back together: one wait for all of them.
    pub fn solve_many(
        &self,
        ctx: &GpuContext,
        systems: &[(&GpuMatrix, &GpuVector, &GpuVector)],
        damping: f32,
        params: &CgParams,
    ) -> Result<Vec<CgReport>> {
        let states = systems
            .iter()
            .map(|(a, g, d)| self.record(ctx, a, damping, g, d, params))
            .collect::<Result<Vec<_>>>()?;
        let ranges: Vec<_> = states.iter().map(|s| (s, 0, STATE_BYTES)).collect();
        ctx.read_back_many(&ranges)?
            .iter()
            .map(|bytes| report(bytemuck::pod_read_unaligned::<State>(bytes)))
            .collect()
    }

    /// Records a solve; returns the buffer its final state will be in. A solve of more than
    /// [`ITERATIONS_PER_SUBMISSION`] iterations reads its state back between blocks of them.
    fn record(
        &self,
        ctx: &GpuContext,
        a: &GpuMatrix,
        damping: f32,
        g: &GpuVector,
        d: &GpuVector,
        params: &CgParams,
    ) -> Result<wgpu::Buffer> {
        let n4 = g.n4();
        let vec_groups = linalg::vector_groups(n4)?;
        let vector = |what| ctx.storage_buffer(what, "CG work vector", n4 as u64 * 16, wgpu::BufferUsages::empty());
        let (r, s, q) = (
            vector("CG residual r")?,
            vector("CG direction s")?,
            vector("CG product q")?,
        );
        // the matvec's sums, then rᵀr and gᵀg per vector group, then cg_update's decision
        let partial_bytes = LinalgKernels::matvec_partials_bytes(n4) + (2 * vec_groups as u64 + 1) * 4;
        let partial = ctx.storage_buffer("CG partial sums", "scratch", partial_bytes, wgpu::BufferUsages::empty())?;
        let small = |what, bytes, usage| ctx.storage_buffer(what, "CG state", bytes, usage);
        let states = [
            small("CG state 0", STATE_BYTES, wgpu::BufferUsages::empty())?,
            small("CG state 1", STATE_BYTES, wgpu::BufferUsages::empty())?,
        ];
        let args = [
            small("CG dispatch sizes 0", ARGS_BYTES, wgpu::BufferUsages::INDIRECT)?,
            small("CG dispatch sizes 1", ARGS_BYTES, wgpu::BufferUsages::INDIRECT)?,
        ];
        let cg_params = ctx.uniform(&Params {
            n4,
            tol2: params.rel_tol * params.rel_tol,
            max_iters: params.max_iters as u32,
            vec_groups,
        })?;
        let mv_params = ctx.uniform(&linalg::Params {
            n4,
            ld4: a.ld4(),
            alpha: damping,
            count: 0,
        })?;
        let mv_s = LinalgKernels::matvec_group(&self.matvec, ctx, &mv_params, a, &s, &q, &partial);
        let mv_d = LinalgKernels::matvec_group(&self.matvec, ctx, &mv_params, a, &d.buffer, &q, &partial);
        // parity k: iteration k reads states[k], writes states[k ^ 1] and the next sizes args[k ^ 1]
        let groups = [0usize, 1].map(|k| {
            kernel::bind_layout(
                ctx,
                &self.init,
                &self.layout,
                "cg",
                &[
                    &cg_params,
                    &g.buffer,
                    &d.buffer,
                    &r,
                    &s,
                    &q,
                    &partial,
                    &states[k],
                    &states[k ^ 1],
                    &args[k ^ 1],
                ],
            )
        });
        let (mv_x, mv_y) = kernel::grid(n4);

        ctx.record(|encoder| {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&self.matvec);
            pass.set_bind_group(0, &mv_d, &[]);
            pass.dispatch_workgroups(mv_x, mv_y, 1);
            // the odd group writes states[0] and args[0], which iteration 0 reads
            pass.set_bind_group(0, &groups[1], &[]);
            pass.set_pipeline(&self.init);
            pass.dispatch_workgroups(vec_groups, 1, 1);
            pass.set_pipeline(&self.init_state);
            pass.dispatch_workgroups(1, 1, 1);
            // the even group reads states[0], just written
            pass.set_bind_group(0, &groups[0], &[]);
            pass.set_pipeline(&self.restart);
            pass.dispatch_workgroups(vec_groups, 1, 1);
        });
        let mut k = 0;
        loop {
            let block = ITERATIONS_PER_SUBMISSION.min(params.max_iters - k);
            ctx.record(|encoder| {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                for i in k..k + block {
                    let parity = i % 2;
                    pass.set_pipeline(&self.matvec);
                    pass.set_bind_group(0, &mv_s, &[]);
                    pass.dispatch_workgroups_indirect(&args[parity], 0);
                    pass.set_bind_group(0, &groups[parity], &[]);
                    pass.set_pipeline(&self.update);
                    pass.dispatch_workgroups_indirect(&args[parity], 12);
                    pass.set_pipeline(&self.direction);
                    pass.dispatch_workgroups(vec_groups, 1, 1);
                }
            });
            k += block;
            if k >= params.max_iters {
                break;
            }
            let state = ctx.read_back::<State>(&states[k % 2], 0, STATE_BYTES)?[0];
            if state.status != CG_RUNNING {
                break;
            }
        }
        ctx.record(|encoder| {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&self.matvec);
            pass.set_bind_group(0, &mv_d, &[]);
            pass.dispatch_workgroups(mv_x, mv_y, 1);
            pass.set_bind_group(0, &groups[k % 2], &[]);
            pass.set_pipeline(&self.final_residual);
            pass.dispatch_workgroups(vec_groups, 1, 1);
            pass.set_pipeline(&self.final_state);
            pass.dispatch_workgroups(1, 1, 1);
        });
        Ok(states[(k + 1) % 2].clone())
    }
}

/// The report of a final state.
fn report(state: State) -> Result<CgReport> {
    let outcome = CgOutcome::from_code(state.status)
        .ok_or_else(|| Error::Gpu(format!("CG ended in state {} (not a final state)", state.status)))?;
    Ok(CgReport {
        iterations: state.iters as usize,
        rel_residual: state.rel_residual,
        rhs_sq: state.gg as f64,
        outcome,
    })
}

impl CgOps for Gpu {
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
        self.cg()?.solve(&self.ctx, a, damping, g, d, params)
    }

    fn cg_solve_many(
        &self,
        systems: &mut [(&GpuMatrix, &GpuVector, &mut GpuVector)],
        damping: f32,
        params: &CgParams,
    ) -> Result<Vec<CgReport>> {
        params.validate(damping)?;
        for (a, g, d) in systems.iter() {
            backend::check_matvec((a.rows, a.cols), g.len, d.len)?;
        }
        let systems: Vec<_> = systems.iter().map(|(a, g, d)| (*a, *g, &**d)).collect();
        self.cg()?.solve_many(&self.ctx, &systems, damping, params)
    }

    fn pcg(
        &self,
        op: &mut dyn Operator<Self>,
        m: Option<&mut dyn Preconditioner<Self>>,
        g: &GpuVector,
        d: &mut GpuVector,
        params: &CgParams,
        progress: f64,
    ) -> Result<CgReport> {
        params.validate(0.0)?;
        backend::check_same_len(g.len, d.len)?;
        self.pcg()?.solve(self, op, m, g, d, params, progress)
    }
}
