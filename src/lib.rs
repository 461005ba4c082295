//! natgrad: natural-gradient training with the Fisher information matrix built and solved on any
//! GPU wgpu reaches (Vulkan, Metal, DX12, software adapters), and a fast CPU path beside it.
//!
//! The core is the [`Backend`] trait: upload score rows G, build `F = (1/m) GᵀG` (chunk by chunk
//! if G is large), and solve `(F + λI) d = g` by conjugate gradient, on a [`gpu::Gpu`] or a
//! [`cpu::Cpu`]. [`device`] picks one from a command-line style choice.

pub mod apply;
pub mod backend;
pub mod bench;
pub mod cpu;
pub mod curvature;
pub mod data;
pub mod demo;
pub mod device;
pub mod error;
pub mod gpu;
pub mod io;
pub mod model;
pub mod optim;
pub mod solve;
pub mod train;

pub use backend::{Backend, prelude};
pub use error::{Error, Result};
pub use solve::{CgOutcome, CgParams, CgReport};

/// The README's Rust examples, compiled as doctests so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
