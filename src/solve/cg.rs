//! Preconditioned conjugate gradient on the host, over any operator and any preconditioner the
//! device applies: the one CG every representation and the CPU's dense solve share. The GPU's
//! fused dense CG (`shaders/cg.wgsl`) follows the same rules: a warm start dropped when it is
//! worse than zero, the stopping test on the true gradient's scale, the breakdown test, and the
//! true residual recomputed at the end.

use super::{CgOutcome, CgParams, CgReport, curvature_ok};
use crate::backend::BlasOps;
use crate::error::Result;

pub use crate::backend::cg::{Operator, Preconditioner};

/// Solves `A d = g` from the `d` given (a warm start, or zeros), preconditioned by `m` when
/// given. Without a preconditioner this is plain CG, iteration for iteration.
pub fn cg<B: BlasOps>(
    b: &B,
    op: &mut dyn Operator<B>,
    m: Option<&mut dyn Preconditioner<B>>,
    g: &B::Vector,
    d: &mut B::Vector,
    params: &CgParams,
) -> Result<CgReport> {
    cg_with_progress(b, op, m, g, d, params, 0.0)
}

/// [`cg`] that also stops when the quadratic model `φ(d) = ½dᵀAd − gᵀd` stops improving (Martens
/// 2010, §4.4): at iteration i > k = max(10, i/10), when `(φ_i − φ_{i−k}) / φ_i < k·progress`.
/// Each iteration then reads two more dot products (φ = −½(gᵀd + rᵀd)); `progress = 0` is plain
/// [`cg`]. Martens uses 5e-4.
pub fn cg_with_progress<B: BlasOps>(
    b: &B,
    op: &mut dyn Operator<B>,
    mut m: Option<&mut dyn Preconditioner<B>>,
    g: &B::Vector,
    d: &mut B::Vector,
    params: &CgParams,
    progress: f64,
) -> Result<CgReport> {
    let n = b.len(g);
    let mut q = b.zeros_vector("CG product q", n)?;
    let mut r = b.zeros_vector("CG residual r", n)?;
    op.apply(b, d, &mut q)?;
    b.copy(g, &mut r)?;
    b.axpy(-1.0, &q, &mut r)?;
    let gg = b.dot(g, g)?;
    let mut rr = b.dot(&r, &r)?;
    if rr > gg {
        // the warm start is worse than none: start from d = 0
        set_zero(b, d, n)?;
        b.copy(g, &mut r)?;
        rr = gg;
    }
    // z = M⁻¹r: with no preconditioner z is r itself and rᵀz is rᵀr
    let mut z = match m {
        Some(_) => Some(b.zeros_vector("CG preconditioned residual z", n)?),
        None => None,
    };
    let mut rz = precondition(b, &mut m, &r, &mut z, rr)?;
    let mut s = b.zeros_vector("CG direction s", n)?;
    b.copy(z.as_ref().unwrap_or(&r), &mut s)?;
    let tol2 = (params.rel_tol as f64).powi(2);
    // the largest Rayleigh quotient seen: A's scale for the breakdown test
    let mut mu = 0.0f64;
    let mut iterations = 0;
    // φ after each iteration, for the progress rule
    let mut phi: Vec<f64> = Vec::new();
    let outcome = loop {
        if gg == 0.0 || rr <= tol2 * gg {
            break CgOutcome::Converged;
        }
        if iterations >= params.max_iters {
            break CgOutcome::MaxIterations;
        }
        if progress > 0.0 && iterations > 0 {
            phi.push(-0.5 * (b.dot(g, d)? + b.dot(&r, d)?));
            let k = 10.max(iterations / 10);
            if iterations > k {
                let (now, then) = (phi[iterations - 1], phi[iterations - 1 - k]);
                if now < 0.0 && (now - then) / now < k as f64 * progress {
                    break CgOutcome::Stalled;
                }
            }
        }
        op.apply(b, &s, &mut q)?;
        let sq = b.dot(&s, &q)?;
        let rayleigh = sq / b.dot(&s, &s)?;
        if !curvature_ok(rayleigh, mu) {
            break CgOutcome::Breakdown;
        }
        mu = mu.max(rayleigh);
        let alpha = (rz / sq) as f32;
        b.axpy(alpha, &s, d)?;
        b.axpy(-alpha, &q, &mut r)?;
        rr = b.dot(&r, &r)?;
        let rz_new = precondition(b, &mut m, &r, &mut z, rr)?;
        b.xpby(z.as_ref().unwrap_or(&r), (rz_new / rz) as f32, &mut s)?;
        rz = rz_new;
        iterations += 1;
    };
    let rel_residual = if gg == 0.0 {
        set_zero(b, d, n)?;
        0.0
    } else {
        op.apply(b, d, &mut q)?;
        b.copy(g, &mut r)?;
        b.axpy(-1.0, &q, &mut r)?;
        (b.dot(&r, &r)? / gg).sqrt() as f32
    };
    Ok(CgReport {
        iterations,
        rel_residual,
        rhs_sq: gg,
        outcome,
    })
}

