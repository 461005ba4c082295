//! The data of a data-parallel run: each rank reads its part of the file (a built-in dataset is
//! made whole and cut), the ranks agree on what the data is (rows, columns, task, the split and
//! the standardisation, all as one process would decide them over the whole file), and every step
//! the examples each rank takes of the batch ([`split`]) come to it from the ranks holding them.

use super::Examples;
use super::run::{Prepared, RunConfig};
use crate::data::{self, Dataset, Standardizer, Task, csv, split_order};
use crate::dist::{self, Collective, split};
use crate::error::{Error, Result};
use crate::model::{Mlp, MlpSpec};

/// Where the run's examples are: for every training example (the run's numbering, as one process
/// has it), the rank holding it and its row there.
pub struct Layout {
    holder: Vec<(u32, u32)>,
    /// examples of the run's validation set
    pub val_total: usize,
}

impl Layout {
    /// Training examples of the run.
    pub fn train_total(&self) -> usize {
        self.holder.len()
    }

    /// This rank's examples of the batch `indices` (the run's numbering) whose first `curvature`
    /// are its curvature examples (0: all), brought from the ranks holding them: `train` is this
    /// rank's training set.
    pub fn examples(
        &self,
        comm: &dyn Collective,
        train: &Dataset,
        indices: &[usize],
        curvature: usize,
    ) -> Result<Held> {
        let (me, ranks, d) = (comm.rank(), comm.ranks(), train.d);
        let width = d + 1;
        let shares: Vec<split::Share> = (0..ranks)
            .map(|r| split::Share::of(indices.len(), curvature, ranks, r))
            .collect();
        let (mut send, mut send_counts, mut recv_counts) = (Vec::new(), vec![0; ranks], vec![0; ranks]);
        for (to, share) in shares.iter().enumerate() {
            for pos in share.positions() {
                let (holder, row) = self.holder[indices[pos]];
                let (holder, row) = (holder as usize, row as usize);
                if holder == me {
                    send.extend_from_slice(&train.x[row * d..(row + 1) * d]);
                    send.push(train.y[row]);
                    send_counts[to] += width;
                }
                if to == me {
                    recv_counts[holder] += width;
                }
            }
        }
        let received = comm.exchange_f32("examples", &send, &send_counts, &recv_counts)?;
        // each holder's rows arrive in the order of this rank's positions: deal them back out
        let mut next: Vec<usize> = recv_counts
            .iter()
            .scan(0, |at, &c| {
                let start = *at;
                *at += c;
                Some(start)
            })
            .collect();
        let share = &shares[me];
        let (mut x, mut y) = (Vec::with_capacity(share.len() * d), Vec::with_capacity(share.len()));
        for pos in share.positions() {
            let holder = self.holder[indices[pos]].0 as usize;
            let row = &received[next[holder]..next[holder] + width];
            x.extend_from_slice(&row[..d]);
            y.push(row[d]);
            next[holder] += width;
        }
        Ok(Held {
            x,
            y,
            share: share.clone(),
        })
    }
}

/// A rank's examples of one batch, held.
pub struct Held {
    x: Vec<f32>,
    y: Vec<f32>,
    share: split::Share,
}

impl Held {
    /// As the trainer takes them.
    pub fn examples(&self) -> Examples<'_> {
        Examples {
            x: &self.x,
            y: &self.y,
            local: self.share.len(),
            total: self.share.total,
            curvature_local: self.share.curvature.len(),
            curvature_total: self.share.curvature_total,
            first: self.share.curvature.start,
        }
    }
}

