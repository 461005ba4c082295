//! The command line's arguments. Defaults come from the library's `Default`s (one source of truth),
//! and `--help` shows them.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use natgrad::CgParams;
use natgrad::curvature::{CurvatureChoice, CurvatureSettings, KfacSettings, PreconditionerKind};
use natgrad::data::TaskChoice;
use natgrad::device::DeviceChoice;
use natgrad::model::{Activation, FisherKind};
use natgrad::optim::{AdamConfig, NgdConfig, OptimConfig, OptimizerKind, SgdConfig};
use natgrad::train::dir::Claim;
use natgrad::train::{self, Every, RunConfig};

#[derive(Parser)]
#[command(
    name = "natgrad",
    version,
    about = "Natural-gradient training with the Fisher built and solved on any GPU (wgpu) or the CPU"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Device selection, shared by the commands that compute.
#[derive(Args, Clone)]
pub struct DeviceArgs {
    /// Where to compute: a hardware GPU if there is one, else the CPU (auto); the best GPU
    /// adapter, software ones included (gpu); or the CPU (cpu).
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceChoice,
    /// Pick the GPU adapter whose name contains this (case-insensitive); default $WGPU_ADAPTER_NAME.
    #[arg(long)]
    pub adapter: Option<String>,
}

/// Where the data comes from.
#[derive(Args, Clone)]
#[group(multiple = false)]
pub struct DataArgs {
    /// A CSV file: optional header, label (or target) in the last column.
    #[arg(long, value_name = "FILE.csv")]
    pub data: Option<String>,
    /// A built-in dataset: digits (shipped, pixels scaled to [0, 1]), spirals, blobs (seeded).
    #[arg(long, value_name = "NAME")]
    pub dataset: Option<String>,
}

