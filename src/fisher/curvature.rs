//! How natural gradient holds the curvature `A = F + wd·D_W + λI` (F the Fisher of the batch, D_W
//! the weights' diagonal), for models too large for a dense F:
//!
//! - `dense`: F itself, p×p, solved by the GPU's fused CG.
//! - `implicit`: only the score rows G (m×p); `Av = Gᵀ(Gv)/n + Dv` (two passes over G a CG
//!   iteration), never forming F.
//! - `woodbury`: with D = wd·D_W + λI and m < p, the m×m system
//!   `(nI + G D⁻¹ Gᵀ) u = G D⁻¹ g`, then `d = D⁻¹ (g − Gᵀu)`; exact, and cheap when m ≪ p.
//! - `block`: one dense block per layer (the cross-layer curvature dropped), solved separately.
//! - `diagonal`: the mean of the squared scores (the Adam-like approximation); `d = g ⊘ (diag + D)`.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::fisher::{self, FisherKind, SampleKey};
use crate::model::Mlp;
use crate::solve::{self, CgOutcome, CgParams, CgReport, Operator};

/// A curvature representation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CurvatureKind {
    Dense,
    Implicit,
    Woodbury,
    Block,
    Diagonal,
}

impl CurvatureKind {
    pub const ALL: [CurvatureKind; 5] = [
        CurvatureKind::Dense,
        CurvatureKind::Implicit,
        CurvatureKind::Woodbury,
        CurvatureKind::Block,
        CurvatureKind::Diagonal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CurvatureKind::Dense => "dense",
            CurvatureKind::Implicit => "implicit",
            CurvatureKind::Woodbury => "woodbury",
            CurvatureKind::Block => "block",
            CurvatureKind::Diagonal => "diagonal",
        }
    }
}

/// One buffer a representation needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Need {
    pub buffer: &'static str,
    pub shape: String,
    /// Bytes of the largest single piece (what one device buffer must hold).
    pub piece: u64,
    /// Bytes in all.
    pub total: u64,
}

/// The buffers `kind` needs for p parameters, m score rows per step and the layers' parameter
/// counts `blocks`; G's pieces are the chunks a device buffer of `max_buffer` bytes holds.
pub fn needs(kind: CurvatureKind, p: usize, m: usize, blocks: &[usize], max_buffer: u64) -> Vec<Need> {
    let (p64, m64) = (p as u64, m as u64);
    let row = 4 * p.next_multiple_of(4) as u64;
    let g_chunk = (max_buffer / row).clamp(1, m64.max(1)) * row;
    let vector = Need {
        buffer: "vectors (θ, g, d and CG's)",
        shape: format!("8 × {p} f32"),
        piece: 4 * p64,
        total: 32 * p64,
    };
    let mut all = vec![vector];
    match kind {
        CurvatureKind::Dense => {
            all.push(Need {
                buffer: "Fisher matrix F",
                shape: format!("{p}×{p} f32"),
                piece: 4 * p64 * p64,
                total: 4 * p64 * p64,
            });
            all.push(Need {
                buffer: "score rows G (one chunk)",
                shape: format!("≤{m}×{p} f32"),
                piece: g_chunk,
                total: g_chunk,
            });
        }
        CurvatureKind::Implicit | CurvatureKind::Woodbury => {
            all.push(Need {
                buffer: "score rows G",
                shape: format!("{m}×{p} f32"),
                piece: g_chunk,
                total: m64 * row,
            });
            if kind == CurvatureKind::Woodbury {
                all.push(Need {
                    buffer: "Gram matrix GGᵀ",
                    shape: format!("{m}×{m} f32"),
                    piece: 4 * m64 * m64,
                    total: 4 * m64 * m64,
                });
            }
        }
        CurvatureKind::Block => {
            let largest = blocks.iter().map(|&b| 4 * (b as u64).pow(2)).max().unwrap_or(0);
            let sum = blocks.iter().map(|&b| 4 * (b as u64).pow(2)).sum();
            all.push(Need {
                buffer: "per-layer Fisher blocks",
                shape: format!("{blocks:?}² f32"),
                piece: largest,
                total: sum,
            });
            all.push(Need {
                buffer: "score rows G (one chunk)",
                shape: format!("≤{m}×{p} f32"),
                piece: 2 * g_chunk,
                total: 2 * g_chunk,
            });
        }
        CurvatureKind::Diagonal => {
            all.push(Need {
                buffer: "score rows G (one chunk)",
                shape: format!("≤{m}×{p} f32"),
                piece: g_chunk,
                total: g_chunk,
            });
        }
    }
    all
}

