//! Which device runs the work (`--device auto|gpu|cpu`, `--adapter NAME`), and the listing that
//! `natgrad devices` prints.
//!
//! `auto` takes a hardware GPU when there is one and otherwise the CPU, which beats a software
//! adapter; `gpu` takes the best adapter there is, software ones included, and fails without one.

use std::fmt::Write;

use crate::backend::prelude::*;
use crate::cpu::Cpu;
use crate::error::Result;
use crate::gpu::{Gpu, GpuContext, GpuOptions, context};

/// The `--device` choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Gpu,
    Cpu,
}

/// What a choice resolves to before anything is opened.
pub enum Pick {
    Gpu(wgpu::Adapter),
    /// The CPU, and why (for the one-line notice).
    Cpu(String),
}

/// Resolves `choice` against the adapters wgpu sees; `filter` is `--adapter` (or
/// `WGPU_ADAPTER_NAME`).
pub fn pick(choice: DeviceChoice, filter: Option<&str>) -> Result<Pick> {
    if choice == DeviceChoice::Cpu {
        return Ok(Pick::Cpu("asked for with --device cpu".into()));
    }
    let all = context::adapters(&context::instance());
    let filter = context::name_filter(filter);
    let best = context::pick(&all, filter.as_deref());
    match (choice, best) {
        (DeviceChoice::Gpu, Some(a)) => Ok(Pick::Gpu(a.clone())),
        (DeviceChoice::Gpu, None) => Err(context::no_adapter(&all, filter.as_deref())),
        (_, Some(a)) if context::is_hardware(&a.get_info()) => Ok(Pick::Gpu(a.clone())),
        (_, Some(a)) => Ok(Pick::Cpu(format!(
            "the only GPU adapter is {} (software), slower than the CPU path; --device gpu uses it anyway",
            a.get_info().name
        ))),
        (_, None) => Ok(Pick::Cpu("no GPU adapter found".into())),
    }
}

/// The device a run measured, named for the records.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// "gpu" or "cpu"
    pub kind: String,
    pub adapter: String,
    pub backend: String,
}

/// An opened device of either kind.
pub enum AnyBackend {
    Gpu(Box<Gpu>),
    Cpu(Cpu),
}

/// Runs `$body` with `$b` bound to the backend inside an [`AnyBackend`], whichever it is.
#[macro_export]
macro_rules! with_backend {
    ($any:expr, $b:ident => $body:expr) => {
        match $any {
            $crate::device::AnyBackend::Gpu($b) => {
                let $b: &$crate::gpu::Gpu = &*$b;
                $body
            }
            $crate::device::AnyBackend::Cpu($b) => $body,
        }
    };
}

impl AnyBackend {
    pub fn describe(&self) -> String {
        with_backend!(self, b => b.describe())
    }

    pub fn kind(&self) -> &'static str {
        with_backend!(self, b => b.kind())
    }

    /// How a bench record names the device.
    pub fn info(&self) -> DeviceInfo {
        match self {
            AnyBackend::Gpu(g) => {
                let info = &g.context().info;
                DeviceInfo {
                    kind: "gpu".into(),
                    adapter: info.name.clone(),
                    backend: format!("{:?}", info.backend),
                }
            }
            AnyBackend::Cpu(c) => DeviceInfo {
                kind: "cpu".into(),
                adapter: c.describe(),
                backend: "cpu".into(),
            },
        }
    }
}

/// [`pick`] for the `local_rank`-th rank of a data-parallel run on one machine: where the machine
/// has several hardware GPUs on the picked one's API, rank k takes the k-th of them (round robin);
/// otherwise every rank takes the one pick.
pub fn pick_for_rank(choice: DeviceChoice, filter: Option<&str>, local_rank: usize) -> Result<Pick> {
    let picked = pick(choice, filter)?;
    let Pick::Gpu(best) = &picked else {
        return Ok(picked);
    };
    let info = best.get_info();
    if !context::is_hardware(&info) {
        return Ok(picked);
    }
    let all = context::adapters(&context::instance());
    let filter = context::name_filter(filter);
    let peers: Vec<&wgpu::Adapter> = context::matching(&all, filter.as_deref())
        .into_iter()
        .filter(|a| {
            let i = a.get_info();
            i.backend == info.backend && context::is_hardware(&i)
        })
        .collect();
    match peers.len() {
        0 | 1 => Ok(picked),
        n => Ok(Pick::Gpu(peers[local_rank % n].clone())),
    }
}

