//! Datasets: loaded from CSV or built in (the shipped `digits`, seeded `spirals` and `blobs`),
//! split into training and validation sets, standardised, and cut into shuffled mini-batches.

pub mod builtin;
pub mod csv;

use std::fmt;
use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::error::{Error, Result};
use crate::model::Likelihood;

/// A data problem, located: `source` is the file (or built-in dataset), `line` the CSV line.
#[derive(Debug)]
pub struct DataError {
    pub source: String,
    pub line: Option<u64>,
    pub msg: String,
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} line {line}: {}", self.source, self.msg),
            None => write!(f, "{}: {}", self.source, self.msg),
        }
    }
}

impl std::error::Error for DataError {}

impl From<DataError> for Error {
    fn from(e: DataError) -> Self {
        Error::Data(e.to_string())
    }
}

/// What the labels are.
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// Integer labels; `labels[c]` is the value class c stands for (sorted).
    Classify { labels: Vec<f64> },
    /// Real-valued targets.
    Regress,
}

/// The `--task` choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum TaskChoice {
    /// Classification when every label is an integer.
    #[default]
    #[value(skip)]
    Auto,
    Classify,
    Regress,
}

/// Examples in memory: `x` is n × d row-major; `y` holds class indices (0..C) or targets.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub name: String,
    pub x: Vec<f32>,
    pub y: Vec<f32>,
    pub n: usize,
    pub d: usize,
    pub task: Task,
}

impl Task {
    /// Decides classification or regression for `choice` from what the labels are: `integer`,
    /// whether every one is an integer, and `distinct`, the distinct values (sorted; needed only
    /// for classification). `name` names the data in errors.
    pub fn decide(name: &str, choice: TaskChoice, integer: bool, distinct: Vec<f64>) -> Result<Task> {
        let err = |msg: String| Error::Data(format!("{name}: {msg}"));
        let classify = match choice {
            TaskChoice::Regress => false,
            TaskChoice::Classify if !integer => {
                return Err(err("--task classify needs integer labels in the last column".into()));
            }
            TaskChoice::Classify => true,
            TaskChoice::Auto if !integer => {
                return Err(err(
                    "the labels (last column) are not all integers; for regression pass --task regress".into(),
                ));
            }
            TaskChoice::Auto => true,
        };
        if !classify {
            return Ok(Task::Regress);
        }
        if distinct.len() < 2 {
            return Err(err(format!(
                "only one class (label {}) in the data: nothing to classify",
                distinct.first().copied().unwrap_or(f64::NAN)
            )));
        }
        Ok(Task::Classify { labels: distinct })
    }
}

/// Whether every label is an integer, and the distinct labels, sorted.
pub fn label_summary(labels: &[f64]) -> (bool, Vec<f64>) {
    let integer = labels.iter().all(|v| v.fract() == 0.0);
    let mut distinct = labels.to_vec();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    (integer, distinct)
}

impl Dataset {
    /// Builds a dataset from a parsed table, deciding classification or regression.
    pub fn from_table(name: &str, table: csv::Table, choice: TaskChoice) -> Result<Self> {
        let (integer, distinct) = label_summary(&table.labels);
        let task = Task::decide(name, choice, integer, distinct)?;
        Ok(Self::with_task(name, table, task))
    }

    /// Builds a dataset from a parsed table whose task is decided (its labels among the task's).
    pub fn with_task(name: &str, table: csv::Table, task: Task) -> Self {
        let y = match &task {
            Task::Classify { labels } => table
                .labels
                .iter()
                .map(|v| labels.partition_point(|l| l < v) as f32)
                .collect(),
            Task::Regress => table.labels.iter().map(|&v| v as f32).collect(),
        };
        Self {
            name: name.to_owned(),
            x: table.features.iter().map(|&v| v as f32).collect(),
            y,
            n: table.rows,
            d: table.cols.saturating_sub(1),
            task,
        }
    }

