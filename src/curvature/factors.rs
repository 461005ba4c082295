//! K-FAC's Kronecker factors (Martens & Grosse 2015), shared by the `kfac` representation and the
//! preconditioners of matrix-free CG: per layer `A = E[ā āᵀ]` and `S = E[δ δᵀ]` from the
//! device's batch statistics, kept as exponential moving averages in f64 on the host, and every
//! `inverse_every` solves (or when the damping changes) the inverses of the factored
//! Tikhonov-damped factors `(A + π√γ I)⁻¹`, `(S + √γ/π I)⁻¹` by Cholesky in f64 (faer), on the
//! device.

use faer::linalg::solvers::DenseSolveCore;
use faer::{Mat, Side};

use super::{At, Need, Shape};
use crate::backend::Backend;
use crate::dist::{Collective, fill_symmetric, upper_triangle};
use crate::error::{Error, Result};
use crate::model::{FisherKind, Mlp};
use crate::snapshot::Snapshot;

/// K-FAC's cadences and averaging.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KfacSettings {
    /// Weight of the old factors in their exponential moving average (0: this batch only).
    pub decay: f32,
    /// Solves between refreshes of the factors' inverses.
    pub inverse_every: usize,
    /// Under the exact Fisher, S's expectation over the model's labels is estimated from this
    /// many labels drawn per example (an unbiased estimate the moving average smooths; C times
    /// cheaper than the C-class expectation); 0 takes the expectation in closed form.
    pub draws: u32,
}

impl Default for KfacSettings {
    fn default() -> Self {
        Self {
            decay: 0.95,
            inverse_every: 10,
            draws: 1,
        }
    }
}

/// What the factors hold on a device, and the passes that make them: per layer the batch's
/// statistics and the inverses, and the backward scratch and tangents of the batch.
pub fn needs(shape: &Shape) -> Vec<Need> {
    let sq = |d: usize| 4 * (d as u64).pow(2);
    let layers = &shape.layers;
    vec![
        shape.pass_scratch(),
        Need {
            buffer: "K-FAC factors and their inverses",
            shape: format!("{} layers", layers.len()),
            piece: layers.iter().map(|&(i, o)| sq(i + 1).max(sq(o))).max().unwrap_or(0),
            total: 2 * layers.iter().map(|&(i, o)| sq(i + 1) + sq(o)).sum::<u64>(),
        },
    ]
}

/// `(M + δI)⁻¹` of a symmetric positive semi-definite `dim × dim` matrix, by Cholesky in f64
/// (faer's blocked factorisation: a 1025² factor in about 40 ms here), as f32. Where f64 finds
/// `M + δI` not positive definite (δ tiny on a singular factor, rounding), δ grows tenfold from
/// 10⁻⁷ of M's mean diagonal until it is; the δ used is returned.
fn damped_inverse(m: &[f64], dim: usize, delta: f64) -> Option<(Vec<f32>, f64)> {
    if m.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let scale = (0..dim).map(|i| m[i * dim + i]).sum::<f64>() / dim as f64;
    let mut delta = delta.max(0.0);
    for _ in 0..40 {
        let damped = Mat::<f64>::from_fn(dim, dim, |i, j| m[i * dim + j] + if i == j { delta } else { 0.0 });
        if let Ok(llt) = damped.llt(Side::Lower) {
            let inverse = llt.inverse();
            let out: Vec<f32> = (0..dim * dim).map(|k| inverse[(k / dim, k % dim)] as f32).collect();
            if out.iter().all(|v| v.is_finite()) {
                return Some((out, delta));
            }
        }
        delta = (delta * 10.0).max(1e-7 * scale.max(f64::MIN_POSITIVE));
    }
    None
}

/// What of the Kronecker-factored curvature is inverted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KroneckerForm {
    /// `(A + π√γ I)⁻¹ ⊗ (S + √γ/π I)⁻¹` (Martens & Grosse 2015, §6.3): K-FAC's step, two small
    /// products per layer.
    Factored,
    /// Only the diagonal, `1/(S_oo A_jj + γ)`: a Jacobi preconditioner from the same statistics.
    Diagonal,
}

