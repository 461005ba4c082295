//! Criterion benches of score computation, GPU and CPU side by side:
//!
//! - `scores_784_256_256_10`: the score rows G of a 784-256-256-10 MLP (269,322 parameters) for
//!   a batch of 1024, produced chunk by chunk as the Fisher build consumes them (chunks as large
//!   as the device allows); throughput in examples per second.
//! - `scores_then_fisher_64_64_10`: a 64-64-10 MLP (4,810 parameters) at batch 1024: the score
//!   rows, and the dense Fisher built from them, timed separately to show the split.
//!
//! - `ngd_step_64_32_10`: one whole natural-gradient step on a batch of 256.
//!
//! All use the empirical Fisher's G (one row per example): the exact Fisher's has ten rows per
//! example, which puts the software adapter at minutes per sample.
//! `cargo bench --bench scores`; without a GPU adapter only the CPU rows run.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use natgrad::cpu::Cpu;
use natgrad::curvature::scores;
use natgrad::gpu::Gpu;
use natgrad::model::{Activation, Likelihood, Mlp, MlpSpec};
use natgrad::model::{FisherKind, SampleKey};
use natgrad::optim::{OptimConfig, OptimizerKind};
use natgrad::prelude::*;
use natgrad::train::Trainer;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

const BATCH: usize = 1024;

fn mlp(inputs: usize, hidden: Vec<usize>) -> Mlp {
    Mlp::new(MlpSpec {
        inputs,
        hidden,
        activation: Activation::Relu,
        likelihood: Likelihood::Categorical { classes: 10 },
    })
    .expect("a valid model")
}

fn data(mlp: &Mlp) -> (Vec<f32>, Vec<f32>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let x = (0..BATCH * mlp.inputs())
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let y = (0..BATCH).map(|i| (i % 10) as f32).collect();
    (x, y)
}

/// What one device runs: score rows in chunks, and (optionally) the Fisher from them.
trait Scores {
    fn prepare<'a>(&'a self, mlp: &'a Mlp) -> Box<dyn FnMut(bool) + 'a>;
    /// One natural-gradient step per call on a batch of 256.
    fn step<'a>(&'a self, mlp: &'a Mlp) -> Box<dyn FnMut() + 'a>;
}

impl<B: Backend> Scores for B
where
    B::Matrix: 'static,
    B::Vector: 'static,
    B::Batch: 'static,
{
    fn step<'a>(&'a self, mlp: &'a Mlp) -> Box<dyn FnMut() + 'a> {
        let (x, y) = data(mlp);
        let (x, y) = (x[..256 * mlp.inputs()].to_vec(), y[..256].to_vec());
        let cg = natgrad::CgParams {
            max_iters: 50,
            rel_tol: 0.0,
        };
        let mut config = OptimConfig::new(OptimizerKind::Ngd, 1.0);
        config.ngd.fisher = FisherKind::Empirical;
        config.ngd.cg = cg;
        let mut trainer = Trainer::new(self, mlp.clone(), &mlp.init(0), config, 256, 0).unwrap();
        Box::new(move || {
            trainer.step(&x, &y).unwrap();
            self.synchronize().unwrap();
        })
    }

    fn prepare<'a>(&'a self, mlp: &'a Mlp) -> Box<dyn FnMut(bool) + 'a> {
        let b = self;
        let (x, y) = data(mlp);
        let mut batch = b.upload_batch(mlp, &x, &y).unwrap();
        let theta = b.upload_vector("θ", &mlp.init(0)).unwrap();
        b.forward(mlp, &theta, &mut batch).unwrap();
        let p = mlp.num_params();
        let chunk = scores::chunk_rows(b, p, BATCH).unwrap();
        let mut rows = b.zeros_matrix("G chunk", chunk, p).unwrap();
        let mut last = b
            .zeros_matrix("G last chunk", BATCH - (BATCH - 1) / chunk * chunk, p)
            .unwrap();
        let mut f = if p < 8192 {
            Some(b.zeros_matrix("F", p, p).unwrap())
        } else {
            None
        };
        b.synchronize().unwrap();
        Box::new(move |with_fisher| {
            if with_fisher {
                let f = f.as_mut().expect("a dense Fisher for this size");
                scores::build(
                    b,
                    mlp,
                    &theta,
                    &mut batch,
                    FisherKind::Empirical,
                    SampleKey::default(),
                    0.0,
                    f,
                )
                .unwrap();
            } else {
                let mut start = 0;
                while start < BATCH {
                    let end = (start + chunk).min(BATCH);
                    let out = if end - start == chunk { &mut rows } else { &mut last };
                    b.score_rows(
                        mlp,
                        &theta,
                        &mut batch,
                        FisherKind::Empirical,
                        SampleKey::default(),
                        start..end,
                        out,
                    )
                    .unwrap();
                    start = end;
                }
            }
            b.synchronize().unwrap();
        })
    }
}

fn benches(c: &mut Criterion) {
    let gpu = Gpu::open(None).map_err(|e| eprintln!("no GPU rows: {e}")).ok();
    let cpu = Cpu::new();
    let mut devices: Vec<(&str, &dyn Scores)> = vec![("cpu", &cpu)];
    if let Some(gpu) = &gpu {
        devices.push(("gpu", gpu));
    }

    let big = mlp(784, vec![256, 256]);
    let mut group = c.benchmark_group("scores_784_256_256_10");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, device) in &devices {
        let mut run = device.prepare(&big);
        group.bench_function(BenchmarkId::new(*name, big.num_params()), |b| b.iter(|| run(false)));
    }
    group.finish();

    let small = mlp(64, vec![64]);
    let mut group = c.benchmark_group("scores_then_fisher_64_64_10");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, device) in &devices {
        let mut run = device.prepare(&small);
        group.bench_function(BenchmarkId::new(format!("{name}/scores"), small.num_params()), |b| {
            b.iter(|| run(false))
        });
        group.bench_function(
            BenchmarkId::new(format!("{name}/scores+fisher"), small.num_params()),
            |b| b.iter(|| run(true)),
        );
    }
    group.finish();

    // one full natural-gradient step (empirical Fisher, 50 CG iterations) on a 64-32-10 MLP
    let step_mlp = mlp(64, vec![32]);
    let mut group = c.benchmark_group("ngd_step_64_32_10");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (name, device) in &devices {
        let mut step = device.step(&step_mlp);
        group.bench_function(BenchmarkId::new(*name, step_mlp.num_params()), |b| b.iter(&mut step));
    }
    group.finish();
}

criterion_group!(scores, benches);
criterion_main!(scores);