    /// Builds a dataset for a trained model: the features must number `inputs` and the labels be
    /// ones the model was trained on (`task`).
    pub fn for_model(name: &str, table: csv::Table, task: &Task, inputs: usize) -> Result<Self> {
        let err = |msg: String| Error::Data(format!("{name}: {msg}"));
        if table.cols - 1 != inputs {
            return Err(err(format!(
                "{} features per row, but the model takes {inputs}",
                table.cols - 1
            )));
        }
        let y = match task {
            Task::Classify { labels } => table
                .labels
                .iter()
                .enumerate()
                .map(|(row, v)| {
                    labels.iter().position(|l| l == v).map(|c| c as f32).ok_or_else(|| {
                        err(format!(
                            "data row {}: label {v} is not one the model was trained on ({labels:?})",
                            row + 1
                        ))
                    })
                })
                .collect::<Result<_>>()?,
            Task::Regress => table.labels.iter().map(|&v| v as f32).collect(),
        };
        Ok(Self {
            name: name.to_owned(),
            x: table.features.iter().map(|&v| v as f32).collect(),
            y,
            n: table.rows,
            d: inputs,
            task: task.clone(),
        })
    }

    /// Loads a CSV file.
    pub fn from_csv(path: &Path, choice: TaskChoice) -> Result<Self> {
        Self::from_table(&path.display().to_string(), csv::read(path)?, choice)
    }

    /// The likelihood for this task: two classes → Bernoulli, more → categorical, regression →
    /// Gaussian with standard deviation `sigma`.
    pub fn likelihood(&self, sigma: f32) -> Likelihood {
        match &self.task {
            Task::Classify { labels } if labels.len() == 2 => Likelihood::Bernoulli,
            Task::Classify { labels } => Likelihood::Categorical { classes: labels.len() },
            Task::Regress => Likelihood::Gaussian { outputs: 1, sigma },
        }
    }

    /// The examples at `indices`: (inputs, targets).
    pub fn gather(&self, indices: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let mut x = Vec::with_capacity(indices.len() * self.d);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            x.extend_from_slice(&self.x[i * self.d..(i + 1) * self.d]);
            y.push(self.y[i]);
        }
        (x, y)
    }

    /// The examples at `indices`, as a dataset named `name`.
    pub fn subset(&self, indices: &[usize], name: String) -> Self {
        let (x, y) = self.gather(indices);
        Self {
            name,
            x,
            y,
            n: indices.len(),
            d: self.d,
            task: self.task.clone(),
        }
    }

    /// A seeded shuffle into (training, validation) with `fraction` of the examples held out
    /// (none when 0).
    pub fn split(self, fraction: f64, seed: u64) -> Result<(Dataset, Option<Dataset>)> {
        let Some((order, held)) = split_order(self.n, fraction, seed)? else {
            return Ok((self, None));
        };
        let (val, train) = order.split_at(held);
        let name = self.name.clone();
        Ok((
            self.subset(train, name.clone()),
            Some(self.subset(val, format!("{name} (validation)"))),
        ))
    }
}

/// The seeded shuffle of `n` examples that [`Dataset::split`] holds out `fraction` of: the order,
/// whose first `held` are the validation set and the rest, in order, the training set. `None`
/// when nothing is held out.
pub fn split_order(n: usize, fraction: f64, seed: u64) -> Result<Option<(Vec<usize>, usize)>> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(Error::InvalidArgument {
            name: "--val-split",
            reason: format!("{fraction} is not in [0, 1)"),
        });
    }
    let held = (n as f64 * fraction).round() as usize;
    if held == 0 {
        return Ok(None);
    }
    if held >= n {
        return Err(Error::InvalidArgument {
            name: "--val-split",
            reason: format!("{fraction} of {n} examples leaves none to train on"),
        });
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ SPLIT_STREAM));
    Ok(Some((order, held)))
}

