//! Matrix-free Fisher products and K-FAC's pieces on both devices against f64 references: F·v
//! for every Fisher kind × likelihood × activation, K-FAC's Kronecker factors, and the
//! layer-by-layer Kronecker product against the explicit (A ⊗ S).

mod common;

use common::{batch, likelihoods, normal, params, rng};
use natgrad::cpu::{Cpu, reference};
use natgrad::curvature::{At, CurvatureKind, CurvatureSettings, KfacSettings, PreconditionerKind};
use natgrad::model::{Activation, FisherKind, Mlp, MlpSpec, SampleKey, reference as model_ref};
use natgrad::prelude::*;

const KEY: SampleKey = SampleKey::new(3, 7);
const KINDS: [FisherKind; 3] = [
    FisherKind::Empirical,
    FisherKind::Sampled { draws: 3 },
    FisherKind::Exact,
];

fn mlp(activation: Activation, likelihood: natgrad::model::Likelihood) -> Mlp {
    Mlp::new(MlpSpec {
        inputs: 5,
        hidden: vec![7, 6],
        activation,
        likelihood,
    })
    .unwrap()
}

/// `F v` through the device's matrix-free product, for the batch's F of `kind`.
fn product<B: Backend>(
    b: &B,
    mlp: &Mlp,
    theta: &[f32],
    xs: &[f32],
    ys: &[f32],
    kind: FisherKind,
    v: &[f32],
) -> Vec<f32> {
    let mut batch = b.upload_batch(mlp, xs, ys).unwrap();
    let th = b.upload_vector("θ", theta).unwrap();
    b.forward(mlp, &th, &mut batch).unwrap();
    let vv = b.upload_vector("v", v).unwrap();
    let mut y = b.zeros_vector("F v", mlp.num_params()).unwrap();
    let n = xs.len() / mlp.inputs();
    b.fisher_product(mlp, &th, &mut batch, kind, KEY, &vv, 1.0 / n as f32, &mut y)
        .unwrap();
    // a second product on the same forward pass reuses the output factors: it must agree
    let mut again = b.zeros_vector("F v again", mlp.num_params()).unwrap();
    b.fisher_product(mlp, &th, &mut batch, kind, KEY, &vv, 1.0 / n as f32, &mut again)
        .unwrap();
    let (y, again) = (b.download_vector(&y).unwrap(), b.download_vector(&again).unwrap());
    assert_eq!(y, again, "{}: a repeated product differs", b.kind());
    // vᵀFv by the forward pass alone agrees with vᵀ(F v)
    let quad = b.fisher_quad(mlp, &th, &mut batch, kind, KEY, &vv).unwrap();
    let vfv: f64 = v.iter().zip(&y).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
    assert!(
        (quad - vfv).abs() <= 1e-4 * vfv.abs().max(1e-6),
        "{}: vᵀFv {quad} against vᵀ(Fv) {vfv}",
        b.kind()
    );
    y
}

fn check_products<B: Backend>(b: &B) {
    for activation in Activation::ALL {
        for likelihood in likelihoods() {
            let mlp = mlp(activation, likelihood);
            let p = mlp.num_params();
            let theta = params(&mlp, 1);
            let (xs, ys) = batch(&mlp, 9, 2);
            let v = normal(&mut rng(5), p);
            let theta64 = reference::to_f64(&theta);
            for kind in KINDS {
                let f = model_ref::fisher(&mlp, &theta64, &xs, &ys, kind, KEY);
                let want = reference::matvec(&f, 0.0, &reference::to_f64(&v));
                let got = product(b, &mlp, &theta, &xs, &ys, kind, &v);
                let err = reference::rel_error(&got, &want);
                assert!(
                    err < 1e-4,
                    "{} {} {} {}: F v off by {err:.2e}",
                    b.kind(),
                    activation.name(),
                    likelihood.name(),
                    kind.name()
                );
            }
        }
    }
}

#[test]
fn matrix_free_products_match_the_dense_fisher_on_the_cpu() {
    check_products(&Cpu::new());
}

#[test]
fn matrix_free_products_match_the_dense_fisher_on_the_gpu() {
    for gpu in common::gpu_per_matmul() {
        check_products(&gpu);
    }
}

