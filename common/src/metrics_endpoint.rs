//! The process's Prometheus recorder and its HTTP endpoint (`/metrics`, `/healthz`, `/readyz`), shared by
//! the coordinator and the agent. Behind the `metrics-endpoint` feature, so the protocol itself stays free
//! of I/O.
//!
//! The endpoint is reachable by anyone who can reach the port, so it defends itself: at most
//! [`EndpointLimits::max_connections`] connections are served at once (further ones are closed at once),
//! a client must send its request headers within
//! [`EndpointLimits::header_read_timeout`] (a slowloris client is cut off), and no connection lives longer
//! than [`EndpointLimits::max_connection_age`]. Memory stays bounded however many sockets are opened.
//!
//! One recorder per process: the first role to call [`install_recorder`] installs it (with its metric
//! descriptions and `cpcfarm_build_info{role}`); later callers (a second role in the same test process)
//! add their descriptions and share the same handle, so `/metrics` always shows everything.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::{
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

/// Histogram buckets (seconds) for every latency metric: 1 ms to 15 min.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
/// The `process_*` metrics, refreshed on every scrape.
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

/// The source revision the binary was built from (`CPC_BUILD_REVISION` at build time, e.g. the git
/// commit the Dockerfile is given), for `cpcfarm_build_info`.
pub const BUILD_REVISION: &str = match option_env!("CPC_BUILD_REVISION") {
    Some(revision) => revision,
    None => "unknown",
};

/// Installs the process's recorder (once), registers `describe`'s metric descriptions and sets
/// `cpcfarm_build_info{version, revision, role}`; answers the handle that renders `/metrics` (with the
/// `process_*` metrics refreshed at each scrape).
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
                "Always 1; labels carry the version, source revision and role."
            );
            PROCESS.get_or_init(metrics_process::Collector::default).describe();
            handle
        })
        .clone();
    describe();
    metrics::gauge!(
        "cpcfarm_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "revision" => BUILD_REVISION,
        "role" => role
    )
    .set(1.0);
    handle
}

/// Default most connections served at once (a Prometheus server or two, probes, an operator's curl).
pub const DEFAULT_MAX_CONNECTIONS: usize = 32;
/// Default time a client has to send its request headers (and an idle keep-alive connection to send
/// the next request).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Default longest life of one connection (a keep-alive scraper simply reconnects).
pub const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
/// How long a connection past its age may take to finish the response in hand.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Bounds on what clients of the endpoint may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointLimits {
    /// Connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// Time to receive a request's headers, from the moment the server waits for them.
    pub header_read_timeout: Duration,
    /// Longest life of a connection.
    pub max_connection_age: Duration,
}

impl Default for EndpointLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connection_age: DEFAULT_MAX_CONNECTION_AGE,
        }
    }
}

/// Live connection counts of a running endpoint (clones share them).
#[derive(Debug, Clone, Default)]
pub struct ConnectionStats {
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    shed: Arc<AtomicUsize>,
}

impl ConnectionStats {
    /// Connections being served now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Most connections ever served at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Connections served since start.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections closed at once because every slot was taken.
    pub fn shed(&self) -> usize {
        self.shed.load(Ordering::Relaxed)
    }

    fn opened(&self) -> OpenConnection {
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        OpenConnection(Arc::clone(&self.open))
    }
}

/// Counts a connection as open until dropped.
#[derive(Debug)]
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers whether the process is ready (`/readyz` 200), or why not (the 503 body).
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Serves `/metrics` (from `handle`), `/healthz` (always 200) and `/readyz` (200 while `ready`, else 503
/// with `not_ready`) on `addr`, in the background, with the default [`EndpointLimits`]; answers the bound
/// address.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    ready: Arc<AtomicBool>,
    not_ready: &'static str,
) -> std::io::Result<SocketAddr> {
    let check: ReadyCheck =
        Arc::new(
            move || {
                if ready.load(Ordering::Relaxed) { Ok(()) } else { Err(not_ready.to_owned()) }
            },
        );
    serve_with_limits(addr, handle, check, EndpointLimits::default()).await.map(|(bound, _)| bound)
}

