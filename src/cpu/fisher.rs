//! The CPU Fisher build: `F ← β F + scale · GᵀG` as a symmetric rank-k update (syrk).
//!
//! F is cut into square tiles; the tiles on and above the diagonal are independent GEMMs run in
//! parallel (each one single-threaded). As BLAS `ssyrk` does, only the upper triangle is made:
//! the CPU matvec reads just that half, and [`mirror_upper`] fills the lower half when F leaves
//! the CPU. (Mirroring every build cost 30-45% of it here: the strided writes at power-of-two
//! strides thrash the caches.) On AVX-512 machines the `gemm` crate's kernels put this at OpenBLAS
//! `ssyrk`'s rate; a full GEMM would do twice the arithmetic.

use rayon::prelude::*;

use super::{Cpu, CpuMatrix, Layout};
use crate::backend::{self, Buffers, FisherOps};
use crate::error::Result;

/// Tile edge for F of size p: large tiles keep the GEMM kernels efficient, enough of them keep
/// both cores busy; measured best at p/4 between 64 and 512 on 2 cores (n = 1024).
fn tile_edge(p: usize) -> usize {
    (p / 4).next_multiple_of(64).clamp(64, 512)
}

/// A pointer that may cross threads: the tiles written through it are disjoint.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every task writes a disjoint set of F's elements (its own tile); G is only read.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// Through a method, so closures capture the whole (Send) wrapper, not the raw pointer.
    fn ptr(&self) -> *mut f32 {
        self.0
    }
}

/// `F ← (accumulate ? F : 0) + scale · GᵀG` on the upper triangle (j ≥ i) of `F: p×p`, for
/// `G: m×p`, both row-major. Elements below the diagonal are unspecified.
pub fn syrk(g: &[f32], m: usize, p: usize, scale: f32, accumulate: bool, f: &mut [f32]) {
    assert_eq!(g.len(), m * p, "G must be m×p");
    assert_eq!(f.len(), p * p, "F must be p×p");
    let b = tile_edge(p);
    let nb = p.div_ceil(b);
    let tiles: Vec<(usize, usize)> = (0..nb).flat_map(|i| (i..nb).map(move |j| (i * b, j * b))).collect();
    let out = SharedMut(f.as_mut_ptr());
    tiles.par_iter().for_each(|&(i0, j0)| {
        let (rows, cols) = (b.min(p - i0), b.min(p - j0));
        // SAFETY: the tile F[i0.., j0..] (rows × cols) lies inside F, and lhs/rhs address
        // columns i0.. and j0.. of G over its m rows. No other task touches this tile.
        unsafe {
            gemm::gemm(
                rows,
                cols,
                m,
                out.ptr().add(i0 * p + j0),
                1,
                p as isize,
                accumulate,
                g.as_ptr().add(i0),
                p as isize,
                1,
                g.as_ptr().add(j0),
                1,
                p as isize,
                if accumulate { 1.0 } else { 0.0 },
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
}

/// Copies the upper triangle of the row-major `p×p` matrix `f` onto its lower triangle, making it
/// exactly symmetric. Works in 16×16 blocks so the strided writes stay in cache.
pub fn mirror_upper(f: &mut [f32], p: usize) {
    assert_eq!(f.len(), p * p);
    const B: usize = 16;
    for ib in (0..p).step_by(B) {
        for jb in (ib..p).step_by(B) {
            for i in ib..(ib + B).min(p) {
                for j in jb.max(i + 1)..(jb + B).min(p) {
                    f[j * p + i] = f[i * p + j];
                }
            }
        }
    }
}

impl FisherOps for Cpu {
    fn fisher_accumulate(&self, f: &mut CpuMatrix, g: &CpuMatrix, scale: f32, accumulate: bool) -> Result<()> {
        backend::check_fisher((f.rows, f.cols), (g.rows, g.cols))?;
        // accumulating reads F's upper triangle: F is symmetric, as a Fisher is
        if g.layout == Layout::SymmetricUpper {
            let full = self.download_matrix(g)?;
            syrk(&full, g.rows, g.cols, scale, accumulate, &mut f.data);
        } else {
            syrk(&g.data, g.rows, g.cols, scale, accumulate, &mut f.data);
        }
        f.layout = Layout::SymmetricUpper;
        Ok(())
    }
}
