//! Curvature representations: every one on both devices against f64 solves of the system it
//! stands for, the primitives behind them against f64, and the memory plan.

mod common;

use common::{batch, normal, params, rng};
use natgrad::cpu::{Cpu, reference};
use natgrad::curvature::{At, CurvatureKind, CurvatureSettings, Limits, Shape, plan};
use natgrad::model::{Activation, Likelihood, Mlp, MlpSpec, reference as model_ref};
use natgrad::model::{FisherKind, SampleKey};
use natgrad::prelude::*;
use natgrad::{CgParams, Error};

const KEY: SampleKey = SampleKey::new(1, 2);
const DAMPING: f32 = 1e-2;
const DECAY: f32 = 0.05;

fn mlp() -> Mlp {
    Mlp::new(MlpSpec {
        inputs: 5,
        hidden: vec![7],
        activation: Activation::Tanh,
        likelihood: Likelihood::Categorical { classes: 3 },
    })
    .unwrap()
}

/// A = F + wd·D_W + λI in f64, and its block-diagonal (per layer) and diagonal parts.
fn reference_system(mlp: &Mlp, theta: &[f32], xs: &[f32], ys: &[f32]) -> Vec<f64> {
    let p = mlp.num_params();
    let theta64: Vec<f64> = theta.iter().map(|&v| v as f64).collect();
    let mut a = model_ref::fisher(mlp, &theta64, xs, ys, FisherKind::Exact, KEY);
    for (i, m) in mlp.weight_mask().iter().enumerate() {
        a[i * p + i] += DECAY as f64 * *m as f64;
    }
    a
}

fn solve_with<B: Backend>(
    b: &B,
    kind: CurvatureKind,
    mlp: &Mlp,
    theta: &[f32],
    xs: &[f32],
    ys: &[f32],
    g: &[f32],
) -> (Vec<f32>, f64) {
    let mut batch = b.upload_batch(mlp, xs, ys).unwrap();
    let th = b.upload_vector("θ", theta).unwrap();
    b.forward(mlp, &th, &mut batch).unwrap();
    // CG to its tolerance: the relative-progress rule off
    let settings = CurvatureSettings {
        cg_progress: 0.0,
        ..Default::default()
    };
    let mut c = kind.create(b, mlp, &settings).unwrap();
    let mut at = At {
        mlp,
        theta: &th,
        batch: &mut batch,
        fisher: FisherKind::Exact,
        key: KEY,
        weight_decay: DECAY,
        ranks: natgrad::dist::Ranks::solo(ys.len()),
    };
    c.build(b, &mut at).unwrap();
    let gv = b.upload_vector("g", g).unwrap();
    let mut d = b.zeros_vector("d", mlp.num_params()).unwrap();
    let cg = CgParams {
        max_iters: 500,
        rel_tol: 1e-6,
    };
    c.solve(b, &mut at, DAMPING, &gv, &mut d, &cg).unwrap();
    let quad = c.quad(b, &mut at, DAMPING, &d).unwrap();
    (b.download_vector(&d).unwrap(), quad)
}

