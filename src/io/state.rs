//! `state.safetensors`: the whole training state of a run, written atomically beside the
//! checkpoint. Every array of the [`Snapshot`] is a tensor under its dotted name (F32 or F64,
//! one dimension, exactly as held); every value is a JSON string in the metadata under its name,
//! beside `format = natgrad-state-1`.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::Result;
use crate::snapshot::{Snapshot, Tensor};

const FORMAT: (&str, &str) = ("format", "natgrad-state-1");

/// Writes `snapshot` to `path` atomically.
pub fn save(path: &Path, snapshot: &Snapshot) -> Result<()> {
    let mut metadata = HashMap::from([(FORMAT.0.to_owned(), FORMAT.1.to_owned())]);
    for (name, value) in &snapshot.values {
        metadata.insert(format!("value.{name}"), value.to_string());
    }
    let mut views = Vec::new();
    for (name, tensor) in &snapshot.tensors {
        let (dtype, bytes, len): (Dtype, &[u8], usize) = match tensor {
            Tensor::F32(v) => (Dtype::F32, bytemuck::cast_slice(v), v.len()),
            Tensor::F64(v) => (Dtype::F64, bytemuck::cast_slice(v), v.len()),
        };
        let view = TensorView::new(dtype, vec![len], bytes).map_err(|e| super::io_error(path, e))?;
        views.push((name.clone(), view));
    }
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| super::io_error(path, e))?;
    super::write_atomic(path, &bytes)
}

/// Reads a state written by [`save`].
pub fn load(path: &Path) -> Result<Snapshot> {
    let bytes = std::fs::read(path).map_err(|e| super::io_error(path, e))?;
    from_bytes(path, &bytes)
}

/// Parses a state's bytes; `path` names it in errors.
pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Snapshot> {
    let bad = |msg: String| super::io_error(path, msg);
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    if metadata.get(FORMAT.0).map(String::as_str) != Some(FORMAT.1) {
        return Err(bad(format!(
            "not a natgrad training state (no {}={})",
            FORMAT.0, FORMAT.1
        )));
    }
    let mut snapshot = Snapshot::default();
    for (key, text) in &metadata {
        if let Some(name) = key.strip_prefix("value.") {
            let value = serde_json::from_str(text).map_err(|e| bad(format!("metadata {key:?}: {e}")))?;
            snapshot.values.insert(name.to_owned(), value);
        }
    }
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    for (name, view) in tensors.tensors() {
        let data = view.data();
        let tensor = match view.dtype() {
            Dtype::F32 => Tensor::F32(
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect(),
            ),
            Dtype::F64 => Tensor::F64(
                data.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect(),
            ),
            other => return Err(bad(format!("tensor {name} is {other:?}, not F32 or F64"))),
        };
        snapshot.tensors.insert(name, tensor);
    }
    Ok(snapshot)
}