/// `z = M⁻¹r` and returns `rᵀz`; without a preconditioner returns `rr` (= rᵀr).
fn precondition<B: BlasOps>(
    b: &B,
    m: &mut Option<&mut dyn Preconditioner<B>>,
    r: &B::Vector,
    z: &mut Option<B::Vector>,
    rr: f64,
) -> Result<f64> {
    match (m, z) {
        (Some(m), Some(z)) => {
            m.apply_inverse(b, r, z)?;
            b.dot(r, z)
        }
        _ => Ok(rr),
    }
}

fn set_zero<B: BlasOps>(b: &B, v: &mut B::Vector, n: usize) -> Result<()> {
    b.copy(&b.zeros_vector("zeros", n)?, v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CgOutcome;
    use crate::cpu::Cpu;

    /// `y = A x` for a dense row-major A on the host.
    struct Dense(Vec<f64>, usize);

    impl Operator<Cpu> for Dense {
        fn apply(&mut self, _: &Cpu, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
            let n = self.1;
            for (i, yi) in y.iter_mut().enumerate() {
                *yi = (0..n).map(|j| self.0[i * n + j] * x[j] as f64).sum::<f64>() as f32;
            }
            Ok(())
        }
    }

    /// `z = r ⊘ diag(A)`.
    struct Jacobi(Vec<f64>);

    impl Preconditioner<Cpu> for Jacobi {
        fn apply_inverse(&mut self, _: &Cpu, r: &Vec<f32>, z: &mut Vec<f32>) -> Result<()> {
            z.iter_mut()
                .zip(r)
                .zip(&self.0)
                .for_each(|((z, r), d)| *z = (*r as f64 / d) as f32);
            Ok(())
        }
    }

    /// A badly scaled SPD matrix (diagonal from 1 to 10⁴, weak coupling): Jacobi preconditioning
    /// turns it into a well-conditioned one, so preconditioned CG must converge far sooner, to
    /// the same solution.
    #[test]
    fn a_good_preconditioner_cuts_the_iterations() {
        let n = 60;
        let mut a = vec![0.0f64; n * n];
        for i in 0..n {
            let scale = 10f64.powf(4.0 * i as f64 / (n - 1) as f64);
            for j in 0..n {
                let other = 10f64.powf(4.0 * j as f64 / (n - 1) as f64);
                a[i * n + j] = if i == j {
                    scale
                } else {
                    0.01 * (scale * other).sqrt() * ((i * 7 + j * 3) % 5) as f64 / 5.0
                };
            }
        }
        // symmetrise
        for i in 0..n {
            for j in 0..i {
                let v = 0.5 * (a[i * n + j] + a[j * n + i]);
                a[i * n + j] = v;
                a[j * n + i] = v;
            }
        }
        let g: Vec<f32> = (0..n).map(|i| ((i % 9) as f32 - 4.0) / 4.0).collect();
        let params = CgParams {
            max_iters: 500,
            rel_tol: 1e-5,
        };
        let cpu = Cpu::new();
        let (mut d_plain, mut d_pre) = (vec![0.0f32; n], vec![0.0f32; n]);
        let plain = cg(&cpu, &mut Dense(a.clone(), n), None, &g, &mut d_plain, &params).unwrap();
        let diag: Vec<f64> = (0..n).map(|i| a[i * n + i]).collect();
        let pre = cg(
            &cpu,
            &mut Dense(a.clone(), n),
            Some(&mut Jacobi(diag)),
            &g,
            &mut d_pre,
            &params,
        )
        .unwrap();
        assert_eq!(pre.outcome, CgOutcome::Converged, "{pre:?}");
        assert!(pre.iterations * 3 < plain.iterations, "{pre:?} against {plain:?}");
        let diff: f64 = d_plain
            .iter()
            .zip(&d_pre)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = d_plain.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        assert!(diff < 1e-3 * norm, "solutions differ by {diff} of {norm}");
    }
}
