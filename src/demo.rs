//! `natgrad demo`: build a Fisher from random scores and solve with it on each device, timed,
//! with the devices checked against each other and against an f64 reference.

use std::fmt::Write;
use std::time::Instant;

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::backend::Backend;
use crate::cpu::reference;
use crate::error::Result;
use crate::solve::{CgParams, CgReport};

/// The problem: G `n×p` standard normal, g its mean row (the empirical-Fisher gradient).
pub struct Problem {
    pub n: usize,
    pub p: usize,
    pub g_rows: Vec<f32>,
    pub grad: Vec<f32>,
    pub damping: f32,
    pub cg: CgParams,
}

impl Problem {
    pub fn random(n: usize, p: usize, seed: u64, damping: f32, cg: CgParams) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let g_rows: Vec<f32> = (0..n * p).map(|_| StandardNormal.sample(&mut rng)).collect();
        let mut grad = vec![0.0f32; p];
        for row in g_rows.chunks_exact(p) {
            grad.iter_mut().zip(row).for_each(|(s, v)| *s += v / n as f32);
        }
        Self {
            n,
            p,
            g_rows,
            grad,
            damping,
            cg,
        }
    }
}

/// What one device did.
pub struct Outcome {
    pub device: String,
    /// (median, minimum) over the timed repeats
    pub fisher_ms: (f64, f64),
    pub cg_ms: (f64, f64),
    pub report: CgReport,
    pub f: Vec<f32>,
    pub d: Vec<f32>,
}

/// (median, minimum) of timings.
fn median_min(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

/// Runs the problem on `b`: one warm-up, then `repeats` timed runs of each step.
pub fn run<B: Backend>(b: &B, problem: &Problem, repeats: usize) -> Result<Outcome> {
    let g = b.upload_matrix("score matrix G", problem.n, problem.p, &problem.g_rows)?;
    let grad = b.upload_vector("gradient g", &problem.grad)?;
    let mut f = b.fisher(&g)?;
    b.synchronize()?;
    let mut fisher_times = Vec::new();
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        b.fisher_accumulate(&mut f, &g, 1.0 / problem.n as f32, false)?;
        b.synchronize()?;
        fisher_times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // the warm-up solve also gives the report; the timed ones repeat it from the same cold start
    let mut d = b.zeros_vector("direction d", problem.p)?;
    let report = b.cg_solve(&f, problem.damping, &grad, &mut d, &problem.cg)?;
    let mut cg_times = Vec::new();
    for _ in 0..repeats.max(1) {
        d = b.zeros_vector("direction d", problem.p)?;
        b.synchronize()?;
        let t = Instant::now();
        b.cg_solve(&f, problem.damping, &grad, &mut d, &problem.cg)?;
        cg_times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(Outcome {
        device: b.describe(),
        fisher_ms: median_min(fisher_times),
        cg_ms: median_min(cg_times),
        report,
        f: b.download_matrix(&f)?,
        d: b.download_vector(&d)?,
    })
}

/// The demo's report for the outcomes of every device run, with the cross-checks.
pub fn summary(problem: &Problem, outcomes: &[Outcome], check_f64: bool) -> String {
    let mut out = String::new();
    let flops = problem.n as f64 * problem.p as f64 * (problem.p as f64 + 1.0);
    for o in outcomes {
        let _ = writeln!(out, "{}", o.device);
        let (median, min) = o.fisher_ms;
        let _ = writeln!(
            out,
            "  fisher build  {median:9.3} ms median, {min:9.3} ms min  {:8.1} GFLOP/s (median)",
            flops / median / 1e6
        );
        let (median, min) = o.cg_ms;
        let _ = writeln!(
            out,
            "  cg solve      {median:9.3} ms median, {min:9.3} ms min  {} iterations, true relative residual {:.2e} ({:?})",
            o.report.iterations, o.report.rel_residual, o.report.outcome
        );
    }
    if let [first, rest @ ..] = outcomes {
        for o in rest {
            let f_ref = reference::to_f64(&first.f);
            let d_ref = reference::to_f64(&first.d);
            let _ = writeln!(
                out,
                "agreement with the first device: F {:.1e}, d {:.1e} (relative)",
                reference::rel_error(&o.f, &f_ref),
                reference::rel_error(&o.d, &d_ref)
            );
        }
    }
    if check_f64 && !outcomes.is_empty() {
        let f64_fisher = reference::fisher(&problem.g_rows, problem.n, problem.p, 1.0 / problem.n as f64);
        match reference::solve_spd(&f64_fisher, problem.damping as f64, &reference::to_f64(&problem.grad)) {
            Some(d_ref) => {
                for o in outcomes {
                    let _ = writeln!(
                        out,
                        "f64 reference vs {}: F {:.1e}, d {:.1e} (relative)",
                        o.device.split(" (").next().unwrap_or(&o.device),
                        reference::rel_error(&o.f, &f64_fisher),
                        reference::rel_error(&o.d, &d_ref)
                    );
                }
            }
            None => out.push_str("f64 reference: F + λI is not positive definite\n"),
        }
    }
    out
}
