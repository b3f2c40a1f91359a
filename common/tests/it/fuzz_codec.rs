//! Fuzzing the farm's frame codec and wire messages (`codec.rs`, `wire.rs`) with proptest: every byte an agent
//! or a coordinator reads from a peer goes through [`FrameDecoder`], so no input may panic it, make it hold
//! more than one capped frame, or make it allocate much more than the frame it read.
//!
//! Three targets: arbitrary bytes, structure-aware mutations of valid frames (bytes overwritten, cut,
//! inserted, removed, huge varint lengths spliced in, length prefixes rewritten), and valid messages, which
//! must round-trip in any chunking. Case counts come from [`cpc_common::fuzzing::cases`] (`CPC_FUZZ_CASES`
//! for a long run).

use cpc_common::{
    codec::{self, CodecError, FrameDecoder, LENGTH_PREFIX_BYTES, MAX_FRAME_BYTES},
    fuzzing,
    synthetic::{Challenge, MAX_MATRIX_SIZE},
    wire::{
        AgentControl, CheckTiming, DeviceAdvert, FetchRow, FetchRowProof, Hello, HelloReply,
        OpenShardPipe, PROTOCOL_VERSION, Request, Response, RowAnswer, RowCapacity, RunShard,
        RunShardRoot, ShardAnswer, ShardPipeAnswers, ShardPipeOrder, ShardPipeOrders,
    },
};
use proptest::{collection::vec, prelude::*};
use serde::{Serialize, de::DeserializeOwned};
use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

/// Counts the bytes each thread has allocated and not freed, and the peak, so that a test can bound what one
/// call allocates (tests run on several threads; each measures its own).
struct Metered;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn record(delta: isize) {
    // `try_with`: the allocator runs while thread-locals are torn down too.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn signed(size: usize) -> isize {
    isize::try_from(size).unwrap_or(isize::MAX)
}

