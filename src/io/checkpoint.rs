//! Checkpoints as safetensors: tensors `layers.{i}.weight` `[out, in]` and `layers.{i}.bias`
//! `[out]` in f32, and in the metadata the model spec, the class labels and the feature
//! standardisation, so PyTorch or numpy users can load the weights by name without natgrad and
//! `natgrad eval` can reproduce the run.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde_json::{Value, json};

use crate::data::{Standardizer, Task};
use crate::error::Result;
use crate::model::{Activation, Likelihood, Mlp, MlpSpec};

/// The metadata key that marks a natgrad checkpoint, and its format version.
const FORMAT: (&str, &str) = ("format", "natgrad-mlp-1");

/// A model with everything needed to apply it to raw data.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub mlp: Mlp,
    pub theta: Vec<f32>,
    pub task: Task,
    pub standardizer: Option<Standardizer>,
    /// The run's seed, which generates the built-in datasets (spirals, blobs): `natgrad eval`
    /// regenerates the same data with it. None in checkpoints written before it was kept.
    pub seed: Option<u64>,
}

fn spec_json(spec: &MlpSpec) -> Value {
    let (likelihood, outputs, sigma) = match spec.likelihood {
        Likelihood::Categorical { classes } => ("categorical", classes, None),
        Likelihood::Bernoulli => ("bernoulli", 1, None),
        Likelihood::Gaussian { outputs, sigma } => ("gaussian", outputs, Some(sigma)),
    };
    json!({
        "inputs": spec.inputs,
        "hidden": spec.hidden,
        "activation": spec.activation.name(),
        "likelihood": likelihood,
        "outputs": outputs,
        "sigma": sigma,
    })
}

fn spec_from_json(v: &Value) -> Option<MlpSpec> {
    let count = |v: &Value| v.as_u64().map(|n| n as usize);
    let likelihood = match v["likelihood"].as_str()? {
        "categorical" => Likelihood::Categorical {
            classes: count(&v["outputs"])?,
        },
        "bernoulli" => Likelihood::Bernoulli,
        "gaussian" => Likelihood::Gaussian {
            outputs: count(&v["outputs"])?,
            sigma: v["sigma"].as_f64()? as f32,
        },
        _ => return None,
    };
    Some(MlpSpec {
        inputs: count(&v["inputs"])?,
        hidden: v["hidden"].as_array()?.iter().map(count).collect::<Option<_>>()?,
        activation: Activation::from_name(v["activation"].as_str()?)?,
        likelihood,
    })
}

