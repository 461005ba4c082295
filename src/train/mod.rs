//! The update loop. [`Trainer`] owns the parameters and optimiser state on a device and takes one
//! step per batch: upload, forward, loss, gradient, then the optimiser's update (for natural
//! gradient: curvature → solve → step), with the data on the device throughout the step and only a
//! few scalars read back. [`run`] drives it over epochs and writes a run directory; [`Summary`] is
//! what a run reports.

pub mod dir;
mod run;
pub mod shard;
mod summary;

pub use run::{Event, Every, Prepared, RunConfig, default_out, prepare, request_stop, resume_config, run, run_ranks};
pub use summary::{DeviceProfile, FlowPerStep, Summary, Validation, config_json};

use crate::backend::{Backend, Phase};
use crate::curvature::{CurvatureKind, Limits, Shape, plan};
use crate::data::Dataset;
use crate::dist::{Collective, Ranks, Solo, split};
use crate::error::{Error, Result};
use crate::model::{Mlp, SampleKey};
use crate::optim::{self, OptimConfig, Optimizer, OptimizerKind, StepInput, UpdateInfo};
use crate::snapshot::Snapshot;

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
/// forward pass (the objective here is the loss: callers add weight decay). A rank holding no
/// examples of a set reports zeros (it weighs nothing in the set's means).
pub fn evaluate<B: Backend>(b: &B, mlp: &Mlp, theta: &B::Vector, data: &Dataset) -> Result<Evaluation> {
    let accuracy = mlp.likelihood().is_classification().then_some(0.0);
    if data.n == 0 {
        return Ok(Evaluation {
            loss: 0.0,
            objective: 0.0,
            accuracy,
        });
    }
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
    let accuracy = accuracy.map(|_| correct / data.n as f64);
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
    optimizer: Box<dyn Optimizer<B> + 'b>,
    /// natural gradient's planned curvature representation, and what the plan said of it
    curvature: Option<(CurvatureKind, String)>,
    steps: usize,
    seed: u32,
    /// the ranks this trainer's batches are split across ([`Solo`] in one process)
    comm: &'b dyn Collective,
}

/// One rank's examples of a batch (all of it in one process): its run of the batch's curvature
/// examples, then its run of the others (see [`split`]), and where they stand in the batch.
#[derive(Clone, Copy, Debug)]
pub struct Examples<'a> {
    /// `local` × inputs, row-major, the curvature examples first
    pub x: &'a [f32],
    /// their targets
    pub y: &'a [f32],
    /// examples here, and in the whole batch
    pub local: usize,
    pub total: usize,
    /// curvature examples here (the first ones), and in the whole batch
    pub curvature_local: usize,
    pub curvature_total: usize,
    /// where this rank's first curvature example stands among the batch's
    pub first: usize,
}

/// Examples per step for `--batch batch` (0: the full batch) over a training set of `n`.
pub fn examples_per_step(batch: usize, n: usize) -> usize {
    if batch == 0 { n } else { batch.min(n) }
}

impl<'b, B: Backend> Trainer<'b, B> {
    /// Starts from `theta0` for batches of `examples` per step; `seed` keys the sampled Fisher's
    /// draws. Natural gradient's curvature is planned here (`auto` resolved, and every buffer
    /// checked against the device) before anything is allocated.
    pub fn new(b: &'b B, mlp: Mlp, theta0: &[f32], config: OptimConfig, examples: usize, seed: u64) -> Result<Self> {
        Self::within(b, &Limits::of(b), mlp, theta0, config, examples, seed)
    }

    /// [`Trainer::new`] planned within `limits` (ranks plan within the least of theirs).
    pub fn within(
        b: &'b B,
        limits: &Limits,
        mlp: Mlp,
        theta0: &[f32],
        config: OptimConfig,
        examples: usize,
        seed: u64,
    ) -> Result<Self> {
        config.validate()?;
        mlp.check_params(theta0.len())?;
        let curvature = Self::plan(limits, &mlp, &config, examples)?;
        let kind = curvature.as_ref().map_or(CurvatureKind::Dense, |c| c.0);
        let p = mlp.num_params();
        Ok(Self {
            theta: b.upload_vector("parameters θ", theta0)?,
            last_good: b.upload_vector("last good θ", theta0)?,
            g: b.zeros_vector("gradient g", p)?,
            weight_mask: b.upload_vector("weight mask", &mlp.weight_mask())?,
            optimizer: optim::create(b, &config, &mlp, kind)?,
            curvature,
            b,
            mlp,
            config,
            steps: 0,
            seed: seed as u32,
            comm: &Solo,
        })
    }

