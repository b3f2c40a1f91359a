//! The coordinator's Prometheus metrics (`cpcfarm_` prefix, base units, `_total` counters, no per-shard
//! labels) and the small HTTP endpoint that serves them with `/healthz` and `/readyz`.
//!
//! Metrics go through the `metrics` facade to the process's global recorder; [`install_recorder`] installs
//! the Prometheus one (once per process) when `--metrics` is given.

use super::{DeviceId, FarmError};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// Buckets of the latency histograms, in seconds.
/// Installs the process's Prometheus recorder (shared with an agent in the same process) with the
/// coordinator's metric descriptions, and answers its handle.
pub fn install_recorder() -> PrometheusHandle {
    cpc_common::metrics_endpoint::install_recorder("coordinator", describe)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("cpcfarm_agents_connected", "Agents connected to the coordinator.");
    describe_gauge!("cpcfarm_devices_connected", "Devices offered by connected agents.");
    describe_gauge!(
        "cpcfarm_devices_quarantined",
        "Devices that failed a spot check and get no shards."
    );
    describe_counter!(
        "cpcfarm_devices_quarantined_total",
        "Devices quarantined since start (alert on increase)."
    );
    describe_counter!("cpcfarm_shards_dispatched_total", "Shards sent to devices.");
    describe_counter!("cpcfarm_shards_completed_total", "Shards answered, checked and accepted.");
    describe_counter!(
        "cpcfarm_shards_reassigned_total",
        "Shards whose rows were sent to another device."
    );
    describe_counter!(
        "cpcfarm_shards_failed_total",
        "Shards lost to transport errors, timeouts or device errors."
    );
    describe_counter!("cpcfarm_spot_checks_passed_total", "Rows spot-checked and found right.");
    describe_counter!(
        "cpcfarm_spot_checks_failed_total",
        "Shards whose spot check found a wrong row."
    );
    describe_counter!(
        "cpcfarm_freivalds_checks_total",
        "Shards whose device ran the Freivalds check on its product, by outcome (pass; fail: a device \
         fault, the device quarantined and the shard recomputed elsewhere)."
    );
    describe_counter!(
        "cpcfarm_shards_unchecked_total",
        "Shards answered without a Freivalds check (a backend that does not run one)."
    );
    describe_histogram!(
        "cpcfarm_freivalds_check_ratio",
        "A checked shard's check time as a share of its device time (0-1)."
    );
    describe_counter!("cpcfarm_handshakes_refused_total", "Connections refused at the handshake.");
    describe_counter!("cpcfarm_jobs_total", "Jobs finished, by outcome.");
    describe_histogram!(
        "cpcfarm_shard_duration_seconds",
        Unit::Seconds,
        "Shard round trip, dispatch to verified."
    );
    describe_histogram!("cpcfarm_job_duration_seconds", Unit::Seconds, "Job makespan.");
    describe_gauge!(
        "cpcfarm_device_ops_per_second",
        "Achieved integer ops per second of a device's last shard."
    );
    describe_gauge!(
        "cpcfarm_device_measured_ops_per_second",
        "Ops per second the agent measured at start."
    );
}

/// The coordinator's metrics and readiness flag (clones share them).
#[derive(Debug, Clone, Default)]
pub struct FarmMetrics {
    /// Whether `/readyz` answers 200.
    pub ready: Arc<AtomicBool>,
}

fn gpu_label(d: DeviceId) -> String {
    d.to_string()
}

impl FarmMetrics {
    /// Fresh metrics (not ready).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets readiness.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub(crate) fn connected(&self, agents: usize, devices: usize, quarantined: usize) {
        gauge!("cpcfarm_agents_connected").set(agents as f64);
        gauge!("cpcfarm_devices_connected").set(devices as f64);
        gauge!("cpcfarm_devices_quarantined").set(quarantined as f64);
    }

    pub(crate) fn device_measured(&self, d: DeviceId, ops: f64) {
        gauge!("cpcfarm_device_measured_ops_per_second", "gpu" => gpu_label(d)).set(ops);
    }

    pub(crate) fn quarantined_device(&self) {
        counter!("cpcfarm_devices_quarantined_total").increment(1);
    }

    pub(crate) fn handshake_refused() {
        counter!("cpcfarm_handshakes_refused_total").increment(1);
    }

    pub(crate) fn dispatched(&self) {
        counter!("cpcfarm_shards_dispatched_total").increment(1);
    }

    pub(crate) fn completed(&self, d: DeviceId, round_trip: Duration, ops: f64) {
        counter!("cpcfarm_shards_completed_total").increment(1);
        histogram!("cpcfarm_shard_duration_seconds").record(round_trip.as_secs_f64());
        if round_trip > Duration::ZERO {
            gauge!("cpcfarm_device_ops_per_second", "gpu" => gpu_label(d))
                .set(ops / round_trip.as_secs_f64());
        }
    }

    pub(crate) fn reassigned(&self) {
        counter!("cpcfarm_shards_reassigned_total").increment(1);
    }

    pub(crate) fn failed(&self) {
        counter!("cpcfarm_shards_failed_total").increment(1);
    }

    pub(crate) fn spot_checks(&self, passed: u32, failed: bool) {
        counter!("cpcfarm_spot_checks_passed_total").increment(u64::from(passed));
        if failed {
            counter!("cpcfarm_spot_checks_failed_total").increment(1);
        }
    }

    pub(crate) fn freivalds_check(
        &self,
        timing: Option<&cpc_common::wire::CheckTiming>,
        passed: bool,
    ) {
        match (passed, timing) {
            (false, _) => {
                counter!("cpcfarm_freivalds_checks_total", "outcome" => "fail").increment(1)
            }
            (true, None) => counter!("cpcfarm_shards_unchecked_total").increment(1),
            (true, Some(t)) => {
                counter!("cpcfarm_freivalds_checks_total", "outcome" => "pass").increment(1);
                if t.shard_micros > 0 {
                    histogram!("cpcfarm_freivalds_check_ratio")
                        .record(t.check_micros as f64 / t.shard_micros as f64);
                }
            }
        }
    }

    pub(crate) fn job_done(&self, makespan: Duration, ok: bool) {
        histogram!("cpcfarm_job_duration_seconds").record(makespan.as_secs_f64());
        counter!("cpcfarm_jobs_total", "outcome" => if ok { "ok" } else { "error" }).increment(1);
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr`; answers the bound address.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    ready: Arc<AtomicBool>,
) -> Result<SocketAddr, FarmError> {
    cpc_common::metrics_endpoint::serve(addr, handle, ready, "not ready")
        .await
        .map_err(|source| FarmError::Bind { addr, source })
}
