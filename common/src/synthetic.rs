//! synthetic-v1: the farm's matrix challenge (`../shared/spec/SYNTHETIC_V1.md`), the part every backend
//! and every checker shares: task derivation, Philox4x32-10, and the definition of each matrix element.
//!
//! The fast paths (whole rows, blocked GEMM, GPU kernels) live in `cpc-kernels`; this module is the
//! readable definition they are tested against, and cheap enough for spot checks (one element of C is
//! O(n) work).

use crate::hashing::{Digest32, sha256, sha256_hex};
use std::{fmt, sync::Arc};

/// Largest matrix size for which `i8 × i8` sums stay exact in `i32`.
pub const MAX_MATRIX_SIZE: u32 = 65_536;
/// Matrix size of the worker guide's per-block task.
pub const DEFAULT_MATRIX_SIZE: u32 = 1024;
/// Columns produced by one Philox call (16 bytes read as `i8`).
pub const COLUMNS_PER_GROUP: usize = 16;
/// `challenge_type` of synthetic-v1 tasks.
pub const CHALLENGE_TYPE: &str = "synthetic";

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

/// Philox4x32-10 (Random123): 10 rounds over a 128-bit counter with a 64-bit key.
#[inline(always)]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut c0, mut c1, mut c2, mut c3] = counter;
    let [mut k0, mut k1] = key;
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(PHILOX_W0);
            k1 = k1.wrapping_add(PHILOX_W1);
        }
        let p0 = u64::from(PHILOX_M0) * u64::from(c0);
        let p1 = u64::from(PHILOX_M1) * u64::from(c2);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);
    }
    [c0, c1, c2, c3]
}

/// The worker guide's seed: `sha256_hex(block_hash + worker_address)`.
pub fn task_seed(block_hash: &str, worker_address: &str) -> String {
    sha256_hex(format!("{block_hash}{worker_address}"))
}

/// Errors deriving a task.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SyntheticError {
    /// Block-task seeds are 64 hex characters; this one is not.
    #[error("seed `{0}` is not 64 hex characters")]
    SeedNotHex(String),
    /// `matrix_size` outside `1..=65536`.
    #[error("matrix_size {0} is out of range 1..=65536 (the exactness bound of i32 sums)")]
    MatrixSize(u64),
    /// `iterations` must be at least 1.
    #[error("iterations must be at least 1")]
    Iterations,
}

/// The deterministic UUIDv8 task id of a hex seed.
pub fn task_id(seed_hex: &str) -> Result<uuid::Uuid, SyntheticError> {
    let mut seed = [0u8; 32];
    hex::decode_to_slice(seed_hex, &mut seed)
        .map_err(|_| SyntheticError::SeedNotHex(seed_hex.to_owned()))?;
    let mut pre = Vec::with_capacity(19 + 32);
    pre.extend_from_slice(b"cpc-farm/task-id/v1");
    pre.extend_from_slice(&seed);
    let digest = sha256(&pre);
    let mut raw = [0u8; 16];
    raw.copy_from_slice(&digest[..16]);
    raw[6] = (raw[6] & 0x0F) | 0x80;
    raw[8] = (raw[8] & 0x3F) | 0x80;
    Ok(uuid::Uuid::from_bytes(raw))
}