/// Serves `/metrics`, `/healthz` and `/readyz` (200 when `ready` answers `Ok`, else 503 with its
/// reason) on `addr` in the background, within `limits`; answers the bound address and the endpoint's
/// live connection counts.
pub async fn serve_with_limits(
    addr: SocketAddr,
    handle: PrometheusHandle,
    ready: ReadyCheck,
    limits: EndpointLimits,
) -> std::io::Result<(SocketAddr, ConnectionStats)> {
    use axum::{Router, http::StatusCode, routing::get};
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                if let Some(process) = PROCESS.get() {
                    process.collect();
                }
                std::future::ready(handle.render())
            }),
        )
        .route("/healthz", get(|| std::future::ready("ok")))
        .route(
            "/readyz",
            get(move || {
                std::future::ready(match ready() {
                    Ok(()) => (StatusCode::OK, "ready".to_owned()),
                    Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
                })
            }),
        );
    let stats = ConnectionStats::default();
    tokio::spawn(accept_loop(listener, app, limits, stats.clone()));
    Ok((bound, stats))
}

/// Serves any other small HTTP API of the process (the coordinator's admin API) on `listener` with the same
/// defences as the metrics endpoint: at most `limits.max_connections` at once, the header read timeout,
/// the connection age limit. Runs until the task running it is dropped or aborted.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: EndpointLimits,
    stats: ConnectionStats,
) {
    accept_loop(listener, app, limits, stats).await;
}

/// Accepts every connection; one that finds all `max_connections` slots taken is closed at once (shed), so
/// the kernel's accept queue never fills with clients left waiting, and a scraper retries as soon as a
/// slot frees. Each served connection gets the header timeout and the age limit.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: EndpointLimits,
    stats: ConnectionStats,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("metrics endpoint cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            stats.shed.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let open = stats.opened();
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _open = open;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                () = tokio::time::sleep(limits.max_connection_age) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    fn test_handle() -> PrometheusHandle {
        PrometheusBuilder::new().build_recorder().handle()
    }

    fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect(addr)?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    }

    /// Many slowloris clients (half a request, or nothing at all, then silence) never hold more than the
    /// connection cap, are each cut off by the server, and a scrape afterwards is answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slowloris_clients_cannot_exhaust_the_endpoint() {
        const CAP: usize = 4;
        const ATTACKERS: usize = 40;
        let limits = EndpointLimits {
            max_connections: CAP,
            header_read_timeout: Duration::from_millis(200),
            max_connection_age: Duration::from_secs(60),
        };
        let (addr, stats) = serve_with_limits(
            "127.0.0.1:0".parse().expect("address"),
            test_handle(),
            Arc::new(|| Ok(())),
            limits,
        )
        .await
        .expect("binds");
        let closed_by_server = tokio::task::spawn_blocking(move || {
            let attackers: Vec<std::net::TcpStream> = (0..ATTACKERS)
                .map(|i| {
                    let mut s = std::net::TcpStream::connect(addr).expect("connects");
                    if i % 2 == 0 {
                        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: slow\r\nX-Slow: a")
                            .expect("writes");
                    }
                    // A bound on how long this test may hang, not a measurement.
                    s.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
                    s
                })
                .collect();
            attackers
                .into_iter()
                .filter(|s| {
                    let mut buf = [0u8; 1024];
                    let mut s = s;
                    // The server closes the connection: EOF, possibly after a 408 answer.
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => return true,
                            Ok(_) => continue,
                            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
                        }
                    }
                })
                .count()
        })
        .await
        .expect("attackers run");
        assert_eq!(closed_by_server, ATTACKERS, "every slowloris connection was cut off");
        assert!(stats.peak() <= CAP, "peak {} connections over the cap {CAP}", stats.peak());
        assert_eq!(
            stats.accepted() + stats.shed(),
            ATTACKERS,
            "every attacker was served (and cut off) or shed"
        );
        let answer = tokio::task::spawn_blocking(move || get(addr, "/healthz"))
            .await
            .expect("client runs")
            .expect("a scrape after the attack is answered");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(stats.peak() <= CAP);
    }
}
