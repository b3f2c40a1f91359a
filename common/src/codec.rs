//! Framing for the farm protocol, without I/O: the one place the wire encoding (bincode 2 over serde) is
//! named, so that every peer frames alike and no decoder can be made to panic or allocate without bound.
//!
//! A frame is a 4-byte big-endian payload length followed by the payload. [`encode`] makes one;
//! [`FrameDecoder`] takes bytes as they arrive (any chunking) and hands back whole messages, refusing a
//! length above its cap before buffering it ([`CodecError::FrameTooLarge`]) and undecodable payloads
//! ([`CodecError::Malformed`]). After an error the decoder is poisoned: the peer is out of sync and its stream
//! should be answered with the error and closed.

use serde::{Serialize, de::DeserializeOwned};

pub use crate::wire::PROTOCOL_VERSION;

/// Largest payload any frame may carry (a shard's leaves are 32 bytes a row; a fetched row 4·n ≤ 256 KiB).
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Errors framing or unframing a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The length prefix announces more than the cap: the peer is broken or hostile.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// Announced payload length.
        len: usize,
        /// The cap in force.
        max: usize,
    },
    /// The payload is not a valid message of the expected type (wrong protocol, garbage, or truncated).
    #[error(
        "malformed frame: {0} (is the peer a cpc-farm peer of protocol version {PROTOCOL_VERSION}?)"
    )]
    Malformed(String),
    /// The message could not be encoded (it is larger than the cap, or not representable).
    #[error("could not encode message: {0}")]
    Encode(String),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
}

/// The wire encoding: bincode's standard configuration, refusing to claim more than `LIMIT` bytes.
fn config<const LIMIT: usize>() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

/// One frame (length prefix and payload) holding `msg`.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; LENGTH_PREFIX_BYTES];
    bincode::serde::encode_into_std_write(msg, &mut out, config::<MAX_FRAME_BYTES>())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let len = out.len() - LENGTH_PREFIX_BYTES;
    if len > MAX_FRAME_BYTES {
        return Err(CodecError::FrameTooLarge { len, max: MAX_FRAME_BYTES });
    }
    let prefix =
        u32::try_from(len).map_err(|_| CodecError::FrameTooLarge { len, max: MAX_FRAME_BYTES })?;
    out[..LENGTH_PREFIX_BYTES].copy_from_slice(&prefix.to_be_bytes());
    Ok(out)
}

/// Decodes one payload (without its length prefix) as a `T`, requiring every byte to be used.
///
/// bincode allocates a string at the length the payload announces, before reading it, up to its configured
/// limit: with the protocol's 64 MiB limit, a 15-byte frame announcing a 64 MiB string made it allocate
/// 64 MiB, whatever the frame cap of the stream. So the limit follows the payload. bincode counts toward it
/// the in-memory size of every integer it decodes (up to 8 bytes for a one-byte varint) and the length of
/// every string, so a valid payload of `len` bytes counts at most `8 × len`; the limit is the smallest power
/// of four from 4 KiB at or above that, and an announced string can make bincode allocate at most 32 times
/// the payload (at least 4 KiB). Sequences are bounded apart from this: serde preallocates at most 1 MiB
/// for one, whatever length it announces.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    const KIB: usize = 1024;
    match payload.len().saturating_mul(8) {
        claim if claim <= 4 * KIB => decode_limited::<T, { 4 * KIB }>(payload),
        claim if claim <= 16 * KIB => decode_limited::<T, { 16 * KIB }>(payload),
        claim if claim <= 64 * KIB => decode_limited::<T, { 64 * KIB }>(payload),
        claim if claim <= 256 * KIB => decode_limited::<T, { 256 * KIB }>(payload),
        claim if claim <= 1024 * KIB => decode_limited::<T, { 1024 * KIB }>(payload),
        claim if claim <= 4096 * KIB => decode_limited::<T, { 4096 * KIB }>(payload),
        claim if claim <= 16_384 * KIB => decode_limited::<T, { 16_384 * KIB }>(payload),
        _ => decode_limited::<T, MAX_FRAME_BYTES>(payload),
    }
}

fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(
    payload: &[u8],
) -> Result<T, CodecError> {
    let (msg, used) = bincode::serde::decode_from_slice::<T, _>(payload, config::<LIMIT>())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes after the message",
            payload.len() - used
        )));
    }
    Ok(msg)
}

