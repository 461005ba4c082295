//! `natgrad train` as a library call: load and prepare the data, train over epochs on a device,
//! and write the run directory (metrics.csv, epochs.csv, model.safetensors each epoch,
//! summary.json and loss.svg).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::dir::{Claim, RunDir};
use super::shard::{Held, Layout};
use super::summary::{DeviceProfile, FlowPerStep, Summary, Validation, config_json};
use super::{Trainer, examples_per_step};
use crate::backend::profiled::{PHASES, Phases, Profiled};
use crate::backend::{Backend, SyncCounts};
use crate::curvature::Limits;
use crate::data::{self, Dataset, Standardizer, TaskChoice};
use crate::dist::{self, Collective, Solo, Traffic, split};
use crate::error::{Error, Result};
use crate::io::checkpoint::Checkpoint;
use crate::io::metrics::{EpochRow, MetricsWriter, StepRow};
use crate::io::plot;
use crate::model::{Activation, Mlp, MlpSpec};
use crate::optim::{OptimConfig, OptimizerKind};
use crate::snapshot::Snapshot;

/// Everything `natgrad train` is told.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// Save the checkpoint and state this often besides every epoch.
    pub checkpoint_every: Option<Every>,
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
            checkpoint_every: None,
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

/// The model at `theta`, with what applying it to raw data needs; `seed` regenerates a seeded
/// built-in dataset.
fn checkpoint(prepared: &Prepared, theta: Vec<f32>, seed: u64) -> Checkpoint {
    Checkpoint {
        mlp: prepared.mlp.clone(),
        theta,
        task: prepared.train.task.clone(),
        standardizer: prepared.standardizer.clone(),
        seed: Some(seed),
    }
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
    run_with(b, cfg, prepared, Crew::solo(), device, on_event)
}

/// [`run`] as one rank of a data-parallel run over `comm`: `prepared` and `layout` are this
/// rank's, from [`super::shard::prepare`]. Every rank takes every step; rank 0 alone writes the
/// run directory and reports `on_event`.
pub fn run_ranks<B: Backend>(
    b: &B,
    cfg: &RunConfig,
    prepared: &Prepared,
    layout: &Layout,
    comm: &dyn Collective,
    device: (&str, &str),
    on_event: &mut dyn FnMut(Event),
) -> Result<Summary> {
    let crew = Crew {
        comm,
        layout: Some(layout),
    };
    run_with(b, cfg, prepared, crew, device, on_event)
}

/// Who takes a run's steps: one process, or a rank of a data-parallel run and where the run's
/// examples are.
#[derive(Clone, Copy)]
struct Crew<'a> {
    comm: &'a dyn Collective,
    layout: Option<&'a Layout>,
}

impl Crew<'static> {
    fn solo() -> Self {
        Crew {
            comm: &Solo,
            layout: None,
        }
    }
}

impl Crew<'_> {
    /// The rank that writes the run directory and reports.
    fn leads(&self) -> bool {
        self.comm.rank() == 0
    }

    /// Training and validation examples of the run (on every rank together).
    fn totals(&self, prepared: &Prepared) -> (usize, usize) {
        match self.layout {
            Some(layout) => (layout.train_total(), layout.val_total),
            None => (prepared.train.n, prepared.val.as_ref().map_or(0, |v| v.n)),
        }
    }

    /// The state file of `out`, read by the leading rank and sent to the others.
    fn load_state(&self, out: &Path) -> Result<Snapshot> {
        let path = out.join("state.safetensors");
        let read = if self.leads() {
            std::fs::read(&path).map_err(|e| crate::io::io_error(&path, e))
        } else {
            Ok(Vec::new())
        };
        let mut bytes = dist::agree(self.comm, read)?;
        self.comm.broadcast_bytes("training state", 0, &mut bytes)?;
        crate::io::state::from_bytes(&path, &bytes)
    }
}

fn run_with<B: Backend>(
    b: &B,
    cfg: &RunConfig,
    prepared: &Prepared,
    crew: Crew,
    device: (&str, &str),
    on_event: &mut dyn FnMut(Event),
) -> Result<Summary> {
    if cfg.profile {
        let profiled = Profiled::new(b);
        run_on(
            &profiled,
            cfg,
            prepared,
            crew,
            device,
            on_event,
            Some(&|| profiled.phases()),
        )
    } else {
        run_on(b, cfg, prepared, crew, device, on_event, None)
    }
}

