//! Adapter discovery and choice, the device with the adapter's own limits, and bounded waits.
//!
//! `WGPU_BACKEND` narrows the backends searched and `WGPU_ADAPTER_NAME` (or `--adapter`) picks
//! an adapter by a case-insensitive substring of its name. Every wait on the GPU carries a
//! timeout, and validation errors or a lost device surface as [`Error`]s at the next wait.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::engine::{Counts, Engine};
use crate::error::{Error, Result};

/// Optional features natgrad uses where the adapter has them, and never assumes.
pub const OPTIONAL_FEATURES: wgpu::Features = wgpu::Features::SUBGROUP
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
    .union(wgpu::Features::SHADER_F16);

/// How long one wait on the GPU may take before it becomes [`Error::Timeout`]: 120 s, or
/// `NATGRAD_GPU_TIMEOUT_S` (a slow software adapter on a large problem), which must then be a
/// positive number of seconds.
pub fn default_timeout() -> Result<Duration> {
    crate::error::seconds_from_env("NATGRAD_GPU_TIMEOUT_S", Duration::from_secs(120))
}

/// A wgpu instance over Vulkan, Metal and DX12, or the backends `WGPU_BACKEND` names.
/// GL is left out unless asked for: its compute path is limited, and probing it for EGL and
/// Wayland prints noise on headless machines.
pub fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::PRIMARY;
    wgpu::Instance::new(desc.with_env())
}

/// Every adapter the instance can see, best first (see [`preference`]).
pub fn adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut all = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    // a stable sort keeps the driver's order among equals
    all.sort_by_key(|a| std::cmp::Reverse(preference(&a.get_info())));
    all
}

/// Ranks adapters for `--device gpu`: hardware before software, native APIs before GL.
pub fn preference(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 1,
        wgpu::DeviceType::Cpu => 0,
    };
    let api = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 1,
        _ => 0,
    };
    (kind, api)
}

/// True for adapters that are real GPUs rather than CPU rasterisers (lavapipe, WARP, SwiftShader).
pub fn is_hardware(info: &wgpu::AdapterInfo) -> bool {
    !matches!(info.device_type, wgpu::DeviceType::Cpu)
}

/// The name filter in effect: `--adapter` if given, else `WGPU_ADAPTER_NAME`.
pub fn name_filter(adapter_flag: Option<&str>) -> Option<String> {
    adapter_flag
        .map(str::to_owned)
        .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
        .filter(|s| !s.is_empty())
}

/// The best adapter whose name contains `filter` (case-insensitive), if any.
pub fn pick<'a>(adapters: &'a [wgpu::Adapter], filter: Option<&str>) -> Option<&'a wgpu::Adapter> {
    matching(adapters, filter).into_iter().next()
}

/// The adapters whose name holds `filter` (case-insensitively; all of them without one), in order.
pub fn matching<'a>(adapters: &'a [wgpu::Adapter], filter: Option<&str>) -> Vec<&'a wgpu::Adapter> {
    let wanted = filter.map(str::to_lowercase);
    adapters
        .iter()
        .filter(|a| match &wanted {
            Some(w) => a.get_info().name.to_lowercase().contains(w),
            None => true,
        })
        .collect()
}

/// One line naming an adapter: name, backend, device type, driver.
pub fn describe(info: &wgpu::AdapterInfo) -> String {
    let driver = [info.driver.as_str(), info.driver_info.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{} ({:?}, {:?}, driver {})",
        info.name, info.backend, info.device_type, driver
    )
}

/// A device, its queue and what it may do: the one handle every GPU kernel records against.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    timeout: Duration,
    /// The first uncaptured wgpu error or device loss, raised at the next wait.
    fault: Arc<Mutex<Option<Error>>>,
    /// The open recording, the caches, and the counts of submissions and waits.
    pub(crate) engine: Engine,
}

impl GpuContext {
    /// Opens the best adapter matching `filter` (software adapters included).
    pub fn open(filter: Option<&str>) -> Result<Self> {
        let instance = instance();
        let all = adapters(&instance);
        let filter = name_filter(filter);
        let adapter = pick(&all, filter.as_deref()).ok_or_else(|| no_adapter(&all, filter.as_deref()))?;
        Self::from_adapter(adapter)
    }

