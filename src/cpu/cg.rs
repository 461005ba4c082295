//! Conjugate gradient on the CPU: the twin of `shaders/cg.wgsl`, the same iteration, stopping
//! rule and breakdown test; dot products keep 32 f32 lanes and sum them in f64.

use super::linalg::{axpy, dot, xpby};
use super::{Cpu, CpuMatrix};
use crate::backend::cg::{CgOutcome, CgParams, CgReport, curvature_ok};
use crate::backend::{self, CgOps};
use crate::error::Result;

/// Solves `(A + λI) d = g` for a square A (shapes checked), starting from `d` and leaving the
/// solution there.
pub fn solve(a: &CpuMatrix, damping: f32, g: &[f32], d: &mut [f32], params: &CgParams) -> CgReport {
    let n = g.len();
    let mut q = vec![0.0f32; n];
    a.matvec(damping, d, &mut q);
    let mut r: Vec<f32> = g.iter().zip(&q).map(|(gi, qi)| gi - qi).collect();
    let gg = dot(g, g);
    let mut rr = dot(&r, &r);
    if rr > gg {
        // the warm start is worse than none: start from d = 0
        d.fill(0.0);
        r.copy_from_slice(g);
        rr = gg;
    }
    let mut s = r.clone();
    let tol2 = (params.rel_tol as f64).powi(2);
    // the largest Rayleigh quotient seen: A's scale for the breakdown test
    let mut mu = 0.0f64;
    let mut iterations = 0;
    let outcome = loop {
        if gg == 0.0 || rr <= tol2 * gg {
            break CgOutcome::Converged;
        }
        if iterations >= params.max_iters {
            break CgOutcome::MaxIterations;
        }
        a.matvec(damping, &s, &mut q);
        let sq = dot(&s, &q);
        let rayleigh = sq / dot(&s, &s);
        if !curvature_ok(rayleigh, mu) {
            break CgOutcome::Breakdown;
        }
        mu = mu.max(rayleigh);
        let alpha = (rr / sq) as f32;
        axpy(alpha, &s, d);
        axpy(-alpha, &q, &mut r);
        let rr_new = dot(&r, &r);
        xpby(&r, (rr_new / rr) as f32, &mut s);
        rr = rr_new;
        iterations += 1;
    };
    let rel_residual = if gg == 0.0 {
        d.fill(0.0);
        0.0
    } else {
        a.matvec(damping, d, &mut q);
        let true_rr: f64 = g.iter().zip(&q).map(|(gi, qi)| ((gi - qi) as f64).powi(2)).sum();
        (true_rr / gg).sqrt() as f32
    };
    CgReport {
        iterations,
        rel_residual,
        outcome,
    }
}

impl CgOps for Cpu {
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
        Ok(solve(a, damping, g, d, params))
    }
}
