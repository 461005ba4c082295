//! Scores, gradients and the three Fisher kinds: GPU = CPU = f64 reference, and the identities
//! the theory promises (closed-form exact Fisher, sampled → exact, zero expected score, and
//! ½ dᵀF d = KL to second order).

mod common;

use common::{batch, gpu_variants, likelihoods, normal, params, rng};
use natgrad::cpu::{Cpu, reference::rel_error};
use natgrad::curvature::scores;
use natgrad::model::likelihood::softmax;
use natgrad::model::{Activation, Likelihood, Mlp, MlpSpec, reference};
use natgrad::model::{FisherKind, SampleKey};
use natgrad::prelude::*;

const KINDS: [FisherKind; 3] = [
    FisherKind::Empirical,
    FisherKind::Sampled { draws: 3 },
    FisherKind::Exact,
];
const KEY: SampleKey = SampleKey::new(7, 3);

fn mlp(hidden: Vec<usize>, activation: Activation, likelihood: Likelihood) -> Mlp {
    Mlp::new(MlpSpec {
        inputs: 5,
        hidden,
        activation,
        likelihood,
    })
    .unwrap()
}

/// Every activation × likelihood with awkward widths, and the linear models.
fn models() -> Vec<Mlp> {
    let mut all = Vec::new();
    for likelihood in likelihoods() {
        for activation in Activation::ALL {
            all.push(mlp(vec![7, 3], activation, likelihood));
        }
        all.push(mlp(vec![], Activation::Tanh, likelihood));
    }
    all
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

struct DeviceResult {
    loss: f64,
    accuracy: f64,
    gradient: Vec<f32>,
    scores: Vec<f32>,
}

/// Loss, gradient (wd 0.1) and all rows of G of `kind`, in two uneven chunks.
fn on_device<B: Backend>(b: &B, mlp: &Mlp, theta: &[f32], xs: &[f32], ys: &[f32], kind: FisherKind) -> DeviceResult {
    let mut batch = b.upload_batch(mlp, xs, ys).unwrap();
    let theta = b.upload_vector("θ", theta).unwrap();
    b.forward(mlp, &theta, &mut batch).unwrap();
    let loss = b.batch_loss(mlp, &batch).unwrap();
    let mut g = b.zeros_vector("g", mlp.num_params()).unwrap();
    b.gradient(mlp, &theta, &mut batch, 0.1, &mut g).unwrap();
    let total = b.batch_size(&batch) * kind.rows_per_example(mlp.likelihood());
    let cut = total / 2 + 1;
    let mut scores = Vec::new();
    for rows in [0..cut, cut..total] {
        let mut out = b.zeros_matrix("G chunk", rows.len(), mlp.num_params()).unwrap();
        b.score_rows(mlp, &theta, &mut batch, kind, KEY, rows, &mut out)
            .unwrap();
        scores.extend(b.download_matrix(&out).unwrap());
    }
    DeviceResult {
        loss: loss.loss,
        accuracy: loss.accuracy,
        gradient: b.download_vector(&g).unwrap(),
        scores,
    }
}

fn check_against_reference<B: Backend>(b: &B) {
    for (k, mlp) in models().iter().enumerate() {
        let theta = params(mlp, k as u64);
        let (xs, ys) = batch(mlp, 11, k as u64);
        let theta64 = f64s(&theta);
        let (loss, accuracy) = reference::loss(mlp, &theta64, &xs, &ys);
        let gradient = reference::gradient(mlp, &theta64, &xs, &ys, 0.1);
        let name = format!("{} on {:?}", b.kind(), mlp.spec());
        for kind in KINDS {
            let got = on_device(b, mlp, &theta, &xs, &ys, kind);
            let scores = reference::score_matrix(mlp, &theta64, &xs, &ys, kind, KEY);
            let err = rel_error(&got.scores, &scores);
            assert!(err < 1e-4, "{name}, {kind:?}: G error {err:.2e}");
            assert!(
                (got.loss - loss).abs() <= 1e-5 * loss.abs().max(1.0),
                "{name}: loss {} vs {loss}",
                got.loss
            );
            assert_eq!(got.accuracy, accuracy, "{name}: accuracy");
            let err = rel_error(&got.gradient, &gradient);
            assert!(err < 1e-4, "{name}: gradient error {err:.2e}");
        }
    }
}

#[test]
fn cpu_scores_gradient_and_loss_match_f64() {
    check_against_reference(&Cpu::new());
}

#[test]
fn gpu_scores_gradient_and_loss_match_f64() {
    for gpu in gpu_variants().into_iter().step_by(2) {
        check_against_reference(&gpu);
    }
}

#[test]
fn gpu_and_cpu_draw_the_same_labels() {
    // the sampled rows depend on the draws: equal rows mean equal draws from one key
    let mlp = mlp(vec![6], Activation::Gelu, Likelihood::Categorical { classes: 4 });
    let theta = params(&mlp, 3);
    let (xs, ys) = batch(&mlp, 40, 3);
    let kind = FisherKind::Sampled { draws: 5 };
    let cpu = on_device(&Cpu::new(), &mlp, &theta, &xs, &ys, kind).scores;
    let gpu = on_device(&common::gpu(), &mlp, &theta, &xs, &ys, kind).scores;
    assert!(common::rel_diff(&gpu, &cpu) < 1e-5);
}

/// F built through `fisher::build` on a device.
fn device_fisher<B: Backend>(
    b: &B,
    mlp: &Mlp,
    theta: &[f32],
    xs: &[f32],
    ys: &[f32],
    kind: FisherKind,
    wd: f32,
) -> Vec<f32> {
    let mut batch = b.upload_batch(mlp, xs, ys).unwrap();
    let theta = b.upload_vector("θ", theta).unwrap();
    b.forward(mlp, &theta, &mut batch).unwrap();
    let p = mlp.num_params();
    let mut f = b.zeros_matrix("F", p, p).unwrap();
    scores::build(b, mlp, &theta, &mut batch, kind, KEY, wd, &mut f).unwrap();
    b.download_matrix(&f).unwrap()
}

#[test]
fn the_exact_fisher_of_a_linear_softmax_model_has_its_closed_form() {
    let (d, classes, n) = (4, 3, 9);
    let mlp = Mlp::new(MlpSpec {
        inputs: d,
        hidden: vec![],
        activation: Activation::Tanh,
        likelihood: Likelihood::Categorical { classes },
    })
    .unwrap();
    let theta = params(&mlp, 1);
    let (xs, ys) = batch(&mlp, n, 1);
    // F = mean over examples of (diag p − ppᵀ) ⊗ x̃x̃ᵀ with x̃ = [x, 1], in the layout W[c, j] at
    // c·d + j and b[c] at C·d + c.
    let p = mlp.num_params();
    let index = |c: usize, j: usize| if j < d { c * d + j } else { classes * d + c };
    let mut expected = vec![0.0f64; p * p];
    for i in 0..n {
        let x: Vec<f64> = xs[i * d..(i + 1) * d].iter().map(|&v| v as f64).chain([1.0]).collect();
        let probs = softmax(&reference::outputs(&mlp, &f64s(&theta), &x[..d]));
        for (c, c2) in (0..classes).flat_map(|c| (0..classes).map(move |c2| (c, c2))) {
            let h = if c == c2 { probs[c] } else { 0.0 } - probs[c] * probs[c2];
            for (j, j2) in (0..=d).flat_map(|j| (0..=d).map(move |j2| (j, j2))) {
                expected[index(c, j) * p + index(c2, j2)] += h * x[j] * x[j2] / n as f64;
            }
        }
    }
    let cpu = device_fisher(&Cpu::new(), &mlp, &theta, &xs, &ys, FisherKind::Exact, 0.0);
    assert!(
        rel_error(&cpu, &expected) < 1e-5,
        "cpu: {:.2e}",
        rel_error(&cpu, &expected)
    );
    let gpu = device_fisher(&common::gpu(), &mlp, &theta, &xs, &ys, FisherKind::Exact, 0.0);
    assert!(
        rel_error(&gpu, &expected) < 1e-5,
        "gpu: {:.2e}",
        rel_error(&gpu, &expected)
    );
}

#[test]
fn weight_decay_lands_on_the_weights_diagonal() {
    let mlp = mlp(vec![4], Activation::Relu, Likelihood::Bernoulli);
    let theta = params(&mlp, 2);
    let (xs, ys) = batch(&mlp, 7, 2);
    let mut expected = reference::fisher(&mlp, &f64s(&theta), &xs, &ys, FisherKind::Exact, KEY);
    let p = mlp.num_params();
    for (i, m) in mlp.weight_mask().iter().enumerate() {
        expected[i * p + i] += 0.25 * *m as f64;
    }
    for f in [
        device_fisher(&Cpu::new(), &mlp, &theta, &xs, &ys, FisherKind::Exact, 0.25),
        device_fisher(&common::gpu(), &mlp, &theta, &xs, &ys, FisherKind::Exact, 0.25),
    ] {
        assert!(rel_error(&f, &expected) < 1e-5, "{:.2e}", rel_error(&f, &expected));
    }
}

/// The sampled Fisher with k draws per example is an average of n·k independent rank-one terms
/// s sᵀ (given the inputs), each with mean F_i (example i's exact Fisher) and
/// E‖s sᵀ − F_i‖²_F = V_i = Σ_c p_c ‖s_c‖⁴ − ‖F_i‖²_F. So
///     E‖F_k − F‖²_F = Σ_i V_i / (n² k),
/// and by Markov's inequality on the squared error, ‖F_k − F‖_F exceeds 10 standard errors with
/// probability at most 1%. The seed is fixed, so the test is deterministic; the bound says a
/// correct sampler fails it for at most 1% of seeds, while a biased one (wrong labels, wrong
/// 1/√k scale) has an error that does not shrink like 1/√k and fails it as k grows.
#[test]
fn the_sampled_fisher_approaches_the_exact_one_as_draws_grow() {
    let mlp = mlp(vec![5], Activation::Tanh, Likelihood::Categorical { classes: 3 });
    let theta = params(&mlp, 4);
    let (xs, ys) = batch(&mlp, 12, 4);
    let theta64 = f64s(&theta);
    let n = 12;
    let exact = reference::fisher(&mlp, &theta64, &xs, &ys, FisherKind::Exact, KEY);
    let mut variance_sum = 0.0;
    for i in 0..n {
        let x = f64s(&xs[i * 5..(i + 1) * 5]);
        let probs = softmax(&reference::outputs(&mlp, &theta64, &x));
        let scores: Vec<Vec<f64>> = (0..3)
            .map(|c| reference::score(&mlp, &theta64, &x, &[c as f64]))
            .collect();
        let fi_norm2: f64 = (0..3)
            .flat_map(|c| (0..3).map(move |c2| (c, c2)))
            .map(|(c, c2)| {
                let dot: f64 = scores[c].iter().zip(&scores[c2]).map(|(a, b)| a * b).sum();
                probs[c] * probs[c2] * dot * dot
            })
            .sum();
        let fourth: f64 = (0..3)
            .map(|c| probs[c] * scores[c].iter().map(|v| v * v).sum::<f64>().powi(2))
            .sum();
        variance_sum += fourth - fi_norm2;
    }
    let exact_norm = exact.iter().map(|v| v * v).sum::<f64>().sqrt();
    let mut errors = Vec::new();
    for (device, draws) in [("cpu", 1u32), ("gpu", 16), ("cpu", 256), ("gpu", 2048)] {
        let kind = FisherKind::Sampled { draws };
        let f = match device {
            "cpu" => device_fisher(&Cpu::new(), &mlp, &theta, &xs, &ys, kind, 0.0),
            _ => device_fisher(&common::gpu(), &mlp, &theta, &xs, &ys, kind, 0.0),
        };
        let error = rel_error(&f, &exact) * exact_norm;
        let standard_error = (variance_sum / (n * n) as f64 / draws as f64).sqrt();
        assert!(
            error < 10.0 * standard_error,
            "{device}, k = {draws}: error {error:.3e}, standard error {standard_error:.3e}"
        );
        errors.push(error);
    }
    assert!(errors[3] < errors[0] / 8.0, "no convergence: {errors:?}");
}

#[test]
fn the_expected_score_under_the_model_is_zero() {
    for likelihood in [Likelihood::Categorical { classes: 4 }, Likelihood::Bernoulli] {
        let mlp = mlp(vec![6], Activation::Sigmoid, likelihood);
        let theta = params(&mlp, 5);
        let (xs, _) = batch(&mlp, 8, 5);
        let labels = match likelihood {
            Likelihood::Categorical { classes } => classes,
            _ => 2,
        };
        let cpu = Cpu::new();
        let gpu = common::gpu();
        for (name, scores_under) in [
            (
                "cpu",
                Box::new(|ys: &[f32]| on_device(&cpu, &mlp, &theta, &xs, ys, FisherKind::Empirical).scores)
                    as Box<dyn Fn(&[f32]) -> Vec<f32>>,
            ),
            (
                "gpu",
                Box::new(|ys: &[f32]| on_device(&gpu, &mlp, &theta, &xs, ys, FisherKind::Empirical).scores),
            ),
        ] {
            let p = mlp.num_params();
            let mut expected_score = vec![0.0f64; 8 * p];
            let mut scale = 0.0f64;
            for c in 0..labels {
                let s = scores_under(&[c as f32; 8]);
                for i in 0..8 {
                    let z = reference::outputs(&mlp, &f64s(&theta), &f64s(&xs[i * 5..(i + 1) * 5]));
                    let prob = match likelihood {
                        Likelihood::Bernoulli => {
                            natgrad::model::activation::sigmoid(z[0]).powi(c as i32)
                                * (1.0 - natgrad::model::activation::sigmoid(z[0])).powi(1 - c as i32)
                        }
                        _ => softmax(&z)[c],
                    };
                    for j in 0..p {
                        expected_score[i * p + j] += prob * s[i * p + j] as f64;
                        scale = scale.max(s[i * p + j].abs() as f64);
                    }
                }
            }
            let worst = expected_score.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(
                worst <= 1e-5 * scale,
                "{name} {likelihood:?}: E[s] reaches {worst:.2e} (scores up to {scale:.2e})"
            );
        }
    }
}

/// KL(p_θ ‖ p_{θ+εu}) = ½ ε² uᵀFu + O(ε³) for the exact Fisher: the relative gap shrinks like ε.
#[test]
fn half_dfd_is_the_kl_divergence_to_second_order() {
    for likelihood in likelihoods() {
        let mlp = mlp(vec![6], Activation::Tanh, likelihood);
        let theta = params(&mlp, 6);
        let (xs, ys) = batch(&mlp, 10, 6);
        let p = mlp.num_params();
        let u = normal(&mut rng(60), p);
        let norm = u.iter().map(|v| v * v).sum::<f32>().sqrt();
        let u: Vec<f64> = u.iter().map(|v| (v / norm) as f64).collect();
        let theta64 = f64s(&theta);
        let f64_fisher = reference::fisher(&mlp, &theta64, &xs, &ys, FisherKind::Exact, KEY);
        let cpu = device_fisher(&Cpu::new(), &mlp, &theta, &xs, &ys, FisherKind::Exact, 0.0);
        let gpu = device_fisher(&common::gpu(), &mlp, &theta, &xs, &ys, FisherKind::Exact, 0.0);
        let quad = |f: &[f64]| -> f64 {
            (0..p)
                .map(|i| u[i] * (0..p).map(|j| f[i * p + j] * u[j]).sum::<f64>())
                .sum::<f64>()
        };
        let gap = |eps: f64, f: &[f64]| {
            let moved: Vec<f64> = theta64.iter().zip(&u).map(|(t, d)| t + eps * d).collect();
            let kl = reference::mean_kl(&mlp, &theta64, &moved, &xs);
            (kl - 0.5 * eps * eps * quad(f)).abs() / kl
        };
        let (coarse, fine) = (gap(1e-2, &f64_fisher), gap(1e-3, &f64_fisher));
        assert!(
            fine < 1e-2 && fine < coarse / 5.0,
            "{likelihood:?}: relative gap {coarse:.2e} at ε=1e-2, {fine:.2e} at 1e-3"
        );
        for (name, f) in [("cpu", &cpu), ("gpu", &gpu)] {
            let g = gap(1e-3, &f64s(f));
            assert!(g < 1e-2, "{name} {likelihood:?}: relative gap {g:.2e}");
        }
    }
}

#[test]
fn a_fisher_built_in_small_chunks_equals_one_built_at_once() {
    let mlp = mlp(vec![6], Activation::Relu, Likelihood::Categorical { classes: 3 });
    let theta = params(&mlp, 8);
    let (xs, ys) = batch(&mlp, 9, 8);
    let expected = reference::fisher(&mlp, &f64s(&theta), &xs, &ys, FisherKind::Exact, KEY);
    fn chunked<B: Backend>(b: &B, mlp: &Mlp, theta: &[f32], xs: &[f32], ys: &[f32]) -> Vec<f32> {
        let mut batch = b.upload_batch(mlp, xs, ys).unwrap();
        let theta = b.upload_vector("θ", theta).unwrap();
        b.forward(mlp, &theta, &mut batch).unwrap();
        let p = mlp.num_params();
        let mut f = b.zeros_matrix("F", p, p).unwrap();
        // 27 rows of G in chunks of 5: five full chunks and a last one of 2
        scores::build_in_chunks(b, mlp, &theta, &mut batch, FisherKind::Exact, KEY, 0.0, &mut f, 5).unwrap();
        b.download_matrix(&f).unwrap()
    }
    for f in [
        chunked(&Cpu::new(), &mlp, &theta, &xs, &ys),
        chunked(&common::gpu(), &mlp, &theta, &xs, &ys),
    ] {
        assert!(rel_error(&f, &expected) < 1e-5, "{:.2e}", rel_error(&f, &expected));
    }
}

/// A batch long enough that the gradient's products split k (the batch) among workgroups, with
/// weight decay riding on β: the split path's α and β against f64.
#[test]
fn the_gradient_of_a_long_batch_matches_f64() {
    let mlp = mlp(vec![3], Activation::Tanh, Likelihood::Categorical { classes: 3 });
    let theta = params(&mlp, 9);
    let (xs, ys) = batch(&mlp, 3000, 9);
    let expected = reference::gradient(&mlp, &f64s(&theta), &xs, &ys, 0.1);
    let gpus = common::gpu_per_matmul();
    for (name, g) in [
        (
            "cpu",
            on_device(&Cpu::new(), &mlp, &theta, &xs, &ys, FisherKind::Empirical).gradient,
        ),
        (
            "gpu, staged matmul",
            on_device(&gpus[0], &mlp, &theta, &xs, &ys, FisherKind::Empirical).gradient,
        ),
        (
            "gpu, direct matmul",
            on_device(&gpus[1], &mlp, &theta, &xs, &ys, FisherKind::Empirical).gradient,
        ),
    ] {
        let err = rel_error(&g, &expected);
        assert!(err < 1e-4, "{name}: {err:.2e}");
    }
}

/// A batch of more workgroups than one grid dimension holds (65535 × 256 examples) has its loss
/// summed over the 2-D grid it is folded into: every example once, none written past the sums.
#[test]
fn a_batch_past_one_grid_dimension_has_the_cpus_loss() {
    let mlp = Mlp::new(MlpSpec {
        inputs: 1,
        hidden: vec![],
        activation: Activation::Tanh,
        likelihood: Likelihood::Bernoulli,
    })
    .unwrap();
    let n = 65535 * 256 + 1001;
    let mut r = rng(11);
    let xs = normal(&mut r, n);
    let ys: Vec<f32> = xs.iter().map(|&x| if x > 0.3 { 1.0 } else { 0.0 }).collect();
    let theta = [1.5f32, -0.2];
    fn loss_on<B: Backend>(b: &B, mlp: &Mlp, theta: &[f32], xs: &[f32], ys: &[f32]) -> (f64, f64) {
        let mut batch = b.upload_batch(mlp, xs, ys).unwrap();
        let theta = b.upload_vector("θ", theta).unwrap();
        b.forward(mlp, &theta, &mut batch).unwrap();
        let l = b.batch_loss(mlp, &batch).unwrap();
        (l.loss, l.accuracy)
    }
    let (cpu_loss, cpu_acc) = loss_on(&Cpu::new(), &mlp, &theta, &xs, &ys);
    let (gpu_loss, gpu_acc) = loss_on(&common::gpu(), &mlp, &theta, &xs, &ys);
    assert!(
        (gpu_loss - cpu_loss).abs() <= 1e-5 * cpu_loss,
        "GPU {gpu_loss} vs CPU {cpu_loss}"
    );
    assert!((gpu_acc - cpu_acc).abs() <= 1e-6, "GPU {gpu_acc} vs CPU {cpu_acc}");
}
