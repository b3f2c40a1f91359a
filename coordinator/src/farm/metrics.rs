//! The coordinator's Prometheus metrics (`cpcfarm_` prefix, base units, `_total` counters, no per-shard
//! labels) and the small HTTP endpoint that serves them with `/healthz` and `/readyz`.
//!
//! Every metric the coordinator emits (farm, mining, L1, submissions) is described here, so
//! `promtool check metrics` finds a HELP line for each; counters are created at 0 when the recorder is
//! installed (and per identity by [`init_identity_series`]) so that an alert on `increase()` fires on
//! the first event rather than on the second. Per-device series belong to the agents, which label them
//! stably (host and GPU UUID); the coordinator exports farm-wide totals only, so one name has one meaning
//! and nothing is left behind when a device departs.
//!
//! Metrics go through the `metrics` facade to the process's global recorder; [`install_recorder`] installs
//! the Prometheus one (once per process) when `--metrics` is given.

use super::FarmError;
use crate::readiness::Readiness;
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

/// Counters without labels, created at 0 at start-up.
const COUNTERS: &[&str] = &[
    "cpcfarm_devices_quarantined_total",
    "cpcfarm_shards_dispatched_total",
    "cpcfarm_shards_completed_total",
    "cpcfarm_shards_reassigned_total",
    "cpcfarm_shards_failed_total",
    "cpcfarm_spot_checks_passed_total",
    "cpcfarm_spot_checks_failed_total",
    "cpcfarm_handshakes_refused_total",
    "cpcfarm_blocks_seen_total",
    "cpcfarm_l1_reorgs_total",
    "cpcfarm_l1_node_switches_total",
    "cpcfarm_tasks_derived_total",
    "cpcfarm_tasks_failed_total",
    "cpcfarm_tasks_superseded_total",
    "cpcfarm_blocks_caught_up_total",
    "cpcfarm_shards_unchecked_total",
];

/// Counters labelled by `identity`, created at 0 for every configured identity.
const IDENTITY_COUNTERS: &[&str] = &[
    "cpcfarm_submissions_sent_total",
    "cpcfarm_submissions_included_total",
    "cpcfarm_submissions_rejected_total",
    "cpcfarm_submissions_dropped_total",
    "cpcfarm_submissions_unfunded_total",
];

/// Installs the process's Prometheus recorder (shared with an agent in the same process) with the
/// coordinator's metric descriptions and its counters at 0, and answers its handle.
pub fn install_recorder() -> PrometheusHandle {
    cpc_common::metrics_endpoint::install_recorder("coordinator", || {
        describe();
        for name in COUNTERS {
            counter!(*name).increment(0);
        }
        for outcome in ["ok", "error"] {
            counter!("cpcfarm_jobs_total", "outcome" => outcome).increment(0);
        }
        for outcome in ["pass", "fail"] {
            counter!("cpcfarm_freivalds_checks_total", "outcome" => outcome).increment(0);
        }
        for name in ["cpcfarm_agents_connected", "cpcfarm_devices_connected"] {
            gauge!(name).increment(0.0);
        }
    })
}

