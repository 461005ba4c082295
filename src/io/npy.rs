//! The dense Fisher as a NumPy `.npy` file: little-endian f32, C order.

use std::path::Path;

use npyz::WriterBuilder;

use crate::error::Result;

/// Writes the `rows × cols` row-major matrix `data` to `path` atomically.
pub fn write_f32(path: &Path, rows: usize, cols: usize, data: &[f32]) -> Result<()> {
    super::write_atomic_with(path, |file| {
        let mut writer = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&[rows as u64, cols as u64])
            .writer(std::io::BufWriter::new(file))
            .begin_nd()?;
        writer.extend(data.iter().copied())?;
        writer.finish()
    })
}
