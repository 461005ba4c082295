//! Training: the acceptance checks of the trainer on the library API (the command line has
//! its own tests in cli.rs).

mod common;

use natgrad::CgParams;
use natgrad::apply;
use natgrad::cpu::Cpu;
use natgrad::curvature::{CurvatureChoice, CurvatureKind};
use natgrad::data::{Dataset, Task, TaskChoice, builtin};
use natgrad::io::checkpoint::Checkpoint;
use natgrad::model::FisherKind;
use natgrad::model::{Activation, Likelihood, Mlp, MlpSpec};
use natgrad::optim::{NgdConfig, OptimConfig, OptimizerKind};
use natgrad::prelude::*;
use natgrad::train::{self, RunConfig, Trainer};

/// `kind` at `lr` with natural gradient on the dense exact Fisher: these tests are about the
/// exact natural gradient, whatever `auto` would pick.
fn optim(kind: OptimizerKind, lr: f32) -> OptimConfig {
    let mut config = OptimConfig::new(kind, lr);
    config.ngd.curvature = CurvatureChoice::Kind(CurvatureKind::Dense);
    config
}

fn run_config(data: &str, kind: OptimizerKind, lr: f32, out: &std::path::Path) -> RunConfig {
    let optim = optim(kind, lr);
    RunConfig {
        data: data.into(),
        task: TaskChoice::Auto,
        hidden: vec![32],
        activation: Activation::Relu,
        sigma: 1.0,
        optim,
        batch: 200,
        epochs: 10,
        steps: None,
        val_split: 0.0,
        standardize: false,
        seed: 0,
        out: out.to_owned(),
        claim: natgrad::train::dir::Claim::New,
        checkpoint_every: None,
        profile: false,
    }
}

fn train_on_cpu(cfg: &RunConfig) -> serde_json::Value {
    let prepared = train::prepare(cfg).unwrap();
    let summary = train::run(&Cpu::new(), cfg, &prepared, ("cpu", "test"), &mut |_| {}).unwrap();
    serde_json::to_value(summary).unwrap()
}

/// The acceptance run: digits, one hidden layer, 10 epochs each, the command line's defaults.
#[test]
fn on_digits_ngd_fits_the_data_and_beats_adam_and_sgd() {
    let dir = tempfile::tempdir().unwrap();
    let loss = |kind, lr, name| {
        let summary = train_on_cpu(&run_config("digits", kind, lr, &dir.path().join(name)));
        (
            summary["train_loss"].as_f64().unwrap(),
            summary["train_accuracy"].as_f64().unwrap(),
        )
    };
    let (ngd, ngd_accuracy) = loss(OptimizerKind::Ngd, 1.0, "ngd");
    let (adam, _) = loss(OptimizerKind::Adam, 0.01, "adam");
    let (sgd, _) = loss(OptimizerKind::Sgd, 0.1, "sgd");
    assert!(ngd_accuracy >= 0.99, "ngd training accuracy {ngd_accuracy}");
    assert!(
        ngd < adam && ngd < sgd,
        "training loss: ngd {ngd}, adam {adam}, sgd {sgd}"
    );
}

/// The fast representations keep natural gradient's lead in epochs: K-FAC and the matrix-free
/// exact Fisher (K-FAC-preconditioned CG) each end 6 epochs of digits below Adam at its best rate.
#[test]
fn kfac_and_matrix_free_ngd_beat_adam_in_epochs_on_digits() {
    let dir = tempfile::tempdir().unwrap();
    let loss = |kind, lr, curvature: Option<CurvatureKind>, name: &str| {
        let mut cfg = run_config("digits", kind, lr, &dir.path().join(name));
        cfg.epochs = 6;
        cfg.optim.ngd = NgdConfig {
            curvature: curvature.map_or(CurvatureChoice::Auto, CurvatureChoice::Kind),
            ..NgdConfig::default()
        };
        train_on_cpu(&cfg)["train_loss"].as_f64().unwrap()
    };
    let adam = loss(OptimizerKind::Adam, 0.03, None, "adam");
    for curvature in [CurvatureKind::Kfac, CurvatureKind::Implicit] {
        let ngd = loss(OptimizerKind::Ngd, 1.0, Some(curvature), curvature.name());
        assert!(ngd < adam, "6 epochs: ngd {} {ngd}, adam {adam}", curvature.name());
    }
}

