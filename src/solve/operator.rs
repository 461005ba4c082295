//! Operators CG solves with that need no representation of their own.

use super::cg::Operator;
use crate::backend::BlasOps;
use crate::error::Result;

/// `x ↦ (A + λI) x` for a dense symmetric A on the device.
pub struct Damped<'a, B: BlasOps> {
    pub a: &'a B::Matrix,
    pub damping: f32,
}

impl<B: BlasOps> Operator<B> for Damped<'_, B> {
    fn apply(&mut self, b: &B, x: &B::Vector, y: &mut B::Vector) -> Result<()> {
        b.matvec(self.a, self.damping, x, y)
    }
}
