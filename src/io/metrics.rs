//! A run's records: `metrics.csv` (one row per step, the step's batch), `epochs.csv` (one row per
//! epoch, the whole training and validation sets) and `summary.json`; and reading them back.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::Result;

/// Columns of metrics.csv, in order (the command-line contract).
pub const STEP_COLUMNS: [&str; 12] = [
    "step",
    "epoch",
    "loss",
    "objective",
    "accuracy",
    "grad_norm",
    "step_size",
    "kl_pred",
    "cg_iters",
    "cg_rel_residual",
    "damping",
    "wall_s",
];

/// Columns of epochs.csv, in order.
pub const EPOCH_COLUMNS: [&str; 7] = [
    "epoch",
    "train_loss",
    "train_objective",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "wall_s",
];

/// One step's figures; `None` where the optimiser has no such thing (empty in the CSV).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepRow {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub objective: f64,
    pub accuracy: Option<f64>,
    pub grad_norm: f64,
    pub step_size: f64,
    pub kl_pred: Option<f64>,
    pub cg_iters: Option<usize>,
    pub cg_rel_residual: Option<f64>,
    pub damping: Option<f64>,
    pub wall_s: f64,
}

/// One epoch's figures over whole sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochRow {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_objective: f64,
    pub train_accuracy: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub wall_s: f64,
}

fn cell<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// Appends rows to metrics.csv and epochs.csv in a run directory.
pub struct MetricsWriter {
    steps: BufWriter<File>,
    epochs: BufWriter<File>,
    dir: PathBuf,
}

impl MetricsWriter {
    pub fn create(dir: &Path) -> Result<Self> {
        let open = |name: &str, columns: &[&str]| -> Result<BufWriter<File>> {
            let path = dir.join(name);
            let mut w = BufWriter::new(File::create(&path).map_err(|e| super::io_error(&path, e))?);
            writeln!(w, "{}", columns.join(",")).map_err(|e| super::io_error(&path, e))?;
            Ok(w)
        };
        Ok(Self {
            steps: open("metrics.csv", &STEP_COLUMNS)?,
            epochs: open("epochs.csv", &EPOCH_COLUMNS)?,
            dir: dir.to_owned(),
        })
    }

    /// Continues the files in `dir` of a resumed run: their first `steps` step rows and `epochs`
    /// epoch rows are kept (the rows up to the saved state; any written after it are the
    /// interrupted run's and are rewritten), and new rows are appended.
    pub fn resume(dir: &Path, steps: usize, epochs: usize) -> Result<Self> {
        let keep = |name: &str, rows: usize| -> Result<BufWriter<File>> {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).map_err(|e| super::io_error(&path, e))?;
            let kept: Vec<&str> = text.lines().take(rows + 1).collect();
            if kept.len() != rows + 1 {
                return Err(super::io_error(
                    &path,
                    format!("{} rows, the state needs {rows}", kept.len().saturating_sub(1)),
                ));
            }
            // the kept rows replace the file at once (a run killed now keeps its old rows, which
            // a second resume cuts again), then the new ones are appended
            if text.lines().count() > kept.len() || !text.ends_with('\n') {
                let mut kept_text = kept.join("\n");
                kept_text.push('\n');
                super::write_atomic(&path, kept_text.as_bytes())?;
            }
            let file = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| super::io_error(&path, e))?;
            Ok(BufWriter::new(file))
        };
        Ok(Self {
            steps: keep("metrics.csv", steps)?,
            epochs: keep("epochs.csv", epochs)?,
            dir: dir.to_owned(),
        })
    }

    pub fn step(&mut self, r: &StepRow) -> Result<()> {
        writeln!(
            self.steps,
            "{},{},{},{},{},{},{},{},{},{},{},{:.6}",
            r.step,
            r.epoch,
            r.loss,
            r.objective,
            cell(r.accuracy),
            r.grad_norm,
            r.step_size,
            cell(r.kl_pred),
            cell(r.cg_iters),
            cell(r.cg_rel_residual),
            cell(r.damping),
            r.wall_s
        )
        .map_err(|e| super::io_error(&self.dir.join("metrics.csv"), e))
    }

    pub fn epoch(&mut self, r: &EpochRow) -> Result<()> {
        writeln!(
            self.epochs,
            "{},{},{},{},{},{},{:.6}",
            r.epoch,
            r.train_loss,
            r.train_objective,
            cell(r.train_accuracy),
            cell(r.val_loss),
            cell(r.val_accuracy),
            r.wall_s
        )
        .map_err(|e| super::io_error(&self.dir.join("epochs.csv"), e))?;
        self.flush()
    }

    pub fn flush(&mut self) -> Result<()> {
        self.steps
            .flush()
            .map_err(|e| super::io_error(&self.dir.join("metrics.csv"), e))?;
        self.epochs
            .flush()
            .map_err(|e| super::io_error(&self.dir.join("epochs.csv"), e))
    }
}

/// The named columns of a CSV written by [`MetricsWriter`] (empty cells are NaN).
pub fn read_columns(path: &Path, names: &[&str]) -> Result<Vec<Vec<f64>>> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| super::io_error(path, e))?;
    let header = reader.headers().map_err(|e| super::io_error(path, e))?.clone();
    let index: Vec<usize> = names
        .iter()
        .map(|n| {
            header
                .iter()
                .position(|h| h == *n)
                .ok_or_else(|| super::io_error(path, format!("no column {n:?}")))
        })
        .collect::<Result<_>>()?;
    let mut columns = vec![Vec::new(); names.len()];
    for record in reader.records() {
        let record = record.map_err(|e| super::io_error(path, e))?;
        for (column, &i) in columns.iter_mut().zip(&index) {
            column.push(record.get(i).and_then(|c| c.parse().ok()).unwrap_or(f64::NAN));
        }
    }
    Ok(columns)
}

/// Writes `summary.json` atomically.
pub fn write_summary(dir: &Path, summary: &impl serde::Serialize) -> Result<()> {
    let path = dir.join("summary.json");
    let text = serde_json::to_string_pretty(summary).map_err(|e| super::io_error(&path, e))? + "\n";
    super::write_atomic(&path, text.as_bytes())
}
