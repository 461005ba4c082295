//! Which examples of a batch each rank takes. A natural-gradient batch has two parts, its first
//! `curvature` examples (Martens' curvature mini-batch; the whole batch when there is none) and
//! the rest; each part is cut into contiguous runs, one per rank, whose lengths differ by at most
//! one. A rank's examples are its run of the curvature examples followed by its run of the rest,
//! so its curvature examples are a prefix of its examples (as one process's are of its batch),
//! and they start at a known place among the curvature examples, which keys their label draws.

use std::ops::Range;

use crate::error::{Error, Result};

/// Rank `rank`'s run of `len` items cut among `ranks`.
pub fn run(len: usize, ranks: usize, rank: usize) -> Range<usize> {
    len * rank / ranks..len * (rank + 1) / ranks
}

/// The positions in a batch that one rank takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// its run of the curvature examples (positions `0..curvature` of the batch)
    pub curvature: Range<usize>,
    /// its run of the others (positions `curvature..batch`)
    pub rest: Range<usize>,
    /// the curvature examples of the whole batch
    pub curvature_total: usize,
    /// the examples of the whole batch
    pub total: usize,
}

impl Share {
    /// Rank `rank`'s share of a batch of `batch` examples whose first `curvature` are the
    /// curvature examples (0, or at least `batch`: all of them).
    pub fn of(batch: usize, curvature: usize, ranks: usize, rank: usize) -> Self {
        let c = effective_curvature(batch, curvature);
        let rest = run(batch - c, ranks, rank);
        Self {
            curvature: run(c, ranks, rank),
            rest: c + rest.start..c + rest.end,
            curvature_total: c,
            total: batch,
        }
    }

    /// The positions in the batch, in the order the rank holds them.
    pub fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.curvature.clone().chain(self.rest.clone())
    }

    /// Examples the rank takes.
    pub fn len(&self) -> usize {
        self.curvature.len() + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The curvature examples of a batch of `batch` with `--curvature-batch curvature`.
pub fn effective_curvature(batch: usize, curvature: usize) -> usize {
    if curvature == 0 || curvature >= batch {
        batch
    } else {
        curvature
    }
}

/// Refuses batches that would leave a rank without examples, or without curvature examples:
/// `sizes` are the batch sizes an epoch takes (the last may be short).
pub fn check(sizes: &[usize], curvature: usize, ranks: usize) -> Result<()> {
    for &batch in sizes {
        if batch < ranks {
            return Err(Error::InvalidArgument {
                name: "--batch",
                reason: format!(
                    "a batch of {batch} examples cannot be split across {ranks} ranks (every rank needs one): \
                     take a larger --batch, or one that leaves no short last batch"
                ),
            });
        }
        let c = effective_curvature(batch, curvature);
        if c < ranks {
            return Err(Error::InvalidArgument {
                name: "--curvature-batch",
                reason: format!("{c} curvature examples cannot be split across {ranks} ranks (every rank needs one)"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_position_is_taken_once_with_curvature_prefixes() {
        for (batch, curvature, ranks) in [(200, 0, 2), (197, 50, 3), (7, 3, 3), (10, 10, 4), (5, 9, 5)] {
            let shares: Vec<Share> = (0..ranks).map(|r| Share::of(batch, curvature, ranks, r)).collect();
            let mut seen: Vec<usize> = shares.iter().flat_map(|s| s.positions().collect::<Vec<_>>()).collect();
            seen.sort();
            assert_eq!(seen, (0..batch).collect::<Vec<_>>(), "{batch} {curvature} {ranks}");
            let c = effective_curvature(batch, curvature);
            let lens: Vec<usize> = shares.iter().map(Share::len).collect();
            let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
            assert!(hi - lo <= 2, "balanced: {lens:?}");
            for s in &shares {
                assert!(s.curvature.end <= c && s.rest.start >= c);
                assert_eq!(s.curvature_total, c);
            }
        }
    }

    #[test]
    fn batches_smaller_than_the_ranks_are_refused() {
        assert!(check(&[200, 200, 197], 0, 2).is_ok());
        let short = check(&[200, 1], 0, 2).unwrap_err().to_string();
        assert!(short.contains("--batch") && short.contains("1 examples"), "{short}");
        let few = check(&[200], 1, 2).unwrap_err().to_string();
        assert!(few.contains("--curvature-batch"), "{few}");
    }
}