impl Checkpoint {
    /// Writes the checkpoint to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.mlp.check_params(self.theta.len())?;
        let mut metadata = HashMap::from([(FORMAT.0.to_owned(), FORMAT.1.to_owned())]);
        metadata.insert("spec".into(), spec_json(self.mlp.spec()).to_string());
        if let Task::Classify { labels } = &self.task {
            metadata.insert("labels".into(), json!(labels).to_string());
        }
        if let Some(seed) = self.seed {
            metadata.insert("seed".into(), seed.to_string());
        }
        if let Some(s) = &self.standardizer {
            metadata.insert(
                "standardize".into(),
                json!({ "mean": s.mean, "std": s.std }).to_string(),
            );
        }
        let bytes: &[u8] = bytemuck::cast_slice(&self.theta);
        let mut tensors = Vec::new();
        for (i, layer) in self.mlp.layers().iter().enumerate() {
            let view = |start: usize, shape: Vec<usize>| {
                let len: usize = shape.iter().product();
                TensorView::new(Dtype::F32, shape, &bytes[4 * start..4 * (start + len)])
            };
            let weight = view(layer.weight, vec![layer.fan_out, layer.fan_in]).map_err(|e| super::io_error(path, e))?;
            let bias = view(layer.bias, vec![layer.fan_out]).map_err(|e| super::io_error(path, e))?;
            tensors.push((format!("layers.{i}.weight"), weight));
            tensors.push((format!("layers.{i}.bias"), bias));
        }
        let serialized = safetensors::serialize(tensors, Some(metadata)).map_err(|e| super::io_error(path, e))?;
        super::write_atomic(path, &serialized)
    }

    /// Reads a checkpoint written by [`Checkpoint::save`], checking every tensor's shape.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| super::io_error(path, e))?;
        Self::from_bytes(path, &bytes)
    }

    /// Parses a checkpoint's bytes; `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        let bad = |msg: String| super::io_error(path, msg);
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        if metadata.get(FORMAT.0).map(String::as_str) != Some(FORMAT.1) {
            return Err(bad(format!(
                "not a natgrad checkpoint (no {}={} in its metadata)",
                FORMAT.0, FORMAT.1
            )));
        }
        let json = |key: &str| -> Result<Option<Value>> {
            metadata
                .get(key)
                .map(|text| serde_json::from_str(text).map_err(|e| bad(format!("metadata {key:?}: {e}"))))
                .transpose()
        };
        let spec = json("spec")?
            .as_ref()
            .and_then(spec_from_json)
            .ok_or_else(|| bad("metadata has no valid model spec".into()))?;
        let mlp = Mlp::new(spec)?;
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        // every tensor's shape is checked before θ is allocated: a spec of absurd widths in a
        // damaged file is then this error, not an allocation the machine cannot make
        let mut parts = Vec::with_capacity(2 * mlp.layers().len());
        for (i, layer) in mlp.layers().iter().enumerate() {
            for (name, start, shape) in [
                (
                    format!("layers.{i}.weight"),
                    layer.weight,
                    vec![layer.fan_out, layer.fan_in],
                ),
                (format!("layers.{i}.bias"), layer.bias, vec![layer.fan_out]),
            ] {
                let t = tensors.tensor(&name).map_err(|_| bad(format!("no tensor {name}")))?;
                if t.dtype() != Dtype::F32 || t.shape() != shape.as_slice() {
                    return Err(bad(format!(
                        "{name} is {:?} {:?}, expected F32 {shape:?}",
                        t.dtype(),
                        t.shape()
                    )));
                }
                parts.push((start, t));
            }
        }
        let mut theta = vec![0.0f32; mlp.num_params()];
        for (start, t) in parts {
            let len = t.data().len() / 4;
            bytemuck::cast_slice_mut::<f32, u8>(&mut theta[start..start + len]).copy_from_slice(t.data());
        }
        let task = match (json("labels")?, mlp.likelihood()) {
            (Some(v), Likelihood::Categorical { .. } | Likelihood::Bernoulli) => {
                let labels: Vec<f64> =
                    serde_json::from_value(v).map_err(|e| bad(format!("metadata \"labels\": {e}")))?;
                check_labels(&labels, mlp.likelihood())
                    .map_err(|reason| bad(format!("metadata \"labels\": {reason}")))?;
                Task::Classify { labels }
            }
            (None, Likelihood::Gaussian { .. }) => Task::Regress,
            (Some(_), Likelihood::Gaussian { .. }) => {
                return Err(bad(
                    "metadata has class \"labels\" for a Gaussian (regression) model".into()
                ));
            }
            (None, _) => return Err(bad("metadata has no class \"labels\" for a classifier".into())),
        };
        let standardizer = match json("standardize")? {
            Some(v) => {
                let floats = |key: &str| -> Result<Vec<f32>> {
                    serde_json::from_value(v[key].clone()).map_err(|e| bad(format!("metadata \"standardize\": {e}")))
                };
                let (mean, std) = (floats("mean")?, floats("std")?);
                if mean.len() != mlp.inputs() || std.len() != mlp.inputs() {
                    return Err(bad(format!(
                        "metadata \"standardize\": {} means and {} deviations for {} inputs",
                        mean.len(),
                        std.len(),
                        mlp.inputs()
                    )));
                }
                if let Some(bad_std) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
                    return Err(bad(format!(
                        "metadata \"standardize\": deviation {bad_std} is not positive"
                    )));
                }
                if mean.iter().any(|m| !m.is_finite()) {
                    return Err(bad("metadata \"standardize\": a mean is not finite".into()));
                }
                Some(Standardizer { mean, std })
            }
            None => None,
        };
        let seed = metadata
            .get("seed")
            .map(|text| {
                text.parse()
                    .map_err(|_| bad(format!("metadata \"seed\": {text:?} is not a seed")))
            })
            .transpose()?;
        Ok(Self {
            mlp,
            theta,
            task,
            standardizer,
            seed,
        })
    }
}

/// A classifier's labels: one per class, distinct and finite (each output is one label's).
fn check_labels(labels: &[f64], likelihood: &Likelihood) -> std::result::Result<(), String> {
    let classes = match likelihood {
        Likelihood::Categorical { classes } => *classes,
        _ => 2,
    };
    if labels.len() != classes {
        return Err(format!("{} labels for {classes} classes", labels.len()));
    }
    if let Some(l) = labels.iter().find(|l| !l.is_finite()) {
        return Err(format!("label {l} is not finite"));
    }
    let mut sorted = labels.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(format!("label {} appears twice", w[0])),
        None => Ok(()),
    }
}
