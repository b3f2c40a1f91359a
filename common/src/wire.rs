//! The farm protocol's messages: what a coordinator and its agents say to each other over QUIC.
//!
//! Each message travels as one frame of [`crate::codec`]. A connection has one control stream, opened by the
//! agent (`Hello` → `Welcome`|`Refused`, then heartbeats, `DeviceQuarantined` and `Draining`), and one bidirectional stream per
//! request the coordinator makes of an agent. Each request type names its own answer type through
//! [`WireRequest`] ([`RunShard`] and [`RunShardRoot`] → [`ShardAnswer`], [`FetchRow`] and [`FetchRowProof`] →
//! [`RowAnswer`]), so a caller reads the
//! answer of its own request or a decoding error, never another request's answer. On the wire every answer
//! is one [`Response`] (the envelope protocol version 3 defined); the typed answers encode to exactly its
//! bytes. One request stream is different: [`OpenShardPipe`] makes it the connection's shard pipe, which
//! carries whole-iteration shards and their answers many to a frame (see [`PROTOCOL_VERSION`], version 7). Types here are plain data: no I/O, no runtime.

use crate::synthetic::Challenge;
use serde::{Deserialize, Serialize};

/// Version of this protocol, sent in [`Hello`]; a coordinator refuses agents that speak another.
///
/// Version 2: [`RunShard::check_seed`], [`Response::ShardDone`]'s `check`, [`Response::CheckFailed`] (the
/// Freivalds check on every shard). A version-1 agent would misread a version-2 `RunShard`, so the two
/// sides must agree.
///
/// Version 3: [`DeviceAdvert::concurrent_shards`] and [`DeviceAdvert::row_capacity`] (the device, not the
/// coordinator, says how many rows it holds at each size and how many shards it runs at once).
///
/// Version 4: [`AgentControl::DeviceReport`] (per-device counters and NVML readings). Nothing else changed,
/// so a version-4 coordinator still admits version-3 agents ([`MIN_PROTOCOL_VERSION`]): they simply send
/// no reports. Upgrade the coordinator first: a version-3 coordinator refuses version-4 agents.
/// [`RunShard::challenge`] and the typed answers ([`ShardAnswer`], [`RowAnswer`]) changed no byte: they
/// encode to exactly the bytes of the loose fields and the [`Response`] variants they replaced.
///
/// Version 5: an agent answers a shard with [`Response::ShardLeaves`] (the leaves as one byte string,
/// copied in one piece) instead of [`Response::ShardDone`] (a sequence of 32-byte arrays, which bincode's
/// serde path reads and writes a byte at a time: the larger part of a coordinator's CPU per shard). The
/// variant is appended last, so the others keep their encoding and a version-5 coordinator still admits
/// version-3 and version-4 agents and reads their `ShardDone`.
///
/// Version 6: [`Request::RunShardRoot`] and [`Request::FetchRowProof`], with their answers
/// [`Response::ShardRoot`] and [`Response::RowProof`], appended last. A shard that covers a whole iteration
/// (every small job runs whole on one device) can be answered by its Merkle root alone, 32 bytes instead of
/// 32 a row, built by the agent, whose CPU idles while its device computes; a spot check then fetches a row
/// with its Merkle path and checks it against that root. A coordinator sends them only to agents of version
/// [`ROOT_ANSWERS_SINCE`] or later, and still admits version 3 to 5.
///
/// Version 7: the shard pipe ([`Request::OpenShardPipe`], appended last). Shards, above all the small jobs
/// a busy farm runs by the thousand each second, travel on one long-lived stream per connection instead of
/// a stream each: the coordinator writes [`ShardPipeOrders`] frames (each any number
/// of shards to run and cancellations), the agent writes [`ShardPipeAnswers`] frames (each any number of
/// answers, in the order they were ready). Both sides put everything that is waiting into one frame, so a
/// burst of shards to an agent costs a few packets and wake-ups instead of a stream, a task and a round
/// of flow-control frames each. Spot checks keep their own streams. A coordinator opens a pipe only to
/// agents of version
/// [`SHARD_PIPE_SINCE`] or later, and still admits version 3 to 6.
pub const PROTOCOL_VERSION: u16 = 7;

