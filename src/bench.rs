//! `natgrad bench`: the core operations, and a natural-gradient step with each curvature
//! representation, timed on each device, beside the device's own ceilings
//! (copy bandwidth, and natgrad's best matrix-product rate on it), so every figure shows how near
//! the limit it runs.
//!
//! Each measurement is one warm-up and then `repeats` timed runs (median and minimum). GPU work is
//! timed on the GPU's clock with timestamp queries where the adapter has them, otherwise on the
//! host around a completed submission; the output says which.

use std::fmt::Write;
use std::time::Instant;

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use crate::backend::Backend;
use crate::curvature::{CurvatureChoice, CurvatureKind, scores};
use crate::device::DeviceInfo;
use crate::error::Result;
use crate::model::{Activation, Likelihood, Mlp, MlpSpec};
use crate::model::{FisherKind, SampleKey};
use crate::optim::{OptimConfig, OptimizerKind};
use crate::solve::CgParams;
use crate::train::Trainer;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub params: Vec<usize>,
    pub batch: usize,
    pub repeats: usize,
    /// CG iterations per solve (fixed: the tolerance is 0).
    pub cg_iters: usize,
}

/// One measurement, as `bench --json` writes it (the command-line contract).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Record {
    pub op: String,
    pub device: String,
    pub adapter: String,
    pub backend: String,
    pub n: usize,
    pub p: usize,
    pub ms_median: f64,
    pub ms_min: f64,
    pub gflops: Option<f64>,
    pub gbps: Option<f64>,
}

/// How a device's timings were taken, in words.
pub fn clock(device: &DeviceInfo, device_clock: bool) -> &'static str {
    if device_clock {
        "on the device's clock (GPU timestamp queries)"
    } else if device.kind == "gpu" {
        "on the host clock around completed submissions (no timestamp queries)"
    } else {
        "on the host clock"
    }
}

/// Timings of one operation: (median, minimum) in ms, and whether the device's clock gave them.
fn measure<B: Backend>(b: &B, repeats: usize, work: &mut dyn FnMut() -> Result<()>) -> Result<(f64, f64, bool)> {
    work()?;
    b.synchronize()?;
    let mut times = Vec::with_capacity(repeats);
    let mut on_device = true;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        let device_ms = b.time_device(work)?;
        b.synchronize()?;
        let host_ms = start.elapsed().as_secs_f64() * 1e3;
        on_device &= device_ms.is_some();
        times.push(device_ms.unwrap_or(host_ms));
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[0], on_device))
}

fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| StandardNormal.sample(&mut rng)).collect()
}

/// An MLP 64-h-10 with about `p` parameters (64h + h + 10h + 10 = p).
pub fn mlp_near(p: usize) -> Result<Mlp> {
    let h = (p.saturating_sub(10) / 75).max(1);
    Mlp::new(MlpSpec {
        inputs: 64,
        hidden: vec![h],
        activation: Activation::Relu,
        likelihood: Likelihood::Categorical { classes: 10 },
    })
}

