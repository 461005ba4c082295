//! `implicit`: only the score rows G (m×p) are held; `Av = Gᵀ(Gv)/n + Dv` (two passes over G a
//! CG iteration) with D = λ + wd on weights, F never formed.

use super::rows::{HeldRows, RowsOperator};
use super::{At, Curvature, DampingDiagonal, Limits, Need, Representation, Shape};
use crate::backend::{Backend, CgParams, CgReport};
use crate::error::Result;
use crate::model::Mlp;
use crate::solve::{self, Operator};

pub struct Implicit;

impl Representation for Implicit {
    const NAME: &'static str = "implicit";

    fn needs(shape: &Shape, limits: &Limits) -> Vec<Need> {
        vec![shape.g_whole(limits)]
    }

    fn create<'a, B: Backend + 'a>(_: &B, mlp: &Mlp) -> Result<Box<dyn Curvature<B> + 'a>> {
        Ok(Box::new(ImplicitFisher::<B> {
            rows: HeldRows::new(),
            d: DampingDiagonal::new(mlp),
        }))
    }
}

struct ImplicitFisher<B: Backend> {
    rows: HeldRows<B>,
    d: DampingDiagonal<B>,
}

impl<B: Backend> Curvature<B> for ImplicitFisher<B> {
    fn build(&mut self, b: &B, at: &mut At<'_, B>) -> Result<()> {
        self.rows.build(b, at)
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
        let diag = self.d.get(b, damping, at.weight_decay)?;
        let mut op = RowsOperator { rows: &self.rows, diag };
        solve::cg(b, &mut op, None, g, d, cg)
    }

    fn quad(&mut self, b: &B, at: &mut At<'_, B>, damping: f32, d: &B::Vector) -> Result<f64> {
        let diag = self.d.get(b, damping, at.weight_decay)?;
        let mut ad = b.zeros_vector("A d", b.len(d))?;
        RowsOperator { rows: &self.rows, diag }.apply(b, d, &mut ad)?;
        b.dot(d, &ad)
    }
}
