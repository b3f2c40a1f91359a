//! One actor per device: it runs shards on its backend off the actor thread (on the device's own worker
//! threads: one shard at a time, two on a GPU so that consecutive shards overlap), answers the
//! coordinator's spot checks with rows of its recent shards, and measures its throughput when it starts
//! so that the coordinator can split jobs in proportion.
//!
//! # Rows for spot checks
//!
//! A CPU has the rows of C in host memory anyway: they are kept in a bounded [`RowCache`]. A GPU does not
//! ([`Backend::keeps_rows_cheaply`] is false): copying every row across PCIe would cost several times the
//! shard, so only the shard's description is kept, and a row asked for is recomputed on the device as a
//! one-row shard ([`RecomputeRow`]). That recomputation takes another path through the device (another GEMM
//! shape), so a row the first run got wrong no longer hashes to the leaf it sent.
//!
//! # Freivalds' check
//!
//! Every shard runs with the coordinator's check seed ([`RunShard::check_seed`]): the backend checks its
//! product before hashing (`cpc_kernels::freivalds`). A product that fails is a device fault: the actor
//! quarantines the device, as below, and answers `CheckFailed` so that the coordinator recomputes the shard
//! elsewhere and quarantines the device on its side too.
//!
//! # Watchdog and quarantine
//!
//! Every call into a backend (the start-up measurement and each shard) runs on the device's own worker threads,
//! not on tokio's shared blocking pool, so that a call that never returns (a wedged GPU driver) holds up
//! nothing but its own device. The actor waits for the call against a deadline, [`watchdog_deadline`]: the
//! watchdog timeout (`--watchdog-secs`, [`DEFAULT_WATCHDOG`]) plus a grace that lets the CUDA backend's own
//! polled timeout (given the same value) fire first and name the phase that hung. The one exception is a
//! shard the backend answers sooner than the hand-off to those threads and back would take
//! ([`cpc_kernels::Backend::answers_at_once`]: a simulated device's microsecond hold, a no-op device): it
//! runs on the actor's own thread, with nothing in it that can hang, and the device time the backend
//! leaves to its caller passes with the actor yielding to the agent's other devices, whose holds overlap
//! as real devices' work does.
//!
//! What a backend error does to the device: out of memory ([`BackendError::retry_later`]) fails the shard
//! only, the coordinator gives it to a device with room, and the GPU keeps serving; a sticky CUDA error
//! ([`BackendError::needs_restart`]) quarantines the device, counts it
//! (`cpcfarm_agent_device_restarts_needed_total`), says that the GPU needs a process restart and stops the
//! device's worker, so that the agent's supervisor (systemd, Kubernetes) can restart the process.
//!
//! When the deadline passes, or the backend answers an error that leaves the device unusable
//! ([`BackendError::quarantines_device`]: a CUDA error, its own timeout, an earlier quarantine), the actor
//! quarantines the device: it answers the shard `ShardFailed` with the reason, records it in [`Health`] (the
//! session tells the coordinator with `DeviceQuarantined`; `/metrics` shows `cpcfarm_agent_device_healthy 0`
//! and `cpcfarm_agent_devices_quarantined`), gives up on the worker threads (never joined: each ends by itself if
//! the call ever returns) and refuses every later shard at once. The agent's other devices have their own
//! actors and threads and keep serving.
//!
//! # Cancellation
//!
//! A shard the coordinator no longer wants ([`ShardCancel`], set by the session when the shard's request
//! stream is stopped or reset) is dropped while it waits for a slot on its device, stopped on a device that
//! can stop early, and otherwise left to finish; its answer is never sent or kept.
//!
//! # Layout
//!
//! - `worker`: the device's own threads and the watchdog around every backend call;
//! - `health`: which devices are quarantined, and why ([`Health`]);
//! - `row_cache`: rows kept for spot checks, and shards whose rows can be recomputed ([`RowCache`]);
//! - `actor`: the device actor and its messages ([`Compute`], [`RecomputeRow`]);
//! - `start`: the start-up measurement and the advert ([`start`]).
//!
//! [`Backend::keeps_rows_cheaply`]: cpc_kernels::Backend::keeps_rows_cheaply
//! [`RunShard::check_seed`]: cpc_common::wire::RunShard::check_seed
//! [`BackendError::retry_later`]: cpc_kernels::BackendError::retry_later
//! [`BackendError::needs_restart`]: cpc_kernels::BackendError::needs_restart
//! [`BackendError::quarantines_device`]: cpc_kernels::BackendError::quarantines_device

mod actor;
mod health;
mod row_cache;
mod start;
#[cfg(test)]
mod tests;
mod worker;

pub use actor::{AnswerWith, CancelledAt, Compute, DeviceActor, RecomputeRow, ShardCancel};
pub use health::Health;
pub use row_cache::{RowCache, RowSource, ShardKey};
pub use start::{DeviceOptions, Started, measure, start};
pub use worker::{DEFAULT_WATCHDOG, watchdog_deadline};
