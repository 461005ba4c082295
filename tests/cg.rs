//! Conjugate gradient on both devices: against an f64 Cholesky solve, true residuals, iteration
//! counts, warm starts, and singular systems.

mod common;

use common::{gpu_variants, normal, rng};
use natgrad::cpu::{Cpu, reference};
use natgrad::prelude::*;
use natgrad::{CgOutcome, CgParams, CgReport};

/// A Fisher-like SPD system: F = GᵀG/m for G m×p standard normal, and a random g.
struct System {
    p: usize,
    f: Vec<f32>,
    g: Vec<f32>,
}

impl System {
    fn new(m: usize, p: usize, seed: u64) -> Self {
        let mut r = rng(seed);
        let rows = normal(&mut r, m * p);
        let f64_f = reference::fisher(&rows, m, p, 1.0 / m as f64);
        Self {
            p,
            f: f64_f.iter().map(|&v| v as f32).collect(),
            g: normal(&mut r, p),
        }
    }

    /// The f64 relative residual ‖g − (F + λI)d‖ / ‖g‖.
    fn true_residual(&self, damping: f32, d: &[f32]) -> f64 {
        let q = reference::matvec(&reference::to_f64(&self.f), damping as f64, &reference::to_f64(d));
        let num: f64 = self.g.iter().zip(&q).map(|(g, q)| (*g as f64 - q).powi(2)).sum();
        let den: f64 = self.g.iter().map(|g| (*g as f64).powi(2)).sum();
        (num / den).sqrt()
    }
}

fn solve<B: Backend>(b: &B, s: &System, damping: f32, start: &[f32], params: CgParams) -> (CgReport, Vec<f32>) {
    let f = b.upload_matrix("F", s.p, s.p, &s.f).unwrap();
    let g = b.upload_vector("g", &s.g).unwrap();
    let mut d = b.upload_vector("d", start).unwrap();
    let report = b.cg_solve(&f, damping, &g, &mut d, &params).unwrap();
    (report, b.download_vector(&d).unwrap())
}

fn backends_each(mut check: impl FnMut(&dyn Fn(&System, f32, &[f32], CgParams) -> (CgReport, Vec<f32>), &str)) {
    let cpu = Cpu::new();
    check(&|s, l, d, p| solve(&cpu, s, l, d, p), "cpu");
    for gpu in gpu_variants().into_iter().step_by(2) {
        let name = format!("gpu subgroups={}", gpu.uses_subgroups());
        check(&|s, l, d, p| solve(&gpu, s, l, d, p), &name);
    }
}

#[test]
fn solutions_match_cholesky_and_report_the_true_residual() {
    let params = CgParams {
        max_iters: 500,
        rel_tol: 1e-5,
    };
    backends_each(|solve, name| {
        for (k, &p) in [1usize, 13, 67, 257].iter().enumerate() {
            let s = System::new(2 * p + 3, p, k as u64);
            let damping = 1e-2;
            let (report, d) = solve(&s, damping, &vec![0.0; p], params);
            let f64_d =
                reference::solve_spd(&reference::to_f64(&s.f), damping as f64, &reference::to_f64(&s.g)).unwrap();
            let err = reference::rel_error(&d, &f64_d);
            assert_eq!(report.outcome, CgOutcome::Converged, "{name} p={p}: {report:?}");
            assert!(
                err < 1e-3,
                "{name} p={p}: error against Cholesky {err:.2e} ({report:?})"
            );
            let truth = s.true_residual(damping, &d);
            assert!(
                (report.rel_residual as f64 - truth).abs() <= 0.1 * truth + 1e-6,
                "{name} p={p}: reported residual {} but the true one is {truth:.3e}",
                report.rel_residual
            );
        }
    });
}

