//! The update loop. [`Trainer`] owns the parameters and optimiser state on a device and takes one
//! step per batch: upload, forward, loss, gradient, then the optimiser's update (for natural
//! gradient: scores → Fisher → CG → step), with the data on the device throughout the step and
//! only a few scalars read back. [`run`] drives it over epochs and writes a run directory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};

use crate::backend::Backend;
use crate::data::{self, Dataset, Standardizer, TaskChoice};
use crate::error::{Error, Result};
use crate::fisher::curvature::{self, CurvatureKind};
use crate::fisher::{FisherKind, SampleKey};
use crate::io::checkpoint::Checkpoint;
use crate::io::metrics::{EpochRow, MetricsWriter, StepRow};
use crate::io::plot;
use crate::model::{Activation, Mlp, MlpSpec};
use crate::optim::ngd::StepInput;
use crate::optim::{OptimConfig, Optimizer, OptimizerKind, UpdateInfo};

/// Examples per forward pass when evaluating whole sets.
pub const EVAL_BATCH: usize = 4096;

/// One step's figures on its batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    pub loss: f64,
    pub objective: f64,
    /// Classification only.
    pub accuracy: Option<f64>,
    pub grad_norm: f64,
    pub update: UpdateInfo,
}

/// Loss, objective and accuracy over a whole set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub objective: f64,
    pub accuracy: Option<f64>,
}

/// Mean NLL and accuracy of the model at θ over all of `data`, a few thousand examples per
/// forward pass (the objective here is the loss: callers add weight decay).
pub fn evaluate<B: Backend>(b: &B, mlp: &Mlp, theta: &B::Vector, data: &Dataset) -> Result<Evaluation> {
    let (d, mut nll, mut correct) = (data.d, 0.0, 0.0);
    for start in (0..data.n).step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(data.n);
        let mut batch = b.upload_batch(mlp, &data.x[start * d..end * d], &data.y[start..end])?;
        b.forward(mlp, theta, &mut batch)?;
        let part = b.batch_loss(mlp, &batch)?;
        nll += part.loss * part.examples as f64;
        correct += part.accuracy * part.examples as f64;
    }
    let loss = nll / data.n as f64;
    let accuracy = mlp.likelihood().is_classification().then_some(correct / data.n as f64);
    Ok(Evaluation {
        loss,
        objective: loss,
        accuracy,
    })
}

/// Parameters and optimiser state on a device, one step at a time.
pub struct Trainer<'b, B: Backend> {
    b: &'b B,
    mlp: Mlp,
    config: OptimConfig,
    theta: B::Vector,
    /// θ before the last update: parameters whose loss was finite, kept for a diverging run.
    last_good: B::Vector,
    g: B::Vector,
    weight_mask: B::Vector,
    optimizer: Optimizer<B>,
    steps: usize,
    seed: u32,
}

impl<'b, B: Backend> Trainer<'b, B> {
    /// Starts from `theta0`; `seed` keys the sampled Fisher's draws.
    pub fn new(b: &'b B, mlp: Mlp, theta0: &[f32], config: OptimConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        mlp.check_params(theta0.len())?;
        let p = mlp.num_params();
        Ok(Self {
            theta: b.upload_vector("parameters θ", theta0)?,
            last_good: b.upload_vector("last good θ", theta0)?,
            g: b.zeros_vector("gradient g", p)?,
            weight_mask: b.upload_vector("weight mask", &mlp.weight_mask())?,
            optimizer: Optimizer::new(b, &config, &mlp)?,
            b,
            mlp,
            config,
            steps: 0,
            seed: seed as u32,
        })
    }

    pub fn mlp(&self) -> &Mlp {
        &self.mlp
    }

    /// Steps taken.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// (wd/2)‖W‖² at the current θ.
    fn decay_term(&self) -> Result<f64> {
        if self.config.weight_decay == 0.0 {
            return Ok(0.0);
        }
        let w2 = self.b.weighted_dot(&self.theta, &self.weight_mask, &self.theta)?;
        Ok(0.5 * self.config.weight_decay as f64 * w2)
    }

