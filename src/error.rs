//! The library's error type: every failure a user can cause or meet, as one line of text.

use std::time::Duration;

/// Everything natgrad can report instead of a result.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No GPU adapter matched the request.
    #[error("no GPU adapter found{0}")]
    NoAdapter(String),

    /// The adapter refused to create a device.
    #[error("could not open a device on adapter {adapter:?}: {reason}")]
    RequestDevice { adapter: String, reason: String },

    /// Two operands' shapes do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),

    /// An operand with no elements where at least one is needed.
    #[error("{0} is empty")]
    Empty(&'static str),

    /// A NaN or infinity in input data.
    #[error("{what} holds a non-finite value ({value}) at row {row}, column {col}")]
    NonFinite {
        what: &'static str,
        row: usize,
        col: usize,
        value: f32,
    },

    /// A buffer larger than the device allows.
    #[error("{buffer} needs {bytes} bytes ({shape}), above this device's {limit_name} of {limit} bytes")]
    TooLarge {
        buffer: &'static str,
        shape: String,
        bytes: u64,
        limit_name: &'static str,
        limit: u64,
    },

    /// The device ran out of memory allocating a buffer.
    #[error("out of GPU memory allocating {buffer} ({bytes} bytes)")]
    OutOfMemory { buffer: &'static str, bytes: u64 },

    /// The GPU did not finish in time: a hung or very slow device.
    #[error("GPU work did not finish within {0:?}; the device may be hung or far too slow for this size")]
    Timeout(Duration),

    /// The device was lost (driver reset, GPU removed, out of memory in the driver).
    #[error("GPU device lost: {0}")]
    DeviceLost(String),

    /// A wgpu validation or internal error: a bug in natgrad, reported rather than panicked.
    #[error("GPU error: {0}")]
    Gpu(String),

    /// A problem in input data, located (file, line, column).
    #[error("{0}")]
    Data(String),

    /// A file that could not be read or written.
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },

    /// Training produced a non-finite loss or gradient.
    #[error(
        "the {what} became {value} at step {step}: training diverged (lower --lr, raise --damping, or set --kl){}",
        .kept.as_ref().map(|p| format!("; the last parameters with a finite loss are in {p}")).unwrap_or_default()
    )]
    Diverged {
        what: &'static str,
        value: f64,
        step: usize,
        kept: Option<String>,
    },

    /// The run was asked to stop (SIGINT, SIGTERM) and saved everything to continue from.
    #[error(
        "interrupted after step {step}: checkpoint, state and summary are in {dir}; continue with: natgrad train --resume {dir}"
    )]
    Interrupted { step: usize, dir: String },

    /// Another rank of a data-parallel run failed first; its own error says why.
    #[error("rank {rank} of the run failed (its error is reported there)")]
    PeerFailed { rank: usize },

    /// The ranks of a data-parallel run could not go on together: one hung, died, or fell out
    /// of step with the others.
    #[error("{0}")]
    Ranks(String),

    /// A value outside its allowed range (a parameter, a flag).
    #[error("invalid {name}: {reason}")]
    InvalidArgument { name: &'static str, reason: String },
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks that every value is finite; `what` names the data in the error.
pub fn check_finite(what: &'static str, cols: usize, data: &[f32]) -> Result<()> {
    match data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::NonFinite {
            what,
            row: i / cols.max(1),
            col: i % cols.max(1),
            value: data[i],
        }),
    }
}

/// The duration in the environment variable `name`: a positive number of seconds below 10⁹ (what
/// a `Duration` and a wait can hold), or `default` when it is unset.
pub fn seconds_from_env(name: &'static str, default: Duration) -> Result<Duration> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(text) => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| Error::InvalidArgument {
                name,
                reason: format!("{text:?} is not a positive number of seconds below 10^9"),
            }),
    }
}