/// Asking for a tolerance f32 cannot reach keeps CG iterating while its recursive residual
/// drifts far below the true one: the report must carry the true one.
#[test]
fn the_reported_residual_is_recomputed_not_recursive() {
    let params = CgParams {
        max_iters: 300,
        rel_tol: 1e-12,
    };
    backends_each(|solve, name| {
        let s = System::new(90, 80, 11);
        let damping = 1e-3;
        let (report, d) = solve(&s, damping, &vec![0.0; 80], params);
        // the recursive residual drifted from the true one: either it claimed 1e-12, which f32
        // cannot reach, or all 300 iterations ran without getting there
        let drifted = (report.outcome == CgOutcome::Converged && report.rel_residual > 1e-10)
            || (report.outcome, report.iterations) == (CgOutcome::MaxIterations, 300);
        assert!(drifted, "{name}: {report:?}");
        let truth = s.true_residual(damping, &d);
        assert!(
            (report.rel_residual as f64 - truth).abs() <= 0.25 * truth + 1e-7,
            "{name}: reported {:.3e}, true {truth:.3e} ({report:?})",
            report.rel_residual
        );
        assert!(d.iter().all(|v| v.is_finite()), "{name}: non-finite d");
    });
}

#[test]
fn a_well_conditioned_system_converges_within_p_iterations() {
    let params = CgParams {
        max_iters: 1000,
        rel_tol: 1e-5,
    };
    backends_each(|solve, name| {
        for (k, &p) in [13usize, 67, 257].iter().enumerate() {
            // m = 4p: eigenvalues of F within about [0.25, 2.25], condition ~9
            let s = System::new(4 * p, p, 20 + k as u64);
            let (report, _) = solve(&s, 1e-3, &vec![0.0; p], params);
            assert_eq!(report.outcome, CgOutcome::Converged, "{name} p={p}");
            assert!(report.iterations <= p, "{name} p={p}: {} iterations", report.iterations);
        }
    });
}

#[test]
fn a_warm_start_needs_fewer_iterations() {
    let params = CgParams {
        max_iters: 1000,
        rel_tol: 1e-5,
    };
    backends_each(|solve, name| {
        let p = 150;
        let s = System::new(160, p, 5);
        let (cold, d) = solve(&s, 1e-2, &vec![0.0; p], params);
        // the next step's gradient, close to this one
        let noise = normal(&mut rng(6), p);
        let next = System {
            p,
            f: s.f.clone(),
            g: s.g.iter().zip(&noise).map(|(g, n)| g + 0.01 * n).collect(),
        };
        let (again_cold, _) = solve(&next, 1e-2, &vec![0.0; p], params);
        let (warm, _) = solve(&next, 1e-2, &d, params);
        assert_eq!(warm.outcome, CgOutcome::Converged, "{name}");
        assert!(
            warm.iterations < again_cold.iterations,
            "{name}: warm start took {} iterations, cold {} (first solve {})",
            warm.iterations,
            again_cold.iterations,
            cold.iterations
        );
    });
}

#[test]
fn a_singular_system_is_reported_never_nan() {
    let params = CgParams {
        max_iters: 200,
        rel_tol: 1e-6,
    };
    backends_each(|solve, name| {
        // rank 20 in 60 dimensions, no damping, and g off the range of F: no solution exists
        let p = 60;
        let s = System::new(20, p, 3);
        let (report, d) = solve(&s, 0.0, &vec![0.0; p], params);
        assert_ne!(report.outcome, CgOutcome::Converged, "{name}: {report:?}");
        assert!(d.iter().all(|v| v.is_finite()), "{name}: d has non-finite entries");
        assert!(
            report.rel_residual.is_finite() && report.rel_residual > 0.1,
            "{name}: {report:?}"
        );
        let truth = s.true_residual(0.0, &d);
        assert!(
            (report.rel_residual as f64 - truth).abs() <= 1e-3 * truth,
            "{name}: {report:?} vs {truth}"
        );
    });
}

#[test]
fn curvature_breakdown_is_detected() {
    let params = CgParams {
        max_iters: 500,
        rel_tol: 1e-7,
    };
    backends_each(|solve, name| {
        let p = 60;
        let s = System::new(20, p, 4);
        let (report, _) = solve(&s, 0.0, &vec![0.0; p], params);
        assert_eq!(report.outcome, CgOutcome::Breakdown, "{name}: {report:?}");
        assert!(
            report.iterations <= 40,
            "{name}: found the singular direction only after {report:?}"
        );
    });
}

