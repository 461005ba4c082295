//! Vector and matrix-vector kernels on the CPU: the twins of `shaders/linalg.wgsl`.
//!
//! The matvecs are memory-bound: rows are split across threads, and each row keeps 32
//! independent lanes, compiled for AVX-512 or AVX2 when the processor has them (picked at run
//! time), so F streams at the rate of the memory system. A Fisher built on the CPU holds only
//! its upper triangle (as BLAS syrk leaves it), and its matvec reads only that half.

use rayon::prelude::*;

use super::{Cpu, CpuMatrix, Layout, blas2};
use crate::backend::{self, BlasOps};
use crate::error::Result;

const LANES: usize = 32;

/// Defines `pub fn $name(args)` running `$generic(args)` compiled for the widest vector unit this
/// processor has: AVX-512, AVX2 + FMA, or the baseline.
macro_rules! widest_simd {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $generic:ident) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the processor has AVX-512F (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the processor has AVX2 and FMA (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

/// `xᵀy` with f32 products accumulated in 32 independent lanes (vectorisable), summed in f64.
#[inline(always)]
fn dot_lanes(x: &[f32], y: &[f32]) -> f64 {
    let mut acc = [0f32; LANES];
    let (xc, xr) = x.as_chunks::<LANES>();
    let (yc, yr) = y.as_chunks::<LANES>();
    for (a, b) in xc.iter().zip(yc) {
        for l in 0..LANES {
            acc[l] += a[l] * b[l];
        }
    }
    let tail: f64 = xr.iter().zip(yr).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
    acc.iter().map(|&v| v as f64).sum::<f64>() + tail
}

/// `rowᵀx`, and `y += xi · row` in the same pass over `row`.
#[inline(always)]
fn dot_and_axpy(row: &[f32], x: &[f32], xi: f32, y: &mut [f32]) -> f64 {
    let mut acc = [0f32; LANES];
    let (rc, rr) = row.as_chunks::<LANES>();
    let (xc, xr) = x.as_chunks::<LANES>();
    let (yc, yr) = y.as_chunks_mut::<LANES>();
    for ((a, b), c) in rc.iter().zip(xc).zip(yc) {
        for l in 0..LANES {
            acc[l] += a[l] * b[l];
            c[l] += xi * a[l];
        }
    }
    let mut tail = 0.0f64;
    for ((a, b), c) in rr.iter().zip(xr).zip(yr) {
        tail += (*a as f64) * (*b as f64);
        *c += xi * a;
    }
    acc.iter().map(|&v| v as f64).sum::<f64>() + tail
}

/// `y[k] = A[k,:] · x` for a block of rows of a general A (row length `x.len()`).
#[inline(always)]
fn rows_times(a: &[f32], x: &[f32], y: &mut [f32]) {
    let n = x.len();
    for (k, yk) in y.iter_mut().enumerate() {
        *yk = dot_lanes(&a[k * n..(k + 1) * n], x) as f32;
    }
}

/// Adds rows `r0..r1` of the symmetric product to `y`, reading only the upper triangle of `u`:
/// row i contributes `U[i,i..]·x[i..]` to `y[i]` and `x[i]·U[i,i+1..]` to `y[i+1..]`.
#[inline(always)]
fn upper_rows_times(u: &[f32], x: &[f32], r0: usize, r1: usize, y: &mut [f32]) {
    let n = x.len();
    for i in r0..r1 {
        let row = &u[i * n + i..(i + 1) * n];
        let below = dot_and_axpy(&row[1..], &x[i + 1..], x[i], &mut y[i + 1..]);
        y[i] += (below + row[0] as f64 * x[i] as f64) as f32;
    }
}

widest_simd!(fn rows_times_best(a: &[f32], x: &[f32], y: &mut [f32]) = rows_times);
widest_simd!(fn upper_rows_times_best(u: &[f32], x: &[f32], r0: usize, r1: usize, y: &mut [f32]) = upper_rows_times);
widest_simd!(fn dot_best(x: &[f32], y: &[f32]) -> f64 = dot_lanes);

/// Below this many matrix elements a matvec runs on one thread: splitting costs more than it saves.
const PARALLEL_MATVEC: usize = 1 << 18;

/// `y = (A + λI) x` for a general `n×n` row-major A.
pub fn matvec(a: &[f32], damping: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len();
    assert_eq!(a.len(), n * n, "A must be n×n");
    assert_eq!(y.len(), n, "y must have n elements");
    if a.len() < PARALLEL_MATVEC {
        rows_times_best(a, x, y);
    } else {
        let chunk = n.div_ceil(4 * rayon::current_num_threads()).max(16);
        y.par_chunks_mut(chunk)
            .zip(a.par_chunks(chunk * n))
            .for_each(|(yc, ac)| rows_times_best(ac, x, yc));
    }
    if damping != 0.0 {
        axpy(damping, x, y);
    }
}

/// `y = (A + λI) x` for a symmetric `n×n` A of which only the upper triangle (j ≥ i) of the
/// row-major `u` is read.
pub fn symv_upper(u: &[f32], damping: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len();
    assert_eq!(u.len(), n * n, "U must be n×n");
    assert_eq!(y.len(), n, "y must have n elements");
    y.fill(0.0);
    if u.len() < PARALLEL_MATVEC {
        upper_rows_times_best(u, x, 0, n, y);
    } else {
        // each task adds its rows into a private y; the bounds split the triangle's area evenly
        let tasks = 4 * rayon::current_num_threads();
        let bound = |k: usize| (n as f64 * (1.0 - (1.0 - k as f64 / tasks as f64).sqrt())).round() as usize;
        let parts: Vec<Vec<f32>> = (0..tasks)
            .into_par_iter()
            .map(|k| {
                let mut part = vec![0.0f32; n];
                upper_rows_times_best(u, x, bound(k), bound(k + 1), &mut part);
                part
            })
            .collect();
        for part in &parts {
            y.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }
    }
    if damping != 0.0 {
        axpy(damping, x, y);
    }
}

/// `xᵀy`, accumulated in f64.
pub fn dot(x: &[f32], y: &[f32]) -> f64 {
    assert_eq!(x.len(), y.len());
    dot_best(x, y)
}

// axpy and xpby avoid f32::mul_add: without a compile-time FMA target it is a libm call per element.

/// `y ← y + α x`
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * *xi;
    }
}

