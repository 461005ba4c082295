//! `kfac`: K-FAC (Martens & Grosse 2015). Per layer the Kronecker factors `A = E[āāᵀ]` and
//! `S = E[δδᵀ]` under the chosen Fisher kind, kept as moving averages, with factored Tikhonov
//! damping; the step is `S⁻¹ ∇W A⁻¹` per layer, two small products. The trust region's `dᵀFd` is
//! the exact Fisher's, from one matrix-free product, so `--kl` means what it means elsewhere.

use super::factors::{self, KroneckerFactors, KroneckerForm};
use super::{At, Curvature, CurvatureSettings, DampingDiagonal, Limits, Need, Representation, Shape, implicit};
use crate::backend::{Backend, CgOutcome, CgParams, CgReport};
use crate::error::Result;
use crate::model::Mlp;
use crate::snapshot::Snapshot;

pub struct Kfac;

impl Representation for Kfac {
    const NAME: &'static str = "kfac";

    fn needs(shape: &Shape, _: &Limits) -> Vec<Need> {
        factors::needs(shape)
    }

    fn create<'a, B: Backend + 'a>(
        b: &B,
        mlp: &Mlp,
        settings: &CurvatureSettings,
    ) -> Result<Box<dyn Curvature<B> + 'a>> {
        Ok(Box::new(KroneckerFactored::<B> {
            factors: KroneckerFactors::new(b, mlp, settings.kfac, KroneckerForm::Factored)?,
            d: DampingDiagonal::new(mlp),
        }))
    }
}

struct KroneckerFactored<B: Backend> {
    factors: KroneckerFactors<B>,
    d: DampingDiagonal<B>,
}

impl<B: Backend> Curvature<B> for KroneckerFactored<B> {
    fn prefetch(&mut self, b: &B, at: &mut At<'_, B>) -> Result<()> {
        self.factors.record(b, at)
    }

    fn build(&mut self, b: &B, at: &mut At<'_, B>) -> Result<()> {
        self.factors.update(b, at)
    }

    fn solve(
        &mut self,
        b: &B,
        at: &mut At<'_, B>,
        damping: f32,
        g: &B::Vector,
        d: &mut B::Vector,
        _: &CgParams,
    ) -> Result<CgReport> {
        self.factors
            .prepare(b, at.mlp, damping + at.weight_decay, at.ranks.comm)?;
        self.factors.apply(b, at.mlp, g, d, at.ranks.comm)?;
        // no iteration, and no residual of the exact system measured
        Ok(CgReport {
            iterations: 0,
            rel_residual: f32::NAN,
            rhs_sq: 0.0,
            outcome: CgOutcome::Converged,
        })
    }

    fn quad(&mut self, b: &B, at: &mut At<'_, B>, damping: f32, d: &B::Vector) -> Result<f64> {
        let diag = self.d.get(b, damping, at.weight_decay)?;
        implicit::quad(b, at, diag, d)
    }
    fn save(&self, b: &B, snapshot: &mut Snapshot) -> Result<()> {
        self.factors.save(b, snapshot, "curvature.kfac")
    }

    fn load(&mut self, b: &B, snapshot: &Snapshot) -> Result<()> {
        self.factors.load(b, snapshot, "curvature.kfac")
    }

    fn persists(&self) -> bool {
        true
    }
}