/// The inverse of the damped Kronecker-factored curvature, on the device.
enum Inverse<B: Backend> {
    Factored {
        a: Vec<B::Matrix>,
        s: Vec<B::Matrix>,
    },
    /// the diagonal's inverse, in the parameters' layout
    Diagonal(B::Vector),
}

/// Per layer, the moving averages of A and of S, row-major f64.
type Averages = (Vec<Vec<f64>>, Vec<Vec<f64>>);

/// The per-layer Kronecker factors of a model on a device.
pub(crate) struct KroneckerFactors<B: Backend> {
    settings: KfacSettings,
    /// this batch's statistics, on the device
    batch_a: Vec<B::Matrix>,
    batch_s: Vec<B::Matrix>,
    /// the moving averages, f64 on the host (None before the first batch)
    ema: Option<Averages>,
    /// solves since the inverses were made (past `inverse_every`, they are made again)
    solves_since_inverse: usize,
    /// what is inverted
    form: KroneckerForm,
    /// the inverse on the device, and the γ it was made for
    inverses: Option<(f32, Inverse<B>)>,
    dims: Vec<(usize, usize)>,
    /// whether the raised-damping warning was given
    warned: bool,
    /// this batch's statistics on their way back to the host (see [`KroneckerFactors::record`])
    pending: Option<B::Pending>,
}

impl<B: Backend> KroneckerFactors<B> {
    pub fn new(b: &B, mlp: &Mlp, settings: KfacSettings, form: KroneckerForm) -> Result<Self> {
        let dims: Vec<(usize, usize)> = mlp.layers().iter().map(|l| (l.fan_in + 1, l.fan_out)).collect();
        let zeros = |what, dim| b.zeros_matrix(what, dim, dim);
        Ok(Self {
            settings,
            batch_a: dims
                .iter()
                .map(|d| zeros("K-FAC factor A", d.0))
                .collect::<Result<_>>()?,
            batch_s: dims
                .iter()
                .map(|d| zeros("K-FAC factor S", d.1))
                .collect::<Result<_>>()?,
            ema: None,
            solves_since_inverse: usize::MAX,
            form,
            inverses: None,
            dims,
            warned: false,
            pending: None,
        })
    }

    /// Records the batch's statistics at `at` and their read-back, to be folded in by
    /// [`KroneckerFactors::update`]: recorded before the step's first wait, they come back with
    /// the loss instead of costing a wait of their own.
    pub fn record(&mut self, b: &B, at: &mut At<'_, B>) -> Result<()> {
        let kind = match (at.fisher, self.settings.draws) {
            (FisherKind::Exact, draws) if draws > 0 => FisherKind::Sampled { draws },
            (kind, _) => kind,
        };
        let (a, s) = (&mut self.batch_a, &mut self.batch_s);
        b.kfac_factors(at.mlp, at.theta, at.batch, kind, at.key, a, s)?;
        let all: Vec<&B::Matrix> = self.batch_a.iter().chain(&self.batch_s).collect();
        self.pending = Some(b.download_matrices_later(&all)?);
        Ok(())
    }

