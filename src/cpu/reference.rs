//! f64 references for tests and checks: slow, simple, and trusted.

use nalgebra::{DMatrix, DVector};

/// `F = scale · GᵀG` in f64 for `G: m×p` row-major.
pub fn fisher(g: &[f32], m: usize, p: usize, scale: f64) -> Vec<f64> {
    assert_eq!(g.len(), m * p);
    let mut f = vec![0.0f64; p * p];
    for row in g.chunks_exact(p) {
        for i in 0..p {
            let gi = row[i] as f64;
            if gi == 0.0 {
                continue;
            }
            let fi = &mut f[i * p..(i + 1) * p];
            for (fij, gj) in fi.iter_mut().zip(row) {
                *fij += gi * *gj as f64;
            }
        }
    }
    f.iter_mut().for_each(|v| *v *= scale);
    f
}

/// `y = (A + λI) x` in f64, A `n×n` row-major.
pub fn matvec(a: &[f64], damping: f64, x: &[f64]) -> Vec<f64> {
    let n = x.len();
    (0..n)
        .map(|i| a[i * n..(i + 1) * n].iter().zip(x).map(|(a, b)| a * b).sum::<f64>() + damping * x[i])
        .collect()
}

/// Solves `(A + λI) d = g` by Cholesky in f64; `None` when `A + λI` is not positive definite.
pub fn solve_spd(a: &[f64], damping: f64, g: &[f64]) -> Option<Vec<f64>> {
    let n = g.len();
    let m = DMatrix::from_row_slice(n, n, a) + DMatrix::identity(n, n) * damping;
    let chol = m.cholesky()?;
    Some(chol.solve(&DVector::from_column_slice(g)).as_slice().to_vec())
}

/// `‖x − y‖ / ‖y‖`, the relative error of `x` against the reference `y`.
pub fn rel_error(x: &[f32], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len());
    let num: f64 = x.iter().zip(y).map(|(a, b)| (*a as f64 - b).powi(2)).sum();
    let den: f64 = y.iter().map(|b| b * b).sum();
    if den == 0.0 { num.sqrt() } else { (num / den).sqrt() }
}

/// Widens to f64.
pub fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}