/// K-FAC's factors in f64 from the reference model: A_l from the layers' inputs with a 1 appended,
/// S_l from the score rows' bias blocks (the seeds back-propagated to the pre-activations).
fn reference_factors(
    mlp: &Mlp,
    theta: &[f64],
    xs: &[f32],
    ys: &[f32],
    kind: FisherKind,
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let (d, p) = (mlp.inputs(), mlp.num_params());
    let n = xs.len() / d;
    let g = model_ref::score_matrix(mlp, theta, xs, ys, kind, KEY);
    let mut a_all = Vec::new();
    let mut s_all = Vec::new();
    for (l, layer) in mlp.layers().iter().enumerate() {
        let w = layer.fan_in + 1;
        let mut a = vec![0.0; w * w];
        for i in 0..n {
            let x: Vec<f64> = xs[i * d..(i + 1) * d].iter().map(|&v| v as f64).collect();
            let mut input = model_ref::forward(mlp, theta, &x).a[l].clone();
            input.push(1.0);
            for r in 0..w {
                for c in 0..w {
                    a[r * w + c] += input[r] * input[c] / n as f64;
                }
            }
        }
        let o = layer.fan_out;
        let mut s = vec![0.0; o * o];
        for row in g.chunks_exact(p) {
            let delta = &row[layer.bias..layer.bias + o];
            for r in 0..o {
                for c in 0..o {
                    s[r * o + c] += delta[r] * delta[c] / n as f64;
                }
            }
        }
        a_all.push(a);
        s_all.push(s);
    }
    (a_all, s_all)
}

fn check_kfac<B: Backend>(b: &B) {
    for likelihood in likelihoods() {
        let mlp = mlp(Activation::Tanh, likelihood);
        let theta = params(&mlp, 4);
        let (xs, ys) = batch(&mlp, 11, 6);
        let theta64 = reference::to_f64(&theta);
        for kind in KINDS {
            let (a_ref, s_ref) = reference_factors(&mlp, &theta64, &xs, &ys, kind);
            let mut batch = b.upload_batch(&mlp, &xs, &ys).unwrap();
            let th = b.upload_vector("θ", &theta).unwrap();
            b.forward(&mlp, &th, &mut batch).unwrap();
            let mut a: Vec<B::Matrix> = mlp
                .layers()
                .iter()
                .map(|l| b.zeros_matrix("A", l.fan_in + 1, l.fan_in + 1).unwrap())
                .collect();
            let mut s: Vec<B::Matrix> = mlp
                .layers()
                .iter()
                .map(|l| b.zeros_matrix("S", l.fan_out, l.fan_out).unwrap())
                .collect();
            b.kfac_factors(&mlp, &th, &mut batch, kind, KEY, &mut a, &mut s)
                .unwrap();
            for l in 0..mlp.layers().len() {
                let ea = reference::rel_error(&b.download_matrix(&a[l]).unwrap(), &a_ref[l]);
                let es = reference::rel_error(&b.download_matrix(&s[l]).unwrap(), &s_ref[l]);
                let what = format!("{} {} {} layer {l}", b.kind(), likelihood.name(), kind.name());
                assert!(ea < 1e-5, "{what}: A off by {ea:.2e}");
                assert!(es < 1e-4, "{what}: S off by {es:.2e}");
            }
            // the Kronecker product with these factors against (A ⊗ S) on each layer's block
            let x = normal(&mut rng(8), mlp.num_params());
            let xv = b.upload_vector("x", &x).unwrap();
            let mut y = b.zeros_vector("y", mlp.num_params()).unwrap();
            b.kronecker_product(&mlp, &s, &a, &xv, &mut y, &vec![true; mlp.layers().len()])
                .unwrap();
            let y = b.download_vector(&y).unwrap();
            let mut want = vec![0.0f64; mlp.num_params()];
            for (l, layer) in mlp.layers().iter().enumerate() {
                let (fi, fo, w) = (layer.fan_in, layer.fan_out, layer.fan_in + 1);
                let at = |o: usize, j: usize| {
                    (if j < fi {
                        x[layer.weight + o * fi + j]
                    } else {
                        x[layer.bias + o]
                    }) as f64
                };
                for o in 0..fo {
                    for j in 0..w {
                        let v: f64 = (0..fo)
                            .flat_map(|k| (0..w).map(move |m| (k, m)))
                            .map(|(k, m)| s_ref[l][o * fo + k] * at(k, m) * a_ref[l][m * w + j])
                            .sum();
                        let index = if j < fi {
                            layer.weight + o * fi + j
                        } else {
                            layer.bias + o
                        };
                        want[index] = v;
                    }
                }
            }
            let err = reference::rel_error(&y, &want);
            assert!(
                err < 1e-4,
                "{} {} {}: (A ⊗ S) x off by {err:.2e}",
                b.kind(),
                likelihood.name(),
                kind.name()
            );
            // the layers a mask leaves out keep what y held (ranks share the layers out)
            let mask: Vec<bool> = (0..mlp.layers().len()).map(|l| l % 2 == 1).collect();
            let held = vec![7.0f32; mlp.num_params()];
            let mut y = b.upload_vector("y", &held).unwrap();
            b.kronecker_product(&mlp, &s, &a, &xv, &mut y, &mask).unwrap();
            let y = b.download_vector(&y).unwrap();
            for (l, layer) in mlp.layers().iter().enumerate() {
                let span = layer.weight..layer.bias + layer.fan_out;
                if mask[l] {
                    let want: Vec<f64> = want[span.clone()].to_vec();
                    let err = reference::rel_error(&y[span], &want);
                    assert!(err < 1e-4, "{}: masked-in layer {l} off by {err:.2e}", b.kind());
                } else {
                    assert!(
                        y[span].iter().all(|&v| v == 7.0),
                        "{}: masked-out layer {l} was written",
                        b.kind()
                    );
                }
            }
        }
    }
}