/// Where a run stands, as the state file keeps it: the epoch in progress and the batches of it
/// done, the training time so far, and what the summary needs of the run before.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Progress {
    epoch: usize,
    position: usize,
    wall_s: f64,
    initial_loss: f64,
    last: Option<EpochRow>,
}

/// Writes the checkpoint and then the state (both atomically), with the metrics flushed first:
/// a run killed at any moment leaves files that load, and a state never ahead of the metrics.
fn save_all<B: Backend>(
    cfg: &RunConfig,
    prepared: &Prepared,
    trainer: &Trainer<B>,
    writer: &mut MetricsWriter,
    out: &Path,
    progress: &Progress,
) -> Result<()> {
    writer.flush()?;
    checkpoint(prepared, trainer.parameters()?, cfg.seed).save(&out.join("model.safetensors"))?;
    let mut snapshot = Snapshot::default();
    trainer.save(&mut snapshot)?;
    snapshot.put("run.config", cfg);
    snapshot.put("run.progress", progress);
    crate::io::state::save(&out.join("state.safetensors"), &snapshot)
}

/// The run's settings and where it stood, from `dir/state.safetensors`.
pub fn resume_config(dir: &Path) -> Result<RunConfig> {
    let snapshot = crate::io::state::load(&dir.join("state.safetensors"))?;
    let mut cfg: RunConfig = snapshot.get("run.config")?;
    cfg.out = dir.to_path_buf();
    cfg.claim = Claim::Resume;
    Ok(cfg)
}

/// A saved state's place in the run agrees with its step count and this run's epochs of
/// `per_epoch` steps: a damaged or edited state is refused, not resumed at a wrong place.
fn check_progress(progress: &Progress, steps: usize, per_epoch: usize) -> Result<()> {
    let at = progress
        .epoch
        .checked_sub(1)
        .and_then(|done| done.checked_mul(per_epoch))
        .and_then(|s| s.checked_add(progress.position));
    // position == per_epoch: stopped after an epoch's last step, before its end was written
    if progress.position <= per_epoch && at == Some(steps) {
        return Ok(());
    }
    Err(Error::Shape(format!(
        "training state: epoch {} batch {} of {per_epoch} is not where {steps} steps lead",
        progress.epoch, progress.position
    )))
}

/// The error of a run that diverged at `at` (what, its value, the step); every rank diverges at
/// the same step, and the leading one (which holds the writer) keeps the last parameters whose
/// loss was finite in the checkpoint, or says why it could not.
fn diverged<B: Backend>(
    cfg: &RunConfig,
    prepared: &Prepared,
    trainer: &Trainer<B>,
    writer: Option<&mut MetricsWriter>,
    model_path: &Path,
    (what, value, step): (&'static str, f64, usize),
) -> Error {
    let kept = writer.map(|writer| {
        writer.flush()?;
        checkpoint(prepared, trainer.last_good_parameters()?, cfg.seed).save(model_path)?;
        Ok(model_path.display().to_string())
    });
    match kept.transpose() {
        Ok(kept) => Error::Diverged {
            what,
            value,
            step,
            kept,
        },
        Err(e) => e,
    }
}

/// When to save the checkpoint and state between epochs.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Every {
    Steps(usize),
    Seconds(f64),
}

impl std::str::FromStr for Every {
    type Err = String;

    /// `N` steps or `Ns` seconds of training.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{s:?} is not a count of steps (100) or seconds (30s) above 0");
        match s.trim().strip_suffix('s') {
            Some(secs) => secs
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0)
                .map(Every::Seconds)
                .ok_or_else(bad),
            None => s
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|v| *v > 0)
                .map(Every::Steps)
                .ok_or_else(bad),
        }
    }
}

/// A stop asked for by a signal: the run finishes its step, saves everything and returns
/// [`Error::Interrupted`].
static STOP: AtomicBool = AtomicBool::new(false);

