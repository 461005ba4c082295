//! Vector kernels: matvec, dot, axpy, xpby on GPU = CPU = f64 reference.

mod common;

use common::{gpu_variants, normal, rng};
use natgrad::cpu::{Cpu, reference};
use natgrad::prelude::*;

/// Lengths around the vec4 padding and the 256-wide workgroups (1027 needs several dot partials).
const LENS: [usize; 6] = [1, 3, 13, 67, 1024, 1027];

fn check_ops<B: Backend>(b: &B, n: usize, seed: u64) {
    let mut r = rng(seed);
    let (a, x, y) = (normal(&mut r, n * n), normal(&mut r, n), normal(&mut r, n));
    // symmetric A, as the Fisher is
    let a: Vec<f32> = (0..n * n).map(|k| (a[k] + a[(k % n) * n + k / n]) / 2.0).collect();
    let (a64, x64, y64) = (reference::to_f64(&a), reference::to_f64(&x), reference::to_f64(&y));
    let lambda = 0.37;
    let da = b.upload_matrix("A", n, n, &a).unwrap();
    let dx = b.upload_vector("x", &x).unwrap();
    let name = b.describe();

    let mut dy = b.zeros_vector("y", n).unwrap();
    b.matvec(&da, lambda, &dx, &mut dy).unwrap();
    let expected = reference::matvec(&a64, lambda as f64, &x64);
    let err = reference::rel_error(&b.download_vector(&dy).unwrap(), &expected);
    assert!(err < 1e-5, "{name}: matvec n={n}: {err:.2e}");

    let dy = b.upload_vector("y", &y).unwrap();
    let dot = b.dot(&dx, &dy).unwrap();
    let exact: f64 = x64.iter().zip(&y64).map(|(a, b)| a * b).sum();
    let scale: f64 = x64.iter().zip(&y64).map(|(a, b)| (a * b).abs()).sum();
    assert!(
        (dot - exact).abs() <= 1e-5 * scale,
        "{name}: dot n={n}: {dot} vs {exact}"
    );

    let mut dy = b.upload_vector("y", &y).unwrap();
    b.axpy(-1.5, &dx, &mut dy).unwrap();
    let expected: Vec<f64> = x64.iter().zip(&y64).map(|(x, y)| y - 1.5 * x).collect();
    assert!(
        reference::rel_error(&b.download_vector(&dy).unwrap(), &expected) < 1e-6,
        "{name}: axpy n={n}"
    );

    let mut dy = b.upload_vector("y", &y).unwrap();
    b.xpby(&dx, 0.25, &mut dy).unwrap();
    let expected: Vec<f64> = x64.iter().zip(&y64).map(|(x, y)| x + 0.25 * y).collect();
    assert!(
        reference::rel_error(&b.download_vector(&dy).unwrap(), &expected) < 1e-6,
        "{name}: xpby n={n}"
    );
}

#[test]
fn cpu_ops_match_f64_reference() {
    for (k, &n) in LENS.iter().enumerate() {
        check_ops(&Cpu::new(), n, k as u64);
    }
}

#[test]
fn gpu_ops_match_f64_reference() {
    for gpu in gpu_variants().into_iter().step_by(2) {
        for (k, &n) in LENS.iter().enumerate() {
            check_ops(&gpu, n, k as u64);
        }
    }
}

#[test]
fn downloads_return_what_was_uploaded() {
    let gpu = common::gpu();
    for (rows, cols) in [(1, 1), (3, 5), (17, 64), (5, 130)] {
        let data = normal(&mut rng(rows as u64), rows * cols);
        let m = gpu.upload_matrix("M", rows, cols, &data).unwrap();
        assert_eq!(gpu.download_matrix(&m).unwrap(), data, "{rows}×{cols}");
        assert_eq!(gpu.shape(&m), (rows, cols));
    }
    let v = normal(&mut rng(9), 7);
    assert_eq!(gpu.download_vector(&gpu.upload_vector("v", &v).unwrap()).unwrap(), v);
}

