//! K-FAC's Kronecker factors (Martens & Grosse 2015), shared by the `kfac` representation and the
//! K-FAC preconditioner of matrix-free CG: per layer `A = E[ā āᵀ]` and `S = E[δ δᵀ]` from the
//! device's batch statistics, kept as exponential moving averages in f64 on the host, their
//! eigendecompositions refreshed every `inverse_every` solves, and the inverses of the factored
//! Tikhonov-damped factors `(A + π√γ I)⁻¹`, `(S + √γ/π I)⁻¹` on the device.

use nalgebra::{DMatrix, SymmetricEigen};

use super::At;
use crate::backend::Backend;
use crate::error::Result;
use crate::model::{FisherKind, Mlp};

/// K-FAC's cadences and averaging.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KfacSettings {
    /// Weight of the old factors in their exponential moving average (0: this batch only).
    pub decay: f32,
    /// Solves between refreshes of the factors' eigendecompositions.
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

/// A symmetric factor's eigendecomposition `Q diag(e) Qᵀ`.
struct Eigen {
    q: DMatrix<f64>,
    e: Vec<f64>,
    /// tr/dim: the factor's average eigenvalue, for π
    scale: f64,
}

impl Eigen {
    /// The decomposition of `m` (dim²), or `None` if it holds a non-finite value.
    fn of(m: &[f64], dim: usize) -> Option<Self> {
        if m.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let eig = SymmetricEigen::new(DMatrix::from_row_slice(dim, dim, m));
        // a statistic of outer products is positive semi-definite: negative eigenvalues are
        // rounding
        let e: Vec<f64> = eig.eigenvalues.iter().map(|v| v.max(0.0)).collect();
        let scale = e.iter().sum::<f64>() / dim as f64;
        (e.iter().all(|v| v.is_finite()) && eig.eigenvectors.iter().all(|v| v.is_finite())).then_some(Self {
            q: eig.eigenvectors,
            e,
            scale,
        })
    }

