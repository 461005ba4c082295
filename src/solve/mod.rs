//! Conjugate gradient for the damped natural-gradient system `(F + λI) d = g` over an operator the
//! device applies, with an optional preconditioner; the settings and report it shares with the
//! devices live in [`crate::backend::cg`]. It depends only on the backend traits, so the CPU's
//! dense solve is this CG over [`operator::Damped`].

pub mod cg;
pub mod operator;

pub use crate::backend::cg::{BREAKDOWN_RATIO, CgOutcome, CgParams, CgReport, curvature_ok};
pub use cg::{Operator, Preconditioner, cg, cg_with_progress};
