//! One actor per device: it runs shards on its backend off the actor thread (`spawn_blocking`, one shard at a
//! time), keeps the rows of its recent shards in a bounded cache so that the coordinator can spot-check them,
//! and measures its throughput when it starts so that the coordinator can split jobs in proportion.

use crate::metrics as m;
use actix::{Actor, Context, Handler, Message, ResponseFuture};
use cpc_common::{
    synthetic::Challenge,
    wire::{DeviceAdvert, Response, RunShard},
};
use cpc_kernels::{Backend, Shard};
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Instant,
};
use tokio::sync::Semaphore;

/// Rows of C kept for spot checks, bounded by bytes (the newest shard is always kept).
#[derive(Debug)]
pub struct RowCache {
    budget: u64,
    used: u64,
    shards: VecDeque<CachedShard>,
}

#[derive(Debug)]
struct CachedShard {
    shard_id: u64,
    first_row: u32,
    n: u32,
    rows: Vec<i32>,
}

impl RowCache {
    /// A cache holding at most `budget` bytes of rows (plus the newest shard if it alone is larger).
    pub fn new(budget: u64) -> Self {
        Self { budget, used: 0, shards: VecDeque::new() }
    }

    /// Keeps the rows (row-major, `n` values a row) of a shard, evicting the oldest beyond the budget.
    pub fn insert(&mut self, shard_id: u64, first_row: u32, n: u32, rows: Vec<i32>) {
        self.used += rows.len() as u64 * 4;
        self.shards.push_back(CachedShard { shard_id, first_row, n, rows });
        while self.used > self.budget && self.shards.len() > 1 {
            if let Some(old) = self.shards.pop_front() {
                self.used -= old.rows.len() as u64 * 4;
            }
        }
        m::row_cache_bytes(self.used);
    }

    /// Row `row` (absolute) of shard `shard_id`, if still held.
    pub fn get(&self, shard_id: u64, row: u32) -> Option<Vec<i32>> {
        let s = self.shards.iter().find(|s| s.shard_id == shard_id)?;
        let i = row.checked_sub(s.first_row)? as usize;
        let n = s.n as usize;
        s.rows.get(i * n..(i + 1) * n).map(<[i32]>::to_vec)
    }

    /// Bytes held.
    pub fn used_bytes(&self) -> u64 {
        self.used
    }
}

/// The actor driving one device.
#[derive(Debug)]
pub struct DeviceActor {
    index: u32,
    backend: Arc<dyn Backend>,
    cache: Arc<Mutex<RowCache>>,
    one_at_a_time: Arc<Semaphore>,
}

impl DeviceActor {
    /// An actor for device `index`.
    pub fn new(index: u32, backend: Arc<dyn Backend>, cache: Arc<Mutex<RowCache>>) -> Self {
        Self { index, backend, cache, one_at_a_time: Arc::new(Semaphore::new(1)) }
    }
}

impl Actor for DeviceActor {
    type Context = Context<Self>;
}

/// Runs a shard and answers `ShardDone` or `ShardFailed`.
#[derive(Debug, Message)]
#[rtype(result = "Response")]
pub struct Compute(pub RunShard);

impl Handler<Compute> for DeviceActor {
    type Result = ResponseFuture<Response>;