    /// Opens a device on `adapter` with all of the adapter's limits and the optional features
    /// it supports.
    pub fn from_adapter(adapter: &wgpu::Adapter) -> Result<Self> {
        let info = adapter.get_info();
        let features = adapter.features() & OPTIONAL_FEATURES;
        // The adapter's own limits, not wgpu's conservative defaults: the Fisher of a few
        // thousand parameters already exceeds the default 128 MiB storage binding.
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("natgrad"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| Error::RequestDevice {
            adapter: info.name.clone(),
            reason: e.to_string(),
        })?;
        let fault = Arc::new(Mutex::new(None));
        let sink = fault.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::error!("wgpu: {e}");
            record_fault(&sink, Error::Gpu(one_line(&e.to_string())));
        }));
        let sink = fault.clone();
        device.set_device_lost_callback(move |reason, msg| {
            record_fault(&sink, Error::DeviceLost(format!("{reason:?}: {msg}")));
        });
        Ok(Self {
            device,
            queue,
            info,
            limits,
            features,
            timeout: default_timeout()?,
            fault,
            engine: Engine::default(),
        })
    }

    /// Changes how long a wait may take before it fails.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn has_subgroups(&self) -> bool {
        self.features.contains(wgpu::Features::SUBGROUP)
    }

    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Records into the open command encoder; nothing is submitted until the host must wait.
    pub fn record<T>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> T) -> T {
        self.engine.record(&self.device, f)
    }

    /// Submits everything recorded so far, then reports any fault seen so far.
    pub fn flush(&self) -> Result<wgpu::SubmissionIndex> {
        if self.engine.gated() {
            return Err(Error::Gpu(
                "a read-back inside a recorded solve: its operator must record work, not wait for it".into(),
            ));
        }
        let index = self.engine.flush(&self.device, &self.queue);
        self.check_fault()?;
        Ok(index)
    }

    /// Records a dispatch of `groups` workgroups, gated when a recorded solve is open.
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass, groups: (u32, u32, u32)) -> Result<()> {
        self.engine.dispatch(pass, groups)
    }

    /// Submissions and host waits since the device was opened.
    pub fn counts(&self) -> Counts {
        self.engine.counts()
    }

    /// Waits (bounded) for `submission` to finish, then reports any fault seen so far.
    pub fn wait(&self, submission: wgpu::SubmissionIndex) -> Result<()> {
        self.engine.count_sync();
        let poll = self.device.poll(wgpu::PollType::Wait {
            submission_index: Some(submission),
            timeout: Some(self.timeout),
        });
        self.check_fault()?;
        match poll {
            Ok(_) => Ok(()),
            Err(wgpu::PollError::Timeout) => Err(Error::Timeout(self.timeout)),
            Err(e) => Err(Error::Gpu(e.to_string())),
        }
    }

    /// Submits everything recorded and waits for it (bounded).
    pub fn finish(&self) -> Result<()> {
        let index = self.flush()?;
        self.wait(index)
    }

    /// Raises the first uncaptured error or device loss since the last check.
    pub fn check_fault(&self) -> Result<()> {
        match self.fault.lock().map(|mut f| f.take()) {
            Ok(Some(e)) => Err(e),
            Ok(None) => Ok(()),
            Err(_) => Err(Error::Gpu("fault slot poisoned".into())),
        }
    }

    /// Runs `f` inside a validation error scope and turns a captured error into [`Error::Gpu`]:
    /// pipeline and bind-group creation go through here so a bad shader is an error, not a panic.
    pub fn validated<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        match pollster::block_on(scope.pop()) {
            None => Ok(value),
            Some(e) => Err(Error::Gpu(format!("{what}: {}", one_line(&e.to_string())))),
        }
    }
}

fn record_fault(slot: &Mutex<Option<Error>>, e: Error) {
    if let Ok(mut slot) = slot.lock() {
        slot.get_or_insert(e);
    }
}

/// wgpu's messages span several lines; the library's errors are one line each: join them.
pub(super) fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The error for "nothing matched", listing what there is.
pub fn no_adapter(all: &[wgpu::Adapter], filter: Option<&str>) -> Error {
    let names: Vec<String> = all.iter().map(|a| a.get_info().name).collect();
    let seen = if names.is_empty() {
        match std::env::var("WGPU_BACKEND") {
            // the backends asked for may be the reason: say which were
            Ok(asked) => {
                format!(" (wgpu sees no adapters of WGPU_BACKEND={asked:?}; wgpu knows vulkan, metal, dx12 and gl)")
            }
            Err(_) => " (wgpu sees no adapters: install a Vulkan, Metal or DX12 driver; in CI, Mesa's lavapipe: \
                 apt-get install mesa-vulkan-drivers libvulkan1)"
                .to_string(),
        }
    } else {
        format!("; available: {}", names.join(", "))
    };
    match filter {
        Some(f) => Error::NoAdapter(format!(" matching {f:?}{seen}")),
        None => Error::NoAdapter(seen),
    }
}