/// The first agent protocol version that serves a shard pipe ([`Request::OpenShardPipe`]).
pub const SHARD_PIPE_SINCE: u16 = 7;

/// Most orders a coordinator puts in one [`ShardPipeOrders`] frame, and most answers an agent puts in
/// one [`ShardPipeAnswers`] frame (a burst larger than that goes as several frames).
pub const MAX_PIPE_BATCH: usize = 256;

/// Largest [`ShardPipeOrders`] frame an agent reads (256 orders take about 40 KiB).
pub const MAX_PIPE_ORDERS_BYTES: usize = 1024 * 1024;

/// Leaf bytes past which an agent starts a new [`ShardPipeAnswers`] frame, so that a frame stays far below
/// the codec's limit however many large shards finish at once (one answer alone may exceed it: a shard of
/// 16,384 rows carries 512 KiB of leaves).
pub const MAX_PIPE_ANSWER_LEAF_BYTES: usize = 4 * 1024 * 1024;

/// The first agent protocol version that understands [`Request::RunShardRoot`] and
/// [`Request::FetchRowProof`].
pub const ROOT_ANSWERS_SINCE: u16 = 6;

/// The oldest agent protocol version a coordinator admits.
pub const MIN_PROTOCOL_VERSION: u16 = 3;

/// ALPN protocol id of the farm's QUIC connections.
pub const ALPN: &[u8] = b"cpcfarm/1";

/// QUIC application error code with which the coordinator cancels a shard it no longer wants (superseded
/// by a faster copy, its job done, cancelled or past its deadline): it stops the answer half of the shard's request stream
/// (`STOP_SENDING`), and resets the request half (`RESET_STREAM`) where that is still open. The stop is
/// the signal that always arrives: a reset that comes after the agent has read the request to its end
/// carries nothing. The agent then drops the shard if it is still waiting for its device, stops a device
/// that can stop early, never sends its answer, and resets its own half of the stream with this code.
/// Not an error of the connection: other streams go on.
pub const SHARD_CANCELLED: u32 = 1;

/// One device an agent offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceAdvert {
    /// The agent's own index of the device (`--devices 0,2` → 0 and 2).
    pub index: u32,
    /// Human-readable name (GPU model, CPU model and kernel).
    pub name: String,
    /// `cpu`, `cuda`, or another backend's short name.
    pub kind: String,
    /// Bytes the device has for one shard.
    pub memory_bytes: u64,
    /// Integer operations per second (2·rows·n² per shard) the agent measured at start.
    pub measured_ops_per_sec: f64,
    /// Shards the device runs at once (its worker slots: 1 on a CPU, 2 on a GPU).
    pub concurrent_shards: u32,
    /// The most rows of one shard the device holds at each listed matrix size, sizes ascending (the
    /// backend's own memory plan: a GPU's buffers are not laid out like a CPU's). See
    /// [`DeviceAdvert::max_rows_at`] for sizes between the listed ones.
    pub row_capacity: Vec<RowCapacity>,
}

/// How many rows of one shard a device holds at one matrix size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowCapacity {
    /// n.
    pub matrix_size: u32,
    /// Most rows of C (and of A) at this n that fit, with all of B.
    pub max_rows: u32,
}

/// The sizes an agent lists in [`DeviceAdvert::row_capacity`]: every power of two from 16 to the spec's
/// largest n (13 entries).
pub fn advertised_sizes() -> impl Iterator<Item = u32> {
    (4..=16).map(|k| 1u32 << k)
}

impl DeviceAdvert {
    /// The most rows at `n` the device holds: the listed value at `n`, else that of the next larger listed
    /// size (memory per shard only grows with n, so this never over-fills a device), capped at n; 0 when
    /// no listed size is as large as `n`.
    pub fn max_rows_at(&self, n: u32) -> u32 {
        self.row_capacity
            .iter()
            .filter(|c| c.matrix_size >= n)
            .min_by_key(|c| c.matrix_size)
            .map_or(0, |c| c.max_rows.min(n))
    }