/// The first need that does not fit: a piece over the largest buffer, or a total over the memory.
fn misfit(needs: &[Need], max_buffer: u64, memory: u64) -> Option<(Need, &'static str, u64)> {
    let total: u64 = needs.iter().map(|n| n.total).sum();
    if let Some(n) = needs.iter().find(|n| n.piece > max_buffer) {
        return Some((n.clone(), "largest buffer", max_buffer));
    }
    if total > memory {
        let biggest = needs.iter().max_by_key(|n| n.total).cloned()?;
        return Some((Need { total, ..biggest }, "memory available", memory));
    }
    None
}

/// Checks `kind` fits the device; the error names the buffer, its size, the limit, and a
/// representation that would fit.
pub fn check_fits(
    kind: CurvatureKind,
    p: usize,
    m: usize,
    blocks: &[usize],
    max_buffer: u64,
    memory: u64,
) -> Result<()> {
    let Some((need, limit_name, limit)) = misfit(&needs(kind, p, m, blocks, max_buffer), max_buffer, memory) else {
        return Ok(());
    };
    let fits = CurvatureKind::ALL
        .iter()
        .filter(|k| misfit(&needs(**k, p, m, blocks, max_buffer), max_buffer, memory).is_none())
        .map(|k| k.name())
        .collect::<Vec<_>>();
    let advice = if fits.is_empty() {
        "no representation fits: use a smaller model or batch".to_string()
    } else {
        format!("--curvature {} would fit", fits.join(" or "))
    };
    Err(Error::TooLarge {
        buffer: need.buffer,
        shape: format!("{}, with --curvature {}; {advice}", need.shape, kind.name()),
        bytes: if need.piece > limit { need.piece } else { need.total },
        limit_name,
        limit,
    })
}

/// `--curvature auto`: dense while F is small (p ≤ 8192, and it fits); Woodbury when the batch
/// has fewer score rows than parameters; implicit otherwise; diagonal when nothing exact fits.
/// Returns the choice and why.
pub fn choose(p: usize, m: usize, blocks: &[usize], max_buffer: u64, memory: u64) -> (CurvatureKind, String) {
    let fits = |k| misfit(&needs(k, p, m, blocks, max_buffer), max_buffer, memory).is_none();
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let dense_bytes = 4 * (p as u64).pow(2);
    if p <= 8192 && fits(CurvatureKind::Dense) {
        return (
            CurvatureKind::Dense,
            format!("the dense Fisher ({p}×{p}, {:.0} MiB) fits", mib(dense_bytes)),
        );
    }
    let why_not_dense = if p > 8192 {
        format!("{p} parameters make a dense Fisher of {:.0} MiB", mib(dense_bytes))
    } else {
        "the dense Fisher does not fit".into()
    };
    if m < p && fits(CurvatureKind::Woodbury) {
        return (
            CurvatureKind::Woodbury,
            format!("{why_not_dense}; {m} score rows < {p} parameters: an {m}×{m} system"),
        );
    }
    if fits(CurvatureKind::Implicit) {
        return (
            CurvatureKind::Implicit,
            format!("{why_not_dense}; G ({m}×{p}) fits, and F is applied without forming it"),
        );
    }
    (
        CurvatureKind::Diagonal,
        format!("{why_not_dense}, and G ({m}×{p}) does not fit: the diagonal approximation"),
    )
}

/// The layers' parameter ranges: (first parameter, count).
fn layer_ranges(mlp: &Mlp) -> Vec<(usize, usize)> {
    mlp.layers().iter().map(|l| (l.weight, l.len())).collect()
}

/// The parameter counts of the layers (the block sizes).
pub fn block_sizes(mlp: &Mlp) -> Vec<usize> {
    mlp.layers().iter().map(|l| l.len()).collect()
}

enum State<B: Backend> {
    Dense {
        f: B::Matrix,
    },
    /// G kept whole, in chunks of rows (implicit, woodbury)
    Rows {
        chunks: Vec<B::Matrix>,
        gram: Option<B::Matrix>,
        u: Option<B::Vector>,
    },
    Blocks {
        fs: Vec<B::Matrix>,
        ranges: Vec<(usize, usize)>,
    },
    Diagonal {
        diag: B::Vector,
    },
}

