//! Bad input becomes an error that says what is wrong, on both devices, never a panic.

mod common;

use natgrad::cpu::Cpu;
use natgrad::prelude::*;
use natgrad::{CgParams, Error};

fn bad_uploads<B: Backend>(b: &B) {
    let name = b.describe();
    let mut data = vec![1.0f32; 12];
    data[7] = f32::NAN;
    let e = b.upload_matrix("G", 3, 4, &data).err().expect("NaN accepted");
    assert!(matches!(e, Error::NonFinite { row: 1, col: 3, .. }), "{name}: {e}");
    assert!(e.to_string().contains("row 1, column 3"), "{name}: {e}");
    data[7] = f32::INFINITY;
    assert!(
        matches!(b.upload_matrix("G", 3, 4, &data), Err(Error::NonFinite { .. })),
        "{name}"
    );
    assert!(
        matches!(
            b.upload_vector("g", &[0.0, f32::NEG_INFINITY]),
            Err(Error::NonFinite { .. })
        ),
        "{name}"
    );
    assert!(
        matches!(b.upload_matrix("G", 0, 4, &[]), Err(Error::Empty("G"))),
        "{name}"
    );
    assert!(matches!(b.upload_vector("g", &[]), Err(Error::Empty("g"))), "{name}");
    let e = b
        .upload_matrix("G", 3, 5, &[0.0; 12])
        .err()
        .expect("wrong length accepted");
    assert!(
        matches!(e, Error::Shape(_)) && e.to_string().contains("3×5"),
        "{name}: {e}"
    );
}

fn bad_shapes<B: Backend>(b: &B) {
    let name = b.describe();
    let g = b.upload_matrix("G", 4, 6, &[0.5; 24]).unwrap();
    let mut f = b.zeros_matrix("F", 5, 5).unwrap();
    let e = b
        .fisher_accumulate(&mut f, &g, 1.0, false)
        .expect_err("5×5 F for 6 columns accepted");
    assert!(
        matches!(e, Error::Shape(_)) && e.to_string().contains("6×6"),
        "{name}: {e}"
    );
    let f = b.zeros_matrix("F", 6, 6).unwrap();
    let x = b.zeros_vector("x", 6).unwrap();
    let mut short = b.zeros_vector("y", 5).unwrap();
    assert!(
        matches!(b.matvec(&f, 0.0, &x, &mut short), Err(Error::Shape(_))),
        "{name}"
    );
    assert!(
        matches!(b.matvec(&g, 0.0, &x, &mut short), Err(Error::Shape(_))),
        "{name}: non-square matrix"
    );
    assert!(matches!(b.dot(&x, &short), Err(Error::Shape(_))), "{name}");
    assert!(matches!(b.axpy(1.0, &x, &mut short), Err(Error::Shape(_))), "{name}");
    let mut d = b.zeros_vector("d", 6).unwrap();
    assert!(
        matches!(
            b.cg_solve(&f, 0.0, &short, &mut d, &CgParams::default()),
            Err(Error::Shape(_))
        ),
        "{name}"
    );
    for (damping, tol) in [(-1.0, 1e-4), (f32::NAN, 1e-4), (0.0, -1e-4), (0.0, f32::INFINITY)] {
        let p = CgParams {
            max_iters: 10,
            rel_tol: tol,
        };
        let r = b.cg_solve(&f, damping, &x, &mut d, &p);
        assert!(
            matches!(r, Err(Error::InvalidArgument { .. })),
            "{name}: λ={damping} tol={tol}"
        );
    }
}

#[test]
fn cpu_rejects_bad_input() {
    bad_uploads(&Cpu::new());
    bad_shapes(&Cpu::new());
}

#[test]
fn gpu_rejects_bad_input() {
    let gpu = common::gpu();
    bad_uploads(&gpu);
    bad_shapes(&gpu);
}

#[test]
fn a_fisher_larger_than_the_device_allows_names_the_size_and_the_limit() {
    let gpu = common::gpu();
    let limit = gpu
        .context()
        .limits
        .max_storage_buffer_binding_size
        .min(gpu.context().limits.max_buffer_size);
    // the smallest p whose F no longer fits: refused before anything is allocated
    let p = ((limit / 4) as f64).sqrt() as usize + 8;
    let e = gpu
        .zeros_matrix("Fisher matrix F", p, p)
        .err()
        .expect("an over-limit F was allocated");
    let text = e.to_string();
    assert!(matches!(e, Error::TooLarge { .. }), "{text}");
    assert!(
        text.contains("Fisher matrix F") && text.contains(&format!("{p}×{p}")) && text.contains(&limit.to_string()),
        "{text}"
    );
    assert!(text.contains("max_"), "the message names the limit: {text}");
}