    /// Shards the device runs at once, at least 1.
    pub fn slots(&self) -> u32 {
        self.concurrent_shards.max(1)
    }
}

/// Agent → coordinator, first frame of the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The agent's [`PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// The coordinator's join token.
    pub token: String,
    /// A name for logs and reports (host name by default).
    pub agent_name: String,
    /// The devices this agent runs.
    pub devices: Vec<DeviceAdvert>,
}

/// Coordinator → agent, the answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HelloReply {
    /// Admitted.
    Welcome {
        /// The id the coordinator gave this connection.
        agent_id: u64,
        /// How often the coordinator expects a heartbeat, in milliseconds.
        heartbeat_interval_ms: u32,
    },
    /// Not admitted; the connection closes after this frame.
    Refused {
        /// What is wrong and what to do about it.
        reason: String,
    },
}

/// Agent → coordinator on the control stream, after the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentControl {
    /// I am alive.
    Heartbeat {
        /// Increments by one per heartbeat.
        seq: u64,
    },
    /// I am shutting down: give me no new shard (those in hand will still be answered).
    Draining,
    /// One of my devices failed (a CUDA error, or a call that outlived the agent's watchdog) and takes no more
    /// shards until the agent restarts; my other devices keep serving. Sent once per device and connection,
    /// after `Welcome` for devices quarantined before it.
    DeviceQuarantined {
        /// The agent's index of the device.
        device: u32,
        /// What failed (at most [`MAX_QUARANTINE_REASON_BYTES`]).
        reason: String,
    },
    /// A device's counters and readings (version 4; appended last, so the variants before keep their
    /// encoding): sent after `Welcome` and again whenever they change, at most once per heartbeat.
    DeviceReport(DeviceReport),
}

/// What an agent tells the coordinator about one device's health, for `farm status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// The agent's index of the device.
    pub device: u32,
    /// The GPU's `GPU-…` UUID (none on a CPU, or without NVML).
    pub uuid: Option<String>,
    /// Die temperature, degrees Celsius (NVML).
    pub temperature_celsius: Option<f64>,
    /// Power draw, watts (NVML).
    pub power_watts: Option<f64>,
    /// Times the agent restarted the device's worker after its watchdog fired.
    pub restarts: u64,
    /// Backend calls that outlived the watchdog.
    pub watchdog_firings: u64,
    /// Critical Xid errors NVML reported since the agent started (0 on a CPU).
    pub xid_errors: u64,
    /// The last Xid error code, if any.
    pub last_xid: Option<u64>,
}

/// Longest reason a [`AgentControl::DeviceQuarantined`] carries (longer ones are cut at a character boundary).
pub const MAX_QUARANTINE_REASON_BYTES: usize = 1024;

/// A shard to run: rows `rows.0 .. rows.1` of iteration `iteration` of the challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunShard {
    /// The coordinator's id of this dispatch (unique per coordinator run), used by [`FetchRow`].
    pub shard_id: u64,
    /// The challenge (seed, n, iteration count), checked as it is decoded: a frame with n or the iteration
    /// count out of the spec's bounds does not decode. On the wire it is the three fields in this order,
    /// exactly as protocol version 3 first sent them loose in `RunShard`.
    pub challenge: Challenge,
    /// Which product.
    pub iteration: u32,
    /// Rows `start .. end` of C.
    pub rows: (u32, u32),
    /// The agent's device index to run it on.
    pub device: u32,
    /// The seed of the Freivalds check (`C·r == A·(B·r)`) the device runs on the product before hashing it
    /// (`cpc_kernels::freivalds`): drawn afresh for every dispatch from the coordinator's CSPRNG (seeded
    /// from the OS), so the device cannot know the vector while it computes.
    pub check_seed: u64,
}

