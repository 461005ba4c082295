//! Data-parallel training without MPI: ranks as threads of this process (`dist::threads::Team`),
//! each on its own device, take the steps one process takes, through the same code `mpirun`
//! runs (sharded data, the examples exchanged, every representation's sums across ranks), and
//! must give one process's loss curve within f32 tolerance.

mod common;

use std::path::Path;

use natgrad::CgParams;
use natgrad::cpu::Cpu;
use natgrad::curvature::{CurvatureChoice, CurvatureKind, PreconditionerKind};
use natgrad::data::TaskChoice;
use natgrad::dist::Collective;
use natgrad::dist::threads::Team;
use natgrad::model::{Activation, FisherKind};
use natgrad::optim::{OptimConfig, OptimizerKind};
use natgrad::train::dir::Claim;
use natgrad::train::{self, RunConfig, Summary, shard};

fn config(data: &str, optim: OptimConfig, out: &Path) -> RunConfig {
    RunConfig {
        data: data.into(),
        task: TaskChoice::Auto,
        hidden: vec![16],
        activation: Activation::Tanh,
        sigma: 1.0,
        optim,
        batch: 150,
        epochs: 2,
        steps: None,
        val_split: 0.0,
        standardize: false,
        seed: 3,
        out: out.to_owned(),
        claim: Claim::New,
        checkpoint_every: None,
        profile: false,
    }
}

/// Natural gradient on `curvature`, its solves converged: a solve stopped early leaves a
/// direction that rounding moves by about its residual (CG at 50 iterations on the dense Fisher
/// of digits ends at 3e-2), and that would measure CG, not the ranks.
fn ngd(curvature: CurvatureKind) -> OptimConfig {
    let mut o = OptimConfig::new(OptimizerKind::Ngd, 1.0);
    o.ngd.curvature = CurvatureChoice::Kind(curvature);
    o.ngd.damping = 0.05;
    o.ngd.cg = CgParams {
        max_iters: 400,
        rel_tol: 1e-6,
    };
    o.ngd.settings.cg_progress = 0.0;
    o
}

/// One process's run of `cfg`, on the CPU or the GPU.
fn solo_on(cfg: &RunConfig, gpu: bool) -> Summary {
    let prepared = train::prepare(cfg).unwrap();
    if gpu {
        train::run(&common::gpu(), cfg, &prepared, ("gpu", "test"), &mut |_| {}).unwrap()
    } else {
        train::run(&Cpu::new(), cfg, &prepared, ("cpu", "test"), &mut |_| {}).unwrap()
    }
}

fn solo(cfg: &RunConfig) -> Summary {
    solo_on(cfg, false)
}

