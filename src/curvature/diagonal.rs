//! `diagonal`: the mean of the squared scores, the Adam-like approximation; `d = g ⊘ (diag + D)`
//! with D = λ + wd on weights, no iteration.

use super::{At, Curvature, CurvatureSettings, DampingDiagonal, Limits, Need, Representation, Shape, scores};
use crate::backend::{Backend, CgOutcome, CgParams, CgReport};
use crate::error::Result;
use crate::model::Mlp;

pub struct Diagonal;

impl Representation for Diagonal {
    const NAME: &'static str = "diagonal";

    fn needs(shape: &Shape, limits: &Limits) -> Vec<Need> {
        vec![shape.g_chunk(limits)]
    }

    fn create<'a, B: Backend + 'a>(b: &B, mlp: &Mlp, _: &CurvatureSettings) -> Result<Box<dyn Curvature<B> + 'a>> {
        Ok(Box::new(FisherDiagonal::<B> {
            diag: b.zeros_vector("Fisher diagonal", mlp.num_params())?,
            d: DampingDiagonal::new(mlp),
        }))
    }
}

struct FisherDiagonal<B: Backend> {
    diag: B::Vector,
    d: DampingDiagonal<B>,
}

impl<B: Backend> FisherDiagonal<B> {
    /// `diag + D` on the device.
    fn damped(&mut self, b: &B, damping: f32, weight_decay: f32) -> Result<B::Vector> {
        let mut out = b.zeros_vector("diagonal + D", b.len(&self.diag))?;
        b.copy(self.d.get(b, damping, weight_decay)?, &mut out)?;
        b.axpy(1.0, &self.diag, &mut out)?;
        Ok(out)
    }
}

impl<B: Backend> Curvature<B> for FisherDiagonal<B> {
    fn build(&mut self, b: &B, at: &mut At<'_, B>) -> Result<()> {
        let scale = 1.0 / b.batch_size(at.batch) as f32;
        let total = scores::total_rows(b, at.mlp, at.batch, at.fisher)?;
        let chunk = scores::chunk_rows(b, at.mlp.num_params(), total)?;
        let diag = &mut self.diag;
        scores::for_each_chunk(b, at.mlp, at.theta, at.batch, at.fisher, at.key, chunk, |rows, g| {
            b.column_sq_sums(g, scale, rows.start > 0, diag)
        })?;
        at.ranks.mean_vector(b, "Fisher diagonal", &mut self.diag)
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
        let denom = self.damped(b, damping, at.weight_decay)?;
        b.divide(g, &denom, d)?;
        Ok(CgReport {
            iterations: 0,
            rel_residual: 0.0,
            rhs_sq: 0.0,
            outcome: CgOutcome::Converged,
        })
    }

    fn quad(&mut self, b: &B, at: &mut At<'_, B>, damping: f32, d: &B::Vector) -> Result<f64> {
        let ad = self.damped(b, damping, at.weight_decay)?;
        b.weighted_dot(d, &ad, d)
    }
}
