//! CI runs the GPU suite twice, on Vulkan (lavapipe) and on GL (llvmpipe through EGL): with
//! `WGPU_BACKEND` set, the tests must run on that backend, never quietly on another.

mod common;

#[test]
fn the_gpu_tests_run_on_the_backend_asked_for() {
    let gpu = common::gpu();
    let backend = format!("{:?}", gpu.context().info.backend).to_lowercase();
    if let Ok(wanted) = std::env::var("WGPU_BACKEND") {
        let wanted = wanted.to_lowercase();
        assert!(
            wanted.split(',').any(|w| w.trim() == backend),
            "WGPU_BACKEND={wanted} but the tests run on {backend}"
        );
    }
}

/// Kernels compile when first used; every family, in every variant this adapter runs, compiles
/// here, so that none fails only in the run that first needs it.
#[test]
fn every_kernel_family_compiles_on_this_adapter() {
    for gpu in common::gpu_variants() {
        gpu.compile_all().expect("natgrad's kernels compile on this adapter");
    }
}
