//! The `natgrad` command line: parse, dispatch to [`cli::commands`], and turn errors into one line
//! and a non-zero exit.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::args::{Cli, Command};
use cli::commands;

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
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let causes: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("natgrad: error: {}", causes.join(": "));
            ExitCode::FAILURE
        }
    }
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
