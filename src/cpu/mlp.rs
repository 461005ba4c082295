//! The MLP on the CPU: the twin of `shaders/mlp.wgsl` and the GPU's matmul dispatches — forward
//! pass, batch loss, gradient and score rows, with the products on the `gemm` crate and the
//! per-row work on rayon.

use std::ops::Range;

use rayon::prelude::*;

use super::matmul::{View, matmul};
use super::{Cpu, CpuMatrix, Layout};
use crate::backend::{self, BatchLoss, MlpOps};
use crate::error::Result;
use crate::model::fisher::{self, FisherKind, SampleKey};
use crate::model::likelihood::softmax;
use crate::model::{Likelihood, Mlp};

/// A batch in host memory with its forward pass: per layer the pre-activations z and (hidden
/// layers) activations, and backward scratch.
pub struct CpuBatch {
    n: usize,
    /// the layer widths of the model it was uploaded for
    widths: Vec<usize>,
    x: Vec<f32>,
    targets: Vec<f32>,
    z: Vec<Vec<f32>>,
    act: Vec<Vec<f32>>,
    delta: Vec<Vec<f32>>,
    /// the output-space Fisher's factors of the last forward pass, for (kind, key)
    factors: Option<(FisherKind, SampleKey, Vec<f32>)>,
    /// σ'(z) of each hidden layer at the last forward pass, made on first use (empty until
    /// then): every backward and forward-mode pass multiplies by it
    slopes: Vec<Vec<f32>>,
}

impl CpuBatch {
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The network's outputs of the last forward pass, n × outputs.
    pub fn outputs(&self, mlp: &Mlp) -> Result<&[f32]> {
        mlp.check_widths(&self.widths)?;
        Ok(&self.z[self.z.len() - 1])
    }

    fn layer_input(&self, l: usize) -> &[f32] {
        if l == 0 { &self.x } else { &self.act[l - 1] }
    }
}

/// Rows of output seeds from which filling them is worth rayon's pool. The per-element loops of
/// the passes (bias, activation, its derivative, the output Hessian) run on one thread: handing
/// them to the pool and waiting costs tens of microseconds, more than they take, and the matrix
/// products around them carry the parallelism.
const PARALLEL_ROWS: usize = 4096;

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

pub fn upload(mlp: &Mlp, x: &[f32], targets: &[f32]) -> Result<CpuBatch> {
    let n = mlp.check_batch(x, targets)?;
    let last = mlp.layers().len() - 1;
    let z = mlp.layers().iter().map(|l| vec![0.0; n * l.fan_out]).collect();
    let act = mlp.layers()[..last].iter().map(|l| vec![0.0; n * l.fan_out]).collect();
    Ok(CpuBatch {
        n,
        widths: mlp.widths(),
        x: x.to_vec(),
        targets: targets.to_vec(),
        z,
        act,
        delta: Vec::new(),
        factors: None,
        slopes: Vec::new(),
    })
}

pub fn forward(mlp: &Mlp, theta: &[f32], batch: &mut CpuBatch) -> Result<()> {
    mlp.check_params(theta.len())?;
    mlp.check_widths(&batch.widths)?;
    batch.factors = None;
    batch.slopes.clear();
    let n = batch.n;
    let last = mlp.layers().len() - 1;
    let activation = mlp.activation();
    for (l, layer) in mlp.layers().iter().enumerate() {
        let mut z = std::mem::take(&mut batch.z[l]);
        matmul(
            (n, layer.fan_out, layer.fan_in),
            View::rows(batch.layer_input(l), 0, layer.fan_in),
            View::transposed(theta, layer.weight, layer.fan_in),
            &mut z,
            0,
            layer.fan_out,
            1.0,
            0.0,
        );
        let bias = &theta[layer.bias..layer.bias + layer.fan_out];
        z.chunks_mut(layer.fan_out)
            .for_each(|row| row.iter_mut().zip(bias).for_each(|(v, b)| *v += b));
        if l < last {
            batch.act[l]
                .iter_mut()
                .zip(&z)
                .for_each(|(a, v)| *a = activation.apply(*v as f64) as f32);
        }
        batch.z[l] = z;
    }
    Ok(())
}

