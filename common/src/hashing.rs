//! SHA-256 helpers shared by every hash the protocol defines (tx hash, header hash, leaves, seeds).

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Digest32 = [u8; 32];

/// SHA-256 of `data`.
pub fn sha256(data: impl AsRef<[u8]>) -> Digest32 {
    Sha256::digest(data.as_ref()).into()
}

/// SHA-256 of `data`, as lower-case hex (the node's `sha256_hex`).
pub fn sha256_hex(data: impl AsRef<[u8]>) -> String {
    hex::encode(sha256(data))
}

/// Parses 64 hex characters into a digest.
pub fn digest_from_hex(s: &str) -> Option<Digest32> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}