    /// Folds the batch at `at` into the moving averages (its statistics as
    /// [`KroneckerFactors::record`] left them, or made now).
    pub fn update(&mut self, b: &B, at: &mut At<'_, B>) -> Result<()> {
        if self.pending.is_none() {
            self.record(b, at)?;
        }
        let pending = self.pending.take().ok_or_else(no_factors)?;
        let mut stats = b.collect(pending)?;
        if !at.ranks.is_solo() {
            // the batch's statistics from the ranks' means: in f32, as the device made them, and
            // only their upper triangles (they are symmetric)
            let dims: Vec<usize> = self
                .dims
                .iter()
                .map(|d| d.0)
                .chain(self.dims.iter().map(|d| d.1))
                .collect();
            let mut packed: Vec<f32> = stats
                .iter()
                .zip(&dims)
                .flat_map(|(m, &d)| upper_triangle(m, d))
                .collect();
            at.ranks.mean_f32("K-FAC factors", &mut packed)?;
            let mut start = 0;
            for (m, &d) in stats.iter_mut().zip(&dims) {
                let len = d * (d + 1) / 2;
                fill_symmetric(m, &packed[start..start + len], d);
                start += len;
            }
        }
        let mut host: Vec<Vec<f64>> = stats
            .into_iter()
            .map(|m| m.into_iter().map(f64::from).collect())
            .collect();
        let s = host.split_off(self.batch_a.len());
        let a = host;
        if a.iter().chain(&s).flatten().any(|v| !v.is_finite()) {
            log::warn!("K-FAC: this batch's factors hold a non-finite value; kept the previous ones");
            return Ok(());
        }
        let decay = self.settings.decay as f64;
        match &mut self.ema {
            None => {
                self.ema = Some((a, s));
                // the first factors: invert them at the next solve
                self.solves_since_inverse = usize::MAX;
            }
            Some((ema_a, ema_s)) => {
                for (old, new) in ema_a.iter_mut().chain(ema_s.iter_mut()).zip(a.iter().chain(&s)) {
                    old.iter_mut()
                        .zip(new)
                        .for_each(|(o, n)| *o = decay * *o + (1.0 - decay) * n);
                }
            }
        }
        Ok(())
    }

    /// Makes the inverses current for damping γ (λ plus weight decay), once per step: they are
    /// made again every `inverse_every` calls and whenever γ changes. A factor that cannot be
    /// inverted keeps the last inverses and says so; with none yet, the step is refused.
    pub fn prepare(&mut self, b: &B, mlp: &Mlp, gamma: f32, comm: &dyn Collective) -> Result<()> {
        let due = self.solves_since_inverse >= self.settings.inverse_every.max(1);
        self.solves_since_inverse = self.solves_since_inverse.saturating_add(1);
        if !due && self.inverses.as_ref().is_some_and(|inv| inv.0 == gamma) {
            return Ok(());
        }
        let made = match self.form {
            KroneckerForm::Factored => self.factored(b, gamma as f64, comm)?,
            KroneckerForm::Diagonal => self.diagonal(b, mlp, gamma as f64)?,
        };
        match made {
            Some((inverse, raised)) => {
                if raised && !self.warned {
                    log::warn!("K-FAC: damping γ = {gamma:e} leaves a factor singular; raised it for that factor");
                    self.warned = true;
                }
                self.inverses = Some((gamma, inverse));
                self.solves_since_inverse = 1;
            }
            None if self.inverses.is_some() => {
                log::warn!("K-FAC: a factor could not be inverted; kept the last inverses");
            }
            None => {
                return Err(Error::InvalidArgument {
                    name: "K-FAC",
                    reason: "the first factors could not be inverted (non-finite values)".into(),
                });
            }
        }
        Ok(())
    }

