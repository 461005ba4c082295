//! Turning a WGSL kernel into pipelines: specialise, compile, and report failures as errors.

use super::context::GpuContext;
use super::shader::{self, Variant};
use crate::error::{Error, Result};

/// Workgroups per dimension wgpu guarantees everywhere; larger 1-D grids fold into 2-D.
pub const MAX_GROUPS: u32 = 65535;

/// The 2-D grid for `n` workgroups (kernels rebuild the index as `x + y · num_workgroups.x`).
pub fn grid(n: u32) -> (u32, u32) {
    (n.clamp(1, MAX_GROUPS), n.div_ceil(MAX_GROUPS).max(1))
}

/// Compiles kernel `name` specialised to `variant`.
pub fn compile(ctx: &GpuContext, name: &str, variant: &Variant) -> Result<wgpu::ShaderModule> {
    let source = shader::source(name, variant).map_err(Error::Gpu)?;
    ctx.validated(&format!("compiling {name}.wgsl"), || {
        ctx.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        })
    })
}

/// The pipeline of entry point `entry`; `layout: None` derives the layout from the shader.
///
/// Workgroup memory is not zeroed at the start of each workgroup: every kernel writes its
/// workgroup arrays before it reads them (staging tiles are written whole, reductions write one
/// slot per invocation or subgroup), and on the GL backend the zeroing that naga emits made Mesa
/// spend seconds compiling each kernel (12 s for the matmul, 0.2 s without).
pub fn pipeline(
    ctx: &GpuContext,
    module: &wgpu::ShaderModule,
    entry: &str,
    layout: Option<&wgpu::PipelineLayout>,
) -> Result<wgpu::ComputePipeline> {
    ctx.validated(&format!("creating pipeline {entry}"), || {
        ctx.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout,
            module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                zero_initialize_workgroup_memory: false,
                ..Default::default()
            },
            cache: None,
        })
    })
}

/// An explicit bind-group layout of buffers, `(binding, read-only, is uniform)` each: for kernel
/// files whose entry points share one bind group (a derived layout holds only the bindings its
/// entry point uses).
pub fn buffer_layout(ctx: &GpuContext, label: &str, bindings: &[(u32, bool, bool)]) -> wgpu::BindGroupLayout {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
        .iter()
        .map(|&(binding, read_only, uniform)| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: if uniform {
                    wgpu::BufferBindingType::Uniform
                } else {
                    wgpu::BufferBindingType::Storage { read_only }
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    ctx.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &entries,
    })
}

/// The pipeline layout of one bind group, `layout`.
pub fn pipeline_layout(ctx: &GpuContext, label: &str, layout: &wgpu::BindGroupLayout) -> wgpu::PipelineLayout {
    ctx.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(label),
        bind_group_layouts: &[Some(layout)],
        immediate_size: 0,
    })
}

/// The bind group of `pipeline`'s group 0 with `buffers[i]` at binding i (cached by the engine).
pub fn bind(
    ctx: &GpuContext,
    pipeline: &wgpu::ComputePipeline,
    label: &str,
    buffers: &[&wgpu::Buffer],
) -> wgpu::BindGroup {
    let numbered: Vec<(u32, &wgpu::Buffer)> = buffers.iter().enumerate().map(|(i, b)| (i as u32, *b)).collect();
    bind_some(ctx, pipeline, label, &numbered)
}

/// The bind group for a pipeline whose derived layout has only some of the file's bindings:
/// `(binding, buffer)` pairs (cached by the engine).
pub fn bind_some(
    ctx: &GpuContext,
    pipeline: &wgpu::ComputePipeline,
    label: &str,
    buffers: &[(u32, &wgpu::Buffer)],
) -> wgpu::BindGroup {
    ctx.engine.bind_group(&ctx.device, pipeline, None, label, buffers)
}

/// The bind group of an explicit `layout` shared by `pipeline` and others, `buffers[i]` at
/// binding i (cached by the engine).
pub fn bind_layout(
    ctx: &GpuContext,
    pipeline: &wgpu::ComputePipeline,
    layout: &wgpu::BindGroupLayout,
    label: &str,
    buffers: &[&wgpu::Buffer],
) -> wgpu::BindGroup {
    let numbered: Vec<(u32, &wgpu::Buffer)> = buffers.iter().enumerate().map(|(i, b)| (i as u32, *b)).collect();
    ctx.engine
        .bind_group(&ctx.device, pipeline, Some(layout), label, &numbered)
}
