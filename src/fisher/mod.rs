//! The three Fisher kinds, as rows of G: which label each score row is taken under, and how it is
//! weighted. `F = (1/n) GᵀG` for the n examples of a batch, whatever the kind.
//!
//! - `empirical`: one row per example, the score of the data's label.
//! - `sampled`: k rows per example, scores of labels drawn from the model, each scaled by 1/√k:
//!   a Monte-Carlo estimate of the true Fisher.
//! - `exact`: the expectation over the model's own predictive distribution in closed form —
//!   categorical: √p_c · s(c) for every class (C rows); Bernoulli: √(q(1−q)) · J (one row);
//!   Gaussian with fixed σ: J/σ per output (K rows).

pub mod curvature;
pub mod rng;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::likelihood::softmax;
use crate::model::{Likelihood, Mlp};

/// Which Fisher to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FisherKind {
    Empirical,
    Sampled { draws: u32 },
    Exact,
}

impl FisherKind {
    /// Rows of G per example.
    pub fn rows_per_example(&self, likelihood: &Likelihood) -> usize {
        match self {
            FisherKind::Empirical => 1,
            FisherKind::Sampled { draws } => *draws as usize,
            FisherKind::Exact => match likelihood {
                Likelihood::Bernoulli => 1,
                other => other.outputs(),
            },
        }
    }

    /// The code the shaders use for it.
    pub fn code(&self) -> u32 {
        match self {
            FisherKind::Empirical => 0,
            FisherKind::Sampled { .. } => 1,
            FisherKind::Exact => 2,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            FisherKind::Empirical => "empirical",
            FisherKind::Sampled { .. } => "sampled",
            FisherKind::Exact => "exact",
        }
    }
}

/// The key of a batch's label draws: one seed for the run, one step per batch, so every step draws
/// afresh and every run repeats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleKey {
    pub seed: u32,
    pub step: u32,
}

impl SampleKey {
    /// Uniforms (u1, u2) for draw `draw` of output `output` of `example`.
    pub fn uniforms(&self, example: u32, draw: u32, output: u32, outputs: u32) -> (f64, f64) {
        // wrapping, as the GPU's u32 arithmetic does
        let counter = draw.wrapping_mul(outputs).wrapping_add(output);
        let [a, b] = rng::threefry2x32([example, counter], [self.seed, self.step]);
        (rng::uniform(a), rng::uniform(b))
    }
}

/// The first class whose cumulative probability exceeds `u` (the last one if rounding leaves
/// the total short of it).
pub fn sample_class(probs: &[f64], u: f64) -> usize {
    let mut cumulative = 0.0;
    for (c, p) in probs.iter().enumerate() {
        cumulative += p;
        if u < cumulative {
            return c;
        }
    }
    probs.len() - 1
}