// SAFETY: every call forwards to `System` with the caller's arguments unchanged; the bookkeeping only touches
// const-initialised thread-locals, which neither allocate nor unwind.
unsafe impl GlobalAlloc for Metered {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from our caller, who upholds `GlobalAlloc::alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            record(signed(layout.size()));
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            record(signed(layout.size()));
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        record(-signed(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; the caller upholds `realloc`'s contract on `new_size`.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            record(signed(new_size) - signed(layout.size()));
        }
        new
    }
}

#[global_allocator]
static METERED: Metered = Metered;

/// `f`'s result and the most bytes it had allocated at once, above what was live when it started.
fn peak_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, usize::try_from(peak - start).unwrap_or(0))
}

/// What decoding one frame of `payload_len` bytes may allocate at once: the bincode limit for its strings
/// (32 times the payload, at least 4 KiB), one sequence preallocated by serde (at most 1 MiB whatever length
/// it announces), and the decoded message itself (a few times the payload).
fn allocation_bound(payload_len: usize) -> usize {
    32 * payload_len.max(128) + (1 << 20) + 16 * payload_len + 4096
}

/// The message types a stream carries.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Hello,
    HelloReply,
    AgentControl,
    Request,
    Response,
    ShardAnswer,
    RowAnswer,
    PipeOrders,
    PipeAnswers,
}

fn any_kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Hello),
        Just(Kind::HelloReply),
        Just(Kind::AgentControl),
        Just(Kind::Request),
        Just(Kind::Response),
        Just(Kind::ShardAnswer),
        Just(Kind::RowAnswer),
        Just(Kind::PipeOrders),
        Just(Kind::PipeAnswers),
    ]
}

/// Frame caps in use: the handshake's and control stream's, a request's, and the protocol's.
fn any_limit() -> impl Strategy<Value = usize> {
    prop_oneof![Just(4 * 1024), Just(64 * 1024), Just(MAX_FRAME_BYTES), 0usize..64]
}

/// Feeds `bytes` in `chunk`-byte pieces and takes every message out after each, checking the decoder's
/// promises: it never holds more than one capped frame after being drained, it stays poisoned (and drops
/// input) after an error, and one frame never makes it allocate beyond [`allocation_bound`].
fn feed(
    kind: Kind,
    bytes: &[u8],
    chunk: usize,
    limit: usize,
) -> Result<Result<usize, CodecError>, TestCaseError> {
    match kind {
        Kind::Hello => feed_as::<Hello>(bytes, chunk, limit),
        Kind::HelloReply => feed_as::<HelloReply>(bytes, chunk, limit),
        Kind::AgentControl => feed_as::<AgentControl>(bytes, chunk, limit),
        Kind::Request => feed_as::<Request>(bytes, chunk, limit),
        Kind::Response => feed_as::<Response>(bytes, chunk, limit),
        Kind::ShardAnswer => feed_as::<ShardAnswer>(bytes, chunk, limit),
        Kind::RowAnswer => feed_as::<RowAnswer>(bytes, chunk, limit),
        Kind::PipeOrders => feed_as::<ShardPipeOrders>(bytes, chunk, limit),
        Kind::PipeAnswers => feed_as::<ShardPipeAnswers>(bytes, chunk, limit),
    }
}

fn feed_as<T: DeserializeOwned>(
    bytes: &[u8],
    chunk: usize,
    limit: usize,
) -> Result<Result<usize, CodecError>, TestCaseError> {
    let cap = limit.min(MAX_FRAME_BYTES);
    let mut dec = FrameDecoder::with_limit(limit);
    let mut decoded = 0;
    for piece in bytes.chunks(chunk.max(1)) {
        dec.push(piece);
        loop {
            let held = dec.buffered().saturating_sub(LENGTH_PREFIX_BYTES);
            let (next, peak) = peak_allocation(|| dec.next_message::<T>());
            prop_assert!(
                peak <= allocation_bound(held),
                "one frame of at most {held} bytes allocated {peak} bytes at once"
            );
            match next {
                Ok(Some(_)) => decoded += 1,
                Ok(None) => {
                    prop_assert!(
                        dec.buffered() < LENGTH_PREFIX_BYTES + cap,
                        "a drained decoder holds {} bytes with a {cap}-byte cap",
                        dec.buffered()
                    );
                    break;
                }
                Err(e) => {
                    prop_assert_eq!(dec.buffered(), 0, "a poisoned decoder keeps no input");
                    dec.push(bytes);
                    prop_assert_eq!(dec.buffered(), 0, "a poisoned decoder drops input");
                    prop_assert_eq!(
                        dec.next_message::<T>().err(),
                        Some(e.clone()),
                        "stays poisoned"
                    );
                    return Ok(Err(e));
                }
            }
        }
    }
    Ok(dec.finish().map(|()| decoded))
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        // Long enough for two- and three-byte varint lengths.
        1 => (0usize..4000, any::<char>()).prop_map(|(n, c)| c.to_string().repeat(n)),
    ]
}

fn device_advert() -> impl Strategy<Value = DeviceAdvert> {
    (
        (any::<u32>(), text(), text(), any::<u64>(), any::<f64>()),
        any::<u32>(),
        vec((any::<u32>(), any::<u32>()), 0..14),
    )
        .prop_map(
            |((index, name, kind, memory_bytes, measured_ops_per_sec), concurrent_shards, caps)| {
                DeviceAdvert {
                    index,
                    name,
                    kind,
                    memory_bytes,
                    measured_ops_per_sec,
                    concurrent_shards,
                    row_capacity: caps
                        .into_iter()
                        .map(|(matrix_size, max_rows)| RowCapacity { matrix_size, max_rows })
                        .collect(),
                }
            },
        )
}

fn hello() -> impl Strategy<Value = Hello> {
    (prop_oneof![Just(PROTOCOL_VERSION), any::<u16>()], text(), text(), vec(device_advert(), 0..4))
        .prop_map(|(protocol_version, token, agent_name, devices)| Hello {
            protocol_version,
            token,
            agent_name,
            devices,
        })
}

fn hello_reply() -> impl Strategy<Value = HelloReply> {
    prop_oneof![
        (any::<u64>(), any::<u32>()).prop_map(|(agent_id, heartbeat_interval_ms)| {
            HelloReply::Welcome { agent_id, heartbeat_interval_ms }
        }),
        text().prop_map(|reason| HelloReply::Refused { reason }),
    ]
}

fn agent_control() -> impl Strategy<Value = AgentControl> {
    prop_oneof![
        any::<u64>().prop_map(|seq| AgentControl::Heartbeat { seq }),
        Just(AgentControl::Draining),
        (any::<u32>(), text())
            .prop_map(|(device, reason)| AgentControl::DeviceQuarantined { device, reason }),
        (
            any::<u32>(),
            proptest::option::of(text()),
            proptest::option::of(-1e6f64..1e6),
            proptest::option::of(0f64..1e6),
            (any::<u64>(), any::<u64>(), any::<u64>()),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(
                |(device, uuid, temperature_celsius, power_watts, counts, last_xid)| {
                    AgentControl::DeviceReport(cpc_common::wire::DeviceReport {
                        device,
                        uuid,
                        temperature_celsius,
                        power_watts,
                        restarts: counts.0,
                        watchdog_firings: counts.1,
                        xid_errors: counts.2,
                        last_xid,
                    })
                }
            ),
    ]
}

/// A valid challenge (the only kind a [`RunShard`] can hold).
fn challenge() -> impl Strategy<Value = Challenge> {
    (text(), 1..=MAX_MATRIX_SIZE, 1..=u32::MAX).prop_map(|(seed, n, iterations)| {
        Challenge::new(seed, n, iterations).expect("within the spec's bounds")
    })
}

/// `RunShard` as protocol version 3 first laid it out, with the challenge's fields loose.
#[derive(Serialize)]
struct LooseRunShard {
    shard_id: u64,
    seed: String,
    matrix_size: u32,
    iterations: u32,
    iteration: u32,
    rows: (u32, u32),
    device: u32,
    check_seed: u64,
}

/// `Request` with the loose `RunShard`, variant for variant.
#[derive(Serialize)]
enum LooseRequest {
    RunShard(LooseRunShard),
}

fn run_shard() -> impl Strategy<Value = RunShard> {
    (any::<u64>(), challenge(), any::<u32>(), any::<(u32, u32)>(), any::<u32>(), any::<u64>())
        .prop_map(|(shard_id, challenge, iteration, rows, device, check_seed)| RunShard {
            shard_id,
            challenge,
            iteration,
            rows,
            device,
            check_seed,
        })
}

fn pipe_orders() -> impl Strategy<Value = ShardPipeOrders> {
    let order = prop_oneof![
        run_shard().prop_map(ShardPipeOrder::Run),
        run_shard().prop_map(ShardPipeOrder::RunRoot),
        any::<u64>().prop_map(|shard_id| ShardPipeOrder::Cancel { shard_id }),
    ];
    vec(order, 0..8).prop_map(ShardPipeOrders)
}

fn pipe_answers() -> impl Strategy<Value = ShardPipeAnswers> {
    let answer = response().prop_filter_map("a RunShard answer", |r| ShardAnswer::try_from(r).ok());
    vec(answer, 0..8).prop_map(ShardPipeAnswers)
}

fn request() -> impl Strategy<Value = Request> {
    let fetch_row =
        || (any::<u64>(), any::<u32>()).prop_map(|(shard_id, row)| FetchRow { shard_id, row });
    prop_oneof![
        run_shard().prop_map(Request::RunShard),
        fetch_row().prop_map(Request::FetchRow),
        run_shard().prop_map(|r| Request::RunShardRoot(RunShardRoot(r))),
        fetch_row().prop_map(|r| Request::FetchRowProof(FetchRowProof(r))),
        Just(Request::OpenShardPipe(OpenShardPipe)),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    let leaves = || (any::<u64>(), vec(any::<[u8; 32]>(), 0..64), any::<Option<(u64, u64)>>());
    let timing = |check: Option<(u64, u64)>| {
        check.map(|(check_micros, shard_micros)| CheckTiming { check_micros, shard_micros })
    };
    prop_oneof![
        leaves().prop_map(move |(shard_id, leaves, check)| Response::ShardDone {
            shard_id,
            leaves,
            check: timing(check),
        }),
        leaves().prop_map(move |(shard_id, leaves, check)| Response::ShardLeaves {
            shard_id,
            leaves,
            check: timing(check),
        }),
        (any::<u64>(), text())
            .prop_map(|(shard_id, reason)| Response::CheckFailed { shard_id, reason }),
        (any::<u64>(), text())
            .prop_map(|(shard_id, reason)| Response::ShardFailed { shard_id, reason }),
        vec(any::<i32>(), 0..600).prop_map(|values| Response::Row { values }),
        text().prop_map(|reason| Response::RowUnavailable { reason }),
        text().prop_map(|reason| Response::Error { reason }),
        (any::<u64>(), any::<[u8; 32]>(), any::<Option<(u64, u64)>>()).prop_map(
            move |(shard_id, root, check)| Response::ShardRoot {
                shard_id,
                root,
                check: timing(check),
            }
        ),
        (vec(any::<i32>(), 0..600), vec(any::<[u8; 32]>(), 0..17))
            .prop_map(|(values, path)| Response::RowProof { values, path }),
    ]
}

/// Valid messages of one stream, framed.
#[derive(Debug, Clone)]
struct Stream {
    kind: Kind,
    frames: Vec<Vec<u8>>,
}

fn frames<T: Serialize + std::fmt::Debug>(
    kind: Kind,
    msgs: impl Strategy<Value = T>,
) -> impl Strategy<Value = Stream> {
    vec(msgs, 1..5).prop_map(move |msgs| Stream {
        kind,
        frames: msgs.iter().map(|m| codec::encode(m).expect("a wire message encodes")).collect(),
    })
}

fn any_stream() -> impl Strategy<Value = Stream> {
    prop_oneof![
        frames(Kind::Hello, hello()),
        frames(Kind::HelloReply, hello_reply()),
        frames(Kind::AgentControl, agent_control()),
        frames(Kind::Request, request()),
        frames(Kind::Response, response()),
        frames(
            Kind::ShardAnswer,
            response().prop_filter_map("a RunShard answer", |r| { ShardAnswer::try_from(r).ok() })
        ),
        frames(
            Kind::RowAnswer,
            response().prop_filter_map("a FetchRow answer", |r| { RowAnswer::try_from(r).ok() })
        ),
        frames(Kind::PipeOrders, pipe_orders()),
        frames(Kind::PipeAnswers, pipe_answers()),
    ]
}

/// A bincode varint announcing `n` (for splicing huge sequence and string lengths into payloads).
fn varint(n: u64) -> Vec<u8> {
    match n {
        0..=250 => vec![u8::try_from(n).unwrap_or(0)],
        251..=0xffff => [&[251u8][..], &u16::try_from(n).unwrap_or(0).to_le_bytes()].concat(),
        0x1_0000..=0xffff_ffff => {
            [&[252u8][..], &u32::try_from(n).unwrap_or(0).to_le_bytes()].concat()
        }
        _ => [&[253u8][..], &n.to_le_bytes()].concat(),
    }
}

/// One edit of a valid frame. Positions are taken modulo the length they apply to.
#[derive(Debug, Clone)]
enum Mutation {
    Overwrite {
        at: usize,
        byte: u8,
    },
    Truncate {
        at: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Remove {
        at: usize,
        len: usize,
    },
    /// Rewrites the length prefix of the first frame.
    Prefix(u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let huge_length = prop_oneof![
        Just(u64::MAX),
        Just(1 << 40),
        Just(MAX_FRAME_BYTES as u64 + 1),
        Just(MAX_FRAME_BYTES as u64 - 1024),
        Just(64 * 1024 + 1),
        any::<u64>(),
    ]
    .prop_map(varint);
    prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Overwrite { at, byte }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        2 => (any::<usize>(), prop_oneof![vec(any::<u8>(), 1..8), huge_length])
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Remove { at, len }),
        1 => prop_oneof![
            Just(0u32),
            Just(u32::MAX),
            Just(MAX_FRAME_BYTES as u32),
            Just(MAX_FRAME_BYTES as u32 + 1),
            0u32..4096,
        ]
        .prop_map(Mutation::Prefix),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    match m {
        Mutation::Overwrite { at: i, byte } => {
            if !bytes.is_empty() {
                let i = at(*i, bytes.len());
                bytes[i] = *byte;
            }
        }
        Mutation::Truncate { at: i } => bytes.truncate(at(*i, bytes.len())),
        Mutation::Insert { at: i, bytes: new } => {
            let i = at(*i, bytes.len() + 1);
            bytes.splice(i..i, new.iter().copied());
        }
        Mutation::Remove { at: i, len } => {
            let start = at(*i, bytes.len());
            let end = (start + len).min(bytes.len());
            bytes.drain(start..end);
        }
        Mutation::Prefix(len) => {
            if let Some(prefix) = bytes.get_mut(..LENGTH_PREFIX_BYTES) {
                prefix.copy_from_slice(&len.to_be_bytes());
            }
        }
    }
}

/// Applies `mutations` to the payload of frame `which` and frames it again with its true length, so that
/// the payload decoder (not the frame layer) meets the damage.
fn mutate_payload(stream: &Stream, which: usize, mutations: &[Mutation]) -> Vec<u8> {
    let mut out = Vec::new();
    let which = which % stream.frames.len();
    for (i, frame) in stream.frames.iter().enumerate() {
        if i != which {
            out.extend_from_slice(frame);
            continue;
        }
        let mut payload = frame[LENGTH_PREFIX_BYTES..].to_vec();
        for m in mutations.iter().filter(|m| !matches!(m, Mutation::Prefix(_))) {
            apply(&mut payload, m);
        }
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&payload);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzzing::cases(2000)))]

    /// Arbitrary bytes, with a plausible length prefix half of the time so that the payload decoder sees
    /// them too: an error or messages, never a panic, never more than a capped frame held.
    #[test]
    fn arbitrary_bytes_never_panic(
        mut bytes in vec(any::<u8>(), 0..600),
        plausible_prefix in any::<bool>(),
        kind in any_kind(),
        chunk in 1usize..80,
        limit in any_limit(),
    ) {
        if plausible_prefix && bytes.len() >= LENGTH_PREFIX_BYTES {
            let len = u32::try_from(bytes.len() - LENGTH_PREFIX_BYTES).unwrap_or(u32::MAX);
            bytes[..LENGTH_PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
        }
        // Messages or an error: both are answers; the checks are inside `feed`.
        let _outcome = feed(kind, &bytes, chunk, limit)?;
    }

    /// Valid frames edited in the payload (re-framed with its true length) or anywhere in the stream
    /// (length prefixes included), decoded as their own type and as another.
    #[test]
    fn mutated_frames_never_panic_or_overallocate(
        stream in any_stream(),
        mutations in vec(mutation(), 1..5),
        which in any::<usize>(),
        in_payload in any::<bool>(),
        as_kind in prop::option::of(any_kind()),
        chunk in 1usize..80,
        limit in any_limit(),
    ) {
        let bytes = if in_payload {
            mutate_payload(&stream, which, &mutations)
        } else {
            let mut bytes = stream.frames.concat();
            for m in &mutations {
                apply(&mut bytes, m);
            }
            bytes
        };
        let _outcome = feed(as_kind.unwrap_or(stream.kind), &bytes, chunk, limit)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzzing::cases(500)))]

    /// Valid messages come out as they went in, in any chunking, and encode to the same bytes again.
    #[test]
    fn valid_messages_round_trip_in_any_chunking(stream in any_stream(), chunk in 1usize..4096) {
        let bytes = stream.frames.concat();
        let decoded = feed(stream.kind, &bytes, chunk, MAX_FRAME_BYTES)?;
        prop_assert_eq!(decoded, Ok(stream.frames.len()));
        let again = match stream.kind {
            Kind::Hello => reencode::<Hello>(&stream.frames),
            Kind::HelloReply => reencode::<HelloReply>(&stream.frames),
            Kind::AgentControl => reencode::<AgentControl>(&stream.frames),
            Kind::Request => reencode::<Request>(&stream.frames),
            Kind::Response => reencode::<Response>(&stream.frames),
            Kind::ShardAnswer => reencode::<ShardAnswer>(&stream.frames),
            Kind::RowAnswer => reencode::<RowAnswer>(&stream.frames),
            Kind::PipeOrders => reencode::<ShardPipeOrders>(&stream.frames),
            Kind::PipeAnswers => reencode::<ShardPipeAnswers>(&stream.frames),
        };
        prop_assert_eq!(again, stream.frames);
    }
}

/// Each frame decoded and encoded again (bytes, not `PartialEq`, so that NaN speeds compare too).
fn reencode<T: Serialize + DeserializeOwned>(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .map(|f| {
            let msg: T = codec::decode_payload(&f[LENGTH_PREFIX_BYTES..]).expect("decodes");
            codec::encode(&msg).expect("encodes")
        })
        .collect()
}

/// Found by `mutated_frames_never_panic_or_overallocate` (the seed is in `proptest-regressions`): an 11-byte
/// frame (a `HelloReply` read as a `Request`) announced a 1 MiB seed, and bincode allocated it before finding
/// the bytes missing. Under the protocol's 64 MiB limit, a 15-byte `Hello` made it allocate 64 MiB through
/// the handshake's 64 KiB frame cap.
#[test]
fn a_short_frame_announcing_a_huge_string_allocates_little() {
    let mut payload = varint(u64::from(PROTOCOL_VERSION));
    // Just under the protocol's limit, which also counts the 2 bytes of the version.
    payload.extend(varint(MAX_FRAME_BYTES as u64 - 1024));
    payload.extend_from_slice(b"t0k3n");
    let mut frame = u32::try_from(payload.len()).expect("small").to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    let mut dec = FrameDecoder::with_limit(64 * 1024);
    dec.push(&frame);
    let (result, peak) = peak_allocation(|| dec.next_message::<Hello>());
    assert!(matches!(result, Err(CodecError::Malformed(_))), "{result:?}");
    assert!(peak < 64 * 1024, "decoding a {}-byte frame allocated {peak} bytes", frame.len());
}

/// The limit follows the payload, but valid messages still decode at and either side of every step of it:
/// one whose string fills the payload, and one of small integers, which bincode counts at 4 bytes a byte.
#[test]
fn valid_messages_decode_at_every_limit_step() {
    // The limit steps at payloads of an eighth of each power of four from 4 KiB to 64 MiB.
    for step in [4usize << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
    {
        for payload_len in [step / 8 - 1, step / 8, step / 8 + 1] {
            // Response::Error: a variant byte, then the string's varint length and bytes.
            let string_len = (0..payload_len)
                .rev()
                .find(|&n| 1 + varint(n as u64).len() + n == payload_len)
                .expect("a string length that fills the payload");
            let error = Response::Error { reason: "r".repeat(string_len) };
            // Response::Row: a variant byte, the count's varint, one byte per small value.
            let count = (0..payload_len)
                .rev()
                .find(|&n| 1 + varint(n as u64).len() + n <= payload_len)
                .expect("a count that fits");
            let row = Response::Row { values: vec![7; count] };
            for msg in [error, row] {
                let frame = codec::encode(&msg).expect("encodes");
                let back: Response = codec::decode_payload(&frame[LENGTH_PREFIX_BYTES..])
                    .unwrap_or_else(|e| panic!("a {payload_len}-byte payload: {e}"));
                assert_eq!(back, msg);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: fuzzing::cases(256),
        ..ProptestConfig::default()
    })]

    /// A `RunShard` holding a `Challenge` is the same bytes as the loose fields it replaced, and a frame
    /// whose n or iteration count breaks the spec's bounds does not decode at all.
    #[test]
    fn run_shard_keeps_its_layout_and_refuses_invalid_challenges(
        shard_id in any::<u64>(),
        seed in text(),
        matrix_size in prop_oneof![0..=MAX_MATRIX_SIZE + 1, any::<u32>()],
        iterations in prop_oneof![Just(0u32), any::<u32>()],
        iteration in any::<u32>(),
        rows in any::<(u32, u32)>(),
    ) {
        let loose = LooseRequest::RunShard(LooseRunShard {
            shard_id,
            seed: seed.clone(),
            matrix_size,
            iterations,
            iteration,
            rows,
            device: 3,
            check_seed: 9,
        });
        let frame = codec::encode(&loose).expect("encodes");
        let decoded = codec::decode_payload::<Request>(&frame[LENGTH_PREFIX_BYTES..]);
        match Challenge::new(seed, matrix_size, iterations) {
            Ok(challenge) => {
                let typed = Request::RunShard(RunShard {
                    shard_id,
                    challenge,
                    iteration,
                    rows,
                    device: 3,
                    check_seed: 9,
                });
                prop_assert_eq!(&codec::encode(&typed).expect("encodes"), &frame);
                prop_assert_eq!(decoded.expect("valid"), typed);
            }
            Err(_) => prop_assert!(matches!(decoded, Err(CodecError::Malformed(_)))),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: fuzzing::cases(256),
        ..ProptestConfig::default()
    })]

    /// Every `Response` on the wire decodes as the typed answer of the one request it answers (an `Error`
    /// as either), to the same bytes again (a version-4 `ShardDone` to its version-5 `ShardLeaves`); as the
    /// other request's answer it does not decode at all.
    #[test]
    fn typed_answers_are_responses_of_their_own_request(response in response()) {
        let frame = codec::encode(&response).expect("encodes");
        let payload = &frame[LENGTH_PREFIX_BYTES..];
        let shard = codec::decode_payload::<ShardAnswer>(payload);
        let row = codec::decode_payload::<RowAnswer>(payload);
        let (answers_shard, answers_row) = match &response {
            Response::ShardDone { .. }
            | Response::ShardLeaves { .. }
            | Response::ShardRoot { .. }
            | Response::ShardFailed { .. }
            | Response::CheckFailed { .. } => (true, false),
            Response::Row { .. } | Response::RowUnavailable { .. } | Response::RowProof { .. } => {
                (false, true)
            }
            Response::Error { .. } => (true, true),
        };
        prop_assert_eq!(shard.is_ok(), answers_shard, "{:?} as a ShardAnswer: {:?}", response, shard);
        prop_assert_eq!(row.is_ok(), answers_row, "{:?} as a RowAnswer: {:?}", response, row);
        if let Ok(shard) = shard {
            let same = match response.clone() {
                Response::ShardDone { shard_id, leaves, check } => {
                    codec::encode(&Response::ShardLeaves { shard_id, leaves, check }).expect("encodes")
                }
                _ => frame.clone(),
            };
            prop_assert_eq!(&codec::encode(&shard).expect("encodes"), &same);
        }
        if let Ok(row) = row {
            prop_assert_eq!(&codec::encode(&row).expect("encodes"), &frame);
        }
    }
}
