//! The CPU's dense damped solve: the host CG of [`crate::solve`] over `(A + λI)`, the twin of
//! `shaders/cg.wgsl` (the same iteration, stopping rule and breakdown test); the dot products
//! keep 32 f32 lanes and sum them in f64.

use super::{Cpu, CpuMatrix};
use crate::backend::cg::{CgParams, CgReport, Operator, Preconditioner};
use crate::backend::{self, CgOps};
use crate::error::Result;
use crate::solve::{self, operator::Damped};

impl CgOps for Cpu {
    fn pcg(
        &self,
        op: &mut dyn Operator<Self>,
        m: Option<&mut dyn Preconditioner<Self>>,
        g: &Self::Vector,
        d: &mut Self::Vector,
        params: &CgParams,
        progress: f64,
    ) -> Result<CgReport> {
        crate::solve::cg_with_progress(self, op, m, g, d, params, progress)
    }

    fn cg_solve(
        &self,
        a: &CpuMatrix,
        damping: f32,
        g: &Vec<f32>,
        d: &mut Vec<f32>,
        params: &CgParams,
    ) -> Result<CgReport> {
        params.validate(damping)?;
        backend::check_matvec((a.rows, a.cols), g.len(), d.len())?;
        solve::cg(self, &mut Damped { a, damping }, None, g, d, params)
    }
}
