//! Helpers shared by the integration tests: seeded random data and GPU devices.
//!
//! GPU tests never skip: without an adapter they fail, saying what to install.
#![allow(dead_code)]

use natgrad::gpu::{Gpu, GpuContext, GpuOptions};
use natgrad::model::{Likelihood, Mlp};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` standard normal f32 values.
pub fn normal(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

fn context() -> GpuContext {
    GpuContext::open(None).unwrap_or_else(|e| {
        panic!(
            "GPU tests need a GPU adapter and found none ({e}). They never skip: on a machine \
             without a GPU install Mesa's software drivers (apt-get install mesa-vulkan-drivers libvulkan1, and for \
             WGPU_BACKEND=gl libegl1 libegl-mesa0 libgl1-mesa-dri libgles2)."
        )
    })
}

/// The best GPU adapter with default kernels.
pub fn gpu() -> Gpu {
    Gpu::with_context(context(), GpuOptions::default()).expect("a GPU device opens on this adapter")
}

/// The best adapter with both matrix-product kernels in turn: staged through workgroup memory
/// (what hardware GPUs run) and direct (what CPU adapters run by default).
pub fn gpu_per_matmul() -> Vec<Gpu> {
    [false, true]
        .into_iter()
        .map(|direct| {
            let options = GpuOptions {
                direct_matmul: Some(direct),
                ..GpuOptions::default()
            };
            Gpu::with_context(context(), options).expect("a GPU device opens on this adapter")
        })
        .collect()
}

/// One GPU per kernel specialisation this adapter can run: subgroup reductions on and off, both
/// Fisher register blockings, and both matrix-product kernels (direct and staged through
/// workgroup memory, alternating so that every other variant, which many tests take, covers
/// both), so every variant is held to the CPU.
pub fn gpu_variants() -> Vec<Gpu> {
    let mut all = Vec::new();
    for subgroups in [false, true] {
        for nb in [1, 2] {
            let gpu = Gpu::with_context(
                context(),
                GpuOptions {
                    subgroups,
                    fisher_blocking: Some(nb),
                    direct_matmul: Some((nb == 1) != subgroups),
                },
            )
            .expect("a GPU device opens on this adapter");
            if subgroups && !gpu.uses_subgroups() {
                eprintln!("adapter has no subgroups: the subgroup variant is not run");
                continue;
            }
            all.push(gpu);
        }
    }
    all
}

/// `‖x − y‖ / ‖y‖` for two f32 vectors.
pub fn rel_diff(x: &[f32], y: &[f32]) -> f64 {
    natgrad::cpu::reference::rel_error(x, &natgrad::cpu::reference::to_f64(y))
}

/// True when the row-major `n×n` matrix equals its transpose bit for bit.
pub fn exactly_symmetric(f: &[f32], n: usize) -> bool {
    (0..n).all(|i| (0..i).all(|j| f[i * n + j].to_bits() == f[j * n + i].to_bits()))
}

pub fn likelihoods() -> [Likelihood; 3] {
    [
        Likelihood::Categorical { classes: 3 },
        Likelihood::Bernoulli,
        Likelihood::Gaussian { outputs: 2, sigma: 0.7 },
    ]
}

/// Inputs and targets for `n` examples; targets valid for the likelihood.
pub fn batch(mlp: &Mlp, n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut r = rng(seed);
    let xs = normal(&mut r, n * mlp.inputs());
    let ys = match *mlp.likelihood() {
        Likelihood::Categorical { classes } => (0..n).map(|i| ((i * 7 + seed as usize) % classes) as f32).collect(),
        Likelihood::Bernoulli => (0..n).map(|i| ((i + seed as usize) % 2) as f32).collect(),
        Likelihood::Gaussian { outputs, .. } => normal(&mut r, n * outputs),
    };
    (xs, ys)
}

/// Parameters off the initialisation: random biases keep every pre-activation away from relu's
/// kink at exactly 0, where a finite difference would see half a slope.
pub fn params(mlp: &Mlp, seed: u64) -> Vec<f32> {
    let noise = normal(&mut rng(seed + 1000), mlp.num_params());
    mlp.init(seed).iter().zip(noise).map(|(w, e)| w + 0.1 * e).collect()
}