/// Everything measured on one device; the bool says whether its clock was the device's.
pub fn run<B: Backend>(b: &B, device: &DeviceInfo, cfg: &BenchConfig) -> Result<(Vec<Record>, bool)> {
    let n = cfg.batch;
    let mut records = Vec::new();
    let mut device_clock = true;
    let mut record = |op: &str, n: usize, p: usize, (median, min, clock): (f64, f64, bool), work: Work| {
        device_clock &= clock;
        let (gflops, gbps) = match work {
            Work::Flops(f) => (Some(f / median / 1e6), None),
            Work::Bytes(bytes) => (None, Some(bytes / median / 1e6)),
            Work::None => (None, None),
        };
        records.push(Record {
            op: op.into(),
            device: device.kind.clone(),
            adapter: device.adapter.clone(),
            backend: device.backend.clone(),
            n,
            p,
            ms_median: median,
            ms_min: min,
            gflops,
            gbps,
        });
    };

    // the ceiling for memory-bound work: a large device-to-device copy (read + write)
    let copy_len = (b.max_matrix_bytes().min(256 << 20) / 4) as usize;
    let src = b.upload_vector("copy source", &vec![1.0; copy_len])?;
    let mut dst = b.zeros_vector("copy target", copy_len)?;
    let t = measure(b, cfg.repeats, &mut || b.copy(&src, &mut dst))?;
    record("ceiling_copy", 0, copy_len, t, Work::Bytes(8.0 * copy_len as f64));
    drop((src, dst));

    for &p in &cfg.params {
        let g = b.upload_matrix("score matrix G", n, p, &normal(n * p, p as u64))?;
        let mut f = b.zeros_matrix("Fisher matrix F", p, p)?;
        let t = measure(b, cfg.repeats, &mut || {
            b.fisher_accumulate(&mut f, &g, 1.0 / n as f32, false)
        })?;
        record(
            "fisher_build",
            n,
            p,
            t,
            Work::Flops(n as f64 * p as f64 * (p as f64 + 1.0)),
        );
        drop(g);

        let v = b.upload_vector("v", &normal(p, 1))?;
        let mut y = b.zeros_vector("y", p)?;
        let t = measure(b, cfg.repeats, &mut || b.matvec(&f, 1e-3, &v, &mut y))?;
        record("matvec", n, p, t, Work::Bytes(4.0 * p as f64 * p as f64));

        let zeros = b.zeros_vector("zeros", p)?;
        let mut d = b.zeros_vector("d", p)?;
        let cg = CgParams {
            max_iters: cfg.cg_iters,
            rel_tol: 0.0,
        };
        let t = measure(b, cfg.repeats, &mut || {
            b.copy(&zeros, &mut d)?;
            b.cg_solve(&f, 1e-3, &v, &mut d, &cg).map(|_| ())
        })?;
        // the matrix is read once per iteration, plus the initial and final residuals
        record(
            "cg_solve",
            n,
            p,
            t,
            Work::Bytes(4.0 * p as f64 * p as f64 * (cfg.cg_iters + 2) as f64),
        );
        drop((f, v, y, zeros, d));

        let mlp = mlp_near(p)?;
        let pm = mlp.num_params();
        let x = normal(n * 64, 3);
        let labels: Vec<f32> = (0..n).map(|i| (i % 10) as f32).collect();
        let theta = b.upload_vector("θ", &mlp.init(0))?;
        let mut batch = b.upload_batch(&mlp, &x, &labels)?;
        b.forward(&mlp, &theta, &mut batch)?;
        let chunk = scores::chunk_rows(b, pm, n)?;
        let (kind, key) = (FisherKind::Empirical, SampleKey::default());
        let t = measure(b, cfg.repeats, &mut || {
            scores::for_each_chunk(b, &mlp, &theta, &mut batch, kind, key, chunk, |_, _| Ok(()))
        })?;
        // G's bytes written
        record("scores", n, pm, t, Work::Bytes(4.0 * n as f64 * pm as f64));
        drop((batch, theta));

        let steps: Vec<(String, OptimConfig)> = {
            let ngd = |kind: CurvatureKind, fisher| {
                let mut config = OptimConfig::new(OptimizerKind::Ngd, 1.0);
                config.ngd.fisher = fisher;
                config.ngd.cg = cg;
                config.ngd.curvature = CurvatureChoice::Kind(kind);
                // a fixed count of CG iterations, as the dense solve's
                config.ngd.settings.cg_progress = 0.0;
                config
            };
            let mut all = vec![
                ("adam_step".to_string(), OptimConfig::new(OptimizerKind::Adam, 0.01)),
                ("sgd_step".to_string(), OptimConfig::new(OptimizerKind::Sgd, 0.1)),
            ];
            for &kind in CurvatureKind::ALL {
                // the representations that form G or F take the empirical Fisher (one score row
                // an example); matrix-free and K-FAC take the exact one, which costs them little
                let fisher = match kind {
                    CurvatureKind::Implicit | CurvatureKind::Kfac => FisherKind::Exact,
                    _ => FisherKind::Empirical,
                };
                let op = match kind {
                    CurvatureKind::Dense => "ngd_step".to_string(),
                    other => format!("ngd_step_{}", other.name()),
                };
                all.push((op, ngd(kind, fisher)));
            }
            all
        };
        for (op, config) in steps {
            let mut trainer = Trainer::new(b, mlp.clone(), &mlp.init(0), config, n, 0)?;
            let t = measure(b, cfg.repeats, &mut || trainer.step(&x, &labels).map(|_| ()))?;
            record(&op, n, pm, t, Work::None);
        }
    }

    // natgrad's own best matrix-product rate here: the fastest Fisher build of the run
    let best = records
        .iter()
        .filter(|r| r.op == "fisher_build")
        .filter_map(|r| r.gflops)
        .fold(0.0, f64::max);
    records.push(Record {
        op: "ceiling_gemm".into(),
        device: device.kind.clone(),
        adapter: device.adapter.clone(),
        backend: device.backend.clone(),
        n,
        p: 0,
        ms_median: f64::NAN,
        ms_min: f64::NAN,
        gflops: Some(best),
        gbps: None,
    });
    Ok((records, device_clock))
}

enum Work {
    Flops(f64),
    Bytes(f64),
    None,
}

/// The table `natgrad bench` prints: per op and size, each device's time and rate, the share of
/// the device's ceiling, and the GPU's speed-up over the CPU where both ran.
pub fn table(records: &[Record]) -> String {
    let ceiling = |device: &str, op: &str| {
        records
            .iter()
            .find(|r| r.device == device && r.op == op)
            .and_then(|r| r.gflops.or(r.gbps))
    };
    let mut out = String::new();
    for device in ["gpu", "cpu"] {
        if let (Some(copy), Some(gemm)) = (ceiling(device, "ceiling_copy"), ceiling(device, "ceiling_gemm")) {
            let adapter = records
                .iter()
                .find(|r| r.device == device)
                .map(|r| r.adapter.as_str())
                .unwrap_or("");
            let _ = writeln!(
                out,
                "{device} ({adapter}): copy {copy:.1} GB/s, best Fisher build {gemm:.1} GFLOP/s"
            );
        }
    }
    let _ = writeln!(
        out,
        "{:<18} {:>7} {:>7} {:>4} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "op", "n", "p", "dev", "ms median", "ms min", "rate", "ceiling", "gpu/cpu"
    );
    for r in records.iter().filter(|r| !r.op.starts_with("ceiling")) {
        let (rate, share) = match (r.gflops, r.gbps) {
            (Some(g), _) => (
                format!("{g:.1} GF/s"),
                ceiling(&r.device, "ceiling_gemm").map(|c| g / c),
            ),
            (_, Some(g)) => (
                format!("{g:.1} GB/s"),
                ceiling(&r.device, "ceiling_copy").map(|c| g / c),
            ),
            _ => (String::new(), None),
        };
        let share = share.map(|s| format!("{:.0}%", 100.0 * s)).unwrap_or_default();
        let speedup = if r.device == "gpu" {
            records
                .iter()
                .find(|c| c.device == "cpu" && c.op == r.op && c.p == r.p && c.n == r.n)
                .map(|c| format!("{:.2}×", c.ms_median / r.ms_median))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:<18} {:>7} {:>7} {:>4} {:>10.3} {:>10.3} {:>10} {:>8} {:>8}",
            r.op, r.n, r.p, r.device, r.ms_median, r.ms_min, rate, share, speedup
        );
    }
    out
}