pub fn batch_loss(mlp: &Mlp, batch: &CpuBatch) -> Result<BatchLoss> {
    mlp.check_widths(&batch.widths)?;
    let (out, t) = (mlp.outputs(), mlp.likelihood().target_width());
    let logits = &batch.z[batch.z.len() - 1];
    let (nll, correct) = (0..batch.n)
        .map(|i| {
            let z = f64s(&logits[i * out..(i + 1) * out]);
            let y = f64s(&batch.targets[i * t..(i + 1) * t]);
            (
                -mlp.likelihood().log_prob(&z, &y),
                mlp.likelihood().correct(&z, &y) as usize as f64,
            )
        })
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let n = batch.n as f64;
    let accuracy = if mlp.likelihood().is_classification() {
        correct / n
    } else {
        0.0
    };
    Ok(BatchLoss {
        loss: nll / n,
        accuracy,
        examples: batch.n,
    })
}

/// Fills the last layer's scratch with the output seeds of G rows `rows`.
fn seeds(mlp: &Mlp, batch: &mut CpuBatch, kind: FisherKind, key: SampleKey, rows: &Range<usize>) {
    let last = mlp.layers().len() - 1;
    let mut delta = std::mem::take(&mut batch.delta[last]);
    write_seeds(mlp, batch, kind, key, rows, &mut delta);
    batch.delta[last] = delta;
}

/// The output seeds of G rows `rows` (see `fisher::output_seed`), `rows.len() × outputs` into `out`.
fn write_seeds(mlp: &Mlp, batch: &CpuBatch, kind: FisherKind, key: SampleKey, rows: &Range<usize>, delta: &mut [f32]) {
    let (out, t) = (mlp.outputs(), mlp.likelihood().target_width());
    let per_example = kind.rows_per_example(mlp.likelihood());
    let last = mlp.layers().len() - 1;
    let (logits, targets) = (&batch.z[last], &batch.targets);
    let whole_examples = rows.start.is_multiple_of(per_example) && rows.len().is_multiple_of(per_example);
    if kind == FisherKind::Exact && matches!(mlp.likelihood(), Likelihood::Categorical { .. }) && whole_examples {
        // the C rows of an example share one softmax: √p_c (e_c − p), computed once per example
        let first = rows.start / per_example;
        delta[..rows.len() * out]
            .chunks_mut(out * out)
            .enumerate()
            .for_each(|(k, block)| {
                let e = first + k;
                let p = softmax(&f64s(&logits[e * out..(e + 1) * out]));
                for (c, row) in block.chunks_exact_mut(out).enumerate() {
                    let root = p[c].sqrt();
                    for (j, d) in row.iter_mut().enumerate() {
                        *d = (root * (if j == c { 1.0 } else { 0.0 } - p[j])) as f32;
                    }
                }
            });
        return;
    }
    let row = |(k, row): (usize, &mut [f32])| {
        let q = rows.start + k;
        let e = q / per_example;
        let z = f64s(&logits[e * out..(e + 1) * out]);
        let y = f64s(&targets[e * t..(e + 1) * t]);
        let seed = fisher::output_seed(mlp.likelihood(), kind, &z, &y, e as u32, (q % per_example) as u32, key);
        row.iter_mut().zip(seed).for_each(|(d, s)| *d = s as f32);
    };
    // a seed is a few hundred nanoseconds: the pool pays only for many rows
    let delta = &mut delta[..rows.len() * out];
    if rows.len() >= PARALLEL_ROWS {
        delta.par_chunks_mut(out).enumerate().for_each(row);
    } else {
        delta.chunks_mut(out).enumerate().for_each(row);
    }
}

/// Makes σ'(z) of every hidden layer at the last forward pass, once per forward pass.
fn ensure_slopes(mlp: &Mlp, batch: &mut CpuBatch) {
    if batch.slopes.is_empty() {
        let activation = mlp.activation();
        let hidden = &batch.z[..batch.z.len() - 1];
        batch.slopes = hidden
            .iter()
            .map(|z| z.iter().map(|&v| activation.derivative(v as f64) as f32).collect())
            .collect();
    }
}

/// δ_{l−1} = (δ_l W_l) ⊙ σ'(z_{l−1}) for `count` rows, `per_example` rows per example from `row0`.
fn back(mlp: &Mlp, theta: &[f32], batch: &mut CpuBatch, l: usize, count: usize, per_example: usize, row0: usize) {
    let layer = mlp.layers()[l];
    let mut below = std::mem::take(&mut batch.delta[l - 1]);
    matmul(
        (count, layer.fan_in, layer.fan_out),
        View::rows(&batch.delta[l], 0, layer.fan_out),
        View::rows(theta, layer.weight, layer.fan_in),
        &mut below,
        0,
        layer.fan_in,
        1.0,
        0.0,
    );
    ensure_slopes(mlp, batch);
    let (slope, width) = (&batch.slopes[l - 1], layer.fan_in);
    below[..count * width]
        .chunks_mut(width)
        .enumerate()
        .for_each(|(k, row)| {
            let e = (row0 + k) / per_example;
            row.iter_mut()
                .zip(&slope[e * width..(e + 1) * width])
                .for_each(|(d, s)| *d *= s);
        });
    batch.delta[l - 1] = below;
}

