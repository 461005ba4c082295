//! `dense`: the Fisher itself, p×p, built from G chunk by chunk and solved by the device's dense
//! CG (fused on the GPU). Weight decay enters F's diagonal at the build.

use super::{At, Curvature, CurvatureSettings, Limits, Need, Representation, Shape, scores};
use crate::backend::{Backend, CgParams, CgReport};
use crate::error::Result;
use crate::model::Mlp;

pub struct Dense;

impl Representation for Dense {
    const NAME: &'static str = "dense";

    fn needs(shape: &Shape, limits: &Limits) -> Vec<Need> {
        let p = shape.p as u64;
        vec![
            Need {
                buffer: "Fisher matrix F",
                shape: format!("{}×{} f32", shape.p, shape.p),
                piece: 4 * p * p,
                total: 4 * p * p,
            },
            shape.g_chunk(limits),
        ]
    }

    fn create<'a, B: Backend + 'a>(b: &B, mlp: &Mlp, _: &CurvatureSettings) -> Result<Box<dyn Curvature<B> + 'a>> {
        let p = mlp.num_params();
        Ok(Box::new(DenseFisher::<B> {
            f: b.zeros_matrix("Fisher matrix F", p, p)?,
        }))
    }
}

struct DenseFisher<B: Backend> {
    f: B::Matrix,
}

impl<B: Backend> Curvature<B> for DenseFisher<B> {
    fn build(&mut self, b: &B, at: &mut At<'_, B>) -> Result<()> {
        scores::build(
            b,
            at.mlp,
            at.theta,
            at.batch,
            at.fisher,
            at.key,
            at.weight_decay,
            &mut self.f,
        )?;
        at.ranks
            .mean_symmetric(b, "dense Fisher", std::slice::from_mut(&mut self.f))
    }

    fn solve(
        &mut self,
        b: &B,
        _: &mut At<'_, B>,
        damping: f32,
        g: &B::Vector,
        d: &mut B::Vector,
        cg: &CgParams,
    ) -> Result<CgReport> {
        b.cg_solve(&self.f, damping, g, d, cg)
    }

    fn quad(&mut self, b: &B, _: &mut At<'_, B>, damping: f32, d: &B::Vector) -> Result<f64> {
        let mut ad = b.zeros_vector("A d", b.len(d))?;
        b.matvec(&self.f, damping, d, &mut ad)?;
        b.dot(d, &ad)
    }
}