/// Keeps the split's shuffle apart from the batches' (which use the seed itself).
const SPLIT_STREAM: u64 = 0x5EED_5917_0000_0001;

/// Per-feature mean and standard deviation, fitted on the training set and applied to every set
/// (kept in the checkpoint so `eval` sees features as training did).
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Standardizer {
    pub fn fit(data: &Dataset) -> Self {
        match Self::fit_part(data, data.n, |_| Ok::<(), std::convert::Infallible>(())) {
            Ok(s) => s,
            Err(never) => match never {},
        }
    }

    /// [`Standardizer::fit`] over a set of `total` examples of which `data` holds some: `sum`
    /// adds every part's sums (across ranks) in place.
    pub fn fit_part<E>(
        data: &Dataset,
        total: usize,
        mut sum: impl FnMut(&mut [f64]) -> std::result::Result<(), E>,
    ) -> std::result::Result<Self, E> {
        let (n, d) = (total as f64, data.d);
        let mut mean = vec![0.0f64; d];
        let mut sq = vec![0.0f64; d];
        for row in data.x.chunks_exact(d.max(1)) {
            for j in 0..d {
                mean[j] += row[j] as f64 / n;
            }
        }
        sum(&mut mean)?;
        for row in data.x.chunks_exact(d.max(1)) {
            for j in 0..d {
                sq[j] += (row[j] as f64 - mean[j]).powi(2) / n;
            }
        }
        sum(&mut sq)?;
        // a constant feature keeps its scale: dividing by 0 would make it NaN
        let std = sq
            .iter()
            .map(|v| match v.sqrt() as f32 {
                s if s > 0.0 => s,
                _ => 1.0,
            })
            .collect();
        Ok(Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        })
    }

    pub fn apply(&self, data: &mut Dataset) {
        for row in data.x.chunks_exact_mut(data.d) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v - m) / s;
            }
        }
    }
}

/// The example indices of each mini-batch of an epoch, shuffled by (seed, epoch); the last batch
/// may be smaller. `batch` 0 or at least n means one full batch, unshuffled.
pub fn batches(n: usize, batch: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    if batch == 0 || batch >= n {
        return vec![order];
    }
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(epoch as u64));
    order.shuffle(&mut rng);
    order.chunks(batch).map(<[usize]>::to_vec).collect()
}

/// The table of a built-in dataset or CSV file, before any task is decided.
pub fn load_table(source: &str, seed: u64) -> Result<(String, csv::Table)> {
    match builtin::by_name(source, seed) {
        Some(data) => {
            let data = data?;
            let labels = match &data.task {
                Task::Classify { labels } => data.y.iter().map(|&c| labels[c as usize]).collect(),
                Task::Regress => data.y.iter().map(|&v| v as f64).collect(),
            };
            let features = data.x.iter().map(|&v| v as f64).collect();
            Ok((
                data.name,
                csv::Table {
                    features,
                    labels,
                    rows: data.n,
                    cols: data.d + 1,
                    header: None,
                },
            ))
        }
        None => Ok((source.to_owned(), csv::read(Path::new(source))?)),
    }
}

/// A dataset by built-in name or CSV path: `digits`, `spirals`, `blobs`, or a file.
pub fn load(source: &str, choice: TaskChoice, seed: u64) -> Result<Dataset> {
    match builtin(source, choice, seed) {
        Some(data) => data,
        None => Dataset::from_csv(Path::new(source), choice),
    }
}

/// The built-in dataset named `source`, if it is one, for a run that asked for `choice`: they
/// are all classification, and `--task regress` on one is refused rather than ignored.
pub fn builtin(source: &str, choice: TaskChoice, seed: u64) -> Option<Result<Dataset>> {
    let data = builtin::by_name(source, seed)?;
    Some(match choice {
        TaskChoice::Regress => Err(Error::InvalidArgument {
            name: "--task",
            reason: format!("{source} is a classification dataset: --task regress is for CSV files"),
        }),
        _ => data,
    })
}
