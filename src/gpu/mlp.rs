//! The MLP on the GPU: forward pass, batch loss, gradient and score rows, recorded as matmul
//! dispatches and `shaders/mlp.wgsl` kernels. One submission per call; only the loss reads back.

use std::ops::Range;

use super::Gpu;
use super::buffer::{GpuMatrix, GpuVector};
use super::context::GpuContext;
use super::engine::{self, Pool};
use super::kernel;
use super::layout::shader_struct;
use super::linalg::WG;
use super::matmul::{MatmulKernel, View};
use super::shader::Variant;
use crate::backend::BatchLoss;
use crate::backend::{self, MlpOps};
use crate::error::{Error, Result};
use crate::model::Mlp;
use crate::model::{FisherKind, SampleKey};

shader_struct! {
    pub(crate) struct Params in "mlp" {
        rows: u32,
        width: u32,
        per_example: u32,
        row0: u32,
        activation: u32,
        likelihood: u32,
        kind: u32,
        draws: u32,
        sigma: f32,
        key0: u32,
        key1: u32,
        fan_in: u32,
        offset: u32,
        ld: u32,
        apply: u32,
        example0: u32,
    }
}

/// A batch on the GPU: inputs, targets, and per layer the pre-activations z and (hidden layers)
/// activations; backward scratch grows to the largest row count asked for.
pub struct GpuBatch {
    n: usize,
    /// the layer widths of the model it was uploaded for
    widths: Vec<usize>,
    x: wgpu::Buffer,
    targets: wgpu::Buffer,
    z: Vec<wgpu::Buffer>,
    act: Vec<wgpu::Buffer>,
    /// backward scratch per layer (rows × fan_out), and the rows it holds
    delta: Vec<wgpu::Buffer>,
    delta_rows: usize,
    /// a single 1.0: the broadcast column that turns a product into column sums
    ones: wgpu::Buffer,
    /// bound where a kernel's unused output must still be bound
    dummy: wgpu::Buffer,
    /// the output-space Fisher's factors (R seeds per example) of the last forward pass, for
    /// (kind, key)
    factors: Option<(FisherKind, SampleKey, wgpu::Buffer)>,
    /// forward-mode tangents per layer (n × fan_out), made on first use
    tangent: Vec<wgpu::Buffer>,
    /// where the buffers go when the batch is dropped: the next batch of the same shape takes
    /// them, so a training step allocates nothing after the first
    pool: Pool,
}

impl Drop for GpuBatch {
    fn drop(&mut self) {
        let factors = self.factors.take().map(|f| f.2);
        let buffers = [
            self.x.clone(),
            self.targets.clone(),
            self.ones.clone(),
            self.dummy.clone(),
        ]
        .into_iter()
        .chain(self.z.drain(..))
        .chain(self.act.drain(..))
        .chain(self.delta.drain(..))
        .chain(self.tangent.drain(..))
        .chain(factors);
        for b in buffers {
            engine::give_back(&self.pool, b);
        }
    }
}

pub struct MlpKernels {
    matmul: MatmulKernel,
    bias_act: wgpu::ComputePipeline,
    act_grad_mul: wgpu::ComputePipeline,
    output_seeds: wgpu::ComputePipeline,
    batch_loss: wgpu::ComputePipeline,
    expand_scores: wgpu::ComputePipeline,
    seed_product: wgpu::ComputePipeline,
    seed_quad: wgpu::ComputePipeline,
}

/// One element of a buffer broadcast to a matrix of any shape.
fn broadcast(buffer: &wgpu::Buffer, offset: usize) -> View<'_> {
    View {
        buffer,
        offset,
        row_stride: 0,
        col_stride: 0,
    }
}

fn f32_buffer(ctx: &GpuContext, what: &'static str, len: usize) -> Result<wgpu::Buffer> {
    ctx.storage_buffer(what, &format!("{len} f32"), len as u64 * 4, wgpu::BufferUsages::empty())
}

/// Workgroups for one invocation per element over `count` elements, folded into 2-D.
fn groups_for(count: usize) -> Result<(u32, u32)> {
    let groups = u32::try_from(count.div_ceil(WG as usize))
        .map_err(|_| Error::Shape(format!("{count} elements are beyond the GPU grid")))?;
    Ok(kernel::grid(groups))
}

impl MlpKernels {
    pub fn new(ctx: &GpuContext, variant: &Variant, matmul: &MatmulKernel) -> Result<Self> {
        let module = kernel::compile(ctx, "mlp", variant)?;
        let p = |entry| kernel::pipeline(ctx, &module, entry, None);
        Ok(Self {
            matmul: matmul.clone(),
            bias_act: p("bias_act")?,
            act_grad_mul: p("act_grad_mul")?,
            output_seeds: p("output_seeds")?,
            batch_loss: p("batch_loss")?,
            expand_scores: p("expand_scores")?,
            seed_product: p("seed_product")?,
            seed_quad: p("seed_quad")?,
        })
    }

