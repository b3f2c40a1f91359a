//! The node's wire transaction: JSON shape, hash, signature and the admission checks a sender can make
//! before it spends a fee.
//!
//! The hash is `sha256_hex` of `tx_type`, `from_address`, `to_address or ""`, `str(amount)`, `str(fee)`,
//! `str(nonce)`, `str(gas_price)`, `str(gas_limit)`, the payload as `json.dumps(payload, sort_keys,
//! compact, ensure_ascii)` and `pub_key`, concatenated; the signature is ECDSA over those 32 hash bytes.

use crate::{
    crypto::{CryptoError, PublicKey, SecretKey, Signature},
    hashing::{Digest32, sha256},
    pyjson,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::{fmt, str::FromStr};

/// Lowest gas price the node admits.
pub const MIN_GAS_PRICE: u64 = 1000;
/// Most queued (pending) transactions the node keeps per sender.
pub const MAX_PENDING_PER_SENDER: usize = 1000;
/// Gas a plain transfer costs.
pub const TRANSFER_BASE_GAS: u64 = 21_000;
/// Gas a `SUBMIT_RESULT` costs.
pub const SUBMIT_RESULT_BASE_GAS: u64 = 80_000;

/// A transaction type, as the node spells it on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TxType {
    /// Moves `amount` from sender to `to_address`.
    Transfer,
    /// Bonds stake to a validator.
    Stake,
    /// Unbonds stake.
    Unstake,
    /// A worker's Proof-of-Compute result (payload: [`crate::ComputeResult`]).
    SubmitResult,
    /// Any other type the node may define; kept verbatim so its hash stays right.
    Other(String),
}

impl TxType {
    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Transfer => "TRANSFER",
            Self::Stake => "STAKE",
            Self::Unstake => "UNSTAKE",
            Self::SubmitResult => "SUBMIT_RESULT",
            Self::Other(s) => s,
        }
    }

    /// The base gas of this type, where the protocol fixes it: the fee charged is `base_gas × gas_price`.
    pub fn base_gas(&self) -> Option<u64> {
        match self {
            Self::Transfer => Some(TRANSFER_BASE_GAS),
            Self::SubmitResult => Some(SUBMIT_RESULT_BASE_GAS),
            Self::Stake | Self::Unstake | Self::Other(_) => None,
        }
    }
}

impl FromStr for TxType {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "TRANSFER" => Self::Transfer,
            "STAKE" => Self::Stake,
            "UNSTAKE" => Self::Unstake,
            "SUBMIT_RESULT" => Self::SubmitResult,
            other => Self::Other(other.to_owned()),
        })
    }
}

impl fmt::Display for TxType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TxType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TxType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(s.parse().unwrap_or(Self::Other(s)))
    }
}

/// Why a transaction would not be admitted or could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TxError {
    /// `gas_price` below the node's minimum.
    #[error("gas_price {got} is below the minimum {min}")]
    GasPriceTooLow {
        /// What the transaction offers.
        got: u64,
        /// The node's minimum.
        min: u64,
    },
    /// `gas_limit` below the base gas of the type.
    #[error("gas_limit {got} is below the base gas {need} of {tx_type}")]
    GasLimitTooLow {
        /// The transaction type.
        tx_type: String,
        /// What the transaction offers.
        got: u64,
        /// The type's base gas.
        need: u64,
    },
    /// `fee` below `base_gas × gas_price`.
    #[error("fee {got} is below base_gas × gas_price = {need}")]
    FeeTooLow {
        /// What the transaction offers.
        got: u128,
        /// `base_gas × gas_price`.
        need: u128,
    },
    /// The type has no base gas known to this implementation.
    #[error("transaction type {0} is not supported here (unknown base gas)")]
    UnsupportedType(String),
    /// No signature, or one that does not verify under `pub_key`.
    #[error("invalid signature")]
    InvalidSignature,
    /// `pub_key` is not a valid key.
    #[error("invalid pub_key: {0}")]
    InvalidPublicKey(#[from] CryptoError),
    /// `pub_key` does not hash to `from_address`.
    #[error("pub_key does not match from_address {from} (it derives {derived})")]
    PublicKeyMismatch {
        /// The claimed sender.
        from: String,
        /// The address the key derives.
        derived: String,
    },
    /// The payload is not a JSON object.
    #[error("payload must be a JSON object")]
    PayloadNotObject,
}

