//! The `SUBMIT_RESULT` payload, validated as the node's pydantic model validates it.
//!
//! The node builds `ComputeResult(**payload)` in pydantic's lax mode: string fields must be strings (a
//! `null` proof is an error), `signature` is required, `nonce` is an integer that may arrive as a decimal
//! string, a float with no fraction or a bool, and defaults to 0; extra keys are ignored. Its canonical JSON
//! (`model_dump_json()`) lists the six fields in declared order with no spaces and UTF-8 left unescaped; the
//! `compute_root` leaf is the SHA-256 of that JSON.

use crate::{
    crypto::{PublicKey, SecretKey, Signature},
    hashing::{Digest32, sha256},
};
use serde::{Deserialize, Serialize, ser::SerializeStruct};
use serde_json::Value;
use std::{fmt, str::FromStr};

/// Why a payload is not a valid ComputeResult (the node answers "1 validation error for ComputeResult").
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ComputeResultError {
    /// The payload is not a JSON object.
    #[error("1 validation error for ComputeResult: payload must be an object")]
    NotAnObject,
    /// A required field is absent.
    #[error("1 validation error for ComputeResult: {0}: field required")]
    Missing(&'static str),
    /// A string field holds something other than a string.
    #[error("1 validation error for ComputeResult: {0}: input should be a valid string")]
    NotAString(&'static str),
    /// `nonce` is not an integer in pydantic's lax sense.
    #[error("1 validation error for ComputeResult: nonce: input should be a valid integer")]
    BadNonce,
}

/// A Python `int` of any size, as pydantic accepts it in lax mode, kept as canonical decimal text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PyInt(String);

impl PyInt {
    /// Pydantic's lax `int` validation of a JSON value.
    pub fn from_lax_json(value: &Value) -> Option<Self> {
        match value {
            Value::Bool(b) => Some(Self::from(i64::from(*b))),
            Value::Number(n) => Self::from_number_text(&n.to_string()),
            Value::String(s) => Self::from_number_text(s.trim()),
            _ => None,
        }
    }

    /// `text` as an integer: decimal digits with an optional sign, or a float with no fraction.
    fn from_number_text(text: &str) -> Option<Self> {
        let (neg, digits) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            let trimmed = digits.trim_start_matches('0');
            return Some(Self(match (trimmed.is_empty(), neg) {
                (true, _) => "0".to_owned(),
                (false, true) => format!("-{trimmed}"),
                (false, false) => trimmed.to_owned(),
            }));
        }
        // A float literal is accepted only when it holds an exact integer.
        let f: f64 = text.parse().ok()?;
        if !f.is_finite() || f.fract() != 0.0 || !text.bytes().any(|b| b.is_ascii_digit()) {
            return None;
        }
        let s = format!("{f:.0}");
        Some(Self(if s == "-0" { "0".to_owned() } else { s }))
    }

    /// The decimal text, as Python's `str(int)` prints it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value as `i128`, where it fits.
    pub fn to_i128(&self) -> Option<i128> {
        self.0.parse().ok()
    }

    /// The value as `u64`, where it fits (block heights).
    pub fn to_u64(&self) -> Option<u64> {
        self.0.parse().ok()
    }
}

impl From<i64> for PyInt {
    fn from(v: i64) -> Self {
        Self(v.to_string())
    }
}

impl From<u64> for PyInt {
    fn from(v: u64) -> Self {
        Self(v.to_string())
    }
}

impl FromStr for PyInt {
    type Err = ComputeResultError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_number_text(s.trim()).ok_or(ComputeResultError::BadNonce)
    }
}

impl fmt::Display for PyInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for PyInt {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Ok(v) = self.0.parse::<i64>() {
            s.serialize_i64(v)
        } else if let Ok(v) = self.0.parse::<u64>() {
            s.serialize_u64(v)
        } else if let Ok(v) = self.0.parse::<i128>() {
            s.serialize_i128(v)
        } else if let Ok(v) = self.0.parse::<u128>() {
            s.serialize_u128(v)
        } else {
            // Wider than 128 bits: only JSON can carry it, as an arbitrary-precision number.
            serde_json::Number::from_str(&self.0).map_err(serde::ser::Error::custom)?.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for PyInt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Self::from_lax_json(&v).ok_or_else(|| serde::de::Error::custom("expected an integer"))
    }
}

/// A worker's result for one task: the `SUBMIT_RESULT` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeResult {
    /// The task's id (synthetic-v1: a UUIDv8 derived from the seed).
    pub task_id: String,
    /// The worker's address; must equal the transaction's `from_address`.
    pub worker_address: String,
    /// The result hash (synthetic-v1: Merkle root of the row leaves, hex).
    pub result_hash: String,
    /// Proof material; required, may be empty.
    pub proof: String,
    /// For synthetic-v1 block tasks, the height of the block that seeded the task.
    pub nonce: PyInt,
    /// The worker's signature over [`Self::signable`]; required, may be empty for the L1.
    pub signature: String,
}