    pub fn upload(&self, ctx: &GpuContext, mlp: &Mlp, x: &[f32], targets: &[f32]) -> Result<GpuBatch> {
        let n = mlp.check_batch(x, targets)?;
        let batch_buffer = |what, data: &[f32]| -> Result<wgpu::Buffer> {
            let b = f32_buffer(ctx, what, data.len())?;
            ctx.write(&b, 0, bytemuck::cast_slice(data))?;
            Ok(b)
        };
        let last = mlp.layers().len() - 1;
        let mut z = Vec::new();
        let mut act = Vec::new();
        for (l, layer) in mlp.layers().iter().enumerate() {
            z.push(f32_buffer(ctx, "pre-activations", n * layer.fan_out)?);
            if l < last {
                act.push(f32_buffer(ctx, "activations", n * layer.fan_out)?);
            }
        }
        Ok(GpuBatch {
            n,
            widths: mlp.widths(),
            x: batch_buffer("batch inputs", x)?,
            targets: batch_buffer("batch targets", targets)?,
            z,
            act,
            delta: Vec::new(),
            delta_rows: 0,
            ones: batch_buffer("ones", &[1.0])?,
            dummy: f32_buffer(ctx, "unused output", 1)?,
            factors: None,
            tangent: Vec::new(),
            pool: ctx.engine.pool().clone(),
        })
    }

    pub fn batch_size(batch: &GpuBatch) -> usize {
        batch.n
    }

    /// The input of layer l: the batch's inputs, or the previous layer's activations.
    fn layer_input(batch: &GpuBatch, l: usize) -> &wgpu::Buffer {
        if l == 0 { &batch.x } else { &batch.act[l - 1] }
    }