/// Two overlapping Gaussian classes in 3 dimensions: a logistic regression with a finite optimum.
fn two_classes(n: usize) -> Dataset {
    let blobs = builtin::blobs(2, n / 2, 11);
    // pull the centres together so the classes overlap
    let mut x = blobs.x.clone();
    for (i, row) in x.chunks_exact_mut(2).enumerate() {
        let shift = if blobs.y[i] == 0.0 { 1.0 } else { -1.0 };
        row[0] = row[0] * 0.3 + shift;
        row[1] *= 0.3;
    }
    let x: Vec<f32> = x
        .chunks_exact(2)
        .enumerate()
        .flat_map(|(i, r)| [r[0], r[1], (i % 7) as f32 / 7.0])
        .collect();
    Dataset {
        name: "two classes".into(),
        x,
        y: blobs.y,
        n: blobs.n,
        d: 3,
        task: Task::Classify { labels: vec![0.0, 1.0] },
    }
}

/// Gradient norms of full-batch ngd on a linear Bernoulli model, lr 1, no trust region.
fn newton_like(fisher: FisherKind, steps: usize) -> Vec<f64> {
    let data = two_classes(200);
    let mlp = Mlp::new(MlpSpec {
        inputs: 3,
        hidden: vec![],
        activation: Activation::Tanh,
        likelihood: Likelihood::Bernoulli,
    })
    .unwrap();
    let mut config = optim(OptimizerKind::Ngd, 1.0);
    config.weight_decay = 1e-2;
    config.ngd = NgdConfig {
        lr: 1.0,
        fisher,
        damping: 1e-7,
        adaptive_damping: false,
        kl: 0.0,
        cg: CgParams {
            max_iters: 50,
            rel_tol: 1e-7,
        },
        curvature: CurvatureChoice::Kind(CurvatureKind::Dense),
        ..NgdConfig::default()
    };
    let cpu = Cpu::new();
    let mut trainer = Trainer::new(&cpu, mlp, &[0.0; 4], config, data.n, 0).unwrap();
    (0..steps)
        .map(|_| trainer.step(&data.x, &data.y).unwrap().grad_norm)
        .collect()
}

/// For a GLM with its canonical link the exact Fisher is the Hessian, so ngd with lr 1 is
/// Newton's method: quadratic convergence to the convex objective's optimum.
#[test]
fn exact_fisher_ngd_solves_logistic_regression_in_a_handful_of_steps() {
    let exact = newton_like(FisherKind::Exact, 8);
    let converged = exact.iter().position(|g| *g < 1e-6);
    assert!(converged.is_some_and(|k| k < 8), "gradient norms {exact:?}");
    // the empirical Fisher is not the Hessian: the same steps leave it far from the optimum
    let empirical = newton_like(FisherKind::Empirical, 8);
    assert!(
        empirical[7] > 100.0 * exact[7].max(1e-9),
        "exact {exact:?}, empirical {empirical:?}"
    );
}

/// An invertible affine map of the features, x' = M x + t, and the parameters that make a linear
/// model on x' predict what θ predicts on x: W' = W M⁻¹, c' = c − W M⁻¹ t.
struct Affine {
    m: [[f64; 2]; 2],
    t: [f64; 2],
}

impl Affine {
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        x.chunks_exact(2)
            .flat_map(|r| {
                let (a, b) = (r[0] as f64, r[1] as f64);
                [
                    (self.m[0][0] * a + self.m[0][1] * b + self.t[0]) as f32,
                    (self.m[1][0] * a + self.m[1][1] * b + self.t[1]) as f32,
                ]
            })
            .collect()
    }

    fn params(&self, theta: &[f32], classes: usize) -> Vec<f32> {
        let m = self.m;
        let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
        let inv = [[m[1][1] / det, -m[0][1] / det], [-m[1][0] / det, m[0][0] / det]];
        let mut out = theta.to_vec();
        for c in 0..classes {
            let w = [theta[2 * c] as f64, theta[2 * c + 1] as f64];
            let w2 = [w[0] * inv[0][0] + w[1] * inv[1][0], w[0] * inv[0][1] + w[1] * inv[1][1]];
            out[2 * c] = w2[0] as f32;
            out[2 * c + 1] = w2[1] as f32;
            out[2 * classes + c] = (theta[2 * classes + c] as f64 - (w2[0] * self.t[0] + w2[1] * self.t[1])) as f32;
        }
        out
    }
}

