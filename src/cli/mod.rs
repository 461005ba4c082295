//! The command line's pieces: argument types, one function per command, and terminal output.

pub mod args;
pub mod commands;
pub mod progress;
#[cfg(feature = "mpi")]
pub mod ranks;
pub mod report;