/// What a shard's Freivalds check cost on its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckTiming {
    /// Time in the check, in microseconds.
    pub check_micros: u64,
    /// Time of the whole shard on the device (generation, product, check, hashing), in microseconds.
    pub shard_micros: u64,
}

/// Answer row `row` (an absolute row index) of a shard this agent ran, for a spot check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRow {
    /// The shard's id.
    pub shard_id: u64,
    /// Absolute row index of C.
    pub row: u32,
}

/// Run a shard that covers a whole iteration (rows `0 .. n`) and answer the Merkle root of its leaves
/// ([`ShardAnswer::Root`]) instead of the leaves; keep the tree, so that [`FetchRowProof`] can show any
/// row with its path (protocol version 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunShardRoot(pub RunShard);

/// Answer row `row` of a shard answered by its root ([`RunShardRoot`]), with the row's Merkle path
/// ([`RowAnswer::Proof`]; protocol version 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRowProof(pub FetchRow);

/// Turn this request stream into the connection's shard pipe (version 7): from now on the coordinator
/// writes [`ShardPipeOrders`] frames on it and the agent answers with [`ShardPipeAnswers`] frames, until
/// the coordinator finishes its half (the agent then answers the shards in hand and finishes its own) or
/// the connection ends (the agent drops the shards in hand). A connection has at most one open at a time
/// in practice; an agent serves as many as it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenShardPipe;

/// One order on the shard pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardPipeOrder {
    /// Run a shard and answer its leaves, as [`RunShard`] on a stream of its own asks.
    Run(RunShard),
    /// Run a shard that covers a whole iteration and answer its Merkle root, as [`RunShardRoot`] asks
    /// (the agent keeps the tree for [`FetchRowProof`]).
    RunRoot(RunShard),
    /// The coordinator no longer wants this shard (superseded, its job done or cancelled, past its
    /// deadline): the agent drops it if it waits for its device, stops a device that can stop early, and
    /// never answers it. An order for a shard the agent does not hold (answered already) changes nothing.
    Cancel {
        /// The shard's id.
        shard_id: u64,
    },
}

/// Coordinator → agent on the shard pipe: one frame, orders in the order they were given (at most
/// [`MAX_PIPE_BATCH`]; a frame with more does not decode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPipeOrders(
    #[serde(deserialize_with = "pipe_batch::deserialize")] pub Vec<ShardPipeOrder>,
);

/// Agent → coordinator on the shard pipe: one frame, answers in the order they were ready (at most
/// [`MAX_PIPE_BATCH`], and a new frame past [`MAX_PIPE_ANSWER_LEAF_BYTES`] of leaves). Each is what the
/// shard's own stream would have carried: [`ShardAnswer::Done`], [`ShardAnswer::Root`],
/// [`ShardAnswer::Failed`] or [`ShardAnswer::CheckFailed`], named by its shard id;
/// [`ShardAnswer::Refused`] says the agent could not read an orders frame, and it ends the pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPipeAnswers(
    #[serde(deserialize_with = "pipe_batch::deserialize")] pub Vec<ShardAnswer>,
);

/// A pipe frame's list, decoded with the protocol's bound: at most [`MAX_PIPE_BATCH`] items, and room
/// made only as items arrive, never for the length the frame announces (an item may hold a sequence of
/// its own, which serde preallocates up to 1 MiB: the two must not add up).
mod pipe_batch {
    use super::MAX_PIPE_BATCH;
    use serde::{Deserialize, Deserializer, de};
    use std::{fmt, marker::PhantomData};

    pub(super) fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        deserializer: D,
    ) -> Result<Vec<T>, D::Error> {
        deserializer.deserialize_seq(Batch(PhantomData))
    }

    struct Batch<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> de::Visitor<'de> for Batch<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "at most {MAX_PIPE_BATCH} items")
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let announced = seq.size_hint().unwrap_or(0);
            if announced > MAX_PIPE_BATCH {
                return Err(de::Error::invalid_length(announced, &self));
            }
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                if items.len() == MAX_PIPE_BATCH {
                    return Err(de::Error::invalid_length(MAX_PIPE_BATCH + 1, &self));
                }
                items.push(item);
            }
            Ok(items)
        }
    }
}

