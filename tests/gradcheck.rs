//! The f64 reference MLP against central finite differences, for every activation × likelihood at
//! awkward layer sizes: scores, the objective's gradient with weight decay, and the output seeds.

mod common;

use common::{batch, likelihoods, params};
use natgrad::model::{Activation, Likelihood, Mlp, MlpSpec, reference};

fn models() -> Vec<Mlp> {
    let mut all = Vec::new();
    for activation in Activation::ALL {
        for likelihood in likelihoods() {
            for hidden in [vec![], vec![5], vec![4, 3]] {
                all.push(
                    Mlp::new(MlpSpec {
                        inputs: 3,
                        hidden,
                        activation,
                        likelihood,
                    })
                    .unwrap(),
                );
            }
        }
    }
    all
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Central difference of `f` along every coordinate of `theta`.
fn numeric_gradient(theta: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-5;
    (0..theta.len())
        .map(|i| {
            let mut t = theta.to_vec();
            t[i] += h;
            let up = f(&t);
            t[i] -= 2.0 * h;
            (up - f(&t)) / (2.0 * h)
        })
        .collect()
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    let num: f64 = got.iter().zip(want).map(|(a, b)| (a - b).powi(2)).sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    assert!(
        num.sqrt() <= 1e-6 * den.sqrt().max(1e-3),
        "{what}: error {:.2e} of {:.2e}",
        num.sqrt(),
        den.sqrt()
    );
}

#[test]
fn scores_match_finite_differences() {
    for (k, mlp) in models().iter().enumerate() {
        let theta = f64s(&params(mlp, k as u64));
        let (xs, ys) = batch(mlp, 3, k as u64);
        let (d, t) = (mlp.inputs(), mlp.likelihood().target_width());
        for i in 0..3 {
            let x = f64s(&xs[i * d..(i + 1) * d]);
            let y = f64s(&ys[i * t..(i + 1) * t]);
            let analytic = reference::score(mlp, &theta, &x, &y);
            let numeric = numeric_gradient(&theta, |th| reference::log_prob(mlp, th, &x, &y));
            assert_close(&format!("{:?} example {i}", mlp.spec()), &analytic, &numeric);
        }
    }
}

#[test]
fn the_gradient_with_weight_decay_matches_finite_differences() {
    for (k, mlp) in models().iter().enumerate() {
        let theta = f64s(&params(mlp, 100 + k as u64));
        let (xs, ys) = batch(mlp, 4, k as u64);
        let wd = 0.3;
        let analytic = reference::gradient(mlp, &theta, &xs, &ys, wd);
        let numeric = numeric_gradient(&theta, |th| reference::objective(mlp, th, &xs, &ys, wd));
        assert_close(&format!("{:?}", mlp.spec()), &analytic, &numeric);
    }
}

#[test]
fn weight_decay_touches_weights_only() {
    let mlp = Mlp::new(MlpSpec {
        inputs: 2,
        hidden: vec![3],
        activation: Activation::Tanh,
        likelihood: Likelihood::Bernoulli,
    })
    .unwrap();
    let theta: Vec<f64> = (0..mlp.num_params()).map(|i| 0.1 * i as f64 + 0.05).collect();
    let (xs, ys) = batch(&mlp, 5, 1);
    let plain = reference::gradient(&mlp, &theta, &xs, &ys, 0.0);
    let decayed = reference::gradient(&mlp, &theta, &xs, &ys, 0.5);
    for (i, m) in mlp.weight_mask().iter().enumerate() {
        let expected = plain[i] + 0.5 * *m as f64 * theta[i];
        assert!((decayed[i] - expected).abs() < 1e-12, "parameter {i}");
    }
    assert_eq!(
        mlp.weight_mask().iter().filter(|&&m| m == 0.0).count(),
        3 + 1,
        "one bias per unit"
    );
}