fn check_representations<B: Backend>(b: &B) {
    let mlp = mlp();
    let p = mlp.num_params();
    let theta = params(&mlp, 3);
    // 6 examples × 3 classes = 18 score rows < 66 parameters: Woodbury's case
    let (xs, ys) = batch(&mlp, 6, 3);
    let g = normal(&mut rng(4), p);
    let a = reference_system(&mlp, &theta, &xs, &ys);
    let g64 = reference::to_f64(&g);
    let exact = reference::solve_spd(&a, DAMPING as f64, &g64).unwrap();
    // per-layer blocks: zero the cross-layer entries
    let mut blocks = vec![0.0; p * p];
    for l in mlp.layers() {
        for i in l.weight..l.weight + l.len() {
            for j in l.weight..l.weight + l.len() {
                blocks[i * p + j] = a[i * p + j];
            }
        }
    }
    let block_exact = reference::solve_spd(&blocks, DAMPING as f64, &g64).unwrap();
    let diagonal_exact: Vec<f64> = (0..p).map(|i| g64[i] / (a[i * p + i] + DAMPING as f64)).collect();
    let quad_of = |m: &[f64], d: &[f32]| {
        let d = reference::to_f64(d);
        let ad = reference::matvec(m, DAMPING as f64, &d);
        d.iter().zip(&ad).map(|(x, y)| x * y).sum::<f64>()
    };
    let mut diag_matrix = vec![0.0; p * p];
    (0..p).for_each(|i| diag_matrix[i * p + i] = a[i * p + i]);
    for (kind, expected, matrix) in [
        (CurvatureKind::Dense, &exact, &a),
        (CurvatureKind::Implicit, &exact, &a),
        (CurvatureKind::Woodbury, &exact, &a),
        (CurvatureKind::Block, &block_exact, &blocks),
        (CurvatureKind::Diagonal, &diagonal_exact, &diag_matrix),
    ] {
        let (d, quad) = solve_with(b, kind, &mlp, &theta, &xs, &ys, &g);
        let err = reference::rel_error(&d, expected);
        assert!(err < 2e-3, "{} {}: d off by {err:.2e}", b.kind(), kind.name());
        let q = quad_of(matrix, &d);
        assert!(
            (quad - q).abs() <= 1e-3 * q,
            "{} {}: dᵀAd {quad} vs {q}",
            b.kind(),
            kind.name()
        );
    }
}

#[test]
fn every_representation_solves_its_system_on_the_cpu() {
    check_representations(&Cpu::new());
}

#[test]
fn every_representation_solves_its_system_on_the_gpu() {
    check_representations(&common::gpu());
}

#[test]
fn woodbury_refuses_a_singular_d() {
    let mlp = mlp();
    let cpu = Cpu::new();
    let (xs, ys) = batch(&mlp, 4, 1);
    let mut b = cpu.upload_batch(&mlp, &xs, &ys).unwrap();
    let th = cpu.upload_vector("θ", &mlp.init(0)).unwrap();
    cpu.forward(&mlp, &th, &mut b).unwrap();
    let mut c = CurvatureKind::Woodbury.create(&cpu, &mlp, &Default::default()).unwrap();
    let mut at = At {
        mlp: &mlp,
        theta: &th,
        batch: &mut b,
        fisher: FisherKind::Empirical,
        key: KEY,
        weight_decay: 0.0,
        ranks: natgrad::dist::Ranks::solo(ys.len()),
    };
    c.build(&cpu, &mut at).unwrap();
    let g = cpu.upload_vector("g", &vec![1.0; mlp.num_params()]).unwrap();
    let mut d = cpu.zeros_vector("d", mlp.num_params()).unwrap();
    let r = c.solve(&cpu, &mut at, 0.0, &g, &mut d, &CgParams::default());
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
}

