//! The vocabulary of conjugate gradient that both devices and every solver share: the settings of a
//! solve, its report, and the stopping and breakdown rules (the GPU's fused kernel takes the
//! breakdown ratio as a shader constant).

use super::BlasOps;
use crate::error::{Error, Result};

/// A symmetric positive (semi-)definite linear map on the device.
pub trait Operator<B: BlasOps> {
    /// `y = A x`. On a GPU inside [`super::CgOps::pcg`] this must record work, never read back.
    fn apply(&mut self, b: &B, x: &B::Vector, y: &mut B::Vector) -> Result<()>;
}

/// An approximation M of the operator whose inverse is cheap: CG on `M⁻¹A` converges in fewer
/// iterations the closer M is to A.
pub trait Preconditioner<B: BlasOps> {
    /// `z = M⁻¹ r`.
    fn apply_inverse(&mut self, b: &B, r: &B::Vector, z: &mut B::Vector) -> Result<()>;
}

/// A search direction whose Rayleigh quotient `sᵀAs / sᵀs` falls below this fraction of the
/// largest one seen has met a numerically singular direction of `A = F + λI`: in f32 the quotient
/// is then rounding noise (about `√p · 2⁻²⁴` of the largest), and a step along it would blow `d`
/// up. A well-posed damped system, condition number up to 10⁴, stays clear of it. Shared with the
/// GPU kernel, which receives it as a shader constant.
pub const BREAKDOWN_RATIO: f32 = 1e-5;

/// False when a step along a direction would divide by a (numerically) zero, negative or NaN
/// curvature: its Rayleigh quotient is not above [`BREAKDOWN_RATIO`] of the largest seen (`mu`).
/// The host solvers' twin of `curvature_ok` in shaders/cg.wgsl.
pub fn curvature_ok(rayleigh: f64, mu: f64) -> bool {
    rayleigh > BREAKDOWN_RATIO as f64 * mu.max(rayleigh)
}

/// How a solve ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgOutcome {
    /// `‖r‖ ≤ tol · ‖g‖` (recursive residual).
    Converged,
    /// Ran `max_iters` iterations without converging.
    MaxIterations,
    /// Met a direction of zero or negative curvature: `F + λI` is singular (or not positive
    /// definite) to working precision. `d` is the last iterate before it, finite.
    Breakdown,
    /// The quadratic model stopped improving (the host solver's relative-progress rule; the
    /// GPU's fused dense CG does not use it).
    Stalled,
}

impl CgOutcome {
    const ALL: [CgOutcome; 4] = [Self::Converged, Self::MaxIterations, Self::Breakdown, Self::Stalled];

    /// The code the GPU kernels use for it (0 is "running").
    pub fn code(self) -> u32 {
        match self {
            Self::Converged => 1,
            Self::MaxIterations => 2,
            Self::Breakdown => 3,
            Self::Stalled => 4,
        }
    }

    /// The outcome of a final state's code.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.code() == code)
    }
}

/// Settings of one solve.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CgParams {
    /// Upper bound on iterations (each one matvec).
    pub max_iters: usize,
    /// Stop when `‖r‖ ≤ rel_tol · ‖g‖`.
    pub rel_tol: f32,
}

impl Default for CgParams {
    fn default() -> Self {
        Self {
            max_iters: 100,
            rel_tol: 1e-4,
        }
    }
}

impl CgParams {
    /// Checks the settings and the damping λ.
    pub fn validate(&self, damping: f32) -> Result<()> {
        if !(self.rel_tol.is_finite() && self.rel_tol >= 0.0) {
            return Err(Error::InvalidArgument {
                name: "CG tolerance",
                reason: format!("{} is not a finite non-negative number", self.rel_tol),
            });
        }
        if !(damping.is_finite() && damping >= 0.0) {
            return Err(Error::InvalidArgument {
                name: "damping",
                reason: format!("{damping} is not a finite non-negative number"),
            });
        }
        if self.max_iters > u32::MAX as usize {
            return Err(Error::InvalidArgument {
                name: "CG iterations",
                reason: format!("{} is above {}", self.max_iters, u32::MAX),
            });
        }
        Ok(())
    }
}

/// What a solve did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CgReport {
    /// Iterations (matvecs after the initial residual) used.
    pub iterations: usize,
    /// The true relative residual `‖g − (F + λI)d‖ / ‖g‖` of the returned `d`, recomputed from
    /// scratch (the recursive residual drifts in f32). 0 when `g = 0`.
    pub rel_residual: f32,
    /// `gᵀg` of the right-hand side (0 where no residual was measured): what turns
    /// `rel_residual` back into an absolute one, as a block-diagonal solve adds them up.
    pub rhs_sq: f64,
    pub outcome: CgOutcome,
}
