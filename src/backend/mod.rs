//! The interface both devices implement, as op families: the trainer, the tests and the benches
//! see only these traits, so every GPU kernel has a CPU twin that answers the same calls. A device
//! is read and extended one family at a time; each family's implementation sits in the device's
//! file of the same name (`src/gpu/<family>.rs`, `src/cpu/<family>.rs`).
//!
//! | trait | what | kernels |
//! |---|---|---|
//! | [`Buffers`] | allocation, transfer, shapes, copies, synchronisation | |
//! | [`BlasOps`] | vectors, symmetric and general matrix-vector products | `linalg`, `blas2` |
//! | [`FisherOps`] | `F ← F + s·GᵀG`, exactly symmetric | `fisher` |
//! | [`CgOps`] | the dense damped CG solve | `cg` |
//! | [`MlpOps`] | batches, forward pass, loss, gradient, score rows | `mlp`, `matmul` |
//! | [`OptimOps`] | the elementwise optimiser updates | `optim` |
//!
//! Matrices are row-major f32 (`rows × cols`); vectors are f32. GPU implementations may run
//! asynchronously: operations are queued in order, and only downloads (and dot products, the CG
//! report, [`Buffers::synchronize`]) wait for the device.

pub mod cg;
mod check;
pub mod optim;
pub mod profiled;

pub use cg::{CgOutcome, CgParams, CgReport, Operator, Preconditioner};
pub use check::*;
pub use optim::AdamStep;

use std::ops::Range;

use crate::error::Result;
use crate::model::{FisherKind, Mlp, SampleKey};

/// Every op family: what the trainer needs of a device.
pub trait Backend: BlasOps + FisherOps + CgOps + MlpOps + OptimOps {}

impl<T: BlasOps + FisherOps + CgOps + MlpOps + OptimOps> Backend for T {}

/// The traits to import for calling backend methods on a concrete device.
pub mod prelude {
    pub use super::{Backend, BlasOps, Buffers, CgOps, FisherOps, MlpOps, OptimOps};
}

/// Mean negative log-likelihood and accuracy over a batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchLoss {
    /// −(1/n) Σ log p(y_i | x_i, θ)
    pub loss: f64,
    /// Fraction predicted right (classification; 0 for regression).
    pub accuracy: f64,
    pub examples: usize,
}

/// Submissions and host waits a device has made since it was opened (a GPU's; the CPU has none):
/// what decides a small model's step time on a real GPU, reported per step by a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncCounts {
    /// Command buffers submitted to the device's queue.
    pub submissions: u64,
    /// Times the host waited for the device: read-backs, timings, synchronisations.
    pub host_syncs: u64,
}

impl SyncCounts {
    /// Adds `submissions` and `host_syncs`.
    pub fn add(&mut self, submissions: u64, host_syncs: u64) {
        self.submissions += submissions;
        self.host_syncs += host_syncs;
    }

    /// The counts from `before` to `self`.
    pub fn since(self, before: SyncCounts) -> SyncCounts {
        SyncCounts {
            submissions: self.submissions - before.submissions,
            host_syncs: self.host_syncs - before.host_syncs,
        }
    }
}

/// The phases of a training step, as the code that records its work labels them: what
/// `natgrad train --profile` charges time to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// the batch's upload and forward pass
    Forward,
    /// the gradient, and the step's read-back of loss and ‖g‖
    Gradient,
    /// score rows G
    Scores,
    /// the curvature's build: the Fisher, its blocks, K-FAC's statistics and inverses
    Fisher,
    /// solving for the direction
    Solve,
    /// the trust region's dᵀAd and the move of θ
    Update,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Forward,
        Phase::Gradient,
        Phase::Scores,
        Phase::Fisher,
        Phase::Solve,
        Phase::Update,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Gradient => "gradient",
            Phase::Scores => "scores",
            Phase::Fisher => "fisher",
            Phase::Solve => "solve",
            Phase::Update => "update",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a training step reads back of the device, read together (one wait on a GPU).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepScalars {
    pub loss: BatchLoss,
    /// ‖g‖²
    pub grad_sq: f64,
    /// Σ mᵢθᵢ² over the weight mask m, when asked for (weight decay's ‖W‖²); 0 otherwise.
    pub weight_sq: f64,
}

