//! Natural gradient: build the curvature on the batch, solve `(F + wd·D_W + λI) d = g` from the
//! last step's d, choose η (fixed, or the KL trust region), move θ ← θ − ηd, and, with adaptive
//! damping, compare the objective's actual decrease with the quadratic model's.

use super::{Optimizer, StepInput, UpdateInfo, bad, check_lr};
use crate::backend::{Backend, CgParams, Phase};
use crate::curvature::{At, Curvature, CurvatureChoice, CurvatureKind, CurvatureSettings};
use crate::error::{Error, Result};
use crate::model::{FisherKind, Mlp};
use crate::snapshot::Snapshot;

/// Levenberg–Marquardt factors (Martens 2010): λ ·= 2/3 after a step that did better than 3/4 of
/// its predicted decrease, λ ·= 3/2 after one that did worse than 1/4 of it.
const DAMPING_SHRINK: f32 = 2.0 / 3.0;
const DAMPING_GROW: f32 = 1.5;
/// Adaptive damping stays in this range: below it CG meets F's null space, above it the step is
/// plain gradient descent with a tiny rate.
const DAMPING_RANGE: (f32, f32) = (1e-8, 1e4);

/// How natural gradient builds and uses the curvature.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NgdConfig {
    /// η, or with a trust region the largest η.
    pub lr: f32,
    pub fisher: FisherKind,
    /// λ in (F + λI) d = g; the starting value when adaptive.
    pub damping: f32,
    /// Levenberg–Marquardt: shrink λ when the step did better than predicted, grow it when worse.
    pub adaptive_damping: bool,
    /// KL trust region c: η = min(lr, √(2c / dᵀFd)); 0 turns it off (η = lr).
    pub kl: f32,
    pub cg: CgParams,
    /// How the curvature is held; `Auto` is resolved by the memory plan.
    pub curvature: CurvatureChoice,
    /// K-FAC's averaging and inverse cadence, and matrix-free CG's preconditioner.
    pub settings: CurvatureSettings,
    /// Steps between rebuilds of the curvature (its statistics for K-FAC); between them the last
    /// one is reused. Matrix-free products are always of the current batch.
    pub curvature_every: usize,
    /// CG starts from this multiple of the last direction (Martens 2010 decays it; 0: a cold start).
    pub warm_start: f32,
    /// Examples of each batch the curvature is taken on (Martens 2010's curvature mini-batch: the
    /// first ones); 0 uses the whole batch.
    pub curvature_batch: usize,
}

impl Default for NgdConfig {
    /// The exact Fisher with a KL trust region of 0.03, λ 1e-3, lr 1, 50 CG iterations to 1e-3,
    /// the curvature chosen by the plan: the settings the README's race chose (0.03 is the
    /// largest trust region the dense Fisher stays stable with on digits across seeds).
    fn default() -> Self {
        Self {
            lr: 1.0,
            fisher: FisherKind::Exact,
            damping: 1e-3,
            adaptive_damping: false,
            kl: 0.03,
            cg: CgParams {
                max_iters: 50,
                rel_tol: 1e-3,
            },
            curvature: CurvatureChoice::Auto,
            settings: CurvatureSettings::default(),
            curvature_every: 1,
            warm_start: 1.0,
            curvature_batch: 0,
        }
    }
}