fn ensure_deltas(mlp: &Mlp, batch: &mut CpuBatch, rows: usize) {
    if batch.delta.is_empty() || batch.delta[0].len() < rows * mlp.layers()[0].fan_out {
        batch.delta = mlp.layers().iter().map(|l| vec![0.0; rows * l.fan_out]).collect();
    }
}

/// The backward pass from output seeds already in the last layer's scratch (n rows, one per
/// example): `g`'s weight blocks become `scale·δᵀ·input + β·g`, its biases `scale·Σ δ`.
fn backward(mlp: &Mlp, theta: &[f32], batch: &mut CpuBatch, scale: f32, beta: f32, g: &mut [f32]) {
    let n = batch.n;
    for (l, layer) in mlp.layers().iter().enumerate().rev() {
        matmul(
            (layer.fan_out, layer.fan_in, n),
            View::transposed(&batch.delta[l], 0, layer.fan_out),
            View::rows(batch.layer_input(l), 0, layer.fan_in),
            g,
            layer.weight,
            layer.fan_in,
            scale,
            beta,
        );
        let bias = &mut g[layer.bias..layer.bias + layer.fan_out];
        bias.fill(0.0);
        for row in batch.delta[l][..n * layer.fan_out].chunks_exact(layer.fan_out) {
            bias.iter_mut().zip(row).for_each(|(b, d)| *b += scale * d);
        }
        if l > 0 {
            back(mlp, theta, batch, l, n, 1, 0);
        }
    }
}

pub fn gradient(mlp: &Mlp, theta: &[f32], batch: &mut CpuBatch, weight_decay: f32, g: &mut [f32]) -> Result<()> {
    mlp.check_params(theta.len())?;
    mlp.check_params(g.len())?;
    mlp.check_widths(&batch.widths)?;
    let n = batch.n;
    ensure_deltas(mlp, batch, n);
    seeds(mlp, batch, FisherKind::Empirical, SampleKey::default(), &(0..n));
    // g starts as θ: the weight blocks keep wd·W through β = wd below
    g.copy_from_slice(theta);
    backward(mlp, theta, batch, -1.0 / n as f32, weight_decay, g);
    Ok(())
}

/// The directional derivative of the network's outputs along v (an R-op through every layer):
/// `J v`, n × outputs. ż_l = ȧ_{l−1} W_lᵀ + a_{l−1} V_lᵀ + v_b, ȧ_l = σ'(z_l) ⊙ ż_l, ȧ_0 = 0.
fn jvp(mlp: &Mlp, theta: &[f32], batch: &mut CpuBatch, v: &[f32]) -> Vec<f32> {
    let n = batch.n;
    let last = mlp.layers().len() - 1;
    let mut below: Vec<f32> = Vec::new();
    ensure_slopes(mlp, batch);
    for (l, layer) in mlp.layers().iter().enumerate() {
        let mut t = vec![0.0f32; n * layer.fan_out];
        let dims = (n, layer.fan_out, layer.fan_in);
        let input = View::rows(batch.layer_input(l), 0, layer.fan_in);
        matmul(
            dims,
            input,
            View::transposed(v, layer.weight, layer.fan_in),
            &mut t,
            0,
            layer.fan_out,
            1.0,
            0.0,
        );
        if l > 0 {
            let tangent = View::rows(&below, 0, layer.fan_in);
            matmul(
                dims,
                tangent,
                View::transposed(theta, layer.weight, layer.fan_in),
                &mut t,
                0,
                layer.fan_out,
                1.0,
                1.0,
            );
        }
        let bias = &v[layer.bias..layer.bias + layer.fan_out];
        t.chunks_mut(layer.fan_out)
            .for_each(|row| row.iter_mut().zip(bias).for_each(|(tv, b)| *tv += b));
        if l < last {
            t.iter_mut().zip(&batch.slopes[l]).for_each(|(tv, s)| *tv *= s);
        }
        below = t;
    }
    below
}