/// The largest gap between the two runs' predicted probabilities over the steps.
fn prediction_gap<B: Backend>(b: &B, kind: OptimizerKind, lr: f32) -> f64 {
    let data = builtin::blobs(3, 30, 5);
    let affine = Affine {
        m: [[3.0, 1.0], [-0.5, 0.2]],
        t: [2.0, -1.0],
    };
    let moved = affine.apply(&data.x);
    let mlp = Mlp::new(MlpSpec {
        inputs: 2,
        hidden: vec![],
        activation: Activation::Tanh,
        likelihood: Likelihood::Categorical { classes: 3 },
    })
    .unwrap();
    let theta = common::params(&mlp, 5);
    let mut config = optim(kind, lr);
    config.ngd.damping = 1e-7;
    config.ngd.kl = 0.0;
    config.ngd.cg = CgParams {
        max_iters: 100,
        rel_tol: 1e-7,
    };
    let mut original = Trainer::new(b, mlp.clone(), &theta, config, data.n, 0).unwrap();
    let mut transformed = Trainer::new(b, mlp, &affine.params(&theta, 3), config, data.n, 0).unwrap();
    let probs = |z: Vec<f32>| -> Vec<f64> {
        z.chunks_exact(3)
            .flat_map(|r| natgrad::model::likelihood::softmax(&r.iter().map(|&v| v as f64).collect::<Vec<_>>()))
            .collect()
    };
    let mut gap = 0.0f64;
    for _ in 0..6 {
        original.step(&data.x, &data.y).unwrap();
        transformed.step(&moved, &data.y).unwrap();
        let (p, q) = (
            probs(original.predict(&data.x).unwrap()),
            probs(transformed.predict(&moved).unwrap()),
        );
        gap = p.iter().zip(&q).fold(gap, |m, (a, b)| m.max((a - b).abs()));
    }
    gap
}

/// Natural gradient is invariant to reparameterisation: a linear model trained on features and
/// on an affine transform of them (mixed, rescaled, shifted columns) predicts the same after
/// every step. SGD is not. In exact arithmetic the gap is 0; in f32, CG's true residual bottoms
/// out near 1e-5 and the transformed system is worse conditioned, which leaves about 1e-3 after
/// six steps. SGD's predictions differ by about 1 (all the probability moved), so the bounds
/// below are two orders of magnitude apart.
#[test]
fn ngd_predictions_do_not_depend_on_an_affine_transform_of_the_features() {
    let cpu = Cpu::new();
    let ngd = prediction_gap(&cpu, OptimizerKind::Ngd, 0.5);
    let sgd = prediction_gap(&cpu, OptimizerKind::Sgd, 0.05);
    assert!(ngd < 1e-2, "ngd predictions differ by {ngd:.2e}");
    assert!(sgd > 1e-2, "sgd predictions differ by only {sgd:.2e}");
    let gpu = prediction_gap(&common::gpu(), OptimizerKind::Ngd, 0.5);
    assert!(gpu < 1e-2, "ngd on the GPU: predictions differ by {gpu:.2e}");
}

/// The same seed gives the same loss curve on both devices (small problem: lavapipe is slow).
#[test]
fn gpu_and_cpu_give_the_same_loss_curve() {
    let data = builtin::blobs(3, 40, 2);
    let mlp = Mlp::new(MlpSpec {
        inputs: 2,
        hidden: vec![8],
        activation: Activation::Tanh,
        likelihood: Likelihood::Categorical { classes: 3 },
    })
    .unwrap();
    let gpu = common::gpu();
    for kind in [CurvatureKind::Dense, CurvatureKind::Kfac, CurvatureKind::Implicit] {
        let losses = |b: &dyn LossCurve| b.losses(&mlp, &data, kind);
        let (cpu, gpu) = (losses(&Cpu::new()), losses(&gpu));
        for (k, (a, b)) in cpu.iter().zip(&gpu).enumerate() {
            assert!(
                (a - b).abs() <= 1e-3 * a.abs(),
                "{}, step {}: cpu {a}, gpu {b}",
                kind.name(),
                k + 1
            );
        }
    }
}

trait LossCurve {
    fn losses(&self, mlp: &Mlp, data: &Dataset, kind: CurvatureKind) -> Vec<f64>;
}