#[test]
fn kfac_factors_and_kronecker_products_match_f64_on_the_cpu() {
    check_kfac(&Cpu::new());
}

#[test]
fn kfac_factors_and_kronecker_products_match_f64_on_the_gpu() {
    for gpu in common::gpu_per_matmul() {
        check_kfac(&gpu);
    }
}

/// K-FAC's solve with damping λ against the explicit `((A + π√λI) ⊗ (S + √λ/π I))⁻¹ g` per layer in
/// f64, with the batch's own factors (no averaging, S's expectation in closed form).
fn check_kfac_solve<B: Backend>(b: &B) {
    let mlp = mlp(Activation::Tanh, natgrad::model::Likelihood::Categorical { classes: 3 });
    let theta = params(&mlp, 2);
    let (xs, ys) = batch(&mlp, 13, 4);
    let g = normal(&mut rng(9), mlp.num_params());
    let damping = 0.05f32;
    let settings = CurvatureSettings {
        kfac: KfacSettings {
            decay: 0.0,
            inverse_every: 1,
            draws: 0,
        },
        ..Default::default()
    };
    let mut c = CurvatureKind::Kfac.create(b, &mlp, &settings).unwrap();
    let mut batch = b.upload_batch(&mlp, &xs, &ys).unwrap();
    let th = b.upload_vector("θ", &theta).unwrap();
    b.forward(&mlp, &th, &mut batch).unwrap();
    let mut at = At {
        mlp: &mlp,
        theta: &th,
        batch: &mut batch,
        fisher: FisherKind::Exact,
        key: KEY,
        weight_decay: 0.0,
        ranks: natgrad::dist::Ranks::solo(ys.len()),
    };
    c.build(b, &mut at).unwrap();
    let gv = b.upload_vector("g", &g).unwrap();
    let mut d = b.zeros_vector("d", mlp.num_params()).unwrap();
    c.solve(b, &mut at, damping, &gv, &mut d, &Default::default()).unwrap();
    let d = b.download_vector(&d).unwrap();
    let (a_ref, s_ref) = reference_factors(&mlp, &reference::to_f64(&theta), &xs, &ys, FisherKind::Exact);
    let mut want = vec![0.0f64; mlp.num_params()];
    for (l, layer) in mlp.layers().iter().enumerate() {
        let (fi, fo, w) = (layer.fan_in, layer.fan_out, layer.fan_in + 1);
        let trace = |m: &[f64], dim: usize| (0..dim).map(|i| m[i * dim + i]).sum::<f64>() / dim as f64;
        let pi = (trace(&a_ref[l], w) / trace(&s_ref[l], fo)).sqrt();
        let root = (damping as f64).sqrt();
        // (A_d ⊗ S_d) vec(X) = vec(S_d X A_d) for X = [W | b]: solve the Kronecker system whole
        let dim = fo * w;
        let mut k = vec![0.0f64; dim * dim];
        for o in 0..fo {
            for j in 0..w {
                for o2 in 0..fo {
                    for j2 in 0..w {
                        let a = a_ref[l][j * w + j2] + if j == j2 { pi * root } else { 0.0 };
                        let s = s_ref[l][o * fo + o2] + if o == o2 { root / pi } else { 0.0 };
                        k[(o * w + j) * dim + o2 * w + j2] = s * a;
                    }
                }
            }
        }
        let index = |o: usize, j: usize| {
            if j < fi {
                layer.weight + o * fi + j
            } else {
                layer.bias + o
            }
        };
        let rhs: Vec<f64> = (0..dim).map(|q| g[index(q / w, q % w)] as f64).collect();
        let x = reference::solve_spd(&k, 0.0, &rhs).unwrap();
        (0..dim).for_each(|q| want[index(q / w, q % w)] = x[q]);
    }
    let err = reference::rel_error(&d, &want);
    assert!(err < 1e-3, "{}: K-FAC's d off by {err:.2e}", b.kind());
    assert!(d.iter().all(|v| v.is_finite()));
}

