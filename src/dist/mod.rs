//! Data-parallel training: the sums that cross the ranks of a run. A [`Collective`] moves host
//! values between the processes (or threads) that share a run: [`Solo`] in one process, which
//! moves nothing; [`threads::Team`] for ranks that are threads of one process; `mpi::Mpi` under
//! `mpirun` (feature `mpi`). [`Ranks`] turns one rank's mean over its examples of a batch into
//! the whole batch's mean, on any device; [`split`] says which examples of a batch each rank
//! takes (`train::shard` brings them to it from the rank whose part of the file holds them).
//!
//! Every figure of a batch that natgrad sums over examples (loss, gradient, Fisher, K-FAC's
//! statistics, Fisher-vector products, `dᵀFd`) is computed on each rank as the mean over its own
//! examples; the batch's mean is `Σ_r (n_r/n) · mean_r`. The ranks then hold the same values and
//! take the same step: everything else (the solves, K-FAC's inverses, the update) is replicated,
//! or computed once and broadcast.

#[cfg(feature = "mpi")]
pub mod mpi;
pub mod split;
pub mod threads;

use std::collections::BTreeMap;

use crate::backend::Buffers;
use crate::error::{Error, Result};

/// Which collective operation a call was. The bytes a rank hands in cross its link in proportions
/// that depend on it (the cost model in README.md): an all-reduce of B sends about 2B(N−1)/N,
/// an all-gather of a rank's B brings it the other ranks' pieces, about (N−1)B.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    AllReduce,
    Broadcast,
    AllGather,
    AllToAll,
}

/// What one kind of collective call has moved: calls, the bytes this rank handed in, and the
/// seconds it waited in them.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Flow {
    /// the operation its calls were (none for a total over several)
    pub op: Option<Op>,
    pub calls: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// A rank's collective calls so far, by what they carried (`"gradient"`, `"K-FAC factors"`, …).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Traffic(pub BTreeMap<&'static str, Flow>);

impl Traffic {
    /// Counts one call, an `op` of `bytes` that waited `seconds`.
    pub fn add(&mut self, what: &'static str, op: Op, bytes: u64, seconds: f64) {
        let flow = self.0.entry(what).or_default();
        flow.op = Some(op);
        flow.calls += 1;
        flow.bytes += bytes;
        flow.seconds += seconds;
    }

    /// Adds `other`'s calls to these.
    pub fn merge(&mut self, other: &Traffic) {
        for (what, f) in &other.0 {
            let flow = self.0.entry(what).or_default();
            flow.op = f.op.or(flow.op);
            flow.calls += f.calls;
            flow.bytes += f.bytes;
            flow.seconds += f.seconds;
        }
    }

    /// What was moved after `before` was taken.
    pub fn since(&self, before: &Traffic) -> Traffic {
        let mut out = Traffic::default();
        for (what, now) in &self.0 {
            let then = before.0.get(what).copied().unwrap_or_default();
            if now.calls > then.calls {
                out.0.insert(
                    what,
                    Flow {
                        op: now.op,
                        calls: now.calls - then.calls,
                        bytes: now.bytes - then.bytes,
                        seconds: now.seconds - then.seconds,
                    },
                );
            }
        }
        out
    }

    /// Every call together.
    pub fn total(&self) -> Flow {
        self.0.values().fold(Flow::default(), |a, f| Flow {
            op: None,
            calls: a.calls + f.calls,
            bytes: a.bytes + f.bytes,
            seconds: a.seconds + f.seconds,
        })
    }
}

