//! The general strided matrix product (`shaders/matmul.wgsl`): `C = α·A·B + β·C` on views.

use super::context::GpuContext;
use super::kernel::{self, MAX_GROUPS};
use super::layout::shader_struct;
use super::shader::Variant;
use crate::error::{Error, Result};

/// A strided view of a buffer as a matrix: element (r, c) at `offset + r·row_stride + c·col_stride`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// Row-major with `cols` columns.
    pub fn rows(buffer: &'a wgpu::Buffer, offset: usize, cols: usize) -> Self {
        Self {
            buffer,
            offset,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(buffer: &'a wgpu::Buffer, offset: usize, cols: usize) -> Self {
        Self {
            buffer,
            offset,
            row_stride: 1,
            col_stride: cols,
        }
    }
}

shader_struct! {
    pub(crate) struct Params in "matmul" {
        m: u32,
        n: u32,
        k: u32,
        a_off: u32,
        a_rs: u32,
        a_cs: u32,
        b_off: u32,
        b_rs: u32,
        b_cs: u32,
        c_off: u32,
        c_rs: u32,
        alpha: f32,
        beta: f32,
        k_per_group: u32,
        c_split: u32,
        splits: u32,
        upper: u32,
        pad0: u32,
        pad1: u32,
        pad2: u32,
    }
}

const TILE: usize = super::sizes::MATMUL_TILE as usize;
/// The C tile of `matmul_direct` (8×8 invocations, 4×4 each), rows × columns.
const DIRECT_TILE: (usize, usize) = (32, 32);
/// The C tile of `matmul_rows` (8 rows shared by 64 invocations, 4 columns each), and the
/// products that take it: wide enough that few of its columns idle, with tiles for every core.
const ROWS_TILE: (usize, usize) = (8, 256);
const ROWS_FROM_COLUMNS: usize = 192;
const ROWS_FROM_TILES: usize = 16;

/// The inner dimension one dispatch reduces over: longer products are split into dispatches that
/// accumulate (some drivers end a workgroup's loop after a few thousand barriers; Mesa 22's
/// lavapipe stops near k = 58,000, silently).
pub const MAX_K_PER_DISPATCH: usize = 16384;

/// Cloned into every family that multiplies (the pipelines are shared handles, compiled once).
#[derive(Clone)]
pub struct MatmulKernel {
    pipeline: wgpu::ComputePipeline,
    /// with the direct kernel, its variant for wide products (rows shared by a workgroup)
    rows: Option<wgpu::ComputePipeline>,
    /// the C tile one workgroup computes (rows, columns): 64 × 64 (workgroup memory) or 32 × 64
    /// (direct)
    tile: (usize, usize),
    reduce: wgpu::ComputePipeline,
}

/// Workgroups worth having in flight: below this many output tiles, k is split among more.
const WANTED_GROUPS: usize = 256;
/// Split-k slices are at least this long, so each workgroup has real work.
const MIN_K_PER_GROUP: usize = 1024;

fn to_u32(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Shape(format!("index {v} beyond the 32-bit addressing of the GPU kernels")))
}

impl MatmulKernel {
    /// `direct`: the kernel without workgroup memory (for CPU adapters).
    pub fn new(ctx: &GpuContext, direct: bool) -> Result<Self> {
        let module = kernel::compile(ctx, "matmul", &Variant::default())?;
        let (entry, tile) = if direct {
            ("matmul_direct", DIRECT_TILE)
        } else {
            ("matmul", (TILE, TILE))
        };
        Ok(Self {
            pipeline: kernel::pipeline(ctx, &module, entry, None)?,
            rows: direct
                .then(|| kernel::pipeline(ctx, &module, "matmul_rows", None))
                .transpose()?,
            tile,
            reduce: kernel::pipeline(ctx, &module, "matmul_reduce", None)?,
        })
    }

