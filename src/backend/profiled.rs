//! Where a step's time goes: [`Profiled`] wraps a backend, times every call on the device's clock
//! (GPU timestamps where the adapter has them; else the host's, after waiting for the device) and
//! charges it to the phase the training code labelled the call with ([`Buffers::begin_phase`]) —
//! forward, gradient, scores, Fisher, solve, update. Waiting serialises the GPU's queue, so a
//! profiled run is a little slower than a plain one; it is for `natgrad train --profile`, not
//! for timing records. Matrix-free CG runs its host loop under
//! it, each iteration's operations timed in the solve.

use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::time::Instant;

use crate::backend::AdamStep;
use crate::backend::cg::{CgParams, CgReport, Operator, Preconditioner};
use crate::backend::{
    Backend, BatchLoss, BlasOps, Buffers, CgOps, FisherOps, MlpOps, OptimOps, Phase, StepScalars, SyncCounts,
};
use crate::error::Result;
use crate::model::Mlp;
use crate::model::{FisherKind, SampleKey};

/// The phases of a step, in the order a natural-gradient step runs them.
pub const PHASES: [&str; 6] = [
    Phase::Forward.name(),
    Phase::Gradient.name(),
    Phase::Scores.name(),
    Phase::Fisher.name(),
    Phase::Solve.name(),
    Phase::Update.name(),
];

/// Seconds spent per phase.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Phases(pub [f64; 6]);

impl Phases {
    pub fn total(&self) -> f64 {
        self.0.iter().sum()
    }
}

/// A backend that times every call by phase.
pub struct Profiled<'b, B: Backend> {
    inner: &'b B,
    phases: RefCell<Phases>,
    /// the submissions and waits profiling itself added
    own: RefCell<SyncCounts>,
    /// the phase the training code said its work is in
    current: Cell<Phase>,
    /// inside a device's solve: calls pass through untimed
    quiet: Cell<bool>,
}

/// A profiled operator (or preconditioner) as the inner device's: the device's recorded solve
/// calls it, and it calls the profiled backend, quiet for the solve's duration.
struct Through<'p, 'b, T: ?Sized, B: Backend> {
    profiled: &'p Profiled<'b, B>,
    op: &'p mut T,
}

impl<'b, B: Backend> Operator<B> for Through<'_, 'b, dyn Operator<Profiled<'b, B>> + '_, B> {
    fn apply(&mut self, _: &B, x: &B::Vector, y: &mut B::Vector) -> Result<()> {
        self.op.apply(self.profiled, x, y)
    }
}

impl<'b, B: Backend> Preconditioner<B> for Through<'_, 'b, dyn Preconditioner<Profiled<'b, B>> + '_, B> {
    fn apply_inverse(&mut self, _: &B, r: &B::Vector, z: &mut B::Vector) -> Result<()> {
        self.op.apply_inverse(self.profiled, r, z)
    }
}

impl<'b, B: Backend> Profiled<'b, B> {
    pub fn new(inner: &'b B) -> Self {
        Self {
            inner,
            phases: RefCell::new(Phases::default()),
            own: RefCell::new(SyncCounts::default()),
            current: Cell::new(Phase::Forward),
            quiet: Cell::new(false),
        }
    }

    /// The time charged so far.
    pub fn phases(&self) -> Phases {
        *self.phases.borrow()
    }

    /// Runs `f`, waits for the device, and charges the time to the current phase (inside a
    /// device's solve, runs `f` alone).
    fn timed<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.quiet.get() {
            return f();
        }
        let start = Instant::now();
        let mut f = Some(f);
        let mut value = None;
        // on the device's clock where it has one (GPU timestamps: a submission before the work
        // and one after, with one wait), else the host's after waiting for the device
        let device_ms = self.inner.time_device(&mut || {
            let f = f
                .take()
                .ok_or_else(|| crate::error::Error::Gpu("a profiled operation was asked to run twice".into()))?;
            value = Some(f()?);
            Ok(())
        })?;
        let seconds = match device_ms {
            Some(ms) => {
                self.own.borrow_mut().add(2, 1);
                ms / 1e3
            }
            None => {
                self.inner.synchronize()?;
                // on a device that counts nothing, there is nothing to subtract
                self.own.borrow_mut().add(1, 1);
                start.elapsed().as_secs_f64()
            }
        };
        self.phases.borrow_mut().0[self.current.get().index()] += seconds;
        value.ok_or_else(|| crate::error::Error::Gpu("a profiled operation did not run".into()))
    }
}

