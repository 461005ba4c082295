//! G kept whole on the device, in chunks of rows that each fit one buffer: what `implicit` and
//! `woodbury` hold, and the product `v ↦ Gᵀ(Gv)/n + Dv` over it.

use super::{At, scores};
use crate::backend::Backend;
use crate::dist::Ranks;
use crate::error::Result;
use crate::solve::Operator;

/// The score rows G of the last build, chunk by chunk, and n (F = (1/n) GᵀG); after
/// [`HeldRows::gather`], every rank's rows, each chunk of one rank's.
pub(crate) struct HeldRows<B: Backend> {
    pub chunks: Vec<B::Matrix>,
    pub n: usize,
    /// the rank whose examples each chunk's rows are of (this one's, before a gather)
    pub owners: Vec<usize>,
}

impl<B: Backend> HeldRows<B> {
    pub fn new() -> Self {
        Self {
            chunks: Vec::new(),
            n: 0,
            owners: Vec::new(),
        }
    }

    /// Makes G at `at`, reusing the chunks when their shapes still fit.
    pub fn build(&mut self, b: &B, at: &mut At<'_, B>) -> Result<()> {
        let p = at.mlp.num_params();
        self.n = b.batch_size(at.batch);
        let total = scores::total_rows(b, at.mlp, at.batch, at.fisher)?;
        let spans = scores::spans(total, scores::chunk_rows(b, p, total)?);
        let reusable =
            self.chunks.len() == spans.len() && self.chunks.iter().zip(&spans).all(|(c, s)| b.shape(c).0 == s.len());
        if !reusable {
            self.chunks = spans
                .iter()
                .map(|s| b.zeros_matrix("score rows G", s.len(), p))
                .collect::<Result<_>>()?;
        }
        for (c, rows) in self.chunks.iter_mut().zip(spans) {
            b.score_rows(at.mlp, at.theta, at.batch, at.fisher, at.key, rows, c)?;
        }
        self.owners = vec![at.ranks.comm.rank(); self.chunks.len()];
        Ok(())
    }

    /// Makes these rows every rank's rows, in rank order (G of the whole batch, on every rank):
    /// the rows are read back, gathered across the ranks, and cut into chunks again.
    pub fn gather(&mut self, b: &B, ranks: Ranks<'_>) -> Result<()> {
        if ranks.is_solo() {
            return Ok(());
        }
        let comm = ranks.comm;
        let p = self.chunks.first().map_or(0, |c| b.shape(c).1);
        let mut counts = vec![0.0; comm.ranks()];
        counts[comm.rank()] = self.rows(b) as f64;
        comm.sum_f64("Woodbury row counts", &mut counts)?;
        let rows: Vec<usize> = counts.iter().map(|&c| c as usize).collect();
        let local: Vec<f32> = b.download_matrices(&self.chunks.iter().collect::<Vec<_>>())?.concat();
        let sizes: Vec<usize> = rows.iter().map(|r| r * p).collect();
        let all = comm.gather_f32("Woodbury score rows", &local, &sizes)?;
        // each rank's rows cut into chunks of their own, so that a chunk has one owner
        let chunk = scores::chunk_rows(b, p, rows.iter().copied().max().unwrap_or(1).max(1))?;
        let (mut chunks, mut owners, mut start) = (Vec::new(), Vec::new(), 0);
        for (owner, &count) in rows.iter().enumerate() {
            for span in scores::spans(count, chunk).into_iter().filter(|s| !s.is_empty()) {
                let (from, to) = ((start + span.start) * p, (start + span.end) * p);
                chunks.push(b.upload_matrix("score rows G", span.len(), p, &all[from..to])?);
                owners.push(owner);
            }
            start += count;
        }
        self.chunks = chunks;
        self.owners = owners;
        self.n = ranks.total;
        Ok(())
    }

    /// The first row of each chunk in G.
    pub fn offsets(&self, b: &B) -> Vec<usize> {
        self.chunks
            .iter()
            .scan(0, |at, c| {
                let start = *at;
                *at += b.shape(c).0;
                Some(start)
            })
            .collect()
    }

    /// Rows of G.
    pub fn rows(&self, b: &B) -> usize {
        self.chunks.iter().map(|c| b.shape(c).0).sum()
    }
}

/// `v ↦ Gᵀ(Gv)/n + D v` over G's chunks.
pub(crate) struct RowsOperator<'a, B: Backend> {
    pub rows: &'a HeldRows<B>,
    pub diag: &'a B::Vector,
}

impl<B: Backend> Operator<B> for RowsOperator<'_, B> {
    fn apply(&mut self, b: &B, x: &B::Vector, y: &mut B::Vector) -> Result<()> {
        for (k, c) in self.rows.chunks.iter().enumerate() {
            let mut gx = b.zeros_vector("G x", b.shape(c).0)?;
            b.gemv(c, x, &mut gx)?;
            b.gemv_t(c, &gx, 1.0 / self.rows.n as f32, k > 0, y)?;
        }
        b.scale_add(self.diag, x, 1.0, y)
    }
}
