//! The MLP in f64, one example at a time: slow, plain, and the yardstick the CPU and GPU paths
//! are tested against. It is itself tested against finite differences.
//!
//! Batches are row-major: `xs` is n × inputs, `ys` is n × target width.

use super::Mlp;
use crate::model::fisher::{self, FisherKind, SampleKey};

/// One example's forward pass: `z[l]` the pre-activations of layer l, `a[l]` its input
/// (`a[0] = x`). The last `z` holds the network's outputs.
pub struct Forward {
    pub z: Vec<Vec<f64>>,
    pub a: Vec<Vec<f64>>,
}

pub fn forward(mlp: &Mlp, theta: &[f64], x: &[f64]) -> Forward {
    let last = mlp.layers().len() - 1;
    let mut a = vec![x.to_vec()];
    let mut z = Vec::new();
    for (l, layer) in mlp.layers().iter().enumerate() {
        let input = &a[l];
        let zl: Vec<f64> = (0..layer.fan_out)
            .map(|o| {
                let row = &theta[layer.weight + o * layer.fan_in..layer.weight + (o + 1) * layer.fan_in];
                theta[layer.bias + o] + row.iter().zip(input).map(|(w, v)| w * v).sum::<f64>()
            })
            .collect();
        if l < last {
            a.push(zl.iter().map(|&v| mlp.activation().apply(v)).collect());
        }
        z.push(zl);
    }
    Forward { z, a }
}

/// The network's outputs z_L for one example.
pub fn outputs(mlp: &Mlp, theta: &[f64], x: &[f64]) -> Vec<f64> {
    forward(mlp, theta, x).z.pop().unwrap_or_default()
}

/// The parameter gradient of `δ_outᵀ z_L`: backpropagation of the output seed `delta_out`.
pub fn backprop(mlp: &Mlp, theta: &[f64], fwd: &Forward, delta_out: &[f64]) -> Vec<f64> {
    let mut grad = vec![0.0; mlp.num_params()];
    let mut delta = delta_out.to_vec();
    for (l, layer) in mlp.layers().iter().enumerate().rev() {
        for o in 0..layer.fan_out {
            for (j, v) in fwd.a[l].iter().enumerate() {
                grad[layer.weight + o * layer.fan_in + j] = delta[o] * v;
            }
            grad[layer.bias + o] = delta[o];
        }
        if l > 0 {
            delta = (0..layer.fan_in)
                .map(|j| {
                    let back: f64 = (0..layer.fan_out)
                        .map(|o| delta[o] * theta[layer.weight + o * layer.fan_in + j])
                        .sum();
                    back * mlp.activation().derivative(fwd.z[l - 1][j])
                })
                .collect();
        }
    }
    grad
}

/// log p(y | x, θ).
pub fn log_prob(mlp: &Mlp, theta: &[f64], x: &[f64], y: &[f64]) -> f64 {
    mlp.likelihood().log_prob(&outputs(mlp, theta, x), y)
}

/// The score ∇θ log p(y | x, θ).
pub fn score(mlp: &Mlp, theta: &[f64], x: &[f64], y: &[f64]) -> Vec<f64> {
    let fwd = forward(mlp, theta, x);
    let seed = mlp.likelihood().output_grad(fwd.z.last().map_or(&[][..], |z| z), y);
    backprop(mlp, theta, &fwd, &seed)
}

fn example(data: &[f32], width: usize, i: usize) -> Vec<f64> {
    data[i * width..(i + 1) * width].iter().map(|&v| v as f64).collect()
}

/// G for a batch: `kind.rows_per_example` rows per example, `n·R × p` row-major.
pub fn score_matrix(mlp: &Mlp, theta: &[f64], xs: &[f32], ys: &[f32], kind: FisherKind, key: SampleKey) -> Vec<f64> {
    let (d, t) = (mlp.inputs(), mlp.likelihood().target_width());
    let n = xs.len() / d;
    let rows = kind.rows_per_example(mlp.likelihood());
    let mut g = Vec::with_capacity(n * rows * mlp.num_params());
    for i in 0..n {
        let (x, y) = (example(xs, d, i), example(ys, t, i));
        let fwd = forward(mlp, theta, &x);
        let z = fwd.z.last().cloned().unwrap_or_default();
        for r in 0..rows {
            let seed = fisher::output_seed(mlp.likelihood(), kind, &z, &y, i as u32, r as u32, key);
            g.extend(backprop(mlp, theta, &fwd, &seed));
        }
    }
    g
}

/// `F = (1/n) GᵀG` for the batch, p × p row-major.
pub fn fisher(mlp: &Mlp, theta: &[f64], xs: &[f32], ys: &[f32], kind: FisherKind, key: SampleKey) -> Vec<f64> {
    let p = mlp.num_params();
    let n = xs.len() / mlp.inputs();
    let g = score_matrix(mlp, theta, xs, ys, kind, key);
    let mut f = vec![0.0; p * p];
    for row in g.chunks_exact(p) {
        for i in 0..p {
            for j in 0..p {
                f[i * p + j] += row[i] * row[j] / n as f64;
            }
        }
    }
    f
}

/// Mean negative log-likelihood and accuracy (0 for regression) of a batch.
pub fn loss(mlp: &Mlp, theta: &[f64], xs: &[f32], ys: &[f32]) -> (f64, f64) {
    let (d, t) = (mlp.inputs(), mlp.likelihood().target_width());
    let n = xs.len() / d;
    let (mut nll, mut correct) = (0.0, 0usize);
    for i in 0..n {
        let (x, y) = (example(xs, d, i), example(ys, t, i));
        let z = outputs(mlp, theta, &x);
        nll -= mlp.likelihood().log_prob(&z, &y);
        correct += mlp.likelihood().correct(&z, &y) as usize;
    }
    (nll / n as f64, correct as f64 / n as f64)
}

/// The objective: mean NLL plus `(wd/2) Σ‖W‖²` over the weights (never the biases).
pub fn objective(mlp: &Mlp, theta: &[f64], xs: &[f32], ys: &[f32], weight_decay: f64) -> f64 {
    let mask = mlp.weight_mask();
    let decay: f64 = theta.iter().zip(&mask).map(|(w, m)| *m as f64 * w * w).sum();
    loss(mlp, theta, xs, ys).0 + 0.5 * weight_decay * decay
}

/// ∇θ of [`objective`].
pub fn gradient(mlp: &Mlp, theta: &[f64], xs: &[f32], ys: &[f32], weight_decay: f64) -> Vec<f64> {
    let (d, t) = (mlp.inputs(), mlp.likelihood().target_width());
    let n = xs.len() / d;
    let mut g: Vec<f64> = theta
        .iter()
        .zip(mlp.weight_mask())
        .map(|(w, m)| weight_decay * m as f64 * w)
        .collect();
    for i in 0..n {
        let s = score(mlp, theta, &example(xs, d, i), &example(ys, t, i));
        g.iter_mut().zip(s).for_each(|(gi, si)| *gi -= si / n as f64);
    }
    g
}

/// Mean over the batch of KL(p(· | x, θ) ‖ p(· | x, θ2)).
pub fn mean_kl(mlp: &Mlp, theta: &[f64], theta2: &[f64], xs: &[f32]) -> f64 {
    let d = mlp.inputs();
    let n = xs.len() / d;
    (0..n)
        .map(|i| {
            let x = example(xs, d, i);
            mlp.likelihood().kl(&outputs(mlp, theta, &x), &outputs(mlp, theta2, &x))
        })
        .sum::<f64>()
        / n as f64
}
