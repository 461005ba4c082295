//! Preconditioned conjugate gradient over any operator on the GPU (`shaders/pcg.wgsl`): the
//! operator and the preconditioner record their dispatches as they would anywhere, the scalars
//! (α, β, the stopping tests, Martens' progress rule) stay on the device, and the iterations are
//! recorded ahead behind a gate (see [`super::engine`]) that turns every dispatch of an
//! iteration into an empty one once the solve has stopped. A solve is one submission and one
//! read-back of its report, however many iterations it takes.

use super::Gpu;
use super::buffer::GpuVector;
use super::context::GpuContext;
use super::engine::GATE_SLOT_BYTES;
use super::kernel;
use super::layout::shader_struct;
use super::linalg;
use super::shader::Variant;
use crate::backend::Buffers;
use crate::backend::cg::{CgOutcome, CgParams, CgReport};
use crate::error::{Error, Result};
use crate::solve::{Operator, Preconditioner};

shader_struct! {
    pub(crate) struct Params in "pcg" {
        n4: u32,
        vec_groups: u32,
        tol2: f32,
        max_iters: u32,
        progress: f32,
        pad0: u32,
        pad1: u32,
        pad2: u32,
    }
}

shader_struct! {
    /// The solver state as the shader lays it out.
    pub(crate) struct State in "pcg" {
        rr: f32,
        gg: f32,
        rz: f32,
        mu: f32,
        rel_residual: f32,
        iters: u32,
        status: u32,
        restart: u32,
    }
}

const STATE_BYTES: u64 = size_of::<State>() as u64;
/// Dispatches one iteration may record (operator, preconditioner and the CG kernels).
const GATE_SLOTS: usize = 4096;
/// Runs of partial sums in the scratch (SQ, SS, RR, RZ, GD, RD, GG).
const RUNS: u64 = 7;

/// The main group's bindings: (binding, read-only, is uniform).
const MAIN: [(u32, bool, bool); 10] = [
    (0, true, true),   // params
    (1, true, false),  // g
    (2, false, false), // d
    (3, false, false), // r
    (4, false, false), // s
    (5, true, false),  // q
    (6, false, false), // z
    (7, false, false), // partial
    (8, false, false), // state
    (9, false, false), // phi
];

/// The gate's bindings.
const GATE: [(u32, bool, bool); 3] = [
    (8, false, false),  // state
    (10, true, false),  // recorded sizes
    (11, false, false), // live sizes
];

pub struct PcgKernels {
    main: wgpu::BindGroupLayout,
    gate_layout: wgpu::BindGroupLayout,
    init: wgpu::ComputePipeline,
    init_state: wgpu::ComputePipeline,
    restart: wgpu::ComputePipeline,
    copy_z: wgpu::ComputePipeline,
    start: wgpu::ComputePipeline,
    start_state: wgpu::ComputePipeline,
    gate: wgpu::ComputePipeline,
    curvature: wgpu::ComputePipeline,
    update: wgpu::ComputePipeline,
    dots: wgpu::ComputePipeline,
    direction: wgpu::ComputePipeline,
    state: wgpu::ComputePipeline,
    final_residual: wgpu::ComputePipeline,
    final_state: wgpu::ComputePipeline,
}

/// The buffers and bind groups of one solve.
struct Solve {
    main: wgpu::BindGroup,
    gate: wgpu::BindGroup,
    recorded: wgpu::Buffer,
    state: wgpu::Buffer,
    vec_groups: u32,
}

impl PcgKernels {
    pub fn new(ctx: &GpuContext, variant: &Variant) -> Result<Self> {
        let module = kernel::compile(ctx, "pcg", variant)?;
        let main = kernel::buffer_layout(ctx, "pcg", &MAIN);
        let gate_layout = kernel::buffer_layout(ctx, "pcg gate", &GATE);
        let main_pl = kernel::pipeline_layout(ctx, "pcg", &main);
        let gate_pl = kernel::pipeline_layout(ctx, "pcg gate", &gate_layout);
        let p = |entry| kernel::pipeline(ctx, &module, entry, Some(&main_pl));
        Ok(Self {
            init: p("pcg_init")?,
            init_state: p("pcg_init_state")?,
            restart: p("pcg_restart")?,
            copy_z: p("pcg_copy_z")?,
            start: p("pcg_start")?,
            start_state: p("pcg_start_state")?,
            gate: kernel::pipeline(ctx, &module, "pcg_gate", Some(&gate_pl))?,
            curvature: p("pcg_curvature")?,
            update: p("pcg_update")?,
            dots: p("pcg_dots")?,
            direction: p("pcg_direction")?,
            state: p("pcg_state")?,
            final_residual: p("pcg_final_residual")?,
            final_state: p("pcg_final_state")?,
            main,
            gate_layout,
        })
    }