/// The curvature of the current batch, held as `kind` says.
pub struct Curvature<B: Backend> {
    kind: CurvatureKind,
    p: usize,
    /// examples in the batch: F = (1/n) GᵀG
    n: usize,
    state: State<B>,
    weight_mask: Vec<f32>,
    /// D = wd·D_W + λI for the last (wd, λ), on the device
    diagonal: Option<(f32, f32, B::Vector)>,
}

impl<B: Backend> Curvature<B> {
    pub fn new(b: &B, kind: CurvatureKind, mlp: &Mlp) -> Result<Self> {
        let p = mlp.num_params();
        let state = match kind {
            CurvatureKind::Dense => State::Dense {
                f: b.zeros_matrix("Fisher matrix F", p, p)?,
            },
            CurvatureKind::Implicit | CurvatureKind::Woodbury => State::Rows {
                chunks: Vec::new(),
                gram: None,
                u: None,
            },
            CurvatureKind::Block => {
                let ranges = layer_ranges(mlp);
                let fs = ranges
                    .iter()
                    .map(|&(_, len)| b.zeros_matrix("per-layer Fisher block", len, len))
                    .collect::<Result<_>>()?;
                State::Blocks { fs, ranges }
            }
            CurvatureKind::Diagonal => State::Diagonal {
                diag: b.zeros_vector("Fisher diagonal", p)?,
            },
        };
        Ok(Self {
            kind,
            p,
            n: 0,
            state,
            weight_mask: mlp.weight_mask(),
            diagonal: None,
        })
    }

    pub fn kind(&self) -> CurvatureKind {
        self.kind
    }

