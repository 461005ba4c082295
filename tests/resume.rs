//! Interrupt and resume: a run stopped after any step and resumed from its state ends bit for
//! bit where the unbroken run ends, on the CPU, for every optimiser and curvature representation.
//! (One test function: the stop request is process-wide, so the runs here go one at a time.)

use natgrad::Error;
use natgrad::cpu::Cpu;
use natgrad::curvature::{CurvatureChoice, CurvatureKind};
use natgrad::io::checkpoint::Checkpoint;
use natgrad::optim::{OptimConfig, OptimizerKind};
use natgrad::train::{self, Event, RunConfig};

fn config(optimizer: OptimizerKind, curvature: Option<CurvatureKind>, out: &std::path::Path) -> RunConfig {
    let mut optim = OptimConfig::new(optimizer, OptimConfig::default().with_lr(0.05).lr());
    if optimizer == OptimizerKind::Ngd {
        optim = optim.with_lr(1.0);
    }
    if let Some(kind) = curvature {
        optim.ngd.curvature = CurvatureChoice::Kind(kind);
        // rebuilt every other step and inverted every third: the state must carry them across
        optim.ngd.curvature_every = if kind == CurvatureKind::Kfac { 2 } else { 1 };
        optim.ngd.settings.kfac.inverse_every = 3;
        optim.ngd.adaptive_damping = true;
    }
    RunConfig {
        data: "blobs".into(),
        hidden: vec![6],
        batch: 100,
        epochs: 3,
        optim,
        out: out.to_owned(),
        ..RunConfig::default()
    }
}

/// Trains `cfg`, stopping after step `stop_at` and resuming if given; the final parameters and
/// the metrics rows without their times.
fn train(cfg: &RunConfig, stop_at: Option<usize>) -> (Vec<f32>, Vec<String>) {
    let prepared = train::prepare(cfg).unwrap();
    let cpu = Cpu::new();
    let mut on_event = |e: Event| {
        if let (Event::Step(row), Some(k)) = (e, stop_at)
            && row.step == k
        {
            train::request_stop();
        }
    };
    match train::run(&cpu, cfg, &prepared, ("cpu", "test"), &mut on_event) {
        Ok(_) => assert!(stop_at.is_none(), "the run was not stopped"),
        Err(Error::Interrupted { step, .. }) => {
            assert_eq!(Some(step), stop_at);
            let state = cfg.out.join("state.safetensors");
            assert!(state.exists(), "no state after the interruption");
            let summary = std::fs::read_to_string(cfg.out.join("summary.json")).unwrap();
            assert!(summary.contains(r#""interrupted": true"#), "{summary}");
            let resumed = train::resume_config(&cfg.out).unwrap();
            train::run(&cpu, &resumed, &prepared, ("cpu", "test"), &mut |_| {}).unwrap();
        }
        Err(e) => panic!("{e}"),
    }
    let theta = Checkpoint::load(&cfg.out.join("model.safetensors")).unwrap().theta;
    let metrics = std::fs::read_to_string(cfg.out.join("metrics.csv")).unwrap();
    // every column but wall_s, the last
    let rows = metrics
        .lines()
        .map(|l| l.rsplit_once(',').map_or(l, |(head, _)| head).to_owned())
        .collect();
    (theta, rows)
}

#[test]
fn an_interrupted_and_resumed_run_ends_where_an_unbroken_one_does() {
    let cases: Vec<(OptimizerKind, Option<CurvatureKind>)> = [(OptimizerKind::Sgd, None), (OptimizerKind::Adam, None)]
        .into_iter()
        .chain(CurvatureKind::ALL.iter().map(|&k| (OptimizerKind::Ngd, Some(k))))
        .collect();
    for (optimizer, curvature) in cases {
        let name = format!("{} {}", optimizer.name(), curvature.map_or("", |k| k.name()));
        let dir = tempfile::tempdir().unwrap();
        let unbroken = train(&config(optimizer, curvature, &dir.path().join("unbroken")), None);
        // mid-epoch (blobs: 600 examples, 6 steps an epoch) and at an epoch's end
        for stop in [4, 6] {
            let broken = train(
                &config(optimizer, curvature, &dir.path().join(format!("broken-{stop}"))),
                Some(stop),
            );
            assert_eq!(
                broken.1, unbroken.1,
                "{name}, stopped after step {stop}: the metrics differ"
            );
            assert!(
                broken
                    .0
                    .iter()
                    .zip(&unbroken.0)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}, stopped after step {stop}: the parameters differ"
            );
        }
    }
}