    /// One update on the batch (`x` n × inputs, `y` its targets).
    pub fn step(&mut self, x: &[f32], y: &[f32]) -> Result<StepStats> {
        let b = self.b;
        let step = self.steps + 1;
        let mut batch = b.upload_batch(&self.mlp, x, y)?;
        b.forward(&self.mlp, &self.theta, &mut batch)?;
        let loss = b.batch_loss(&self.mlp, &batch)?;
        if !loss.loss.is_finite() {
            return Err(Error::Diverged {
                what: "loss",
                value: loss.loss,
                step,
                kept: None,
            });
        }
        let objective = loss.loss + self.decay_term()?;
        b.copy(&self.theta, &mut self.last_good)?;
        b.gradient(
            &self.mlp,
            &self.theta,
            &mut batch,
            self.config.weight_decay,
            &mut self.g,
        )?;
        let grad_norm = (b.dot(&self.g, &self.g)?).sqrt();
        if !grad_norm.is_finite() {
            return Err(Error::Diverged {
                what: "gradient norm",
                value: grad_norm,
                step,
                kept: None,
            });
        }
        let mut input = StepInput {
            mlp: &self.mlp,
            batch: &mut batch,
            theta: &mut self.theta,
            g: &self.g,
            objective,
            weight_mask: &self.weight_mask,
            key: SampleKey {
                seed: self.seed,
                step: step as u32,
            },
        };
        let update = self.optimizer.update(b, &self.config, &mut input)?;
        self.steps = step;
        let accuracy = self.mlp.likelihood().is_classification().then_some(loss.accuracy);
        Ok(StepStats {
            loss: loss.loss,
            objective,
            accuracy,
            grad_norm,
            update,
        })
    }

    /// Loss, objective and accuracy over all of `data` at the current θ.
    pub fn evaluate(&self, data: &Dataset) -> Result<Evaluation> {
        let mut e = evaluate(self.b, &self.mlp, &self.theta, data)?;
        e.objective += self.decay_term()?;
        Ok(e)
    }

    /// The network's outputs for inputs `x` (n × inputs), n × outputs.
    pub fn predict(&self, x: &[f32]) -> Result<Vec<f32>> {
        let n = x.len() / self.mlp.inputs().max(1);
        // zeros are valid targets for every likelihood; only the outputs are used
        let targets = vec![0.0; n * self.mlp.likelihood().target_width()];
        let mut batch = self.b.upload_batch(&self.mlp, x, &targets)?;
        self.b.forward(&self.mlp, &self.theta, &mut batch)?;
        self.b.outputs(&self.mlp, &batch)
    }

    /// The current parameters, on the host.
    pub fn parameters(&self) -> Result<Vec<f32>> {
        self.b.download_vector(&self.theta)
    }

    /// The parameters before the last update (finite loss), on the host.
    pub fn last_good_parameters(&self) -> Result<Vec<f32>> {
        self.b.download_vector(&self.last_good)
    }
}

/// Everything `natgrad train` is told.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// A built-in dataset's name or a CSV path.
    pub data: String,
    pub task: TaskChoice,
    pub hidden: Vec<usize>,
    pub activation: Activation,
    /// The Gaussian likelihood's σ (regression).
    pub sigma: f32,
    pub optim: OptimConfig,
    /// Examples per step; 0 for the full batch.
    pub batch: usize,
    pub epochs: usize,
    /// Stop after this many steps instead of after `epochs`.
    pub steps: Option<usize>,
    pub val_split: f64,
    pub standardize: bool,
    pub seed: u64,
    pub out: PathBuf,
    /// Natural gradient's curvature representation; `None` picks one (`--curvature auto`).
    pub curvature: Option<CurvatureKind>,
}

/// Data and model ready to train.
pub struct Prepared {
    pub train: Dataset,
    pub val: Option<Dataset>,
    pub standardizer: Option<Standardizer>,
    pub mlp: Mlp,
}

/// Loads and splits the data, standardises it if asked, and builds the model.
pub fn prepare(cfg: &RunConfig) -> Result<Prepared> {
    let (mut train, mut val) = data::load(&cfg.data, cfg.task, cfg.seed)?.split(cfg.val_split, cfg.seed)?;
    let standardizer = cfg.standardize.then(|| Standardizer::fit(&train));
    if let Some(s) = &standardizer {
        s.apply(&mut train);
        if let Some(v) = &mut val {
            s.apply(v);
        }
    }
    let mlp = Mlp::new(MlpSpec {
        inputs: train.d,
        hidden: cfg.hidden.clone(),
        activation: cfg.activation,
        likelihood: train.likelihood(cfg.sigma),
    })?;
    Ok(Prepared {
        train,
        val,
        standardizer,
        mlp,
    })
}