    /// `(M + δI)⁻¹` as f32, row-major.
    fn inverse(&self, delta: f64) -> Vec<f32> {
        let inv = DMatrix::from_diagonal(&nalgebra::DVector::from_iterator(
            self.e.len(),
            self.e.iter().map(|e| 1.0 / (e + delta)),
        ));
        let m = &self.q * inv * self.q.transpose();
        let dim = self.e.len();
        (0..dim * dim).map(|k| m[(k / dim, k % dim)] as f32).collect()
    }
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
    eigen: Vec<(Eigen, Eigen)>,
    solves_since_eigen: usize,
    /// what is inverted
    form: KroneckerForm,
    /// the inverse on the device, and the γ it was made for
    inverses: Option<(f32, Inverse<B>)>,
    dims: Vec<(usize, usize)>,
    /// whether the raised-damping warning was given
    warned: bool,
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
            eigen: Vec::new(),
            solves_since_eigen: 0,
            form,
            inverses: None,
            dims,
            warned: false,
        })
    }

    /// Bytes the factors take on a device for layers `(fan_in, fan_out)`: the batch's statistics
    /// and the inverses.
    pub fn device_bytes(layers: &[(usize, usize)]) -> (u64, u64) {
        let sq = |d: usize| 4 * (d as u64).pow(2);
        let piece = layers.iter().map(|&(i, o)| sq(i + 1).max(sq(o))).max().unwrap_or(0);
        let total = 2 * layers.iter().map(|&(i, o)| sq(i + 1) + sq(o)).sum::<u64>();
        (piece, total)
    }

    /// Folds the batch at `at` into the moving averages.
    pub fn update(&mut self, b: &B, at: &mut At<'_, B>) -> Result<()> {
        let kind = match (at.fisher, self.settings.draws) {
            (FisherKind::Exact, draws) if draws > 0 => FisherKind::Sampled { draws },
            (kind, _) => kind,
        };
        let (a, s) = (&mut self.batch_a, &mut self.batch_s);
        b.kfac_factors(at.mlp, at.theta, at.batch, kind, at.key, a, s)?;
        let download = |ms: &[B::Matrix]| -> Result<Vec<Vec<f64>>> {
            ms.iter()
                .map(|m| Ok(b.download_matrix(m)?.into_iter().map(f64::from).collect()))
                .collect()
        };
        let (a, s) = (download(&self.batch_a)?, download(&self.batch_s)?);
        if a.iter().chain(&s).flatten().any(|v| !v.is_finite()) {
            log::warn!("K-FAC: this batch's factors hold a non-finite value; kept the previous ones");
            return Ok(());
        }
        let decay = self.settings.decay as f64;
        match &mut self.ema {
            None => {
                self.ema = Some((a, s));
                // the first factors: decompose them at the next solve
                self.solves_since_eigen = usize::MAX;
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

    /// Makes the inverses current for damping γ (λ plus weight decay), once per step: the
    /// eigendecompositions are refreshed every `inverse_every` calls. A factor whose
    /// decomposition fails keeps its last one, and says so; with none yet, the step is refused.
    pub fn prepare(&mut self, b: &B, mlp: &Mlp, gamma: f32) -> Result<()> {
        let Some((ema_a, ema_s)) = &self.ema else {
            return Err(no_factors());
        };
        let mut changed = false;
        if self.solves_since_eigen >= self.settings.inverse_every.max(1) {
            let fresh: Vec<Option<(Eigen, Eigen)>> = ema_a
                .iter()
                .zip(ema_s)
                .zip(&self.dims)
                .map(|((a, s), &(da, ds))| Some((Eigen::of(a, da)?, Eigen::of(s, ds)?)))
                .collect();
            if fresh.iter().all(Option::is_some) {
                self.eigen = fresh.into_iter().flatten().collect();
                changed = true;
            } else if self.eigen.is_empty() {
                return Err(crate::error::Error::Gpu(
                    "K-FAC: the first factors could not be decomposed (non-finite values)".into(),
                ));
            } else {
                log::warn!("K-FAC: a factor failed to decompose; kept the last inverses");
            }
            self.solves_since_eigen = 0;
        }
        self.solves_since_eigen = self.solves_since_eigen.saturating_add(1);
        let current = match self.inverses.take() {
            Some(inverses) if !changed && inverses.0 == gamma => inverses,
            _ => {
                let (inverse, raised) = match self.form {
                    KroneckerForm::Factored => self.factored(b, gamma as f64)?,
                    KroneckerForm::Diagonal => self.diagonal(b, mlp, gamma as f64)?,
                };
                if raised && !self.warned {
                    log::warn!(
                        "K-FAC: damping γ = {gamma:e} leaves the curvature singular in f32; raised it where it did"
                    );
                    self.warned = true;
                }
                (gamma, inverse)
            }
        };
        self.inverses = Some(current);
        Ok(())
    }

    /// The factored inverses, and whether the floor raised a damping.
    fn factored(&self, b: &B, gamma: f64) -> Result<(Inverse<B>, bool)> {
        let (mut a, mut s, mut raised) = (Vec::new(), Vec::new(), false);
        for ((ea, es), &(da, ds)) in self.eigen.iter().zip(&self.dims) {
            let (a_inv, s_inv, r) = damped_inverses(ea, es, gamma);
            raised |= r;
            a.push(b.upload_matrix("K-FAC A⁻¹", da, da, &a_inv)?);
            s.push(b.upload_matrix("K-FAC S⁻¹", ds, ds, &s_inv)?);
        }
        Ok((Inverse::Factored { a, s }, raised))
    }

    /// `1/(S_oo A_jj + γ)` from the averaged factors' diagonals, floored at 10⁻⁷ of the largest.
    fn diagonal(&self, b: &B, mlp: &Mlp, gamma: f64) -> Result<(Inverse<B>, bool)> {
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
        Ok((
            Inverse::Diagonal(b.upload_vector("K-FAC diagonal inverse", &scale)?),
            raised,
        ))
    }

    /// `d = M⁻¹ g`, layer by layer, with the γ of the last [`Self::prepare`].
    pub fn apply(&self, b: &B, mlp: &Mlp, g: &B::Vector, d: &mut B::Vector) -> Result<()> {
        match &self.inverses {
            Some((_, Inverse::Factored { a, s })) => b.kronecker_product(mlp, s, a, g, d),
            Some((_, Inverse::Diagonal(scale))) => b.scale_add(scale, g, 0.0, d),
            None => Err(crate::error::Error::InvalidArgument {
                name: "K-FAC",
                reason: "no inverses yet: prepare before applying".into(),
            }),
        }
    }
}

fn no_factors() -> crate::error::Error {
    crate::error::Error::InvalidArgument {
        name: "K-FAC",
        reason: "no factors yet: build before solving".into(),
    }
}

/// Factored Tikhonov damping (Martens & Grosse 2015, §6.3): `A + π√γ I` and `S + (√γ/π) I` with
/// `π = √((tr A / dim A) / (tr S / dim S))`, which balances the two factors' scales. A floor keeps
/// each damped factor invertible in f32 however small γ is: its smallest eigenvalue at least
/// 10⁻⁷ of its largest (a tiny γ on a rank-deficient factor would otherwise make 1/0).
/// Returns the inverses and whether the floor raised a damping.
fn damped_inverses(a: &Eigen, s: &Eigen, gamma: f64) -> (Vec<f32>, Vec<f32>, bool) {
    let pi = if a.scale > 0.0 && s.scale > 0.0 {
        (a.scale / s.scale).sqrt()
    } else {
        1.0
    };
    let root = gamma.sqrt();
    let floor = |e: &Eigen| 1e-7 * e.e.iter().cloned().fold(0.0, f64::max).max(1e-30);
    let (da, ds) = ((pi * root).max(floor(a)), (root / pi).max(floor(s)));
    (a.inverse(da), s.inverse(ds), da > pi * root || ds > root / pi)
}
