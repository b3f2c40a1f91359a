//! Per-GPU telemetry through NVML (nvml-wrapper): one [`GpuTelemetry`] per sample, plus the energy counter the
//! backend reads around each shard for joules per task.
//!
//! NVML is loaded at run time (`libnvidia-ml.so`, shipped with the driver) and initialised once per process;
//! every reading is optional, because GPUs and drivers differ in what they report. Xid errors come from an
//! NVML event set registered per GPU and drained at each sample into a counter.

use crate::{
    BackendError,
    gpu::{GpuTelemetry, hostname},
};
use nvml_wrapper::{
    Device, Nvml,
    bitmasks::event::EventTypes,
    enum_wrappers::device::{Clock, TemperatureSensor},
    enums::event::XidError,
    error::NvmlError,
    event::EventSet,
};
use std::sync::{Mutex, OnceLock};

/// NVML, initialised at most once per process (`Err` holds why it could not be).
static NVML: OnceLock<Result<Nvml, String>> = OnceLock::new();

fn nvml() -> Result<&'static Nvml, BackendError> {
    NVML.get_or_init(|| {
        Nvml::init().map_err(|e| {
            format!(
                "NVML is unavailable ({e}): GPU telemetry needs the NVIDIA driver's libnvidia-ml.so; \
                 check `nvidia-smi`"
            )
        })
    })
    .as_ref()
    .map_err(|e| BackendError::CudaUnavailable(e.clone()))
}

/// Xid events of one GPU, drained at each sample.
struct XidState {
    set: Option<EventSet<'static>>,
    count: u64,
    last: Option<u64>,
}

/// Samples one GPU through NVML. `Send + Sync`; [`GpuMonitor::sample`] is cheap enough for every scrape.
pub struct GpuMonitor {
    device: Device<'static>,
    index: u32,
    uuid: String,
    model_name: String,
    hostname: String,
    xid: Mutex<XidState>,
}

impl std::fmt::Debug for GpuMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuMonitor")
            .field("gpu", &self.index)
            .field("uuid", &self.uuid)
            .field("model_name", &self.model_name)
            .finish()
    }
}

fn nvml_err(what: &str, e: NvmlError) -> BackendError {
    BackendError::CudaUnavailable(format!("NVML could not {what}: {e}"))
}

impl GpuMonitor {
    /// The monitor of the GPU with NVML index `index` (the `nvidia-smi` order).
    pub fn open(index: u32) -> Result<Self, BackendError> {
        let nvml = nvml()?;
        let device = nvml.device_by_index(index).map_err(|e| nvml_err("open the GPU", e))?;
        Self::from_device(nvml, device)
    }

    /// The monitor of the GPU with this `GPU-…` UUID (how a CUDA ordinal is matched to NVML, whose order
    /// can differ from CUDA's).
    pub fn open_by_uuid(uuid: &str) -> Result<Self, BackendError> {
        let nvml = nvml()?;
        let device = nvml.device_by_uuid(uuid).map_err(|e| nvml_err("find the GPU by UUID", e))?;
        Self::from_device(nvml, device)
    }

    /// A monitor per GPU NVML sees.
    pub fn all() -> Result<Vec<Self>, BackendError> {
        let count = nvml()?.device_count().map_err(|e| nvml_err("count the GPUs", e))?;
        (0..count).map(Self::open).collect()
    }

    fn from_device(nvml: &'static Nvml, device: Device<'static>) -> Result<Self, BackendError> {
        let index = device.index().map_err(|e| nvml_err("read the GPU index", e))?;
        let uuid = device.uuid().map_err(|e| nvml_err("read the GPU UUID", e))?;
        let model_name = device.name().unwrap_or_else(|_| "NVIDIA GPU".into());
        // Xid events: best effort (not supported on every GPU, and needs the driver's event support).
        let set = nvml
            .create_event_set()
            .ok()
            .and_then(|set| device.register_events(EventTypes::CRITICAL_XID_ERROR, set).ok());
        Ok(Self {
            device,
            index,
            uuid,
            model_name,
            hostname: hostname(),
            xid: Mutex::new(XidState { set, count: 0, last: None }),
        })
    }

    /// NVML index (`gpu` label).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// `GPU-…` UUID.
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// Product name.
    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// Energy used since the driver loaded, joules (`None` where unsupported).
    pub fn energy_joules(&self) -> Option<f64> {
        self.device.total_energy_consumption().ok().map(|mj| mj as f64 / 1000.0)
    }

    /// Drains pending Xid events into the counter; returns (count, last).
    fn drain_xid(&self) -> (u64, Option<u64>) {
        let Ok(mut state) = self.xid.lock() else { return (0, None) };
        let mut new = (0u64, None);
        if let Some(set) = &state.set {
            // `wait(0)` returns at once: an event, or `Timeout` when none is pending.
            for _ in 0..1024 {
                match set.wait(0) {
                    Ok(event) if event.event_type.contains(EventTypes::CRITICAL_XID_ERROR) => {
                        new.0 += 1;
                        if let Some(XidError::Value(v)) = event.event_data {
                            new.1 = Some(v);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        state.count += new.0;
        if new.1.is_some() {
            state.last = new.1;
        }
        (state.count, state.last)
    }

    /// One sample of every reading NVML has for this GPU.
    pub fn sample(&self) -> GpuTelemetry {
        let d = &self.device;
        let utilization = d.utilization_rates().ok();
        let memory = d.memory_info().ok();
        let mhz = |clock| d.clock_info(clock).ok().map(|mhz| u64::from(mhz) * 1_000_000);
        let (xid_errors_total, last_xid) = self.drain_xid();
        GpuTelemetry {
            gpu: self.index,
            uuid: self.uuid.clone(),
            model_name: self.model_name.clone(),
            hostname: self.hostname.clone(),
            gpu_utilization_ratio: utilization.as_ref().map(|u| f64::from(u.gpu) / 100.0),
            memory_utilization_ratio: utilization.as_ref().map(|u| f64::from(u.memory) / 100.0),
            memory_used_bytes: memory.as_ref().map(|m| m.used),
            memory_free_bytes: memory.as_ref().map(|m| m.free),
            memory_total_bytes: memory.as_ref().map(|m| m.total),
            temperature_celsius: d.temperature(TemperatureSensor::Gpu).ok().map(f64::from),
            power_watts: d.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
            power_limit_watts: d.enforced_power_limit().ok().map(|mw| f64::from(mw) / 1000.0),
            energy_joules_total: self.energy_joules(),
            sm_clock_hz: mhz(Clock::SM),
            memory_clock_hz: mhz(Clock::Memory),
            graphics_clock_hz: mhz(Clock::Graphics),
            throttle_reasons: d.current_throttle_reasons().ok().map(|r| r.bits()),
            pcie_replays_total: d.pcie_replay_counter().ok().map(u64::from),
            xid_errors_total,
            last_xid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_driver_nvml_is_a_clear_error() {
        // On machines with an NVIDIA driver this opens GPU 0 (or says there is none); elsewhere it must fail
        // with a message naming NVML, never panic.
        match GpuMonitor::open(0) {
            Ok(m) => assert!(m.uuid().starts_with("GPU-"), "{m:?}"),
            Err(e) => assert!(e.to_string().contains("NVML"), "{e}"),
        }
    }
}
