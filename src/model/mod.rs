//! Multilayer perceptrons: the spec, the flat parameter layout every part of natgrad shares, and
//! seeded initialisation.
//!
//! Parameter order (flat vectors, Fisher rows and columns, checkpoints): layers in order; for each
//! layer its weight `[out, in]` row-major, then its bias `[out]`.

pub mod activation;
pub mod fisher;
pub mod likelihood;
pub mod reference;
pub mod rng;

pub use activation::Activation;
pub use fisher::{FisherKind, SampleKey};
pub use likelihood::Likelihood;

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};

/// The most parameters a model may have: the GPU kernels index θ with 32-bit offsets.
pub const MAX_PARAMS: usize = u32::MAX as usize;

/// What network to build.
#[derive(Clone, Debug, PartialEq)]
pub struct MlpSpec {
    /// Features per example.
    pub inputs: usize,
    /// Widths of the hidden layers; empty for a linear model.
    pub hidden: Vec<usize>,
    pub activation: Activation,
    pub likelihood: Likelihood,
}

/// One affine layer's place in the flat parameter vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layer {
    pub fan_in: usize,
    pub fan_out: usize,
    /// Offset of the weight `[fan_out, fan_in]`, row-major.
    pub weight: usize,
    /// Offset of the bias `[fan_out]`.
    pub bias: usize,
}