/// Creates every per-identity counter at 0 for `identities`, so a first unfunded or rejected submission
/// is an increase from 0.
pub fn init_identity_series<'a>(identities: impl IntoIterator<Item = &'a str>) {
    for identity in identities {
        for name in IDENTITY_COUNTERS {
            counter!(*name, "identity" => identity.to_owned()).increment(0);
        }
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    // The farm.
    describe_gauge!("cpcfarm_agents_connected", "Agents connected to the coordinator.");
    describe_gauge!("cpcfarm_devices_connected", "Devices offered by connected agents.");
    describe_gauge!(
        "cpcfarm_devices_quarantined",
        "Devices that failed a spot check and get no shards."
    );
    describe_gauge!(
        "cpcfarm_devices_usable",
        "Devices that take shards now (connected, not draining, not quarantined)."
    );
    describe_gauge!(
        "cpcfarm_farm_measured_ops_per_second",
        "Sum of the integer ops per second the agents measured at start for their usable devices."
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
    describe_counter!("cpcfarm_jobs_total", "Jobs finished, by outcome (ok, error).");
    describe_histogram!(
        "cpcfarm_shard_duration_seconds",
        Unit::Seconds,
        "Shard round trip, dispatch to verified."
    );
    describe_histogram!("cpcfarm_job_duration_seconds", Unit::Seconds, "Job makespan.");
    // The L1.
    describe_gauge!(
        "cpcfarm_l1_node_up",
        "1 while the L1 node (label node = URL) answered its last call or health probe, else 0."
    );
    describe_counter!(
        "cpcfarm_l1_node_switches_total",
        "Changes of the L1 node calls go to (failovers and fail-backs)."
    );
    describe_gauge!("cpcfarm_l1_head_height", "Height of the newest L1 block seen.");
    describe_counter!("cpcfarm_l1_reorgs_total", "Head changes at the same height (reorgs).");
    describe_counter!("cpcfarm_blocks_seen_total", "New L1 blocks seen by the chain watcher.");
    // Mining.
    describe_counter!(
        "cpcfarm_tasks_derived_total",
        "Block tasks derived (one per identity and block)."
    );
    describe_counter!("cpcfarm_tasks_failed_total", "Block tasks whose computation failed.");
    describe_counter!(
        "cpcfarm_tasks_superseded_total",
        "Queued block tasks dropped because a newer block arrived."
    );
    describe_counter!(
        "cpcfarm_blocks_caught_up_total",
        "Blocks the chain follower did not see as heads (it was behind) whose tasks were planned with the next head."
    );
    describe_histogram!(
        "cpcfarm_task_compute_seconds",
        Unit::Seconds,
        "Compute time of one block task, queued to result."
    );
    describe_histogram!(
        "cpcfarm_block_to_submit_seconds",
        Unit::Seconds,
        "From seeing a block to sending its SUBMIT_RESULT."
    );
    describe_histogram!(
        "cpcfarm_result_to_submit_seconds",
        Unit::Seconds,
        "From a computed result to sending its SUBMIT_RESULT."
    );
    describe_histogram!(
        "cpcfarm_block_to_inclusion_seconds",
        Unit::Seconds,
        "From seeing a block to its SUBMIT_RESULT being included."
    );
    // Submissions, per identity.
    describe_counter!(
        "cpcfarm_submissions_sent_total",
        "SUBMIT_RESULTs sent to the L1, by identity."
    );
    describe_counter!(
        "cpcfarm_submissions_included_total",
        "SUBMIT_RESULTs found in a block, by identity."
    );
    describe_counter!(
        "cpcfarm_submissions_rejected_total",
        "SUBMIT_RESULTs the node rejected, by identity."
    );
    describe_counter!(
        "cpcfarm_submissions_dropped_total",
        "Sent SUBMIT_RESULTs the node lost (re-signed), by identity."
    );
    describe_counter!(
        "cpcfarm_submissions_unfunded_total",
        "Results not submitted because the identity could not pay the fee, by identity."
    );
    describe_gauge!(
        "cpcfarm_identity_funded",
        "1 while the identity can pay for its next submission, 0 when it cannot."
    );
    describe_gauge!("cpcfarm_identity_balance_cpc", "Balance of the identity, in CPC.");
}

/// The coordinator's metrics and readiness (clones share them).
#[derive(Debug, Clone, Default)]
pub struct FarmMetrics {
    /// Whether the farm has started (`/readyz` also asks [`Readiness`]).
    pub ready: Arc<AtomicBool>,
    /// The conditions of "can mine now".
    pub readiness: Arc<Readiness>,
}

impl FarmMetrics {
    /// Fresh metrics (not ready), with no readiness condition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fresh metrics (not ready) whose `/readyz` also asks `readiness`.
    pub fn with_readiness(readiness: Arc<Readiness>) -> Self {
        Self { ready: Arc::default(), readiness }
    }

    /// Sets whether the farm has started.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub(crate) fn connected(
        &self,
        agents: usize,
        devices: usize,
        quarantined: usize,
        usable: usize,
        usable_ops: f64,
    ) {
        gauge!("cpcfarm_agents_connected").set(agents as f64);
        gauge!("cpcfarm_devices_connected").set(devices as f64);
        gauge!("cpcfarm_devices_quarantined").set(quarantined as f64);
        gauge!("cpcfarm_devices_usable").set(usable as f64);
        gauge!("cpcfarm_farm_measured_ops_per_second").set(usable_ops);
        self.readiness.set_usable_devices(usable);
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

    pub(crate) fn completed(&self, round_trip: Duration) {
        counter!("cpcfarm_shards_completed_total").increment(1);
        histogram!("cpcfarm_shard_duration_seconds").record(round_trip.as_secs_f64());
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

/// Serves `/metrics`, `/healthz` and `/readyz` (200 once the farm started and every condition of
/// `metrics.readiness` holds) on `addr`; answers the bound address.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    metrics: &FarmMetrics,
) -> Result<SocketAddr, FarmError> {
    let (started, readiness) = (Arc::clone(&metrics.ready), Arc::clone(&metrics.readiness));
    let check: cpc_common::metrics_endpoint::ReadyCheck = Arc::new(move || {
        if !started.load(Ordering::Relaxed) {
            return Err("the farm is starting".to_owned());
        }
        readiness.check()
    });
    cpc_common::metrics_endpoint::serve_with_limits(
        addr,
        handle,
        check,
        cpc_common::metrics_endpoint::EndpointLimits::default(),
    )
    .await
    .map(|(bound, _)| bound)
    .map_err(|source| FarmError::Bind { addr, source })
}
