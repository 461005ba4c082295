//! The `natgrad` command line: parse, call the library, print.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use natgrad::backend::prelude::*;
use natgrad::data::TaskChoice;
use natgrad::device::{self, AnyBackend, DeviceChoice};
use natgrad::fisher::FisherKind;
use natgrad::fisher::curvature::CurvatureKind;
use natgrad::io::checkpoint::Checkpoint;
use natgrad::model::Activation;
use natgrad::optim::{NgdConfig, OptimConfig, OptimizerKind};
use natgrad::profile::{PHASES, Phases, Profiled};
use natgrad::train::{self, Event, RunConfig};
use natgrad::{CgParams, apply, bench, demo, io, with_backend};

#[derive(Parser)]
#[command(
    name = "natgrad",
    version,
    about = "Natural-gradient training with the Fisher built and solved on any GPU (wgpu) or the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Device {
    Auto,
    Gpu,
    Cpu,
}

impl From<Device> for DeviceChoice {
    fn from(d: Device) -> Self {
        match d {
            Device::Auto => DeviceChoice::Auto,
            Device::Gpu => DeviceChoice::Gpu,
            Device::Cpu => DeviceChoice::Cpu,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Optimizer {
    Ngd,
    Sgd,
    Adam,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Fisher {
    Empirical,
    Sampled,
    Exact,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Task {
    Classify,
    Regress,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Act {
    Tanh,
    Relu,
    Sigmoid,
    Gelu,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Curvature {
    Dense,
    Implicit,
    Woodbury,
    Block,
    Diagonal,
    Auto,
}

/// Device selection, shared by the commands that compute.
#[derive(Args, Clone)]
struct DeviceArgs {
    /// Where to compute: a hardware GPU if there is one, else the CPU (auto); the best GPU
    /// adapter, software ones included (gpu); or the CPU (cpu).
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
    /// Pick the GPU adapter whose name contains this (case-insensitive); default $WGPU_ADAPTER_NAME.
    #[arg(long)]
    adapter: Option<String>,
}

/// Where the data comes from.
#[derive(Args, Clone)]
#[group(multiple = false)]
struct DataArgs {
    /// A CSV file: optional header, label (or target) in the last column.
    #[arg(long, value_name = "FILE.csv")]
    data: Option<String>,
    /// A built-in dataset: digits (shipped, pixels scaled to [0, 1]), spirals, blobs (seeded).
    #[arg(long, value_name = "NAME")]
    dataset: Option<String>,
}

impl DataArgs {
    fn source(&self, default: Option<&str>) -> Result<String> {
        if let Some(name) = &self.dataset {
            if !natgrad::data::builtin::NAMES.contains(&name.as_str()) {
                bail!(
                    "no built-in dataset {name:?}; there are {}",
                    natgrad::data::builtin::NAMES.join(", ")
                );
            }
            return Ok(name.clone());
        }
        match (&self.data, default) {
            (Some(path), _) => Ok(path.clone()),
            (None, Some(d)) => Ok(d.to_owned()),
            (None, None) => bail!("give the data with --data FILE.csv or --dataset NAME"),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Train an MLP by natural gradient (or SGD, Adam) and write a run directory.
    #[command(allow_negative_numbers = true)]
    Train(Box<TrainArgs>),
    /// Loss and accuracy of a saved model on a data file.
    Eval {
        /// The checkpoint: DIR/model.safetensors of a run.
        #[arg(long, value_name = "FILE")]
        model: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        /// Print one JSON object {"loss", "accuracy", "n"} instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// The dense Fisher F = (1/n) GᵀG of a saved model over a data file, as .npy (f32, no damping).
    Fisher {
        #[arg(long, value_name = "FILE")]
        model: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        /// Which Fisher.
        #[arg(long, value_enum, default_value = "exact")]
        fisher: Fisher,
        /// Labels drawn per example for --fisher sampled.
        #[arg(long, default_value_t = 1)]
        draws: u32,
        /// Seed of the sampled Fisher's draws.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The .npy file to write.
        #[arg(long, value_name = "F.npy")]
        out: PathBuf,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Overlay the loss curves of several runs (against step and wall time) in one SVG.
    Plot {
        /// Run directories (each with a metrics.csv).
        #[arg(required = true, value_name = "DIR")]
        runs: Vec<PathBuf>,
        #[arg(long, value_name = "FILE.svg")]
        out: PathBuf,
    },
    /// Time the Fisher build, matvec, CG, scores and a natural-gradient step on each device,
    /// beside the device's ceilings (copy bandwidth, best matrix-product rate).
    Bench {
        /// Parameter counts p to measure, comma-separated (F is p×p; scores and the step use an
        /// MLP 64-h-10 of about p parameters).
        #[arg(long, value_delimiter = ',', default_value = "1024,2048,4096")]
        params: Vec<usize>,
        /// Rows of G (examples per batch).
        #[arg(long, default_value_t = 1024)]
        batch: usize,
        /// Devices, comma-separated: gpu, cpu. Default: the best GPU adapter if there is one, and the CPU.
        #[arg(long, value_delimiter = ',')]
        device: Vec<Device>,
        /// Pick the GPU adapter whose name contains this; default $WGPU_ADAPTER_NAME.
        #[arg(long)]
        adapter: Option<String>,
        /// Timed runs per measurement (after one warm-up); median and minimum are reported.
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// CG iterations per solve (a fixed count: the tolerance is 0).
        #[arg(long, default_value_t = 50)]
        cg_iters: usize,
        /// Write the records as JSON: [{op, device, adapter, backend, n, p, ms_median, ms_min, gflops, gbps}].
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// List the GPU adapters wgpu sees, their limits, and what --device auto and gpu pick.
    Devices {
        /// Pick among adapters whose name contains this (case-insensitive); default $WGPU_ADAPTER_NAME.
        #[arg(long)]
        adapter: Option<String>,
    },
    /// Build F = GᵀG/n from random scores and solve (F + λI) d = g by CG on each device, timed and cross-checked.
    #[command(allow_negative_numbers = true)]
    Demo {
        /// Rows of G (examples).
        #[arg(long, default_value_t = 1024)]
        batch: usize,
        /// Columns of G (parameters): F is params × params.
        #[arg(long, default_value_t = 1024)]
        params: usize,
        /// Devices to run on, comma-separated: gpu, cpu, auto. Default: the CPU and the best GPU adapter if there is one.
        #[arg(long, value_delimiter = ',')]
        device: Vec<Device>,
        /// Pick the GPU adapter whose name contains this; default $WGPU_ADAPTER_NAME.
        #[arg(long)]
        adapter: Option<String>,
        /// Damping λ added to the Fisher's diagonal.
        #[arg(long, default_value_t = 1e-3)]
        damping: f32,
        /// Most CG iterations.
        #[arg(long, default_value_t = 200)]
        cg_iters: usize,
        /// CG relative tolerance ‖r‖/‖g‖.
        #[arg(long, default_value_t = 1e-4)]
        cg_tol: f32,
        /// Timed repeats (after one warm-up); the median is shown.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Seed of the random scores.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Check against an f64 reference (Cholesky); default on up to 1024 parameters.
        #[arg(long)]
        check: Option<bool>,
    },
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// classify (integer labels: two classes → Bernoulli, more → categorical) or regress
    /// (Gaussian with fixed --sigma). Default: classify when every label is an integer.
    #[arg(long, value_enum)]
    task: Option<Task>,
    /// Hidden layer widths, comma-separated, or "none" for a linear model.
    #[arg(long, default_value = "32", value_parser = parse_hidden)]
    hidden: Hidden,
    /// Hidden-layer activation.
    #[arg(long, value_enum, default_value = "relu")]
    activation: Act,
    /// Optimiser.
    #[arg(long, value_enum, default_value = "ngd")]
    optimizer: Optimizer,
    /// Learning rate η (with --kl, the largest step). Default: ngd 1, sgd 0.1, adam 0.01.
    #[arg(long)]
    lr: Option<f32>,
    /// Which Fisher natural gradient uses: empirical (the data's labels; cheap, often worse),
    /// sampled (labels drawn from the model, --draws per example), exact (closed form).
    #[arg(long, value_enum, default_value = "exact")]
    fisher: Fisher,
    /// Labels drawn per example for --fisher sampled.
    #[arg(long, default_value_t = 1)]
    draws: u32,
    /// How natural gradient holds the curvature: dense (the p×p Fisher), implicit (F applied
    /// through the score rows G, never formed), woodbury (an m×m system for m score rows < p
    /// parameters), block (one dense block per layer), diagonal (mean squared scores), or auto
    /// (dense while it is small, else woodbury or implicit by memory and m versus p).
    #[arg(long, value_enum, default_value = "auto")]
    curvature: Curvature,
    /// Damping λ in (F + λI) d = g (the starting value with --adaptive-damping).
    #[arg(long, default_value_t = 1e-3)]
    damping: f32,
    /// Levenberg–Marquardt damping: shrink λ by 2/3 when a step achieves more than 3/4 of its
    /// predicted decrease of the objective, grow it by 3/2 when less than 1/4.
    #[arg(long)]
    adaptive_damping: bool,
    /// KL trust region c: η = min(lr, √(2c / dᵀFd)); 0 turns it off (η = lr).
    #[arg(long, default_value_t = 0.01)]
    kl: f32,
    /// Weight decay wd: the objective adds (wd/2)‖W‖² over weights (never biases).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Most CG iterations per natural-gradient step.
    #[arg(long, default_value_t = 50)]
    cg_iters: usize,
    /// CG relative tolerance ‖r‖/‖g‖.
    #[arg(long, default_value_t = 1e-3)]
    cg_tol: f32,
    /// SGD momentum μ.
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// Examples per step; 0 for the full batch.
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// Passes over the training set.
    #[arg(long, default_value_t = 10, conflicts_with = "steps")]
    epochs: usize,
    /// Stop after this many steps instead.
    #[arg(long)]
    steps: Option<usize>,
    /// Fraction of the data held out for validation (seeded shuffle).
    #[arg(long, default_value_t = 0.0)]
    val_split: f64,
    /// Standardise features with the training set's mean and std (stored in the checkpoint).
    #[arg(long)]
    standardize: bool,
    /// σ of the Gaussian likelihood (regression).
    #[arg(long, default_value_t = 1.0)]
    sigma: f32,
    #[command(flatten)]
    device: DeviceArgs,
    /// Seed of the initialisation, the split, the batches and the sampled Fisher.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory. Default: runs/<dataset>-<optimizer>.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Report wall time per step split into forward, gradient, scores, Fisher, solve and update
    /// (waits for the device after each operation, so it runs a little slower).
    #[arg(long)]
    profile: bool,
}

#[derive(Clone, Debug)]
struct Hidden(Vec<usize>);

fn parse_hidden(s: &str) -> std::result::Result<Hidden, String> {
    if s.trim().eq_ignore_ascii_case("none") || s.trim().is_empty() {
        return Ok(Hidden(Vec::new()));
    }
    s.split(',')
        .map(|w| match w.trim().parse::<usize>() {
            Ok(0) | Err(_) => Err(format!("{w:?} is not a positive layer width (use e.g. 64,32 or none)")),
            Ok(v) => Ok(v),
        })
        .collect::<std::result::Result<_, _>>()
        .map(Hidden)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // clap's own message spans several lines; keep its first and point to --help
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("bad arguments")
                .trim_start_matches("error: ");
            eprintln!("natgrad: error: {first} (see natgrad --help)");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natgrad: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ")
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => train_command(*args),
        Command::Eval {
            model,
            data,
            json,
            device,
        } => {
            let checkpoint = Checkpoint::load(&model)?;
            let data = apply::load_for(&checkpoint, &data.source(None)?, 0)?;
            let b = open(&device)?;
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
        Command::Fisher {
            model,
            data,
            fisher,
            draws,
            seed,
            out,
            device,
        } => {
            let checkpoint = Checkpoint::load(&model)?;
            let data = apply::load_for(&checkpoint, &data.source(None)?, seed)?;
            let kind = fisher_kind(fisher, draws)?;
            let b = open(&device)?;
            let f = with_backend!(&b, b => apply::fisher(b, &checkpoint, &data, kind, seed))?;
            let p = checkpoint.mlp.num_params();
            io::npy::write_f32(&out, p, p, &f)?;
            println!(
                "{} Fisher over {} examples: {p}×{p} f32 written to {}",
                kind.name(),
                data.n,
                out.display()
            );
            Ok(())
        }
        Command::Plot { runs, out } => {
            let series = runs
                .iter()
                .map(|dir| io::plot::read_run(dir))
                .collect::<natgrad::Result<Vec<_>>>()?;
            io::plot::loss_plot(&series, &out)?;
            println!("{} runs plotted to {}", series.len(), out.display());
            Ok(())
        }
        Command::Bench {
            params,
            batch,
            device,
            adapter,
            repeats,
            cg_iters,
            json,
        } => {
            if batch == 0 || params.contains(&0) {
                bail!("--batch and every --params value must be at least 1");
            }
            let cfg = bench::BenchConfig {
                params,
                batch,
                repeats,
                cg_iters,
            };
            let mut backends = demo_devices(&device, adapter.as_deref())?;
            // the GPU first: its rows carry the speed-up over the CPU
            backends.sort_by_key(|b| b.kind() != "gpu");
            println!(
                "natgrad bench: n = {batch}, p ∈ {:?}, {repeats} timed runs each after a warm-up",
                cfg.params
            );
            let mut records = Vec::new();
            for b in &backends {
                let info = device_info(b);
                let (mut found, device_clock) = with_backend!(b, b => bench::run(b, &info, &cfg))
                    .with_context(|| format!("on {}", b.describe()))?;
                println!(
                    "{}: {} timed {}",
                    info.kind,
                    info.adapter,
                    if device_clock {
                        "on the device's clock (GPU timestamp queries)"
                    } else if info.kind == "gpu" {
                        "on the host clock around completed submissions (no timestamp queries)"
                    } else {
                        "on the host clock"
                    }
                );
                records.append(&mut found);
            }
            print!("{}", bench::table(&records));
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&records).unwrap_or_default() + "\n";
                io::write_atomic(&path, text.as_bytes())?;
                println!("records written to {}", path.display());
            }
            Ok(())
        }
        Command::Devices { adapter } => {
            print!("{}", device::listing(adapter.as_deref()));
            Ok(())
        }
        Command::Demo {
            batch,
            params,
            device,
            adapter,
            damping,
            cg_iters,
            cg_tol,
            repeats,
            seed,
            check,
        } => {
            if batch == 0 || params == 0 {
                bail!("--batch and --params must be at least 1");
            }
            let cg = CgParams {
                max_iters: cg_iters,
                rel_tol: cg_tol,
            };
            cg.validate(damping)?;
            let backends = demo_devices(&device, adapter.as_deref())?;
            println!(
                "natgrad demo: G {batch}×{params} standard normal (seed {seed}); F = GᵀG/{batch}; (F + {damping:e}·I) d = mean row of G by CG (tol {cg_tol:e}, at most {cg_iters} iterations)"
            );
            let problem = demo::Problem::random(batch, params, seed, damping, cg);
            let mut outcomes = Vec::new();
            for b in &backends {
                let outcome = with_backend!(b, b => demo::run(b, &problem, repeats))
                    .with_context(|| format!("on {}", b.describe()))?;
                outcomes.push(outcome);
            }
            print!(
                "{}",
                demo::summary(&problem, &outcomes, check.unwrap_or(params <= 1024))
            );
            Ok(())
        }
    }
}

fn fisher_kind(fisher: Fisher, draws: u32) -> Result<FisherKind> {
    Ok(match fisher {
        Fisher::Empirical => FisherKind::Empirical,
        Fisher::Exact => FisherKind::Exact,
        Fisher::Sampled if draws == 0 => bail!("--draws must be at least 1"),
        Fisher::Sampled => FisherKind::Sampled { draws },
    })
}

/// How a bench record names the device.
fn device_info(b: &AnyBackend) -> bench::DeviceInfo {
    match b {
        AnyBackend::Gpu(g) => {
            let info = &g.context().info;
            bench::DeviceInfo {
                kind: "gpu".into(),
                adapter: info.name.clone(),
                backend: format!("{:?}", info.backend),
            }
        }
        AnyBackend::Cpu(c) => bench::DeviceInfo {
            kind: "cpu".into(),
            adapter: c.describe(),
            backend: "cpu".into(),
        },
    }
}

/// Opens the device and prints the one-line notice of what was picked.
fn open(args: &DeviceArgs) -> Result<AnyBackend> {
    let (b, notice) = device::open(args.device.into(), args.adapter.as_deref())?;
    eprintln!("natgrad: {notice}");
    Ok(b)
}

fn train_command(a: TrainArgs) -> Result<()> {
    let data = a.data.source(Some("digits"))?;
    let kind = match a.optimizer {
        Optimizer::Ngd => OptimizerKind::Ngd,
        Optimizer::Sgd => OptimizerKind::Sgd,
        Optimizer::Adam => OptimizerKind::Adam,
    };
    let lr = a.lr.unwrap_or(match kind {
        OptimizerKind::Ngd => 1.0,
        OptimizerKind::Sgd => 0.1,
        OptimizerKind::Adam => 0.01,
    });
    let curvature = match a.curvature {
        Curvature::Dense => Some(CurvatureKind::Dense),
        Curvature::Implicit => Some(CurvatureKind::Implicit),
        Curvature::Woodbury => Some(CurvatureKind::Woodbury),
        Curvature::Block => Some(CurvatureKind::Block),
        Curvature::Diagonal => Some(CurvatureKind::Diagonal),
        Curvature::Auto => None,
    };
    let optim = OptimConfig {
        kind,
        lr,
        momentum: a.momentum,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: a.weight_decay,
        ngd: NgdConfig {
            fisher: fisher_kind(a.fisher, a.draws)?,
            damping: a.damping,
            adaptive_damping: a.adaptive_damping,
            kl: a.kl,
            cg: CgParams {
                max_iters: a.cg_iters,
                rel_tol: a.cg_tol,
            },
            // resolved (auto) and checked against the device by train::run
            curvature: CurvatureKind::Dense,
        },
    };
    optim.validate()?;
    let task = match a.task {
        None => TaskChoice::Auto,
        Some(Task::Classify) => TaskChoice::Classify,
        Some(Task::Regress) => TaskChoice::Regress,
    };
    let activation = match a.activation {
        Act::Tanh => Activation::Tanh,
        Act::Relu => Activation::Relu,
        Act::Sigmoid => Activation::Sigmoid,
        Act::Gelu => Activation::Gelu,
    };
    let out = a.out.unwrap_or_else(|| train::default_out(&data, kind.name()));
    let cfg = RunConfig {
        data,
        task,
        hidden: a.hidden.0,
        activation,
        sigma: a.sigma,
        optim,
        batch: a.batch,
        epochs: a.epochs,
        steps: a.steps,
        val_split: a.val_split,
        standardize: a.standardize,
        seed: a.seed,
        out,
        curvature,
    };
    let prepared = train::prepare(&cfg)?;
    let b = open(&a.device)?;
    println!(
        "natgrad train: {} ({} examples{}), MLP {} ({} parameters, {}), {} on {}",
        prepared.train.name,
        prepared.train.n,
        prepared
            .val
            .as_ref()
            .map(|v| format!(", {} held out", v.n))
            .unwrap_or_default(),
        prepared
            .mlp
            .widths()
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("-"),
        prepared.mlp.num_params(),
        prepared.mlp.likelihood().name(),
        describe_optimizer(&cfg.optim),
        b.kind()
    );
    let mut progress = Progress::new();
    let device = (b.kind(), b.describe());
    let outcome = with_backend!(&b, b => train_on(b, &cfg, &prepared, (device.0, &device.1), a.profile, &mut progress));
    progress.finish();
    let (mut summary, profiled) = outcome?;
    if let Some((spent, steps)) = profiled {
        let per_step: Vec<f64> = spent.0.iter().map(|s| 1e3 * s / steps.max(1) as f64).collect();
        let table: Vec<String> = PHASES
            .iter()
            .zip(&per_step)
            .map(|(name, ms)| format!("{name} {ms:.2}"))
            .collect();
        println!(
            "time per step (ms, mean of {steps}, each operation waited for): {}; total {:.2}",
            table.join(", "),
            1e3 * spent.total() / steps.max(1) as f64
        );
        let phases: serde_json::Map<String, serde_json::Value> = PHASES
            .iter()
            .zip(&per_step)
            .map(|(name, ms)| (name.to_string(), serde_json::json!(ms)))
            .collect();
        summary["profile_ms_per_step"] = serde_json::Value::Object(phases);
        io::metrics::write_summary(&cfg.out, &summary)?;
    }
    let accuracy = summary["train_accuracy"]
        .as_f64()
        .map(|a| format!(", accuracy {a:.4}"))
        .unwrap_or_default();
    let val = summary["val_loss"]
        .as_f64()
        .map(|l| {
            let a = summary["val_accuracy"]
                .as_f64()
                .map(|a| format!(", accuracy {a:.4}"))
                .unwrap_or_default();
            format!("; validation loss {l:.6}{a}")
        })
        .unwrap_or_default();
    println!(
        "done: {} steps in {:.2} s; training loss {:.6}{accuracy}{val}",
        summary["steps"],
        summary["wall_s"].as_f64().unwrap_or(0.0),
        summary["train_loss"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "outputs in {}: metrics.csv, epochs.csv, summary.json, model.safetensors, loss.svg",
        cfg.out.display()
    );
    Ok(())
}

/// Time per phase summed over the steps, and the number of steps.
type StepProfile = Option<(Phases, usize)>;

/// Runs the training on `b`, through [`Profiled`] when `profile` is set: each step is charged the
/// time since the previous step or evaluation, so the per-epoch evaluations are left out.
fn train_on<B: Backend>(
    b: &B,
    cfg: &RunConfig,
    prepared: &train::Prepared,
    device: (&str, &str),
    profile: bool,
    progress: &mut Progress,
) -> natgrad::Result<(serde_json::Value, StepProfile)> {
    if !profile {
        return Ok((train::run(b, cfg, prepared, device, &mut |e| progress.event(e))?, None));
    }
    let profiled = Profiled::new(b);
    let (mut last, mut spent, mut steps) = (Phases::default(), Phases::default(), 0);
    let summary = train::run(&profiled, cfg, prepared, device, &mut |e| {
        match &e {
            Event::Step(_) => {
                let now = profiled.phases();
                (0..PHASES.len()).for_each(|k| spent.0[k] += now.0[k] - last.0[k]);
                last = now;
                steps += 1;
            }
            Event::Epoch(_) => last = profiled.phases(),
            Event::Start { .. } | Event::Notice(_) => {}
        }
        progress.event(e)
    })?;
    Ok((summary, Some((spent, steps))))
}

fn describe_optimizer(o: &OptimConfig) -> String {
    match o.kind {
        OptimizerKind::Ngd => format!(
            "ngd ({} Fisher, λ {}{}, {}lr {})",
            o.ngd.fisher.name(),
            o.ngd.damping,
            if o.ngd.adaptive_damping { " adaptive" } else { "" },
            if o.ngd.kl > 0.0 {
                format!("KL trust region {}, ", o.ngd.kl)
            } else {
                String::new()
            },
            o.lr
        ),
        OptimizerKind::Sgd => format!("sgd (lr {}, momentum {})", o.lr, o.momentum),
        OptimizerKind::Adam => format!("adam (lr {})", o.lr),
    }
}

/// A progress bar on a terminal, one line per epoch otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new() -> Self {
        Self { bar: None }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Start { total_steps } if std::io::stdout().is_terminal() => {
                let bar = indicatif::ProgressBar::new(total_steps as u64);
                if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg}") {
                    bar.set_style(style);
                }
                self.bar = Some(bar);
            }
            Event::Start { .. } => {}
            Event::Notice(text) => eprintln!("natgrad: {text}"),
            Event::Step(row) => {
                if let Some(bar) = &self.bar {
                    bar.set_position(row.step as u64);
                    bar.set_message(format!("epoch {} loss {:.4}", row.epoch, row.loss));
                }
            }
            Event::Epoch(row) => {
                let accuracy = row
                    .train_accuracy
                    .map(|a| format!(" accuracy {a:.4}"))
                    .unwrap_or_default();
                let val = row
                    .val_loss
                    .map(|l| {
                        let a = row
                            .val_accuracy
                            .map(|a| format!(" accuracy {a:.4}"))
                            .unwrap_or_default();
                        format!(" | validation loss {l:.4}{a}")
                    })
                    .unwrap_or_default();
                let line = format!(
                    "epoch {:>3}: training loss {:.6}{accuracy}{val} ({:.2} s)",
                    row.epoch, row.train_loss, row.wall_s
                );
                match &self.bar {
                    Some(bar) => bar.println(line),
                    None => println!("{line}"),
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The demo's devices: as listed, or the CPU plus the best GPU adapter if there is one.
fn demo_devices(list: &[Device], adapter: Option<&str>) -> Result<Vec<AnyBackend>> {
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
            let (b, notice) = device::open((*d).into(), adapter)?;
            eprintln!("natgrad: {notice}");
            Ok(b)
        })
        .collect()
}