impl NgdConfig {
    pub fn validate(&self) -> Result<()> {
        check_lr(self.lr)?;
        if !(self.kl.is_finite() && self.kl >= 0.0) {
            return Err(bad("--kl", format!("{} is not a non-negative number", self.kl)));
        }
        if self.cg.max_iters == 0 {
            return Err(bad(
                "--cg-iters",
                "0 iterations would never move: need at least 1".into(),
            ));
        }
        if let FisherKind::Sampled { draws: 0 } = self.fisher {
            return Err(bad("--draws", "need at least one draw per example".into()));
        }
        if self.curvature_every == 0 || self.settings.kfac.inverse_every == 0 {
            return Err(bad(
                "--curvature-every, --inverse-every",
                "need at least 1 step between refreshes".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.settings.kfac.decay) {
            return Err(bad(
                "--kfac-decay",
                format!("{} is not in [0, 1)", self.settings.kfac.decay),
            ));
        }
        if !(self.settings.cg_progress.is_finite() && self.settings.cg_progress >= 0.0) {
            return Err(bad(
                "--cg-progress",
                format!("{} is not a non-negative number", self.settings.cg_progress),
            ));
        }
        if let CurvatureChoice::Kind(kind @ (CurvatureKind::Diagonal | CurvatureKind::Woodbury)) = self.curvature
            && self.damping <= 0.0
        {
            // both divide by a diagonal: the Fisher's (0 for a weight of a pixel that is always
            // 0) or Woodbury's D = λ + wd (0 for every bias); with λ = 0 those steps are 0/0
            return Err(bad(
                "--damping",
                format!(
                    "--curvature {} divides by a diagonal that is 0 for some parameters without damping: give --damping > 0",
                    kind.name()
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.warm_start) {
            return Err(bad("--warm-start", format!("{} is not in [0, 1]", self.warm_start)));
        }
        self.cg.validate(self.damping)
    }

    pub fn describe(&self) -> String {
        format!(
            "ngd ({} Fisher, λ {}{}, {}lr {})",
            self.fisher.name(),
            self.damping,
            if self.adaptive_damping { " adaptive" } else { "" },
            if self.kl > 0.0 {
                format!("KL trust region {}, ", self.kl)
            } else {
                String::new()
            },
            self.lr
        )
    }
}

/// Natural gradient's state: the curvature in its representation, the last direction (CG's
/// warm start) and λ.
pub struct Ngd<'a, B: Backend> {
    config: NgdConfig,
    curvature: Box<dyn Curvature<B> + 'a>,
    d: B::Vector,
    damping: f32,
    /// updates taken (the curvature is rebuilt every `curvature_every` of them)
    steps: usize,
    /// rebuild at the next update whatever the cadence (after a resume that could not keep it)
    rebuild: bool,
}

impl<'a, B: Backend + 'a> Ngd<'a, B> {
    /// `curvature` is the representation the plan resolved `config.curvature` to.
    pub fn new(b: &B, config: NgdConfig, curvature: CurvatureKind, mlp: &Mlp) -> Result<Self> {
        Ok(Self {
            config,
            curvature: curvature.create(b, mlp, &config.settings)?,
            d: b.zeros_vector("natural direction d", mlp.num_params())?,
            damping: config.damping,
            steps: 0,
            rebuild: false,
        })
    }
}

impl<B: Backend> Ngd<'_, B> {
    /// Whether this step rebuilds the curvature.
    fn rebuild_due(&self) -> bool {
        self.rebuild || self.steps.is_multiple_of(self.config.curvature_every)
    }
}

/// Where the curvature of `step` is taken: its curvature batch, or the batch itself (a macro,
/// so that the step's other fields stay free to borrow).
macro_rules! at {
    ($step:expr, $config:expr) => {
        At {
            mlp: $step.mlp,
            theta: &*$step.theta,
            batch: match $step.curvature_batch.as_deref_mut() {
                Some(sub) => sub,
                None => &mut *$step.batch,
            },
            fisher: $config.fisher,
            key: $step.key,
            weight_decay: $step.weight_decay,
            ranks: $step.curvature_ranks,
        }
    };
}

impl<B: Backend> Optimizer<B> for Ngd<'_, B> {
    fn prefetch(&mut self, b: &B, step: &mut StepInput<'_, B>) -> Result<()> {
        if self.rebuild_due() {
            let config = self.config;
            self.curvature.prefetch(b, &mut at!(step, config))?;
        }
        Ok(())
    }

    fn update(&mut self, b: &B, step: &mut StepInput<'_, B>) -> Result<UpdateInfo> {
        let config = self.config;
        let lambda = self.damping;
        let rebuild = self.rebuild_due();
        let mut at = at!(step, config);
        if rebuild {
            b.begin_phase(Phase::Fisher);
            self.curvature.build(b, &mut at)?;
            self.rebuild = false;
        }
        self.steps += 1;
        if config.warm_start != 1.0 {
            let warm = b.zeros_vector("warm start", b.len(&self.d))?;
            b.xpby(&warm, config.warm_start, &mut self.d)?;
        }
        b.begin_phase(Phase::Solve);
        let report = self
            .curvature
            .solve(b, &mut at, lambda, step.g, &mut self.d, &config.cg)?;
        // dᵀ(F + λI)d: the damped curvature CG solved with. Measured without λ, directions in F's
        // null space would cost nothing and a trust region could not bound them.
        b.begin_phase(Phase::Update);
        let dfd = self.curvature.quad(b, &mut at, lambda, &self.d)?;
        let lr = config.lr as f64;
        let eta = if config.kl > 0.0 && dfd > 0.0 {
            lr.min((2.0 * config.kl as f64 / dfd).sqrt())
        } else {
            lr
        };
        let gd = if config.adaptive_damping {
            b.dot(step.g, &self.d)?
        } else {
            0.0
        };
        b.axpy(-eta as f32, &self.d, step.theta)?;
        if config.adaptive_damping {
            // ρ = actual / predicted decrease, the model being q(−ηd) = −η gᵀd + ½η² dᵀFd
            let predicted = eta * gd - 0.5 * eta * eta * dfd;
            let actual = step.objective - objective(b, step)?;
            let rho = actual / predicted;
            if rho > 0.75 {
                self.damping *= DAMPING_SHRINK;
            } else if rho < 0.25 || !rho.is_finite() {
                self.damping *= DAMPING_GROW;
            }
            self.damping = self.damping.clamp(DAMPING_RANGE.0, DAMPING_RANGE.1);
        }
        Ok(UpdateInfo {
            step_size: eta as f32,
            kl_pred: Some(0.5 * eta * eta * dfd),
            cg_iters: Some(report.iterations),
            cg_rel_residual: Some(report.rel_residual).filter(|r| !r.is_nan()),
            cg_outcome: Some(report.outcome),
            damping: Some(lambda),
        })
    }

    fn save(&self, b: &B, snapshot: &mut Snapshot) -> Result<()> {
        snapshot.put_f32("optimizer.d", b.download_vector(&self.d)?);
        snapshot.put("optimizer.damping", self.damping);
        snapshot.put("optimizer.steps", self.steps);
        self.curvature.save(b, snapshot)
    }

    fn load(&mut self, b: &B, snapshot: &Snapshot) -> Result<()> {
        let p = b.len(&self.d);
        self.d = b.upload_vector("natural direction d", &snapshot.f32s("optimizer.d", p)?)?;
        self.damping = snapshot.get("optimizer.damping")?;
        if !(self.damping.is_finite() && self.damping >= 0.0) {
            return Err(Error::Shape(format!(
                "training state: optimizer.damping {} is not a non-negative number",
                self.damping
            )));
        }
        self.steps = snapshot.get("optimizer.steps")?;
        self.rebuild = !self.curvature.persists();
        self.curvature.load(b, snapshot)
    }
}

/// The objective on the batch at the given θ: mean NLL + (wd/2)‖W‖².
fn objective<B: Backend>(b: &B, step: &mut StepInput<'_, B>) -> Result<f64> {
    b.forward(step.mlp, step.theta, step.batch)?;
    let loss = step
        .ranks
        .mean_scalar("loss", b.batch_loss(step.mlp, step.batch)?.loss)?;
    let decay = if step.weight_decay > 0.0 {
        0.5 * step.weight_decay as f64 * b.weighted_dot(step.theta, step.weight_mask, step.theta)?
    } else {
        0.0
    };
    Ok(loss + decay)
}