/// Asks a running [`run`] to stop after its current step (what SIGINT and SIGTERM do in the
/// command line). Safe to call from a signal handler's thread.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// [`run`] on `b` for `crew`; `phases` reads a profiling backend's time per phase, charged to the
/// steps only (not the per-epoch evaluations and checkpoints).
#[allow(clippy::too_many_arguments)]
fn run_on<B: Backend>(
    b: &B,
    cfg: &RunConfig,
    prepared: &Prepared,
    crew: Crew,
    device: (&str, &str),
    on_event: &mut dyn FnMut(Event),
    phases: Option<&dyn Fn() -> Phases>,
) -> Result<Summary> {
    let comm = crew.comm;
    let leads = crew.leads();
    let (train_total, val_total) = crew.totals(prepared);
    // every buffer planned before the parameters are drawn: a model too large is an error here
    let examples = examples_per_step(cfg.batch, train_total);
    let limits = Limits::least_of(comm, Limits::of(b))?;
    Trainer::<B>::plan(&limits, &prepared.mlp, &cfg.optim, examples)?;
    let curvature = match cfg.optim.kind {
        OptimizerKind::Ngd => cfg.optim.ngd.curvature_batch,
        _ => 0,
    };
    let epoch_batches = data::batches(train_total, cfg.batch, cfg.seed, 0);
    if comm.ranks() > 1 {
        let sizes: Vec<usize> = epoch_batches.iter().map(Vec::len).collect();
        split::check(&sizes, curvature, comm.ranks())?;
    }
    let mut trainer = Trainer::within(
        b,
        &limits,
        prepared.mlp.clone(),
        &prepared.mlp.init(cfg.seed),
        cfg.optim,
        examples,
        cfg.seed,
    )?
    .on_ranks(comm);
    if let Some(notice) = trainer.plan_notice() {
        on_event(Event::Notice(notice));
    }
    // everything checked: now the directory is claimed (and locked until the run ends), by the
    // leading rank alone
    let run_dir = dist::agree(comm, leads.then(|| RunDir::claim(&cfg.out, cfg.claim)).transpose())?;
    let out = run_dir.as_ref().map_or(cfg.out.as_path(), |d| d.path());
    let model_path = out.join("model.safetensors");
    let per_epoch = epoch_batches.len();
    let total_steps = match cfg.steps {
        Some(steps) => steps,
        None => per_epoch
            .checked_mul(cfg.epochs)
            .ok_or_else(|| Error::InvalidArgument {
                name: "--epochs",
                reason: format!(
                    "{} epochs of {per_epoch} steps is more steps than can be counted",
                    cfg.epochs
                ),
            })?,
    };
    let (mut progress, mut writer) = if cfg.claim == Claim::Resume {
        let snapshot = crew.load_state(out)?;
        trainer.load(&snapshot)?;
        let progress: Progress = snapshot.get("run.progress")?;
        check_progress(&progress, trainer.steps(), per_epoch)?;
        let writer = leads
            .then(|| MetricsWriter::resume(out, trainer.steps(), progress.epoch - 1))
            .transpose();
        let writer = dist::agree(comm, writer)?;
        on_event(Event::Notice(&format!(
            "resumed {} at step {} (epoch {}, batch {})",
            out.display(),
            trainer.steps(),
            progress.epoch,
            progress.position
        )));
        (progress, writer)
    } else {
        let progress = Progress {
            epoch: 1,
            // the full training loss before the first step, to say so if the run ends above it
            initial_loss: trainer.evaluate_part(&prepared.train, train_total)?.loss,
            ..Progress::default()
        };
        let writer = dist::agree(comm, leads.then(|| MetricsWriter::create(out)).transpose())?;
        (progress, writer)
    };
    on_event(Event::Start { total_steps });
    let mut spent = Phases::default();
    // submissions and waits of the steps this process took, the most waits of one, and the steps
    let mut device_counts: Option<(SyncCounts, u64, usize)> = None;
    // what the steps moved between the ranks
    let mut moved = Traffic::default();
    let mut steps_here = 0;
    let mut saved_at = (trainer.steps(), Instant::now());
    let epoch_row = |trainer: &Trainer<B>, epoch: usize, wall_s: f64| -> Result<EpochRow> {
        let train = trainer.evaluate_part(&prepared.train, train_total)?;
        let val = prepared
            .val
            .as_ref()
            .map(|v| trainer.evaluate_part(v, val_total))
            .transpose()?;
        Ok(EpochRow {
            epoch,
            train_loss: train.loss,
            train_objective: train.objective,
            train_accuracy: train.accuracy,
            val_loss: val.map(|v| v.loss),
            val_accuracy: val.and_then(|v| v.accuracy),
            wall_s,
        })
    };
    // this rank's examples of the last batch, and the batch
    let mut held: Option<(Vec<usize>, Held)> = None;
    while trainer.steps() < total_steps {
        let epoch = progress.epoch;
        for indices in data::batches(train_total, cfg.batch, cfg.seed, epoch)
            .into_iter()
            .skip(progress.position)
        {
            if trainer.steps() >= total_steps {
                break;
            }
            let before = phases.map(|p| p());
            let counts_before = b.sync_counts();
            let traffic_before = comm.traffic();
            let started = Instant::now();
            let taken = match crew.layout {
                None => {
                    let (x, y) = prepared.train.gather(&indices);
                    trainer.step(&x, &y)
                }
                Some(layout) => {
                    // a full batch is the same every step: its examples are brought once
                    let brought = match held.take() {
                        Some((at, examples)) if at == indices => Ok((at, examples)),
                        _ => layout
                            .examples(comm, &prepared.train, &indices, curvature)
                            .map(|examples| (indices, examples)),
                    };
                    brought.and_then(|(at, examples)| {
                        let taken = trainer.step_on(&examples.examples());
                        held = Some((at, examples));
                        taken
                    })
                }
            };
            let stats = match taken {
                Ok(stats) => stats,
                Err(Error::Diverged { what, value, step, .. }) => {
                    return Err(diverged(
                        cfg,
                        prepared,
                        &trainer,
                        writer.as_mut(),
                        &model_path,
                        (what, value, step),
                    ));
                }
                Err(e) => return Err(e),
            };
            progress.wall_s += started.elapsed().as_secs_f64();
            progress.position += 1;
            steps_here += 1;
            if let (Some(before), Some(now)) = (counts_before, b.sync_counts()) {
                let step = now.since(before);
                let (total, most, taken) = device_counts.get_or_insert_default();
                total.submissions += step.submissions;
                total.host_syncs += step.host_syncs;
                *most = (*most).max(step.host_syncs);
                *taken += 1;
            }
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
                wall_s: progress.wall_s,
            };
            let wrote = writer.as_mut().map_or(Ok(()), |w| w.step(&row));
            on_event(Event::Step(&row));
            let due = leads
                && match cfg.checkpoint_every {
                    Some(Every::Steps(n)) => trainer.steps() - saved_at.0 >= n,
                    Some(Every::Seconds(s)) => saved_at.1.elapsed().as_secs_f64() >= s,
                    None => false,
                };
            // one agreement a step: a signal reaches the ranks at different moments (they stop
            // together, after the step in which any saw one), the leading rank's write may have
            // failed, and it alone keeps the time between saves
            let stop = STOP.swap(false, Ordering::SeqCst);
            let ((), flags) = dist::agree_flags(comm, "stop", wrote, &[stop, due])?;
            let (stop, due) = (flags[0], flags[1]);
            moved.merge(&comm.traffic().since(&traffic_before));
            if stop || due {
                let saved = writer
                    .as_mut()
                    .map_or(Ok(()), |w| save_all(cfg, prepared, &trainer, w, out, &progress));
                dist::agree(comm, saved)?;
                saved_at = (trainer.steps(), Instant::now());
            }
            if stop {
                let row = epoch_row(&trainer, epoch, progress.wall_s)?;
                let summary = summarize(
                    cfg,
                    prepared,
                    &trainer,
                    device,
                    &row,
                    &progress,
                    phases.map(|_| &spent),
                    device_counts,
                    (comm.ranks(), &moved, steps_here),
                    true,
                );
                dist::agree(comm, if leads { write_outputs(out, &summary) } else { Ok(()) })?;
                return Err(Error::Interrupted {
                    step: trainer.steps(),
                    dir: out.display().to_string(),
                });
            }
        }
        let row = epoch_row(&trainer, epoch, progress.wall_s)?;
        // the last step's update is not followed by a loss that would catch it
        if !row.train_loss.is_finite() {
            let at = ("loss", row.train_loss, trainer.steps());
            return Err(diverged(cfg, prepared, &trainer, writer.as_mut(), &model_path, at));
        }
        if comm.ranks() > 1 {
            check_in_step(comm, &trainer, epoch)?;
        }
        on_event(Event::Epoch(&row));
        let wrote = writer.as_mut().map_or(Ok(()), |w| w.epoch(&row));
        progress.last = Some(row);
        progress.epoch += 1;
        progress.position = 0;
        let saved = wrote.and_then(|()| {
            writer
                .as_mut()
                .map_or(Ok(()), |w| save_all(cfg, prepared, &trainer, w, out, &progress))
        });
        dist::agree(comm, saved)?;
        saved_at = (trainer.steps(), Instant::now());
    }
    let Some(last) = progress.last else {
        return Err(Error::InvalidArgument {
            name: "--steps",
            reason: format!("the run already took its {total_steps} steps: give more with --epochs or --steps"),
        });
    };
    dist::agree(comm, writer.as_mut().map_or(Ok(()), |w| w.flush()))?;
    if last.train_loss > progress.initial_loss {
        let advice = match cfg.optim.kind {
            OptimizerKind::Ngd => "a smaller --kl or --lr",
            _ => "a smaller --lr",
        };
        on_event(Event::Notice(&format!(
            "warning: the training loss rose over the run, from {:.6} to {:.6}: try {advice}",
            progress.initial_loss, last.train_loss
        )));
    }
    let summary = summarize(
        cfg,
        prepared,
        &trainer,
        device,
        &last,
        &progress,
        phases.map(|_| &spent),
        device_counts,
        (comm.ranks(), &moved, steps_here),
        false,
    );
    dist::agree(comm, if leads { write_outputs(out, &summary) } else { Ok(()) })?;
    Ok(summary)
}