/// Reassembles frames from a byte stream.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
    poisoned: Option<CodecError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder with the protocol's cap, [`MAX_FRAME_BYTES`].
    pub fn new() -> Self {
        Self::with_limit(MAX_FRAME_BYTES)
    }

    /// A decoder with a smaller cap (e.g. for the unauthenticated handshake).
    pub fn with_limit(max: usize) -> Self {
        Self { buf: Vec::new(), max: max.min(MAX_FRAME_BYTES), poisoned: None }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.poisoned.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes held that do not yet make a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole message, `Ok(None)` when more bytes are needed. After an error every call answers it
    /// again.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, CodecError> {
        if let Some(e) = &self.poisoned {
            return Err(e.clone());
        }
        let Some(prefix) = self.buf.get(..LENGTH_PREFIX_BYTES) else { return Ok(None) };
        let mut len_bytes = [0u8; LENGTH_PREFIX_BYTES];
        len_bytes.copy_from_slice(prefix);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > self.max {
            return Err(self.poison(CodecError::FrameTooLarge { len, max: self.max }));
        }
        let Some(payload) = self.buf.get(LENGTH_PREFIX_BYTES..LENGTH_PREFIX_BYTES + len) else {
            return Ok(None);
        };
        let decoded = decode_payload::<T>(payload);
        self.buf.drain(..LENGTH_PREFIX_BYTES + len);
        decoded.map(Some).map_err(|e| self.poison(e))
    }

    /// Called at end of stream: an error if part of a frame is left over.
    pub fn finish(&self) -> Result<(), CodecError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(CodecError::Truncated(n)),
        }
    }

    fn poison(&mut self, e: CodecError) -> CodecError {
        self.buf = Vec::new();
        self.poisoned = Some(e.clone());
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        synthetic::Challenge,
        wire::{DeviceAdvert, FetchRow, Hello, Request, Response, RowCapacity, RunShard},
    };
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn hello() -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            token: "t0k3n".into(),
            agent_name: "host-a".into(),
            devices: vec![DeviceAdvert {
                index: 2,
                name: "H100".into(),
                kind: "cuda".into(),
                memory_bytes: 80 << 30,
                measured_ops_per_sec: 1.5e14,
                concurrent_shards: 2,
                row_capacity: vec![RowCapacity { matrix_size: 1024, max_rows: 1024 }],
            }],
        }
    }

    #[test]
    fn round_trip_in_any_chunking() {
        let msgs = vec![
            Request::RunShard(RunShard {
                shard_id: 7,
                challenge: Challenge::new("abc", 512, 2).expect("valid"),
                iteration: 1,
                rows: (3, 99),
                device: 0,
                check_seed: u64::MAX - 5,
            }),
            Request::FetchRow(FetchRow { shard_id: 7, row: 12 }),
        ];
        let bytes: Vec<u8> = msgs.iter().flat_map(|m| encode(m).expect("encodes")).collect();
        for chunk in [1, 3, 7, bytes.len()] {
            let mut dec = FrameDecoder::new();
            let mut out = Vec::new();
            for piece in bytes.chunks(chunk) {
                dec.push(piece);
                while let Some(m) = dec.next_message::<Request>().expect("decodes") {
                    out.push(m);
                }
            }
            assert_eq!(out, msgs);
            dec.finish().expect("nothing left over");
        }
        let frame = encode(&hello()).expect("encodes");
        let mut dec = FrameDecoder::new();
        dec.push(&frame);
        assert_eq!(dec.next_message::<Hello>().expect("decodes"), Some(hello()));
    }

    #[test]
    fn leaves_round_trip() {
        let check = Some(crate::wire::CheckTiming { check_micros: 1_234, shard_micros: 987_654 });
        let resp = Response::ShardLeaves { shard_id: 1, leaves: vec![[7u8; 32]; 100], check };
        let frame = encode(&resp).expect("encodes");
        assert!(frame.len() < 100 * 32 + 24, "leaves are packed: {}", frame.len());
        let old = Response::ShardDone { shard_id: 1, leaves: vec![[7u8; 32]; 100], check };
        assert_eq!(
            encode(&old).expect("encodes").len(),
            frame.len() - 2,
            "the same bytes but the variant and the length: 100 leaves (1 byte), not 3,200 bytes (3)"
        );
        let failed = Response::CheckFailed { shard_id: 2, reason: "rows [5]".into() };
        let mut dec = FrameDecoder::new();
        dec.push(&frame);
        dec.push(&encode(&failed).expect("encodes"));
        assert_eq!(dec.next_message::<Response>().expect("decodes"), Some(resp));
        assert_eq!(dec.next_message::<Response>().expect("decodes"), Some(failed));
    }

    #[test]
    fn leaf_bytes_of_a_partial_leaf_are_malformed() {
        // Response::ShardLeaves (variant 6), shard_id 1, a byte string of 33 bytes, no check timing.
        let mut payload = vec![6, 1, 33];
        payload.extend([0u8; 33]);
        payload.push(0);
        let err = decode_payload::<Response>(&payload).expect_err("33 bytes are not whole leaves");
        assert!(matches!(err, CodecError::Malformed(_)), "{err}");
        payload[2] = 32;
        payload.remove(3);
        let ok = decode_payload::<Response>(&payload).expect("one whole leaf");
        assert_eq!(ok, Response::ShardLeaves { shard_id: 1, leaves: vec![[0; 32]], check: None });
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering() {
        let mut dec = FrameDecoder::with_limit(1024);
        dec.push(&u32::MAX.to_be_bytes());
        let err = dec.next_message::<Hello>().expect_err("too large");
        assert_eq!(err, CodecError::FrameTooLarge { len: u32::MAX as usize, max: 1024 });
        dec.push(&[0; 10]);
        assert_eq!(dec.buffered(), 0, "poisoned decoders drop input");
        assert!(dec.next_message::<Hello>().is_err(), "stays poisoned");
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let mut dec = FrameDecoder::new();
        let mut frame = 5u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0xff; 5]);
        dec.push(&frame);
        let err = dec.next_message::<Hello>().expect_err("garbage");
        assert!(matches!(err, CodecError::Malformed(_)), "{err}");
        assert!(err.to_string().contains("protocol version"), "{err}");
    }

    #[test]
    fn trailing_bytes_and_truncation_are_errors() {
        let mut frame =
            encode(&Request::FetchRow(FetchRow { shard_id: 1, row: 2 })).expect("encodes");
        frame.push(0);
        let len = u32::try_from(frame.len() - 4).expect("small");
        frame[..4].copy_from_slice(&len.to_be_bytes());
        let mut dec = FrameDecoder::new();
        dec.push(&frame);
        assert!(matches!(dec.next_message::<Request>(), Err(CodecError::Malformed(_))));
        let mut dec = FrameDecoder::new();
        dec.push(&frame[..6]);
        assert_eq!(dec.next_message::<Request>(), Ok(None));
        assert_eq!(dec.finish(), Err(CodecError::Truncated(6)));
    }

    /// Fuzz-ish: random bytes, random lengths, random chunking, every message type: never a panic.
    #[test]
    fn random_bytes_never_panic() {
        let seed: u64 = 0x5eed_f00d;
        let mut rng = StdRng::seed_from_u64(seed);
        for case in 0..3000 {
            let len = rng.gen_range(0..256);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
            if case % 2 == 0 && bytes.len() >= 4 {
                // A plausible length prefix so that the payload decoder sees the garbage.
                let l = u32::try_from(bytes.len() - 4).unwrap_or(0);
                bytes[..4].copy_from_slice(&l.to_be_bytes());
            }
            let mut dec = FrameDecoder::with_limit(1 << 20);
            for piece in bytes.chunks(rng.gen_range(1..17)) {
                dec.push(piece);
                let _ = match case % 4 {
                    0 => dec.next_message::<Hello>().map(|_| ()),
                    1 => dec.next_message::<Request>().map(|_| ()),
                    2 => dec.next_message::<Response>().map(|_| ()),
                    _ => dec.next_message::<crate::wire::HelloReply>().map(|_| ()),
                };
            }
        }
    }

    /// A bincode length field claiming a huge vector inside a small frame fails cleanly.
    #[test]
    fn huge_inner_length_is_malformed() {
        // Response::ShardDone (variant 0), shard_id 1, then a varint vector length of about 2^60.
        let mut payload = vec![0u8, 1];
        payload.extend_from_slice(&[253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]); // varint u64 length
        let mut frame = u32::try_from(payload.len()).expect("small").to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        let mut dec = FrameDecoder::new();
        dec.push(&frame);
        assert!(matches!(dec.next_message::<Response>(), Err(CodecError::Malformed(_))));
    }
}