/// The vector ops the trainer uses, on one device, against f64 formulas.
fn check_trainer_ops<B: Backend>(b: &B, n: usize, seed: u64) {
    let name = b.describe();
    let mut r = rng(seed);
    let (x, w, g) = (normal(&mut r, n), normal(&mut r, n), normal(&mut r, n));
    let dx = b.upload_vector("x", &x).unwrap();
    let dw = b.upload_vector("w", &w).unwrap();
    let scale: f64 = x.iter().map(|v| (v * v) as f64).sum();
    // one vector on both sides: no binding conflict
    let xx = b.dot(&dx, &dx).unwrap();
    assert!((xx - scale).abs() <= 1e-5 * scale, "{name}: x·x n={n}");
    let xwx = b.weighted_dot(&dx, &dw, &dx).unwrap();
    let exact: f64 = x.iter().zip(&w).map(|(a, b)| (a * a * b) as f64).sum();
    assert!(
        (xwx - exact).abs() <= 1e-5 * scale,
        "{name}: Σ x w x n={n}: {xwx} vs {exact}"
    );
    let mut copy = b.zeros_vector("copy", n).unwrap();
    b.copy(&dx, &mut copy).unwrap();
    assert_eq!(b.download_vector(&copy).unwrap(), x, "{name}: copy");

    let dg = b.upload_vector("g", &g).unwrap();
    let mut theta = b.upload_vector("θ", &x).unwrap();
    let mut velocity = b.upload_vector("velocity", &w).unwrap();
    b.sgd_step(&mut theta, &dg, &mut velocity, 0.1, 0.9).unwrap();
    let v_expected: Vec<f64> = w.iter().zip(&g).map(|(v, g)| 0.9 * *v as f64 + *g as f64).collect();
    let t_expected: Vec<f64> = x.iter().zip(&v_expected).map(|(t, v)| *t as f64 - 0.1 * v).collect();
    assert!(
        reference::rel_error(&b.download_vector(&velocity).unwrap(), &v_expected) < 1e-6,
        "{name}: sgd v"
    );
    assert!(
        reference::rel_error(&b.download_vector(&theta).unwrap(), &t_expected) < 1e-6,
        "{name}: sgd θ"
    );

    let mut theta = b.upload_vector("θ", &x).unwrap();
    let mut m = b.upload_vector("m", &w).unwrap();
    let v0: Vec<f32> = w.iter().map(|v| v * v).collect();
    let mut v = b.upload_vector("v", &v0).unwrap();
    let step = natgrad::backend::AdamStep {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        t: 3,
    };
    b.adam_step(&mut theta, &dg, &mut m, &mut v, step).unwrap();
    let (b1, b2) = (1.0 - 0.9f64.powi(3), 1.0 - 0.99f64.powi(3));
    let expected: Vec<f64> = (0..n)
        .map(|i| {
            let mi = 0.9 * w[i] as f64 + 0.1 * g[i] as f64;
            let vi = 0.99 * v0[i] as f64 + 0.01 * (g[i] as f64).powi(2);
            x[i] as f64 - 0.01 * (mi / b1) / ((vi / b2).sqrt() + 1e-8)
        })
        .collect();
    assert!(
        reference::rel_error(&b.download_vector(&theta).unwrap(), &expected) < 1e-5,
        "{name}: adam θ"
    );
}

#[test]
fn trainer_vector_ops_match_f64_on_both_devices() {
    for (k, &n) in LENS.iter().enumerate() {
        check_trainer_ops(&Cpu::new(), n, 50 + k as u64);
    }
    for gpu in gpu_variants().into_iter().step_by(2) {
        for (k, &n) in LENS.iter().enumerate() {
            check_trainer_ops(&gpu, n, 50 + k as u64);
        }
    }
}