/// The collective operations a data-parallel run needs, on host values. Every rank makes the
/// same calls in the same order with buffers of the same lengths; `what` names the call in the
/// traffic counts and in errors. Sums come out identical on every rank.
pub trait Collective {
    /// This process's rank, 0 ..< ranks.
    fn rank(&self) -> usize;
    /// Ranks in the run.
    fn ranks(&self) -> usize;
    /// This rank's place among the ranks on its own machine (which of the machine's GPUs it takes).
    fn local_rank(&self) -> usize {
        0
    }
    /// `v ← Σ_ranks v`.
    fn sum_f32(&self, what: &'static str, v: &mut [f32]) -> Result<()>;
    /// `v ← Σ_ranks v`.
    fn sum_f64(&self, what: &'static str, v: &mut [f64]) -> Result<()>;
    /// `v ←` rank `root`'s `v`.
    fn broadcast_f32(&self, what: &'static str, root: usize, v: &mut [f32]) -> Result<()>;
    /// `v ←` rank `root`'s `v`, whatever its length.
    fn broadcast_bytes(&self, what: &'static str, root: usize, v: &mut Vec<u8>) -> Result<()>;
    /// Every rank's `local` in rank order; rank r gives `counts[r]` elements (every rank passes
    /// the same counts).
    fn gather_f32(&self, what: &'static str, local: &[f32], counts: &[usize]) -> Result<Vec<f32>>;
    /// All-to-all: `send` holds `send_counts[r]` elements for each rank r in turn; returns what
    /// each rank sent this one, in rank order, `recv_counts[r]` elements from rank r.
    fn exchange_f32(
        &self,
        what: &'static str,
        send: &[f32],
        send_counts: &[usize],
        recv_counts: &[usize],
    ) -> Result<Vec<f32>>;
    /// What this rank's calls have moved so far.
    fn traffic(&self) -> Traffic;
}

/// One process alone: every collective is the identity, and nothing is counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn ranks(&self) -> usize {
        1
    }
    fn sum_f32(&self, _: &'static str, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn sum_f64(&self, _: &'static str, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_f32(&self, _: &'static str, _: usize, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _: &'static str, _: usize, _: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
    fn gather_f32(&self, _: &'static str, local: &[f32], _: &[usize]) -> Result<Vec<f32>> {
        Ok(local.to_vec())
    }
    fn exchange_f32(&self, _: &'static str, send: &[f32], _: &[usize], _: &[usize]) -> Result<Vec<f32>> {
        Ok(send.to_vec())
    }
    fn traffic(&self) -> Traffic {
        Traffic::default()
    }
}

/// One batch as this rank holds it: `local` of the batch's `total` examples, and the run's
/// collective. Its means become the batch's as `Σ_r (local_r / total) · mean_r`.
#[derive(Clone, Copy)]
pub struct Ranks<'a> {
    pub comm: &'a dyn Collective,
    pub local: usize,
    pub total: usize,
}

impl std::fmt::Debug for Ranks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Ranks {{ rank {} of {}, {} of {} examples }}",
            self.comm.rank(),
            self.comm.ranks(),
            self.local,
            self.total
        )
    }
}

impl Ranks<'static> {
    /// A batch of `n` examples in one process.
    pub fn solo(n: usize) -> Self {
        Self {
            comm: &Solo,
            local: n,
            total: n,
        }
    }
}

impl Ranks<'_> {
    /// One process: every mean is already the batch's.
    pub fn is_solo(&self) -> bool {
        self.comm.ranks() == 1
    }

    /// This rank's weight in the batch's means, local / total.
    pub fn share(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.local as f64 / self.total as f64
        }
    }

    /// `v ← Σ_r share_r · v_r`: the batch's means from each rank's means of its examples.
    pub fn mean_f64(&self, what: &'static str, v: &mut [f64]) -> Result<()> {
        if self.is_solo() {
            return Ok(());
        }
        let share = self.share();
        v.iter_mut().for_each(|x| *x *= share);
        self.comm.sum_f64(what, v)
    }

    /// [`Ranks::mean_f64`] of one value.
    pub fn mean_scalar(&self, what: &'static str, x: f64) -> Result<f64> {
        let mut v = [x];
        self.mean_f64(what, &mut v)?;
        Ok(v[0])
    }

    /// [`Ranks::mean_f64`] of f32 values (summed in f32: what the device holds).
    pub fn mean_f32(&self, what: &'static str, v: &mut [f32]) -> Result<()> {
        if self.is_solo() {
            return Ok(());
        }
        let share = self.share();
        v.iter_mut().for_each(|x| *x = (*x as f64 * share) as f32);
        self.comm.sum_f32(what, v)
    }

    /// [`Ranks::mean_f32`] of a vector on the device (read back, summed, written again).
    pub fn mean_vector<B: Buffers>(&self, b: &B, what: &'static str, v: &mut B::Vector) -> Result<()> {
        if self.is_solo() {
            return Ok(());
        }
        let mut host = b.download_vector(v)?;
        self.mean_f32(what, &mut host)?;
        *v = b.upload_vector(what, &host)?;
        Ok(())
    }

    /// [`Ranks::mean_f32`] of symmetric matrices on the device, in one call: only their upper
    /// triangles move.
    pub fn mean_symmetric<B: Buffers>(&self, b: &B, what: &'static str, ms: &mut [B::Matrix]) -> Result<()> {
        if self.is_solo() {
            return Ok(());
        }
        let dims: Vec<usize> = ms.iter().map(|m| b.shape(m).0).collect();
        let full = b.download_matrices(&ms.iter().collect::<Vec<_>>())?;
        let mut packed: Vec<f32> = full
            .iter()
            .zip(&dims)
            .flat_map(|(m, &d)| upper_triangle(m, d))
            .collect();
        self.mean_f32(what, &mut packed)?;
        let mut at = 0;
        for (m, &dim) in ms.iter_mut().zip(&dims) {
            let len = dim * (dim + 1) / 2;
            *m = b.upload_symmetric(what, dim, &symmetric_from_upper(&packed[at..at + len], dim))?;
            at += len;
        }
        Ok(())
    }
}

/// The upper triangle (diagonal included) of a `dim × dim` row-major matrix, row by row.
pub fn upper_triangle<T: Copy>(m: &[T], dim: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(dim * (dim + 1) / 2);
    for i in 0..dim {
        out.extend_from_slice(&m[i * dim + i..(i + 1) * dim]);
    }
    out
}

/// The symmetric `dim × dim` row-major matrix whose upper triangle [`upper_triangle`] gave.
pub fn symmetric_from_upper(upper: &[f32], dim: usize) -> Vec<f32> {
    let mut m = vec![0.0; dim * dim];
    fill_symmetric(&mut m, upper, dim);
    m
}