/// The output-space Fisher's factors of every example at the last forward pass, computed once per
/// forward pass and kind: `R × outputs` seeds per example with `H_i = Σ_r s_ir s_irᵀ`.
fn output_factors<'b>(mlp: &Mlp, batch: &'b mut CpuBatch, kind: FisherKind, key: SampleKey) -> &'b [f32] {
    let rows = batch.n * kind.rows_per_example(mlp.likelihood());
    let fresh = !matches!(&batch.factors, Some((k, s, _)) if *k == kind && *s == key);
    if fresh {
        let mut out = vec![0.0f32; rows * mlp.outputs()];
        write_seeds(mlp, batch, kind, key, &(0..rows), &mut out);
        batch.factors = Some((kind, key, out));
    }
    batch.factors.as_ref().map_or(&[], |f| f.2.as_slice())
}

/// `y = scale · Σ_i J_iᵀ H_i J_i v`: the Fisher of `kind` (times n·scale) applied to v without G
/// or F, by one forward-mode pass, the output Hessian, and one backward pass.
#[allow(clippy::too_many_arguments)]
pub fn fisher_product(
    mlp: &Mlp,
    theta: &[f32],
    batch: &mut CpuBatch,
    kind: FisherKind,
    key: SampleKey,
    v: &[f32],
    scale: f32,
    y: &mut [f32],
) -> Result<()> {
    mlp.check_params(theta.len())?;
    mlp.check_params(v.len())?;
    mlp.check_params(y.len())?;
    mlp.check_widths(&batch.widths)?;
    let (n, out) = (batch.n, mlp.outputs());
    let per_example = kind.rows_per_example(mlp.likelihood());
    let u = jvp(mlp, theta, batch, v);
    output_factors(mlp, batch, kind, key);
    // the factors move out while the scratch beside them is written, and back after
    let cached = batch.factors.take();
    let factors = cached.as_ref().map_or(&[][..], |f| f.2.as_slice());
    ensure_deltas(mlp, batch, n);
    let last = mlp.layers().len() - 1;
    // w_i = H_i u_i = Σ_r s_ir (s_irᵀ u_i)
    batch.delta[last][..n * out]
        .chunks_mut(out)
        .zip(u.chunks(out))
        .zip(factors.chunks(per_example * out))
        .for_each(|((w, ui), s)| {
            w.fill(0.0);
            for sr in s.chunks_exact(out) {
                let dot: f32 = sr.iter().zip(ui).map(|(a, b)| a * b).sum();
                w.iter_mut().zip(sr).for_each(|(wv, sv)| *wv += dot * sv);
            }
        });
    batch.factors = cached;
    backward(mlp, theta, batch, scale, 0.0, y);
    Ok(())
}

/// `vᵀFv = (1/n) Σ_i Σ_r (s_irᵀ J_i v)²`: the forward-mode pass only.
pub fn fisher_quad(
    mlp: &Mlp,
    theta: &[f32],
    batch: &mut CpuBatch,
    kind: FisherKind,
    key: SampleKey,
    v: &[f32],
) -> Result<f64> {
    mlp.check_params(theta.len())?;
    mlp.check_params(v.len())?;
    mlp.check_widths(&batch.widths)?;
    let out = mlp.outputs();
    let per_example = kind.rows_per_example(mlp.likelihood());
    let u = jvp(mlp, theta, batch, v);
    let factors = output_factors(mlp, batch, kind, key);
    let total: f64 = u
        .chunks_exact(out)
        .zip(factors.chunks_exact(per_example * out))
        .map(|(ui, s)| {
            s.chunks_exact(out)
                .map(|sr| sr.iter().zip(ui).map(|(a, b)| (a * b) as f64).sum::<f64>().powi(2))
                .sum::<f64>()
        })
        .sum();
    Ok(total / batch.n as f64)
}

