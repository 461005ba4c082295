//! The chunked Fisher build: `F = (1/n) GᵀG` from the score rows G of a batch, made and consumed a
//! chunk of rows at a time so G never has to fit the device whole.

pub mod curvature;

pub use crate::model::fisher::{FisherKind, SampleKey};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::Mlp;

/// How one batch's rows of G enter a Fisher that may span several batches.
#[derive(Clone, Copy, Debug)]
pub struct Part {
    pub kind: FisherKind,
    pub key: SampleKey,
    /// n in F = (1/n) GᵀG: the examples of every batch together.
    pub examples_in_total: usize,
    /// Add to F (a later batch) rather than overwrite it (the first).
    pub accumulate: bool,
}

/// `F (+)= (1/n_total) GᵀG` over this batch's rows of G, `chunk` rows at a time.
pub fn accumulate_in_chunks<B: Backend>(
    b: &B,
    mlp: &Mlp,
    theta: &B::Vector,
    batch: &mut B::Batch,
    part: Part,
    f: &mut B::Matrix,
    chunk: usize,
) -> Result<()> {
    let p = mlp.num_params();
    let total = b.batch_size(batch) * part.kind.rows_per_example(mlp.likelihood());
    if total == 0 {
        return Err(Error::InvalidArgument {
            name: "sampled Fisher draws",
            reason: "need at least 1".into(),
        });
    }
    let chunk = chunk.clamp(1, total);
    let scale = 1.0 / part.examples_in_total as f32;
    let mut g = b.zeros_matrix("score rows G (one chunk)", chunk, p)?;
    let mut start = 0;
    while start < total {
        let end = (start + chunk).min(total);
        if end - start != chunk {
            g = b.zeros_matrix("score rows G (last chunk)", end - start, p)?;
        }
        b.score_rows(mlp, theta, batch, part.kind, part.key, start..end, &mut g)?;
        b.fisher_accumulate(f, &g, scale, part.accumulate || start > 0)?;
        start = end;
    }
    Ok(())
}

/// Rows of G per chunk for p parameters: as many as one device matrix holds, at most `total`,
/// and at most 65535 (one GPU dispatch dimension).
pub fn chunk_rows<B: Backend>(b: &B, p: usize, total: usize) -> Result<usize> {
    // a GPU matrix pads its rows to whole vec4s and its row count to a multiple of 4
    let row_bytes = 4 * p.next_multiple_of(4) as u64;
    let fit = ((b.max_matrix_bytes() / row_bytes) as usize).saturating_sub(4) / 4 * 4;
    let fit = fit.min(65532);
    if fit == 0 {
        return Err(Error::TooLarge {
            buffer: "one row of the score matrix G",
            shape: format!("1×{p} f32"),
            bytes: 4 * p as u64,
            limit_name: "largest matrix the device holds",
            limit: b.max_matrix_bytes(),
        });
    }
    Ok(fit.min(total))
}

/// `F = (1/n) GᵀG` for the batch's n examples at the last forward pass, with G of `kind` made
/// and consumed chunk by chunk so it never has to fit the device whole; then `wd` added to the
/// diagonal entries of the weights (weight decay's curvature).
#[allow(clippy::too_many_arguments)]
pub fn build<B: Backend>(
    b: &B,
    mlp: &Mlp,
    theta: &B::Vector,
    batch: &mut B::Batch,
    kind: FisherKind,
    key: SampleKey,
    weight_decay: f32,
    f: &mut B::Matrix,
) -> Result<()> {
    let total = b.batch_size(batch) * kind.rows_per_example(mlp.likelihood());
    let chunk = chunk_rows(b, mlp.num_params(), total)?;
    build_in_chunks(b, mlp, theta, batch, kind, key, weight_decay, f, chunk)
}

/// [`build`] with G made `chunk` rows at a time.
#[allow(clippy::too_many_arguments)]
pub fn build_in_chunks<B: Backend>(
    b: &B,
    mlp: &Mlp,
    theta: &B::Vector,
    batch: &mut B::Batch,
    kind: FisherKind,
    key: SampleKey,
    weight_decay: f32,
    f: &mut B::Matrix,
    chunk: usize,
) -> Result<()> {
    let n = b.batch_size(batch);
    let part = Part {
        kind,
        key,
        examples_in_total: n,
        accumulate: false,
    };
    accumulate_in_chunks(b, mlp, theta, batch, part, f, chunk)?;
    if weight_decay != 0.0 {
        let decay: Vec<f32> = mlp.weight_mask().iter().map(|m| m * weight_decay).collect();
        b.add_diagonal(f, &b.upload_vector("weight decay diagonal", &decay)?)?;
    }
    Ok(())
}