/// Makes `m` (`dim × dim`, row-major) the symmetric matrix whose upper triangle is `upper`: the
/// rows' upper parts copied whole, then mirrored block by block as the CPU's Fisher is.
pub fn fill_symmetric(m: &mut [f32], upper: &[f32], dim: usize) {
    let mut k = 0;
    for i in 0..dim {
        let len = dim - i;
        m[i * dim + i..(i + 1) * dim].copy_from_slice(&upper[k..k + len]);
        k += len;
    }
    crate::cpu::fisher::mirror_upper(m, dim);
}

/// Which ranks failed, agreed by all: each rank says whether its `result` is an error, and a
/// rank whose own work succeeded learns that another's did not. The first failing rank keeps its
/// own error (the one to report); every other rank gets [`Error::PeerFailed`] naming it.
pub fn agree<T, E: From<Error>>(comm: &dyn Collective, result: Result<T, E>) -> Result<T, E> {
    agree_flags(comm, "agreement", result, &[]).map(|(value, _)| value)
}

/// [`agree`], and in the same call whether any rank raised each of `flags` (every rank passes
/// as many).
pub fn agree_flags<T, E: From<Error>>(
    comm: &dyn Collective,
    what: &'static str,
    result: Result<T, E>,
    flags: &[bool],
) -> Result<(T, Vec<bool>), E> {
    if comm.ranks() == 1 {
        return result.map(|value| (value, flags.to_vec()));
    }
    let ranks = comm.ranks();
    let mut v = vec![0.0; ranks + flags.len()];
    v[comm.rank()] = if result.is_err() { 1.0 } else { 0.0 };
    for (slot, &flag) in v[ranks..].iter_mut().zip(flags) {
        *slot = if flag { 1.0 } else { 0.0 };
    }
    comm.sum_f64(what, &mut v)?;
    let raised = v[ranks..].iter().map(|&x| x > 0.0).collect();
    match v[..ranks].iter().position(|f| *f > 0.0) {
        None => result.map(|value| (value, raised)),
        Some(first) if first == comm.rank() => result.map(|value| (value, raised)),
        Some(first) => Err(Error::PeerFailed { rank: first }.into()),
    }
}

/// The rank this process has in a job an MPI launcher (`mpirun`, `srun`) started, and the job's
/// ranks: what the launcher says in the environment, before MPI is initialised (or without it).
pub fn launched() -> Option<(usize, usize)> {
    let var = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok().and_then(|v| v.trim().parse::<usize>().ok()))
    };
    let size = var(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"])?;
    Some((var(&["OMPI_COMM_WORLD_RANK", "PMI_RANK"]).unwrap_or(0), size))
}

/// Every rank's `local` values in rank order, whatever their lengths (each rank's length is
/// summed first, then the values, each rank's in its own place): for small, one-off exchanges.
pub fn gather_f64(comm: &dyn Collective, what: &'static str, local: &[f64]) -> Result<Vec<f64>> {
    if comm.ranks() == 1 {
        return Ok(local.to_vec());
    }
    let mut lengths = vec![0.0; comm.ranks()];
    lengths[comm.rank()] = local.len() as f64;
    comm.sum_f64(what, &mut lengths)?;
    let start = lengths[..comm.rank()].iter().sum::<f64>() as usize;
    let mut all = vec![0.0; lengths.iter().sum::<f64>() as usize];
    all[start..start + local.len()].copy_from_slice(local);
    comm.sum_f64(what, &mut all)?;
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_triangles_round_trip_to_the_symmetric_matrix() {
        let m = [1.0, 2.0, 3.0, 2.0, 4.0, 5.0, 3.0, 5.0, 6.0];
        let upper = upper_triangle(&m, 3);
        assert_eq!(upper, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(symmetric_from_upper(&upper, 3), m.to_vec());
        // across several tiles, with a ragged last one
        let dim = 150;
        let sym: Vec<f32> = (0..dim * dim)
            .map(|k| {
                let (i, j) = (k / dim, k % dim);
                (i.min(j) * 1000 + i.max(j)) as f32
            })
            .collect();
        assert_eq!(symmetric_from_upper(&upper_triangle(&sym, dim), dim), sym);
    }

    #[test]
    fn traffic_since_counts_only_the_new_calls() {
        let mut t = Traffic::default();
        t.add("gradient", Op::AllReduce, 40, 0.5);
        let before = t.clone();
        t.add("gradient", Op::AllReduce, 40, 0.25);
        t.add("loss", Op::AllReduce, 16, 0.0);
        let step = t.since(&before);
        assert_eq!(step.0["gradient"].calls, 1);
        assert_eq!(step.0["gradient"].bytes, 40);
        assert_eq!(step.0["gradient"].op, Some(Op::AllReduce));
        assert_eq!(step.total().bytes, 56);
        assert!(!step.0.contains_key("nothing"));
    }

    #[test]
    fn one_process_means_are_left_as_they_are() {
        let mut v = [1.5, -2.0];
        Ranks::solo(7).mean_f64("x", &mut v).unwrap();
        assert_eq!(v, [1.5, -2.0]);
    }
}
