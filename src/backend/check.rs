//! Shape and value checks at the backend's boundary, shared by both devices so they refuse the same
//! calls with the same words.

use crate::error::{Error, Result};
use crate::model::{FisherKind, Mlp};
use std::ops::Range;

/// Checks a host buffer against its stated shape before upload.
pub fn check_upload(what: &'static str, rows: usize, cols: usize, data: &[f32]) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Err(Error::Empty(what));
    }
    if rows.checked_mul(cols) != Some(data.len()) {
        return Err(Error::Shape(format!(
            "{what}: {} values for a {rows}×{cols} matrix",
            data.len()
        )));
    }
    crate::error::check_finite(what, cols, data)
}

/// Checks the operand shapes of `fisher_accumulate`.
pub fn check_fisher(f: (usize, usize), g: (usize, usize)) -> Result<()> {
    if g.0 == 0 || g.1 == 0 {
        return Err(Error::Empty("score matrix G"));
    }
    if f != (g.1, g.1) {
        return Err(Error::Shape(format!(
            "Fisher F is {}×{} but G has {} columns (F must be {}×{})",
            f.0, f.1, g.1, g.1, g.1
        )));
    }
    Ok(())
}

/// Checks `y = A x` shapes: A square, x and y of its size.
pub fn check_matvec(a: (usize, usize), x: usize, y: usize) -> Result<()> {
    if a.0 != a.1 {
        return Err(Error::Shape(format!("matrix is {}×{}, not square", a.0, a.1)));
    }
    if x != a.1 || y != a.0 {
        return Err(Error::Shape(format!(
            "matrix is {}×{} but the vectors have {x} and {y} elements",
            a.0, a.1
        )));
    }
    Ok(())
}

/// Checks the arguments of `score_rows`.
pub fn check_score_rows(mlp: &Mlp, n: usize, kind: FisherKind, rows: &Range<usize>, out: (usize, usize)) -> Result<()> {
    let total = n * kind.rows_per_example(mlp.likelihood());
    if rows.start >= rows.end || rows.end > total {
        return Err(Error::Shape(format!(
            "score rows {rows:?} outside the batch's {total} rows of G"
        )));
    }
    if out != (rows.len(), mlp.num_params()) {
        return Err(Error::Shape(format!(
            "score rows {rows:?} need a {}×{} matrix, not {}×{}",
            rows.len(),
            mlp.num_params(),
            out.0,
            out.1
        )));
    }
    if let FisherKind::Sampled { draws: 0 } = kind {
        return Err(Error::InvalidArgument {
            name: "sampled Fisher draws",
            reason: "need at least 1".into(),
        });
    }
    Ok(())
}

/// Refuses a sampled Fisher of zero draws.
pub fn check_fisher_kind(kind: FisherKind) -> Result<()> {
    if let FisherKind::Sampled { draws: 0 } = kind {
        return Err(Error::InvalidArgument {
            name: "sampled Fisher draws",
            reason: "need at least 1".into(),
        });
    }
    Ok(())
}

/// Checks K-FAC's factors: one pair per layer, `a[l]` (fan_in+1)², `s[l]` fan_out².
/// A mask with one entry per layer.
pub fn check_layer_mask(mlp: &Mlp, layers: &[bool]) -> Result<()> {
    if layers.len() != mlp.layers().len() {
        return Err(Error::Shape(format!(
            "a mask of {} layers for a model of {}",
            layers.len(),
            mlp.layers().len()
        )));
    }
    Ok(())
}

pub fn check_kfac(mlp: &Mlp, a: &[(usize, usize)], s: &[(usize, usize)]) -> Result<()> {
    let layers = mlp.layers();
    if a.len() != layers.len() || s.len() != layers.len() {
        return Err(Error::Shape(format!(
            "{} and {} Kronecker factors for {} layers",
            a.len(),
            s.len(),
            layers.len()
        )));
    }
    for (l, layer) in layers.iter().enumerate() {
        let (wa, ws) = (layer.fan_in + 1, layer.fan_out);
        if a[l] != (wa, wa) || s[l] != (ws, ws) {
            return Err(Error::Shape(format!(
                "layer {l}'s Kronecker factors are {:?} and {:?}, not {wa}×{wa} and {ws}×{ws}",
                a[l], s[l]
            )));
        }
    }
    Ok(())
}

/// Checks a range of `len` elements from `start` lies inside `total`.
pub fn check_range(what: &str, start: usize, len: usize, total: usize) -> Result<()> {
    if start.checked_add(len).is_none_or(|end| end > total) {
        return Err(Error::Shape(format!(
            "{what} {start}..{} outside 0..{total}",
            start.saturating_add(len)
        )));
    }
    Ok(())
}

/// Checks the operands of `gram_block`.
pub fn check_gram(k: (usize, usize), a: (usize, usize), b: (usize, usize), row0: usize, col0: usize) -> Result<()> {
    if a.1 != b.1 {
        return Err(Error::Shape(format!(
            "Gram block of {}×{} and {}×{}: column counts differ",
            a.0, a.1, b.0, b.1
        )));
    }
    check_range("Gram block rows", row0, a.0, k.0)?;
    check_range("Gram block columns", col0, b.0, k.1)
}

/// Checks two vectors have one length.
pub fn check_same_len(x: usize, y: usize) -> Result<()> {
    if x != y {
        return Err(Error::Shape(format!("vectors of {x} and {y} elements")));
    }
    Ok(())
}
