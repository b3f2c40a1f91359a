//! Starting a device: its worker and actor, the start-up measurement of its throughput (on the worker, under
//! the watchdog; skipped for a backend that declares its speed), and the advert the coordinator is sent.

use super::{
    actor::{DeviceActor, DeviceState},
    health::Health,
    row_cache::RowCache,
    worker::Worker,
};
use crate::metrics::{self as m, DeviceLabels};
use actix::Actor as _;
use cpc_common::{
    synthetic::Challenge,
    wire::{DeviceAdvert, RowCapacity, advertised_sizes},
};
use cpc_kernels::{Backend, BackendError, Shard};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::Semaphore;

/// Runs of the start-up measurement go on until this much time has passed (at least [`MEASURE_MIN_RUNS`], at
/// most [`MEASURE_MAX_RUNS`]): a product that takes microseconds is timed many times, so one run that shared
/// its core with the host's other work does not set the device's share of every job.
pub(crate) const MEASURE_BUDGET: Duration = Duration::from_millis(25);
/// Fewest runs of the start-up measurement.
pub(crate) const MEASURE_MIN_RUNS: u32 = 2;
/// Most runs of the start-up measurement.
pub(crate) const MEASURE_MAX_RUNS: u32 = 32;

/// Measures a backend's throughput on a whole `n × n` product, in ops per second: the best of
/// `MEASURE_MIN_RUNS` runs or more, as many as fit in `MEASURE_BUDGET` up to `MEASURE_MAX_RUNS`. Runs on
/// the calling thread: for the agent's devices [`start`] runs it on the device's worker, under the watchdog.
pub fn measure(backend: &dyn Backend, n: u32) -> Result<f64, BackendError> {
    if n == 0 {
        return Ok(1.0);
    }
    let challenge = Challenge::new("cpc-farm/measure", n, 1)
        .map_err(|e| BackendError::InvalidShard(e.to_string()))?;
    let shard = Shard::whole(challenge, 0)?;
    let mut best = f64::INFINITY;
    let started = Instant::now();
    let mut runs = 0;
    while runs < MEASURE_MIN_RUNS || (runs < MEASURE_MAX_RUNS && started.elapsed() < MEASURE_BUDGET)
    {
        let t = Instant::now();
        backend.run_shard(&shard, false)?;
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    let ops = 2.0 * f64::from(n).powi(3);
    Ok((ops / best.max(1e-9)).min(1e18))
}

/// How one device starts.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Matrix size of the throughput measurement (0: skip, announce 1 op/s).
    pub measure_n: u32,
    /// Watchdog timeout of one backend call.
    pub watchdog: Duration,
    /// Restarts of the device's worker after a watchdog firing before the agent gives the device up (0:
    /// give it up at the first firing).
    pub max_restarts: u32,
}

/// A started device: its actor, its advert, and whether it failed already (quarantined while measuring).
#[derive(Debug)]
pub struct Started {
    /// The actor.
    pub addr: actix::Addr<DeviceActor>,
    /// What the coordinator is told.
    pub advert: DeviceAdvert,
    /// Why it is quarantined, when the measurement failed.
    pub quarantined: Option<String>,
}

/// Starts a device's worker thread and actor, after measuring it (on the worker, under the watchdog: a device
/// that fails or hangs there starts quarantined). Errs only when the worker thread cannot start.
pub async fn start(
    index: u32,
    backend: Arc<dyn Backend>,
    cache: Arc<Mutex<RowCache>>,
    health: Health,
    options: &DeviceOptions,
) -> Result<Started, String> {
    let info = backend.info();
    let labels = DeviceLabels::of(index, backend.as_ref());
    let state = Arc::new(DeviceState {
        index,
        name: format!("device {index} ({})", backend.name()),
        worker: Worker::spawn(index, backend.clone(), backend.concurrent_shards())?,
        health,
        watchdog: options.watchdog,
        max_restarts: options.max_restarts,
        meters: m::ShardMeters::new(labels),
        cache,
        in_flight: Arc::new(Semaphore::new(backend.concurrent_shards().max(1))),
        keeps_rows: backend.keeps_rows_cheaply(),
    });
    m::device_healthy(state.meters.labels(), true);
    state.health.register(index);
    if let Some(status) = backend.gpu_status() {
        m::gpu_status(state.meters.labels(), &status);
    }
    let n = options.measure_n;
    let measured = match backend.declared_ops_per_sec() {
        Some(ops) => Ok(Ok(ops)),
        None => {
            state
                .call(|| "the start-up measurement".into(), move |backend| measure(backend, n))
                .await
        }
    };
    let (ops, quarantined) = match measured {
        Ok(Ok(ops)) => (ops, None),
        Ok(Err(e)) if e.retry_later() => {
            // Out of memory for now (a desktop session, another process): the device serves anyway, and
            // announces the lowest throughput until it measures better.
            tracing::warn!(device = index, name = %state.name, error = %e, "the start-up measurement failed; the device serves anyway");
            (1.0, None)
        }
        Ok(Err(e)) => {
            let reason = format!("{}: the start-up measurement failed: {e}", state.name);
            state.backend_failed(&e, &reason);
            (1.0, Some(reason))
        }
        Err(reason) => {
            state.quarantine(&reason);
            (1.0, Some(reason))
        }
    };
    m::device_measured(state.meters.labels(), ops);
    let advert = DeviceAdvert {
        index,
        kind: backend.kind_name().to_owned(),
        name: format!("{} [{}]", info.name, backend.name()),
        memory_bytes: info.memory_bytes,
        measured_ops_per_sec: ops,
        concurrent_shards: u32::try_from(backend.concurrent_shards()).unwrap_or(u32::MAX),
        row_capacity: advertised_sizes()
            .map(|matrix_size| RowCapacity { matrix_size, max_rows: backend.max_rows(matrix_size) })
            .collect(),
    };
    Ok(Started { addr: DeviceActor { state }.start(), advert, quarantined })
}