impl Layer {
    /// Parameters of this layer (weight and bias).
    pub fn len(&self) -> usize {
        self.fan_out * (self.fan_in + 1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An MLP with its parameter layout worked out.
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    spec: MlpSpec,
    layers: Vec<Layer>,
}

impl Mlp {
    /// Checks the spec and lays its parameters out.
    pub fn new(spec: MlpSpec) -> Result<Self> {
        let bad = |reason: String| Err(Error::InvalidArgument { name: "model", reason });
        if spec.inputs == 0 {
            return bad("a model needs at least one input feature".into());
        }
        if let Some(i) = spec.hidden.iter().position(|&w| w == 0) {
            return bad(format!("hidden layer {} has width 0", i + 1));
        }
        match spec.likelihood {
            Likelihood::Categorical { classes } if classes < 2 => {
                return bad(format!(
                    "a categorical likelihood needs at least 2 classes, not {classes}"
                ));
            }
            Likelihood::Gaussian { outputs: 0, .. } => {
                return bad("a Gaussian likelihood needs at least one output".into());
            }
            Likelihood::Gaussian { sigma, .. } if !(sigma.is_finite() && sigma > 0.0) => {
                return bad(format!("the Gaussian σ must be positive, not {sigma}"));
            }
            _ => {}
        }
        let mut widths = vec![spec.inputs];
        widths.extend(&spec.hidden);
        widths.push(spec.likelihood.outputs());
        // checked: widths from a flag or a checkpoint's metadata must not wrap the layout
        let mut offset = 0usize;
        let mut layers = Vec::with_capacity(widths.len() - 1);
        for w in widths.windows(2) {
            let bias = w[0].checked_mul(w[1]).and_then(|weights| weights.checked_add(offset));
            let end = bias.and_then(|b| b.checked_add(w[1])).filter(|&end| end <= MAX_PARAMS);
            let (Some(bias), Some(end)) = (bias, end) else {
                return bad(format!(
                    "widths {widths:?} make more than {MAX_PARAMS} parameters, past what a device can index"
                ));
            };
            layers.push(Layer {
                fan_in: w[0],
                fan_out: w[1],
                weight: offset,
                bias,
            });
            offset = end;
        }
        Ok(Self { spec, layers })
    }

    pub fn spec(&self) -> &MlpSpec {
        &self.spec
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    pub fn likelihood(&self) -> &Likelihood {
        &self.spec.likelihood
    }

    pub fn activation(&self) -> Activation {
        self.spec.activation
    }

    pub fn inputs(&self) -> usize {
        self.spec.inputs
    }

    pub fn outputs(&self) -> usize {
        self.spec.likelihood.outputs()
    }

    /// Total parameters p.
    pub fn num_params(&self) -> usize {
        self.layers.last().map_or(0, |l| l.bias + l.fan_out)
    }

    /// `[inputs, hidden…, outputs]`.
    pub fn widths(&self) -> Vec<usize> {
        std::iter::once(self.spec.inputs)
            .chain(self.layers.iter().map(|l| l.fan_out))
            .collect()
    }

    /// Seeded initial parameters: normal weights with the activation's scale (He for relu and
    /// gelu, Glorot for tanh and sigmoid; Glorot for the linear output layer), zero biases.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut theta = vec![0.0f32; self.num_params()];
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            let std = if i == last {
                (2.0 / (layer.fan_in + layer.fan_out) as f64).sqrt()
            } else {
                self.spec.activation.init_std(layer.fan_in, layer.fan_out)
            };
            for w in &mut theta[layer.weight..layer.bias] {
                let z: f64 = StandardNormal.sample(&mut rng);
                *w = (std * z) as f32;
            }
        }
        theta
    }

    /// 1 for every weight, 0 for every bias: where weight decay applies.
    pub fn weight_mask(&self) -> Vec<f32> {
        let mut mask = vec![0.0f32; self.num_params()];
        for layer in &self.layers {
            mask[layer.weight..layer.bias].fill(1.0);
        }
        mask
    }

    /// Checks a batch (`x` n × inputs, `targets` n × target width) and returns n: shapes, finite
    /// values, and targets the likelihood can take (class indices 0..C, 0/1 for Bernoulli).
    pub fn check_batch(&self, x: &[f32], targets: &[f32]) -> Result<usize> {
        let (d, t) = (self.inputs(), self.likelihood().target_width());
        if x.is_empty() {
            return Err(Error::Empty("batch"));
        }
        if !x.len().is_multiple_of(d) {
            return Err(Error::Shape(format!(
                "{} input values are not whole rows of {d} features",
                x.len()
            )));
        }
        let n = x.len() / d;
        if targets.len() != n * t {
            return Err(Error::Shape(format!(
                "{n} examples need {} targets, got {}",
                n * t,
                targets.len()
            )));
        }
        crate::error::check_finite("inputs", d, x)?;
        crate::error::check_finite("targets", t, targets)?;
        let bad_label = |i: usize, v: f32, allowed: String| {
            Err(Error::InvalidArgument {
                name: "target",
                reason: format!("example {i} has label {v}; {allowed}"),
            })
        };
        match *self.likelihood() {
            Likelihood::Categorical { classes } => {
                if let Some((i, &v)) = targets
                    .iter()
                    .enumerate()
                    .find(|(_, v)| v.fract() != 0.0 || **v < 0.0 || **v >= classes as f32)
                {
                    return bad_label(i, v, format!("classes are 0..{}", classes - 1));
                }
            }
            Likelihood::Bernoulli => {
                if let Some((i, &v)) = targets.iter().enumerate().find(|(_, v)| **v != 0.0 && **v != 1.0) {
                    return bad_label(i, v, "a Bernoulli target is 0 or 1".into());
                }
            }
            Likelihood::Gaussian { .. } => {}
        }
        Ok(n)
    }

    /// Checks that a batch uploaded for the model with layer widths `widths` fits this one.
    pub fn check_widths(&self, widths: &[usize]) -> Result<()> {
        if widths != self.widths() {
            return Err(Error::Shape(format!(
                "the batch was uploaded for layer widths {widths:?}, not this model's {:?}",
                self.widths()
            )));
        }
        Ok(())
    }

    /// Checks a parameter vector's length.
    pub fn check_params(&self, theta_len: usize) -> Result<()> {
        if theta_len != self.num_params() {
            return Err(Error::Shape(format!(
                "parameter vector has {theta_len} values but the model has {} parameters",
                self.num_params()
            )));
        }
        Ok(())
    }
}
