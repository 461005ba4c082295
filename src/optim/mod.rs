//! Optimisers: natural gradient (fixed step or KL trust region, fixed or adaptive damping) and
//! the first-order baselines SGD (with momentum) and Adam, all on the same device loop.

pub mod ngd;

pub use crate::backend::optim::AdamStep;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::fisher::FisherKind;
use crate::fisher::curvature::CurvatureKind;
use crate::model::Mlp;
use crate::solve::{CgOutcome, CgParams};

/// Which update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    Ngd,
    Sgd,
    Adam,
}

impl OptimizerKind {
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Ngd => "ngd",
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
        }
    }
}

/// How natural gradient builds and uses the curvature.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NgdConfig {
    pub fisher: FisherKind,
    /// λ in (F + λI) d = g; the starting value when adaptive.
    pub damping: f32,
    /// Levenberg–Marquardt: shrink λ when the step did better than predicted, grow it when worse.
    pub adaptive_damping: bool,
    /// KL trust region c: η = min(lr, √(2c / dᵀFd)); 0 turns it off (η = lr).
    pub kl: f32,
    pub cg: CgParams,
    /// How the curvature is held (dense, implicit, woodbury, block, diagonal).
    pub curvature: CurvatureKind,
}

/// Everything an optimiser needs to know.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimConfig {
    pub kind: OptimizerKind,
    pub lr: f32,
    /// SGD's momentum μ.
    pub momentum: f32,
    /// Adam's β1, β2, ε.
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Coefficient of (wd/2)‖W‖² in the objective, weights only.
    pub weight_decay: f32,
    pub ngd: NgdConfig,
}

impl OptimConfig {
    /// `kind` at learning rate `lr` with the command line's other defaults: momentum 0.9, Adam's
    /// (0.9, 0.999, 1e-8), no weight decay; natural gradient with the exact Fisher, λ 1e-3, a KL
    /// trust region of 0.01, 50 CG iterations to 1e-3, the dense curvature.
    pub fn new(kind: OptimizerKind, lr: f32) -> Self {
        Self {
            kind,
            lr,
            momentum: 0.9,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            ngd: NgdConfig {
                fisher: FisherKind::Exact,
                damping: 1e-3,
                adaptive_damping: false,
                kl: 0.01,
                cg: CgParams {
                    max_iters: 50,
                    rel_tol: 1e-3,
                },
                curvature: CurvatureKind::Dense,
            },
        }
    }

    /// Checks every setting is in range.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, reason: String| Err(Error::InvalidArgument { name, reason });
        let positive = |v: f32| v.is_finite() && v > 0.0;
        let non_negative = |v: f32| v.is_finite() && v >= 0.0;
        if !positive(self.lr) {
            return bad("--lr", format!("{} is not a positive number", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("--momentum", format!("{} is not in [0, 1)", self.momentum));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) || !positive(self.eps) {
            return bad(
                "Adam's β1, β2, ε",
                format!("{}, {}, {}", self.beta1, self.beta2, self.eps),
            );
        }
        if !non_negative(self.weight_decay) {
            return bad(
                "--weight-decay",
                format!("{} is not a non-negative number", self.weight_decay),
            );
        }
        if !non_negative(self.ngd.kl) {
            return bad("--kl", format!("{} is not a non-negative number", self.ngd.kl));
        }
        if let FisherKind::Sampled { draws: 0 } = self.ngd.fisher {
            return bad("--draws", "need at least one draw per example".into());
        }
        self.ngd.cg.validate(self.ngd.damping)
    }
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

/// An optimiser's state on the device.
pub enum Optimizer<B: Backend> {
    Ngd(ngd::Ngd<B>),
    Sgd { velocity: B::Vector },
    Adam { m: B::Vector, v: B::Vector, t: u32 },
}

impl<B: Backend> Optimizer<B> {
    /// Fresh state for the model's parameters.
    pub fn new(b: &B, config: &OptimConfig, mlp: &Mlp) -> Result<Self> {
        let p = mlp.num_params();
        Ok(match config.kind {
            OptimizerKind::Ngd => Optimizer::Ngd(ngd::Ngd::new(b, &config.ngd, mlp)?),
            OptimizerKind::Sgd => Optimizer::Sgd {
                velocity: b.zeros_vector("SGD velocity", p)?,
            },
            OptimizerKind::Adam => Optimizer::Adam {
                m: b.zeros_vector("Adam first moment", p)?,
                v: b.zeros_vector("Adam second moment", p)?,
                t: 0,
            },
        })
    }

    /// Moves θ one step, given the gradient g at θ (and, for natural gradient, the batch's forward
    /// pass at θ and its objective value).
    pub fn update(&mut self, b: &B, config: &OptimConfig, step: &mut ngd::StepInput<'_, B>) -> Result<UpdateInfo> {
        match self {
            Optimizer::Ngd(ngd) => ngd.update(b, config, step),
            Optimizer::Sgd { velocity } => {
                b.sgd_step(step.theta, step.g, velocity, config.lr, config.momentum)?;
                Ok(UpdateInfo {
                    step_size: config.lr,
                    ..Default::default()
                })
            }
            Optimizer::Adam { m, v, t } => {
                *t += 1;
                let adam = AdamStep {
                    lr: config.lr,
                    beta1: config.beta1,
                    beta2: config.beta2,
                    eps: config.eps,
                    t: *t,
                };
                b.adam_step(step.theta, step.g, m, v, adam)?;
                Ok(UpdateInfo {
                    step_size: config.lr,
                    ..Default::default()
                })
            }
        }
    }
}