/// The primitives against f64 formulas, on one device.
fn check_primitives<B: Backend>(b: &B) {
    let name = b.kind();
    let (rows, cols) = (7, 1030);
    let mut r = rng(9);
    let a = normal(&mut r, rows * cols);
    let (x, xr, w) = (normal(&mut r, cols), normal(&mut r, rows), normal(&mut r, cols));
    let w_pos: Vec<f32> = w.iter().map(|v| v.abs() + 0.5).collect();
    let da = b.upload_matrix("A", rows, cols, &a).unwrap();
    let (dx, dxr, dw) = (
        b.upload_vector("x", &x).unwrap(),
        b.upload_vector("xr", &xr).unwrap(),
        b.upload_vector("w", &w_pos).unwrap(),
    );
    let at = |i: usize, j: usize| a[i * cols + j] as f64;
    let close = |got: &[f32], want: &[f64], what: &str| {
        let e = reference::rel_error(got, want);
        assert!(e < 1e-5, "{name} {what}: {e:.2e}");
    };

    let mut y = b.zeros_vector("y", rows).unwrap();
    b.gemv(&da, &dx, &mut y).unwrap();
    close(
        &b.download_vector(&y).unwrap(),
        &(0..rows)
            .map(|i| (0..cols).map(|j| at(i, j) * x[j] as f64).sum())
            .collect::<Vec<_>>(),
        "gemv",
    );

    let mut y = b.upload_vector("y", &w).unwrap();
    b.gemv_t(&da, &dxr, 0.5, true, &mut y).unwrap();
    let want: Vec<f64> = (0..cols)
        .map(|j| w[j] as f64 + 0.5 * (0..rows).map(|i| at(i, j) * xr[i] as f64).sum::<f64>())
        .collect();
    close(&b.download_vector(&y).unwrap(), &want, "gemv_t");

    let mut y = b.upload_vector("y", &w).unwrap();
    b.column_sq_sums(&da, 0.25, false, &mut y).unwrap();
    close(
        &b.download_vector(&y).unwrap(),
        &(0..cols)
            .map(|j| 0.25 * (0..rows).map(|i| at(i, j).powi(2)).sum::<f64>())
            .collect::<Vec<_>>(),
        "column sums of squares",
    );

    let mut y = b.upload_vector("y", &x).unwrap();
    b.scale_add(&dw, &dx, 2.0, &mut y).unwrap();
    close(
        &b.download_vector(&y).unwrap(),
        &(0..cols)
            .map(|j| 2.0 * x[j] as f64 + (w_pos[j] * x[j]) as f64)
            .collect::<Vec<_>>(),
        "scale_add",
    );

    let mut y = b.zeros_vector("y", cols).unwrap();
    b.divide(&dx, &dw, &mut y).unwrap();
    close(
        &b.download_vector(&y).unwrap(),
        &(0..cols).map(|j| x[j] as f64 / w_pos[j] as f64).collect::<Vec<_>>(),
        "divide",
    );

    let mut m = b.upload_matrix("A", rows, cols, &a).unwrap();
    b.scale_columns(&mut m, &dw).unwrap();
    close(
        &b.download_matrix(&m).unwrap(),
        &(0..rows * cols)
            .map(|k| at(k / cols, k % cols) * w_pos[k % cols] as f64)
            .collect::<Vec<_>>(),
        "scale_columns",
    );

    let mut k = b.zeros_matrix("K", 9, 12).unwrap();
    let (b1, b2) = (
        b.upload_matrix("B1", 3, cols, &a[..3 * cols]).unwrap(),
        b.upload_matrix("B2", 5, cols, &a[2 * cols..]).unwrap(),
    );
    b.gram_block(&mut k, &b1, &b2, 4, 6).unwrap();
    let got = b.download_matrix(&k).unwrap();
    let mut want = vec![0.0f64; 9 * 12];
    for i in 0..3 {
        for j in 0..5 {
            want[(4 + i) * 12 + 6 + j] = (0..cols).map(|c| at(i, c) * at(2 + j, c)).sum();
        }
    }
    close(&got, &want, "gram_block");

    let mut cols_out = b.zeros_matrix("columns", rows, 13).unwrap();
    b.copy_columns(&da, 1011, &mut cols_out).unwrap();
    close(
        &b.download_matrix(&cols_out).unwrap(),
        &(0..rows * 13).map(|k| at(k / 13, 1011 + k % 13)).collect::<Vec<_>>(),
        "copy_columns",
    );

    let mut y = b.upload_vector("y", &w).unwrap();
    b.copy_range(&dx, 3, &mut y, 1000, 21).unwrap();
    let mut want: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    (0..21).for_each(|i| want[1000 + i] = x[3 + i] as f64);
    close(&b.download_vector(&y).unwrap(), &want, "copy_range");
    assert!(
        matches!(b.copy_range(&dx, 1020, &mut y, 0, 21), Err(Error::Shape(_))),
        "{name}: range past the end"
    );
}

#[test]
fn curvature_primitives_match_f64_on_both_devices() {
    check_primitives(&Cpu::new());
    for gpu in common::gpu_per_matmul() {
        check_primitives(&gpu);
    }
}

