//! `woodbury`: with D = λ + wd on weights and m < p score rows, the m×m system
//! `(nI + G D⁻¹ Gᵀ) u = G D⁻¹ g`, then `d = D⁻¹ (g − Gᵀu)`; exact, and cheap when m ≪ p.

use super::rows::{HeldRows, RowsOperator};
use super::{At, Curvature, CurvatureSettings, DampingDiagonal, Limits, Need, Representation, Shape};
use crate::backend::{Backend, CgParams, CgReport};
use crate::dist::Ranks;
use crate::error::{Error, Result};
use crate::model::Mlp;
use crate::snapshot::{Snapshot, Tensor};
use crate::solve::Operator;

pub struct Woodbury;

impl Representation for Woodbury {
    const NAME: &'static str = "woodbury";

    fn needs(shape: &Shape, limits: &Limits) -> Vec<Need> {
        let m = shape.m as u64;
        vec![
            shape.g_whole(limits),
            Need {
                buffer: "Gram matrix GGᵀ",
                shape: format!("{}×{} f32", shape.m, shape.m),
                piece: 4 * m * m,
                total: 4 * m * m,
            },
        ]
    }

    fn create<'a, B: Backend + 'a>(_: &B, mlp: &Mlp, _: &CurvatureSettings) -> Result<Box<dyn Curvature<B> + 'a>> {
        Ok(Box::new(WoodburySystem::<B> {
            rows: HeldRows::new(),
            gram: None,
            restored: None,
            d: DampingDiagonal::new(mlp),
        }))
    }
}

/// The Gram matrix `k` (m×m) whole on every rank, from each rank's rows of it (the rows of the
/// chunks it owns, which come in rank order).
fn gather_gram<B: Backend>(
    b: &B,
    ranks: Ranks<'_>,
    k: &mut B::Matrix,
    owners: &[usize],
    chunks: &[B::Matrix],
) -> Result<()> {
    let comm = ranks.comm;
    let m = b.shape(k).0;
    let mut rows = vec![0usize; comm.ranks()];
    for (c, &owner) in chunks.iter().zip(owners) {
        rows[owner] += b.shape(c).0;
    }
    let start: usize = rows[..comm.rank()].iter().sum();
    let mine = &b.download_matrix(k)?[start * m..(start + rows[comm.rank()]) * m];
    let sizes: Vec<usize> = rows.iter().map(|r| r * m).collect();
    let all = comm.gather_f32("Woodbury Gram rows", mine, &sizes)?;
    *k = b.upload_matrix("Gram matrix GGᵀ", m, m, &all)?;
    Ok(())
}

struct WoodburySystem<B: Backend> {
    rows: HeldRows<B>,
    /// the m×m Gram matrix and the small system's solution u (its warm start)
    gram: Option<(B::Matrix, B::Vector)>,
    /// a resumed run's u, waiting for the next solve to allocate its system
    restored: Option<Vec<f32>>,
    d: DampingDiagonal<B>,
}

impl<B: Backend> Curvature<B> for WoodburySystem<B> {
    fn build(&mut self, b: &B, at: &mut At<'_, B>) -> Result<()> {
        self.rows.build(b, at)?;
        // the small system couples every pair of rows: each rank holds all of them
        self.rows.gather(b, at.ranks)
    }

