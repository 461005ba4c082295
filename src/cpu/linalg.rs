//! Vector and matrix-vector kernels on the CPU: the twins of `shaders/linalg.wgsl`.
//!
//! The matvecs are memory-bound: rows are split across threads, and each row keeps 32
//! independent lanes, compiled for AVX-512 or AVX2 when the processor has them (picked at run
//! time), so F streams at the rate of the memory system. A Fisher built on the CPU holds only
//! its upper triangle (as BLAS syrk leaves it), and its matvec reads only that half.

use rayon::prelude::*;

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

/// velocity ← μ·velocity + g; θ ← θ − lr·velocity
pub fn sgd_step(theta: &mut [f32], g: &[f32], velocity: &mut [f32], lr: f32, momentum: f32) {
    for ((t, gi), v) in theta.iter_mut().zip(g).zip(velocity.iter_mut()) {
        *v = momentum * *v + gi;
        *t -= lr * *v;
    }
}

/// One Adam update: the twin of `adam_step` in shaders/optim.wgsl.
pub fn adam_step(theta: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], step: crate::backend::AdamStep) {
    let (bias1, bias2) = step.bias_corrections();
    for (((t, gi), mi), vi) in theta.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *mi = step.beta1 * *mi + (1.0 - step.beta1) * gi;
        *vi = step.beta2 * *vi + (1.0 - step.beta2) * gi * gi;
        *t -= step.lr * (*mi / bias1) / ((*vi / bias2).sqrt() + step.eps);
    }
}