impl<B: Backend> Buffers for Profiled<'_, B> {
    type Matrix = B::Matrix;
    type Vector = B::Vector;
    type Pending = B::Pending;

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn upload_matrix(&self, what: &'static str, rows: usize, cols: usize, data: &[f32]) -> Result<B::Matrix> {
        self.timed(|| self.inner.upload_matrix(what, rows, cols, data))
    }

    fn upload_symmetric(&self, what: &'static str, dim: usize, data: &[f32]) -> Result<B::Matrix> {
        self.timed(|| self.inner.upload_symmetric(what, dim, data))
    }

    fn upload_vector(&self, what: &'static str, data: &[f32]) -> Result<B::Vector> {
        self.timed(|| self.inner.upload_vector(what, data))
    }

    fn zeros_matrix(&self, what: &'static str, rows: usize, cols: usize) -> Result<B::Matrix> {
        self.timed(|| self.inner.zeros_matrix(what, rows, cols))
    }

    fn zeros_vector(&self, what: &'static str, len: usize) -> Result<B::Vector> {
        self.timed(|| self.inner.zeros_vector(what, len))
    }

    fn download_matrix(&self, m: &B::Matrix) -> Result<Vec<f32>> {
        self.timed(|| self.inner.download_matrix(m))
    }

    fn download_vector(&self, v: &B::Vector) -> Result<Vec<f32>> {
        self.timed(|| self.inner.download_vector(v))
    }

    fn download_matrices(&self, ms: &[&B::Matrix]) -> Result<Vec<Vec<f32>>> {
        self.timed(|| self.inner.download_matrices(ms))
    }

    fn download_matrices_later(&self, ms: &[&B::Matrix]) -> Result<B::Pending> {
        self.timed(|| self.inner.download_matrices_later(ms))
    }

    fn collect(&self, pending: B::Pending) -> Result<Vec<Vec<f32>>> {
        self.timed(|| self.inner.collect(pending))
    }

    fn begin_phase(&self, phase: Phase) {
        self.current.set(phase);
    }

    /// The device's counts less the waits profiling added: what the same run makes unprofiled.
    fn sync_counts(&self) -> Option<SyncCounts> {
        let own = *self.own.borrow();
        self.inner.sync_counts().map(|c| c.since(own))
    }

    fn shape(&self, m: &B::Matrix) -> (usize, usize) {
        self.inner.shape(m)
    }

    fn len(&self, v: &B::Vector) -> usize {
        self.inner.len(v)
    }

    fn copy(&self, src: &B::Vector, dst: &mut B::Vector) -> Result<()> {
        self.timed(|| self.inner.copy(src, dst))
    }

    fn copy_range(&self, src: &B::Vector, src0: usize, dst: &mut B::Vector, dst0: usize, len: usize) -> Result<()> {
        self.timed(|| self.inner.copy_range(src, src0, dst, dst0, len))
    }

    fn copy_columns(&self, src: &B::Matrix, col0: usize, dst: &mut B::Matrix) -> Result<()> {
        self.timed(|| self.inner.copy_columns(src, col0, dst))
    }

    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }

    fn time_device(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Option<f64>> {
        self.inner.time_device(work)
    }

    fn memory_available(&self) -> Option<u64> {
        self.inner.memory_available()
    }

    fn max_matrix_bytes(&self) -> u64 {
        self.inner.max_matrix_bytes()
    }
}

