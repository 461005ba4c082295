//! Vector kernels: matvec, dot, axpy, xpby on GPU = CPU = f64 reference.

mod common;

use common::{gpu_variants, normal, rng};
use natgrad::Backend;
use natgrad::cpu::{Cpu, reference};

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
    let dot = b.dot(&dx, &dy).unwrap() as f64;
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