impl DataArgs {
    /// The data source: a built-in name or a path; `default` when neither flag is given.
    pub fn source(&self, default: Option<&str>) -> Result<String> {
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
pub enum Command {
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
        #[arg(long, value_enum, default_value_t = FisherKind::Exact)]
        fisher: FisherKind,
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
    Bench(BenchArgs),
    /// List the GPU adapters wgpu sees, their limits, and what --device auto and gpu pick.
    Devices {
        /// Pick among adapters whose name contains this (case-insensitive); default $WGPU_ADAPTER_NAME.
        #[arg(long)]
        adapter: Option<String>,
    },
    /// Build F = GᵀG/n from random scores and solve (F + λI) d = g by CG on each device, timed and cross-checked.
    #[command(allow_negative_numbers = true)]
    Demo(DemoArgs),
}

#[derive(Args)]
pub struct BenchArgs {
    /// Parameter counts p to measure, comma-separated (F is p×p; scores and the step use an
    /// MLP 64-h-10 of about p parameters).
    #[arg(long, value_delimiter = ',', default_value = "1024,2048,4096")]
    pub params: Vec<usize>,
    /// Rows of G (examples per batch).
    #[arg(long, default_value_t = 1024)]
    pub batch: usize,
    /// Devices, comma-separated: gpu, cpu. Default: the best GPU adapter if there is one, and the CPU.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub device: Vec<DeviceChoice>,
    /// Pick the GPU adapter whose name contains this; default $WGPU_ADAPTER_NAME.
    #[arg(long)]
    pub adapter: Option<String>,
    /// Timed runs per measurement (after one warm-up); median and minimum are reported.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// CG iterations per solve (a fixed count: the tolerance is 0).
    #[arg(long, default_value_t = 50)]
    pub cg_iters: usize,
    /// Write the records as JSON: [{op, device, adapter, backend, n, p, ms_median, ms_min, gflops, gbps}].
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Rows of G (examples).
    #[arg(long, default_value_t = 1024)]
    pub batch: usize,
    /// Columns of G (parameters): F is params × params.
    #[arg(long, default_value_t = 1024)]
    pub params: usize,
    /// Devices to run on, comma-separated: gpu, cpu, auto. Default: the CPU and the best GPU adapter if there is one.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub device: Vec<DeviceChoice>,
    /// Pick the GPU adapter whose name contains this; default $WGPU_ADAPTER_NAME.
    #[arg(long)]
    pub adapter: Option<String>,
    /// Damping λ added to the Fisher's diagonal.
    #[arg(long, default_value_t = 1e-3)]
    pub damping: f32,
    /// Most CG iterations.
    #[arg(long, default_value_t = 200)]
    pub cg_iters: usize,
    /// CG relative tolerance ‖r‖/‖g‖.
    #[arg(long, default_value_t = 1e-4)]
    pub cg_tol: f32,
    /// Timed repeats (after one warm-up); the median is shown.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Seed of the random scores.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Check against an f64 reference (Cholesky); default on up to 1024 parameters.
    #[arg(long)]
    pub check: Option<bool>,
}

/// `--lr`'s help: each optimiser's default, from its config.
fn lr_help() -> String {
    format!(
        "Learning rate η (with --kl, the largest step) [default: ngd {}, sgd {}, adam {}]",
        NgdConfig::default().lr,
        SgdConfig::default().lr,
        AdamConfig::default().lr
    )
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// classify (integer labels: two classes → Bernoulli, more → categorical) or regress
    /// (Gaussian with fixed --sigma). Default: classify when every label is an integer.
    #[arg(long, value_enum)]
    pub task: Option<TaskChoice>,
    /// Hidden layer widths, comma-separated, or "none" for a linear model.
    #[arg(long, default_value_t = Hidden(RunConfig::default().hidden), value_parser = parse_hidden)]
    pub hidden: Hidden,
    /// Hidden-layer activation.
    #[arg(long, value_enum, default_value_t)]
    pub activation: Activation,
    /// Optimiser.
    #[arg(long, value_enum, default_value_t)]
    pub optimizer: OptimizerKind,
    #[arg(long, help = lr_help())]
    pub lr: Option<f32>,
    /// Which Fisher natural gradient uses: empirical (the data's labels; cheap, often worse),
    /// sampled (labels drawn from the model, --draws per example), exact (closed form).
    #[arg(long, value_enum, default_value_t = NgdConfig::default().fisher)]
    pub fisher: FisherKind,
    /// Labels drawn per example for --fisher sampled.
    #[arg(long, default_value_t = 1)]
    pub draws: u32,
    /// How natural gradient holds the curvature: dense (the p×p Fisher), implicit (the exact F
    /// applied matrix-free inside preconditioned CG), woodbury (an m×m system for m score rows <
    /// p parameters), block (one dense block per layer), diagonal (mean squared scores), kfac
    /// (Kronecker-factored per layer), or auto (by the memory plan and a cost model).
    #[arg(long, value_enum, default_value_t = NgdConfig::default().curvature)]
    pub curvature: CurvatureChoice,
    /// Steps between rebuilds of the curvature (K-FAC: of its statistics); the last one is reused
    /// between them. Matrix-free products are always of the current batch.
    #[arg(long, default_value_t = NgdConfig::default().curvature_every)]
    pub curvature_every: usize,
    /// K-FAC: steps between refreshes of the factors' inverses (eigendecompositions).
    #[arg(long, default_value_t = NgdConfig::default().settings.kfac.inverse_every)]
    pub inverse_every: usize,
    /// K-FAC: weight of the old factors in their moving average.
    #[arg(long, default_value_t = NgdConfig::default().settings.kfac.decay)]
    pub kfac_decay: f32,
    /// K-FAC under the exact Fisher: labels drawn per example to estimate S's expectation (0: the
    /// expectation in closed form, C times the work for C classes).
    #[arg(long, default_value_t = NgdConfig::default().settings.kfac.draws)]
    pub kfac_draws: u32,
    /// Preconditioner of matrix-free CG (--curvature implicit): K-FAC's factors, or none.
    #[arg(long, value_enum, default_value_t = NgdConfig::default().settings.preconditioner)]
    pub preconditioner: PreconditionerKind,
    /// Matrix-free CG also stops when its quadratic model improves by less than this (relative,
    /// per iteration; Martens 2010); 0 turns the rule off.
    #[arg(long, default_value_t = NgdConfig::default().settings.cg_progress)]
    pub cg_progress: f32,
    /// Examples of each batch the curvature is taken on (the first ones; Martens' curvature
    /// mini-batch); 0: the whole batch.
    #[arg(long, default_value_t = NgdConfig::default().curvature_batch)]
    pub curvature_batch: usize,
    /// CG starts from this multiple of the last step's direction (0: from zero).
    #[arg(long, default_value_t = NgdConfig::default().warm_start)]
    pub warm_start: f32,
    /// Damping λ in (F + λI) d = g (the starting value with --adaptive-damping).
    #[arg(long, default_value_t = NgdConfig::default().damping)]
    pub damping: f32,
    /// Levenberg–Marquardt damping: shrink λ by 2/3 when a step achieves more than 3/4 of its
    /// predicted decrease of the objective, grow it by 3/2 when less than 1/4.
    #[arg(long)]
    pub adaptive_damping: bool,
    /// KL trust region c: η = min(lr, √(2c / dᵀFd)); 0 turns it off (η = lr).
    #[arg(long, default_value_t = NgdConfig::default().kl)]
    pub kl: f32,
    /// Weight decay wd: the objective adds (wd/2)‖W‖² over weights (never biases).
    #[arg(long, default_value_t = OptimConfig::default().weight_decay)]
    pub weight_decay: f32,
    /// Most CG iterations per natural-gradient step.
    #[arg(long, default_value_t = NgdConfig::default().cg.max_iters)]
    pub cg_iters: usize,
    /// CG relative tolerance ‖r‖/‖g‖.
    #[arg(long, default_value_t = NgdConfig::default().cg.rel_tol)]
    pub cg_tol: f32,
    /// SGD momentum μ.
    #[arg(long, default_value_t = SgdConfig::default().momentum)]
    pub momentum: f32,
    /// Examples per step; 0 for the full batch.
    #[arg(long, default_value_t = RunConfig::default().batch)]
    pub batch: usize,
    /// Passes over the training set [default: 10; with --resume, the run's own].
    #[arg(long, conflicts_with = "steps")]
    pub epochs: Option<usize>,
    /// Stop after this many steps instead.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Fraction of the data held out for validation (seeded shuffle).
    #[arg(long, default_value_t = RunConfig::default().val_split)]
    pub val_split: f64,
    /// Standardise features with the training set's mean and std (stored in the checkpoint).
    #[arg(long)]
    pub standardize: bool,
    /// σ of the Gaussian likelihood (regression).
    #[arg(long, default_value_t = RunConfig::default().sigma)]
    pub sigma: f32,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Seed of the initialisation, the split, the batches and the sampled Fisher.
    #[arg(long, default_value_t = RunConfig::default().seed)]
    pub seed: u64,
    /// Output directory. Default: runs/<dataset>-<optimizer>, or runs/<dataset>-<optimizer>-2,
    /// -3, … when that one holds a run. A directory given here that holds a run is refused
    /// unless --overwrite.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Replace the run in --out DIR (its files are removed once the new run has been checked).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Continue the run in DIR from its state.safetensors, with its own settings (--epochs or
    /// --steps may extend it; other settings are the run's).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Save the checkpoint and the state every N steps or Ns seconds of training, besides every
    /// epoch.
    #[arg(long, value_name = "N|Ns")]
    pub checkpoint_every: Option<Every>,
    /// Report wall time per step split into forward, gradient, scores, Fisher, solve and update
    /// (waits for the device after each operation, so it runs a little slower).
    #[arg(long)]
    pub profile: bool,
}

impl TrainArgs {
    /// The run these arguments describe: with --resume, the saved run's, extended by --epochs or
    /// --steps.
    pub fn run_config(&self) -> Result<RunConfig> {
        if let Some(dir) = &self.resume {
            let mut cfg = train::resume_config(dir)?;
            if let Some(steps) = self.steps {
                cfg.steps = Some(steps);
            }
            if let Some(epochs) = self.epochs {
                cfg.steps = None;
                cfg.epochs = epochs;
            }
            if self.checkpoint_every.is_some() {
                cfg.checkpoint_every = self.checkpoint_every;
            }
            cfg.validate()?;
            return Ok(cfg);
        }
        let data = self.data.source(Some(&RunConfig::default().data))?;
        let mut optim = OptimConfig {
            kind: self.optimizer,
            ngd: NgdConfig {
                fisher: fisher_kind(self.fisher, self.draws)?,
                damping: self.damping,
                adaptive_damping: self.adaptive_damping,
                kl: self.kl,
                cg: CgParams {
                    max_iters: self.cg_iters,
                    rel_tol: self.cg_tol,
                },
                curvature: self.curvature,
                settings: CurvatureSettings {
                    kfac: KfacSettings {
                        decay: self.kfac_decay,
                        inverse_every: self.inverse_every,
                        draws: self.kfac_draws,
                    },
                    preconditioner: self.preconditioner,
                    cg_progress: self.cg_progress,
                },
                curvature_every: self.curvature_every,
                warm_start: self.warm_start,
                curvature_batch: self.curvature_batch,
                ..NgdConfig::default()
            },
            sgd: SgdConfig {
                momentum: self.momentum,
                ..SgdConfig::default()
            },
            adam: AdamConfig::default(),
            weight_decay: self.weight_decay,
        };
        if let Some(lr) = self.lr {
            optim = optim.with_lr(lr);
        }
        optim.validate()?;
        // an unnamed directory never collides: the default's first free variant
        let out = match &self.out {
            Some(dir) => dir.clone(),
            None => train::dir::fresh(&train::default_out(&data, self.optimizer.name())),
        };
        let claim = if self.overwrite { Claim::Overwrite } else { Claim::New };
        Ok(RunConfig {
            data,
            task: self.task.unwrap_or_default(),
            hidden: self.hidden.0.clone(),
            activation: self.activation,
            sigma: self.sigma,
            optim,
            batch: self.batch,
            epochs: self.epochs.unwrap_or(RunConfig::default().epochs),
            steps: self.steps,
            val_split: self.val_split,
            standardize: self.standardize,
            seed: self.seed,
            out,
            claim,
            checkpoint_every: self.checkpoint_every,
            profile: self.profile,
        })
    }
}

/// `--fisher` with `--draws`.
pub fn fisher_kind(fisher: FisherKind, draws: u32) -> Result<FisherKind> {
    if matches!(fisher, FisherKind::Sampled { .. }) && draws == 0 {
        bail!("--draws must be at least 1");
    }
    Ok(fisher.with_draws(draws))
}

/// `--hidden`: layer widths, or none.
#[derive(Clone, Debug)]
pub struct Hidden(pub Vec<usize>);

impl std::fmt::Display for Hidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let widths: Vec<String> = self.0.iter().map(usize::to_string).collect();
        f.write_str(&widths.join(","))
    }
}

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