impl<B: Backend> LossCurve for B {
    fn losses(&self, mlp: &Mlp, data: &Dataset, kind: CurvatureKind) -> Vec<f64> {
        // The exact Fisher, as the command line's default: sampled labels could flip on an f32
        // rounding difference between the devices. And CG solved tightly: at a loose tolerance
        // rounding decides which iteration first crosses it, and the devices' directions then
        // differ by about the tolerance itself.
        let mut config = optim(OptimizerKind::Ngd, 1.0);
        config.weight_decay = 1e-3;
        // the trust region this curve was first checked with: wider ones grow f32's differences
        // between the devices faster
        config.ngd.kl = 0.01;
        config.ngd.cg = CgParams {
            max_iters: 200,
            rel_tol: 1e-6,
        };
        config.ngd.curvature = CurvatureChoice::Kind(kind);
        // K-FAC's S from the exact expectation (a drawn label could flip between the devices),
        // and matrix-free CG stopped by its tolerance alone
        config.ngd.settings.kfac.draws = 0;
        config.ngd.settings.cg_progress = 0.0;
        let mut trainer = Trainer::new(self, mlp.clone(), &mlp.init(3), config, 40, 9).unwrap();
        // matrix-free CG reads back every iteration, slow on a software adapter: fewer steps
        let steps = if kind == CurvatureKind::Implicit { 5 } else { 12 };
        (0..steps)
            .map(|epoch| {
                let batch = &natgrad::data::batches(data.n, 40, 1, epoch)[0];
                let (x, y) = data.gather(batch);
                trainer.step(&x, &y).unwrap().loss
            })
            .collect()
    }
}

#[test]
fn eval_of_the_checkpoint_reproduces_the_final_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = run_config("spirals", OptimizerKind::Ngd, 1.0, dir.path());
    cfg.standardize = true;
    cfg.epochs = 5;
    // spirals are drawn from the seed: eval must draw them from the run's, kept in the checkpoint
    cfg.seed = 3;
    let summary = train_on_cpu(&cfg);
    let checkpoint = Checkpoint::load(&dir.path().join("model.safetensors")).unwrap();
    assert_eq!(checkpoint.seed, Some(3));
    let data = apply::load_for(&checkpoint, "spirals").unwrap();
    let e = apply::eval(&Cpu::new(), &checkpoint, &data).unwrap();
    let trained = summary["train_loss"].as_f64().unwrap();
    assert!(
        (e.loss - trained).abs() <= 1e-6 * trained,
        "eval {} vs training {trained}",
        e.loss
    );
    assert_eq!(e.accuracy, summary["train_accuracy"].as_f64());
    // on the GPU too
    let e = apply::eval(&common::gpu(), &checkpoint, &data).unwrap();
    assert!(
        (e.loss - trained).abs() <= 1e-4 * trained,
        "GPU eval {} vs training {trained}",
        e.loss
    );
}

/// The checkpoint is plain safetensors: tensors by name and shape, readable without natgrad.
#[test]
fn the_checkpoint_holds_named_tensors_of_the_layer_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = run_config("blobs", OptimizerKind::Adam, 0.01, dir.path());
    cfg.hidden = vec![5, 3];
    cfg.epochs = 1;
    train_on_cpu(&cfg);
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = tensors.names();
    names.sort();
    assert_eq!(
        names,
        [
            "layers.0.bias",
            "layers.0.weight",
            "layers.1.bias",
            "layers.1.weight",
            "layers.2.bias",
            "layers.2.weight"
        ]
    );
    for (name, shape) in [
        ("layers.0.weight", vec![5, 2]),
        ("layers.1.weight", vec![3, 5]),
        ("layers.2.weight", vec![4, 3]),
        ("layers.2.bias", vec![4]),
    ] {
        let t = tensors.tensor(name).unwrap();
        assert_eq!(
            (t.dtype(), t.shape().to_vec()),
            (safetensors::Dtype::F32, shape),
            "{name}"
        );
    }
    for file in ["metrics.csv", "epochs.csv", "summary.json", "loss.svg"] {
        assert!(dir.path().join(file).is_file(), "{file} missing");
    }
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_parameters() {
    let dir = tempfile::tempdir().unwrap();
    // a rate that overflows f32 within a step or two
    let mut cfg = run_config("digits", OptimizerKind::Sgd, 1e30, dir.path());
    cfg.optim.sgd.momentum = 0.0;
    let prepared = train::prepare(&cfg).unwrap();
    let e = train::run(&Cpu::new(), &cfg, &prepared, ("cpu", "test"), &mut |_| {}).expect_err("lr 1e4 did not diverge");
    let text = e.to_string();
    assert!(
        text.contains("diverged") && text.contains("model.safetensors"),
        "{text}"
    );
    let kept = Checkpoint::load(&dir.path().join("model.safetensors")).unwrap();
    assert!(
        kept.theta.iter().all(|v| v.is_finite()),
        "the kept parameters are not finite"
    );
    let partial: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(partial.is_empty(), "partial files left behind");
}