/// [`super::prepare`] for one rank of a data-parallel run: this rank's part of the training and
/// validation sets (standardised as one process would), the model, and where every training
/// example is. Every rank learns of any rank's failure; the first failing rank reports it.
pub fn prepare(cfg: &RunConfig, comm: &dyn Collective) -> Result<(Prepared, Layout)> {
    dist::agree(comm, cfg.validate())?;
    let (part, first_row, total) = load_part(cfg, comm)?;
    let (me, ranks) = (comm.rank(), comm.ranks());
    // the file's rows each rank holds: rank r the rows first[r] ..< first[r + 1]
    let mut firsts = vec![0.0; ranks];
    firsts[me] = first_row as f64;
    comm.sum_f64("data layout", &mut firsts)?;
    // (firsts ascend: the holder is the last rank whose first row is at or before the row)
    let holder_of_row = |row: usize| firsts.partition_point(|&f| f as usize <= row).saturating_sub(1);
    // as Dataset::split has it: the training set is order[held..], in order; validation order[..held]
    let (order, held) = split_order(total, cfg.val_split, cfg.seed)?.unwrap_or_else(|| ((0..total).collect(), 0));
    let mut counts = vec![0u32; ranks];
    let mut holder = Vec::with_capacity(total - held);
    let mut train_rows = Vec::new();
    for &row in &order[held..] {
        let r = holder_of_row(row);
        holder.push((r as u32, counts[r]));
        counts[r] += 1;
        if r == me {
            train_rows.push(row - first_row);
        }
    }
    let val_rows: Vec<usize> = order[..held]
        .iter()
        .filter(|&&row| holder_of_row(row) == me)
        .map(|&row| row - first_row)
        .collect();
    let train_total = holder.len();
    let mut train = part.subset(&train_rows, part.name.clone());
    let mut val = (held > 0).then(|| part.subset(&val_rows, format!("{} (validation)", part.name)));
    let standardizer = if cfg.standardize {
        Some(Standardizer::fit_part(&train, train_total, |v| {
            comm.sum_f64("standardisation", v)
        })?)
    } else {
        None
    };
    if let Some(s) = &standardizer {
        s.apply(&mut train);
        if let Some(v) = &mut val {
            s.apply(v);
        }
    }
    let mlp = Mlp::new(MlpSpec {
        inputs: train.d,
        hidden: cfg.hidden.clone(),
        activation: cfg.activation,
        likelihood: train.likelihood(cfg.sigma),
    })?;
    let prepared = Prepared {
        train,
        val,
        standardizer,
        mlp,
    };
    Ok((
        prepared,
        Layout {
            holder,
            val_total: held,
        },
    ))
}

/// This rank's part of the data as a dataset, the file row its first row is, and the rows of the
/// whole file; the task decided over every part's labels.
fn load_part(cfg: &RunConfig, comm: &dyn Collective) -> Result<(Dataset, usize, usize)> {
    let (me, ranks) = (comm.rank(), comm.ranks());
    if let Some(whole) = data::builtin(&cfg.data, cfg.task, cfg.seed) {
        // made, not read: every rank makes it and keeps its cut
        let whole = whole?;
        let rows = split::run(whole.n, ranks, me);
        let part = whole.subset(&rows.clone().collect::<Vec<_>>(), whole.name.clone());
        return Ok((part, rows.start, whole.n));
    }
    let path = std::path::Path::new(&cfg.data);
    let table = dist::agree(comm, csv::read_part(path, me, ranks))?;
    let name = path.display().to_string();
    // rows before each part, and every part's column count (0: no rows)
    let mut shape = vec![0.0; 2 * ranks];
    shape[me] = table.rows as f64;
    shape[ranks + me] = table.cols as f64;
    comm.sum_f64("data shape", &mut shape)?;
    let total = shape[..ranks].iter().sum::<f64>() as usize;
    let first_row = shape[..me].iter().sum::<f64>() as usize;
    if total == 0 {
        return Err(Error::Data(format!("{name}: no data rows")));
    }
    let expected = shape[ranks..].iter().copied().find(|&c| c > 0.0).unwrap_or(0.0) as usize;
    let mismatch = (table.cols != 0 && table.cols != expected).then(|| {
        Error::Data(format!(
            "{name}: the rows from data row {} have {} columns, expected {expected}",
            first_row + 1,
            table.cols
        ))
    });
    dist::agree(comm, mismatch.map_or(Ok(()), Err))?;
    // the labels of every part decide the task, as the whole file's would
    let (integer, distinct) = data::label_summary(&table.labels);
    let mut flags = [if integer { 0.0 } else { 1.0 }];
    comm.sum_f64("labels", &mut flags)?;
    let integer = flags[0] == 0.0;
    let distinct = if integer {
        let mut all = dist::gather_f64(comm, "labels", &distinct)?;
        all.sort_by(f64::total_cmp);
        all.dedup();
        all
    } else {
        Vec::new()
    };
    let task = Task::decide(&name, cfg.task, integer, distinct)?;
    let mut part = Dataset::with_task(&name, table, task);
    part.d = expected - 1;
    Ok((part, first_row, total))
}
