//! `block`: one dense Fisher block per layer, the cross-layer curvature dropped; each block is
//! solved by the device's dense CG on its own.

use std::ops::Range;

use super::{At, Curvature, CurvatureSettings, Limits, Need, Representation, Shape, scores};
use crate::backend::{Backend, CgOutcome, CgParams, CgReport};
use crate::error::Result;
use crate::model::Mlp;

pub struct Block;

impl Representation for Block {
    const NAME: &'static str = "block";

    fn needs(shape: &Shape, limits: &Limits) -> Vec<Need> {
        let bytes = |b: usize| 4 * (b as u64).pow(2);
        let chunk = shape.g_chunk(limits);
        vec![
            Need {
                buffer: "per-layer Fisher blocks",
                shape: format!("{:?}² f32", shape.blocks),
                piece: shape.blocks.iter().map(|&b| bytes(b)).max().unwrap_or(0),
                total: shape.blocks.iter().map(|&b| bytes(b)).sum(),
            },
            // a chunk of G and its columns of one layer
            Need {
                piece: 2 * chunk.piece,
                total: 2 * chunk.total,
                ..chunk
            },
        ]
    }

    fn create<'a, B: Backend + 'a>(b: &B, mlp: &Mlp, _: &CurvatureSettings) -> Result<Box<dyn Curvature<B> + 'a>> {
        let layers: Vec<Range<usize>> = mlp.layers().iter().map(|l| l.weight..l.weight + l.len()).collect();
        let fs = layers
            .iter()
            .map(|r| b.zeros_matrix("per-layer Fisher block", r.len(), r.len()))
            .collect::<Result<_>>()?;
        Ok(Box::new(Blocks::<B> {
            fs,
            layers,
            weight_mask: mlp.weight_mask(),
        }))
    }
}

struct Blocks<B: Backend> {
    fs: Vec<B::Matrix>,
    /// each block's parameters
    layers: Vec<Range<usize>>,
    weight_mask: Vec<f32>,
}

impl<B: Backend> Curvature<B> for Blocks<B> {
    fn build(&mut self, b: &B, at: &mut At<'_, B>) -> Result<()> {
        let scale = 1.0 / b.batch_size(at.batch) as f32;
        let total = scores::total_rows(b, at.mlp, at.batch, at.fisher)?;
        let chunk = scores::chunk_rows(b, at.mlp.num_params(), total)?;
        let (fs, layers) = (&mut self.fs, &self.layers);
        scores::for_each_chunk(b, at.mlp, at.theta, at.batch, at.fisher, at.key, chunk, |rows, g| {
            for (f, layer) in fs.iter_mut().zip(layers) {
                let mut columns = b.zeros_matrix("one layer's score columns", rows.len(), layer.len())?;
                b.copy_columns(g, layer.start, &mut columns)?;
                b.fisher_accumulate(f, &columns, scale, rows.start > 0)?;
            }
            Ok(())
        })?;
        for (f, layer) in self.fs.iter_mut().zip(&self.layers) {
            scores::add_weight_decay(b, &self.weight_mask[layer.clone()], at.weight_decay, f)?;
        }
        // every block in one all-reduce
        at.ranks.mean_symmetric(b, "Fisher blocks", &mut self.fs)
    }

    fn solve(
        &mut self,
        b: &B,
        _: &mut At<'_, B>,
        damping: f32,
        g: &B::Vector,
        d: &mut B::Vector,
        cg: &CgParams,
    ) -> Result<CgReport> {
        // the blocks' systems, solved together: one wait for all their reports
        let mut gs = Vec::with_capacity(self.layers.len());
        let mut ds = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let len = layer.len();
            let mut gl = b.zeros_vector("block gradient", len)?;
            let mut dl = b.zeros_vector("block direction", len)?;
            b.copy_range(g, layer.start, &mut gl, 0, len)?;
            b.copy_range(d, layer.start, &mut dl, 0, len)?;
            gs.push(gl);
            ds.push(dl);
        }
        let mut systems: Vec<_> = self
            .fs
            .iter()
            .zip(&gs)
            .zip(ds.iter_mut())
            .map(|((f, gl), dl)| (f, gl, dl))
            .collect();
        let reports = b.cg_solve_many(&mut systems, damping, cg)?;
        let (mut iterations, mut residual2, mut gg, mut outcome) = (0, 0.0f64, 0.0f64, CgOutcome::Converged);
        for ((report, dl), layer) in reports.iter().zip(&ds).zip(&self.layers) {
            b.copy_range(dl, 0, d, layer.start, layer.len())?;
            iterations += report.iterations;
            residual2 += (report.rel_residual as f64).powi(2) * report.rhs_sq;
            gg += report.rhs_sq;
            outcome = worse(outcome, report.outcome);
        }
        let rel_residual = if gg > 0.0 { (residual2 / gg).sqrt() as f32 } else { 0.0 };
        Ok(CgReport {
            iterations,
            rel_residual,
            rhs_sq: gg,
            outcome,
        })
    }

    fn quad(&mut self, b: &B, _: &mut At<'_, B>, damping: f32, d: &B::Vector) -> Result<f64> {
        let mut ad = b.zeros_vector("A d", b.len(d))?;
        for (f, layer) in self.fs.iter().zip(&self.layers) {
            let len = layer.len();
            let (mut dl, mut al) = (b.zeros_vector("block d", len)?, b.zeros_vector("block A d", len)?);
            b.copy_range(d, layer.start, &mut dl, 0, len)?;
            b.matvec(f, damping, &dl, &mut al)?;
            b.copy_range(&al, 0, &mut ad, layer.start, len)?;
        }
        b.dot(d, &ad)
    }
}

/// The less favourable of two outcomes.
fn worse(a: CgOutcome, b: CgOutcome) -> CgOutcome {
    let rank = |o| match o {
        CgOutcome::Converged => 0,
        CgOutcome::Stalled => 1,
        CgOutcome::MaxIterations => 2,
        CgOutcome::Breakdown => 3,
    };
    if rank(b) > rank(a) { b } else { a }
}
