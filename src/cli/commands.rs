//! One function per command: turn the parsed arguments into library calls and print the result.

use anyhow::{Context, Result, bail};

use super::args::{BenchArgs, DataArgs, DemoArgs, DeviceArgs, TrainArgs, fisher_kind};
use super::progress::Progress;
use super::report;
use natgrad::backend::prelude::*;
use natgrad::device::{self, AnyBackend, DeviceChoice};
use natgrad::io::checkpoint::Checkpoint;
use natgrad::model::FisherKind;
use natgrad::{CgParams, apply, bench, demo, io, train, with_backend};

/// Opens the device and prints the one-line notice of what was picked.
fn open(args: &DeviceArgs) -> Result<AnyBackend> {
    let (b, notice) = device::open(args.device, args.adapter.as_deref())?;
    eprintln!("natgrad: {notice}");
    Ok(b)
}

pub fn train(args: &TrainArgs) -> Result<()> {
    // under mpirun: one rank of a data-parallel run
    #[cfg(feature = "mpi")]
    if natgrad::dist::launched().is_some() {
        return super::ranks::train(args);
    }
    #[cfg(not(feature = "mpi"))]
    if let Some((_, ranks)) = natgrad::dist::launched().filter(|&(_, ranks)| ranks > 1) {
        bail!(
            "started as one of {ranks} MPI ranks, but this natgrad was built without MPI: build it with \
             cargo build --release --features mpi (alone, each rank would train the whole run)"
        );
    }
    let cfg = args.run_config()?;
    // SIGINT and SIGTERM finish the step in progress, save everything and stop the run
    ctrlc::set_handler(train::request_stop).context("installing the interrupt handler")?;
    let prepared = train::prepare(&cfg)?;
    let b = open(&args.device)?;
    let val = prepared.val.as_ref().map_or(0, |v| v.n);
    banner(&prepared, (prepared.train.n, val), &cfg, &b, 1);
    let mut progress = Progress::new();
    let adapter = b.describe();
    let summary =
        with_backend!(&b, b => train::run(b, &cfg, &prepared, (b.kind(), &adapter), &mut |e| progress.event(e)));
    progress.finish();
    report::finished(&summary?, &cfg.out);
    Ok(())
}

/// The line a run starts with: the data (`examples`: training and held-out examples of the
/// run), the model, the optimiser and the device (and the ranks, past one).
pub fn banner(
    prepared: &train::Prepared,
    (examples, held): (usize, usize),
    cfg: &train::RunConfig,
    b: &AnyBackend,
    ranks: usize,
) {
    let widths: Vec<String> = prepared.mlp.widths().iter().map(usize::to_string).collect();
    let held = if held > 0 {
        format!(", {held} held out")
    } else {
        String::new()
    };
    let ranks = if ranks > 1 {
        format!(", {ranks} ranks")
    } else {
        String::new()
    };
    println!(
        "natgrad train: {} ({examples} examples{held}), MLP {} ({} parameters, {}), {} on {}{ranks}",
        prepared.train.name,
        widths.join("-"),
        prepared.mlp.num_params(),
        prepared.mlp.likelihood().name(),
        cfg.optim.describe(),
        b.kind()
    );
}

pub fn eval(model: &std::path::Path, data: &DataArgs, json: bool, device: &DeviceArgs) -> Result<()> {
    let checkpoint = Checkpoint::load(model)?;
    let data = apply::load_for(&checkpoint, &data.source(None)?)?;
    let b = open(device)?;
    let e = with_backend!(&b, b => apply::eval(b, &checkpoint, &data))?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "loss": e.loss, "accuracy": e.accuracy, "n": data.n })
        );
    } else {
        let accuracy = e.accuracy.map(|a| format!(", accuracy {a:.4}")).unwrap_or_default();
        println!("{}: {} examples, loss {:.6}{accuracy}", data.name, data.n, e.loss);
    }
    Ok(())
}

/// `natgrad fisher`: the arguments as parsed.
pub struct FisherArgs<'a> {
    pub model: &'a std::path::Path,
    pub data: &'a DataArgs,
    pub fisher: FisherKind,
    pub draws: u32,
    pub seed: u64,
    pub out: &'a std::path::Path,
    pub device: &'a DeviceArgs,
}

