//! The output distributions p(y | z) over the network's last layer z, their log-likelihoods and
//! the derivative ∂ log p(y | z) / ∂z that starts every score's backward pass.

use super::activation::sigmoid;

/// How the network's outputs parameterise p(y | x, θ).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Likelihood {
    /// C logits, softmax; targets are class indices 0..C.
    Categorical { classes: usize },
    /// One logit, q = σ(z); targets are 0 or 1.
    Bernoulli,
    /// K means with a fixed standard deviation σ; targets are K real values.
    Gaussian { outputs: usize, sigma: f32 },
}

impl Likelihood {
    /// Width of the network's last layer.
    pub fn outputs(&self) -> usize {
        match *self {
            Likelihood::Categorical { classes } => classes,
            Likelihood::Bernoulli => 1,
            Likelihood::Gaussian { outputs, .. } => outputs,
        }
    }

    /// Numbers per example in the targets: a class index (1) or K values.
    pub fn target_width(&self) -> usize {
        match *self {
            Likelihood::Gaussian { outputs, .. } => outputs,
            _ => 1,
        }
    }

    /// Whether accuracy means anything (classification).
    pub fn is_classification(&self) -> bool {
        !matches!(self, Likelihood::Gaussian { .. })
    }

    /// The code the shaders use for it.
    pub fn code(&self) -> u32 {
        match self {
            Likelihood::Categorical { .. } => 0,
            Likelihood::Bernoulli => 1,
            Likelihood::Gaussian { .. } => 2,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Likelihood::Categorical { .. } => "categorical",
            Likelihood::Bernoulli => "bernoulli",
            Likelihood::Gaussian { .. } => "gaussian",
        }
    }

    /// σ for the Gaussian, 1 otherwise (the shaders' uniform).
    pub fn sigma(&self) -> f32 {
        match *self {
            Likelihood::Gaussian { sigma, .. } => sigma,
            _ => 1.0,
        }
    }

    /// log p(y | z).
    pub fn log_prob(&self, z: &[f64], y: &[f64]) -> f64 {
        match *self {
            Likelihood::Categorical { .. } => z[y[0] as usize] - log_sum_exp(z),
            // log σ(z) = −softplus(−z), log(1 − σ(z)) = −softplus(z)
            Likelihood::Bernoulli => -(softplus(z[0]) - y[0] * z[0]),
            Likelihood::Gaussian { sigma, .. } => {
                let s2 = (sigma as f64).powi(2);
                let sq: f64 = z.iter().zip(y).map(|(m, t)| (t - m).powi(2)).sum();
                -sq / (2.0 * s2) - 0.5 * z.len() as f64 * (2.0 * std::f64::consts::PI * s2).ln()
            }
        }
    }

    /// ∂ log p(y | z) / ∂z.
    pub fn output_grad(&self, z: &[f64], y: &[f64]) -> Vec<f64> {
        match *self {
            Likelihood::Categorical { .. } => {
                let mut g: Vec<f64> = softmax(z).iter().map(|p| -p).collect();
                g[y[0] as usize] += 1.0;
                g
            }
            Likelihood::Bernoulli => vec![y[0] - sigmoid(z[0])],
            Likelihood::Gaussian { sigma, .. } => {
                let s2 = (sigma as f64).powi(2);
                z.iter().zip(y).map(|(m, t)| (t - m) / s2).collect()
            }
        }
    }

    /// Whether the prediction z gets target y right (classification only).
    pub fn correct(&self, z: &[f64], y: &[f64]) -> bool {
        match self {
            Likelihood::Categorical { .. } => argmax(z) == y[0] as usize,
            Likelihood::Bernoulli => (z[0] > 0.0) == (y[0] > 0.5),
            Likelihood::Gaussian { .. } => false,
        }
    }

    /// KL(p(· | z) ‖ p(· | z2)), in closed form.
    pub fn kl(&self, z: &[f64], z2: &[f64]) -> f64 {
        match *self {
            Likelihood::Categorical { .. } => {
                let (p, lse, lse2) = (softmax(z), log_sum_exp(z), log_sum_exp(z2));
                p.iter()
                    .enumerate()
                    .map(|(c, pc)| pc * ((z[c] - lse) - (z2[c] - lse2)))
                    .sum()
            }
            Likelihood::Bernoulli => {
                let q = sigmoid(z[0]);
                // log q − log q2 and log(1−q) − log(1−q2) through softplus, stable at the tails
                q * (softplus(-z2[0]) - softplus(-z[0])) + (1.0 - q) * (softplus(z2[0]) - softplus(z[0]))
            }
            Likelihood::Gaussian { sigma, .. } => {
                z.iter().zip(z2).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / (2.0 * (sigma as f64).powi(2))
            }
        }
    }
}

/// log Σ exp z, stable.
pub fn log_sum_exp(z: &[f64]) -> f64 {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// softmax(z), stable.
pub fn softmax(z: &[f64]) -> Vec<f64> {
    let lse = log_sum_exp(z);
    z.iter().map(|v| (v - lse).exp()).collect()
}

/// log(1 + e^z), stable.
pub fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

/// Index of the largest value (the first, on ties).
pub fn argmax(z: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in z.iter().enumerate() {
        if *v > z[best] {
            best = i;
        }
    }
    best
}