    /// The trainer for ranks that split each batch among them over `comm` (every rank makes its
    /// trainer alike, from the same θ).
    pub fn on_ranks(mut self, comm: &'b dyn Collective) -> Self {
        self.comm = comm;
        self
    }

    /// Checks that training `mlp` with `config` on batches of `examples` fits `limits` (every buffer
    /// against the largest one and the memory available) before anything is allocated, and
    /// resolves natural gradient's curvature (`auto` included): the representation and what
    /// the plan said of it.
    pub fn plan(
        limits: &Limits,
        mlp: &Mlp,
        config: &OptimConfig,
        examples: usize,
    ) -> Result<Option<(CurvatureKind, String)>> {
        let p = mlp.num_params();
        match config.kind {
            OptimizerKind::Ngd => {
                let rows = match config.ngd.curvature_batch {
                    0 => examples,
                    c => c.min(examples),
                };
                let shape = Shape::of(mlp, rows.max(1), config.ngd.fisher);
                let cadence = plan::Cadence {
                    cg_iters: config.ngd.cg.max_iters,
                    inverse_every: config.ngd.settings.kfac.inverse_every,
                };
                Ok(Some(plan::resolve(config.ngd.curvature, &shape, limits, cadence)?))
            }
            kind => {
                // θ, the last good θ, g, the weight mask, the host's two copies, and the state
                let state = if kind == OptimizerKind::Adam { 2 } else { 1 };
                let what = format!(", for --optimizer {}", kind.name());
                plan::check(&[plan::vectors(6 + state, p)], limits, &what, "use a smaller model")?;
                Ok(None)
            }
        }
    }

    /// The curvature representation natural gradient holds (`None` for other optimisers).
    pub fn curvature(&self) -> Option<CurvatureKind> {
        self.curvature.as_ref().map(|c| c.0)
    }

    /// What the memory plan chose for natural gradient, and why.
    pub fn plan_notice(&self) -> Option<&str> {
        self.curvature.as_ref().map(|c| c.1.as_str())
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
        let n = y.len() / self.mlp.likelihood().target_width().max(1);
        let curvature = match self.config.kind {
            OptimizerKind::Ngd => split::effective_curvature(n, self.config.ngd.curvature_batch),
            _ => n,
        };
        self.step_on(&Examples {
            x,
            y,
            local: n,
            total: n,
            curvature_local: curvature,
            curvature_total: curvature,
            first: 0,
        })
    }

