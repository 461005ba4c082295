//! Ranks that are threads of one process: a [`Team`] of [`Collective`]s meeting at a barrier.
//! Each call is one round: every rank leaves its contribution, waits for all of them, and reads
//! them back in rank order, so sums come out identical on every rank (added in rank order, as
//! f64). For tests of the data-parallel maths without MPI, and for driving several devices from
//! one process.

use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

use super::{Collective, Op, Traffic};
use crate::error::{Error, Result};

/// One rank's contribution to a round.
#[derive(Clone)]
enum Payload {
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<u8>),
    /// what a rank sends every rank in an exchange: the counts for each, then the values
    Pieces(Vec<usize>, Vec<f32>),
}

struct Shared {
    barrier: Barrier,
    slots: Mutex<Vec<Option<(&'static str, Payload)>>>,
}

/// One rank of a team; send each to its own thread.
pub struct Team {
    rank: usize,
    shared: Arc<Shared>,
    traffic: Mutex<Traffic>,
}

impl Team {
    /// `ranks` members, rank 0 first.
    pub fn new(ranks: usize) -> Vec<Team> {
        let shared = Arc::new(Shared {
            barrier: Barrier::new(ranks),
            slots: Mutex::new(vec![None; ranks]),
        });
        (0..ranks)
            .map(|rank| Team {
                rank,
                shared: Arc::clone(&shared),
                traffic: Mutex::new(Traffic::default()),
            })
            .collect()
    }

    /// Leaves `mine`, waits for every rank's, and returns them all in rank order.
    fn round(&self, what: &'static str, op: Op, mine: Payload, bytes: u64) -> Result<Vec<Payload>> {
        let start = Instant::now();
        let poisoned = || Error::Ranks(format!("{what}: a rank's thread panicked"));
        self.shared.slots.lock().map_err(|_| poisoned())?[self.rank] = Some((what, mine));
        self.shared.barrier.wait();
        let all: Vec<Option<(&'static str, Payload)>> = self.shared.slots.lock().map_err(|_| poisoned())?.clone();
        self.shared.barrier.wait();
        if let Ok(mut t) = self.traffic.lock() {
            t.add(what, op, bytes, start.elapsed().as_secs_f64());
        }
        all.into_iter()
            .enumerate()
            .map(|(rank, slot)| match slot {
                Some((w, payload)) if w == what => Ok(payload),
                Some((w, _)) => Err(Error::Ranks(format!(
                    "ranks out of step: rank {} is in {what} while rank {rank} is in {w}",
                    self.rank
                ))),
                None => Err(Error::Ranks(format!("{what}: rank {rank} left nothing"))),
            })
            .collect()
    }
}

fn f32s(p: Payload) -> Vec<f32> {
    match p {
        Payload::F32(v) => v,
        _ => Vec::new(),
    }
}

fn f64s(p: Payload) -> Vec<f64> {
    match p {
        Payload::F64(v) => v,
        _ => Vec::new(),
    }
}

/// Lengths of every rank's buffer must agree for a sum.
fn check_lengths(what: &str, len: usize, others: &[usize]) -> Result<()> {
    match others.iter().position(|&l| l != len) {
        None => Ok(()),
        Some(rank) => Err(Error::Ranks(format!(
            "{what}: rank {rank} gave {} values where this rank gave {len}",
            others[rank]
        ))),
    }
}

impl Collective for Team {
    fn rank(&self) -> usize {
        self.rank
    }

    fn ranks(&self) -> usize {
        self.shared.slots.lock().map_or(0, |s| s.len())
    }

    fn sum_f32(&self, what: &'static str, v: &mut [f32]) -> Result<()> {
        let all: Vec<Vec<f32>> = self
            .round(what, Op::AllReduce, Payload::F32(v.to_vec()), 4 * v.len() as u64)?
            .into_iter()
            .map(f32s)
            .collect();
        check_lengths(what, v.len(), &all.iter().map(Vec::len).collect::<Vec<_>>())?;
        for (i, x) in v.iter_mut().enumerate() {
            *x = all.iter().fold(0.0f32, |s, r| s + r[i]);
        }
        Ok(())
    }

    fn sum_f64(&self, what: &'static str, v: &mut [f64]) -> Result<()> {
        let all: Vec<Vec<f64>> = self
            .round(what, Op::AllReduce, Payload::F64(v.to_vec()), 8 * v.len() as u64)?
            .into_iter()
            .map(f64s)
            .collect();
        check_lengths(what, v.len(), &all.iter().map(Vec::len).collect::<Vec<_>>())?;
        for (i, x) in v.iter_mut().enumerate() {
            *x = all.iter().fold(0.0f64, |s, r| s + r[i]);
        }
        Ok(())
    }

