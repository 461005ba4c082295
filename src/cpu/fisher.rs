//! The CPU Fisher build: `F ← β F + scale · GᵀG` as a symmetric rank-k update (syrk).
//!
//! F is cut into square tiles; the tiles on and above the diagonal are independent GEMMs run in
//! parallel (each one single-threaded), and each is mirrored below the diagonal while it is still
//! in cache. On AVX-512 machines the `gemm` crate's kernels put this at OpenBLAS `ssyrk`'s rate;
//! a full GEMM would do twice the arithmetic.

use rayon::prelude::*;

/// Tile edge for F of size p: large tiles keep the GEMM kernels efficient, enough of them keep
/// both cores busy; measured best at p/4 between 64 and 512 on 2 cores (n = 1024).
fn tile_edge(p: usize) -> usize {
    (p / 4).next_multiple_of(64).clamp(64, 512)
}

/// A pointer that may cross threads: the tiles written through it are disjoint.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every task writes a disjoint set of F's elements (its own tile and that tile's mirror
// image); G is only read.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// `F ← (accumulate ? F : 0) + scale · GᵀG` for `G: m×p` and `F: p×p`, both row-major.
/// F comes out exactly symmetric: the lower triangle is a copy of the upper.
pub fn syrk(g: &[f32], m: usize, p: usize, scale: f32, accumulate: bool, f: &mut [f32]) {
    assert_eq!(g.len(), m * p, "G must be m×p");
    assert_eq!(f.len(), p * p, "F must be p×p");
    let b = tile_edge(p);
    let nb = p.div_ceil(b);
    let tiles: Vec<(usize, usize)> = (0..nb).flat_map(|i| (i..nb).map(move |j| (i * b, j * b))).collect();
    let out = SharedMut(f.as_mut_ptr());
    tiles.par_iter().for_each(|&(i0, j0)| {
        let (rows, cols) = (b.min(p - i0), b.min(p - j0));
        let out = out;
        // SAFETY: the tile F[i0.., j0..] (rows × cols) lies inside F, and lhs/rhs address
        // columns i0.. and j0.. of G over its m rows. No other task touches this tile.
        unsafe {
            gemm::gemm(
                rows,
                cols,
                m,
                out.0.add(i0 * p + j0),
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
            mirror_tile(out.0, p, i0, j0, rows, cols);
        }
    });
}

/// Copies tile F[i0.., j0..] to F[j0.., i0..] transposed; on a diagonal tile, its upper half to
/// its lower half.
///
/// # Safety
/// The tile and its mirror image lie inside the p×p matrix at `f`, and no other thread touches
/// them meanwhile.
unsafe fn mirror_tile(f: *mut f32, p: usize, i0: usize, j0: usize, rows: usize, cols: usize) {
    for r in 0..rows {
        let c_start = if i0 == j0 { r + 1 } else { 0 };
        for c in c_start..cols {
            // SAFETY: both indices address the tile or its mirror inside F (see above).
            unsafe { *f.add((j0 + c) * p + i0 + r) = *f.add((i0 + r) * p + j0 + c) };
        }
    }
}
