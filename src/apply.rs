//! Using a saved model on data: its loss and accuracy (`natgrad eval`), and the dense Fisher over
//! a whole file (`natgrad fisher`).

use crate::backend::Backend;
use crate::curvature::scores::{self, Part};
use crate::data::{self, Dataset};
use crate::error::Result;
use crate::io::checkpoint::Checkpoint;
use crate::model::{FisherKind, SampleKey};
use crate::train::{EVAL_BATCH, Evaluation, evaluate};

/// The data at `source` (a built-in name or a CSV path) as the checkpoint's model sees it: its
/// feature count and labels checked, its standardisation applied; a seeded built-in dataset is
/// generated with the seed of the run that trained it.
pub fn load_for(checkpoint: &Checkpoint, source: &str) -> Result<Dataset> {
    let (name, table) = data::load_table(source, checkpoint.seed.unwrap_or(0))?;
    let mut data = Dataset::for_model(&name, table, &checkpoint.task, checkpoint.mlp.inputs())?;
    if let Some(s) = &checkpoint.standardizer {
        s.apply(&mut data);
    }
    Ok(data)
}

/// Mean NLL and accuracy of the checkpoint on `data`.
pub fn eval<B: Backend>(b: &B, checkpoint: &Checkpoint, data: &Dataset) -> Result<Evaluation> {
    let theta = b.upload_vector("parameters θ", &checkpoint.theta)?;
    evaluate(b, &checkpoint.mlp, &theta, data)
}

/// The dense `F = (1/n) GᵀG` of `kind` over all n examples of `data`, p × p row-major, without
/// damping or weight decay; `seed` keys the sampled Fisher's draws.
pub fn fisher<B: Backend>(
    b: &B,
    checkpoint: &Checkpoint,
    data: &Dataset,
    kind: FisherKind,
    seed: u64,
) -> Result<Vec<f32>> {
    let mlp = &checkpoint.mlp;
    let p = mlp.num_params();
    let theta = b.upload_vector("parameters θ", &checkpoint.theta)?;
    let mut f = b.zeros_matrix("Fisher matrix F", p, p)?;
    for start in (0..data.n).step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(data.n);
        let mut batch = b.upload_batch(mlp, &data.x[start * data.d..end * data.d], &data.y[start..end])?;
        b.forward(mlp, &theta, &mut batch)?;
        let rows = (end - start) * kind.rows_per_example(mlp.likelihood());
        let part = Part {
            kind,
            key: SampleKey::new(seed as u32, (start / EVAL_BATCH) as u32),
            examples_in_total: data.n,
            accumulate: start > 0,
        };
        scores::accumulate_in_chunks(
            b,
            mlp,
            &theta,
            &mut batch,
            part,
            &mut f,
            scores::chunk_rows(b, p, rows)?,
        )?;
    }
    b.download_matrix(&f)
}