/// Opens the device `choice` resolves to; the string is the one-line notice of what was picked.
pub fn open(choice: DeviceChoice, filter: Option<&str>) -> Result<(AnyBackend, String)> {
    open_pick(pick(choice, filter)?)
}

/// [`open`] for the `local_rank`-th rank on its machine (see [`pick_for_rank`]).
pub fn open_for_rank(choice: DeviceChoice, filter: Option<&str>, local_rank: usize) -> Result<(AnyBackend, String)> {
    open_pick(pick_for_rank(choice, filter, local_rank)?)
}

fn open_pick(pick: Pick) -> Result<(AnyBackend, String)> {
    match pick {
        Pick::Gpu(adapter) => {
            let gpu = Gpu::with_context(GpuContext::from_adapter(&adapter)?, GpuOptions::default())?;
            let notice = format!("device: GPU {}", gpu.describe());
            Ok((AnyBackend::Gpu(Box::new(gpu)), notice))
        }
        Pick::Cpu(why) => {
            let cpu = Cpu::new();
            let notice = format!("device: {} ({why})", cpu.describe());
            Ok((AnyBackend::Cpu(cpu), notice))
        }
    }
}

/// Bytes as a short human-readable size.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The text of `natgrad devices`: every adapter with its key limits, then what `auto` and `gpu`
/// would pick.
pub fn listing(filter: Option<&str>) -> String {
    let all = context::adapters(&context::instance());
    let mut out = String::new();
    if all.is_empty() {
        out.push_str("no GPU adapters found (wgpu sees none: install a Vulkan, Metal or DX12 driver; for a software one, Mesa's lavapipe)\n");
    } else {
        out.push_str("GPU adapters, best first:\n");
    }
    for (i, adapter) in all.iter().enumerate() {
        let info = adapter.get_info();
        let l = adapter.limits();
        let f = adapter.features();
        let features: Vec<&str> = [
            (wgpu::Features::SUBGROUP, "subgroups"),
            (wgpu::Features::TIMESTAMP_QUERY, "timestamp queries"),
            (wgpu::Features::SHADER_F16, "f16"),
        ]
        .iter()
        .filter(|(flag, _)| f.contains(*flag))
        .map(|(_, name)| *name)
        .collect();
        let _ = writeln!(out, "  [{i}] {}", context::describe(&info));
        let _ = writeln!(
            out,
            "      max buffer {}, max storage binding {}, workgroup memory {}, {} invocations/workgroup, subgroup size {}..{}",
            human_bytes(l.max_buffer_size),
            human_bytes(l.max_storage_buffer_binding_size),
            human_bytes(l.max_compute_workgroup_storage_size as u64),
            l.max_compute_invocations_per_workgroup,
            info.subgroup_min_size,
            info.subgroup_max_size,
        );
        let _ = writeln!(
            out,
            "      optional features: {}",
            if features.is_empty() {
                "none".into()
            } else {
                features.join(", ")
            }
        );
    }
    let _ = writeln!(out, "CPU: {}", Cpu::new().describe());
    let picked = |choice| match pick(choice, filter) {
        Ok(Pick::Gpu(a)) => format!("GPU {}", context::describe(&a.get_info())),
        Ok(Pick::Cpu(why)) => format!("CPU ({why})"),
        Err(e) => format!("error: {e}"),
    };
    let _ = writeln!(out, "--device auto picks: {}", picked(DeviceChoice::Auto));
    let _ = writeln!(out, "--device gpu picks:  {}", picked(DeviceChoice::Gpu));
    out
}
