//! The `natgrad` command line: parse, call the library, print.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use natgrad::device::{self, AnyBackend, DeviceChoice};
use natgrad::{CgParams, demo, with_backend};

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

#[derive(Subcommand)]
enum Command {
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
