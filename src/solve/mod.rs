//! Conjugate gradient for the damped natural-gradient system `(F + λI) d = g` over an operator the
//! device applies; the settings and report it shares with the devices live in [`crate::backend::cg`].

pub mod operator;

pub use crate::backend::cg::{BREAKDOWN_RATIO, CgOutcome, CgParams, CgReport, curvature_ok};