/// A ComputeChain transaction exactly as the node sends and accepts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// The type, e.g. `SUBMIT_RESULT`.
    pub tx_type: TxType,
    /// Sender address (`cpc1...`).
    pub from_address: String,
    /// Recipient address; `null` for types without one.
    pub to_address: Option<String>,
    /// Amount moved, in 10^-18 CPC.
    pub amount: u128,
    /// Fee offered, in 10^-18 CPC.
    pub fee: u128,
    /// Sender's account nonce.
    pub nonce: u64,
    /// 64-byte `r ‖ s` ECDSA signature over the hash, hex; empty before signing.
    #[serde(default)]
    pub signature: String,
    /// Sender's compressed public key, hex.
    #[serde(default)]
    pub pub_key: String,
    /// Type-specific payload (a ComputeResult for `SUBMIT_RESULT`).
    #[serde(default = "empty_object")]
    pub payload: Value,
    /// Price per gas unit.
    pub gas_price: u64,
    /// Gas limit.
    pub gas_limit: u64,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

impl Transaction {
    /// A transaction from `key`, signed, with `fee = base_gas × gas_price` and `gas_limit = base_gas`.
    pub fn new_signed(
        tx_type: TxType,
        key: &SecretKey,
        to_address: Option<String>,
        amount: u128,
        nonce: u64,
        gas_price: u64,
        payload: Value,
    ) -> Result<Self, TxError> {
        let base =
            tx_type.base_gas().ok_or_else(|| TxError::UnsupportedType(tx_type.to_string()))?;
        let mut tx = Self {
            tx_type,
            from_address: key.address().to_string(),
            to_address,
            amount,
            fee: u128::from(base) * u128::from(gas_price),
            nonce,
            signature: String::new(),
            pub_key: key.public_key().to_hex(),
            payload,
            gas_price,
            gas_limit: base,
        };
        tx.sign(key)?;
        Ok(tx)
    }

    /// The exact UTF-8 string the node hashes.
    pub fn hash_preimage(&self) -> String {
        format!(
            "{}{}{}{}{}{}{}{}{}{}",
            self.tx_type,
            self.from_address,
            self.to_address.as_deref().unwrap_or(""),
            self.amount,
            self.fee,
            self.nonce,
            self.gas_price,
            self.gas_limit,
            pyjson::dumps_sorted(&self.payload),
            self.pub_key,
        )
    }

    /// The transaction hash as bytes (what is signed).
    pub fn hash(&self) -> Digest32 {
        sha256(self.hash_preimage())
    }

    /// The transaction hash as hex (the node's `tx_hash`).
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash())
    }

    /// Sets `pub_key` from `key` and signs.
    pub fn sign(&mut self, key: &SecretKey) -> Result<(), TxError> {
        self.pub_key = key.public_key().to_hex();
        let sig = key.sign_digest(&self.hash())?;
        self.signature = sig.to_hex();
        Ok(())
    }

    /// Whether `signature` is a valid signature of the hash under `pub_key`.
    pub fn verify_signature(&self) -> bool {
        crate::crypto::verify_hex(&self.pub_key, &self.hash(), &self.signature)
    }

    /// The fee the node charges: `base_gas × gas_price`.
    pub fn charged_fee(&self) -> Option<u128> {
        self.tx_type.base_gas().map(|g| u128::from(g) * u128::from(self.gas_price))
    }

    /// The stateless part of the node's mempool admission: gas price, gas limit, fee, payload shape,
    /// `pub_key` → `from_address` and the signature. Nonce, balance and the per-sender cap need state.
    pub fn check_stateless(&self) -> Result<(), TxError> {
        if self.gas_price < MIN_GAS_PRICE {
            return Err(TxError::GasPriceTooLow { got: self.gas_price, min: MIN_GAS_PRICE });
        }
        let base = self
            .tx_type
            .base_gas()
            .ok_or_else(|| TxError::UnsupportedType(self.tx_type.to_string()))?;
        if self.gas_limit < base {
            return Err(TxError::GasLimitTooLow {
                tx_type: self.tx_type.to_string(),
                got: self.gas_limit,
                need: base,
            });
        }
        let need = u128::from(base) * u128::from(self.gas_price);
        if self.fee < need {
            return Err(TxError::FeeTooLow { got: self.fee, need });
        }
        if !self.payload.is_object() {
            return Err(TxError::PayloadNotObject);
        }
        if self.signature.is_empty() {
            return Err(TxError::InvalidSignature);
        }
        let key = PublicKey::from_hex(&self.pub_key)?;
        let derived = key.address().to_string();
        if derived != self.from_address {
            return Err(TxError::PublicKeyMismatch { from: self.from_address.clone(), derived });
        }
        let sig = Signature::from_hex(&self.signature).map_err(|_| TxError::InvalidSignature)?;
        if !key.verify_digest(&self.hash(), &sig) {
            return Err(TxError::InvalidSignature);
        }
        Ok(())
    }
}