/// Philox key and stream derived from a seed string: `K = sha256(utf8(seed))`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyMaterial {
    /// Philox key `(le_u32(K[0:4]), le_u32(K[4:8]))`.
    pub key: [u32; 2],
    /// Stream `le_u32(K[8:12])`, the counter's fourth word.
    pub stream: u32,
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KeyMaterial {{ key: [{:#010x}, {:#010x}], stream: {:#010x} }}",
            self.key[0], self.key[1], self.stream
        )
    }
}

impl KeyMaterial {
    /// Key material of any seed string (hex or not: validator jobs use their seed as given).
    pub fn from_seed(seed: &str) -> Self {
        let k: Digest32 = sha256(seed.as_bytes());
        let le = |i: usize| u32::from_le_bytes([k[i], k[i + 1], k[i + 2], k[i + 3]]);
        Self { key: [le(0), le(4)], stream: le(8) }
    }

    /// The 16 `i8` values of columns `16g..16g+16` of row `row` of matrix `matrix_id`.
    #[inline(always)]
    pub fn group(&self, matrix_id: u32, row: u32, group: u32) -> [i8; COLUMNS_PER_GROUP] {
        let words = philox4x32_10([group, row, matrix_id, self.stream], self.key);
        let mut out = [0i8; COLUMNS_PER_GROUP];
        for (i, w) in words.iter().enumerate() {
            for (j, b) in w.to_le_bytes().iter().enumerate() {
                out[4 * i + j] = *b as i8;
            }
        }
        out
    }

    /// One element of matrix `matrix_id`.
    pub fn element(&self, matrix_id: u32, row: u32, col: u32) -> i8 {
        self.group(matrix_id, row, col / 16)[(col % 16) as usize]
    }

    /// Fills `out` (length n) with row `row` of matrix `matrix_id`.
    pub fn fill_row(&self, matrix_id: u32, row: u32, out: &mut [i8]) {
        for (g, chunk) in out.chunks_mut(COLUMNS_PER_GROUP).enumerate() {
            let vals = self.group(matrix_id, row, g as u32);
            chunk.copy_from_slice(&vals[..chunk.len()]);
        }
    }
}

/// Matrix ids of iteration `t`: `A = 2t`, `B = 2t + 1`.
pub fn matrix_ids(iteration: u32) -> (u32, u32) {
    (2 * iteration, 2 * iteration + 1)
}

/// A synthetic-v1 challenge: a seed string, a size and a number of iterations.
///
/// Valid by construction: [`Challenge::new`] checks the spec's bounds (1 ≤ n ≤ [`MAX_MATRIX_SIZE`],
/// iterations ≥ 1), the fields are private, and deserialisation goes through the same check, so code that
/// holds a `Challenge` never checks it again. The seed is shared by its clones: a coordinator copies a
/// challenge into every shard it sends.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "ChallengeFields")]
pub struct Challenge {
    seed: Arc<str>,
    matrix_size: u32,
    iterations: u32,
}

/// A challenge's fields as they travel, before [`Challenge::new`] has checked them.
#[derive(serde::Deserialize)]
struct ChallengeFields {
    seed: String,
    matrix_size: u32,
    iterations: u32,
}

impl TryFrom<ChallengeFields> for Challenge {
    type Error = SyntheticError;

    fn try_from(fields: ChallengeFields) -> Result<Self, Self::Error> {
        Self::new(fields.seed, fields.matrix_size, fields.iterations)
    }
}

impl Challenge {
    /// A challenge, checked against the bounds the spec sets.
    pub fn new(
        seed: impl Into<String>,
        matrix_size: u32,
        iterations: u32,
    ) -> Result<Self, SyntheticError> {
        if matrix_size == 0 || matrix_size > MAX_MATRIX_SIZE {
            return Err(SyntheticError::MatrixSize(matrix_size.into()));
        }
        if iterations == 0 {
            return Err(SyntheticError::Iterations);
        }
        Ok(Self { seed: seed.into().into(), matrix_size, iterations })
    }

    /// The seed string (block tasks: `sha256_hex(block_hash + worker_address)`).
    pub fn seed(&self) -> &str {
        &self.seed
    }

    /// n: the matrices are n × n, 1 ≤ n ≤ [`MAX_MATRIX_SIZE`].
    pub fn matrix_size(&self) -> u32 {
        self.matrix_size
    }

    /// Number of independent products (at least 1); the result is the Merkle root over their roots when
    /// there are more than one.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// The key material of the seed.
    pub fn key_material(&self) -> KeyMaterial {
        KeyMaterial::from_seed(&self.seed)
    }

    /// `C[row][col]` of iteration `t`, from scratch: O(n) Philox calls. The checker's tool.
    pub fn c_element(&self, iteration: u32, row: u32, col: u32) -> i32 {
        let km = self.key_material();
        let (a_id, b_id) = matrix_ids(iteration);
        let n = self.matrix_size as usize;
        let mut a_row = vec![0i8; n];
        km.fill_row(a_id, row, &mut a_row);
        let (group, lane) = (col / 16, (col % 16) as usize);
        a_row
            .iter()
            .enumerate()
            .map(|(k, &a)| i32::from(a) * i32::from(km.group(b_id, k as u32, group)[lane]))
            .sum()
    }

    /// Combines per-iteration roots into the result hash.
    pub fn combine_iterations(roots: &[Digest32]) -> Digest32 {
        if roots.len() == 1 { roots[0] } else { crate::merkle::merkle_root(roots) }
    }
}

/// The per-block task of one worker identity.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockTask {
    /// UUIDv8 derived from the seed.
    pub task_id: uuid::Uuid,
    /// The challenge (seed = `sha256_hex(block_hash + worker_address)`, one iteration).
    pub challenge: Challenge,
    /// Hash of the block that seeded it.
    pub block_hash: String,
    /// The worker identity's address.
    pub worker_address: String,
    /// `ComputeResult.nonce`: the seeding block's height.
    pub height: u64,
}

