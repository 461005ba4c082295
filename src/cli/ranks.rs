//! `mpirun -np N natgrad train ...` (feature `mpi`): this process is one rank of a data-parallel
//! run. Rank 0 settles the run's settings (its default directory, a resumed run's state) and
//! sends them to the others; every rank reads its part of the data, opens its device, and takes
//! every step on its share of each batch; rank 0 prints and writes the run directory.

use anyhow::Result;

use super::args::TrainArgs;
use super::commands::banner;
use super::progress::Progress;
use super::report;
use natgrad::backend::prelude::*;
use natgrad::dist::mpi::Mpi;
use natgrad::dist::{self, Collective};
use natgrad::train::{self, RunConfig, shard};
use natgrad::{Error, device, with_backend};

/// An error already told (by whichever rank had it first): the command ends with `code` and
/// prints nothing more.
#[derive(Debug)]
pub struct Reported {
    pub code: u8,
}

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "reported by the rank that met it")
    }
}

impl std::error::Error for Reported {}

pub fn train(args: &TrainArgs) -> Result<()> {
    let comm = Mpi::init()?;
    match set_up(&comm).and_then(|()| run(args, &comm)) {
        Ok(()) => Ok(()),
        Err(e) => Err(report(&comm, e).into()),
    }
}

/// What each rank sets up for itself, agreed: a rank that cannot stops them all and tells why.
fn set_up(comm: &Mpi) -> Result<()> {
    comm.bound_waits()?;
    let handlers = || -> Result<()> {
        // SIGINT and SIGTERM (what mpirun sends every rank on Ctrl-C, then SIGKILL a second
        // later) and SIGUSR1 (which mpirun forwards, ending nothing) finish the step, save, stop
        ctrlc::set_handler(train::request_stop)?;
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe
        unsafe { signal_hook::low_level::register(signal_hook::consts::SIGUSR1, train::request_stop) }?;
        Ok(())
    };
    dist::agree(comm, handlers())?;
    share_cores(comm);
    Ok(())
}

/// The ranks on one machine share its cores: each takes its part for its thread pool, unless
/// `RAYON_NUM_THREADS` says otherwise.
fn share_cores(comm: &Mpi) {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / comm.local_ranks().max(1)).max(1);
    // an error only means the pool was built already
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
}

fn run(args: &TrainArgs, comm: &Mpi) -> Result<()> {
    let leads = comm.rank() == 0;
    // rank 0's settings for every rank: its fresh default directory, its resumed state
    let cfg = dist::agree(
        comm,
        if leads {
            args.run_config()
        } else {
            Ok(RunConfig::default())
        },
    )?;
    let mut settings = if leads { serde_json::to_vec(&cfg)? } else { Vec::new() };
    comm.broadcast_bytes("settings", 0, &mut settings)?;
    let cfg: RunConfig = serde_json::from_slice(&settings)?;
    let (prepared, layout) = shard::prepare(&cfg, comm)?;
    let dev = &args.device;
    let (b, notice) = dist::agree(
        comm,
        device::open_for_rank(dev.device, dev.adapter.as_deref(), comm.local_rank()),
    )?;
    let ((), kinds) = dist::agree_flags(
        comm,
        "devices",
        Ok::<_, Error>(()),
        &[b.kind() == "gpu", b.kind() == "cpu"],
    )?;
    if kinds[0] && kinds[1] {
        return Err(Error::InvalidArgument {
            name: "--device",
            reason: "some ranks opened a GPU and some the CPU: give them one --device (ranks on different \
                     kinds of device round differently, and their parameters would drift apart)"
                .into(),
        }
        .into());
    }
    if leads {
        eprintln!("natgrad: {notice} (rank 0 of {}; every rank on its own)", comm.ranks());
        banner(
            &prepared,
            (layout.train_total(), layout.val_total),
            &cfg,
            &b,
            comm.ranks(),
        );
    }
    let mut progress = Progress::new();
    let mut on_event = |e: train::Event| {
        if leads {
            progress.event(e)
        }
    };
    let adapter = b.describe();
    let summary = with_backend!(&b, b => train::run_ranks(
        b, &cfg, &prepared, &layout, comm, (b.kind(), &adapter), &mut on_event
    ));
    if leads {
        progress.finish();
        report::finished(&summary?, &cfg.out);
    } else {
        summary?;
    }
    Ok(())
}

/// Tells an error once and says how the command ends. A device's failure is this rank's alone
/// and the others may be waiting for it: it ends the job. Every other error was met by the ranks
/// together (or agreed among them): the first rank that met one itself tells it.
fn report(comm: &Mpi, e: anyhow::Error) -> Reported {
    let own = e.downcast_ref::<Error>();
    let line = |e: &anyhow::Error| {
        let causes: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        match comm.rank() {
            0 => causes.join(": "),
            r => format!("rank {r}: {}", causes.join(": ")),
        }
    };
    let alone = match own {
        Some(Error::Gpu(_) | Error::DeviceLost(_) | Error::Timeout(_) | Error::OutOfMemory { .. }) => true,
        Some(_) => false,
        None => true,
    };
    if alone {
        comm.abort(&line(&e), 1);
    }
    let peer = matches!(own, Some(Error::PeerFailed { .. }));
    let mut first = vec![0.0; comm.ranks()];
    first[comm.rank()] = if peer { 0.0 } else { 1.0 };
    if comm.sum_f64("errors", &mut first).is_ok() && first.iter().position(|&f| f > 0.0) == Some(comm.rank()) {
        match own {
            Some(Error::Interrupted { .. }) => eprintln!("natgrad: {}", line(&e)),
            _ => eprintln!("natgrad: error: {}", line(&e)),
        }
    }
    Reported {
        code: if matches!(own, Some(Error::Interrupted { .. })) {
            130
        } else {
            1
        },
    }
}
