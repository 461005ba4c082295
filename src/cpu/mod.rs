//! The CPU backend: the fast path where there is no GPU (and the twin every GPU kernel is tested
//! against), plus f64 references in [`reference`].

pub mod cg;
pub mod curvature;
pub mod fisher;
pub mod gemm;
pub mod linalg;
pub mod mlp;
pub mod reference;

use std::ops::Range;

use crate::backend::AdamStep;
use crate::backend::cg::{CgParams, CgReport};
use crate::backend::{self, Backend, BatchLoss};
use crate::error::{Error, Result};
use crate::model::Mlp;
use crate::model::{FisherKind, SampleKey};

/// The most a G chunk takes on the CPU: large enough that chunking costs nothing, small enough
/// to leave memory for F.
const MAX_MATRIX_BYTES: u64 = 256 << 20;

/// How a [`CpuMatrix`]'s elements are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Every element is stored.
    General,
    /// Symmetric, and only the upper triangle (j ≥ i) is meaningful: how a Fisher built on the
    /// CPU is kept. Downloads fill in the lower triangle.
    SymmetricUpper,
}

/// A dense row-major matrix in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
    pub layout: Layout,
}

impl CpuMatrix {
    /// Every element, row-major: the lower triangle filled in for a symmetric-upper matrix.
    pub fn full(&self) -> std::borrow::Cow<'_, [f32]> {
        match self.layout {
            Layout::General => std::borrow::Cow::Borrowed(&self.data),
            Layout::SymmetricUpper => {
                let mut data = self.data.clone();
                fisher::mirror_upper(&mut data, self.rows);
                std::borrow::Cow::Owned(data)
            }
        }
    }

    /// `y = (A + λI) x` for this square matrix, reading what its layout keeps.
    pub fn matvec(&self, damping: f32, x: &[f32], y: &mut [f32]) {
        match self.layout {
            Layout::General => linalg::matvec(&self.data, damping, x, y),
            Layout::SymmetricUpper => linalg::symv_upper(&self.data, damping, x, y),
        }
    }
}

/// The CPU device: rayon's thread pool and the widest SIMD the processor has.
#[derive(Clone, Debug, Default)]
pub struct Cpu;

impl Cpu {
    pub fn new() -> Self {
        Self
    }
}

/// The vector instruction set the CPU kernels will use here.
fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "AVX-512";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return "AVX2";
        }
    }
    "baseline SIMD"
}

impl Backend for Cpu {
    type Matrix = CpuMatrix;
    type Vector = Vec<f32>;
    type Batch = mlp::CpuBatch;

    fn describe(&self) -> String {
        format!("CPU ({} threads, {})", rayon::current_num_threads(), simd_level())
    }

