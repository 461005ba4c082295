//! The ranks of `mpirun -np N natgrad train ...` (feature `mpi`): MPI's own collectives (rsmpi
//! over the system's MPI, Open MPI on Debian), each started non-blocking and waited for with a
//! bound. A rank that waits longer than `NATGRAD_MPI_TIMEOUT_S` (default 120 s) calls the roll:
//! it asks every rank where it is, on a communicator of its own, and each rank that is waiting in
//! a collective answers. The ranks that do not answer are hung or dead; ranks that answer from
//! other calls are out of step. It says so in one line naming them and ends the job
//! (`MPI_Abort`), so no rank waits forever. A rank that dies is seen by `mpirun` first, which
//! ends the job and names it.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use mpi::Rank;
use mpi::collective::SystemOperation;
use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::request::{Request, Scope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::{Collective, Op, Traffic};
use crate::error::{Error, Result};

/// The bound on one collective's wait, in seconds, unless `NATGRAD_MPI_TIMEOUT_S` says otherwise.
pub const DEFAULT_TIMEOUT_S: f64 = 120.0;

/// Tags of the roll call's messages.
const ROLL: i32 = 7001;
const ANSWER: i32 = 7002;
/// A roll-call message: the caller's collective count and what it waits in, as text.
const NOTE: usize = 96;

/// The bound on a wait: `NATGRAD_MPI_TIMEOUT_S`, a positive number of seconds.
fn timeout() -> Result<Duration> {
    crate::error::seconds_from_env("NATGRAD_MPI_TIMEOUT_S", Duration::from_secs_f64(DEFAULT_TIMEOUT_S))
}

/// Starts the non-blocking collective `$start` (in `$scope`), waits for it within the bound, and
/// counts it as `$what`, an `$op` carrying `$bytes`.
macro_rules! collective {
    ($self:ident, $what:expr, $op:expr, $bytes:expr, |$scope:ident| $start:expr) => {{
        let call = $self.begin();
        let started = Instant::now();
        mpi::request::scope(|$scope| {
            let request = $start;
            $self.wait($what, call, request);
        });
        $self.count($what, $op, $bytes, started);
        Result::<()>::Ok(())
    }};
}

/// This process's rank of an MPI job.
pub struct Mpi {
    world: SimpleCommunicator,
    /// the roll call's own communicator: its messages never meet the collectives'
    roll: SimpleCommunicator,
    local_rank: usize,
    /// ranks on this machine
    local_ranks: usize,
    timeout: Cell<Duration>,
    /// collectives started so far (every rank counts the same calls)
    calls: Cell<u64>,
    traffic: RefCell<Traffic>,
    // last: MPI is finalised when the universe is dropped, after the communicators are freed
    _universe: Universe,
}

impl Mpi {
    /// Joins the MPI job this process was started in, its waits bounded by [`DEFAULT_TIMEOUT_S`]
    /// until [`Mpi::bound_waits`].
    pub fn init() -> Result<Self> {
        let universe = mpi::initialize().ok_or_else(|| Error::Ranks("MPI was already initialised".into()))?;
        let world = universe.world();
        let roll = world.duplicate();
        let local = world.split_shared(world.rank());
        let (local_rank, local_ranks) = (local.rank() as usize, local.size() as usize);
        Ok(Self {
            world,
            roll,
            local_rank,
            local_ranks,
            timeout: Cell::new(Duration::from_secs_f64(DEFAULT_TIMEOUT_S)),
            calls: Cell::new(0),
            traffic: RefCell::new(Traffic::default()),
            _universe: universe,
        })
    }

    /// Bounds every later wait by `NATGRAD_MPI_TIMEOUT_S` (else [`DEFAULT_TIMEOUT_S`]), agreed:
    /// a rank whose setting is not a positive number of seconds stops them all and tells it.
    pub fn bound_waits(&self) -> Result<()> {
        self.timeout.set(super::agree(self, timeout())?);
        Ok(())
    }

    /// Ranks on this machine (this one among them).
    pub fn local_ranks(&self) -> usize {
        self.local_ranks
    }

    /// Ends every rank of the job with `code` after printing `line` (this rank's account of why).
    pub fn abort(&self, line: &str, code: i32) -> ! {
        eprintln!("natgrad: error: {line}");
        self.world.abort(code)
    }

    /// Ends the job with `e`, this rank's alone: what a rank finds wrong with its own part of a
    /// collective the others are entering (they could not be told otherwise).
    fn alone(&self, e: Error) -> ! {
        self.abort(&format!("rank {}: {e}", self.world.rank()), 1)
    }

    /// `check`'s value; its error is this rank's [`Mpi::alone`].
    fn or_abort<T>(&self, check: Result<T>) -> T {
        check.unwrap_or_else(|e| self.alone(e))
    }

    /// The number of the collective now starting (every rank counts the same calls).
    fn begin(&self) -> u64 {
        self.calls.set(self.calls.get() + 1);
        self.calls.get()
    }

    /// Counts a finished collective, an `op` that carried `bytes` and began at `started`.
    fn count(&self, what: &'static str, op: Op, bytes: usize, started: Instant) {
        self.traffic
            .borrow_mut()
            .add(what, op, bytes as u64, started.elapsed().as_secs_f64());
    }

    /// Waits for `request`, answering roll calls meanwhile; past the bound, calls the roll and
    /// ends the job.
    fn wait<'a, D: ?Sized, S: Scope<'a>>(&self, what: &'static str, call: u64, mut request: Request<'a, D, S>) {
        let started = Instant::now();
        let mut polls = 0u64;
        loop {
            request = match request.test() {
                Ok(_) => return,
                Err(pending) => pending,
            };
            polls += 1;
            // spin while the others are close behind, then give the core away: ranks share
            // cores when oversubscribed, and a waiting rank must not slow the one it waits for
            let waited = started.elapsed();
            if waited < Duration::from_micros(50) {
                std::hint::spin_loop();
                continue;
            }
            if polls.is_multiple_of(16) {
                self.answer_roll_calls(what, call);
                if waited >= self.timeout.get() {
                    self.call_roll(what, call, waited);
                }
            }
            if waited < Duration::from_millis(2) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }

    fn note(what: &str, call: u64) -> [u8; NOTE] {
        let mut note = [b' '; NOTE];
        let text = format!("{call} {what}");
        let n = text.len().min(NOTE);
        note[..n].copy_from_slice(&text.as_bytes()[..n]);
        note
    }

    fn read_note(note: &[u8]) -> (u64, String) {
        let text = String::from_utf8_lossy(note).trim().to_string();
        let (call, what) = text.split_once(' ').unwrap_or((&text, ""));
        (call.parse().unwrap_or(0), what.to_string())
    }

    /// Answers every rank that has called the roll, with where this rank waits.
    fn answer_roll_calls(&self, what: &str, call: u64) {
        while let Some((message, status)) = self.roll.any_process().immediate_matched_probe_with_tag(ROLL) {
            let mut theirs = [0u8; NOTE];
            message.matched_receive_into(&mut theirs[..]);
            let mine = Self::note(what, call);
            self.roll
                .process_at_rank(status.source_rank())
                .send_with_tag(&mine[..], ANSWER);
        }
    }

    /// Asks every rank where it is, waits a little for the answers, says which ranks did not
    /// answer or are elsewhere, and ends the job.
    fn call_roll(&self, what: &str, call: u64, waited: Duration) -> ! {
        let (me, ranks) = (self.world.rank(), self.world.size());
        let mine = Self::note(what, call);
        // where each rank said it is; this one is here
        let mut seen: Vec<Option<(u64, String)>> = vec![None; ranks as usize];
        seen[me as usize] = Some((call, what.to_string()));
        mpi::request::scope(|scope| {
            let sent: Vec<_> = (0..ranks)
                .filter(|&r| r != me)
                .map(|r| {
                    self.roll
                        .process_at_rank(r)
                        .immediate_send_with_tag(scope, &mine[..], ROLL)
                })
                .collect();
            let grace = (self.timeout.get() / 4).clamp(Duration::from_millis(500), Duration::from_secs(5));
            let asked = Instant::now();
            while asked.elapsed() < grace && seen.iter().any(Option::is_none) {
                for tag in [ANSWER, ROLL] {
                    while let Some((message, status)) = self.roll.any_process().immediate_matched_probe_with_tag(tag) {
                        let mut theirs = [0u8; NOTE];
                        message.matched_receive_into(&mut theirs[..]);
                        let from: Rank = status.source_rank();
                        if tag == ROLL {
                            // it timed out too: it is alive, and gets this rank's answer
                            self.roll.process_at_rank(from).send_with_tag(&mine[..], ANSWER);
                        }
                        seen[from as usize] = Some(Self::read_note(&theirs));
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let line = verdict(me as usize, what, call, waited, &seen);
            // the sends may never complete (a hung rank never receives): the job ends here
            std::mem::forget(sent);
            self.abort(&line, 1)
        })
    }
}

/// One line saying why rank `me`, waiting `waited` in call `call` (`what`), cannot go on, from
/// where each rank said it is (`None`: no answer).
fn verdict(me: usize, what: &str, call: u64, waited: Duration, seen: &[Option<(u64, String)>]) -> String {
    let secs = waited.as_secs_f64();
    let silent: Vec<String> = (0..seen.len())
        .filter(|&r| seen[r].is_none())
        .map(|r| r.to_string())
        .collect();
    let elsewhere: Vec<String> = seen
        .iter()
        .enumerate()
        .filter_map(|(r, s)| {
            s.as_ref()
                .filter(|(c, _)| *c != call)
                .map(|(c, w)| format!("rank {r} in {w} (call {c})"))
        })
        .collect();
    let at = format!("rank {me} waited {secs:.0} s in {what} (call {call})");
    if !silent.is_empty() {
        let who = if silent.len() == 1 { "rank" } else { "ranks" };
        let also = if elsewhere.is_empty() {
            String::new()
        } else {
            format!("; {}", elsewhere.join(", "))
        };
        format!(
            "{at}: {who} {} did not answer, hung or dead{also} (NATGRAD_MPI_TIMEOUT_S sets the wait)",
            silent.join(", ")
        )
    } else if !elsewhere.is_empty() {
        format!("{at}: the ranks are out of step: {}", elsewhere.join(", "))
    } else {
        format!("{at}: every rank is waiting there and MPI has not completed it")
    }
}

fn counts(what: &str, counts: &[usize]) -> Result<(Vec<i32>, Vec<i32>)> {
    let mut displs = Vec::with_capacity(counts.len());
    let mut at = 0usize;
    for &c in counts {
        displs.push(at);
        at += c;
    }
    let fit = |v: usize| {
        i32::try_from(v).map_err(|_| Error::Ranks(format!("{what}: {v} values are more than one MPI call carries")))
    };
    Ok((
        counts.iter().map(|&c| fit(c)).collect::<Result<_>>()?,
        displs.into_iter().map(fit).collect::<Result<_>>()?,
    ))
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn ranks(&self) -> usize {
        self.world.size() as usize
    }

    fn local_rank(&self) -> usize {
        self.local_rank
    }

    fn sum_f32(&self, what: &'static str, v: &mut [f32]) -> Result<()> {
        let send = v.to_vec();
        collective!(self, what, Op::AllReduce, 4 * v.len(), |scope| self
            .world
            .immediate_all_reduce_into(scope, &send[..], v, SystemOperation::sum()))
    }

    fn sum_f64(&self, what: &'static str, v: &mut [f64]) -> Result<()> {
        let send = v.to_vec();
        collective!(self, what, Op::AllReduce, 8 * v.len(), |scope| self
            .world
            .immediate_all_reduce_into(scope, &send[..], v, SystemOperation::sum()))
    }

    fn broadcast_f32(&self, what: &'static str, root: usize, v: &mut [f32]) -> Result<()> {
        let bytes = if root == self.rank() { 4 * v.len() } else { 0 };
        collective!(self, what, Op::Broadcast, bytes, |scope| self
            .world
            .process_at_rank(root as Rank)
            .immediate_broadcast_into(scope, v))
    }

    fn broadcast_bytes(&self, what: &'static str, root: usize, v: &mut Vec<u8>) -> Result<()> {
        let mut len = [v.len() as u64];
        collective!(self, what, Op::Broadcast, 8, |scope| self
            .world
            .process_at_rank(root as Rank)
            .immediate_broadcast_into(scope, &mut len[..]))?;
        v.resize(len[0] as usize, 0);
        let bytes = if root == self.rank() { v.len() } else { 0 };
        collective!(self, what, Op::Broadcast, bytes, |scope| self
            .world
            .process_at_rank(root as Rank)
            .immediate_broadcast_into(scope, &mut v[..]))
    }

    fn gather_f32(&self, what: &'static str, local: &[f32], all: &[usize]) -> Result<Vec<f32>> {
        // every rank holds the same counts: an error in them is every rank's
        let (c, d) = counts(what, all)?;
        if all.get(self.rank()) != Some(&local.len()) {
            self.alone(Error::Ranks(format!(
                "{what}: this rank gives {} values, its count says {:?}",
                local.len(),
                all.get(self.rank())
            )))
        }
        let mut out = vec![0.0f32; all.iter().sum()];
        let mut recv = PartitionMut::new(&mut out[..], c, d);
        collective!(self, what, Op::AllGather, 4 * local.len(), |scope| self
            .world
            .immediate_all_gather_varcount_into(scope, local, &mut recv))?;
        Ok(out)
    }

    fn exchange_f32(
        &self,
        what: &'static str,
        send: &[f32],
        send_counts: &[usize],
        recv_counts: &[usize],
    ) -> Result<Vec<f32>> {
        // the counts are this rank's own
        let (sc, sd) = self.or_abort(counts(what, send_counts));
        let (rc, rd) = self.or_abort(counts(what, recv_counts));
        let mut out = vec![0.0f32; recv_counts.iter().sum()];
        let sent = Partition::new(send, sc, sd);
        let mut recv = PartitionMut::new(&mut out[..], rc, rd);
        collective!(self, what, Op::AllToAll, 4 * send.len(), |scope| self
            .world
            .immediate_all_to_all_varcount_into(scope, &sent, &mut recv))?;
        Ok(out)
    }

    fn traffic(&self) -> Traffic {
        self.traffic.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_names_the_silent_and_the_strays() {
        let waited = Duration::from_secs(5);
        let seen = vec![Some((7, "gradient".into())), None];
        let line = verdict(0, "gradient", 7, waited, &seen);
        assert!(line.contains("rank 1 did not answer, hung or dead"), "{line}");
        let seen = vec![Some((7, "gradient".into())), Some((8, "loss".into()))];
        let line = verdict(0, "gradient", 7, waited, &seen);
        assert!(line.contains("out of step: rank 1 in loss (call 8)"), "{line}");
        let (call, what) = Mpi::read_note(&Mpi::note("K-FAC factors", 12));
        assert_eq!((call, what.as_str()), (12, "K-FAC factors"));
    }
}