/// Coordinator → agent, the one frame of a request stream: the envelope an agent decodes before it knows
/// which request it got. A coordinator sends a [`WireRequest`] and reads its [`WireRequest::Answer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Run a shard and answer its leaves.
    RunShard(RunShard),
    /// Answer a row of a shard this agent ran.
    FetchRow(FetchRow),
    /// Run a whole-iteration shard and answer its root (version 6; appended, so the variants before keep
    /// their encoding).
    RunShardRoot(RunShardRoot),
    /// Answer a row with its Merkle path (version 6).
    FetchRowProof(FetchRowProof),
    /// Make this stream the shard pipe (version 7; not a request with one answer).
    OpenShardPipe(OpenShardPipe),
}

/// A request the coordinator makes of an agent on a stream of its own, and the one type that answers it.
pub trait WireRequest: Into<Request> {
    /// What the agent answers (it travels as a [`Response`], and decodes only from the variants that
    /// belong to this request).
    type Answer: Serialize + serde::de::DeserializeOwned;
}

impl From<RunShard> for Request {
    fn from(request: RunShard) -> Self {
        Self::RunShard(request)
    }
}

impl From<FetchRow> for Request {
    fn from(request: FetchRow) -> Self {
        Self::FetchRow(request)
    }
}

impl From<RunShardRoot> for Request {
    fn from(request: RunShardRoot) -> Self {
        Self::RunShardRoot(request)
    }
}

impl From<FetchRowProof> for Request {
    fn from(request: FetchRowProof) -> Self {
        Self::FetchRowProof(request)
    }
}

impl WireRequest for RunShard {
    type Answer = ShardAnswer;
}

impl WireRequest for FetchRow {
    type Answer = RowAnswer;
}

impl WireRequest for RunShardRoot {
    type Answer = ShardAnswer;
}

impl WireRequest for FetchRowProof {
    type Answer = RowAnswer;
}

/// Agent → coordinator, the answer to a [`RunShard`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Response")]
pub enum ShardAnswer {
    /// The leaves of the shard, in row order ([`Response::ShardLeaves`] on the wire; read from a version 3
    /// or 4 agent's [`Response::ShardDone`] too).
    Done {
        /// The shard's id.
        shard_id: u64,
        /// `sha256` of each row of C, rows `start .. end`.
        leaves: Vec<[u8; 32]>,
        /// What the Freivalds check cost, when the device ran one (none: its backend does not check).
        check: Option<CheckTiming>,
    },
    /// The shard could not run ([`Response::ShardFailed`]).
    Failed {
        /// The shard's id.
        shard_id: u64,
        /// Why.
        reason: String,
    },
    /// The device computed the shard, but the product failed its Freivalds check
    /// ([`Response::CheckFailed`]).
    CheckFailed {
        /// The shard's id.
        shard_id: u64,
        /// Which rows failed, on which device.
        reason: String,
    },
    /// The request could not be decoded or understood ([`Response::Error`]).
    Refused {
        /// What was wrong with it.
        reason: String,
    },
    /// The Merkle root of the shard's leaves ([`Response::ShardRoot`]): the answer to a [`RunShardRoot`].
    Root {
        /// The shard's id.
        shard_id: u64,
        /// The root of `sha256` of each row of C, rows `0 .. n`, built as the spec builds a result.
        root: [u8; 32],
        /// What the Freivalds check cost, when the device ran one.
        check: Option<CheckTiming>,
    },
}

/// Agent → coordinator, the answer to a [`FetchRow`] or a [`FetchRowProof`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Response")]
pub enum RowAnswer {
    /// `C[row][0..n]` ([`Response::Row`] on the wire).
    Row {
        /// The row's n values.
        values: Vec<i32>,
    },
    /// The row is not (or no longer) held ([`Response::RowUnavailable`]).
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The request could not be decoded or understood ([`Response::Error`]).
    Refused {
        /// What was wrong with it.
        reason: String,
    },
    /// `C[row][0..n]` and the Merkle path of its leaf ([`Response::RowProof`]): the answer to a
    /// [`FetchRowProof`].
    Proof {
        /// The row's n values.
        values: Vec<i32>,
        /// The siblings from the leaf up (`cpc_common::merkle::merkle_path`).
        path: Vec<[u8; 32]>,
    },
}