#[test]
fn kfac_solves_its_kronecker_system_on_both_devices() {
    check_kfac_solve(&Cpu::new());
    check_kfac_solve(&common::gpu());
}

/// Matrix-free CG with and without K-FAC's preconditioner, on `examples` digits at θ after 30
/// K-FAC steps: truncated after a few iterations (as natural gradient stops it) the preconditioned
/// iterate lowers CG's quadratic model `φ(d) = ½dᵀAd − gᵀd` further, and solved tightly both
/// reach one solution. (To a tight tolerance preconditioning does not save iterations here: it
/// helps the first iterations most, and the residual norm CG stops on weighs the directions K-FAC
/// de-emphasises; the diagonal of the true F does the same.)
fn check_preconditioning<B: Backend>(b: &B, examples: usize) {
    let digits = natgrad::data::builtin::digits().unwrap();
    let mlp = Mlp::new(MlpSpec {
        inputs: 64,
        hidden: vec![32],
        activation: Activation::Relu,
        likelihood: natgrad::model::Likelihood::Categorical { classes: 10 },
    })
    .unwrap();
    let cpu = Cpu::new();
    let mut config = natgrad::OptimConfig::default();
    config.ngd.curvature = natgrad::CurvatureChoice::Kind(CurvatureKind::Kfac);
    let mut trainer = natgrad::Trainer::new(&cpu, mlp.clone(), &mlp.init(6), config, 200, 0).unwrap();
    for step in 0..30 {
        let (x, y) = digits.gather(&natgrad::data::batches(digits.n, 200, 0, step / 9 + 1)[step % 9]);
        trainer.step(&x, &y).unwrap();
    }
    let theta = trainer.parameters().unwrap();
    let idx: Vec<usize> = (0..examples).collect();
    let (xs, ys) = digits.gather(&idx);
    let g = normal(&mut rng(10), mlp.num_params());
    let damping = 1e-3;
    // the solution after `cg`, and φ there
    let solve = |preconditioner, cg: natgrad::CgParams| {
        let settings = CurvatureSettings {
            preconditioner,
            cg_progress: 0.0,
            ..Default::default()
        };
        let mut c = CurvatureKind::Implicit.create(b, &mlp, &settings).unwrap();
        let mut batch = b.upload_batch(&mlp, &xs, &ys).unwrap();
        let th = b.upload_vector("θ", &theta).unwrap();
        b.forward(&mlp, &th, &mut batch).unwrap();
        let mut at = At {
            mlp: &mlp,
            theta: &th,
            batch: &mut batch,
            fisher: FisherKind::Exact,
            key: KEY,
            weight_decay: 0.0,
            ranks: natgrad::dist::Ranks::solo(ys.len()),
        };
        c.build(b, &mut at).unwrap();
        let gv = b.upload_vector("g", &g).unwrap();
        let mut d = b.zeros_vector("d", mlp.num_params()).unwrap();
        c.solve(b, &mut at, damping, &gv, &mut d, &cg).unwrap();
        let phi = 0.5 * c.quad(b, &mut at, damping, &d).unwrap() - b.dot(&gv, &d).unwrap();
        (b.download_vector(&d).unwrap(), phi)
    };
    for iterations in [3, 6] {
        let truncated = natgrad::CgParams {
            max_iters: iterations,
            rel_tol: 0.0,
        };
        let (_, plain) = solve(PreconditionerKind::None, truncated);
        let (_, kfac) = solve(PreconditionerKind::Kfac, truncated);
        assert!(
            kfac < plain,
            "{} after {iterations} iterations: φ {kfac:.4e} preconditioned, {plain:.4e} plain",
            b.kind()
        );
    }
    let tight = natgrad::CgParams {
        max_iters: 2000,
        rel_tol: 1e-4,
    };
    let (plain, _) = solve(PreconditionerKind::None, tight);
    let (kfac, _) = solve(PreconditionerKind::Kfac, tight);
    let err = reference::rel_error(&kfac, &reference::to_f64(&plain));
    assert!(err < 1e-2, "{}: preconditioned d differs by {err:.2e}", b.kind());
}