impl<B: Backend> BlasOps for Profiled<'_, B> {
    fn matvec(&self, a: &B::Matrix, damping: f32, x: &B::Vector, y: &mut B::Vector) -> Result<()> {
        self.timed(|| self.inner.matvec(a, damping, x, y))
    }

    fn dot(&self, x: &B::Vector, y: &B::Vector) -> Result<f64> {
        self.timed(|| self.inner.dot(x, y))
    }

    fn weighted_dot(&self, x: &B::Vector, w: &B::Vector, y: &B::Vector) -> Result<f64> {
        self.timed(|| self.inner.weighted_dot(x, w, y))
    }

    fn axpy(&self, alpha: f32, x: &B::Vector, y: &mut B::Vector) -> Result<()> {
        self.timed(|| self.inner.axpy(alpha, x, y))
    }

    fn xpby(&self, x: &B::Vector, beta: f32, y: &mut B::Vector) -> Result<()> {
        self.timed(|| self.inner.xpby(x, beta, y))
    }

    fn add_diagonal(&self, a: &mut B::Matrix, d: &B::Vector) -> Result<()> {
        self.timed(|| self.inner.add_diagonal(a, d))
    }

    fn gemv(&self, a: &B::Matrix, x: &B::Vector, y: &mut B::Vector) -> Result<()> {
        self.timed(|| self.inner.gemv(a, x, y))
    }

    fn gemv_t(&self, a: &B::Matrix, x: &B::Vector, scale: f32, accumulate: bool, y: &mut B::Vector) -> Result<()> {
        self.timed(|| self.inner.gemv_t(a, x, scale, accumulate, y))
    }

    fn scale_add(&self, w: &B::Vector, x: &B::Vector, beta: f32, y: &mut B::Vector) -> Result<()> {
        self.timed(|| self.inner.scale_add(w, x, beta, y))
    }

    fn divide(&self, x: &B::Vector, w: &B::Vector, y: &mut B::Vector) -> Result<()> {
        self.timed(|| self.inner.divide(x, w, y))
    }

    fn column_sq_sums(&self, a: &B::Matrix, scale: f32, accumulate: bool, y: &mut B::Vector) -> Result<()> {
        self.timed(|| self.inner.column_sq_sums(a, scale, accumulate, y))
    }

    fn scale_columns(&self, a: &mut B::Matrix, s: &B::Vector) -> Result<()> {
        self.timed(|| self.inner.scale_columns(a, s))
    }

    fn gram_block(&self, k: &mut B::Matrix, a: &B::Matrix, b: &B::Matrix, row0: usize, col0: usize) -> Result<()> {
        self.timed(|| self.inner.gram_block(k, a, b, row0, col0))
    }
}

impl<B: Backend> FisherOps for Profiled<'_, B> {
    fn fisher_accumulate(&self, f: &mut B::Matrix, g: &B::Matrix, scale: f32, accumulate: bool) -> Result<()> {
        self.timed(|| self.inner.fisher_accumulate(f, g, scale, accumulate))
    }
}

impl<B: Backend> CgOps for Profiled<'_, B> {
    /// The device's own solve, timed whole: inside it the operator's and preconditioner's calls
    /// pass through unsynchronised, so that a GPU records the loop as it does unprofiled.
    fn pcg(
        &self,
        op: &mut dyn Operator<Self>,
        m: Option<&mut dyn Preconditioner<Self>>,
        g: &Self::Vector,
        d: &mut Self::Vector,
        params: &CgParams,
        progress: f64,
    ) -> Result<CgReport> {
        let mut op = Through { profiled: self, op };
        let mut m = m.map(|m| Through { profiled: self, op: m });
        self.timed(|| {
            self.quiet.set(true);
            let report = self.inner.pcg(
                &mut op,
                m.as_mut().map(|m| m as &mut dyn Preconditioner<B>),
                g,
                d,
                params,
                progress,
            );
            self.quiet.set(false);
            report
        })
    }

    fn cg_solve_many(
        &self,
        systems: &mut [(&B::Matrix, &B::Vector, &mut B::Vector)],
        damping: f32,
        params: &CgParams,
    ) -> Result<Vec<CgReport>> {
        self.timed(|| self.inner.cg_solve_many(systems, damping, params))
    }

    fn cg_solve(
        &self,
        a: &B::Matrix,
        damping: f32,
        g: &B::Vector,
        d: &mut B::Vector,
        params: &CgParams,
    ) -> Result<CgReport> {
        self.timed(|| self.inner.cg_solve(a, damping, g, d, params))
    }
}

