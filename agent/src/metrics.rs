//! The agent's Prometheus metrics (`cpcfarm_` prefix, base units, `_total` counters, a `gpu` label per
//! device and no per-shard labels) and the `/metrics`, `/healthz`, `/readyz` endpoint of `--metrics`.
//!
//! Per-device series carry [`DeviceLabels`]: for a GPU that NVML sees, DCGM's label set (`gpu` = NVML index,
//! `UUID`, `modelName`, `Hostname`), so dashboards can join them with NVIDIA's DCGM exporter and the labels
//! stay the same across restarts and reconnects; any other device (the CPU) gets `device` = its kind and
//! index (`cpu0`) and `Hostname`, never a `gpu` label that could clash with DCGM's in a join. The `cpcfarm_gpu_*` series come from the NVML sampler
//! ([`crate::telemetry`]) and exist only where the CUDA backend runs.

use crate::device::CancelledAt;
use cpc_kernels::{
    Backend,
    gpu::{GpuStatus, GpuTelemetry, dcgm_labels, hostname},
};
use metrics::{Counter, Gauge, Histogram, Label, counter, gauge, histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock, atomic::AtomicBool},
};

/// Installs the process's Prometheus recorder (shared with a coordinator in the same process) with the
/// agent's metric descriptions, and answers its handle.
pub fn install_recorder() -> PrometheusHandle {
    cpc_common::metrics_endpoint::install_recorder("agent", || {
        describe();
        // Counters exist at 0 from start-up, so an alert on `increase()` fires on the first event.
        counter!("cpcfarm_agent_reconnects_total").increment(0);
        for outcome in ["ok", "failed"] {
            counter!("cpcfarm_agent_shards_total", "outcome" => outcome).increment(0);
        }
        for at in [CancelledAt::Queued, CancelledAt::Running] {
            counter!("cpcfarm_agent_shards_cancelled_total", "stage" => at.as_str()).increment(0);
        }
        gauge!("cpcfarm_agent_connected").increment(0.0);
        gauge!("cpcfarm_agent_shards_in_hand").increment(0.0);
        gauge!("cpcfarm_agent_shards_running").increment(0.0);
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("cpcfarm_agent_connected", "1 while the agent is admitted by its coordinator.");
    describe_gauge!("cpcfarm_agent_devices", "Devices this agent runs.");
    describe_counter!("cpcfarm_agent_reconnects_total", "Connection attempts after the first.");
    describe_counter!("cpcfarm_agent_shards_total", "Shards run, by outcome.");
    describe_gauge!(
        "cpcfarm_agent_shards_in_hand",
        "Shards received and not answered yet: waiting for their device or running on it."
    );
    describe_gauge!("cpcfarm_agent_shards_running", "Shards running on this agent's devices now.");
    describe_counter!(
        "cpcfarm_agent_shards_cancelled_total",
        "Shards the coordinator cancelled (stopped their request stream) before their answer was sent, by \
         stage: queued (waiting for the device: never ran) or running (stopped, or finished and dropped)."
    );
    describe_histogram!(
        "cpcfarm_agent_shard_duration_seconds",
        Unit::Seconds,
        "Compute time of one shard."
    );
    describe_gauge!(
        "cpcfarm_device_ops_per_second",
        "Achieved integer ops per second of the device's last shard."
    );
    describe_gauge!("cpcfarm_device_measured_ops_per_second", "Ops per second measured at start.");
    describe_gauge!(
        "cpcfarm_agent_row_cache_bytes",
        Unit::Bytes,
        "Bytes of rows kept for spot checks."
    );
    describe_gauge!(
        "cpcfarm_agent_devices_quarantined",
        "Devices this agent quarantined (CUDA error or watchdog timeout); they take no more shards."
    );
    describe_gauge!(
        "cpcfarm_agent_device_healthy",
        "1 while the device takes shards, 0 once the agent quarantined it."
    );
    describe_gauge!(
        "cpcfarm_device_achieved_ops_per_second",
        "Integer ops per second the device achieved on its last shard (device time where the backend \
         measures it, wall time otherwise)."
    );
    describe_gauge!(
        "cpcfarm_device_joules_per_task",
        "Energy the GPU used for its last shard (NVML energy counter), joules."
    );
    describe_gauge!(
        "cpcfarm_gpu_utilization_ratio",
        "Fraction of the last NVML sample period in which a kernel ran (0-1)."
    );
    describe_gauge!("cpcfarm_gpu_memory_used_bytes", Unit::Bytes, "GPU memory in use.");
    describe_gauge!("cpcfarm_gpu_memory_total_bytes", Unit::Bytes, "GPU memory installed.");
    describe_gauge!("cpcfarm_gpu_temperature_celsius", "GPU die temperature, degrees Celsius.");
    describe_gauge!("cpcfarm_gpu_power_watts", "GPU power draw, watts.");
    describe_counter!(
        "cpcfarm_gpu_energy_joules_total",
        "Energy the GPU used since the driver loaded, joules."
    );
    describe_gauge!("cpcfarm_gpu_sm_clock_hertz", "GPU SM clock, hertz.");
    describe_gauge!("cpcfarm_gpu_mem_clock_hertz", "GPU memory clock, hertz.");
    describe_gauge!(
        "cpcfarm_gpu_throttle_reasons",
        "NVML clock-throttle reasons bitmask (as DCGM_FI_DEV_CLOCK_THROTTLE_REASONS; 0: none)."
    );
    describe_counter!("cpcfarm_gpu_pcie_replays_total", "PCIe replays (link errors retried).");
    describe_counter!(
        "cpcfarm_agent_freivalds_checks_total",
        "Freivalds checks of shard products run on the device, by outcome (pass, fail: a device fault)."
    );
    describe_histogram!(
        "cpcfarm_agent_freivalds_check_duration_seconds",
        Unit::Seconds,
        "Time of one Freivalds check on the device."
    );
    describe_histogram!(
        "cpcfarm_agent_freivalds_checked_shard_duration_seconds",
        Unit::Seconds,
        "Device time of one checked shard, its check included (the check's share of compute is \
         rate(check_duration_seconds_sum) / rate(this_sum))."
    );
    describe_gauge!(
        "cpcfarm_agent_freivalds_check_ratio",
        "The last checked shard's check time as a share of the shard's device time (0-1)."
    );
    describe_counter!(
        "cpcfarm_gpu_xid_errors_total",
        "Critical Xid errors NVML reported since the agent started."
    );
    describe_gauge!(
        "cpcfarm_gpu_info",
        "1 per GPU, labelled with the CUDA driver version, the NVRTC and cuBLASLt versions loaded and the \
         GEMM engine (gemm_engine=\"dp4a\" with fallback=\"true\": cuBLASLt could not run, 20-30x slower)."
    );
    describe_counter!(
        "cpcfarm_gpu_gemm_fallbacks_total",
        "GEMM shapes for which cuBLASLt failed and the dp4a kernel took over (each shape counted once)."
    );
    describe_counter!(
        "cpcfarm_agent_device_restarts_needed_total",
        "Sticky CUDA errors (illegal address, ...): the device's context is lost until the process restarts."
    );
    describe_counter!(
        "cpcfarm_agent_watchdog_firings_total",
        "Backend calls that outlived the watchdog (--watchdog-secs plus grace)."
    );
    describe_counter!(
        "cpcfarm_agent_device_restarts_total",
        "Restarts of a device's worker after its watchdog fired (capped by --max-device-restarts)."
    );
}

/// The labels of one device's series: DCGM's (`gpu`, `UUID`, `modelName`, `Hostname`) for a GPU with an NVML
/// monitor, `gpu` (the agent's device index) alone otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLabels(Vec<Label>);

impl DeviceLabels {
    /// The labels of device `index` run by `backend`.
    pub fn of(index: u32, backend: &dyn Backend) -> Self {
        match backend.monitor() {
            Some(m) => Self::dcgm(dcgm_labels(m.index(), m.uuid(), m.model_name(), &hostname())),
            None => Self(vec![
                Label::new("device", format!("{}{index}", backend.kind_name())),
                Label::new("Hostname", hostname()),
            ]),
        }
    }

    fn dcgm(labels: [(&'static str, String); 4]) -> Self {
        Self(labels.into_iter().map(|(k, v)| Label::new(k, v)).collect())
    }

    fn get(&self) -> Vec<Label> {
        self.0.clone()
    }
}

pub(crate) fn connected(up: bool) {
    gauge!("cpcfarm_agent_connected").set(if up { 1.0 } else { 0.0 });
}

pub(crate) fn devices(count: usize) {
    gauge!("cpcfarm_agent_devices").set(count as f64);
}

pub(crate) fn reconnect() {
    counter!("cpcfarm_agent_reconnects_total").increment(1);
}

pub(crate) fn shards_in_hand(count: usize) {
    gauge!("cpcfarm_agent_shards_in_hand").set(count as f64);
}

/// Counts a shard in `cpcfarm_agent_shards_running` while it lives.
#[derive(Debug)]
pub(crate) struct RunningShard(());

impl RunningShard {
    pub(crate) fn start() -> Self {
        gauge!("cpcfarm_agent_shards_running").increment(1.0);
        Self(())
    }
}

impl Drop for RunningShard {
    fn drop(&mut self) {
        gauge!("cpcfarm_agent_shards_running").decrement(1.0);
    }
}

pub(crate) fn shard_cancelled(at: CancelledAt) {
    counter!("cpcfarm_agent_shards_cancelled_total", "stage" => at.as_str()).increment(1);
}

pub(crate) fn device_measured(labels: &DeviceLabels, ops: f64) {
    gauge!("cpcfarm_device_measured_ops_per_second", labels.get()).set(ops);
}

/// The series a device updates on every shard, each looked up by name and labels once, at its first use
/// (so that it appears when it first has a value, as a lookup each time made it), instead of on every
/// shard: with a hundred devices answering thousands of shards a second, cloning the labels and finding
/// the series again was a noticeable part of an agent's time per shard.
pub(crate) struct ShardMeters {
    labels: DeviceLabels,
    ok: OnceLock<Counter>,
    failed: OnceLock<Counter>,
    duration: OnceLock<Histogram>,
    ops_per_second: OnceLock<Gauge>,
    achieved_ops_per_second: OnceLock<Gauge>,
}

impl std::fmt::Debug for ShardMeters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardMeters").field("labels", &self.labels).finish_non_exhaustive()
    }
}

impl ShardMeters {
    /// The meters of the device labelled `labels`.
    pub(crate) fn new(labels: DeviceLabels) -> Self {
        Self {
            labels,
            ok: OnceLock::new(),
            failed: OnceLock::new(),
            duration: OnceLock::new(),
            ops_per_second: OnceLock::new(),
            achieved_ops_per_second: OnceLock::new(),
        }
    }

    /// The device's labels.
    pub(crate) fn labels(&self) -> &DeviceLabels {
        &self.labels
    }

    /// A shard ended, `ok` or not; `timing` is its seconds and operations when it ran.
    pub(crate) fn done(&self, ok: bool, timing: Option<(f64, f64)>) {
        let total = |outcome: &'static str| move || counter!("cpcfarm_agent_shards_total", "outcome" => outcome);
        let counter = if ok {
            self.ok.get_or_init(total("ok"))
        } else {
            self.failed.get_or_init(total("failed"))
        };
        counter.increment(1);
        if let Some((secs, ops)) = timing {
            self.duration
                .get_or_init(|| histogram!("cpcfarm_agent_shard_duration_seconds"))
                .record(secs);
            if secs > 0.0 {
                self.ops_per_second
                    .get_or_init(|| gauge!("cpcfarm_device_ops_per_second", self.labels.get()))
                    .set(ops / secs);
            }
        }
    }

    /// What a shard achieved: ops per second (device time where measured) and, where known, its joules.
    pub(crate) fn work(&self, ops_per_second: f64, joules: Option<f64>) {
        self.achieved_ops_per_second
            .get_or_init(|| gauge!("cpcfarm_device_achieved_ops_per_second", self.labels.get()))
            .set(ops_per_second);
        if let Some(j) = joules {
            gauge!("cpcfarm_device_joules_per_task", self.labels.get()).set(j);
        }
    }
}

/// One Freivalds check: its outcome and, when it passed, its cost (check and whole-shard seconds).
pub(crate) fn freivalds_check(labels: &DeviceLabels, passed: bool, cost: Option<(f64, f64)>) {
    let outcome = if passed { "pass" } else { "fail" };
    let mut with_outcome = labels.get();
    with_outcome.push(Label::new("outcome", outcome));
    counter!("cpcfarm_agent_freivalds_checks_total", with_outcome).increment(1);
    if let Some((check, shard)) = cost {
        histogram!("cpcfarm_agent_freivalds_check_duration_seconds", labels.get()).record(check);
        histogram!("cpcfarm_agent_freivalds_checked_shard_duration_seconds", labels.get())
            .record(shard);
        if shard > 0.0 {
            gauge!("cpcfarm_agent_freivalds_check_ratio", labels.get()).set(check / shard);
        }
    }
}

pub(crate) fn device_healthy(labels: &DeviceLabels, healthy: bool) {
    gauge!("cpcfarm_agent_device_healthy", labels.get()).set(if healthy { 1.0 } else { 0.0 });
}

pub(crate) fn devices_quarantined(count: usize) {
    gauge!("cpcfarm_agent_devices_quarantined").set(count as f64);
}

/// Exports one NVML sample (readings the GPU does not report are left out).
pub(crate) fn gpu_telemetry(t: &GpuTelemetry) {
    let labels = DeviceLabels::dcgm(t.labels());
    let set = |name: &'static str, v: Option<f64>| {
        if let Some(v) = v {
            gauge!(name, labels.get()).set(v);
        }
    };
    set("cpcfarm_gpu_utilization_ratio", t.gpu_utilization_ratio);
    set("cpcfarm_gpu_memory_used_bytes", t.memory_used_bytes.map(|b| b as f64));
    set("cpcfarm_gpu_memory_total_bytes", t.memory_total_bytes.map(|b| b as f64));
    set("cpcfarm_gpu_temperature_celsius", t.temperature_celsius);
    set("cpcfarm_gpu_power_watts", t.power_watts);
    set("cpcfarm_gpu_sm_clock_hertz", t.sm_clock_hz.map(|h| h as f64));
    set("cpcfarm_gpu_mem_clock_hertz", t.memory_clock_hz.map(|h| h as f64));
    set("cpcfarm_gpu_throttle_reasons", t.throttle_reasons.map(|b| b as f64));
    if let Some(j) = t.energy_joules_total {
        // Whole joules: Prometheus counters here are integers, and a joule is fine enough for a total.
        counter!("cpcfarm_gpu_energy_joules_total", labels.get()).absolute(j.max(0.0) as u64);
    }
    if let Some(r) = t.pcie_replays_total {
        counter!("cpcfarm_gpu_pcie_replays_total", labels.get()).absolute(r);
    }
    counter!("cpcfarm_gpu_xid_errors_total", labels.get()).absolute(t.xid_errors_total);
}

/// Exports a GPU backend's versions and engine (`cpcfarm_gpu_info`) and its GEMM fallbacks.
pub(crate) fn gpu_status(labels: &DeviceLabels, status: &GpuStatus) {
    let libs = &status.libraries;
    let mut info = labels.get();
    info.push(Label::new("driver_cuda", libs.driver.to_string()));
    info.push(Label::new("nvrtc", libs.nvrtc.to_string()));
    info.push(Label::new(
        "cublaslt",
        libs.cublaslt.map_or_else(|| "none".into(), |v| v.to_string()),
    ));
    info.push(Label::new("gemm_engine", status.engine.as_str()));
    info.push(Label::new("fallback", if status.fallback.is_some() { "true" } else { "false" }));
    gauge!("cpcfarm_gpu_info", info).set(1.0);
    counter!("cpcfarm_gpu_gemm_fallbacks_total", labels.get()).absolute(status.shape_fallbacks);
}

/// Counts a device whose context is lost until the process restarts.
pub(crate) fn device_restart_needed(labels: &DeviceLabels) {
    counter!("cpcfarm_agent_device_restarts_needed_total", labels.get()).increment(1);
}

pub(crate) fn watchdog_fired(labels: &DeviceLabels) {
    counter!("cpcfarm_agent_watchdog_firings_total", labels.get()).increment(1);
}

pub(crate) fn device_restarted(labels: &DeviceLabels) {
    counter!("cpcfarm_agent_device_restarts_total", labels.get()).increment(1);
}

pub(crate) fn row_cache_bytes(bytes: u64) {
    gauge!("cpcfarm_agent_row_cache_bytes").set(bytes as f64);
}

/// Serves `/metrics`, `/healthz` and `/readyz` (200 while admitted) on `addr`; answers the bound address.
pub async fn serve(addr: SocketAddr, ready: Arc<AtomicBool>) -> std::io::Result<SocketAddr> {
    cpc_common::metrics_endpoint::serve(addr, install_recorder(), ready, "not connected").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_samples_export_with_dcgm_labels() {
        let handle = install_recorder();
        let t = GpuTelemetry {
            gpu: 7,
            uuid: "GPU-00112233-4455-6677-8899-aabbccddeeff".into(),
            model_name: "NVIDIA H100 80GB HBM3".into(),
            hostname: "node-7".into(),
            gpu_utilization_ratio: Some(0.5),
            memory_used_bytes: Some(1 << 30),
            memory_total_bytes: Some(80 << 30),
            temperature_celsius: Some(61.0),
            power_watts: Some(350.5),
            energy_joules_total: Some(12_345.6),
            sm_clock_hz: Some(1_980_000_000),
            memory_clock_hz: Some(2_619_000_000),
            throttle_reasons: Some(0x4),
            pcie_replays_total: Some(3),
            xid_errors_total: 2,
            ..GpuTelemetry::default()
        };
        gpu_telemetry(&t);
        let text = handle.render();
        let labels = "gpu=\"7\",UUID=\"GPU-00112233-4455-6677-8899-aabbccddeeff\",modelName=\"NVIDIA H100 80GB HBM3\",Hostname=\"node-7\"";
        for (name, value) in [
            ("cpcfarm_gpu_utilization_ratio", "0.5"),
            ("cpcfarm_gpu_memory_used_bytes", "1073741824"),
            ("cpcfarm_gpu_memory_total_bytes", "85899345920"),
            ("cpcfarm_gpu_temperature_celsius", "61"),
            ("cpcfarm_gpu_power_watts", "350.5"),
            ("cpcfarm_gpu_energy_joules_total", "12345"),
            ("cpcfarm_gpu_sm_clock_hertz", "1980000000"),
            ("cpcfarm_gpu_mem_clock_hertz", "2619000000"),
            ("cpcfarm_gpu_throttle_reasons", "4"),
            ("cpcfarm_gpu_pcie_replays_total", "3"),
            ("cpcfarm_gpu_xid_errors_total", "2"),
        ] {
            let line = format!("{name}{{{labels}}} {value}");
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }

    /// Versions and engine are labels of `cpcfarm_gpu_info`; fallbacks a counter.
    #[test]
    fn gpu_status_exports_versions_engine_and_fallbacks() {
        use cpc_kernels::gpu::{CudaLibraries, CudaVersion, GemmEngine};
        let handle = install_recorder();
        let labels = DeviceLabels(vec![Label::new("gpu", "41")]);
        let status = GpuStatus {
            libraries: CudaLibraries {
                driver: CudaVersion::new(12, 2),
                nvrtc: CudaVersion::new(12, 8),
                cublaslt: None,
            },
            engine: GemmEngine::Dp4a,
            fallback: Some("libcublasLt could not be loaded".into()),
            shape_fallbacks: 3,
        };
        gpu_status(&labels, &status);
        let text = handle.render();
        let info = "cpcfarm_gpu_info{gpu=\"41\",driver_cuda=\"12.2\",nvrtc=\"12.8\",cublaslt=\"none\",\
                    gemm_engine=\"dp4a\",fallback=\"true\"} 1";
        assert!(text.lines().any(|l| l == info), "{info} missing from:\n{text}");
        assert!(
            text.lines().any(|l| l == "cpcfarm_gpu_gemm_fallbacks_total{gpu=\"41\"} 3"),
            "{text}"
        );
    }
}