    /// One update on a batch of which this rank holds `examples` (all of it in one process):
    /// each rank computes its means, the ranks' collective makes them the batch's, and every rank
    /// takes the same step.
    pub fn step_on(&mut self, examples: &Examples) -> Result<StepStats> {
        let b = self.b;
        let comm = self.comm;
        let step = self.steps + 1;
        let (x, y) = (examples.x, examples.y);
        let batch_ranks = Ranks {
            comm,
            local: examples.local,
            total: examples.total,
        };
        let curvature_ranks = Ranks {
            comm,
            local: examples.curvature_local,
            total: examples.curvature_total,
        };
        b.begin_phase(Phase::Forward);
        let mut batch = b.upload_batch(&self.mlp, x, y)?;
        b.forward(&self.mlp, &self.theta, &mut batch)?;
        b.begin_phase(Phase::Gradient);
        b.gradient(
            &self.mlp,
            &self.theta,
            &mut batch,
            self.config.weight_decay,
            &mut self.g,
        )?;
        // across ranks: the batch's gradient from the ranks' (‖g‖² then known here)
        let shared_grad_sq = if batch_ranks.is_solo() {
            None
        } else {
            let mut g = b.download_vector(&self.g)?;
            batch_ranks.mean_f32("gradient", &mut g)?;
            let sq: f64 = g.iter().map(|&v| (v as f64).powi(2)).sum();
            // a non-finite gradient is reported as divergence below, after the loss
            if sq.is_finite() {
                self.g = b.upload_vector("gradient g", &g)?;
            }
            Some(sq)
        };
        // Martens' curvature mini-batch: the first examples of the batch, their own forward pass
        let curvature_rows = examples.curvature_local;
        b.begin_phase(Phase::Forward);
        let mut curvature = if self.config.kind == OptimizerKind::Ngd && curvature_rows < examples.local {
            let (d, t) = (self.mlp.inputs(), self.mlp.likelihood().target_width());
            let mut sub = b.upload_batch(&self.mlp, &x[..curvature_rows * d], &y[..curvature_rows * t])?;
            b.forward(&self.mlp, &self.theta, &mut sub)?;
            Some(sub)
        } else {
            None
        };
        let decay = self.config.weight_decay;
        let mut input = StepInput {
            mlp: &self.mlp,
            batch: &mut batch,
            curvature_batch: curvature.as_mut(),
            theta: &mut self.theta,
            g: &self.g,
            // known after the first wait, below
            objective: f64::NAN,
            weight_mask: &self.weight_mask,
            weight_decay: decay,
            key: SampleKey {
                seed: self.seed,
                step: step as u32,
                first: examples.first as u32,
            },
            ranks: batch_ranks,
            curvature_ranks,
        };
        // what the update reads back (K-FAC's statistics) is recorded now, to come back with:
        // the loss, ‖g‖² and ‖W‖², read together, the step's first wait on the device
        b.begin_phase(Phase::Fisher);
        self.optimizer.prefetch(b, &mut input)?;
        b.begin_phase(Phase::Gradient);
        let weights = (decay > 0.0).then_some(input.weight_mask);
        let scalars = b.step_scalars(input.mlp, input.batch, input.g, input.theta, weights)?;
        let mut loss = [scalars.loss.loss, scalars.loss.accuracy];
        batch_ranks.mean_f64("loss", &mut loss)?;
        let [loss, accuracy] = loss;
        if !loss.is_finite() {
            return Err(Error::Diverged {
                what: "loss",
                value: loss,
                step,
                kept: None,
            });
        }
        let objective = loss + 0.5 * decay as f64 * scalars.weight_sq;
        let grad_norm = shared_grad_sq.unwrap_or(scalars.grad_sq).sqrt();
        if !grad_norm.is_finite() {
            return Err(Error::Diverged {
                what: "gradient norm",
                value: grad_norm,
                step,
                kept: None,
            });
        }
        // θ's loss is finite: these are the parameters kept should the update diverge (recorded
        // here, the copy still precedes the update on the device)
        b.copy(input.theta, &mut self.last_good)?;
        input.objective = objective;
        let update = self.optimizer.update(b, &mut input)?;
        self.steps = step;
        let accuracy = self.mlp.likelihood().is_classification().then_some(accuracy);
        Ok(StepStats {
            loss,
            objective,
            accuracy,
            grad_norm,
            update,
        })
    }

    /// Loss, objective and accuracy over all of `data` at the current θ.
    pub fn evaluate(&self, data: &Dataset) -> Result<Evaluation> {
        self.evaluate_part(data, data.n)
    }

    /// [`Trainer::evaluate`] over a set of `total` examples of which this rank holds `data`.
    pub fn evaluate_part(&self, data: &Dataset, total: usize) -> Result<Evaluation> {
        let mut e = evaluate(self.b, &self.mlp, &self.theta, data)?;
        let ranks = Ranks {
            comm: self.comm,
            local: data.n,
            total,
        };
        let mut means = [e.loss, e.accuracy.unwrap_or(0.0)];
        ranks.mean_f64("evaluation", &mut means)?;
        e.loss = means[0];
        e.accuracy = e.accuracy.map(|_| means[1]);
        e.objective = e.loss + self.decay_term()?;
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

    /// Writes the trainer's whole state (parameters, the last good ones, steps, the optimiser's)
    /// into `snapshot`.
    pub fn save(&self, snapshot: &mut Snapshot) -> Result<()> {
        snapshot.put_f32("trainer.theta", self.parameters()?);
        snapshot.put_f32("trainer.last_good", self.last_good_parameters()?);
        snapshot.put("trainer.steps", self.steps);
        self.optimizer.save(self.b, snapshot)
    }

    /// Restores what [`Trainer::save`] wrote into a trainer made with the same model and
    /// settings: its next step is the one the saved trainer would have taken.
    pub fn load(&mut self, snapshot: &Snapshot) -> Result<()> {
        let p = self.mlp.num_params();
        self.theta = self
            .b
            .upload_vector("parameters θ", &snapshot.f32s("trainer.theta", p)?)?;
        self.last_good = self
            .b
            .upload_vector("last good θ", &snapshot.f32s("trainer.last_good", p)?)?;
        self.steps = snapshot.get("trainer.steps")?;
        self.optimizer.load(self.b, snapshot)
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