/// A standard normal from two uniforms (Box–Muller, cosine branch).
pub fn normal_from(u1: f64, u2: f64) -> f64 {
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// δ for G row `row` (of `kind.rows_per_example`) of example `example`: the gradient of the
/// row's weighted log-likelihood with respect to the network's outputs z, from which the row is
/// backpropagated. `y` is the example's target.
pub fn output_seed(
    likelihood: &Likelihood,
    kind: FisherKind,
    z: &[f64],
    y: &[f64],
    example: u32,
    row: u32,
    key: SampleKey,
) -> Vec<f64> {
    match kind {
        FisherKind::Empirical => likelihood.output_grad(z, y),
        FisherKind::Sampled { draws } => {
            let scale = 1.0 / (draws as f64).sqrt();
            let drawn: Vec<f64> = match *likelihood {
                Likelihood::Categorical { .. } => {
                    vec![sample_class(&softmax(z), key.uniforms(example, row, 0, 1).0) as f64]
                }
                Likelihood::Bernoulli => {
                    let q = crate::model::activation::sigmoid(z[0]);
                    vec![if key.uniforms(example, row, 0, 1).0 < q {
                        1.0
                    } else {
                        0.0
                    }]
                }
                Likelihood::Gaussian { sigma, outputs } => (0..outputs)
                    .map(|k| {
                        let (u1, u2) = key.uniforms(example, row, k as u32, outputs as u32);
                        z[k] + sigma as f64 * normal_from(u1, u2)
                    })
                    .collect(),
            };
            likelihood.output_grad(z, &drawn).iter().map(|g| g * scale).collect()
        }
        FisherKind::Exact => match *likelihood {
            Likelihood::Categorical { .. } => {
                let p = softmax(z);
                let c = row as usize;
                let mut seed: Vec<f64> = p.iter().map(|pc| -pc).collect();
                seed[c] += 1.0;
                seed.iter().map(|s| s * p[c].sqrt()).collect()
            }
            Likelihood::Bernoulli => {
                let q = crate::model::activation::sigmoid(z[0]);
                vec![(q * (1.0 - q)).sqrt()]
            }
            Likelihood::Gaussian { outputs, sigma } => {
                let mut seed = vec![0.0; outputs];
                seed[row as usize] = 1.0 / sigma as f64;
                seed
            }
        },
    }
}

/// How one batch's rows of G enter a Fisher that may span several batches.
#[derive(Clone, Copy, Debug)]
pub struct Part {
    pub kind: FisherKind,
    pub key: SampleKey,
    /// n in F = (1/n) GᵀG: the examples of every batch together.
    pub examples_in_total: usize,
    /// Add to F (a later batch) rather than overwrite it (the first).
    pub accumulate: bool,
}

/// `F (+)= (1/n_total) GᵀG` over this batch's rows of G, `chunk` rows at a time.
pub fn accumulate_in_chunks<B: Backend>(
    b: &B,
    mlp: &Mlp,
    theta: &B::Vector,
    batch: &mut B::Batch,
    part: Part,
    f: &mut B::Matrix,
    chunk: usize,
) -> Result<()> {
    let p = mlp.num_params();
    let total = b.batch_size(batch) * part.kind.rows_per_example(mlp.likelihood());
    if total == 0 {
        return Err(Error::InvalidArgument {
            name: "sampled Fisher draws",
            reason: "need at least 1".into(),
        });
    }
    let chunk = chunk.clamp(1, total);
    let scale = 1.0 / part.examples_in_total as f32;
    let mut g = b.zeros_matrix("score rows G (one chunk)", chunk, p)?;
    let mut start = 0;
    while start < total {
        let end = (start + chunk).min(total);
        if end - start != chunk {
            g = b.zeros_matrix("score rows G (last chunk)", end - start, p)?;
        }
        b.score_rows(mlp, theta, batch, part.kind, part.key, start..end, &mut g)?;
        b.fisher_accumulate(f, &g, scale, part.accumulate || start > 0)?;
        start = end;
    }
    Ok(())
}

/// Rows of G per chunk for p parameters: as many as one device matrix holds, at most `total`,
/// and at most 65535 (one GPU dispatch dimension).
pub fn chunk_rows<B: Backend>(b: &B, p: usize, total: usize) -> Result<usize> {
    // a GPU matrix pads its rows to whole vec4s and its row count to a multiple of 4
    let row_bytes = 4 * p.next_multiple_of(4) as u64;
    let fit = ((b.max_matrix_bytes() / row_bytes) as usize).saturating_sub(4) / 4 * 4;
    let fit = fit.min(65532);
    if fit == 0 {
        return Err(Error::TooLarge {
            buffer: "one row of the score matrix G",
            shape: format!("1×{p} f32"),
            bytes: 4 * p as u64,
            limit_name: "largest matrix the device holds",
            limit: b.max_matrix_bytes(),
        });
    }
    Ok(fit.min(total))
}

/// `F = (1/n) GᵀG` for the batch's n examples at the last forward pass, with G of `kind` made
/// and consumed chunk by chunk so it never has to fit the device whole; then `wd` added to the
/// diagonal entries of the weights (weight decay's curvature).
#[allow(clippy::too_many_arguments)]
pub fn build<B: Backend>(
    b: &B,
    mlp: &Mlp,
    theta: &B::Vector,
    batch: &mut B::Batch,
    kind: FisherKind,
    key: SampleKey,
    weight_decay: f32,
    f: &mut B::Matrix,
) -> Result<()> {
    let total = b.batch_size(batch) * kind.rows_per_example(mlp.likelihood());
    let chunk = chunk_rows(b, mlp.num_params(), total)?;
    build_in_chunks(b, mlp, theta, batch, kind, key, weight_decay, f, chunk)
}

/// [`build`] with G made `chunk` rows at a time.
#[allow(clippy::too_many_arguments)]
pub fn build_in_chunks<B: Backend>(
    b: &B,
    mlp: &Mlp,
    theta: &B::Vector,
    batch: &mut B::Batch,
    kind: FisherKind,
    key: SampleKey,
    weight_decay: f32,
    f: &mut B::Matrix,
    chunk: usize,
) -> Result<()> {
    let n = b.batch_size(batch);
    let part = Part {
        kind,
        key,
        examples_in_total: n,
        accumulate: false,
    };
    accumulate_in_chunks(b, mlp, theta, batch, part, f, chunk)?;
    if weight_decay != 0.0 {
        let decay: Vec<f32> = mlp.weight_mask().iter().map(|m| m * weight_decay).collect();
        b.add_diagonal(f, &b.upload_vector("weight decay diagonal", &decay)?)?;
    }
    Ok(())
}
