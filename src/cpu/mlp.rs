//! The MLP on the CPU: the twin of `shaders/mlp.wgsl` and the GPU's matmul dispatches — forward
//! pass, batch loss, gradient and score rows, with the products on the `gemm` crate and the
//! per-row work on rayon.

use std::ops::Range;

use rayon::prelude::*;

use super::matmul::{View, matmul};
use super::{Cpu, CpuMatrix, Layout};
use crate::backend::{self, BatchLoss, MlpOps};
use crate::error::Result;
use crate::model::Mlp;
use crate::model::fisher::{self, FisherKind, SampleKey};

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
    })
}

pub fn forward(mlp: &Mlp, theta: &[f32], batch: &mut CpuBatch) -> Result<()> {
    mlp.check_params(theta.len())?;
    mlp.check_widths(&batch.widths)?;
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
        z.par_chunks_mut(layer.fan_out)
            .for_each(|row| row.iter_mut().zip(bias).for_each(|(v, b)| *v += b));
        if l < last {
            batch.act[l]
                .par_iter_mut()
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
        .into_par_iter()
        .map(|i| {
            let z = f64s(&logits[i * out..(i + 1) * out]);
            let y = f64s(&batch.targets[i * t..(i + 1) * t]);
            (
                -mlp.likelihood().log_prob(&z, &y),
                mlp.likelihood().correct(&z, &y) as usize as f64,
            )
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
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
    let (out, t) = (mlp.outputs(), mlp.likelihood().target_width());
    let per_example = kind.rows_per_example(mlp.likelihood());
    let last = mlp.layers().len() - 1;
    let mut delta = std::mem::take(&mut batch.delta[last]);
    let (logits, targets) = (&batch.z[last], &batch.targets);
    delta[..rows.len() * out]
        .par_chunks_mut(out)
        .enumerate()
        .for_each(|(k, row)| {
            let q = rows.start + k;
            let e = q / per_example;
            let z = f64s(&logits[e * out..(e + 1) * out]);
            let y = f64s(&targets[e * t..(e + 1) * t]);
            let seed = fisher::output_seed(mlp.likelihood(), kind, &z, &y, e as u32, (q % per_example) as u32, key);
            row.iter_mut().zip(seed).for_each(|(d, s)| *d = s as f32);
        });
    batch.delta[last] = delta;
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
    let (z, width, activation) = (&batch.z[l - 1], layer.fan_in, mlp.activation());
    below[..count * width]
        .par_chunks_mut(width)
        .enumerate()
        .for_each(|(k, row)| {
            let e = (row0 + k) / per_example;
            for (d, zv) in row.iter_mut().zip(&z[e * width..(e + 1) * width]) {
                *d *= activation.derivative(*zv as f64) as f32;
            }
        });
    batch.delta[l - 1] = below;
}

fn ensure_deltas(mlp: &Mlp, batch: &mut CpuBatch, rows: usize) {
    if batch.delta.is_empty() || batch.delta[0].len() < rows * mlp.layers()[0].fan_out {
        batch.delta = mlp.layers().iter().map(|l| vec![0.0; rows * l.fan_out]).collect();
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
    let scale = -1.0 / n as f32;
    for (l, layer) in mlp.layers().iter().enumerate().rev() {
        matmul(
            (layer.fan_out, layer.fan_in, n),
            View::transposed(&batch.delta[l], 0, layer.fan_out),
            View::rows(batch.layer_input(l), 0, layer.fan_in),
            g,
            layer.weight,
            layer.fan_in,
            scale,
            weight_decay,
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
}
