//! `implicit`: the exact Fisher applied matrix-free, `Av = (1/n) Σ J_iᵀ H_i J_i v + Dv` (one
//! forward-mode and one backward pass over the batch per CG iteration, D = λ + wd on weights),
//! solved by conjugate gradient preconditioned with K-FAC's factors (or not at all). Neither G nor
//! F is formed: memory O(batch × layer widths).

use super::factors::{self, KroneckerFactors, KroneckerForm};
use super::{
    At, Curvature, CurvatureSettings, DampingDiagonal, Limits, Need, PreconditionerKind, Representation, Shape,
};
use crate::backend::{Backend, CgParams, CgReport};
use crate::dist::Solo;
use crate::error::Result;
use crate::model::Mlp;
use crate::snapshot::Snapshot;
use crate::solve::{Operator, Preconditioner};

pub struct Implicit;

impl Representation for Implicit {
    const NAME: &'static str = "implicit";

    fn needs(shape: &Shape, _: &Limits) -> Vec<Need> {
        factors::needs(shape)
    }

    fn create<'a, B: Backend + 'a>(
        b: &B,
        mlp: &Mlp,
        settings: &CurvatureSettings,
    ) -> Result<Box<dyn Curvature<B> + 'a>> {
        let form = match settings.preconditioner {
            PreconditionerKind::Kfac => Some(KroneckerForm::Factored),
            PreconditionerKind::Diagonal => Some(KroneckerForm::Diagonal),
            PreconditionerKind::None => None,
        };
        let preconditioner = form
            .map(|form| KroneckerFactors::new(b, mlp, settings.kfac, form))
            .transpose()?;
        Ok(Box::new(MatrixFree::<B> {
            d: DampingDiagonal::new(mlp),
            progress: settings.cg_progress as f64,
            preconditioner,
        }))
    }
}

struct MatrixFree<B: Backend> {
    d: DampingDiagonal<B>,
    progress: f64,
    preconditioner: Option<KroneckerFactors<B>>,
}

impl<B: Backend> Curvature<B> for MatrixFree<B> {
    fn prefetch(&mut self, b: &B, at: &mut At<'_, B>) -> Result<()> {
        match &mut self.preconditioner {
            Some(factors) => factors.record(b, at),
            None => Ok(()),
        }
    }

    fn build(&mut self, b: &B, at: &mut At<'_, B>) -> Result<()> {
        match &mut self.preconditioner {
            Some(factors) => factors.update(b, at),
            None => Ok(()),
        }
    }

    fn solve(
        &mut self,
        b: &B,
        at: &mut At<'_, B>,
        damping: f32,
        g: &B::Vector,
        d: &mut B::Vector,
        cg: &CgParams,
    ) -> Result<CgReport> {
        let gamma = damping + at.weight_decay;
        let diag = self.d.get(b, damping, at.weight_decay)?;
        // across ranks every product is summed on the host, so the solve is the host's loop (a
        // GPU's recorded solve cannot stop for them); the ranks run it in step, on equal values
        let (mlp, ranks) = (at.mlp, at.ranks);
        let mut op = FisherOperator { at, diag };
        let mut m = match &mut self.preconditioner {
            Some(factors) => {
                factors.prepare(b, mlp, gamma, ranks.comm)?;
                Some(KfacPreconditioner { factors, mlp })
            }
            None => None,
        };
        let m = m.as_mut().map(|m| m as &mut dyn Preconditioner<B>);
        if ranks.is_solo() {
            b.pcg(&mut op, m, g, d, cg, self.progress)
        } else {
            crate::solve::cg_with_progress(b, &mut op, m, g, d, cg, self.progress)
        }
    }

    fn quad(&mut self, b: &B, at: &mut At<'_, B>, damping: f32, d: &B::Vector) -> Result<f64> {
        let diag = self.d.get(b, damping, at.weight_decay)?;
        quad(b, at, diag, d)
    }
    fn save(&self, b: &B, snapshot: &mut Snapshot) -> Result<()> {
        match &self.preconditioner {
            Some(factors) => factors.save(b, snapshot, "curvature.preconditioner"),
            None => Ok(()),
        }
    }

    fn load(&mut self, b: &B, snapshot: &Snapshot) -> Result<()> {
        match &mut self.preconditioner {
            Some(factors) => factors.load(b, snapshot, "curvature.preconditioner"),
            None => Ok(()),
        }
    }

    fn persists(&self) -> bool {
        true
    }
}

/// `dᵀ(F + D)d` by one forward-mode pass (no backward pass): the trust region's measure for every
/// representation that does not hold F.
pub(crate) fn quad<B: Backend>(b: &B, at: &mut At<'_, B>, diag: &B::Vector, d: &B::Vector) -> Result<f64> {
    let q = b.damped_fisher_quad(at.mlp, at.theta, at.batch, at.fisher, at.key, d, diag)?;
    at.ranks.mean_scalar("dᵀFd", q)
}

/// `v ↦ F v + D v`, F the batch's Fisher applied matrix-free.
pub(crate) struct FisherOperator<'s, 'a, B: Backend> {
    pub at: &'s mut At<'a, B>,
    pub diag: &'s B::Vector,
}

impl<B: Backend> Operator<B> for FisherOperator<'_, '_, B> {
    fn apply(&mut self, b: &B, x: &B::Vector, y: &mut B::Vector) -> Result<()> {
        let at = &mut *self.at;
        let n = b.batch_size(at.batch);
        b.fisher_product(at.mlp, at.theta, at.batch, at.fisher, at.key, x, 1.0 / n as f32, y)?;
        b.scale_add(self.diag, x, 1.0, y)?;
        at.ranks.mean_vector(b, "Fisher-vector products", y)
    }
}

/// `z = (A ⊗ S + γ)⁻¹ r` with K-FAC's factored damping (prepared for this solve's γ).
struct KfacPreconditioner<'s, B: Backend> {
    factors: &'s KroneckerFactors<B>,
    mlp: &'s Mlp,
}

impl<B: Backend> Preconditioner<B> for KfacPreconditioner<'_, B> {
    fn apply_inverse(&mut self, b: &B, r: &B::Vector, z: &mut B::Vector) -> Result<()> {
        // every rank applies all of it: sharing it out would cost a gather per CG iteration
        self.factors.apply(b, self.mlp, r, z, &Solo)
    }
}