    /// Records one kernel of the main group over `groups` workgroups (gated inside the loop).
    fn run(&self, ctx: &GpuContext, pipeline: &wgpu::ComputePipeline, solve: &Solve, groups: u32) -> Result<()> {
        ctx.record(|e| {
            let mut pass = e.begin_compute_pass(&Default::default());
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &solve.main, &[]);
            ctx.dispatch(&mut pass, (groups, 1, 1))
        })
    }

    /// Solves `A d = g` from the `d` given, preconditioned by `m` when given, stopping also on
    /// Martens' progress rule when `progress > 0`: `solve::cg_with_progress`, recorded.
    #[allow(clippy::too_many_arguments)]
    pub fn solve(
        &self,
        gpu: &Gpu,
        op: &mut dyn Operator<Gpu>,
        mut m: Option<&mut dyn Preconditioner<Gpu>>,
        g: &GpuVector,
        d: &mut GpuVector,
        params: &CgParams,
        progress: f64,
    ) -> Result<CgReport> {
        let ctx = gpu.context();
        let n = g.len;
        let n4 = g.n4();
        let vec_groups = linalg::vector_groups(n4)?;
        let mut q = gpu.zeros_vector("CG product q", n)?;
        let r = gpu.zeros_vector("CG residual r", n)?;
        let s = gpu.zeros_vector("CG direction s", n)?;
        let mut z = gpu.zeros_vector("CG preconditioned residual z", n)?;
        let scratch = |what, bytes| ctx.storage_buffer(what, "CG scratch", bytes, wgpu::BufferUsages::empty());
        let partial = scratch("CG partial sums", (RUNS * vec_groups as u64 + 1) * 4)?;
        let state = scratch("CG state", STATE_BYTES)?;
        let phi = scratch("CG progress φ", params.max_iters.max(1) as u64 * 4)?;
        // fresh each solve: the recorded sizes are written ahead of the whole submission
        let sizes = |label, bytes, usage| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | usage,
                mapped_at_creation: false,
            })
        };
        let live = sizes(
            "CG gated sizes",
            GATE_SLOTS as u64 * GATE_SLOT_BYTES,
            wgpu::BufferUsages::INDIRECT,
        );
        let recorded = sizes(
            "CG recorded sizes",
            4 + GATE_SLOTS as u64 * GATE_SLOT_BYTES,
            wgpu::BufferUsages::empty(),
        );
        let uniform = ctx.uniform(&Params {
            n4,
            vec_groups,
            tol2: params.rel_tol * params.rel_tol,
            max_iters: params.max_iters as u32,
            progress: progress as f32,
            ..Default::default()
        })?;
        let main = kernel::bind_layout(
            ctx,
            &self.init,
            &self.main,
            "pcg",
            &[
                &uniform, &g.buffer, &d.buffer, &r.buffer, &s.buffer, &q.buffer, &z.buffer, &partial, &state, &phi,
            ],
        );
        let gate = ctx.engine.bind_group(
            &ctx.device,
            &self.gate,
            Some(&self.gate_layout),
            "pcg gate",
            &[(8, &state), (10, &recorded), (11, &live)],
        );
        let solve = Solve {
            main,
            gate,
            recorded,
            state,
            vec_groups,
        };

        op.apply(gpu, d, &mut q)?;
        self.run(ctx, &self.init, &solve, vec_groups)?;
        self.run(ctx, &self.init_state, &solve, 1)?;
        self.run(ctx, &self.restart, &solve, vec_groups)?;
        self.precondition(ctx, &mut m, gpu, &r, &mut z, &solve)?;
        self.run(ctx, &self.start, &solve, vec_groups)?;
        self.run(ctx, &self.start_state, &solve, 1)?;

        ctx.engine.open_gate(live, GATE_SLOTS);
        let iterations = self.record_iterations(ctx, gpu, op, &mut m, (&s, &mut q, &r, &mut z), &solve, params);
        let sizes = ctx.engine.close_gate();
        iterations?;
        let mut words = vec![sizes.len() as u32];
        words.extend(sizes.iter().flatten());
        ctx.queue.write_buffer(&solve.recorded, 0, bytemuck::cast_slice(&words));

        op.apply(gpu, d, &mut q)?;
        self.run(ctx, &self.final_residual, &solve, vec_groups)?;
        self.run(ctx, &self.final_state, &solve, 1)?;
        let st = ctx.read_back::<State>(&solve.state, 0, STATE_BYTES)?[0];
        let outcome = CgOutcome::from_code(st.status)
            .ok_or_else(|| Error::Gpu(format!("CG ended in state {} (not a final state)", st.status)))?;
        Ok(CgReport {
            iterations: st.iters as usize,
            rel_residual: st.rel_residual,
            rhs_sq: st.gg as f64,
            outcome,
        })
    }

    /// Records `params.max_iters` gated iterations.
    #[allow(clippy::too_many_arguments)]
    fn record_iterations(
        &self,
        ctx: &GpuContext,
        gpu: &Gpu,
        op: &mut dyn Operator<Gpu>,
        m: &mut Option<&mut dyn Preconditioner<Gpu>>,
        (s, q, r, z): (&GpuVector, &mut GpuVector, &GpuVector, &mut GpuVector),
        solve: &Solve,
        params: &CgParams,
    ) -> Result<()> {
        let groups = solve.vec_groups;
        for _ in 0..params.max_iters {
            ctx.engine.next_iteration();
            // the gate itself is never gated: it decides whether the rest of the iteration runs
            ctx.record(|e| {
                let mut pass = e.begin_compute_pass(&Default::default());
                pass.set_pipeline(&self.gate);
                pass.set_bind_group(0, &solve.gate, &[]);
                pass.dispatch_workgroups(1, 1, 1);
            });
            op.apply(gpu, s, q)?;
            self.run(ctx, &self.curvature, solve, groups)?;
            self.run(ctx, &self.update, solve, groups)?;
            self.precondition(ctx, m, gpu, r, z, solve)?;
            self.run(ctx, &self.dots, solve, groups)?;
            self.run(ctx, &self.direction, solve, groups)?;
            self.run(ctx, &self.state, solve, 1)?;
        }
        Ok(())
    }

    /// `z = M⁻¹ r`, or `z = r` without a preconditioner.
    fn precondition(
        &self,
        ctx: &GpuContext,
        m: &mut Option<&mut dyn Preconditioner<Gpu>>,
        gpu: &Gpu,
        r: &GpuVector,
        z: &mut GpuVector,
        solve: &Solve,
    ) -> Result<()> {
        match m {
            Some(m) => m.apply_inverse(gpu, r, z),
            None => self.run(ctx, &self.copy_z, solve, solve.vec_groups),
        }
    }
}