impl ShardAnswer {
    /// Bytes of leaves it carries (for sizing frames).
    pub fn leaf_bytes(&self) -> usize {
        match self {
            Self::Done { leaves, .. } => leaves.len() * 32,
            _ => 0,
        }
    }

    /// The shard it answers (none for [`ShardAnswer::Refused`], which answers a request that could not
    /// be read).
    pub fn shard_id(&self) -> Option<u64> {
        match self {
            Self::Done { shard_id, .. }
            | Self::Failed { shard_id, .. }
            | Self::CheckFailed { shard_id, .. }
            | Self::Root { shard_id, .. } => Some(*shard_id),
            Self::Refused { .. } => None,
        }
    }
}

/// A [`Response`] that answers another request than the one asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{answer} does not answer {request}")]
pub struct MismatchedAnswer {
    /// The request asked.
    pub request: &'static str,
    /// The variant that came back.
    pub answer: &'static str,
}

impl Response {
    /// The variant's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::ShardDone { .. } => "ShardDone",
            Self::ShardFailed { .. } => "ShardFailed",
            Self::Row { .. } => "Row",
            Self::RowUnavailable { .. } => "RowUnavailable",
            Self::Error { .. } => "Error",
            Self::CheckFailed { .. } => "CheckFailed",
            Self::ShardLeaves { .. } => "ShardLeaves",
            Self::ShardRoot { .. } => "ShardRoot",
            Self::RowProof { .. } => "RowProof",
        }
    }
}

impl TryFrom<Response> for ShardAnswer {
    type Error = MismatchedAnswer;

    fn try_from(response: Response) -> Result<Self, Self::Error> {
        Ok(match response {
            Response::ShardDone { shard_id, leaves, check }
            | Response::ShardLeaves { shard_id, leaves, check } => {
                Self::Done { shard_id, leaves, check }
            }
            Response::ShardFailed { shard_id, reason } => Self::Failed { shard_id, reason },
            Response::CheckFailed { shard_id, reason } => Self::CheckFailed { shard_id, reason },
            Response::Error { reason } => Self::Refused { reason },
            Response::ShardRoot { shard_id, root, check } => Self::Root { shard_id, root, check },
            other @ (Response::Row { .. }
            | Response::RowUnavailable { .. }
            | Response::RowProof { .. }) => {
                return Err(MismatchedAnswer { request: "RunShard", answer: other.name() });
            }
        })
    }
}

impl TryFrom<Response> for RowAnswer {
    type Error = MismatchedAnswer;

    fn try_from(response: Response) -> Result<Self, Self::Error> {
        Ok(match response {
            Response::Row { values } => Self::Row { values },
            Response::RowUnavailable { reason } => Self::Unavailable { reason },
            Response::Error { reason } => Self::Refused { reason },
            Response::RowProof { values, path } => Self::Proof { values, path },
            other @ (Response::ShardDone { .. }
            | Response::ShardLeaves { .. }
            | Response::ShardRoot { .. }
            | Response::ShardFailed { .. }
            | Response::CheckFailed { .. }) => {
                return Err(MismatchedAnswer { request: "FetchRow", answer: other.name() });
            }
        })
    }
}

