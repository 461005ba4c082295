//! `natgrad train` as a library call: load and prepare the data, train over epochs on a device,
//! and write the run directory (metrics.csv, epochs.csv, model.safetensors each epoch,
//! summary.json and loss.svg).

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::dir::{Claim, RunDir};
use super::summary::{Summary, Validation, config_json};
use super::{Trainer, examples_per_step};
use crate::backend::Backend;
use crate::backend::profiled::{PHASES, Phases, Profiled};
use crate::data::{self, Dataset, Standardizer, TaskChoice};
use crate::error::{Error, Result};
use crate::io::checkpoint::Checkpoint;
use crate::io::metrics::{EpochRow, MetricsWriter, StepRow};
use crate::io::plot;
use crate::model::{Activation, Mlp, MlpSpec};
use crate::optim::OptimConfig;

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
    /// What to do when `out` already holds a run.
    pub claim: Claim,
    /// Time each step by phase (each operation waits for the device) into the summary.
    pub profile: bool,
}

impl Default for RunConfig {
    /// The command line's defaults: digits, an MLP with one hidden layer of 32 relu units, natural
    /// gradient with its defaults, batches of 200, 10 epochs, seed 0. `out` is empty: a run
    /// chooses [`default_out`] for it.
    fn default() -> Self {
        Self {
            data: "digits".into(),
            task: TaskChoice::Auto,
            hidden: vec![32],
            activation: Activation::default(),
            sigma: 1.0,
            optim: OptimConfig::default(),
            batch: 200,
            epochs: 10,
            steps: None,
            val_split: 0.0,
            standardize: false,
            seed: 0,
            out: PathBuf::new(),
            claim: Claim::New,
            profile: false,
        }
    }
}

/// Data and model ready to train.
pub struct Prepared {
    pub train: Dataset,
    pub val: Option<Dataset>,
    pub standardizer: Option<Standardizer>,
    pub mlp: Mlp,
}

impl RunConfig {
    /// Checks the run's settings: a run that cannot take a step is refused, not run.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, reason: &str| {
            Err(Error::InvalidArgument {
                name,
                reason: reason.into(),
            })
        };
        match self.steps {
            Some(0) => return bad("--steps", "0 steps would train nothing: need at least 1"),
            None if self.epochs == 0 => return bad("--epochs", "0 epochs would train nothing: need at least 1"),
            _ => {}
        }
        self.optim.validate()
    }
}

/// Loads and splits the data, standardises it if asked, and builds the model.
pub fn prepare(cfg: &RunConfig) -> Result<Prepared> {
    cfg.validate()?;
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
/// parameters with a finite loss, and the error says so. `device` is (kind, adapter) for the
/// summary.
pub fn run<B: Backend>(
    b: &B,
    cfg: &RunConfig,
    prepared: &Prepared,
    device: (&str, &str),
    on_event: &mut dyn FnMut(Event),
) -> Result<Summary> {
    if cfg.profile {
        let profiled = Profiled::new(b);
        run_on(&profiled, cfg, prepared, device, on_event, Some(&|| profiled.phases()))
    } else {
        run_on(b, cfg, prepared, device, on_event, None)
    }
}

/// [`run`] on `b`; `phases` reads a profiling backend's time per phase, charged to the steps only
/// (not the per-epoch evaluations and checkpoints).
fn run_on<B: Backend>(
    b: &B,
    cfg: &RunConfig,
    prepared: &Prepared,
    device: (&str, &str),
    on_event: &mut dyn FnMut(Event),
    phases: Option<&dyn Fn() -> Phases>,
) -> Result<Summary> {
    // every buffer planned before the parameters are drawn: a model too large is an error here
    let examples = examples_per_step(cfg.batch, prepared.train.n);
    Trainer::plan(b, &prepared.mlp, &cfg.optim, examples)?;
    let mut trainer = Trainer::new(
        b,
        prepared.mlp.clone(),
        &prepared.mlp.init(cfg.seed),
        cfg.optim,
        examples_per_step(cfg.batch, prepared.train.n),
        cfg.seed,
    )?;
    if let Some(notice) = trainer.plan_notice() {
        on_event(Event::Notice(notice));
    }
    // everything checked: now the directory is claimed (and locked until the run ends)
    let run_dir = RunDir::claim(&cfg.out, cfg.claim)?;
    let out = run_dir.path();
    let model_path = out.join("model.safetensors");
    let mut writer = MetricsWriter::create(out)?;
    let per_epoch = data::batches(prepared.train.n, cfg.batch, cfg.seed, 0).len();
    let total_steps = cfg.steps.unwrap_or(per_epoch * cfg.epochs);
    // the full training loss before the first step, to say so if the run ends above it
    let initial_loss = trainer.evaluate(&prepared.train)?.loss;
    on_event(Event::Start { total_steps });
    let mut wall_s = 0.0;
    let mut spent = Phases::default();
    let mut last: Option<EpochRow> = None;
    let mut epoch = 0;
    while trainer.steps() < total_steps {
        epoch += 1;
        for indices in data::batches(prepared.train.n, cfg.batch, cfg.seed, epoch) {
            if trainer.steps() >= total_steps {
                break;
            }
            let (x, y) = prepared.train.gather(&indices);
            let before = phases.map(|p| p());
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
            if let (Some(p), Some(before)) = (phases, before) {
                let now = p();
                (0..PHASES.len()).for_each(|k| spent.0[k] += now.0[k] - before.0[k]);
            }
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
    if last.train_loss > initial_loss {
        let advice = match cfg.optim.kind {
            crate::optim::OptimizerKind::Ngd => "a smaller --kl or --lr",
            _ => "a smaller --lr",
        };
        on_event(Event::Notice(&format!(
            "warning: the training loss rose over the run, from {initial_loss:.6} to {:.6}: try {advice}",
            last.train_loss
        )));
    }
    let steps = trainer.steps();
    let summary = Summary {
        train_loss: last.train_loss,
        train_objective: last.train_objective,
        train_accuracy: last.train_accuracy,
        val: prepared.val.as_ref().map(|_| Validation {
            val_loss: last.val_loss,
            val_accuracy: last.val_accuracy,
        }),
        steps,
        epochs: epoch,
        wall_s,
        device: device.0.into(),
        adapter: device.1.into(),
        config: config_json(cfg, &prepared.mlp, trainer.curvature()),
        profile_ms_per_step: phases.map(|_| {
            PHASES
                .iter()
                .zip(spent.0)
                .map(|(name, s)| (name.to_string(), 1e3 * s / steps.max(1) as f64))
                .collect()
        }),
    };
    crate::io::metrics::write_summary(out, &summary)?;
    plot::loss_plot(&[plot::read_run(out)?], &out.join("loss.svg"))?;
    Ok(summary)
}

/// Where a run's outputs go by default: `runs/<dataset>-<optimizer>`.
pub fn default_out(data: &str, optimizer: &str) -> PathBuf {
    let stem = Path::new(data)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    PathBuf::from("runs").join(format!("{stem}-{optimizer}"))
}