/// `cfg` on `ranks` threads, each its own CPU device (or GPU device); rank 0's summary.
fn on_ranks_on(cfg: &RunConfig, ranks: usize, gpu: bool) -> Summary {
    let team = Team::new(ranks);
    let summaries: Vec<Summary> = std::thread::scope(|s| {
        let handles: Vec<_> = team
            .iter()
            .map(|comm| {
                s.spawn(move || {
                    let (prepared, layout) = shard::prepare(cfg, comm).unwrap();
                    if gpu {
                        let b = common::gpu();
                        train::run_ranks(&b, cfg, &prepared, &layout, comm, ("gpu", "test"), &mut |_| {})
                    } else {
                        train::run_ranks(&Cpu::new(), cfg, &prepared, &layout, comm, ("cpu", "test"), &mut |_| {})
                    }
                    .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for s in &summaries[1..] {
        assert_eq!(
            s.train_loss, summaries[0].train_loss,
            "every rank ends where rank 0 does"
        );
    }
    summaries.into_iter().next().unwrap()
}

fn on_ranks(cfg: &RunConfig, ranks: usize) -> Summary {
    on_ranks_on(cfg, ranks, false)
}

/// The training losses of a run's steps, from its metrics.csv.
fn step_losses(dir: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
        .collect()
}

/// The largest relative difference between two loss curves of one length.
fn worst(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-12))
        .fold(0.0, f64::max)
}

/// Every representation, and Adam, on 2 and 3 ranks: the loss of every step and the final
/// training loss as one process's, within f32 rounding (the sums are taken in another order).
#[test]
fn ranks_follow_one_process_step_by_step_for_every_representation() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(&str, OptimConfig)> = CurvatureKind::ALL.iter().map(|&k| (k.name(), ngd(k))).collect();
    cases.push(("adam", OptimConfig::new(OptimizerKind::Adam, 0.01)));
    for (name, optim) in cases {
        let base = config("digits", optim, &dir.path().join(format!("{name}-1")));
        let one = solo(&base);
        for ranks in [2, 3] {
            let cfg = RunConfig {
                out: dir.path().join(format!("{name}-{ranks}")),
                ..base.clone()
            };
            let many = on_ranks(&cfg, ranks);
            let curve = worst(&step_losses(&cfg.out), &step_losses(&base.out));
            let last = (many.train_loss - one.train_loss).abs() / one.train_loss;
            assert!(
                curve < 1e-5 && last < 1e-5,
                "{name} on {ranks} ranks: steps differ by {curve:e}, final loss {} against {} ({last:e})",
                many.train_loss,
                one.train_loss
            );
            assert_eq!(many.ranks, Some(ranks));
        }
    }
}

/// K-FAC's step shared out by layer where the layers weigh alike (each rank applies its layers'
/// inverse factors, the direction's blocks gathered): one process's steps all the same.
#[test]
fn kfac_shared_out_by_layer_follows_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let base = RunConfig {
        hidden: vec![8, 8, 8],
        batch: 100,
        ..config("blobs", ngd(CurvatureKind::Kfac), &dir.path().join("kfac-1"))
    };
    solo(&base);
    for ranks in [2, 3] {
        let cfg = RunConfig {
            out: dir.path().join(format!("kfac-{ranks}")),
            ..base.clone()
        };
        let many = on_ranks(&cfg, ranks);
        let curve = worst(&step_losses(&cfg.out), &step_losses(&base.out));
        assert!(curve < 1e-5, "{ranks} ranks: steps differ by {curve:e}");
        let moved = many.communication_per_step.unwrap();
        assert!(
            moved.contains_key("K-FAC direction"),
            "the layers were not shared out: {moved:?}"
        );
    }
}

/// On the GPU (each rank its own device): the dense Fisher summed across ranks and solved by the
/// device's fused CG, K-FAC, and matrix-free CG as the host's loop with each product summed.
#[test]
fn gpu_ranks_follow_one_gpu() {
    let dir = tempfile::tempdir().unwrap();
    for kind in [CurvatureKind::Dense, CurvatureKind::Kfac, CurvatureKind::Implicit] {
        let base = RunConfig {
            data: "blobs".into(),
            hidden: vec![8],
            batch: 100,
            ..config("blobs", ngd(kind), &dir.path().join(format!("{}-gpu-1", kind.name())))
        };
        let one = solo_on(&base, true);
        let cfg = RunConfig {
            out: dir.path().join(format!("{}-gpu-2", kind.name())),
            ..base.clone()
        };
        let two = on_ranks_on(&cfg, 2, true);
        let curve = worst(&step_losses(&cfg.out), &step_losses(&base.out));
        let last = (two.train_loss - one.train_loss).abs() / one.train_loss;
        assert!(
            curve < 1e-5 && last < 1e-5,
            "{} on 2 GPU ranks: steps differ by {curve:e}, final loss {} against {} ({last:e})",
            kind.name(),
            two.train_loss,
            one.train_loss
        );
    }
}

/// A CSV read in parts, a validation split and standardisation, sampled labels under a curvature
/// mini-batch, and matrix-free CG preconditioned by K-FAC: still one process's run.
#[test]
fn sharded_csv_with_split_standardisation_and_curvature_batch_matches_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("digits.csv");
    std::fs::write(&csv, include_str!("../data/digits.csv")).unwrap();
    let mut optim = ngd(CurvatureKind::Implicit);
    optim.ngd.fisher = FisherKind::Sampled { draws: 2 };
    optim.ngd.curvature_batch = 61;
    optim.ngd.settings.preconditioner = PreconditionerKind::Kfac;
    let base = RunConfig {
        val_split: 0.2,
        standardize: true,
        ..config(csv.to_str().unwrap(), optim, &dir.path().join("one"))
    };
    let one = solo(&base);
    let cfg = RunConfig {
        out: dir.path().join("two"),
        ..base.clone()
    };
    let two = on_ranks(&cfg, 2);
    let curve = worst(&step_losses(&cfg.out), &step_losses(&base.out));
    assert!(curve < 1e-5, "steps differ by {curve:e}");
    let (v1, v2) = (one.val.unwrap().val_loss.unwrap(), two.val.unwrap().val_loss.unwrap());
    assert!((v1 - v2).abs() / v1 < 1e-4, "validation loss {v2} against {v1}");
}

/// A batch that leaves a rank nothing is refused before anything is written.
#[test]
fn a_batch_smaller_than_the_ranks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RunConfig {
        batch: 1796,
        ..config("digits", ngd(CurvatureKind::Kfac), &dir.path().join("short"))
    };
    let team = Team::new(2);
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = team
            .iter()
            .map(|comm| {
                let cfg = &cfg;
                s.spawn(move || {
                    let (prepared, layout) = shard::prepare(cfg, comm).unwrap();
                    let comm: &dyn Collective = comm;
                    train::run_ranks(&Cpu::new(), cfg, &prepared, &layout, comm, ("cpu", "test"), &mut |_| {})
                        .unwrap_err()
                        .to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(errors.iter().all(|e| e.contains("a batch of 1 examples")), "{errors:?}");
    assert!(!cfg.out.exists());
}

/// Ranks plan within the least of their devices' limits, so that `auto` picks one representation
/// for all (each would otherwise plan by its own free memory, and they would enter different
/// collectives).
#[test]
fn ranks_plan_within_the_least_of_their_limits() {
    use natgrad::curvature::Limits;
    let team = Team::new(3);
    let mine = |r: usize| Limits {
        max_buffer: [1 << 30, 1 << 20, 1 << 25][r],
        memory: [u64::MAX, 5 << 30, 3 << 30][r],
    };
    let agreed: Vec<Limits> = std::thread::scope(|s| {
        let handles: Vec<_> = team
            .iter()
            .map(|t| s.spawn(move || Limits::least_of(t, mine(t.rank())).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let least = Limits {
        max_buffer: 1 << 20,
        memory: 3 << 30,
    };
    assert_eq!(agreed, vec![least; 3]);
    // a device that cannot tell its memory agrees to what the others can
    let team = Team::new(2);
    let unknown = Limits {
        max_buffer: 1 << 20,
        memory: u64::MAX,
    };
    let agreed: Vec<Limits> = std::thread::scope(|s| {
        let handles: Vec<_> = team
            .iter()
            .map(|t| s.spawn(move || Limits::least_of(t, unknown).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(agreed, vec![unknown; 2]);
}
