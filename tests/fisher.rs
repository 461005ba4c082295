//! The Fisher build: GPU = CPU = f64 reference, exact symmetry, chunked accumulation.

mod common;

use common::{exactly_symmetric, gpu_variants, normal, rng};
use natgrad::cpu::{Cpu, reference};
use natgrad::prelude::*;

/// (m, p): rows and columns of G, chosen to miss every tile size (64, 128) and stage depth.
const SIZES: [(usize, usize); 6] = [(1, 1), (7, 13), (129, 67), (300, 257), (5, 130), (64, 64)];

const TOL: f64 = 1e-4;

/// Builds F = GᵀG/m on `b` and checks it against the f64 reference and for exact symmetry.
fn check_build<B: Backend>(b: &B, m: usize, p: usize, seed: u64) -> Vec<f32> {
    let g = normal(&mut rng(seed), m * p);
    let expected = reference::fisher(&g, m, p, 1.0 / m as f64);
    let dg = b.upload_matrix("G", m, p, &g).unwrap();
    let f = b.download_matrix(&b.fisher(&dg).unwrap()).unwrap();
    let err = reference::rel_error(&f, &expected);
    assert!(err < TOL, "{}: F of G {m}×{p}: relative error {err:.2e}", b.describe());
    assert!(
        exactly_symmetric(&f, p),
        "{}: F of G {m}×{p} is not exactly symmetric",
        b.describe()
    );
    f
}

#[test]
fn cpu_matches_f64_reference() {
    for (k, &(m, p)) in SIZES.iter().enumerate() {
        check_build(&Cpu::new(), m, p, k as u64);
    }
}

#[test]
fn gpu_matches_cpu_and_f64_reference() {
    for gpu in gpu_variants() {
        for (k, &(m, p)) in SIZES.iter().enumerate() {
            let on_gpu = check_build(&gpu, m, p, k as u64);
            let on_cpu = check_build(&Cpu::new(), m, p, k as u64);
            let diff = common::rel_diff(&on_gpu, &on_cpu);
            assert!(
                diff < TOL,
                "GPU (tile {}) vs CPU at {m}×{p}: {diff:.2e}",
                gpu.fisher_tile()
            );
        }
    }
}

/// Builds F over G's rows in uneven chunks, the way the trainer streams G.
fn chunked<B: Backend>(b: &B, g: &[f32], m: usize, p: usize, cuts: &[usize]) -> Vec<f32> {
    let mut f = b.zeros_matrix("F", p, p).unwrap();
    let mut start = 0;
    for (k, &end) in cuts.iter().chain(std::iter::once(&m)).enumerate() {
        let chunk = b
            .upload_matrix("G chunk", end - start, p, &g[start * p..end * p])
            .unwrap();
        b.fisher_accumulate(&mut f, &chunk, 1.0 / m as f32, k > 0).unwrap();
        start = end;
    }
    b.download_matrix(&f).unwrap()
}

#[test]
fn chunked_accumulation_equals_one_build() {
    let (m, p) = (300, 257);
    let g = normal(&mut rng(7), m * p);
    let expected = reference::fisher(&g, m, p, 1.0 / m as f64);
    let cuts = [1, 100, 229];
    let cpu = chunked(&Cpu::new(), &g, m, p, &cuts);
    assert!(reference::rel_error(&cpu, &expected) < TOL);
    assert!(exactly_symmetric(&cpu, p));
    for gpu in gpu_variants() {
        let on_gpu = chunked(&gpu, &g, m, p, &cuts);
        let err = reference::rel_error(&on_gpu, &expected);
        assert!(err < TOL, "GPU tile {}: chunked F error {err:.2e}", gpu.fisher_tile());
        assert!(
            exactly_symmetric(&on_gpu, p),
            "GPU tile {}: chunked F not symmetric",
            gpu.fisher_tile()
        );
    }
}

#[test]
fn a_fresh_build_overwrites_what_f_held() {
    let (m, p) = (40, 70);
    let old = normal(&mut rng(1), m * p);
    let new = normal(&mut rng(2), m * p);
    let expected = reference::fisher(&new, m, p, 0.5);
    for gpu in gpu_variants() {
        let mut f = gpu.fisher(&gpu.upload_matrix("G", m, p, &old).unwrap()).unwrap();
        gpu.fisher_accumulate(&mut f, &gpu.upload_matrix("G", m, p, &new).unwrap(), 0.5, false)
            .unwrap();
        let err = reference::rel_error(&gpu.download_matrix(&f).unwrap(), &expected);
        assert!(err < TOL, "GPU tile {}: {err:.2e}", gpu.fisher_tile());
    }
    let cpu = Cpu::new();
    let mut f = cpu.fisher(&cpu.upload_matrix("G", m, p, &old).unwrap()).unwrap();
    cpu.fisher_accumulate(&mut f, &cpu.upload_matrix("G", m, p, &new).unwrap(), 0.5, false)
        .unwrap();
    assert!(reference::rel_error(&cpu.download_matrix(&f).unwrap(), &expected) < TOL);
}

/// Large enough for several CPU tiles of 64 (p = 300 → tile edge 128, a ragged last tile) and
/// several rayon tasks.
#[test]
fn cpu_tiles_cover_f_exactly_once() {
    let (m, p) = (33, 300);
    let g = normal(&mut rng(3), m * p);
    check_build(&Cpu::new(), m, p, 3);
    let cpu = Cpu::new();
    let f = chunked(&cpu, &g, m, p, &[10, 11]);
    assert!(reference::rel_error(&f, &reference::fisher(&g, m, p, 1.0 / m as f64)) < TOL);
}

/// Long inner dimensions: some drivers (Mesa 22's lavapipe) stop a workgroup's loop after a few
/// thousand barriers, so the kernels split long reductions into several dispatches. Ones make
/// every entry of F the row count, exact in f32.
#[test]
fn many_rows_of_g_are_all_counted() {
    let (m, p) = (70_003, 6);
    let ones = vec![1.0f32; m * p];
    for gpu in gpu_variants().into_iter().step_by(2).take(1) {
        let mut f = gpu.zeros_matrix("F", p, p).unwrap();
        gpu.fisher_accumulate(&mut f, &gpu.upload_matrix("G", m, p, &ones).unwrap(), 1.0, false)
            .unwrap();
        let f = gpu.download_matrix(&f).unwrap();
        assert!(f.iter().all(|&v| v == m as f32), "GPU: {:?}", &f[..p]);
    }
    let cpu = Cpu::new();
    let f = cpu
        .download_matrix(&cpu.fisher(&cpu.upload_matrix("G", m, p, &ones).unwrap()).unwrap())
        .unwrap();
    assert!(f.iter().all(|&v| (v - 1.0).abs() < 1e-6));
}
