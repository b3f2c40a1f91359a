//! Running shards on the backend's slots: a free slot (or the next in turn), the memory plan before any
//! work ([`memory::plan_buffers`], the Freivalds check's scratch included), transient errors retried
//! ([`super::fault::TRANSIENT_RETRIES`]), then the shard's energy (NVML), the Freivalds verdict and the
//! calling thread's [`ShardStats`]; and the GEMM alone, timed for benches.

use super::{
    CudaBackend, Dims, GpuMonitor, RESERVED_BYTES, SLOTS, Slot, fault, freivalds,
    health::guarded,
    memory::{self, NoRoom, plan_buffers},
    slot::Fail,
};
use crate::{Backend, BackendError, CheckCost, Shard, ShardOutput, gpu::ShardStats};
use std::{
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

impl CudaBackend {
    /// One shard on a free slot, as [`Backend::run_shard`] runs it: refused at once when quarantined; the
    /// memory planned before any work; transient errors retried; the energy, the Freivalds verdict and the
    /// calling thread's stats recorded.
    pub(super) fn run_on_slot(
        &self,
        shard: &Shard,
        keep_rows: bool,
    ) -> Result<ShardOutput, BackendError> {
        shard.validate()?;
        if let Some(reason) = self.quarantined() {
            return Err(BackendError::Quarantined { device: self.name.clone(), reason });
        }
        let (n, rows) = (shard.challenge.matrix_size(), shard.row_count());
        let d = Dims::new(n, rows);
        let deadline = Instant::now() + self.timeout;
        let energy_before = self.monitor.as_ref().and_then(GpuMonitor::energy_joules);
        let mut slot = self.slot();
        let result = guarded("running a shard", || {
            let mut attempt = 0;
            loop {
                // Before any work: what this slot holds is reused or freed, the rest must be free now.
                let plan = self.plan(&slot, &d, n, rows)?;
                let run = slot.run(
                    &self.ctx,
                    &self.kernels,
                    shard,
                    &plan,
                    keep_rows,
                    deadline,
                    &self.fallbacks,
                );
                match run {
                    Ok(out) => return Ok(out),
                    Err(Fail::Transient(why)) if attempt < fault::TRANSIENT_RETRIES => {
                        attempt += 1;
                        tracing::warn!(
                            gpu = self.ordinal,
                            attempt,
                            reason = %why,
                            "transient CUDA error: running the shard again"
                        );
                        // Work launched before the failure may still read the buffers: wait it out.
                        if let Err(fail) = slot.drain(deadline) {
                            return Err(self.failed(&mut slot, fail));
                        }
                    }
                    Err(fail) => return Err(self.failed(&mut slot, fail)),
                }
            }
        });
        drop(slot);
        let mut out = result.inspect_err(|e| {
            if matches!(e, BackendError::CudaUnavailable(_)) {
                self.quarantine(&e.to_string());
            }
        })?;
        if let (Some(before), Some(after)) =
            (energy_before, self.monitor.as_ref().and_then(GpuMonitor::energy_joules))
        {
            out.stats.energy_joules = Some((after - before).max(0.0));
        }
        let check = match out.check.take() {
            Some(found) => Some(self.verdict(shard, &found, out.stats.wall_seconds)?),
            None => None,
        };
        if let Ok(mut last) = self.last_stats.lock() {
            last.insert(std::thread::current().id(), out.stats);
        }
        Ok(ShardOutput { leaves: out.leaves, rows: out.rows, check })
    }

    /// Runs several shards, two at a time (one per slot), so that consecutive shards overlap; results in order.
    pub fn run_shards(
        &self,
        shards: &[Shard],
        keep_rows: bool,
    ) -> Vec<Result<ShardOutput, BackendError>> {
        let next = AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Result<ShardOutput, BackendError>>>> =
            shards.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..SLOTS.min(shards.len()) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(shard) = shards.get(i) else { break };
                        let out = self.run_shard(shard, keep_rows);
                        if let Ok(mut slot) = results[i].lock() {
                            *slot = Some(out);
                        }
                    }
                });
            }
        });
        results
            .into_iter()
            .map(|r| {
                r.into_inner().ok().flatten().unwrap_or_else(|| {
                    Err(BackendError::Cuda {
                        device: self.name.clone(),
                        reason: "a worker thread panicked".into(),
                    })
                })
            })
            .collect()
    }

    /// Device seconds of one `n × n × n` GEMM alone (unchunked, this backend's engine, generated data, after a
    /// warm-up), averaged over `reps`: for benches comparing the pipeline's GEMM phase with the library alone.
    pub fn time_gemm(&self, n: u32, reps: u32) -> Result<f64, BackendError> {
        if let Some(reason) = self.quarantined() {
            return Err(BackendError::Quarantined { device: self.name.clone(), reason });
        }
        let d = Dims::new(n, n);
        let deadline = Instant::now() + self.timeout;
        let mut slot = self.slot();
        let result = guarded("timing the GEMM", || {
            let plan = self.plan(&slot, &d, n, n)?;
            slot.time_gemm(&self.ctx, &self.kernels, n, &plan, reps, deadline, &self.fallbacks)
                .map_err(|fail| self.failed(&mut slot, fail))
        });
        slot.release();
        result
    }

    /// Stats of the last shard the calling thread completed (so that threads running shards at once each
    /// read their own).
    pub fn last_stats(&self) -> Option<ShardStats> {
        let id = std::thread::current().id();
        self.last_stats.lock().ok().and_then(|s| s.get(&id).cloned())
    }

    /// The Freivalds check's verdict: its cost, or the error (the GPU quarantined) naming the failing rows.
    fn verdict(
        &self,
        shard: &Shard,
        found: &freivalds::DeviceCheck,
        wall_seconds: f64,
    ) -> Result<CheckCost, BackendError> {
        if let Err(mismatch) = crate::freivalds::compare(&found.sums) {
            let err = BackendError::failed_check(&self.name, shard, &mismatch);
            self.quarantine(&err.to_string());
            return Err(err);
        }
        let secs = |s: f64| Duration::try_from_secs_f64(s).unwrap_or_default();
        Ok(CheckCost { check: secs(found.seconds), shard: secs(wall_seconds) })
    }

    /// Which buffers `slot` keeps for a shard of `d` ([`memory::plan_buffers`]), or why it cannot run now.
    fn plan(
        &self,
        slot: &Slot,
        d: &Dims,
        n: u32,
        rows: u32,
    ) -> Result<memory::BufferPlan, BackendError> {
        let free = self.ctx.mem_get_info().map(|(free, _)| free as u64).map_err(|e| {
            BackendError::Cuda { device: self.name.clone(), reason: format!("memory info: {e}") }
        })?;
        // A little of the reserve stays free for the driver and cuBLASLt even when the device is full.
        // The check's scratch comes out of both the budget and what is free (see `memory::max_rows`).
        let scratch = freivalds::scratch_bytes(d);
        let usable = free.saturating_sub(RESERVED_BYTES / 4).saturating_sub(scratch);
        let budget = self.memory_bytes.saturating_sub(scratch);
        plan_buffers(slot.held(), d.buffer_bytes(), budget, usable).map_err(|no_room| match no_room
        {
            NoRoom::OverBudget { needed } => BackendError::ShardTooLarge {
                n,
                rows,
                needed: needed + scratch,
                available: self.memory_bytes,
                device: format!("{} {}", self.name, self.model),
            },
            NoRoom::DeviceFull { needed, available } => BackendError::OutOfMemory {
                device: self.name.clone(),
                reason: format!(
                    "{} bytes needed, {available} free on the device with this slot's own \
                     (another process or a desktop session holds the rest)",
                    needed + scratch
                ),
            },
        })
    }

    /// A free slot if there is one, else waits for the next one in turn.
    fn slot(&self) -> MutexGuard<'_, Slot> {
        for slot in &self.slots {
            if let Ok(guard) = slot.try_lock() {
                return guard;
            }
        }
        let i = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.slots[i].lock().unwrap_or_else(|p| p.into_inner())
    }
}
