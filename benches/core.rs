//! Criterion benches of the core operations, GPU and CPU side by side: Fisher build, matvec, and
//! a fixed-length CG solve, at p ∈ {256, 1024, 2048}.
//!
//! `cargo bench --bench core` (add `-- fisher` to run one group). n = 256 rows of G keeps the
//! software adapter (lavapipe) to seconds per size; `natgrad demo` and `natgrad bench` time
//! larger batches. Without a GPU adapter only the CPU rows run, and the bench says so.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use natgrad::CgParams;
use natgrad::cpu::Cpu;
use natgrad::gpu::Gpu;
use natgrad::prelude::*;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

const N: usize = 256;
const PARAMS: [usize; 3] = [256, 1024, 2048];
const CG_ITERS: usize = 20;

fn scores(n: usize, p: usize) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(p as u64);
    (0..n * p).map(|_| StandardNormal.sample(&mut rng)).collect()
}

fn gpu() -> Option<Gpu> {
    match Gpu::open(None) {
        Ok(gpu) => {
            eprintln!("GPU: {}", gpu.describe());
            Some(gpu)
        }
        Err(e) => {
            eprintln!("no GPU rows: {e}");
            None
        }
    }
}

/// One group: `op` timed for each size on each device. Inputs are prepared (and the device
/// drained) once per size, outside the timing.
fn group(
    c: &mut Criterion,
    devices: &[(&str, &dyn DeviceOps)],
    name: &str,
    op: Op,
    throughput: impl Fn(usize) -> Throughput,
) {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for p in PARAMS {
        group.throughput(throughput(p));
        for (device, ops) in devices {
            let mut run = ops.prepare(p);
            group.bench_function(BenchmarkId::new(*device, p), |b| b.iter(|| run(op)));
        }
    }
    group.finish();
}

/// The timed operations, object-safe so both devices fit in one list.
trait DeviceOps {
    /// Uploads the inputs for size `p` and returns the timed step, which waits for the device.
    fn prepare<'a>(&'a self, p: usize) -> Box<dyn FnMut(Op) + 'a>;
}

#[derive(Clone, Copy)]
enum Op {
    Fisher,
    Matvec,
    Cg,
}

impl<B: Backend> DeviceOps for B
where
    B::Matrix: 'static,
    B::Vector: 'static,
{
    fn prepare<'a>(&'a self, p: usize) -> Box<dyn FnMut(Op) + 'a> {
        let b = self;
        let g = b.upload_matrix("G", N, p, &scores(N, p)).unwrap();
        let mut f = b.fisher(&g).unwrap();
        let grad = b.upload_vector("g", &scores(1, p)).unwrap();
        let mut y = b.zeros_vector("y", p).unwrap();
        let params = CgParams {
            max_iters: CG_ITERS,
            rel_tol: 0.0,
        };
        b.synchronize().unwrap();
        Box::new(move |op| {
            match op {
                Op::Fisher => b.fisher_accumulate(&mut f, &g, 1.0 / N as f32, false).unwrap(),
                Op::Matvec => b.matvec(&f, 1e-3, &grad, &mut y).unwrap(),
                Op::Cg => {
                    let mut d = b.zeros_vector("d", p).unwrap();
                    b.cg_solve(&f, 1e-3, &grad, &mut d, &params).unwrap();
                }
            }
            b.synchronize().unwrap();
        })
    }
}

fn benches(c: &mut Criterion) {
    let gpu = gpu();
    let cpu = Cpu::new();
    let mut devices: Vec<(&str, &dyn DeviceOps)> = vec![("cpu", &cpu)];
    if let Some(gpu) = &gpu {
        devices.push(("gpu", gpu));
    }
    group(c, &devices, "fisher_build", Op::Fisher, |p| {
        Throughput::Elements((N * p * (p + 1)) as u64)
    });
    group(c, &devices, "matvec", Op::Matvec, |p| {
        Throughput::Bytes((4 * p * p) as u64)
    });
    group(c, &devices, "cg_solve_20_iterations", Op::Cg, |p| {
        Throughput::Bytes((4 * p * p * (CG_ITERS + 2)) as u64)
    });
}

criterion_group!(core, benches);
criterion_main!(core);