#[test]
fn kfac_preconditioned_cg_lowers_the_quadratic_model_sooner_and_reaches_the_same_solution() {
    check_preconditioning(&Cpu::new(), 200);
    check_preconditioning(&common::gpu(), 30);
}

/// With no damping at all on a batch of two examples (factors of rank 2 in 8 and 7 dimensions),
/// K-FAC's step stays finite: the singular factors' damping is raised.
#[test]
fn kfac_steps_stay_finite_with_zero_damping() {
    let mlp = mlp(Activation::Tanh, natgrad::model::Likelihood::Categorical { classes: 3 });
    let cpu = Cpu::new();
    let (xs, ys) = batch(&mlp, 2, 1);
    let mut config = natgrad::OptimConfig::new(natgrad::OptimizerKind::Ngd, 1.0);
    config.ngd.curvature = natgrad::CurvatureChoice::Kind(CurvatureKind::Kfac);
    config.ngd.damping = 0.0;
    let mut trainer = natgrad::Trainer::new(&cpu, mlp.clone(), &params(&mlp, 3), config, 2, 0).unwrap();
    for _ in 0..5 {
        let stats = trainer.step(&xs, &ys).unwrap();
        assert!(
            stats.loss.is_finite() && stats.update.step_size.is_finite(),
            "{stats:?}"
        );
    }
    assert!(trainer.parameters().unwrap().iter().all(|v| v.is_finite()));
}

/// Factors of layers wide enough that their symmetric products span several tiles on each side
/// of the diagonal (the tiles wholly below it are skipped and filled from above), at awkward
/// widths, on both matrix-product kernels.
#[test]
fn wide_kfac_factors_match_f64_on_both_matmul_kernels() {
    let mlp = Mlp::new(MlpSpec {
        inputs: 70,
        hidden: vec![300],
        activation: Activation::Tanh,
        likelihood: natgrad::model::Likelihood::Categorical { classes: 3 },
    })
    .unwrap();
    let theta = params(&mlp, 5);
    let (xs, ys) = batch(&mlp, 37, 7);
    let kind = FisherKind::Empirical;
    let (a_ref, s_ref) = reference_factors(&mlp, &reference::to_f64(&theta), &xs, &ys, kind);
    for gpu in common::gpu_per_matmul() {
        let mut batch = gpu.upload_batch(&mlp, &xs, &ys).unwrap();
        let th = gpu.upload_vector("θ", &theta).unwrap();
        gpu.forward(&mlp, &th, &mut batch).unwrap();
        let dims: Vec<(usize, usize)> = mlp.layers().iter().map(|l| (l.fan_in + 1, l.fan_out)).collect();
        let mut a: Vec<_> = dims.iter().map(|d| gpu.zeros_matrix("A", d.0, d.0).unwrap()).collect();
        let mut s: Vec<_> = dims.iter().map(|d| gpu.zeros_matrix("S", d.1, d.1).unwrap()).collect();
        gpu.kfac_factors(&mlp, &th, &mut batch, kind, KEY, &mut a, &mut s)
            .unwrap();
        for l in 0..dims.len() {
            let ea = reference::rel_error(&gpu.download_matrix(&a[l]).unwrap(), &a_ref[l]);
            let es = reference::rel_error(&gpu.download_matrix(&s[l]).unwrap(), &s_ref[l]);
            assert!(ea < 1e-5 && es < 1e-4, "layer {l}: A off by {ea:.2e}, S by {es:.2e}");
        }
    }
}