impl BlockTask {
    /// Derives the task of `worker_address` for the block `block_hash` at `height`.
    pub fn derive(
        block_hash: &str,
        worker_address: &str,
        matrix_size: u32,
        height: u64,
    ) -> Result<Self, SyntheticError> {
        let seed = task_seed(block_hash, worker_address);
        let task_id = task_id(&seed)?;
        Ok(Self {
            task_id,
            challenge: Challenge::new(seed, matrix_size, 1)?,
            block_hash: block_hash.to_owned(),
            worker_address: worker_address.to_owned(),
            height,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_enforced() {
        assert_eq!(Challenge::new("s", 0, 1), Err(SyntheticError::MatrixSize(0)));
        assert_eq!(Challenge::new("s", 65_537, 1), Err(SyntheticError::MatrixSize(65_537)));
        assert_eq!(Challenge::new("s", 4, 0), Err(SyntheticError::Iterations));
        assert!(task_id("not hex").is_err());
    }

    #[test]
    fn deserialisation_checks_the_bounds_too() {
        let ok = Challenge::new("s", 4, 2).expect("valid");
        let json = serde_json::to_string(&ok).expect("serialises");
        assert_eq!(json, r#"{"seed":"s","matrix_size":4,"iterations":2}"#);
        assert_eq!(serde_json::from_str::<Challenge>(&json).expect("valid"), ok);
        for bad in [
            r#"{"seed":"s","matrix_size":0,"iterations":1}"#,
            r#"{"seed":"s","matrix_size":65537,"iterations":1}"#,
            r#"{"seed":"s","matrix_size":4,"iterations":0}"#,
        ] {
            assert!(serde_json::from_str::<Challenge>(bad).is_err(), "{bad}");
        }
        let frame = crate::codec::encode(&ok).expect("encodes");
        let payload = &frame[crate::codec::LENGTH_PREFIX_BYTES..];
        assert_eq!(crate::codec::decode_payload::<Challenge>(payload).expect("valid"), ok);
        let zero = crate::codec::encode(&("s", 0u32, 1u32)).expect("encodes");
        assert!(
            crate::codec::decode_payload::<Challenge>(&zero[crate::codec::LENGTH_PREFIX_BYTES..])
                .is_err(),
            "n = 0 over the wire"
        );
    }

    #[test]
    fn element_and_row_agree() {
        let km = KeyMaterial::from_seed("abc");
        let mut row = vec![0i8; 37];
        km.fill_row(3, 5, &mut row);
        for (c, v) in row.iter().enumerate() {
            assert_eq!(*v, km.element(3, 5, c as u32));
        }
    }
}
