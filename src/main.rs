//! The `natgrad` command line: parse, dispatch to [`cli::commands`], and turn errors into one line
//! and a non-zero exit.

// Bad input and device faults are errors, never panics: the library and the command line take
// no unwrap, expect or panic outside tests (clippy enforces it; tests may).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::args::{Cli, Command};
use cli::commands;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let runtime = quiet_mesa();
    // under mpirun every rank meets the same bad arguments: rank 0 alone says so
    let quiet = natgrad::dist::launched().is_some_and(|(rank, _)| rank > 0);
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(_) if quiet => return ExitCode::from(2),
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
    let code = match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        #[cfg(feature = "mpi")]
        Err(e) if e.is::<cli::ranks::Reported>() => {
            ExitCode::from(e.downcast_ref::<cli::ranks::Reported>().map_or(1, |told| told.code))
        }
        Err(_) if quiet => ExitCode::FAILURE,
        Err(e) if matches!(e.downcast_ref(), Some(natgrad::Error::Interrupted { .. })) => {
            eprintln!("natgrad: {e}");
            ExitCode::from(130)
        }
        Err(e) => {
            let causes: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("natgrad: error: {}", causes.join(": "));
            ExitCode::FAILURE
        }
    };
    if let Some(dir) = runtime {
        let _ = std::fs::remove_dir_all(dir);
    }
    code
}

/// Mesa's drivers print an error line when `XDG_RUNTIME_DIR` is unset (they probe Wayland), which
/// reads as natgrad failing: give them a private runtime directory first (this process's own,
/// removed when it ends). Run before any thread starts, so setting the variable races nothing.
fn quiet_mesa() -> Option<std::path::PathBuf> {
    let usable = std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).is_dir());
    if usable {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("natgrad-runtime-{}", std::process::id()));
    let made = std::fs::DirBuilder::new().recursive(true).create(&dir).is_ok();
    #[cfg(unix)]
    let made = made && {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).is_ok()
    };
    if !made {
        return None;
    }
    // SAFETY: called first thing in main, before any other thread exists
    unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
    Some(dir)
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Train(args) => commands::train(&args),
        Command::Eval {
            model,
            data,
            json,
            device,
        } => commands::eval(&model, &data, json, &device),
        Command::Fisher {
            model,
            data,
            fisher,
            draws,
            seed,
            out,
            device,
        } => commands::fisher(commands::FisherArgs {
            model: &model,
            data: &data,
            fisher,
            draws,
            seed,
            out: &out,
            device: &device,
        }),
        Command::Plot { runs, out } => commands::plot(&runs, &out),
        Command::Bench(args) => commands::bench(&args),
        Command::Devices { adapter } => {
            print!("{}", natgrad::device::listing(adapter.as_deref()));
            Ok(())
        }
        Command::Demo(args) => commands::demo(&args),
    }
}
