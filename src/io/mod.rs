//! Files natgrad writes and reads: checkpoints (safetensors), metrics (CSV, JSON), plots (SVG),
//! and the Fisher as .npy. Every write goes to a temporary file first and is renamed into place,
//! so a failure never leaves a partial file where a good one was.

pub mod checkpoint;
pub mod metrics;
pub mod npy;
pub mod plot;
pub mod state;

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// An I/O error on `path`, as one line.
pub fn io_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// Writes `path` atomically through `write`, which fills a temporary file beside it.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // unique per process and write: two writers never share a temporary file
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = path.with_file_name(format!(".{name}.{}.{n}.partial", std::process::id()));
    let result = std::fs::File::create(&temp).and_then(|mut file| {
        write(&mut file)?;
        file.sync_all()
    });
    if let Err(e) = result.and_then(|_| std::fs::rename(&temp, path)) {
        let _ = std::fs::remove_file(&temp);
        return Err(io_error(path, e));
    }
    Ok(())
}
