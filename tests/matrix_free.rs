//! Matrix-free Fisher products and K-FAC's pieces on both devices against f64 references: F·v
//! for every Fisher kind × likelihood × activation, K-FAC's Kronecker factors, and the
//! layer-by-layer Kronecker product against the explicit (A ⊗ S).

mod common;

use common::{batch, likelihoods, normal, params, rng};
use natgrad::cpu::{Cpu, reference};
use natgrad::model::{Activation, FisherKind, Mlp, MlpSpec, SampleKey, reference as model_ref};
use natgrad::prelude::*;

const KEY: SampleKey = SampleKey { seed: 3, step: 7 };
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
    check_products(&common::gpu());
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
            b.kronecker_product(&mlp, &s, &a, &xv, &mut y).unwrap();
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
        }
    }
}

#[test]
fn kfac_factors_and_kronecker_products_match_f64_on_the_cpu() {
    check_kfac(&Cpu::new());
}

#[test]
fn kfac_factors_and_kronecker_products_match_f64_on_the_gpu() {
    check_kfac(&common::gpu());
}
