//! The agent's Prometheus metrics (`cpcfarm_` prefix, base units, `_total` counters, a `gpu` label per
//! device and no per-shard labels) and the `/metrics`, `/healthz`, `/readyz` endpoint of `--metrics`.

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::{
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the process's global recorder (once) and answers its handle.
pub fn install_recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder =
                builder.set_buckets(LATENCY_BUCKETS).unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder was already installed: /metrics shows only its own data"
                );
            }
            describe();
            gauge!("cpcfarm_build_info", "version" => env!("CARGO_PKG_VERSION"), "role" => "agent")
                .set(1.0);
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("cpcfarm_build_info", "Always 1; labels carry the version and role.");
    describe_gauge!("cpcfarm_agent_connected", "1 while the agent is admitted by its coordinator.");
    describe_gauge!("cpcfarm_agent_devices", "Devices this agent runs.");
    describe_counter!("cpcfarm_agent_reconnects_total", "Connection attempts after the first.");
    describe_counter!("cpcfarm_agent_shards_total", "Shards run, by outcome.");
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

pub(crate) fn device_measured(index: u32, ops: f64) {
    gauge!("cpcfarm_device_measured_ops_per_second", "gpu" => index.to_string()).set(ops);
}

pub(crate) fn shard_done(index: u32, ok: bool, timing: Option<(f64, f64)>) {
    counter!("cpcfarm_agent_shards_total", "outcome" => if ok { "ok" } else { "failed" })
        .increment(1);
    if let Some((secs, ops)) = timing {
        histogram!("cpcfarm_agent_shard_duration_seconds").record(secs);
        if secs > 0.0 {
            gauge!("cpcfarm_device_ops_per_second", "gpu" => index.to_string()).set(ops / secs);
        }
    }
}

pub(crate) fn row_cache_bytes(bytes: u64) {
    gauge!("cpcfarm_agent_row_cache_bytes").set(bytes as f64);
}

/// Serves `/metrics`, `/healthz` and `/readyz` (200 while admitted) on `addr`; answers the bound address.
pub async fn serve(addr: SocketAddr, ready: Arc<AtomicBool>) -> std::io::Result<SocketAddr> {
    use axum::{Router, http::StatusCode, routing::get};
    let handle = install_recorder();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/healthz", get(|| std::future::ready("ok")))
        .route(
            "/readyz",
            get(move || {
                std::future::ready(if ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not connected")
                })
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics endpoint stopped: {e}");
        }
    });
    Ok(bound)
}
