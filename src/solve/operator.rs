//! Conjugate gradient for an operator the device applies but never forms (the implicit Fisher),
//! driven from the host with the dense solver's rules: warm start dropped when worse than zero,
//! the same stopping and breakdown tests, and the true residual recomputed at the end. Each
//! iteration reads two dot products back.

use super::{CgOutcome, CgParams, CgReport, curvature_ok};
use crate::backend::Backend;
use crate::error::Result;

/// A symmetric positive semi-definite linear map on the device.
pub trait Operator<B: Backend> {
    /// `y = A x`.
    fn apply(&mut self, b: &B, x: &B::Vector, y: &mut B::Vector) -> Result<()>;
}

/// Solves `A d = g` from the `d` given.
pub fn cg<B: Backend>(
    b: &B,
    op: &mut dyn Operator<B>,
    g: &B::Vector,
    d: &mut B::Vector,
    params: &CgParams,
) -> Result<CgReport> {
    let n = b.len(g);
    let mut q = b.zeros_vector("CG product q", n)?;
    let mut r = b.zeros_vector("CG residual r", n)?;
    op.apply(b, d, &mut q)?;
    b.copy(g, &mut r)?;
    b.axpy(-1.0, &q, &mut r)?;
    let gg = b.dot(g, g)? as f64;
    let mut rr = b.dot(&r, &r)? as f64;
    if rr > gg {
        // the warm start is worse than none: start from d = 0
        set_zero(b, d, n)?;
        b.copy(g, &mut r)?;
        rr = gg;
    }
    let mut s = b.zeros_vector("CG direction s", n)?;
    b.copy(&r, &mut s)?;
    let tol2 = (params.rel_tol as f64).powi(2);
    let mut mu = 0.0f64;
    let mut iterations = 0;
    let outcome = loop {
        if gg == 0.0 || rr <= tol2 * gg {
            break CgOutcome::Converged;
        }
        if iterations >= params.max_iters {
            break CgOutcome::MaxIterations;
        }
        op.apply(b, &s, &mut q)?;
        let sq = b.dot(&s, &q)? as f64;
        let rayleigh = sq / b.dot(&s, &s)? as f64;
        if !curvature_ok(rayleigh, mu) {
            break CgOutcome::Breakdown;
        }
        mu = mu.max(rayleigh);
        let alpha = (rr / sq) as f32;
        b.axpy(alpha, &s, d)?;
        b.axpy(-alpha, &q, &mut r)?;
        let rr_new = b.dot(&r, &r)? as f64;
        b.xpby(&r, (rr_new / rr) as f32, &mut s)?;
        rr = rr_new;
        iterations += 1;
    };
    let rel_residual = if gg == 0.0 {
        set_zero(b, d, n)?;
        0.0
    } else {
        op.apply(b, d, &mut q)?;
        b.copy(g, &mut r)?;
        b.axpy(-1.0, &q, &mut r)?;
        (b.dot(&r, &r)? as f64 / gg).sqrt() as f32
    };
    Ok(CgReport {
        iterations,
        rel_residual,
        outcome,
    })
}

fn set_zero<B: Backend>(b: &B, v: &mut B::Vector, n: usize) -> Result<()> {
    b.copy(&b.zeros_vector("zeros", n)?, v)
}
