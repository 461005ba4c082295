//! The score rows G of a batch, made a chunk of rows at a time so G never has to fit the device
//! whole ([`for_each_chunk`], the one loop every consumer of G goes through), and the Fisher
//! `F = (1/n) GᵀG` built from them.

use std::ops::Range;

use crate::backend::{Backend, Phase};
use crate::error::{Error, Result};
use crate::model::{FisherKind, Mlp, SampleKey};

/// The fewest rows of G [`rows_per_chunk`] asks a matrix to hold (4, and 4 more of margin).
pub const MIN_CHUNK_ROWS: usize = 8;

/// Rows of G per chunk for p parameters: as many as one device matrix holds, at most `total`,
/// and at most 65535 (one GPU dispatch dimension).
pub fn chunk_rows<B: Backend>(b: &B, p: usize, total: usize) -> Result<usize> {
    let fit = rows_per_chunk(b.max_matrix_bytes(), p);
    if fit == 0 {
        return Err(Error::TooLarge {
            buffer: "the fewest rows of the score matrix G a chunk holds",
            shape: format!("{MIN_CHUNK_ROWS}×{p} f32"),
            bytes: MIN_CHUNK_ROWS as u64 * 4 * p.next_multiple_of(4) as u64,
            limit_name: "largest matrix the device holds",
            limit: b.max_matrix_bytes(),
        });
    }
    Ok(fit.min(total))
}

/// Rows of G for p parameters one matrix of `max_bytes` holds, a multiple of 4 up to 65532; 0
/// when not even 4 rows fit. The memory plan sizes G's chunk by this rule too, so what it
/// accepts is what [`chunk_rows`] then makes.
pub fn rows_per_chunk(max_bytes: u64, p: usize) -> usize {
    // a GPU matrix pads its rows to whole vec4s and its row count to a multiple of 4
    let row_bytes = 4 * p.next_multiple_of(4) as u64;
    let fit = ((max_bytes / row_bytes) as usize).saturating_sub(4) / 4 * 4;
    fit.min(65532)
}

/// The row ranges of G's chunks of `chunk` rows, for `total` rows.
pub fn spans(total: usize, chunk: usize) -> Vec<Range<usize>> {
    let chunk = chunk.clamp(1, total.max(1));
    (0..total).step_by(chunk).map(|s| s..(s + chunk).min(total)).collect()
}

/// Rows of G of `kind` for the batch, refusing zero draws.
pub fn total_rows<B: Backend>(b: &B, mlp: &Mlp, batch: &B::Batch, kind: FisherKind) -> Result<usize> {
    let total = b.batch_size(batch) * kind.rows_per_example(mlp.likelihood());
    if total == 0 {
        return Err(Error::InvalidArgument {
            name: "sampled Fisher draws",
            reason: "need at least 1".into(),
        });
    }
    Ok(total)
}

/// Makes G of `kind` for the batch's last forward pass `chunk` rows at a time and hands each chunk
/// to `each` with its row range; one matrix is reused for every chunk but a shorter last one.
#[allow(clippy::too_many_arguments)]
pub fn for_each_chunk<B: Backend>(
    b: &B,
    mlp: &Mlp,
    theta: &B::Vector,
    batch: &mut B::Batch,
    kind: FisherKind,
    key: SampleKey,
    chunk: usize,
    mut each: impl FnMut(Range<usize>, &B::Matrix) -> Result<()>,
) -> Result<()> {
    let total = total_rows(b, mlp, batch, kind)?;
    let chunks = spans(total, chunk);
    let mut g = b.zeros_matrix("score rows G (one chunk)", chunks[0].len(), mlp.num_params())?;
    for rows in chunks {
        if rows.len() != b.shape(&g).0 {
            g = b.zeros_matrix("score rows G (last chunk)", rows.len(), mlp.num_params())?;
        }
        b.begin_phase(Phase::Scores);
        b.score_rows(mlp, theta, batch, kind, key, rows.clone(), &mut g)?;
        b.begin_phase(Phase::Fisher);
        each(rows, &g)?;
    }
    Ok(())
}

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
    let scale = 1.0 / part.examples_in_total as f32;
    for_each_chunk(b, mlp, theta, batch, part.kind, part.key, chunk, |rows, g| {
        b.fisher_accumulate(f, g, scale, part.accumulate || rows.start > 0)
    })
}

/// `F = (1/n) GᵀG` for the batch's n examples at the last forward pass, with G of `kind` made
/// and consumed chunk by chunk (each chunk as large as one device buffer allows); then `wd` added
/// to the diagonal entries of the weights (weight decay's curvature).
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
    let total = total_rows(b, mlp, batch, kind)?;
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
    let part = Part {
        kind,
        key,
        examples_in_total: b.batch_size(batch),
        accumulate: false,
    };
    accumulate_in_chunks(b, mlp, theta, batch, part, f, chunk)?;
    add_weight_decay(b, &mlp.weight_mask(), weight_decay, f)
}

/// `F_ii += wd` on the weights' entries of `mask` (the parameters F covers).
pub fn add_weight_decay<B: Backend>(b: &B, mask: &[f32], weight_decay: f32, f: &mut B::Matrix) -> Result<()> {
    if weight_decay == 0.0 {
        return Ok(());
    }
    let decay: Vec<f32> = mask.iter().map(|m| m * weight_decay).collect();
    b.add_diagonal(f, &b.upload_vector("weight decay diagonal", &decay)?)
}
