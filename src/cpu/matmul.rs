//! Strided matrix products on the `gemm` crate, shared by the CPU MLP and curvature code.

/// A strided view of a slice as a matrix: element (r, c) at `offset + r·row_stride + c·col_stride`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    pub fn rows(data: &'a [f32], offset: usize, cols: usize) -> Self {
        Self {
            data,
            offset,
            row_stride: cols,
            col_stride: 1,
        }
    }

    pub fn transposed(data: &'a [f32], offset: usize, cols: usize) -> Self {
        Self {
            data,
            offset,
            row_stride: 1,
            col_stride: cols,
        }
    }

    /// Panics unless every element of an r×c view lies inside the slice.
    fn check(&self, r: usize, c: usize) {
        if r > 0 && c > 0 {
            let last = self.offset + (r - 1) * self.row_stride + (c - 1) * self.col_stride;
            assert!(last < self.data.len(), "matrix view beyond its buffer");
        }
    }
}

/// `C = α·A·B + β·C` for A: m×k, B: k×n, and C: m×n row-major at `c[c_offset..]` with row stride
/// `c_stride`. With β = 0, C is not read.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    (m, n, k): (usize, usize, usize),
    a: View,
    b: View,
    c: &mut [f32],
    c_offset: usize,
    c_stride: usize,
    alpha: f32,
    beta: f32,
) {
    a.check(m, k);
    b.check(k, n);
    View::rows(c, c_offset, c_stride).check(m, n);
    if m == 0 || n == 0 {
        return;
    }
    // below a few million multiply-adds, waking rayon's pool costs more than a second core saves
    let parallelism = if m * n * k > 1 << 22 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the three views were checked to lie inside their slices for these shapes; C is
    // borrowed mutably and does not alias A or B (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr().add(c_offset),
            1,
            c_stride as isize,
            beta != 0.0,
            a.data.as_ptr().add(a.offset),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr().add(b.offset),
            b.col_stride as isize,
            b.row_stride as isize,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism,
        )
    }
}