    /// Factored Tikhonov damping (Martens & Grosse 2015, §6.3): `(A + π√γ I)⁻¹` and
    /// `(S + √γ/π I)⁻¹` with `π = √((tr A / dim A) / (tr S / dim S))`, which balances the two
    /// factors' scales. `None` if a factor cannot be inverted; the flag says whether a damping
    /// had to be raised. Across ranks each factor is inverted by one rank (the largest first, each
    /// to the least loaded, as KAISA spreads them) and sent to the others.
    fn factored(&self, b: &B, gamma: f64, comm: &dyn Collective) -> Result<Option<(Inverse<B>, bool)>> {
        let Some((ema_a, ema_s)) = &self.ema else {
            return Err(no_factors());
        };
        // per layer A then S: (factor, its dimension, its damping)
        let mut factors: Vec<(&[f64], usize, f64)> = Vec::with_capacity(2 * self.dims.len());
        for ((fa, fs), &(da, ds)) in ema_a.iter().zip(ema_s).zip(&self.dims) {
            let mean_diag = |m: &[f64], dim: usize| (0..dim).map(|i| m[i * dim + i]).sum::<f64>() / dim as f64;
            let (ta, ts) = (mean_diag(fa, da), mean_diag(fs, ds));
            let pi = if ta > 0.0 && ts > 0.0 { (ta / ts).sqrt() } else { 1.0 };
            let root = gamma.sqrt();
            factors.push((fa, da, pi * root));
            factors.push((fs, ds, root / pi));
        }
        let owners = factor_owners(&factors.iter().map(|f| f.1).collect::<Vec<_>>(), comm.ranks());
        // each as [made, raised, inverse…]: first every rank inverts its own, then all are sent
        let mut made: Vec<Vec<f32>> = factors
            .iter()
            .zip(&owners)
            .map(|(&(m, dim, delta), &owner)| {
                let mut out = vec![0.0f32; 2 + dim * dim];
                if owner == comm.rank()
                    && let Some((inverse, used)) = damped_inverse(m, dim, delta)
                {
                    out[0] = 1.0;
                    out[1] = if used > delta { 1.0 } else { 0.0 };
                    out[2..].copy_from_slice(&inverse);
                }
                out
            })
            .collect();
        let (mut a, mut s, mut raised) = (Vec::new(), Vec::new(), false);
        for (k, (out, &owner)) in made.iter_mut().zip(&owners).enumerate() {
            comm.broadcast_f32("K-FAC inverses", owner, out)?;
            if out[0] == 0.0 {
                return Ok(None);
            }
            raised |= out[1] != 0.0;
            let dim = factors[k].1;
            if k % 2 == 0 {
                a.push(b.upload_matrix("K-FAC A⁻¹", dim, dim, &out[2..])?);
            } else {
                s.push(b.upload_matrix("K-FAC S⁻¹", dim, dim, &out[2..])?);
            }
        }
        Ok(Some((Inverse::Factored { a, s }, raised)))
    }

    /// `1/(S_oo A_jj + γ)` from the averaged factors' diagonals, floored at 10⁻⁷ of the largest.
    fn diagonal(&self, b: &B, mlp: &Mlp, gamma: f64) -> Result<Option<(Inverse<B>, bool)>> {
        let Some((ema_a, ema_s)) = &self.ema else {
            return Err(no_factors());
        };
        let mut scale = vec![0.0f32; mlp.num_params()];
        let mut raised = false;
        for ((a, s), layer) in ema_a.iter().zip(ema_s).zip(mlp.layers()) {
            let (wa, ws) = (layer.fan_in + 1, layer.fan_out);
            let diag_a: Vec<f64> = (0..wa).map(|j| a[j * wa + j]).collect();
            let diag_s: Vec<f64> = (0..ws).map(|o| s[o * ws + o]).collect();
            let largest = diag_a.iter().cloned().fold(0.0, f64::max) * diag_s.iter().cloned().fold(0.0, f64::max);
            let floor = 1e-7 * largest.max(1e-30);
            for (o, s_o) in diag_s.iter().enumerate() {
                for (j, a_j) in diag_a.iter().enumerate() {
                    let value = s_o * a_j + gamma;
                    raised |= value < floor;
                    let index = if j < layer.fan_in {
                        layer.weight + o * layer.fan_in + j
                    } else {
                        layer.bias + o
                    };
                    scale[index] = (1.0 / value.max(floor)) as f32;
                }
            }
        }
        Ok(Some((
            Inverse::Diagonal(b.upload_vector("K-FAC diagonal inverse", &scale)?),
            raised,
        )))
    }