fn bad_batches<B: Backend>(b: &B) {
    use natgrad::model::{Activation, Likelihood, Mlp, MlpSpec};
    let name = b.describe();
    let spec = |likelihood| MlpSpec {
        inputs: 2,
        hidden: vec![3],
        activation: Activation::Tanh,
        likelihood,
    };
    let categorical = Mlp::new(spec(Likelihood::Categorical { classes: 3 })).unwrap();
    let bernoulli = Mlp::new(spec(Likelihood::Bernoulli)).unwrap();
    let x = [0.5f32; 4];
    let e = b
        .upload_batch(&categorical, &x, &[0.0, 3.0])
        .err()
        .expect("label 3 of 3 classes accepted");
    assert!(e.to_string().contains("example 1 has label 3"), "{name}: {e}");
    assert!(
        b.upload_batch(&categorical, &x, &[0.0, 1.5]).is_err(),
        "{name}: fractional label"
    );
    assert!(
        b.upload_batch(&bernoulli, &x, &[0.0, 2.0]).is_err(),
        "{name}: Bernoulli label 2"
    );
    assert!(
        matches!(b.upload_batch(&categorical, &x, &[0.0]), Err(Error::Shape(_))),
        "{name}: one target for two rows"
    );
    assert!(
        matches!(b.upload_batch(&categorical, &x[..3], &[0.0]), Err(Error::Shape(_))),
        "{name}: partial row"
    );
    assert!(
        matches!(b.upload_batch(&categorical, &[], &[]), Err(Error::Empty(_))),
        "{name}: empty batch"
    );
    let e = b
        .upload_batch(&categorical, &[0.0, f32::NAN, 1.0, 1.0], &[0.0, 1.0])
        .err()
        .expect("NaN input accepted");
    assert!(matches!(e, Error::NonFinite { row: 0, col: 1, .. }), "{name}: {e}");
    let mut batch = b.upload_batch(&categorical, &x, &[0.0, 2.0]).unwrap();
    let short = b.upload_vector("θ", &[0.1; 5]).unwrap();
    assert!(
        matches!(b.forward(&categorical, &short, &mut batch), Err(Error::Shape(_))),
        "{name}: short θ"
    );
    let theta = b.upload_vector("θ", &categorical.init(0)).unwrap();
    b.forward(&categorical, &theta, &mut batch).unwrap();
    let mut wrong = b.zeros_matrix("G", 1, categorical.num_params()).unwrap();
    let kind = natgrad::model::FisherKind::Exact;
    let key = natgrad::model::SampleKey::default();
    let r = b.score_rows(&categorical, &theta, &mut batch, kind, key, 0..2, &mut wrong);
    assert!(matches!(r, Err(Error::Shape(_))), "{name}: 2 rows into a 1-row matrix");
    let mut out = b.zeros_matrix("G", 2, categorical.num_params()).unwrap();
    let r = b.score_rows(&categorical, &theta, &mut batch, kind, key, 5..7, &mut out);
    assert!(matches!(r, Err(Error::Shape(_))), "{name}: rows past the 6 of G");
}

#[test]
fn bad_batches_are_refused_on_both_devices() {
    bad_batches(&Cpu::new());
    bad_batches(&common::gpu());
}

fn mismatched_models<B: Backend>(b: &B) {
    use natgrad::curvature::scores;
    use natgrad::model::{Activation, Likelihood, Mlp, MlpSpec};
    use natgrad::model::{FisherKind, SampleKey};
    let name = b.describe();
    let spec = |hidden| MlpSpec {
        inputs: 2,
        hidden,
        activation: Activation::Tanh,
        likelihood: Likelihood::Bernoulli,
    };
    let (small, wide) = (Mlp::new(spec(vec![3])).unwrap(), Mlp::new(spec(vec![5])).unwrap());
    let mut batch = b.upload_batch(&small, &[0.5; 4], &[0.0, 1.0]).unwrap();
    let theta = b.upload_vector("θ", &wide.init(0)).unwrap();
    let e = b
        .forward(&wide, &theta, &mut batch)
        .expect_err("a batch of another model accepted");
    assert!(e.to_string().contains("layer widths"), "{name}: {e}");
    let theta = b.upload_vector("θ", &small.init(0)).unwrap();
    b.forward(&small, &theta, &mut batch).unwrap();
    let p = small.num_params();
    let mut f = b.zeros_matrix("F", p, p).unwrap();
    let r = scores::build(
        b,
        &small,
        &theta,
        &mut batch,
        FisherKind::Sampled { draws: 0 },
        SampleKey::default(),
        0.0,
        &mut f,
    );
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{name}: zero draws");
}

#[test]
fn batches_of_another_model_and_zero_draws_are_refused() {
    mismatched_models(&Cpu::new());
    mismatched_models(&common::gpu());
}

/// A device lost mid-run (here destroyed, as a driver reset or an unplugged GPU would lose it)
/// makes every later step, evaluation and read-back an error, never a panic.
#[test]
fn a_lost_device_is_an_error_at_the_next_step_for_every_optimizer() {
    use natgrad::curvature::{CurvatureChoice, CurvatureKind};
    use natgrad::model::{Activation, Mlp, MlpSpec};
    use natgrad::{OptimConfig, OptimizerKind, Trainer, data};
    let digits = data::load("digits", Default::default(), 0).unwrap();
    let mlp = Mlp::new(MlpSpec {
        inputs: digits.d,
        hidden: vec![7],
        activation: Activation::Tanh,
        likelihood: digits.likelihood(1.0),
    })
    .unwrap();
    let mut configs: Vec<OptimConfig> = CurvatureKind::ALL
        .iter()
        .map(|&k| {
            let mut c = OptimConfig::default();
            c.ngd.curvature = CurvatureChoice::Kind(k);
            c
        })
        .collect();
    for kind in [OptimizerKind::Sgd, OptimizerKind::Adam] {
        configs.push(OptimConfig {
            kind,
            ..OptimConfig::default()
        });
    }
    let (x, y) = digits.gather(&(0..37).collect::<Vec<_>>());
    for config in configs {
        let gpu = common::gpu();
        let mut trainer = Trainer::new(&gpu, mlp.clone(), &mlp.init(0), config, 37, 0).unwrap();
        trainer.step(&x, &y).unwrap();
        gpu.context().device.destroy();
        let e = trainer
            .step(&x, &y)
            .expect_err("a step on a destroyed device succeeded");
        assert!(e.to_string().contains("lost"), "{config:?}: {e}");
        assert!(trainer.evaluate(&digits).is_err(), "{config:?}: evaluated");
        assert!(trainer.parameters().is_err(), "{config:?}: read back");
    }
}
