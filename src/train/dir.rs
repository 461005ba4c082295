//! Run directories that never lose work: a run writes only into a directory it has claimed, a
//! directory that holds another run is refused unless the run continues it (`--resume`) or
//! replaces it (`--overwrite`), and a lock file keeps two processes out of one directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The files a run writes. A directory holding any of them holds a run.
pub const RUN_FILES: [&str; 6] = [
    "metrics.csv",
    "epochs.csv",
    "summary.json",
    "model.safetensors",
    "loss.svg",
    "state.safetensors",
];

/// The lock file's name: it holds the process id of the run that owns the directory.
pub const LOCK: &str = ".natgrad.lock";

/// How a run may use a directory that already holds one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Claim {
    /// Only a directory that holds no run.
    #[default]
    New,
    /// Replace the run there: its files are removed once the new run has been checked.
    Overwrite,
    /// Continue the run there, from its state file.
    Resume,
}

/// Whether `dir` holds a run's files.
pub fn holds_run(dir: &Path) -> bool {
    RUN_FILES.iter().any(|f| dir.join(f).exists())
}

/// `dir` if it holds no run, else the first of `dir-2`, `dir-3`, … that holds none: where a run
/// goes when its directory was not named.
pub fn fresh(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::iter::once(dir.to_path_buf())
        .chain((2..).map(|k| dir.with_file_name(format!("{name}-{k}"))))
        .find(|d| !holds_run(d))
        .unwrap_or_else(|| dir.to_path_buf())
}

/// A run directory this process holds until it is dropped (the lock file is removed then).
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Claims `dir` for a run: created if missing, refused if it holds another run and `claim`
    /// does not allow it, and locked against other processes. With [`Claim::Overwrite`] the old
    /// run's files are removed.
    pub fn claim(dir: &Path, claim: Claim) -> Result<Self> {
        let held = holds_run(dir);
        match claim {
            Claim::New if held => {
                return Err(Error::InvalidArgument {
                    name: "--out",
                    reason: format!(
                        "{} holds a run: give --overwrite to replace it, or --resume {} to continue it",
                        dir.display(),
                        dir.display()
                    ),
                });
            }
            Claim::Resume if !dir.join("state.safetensors").exists() => {
                return Err(Error::InvalidArgument {
                    name: "--resume",
                    reason: format!("{} holds no state.safetensors to resume from", dir.display()),
                });
            }
            _ => {}
        }
        std::fs::create_dir_all(dir).map_err(|e| crate::io::io_error(dir, e))?;
        lock(dir)?;
        let run = Self {
            path: dir.to_path_buf(),
        };
        if claim == Claim::Overwrite {
            for f in RUN_FILES {
                let path = dir.join(f);
                if path.exists() {
                    std::fs::remove_file(&path).map_err(|e| crate::io::io_error(&path, e))?;
                }
            }
        }
        Ok(run)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path.join(LOCK));
    }
}

/// Takes `dir`'s lock: a new lock file with this process's id. A lock left by a process that is
/// gone (killed) is taken over; one held by a live process is an error naming it.
fn lock(dir: &Path) -> Result<()> {
    let path = dir.join(LOCK);
    for _ in 0..2 {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                return write!(file, "{}", std::process::id()).map_err(|e| crate::io::io_error(&path, e));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = std::fs::read_to_string(&path).unwrap_or_default();
                let pid = owner.trim().parse::<u32>().ok();
                if pid.is_some_and(alive) {
                    return Err(Error::InvalidArgument {
                        name: "--out",
                        reason: format!(
                            "{} is in use by another natgrad run (process {}); its lock is {}",
                            dir.display(),
                            owner.trim(),
                            path.display()
                        ),
                    });
                }
                // a stale lock: its process is gone
                std::fs::remove_file(&path).map_err(|e| crate::io::io_error(&path, e))?;
            }
            Err(e) => return Err(crate::io::io_error(&path, e)),
        }
    }
    Err(crate::io::io_error(&path, "could not take the lock"))
}

/// Whether process `pid` is running (Linux's /proc; elsewhere a lock is taken as live).
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_with_a_run_is_refused_then_overwritten_and_locked() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run");
        let first = RunDir::claim(&dir, Claim::New).unwrap();
        std::fs::write(dir.join("summary.json"), "{}").unwrap();
        // held by this process: a second claim is refused whatever it asks
        assert!(RunDir::claim(&dir, Claim::Overwrite).is_err());
        drop(first);
        assert!(!dir.join(LOCK).exists());
        let e = RunDir::claim(&dir, Claim::New).unwrap_err().to_string();
        assert!(e.contains("holds a run") && e.contains("--overwrite"), "{e}");
        assert_eq!(fresh(&dir), root.path().join("run-2"));
        let again = RunDir::claim(&dir, Claim::Overwrite).unwrap();
        assert!(!dir.join("summary.json").exists());
        drop(again);
        // a lock left by a process that is gone is taken over
        std::fs::write(dir.join(LOCK), "4000000000").unwrap();
        assert!(RunDir::claim(&dir, Claim::New).is_ok());
    }
}