    /// Writes the averaged factors (f64), the inverses in use (f32, as on the device) and the
    /// refresh counter under `prefix`.
    pub fn save(&self, b: &B, snapshot: &mut Snapshot, prefix: &str) -> Result<()> {
        if let Some((ema_a, ema_s)) = &self.ema {
            for (l, (a, s)) in ema_a.iter().zip(ema_s).enumerate() {
                snapshot.put_f64(format!("{prefix}.{l}.A"), a.clone());
                snapshot.put_f64(format!("{prefix}.{l}.S"), s.clone());
            }
        }
        match &self.inverses {
            Some((gamma, Inverse::Factored { a, s })) => {
                snapshot.put(format!("{prefix}.gamma"), gamma);
                for (l, (a, s)) in a.iter().zip(s).enumerate() {
                    snapshot.put_f32(format!("{prefix}.{l}.A_inverse"), b.download_matrix(a)?);
                    snapshot.put_f32(format!("{prefix}.{l}.S_inverse"), b.download_matrix(s)?);
                }
            }
            Some((gamma, Inverse::Diagonal(scale))) => {
                snapshot.put(format!("{prefix}.gamma"), gamma);
                snapshot.put_f32(format!("{prefix}.diagonal_inverse"), b.download_vector(scale)?);
            }
            None => {}
        }
        snapshot.put(format!("{prefix}.solves_since_inverse"), self.solves_since_inverse);
        snapshot.put(format!("{prefix}.warned"), self.warned);
        Ok(())
    }

    /// Restores what [`Self::save`] wrote.
    pub fn load(&mut self, b: &B, snapshot: &Snapshot, prefix: &str) -> Result<()> {
        self.solves_since_inverse = snapshot.get(&format!("{prefix}.solves_since_inverse"))?;
        self.warned = snapshot.get(&format!("{prefix}.warned"))?;
        let dims = self.dims.clone();
        if snapshot.has(&format!("{prefix}.0.A")) {
            let (mut ema_a, mut ema_s) = (Vec::new(), Vec::new());
            for (l, &(da, ds)) in dims.iter().enumerate() {
                ema_a.push(snapshot.f64s(&format!("{prefix}.{l}.A"), da * da)?);
                ema_s.push(snapshot.f64s(&format!("{prefix}.{l}.S"), ds * ds)?);
            }
            self.ema = Some((ema_a, ema_s));
        }
        self.inverses = None;
        if let Ok(gamma) = snapshot.get::<f32>(&format!("{prefix}.gamma")) {
            let inverse = match self.form {
                KroneckerForm::Factored => {
                    let (mut a, mut s) = (Vec::new(), Vec::new());
                    for (l, &(da, ds)) in dims.iter().enumerate() {
                        let name_a = format!("{prefix}.{l}.A_inverse");
                        let name_s = format!("{prefix}.{l}.S_inverse");
                        a.push(b.upload_matrix("K-FAC A⁻¹", da, da, &snapshot.f32s(&name_a, da * da)?)?);
                        s.push(b.upload_matrix("K-FAC S⁻¹", ds, ds, &snapshot.f32s(&name_s, ds * ds)?)?);
                    }
                    Inverse::Factored { a, s }
                }
                KroneckerForm::Diagonal => {
                    let p = dims.iter().map(|&(da, ds)| da * ds).sum();
                    let scale = snapshot.f32s(&format!("{prefix}.diagonal_inverse"), p)?;
                    Inverse::Diagonal(b.upload_vector("K-FAC diagonal inverse", &scale)?)
                }
            };
            self.inverses = Some((gamma, inverse));
        }
        Ok(())
    }

