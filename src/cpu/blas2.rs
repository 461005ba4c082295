//! The CPU twins of `shaders/blas2.wgsl`: products with G and Gᵀ, elementwise scaling and
//! division, column sums of squares, column scaling, and the Gram block A·Bᵀ.

use rayon::prelude::*;

/// `y = A x` for A `rows × cols` row-major.
pub fn gemv(a: &[f32], cols: usize, x: &[f32], y: &mut [f32]) {
    y.par_iter_mut()
        .zip(a.par_chunks(cols))
        .for_each(|(yi, row)| *yi = super::linalg::dot(row, x) as f32);
}

/// `y ← (accumulate ? y : 0) + scale · Aᵀx`.
pub fn gemv_t(a: &[f32], cols: usize, x: &[f32], scale: f32, accumulate: bool, y: &mut [f32]) {
    if !accumulate {
        y.fill(0.0);
    }
    // column blocks in parallel, each walking the rows (rows of G are long and few)
    y.par_chunks_mut(1024).enumerate().for_each(|(block, yb)| {
        let (c0, len) = (block * 1024, yb.len());
        for (row, xr) in a.chunks_exact(cols).zip(x) {
            let s = scale * xr;
            yb.iter_mut().zip(&row[c0..c0 + len]).for_each(|(yc, v)| *yc += s * v);
        }
    });
}

/// `y ← (accumulate ? y : 0) + scale · Σ_rows A²`.
pub fn column_sq_sums(a: &[f32], cols: usize, scale: f32, accumulate: bool, y: &mut [f32]) {
    if !accumulate {
        y.fill(0.0);
    }
    y.par_chunks_mut(1024).enumerate().for_each(|(block, yb)| {
        let (c0, len) = (block * 1024, yb.len());
        for row in a.chunks_exact(cols) {
            yb.iter_mut()
                .zip(&row[c0..c0 + len])
                .for_each(|(yc, v)| *yc += scale * v * v);
        }
    });
}

/// `A[:, j] ·= s_j`.
pub fn scale_columns(a: &mut [f32], s: &[f32]) {
    a.par_chunks_mut(s.len())
        .for_each(|row| row.iter_mut().zip(s).for_each(|(v, sj)| *v *= sj));
}

/// `K[row0.., col0..] = A·Bᵀ` for A `ra × c`, B `rb × c` row-major and K with row stride `ldk`.
pub fn gram_block(k: &mut [f32], ldk: usize, a: &[f32], b: &[f32], c: usize, row0: usize, col0: usize) {
    let (ra, rb) = (a.len() / c, b.len() / c);
    super::matmul::matmul(
        (ra, rb, c),
        super::matmul::View::rows(a, 0, c),
        super::matmul::View::transposed(b, 0, c),
        k,
        row0 * ldk + col0,
        ldk,
        1.0,
        0.0,
    );
}