/// K-FAC's statistics of the batch at the last forward pass, per layer: `a[l] = (1/n) Σ ā āᵀ` of the
/// layer's inputs with a 1 appended ((fan_in+1)²), and `s[l] = (1/n) Σ_rows δ δᵀ` of the
/// back-propagated output seeds of `kind` at its pre-activations (fan_out²).
#[allow(clippy::too_many_arguments)]
pub fn kfac_factors(
    mlp: &Mlp,
    theta: &[f32],
    batch: &mut CpuBatch,
    kind: FisherKind,
    key: SampleKey,
    a: &mut [CpuMatrix],
    s: &mut [CpuMatrix],
) -> Result<()> {
    mlp.check_params(theta.len())?;
    mlp.check_widths(&batch.widths)?;
    let n = batch.n;
    let per_example = kind.rows_per_example(mlp.likelihood());
    let rows = n * per_example;
    let scale = 1.0 / n as f32;
    ensure_deltas(mlp, batch, rows);
    seeds(mlp, batch, kind, key, &(0..rows));
    for (l, layer) in mlp.layers().iter().enumerate().rev() {
        let (fan_in, fan_out) = (layer.fan_in, layer.fan_out);
        let (sl, al) = (&mut s[l], &mut a[l]);
        matmul(
            (fan_out, fan_out, rows),
            View::transposed(&batch.delta[l], 0, fan_out),
            View::rows(&batch.delta[l], 0, fan_out),
            &mut sl.data,
            0,
            fan_out,
            scale,
            0.0,
        );
        let input = batch.layer_input(l);
        let width = fan_in + 1;
        matmul(
            (fan_in, fan_in, n),
            View::transposed(input, 0, fan_in),
            View::rows(input, 0, fan_in),
            &mut al.data,
            0,
            width,
            scale,
            0.0,
        );
        let mut mean = vec![0.0f32; fan_in];
        for row in input[..n * fan_in].chunks_exact(fan_in) {
            mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
        }
        for (j, m) in mean.iter().enumerate() {
            al.data[j * width + fan_in] = m * scale;
            al.data[fan_in * width + j] = m * scale;
        }
        al.data[fan_in * width + fan_in] = 1.0;
        sl.layout = Layout::General;
        al.layout = Layout::General;
        if l > 0 {
            back(mlp, theta, batch, l, rows, per_example, 0);
        }
    }
    Ok(())
}

/// Per layer, `Y_l = S_l · X_l · A_l` with `X_l = [W_l | b_l]` of x (fan_out × (fan_in+1)), into y's
/// layer blocks: a Kronecker-factored matrix applied to the parameters.
pub fn kronecker_product(
    mlp: &Mlp,
    s: &[CpuMatrix],
    a: &[CpuMatrix],
    x: &[f32],
    y: &mut [f32],
    layers: &[bool],
) -> Result<()> {
    mlp.check_params(x.len())?;
    mlp.check_params(y.len())?;
    for (l, layer) in mlp.layers().iter().enumerate().filter(|(l, _)| layers[*l]) {
        let (fan_in, fan_out, width) = (layer.fan_in, layer.fan_out, layer.fan_in + 1);
        let mut block = vec![0.0f32; fan_out * width];
        for o in 0..fan_out {
            let w = &x[layer.weight + o * fan_in..layer.weight + (o + 1) * fan_in];
            block[o * width..o * width + fan_in].copy_from_slice(w);
            block[o * width + fan_in] = x[layer.bias + o];
        }
        let mut t = vec![0.0f32; fan_out * width];
        matmul(
            (fan_out, width, width),
            View::rows(&block, 0, width),
            View::rows(&a[l].full(), 0, width),
            &mut t,
            0,
            width,
            1.0,
            0.0,
        );
        matmul(
            (fan_out, width, fan_out),
            View::rows(&s[l].full(), 0, fan_out),
            View::rows(&t, 0, width),
            &mut block,
            0,
            width,
            1.0,
            0.0,
        );
        for o in 0..fan_out {
            y[layer.weight + o * fan_in..layer.weight + (o + 1) * fan_in]
                .copy_from_slice(&block[o * width..o * width + fan_in]);
            y[layer.bias + o] = block[o * width + fan_in];
        }
    }
    Ok(())
}