/// [`Response`] borrowed: the typed answers serialise through it, so they write [`Response`]'s exact bytes
/// without copying their leaves or values. Variant for variant, in [`Response`]'s order.
#[derive(Serialize)]
#[serde(rename = "Response")]
enum ResponseRef<'a> {
    #[expect(
        dead_code,
        reason = "holds Response::ShardDone's place, so the variants after keep their index"
    )]
    ShardDone {
        shard_id: u64,
        leaves: &'a [[u8; 32]],
        check: Option<CheckTiming>,
    },
    ShardFailed {
        shard_id: u64,
        reason: &'a str,
    },
    Row {
        values: &'a [i32],
    },
    RowUnavailable {
        reason: &'a str,
    },
    Error {
        reason: &'a str,
    },
    CheckFailed {
        shard_id: u64,
        reason: &'a str,
    },
    ShardLeaves {
        shard_id: u64,
        #[serde(serialize_with = "leaf_bytes::serialize")]
        leaves: &'a [[u8; 32]],
        check: Option<CheckTiming>,
    },
    ShardRoot {
        shard_id: u64,
        root: &'a [u8; 32],
        check: Option<CheckTiming>,
    },
    RowProof {
        values: &'a [i32],
        #[serde(serialize_with = "leaf_bytes::serialize")]
        path: &'a [[u8; 32]],
    },
}

impl Serialize for ShardAnswer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Done { shard_id, leaves, check } => {
                ResponseRef::ShardLeaves { shard_id: *shard_id, leaves, check: *check }
            }
            Self::Failed { shard_id, reason } => {
                ResponseRef::ShardFailed { shard_id: *shard_id, reason }
            }
            Self::CheckFailed { shard_id, reason } => {
                ResponseRef::CheckFailed { shard_id: *shard_id, reason }
            }
            Self::Refused { reason } => ResponseRef::Error { reason },
            Self::Root { shard_id, root, check } => {
                ResponseRef::ShardRoot { shard_id: *shard_id, root, check: *check }
            }
        }
        .serialize(serializer)
    }
}

impl Serialize for RowAnswer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Row { values } => ResponseRef::Row { values },
            Self::Unavailable { reason } => ResponseRef::RowUnavailable { reason },
            Self::Refused { reason } => ResponseRef::Error { reason },
            Self::Proof { values, path } => ResponseRef::RowProof { values, path },
        }
        .serialize(serializer)
    }
}

/// Agent → coordinator, the one frame answering a [`Request`]: the envelope of [`ShardAnswer`] and
/// [`RowAnswer`], and what an agent answers a request it could not decode ([`Response::Error`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The leaves of a shard, in row order, as versions 3 and 4 send them (version 5 sends
    /// [`Response::ShardLeaves`]).
    ShardDone {
        /// The shard's id.
        shard_id: u64,
        /// `sha256` of each row of C, rows `start .. end`.
        leaves: Vec<[u8; 32]>,
        /// What the Freivalds check cost, when the device ran one (none: its backend does not check).
        check: Option<CheckTiming>,
    },
    /// The shard could not run.
    ShardFailed {
        /// The shard's id.
        shard_id: u64,
        /// Why.
        reason: String,
    },
    /// A row of C (n values).
    Row {
        /// `C[row][0..n]`.
        values: Vec<i32>,
    },
    /// The row is not (or no longer) held.
    RowUnavailable {
        /// Why.
        reason: String,
    },
    /// The request could not be decoded or understood; the stream closes after this frame.
    Error {
        /// What was wrong with it.
        reason: String,
    },
    /// The device computed the shard, but the product failed its Freivalds check: a device fault (the agent
    /// has quarantined the device). The coordinator recomputes the shard elsewhere and quarantines the device.
    CheckFailed {
        /// The shard's id.
        shard_id: u64,
        /// Which rows failed, on which device.
        reason: String,
    },
    /// The leaves of a shard, in row order, as one byte string of 32 bytes a leaf (version 5).
    ShardLeaves {
        /// The shard's id.
        shard_id: u64,
        /// `sha256` of each row of C, rows `start .. end`.
        #[serde(with = "leaf_bytes")]
        leaves: Vec<[u8; 32]>,
        /// What the Freivalds check cost, when the device ran one (none: its backend does not check).
        check: Option<CheckTiming>,
    },
    /// The Merkle root of a whole-iteration shard's leaves (version 6, the answer to
    /// [`Request::RunShardRoot`]).
    ShardRoot {
        /// The shard's id.
        shard_id: u64,
        /// The root.
        root: [u8; 32],
        /// What the Freivalds check cost, when the device ran one.
        check: Option<CheckTiming>,
    },
    /// A row of C and its leaf's Merkle path (version 6, the answer to [`Request::FetchRowProof`]).
    RowProof {
        /// `C[row][0..n]`.
        values: Vec<i32>,
        /// The siblings from the leaf up, as one byte string of 32 bytes a node.
        #[serde(with = "leaf_bytes")]
        path: Vec<[u8; 32]>,
    },
}

