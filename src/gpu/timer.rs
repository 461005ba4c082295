//! Timing GPU work on the GPU's own clock: a timestamp written into the queue before the work and
//! one after it, so the figure is the device's elapsed time, not the host's wait.

use super::context::GpuContext;
use crate::error::{Error, Result};

/// The features encoder-level timestamps need.
pub const TIMESTAMPS: wgpu::Features =
    wgpu::Features::TIMESTAMP_QUERY.union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS);

/// Milliseconds of device time `work` took, or `None` where the adapter has no timestamps.
pub fn time(ctx: &GpuContext, work: &mut dyn FnMut() -> Result<()>) -> Result<Option<f64>> {
    if !ctx.features.contains(TIMESTAMPS) {
        work()?;
        return Ok(None);
    }
    let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("natgrad timer"),
        ty: wgpu::QueryType::Timestamp,
        count: 2,
    });
    let resolved = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("timestamps"),
        size: 16,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    // what was recorded before is not part of the work timed
    ctx.flush()?;
    ctx.record(|e| e.write_timestamp(&set, 0));
    work()?;
    let staging = ctx.record(|e| {
        e.write_timestamp(&set, 1);
        e.resolve_query_set(&set, 0..2, &resolved, 0);
        ctx.copy_to_staging(e, &resolved, 0, 16)
    });
    let index = ctx.flush()?;
    let ticks: Vec<u64> = ctx.map_staging(&staging, index)?;
    let elapsed = ticks[1]
        .checked_sub(ticks[0])
        .ok_or_else(|| Error::Gpu("the GPU clock ran backwards".into()))?;
    Ok(Some(elapsed as f64 * ctx.queue.get_timestamp_period() as f64 / 1e6))
}
