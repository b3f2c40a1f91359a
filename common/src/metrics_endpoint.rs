//! The process's Prometheus recorder and its HTTP endpoint (`/metrics`, `/healthz`, `/readyz`), shared by
//! the coordinator and the agent. Behind the `metrics-endpoint` feature, so the protocol itself stays free
//! of I/O.
//!
//! One recorder per process: the first role to call [`install_recorder`] installs it (with its metric
//! descriptions and `cpcfarm_build_info{role}`); later callers (a second role in the same test process)
//! add their descriptions and share the same handle, so `/metrics` always shows everything.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::{
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

/// Histogram buckets (seconds) for every latency metric: 1 ms to 15 min.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder (once), registers `describe`'s metric descriptions and sets
/// `cpcfarm_build_info{version, role}`; answers the handle that renders `/metrics`.
pub fn install_recorder(role: &'static str, describe: fn()) -> PrometheusHandle {
    let handle = HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder was already installed: /metrics shows only its own data"
                );
            }
            metrics::describe_gauge!(
                "cpcfarm_build_info",
                "Always 1; labels carry the version and role."
            );
            handle
        })
        .clone();
    describe();
    metrics::gauge!("cpcfarm_build_info", "version" => env!("CARGO_PKG_VERSION"), "role" => role)
        .set(1.0);
    handle
}

/// Serves `/metrics` (from `handle`), `/healthz` (always 200) and `/readyz` (200 while `ready`, else 503
/// with `not_ready`) on `addr`, in the background; answers the bound address.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    ready: Arc<AtomicBool>,
    not_ready: &'static str,
) -> std::io::Result<SocketAddr> {
    use axum::{Router, http::StatusCode, routing::get};
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
                    (StatusCode::SERVICE_UNAVAILABLE, not_ready)
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