/// What the run loop tells its caller as it goes.
pub enum Event<'a> {
    /// A line worth showing (e.g. which curvature `auto` picked, and why).
    Notice(&'a str),
    /// Before the first step: the steps the run will take.
    Start {
        total_steps: usize,
    },
    Step(&'a StepRow),
    Epoch(&'a EpochRow),
}

/// The settings, as summary.json's "config".
pub fn config_json(cfg: &RunConfig, mlp: &Mlp) -> Value {
    let o = &cfg.optim;
    let draws = match o.ngd.fisher {
        FisherKind::Sampled { draws } => Some(draws),
        _ => None,
    };
    json!({
        "data": cfg.data,
        "task": if mlp.likelihood().is_classification() { "classify" } else { "regress" },
        "hidden": cfg.hidden,
        "activation": cfg.activation.name(),
        "likelihood": mlp.likelihood().name(),
        "parameters": mlp.num_params(),
        "optimizer": o.kind.name(),
        "lr": o.lr,
        "momentum": o.momentum,
        "adam_betas": [o.beta1, o.beta2],
        "adam_eps": o.eps,
        "fisher": o.ngd.fisher.name(),
        "draws": draws,
        "curvature": o.ngd.curvature.name(),
        "damping": o.ngd.damping,
        "adaptive_damping": o.ngd.adaptive_damping,
        "kl": o.ngd.kl,
        "weight_decay": o.weight_decay,
        "cg_iters": o.ngd.cg.max_iters,
        "cg_tol": o.ngd.cg.rel_tol,
        "batch": cfg.batch,
        "epochs": cfg.epochs,
        "steps": cfg.steps,
        "val_split": cfg.val_split,
        "standardize": cfg.standardize,
        "sigma": cfg.sigma,
        "seed": cfg.seed,
    })
}

fn checkpoint(prepared: &Prepared, theta: Vec<f32>) -> Checkpoint {
    Checkpoint {
        mlp: prepared.mlp.clone(),
        theta,
        task: prepared.train.task.clone(),
        standardizer: prepared.standardizer.clone(),
    }
}

fn epoch_row<B: Backend>(trainer: &Trainer<B>, prepared: &Prepared, epoch: usize, wall_s: f64) -> Result<EpochRow> {
    let train = trainer.evaluate(&prepared.train)?;
    let val = prepared.val.as_ref().map(|v| trainer.evaluate(v)).transpose()?;
    Ok(EpochRow {
        epoch,
        train_loss: train.loss,
        train_objective: train.objective,
        train_accuracy: train.accuracy,
        val_loss: val.map(|v| v.loss),
        val_accuracy: val.and_then(|v| v.accuracy),
        wall_s,
    })
}

/// Trains on `b` and writes the run directory: metrics.csv, epochs.csv, model.safetensors (each
/// epoch, atomically), summary.json and loss.svg. On divergence the checkpoint holds the last
/// parameters with a finite loss, and the error says so.
pub fn run<B: Backend>(
    b: &B,
    cfg: &RunConfig,
    prepared: &Prepared,
    device: (&str, &str),
    on_event: &mut dyn FnMut(Event),
) -> Result<Value> {
    let mut cfg = cfg.clone();
    if cfg.optim.kind == OptimizerKind::Ngd {
        let (kind, notice) = plan_curvature(b, &cfg, prepared)?;
        cfg.optim.ngd.curvature = kind;
        on_event(Event::Notice(&notice));
    }
    let cfg = &cfg;
    let out = &cfg.out;
    std::fs::create_dir_all(out).map_err(|e| crate::io::io_error(out, e))?;
    let model_path = out.join("model.safetensors");
    let mut writer = MetricsWriter::create(out)?;
    let mut trainer = Trainer::new(
        b,
        prepared.mlp.clone(),
        &prepared.mlp.init(cfg.seed),
        cfg.optim,
        cfg.seed,
    )?;
    let per_epoch = data::batches(prepared.train.n, cfg.batch, cfg.seed, 0).len();
    let total_steps = cfg.steps.unwrap_or(per_epoch * cfg.epochs);
    on_event(Event::Start { total_steps });
    let mut wall_s = 0.0;
    let mut last: Option<EpochRow> = None;
    let mut epoch = 0;
    while trainer.steps() < total_steps {
        epoch += 1;
        for indices in data::batches(prepared.train.n, cfg.batch, cfg.seed, epoch) {
            if trainer.steps() >= total_steps {
                break;
            }
            let (x, y) = prepared.train.gather(&indices);
            let started = Instant::now();
            let stats = match trainer.step(&x, &y) {
                Ok(stats) => stats,
                Err(Error::Diverged { what, value, step, .. }) => {
                    writer.flush()?;
                    checkpoint(prepared, trainer.last_good_parameters()?).save(&model_path)?;
                    let kept = Some(model_path.display().to_string());
                    return Err(Error::Diverged {
                        what,
                        value,
                        step,
                        kept,
                    });
                }
                Err(e) => return Err(e),
            };
            wall_s += started.elapsed().as_secs_f64();
            let row = StepRow {
                step: trainer.steps(),
                epoch,
                loss: stats.loss,
                objective: stats.objective,
                accuracy: stats.accuracy,
                grad_norm: stats.grad_norm,
                step_size: stats.update.step_size as f64,
                kl_pred: stats.update.kl_pred,
                cg_iters: stats.update.cg_iters,
                cg_rel_residual: stats.update.cg_rel_residual.map(f64::from),
                damping: stats.update.damping.map(f64::from),
                wall_s,
            };
            writer.step(&row)?;
            on_event(Event::Step(&row));
        }
        let row = epoch_row(&trainer, prepared, epoch, wall_s)?;
        writer.epoch(&row)?;
        checkpoint(prepared, trainer.parameters()?).save(&model_path)?;
        on_event(Event::Epoch(&row));
        last = Some(row);
    }
    let last = match last {
        Some(row) => row,
        None => {
            // zero steps asked for: the initial parameters are the result
            let row = epoch_row(&trainer, prepared, 0, 0.0)?;
            writer.epoch(&row)?;
            checkpoint(prepared, trainer.parameters()?).save(&model_path)?;
            row
        }
    };
    writer.flush()?;
    let mut summary = json!({
        "train_loss": last.train_loss,
        "train_objective": last.train_objective,
        "train_accuracy": last.train_accuracy,
        "steps": trainer.steps(),
        "epochs": epoch,
        "wall_s": wall_s,
        "device": device.0,
        "adapter": device.1,
        "config": config_json(cfg, &prepared.mlp),
    });
    if prepared.val.is_some() {
        summary["val_loss"] = json!(last.val_loss);
        summary["val_accuracy"] = json!(last.val_accuracy);
    }
    crate::io::metrics::write_summary(out, &summary)?;
    plot::loss_plot(&[plot::read_run(out)?], &out.join("loss.svg"))?;
    Ok(summary)
}

/// Resolves `--curvature` (auto, or as given) for the run's batch on `b`, and checks that it fits
/// the device before anything is allocated; the string says what was chosen and why.
pub fn plan_curvature<B: Backend>(b: &B, cfg: &RunConfig, prepared: &Prepared) -> Result<(CurvatureKind, String)> {
    let mlp = &prepared.mlp;
    let batch = if cfg.batch == 0 {
        prepared.train.n
    } else {
        cfg.batch.min(prepared.train.n)
    };
    let m = batch * cfg.optim.ngd.fisher.rows_per_example(mlp.likelihood());
    let p = mlp.num_params();
    let blocks = curvature::block_sizes(mlp);
    let memory = b.memory_available().unwrap_or(u64::MAX);
    let max_buffer = b.max_matrix_bytes();
    match cfg.curvature {
        Some(kind) => {
            curvature::check_fits(kind, p, m, &blocks, max_buffer, memory)?;
            Ok((
                kind,
                format!("curvature: {} ({m} score rows of {p} parameters per step)", kind.name()),
            ))
        }
        None => {
            let (kind, why) = curvature::choose(p, m, &blocks, max_buffer, memory);
            Ok((kind, format!("curvature: auto picked {}: {why}", kind.name())))
        }
    }
}

/// Where a run's outputs go by default: `runs/<dataset>-<optimizer>`.
pub fn default_out(data: &str, optimizer: &str) -> PathBuf {
    let stem = Path::new(data)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    PathBuf::from("runs").join(format!("{stem}-{optimizer}"))
}