#[test]
fn a_zero_gradient_gives_a_zero_direction() {
    backends_each(|solve, name| {
        let mut s = System::new(30, 20, 8);
        s.g = vec![0.0; 20];
        let (report, d) = solve(&s, 0.1, &[1.0; 20], CgParams::default());
        assert_eq!(
            report,
            CgReport {
                iterations: 0,
                rel_residual: 0.0,
                rhs_sq: 0.0,
                outcome: CgOutcome::Converged
            },
            "{name}"
        );
        assert!(d.iter().all(|&v| v == 0.0), "{name}: {d:?}");
    });
}

#[test]
fn iteration_limits_are_kept_across_submissions() {
    backends_each(|solve, name| {
        let s = System::new(50, 40, 9);
        // half the solution: residual ‖g‖/2, a warm start better than zero, so it is kept
        let exact = reference::solve_spd(&reference::to_f64(&s.f), 0.1, &reference::to_f64(&s.g)).unwrap();
        let start: Vec<f32> = exact.iter().map(|v| (0.5 * v) as f32).collect();
        let (report, d) = solve(
            &s,
            0.1,
            &start,
            CgParams {
                max_iters: 0,
                rel_tol: 1e-6,
            },
        );
        assert_eq!(
            (report.outcome, report.iterations),
            (CgOutcome::MaxIterations, 0),
            "{name}"
        );
        assert_eq!(d, start, "{name}: zero iterations must leave d alone");
        // eigenvalues log-spaced over [1, 10⁴]: hundreds of iterations to 1e-7, so 300 of them
        // run past the GPU's 256 per submission and stop at the limit
        let p = 300;
        let mut f = vec![0.0f32; p * p];
        (0..p).for_each(|i| f[i * p + i] = 10f32.powf(4.0 * i as f32 / (p - 1) as f32));
        let slow = System {
            p,
            f,
            g: normal(&mut rng(10), p),
        };
        let (report, d) = solve(
            &slow,
            0.0,
            &vec![0.0; p],
            CgParams {
                max_iters: 300,
                rel_tol: 1e-7,
            },
        );
        assert_eq!(
            (report.outcome, report.iterations),
            (CgOutcome::MaxIterations, 300),
            "{name}: {report:?}"
        );
        let truth = slow.true_residual(0.0, &d);
        assert!(
            truth < 1e-2 && (report.rel_residual as f64 - truth).abs() <= 0.1 * truth,
            "{name}: {report:?} vs {truth:.3e}"
        );
    });
}

#[test]
fn gpu_and_cpu_take_the_same_path() {
    let params = CgParams {
        max_iters: 500,
        rel_tol: 1e-5,
    };
    let s = System::new(300, 257, 12);
    let (cpu_report, cpu_d) = solve(&Cpu::new(), &s, 1e-2, &vec![0.0; 257], params);
    for gpu in gpu_variants().into_iter().step_by(2) {
        let (report, d) = solve(&gpu, &s, 1e-2, &vec![0.0; 257], params);
        assert!(
            report.iterations.abs_diff(cpu_report.iterations) <= 2,
            "{report:?} vs {cpu_report:?}"
        );
        let diff = common::rel_diff(&d, &cpu_d);
        assert!(diff < 1e-3, "GPU vs CPU direction: {diff:.2e}");
    }
}

#[test]
fn a_warm_start_worse_than_zero_is_dropped() {
    let params = CgParams {
        max_iters: 500,
        rel_tol: 1e-5,
    };
    backends_each(|solve, name| {
        let p = 70;
        let s = System::new(150, p, 13);
        let (cold, _) = solve(&s, 1e-2, &vec![0.0; p], params);
        let bad: Vec<f32> = normal(&mut rng(14), p).iter().map(|v| 1e3 * v).collect();
        let (warm, d) = solve(&s, 1e-2, &bad, params);
        assert_eq!(warm.outcome, CgOutcome::Converged, "{name}: {warm:?}");
        assert!(
            warm.iterations <= cold.iterations + 1,
            "{name}: {warm:?} vs cold {cold:?}"
        );
        assert!(s.true_residual(1e-2, &d) < 2e-5, "{name}");
    });
}
