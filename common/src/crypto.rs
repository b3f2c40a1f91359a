//! secp256k1 keys and ComputeChain signatures.
//!
//! The node signs and verifies the 32 digest bytes themselves (ECDSA "prehash": no second hashing) and
//! writes signatures as 64 bytes `r ‖ s`, big-endian, in hex. It accepts any valid `(r, s)`; we produce
//! low-S signatures (k256's default) and verify both forms.

use crate::{address::Address, hashing::Digest32};
use k256::ecdsa::{
    SigningKey, VerifyingKey,
    signature::hazmat::{PrehashSigner, PrehashVerifier},
};
use std::fmt;

/// Errors from parsing keys and signatures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The private key is not 64 hex characters of a valid secp256k1 scalar.
    #[error("invalid private key: expected 64 hex characters of a valid secp256k1 scalar")]
    InvalidSecretKey,
    /// The public key is not a hex-encoded SEC1 point on secp256k1.
    #[error("invalid public key: expected hex of a compressed (33-byte) secp256k1 point")]
    InvalidPublicKey,
    /// The signature is not 128 hex characters forming a valid `r ‖ s` pair.
    #[error("invalid signature encoding: expected 128 hex characters (r ‖ s)")]
    InvalidSignatureEncoding,
    /// Signing failed (practically unreachable with a valid key).
    #[error("signing failed: {0}")]
    Signing(String),
}

/// A worker's private key.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("SecretKey")
            .field("address", &self.address().to_string())
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    /// A fresh random key from the operating system's RNG.
    pub fn generate() -> Self {
        Self(SigningKey::random(&mut rand::rngs::OsRng))
    }

    /// Parses 64 hex characters (an optional `0x` prefix is accepted).
    pub fn from_hex(s: &str) -> Result<Self, CryptoError> {
        let s = s.trim();
        let s = s.strip_prefix("0x").unwrap_or(s);
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| CryptoError::InvalidSecretKey)?;
        SigningKey::from_bytes(&bytes.into()).map(Self).map_err(|_| CryptoError::InvalidSecretKey)
    }

    /// The key as 64 lower-case hex characters (what cpc-cli writes to disk).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    /// The compressed public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(*self.0.verifying_key())
    }

    /// The `cpc1...` account address.
    pub fn address(&self) -> Address {
        self.public_key().address()
    }

    /// Signs the 32 digest bytes as they are (no further hashing).
    pub fn sign_digest(&self, digest: &Digest32) -> Result<Signature, CryptoError> {
        let sig: k256::ecdsa::Signature =
            self.0.sign_prehash(digest).map_err(|e| CryptoError::Signing(e.to_string()))?;
        Ok(Signature(sig.to_bytes().into()))
    }
}

/// A secp256k1 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl PublicKey {
    /// Parses a hex SEC1 point (compressed, as the node sends it; uncompressed is accepted too).
    pub fn from_hex(s: &str) -> Result<Self, CryptoError> {
        let bytes = hex::decode(s.trim()).map_err(|_| CryptoError::InvalidPublicKey)?;
        VerifyingKey::from_sec1_bytes(&bytes).map(Self).map_err(|_| CryptoError::InvalidPublicKey)
    }

    /// The 33-byte compressed encoding.
    pub fn to_compressed(&self) -> [u8; 33] {
        let point = self.0.to_encoded_point(true);
        let mut out = [0u8; 33];
        out.copy_from_slice(point.as_bytes());
        out
    }

    /// The compressed encoding as hex (the transaction's `pub_key`).
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_compressed())
    }

    /// The `cpc1...` account address of this key.
    pub fn address(&self) -> Address {
        Address::from_public_key(&self.to_compressed())
    }

    /// Whether `signature` is valid for `digest` under this key. Accepts high-S signatures, as the node does.
    pub fn verify_digest(&self, digest: &Digest32, signature: &Signature) -> bool {
        let Ok(sig) = k256::ecdsa::Signature::from_slice(&signature.0) else {
            return false;
        };
        let sig = sig.normalize_s().unwrap_or(sig);
        self.0.verify_prehash(digest, &sig).is_ok()
    }
}

/// A 64-byte `r ‖ s` ECDSA signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", self.to_hex())
    }
}

impl Signature {
    /// Parses 128 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, CryptoError> {
        let mut bytes = [0u8; 64];
        hex::decode_to_slice(s.trim(), &mut bytes)
            .map_err(|_| CryptoError::InvalidSignatureEncoding)?;
        Ok(Self(bytes))
    }

    /// Lower-case hex, as the node stores it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Verifies a hex signature over `digest` by a hex public key: false on any malformed input.
pub fn verify_hex(pub_key_hex: &str, digest: &Digest32, signature_hex: &str) -> bool {
    match (PublicKey::from_hex(pub_key_hex), Signature::from_hex(signature_hex)) {
        (Ok(key), Ok(sig)) => key.verify_digest(digest, &sig),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hashing::sha256;

    #[test]
    fn sign_then_verify_round_trips_and_high_s_is_accepted() {
        let key = SecretKey::generate();
        let digest = sha256(b"hello");
        let sig = key.sign_digest(&digest).expect("sign");
        assert!(key.public_key().verify_digest(&digest, &sig));
        assert!(!key.public_key().verify_digest(&sha256(b"other"), &sig));

        // (r, n - s) is the same signature in high-S form; the node accepts it, so must we.
        let parsed = k256::ecdsa::Signature::from_slice(&sig.0).expect("sig");
        let (r, s) = parsed.split_scalars();
        let high = k256::ecdsa::Signature::from_scalars(r, -*s).expect("high-s");
        let high = Signature(high.to_bytes().into());
        assert_ne!(high, sig);
        assert!(key.public_key().verify_digest(&digest, &high));
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        assert_eq!(SecretKey::from_hex("zz").expect_err("not hex"), CryptoError::InvalidSecretKey);
        assert_eq!(
            SecretKey::from_hex(&"00".repeat(32)).expect_err("zero scalar"),
            CryptoError::InvalidSecretKey
        );
        assert!(PublicKey::from_hex("02ab").is_err());
        assert!(Signature::from_hex("abc").is_err());
        assert!(!verify_hex("nothex", &[0; 32], "00"));
    }
}