    /// Builds the representation for the batch's last forward pass. Weight decay enters the
    /// dense and block Fishers' diagonals here, and the others' D at the solve.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        &mut self,
        b: &B,
        mlp: &Mlp,
        theta: &B::Vector,
        batch: &mut B::Batch,
        kind: FisherKind,
        key: SampleKey,
        weight_decay: f32,
    ) -> Result<()> {
        let p = self.p;
        self.n = b.batch_size(batch);
        let m = self.n * kind.rows_per_example(mlp.likelihood());
        let chunk = fisher::chunk_rows(b, p, m)?;
        let spans: Vec<(usize, usize)> = (0..m).step_by(chunk).map(|s| (s, (s + chunk).min(m))).collect();
        let scale = 1.0 / self.n as f32;
        match &mut self.state {
            State::Dense { f } => fisher::build(b, mlp, theta, batch, kind, key, weight_decay, f)?,
            State::Rows { chunks, .. } => {
                if chunks.len() != spans.len() || chunks.iter().zip(&spans).any(|(c, s)| b.shape(c).0 != s.1 - s.0) {
                    *chunks = spans
                        .iter()
                        .map(|s| b.zeros_matrix("score rows G", s.1 - s.0, p))
                        .collect::<Result<_>>()?;
                }
                for (c, &(start, end)) in chunks.iter_mut().zip(&spans) {
                    b.score_rows(mlp, theta, batch, kind, key, start..end, c)?;
                }
            }
            State::Blocks { fs, ranges } => {
                for (k, &(start, end)) in spans.iter().enumerate() {
                    let mut rows = b.zeros_matrix("score rows G (one chunk)", end - start, p)?;
                    b.score_rows(mlp, theta, batch, kind, key, start..end, &mut rows)?;
                    for (f, &(first, len)) in fs.iter_mut().zip(ranges.iter()) {
                        let mut columns = b.zeros_matrix("one layer's score columns", end - start, len)?;
                        b.copy_columns(&rows, first, &mut columns)?;
                        b.fisher_accumulate(f, &columns, scale, k > 0)?;
                    }
                }
                if weight_decay != 0.0 {
                    for (f, &(first, len)) in fs.iter_mut().zip(ranges.iter()) {
                        let decay: Vec<f32> = self.weight_mask[first..first + len]
                            .iter()
                            .map(|m| m * weight_decay)
                            .collect();
                        b.add_diagonal(f, &b.upload_vector("weight decay diagonal", &decay)?)?;
                    }
                }
            }
            State::Diagonal { diag } => {
                for (k, &(start, end)) in spans.iter().enumerate() {
                    let mut rows = b.zeros_matrix("score rows G (one chunk)", end - start, p)?;
                    b.score_rows(mlp, theta, batch, kind, key, start..end, &mut rows)?;
                    b.column_sq_sums(&rows, scale, k > 0, diag)?;
                }
            }
        }
        Ok(())
    }

    /// D = wd·D_W + λI, on the device (re-uploaded only when wd or λ change).
    fn diagonal(&mut self, b: &B, damping: f32, weight_decay: f32) -> Result<&B::Vector> {
        let current = match self.diagonal.take() {
            Some(entry) if entry.0 == weight_decay && entry.1 == damping => entry,
            _ => {
                let d: Vec<f32> = self.weight_mask.iter().map(|m| damping + weight_decay * m).collect();
                (weight_decay, damping, b.upload_vector("damping diagonal D", &d)?)
            }
        };
        Ok(&self.diagonal.insert(current).2)
    }

    /// Solves `(F + wd·D_W + λI) d = g` from the `d` given.
    pub fn solve(
        &mut self,
        b: &B,
        damping: f32,
        weight_decay: f32,
        g: &B::Vector,
        d: &mut B::Vector,
        cg: &CgParams,
    ) -> Result<CgReport> {
        let (p, n) = (self.p, self.n);
        match self.kind {
            CurvatureKind::Dense => match &self.state {
                State::Dense { f } => b.cg_solve(f, damping, g, d, cg),
                _ => unreachable!("dense state"),
            },
            CurvatureKind::Block => {
                let State::Blocks { fs, ranges } = &self.state else {
                    unreachable!("block state")
                };
                let gg = b.dot(g, g)?;
                let (mut iterations, mut residual2, mut outcome) = (0, 0.0f64, CgOutcome::Converged);
                for (f, &(first, len)) in fs.iter().zip(ranges.iter()) {
                    let mut gl = b.zeros_vector("block gradient", len)?;
                    let mut dl = b.zeros_vector("block direction", len)?;
                    b.copy_range(g, first, &mut gl, 0, len)?;
                    b.copy_range(d, first, &mut dl, 0, len)?;
                    let report = b.cg_solve(f, damping, &gl, &mut dl, cg)?;
                    b.copy_range(&dl, 0, d, first, len)?;
                    iterations += report.iterations;
                    residual2 += (report.rel_residual as f64).powi(2) * b.dot(&gl, &gl)?;
                    outcome = worse(outcome, report.outcome);
                }
                let rel_residual = if gg > 0.0 { (residual2 / gg).sqrt() as f32 } else { 0.0 };
                Ok(CgReport {
                    iterations,
                    rel_residual,
                    outcome,
                })
            }
            CurvatureKind::Diagonal => {
                let mut denom = b.zeros_vector("diagonal + D", p)?;
                b.copy(self.diagonal(b, damping, weight_decay)?, &mut denom)?;
                let State::Diagonal { diag } = &self.state else {
                    unreachable!("diagonal state")
                };
                b.axpy(1.0, diag, &mut denom)?;
                b.divide(g, &denom, d)?;
                Ok(CgReport {
                    iterations: 0,
                    rel_residual: 0.0,
                    outcome: CgOutcome::Converged,
                })
            }
            CurvatureKind::Implicit => {
                let mut op = self.operator(b, damping, weight_decay)?;
                solve::cg(b, &mut op, None, g, d, cg)
            }
            CurvatureKind::Woodbury => self.woodbury(b, damping, weight_decay, g, d, cg, n),
        }
    }

    /// Woodbury: with S = D^{-1/2} and G̃ = G S, `d = S (S g − G̃ᵀ u)` for `(nI + G̃G̃ᵀ) u = G̃ S g`.
    #[allow(clippy::too_many_arguments)]
    fn woodbury(
        &mut self,
        b: &B,
        damping: f32,
        weight_decay: f32,
        g: &B::Vector,
        d: &mut B::Vector,
        cg: &CgParams,
        n: usize,
    ) -> Result<CgReport> {
        let p = self.p;
        let d_host: Vec<f32> = self.weight_mask.iter().map(|m| damping + weight_decay * m).collect();
        if d_host.iter().any(|v| v.is_nan() || *v <= 0.0) {
            return Err(Error::InvalidArgument {
                name: "--damping",
                reason: "--curvature woodbury needs D = λ + wd (on weights) > 0 everywhere: give --damping > 0".into(),
            });
        }
        let s = b.upload_vector("D^-1/2", &d_host.iter().map(|v| 1.0 / v.sqrt()).collect::<Vec<_>>())?;
        let s_inv = b.upload_vector("D^1/2", &d_host.iter().map(|v| v.sqrt()).collect::<Vec<_>>())?;
        let State::Rows { chunks, gram, u } = &mut self.state else {
            unreachable!("rows state")
        };
        let m: usize = chunks.iter().map(|c| b.shape(c).0).sum();
        for c in chunks.iter_mut() {
            b.scale_columns(c, &s)?;
        }
        let (k, u) = match (gram, u) {
            (Some(k), Some(u)) if b.shape(k).0 == m => (k, u),
            (gram, u) => (
                gram.insert(b.zeros_matrix("Gram matrix GGᵀ", m, m)?),
                u.insert(b.zeros_vector("Woodbury u", m)?),
            ),
        };
        let offsets: Vec<usize> = chunks
            .iter()
            .scan(0, |at, c| {
                let start = *at;
                *at += b.shape(c).0;
                Some(start)
            })
            .collect();
        for (ci, &oi) in chunks.iter().zip(&offsets) {
            for (cj, &oj) in chunks.iter().zip(&offsets) {
                b.gram_block(k, ci, cj, oi, oj)?;
            }
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
        // (it has as large a condition number as the original, so 50 would leave u far off)
        let small = CgParams {
            max_iters: cg.max_iters.max(m),
            ..*cg
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
        for c in chunks.iter_mut() {
            b.scale_columns(c, &s_inv)?;
        }
        // the small system's report; its residual relative to G̃Sg
        Ok(report)
    }

    /// The implicit operator `v ↦ Gᵀ(Gv)/n + D v`.
    fn operator(&mut self, b: &B, damping: f32, weight_decay: f32) -> Result<RowsOperator<'_, B>> {
        self.diagonal(b, damping, weight_decay)?;
        let (Some((_, _, diag)), State::Rows { chunks, .. }) = (&self.diagonal, &self.state) else {
            unreachable!("rows state, D just set")
        };
        Ok(RowsOperator {
            chunks,
            n: self.n,
            diag,
        })
    }

    /// `dᵀ(F + wd·D_W + λI)d`, the trust region's measure of the step.
    pub fn quad(&mut self, b: &B, damping: f32, weight_decay: f32, d: &B::Vector) -> Result<f64> {
        let p = self.p;
        let mut ad = b.zeros_vector("A d", p)?;
        match self.kind {
            CurvatureKind::Dense => {
                let State::Dense { f } = &self.state else {
                    unreachable!("dense state")
                };
                b.matvec(f, damping, d, &mut ad)?;
            }
            CurvatureKind::Block => {
                let State::Blocks { fs, ranges } = &self.state else {
                    unreachable!("block state")
                };
                for (f, &(first, len)) in fs.iter().zip(ranges.iter()) {
                    let (mut dl, mut al) = (b.zeros_vector("block d", len)?, b.zeros_vector("block A d", len)?);
                    b.copy_range(d, first, &mut dl, 0, len)?;
                    b.matvec(f, damping, &dl, &mut al)?;
                    b.copy_range(&al, 0, &mut ad, first, len)?;
                }
            }
            CurvatureKind::Diagonal => {
                b.copy(self.diagonal(b, damping, weight_decay)?, &mut ad)?;
                let State::Diagonal { diag } = &self.state else {
                    unreachable!("diagonal state")
                };
                b.axpy(1.0, diag, &mut ad)?;
                return Ok(b.weighted_dot(d, &ad, d)?);
            }
            CurvatureKind::Implicit | CurvatureKind::Woodbury => {
                let mut op = self.operator(b, damping, weight_decay)?;
                Operator::apply(&mut op, b, d, &mut ad)?;
            }
        }
        Ok(b.dot(d, &ad)?)
    }
}

/// The less favourable of two outcomes.
fn worse(a: CgOutcome, b: CgOutcome) -> CgOutcome {
    let rank = |o| match o {
        CgOutcome::Converged => 0,
        CgOutcome::MaxIterations => 1,
        CgOutcome::Breakdown => 2,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// `v ↦ Gᵀ(Gv)/n + D v` over G's chunks.
struct RowsOperator<'a, B: Backend> {
    chunks: &'a [B::Matrix],
    n: usize,
    diag: &'a B::Vector,
}

impl<B: Backend> Operator<B> for RowsOperator<'_, B> {
    fn apply(&mut self, b: &B, x: &B::Vector, y: &mut B::Vector) -> Result<()> {
        for (k, c) in self.chunks.iter().enumerate() {
            let mut gx = b.zeros_vector("G x", b.shape(c).0)?;
            b.gemv(c, x, &mut gx)?;
            b.gemv_t(c, &gx, 1.0 / self.n as f32, k > 0, y)?;
        }
        b.scale_add(self.diag, x, 1.0, y)
    }
}