/// Device memory: allocation, transfer, shapes and copies, and what the device is.
pub trait Buffers {
    /// A dense matrix resident on the device.
    type Matrix;
    /// A vector resident on the device.
    type Vector;
    /// A read-back recorded but not yet collected (see [`Buffers::download_matrices_later`]).
    type Pending;

    /// What the device is, in one line (the adapter, or the CPU and its threads).
    fn describe(&self) -> String;
    /// `"gpu"` or `"cpu"`.
    fn kind(&self) -> &'static str;

    /// Copies `data` (`rows × cols`, row-major) to the device; `what` names it in errors.
    /// Rejects empty shapes, a length that does not match, and non-finite values.
    fn upload_matrix(&self, what: &'static str, rows: usize, cols: usize, data: &[f32]) -> Result<Self::Matrix>;
    /// [`Buffers::upload_matrix`] of a symmetric `dim × dim` matrix, kept as the device keeps a
    /// Fisher it built (the CPU reads only the upper triangle, so products over it read half).
    fn upload_symmetric(&self, what: &'static str, dim: usize, data: &[f32]) -> Result<Self::Matrix> {
        self.upload_matrix(what, dim, dim, data)
    }
    /// Copies `data` to the device; rejects non-finite values.
    fn upload_vector(&self, what: &'static str, data: &[f32]) -> Result<Self::Vector>;
    /// A `rows × cols` matrix of zeros.
    fn zeros_matrix(&self, what: &'static str, rows: usize, cols: usize) -> Result<Self::Matrix>;
    /// A vector of `len` zeros.
    fn zeros_vector(&self, what: &'static str, len: usize) -> Result<Self::Vector>;
    /// The matrix back on the host, row-major without padding.
    fn download_matrix(&self, m: &Self::Matrix) -> Result<Vec<f32>>;
    /// The vector back on the host.
    fn download_vector(&self, v: &Self::Vector) -> Result<Vec<f32>>;
    /// Several matrices back on the host together (one wait on a GPU).
    fn download_matrices(&self, ms: &[&Self::Matrix]) -> Result<Vec<Vec<f32>>> {
        ms.iter().map(|m| self.download_matrix(m)).collect()
    }
    /// Records the read-back of `ms` as they will be after the work recorded so far, to be
    /// [`collected`](Buffers::collect) later: on a GPU the values come back with the next wait
    /// the host makes anyway, and collecting them then costs none.
    fn download_matrices_later(&self, ms: &[&Self::Matrix]) -> Result<Self::Pending>;
    /// The matrices of a [`Buffers::download_matrices_later`] (waiting only if no wait has
    /// brought them back yet).
    fn collect(&self, pending: Self::Pending) -> Result<Vec<Vec<f32>>>;
    /// `(rows, cols)`.
    fn shape(&self, m: &Self::Matrix) -> (usize, usize);
    /// Number of elements.
    fn len(&self, v: &Self::Vector) -> usize;

    /// `dst ← src`.
    fn copy(&self, src: &Self::Vector, dst: &mut Self::Vector) -> Result<()>;
    /// `dst[dst0 .. dst0 + len] = src[src0 .. src0 + len]`.
    fn copy_range(
        &self,
        src: &Self::Vector,
        src0: usize,
        dst: &mut Self::Vector,
        dst0: usize,
        len: usize,
    ) -> Result<()>;
    /// `dst = src[:, col0 .. col0 + dst.cols]` (dst has src's rows).
    fn copy_columns(&self, src: &Self::Matrix, col0: usize, dst: &mut Self::Matrix) -> Result<()>;

    /// Waits until all queued work has finished (for timing).
    fn synchronize(&self) -> Result<()>;

    /// Runs `work` and returns the milliseconds it took on the device's own clock, where the
    /// device has one (GPU timestamp queries); `None` means time it on the host.
    fn time_device(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Option<f64>> {
        work()?;
        Ok(None)
    }

    /// Labels the work recorded from here on as `phase` (what `--profile` charges it to; nothing
    /// otherwise).
    fn begin_phase(&self, _phase: Phase) {}

    /// Submissions and host waits so far, where the device counts them (a GPU).
    fn sync_counts(&self) -> Option<SyncCounts> {
        None
    }

    /// Memory the device has free for natgrad, where it can tell (wgpu does not report a GPU's).
    fn memory_available(&self) -> Option<u64> {
        None
    }

    /// The largest matrix the device holds in one piece, in bytes: G is built in chunks of rows
    /// that fit it.
    fn max_matrix_bytes(&self) -> u64;
}

/// Vector operations and matrix-vector products (`linalg` for vectors and square symmetric
/// matrices, `blas2` for general ones such as the score rows G).
pub trait BlasOps: Buffers {
    /// `y = (A + λI) x` for a square (symmetric) `A`.
    fn matvec(&self, a: &Self::Matrix, damping: f32, x: &Self::Vector, y: &mut Self::Vector) -> Result<()>;
    /// `xᵀy`, on the host (f64: the CPU sums in f64; a GPU's f32 sum is widened).
    fn dot(&self, x: &Self::Vector, y: &Self::Vector) -> Result<f64>;
    /// `Σ xᵢ wᵢ yᵢ`, on the host.
    fn weighted_dot(&self, x: &Self::Vector, w: &Self::Vector, y: &Self::Vector) -> Result<f64>;
    /// `y ← y + α x`.
    fn axpy(&self, alpha: f32, x: &Self::Vector, y: &mut Self::Vector) -> Result<()>;
    /// `y ← x + β y`.
    fn xpby(&self, x: &Self::Vector, beta: f32, y: &mut Self::Vector) -> Result<()>;
    /// `A_ii += d_i` for a square A.
    fn add_diagonal(&self, a: &mut Self::Matrix, d: &Self::Vector) -> Result<()>;

    /// `y = A x` for any `A` (rows × cols).
    fn gemv(&self, a: &Self::Matrix, x: &Self::Vector, y: &mut Self::Vector) -> Result<()>;
    /// `y ← (accumulate ? y : 0) + scale · Aᵀx`.
    fn gemv_t(
        &self,
        a: &Self::Matrix,
        x: &Self::Vector,
        scale: f32,
        accumulate: bool,
        y: &mut Self::Vector,
    ) -> Result<()>;
    /// `y ← β·y + w ⊙ x`.
    fn scale_add(&self, w: &Self::Vector, x: &Self::Vector, beta: f32, y: &mut Self::Vector) -> Result<()>;
    /// `y = x ⊘ w` (elementwise).
    fn divide(&self, x: &Self::Vector, w: &Self::Vector, y: &mut Self::Vector) -> Result<()>;
    /// `y ← (accumulate ? y : 0) + scale · Σ_rows A²`: column sums of squares.
    fn column_sq_sums(&self, a: &Self::Matrix, scale: f32, accumulate: bool, y: &mut Self::Vector) -> Result<()>;
    /// `A[:, j] ·= s_j`.
    fn scale_columns(&self, a: &mut Self::Matrix, s: &Self::Vector) -> Result<()>;
    /// `K[row0.., col0..] = A·Bᵀ` for A and B with one column count: a block of a Gram matrix.
    fn gram_block(
        &self,
        k: &mut Self::Matrix,
        a: &Self::Matrix,
        b: &Self::Matrix,
        row0: usize,
        col0: usize,
    ) -> Result<()>;
}

/// The symmetric outer-product accumulation that builds a Fisher from score rows.
pub trait FisherOps: Buffers {
    /// `F ← (accumulate ? F : 0) + scale · GᵀG` for `G: m×p` and a symmetric `F: p×p`; F comes
    /// out exactly symmetric. Calling it once per chunk of G's rows with `scale = 1/m_total`
    /// builds the Fisher of G chunk by chunk.
    fn fisher_accumulate(&self, f: &mut Self::Matrix, g: &Self::Matrix, scale: f32, accumulate: bool) -> Result<()>;

    /// `F = (1/m) GᵀG` for `G: m×p`.
    fn fisher(&self, g: &Self::Matrix) -> Result<Self::Matrix> {
        let (m, p) = self.shape(g);
        let mut f = self.zeros_matrix("Fisher matrix F", p, p)?;
        self.fisher_accumulate(&mut f, g, 1.0 / m as f32, false)?;
        Ok(f)
    }
}

/// The dense damped solve: a device primitive, so the GPU can run it fused (α and β on the
/// device, one read-back per solve).
pub trait CgOps: BlasOps {
    /// Solves `(A + λI) d = g` by conjugate gradient, starting from the `d` passed in (zeros for
    /// a cold start, the previous direction for a warm one) and leaving the solution there.
    fn cg_solve(
        &self,
        a: &Self::Matrix,
        damping: f32,
        g: &Self::Vector,
        d: &mut Self::Vector,
        params: &CgParams,
    ) -> Result<CgReport>;

    /// [`CgOps::cg_solve`] for several systems at once (a block-diagonal matrix's blocks): a GPU
    /// records them all and reads their reports back together.
    fn cg_solve_many(
        &self,
        systems: &mut [(&Self::Matrix, &Self::Vector, &mut Self::Vector)],
        damping: f32,
        params: &CgParams,
    ) -> Result<Vec<CgReport>> {
        systems
            .iter_mut()
            .map(|(a, g, d)| self.cg_solve(a, damping, g, d, params))
            .collect()
    }

    /// Solves `A d = g` by conjugate gradient over any operator, preconditioned by `m` when
    /// given, from the `d` passed in, stopping also when the quadratic model stops improving by
    /// `progress` (see [`crate::solve::cg_with_progress`], which the CPU runs as it is). A GPU runs
    /// the same loop recorded, with its scalars on the device: one read-back per solve.
    #[allow(clippy::too_many_arguments)]
    fn pcg(
        &self,
        op: &mut dyn Operator<Self>,
        m: Option<&mut dyn Preconditioner<Self>>,
        g: &Self::Vector,
        d: &mut Self::Vector,
        params: &CgParams,
        progress: f64,
    ) -> Result<CgReport>
    where
        Self: Sized;
}

/// An MLP on the device: batches, the forward pass, loss, gradient and score rows.
pub trait MlpOps: BlasOps {
    /// An MLP batch on the device: inputs, targets, and the forward pass's activations.
    type Batch;

    /// Uploads a batch: `x` n × inputs, `targets` n × target width (class indices for
    /// classification), both row-major; checked with [`Mlp::check_batch`].
    fn upload_batch(&self, mlp: &Mlp, x: &[f32], targets: &[f32]) -> Result<Self::Batch>;

    /// Examples in the batch.
    fn batch_size(&self, batch: &Self::Batch) -> usize;

    /// The forward pass at θ; the batch keeps every layer's pre-activations and activations,
    /// which [`MlpOps::batch_loss`], [`MlpOps::gradient`] and [`MlpOps::score_rows`] use (with
    /// the same θ).
    fn forward(&self, mlp: &Mlp, theta: &Self::Vector, batch: &mut Self::Batch) -> Result<()>;

    /// The network's outputs z_L of the last forward pass, n × outputs (waits for the device).
    fn outputs(&self, mlp: &Mlp, batch: &Self::Batch) -> Result<Vec<f32>>;

    /// Loss and accuracy of the last forward pass (waits for the device).
    fn batch_loss(&self, mlp: &Mlp, batch: &Self::Batch) -> Result<BatchLoss>;

    /// `g = ∇θ [−(1/n) Σ log p(y_i | x_i, θ) + (wd/2) Σ‖W‖²]` (weights only) at the last forward pass.
    fn gradient(
        &self,
        mlp: &Mlp,
        theta: &Self::Vector,
        batch: &mut Self::Batch,
        weight_decay: f32,
        g: &mut Self::Vector,
    ) -> Result<()>;

    /// Rows `rows` of the score matrix G of Fisher `kind` (see [`crate::model::fisher`]) at the
    /// last forward pass, into `out` (`rows.len() × p`). Row r belongs to example
    /// `r / kind.rows_per_example`.
    #[allow(clippy::too_many_arguments)]
    fn score_rows(
        &self,
        mlp: &Mlp,
        theta: &Self::Vector,
        batch: &mut Self::Batch,
        kind: FisherKind,
        key: SampleKey,
        rows: Range<usize>,
        out: &mut Self::Matrix,
    ) -> Result<()>;

    /// `y = scale · Σ_i J_iᵀ H_i J_i v` at the last forward pass (J_i: the outputs' Jacobian of
    /// example i, H_i: the output-space Fisher of `kind`), so `scale = 1/n` gives `F v`: one
    /// forward-mode pass, the output Hessian, one backward pass; neither G nor F is formed.
    #[allow(clippy::too_many_arguments)]
    fn fisher_product(
        &self,
        mlp: &Mlp,
        theta: &Self::Vector,
        batch: &mut Self::Batch,
        kind: FisherKind,
        key: SampleKey,
        v: &Self::Vector,
        scale: f32,
        y: &mut Self::Vector,
    ) -> Result<()>;

    /// `vᵀ F v = (1/n) Σ_i (J_i v)ᵀ H_i (J_i v)` at the last forward pass: one forward-mode pass,
    /// no backward pass (the trust region's measure of a step).
    #[allow(clippy::too_many_arguments)]
    fn fisher_quad(
        &self,
        mlp: &Mlp,
        theta: &Self::Vector,
        batch: &mut Self::Batch,
        kind: FisherKind,
        key: SampleKey,
        v: &Self::Vector,
    ) -> Result<f64>;

    /// `vᵀ F v + Σ diag_i v_i²` ([`MlpOps::fisher_quad`] plus a diagonal's share: the trust
    /// region's measure of a step under damping), read back at once.
    #[allow(clippy::too_many_arguments)]
    fn damped_fisher_quad(
        &self,
        mlp: &Mlp,
        theta: &Self::Vector,
        batch: &mut Self::Batch,
        kind: FisherKind,
        key: SampleKey,
        v: &Self::Vector,
        diag: &Self::Vector,
    ) -> Result<f64> {
        Ok(self.fisher_quad(mlp, theta, batch, kind, key, v)? + self.weighted_dot(v, diag, v)?)
    }

    /// The loss and accuracy of the last forward pass, ‖g‖², and with `weight_mask` the weight
    /// decay's Σ mᵢθᵢ²: everything a step reads back before its update, in one wait.
    fn step_scalars(
        &self,
        mlp: &Mlp,
        batch: &Self::Batch,
        g: &Self::Vector,
        theta: &Self::Vector,
        weight_mask: Option<&Self::Vector>,
    ) -> Result<StepScalars> {
        Ok(StepScalars {
            loss: self.batch_loss(mlp, batch)?,
            grad_sq: self.dot(g, g)?,
            weight_sq: match weight_mask {
                Some(w) => self.weighted_dot(theta, w, theta)?,
                None => 0.0,
            },
        })
    }

    /// K-FAC's statistics of the batch at the last forward pass, per layer l: `a[l] = (1/n) Σ ā āᵀ`
    /// of the layer's inputs with a 1 appended ((fan_in+1)²), and `s[l] = (1/n) Σ_rows δ δᵀ` of
    /// the output seeds of `kind` back-propagated to its pre-activations (fan_out²).
    #[allow(clippy::too_many_arguments)]
    fn kfac_factors(
        &self,
        mlp: &Mlp,
        theta: &Self::Vector,
        batch: &mut Self::Batch,
        kind: FisherKind,
        key: SampleKey,
        a: &mut [Self::Matrix],
        s: &mut [Self::Matrix],
    ) -> Result<()>;

    /// Per layer, `Y_l = S_l · X_l · A_l` with `X_l = [W_l | b_l]` the layer's block of x as a
    /// fan_out × (fan_in+1) matrix, into y: the Kronecker-factored `(A ⊗ S)` applied layer by
    /// layer (with inverses: K-FAC's step). Only the layers `layers` marks are made; y's other
    /// blocks are left as they are (ranks that share the layers out).
    #[allow(clippy::too_many_arguments)]
    fn kronecker_product(
        &self,
        mlp: &Mlp,
        s: &[Self::Matrix],
        a: &[Self::Matrix],
        x: &Self::Vector,
        y: &mut Self::Vector,
        layers: &[bool],
    ) -> Result<()>;
}

/// The elementwise optimiser updates.
pub trait OptimOps: Buffers {
    /// SGD with momentum: `velocity ← μ·velocity + g; θ ← θ − lr·velocity`.
    fn sgd_step(
        &self,
        theta: &mut Self::Vector,
        g: &Self::Vector,
        velocity: &mut Self::Vector,
        lr: f32,
        momentum: f32,
    ) -> Result<()>;
    /// One Adam update of θ, moments `m` and `v` (bias-corrected with `step.t`).
    fn adam_step(
        &self,
        theta: &mut Self::Vector,
        g: &Self::Vector,
        m: &mut Self::Vector,
        v: &mut Self::Vector,
        step: AdamStep,
    ) -> Result<()>;
}
