//! Vector and matrix-vector kernels on the CPU: the twins of `shaders/linalg.wgsl`.
//!
//! The matvec is memory-bound: rows are split across threads, and each row's dot product keeps
//! 32 independent lanes, compiled for AVX-512 or AVX2 when the processor has them (checked at
//! run time), so it streams F at the rate of the memory system.

use rayon::prelude::*;

const LANES: usize = 32;

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

/// Rows `y[k] = A[k,:] · x` for a block of rows of A (row length `x.len()`).
#[inline(always)]
fn rows_times(a: &[f32], x: &[f32], y: &mut [f32]) {
    let n = x.len();
    for (k, yk) in y.iter_mut().enumerate() {
        *yk = dot_lanes(&a[k * n..(k + 1) * n], x) as f32;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_times_avx512(a: &[f32], x: &[f32], y: &mut [f32]) {
    rows_times(a, x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_times_avx2(a: &[f32], x: &[f32], y: &mut [f32]) {
    rows_times(a, x, y)
}

/// [`rows_times`] compiled for the widest vector unit this processor has.
fn rows_times_best(a: &[f32], x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the processor supports AVX-512F (checked just above).
            return unsafe { rows_times_avx512(a, x, y) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the processor supports AVX2 and FMA (checked just above).
            return unsafe { rows_times_avx2(a, x, y) };
        }
    }
    rows_times(a, x, y)
}

/// Below this many matrix elements a matvec runs on one thread: splitting costs more than it saves.
const PARALLEL_MATVEC: usize = 1 << 18;

/// `y = (A + λI) x` for A `n×n` row-major.
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

/// `xᵀy`, accumulated in f64.
pub fn dot(x: &[f32], y: &[f32]) -> f64 {
    assert_eq!(x.len(), y.len());
    dot_lanes(x, y)
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
