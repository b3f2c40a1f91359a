//! Bech32 addresses: `bech32("cpc", ripemd160(sha256(compressed_pubkey)))`, BIP-173 (not bech32m).
//! Validator consensus addresses use the `cpcvalcons` prefix over the same 20 bytes.

use crate::hashing::sha256;
use bech32::{Bech32, Hrp};
use ripemd::{Digest, Ripemd160};
use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};

/// Human-readable part of account addresses.
pub const ACCOUNT_HRP: &str = "cpc";
/// Human-readable part of validator consensus addresses.
pub const VALCONS_HRP: &str = "cpcvalcons";

/// Errors from parsing an address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    /// The text is not valid bech32 (checksum, characters or length).
    #[error("`{0}` is not a valid bech32 address")]
    NotBech32(String),
    /// Valid bech32 but with another prefix or payload size than a `cpc1...` account address.
    #[error("`{0}` is not a ComputeChain account address (expected `cpc1...` over 20 bytes)")]
    WrongKind(String),
}

/// A validated `cpc1...` account address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Address(String);

impl Address {
    /// The address of a compressed public key.
    pub fn from_public_key(compressed: &[u8]) -> Self {
        Self(encode(ACCOUNT_HRP, &key_hash(compressed)))
    }

    /// The validator consensus (`cpcvalcons1...`) address of the same key.
    pub fn valcons_from_public_key(compressed: &[u8]) -> String {
        encode(VALCONS_HRP, &key_hash(compressed))
    }

    /// The address text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn key_hash(compressed: &[u8]) -> [u8; 20] {
    Ripemd160::digest(sha256(compressed)).into()
}

fn encode(hrp: &str, data: &[u8]) -> String {
    // Both prefixes are valid constants and 20 bytes are far below bech32's length limit.
    let hrp = Hrp::parse_unchecked(hrp);
    bech32::encode::<Bech32>(hrp, data).unwrap_or_default()
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hrp, data) = bech32::decode(s).map_err(|_| AddressError::NotBech32(s.to_owned()))?;
        // `decode` accepts bech32m too; the node's addresses are plain bech32.
        let canonical = bech32::encode::<Bech32>(hrp, &data)
            .map_err(|_| AddressError::NotBech32(s.to_owned()))?;
        if canonical != s.to_ascii_lowercase() {
            return Err(AddressError::NotBech32(s.to_owned()));
        }
        if hrp.as_str() != ACCOUNT_HRP || data.len() != 20 {
            return Err(AddressError::WrongKind(s.to_owned()));
        }
        Ok(Self(canonical))
    }
}

impl TryFrom<String> for Address {
    type Error = AddressError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Address> for String {
    fn from(a: Address) -> Self {
        a.0
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage_and_other_prefixes() {
        assert!(matches!("hello".parse::<Address>(), Err(AddressError::NotBech32(_))));
        assert!(matches!(
            "cpcvalcons1muep0ykx9jzhk6ndjut87p0a657napp5mcpdgs".parse::<Address>(),
            Err(AddressError::WrongKind(_))
        ));
        // One character changed breaks the checksum.
        assert!("cpc1muep0ykx9jzhk6ndjut87p0a657napp53he03m".parse::<Address>().is_err());
        assert!("cpc1muep0ykx9jzhk6ndjut87p0a657napp53he03n".parse::<Address>().is_ok());
    }
}