/// Leaves as one byte string (a length, then 32 bytes a leaf), which an encoder copies in one piece.
mod leaf_bytes {
    use serde::{Deserializer, Serializer, de};
    use std::fmt;

    pub(super) fn serialize<S: Serializer>(
        leaves: &[[u8; 32]],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(leaves.as_flattened())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<[u8; 32]>, D::Error> {
        deserializer.deserialize_bytes(LeafBytes)
    }

    struct LeafBytes;

    impl de::Visitor<'_> for LeafBytes {
        type Value = Vec<[u8; 32]>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("leaves: a byte string of 32 bytes a leaf")
        }

        fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Self::Value, E> {
            let (leaves, rest) = bytes.as_chunks::<32>();
            if !rest.is_empty() {
                return Err(E::invalid_length(bytes.len(), &self));
            }
            Ok(leaves.to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advert(caps: &[(u32, u32)]) -> DeviceAdvert {
        DeviceAdvert {
            index: 0,
            name: "d".into(),
            kind: "cpu".into(),
            memory_bytes: 0,
            measured_ops_per_sec: 1.0,
            concurrent_shards: 0,
            row_capacity: caps
                .iter()
                .map(|&(matrix_size, max_rows)| RowCapacity { matrix_size, max_rows })
                .collect(),
        }
    }

    #[test]
    fn a_pipe_frame_holds_at_most_a_batch() {
        let cancels = |count: usize| {
            ShardPipeOrders(
                (0..count as u64).map(|shard_id| ShardPipeOrder::Cancel { shard_id }).collect(),
            )
        };
        let full = crate::codec::encode(&cancels(MAX_PIPE_BATCH)).expect("encode");
        let decoded: ShardPipeOrders =
            crate::codec::decode_payload(&full[crate::codec::LENGTH_PREFIX_BYTES..])
                .expect("decode");
        assert_eq!(decoded, cancels(MAX_PIPE_BATCH));
        let over = crate::codec::encode(&cancels(MAX_PIPE_BATCH + 1)).expect("encode");
        let refused = crate::codec::decode_payload::<ShardPipeOrders>(
            &over[crate::codec::LENGTH_PREFIX_BYTES..],
        );
        assert!(refused.is_err(), "{refused:?}");
        let answers =
            ShardPipeAnswers(vec![ShardAnswer::Failed { shard_id: 1, reason: "r".into() }]);
        let bytes = crate::codec::encode(&answers).expect("encode");
        let back: ShardPipeAnswers =
            crate::codec::decode_payload(&bytes[crate::codec::LENGTH_PREFIX_BYTES..])
                .expect("decode");
        assert_eq!(back, answers);
    }

    #[test]
    fn capacity_between_listed_sizes_is_that_of_the_next_larger() {
        let d = advert(&[(1024, 1024), (2048, 700), (4096, 100)]);
        assert_eq!(d.max_rows_at(1024), 1024);
        assert_eq!(d.max_rows_at(1000), 1000, "capped at n");
        assert_eq!(d.max_rows_at(1500), 700);
        assert_eq!(d.max_rows_at(4096), 100);
        assert_eq!(d.max_rows_at(4097), 0, "nothing listed that large");
        assert_eq!(advert(&[]).max_rows_at(16), 0);
        assert_eq!(d.slots(), 1);
        assert_eq!(advertised_sizes().collect::<Vec<_>>().len(), 13);
        assert_eq!(advertised_sizes().last(), Some(crate::synthetic::MAX_MATRIX_SIZE));
    }
}