#[test]
fn the_memory_plan_refuses_with_the_buffer_the_limit_and_a_fitting_representation() {
    let model = |inputs, hidden: Vec<usize>, likelihood| {
        Mlp::new(MlpSpec {
            inputs,
            hidden,
            activation: Activation::Relu,
            likelihood,
        })
        .unwrap()
    };
    let limits = |max_buffer, memory| Limits { max_buffer, memory };
    let cadence = plan::Cadence {
        cg_iters: 50,
        inverse_every: 10,
    };
    let choose = |s: &Shape, l: &Limits| plan::choose(s, l, cadence).0;
    // the 784-256-256-10 MLP with 200 score rows, on a device of 128 MiB buffers and 8 GiB
    let big = model(784, vec![256, 256], Likelihood::Categorical { classes: 10 });
    let p = big.num_params();
    let (mlp_784, device) = (Shape::of(&big, 200, FisherKind::Empirical), limits(128 << 20, 8 << 30));
    let e = plan::check_fits(CurvatureKind::Dense, &mlp_784, &device)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Fisher matrix F") && e.contains(&format!("{p}×{p}")) && e.contains(&(128u64 << 20).to_string()),
        "{e}"
    );
    assert!(
        e.contains("--curvature implicit or woodbury or diagonal or kfac would fit"),
        "{e}"
    );
    assert!(plan::check_fits(CurvatureKind::Woodbury, &mlp_784, &device).is_ok());
    // every exact step costs far more than K-FAC's here
    assert_eq!(choose(&mlp_784, &device), CurvatureKind::Kfac);
    // a logistic regression: the dense Fisher of 4 parameters is as cheap as anything, and exact
    let logistic = model(3, vec![], Likelihood::Bernoulli);
    assert_eq!(
        choose(&Shape::of(&logistic, 200, FisherKind::Exact), &device),
        CurvatureKind::Dense
    );
    // 12 MB of memory: the vectors (8.6 MB) and one row of G fit, K-FAC's factors do not
    assert_eq!(
        choose(&mlp_784, &limits(1_200_000, 12_000_000)),
        CurvatureKind::Diagonal
    );
    // the cost model ranks the representations as their work does
    let flops = |k| plan::step_flops(k, &mlp_784, cadence);
    assert!(flops(CurvatureKind::Kfac) < flops(CurvatureKind::Implicit));
    assert!(flops(CurvatureKind::Implicit) < flops(CurvatureKind::Dense));
}

#[test]
fn gram_blocks_over_long_rows_count_every_column() {
    let (rows, cols) = (3, 70_001);
    let ones = vec![1.0f32; rows * cols];
    let gpus = common::gpu_per_matmul();
    for (name, k) in [
        ("cpu", gram_of(&Cpu::new(), rows, cols, &ones)),
        ("gpu, staged matmul", gram_of(&gpus[0], rows, cols, &ones)),
        ("gpu, direct matmul", gram_of(&gpus[1], rows, cols, &ones)),
    ] {
        assert!(k.iter().all(|&v| v == cols as f32), "{name}: {k:?}");
    }
}

fn gram_of<B: Backend>(b: &B, rows: usize, cols: usize, data: &[f32]) -> Vec<f32> {
    let a = b.upload_matrix("A", rows, cols, data).unwrap();
    let mut k = b.zeros_matrix("K", rows, rows).unwrap();
    b.gram_block(&mut k, &a, &a, 0, 0).unwrap();
    b.download_matrix(&k).unwrap()
}

/// Gram blocks large enough for the wide direct kernel (at least 64 narrow tiles) and small
/// ones, at awkward sizes, against f64 on both matrix-product kernels.
#[test]
fn gram_blocks_match_f64_on_both_matmul_kernels() {
    for (rows, cols) in [(300, 37), (257, 129), (5, 3), (33, 65)] {
        let data = common::normal(&mut common::rng(rows as u64), rows * cols);
        let want: Vec<f64> = (0..rows * rows)
            .map(|ij| {
                let (i, j) = (ij / rows, ij % rows);
                (0..cols)
                    .map(|c| data[i * cols + c] as f64 * data[j * cols + c] as f64)
                    .sum()
            })
            .collect();
        for (name, gpu) in ["staged", "direct"].iter().zip(common::gpu_per_matmul()) {
            let got = gram_of(&gpu, rows, cols, &data);
            let err = natgrad::cpu::reference::rel_error(&got, &want);
            assert!(err < 1e-5, "{name} matmul, {rows}×{cols}: {err:.2e}");
        }
    }
}