    /// `d = M⁻¹ g`, layer by layer, with the γ of the last [`Self::prepare`]. Across the ranks
    /// of `comm`, where sharing the layers out saves at least a quarter of the work, each rank
    /// makes the layers it owns and the ranks gather them, so every rank holds the whole d.
    pub fn apply(&self, b: &B, mlp: &Mlp, g: &B::Vector, d: &mut B::Vector, comm: &dyn Collective) -> Result<()> {
        match &self.inverses {
            Some((_, Inverse::Factored { a, s })) if let Some(owner) = layer_owners(mlp, comm.ranks()) => {
                let mine: Vec<bool> = owner.iter().map(|&o| o == comm.rank()).collect();
                b.kronecker_product(mlp, s, a, g, d, &mine)?;
                // a layer's weight and bias are one span of the parameters
                let spans: Vec<std::ops::Range<usize>> =
                    mlp.layers().iter().map(|l| l.weight..l.bias + l.fan_out).collect();
                let made = b.download_vector(d)?;
                let local: Vec<f32> = spans
                    .iter()
                    .zip(&mine)
                    .filter(|(_, m)| **m)
                    .flat_map(|(span, _)| made[span.clone()].iter().copied())
                    .collect();
                let mut counts = vec![0; comm.ranks()];
                for (span, &o) in spans.iter().zip(&owner) {
                    counts[o] += span.len();
                }
                let all = comm.gather_f32("K-FAC direction", &local, &counts)?;
                let mut whole = vec![0.0f32; made.len()];
                let mut at = 0;
                for rank in 0..comm.ranks() {
                    for (span, _) in spans.iter().zip(&owner).filter(|(_, o)| **o == rank) {
                        whole[span.clone()].copy_from_slice(&all[at..at + span.len()]);
                        at += span.len();
                    }
                }
                *d = b.upload_vector("K-FAC direction", &whole)?;
                Ok(())
            }
            Some((_, Inverse::Factored { a, s })) => b.kronecker_product(mlp, s, a, g, d, &vec![true; a.len()]),
            Some((_, Inverse::Diagonal(scale))) => b.scale_add(scale, g, 0.0, d),
            None => Err(Error::InvalidArgument {
                name: "K-FAC",
                reason: "no inverses yet: prepare before applying".into(),
            }),
        }
    }
}

/// Which rank applies each layer's inverse factors in K-FAC's step (the costliest layer first,
/// its two products costing out·(in+1)·(in+1+out), each to the least loaded rank), where that
/// saves at least a quarter of the work: `None` in one process, or when one layer outweighs the
/// rest (every rank then applies them all, and nothing is gathered).
fn layer_owners(mlp: &Mlp, ranks: usize) -> Option<Vec<usize>> {
    if ranks < 2 {
        return None;
    }
    let cost: Vec<f64> = mlp
        .layers()
        .iter()
        .map(|l| (l.fan_out * (l.fan_in + 1) * (l.fan_in + 1 + l.fan_out)) as f64)
        .collect();
    let owner = least_loaded(&cost, ranks);
    let mut load = vec![0.0; ranks];
    for (c, &o) in cost.iter().zip(&owner) {
        load[o] += c;
    }
    let most = load.iter().copied().fold(0.0, f64::max);
    (most <= 0.75 * cost.iter().sum::<f64>()).then_some(owner)
}

/// Each job of `cost` to a rank, the costliest first, each to the rank with the least so far
/// (longest-processing-time scheduling); ties go to the lowest rank.
fn least_loaded(cost: &[f64], ranks: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..cost.len()).collect();
    order.sort_by(|&i, &j| cost[j].total_cmp(&cost[i]));
    let mut load = vec![0f64; ranks.max(1)];
    let mut owner = vec![0; cost.len()];
    for k in order {
        let least = (0..load.len())
            .min_by(|&i, &j| load[i].total_cmp(&load[j]))
            .unwrap_or(0);
        owner[k] = least;
        load[least] += cost[k];
    }
    owner
}

/// Which rank inverts each factor of dimension `dims[k]`: the largest first, each to the rank with
/// the least work so far (a Cholesky costs dim³); rank 0 alone in one process.
fn factor_owners(dims: &[usize], ranks: usize) -> Vec<usize> {
    least_loaded(&dims.iter().map(|&d| (d as f64).powi(3)).collect::<Vec<_>>(), ranks)
}

fn no_factors() -> Error {
    Error::InvalidArgument {
        name: "K-FAC",
        reason: "no factors yet: build before solving".into(),
    }
}