pub fn fisher(a: FisherArgs) -> Result<()> {
    let checkpoint = Checkpoint::load(a.model)?;
    let data = apply::load_for(&checkpoint, &a.data.source(None)?)?;
    let kind = fisher_kind(a.fisher, a.draws)?;
    let b = open(a.device)?;
    let f = with_backend!(&b, b => apply::fisher(b, &checkpoint, &data, kind, a.seed))?;
    let p = checkpoint.mlp.num_params();
    io::npy::write_f32(a.out, p, p, &f)?;
    println!(
        "{} Fisher over {} examples: {p}×{p} f32 written to {}",
        kind.name(),
        data.n,
        a.out.display()
    );
    Ok(())
}

pub fn plot(runs: &[std::path::PathBuf], out: &std::path::Path) -> Result<()> {
    let series = runs
        .iter()
        .map(|dir| io::plot::read_run(dir))
        .collect::<natgrad::Result<Vec<_>>>()?;
    io::plot::loss_plot(&series, out)?;
    println!("{} runs plotted to {}", series.len(), out.display());
    Ok(())
}

pub fn bench(a: &BenchArgs) -> Result<()> {
    if a.batch == 0 || a.params.contains(&0) {
        bail!("--batch and every --params value must be at least 1");
    }
    let cfg = bench::BenchConfig {
        params: a.params.clone(),
        batch: a.batch,
        repeats: a.repeats,
        cg_iters: a.cg_iters,
    };
    let mut backends = devices(&a.device, a.adapter.as_deref())?;
    // the GPU first: its rows carry the speed-up over the CPU
    backends.sort_by_key(|b| b.kind() != "gpu");
    println!(
        "natgrad bench: n = {}, p ∈ {:?}, {} timed runs each after a warm-up",
        a.batch, cfg.params, a.repeats
    );
    let mut records = Vec::new();
    for b in &backends {
        let info = b.info();
        let (mut found, device_clock) =
            with_backend!(b, b => bench::run(b, &info, &cfg)).with_context(|| format!("on {}", b.describe()))?;
        println!(
            "{}: {} timed {}",
            info.kind,
            info.adapter,
            bench::clock(&info, device_clock)
        );
        records.append(&mut found);
    }
    print!("{}", bench::table(&records));
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&records)? + "\n";
        io::write_atomic(path, text.as_bytes())?;
        println!("records written to {}", path.display());
    }
    Ok(())
}

pub fn demo(a: &DemoArgs) -> Result<()> {
    if a.batch == 0 || a.params == 0 {
        bail!("--batch and --params must be at least 1");
    }
    let cg = CgParams {
        max_iters: a.cg_iters,
        rel_tol: a.cg_tol,
    };
    cg.validate(a.damping)?;
    let backends = devices(&a.device, a.adapter.as_deref())?;
    println!(
        "natgrad demo: G {}×{} standard normal (seed {}); F = GᵀG/{}; (F + {:e}·I) d = mean row of G by CG (tol {:e}, at most {} iterations)",
        a.batch, a.params, a.seed, a.batch, a.damping, a.cg_tol, a.cg_iters
    );
    let problem = demo::Problem::random(a.batch, a.params, a.seed, a.damping, cg);
    let mut outcomes = Vec::new();
    for b in &backends {
        let outcome =
            with_backend!(b, b => demo::run(b, &problem, a.repeats)).with_context(|| format!("on {}", b.describe()))?;
        outcomes.push(outcome);
    }
    print!(
        "{}",
        demo::summary(&problem, &outcomes, a.check.unwrap_or(a.params <= 1024))
    );
    Ok(())
}

/// The devices of `bench` and `demo`: as listed, or the CPU plus the best GPU adapter if there
/// is one.
fn devices(list: &[DeviceChoice], adapter: Option<&str>) -> Result<Vec<AnyBackend>> {
    if list.is_empty() {
        let mut all = vec![device::open(DeviceChoice::Cpu, None)?.0];
        match device::open(DeviceChoice::Gpu, adapter) {
            Ok((gpu, _)) => all.push(gpu),
            Err(e) => eprintln!("natgrad: no GPU run: {e}"),
        }
        return Ok(all);
    }
    list.iter()
        .map(|d| {
            let (b, notice) = device::open(*d, adapter)?;
            eprintln!("natgrad: {notice}");
            Ok(b)
        })
        .collect()
}