    fn kind(&self) -> &'static str {
        "cpu"
    }

    fn upload_matrix(&self, what: &'static str, rows: usize, cols: usize, data: &[f32]) -> Result<CpuMatrix> {
        backend::check_upload(what, rows, cols, data)?;
        Ok(CpuMatrix {
            rows,
            cols,
            data: data.to_vec(),
            layout: Layout::General,
        })
    }

    fn upload_vector(&self, what: &'static str, data: &[f32]) -> Result<Vec<f32>> {
        if data.is_empty() {
            return Err(Error::Empty(what));
        }
        crate::error::check_finite(what, 1, data)?;
        Ok(data.to_vec())
    }

    fn zeros_matrix(&self, what: &'static str, rows: usize, cols: usize) -> Result<CpuMatrix> {
        if rows == 0 || cols == 0 {
            return Err(Error::Empty(what));
        }
        let len = rows
            .checked_mul(cols)
            .ok_or_else(|| Error::Shape(format!("{what}: {rows}×{cols} overflows")))?;
        Ok(CpuMatrix {
            rows,
            cols,
            data: vec![0.0; len],
            layout: Layout::General,
        })
    }

    fn zeros_vector(&self, what: &'static str, len: usize) -> Result<Vec<f32>> {
        if len == 0 {
            return Err(Error::Empty(what));
        }
        Ok(vec![0.0; len])
    }

    fn download_matrix(&self, m: &CpuMatrix) -> Result<Vec<f32>> {
        let mut data = m.data.clone();
        if m.layout == Layout::SymmetricUpper {
            fisher::mirror_upper(&mut data, m.rows);
        }
        Ok(data)
    }

    fn download_vector(&self, v: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(v.clone())
    }

    fn shape(&self, m: &CpuMatrix) -> (usize, usize) {
        (m.rows, m.cols)
    }

    fn len(&self, v: &Vec<f32>) -> usize {
        v.len()
    }

    fn fisher_accumulate(&self, f: &mut CpuMatrix, g: &CpuMatrix, scale: f32, accumulate: bool) -> Result<()> {
        backend::check_fisher((f.rows, f.cols), (g.rows, g.cols))?;
        // accumulating reads F's upper triangle: F is symmetric, as a Fisher is
        if g.layout == Layout::SymmetricUpper {
            let full = self.download_matrix(g)?;
            fisher::syrk(&full, g.rows, g.cols, scale, accumulate, &mut f.data);
        } else {
            fisher::syrk(&g.data, g.rows, g.cols, scale, accumulate, &mut f.data);
        }
        f.layout = Layout::SymmetricUpper;
        Ok(())
    }

    fn matvec(&self, a: &CpuMatrix, damping: f32, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        backend::check_matvec((a.rows, a.cols), x.len(), y.len())?;
        a.matvec(damping, x, y);
        Ok(())
    }

    fn dot(&self, x: &Vec<f32>, y: &Vec<f32>) -> Result<f32> {
        backend::check_same_len(x.len(), y.len())?;
        Ok(linalg::dot(x, y) as f32)
    }

    fn axpy(&self, alpha: f32, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        backend::check_same_len(x.len(), y.len())?;
        linalg::axpy(alpha, x, y);
        Ok(())
    }

    fn xpby(&self, x: &Vec<f32>, beta: f32, y: &mut Vec<f32>) -> Result<()> {
        backend::check_same_len(x.len(), y.len())?;
        linalg::xpby(x, beta, y);
        Ok(())
    }

    fn cg_solve(
        &self,
        a: &CpuMatrix,
        damping: f32,
        g: &Vec<f32>,
        d: &mut Vec<f32>,
        params: &CgParams,
    ) -> Result<CgReport> {
        params.validate(damping)?;
        backend::check_matvec((a.rows, a.cols), g.len(), d.len())?;
        Ok(cg::solve(a, damping, g, d, params))
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn weighted_dot(&self, x: &Vec<f32>, w: &Vec<f32>, y: &Vec<f32>) -> Result<f32> {
        backend::check_same_len(x.len(), y.len())?;
        backend::check_same_len(x.len(), w.len())?;
        Ok(linalg::weighted_dot(x, w, y) as f32)
    }

    fn copy(&self, src: &Vec<f32>, dst: &mut Vec<f32>) -> Result<()> {
        backend::check_same_len(src.len(), dst.len())?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn sgd_step(
        &self,
        theta: &mut Vec<f32>,
        g: &Vec<f32>,
        velocity: &mut Vec<f32>,
        lr: f32,
        momentum: f32,
    ) -> Result<()> {
        backend::check_same_len(theta.len(), g.len())?;
        backend::check_same_len(theta.len(), velocity.len())?;
        linalg::sgd_step(theta, g, velocity, lr, momentum);
        Ok(())
    }

    fn adam_step(
        &self,
        theta: &mut Vec<f32>,
        g: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        step: AdamStep,
    ) -> Result<()> {
        for len in [g.len(), m.len(), v.len()] {
            backend::check_same_len(theta.len(), len)?;
        }
        linalg::adam_step(theta, g, m, v, step);
        Ok(())
    }

    fn gemv(&self, a: &CpuMatrix, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        backend::check_same_len(a.cols, x.len())?;
        backend::check_same_len(a.rows, y.len())?;
        curvature::gemv(&a.full(), a.cols, x, y);
        Ok(())
    }

    fn gemv_t(&self, a: &CpuMatrix, x: &Vec<f32>, scale: f32, accumulate: bool, y: &mut Vec<f32>) -> Result<()> {
        backend::check_same_len(a.rows, x.len())?;
        backend::check_same_len(a.cols, y.len())?;
        curvature::gemv_t(&a.full(), a.cols, x, scale, accumulate, y);
        Ok(())
    }

    fn scale_add(&self, w: &Vec<f32>, x: &Vec<f32>, beta: f32, y: &mut Vec<f32>) -> Result<()> {
        backend::check_same_len(w.len(), y.len())?;
        backend::check_same_len(x.len(), y.len())?;
        y.iter_mut()
            .zip(w)
            .zip(x)
            .for_each(|((yi, wi), xi)| *yi = beta * *yi + wi * xi);
        Ok(())
    }

    fn divide(&self, x: &Vec<f32>, w: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        backend::check_same_len(w.len(), y.len())?;
        backend::check_same_len(x.len(), y.len())?;
        y.iter_mut().zip(x).zip(w).for_each(|((yi, xi), wi)| *yi = xi / wi);
        Ok(())
    }

    fn column_sq_sums(&self, a: &CpuMatrix, scale: f32, accumulate: bool, y: &mut Vec<f32>) -> Result<()> {
        backend::check_same_len(a.cols, y.len())?;
        curvature::column_sq_sums(&a.full(), a.cols, scale, accumulate, y);
        Ok(())
    }

    fn scale_columns(&self, a: &mut CpuMatrix, s: &Vec<f32>) -> Result<()> {
        backend::check_same_len(a.cols, s.len())?;
        if a.layout == Layout::SymmetricUpper {
            a.data = a.full().into_owned();
            a.layout = Layout::General;
        }
        curvature::scale_columns(&mut a.data, s);
        Ok(())
    }

    fn gram_block(&self, k: &mut CpuMatrix, a: &CpuMatrix, b: &CpuMatrix, row0: usize, col0: usize) -> Result<()> {
        backend::check_gram((k.rows, k.cols), (a.rows, a.cols), (b.rows, b.cols), row0, col0)?;
        if k.layout == Layout::SymmetricUpper {
            k.data = k.full().into_owned();
            k.layout = Layout::General;
        }
        curvature::gram_block(&mut k.data, k.cols, &a.full(), &b.full(), a.cols, row0, col0);
        Ok(())
    }

    fn copy_columns(&self, src: &CpuMatrix, col0: usize, dst: &mut CpuMatrix) -> Result<()> {
        backend::check_same_len(src.rows, dst.rows)?;
        backend::check_range("columns", col0, dst.cols, src.cols)?;
        let full = src.full();
        for (d, s) in dst.data.chunks_exact_mut(dst.cols).zip(full.chunks_exact(src.cols)) {
            d.copy_from_slice(&s[col0..col0 + dst.cols]);
        }
        dst.layout = Layout::General;
        Ok(())
    }

    fn copy_range(&self, src: &Vec<f32>, src0: usize, dst: &mut Vec<f32>, dst0: usize, len: usize) -> Result<()> {
        backend::check_range("source range", src0, len, src.len())?;
        backend::check_range("target range", dst0, len, dst.len())?;
        dst[dst0..dst0 + len].copy_from_slice(&src[src0..src0 + len]);
        Ok(())
    }

    fn add_diagonal(&self, a: &mut CpuMatrix, d: &Vec<f32>) -> Result<()> {
        backend::check_matvec((a.rows, a.cols), d.len(), d.len())?;
        let n = a.cols;
        d.iter().enumerate().for_each(|(i, v)| a.data[i * n + i] += v);
        Ok(())
    }

    fn max_matrix_bytes(&self) -> u64 {
        MAX_MATRIX_BYTES
    }

    fn memory_available(&self) -> Option<u64> {
        // Linux: the kernel's estimate of memory available without swapping
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    fn upload_batch(&self, mlp: &Mlp, x: &[f32], targets: &[f32]) -> Result<mlp::CpuBatch> {
        mlp::upload(mlp, x, targets)
    }

    fn batch_size(&self, batch: &mlp::CpuBatch) -> usize {
        batch.len()
    }

    fn forward(&self, mlp: &Mlp, theta: &Vec<f32>, batch: &mut mlp::CpuBatch) -> Result<()> {
        mlp::forward(mlp, theta, batch)
    }

    fn outputs(&self, mlp: &Mlp, batch: &mlp::CpuBatch) -> Result<Vec<f32>> {
        Ok(batch.outputs(mlp)?.to_vec())
    }

    fn batch_loss(&self, mlp: &Mlp, batch: &mlp::CpuBatch) -> Result<BatchLoss> {
        mlp::batch_loss(mlp, batch)
    }

    fn gradient(
        &self,
        mlp: &Mlp,
        theta: &Vec<f32>,
        batch: &mut mlp::CpuBatch,
        weight_decay: f32,
        g: &mut Vec<f32>,
    ) -> Result<()> {
        mlp::gradient(mlp, theta, batch, weight_decay, g)
    }

    fn score_rows(
        &self,
        mlp: &Mlp,
        theta: &Vec<f32>,
        batch: &mut mlp::CpuBatch,
        kind: FisherKind,
        key: SampleKey,
        rows: Range<usize>,
        out: &mut CpuMatrix,
    ) -> Result<()> {
        backend::check_score_rows(mlp, batch.len(), kind, &rows, (out.rows, out.cols))?;
        mlp::score_rows(mlp, theta, batch, kind, key, rows, out)
    }
}
