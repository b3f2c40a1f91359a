//! The NVML sampler: every [`SAMPLE_INTERVAL`], one [`GpuTelemetry`](cpc_kernels::gpu::GpuTelemetry) per
//! GPU from the backend's [`GpuMonitor`](cpc_kernels::gpu::GpuMonitor), exported on `/metrics` as the
//! `cpcfarm_gpu_*` series with DCGM's labels (see [`crate::metrics`]).
//!
//! Each GPU has its own sampler thread, so an NVML call stuck on a failing GPU stops only that GPU's readings.
//! Devices without a monitor (the CPU backend, or any build without the `cuda` feature, whose backends never
//! have one) get no sampler at all.

use crate::{DeviceSpec, device::Health, metrics as m};
use std::{
    sync::mpsc::{self, RecvTimeoutError},
    time::Duration,
};

/// How often each GPU is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// The running samplers; dropping this stops them (each within one interval; none is joined).
#[derive(Debug, Default)]
pub struct Samplers {
    stops: Vec<mpsc::Sender<()>>,
}

impl Samplers {
    /// Number of GPUs sampled.
    pub fn len(&self) -> usize {
        self.stops.len()
    }

    /// Whether no GPU is sampled.
    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }
}

/// Starts one sampler thread per device whose backend has an NVML monitor; each sample also goes to
/// `health`, whose reports the coordinator is sent (temperature, power, Xid errors, UUID).
pub fn start(devices: &[DeviceSpec], every: Duration, health: &Health) -> Samplers {
    let mut samplers = Samplers::default();
    for spec in devices {
        if spec.backend.monitor().is_none() {
            continue;
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let (backend, health, index) = (spec.backend.clone(), health.clone(), spec.index);
        let spawned =
            std::thread::Builder::new().name(format!("cpc-nvml-{}", spec.index)).spawn(move || {
                loop {
                    if let Some(monitor) = backend.monitor() {
                        let sample = monitor.sample();
                        m::gpu_telemetry(&sample);
                        health.sampled(index, &sample);
                    }
                    match stopped.recv_timeout(every) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            });
        match spawned {
            Ok(_) => samplers.stops.push(stop),
            Err(e) => tracing::warn!(
                device = spec.index,
                "no GPU telemetry: cannot start its sampler: {e}"
            ),
        }
    }
    samplers
}