impl<B: Backend> MlpOps for Profiled<'_, B> {
    type Batch = B::Batch;

    fn upload_batch(&self, mlp: &Mlp, x: &[f32], targets: &[f32]) -> Result<B::Batch> {
        self.timed(|| self.inner.upload_batch(mlp, x, targets))
    }

    fn batch_size(&self, batch: &B::Batch) -> usize {
        self.inner.batch_size(batch)
    }

    fn forward(&self, mlp: &Mlp, theta: &B::Vector, batch: &mut B::Batch) -> Result<()> {
        self.timed(|| self.inner.forward(mlp, theta, batch))
    }

    fn outputs(&self, mlp: &Mlp, batch: &B::Batch) -> Result<Vec<f32>> {
        self.timed(|| self.inner.outputs(mlp, batch))
    }

    fn batch_loss(&self, mlp: &Mlp, batch: &B::Batch) -> Result<BatchLoss> {
        self.timed(|| self.inner.batch_loss(mlp, batch))
    }

    fn gradient(
        &self,
        mlp: &Mlp,
        theta: &B::Vector,
        batch: &mut B::Batch,
        weight_decay: f32,
        g: &mut B::Vector,
    ) -> Result<()> {
        self.timed(|| self.inner.gradient(mlp, theta, batch, weight_decay, g))
    }

    fn score_rows(
        &self,
        mlp: &Mlp,
        theta: &B::Vector,
        batch: &mut B::Batch,
        kind: FisherKind,
        key: SampleKey,
        rows: Range<usize>,
        out: &mut B::Matrix,
    ) -> Result<()> {
        self.timed(|| self.inner.score_rows(mlp, theta, batch, kind, key, rows, out))
    }

    fn fisher_product(
        &self,
        mlp: &Mlp,
        theta: &B::Vector,
        batch: &mut B::Batch,
        kind: FisherKind,
        key: SampleKey,
        v: &B::Vector,
        scale: f32,
        y: &mut B::Vector,
    ) -> Result<()> {
        self.timed(|| self.inner.fisher_product(mlp, theta, batch, kind, key, v, scale, y))
    }

    fn fisher_quad(
        &self,
        mlp: &Mlp,
        theta: &B::Vector,
        batch: &mut B::Batch,
        kind: FisherKind,
        key: SampleKey,
        v: &B::Vector,
    ) -> Result<f64> {
        self.timed(|| self.inner.fisher_quad(mlp, theta, batch, kind, key, v))
    }

    fn damped_fisher_quad(
        &self,
        mlp: &Mlp,
        theta: &B::Vector,
        batch: &mut B::Batch,
        kind: FisherKind,
        key: SampleKey,
        v: &B::Vector,
        diag: &B::Vector,
    ) -> Result<f64> {
        self.timed(|| self.inner.damped_fisher_quad(mlp, theta, batch, kind, key, v, diag))
    }

    fn step_scalars(
        &self,
        mlp: &Mlp,
        batch: &B::Batch,
        g: &B::Vector,
        theta: &B::Vector,
        weight_mask: Option<&B::Vector>,
    ) -> Result<StepScalars> {
        self.timed(|| self.inner.step_scalars(mlp, batch, g, theta, weight_mask))
    }

    fn kfac_factors(
        &self,
        mlp: &Mlp,
        theta: &B::Vector,
        batch: &mut B::Batch,
        kind: FisherKind,
        key: SampleKey,
        a: &mut [B::Matrix],
        s: &mut [B::Matrix],
    ) -> Result<()> {
        self.timed(|| self.inner.kfac_factors(mlp, theta, batch, kind, key, a, s))
    }

    fn kronecker_product(
        &self,
        mlp: &Mlp,
        s: &[B::Matrix],
        a: &[B::Matrix],
        x: &B::Vector,
        y: &mut B::Vector,
        layers: &[bool],
    ) -> Result<()> {
        self.timed(|| self.inner.kronecker_product(mlp, s, a, x, y, layers))
    }
}

impl<B: Backend> OptimOps for Profiled<'_, B> {
    fn sgd_step(&self, theta: &mut B::Vector, g: &B::Vector, v: &mut B::Vector, lr: f32, momentum: f32) -> Result<()> {
        self.timed(|| self.inner.sgd_step(theta, g, v, lr, momentum))
    }

    fn adam_step(
        &self,
        theta: &mut B::Vector,
        g: &B::Vector,
        m: &mut B::Vector,
        v: &mut B::Vector,
        step: AdamStep,
    ) -> Result<()> {
        self.timed(|| self.inner.adam_step(theta, g, m, v, step))
    }
}