/// summary.json and loss.svg.
fn write_outputs(out: &Path, summary: &Summary) -> Result<()> {
    crate::io::metrics::write_summary(out, summary)?;
    plot::loss_plot(&[plot::read_run(out)?], &out.join("loss.svg"))
}

/// Checks that every rank holds the same parameters (they take the same steps on the same
/// values; ranks on different kinds of device could round differently and drift apart).
fn check_in_step<B: Backend>(comm: &dyn Collective, trainer: &Trainer<B>, epoch: usize) -> Result<()> {
    let theta = trainer.parameters()?;
    // FNV-1a over the parameters' bits
    let hash = theta.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
        (h ^ v.to_bits() as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut leader = hash.to_le_bytes().to_vec();
    comm.broadcast_bytes("parameter check", 0, &mut leader)?;
    let ((), differs) = dist::agree_flags(
        comm,
        "parameter check",
        Ok::<_, Error>(()),
        &[leader != hash.to_le_bytes()],
    )?;
    if differs[0] {
        return Err(Error::Ranks(format!(
            "after epoch {epoch} the ranks hold different parameters: run every rank on the same kind of device"
        )));
    }
    Ok(())
}

/// The summary of a run standing at `progress` whose last figures over the whole sets are `last`.
#[allow(clippy::too_many_arguments)]
fn summarize<B: Backend>(
    cfg: &RunConfig,
    prepared: &Prepared,
    trainer: &Trainer<B>,
    device: (&str, &str),
    last: &EpochRow,
    progress: &Progress,
    spent: Option<&Phases>,
    device_counts: Option<(SyncCounts, u64, usize)>,
    (ranks, moved, steps_here): (usize, &Traffic, usize),
    interrupted: bool,
) -> Summary {
    let steps = trainer.steps();
    Summary {
        train_loss: last.train_loss,
        train_objective: last.train_objective,
        train_accuracy: last.train_accuracy,
        val: prepared.val.as_ref().map(|_| Validation {
            val_loss: last.val_loss,
            val_accuracy: last.val_accuracy,
        }),
        steps,
        epochs: last.epoch,
        wall_s: progress.wall_s,
        device: device.0.into(),
        adapter: device.1.into(),
        config: config_json(cfg, &prepared.mlp, trainer.curvature()),
        interrupted,
        profile_ms_per_step: spent.map(|spent| {
            PHASES
                .iter()
                .zip(spent.0)
                .map(|(name, s)| (name.to_string(), 1e3 * s / steps.max(1) as f64))
                .collect()
        }),
        profile: device_counts.map(|(total, most, taken)| {
            let taken = taken.max(1) as f64;
            DeviceProfile {
                submissions_per_step: total.submissions as f64 / taken,
                host_syncs_per_step: total.host_syncs as f64 / taken,
                max_host_syncs_per_step: most,
            }
        }),
        ranks: (ranks > 1).then_some(ranks),
        communication_per_step: (ranks > 1).then(|| {
            let per = steps_here.max(1) as f64;
            moved
                .0
                .iter()
                .map(|(what, f)| {
                    let flow = FlowPerStep {
                        collective: f.op,
                        calls: f.calls as f64 / per,
                        bytes: f.bytes as f64 / per,
                        ms: 1e3 * f.seconds / per,
                    };
                    (what.to_string(), flow)
                })
                .collect()
        }),
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
