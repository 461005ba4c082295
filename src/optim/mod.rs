//! Optimisers behind one trait, one file each: natural gradient ([`ngd`]: fixed step or KL trust
//! region, fixed or adaptive damping, any curvature representation) and the first-order baselines
//! [`sgd`] (with momentum) and [`adam`]. Each has a config type whose `Default` is the command
//! line's default. A new optimiser is a file, a variant of [`OptimizerKind`] and an arm of
//! [`create`].

pub mod adam;
pub mod ngd;
pub mod sgd;

pub use adam::AdamConfig;
pub use ngd::NgdConfig;
pub use sgd::SgdConfig;

use crate::backend::{Backend, CgOutcome};
use crate::curvature::CurvatureKind;
use crate::dist::Ranks;
use crate::error::{Error, Result};
use crate::model::{Mlp, SampleKey};
use crate::snapshot::Snapshot;

/// Which update rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum OptimizerKind {
    #[default]
    Ngd,
    Sgd,
    Adam,
}

impl OptimizerKind {
    pub const ALL: [OptimizerKind; 3] = [OptimizerKind::Ngd, OptimizerKind::Sgd, OptimizerKind::Adam];

    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Ngd => "ngd",
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
        }
    }
}

/// Everything an optimiser needs to know: which one, every optimiser's settings (so a command
/// line can fill them all), and the weight decay the objective and the curvature share.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OptimConfig {
    pub kind: OptimizerKind,
    pub ngd: NgdConfig,
    pub sgd: SgdConfig,
    pub adam: AdamConfig,
    /// Coefficient of (wd/2)‖W‖² in the objective, weights only.
    pub weight_decay: f32,
}

impl OptimConfig {
    /// `kind` at learning rate `lr`, every other setting at its default.
    pub fn new(kind: OptimizerKind, lr: f32) -> Self {
        Self {
            kind,
            ..Self::default()
        }
        .with_lr(lr)
    }

    /// The chosen optimiser's learning rate.
    pub fn lr(&self) -> f32 {
        match self.kind {
            OptimizerKind::Ngd => self.ngd.lr,
            OptimizerKind::Sgd => self.sgd.lr,
            OptimizerKind::Adam => self.adam.lr,
        }
    }

    /// Sets the chosen optimiser's learning rate.
    pub fn with_lr(mut self, lr: f32) -> Self {
        match self.kind {
            OptimizerKind::Ngd => self.ngd.lr = lr,
            OptimizerKind::Sgd => self.sgd.lr = lr,
            OptimizerKind::Adam => self.adam.lr = lr,
        }
        self
    }

    /// Checks every setting is in range (those of the optimisers not chosen too: a bad value is
    /// a mistake wherever it is).
    pub fn validate(&self) -> Result<()> {
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(bad(
                "--weight-decay",
                format!("{} is not a non-negative number", self.weight_decay),
            ));
        }
        self.ngd.validate()?;
        self.sgd.validate()?;
        self.adam.validate()
    }

    /// One line saying what runs, for the command line.
    pub fn describe(&self) -> String {
        match self.kind {
            OptimizerKind::Ngd => self.ngd.describe(),
            OptimizerKind::Sgd => self.sgd.describe(),
            OptimizerKind::Adam => self.adam.describe(),
        }
    }
}

/// An out-of-range setting.
pub(crate) fn bad(name: &'static str, reason: String) -> Error {
    Error::InvalidArgument { name, reason }
}

/// Checks a learning rate is a positive number.
pub(crate) fn check_lr(lr: f32) -> Result<()> {
    if !(lr.is_finite() && lr > 0.0) {
        return Err(bad("--lr", format!("{lr} is not a positive number")));
    }
    Ok(())
}

/// What an update did, beyond the loss (which the trainer measures).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UpdateInfo {
    /// η: the multiple of the direction taken.
    pub step_size: f32,
    /// ½η²dᵀFd, natural gradient only.
    pub kl_pred: Option<f64>,
    pub cg_iters: Option<usize>,
    pub cg_rel_residual: Option<f32>,
    pub cg_outcome: Option<CgOutcome>,
    /// λ used by this step, natural gradient only.
    pub damping: Option<f32>,
}

/// The inputs of one update.
pub struct StepInput<'a, B: Backend> {
    pub mlp: &'a Mlp,
    /// The batch, its forward pass at θ done.
    pub batch: &'a mut B::Batch,
    /// The examples the curvature is taken on when fewer than the batch's (their forward pass at
    /// θ done); `None`: the batch itself.
    pub curvature_batch: Option<&'a mut B::Batch>,
    pub theta: &'a mut B::Vector,
    /// The gradient of the objective at θ on the batch.
    pub g: &'a B::Vector,
    /// The objective at θ on this batch (for adaptive damping's ratio).
    pub objective: f64,
    /// 1 on weights, 0 on biases.
    pub weight_mask: &'a B::Vector,
    pub weight_decay: f32,
    pub key: SampleKey,
    /// The batch across the ranks (its means become the batch's through it).
    pub ranks: Ranks<'a>,
    /// The curvature examples across the ranks.
    pub curvature_ranks: Ranks<'a>,
}

/// An optimiser's state on a device.
pub trait Optimizer<B: Backend> {
    /// Moves θ one step, given the gradient g at θ (and, for natural gradient, the batch's
    /// forward pass at θ and its objective value).
    fn update(&mut self, b: &B, step: &mut StepInput<'_, B>) -> Result<UpdateInfo>;

    /// Records, before the step's first wait (its `objective` not yet known), device work the
    /// update will read back, so that it comes back with the step's loss: natural gradient's
    /// K-FAC statistics.
    fn prefetch(&mut self, _b: &B, _step: &mut StepInput<'_, B>) -> Result<()> {
        Ok(())
    }

    /// Writes everything the next update depends on into `snapshot` (names under `optimizer.`).
    fn save(&self, b: &B, snapshot: &mut Snapshot) -> Result<()>;

    /// Restores what [`Optimizer::save`] wrote: the next update is then the one an unbroken
    /// run would have taken.
    fn load(&mut self, b: &B, snapshot: &Snapshot) -> Result<()>;
}

/// Fresh state of the optimiser `config` chooses, for the model's parameters; `curvature` is the
/// planned representation natural gradient holds.
pub fn create<'a, B: Backend + 'a>(
    b: &B,
    config: &OptimConfig,
    mlp: &Mlp,
    curvature: CurvatureKind,
) -> Result<Box<dyn Optimizer<B> + 'a>> {
    Ok(match config.kind {
        OptimizerKind::Ngd => Box::new(ngd::Ngd::new(b, config.ngd, curvature, mlp)?),
        OptimizerKind::Sgd => Box::new(sgd::Sgd::new(b, config.sgd, mlp)?),
        OptimizerKind::Adam => Box::new(adam::Adam::new(b, config.adam, mlp)?),
    })
}
