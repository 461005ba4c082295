//! The command line's parser on any arguments (NUL-separated): parsed and turned into a run's
//! settings, or refused, never a panic.
#![no_main]

#[path = "../../src/cli/args.rs"]
#[allow(dead_code)]
mod args;

use clap::Parser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let argv = std::iter::once("natgrad").chain(text.split('\0'));
    if let Ok(cli) = args::Cli::try_parse_from(argv)
        && let args::Command::Train(train) = cli.command
        && train.resume.is_none()
    {
        let _ = train.run_config();
    }
});