    fn handle(&mut self, Compute(req): Compute, _: &mut Self::Context) -> Self::Result {
        let (backend, cache, gate, index) =
            (self.backend.clone(), self.cache.clone(), self.one_at_a_time.clone(), self.index);
        Box::pin(async move {
            let shard_id = req.shard_id;
            let failed = |reason: String| {
                m::shard_done(index, false, None);
                Response::ShardFailed { shard_id, reason }
            };
            let shard = match Challenge::new(req.seed, req.matrix_size, req.iterations)
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    Shard::new(c, req.iteration, req.rows.0..req.rows.1).map_err(|e| e.to_string())
                }) {
                Ok(s) => s,
                Err(e) => return failed(e),
            };
            let Ok(_permit) = gate.acquire_owned().await else {
                return failed("device is shutting down".into());
            };
            let started = Instant::now();
            let (rows, n, first) =
                (shard.row_count(), shard.challenge.matrix_size, shard.rows.start);
            let out = tokio::task::spawn_blocking(move || backend.run_shard(&shard, true)).await;
            let secs = started.elapsed().as_secs_f64();
            match out {
                Err(e) => failed(format!("device task panicked: {e}")),
                Ok(Err(e)) => failed(e.to_string()),
                Ok(Ok(output)) => {
                    let ops = 2.0 * f64::from(rows) * f64::from(n) * f64::from(n);
                    m::shard_done(index, true, Some((secs, ops)));
                    if let Some(values) = output.rows
                        && let Ok(mut c) = cache.lock()
                    {
                        c.insert(shard_id, first, n, values);
                    }
                    Response::ShardDone { shard_id, leaves: output.leaves }
                }
            }
        })
    }
}

/// Looks a row up in a cache.
pub fn fetch_row(cache: &Mutex<RowCache>, shard_id: u64, row: u32) -> Response {
    match cache.lock().ok().and_then(|c| c.get(shard_id, row)) {
        Some(values) => Response::Row { values },
        None => Response::RowUnavailable {
            reason: format!(
                "row {row} of shard {shard_id} is not held (evicted: raise --row-cache-mib)"
            ),
        },
    }
}

/// Measures a backend's throughput on a whole `n × n` product (best of two runs), in ops per second.
pub async fn measure(backend: Arc<dyn Backend>, n: u32) -> Result<f64, String> {
    if n == 0 {
        return Ok(1.0);
    }
    tokio::task::spawn_blocking(move || {
        let challenge = Challenge::new("cpc-farm/measure", n, 1).map_err(|e| e.to_string())?;
        let shard = Shard::whole(challenge, 0).map_err(|e| e.to_string())?;
        let mut best = f64::INFINITY;
        for _ in 0..2 {
            let t = Instant::now();
            backend.run_shard(&shard, false).map_err(|e| e.to_string())?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        let ops = 2.0 * f64::from(n).powi(3);
        Ok((ops / best.max(1e-9)).min(1e18))
    })
    .await
    .map_err(|e| format!("measurement panicked: {e}"))?
}

/// Starts a device's actor after measuring it; answers its address and its advert.
pub async fn start(
    index: u32,
    backend: Arc<dyn Backend>,
    cache: Arc<Mutex<RowCache>>,
    measure_n: u32,
) -> Result<(actix::Addr<DeviceActor>, DeviceAdvert), String> {
    let ops = measure(backend.clone(), measure_n).await?;
    let info = backend.info();
    m::device_measured(index, ops);
    let advert = DeviceAdvert {
        index,
        kind: info.kind.to_string(),
        name: format!("{} [{}]", info.name, backend.name()),
        memory_bytes: info.memory_bytes,
        measured_ops_per_sec: ops,
    };
    Ok((DeviceActor::new(index, backend, cache).start(), advert))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_bounded_and_keeps_the_newest() {
        let mut c = RowCache::new(64);
        c.insert(1, 10, 2, vec![1, 2, 3, 4]); // 16 bytes
        c.insert(2, 0, 2, vec![5; 12]); // 48 bytes
        assert_eq!(c.get(1, 11), Some(vec![3, 4]));
        assert_eq!(c.get(1, 12), None);
        assert_eq!(c.get(1, 9), None);
        c.insert(3, 0, 4, vec![7; 40]); // 160 bytes: alone over budget, still kept
        assert_eq!(c.get(1, 10), None);
        assert_eq!(c.get(2, 0), None);
        assert_eq!(c.get(3, 9), Some(vec![7; 4]));
        assert_eq!(c.used_bytes(), 160);
    }
}