pub fn score_rows(
    mlp: &Mlp,
    theta: &[f32],
    batch: &mut CpuBatch,
    kind: FisherKind,
    key: SampleKey,
    rows: Range<usize>,
    out: &mut CpuMatrix,
) -> Result<()> {
    mlp.check_params(theta.len())?;
    mlp.check_widths(&batch.widths)?;
    let count = rows.len();
    let per_example = kind.rows_per_example(mlp.likelihood());
    let p = mlp.num_params();
    ensure_deltas(mlp, batch, count);
    seeds(mlp, batch, kind, key, &rows);
    for (l, layer) in mlp.layers().iter().enumerate().rev() {
        let (delta, input) = (&batch.delta[l], batch.layer_input(l));
        out.data.par_chunks_mut(p).enumerate().for_each(|(k, g_row)| {
            let e = (rows.start + k) / per_example;
            let a = &input[e * layer.fan_in..(e + 1) * layer.fan_in];
            let d = &delta[k * layer.fan_out..(k + 1) * layer.fan_out];
            for (o, w_row) in g_row[layer.weight..layer.bias]
                .chunks_exact_mut(layer.fan_in)
                .enumerate()
            {
                w_row.iter_mut().zip(a).for_each(|(w, av)| *w = d[o] * av);
            }
            g_row[layer.bias..layer.bias + layer.fan_out].copy_from_slice(d);
        });
        if l > 0 {
            back(mlp, theta, batch, l, count, per_example, rows.start);
        }
    }
    out.layout = Layout::General;
    Ok(())
}

fn shapes(ms: &[CpuMatrix]) -> Vec<(usize, usize)> {
    ms.iter().map(|m| (m.rows, m.cols)).collect()
}

impl MlpOps for Cpu {
    type Batch = CpuBatch;

    fn upload_batch(&self, mlp: &Mlp, x: &[f32], targets: &[f32]) -> Result<CpuBatch> {
        upload(mlp, x, targets)
    }

    fn batch_size(&self, batch: &CpuBatch) -> usize {
        batch.len()
    }

    fn forward(&self, mlp: &Mlp, theta: &Vec<f32>, batch: &mut CpuBatch) -> Result<()> {
        forward(mlp, theta, batch)
    }

    fn outputs(&self, mlp: &Mlp, batch: &CpuBatch) -> Result<Vec<f32>> {
        Ok(batch.outputs(mlp)?.to_vec())
    }

    fn batch_loss(&self, mlp: &Mlp, batch: &CpuBatch) -> Result<BatchLoss> {
        batch_loss(mlp, batch)
    }

    fn gradient(
        &self,
        mlp: &Mlp,
        theta: &Vec<f32>,
        batch: &mut CpuBatch,
        weight_decay: f32,
        g: &mut Vec<f32>,
    ) -> Result<()> {
        gradient(mlp, theta, batch, weight_decay, g)
    }

    fn score_rows(
        &self,
        mlp: &Mlp,
        theta: &Vec<f32>,
        batch: &mut CpuBatch,
        kind: FisherKind,
        key: SampleKey,
        rows: Range<usize>,
        out: &mut CpuMatrix,
    ) -> Result<()> {
        backend::check_score_rows(mlp, batch.len(), kind, &rows, (out.rows, out.cols))?;
        score_rows(mlp, theta, batch, kind, key, rows, out)
    }

    fn fisher_product(
        &self,
        mlp: &Mlp,
        theta: &Vec<f32>,
        batch: &mut CpuBatch,
        kind: FisherKind,
        key: SampleKey,
        v: &Vec<f32>,
        scale: f32,
        y: &mut Vec<f32>,
    ) -> Result<()> {
        backend::check_fisher_kind(kind)?;
        fisher_product(mlp, theta, batch, kind, key, v, scale, y)
    }

    fn fisher_quad(
        &self,
        mlp: &Mlp,
        theta: &Vec<f32>,
        batch: &mut CpuBatch,
        kind: FisherKind,
        key: SampleKey,
        v: &Vec<f32>,
    ) -> Result<f64> {
        backend::check_fisher_kind(kind)?;
        fisher_quad(mlp, theta, batch, kind, key, v)
    }

    fn kfac_factors(
        &self,
        mlp: &Mlp,
        theta: &Vec<f32>,
        batch: &mut CpuBatch,
        kind: FisherKind,
        key: SampleKey,
        a: &mut [CpuMatrix],
        s: &mut [CpuMatrix],
    ) -> Result<()> {
        backend::check_fisher_kind(kind)?;
        backend::check_kfac(mlp, &shapes(a), &shapes(s))?;
        kfac_factors(mlp, theta, batch, kind, key, a, s)
    }

    fn kronecker_product(
        &self,
        mlp: &Mlp,
        s: &[CpuMatrix],
        a: &[CpuMatrix],
        x: &Vec<f32>,
        y: &mut Vec<f32>,
        layers: &[bool],
    ) -> Result<()> {
        backend::check_kfac(mlp, &shapes(a), &shapes(s))?;
        backend::check_layer_mask(mlp, layers)?;
        kronecker_product(mlp, s, a, x, y, layers)
    }
}
