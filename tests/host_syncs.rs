//! How often a GPU training step waits for the device, per curvature representation: the step's
//! scalars, the solve's report and the trust region's dᵀAd, never a read-back per CG iteration.
//! The counts come from the recording engine (`summary.json`'s `profile`).

mod common;

use natgrad::curvature::{CurvatureChoice, CurvatureKind, PreconditionerKind};
use natgrad::data::TaskChoice;
use natgrad::model::Activation;
use natgrad::optim::{OptimConfig, OptimizerKind};
use natgrad::train::{self, RunConfig};

/// Host waits per step of 3 ngd steps on spirals (a small net, so lavapipe runs it quickly) with
/// `curvature`, and the most in one step.
fn waits(curvature: CurvatureKind, preconditioner: PreconditionerKind, cg_iters: usize) -> (f64, u64) {
    let summary = run(curvature, preconditioner, cg_iters, false);
    let profile = summary.profile.expect("a GPU run reports its waits");
    (profile.host_syncs_per_step, profile.max_host_syncs_per_step)
}

fn run(
    curvature: CurvatureKind,
    preconditioner: PreconditionerKind,
    cg_iters: usize,
    profile: bool,
) -> natgrad::train::Summary {
    let dir = tempfile::tempdir().unwrap();
    let mut optim = OptimConfig::new(OptimizerKind::Ngd, 1.0);
    optim.ngd.curvature = CurvatureChoice::Kind(curvature);
    optim.ngd.settings.preconditioner = preconditioner;
    optim.ngd.cg.max_iters = cg_iters;
    let cfg = RunConfig {
        data: "spirals".into(),
        task: TaskChoice::Auto,
        hidden: vec![8],
        activation: Activation::Tanh,
        sigma: 1.0,
        optim,
        batch: 64,
        epochs: 1,
        steps: Some(3),
        val_split: 0.0,
        standardize: false,
        seed: 0,
        out: dir.path().join("run"),
        claim: natgrad::train::dir::Claim::New,
        checkpoint_every: None,
        profile,
    };
    let prepared = train::prepare(&cfg).unwrap();
    let gpu = common::gpu();
    train::run(&gpu, &cfg, &prepared, ("gpu", "test"), &mut |_| {}).unwrap()
}

#[test]
fn a_step_waits_at_most_three_times_whatever_the_cg_iterations() {
    use CurvatureKind::*;
    let cases = [
        (Dense, PreconditionerKind::None),
        (Kfac, PreconditionerKind::None),
        (Woodbury, PreconditionerKind::None),
        (Block, PreconditionerKind::None),
        (Diagonal, PreconditionerKind::None),
        (Implicit, PreconditionerKind::None),
        (Implicit, PreconditionerKind::Kfac),
        (Implicit, PreconditionerKind::Diagonal),
    ];
    for (kind, preconditioner) in cases {
        for cg_iters in [5, 40] {
            let (_, most) = waits(kind, preconditioner, cg_iters);
            assert!(
                most <= 3,
                "{kind:?} ({preconditioner:?}), {cg_iters} CG iterations: {most} waits in one step"
            );
        }
    }
}

/// K-FAC, the default, solves directly: its statistics come back with the loss, and the step
/// waits only for the loss and for dᵀAd.
#[test]
fn a_kfac_step_waits_twice() {
    let (mean, most) = waits(CurvatureKind::Kfac, PreconditionerKind::None, 5);
    assert_eq!((mean, most), (2.0, 2));
}

/// `--profile` charges matrix-free CG to the solve, where the training code labels it, runs the
/// device's recorded solve as an unprofiled run does, and reports that run's waits, not its own.
#[test]
fn a_profiled_matrix_free_step_is_charged_to_the_solve_and_waits_as_unprofiled() {
    let summary = run(CurvatureKind::Implicit, PreconditionerKind::Kfac, 20, true);
    let ms = summary.profile_ms_per_step.expect("a profiled run reports its phases");
    assert!(ms["solve"] > 0.0 && ms["scores"] == 0.0, "{ms:?}");
    let profile = summary.profile.expect("a GPU run reports its waits");
    assert!(profile.max_host_syncs_per_step <= 3, "{profile:?}");
}