    /// Records `C = α·A·B + β·C` for A: m×k, B: k×n and C: m×n (row-major, row stride `c.row_stride`).
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass,
        dims: (usize, usize, usize),
        a: View,
        b: View,
        c: View,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        self.record_with(ctx, pass, dims, a, b, c, alpha, beta, false)
    }

    /// Records `C = α·A·B + β·C` (m×m) for a product known to be symmetric (`B = Aᵀ`, as in
    /// `XᵀX`, and C symmetric when β ≠ 0): only the tiles touching the upper triangle run, and
    /// each writes its elements to both halves, which comes out exactly symmetric. A split-k
    /// product is computed whole.
    #[allow(clippy::too_many_arguments)]
    pub fn record_symmetric(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass,
        (m, k): (usize, usize),
        a: View,
        b: View,
        c: View,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        self.record_with(ctx, pass, (m, m, k), a, b, c, alpha, beta, true)
    }

    /// Whether this is the direct kernel of CPU adapters.
    pub fn is_direct(&self) -> bool {
        self.rows.is_some()
    }

    #[allow(clippy::too_many_arguments)]
    fn record_with(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass,
        (m, n, k): (usize, usize, usize),
        a: View,
        b: View,
        c: View,
        alpha: f32,
        beta: f32,
        symmetric: bool,
    ) -> Result<()> {
        let (pipeline, tile) = match &self.rows {
            Some(rows)
                if n >= ROWS_FROM_COLUMNS && n.div_ceil(ROWS_TILE.1) * m.div_ceil(ROWS_TILE.0) >= ROWS_FROM_TILES =>
            {
                (rows, ROWS_TILE)
            }
            _ => (&self.pipeline, self.tile),
        };
        let (gx, gy) = (n.div_ceil(tile.1), m.div_ceil(tile.0));
        let block = MAX_GROUPS as usize * tile.0;
        if gy > MAX_GROUPS as usize && !symmetric {
            // more rows (a batch's examples) than one dispatch's grid covers: blocks of rows,
            // each an ordinary product on its rows of A and C
            for r0 in (0..m).step_by(block) {
                let rows = block.min(m - r0);
                let a = View {
                    offset: a.offset + r0 * a.row_stride,
                    ..a
                };
                let c = View {
                    offset: c.offset + r0 * c.row_stride,
                    ..c
                };
                self.record_with(ctx, pass, (rows, n, k), a, b, c, alpha, beta, false)?;
            }
            return Ok(());
        }
        if gx > MAX_GROUPS as usize || gy > MAX_GROUPS as usize {
            return Err(Error::Shape(format!("a {m}×{n} product is beyond the GPU grid")));
        }
        // slices: enough that no workgroup reduces more than MAX_K_PER_DISPATCH, and, with few
        // output tiles, enough to keep the device busy
        let tiles = gx * gy;
        let for_device = if tiles < WANTED_GROUPS {
            (k / MIN_K_PER_GROUP).min(WANTED_GROUPS / tiles)
        } else {
            1
        };
        let splits = k
            .div_ceil(MAX_K_PER_DISPATCH)
            .max(for_device)
            .clamp(1, MAX_GROUPS as usize);
        let k_per_group = k.div_ceil(splits).next_multiple_of(16).max(16);
        let splits = k.div_ceil(k_per_group).max(1);
        let base = Params {
            m: to_u32(m)?,
            n: to_u32(n)?,
            k: to_u32(k)?,
            a_off: to_u32(a.offset)?,
            a_rs: to_u32(a.row_stride)?,
            a_cs: to_u32(a.col_stride)?,
            b_off: to_u32(b.offset)?,
            b_rs: to_u32(b.row_stride)?,
            b_cs: to_u32(b.col_stride)?,
            c_off: to_u32(c.offset)?,
            c_rs: to_u32(c.row_stride)?,
            alpha,
            beta,
            k_per_group: to_u32(k_per_group)?,
            c_split: 0,
            splits: 1,
            upper: (symmetric && splits == 1) as u32,
            ..Default::default()
        };
        pass.set_pipeline(pipeline);
        if splits == 1 {
            let uniform = ctx.uniform(&base)?;
            let group = kernel::bind(ctx, pipeline, "matmul", &[&uniform, a.buffer, b.buffer, c.buffer]);
            pass.set_bind_group(0, &group, &[]);
            ctx.dispatch(pass, (gx as u32, gy as u32, 1))?;
            return Ok(());
        }
        let slice = m * n;
        // every slice is written before the reduction reads it: one scratch per size serves all
        let bytes = (splits * slice * 4) as u64;
        let scratch = ctx.engine.scratch(bytes, || {
            ctx.storage_buffer(
                "split-k partial products",
                &format!("{splits}×{m}×{n} f32"),
                bytes,
                wgpu::BufferUsages::empty(),
            )
        })?;
        let partial = Params {
            upper: 0,
            c_off: 0,
            c_rs: to_u32(n)?,
            c_split: to_u32(slice)?,
            ..base
        };
        let uniform = ctx.uniform(&partial)?;
        let group = kernel::bind(ctx, pipeline, "matmul", &[&uniform, a.buffer, b.buffer, &scratch]);
        pass.set_bind_group(0, &group, &[]);
        ctx.dispatch(pass, (gx as u32, gy as u32, to_u32(splits)?))?;
        let sum = Params {
            upper: 0,
            c_split: to_u32(slice)?,
            splits: to_u32(splits)?,
            ..base
        };
        let uniform = ctx.uniform(&sum)?;
        let group = kernel::bind_some(
            ctx,
            &self.reduce,
            "matmul reduce",
            &[(0, &uniform), (3, c.buffer), (4, &scratch)],
        );
        let (rx, ry) = kernel::grid(to_u32(slice.div_ceil(256))?);
        pass.set_pipeline(&self.reduce);
        pass.set_bind_group(0, &group, &[]);
        ctx.dispatch(pass, (rx, ry, 1))?;
        Ok(())
    }
}
