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
        profile: false,
    };
    let prepared = train::prepare(&cfg).unwrap();
    let gpu = common::gpu();
    let summary = train::run(&gpu, &cfg, &prepared, ("gpu", "test"), &mut |_| {}).unwrap();
    let profile = summary.profile.expect("a GPU run reports its waits");
    (profile.host_syncs_per_step, profile.max_host_syncs_per_step)
}

#[test]
fn a_step_waits_at_most_three_times_whatever_the_cg_iterations() {
    use CurvatureKind::*;
    let cases = [
        (Dense, PreconditionerKind::None),
        (Kfac, PreconditionerKind::None),
        (Woodbury, PreconditionerKind::None),
        (Diagonal, PreconditionerKind::None),
        (Implicit, PreconditionerKind::None),
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

/// Known excess, held here so that it cannot grow unnoticed: K-FAC's factors preconditioning
/// matrix-free CG (factored or diagonal) are read back for their f64 averages and inverses (one
/// more wait on the steps that rebuild them), and `block` reads one report per layer.
#[test]
fn the_known_extra_waits_do_not_grow_with_the_iterations() {
    for cg_iters in [5, 40] {
        for preconditioner in [PreconditionerKind::Kfac, PreconditionerKind::Diagonal] {
            let (_, most) = waits(CurvatureKind::Implicit, preconditioner, cg_iters);
            assert!(most <= 4, "implicit ({preconditioner:?}): {most} waits in one step");
        }
        let (_, most) = waits(CurvatureKind::Block, PreconditionerKind::None, cg_iters);
        assert!(most <= 7, "block: {most} waits in one step");
    }
}