    fn broadcast_f32(&self, what: &'static str, root: usize, v: &mut [f32]) -> Result<()> {
        // as MPI counts it: the root hands its values in, the others receive
        let bytes = if root == self.rank { 4 * v.len() as u64 } else { 0 };
        let all = self.round(what, Op::Broadcast, Payload::F32(v.to_vec()), bytes)?;
        let theirs = f32s(
            all.into_iter()
                .nth(root)
                .ok_or_else(|| Error::Ranks(format!("{what}: no rank {root}")))?,
        );
        check_lengths(what, v.len(), &[theirs.len()])?;
        v.copy_from_slice(&theirs);
        Ok(())
    }

    fn broadcast_bytes(&self, what: &'static str, root: usize, v: &mut Vec<u8>) -> Result<()> {
        let bytes = if root == self.rank { v.len() as u64 } else { 0 };
        let all = self.round(what, Op::Broadcast, Payload::Bytes(v.clone()), bytes)?;
        if let Some(Payload::Bytes(theirs)) = all.into_iter().nth(root) {
            *v = theirs;
        }
        Ok(())
    }

    fn gather_f32(&self, what: &'static str, local: &[f32], counts: &[usize]) -> Result<Vec<f32>> {
        let all: Vec<Vec<f32>> = self
            .round(
                what,
                Op::AllGather,
                Payload::F32(local.to_vec()),
                4 * local.len() as u64,
            )?
            .into_iter()
            .map(f32s)
            .collect();
        for (rank, (part, &count)) in all.iter().zip(counts).enumerate() {
            if part.len() != count {
                return Err(Error::Ranks(format!(
                    "{what}: rank {rank} gave {} values, {count} expected",
                    part.len()
                )));
            }
        }
        Ok(all.concat())
    }

    fn exchange_f32(
        &self,
        what: &'static str,
        send: &[f32],
        send_counts: &[usize],
        recv_counts: &[usize],
    ) -> Result<Vec<f32>> {
        // each rank leaves everything it sends, with its counts; each takes its own piece of
        // every rank's
        let mine = Payload::Pieces(send_counts.to_vec(), send.to_vec());
        let all = self.round(what, Op::AllToAll, mine, 4 * send.len() as u64)?;
        let mut out = Vec::with_capacity(recv_counts.iter().sum());
        for (from, theirs) in all.into_iter().enumerate() {
            let Payload::Pieces(counts, data) = theirs else {
                return Err(Error::Ranks(format!("{what}: rank {from} sent no pieces")));
            };
            let start: usize = counts.iter().take(self.rank).sum();
            let count = counts.get(self.rank).copied().unwrap_or(0);
            if count != recv_counts[from] || start + count > data.len() {
                return Err(Error::Ranks(format!(
                    "{what}: rank {from} sent {count} values, {} expected",
                    recv_counts[from]
                )));
            }
            out.extend_from_slice(&data[start..start + count]);
        }
        Ok(out)
    }

    fn traffic(&self) -> Traffic {
        self.traffic.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on every rank of a team of `ranks` threads; the results in rank order.
    fn on_team<T: Send>(ranks: usize, f: impl Fn(&Team) -> T + Sync) -> Vec<T> {
        let team = Team::new(ranks);
        std::thread::scope(|s| {
            let handles: Vec<_> = team.iter().map(|t| s.spawn(|| f(t))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn sums_broadcasts_gathers_and_exchanges_agree_on_every_rank() {
        let out = on_team(3, |t| {
            let r = t.rank();
            let mut v = vec![r as f64, 1.0];
            t.sum_f64("sum", &mut v).unwrap();
            let mut b = vec![r as f32; 2];
            t.broadcast_f32("broadcast", 2, &mut b).unwrap();
            let counts = [1, 2, 3];
            let g = t.gather_f32("gather", &vec![r as f32; r + 1], &counts).unwrap();
            // rank r sends (10r + to) to every rank `to`, `to + 1` times
            let send_counts: Vec<usize> = (0..3).map(|to| to + 1).collect();
            let send: Vec<f32> = (0..3).flat_map(|to| vec![(10 * r + to) as f32; to + 1]).collect();
            let recv_counts = vec![r + 1; 3];
            let x = t.exchange_f32("exchange", &send, &send_counts, &recv_counts).unwrap();
            (v, b, g, x)
        });
        for (r, (v, b, g, x)) in out.into_iter().enumerate() {
            assert_eq!(v, vec![3.0, 3.0]);
            assert_eq!(b, vec![2.0, 2.0]);
            assert_eq!(g, vec![0.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
            let want: Vec<f32> = (0..3).flat_map(|from| vec![(10 * from + r) as f32; r + 1]).collect();
            assert_eq!(x, want);
        }
    }

    #[test]
    fn ranks_in_different_calls_are_an_error_not_a_wrong_sum() {
        let out = on_team(2, |t| {
            let mut v = [1.0];
            let what = if t.rank() == 0 { "gradient" } else { "loss" };
            t.sum_f64(what, &mut v).map_err(|e| e.to_string())
        });
        assert!(
            out.iter().all(|r| r.as_ref().is_err_and(|e| e.contains("out of step"))),
            "{out:?}"
        );
    }
}
