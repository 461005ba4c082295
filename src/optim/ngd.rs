//! The natural-gradient step: build F on the batch, solve (F + λI) d = g by conjugate gradient
//! from the last step's d, choose η (fixed, or the KL trust region), move θ ← θ − ηd, and, with
//! adaptive damping, compare the objective's actual decrease with the quadratic model's.

use super::{NgdConfig, OptimConfig, UpdateInfo};
use crate::backend::Backend;
use crate::error::Result;
use crate::fisher::SampleKey;
use crate::fisher::curvature::Curvature;
use crate::model::Mlp;

/// Levenberg–Marquardt factors (Martens 2010): λ ·= 2/3 after a step that did better than 3/4 of
/// its predicted decrease, λ ·= 3/2 after one that did worse than 1/4 of it.
const DAMPING_SHRINK: f32 = 2.0 / 3.0;
const DAMPING_GROW: f32 = 1.5;
/// Adaptive damping stays in this range: below it CG meets F's null space, above it the step is
/// plain gradient descent with a tiny rate.
const DAMPING_RANGE: (f32, f32) = (1e-8, 1e4);

/// The inputs of one update.
pub struct StepInput<'a, B: Backend> {
    pub mlp: &'a Mlp,
    pub batch: &'a mut B::Batch,
    pub theta: &'a mut B::Vector,
    pub g: &'a B::Vector,
    /// The objective at θ on this batch (for adaptive damping's ratio).
    pub objective: f64,
    /// 1 on weights, 0 on biases.
    pub weight_mask: &'a B::Vector,
    pub key: SampleKey,
}

/// Natural gradient's state: the curvature in its representation, the last direction (CG's
/// warm start) and λ.
pub struct Ngd<B: Backend> {
    curvature: Curvature<B>,
    d: B::Vector,
    damping: f32,
}

impl<B: Backend> Ngd<B> {
    pub fn new(b: &B, config: &NgdConfig, mlp: &Mlp) -> Result<Self> {
        Ok(Self {
            curvature: Curvature::new(b, config.curvature, mlp)?,
            d: b.zeros_vector("natural direction d", mlp.num_params())?,
            damping: config.damping,
        })
    }

    /// The objective on the batch at the given θ: mean NLL + (wd/2)‖W‖².
    fn objective(b: &B, config: &OptimConfig, step: &mut StepInput<'_, B>) -> Result<f64> {
        b.forward(step.mlp, step.theta, step.batch)?;
        let loss = b.batch_loss(step.mlp, step.batch)?.loss;
        let decay = if config.weight_decay > 0.0 {
            0.5 * config.weight_decay as f64 * b.weighted_dot(step.theta, step.weight_mask, step.theta)?
        } else {
            0.0
        };
        Ok(loss + decay)
    }

    pub fn update(&mut self, b: &B, config: &OptimConfig, step: &mut StepInput<'_, B>) -> Result<UpdateInfo> {
        let ngd = &config.ngd;
        let lambda = self.damping;
        let wd = config.weight_decay;
        self.curvature
            .build(b, step.mlp, step.theta, step.batch, ngd.fisher, step.key, wd)?;
        let report = self.curvature.solve(b, lambda, wd, step.g, &mut self.d, &ngd.cg)?;
        // dᵀ(F + λI)d: the damped curvature CG solved with. Measured without λ, directions in F's
        // null space would cost nothing and a trust region could not bound them.
        let dfd = self.curvature.quad(b, lambda, wd, &self.d)?;
        let lr = config.lr as f64;
        let eta = if ngd.kl > 0.0 && dfd > 0.0 {
            lr.min((2.0 * ngd.kl as f64 / dfd).sqrt())
        } else {
            lr
        };
        let gd = if ngd.adaptive_damping {
            b.dot(step.g, &self.d)?
        } else {
            0.0
        };
        b.axpy(-eta as f32, &self.d, step.theta)?;
        if ngd.adaptive_damping {
            // ρ = actual / predicted decrease, the model being q(−ηd) = −η gᵀd + ½η² dᵀFd
            let predicted = eta * gd - 0.5 * eta * eta * dfd;
            let actual = step.objective - Self::objective(b, config, step)?;
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
            cg_rel_residual: Some(report.rel_residual),
            cg_outcome: Some(report.outcome),
            damping: Some(lambda),
        })
    }
}
