//! The three Fisher kinds, as rows of G: which label each score row is taken under, and how it is
//! weighted. `F = (1/n) GᵀG` for the n examples of a batch, whatever the kind.
//!
//! - `empirical`: one row per example, the score of the data's label.
//! - `sampled`: k rows per example, scores of labels drawn from the model, each scaled by 1/√k:
//!   a Monte-Carlo estimate of the true Fisher.
//! - `exact`: the expectation over the model's own predictive distribution in closed form —
//!   categorical: √p_c · s(c) for every class (C rows); Bernoulli: √(q(1−q)) · J (one row);
//!   Gaussian with fixed σ: J/σ per output (K rows).

use super::Likelihood;
use super::likelihood::softmax;
use super::rng;

/// Which Fisher to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FisherKind {
    Empirical,
    Sampled { draws: u32 },
    Exact,
}

/// `--fisher empirical|sampled|exact`; the number of draws comes with `--draws`
/// ([`FisherKind::with_draws`]).
impl clap::ValueEnum for FisherKind {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            FisherKind::Empirical,
            FisherKind::Sampled { draws: 1 },
            FisherKind::Exact,
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

impl FisherKind {
    /// This kind with `draws` labels drawn per example if it is the sampled one.
    pub fn with_draws(self, draws: u32) -> Self {
        match self {
            FisherKind::Sampled { .. } => FisherKind::Sampled { draws },
            other => other,
        }
    }

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
    /// Where this batch's first example stands in the whole batch: draws are keyed by an
    /// example's place in the whole batch, so a batch split across ranks draws what it would
    /// whole (0 in one process).
    pub first: u32,
}

impl SampleKey {
    /// The key of step `step` of a run seeded `seed`, for a whole batch.
    pub const fn new(seed: u32, step: u32) -> Self {
        Self { seed, step, first: 0 }
    }

    /// Uniforms (u1, u2) for draw `draw` of output `output` of the batch's `example`.
    pub fn uniforms(&self, example: u32, draw: u32, output: u32, outputs: u32) -> (f64, f64) {
        // wrapping, as the GPU's u32 arithmetic does
        let counter = draw.wrapping_mul(outputs).wrapping_add(output);
        let [a, b] = rng::threefry2x32([self.first.wrapping_add(example), counter], [self.seed, self.step]);
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
                    let q = super::activation::sigmoid(z[0]);
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
                let q = super::activation::sigmoid(z[0]);
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
