//! natgrad: natural-gradient training with the Fisher information matrix built and solved on any
//! GPU wgpu reaches (Vulkan, Metal, DX12, software adapters), and a fast CPU path beside it.
//!
//! A device ([`Cpu`], [`Gpu`], or [`device::open`] choosing one as `--device` does) implements the
//! [`Backend`] op families; a [`Trainer`] holds a model's parameters and optimiser state on it and
//! takes one step per batch. Training digits by natural gradient, in ten lines:
//!
//! ```
//! use natgrad::{Activation, Cpu, Mlp, MlpSpec, OptimConfig, Trainer, data};
//!
//! let digits = data::load("digits", Default::default(), 0)?;
//! let spec = MlpSpec { inputs: digits.d, hidden: vec![32], activation: Activation::Relu, likelihood: digits.likelihood(1.0) };
//! let mlp = Mlp::new(spec)?;
//! let cpu = Cpu::new(); // or natgrad::Gpu::open(None)?
//! let mut trainer = Trainer::new(&cpu, mlp.clone(), &mlp.init(0), OptimConfig::default(), 200, 0)?;
//! for epoch in 1..=3 {
//!     for batch in data::batches(digits.n, 200, 0, epoch) {
//!         let (x, y) = digits.gather(&batch);
//!         trainer.step(&x, &y)?;
//!     }
//! }
//! assert!(trainer.evaluate(&digits)?.loss < 0.2);
//! # Ok::<(), natgrad::Error>(())
//! ```
//!
//! [`train::run`] does the same over epochs and writes a run directory, as `natgrad train` does.

// Bad input and device faults are errors, never panics: the library and the command line take
// no unwrap, expect or panic outside tests (clippy enforces it; tests may).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod backend;
pub mod cpu;
pub mod curvature;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod gpu;
pub mod io;
pub mod model;
pub mod optim;
pub mod snapshot;
pub mod solve;
pub mod train;

// the command line's own commands, public for the binary only
#[doc(hidden)]
pub mod apply;
#[doc(hidden)]
pub mod bench;
#[doc(hidden)]
pub mod demo;

pub use backend::{Backend, prelude};
pub use cpu::Cpu;
pub use curvature::{CurvatureChoice, CurvatureKind};
pub use data::{Dataset, TaskChoice};
pub use device::{AnyBackend, DeviceChoice};
pub use error::{Error, Result};
pub use gpu::Gpu;
pub use model::{Activation, FisherKind, Likelihood, Mlp, MlpSpec};
pub use optim::{AdamConfig, NgdConfig, OptimConfig, OptimizerKind, SgdConfig};
pub use solve::{CgOutcome, CgParams, CgReport};
pub use train::{RunConfig, Summary, Trainer};

/// The README's Rust examples, compiled as doctests so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