    /// With S = D^{-1/2} and G̃ = G S, `d = S (S g − G̃ᵀ u)` for `(nI + G̃G̃ᵀ) u = G̃ S g`.
    fn solve(
        &mut self,
        b: &B,
        at: &mut At<'_, B>,
        damping: f32,
        g: &B::Vector,
        d: &mut B::Vector,
        cg: &CgParams,
    ) -> Result<CgReport> {
        let p = b.len(g);
        let d_host = self.d.host(damping, at.weight_decay);
        if d_host.iter().any(|v| v.is_nan() || *v <= 0.0) {
            return Err(Error::InvalidArgument {
                name: "--damping",
                reason: "--curvature woodbury needs D = λ + wd (on weights) > 0 everywhere: give --damping > 0".into(),
            });
        }
        let s = b.upload_vector("D^-1/2", &d_host.iter().map(|v| 1.0 / v.sqrt()).collect::<Vec<_>>())?;
        let s_inv = b.upload_vector("D^1/2", &d_host.iter().map(|v| v.sqrt()).collect::<Vec<_>>())?;
        let m = self.rows.rows(b);
        let n = self.rows.n;
        let offsets = self.rows.offsets(b);
        for c in self.rows.chunks.iter_mut() {
            b.scale_columns(c, &s)?;
        }
        let (k, u) = match &mut self.gram {
            Some((k, u)) if b.shape(k).0 == m => (k, u),
            gram => {
                let fresh = (
                    b.zeros_matrix("Gram matrix GGᵀ", m, m)?,
                    b.zeros_vector("Woodbury u", m)?,
                );
                let (k, u) = gram.insert(fresh);
                (k, u)
            }
        };
        if let Some(u0) = self.restored.take().filter(|u0| u0.len() == m) {
            *u = b.upload_vector("Woodbury u", &u0)?;
        }
        let chunks = &self.rows.chunks;
        // across ranks each makes the Gram's rows of its own examples, and they are gathered
        let me = at.ranks.comm.rank();
        for ((ci, &oi), &owner) in chunks.iter().zip(&offsets).zip(&self.rows.owners) {
            if owner == me {
                for (cj, &oj) in chunks.iter().zip(&offsets) {
                    b.gram_block(k, ci, cj, oi, oj)?;
                }
            }
        }
        if !at.ranks.is_solo() {
            gather_gram(b, at.ranks, k, &self.rows.owners, chunks)?;
        }
        // h = S g; r = G̃ h
        let mut h = b.zeros_vector("S g", p)?;
        b.scale_add(&s, g, 0.0, &mut h)?;
        let mut r = b.zeros_vector("G̃ S g", m)?;
        for (c, &o) in chunks.iter().zip(&offsets) {
            let rows = b.shape(c).0;
            let mut part = b.zeros_vector("chunk of G̃ S g", rows)?;
            b.gemv(c, &h, &mut part)?;
            b.copy_range(&part, 0, &mut r, o, rows)?;
        }
        // the m×m system is the whole point and cheap when m ≪ p: let CG run up to m iterations
        // (it has as large a condition number as the original, so 50 would leave u far off), and
        // to a 1000× tighter tolerance: d = S(Sg − G̃ᵀu) nearly cancels when λ is small, so u's
        // relative error reaches d magnified (at 1e-3, training on digits stalled near 0.18)
        let small = CgParams {
            max_iters: cg.max_iters.max(m),
            rel_tol: (cg.rel_tol * 1e-3).max(1e-7),
        };
        let report = b.cg_solve(k, n as f32, &r, u, &small)?;
        // h ← h − G̃ᵀu, then d = S h
        for (c, &o) in chunks.iter().zip(&offsets) {
            let rows = b.shape(c).0;
            let mut part = b.zeros_vector("chunk of u", rows)?;
            b.copy_range(u, o, &mut part, 0, rows)?;
            b.gemv_t(c, &part, -1.0, true, &mut h)?;
        }
        b.scale_add(&s, &h, 0.0, d)?;
        // back to G, for the trust region's dᵀAd and the next build
        for c in self.rows.chunks.iter_mut() {
            b.scale_columns(c, &s_inv)?;
        }
        // the small system's report; its residual relative to G̃Sg
        Ok(report)
    }

    fn quad(&mut self, b: &B, at: &mut At<'_, B>, damping: f32, d: &B::Vector) -> Result<f64> {
        let diag = self.d.get(b, damping, at.weight_decay)?;
        // every rank holds all of G: dᵀAd needs no sum across them
        let mut ad = b.zeros_vector("A d", b.len(d))?;
        RowsOperator { rows: &self.rows, diag }.apply(b, d, &mut ad)?;
        b.dot(d, &ad)
    }

    /// The small system's last solution, CG's warm start at the next step.
    fn save(&self, b: &B, snapshot: &mut Snapshot) -> Result<()> {
        if let Some((_, u)) = &self.gram {
            snapshot.put_f32("curvature.woodbury.u", b.download_vector(u)?);
        }
        Ok(())
    }

    fn load(&mut self, _: &B, snapshot: &Snapshot) -> Result<()> {
        self.restored = match snapshot.tensors.get("curvature.woodbury.u") {
            Some(Tensor::F32(u)) => Some(u.clone()),
            _ => None,
        };
        Ok(())
    }
}