impl ComputeResult {
    /// Validates a payload as the node does. Extra keys are ignored.
    pub fn from_payload(payload: &Value) -> Result<Self, ComputeResultError> {
        let obj = payload.as_object().ok_or(ComputeResultError::NotAnObject)?;
        let string = |name: &'static str| -> Result<String, ComputeResultError> {
            match obj.get(name) {
                None => Err(ComputeResultError::Missing(name)),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(ComputeResultError::NotAString(name)),
            }
        };
        let nonce = match obj.get("nonce") {
            None => PyInt::from(0i64),
            Some(v) => PyInt::from_lax_json(v).ok_or(ComputeResultError::BadNonce)?,
        };
        Ok(Self {
            task_id: string("task_id")?,
            worker_address: string("worker_address")?,
            result_hash: string("result_hash")?,
            proof: string("proof")?,
            nonce,
            signature: string("signature")?,
        })
    }

    /// The payload object to put in a transaction.
    pub fn to_payload(&self) -> Value {
        // Serialising plain strings and an integer into a Value cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Pydantic's `model_dump_json()`: declared field order, compact, UTF-8 unescaped.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The `compute_root` leaf: `sha256(canonical_json)`.
    pub fn leaf(&self) -> Digest32 {
        sha256(self.canonical_json())
    }

    /// What the worker signs (hashed with SHA-256): `task_id + worker_address + result_hash + proof + str(nonce)`.
    pub fn signable(&self) -> String {
        format!(
            "{}{}{}{}{}",
            self.task_id, self.worker_address, self.result_hash, self.proof, self.nonce
        )
    }

    /// SHA-256 of [`Self::signable`].
    pub fn signable_digest(&self) -> Digest32 {
        sha256(self.signable())
    }

    /// Fills `signature` with `key`'s signature over the signable digest.
    pub fn sign(&mut self, key: &SecretKey) -> Result<(), crate::CryptoError> {
        self.signature = key.sign_digest(&self.signable_digest())?.to_hex();
        Ok(())
    }

    /// Whether `signature` is `key`'s valid signature over this result.
    pub fn verify_signature(&self, key: &PublicKey) -> bool {
        Signature::from_hex(&self.signature)
            .is_ok_and(|sig| key.verify_digest(&self.signable_digest(), &sig))
    }
}

impl Serialize for ComputeResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ComputeResult", 6)?;
        st.serialize_field("task_id", &self.task_id)?;
        st.serialize_field("worker_address", &self.worker_address)?;
        st.serialize_field("result_hash", &self.result_hash)?;
        st.serialize_field("proof", &self.proof)?;
        st.serialize_field("nonce", &self.nonce)?;
        st.serialize_field("signature", &self.signature)?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for ComputeResult {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Self::from_payload(&v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nonce_is_lax_like_pydantic() {
        let ok = |v: Value| PyInt::from_lax_json(&v).map(|p| p.as_str().to_owned());
        assert_eq!(ok(json!("42")).as_deref(), Some("42"));
        assert_eq!(ok(json!(" -7 ")).as_deref(), Some("-7"));
        assert_eq!(ok(json!(42.0)).as_deref(), Some("42"));
        assert_eq!(ok(json!(true)).as_deref(), Some("1"));
        assert_eq!(ok(json!(42.5)), None);
        assert_eq!(ok(json!("4x")), None);
        assert_eq!(ok(json!(null)), None);
        assert_eq!(ok(json!([1])), None);
    }

    #[test]
    fn missing_nonce_defaults_to_zero_and_null_proof_is_rejected() {
        let base = json!({"task_id": "t", "worker_address": "w", "result_hash": "r", "proof": "", "signature": ""});
        assert_eq!(ComputeResult::from_payload(&base).map(|c| c.nonce), Ok(PyInt::from(0i64)));
        let mut bad = base.clone();
        bad["proof"] = Value::Null;
        assert_eq!(ComputeResult::from_payload(&bad), Err(ComputeResultError::NotAString("proof")));
    }

    #[test]
    fn payload_signature_round_trips() {
        let key = SecretKey::generate();
        let mut r = ComputeResult {
            task_id: "t".into(),
            worker_address: key.address().to_string(),
            result_hash: "00".repeat(32),
            proof: String::new(),
            nonce: PyInt::from(5u64),
            signature: String::new(),
        };
        r.sign(&key).expect("sign");
        assert!(r.verify_signature(&key.public_key()));
        r.nonce = PyInt::from(6u64);
        assert!(!r.verify_signature(&key.public_key()));
    }
}