    fn dispatch(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass,
        pipeline: &wgpu::ComputePipeline,
        params: &Params,
        buffers: &[(u32, &wgpu::Buffer)],
        groups: (u32, u32),
    ) -> Result<()> {
        let uniform = ctx.uniform(params)?;
        let mut entries = vec![(0, &uniform)];
        entries.extend_from_slice(buffers);
        let group = kernel::bind_some(ctx, pipeline, "mlp", &entries);
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &group, &[]);
        ctx.dispatch(pass, (groups.0, groups.1, 1))
    }

    fn base_params(mlp: &Mlp) -> Params {
        Params {
            activation: mlp.activation().code(),
            likelihood: mlp.likelihood().code(),
            sigma: mlp.likelihood().sigma(),
            per_example: 1,
            ..Default::default()
        }
    }

    pub fn forward(&self, ctx: &GpuContext, mlp: &Mlp, theta: &GpuVector, batch: &mut GpuBatch) -> Result<()> {
        mlp.check_params(theta.len)?;
        mlp.check_widths(&batch.widths)?;
        batch.factors = None;
        let n = batch.n;
        let last = mlp.layers().len() - 1;
        ctx.record(|encoder| -> Result<()> {
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                for (l, layer) in mlp.layers().iter().enumerate() {
                    // z = input · Wᵀ, then + b and σ
                    self.matmul.record(
                        ctx,
                        &mut pass,
                        (n, layer.fan_out, layer.fan_in),
                        View::rows(Self::layer_input(batch, l), 0, layer.fan_in),
                        View::transposed(&theta.buffer, layer.weight, layer.fan_in),
                        View::rows(&batch.z[l], 0, layer.fan_out),
                        1.0,
                        0.0,
                    )?;
                    let params = Params {
                        rows: n as u32,
                        width: layer.fan_out as u32,
                        offset: layer.bias as u32,
                        apply: (l < last) as u32,
                        ..Self::base_params(mlp)
                    };
                    let act = if l < last { &batch.act[l] } else { &batch.dummy };
                    let buffers = [(1, &batch.z[l]), (2, act), (3, &theta.buffer)];
                    self.dispatch(
                        ctx,
                        &mut pass,
                        &self.bias_act,
                        &params,
                        &buffers,
                        groups_for(n * layer.fan_out)?,
                    )?;
                }
            }
            Ok(())
        })
    }

    pub fn outputs(&self, ctx: &GpuContext, mlp: &Mlp, batch: &GpuBatch) -> Result<Vec<f32>> {
        mlp.check_widths(&batch.widths)?;
        let last = batch.z.len() - 1;
        ctx.read_back(&batch.z[last], 0, (batch.n * mlp.outputs() * 4) as u64)
    }

    pub fn batch_loss(&self, ctx: &GpuContext, mlp: &Mlp, batch: &GpuBatch) -> Result<BatchLoss> {
        let (partial, bytes) = self.record_loss(ctx, mlp, batch)?;
        let sums: Vec<f32> = ctx.read_back(&partial, 0, bytes)?;
        Ok(Self::loss_of(mlp, batch, &sums))
    }

    /// Records the loss's per-workgroup sums (NLL, correct) of the last forward pass; returns the
    /// buffer and its bytes.
    fn record_loss(&self, ctx: &GpuContext, mlp: &Mlp, batch: &GpuBatch) -> Result<(wgpu::Buffer, u64)> {
        mlp.check_widths(&batch.widths)?;
        let groups = (batch.n as u32).div_ceil(WG);
        let partial = f32_buffer(ctx, "loss partial sums", 2 * groups as usize)?;
        let out = mlp.outputs();
        let params = Params {
            rows: batch.n as u32,
            width: out as u32,
            ..Self::base_params(mlp)
        };
        ctx.record(|encoder| {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            let last = batch.z.len() - 1;
            let buffers = [(1, &batch.z[last]), (4, &batch.targets), (7, &partial)];
            self.dispatch(
                ctx,
                &mut pass,
                &self.batch_loss,
                &params,
                &buffers,
                kernel::grid(groups),
            )
        })?;
        Ok((partial, 8 * groups as u64))
    }

    /// The batch loss of `record_loss`'s sums, added in f64.
    fn loss_of(mlp: &Mlp, batch: &GpuBatch, sums: &[f32]) -> BatchLoss {
        let (nll, correct) = sums
            .chunks_exact(2)
            .fold((0.0f64, 0.0f64), |(a, b), s| (a + s[0] as f64, b + s[1] as f64));
        let n = batch.n as f64;
        let accuracy = if mlp.likelihood().is_classification() {
            correct / n
        } else {
            0.0
        };
        BatchLoss {
            loss: nll / n,
            accuracy,
            examples: batch.n,
        }
    }

    /// Loss, ‖g‖² and Σ mθ² recorded together and read back in one wait.
    #[allow(clippy::too_many_arguments)]
    pub fn step_scalars(
        &self,
        ctx: &GpuContext,
        linalg: &super::linalg::LinalgKernels,
        mlp: &Mlp,
        batch: &GpuBatch,
        g: &GpuVector,
        theta: &GpuVector,
        weight_mask: Option<&GpuVector>,
    ) -> Result<backend::StepScalars> {
        let (partial, bytes) = self.record_loss(ctx, mlp, batch)?;
        let (gg, gg_at) = linalg.record_dot(ctx, g, g, None)?;
        let mut ranges = vec![(&partial, 0, bytes), (&gg, gg_at, 4)];
        let weights = weight_mask
            .map(|w| linalg.record_dot(ctx, theta, theta, Some(w)))
            .transpose()?;
        if let Some((w, at)) = &weights {
            ranges.push((w, *at, 4));
        }
        let read = ctx.read_back_many(&ranges)?;
        let scalar = |b: &[u8]| bytemuck::pod_read_unaligned::<f32>(&b[..4]) as f64;
        Ok(backend::StepScalars {
            loss: Self::loss_of(mlp, batch, &bytemuck::pod_collect_to_vec::<u8, f32>(&read[0])),
            grad_sq: scalar(&read[1]),
            weight_sq: read.get(2).map_or(0.0, |b| scalar(b)),
        })
    }

    /// Makes the backward scratch hold `rows` rows per layer.
    fn ensure_deltas(ctx: &GpuContext, mlp: &Mlp, batch: &mut GpuBatch, rows: usize) -> Result<()> {
        if batch.delta_rows >= rows && !batch.delta.is_empty() {
            return Ok(());
        }
        batch.delta = mlp
            .layers()
            .iter()
            .map(|l| f32_buffer(ctx, "backward scratch", rows * l.fan_out))
            .collect::<Result<_>>()?;
        batch.delta_rows = rows;
        Ok(())
    }

    /// Records the output seeds of G rows `row0 .. row0 + rows` (R per example) into the last
    /// layer's scratch.
    #[allow(clippy::too_many_arguments)]
    fn record_seeds(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass,
        mlp: &Mlp,
        batch: &GpuBatch,
        kind: FisherKind,
        key: SampleKey,
        row0: usize,
        rows: usize,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        let last = mlp.layers().len() - 1;
        let params = Params {
            rows: rows as u32,
            width: mlp.outputs() as u32,
            per_example: kind.rows_per_example(mlp.likelihood()) as u32,
            row0: row0 as u32,
            kind: kind.code(),
            draws: match kind {
                FisherKind::Sampled { draws } => draws,
                _ => 1,
            },
            key0: key.seed,
            key1: key.step,
            example0: key.first,
            ..Self::base_params(mlp)
        };
        let buffers = [(1, &batch.z[last]), (4, &batch.targets), (5, out)];
        self.dispatch(ctx, pass, &self.output_seeds, &params, &buffers, groups_for(rows)?)?;
        Ok(())
    }

    /// Records δ_{l−1} = (δ_l W_l) ⊙ σ'(z_{l−1}) for `rows` rows (R per example from `row0`).
    #[allow(clippy::too_many_arguments)]
    fn record_back(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass,
        mlp: &Mlp,
        theta: &GpuVector,
        batch: &GpuBatch,
        l: usize,
        rows: usize,
        per_example: usize,
        row0: usize,
    ) -> Result<()> {
        let layer = mlp.layers()[l];
        self.matmul.record(
            ctx,
            pass,
            (rows, layer.fan_in, layer.fan_out),
            View::rows(&batch.delta[l], 0, layer.fan_out),
            View::rows(&theta.buffer, layer.weight, layer.fan_in),
            View::rows(&batch.delta[l - 1], 0, layer.fan_in),
            1.0,
            0.0,
        )?;
        let params = Params {
            rows: rows as u32,
            width: layer.fan_in as u32,
            per_example: per_example as u32,
            row0: row0 as u32,
            ..Self::base_params(mlp)
        };
        let buffers = [(1, &batch.z[l - 1]), (5, &batch.delta[l - 1])];
        self.dispatch(
            ctx,
            pass,
            &self.act_grad_mul,
            &params,
            &buffers,
            groups_for(rows * layer.fan_in)?,
        )?;
        Ok(())
    }

    pub fn gradient(
        &self,
        ctx: &GpuContext,
        mlp: &Mlp,
        theta: &GpuVector,
        batch: &mut GpuBatch,
        weight_decay: f32,
        g: &GpuVector,
    ) -> Result<()> {
        mlp.check_params(theta.len)?;
        mlp.check_params(g.len)?;
        mlp.check_widths(&batch.widths)?;
        let n = batch.n;
        Self::ensure_deltas(ctx, mlp, batch, n)?;
        let batch = &*batch;
        ctx.record(|encoder| -> Result<()> {
            // g starts as θ: the weight blocks keep wd·W through β = wd below
            encoder.copy_buffer_to_buffer(&theta.buffer, 0, &g.buffer, 0, theta.buffer.size());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                self.record_seeds(
                    ctx,
                    &mut pass,
                    mlp,
                    batch,
                    FisherKind::Empirical,
                    SampleKey::default(),
                    0,
                    n,
                    &batch.delta[mlp.layers().len() - 1],
                )?;
                self.record_backward(ctx, &mut pass, mlp, theta, batch, -1.0 / n as f32, weight_decay, g)?;
            }
            Ok(())
        })
    }

    /// Records the backward pass from output seeds already in the last layer's scratch (n rows,
    /// one per example): `g`'s weight blocks become `scale·δᵀ·input + β·g`, its biases `scale·Σ δ`.
    #[allow(clippy::too_many_arguments)]
    fn record_backward(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass,
        mlp: &Mlp,
        theta: &GpuVector,
        batch: &GpuBatch,
        scale: f32,
        beta: f32,
        g: &GpuVector,
    ) -> Result<()> {
        let n = batch.n;
        for (l, layer) in mlp.layers().iter().enumerate().rev() {
            self.matmul.record(
                ctx,
                pass,
                (layer.fan_out, layer.fan_in, n),
                View::transposed(&batch.delta[l], 0, layer.fan_out),
                View::rows(Self::layer_input(batch, l), 0, layer.fan_in),
                View::rows(&g.buffer, layer.weight, layer.fan_in),
                scale,
                beta,
            )?;
            self.matmul.record(
                ctx,
                pass,
                (layer.fan_out, 1, n),
                View::transposed(&batch.delta[l], 0, layer.fan_out),
                broadcast(&batch.ones, 0),
                View::rows(&g.buffer, layer.bias, 1),
                scale,
                0.0,
            )?;
            if l > 0 {
                self.record_back(ctx, pass, mlp, theta, batch, l, n, 1, 0)?;
            }
        }
        Ok(())
    }

    /// Makes the batch's output factors for (kind, key) if the last forward pass has none.
    fn ensure_factors(
        &self,
        ctx: &GpuContext,
        mlp: &Mlp,
        batch: &mut GpuBatch,
        kind: FisherKind,
        key: SampleKey,
    ) -> Result<()> {
        if matches!(&batch.factors, Some((k, s, _)) if *k == kind && *s == key) {
            return Ok(());
        }
        let rows = batch.n * kind.rows_per_example(mlp.likelihood());
        let buffer = f32_buffer(ctx, "output-space Fisher factors", rows * mlp.outputs())?;
        ctx.record(|encoder| {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            self.record_seeds(ctx, &mut pass, mlp, batch, kind, key, 0, rows, &buffer)
        })?;
        batch.factors = Some((kind, key, buffer));
        Ok(())
    }

    /// `y = scale · Σ_i J_iᵀ H_i J_i v`: a forward-mode pass along v (ż_l = ȧ_{l−1}W_lᵀ +
    /// a_{l−1}V_lᵀ + v_b, ȧ_l = σ'(z_l) ⊙ ż_l), the output-space Fisher, and a backward pass.
    #[allow(clippy::too_many_arguments)]
    pub fn fisher_product(
        &self,
        ctx: &GpuContext,
        mlp: &Mlp,
        theta: &GpuVector,
        batch: &mut GpuBatch,
        kind: FisherKind,
        key: SampleKey,
        v: &GpuVector,
        scale: f32,
        y: &GpuVector,
    ) -> Result<()> {
        mlp.check_params(y.len)?;
        self.record_output_pass(
            ctx,
            mlp,
            theta,
            batch,
            kind,
            key,
            v,
            &self.seed_product,
            |pass, batch| {
                // H_i (J_i v) lands in the last layer's scratch: back-propagate it
                self.record_backward(ctx, pass, mlp, theta, batch, scale, 0.0, y)
            },
        )
    }

    /// Records the forward-mode pass along v, then `kernel` (seed_product or seed_quad) on the output
    /// tangents and the batch's output factors into scratch, then `then`.
    #[allow(clippy::too_many_arguments)]
    fn record_output_pass(
        &self,
        ctx: &GpuContext,
        mlp: &Mlp,
        theta: &GpuVector,
        batch: &mut GpuBatch,
        kind: FisherKind,
        key: SampleKey,
        v: &GpuVector,
        kernel: &wgpu::ComputePipeline,
        then: impl FnOnce(&mut wgpu::ComputePass, &GpuBatch) -> Result<()>,
    ) -> Result<()> {
        for len in [theta.len, v.len] {
            mlp.check_params(len)?;
        }
        mlp.check_widths(&batch.widths)?;
        let n = batch.n;
        self.ensure_factors(ctx, mlp, batch, kind, key)?;
        Self::ensure_deltas(ctx, mlp, batch, n)?;
        Self::ensure_tangents(ctx, mlp, batch)?;
        let batch = &*batch;
        let last = mlp.layers().len() - 1;
        ctx.record(|encoder| {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            self.record_jvp(ctx, &mut pass, mlp, theta, batch, v)?;
            let params = Params {
                rows: n as u32,
                width: mlp.outputs() as u32,
                per_example: kind.rows_per_example(mlp.likelihood()) as u32,
                ..Self::base_params(mlp)
            };
            let factors = batch.factors.as_ref().map(|f| &f.2).unwrap_or(&batch.dummy);
            let buffers = [(5, &batch.delta[last]), (8, &batch.tangent[last]), (9, factors)];
            self.dispatch(ctx, &mut pass, kernel, &params, &buffers, groups_for(n)?)?;
            then(&mut pass, batch)
        })
    }

    /// Records the forward-mode pass along v into the batch's tangents (the last layer's is J v).
    fn record_jvp(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass,
        mlp: &Mlp,
        theta: &GpuVector,
        batch: &GpuBatch,
        v: &GpuVector,
    ) -> Result<()> {
        let n = batch.n;
        let last = mlp.layers().len() - 1;
        for (l, layer) in mlp.layers().iter().enumerate() {
            let dims = (n, layer.fan_out, layer.fan_in);
            let t = View::rows(&batch.tangent[l], 0, layer.fan_out);
            let input = View::rows(Self::layer_input(batch, l), 0, layer.fan_in);
            let v_weight = View::transposed(&v.buffer, layer.weight, layer.fan_in);
            self.matmul.record(ctx, pass, dims, input, v_weight, t, 1.0, 0.0)?;
            if l > 0 {
                let below = View::rows(&batch.tangent[l - 1], 0, layer.fan_in);
                let weight = View::transposed(&theta.buffer, layer.weight, layer.fan_in);
                self.matmul.record(ctx, pass, dims, below, weight, t, 1.0, 1.0)?;
            }
            let groups = groups_for(n * layer.fan_out)?;
            let params = Params {
                rows: n as u32,
                width: layer.fan_out as u32,
                offset: layer.bias as u32,
                apply: 0,
                ..Self::base_params(mlp)
            };
            // + v_b: bias_act without the activation, v bound as θ
            let buffers = [(1, &batch.tangent[l]), (2, &batch.dummy), (3, &v.buffer)];
            self.dispatch(ctx, pass, &self.bias_act, &params, &buffers, groups)?;
            if l < last {
                let buffers = [(1, &batch.z[l]), (5, &batch.tangent[l])];
                self.dispatch(ctx, pass, &self.act_grad_mul, &params, &buffers, groups)?;
            }
        }
        Ok(())
    }

    /// Makes the batch's tangent buffers.
    fn ensure_tangents(ctx: &GpuContext, mlp: &Mlp, batch: &mut GpuBatch) -> Result<()> {
        if batch.tangent.is_empty() {
            batch.tangent = mlp
                .layers()
                .iter()
                .map(|l| f32_buffer(ctx, "forward-mode tangents", batch.n * l.fan_out))
                .collect::<Result<_>>()?;
        }
        Ok(())
    }

    /// `vᵀFv` by the forward-mode pass and `seed_quad` (each example's share into the last layer's
    /// scratch), summed on the host in f64.
    #[allow(clippy::too_many_arguments)]
    pub fn fisher_quad(
        &self,
        ctx: &GpuContext,
        mlp: &Mlp,
        theta: &GpuVector,
        batch: &mut GpuBatch,
        kind: FisherKind,
        key: SampleKey,
        v: &GpuVector,
    ) -> Result<f64> {
        self.damped_fisher_quad(ctx, None, mlp, theta, batch, kind, key, v, None)
    }

    /// `vᵀFv`, plus `Σ dᵢvᵢ²` with a diagonal (`linalg` records its dot), read back in one wait.
    #[allow(clippy::too_many_arguments)]
    pub fn damped_fisher_quad(
        &self,
        ctx: &GpuContext,
        linalg: Option<&super::linalg::LinalgKernels>,
        mlp: &Mlp,
        theta: &GpuVector,
        batch: &mut GpuBatch,
        kind: FisherKind,
        key: SampleKey,
        v: &GpuVector,
        diag: Option<&GpuVector>,
    ) -> Result<f64> {
        self.record_output_pass(ctx, mlp, theta, batch, kind, key, v, &self.seed_quad, |_, _| Ok(()))?;
        let (n, last) = (batch.n, mlp.layers().len() - 1);
        let mut ranges = vec![(&batch.delta[last], 0, 4 * n as u64)];
        let damping = match (linalg, diag) {
            (Some(linalg), Some(d)) => Some(linalg.record_dot(ctx, v, v, Some(d))?),
            _ => None,
        };
        if let Some((buffer, at)) = &damping {
            ranges.push((buffer, *at, 4));
        }
        let read = ctx.read_back_many(&ranges)?;
        let shares: Vec<f32> = bytemuck::pod_collect_to_vec(&read[0]);
        let fisher = shares.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let diagonal = read
            .get(1)
            .map_or(0.0, |b| bytemuck::pod_read_unaligned::<f32>(&b[..4]) as f64);
        Ok(fisher + diagonal)
    }

    /// K-FAC's statistics (see [`MlpOps::kfac_factors`]): `s[l] = (1/n) δᵀδ` over the back-propagated
    /// seed rows, `a[l] = (1/n) āᵀā` bordered by the inputs' means and a 1, all on the matmul kernel.
    #[allow(clippy::too_many_arguments)]
    pub fn kfac_factors(
        &self,
        ctx: &GpuContext,
        mlp: &Mlp,
        theta: &GpuVector,
        batch: &mut GpuBatch,
        kind: FisherKind,
        key: SampleKey,
        a: &[GpuMatrix],
        s: &[GpuMatrix],
    ) -> Result<()> {
        mlp.check_params(theta.len)?;
        mlp.check_widths(&batch.widths)?;
        let n = batch.n;
        let per_example = kind.rows_per_example(mlp.likelihood());
        let rows = n * per_example;
        Self::ensure_deltas(ctx, mlp, batch, rows)?;
        let batch = &*batch;
        let scale = 1.0 / n as f32;
        let last = mlp.layers().len() - 1;
        let ones = || broadcast(&batch.ones, 0);
        ctx.record(|encoder| -> Result<()> {
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                self.record_seeds(ctx, &mut pass, mlp, batch, kind, key, 0, rows, &batch.delta[last])?;
                for (l, layer) in mlp.layers().iter().enumerate().rev() {
                    let (fan_in, fan_out) = (layer.fan_in, layer.fan_out);
                    let delta = &batch.delta[l];
                    self.matmul.record_symmetric(
                        ctx,
                        &mut pass,
                        (fan_out, rows),
                        View::transposed(delta, 0, fan_out),
                        View::rows(delta, 0, fan_out),
                        View::rows(&s[l].buffer, 0, s[l].ld()),
                        scale,
                        0.0,
                    )?;
                    let input = Self::layer_input(batch, l);
                    let (abuf, ld) = (&a[l].buffer, a[l].ld());
                    // āᵀā's inputs block (symmetric), then its last column and row (the means)
                    // and its corner
                    self.matmul.record_symmetric(
                        ctx,
                        &mut pass,
                        (fan_in, n),
                        View::transposed(input, 0, fan_in),
                        View::rows(input, 0, fan_in),
                        View::rows(abuf, 0, ld),
                        scale,
                        0.0,
                    )?;
                    let products = [
                        ((fan_in, 1, n), View::transposed(input, 0, fan_in), ones(), fan_in),
                        ((1, fan_in, n), ones(), View::rows(input, 0, fan_in), fan_in * ld),
                        ((1, 1, n), ones(), ones(), fan_in * ld + fan_in),
                    ];
                    for (dims, left, right, offset) in products {
                        self.matmul.record(
                            ctx,
                            &mut pass,
                            dims,
                            left,
                            right,
                            View::rows(abuf, offset, ld),
                            scale,
                            0.0,
                        )?;
                    }
                    if l > 0 {
                        self.record_back(ctx, &mut pass, mlp, theta, batch, l, rows, per_example, 0)?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Per layer `Y = S·[X_W | X_b]·A` on the matmul kernel, through a scratch vector for X·A.
    #[allow(clippy::too_many_arguments)]
    pub fn kronecker_product(
        &self,
        ctx: &GpuContext,
        mlp: &Mlp,
        s: &[GpuMatrix],
        a: &[GpuMatrix],
        x: &GpuVector,
        y: &GpuVector,
        layers: &[bool],
    ) -> Result<()> {
        mlp.check_params(x.len)?;
        mlp.check_params(y.len)?;
        let tmp = f32_buffer(ctx, "Kronecker product scratch", mlp.num_params())?;
        ctx.record(|encoder| -> Result<()> {
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                for (l, layer) in mlp.layers().iter().enumerate().filter(|(l, _)| layers[*l]) {
                    let (fi, fo, w, b) = (layer.fan_in, layer.fan_out, layer.weight, layer.bias);
                    let (abuf, lda) = (&a[l].buffer, a[l].ld());
                    let x_w = View::rows(&x.buffer, w, fi);
                    // the bias as a column, broadcast along its one column
                    let x_b = View {
                        buffer: &x.buffer,
                        offset: b,
                        row_stride: 1,
                        col_stride: 0,
                    };
                    let a_block = View::rows(abuf, 0, lda);
                    let a_last_row = View {
                        buffer: abuf,
                        offset: fi * lda,
                        row_stride: 0,
                        col_stride: 1,
                    };
                    let a_last_col = View {
                        buffer: abuf,
                        offset: fi,
                        row_stride: lda,
                        col_stride: 0,
                    };
                    let a_corner = broadcast(abuf, fi * lda + fi);
                    let (t_w, t_b) = (View::rows(&tmp, w, fi), View::rows(&tmp, b, 1));
                    let products = [
                        // T_W = X_W·A₁₁ + X_b·A₂₁;  T_b = X_W·A₁₂ + X_b·A₂₂
                        ((fo, fi, fi), x_w, a_block, t_w, 0.0),
                        ((fo, fi, 1), x_b, a_last_row, t_w, 1.0),
                        ((fo, 1, fi), x_w, a_last_col, t_b, 0.0),
                        ((fo, 1, 1), x_b, a_corner, t_b, 1.0),
                        // Y = S·T
                        (
                            (fo, fi, fo),
                            View::rows(&s[l].buffer, 0, s[l].ld()),
                            t_w,
                            View::rows(&y.buffer, w, fi),
                            0.0,
                        ),
                        (
                            (fo, 1, fo),
                            View::rows(&s[l].buffer, 0, s[l].ld()),
                            t_b,
                            View::rows(&y.buffer, b, 1),
                            0.0,
                        ),
                    ];
                    for (dims, left, right, out, beta) in products {
                        self.matmul.record(ctx, &mut pass, dims, left, right, out, 1.0, beta)?;
                    }
                }
            }
            Ok(())
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn score_rows(
        &self,
        ctx: &GpuContext,
        mlp: &Mlp,
        theta: &GpuVector,
        batch: &mut GpuBatch,
        kind: FisherKind,
        key: SampleKey,
        rows: Range<usize>,
        out: &GpuMatrix,
    ) -> Result<()> {
        mlp.check_params(theta.len)?;
        mlp.check_widths(&batch.widths)?;
        let count = rows.len();
        if count > kernel::MAX_GROUPS as usize {
            return Err(Error::Shape(format!(
                "{count} score rows in one call; at most {}",
                kernel::MAX_GROUPS
            )));
        }
        Self::ensure_deltas(ctx, mlp, batch, count)?;
        let batch = &*batch;
        let per_example = kind.rows_per_example(mlp.likelihood());
        ctx.record(|encoder| -> Result<()> {
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                let last = mlp.layers().len() - 1;
                self.record_seeds(
                    ctx,
                    &mut pass,
                    mlp,
                    batch,
                    kind,
                    key,
                    rows.start,
                    count,
                    &batch.delta[last],
                )?;
                for (l, layer) in mlp.layers().iter().enumerate().rev() {
                    let params = Params {
                        rows: count as u32,
                        width: layer.fan_out as u32,
                        per_example: per_example as u32,
                        row0: rows.start as u32,
                        fan_in: layer.fan_in as u32,
                        offset: layer.weight as u32,
                        ld: out.ld() as u32,
                        ..Self::base_params(mlp)
                    };
                    let buffers = [(5, &batch.delta[l]), (6, &out.buffer), (8, Self::layer_input(batch, l))];
                    let x_groups = (layer.len() as u32).div_ceil(WG);
                    if x_groups > kernel::MAX_GROUPS {
                        return Err(Error::Shape(format!(
                            "layer {l} has {} parameters, beyond the GPU grid",
                            layer.len()
                        )));
                    }
                    self.dispatch(
                        ctx,
                        &mut pass,
                        &self.expand_scores,
                        &params,
                        &buffers,
                        (x_groups, count as u32),
                    )?;
                    if l > 0 {
                        self.record_back(ctx, &mut pass, mlp, theta, batch, l, count, per_example, rows.start)?;
                    }
                }
            }
            Ok(())
        })
    }
}

impl MlpOps for Gpu {
    type Batch = GpuBatch;

    fn upload_batch(&self, mlp: &Mlp, x: &[f32], targets: &[f32]) -> Result<GpuBatch> {
        self.mlp()?.upload(&self.ctx, mlp, x, targets)
    }

    fn batch_size(&self, batch: &GpuBatch) -> usize {
        MlpKernels::batch_size(batch)
    }

    fn forward(&self, mlp: &Mlp, theta: &GpuVector, batch: &mut GpuBatch) -> Result<()> {
        self.mlp()?.forward(&self.ctx, mlp, theta, batch)
    }

    fn outputs(&self, mlp: &Mlp, batch: &GpuBatch) -> Result<Vec<f32>> {
        self.mlp()?.outputs(&self.ctx, mlp, batch)
    }

    fn batch_loss(&self, mlp: &Mlp, batch: &GpuBatch) -> Result<BatchLoss> {
        self.mlp()?.batch_loss(&self.ctx, mlp, batch)
    }

    fn gradient(
        &self,
        mlp: &Mlp,
        theta: &GpuVector,
        batch: &mut GpuBatch,
        weight_decay: f32,
        g: &mut GpuVector,
    ) -> Result<()> {
        self.mlp()?.gradient(&self.ctx, mlp, theta, batch, weight_decay, g)
    }

    fn score_rows(
        &self,
        mlp: &Mlp,
        theta: &GpuVector,
        batch: &mut GpuBatch,
        kind: FisherKind,
        key: SampleKey,
        rows: Range<usize>,
        out: &mut GpuMatrix,
    ) -> Result<()> {
        backend::check_score_rows(mlp, self.batch_size(batch), kind, &rows, (out.rows, out.cols))?;
        self.mlp()?
            .score_rows(&self.ctx, mlp, theta, batch, kind, key, rows, out)
    }

    fn fisher_product(
        &self,
        mlp: &Mlp,
        theta: &GpuVector,
        batch: &mut GpuBatch,
        kind: FisherKind,
        key: SampleKey,
        v: &GpuVector,
        scale: f32,
        y: &mut GpuVector,
    ) -> Result<()> {
        backend::check_fisher_kind(kind)?;
        self.mlp()?
            .fisher_product(&self.ctx, mlp, theta, batch, kind, key, v, scale, y)
    }

    fn fisher_quad(
        &self,
        mlp: &Mlp,
        theta: &GpuVector,
        batch: &mut GpuBatch,
        kind: FisherKind,
        key: SampleKey,
        v: &GpuVector,
    ) -> Result<f64> {
        backend::check_fisher_kind(kind)?;
        self.mlp()?.fisher_quad(&self.ctx, mlp, theta, batch, kind, key, v)
    }

    fn damped_fisher_quad(
        &self,
        mlp: &Mlp,
        theta: &GpuVector,
        batch: &mut GpuBatch,
        kind: FisherKind,
        key: SampleKey,
        v: &GpuVector,
        diag: &GpuVector,
    ) -> Result<f64> {
        backend::check_fisher_kind(kind)?;
        backend::check_same_len(v.len, diag.len)?;
        self.mlp()?.damped_fisher_quad(
            &self.ctx,
            Some(self.linalg()?),
            mlp,
            theta,
            batch,
            kind,
            key,
            v,
            Some(diag),
        )
    }

    fn step_scalars(
        &self,
        mlp: &Mlp,
        batch: &GpuBatch,
        g: &GpuVector,
        theta: &GpuVector,
        weight_mask: Option<&GpuVector>,
    ) -> Result<backend::StepScalars> {
        backend::check_same_len(g.len, theta.len)?;
        if let Some(w) = weight_mask {
            backend::check_same_len(w.len, theta.len)?;
        }
        self.mlp()?
            .step_scalars(&self.ctx, self.linalg()?, mlp, batch, g, theta, weight_mask)
    }

    fn kfac_factors(
        &self,
        mlp: &Mlp,
        theta: &GpuVector,
        batch: &mut GpuBatch,
        kind: FisherKind,
        key: SampleKey,
        a: &mut [GpuMatrix],
        s: &mut [GpuMatrix],
    ) -> Result<()> {
        backend::check_fisher_kind(kind)?;
        backend::check_kfac(mlp, &shapes(a), &shapes(s))?;
        self.mlp()?.kfac_factors(&self.ctx, mlp, theta, batch, kind, key, a, s)
    }

    fn kronecker_product(
        &self,
        mlp: &Mlp,
        s: &[GpuMatrix],
        a: &[GpuMatrix],
        x: &GpuVector,
        y: &mut GpuVector,
        layers: &[bool],
    ) -> Result<()> {
        backend::check_kfac(mlp, &shapes(a), &shapes(s))?;
        backend::check_layer_mask(mlp, layers)?;
        self.mlp()?.kronecker_product(&self.ctx, mlp, s, a, x, y, layers)
    }
}

fn shapes(ms: &[GpuMatrix]) -> Vec<(usize, usize)> {
    ms.iter().map(|m| (m.rows, m.cols)).collect()
}