/// `y ← x + β y`
pub fn xpby(x: &[f32], beta: f32, y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = *xi + beta * *yi;
    }
}

/// `Σ xᵢ wᵢ yᵢ`, accumulated in f64.
pub fn weighted_dot(x: &[f32], w: &[f32], y: &[f32]) -> f64 {
    x.iter()
        .zip(w)
        .zip(y)
        .map(|((a, b), c)| *a as f64 * *b as f64 * *c as f64)
        .sum()
}

impl BlasOps for Cpu {
    fn matvec(&self, a: &CpuMatrix, damping: f32, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        backend::check_matvec((a.rows, a.cols), x.len(), y.len())?;
        a.matvec(damping, x, y);
        Ok(())
    }

    fn dot(&self, x: &Vec<f32>, y: &Vec<f32>) -> Result<f64> {
        backend::check_same_len(x.len(), y.len())?;
        Ok(dot(x, y))
    }

    fn weighted_dot(&self, x: &Vec<f32>, w: &Vec<f32>, y: &Vec<f32>) -> Result<f64> {
        backend::check_same_len(x.len(), y.len())?;
        backend::check_same_len(x.len(), w.len())?;
        Ok(weighted_dot(x, w, y))
    }

    fn axpy(&self, alpha: f32, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        backend::check_same_len(x.len(), y.len())?;
        axpy(alpha, x, y);
        Ok(())
    }

    fn xpby(&self, x: &Vec<f32>, beta: f32, y: &mut Vec<f32>) -> Result<()> {
        backend::check_same_len(x.len(), y.len())?;
        xpby(x, beta, y);
        Ok(())
    }

    fn add_diagonal(&self, a: &mut CpuMatrix, d: &Vec<f32>) -> Result<()> {
        backend::check_matvec((a.rows, a.cols), d.len(), d.len())?;
        let n = a.cols;
        d.iter().enumerate().for_each(|(i, v)| a.data[i * n + i] += v);
        Ok(())
    }

    fn gemv(&self, a: &CpuMatrix, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        backend::check_same_len(a.cols, x.len())?;
        backend::check_same_len(a.rows, y.len())?;
        blas2::gemv(&a.full(), a.cols, x, y);
        Ok(())
    }

    fn gemv_t(&self, a: &CpuMatrix, x: &Vec<f32>, scale: f32, accumulate: bool, y: &mut Vec<f32>) -> Result<()> {
        backend::check_same_len(a.rows, x.len())?;
        backend::check_same_len(a.cols, y.len())?;
        blas2::gemv_t(&a.full(), a.cols, x, scale, accumulate, y);
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
        blas2::column_sq_sums(&a.full(), a.cols, scale, accumulate, y);
        Ok(())
    }

    fn scale_columns(&self, a: &mut CpuMatrix, s: &Vec<f32>) -> Result<()> {
        backend::check_same_len(a.cols, s.len())?;
        if a.layout == Layout::SymmetricUpper {
            a.data = a.full().into_owned();
            a.layout = Layout::General;
        }
        blas2::scale_columns(&mut a.data, s);
        Ok(())
    }

    fn gram_block(&self, k: &mut CpuMatrix, a: &CpuMatrix, b: &CpuMatrix, row0: usize, col0: usize) -> Result<()> {
        backend::check_gram((k.rows, k.cols), (a.rows, a.cols), (b.rows, b.cols), row0, col0)?;
        if k.layout == Layout::SymmetricUpper {
            k.data = k.full().into_owned();
            k.layout = Layout::General;
        }
        blas2::gram_block(&mut k.data, k.cols, &a.full(), &b.full(), a.cols, row0, col0);
        Ok(())
    }
}
