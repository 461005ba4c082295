//! Workgroup and tile sizes, and the codes the kernels share with Rust: defined here once and
//! pasted ahead of every shader by [`super::shader::source`], so a WGSL file and the Rust that
//! dispatches it cannot disagree on a size or on what a code means.

use crate::backend::cg::{BREAKDOWN_RATIO, CgOutcome};
use crate::model::{Activation, FisherKind, Likelihood};

/// Invocations per workgroup of the one-dimensional kernels (a power of two: the reductions
/// halve it).
pub const WG: u32 = 256;
/// Edge of the C tile one matmul workgroup computes (16×16 invocations, 4×4 each).
pub const MATMUL_TILE: u32 = 64;
/// Depth of the slabs of A and B a matmul workgroup stages per step.
pub const MATMUL_KSTEP: u32 = 16;
/// Edge of the Fisher tile at register blocking 1 (16×16 invocations, 4×4 each); blocking NB
/// makes it `NB ×` wider.
pub const FISHER_TILE: u32 = 64;
/// Rows of G a Fisher workgroup stages per step at blocking 1 (`÷ NB` at blocking NB).
pub const FISHER_KSTEP: u32 = 16;

/// The code the CG kernels use for a running solve; the final states are [`CgOutcome::code`].
pub const CG_RUNNING: u32 = 0;

/// The WGSL declarations of every size and code above.
pub fn prelude() -> String {
    let mut out = String::from("// natgrad's shared sizes and codes (src/gpu/sizes.rs)\n");
    let mut u32s = vec![
        ("WG", WG),
        ("MATMUL_TILE", MATMUL_TILE),
        ("MATMUL_KSTEP", MATMUL_KSTEP),
        ("FISHER_TILE", FISHER_TILE),
        ("FISHER_KSTEP", FISHER_KSTEP),
        ("RUNNING", CG_RUNNING),
        ("CONVERGED", CgOutcome::Converged.code()),
        ("MAX_ITERATIONS", CgOutcome::MaxIterations.code()),
        ("BREAKDOWN", CgOutcome::Breakdown.code()),
        ("STALLED", CgOutcome::Stalled.code()),
        ("CATEGORICAL", Likelihood::Categorical { classes: 2 }.code()),
        ("BERNOULLI", Likelihood::Bernoulli.code()),
        ("GAUSSIAN", Likelihood::Gaussian { outputs: 1, sigma: 1.0 }.code()),
        ("EMPIRICAL", FisherKind::Empirical.code()),
        ("SAMPLED", FisherKind::Sampled { draws: 1 }.code()),
        ("EXACT", FisherKind::Exact.code()),
    ];
    for a in Activation::ALL {
        u32s.push((activation_const(a), a.code()));
    }
    for (name, value) in u32s {
        out.push_str(&format!("const {name}: u32 = {value}u;\n"));
    }
    out.push_str(&format!("const BREAKDOWN_RATIO: f32 = {BREAKDOWN_RATIO:e};\n"));
    out
}

fn activation_const(a: Activation) -> &'static str {
    match a {
        Activation::Tanh => "TANH",
        Activation::Relu => "RELU",
        Activation::Sigmoid => "SIGMOID",
        Activation::Gelu => "GELU",
    }
}
