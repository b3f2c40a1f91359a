//! The PoC validator's WebSocket messages, as the worker guide shows them, with precise parse errors.
//!
//! A validator sends one job per text frame:
//!
//! ```json
//! {"type": "job", "job_id": "j-1", "task_id": "t-1",
//!  "payload": {"seed": "any string", "matrix_size": 256, "iterations": 2, "nonce": 7, "deadline": 1767225600.5}}
//! ```
//!
//! - `job_id` is a non-empty string (an integer is accepted and echoed as its decimal text);
//! - `task_id` is a string, echoed into the signed result;
//! - `payload.seed` is any string (hex or not: synthetic-v1 hashes it as UTF-8), `payload.matrix_size` an
//!   integer in `1..=max` (the coordinator's `max_validator_matrix_size`), `payload.iterations` an integer
//!   `>= 1` (default 1, at most [`MAX_ITERATIONS`]);
//! - `payload.challenge_type`, when present, must be `"synthetic"`;
//! - `payload.deadline`, when present, is a Unix time in seconds (a fraction allowed): a job still queued
//!   then is answered `job_error` "deadline exceeded" instead of being computed;
//! - `payload.nonce`, when present, is an integer (pydantic's lax rules, like the L1 payload's).
//!
//! The farm answers `{"type": "job_result", "job_id", "worker_address", "result_hash", "proof",
//! "signature"}` or `{"type": "job_error", "job_id", "error"}`.
//!
//! # The signature (nonce rule)
//! `signature` is the worker identity's signature exactly as in the L1 `SUBMIT_RESULT` payload: over
//! `sha256(task_id + worker_address + result_hash + proof + str(nonce))`, with `task_id` the job's
//! `task_id`, `proof` empty, and `nonce` the payload's `nonce` when the job carries one, else `0` (the L1's
//! default for a missing nonce). A validator rebuilds the `ComputeResult` with those fields and checks the
//! signature with the worker address's public key.
//!
//! A frame the farm cannot run gets a `job_error` with the reason, and the connection stays up. The job id
//! is echoed whenever it can be read from the frame (even when the rest is wrong); it is `null` only when
//! the frame is not JSON or carries no usable `job_id`.

use cpc_common::{
    compute_result::PyInt,
    synthetic::{CHALLENGE_TYPE, Challenge, MAX_MATRIX_SIZE},
};
use serde::Serialize;
use serde_json::{Map, Value};
use std::time::{Duration, SystemTime};

/// Default largest `matrix_size` a validator job may ask for.
pub const DEFAULT_MAX_MATRIX_SIZE: u32 = 8192;
/// Largest `iterations` a validator job may ask for.
pub const MAX_ITERATIONS: u32 = 64;
/// Largest job id or task id accepted, in bytes (they go into the journal and back on the wire).
pub const MAX_ID_BYTES: usize = 256;
/// Largest seed accepted, in bytes.
pub const MAX_SEED_BYTES: usize = 4096;

/// Why a frame is not a job the farm can run. `job_id` is the id to echo in the `job_error`, when the
/// frame had a readable one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The frame is not JSON (or not UTF-8).
    #[error("malformed JSON: {0}")]
    Json(String),
    /// The frame is JSON but not an object.
    #[error("malformed message: expected a JSON object")]
    NotAnObject,
    /// A message type other than `job` (or a job of another challenge type).
    #[error("unknown message type `{kind}`: this worker runs `job` messages of type `synthetic`")]
    UnknownType {
        /// The job id, when readable.
        job_id: Option<String>,
        /// The type found.
        kind: String,
    },
    /// A required field is absent.
    #[error("missing field `{field}`")]
    MissingField {
        /// The job id, when readable.
        job_id: Option<String>,
        /// The field (`payload.seed` for payload fields).
        field: &'static str,
    },
    /// A field has the wrong type or value.
    #[error("bad field `{field}`: {reason}")]
    BadField {
        /// The job id, when readable.
        job_id: Option<String>,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// `matrix_size` over the farm's limit.
    #[error("matrix_size {matrix_size} is over this worker's limit of {max}")]
    TooLarge {
        /// The job id.
        job_id: Option<String>,
        /// What was asked for.
        matrix_size: u64,
        /// The configured limit.
        max: u32,
    },
}

impl ParseError {
    /// The job id to echo in the `job_error`, when the frame had a readable one.
    pub fn job_id(&self) -> Option<&str> {
        match self {
            Self::Json(_) | Self::NotAnObject => None,
            Self::UnknownType { job_id, .. }
            | Self::MissingField { job_id, .. }
            | Self::BadField { job_id, .. }
            | Self::TooLarge { job_id, .. } => job_id.as_deref(),
        }
    }
}

/// A job the farm can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The validator's job id (echoed in the answer).
    pub job_id: String,
    /// The task id that goes into the signed result.
    pub task_id: String,
    /// The synthetic-v1 challenge.
    pub challenge: Challenge,
    /// The signed result's nonce: the payload's `nonce`, else 0.
    pub nonce: PyInt,
    /// When the job stops being worth computing.
    pub deadline: Option<SystemTime>,
}

/// An answer to the validator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Answer {
    /// The job's result, signed by the worker identity.
    JobResult {
        /// The job id.
        job_id: String,
        /// The worker identity's address.
        worker_address: String,
        /// The synthetic-v1 result hash, hex.
        result_hash: String,
        /// Proof material (empty for synthetic-v1).
        proof: String,
        /// The signature (see the module docs).
        signature: String,
    },
    /// The job cannot be run.
    JobError {
        /// The job id, `null` when the frame had none readable.
        job_id: Option<String>,
        /// Why.
        error: String,
    },
}

impl Answer {
    /// The JSON text of the frame.
    pub fn to_text(&self) -> String {
        // Strings and an option only: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The `job_error` for a frame that failed to parse.
    pub fn parse_error(e: &ParseError) -> Self {
        Self::JobError { job_id: e.job_id().map(str::to_owned), error: e.to_string() }
    }
}

/// Parses one text frame from a validator, allowing `matrix_size` up to `max_matrix_size`.
pub fn parse_job(text: &str, max_matrix_size: u32) -> Result<Job, ParseError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ParseError::Json(e.to_string()))?;
    let obj = value.as_object().ok_or(ParseError::NotAnObject)?;
    let job_id = read_job_id(obj);
    let id = || job_id.clone().ok();
    let kind = match obj.get("type") {
        None => return Err(ParseError::MissingField { job_id: id(), field: "type" }),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(ParseError::BadField {
                job_id: id(),
                field: "type",
                reason: "expected a string".into(),
            });
        }
    };
    if kind != "job" {
        return Err(ParseError::UnknownType { job_id: id(), kind: kind.to_owned() });
    }
    let job_id = job_id?;
    let some = || Some(job_id.clone());
    let task_id = match obj.get("task_id") {
        None => return Err(ParseError::MissingField { job_id: some(), field: "task_id" }),
        Some(Value::String(s)) if s.len() <= MAX_ID_BYTES => s.clone(),
        Some(Value::String(_)) => {
            return Err(ParseError::BadField {
                job_id: some(),
                field: "task_id",
                reason: format!("longer than {MAX_ID_BYTES} bytes"),
            });
        }
        Some(_) => {
            return Err(ParseError::BadField {
                job_id: some(),
                field: "task_id",
                reason: "expected a string".into(),
            });
        }
    };
    let payload = match obj.get("payload") {
        None => return Err(ParseError::MissingField { job_id: some(), field: "payload" }),
        Some(Value::Object(p)) => p,
        Some(_) => {
            return Err(ParseError::BadField {
                job_id: some(),
                field: "payload",
                reason: "expected an object".into(),
            });
        }
    };
    let bad = |field: &'static str, reason: String| ParseError::BadField {
        job_id: Some(job_id.clone()),
        field,
        reason,
    };
    if let Some(t) = payload.get("challenge_type").or_else(|| payload.get("type")) {
        match t.as_str() {
            Some(CHALLENGE_TYPE) => {}
            Some(other) => {
                return Err(ParseError::UnknownType {
                    job_id: some(),
                    kind: format!("job/{other}"),
                });
            }
            None => return Err(bad("payload.challenge_type", "expected a string".into())),
        }
    }
    let seed = match payload.get("seed") {
        None => return Err(ParseError::MissingField { job_id: some(), field: "payload.seed" }),
        Some(Value::String(s)) if s.len() <= MAX_SEED_BYTES => s.clone(),
        Some(Value::String(_)) => {
            return Err(bad("payload.seed", format!("longer than {MAX_SEED_BYTES} bytes")));
        }
        Some(_) => return Err(bad("payload.seed", "expected a string".into())),
    };
    let matrix_size = match payload.get("matrix_size") {
        None => {
            return Err(ParseError::MissingField { job_id: some(), field: "payload.matrix_size" });
        }
        Some(v) => positive_int(v).ok_or_else(|| {
            bad("payload.matrix_size", format!("expected a positive integer, got {v}"))
        })?,
    };
    let max = max_matrix_size.min(MAX_MATRIX_SIZE);
    if matrix_size > u64::from(max) {
        return Err(ParseError::TooLarge { job_id: some(), matrix_size, max });
    }
    let iterations = match payload.get("iterations") {
        None => 1,
        Some(v) => positive_int(v).ok_or_else(|| {
            bad("payload.iterations", format!("expected an integer >= 1, got {v}"))
        })?,
    };
    if iterations > u64::from(MAX_ITERATIONS) {
        return Err(bad(
            "payload.iterations",
            format!("{iterations} is over the limit of {MAX_ITERATIONS}"),
        ));
    }
    let nonce = match payload.get("nonce") {
        None => PyInt::from(0i64),
        Some(v) => PyInt::from_lax_json(v)
            .ok_or_else(|| bad("payload.nonce", format!("expected an integer, got {v}")))?,
    };
    let deadline = match payload.get("deadline") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e12)
                .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(s))
                .ok_or_else(|| {
                    bad("payload.deadline", format!("expected Unix seconds, got {v}"))
                })?,
        ),
    };
    // Bounds were checked above; `Challenge::new` checks them again.
    let challenge = Challenge::new(seed, matrix_size as u32, iterations as u32)
        .map_err(|e| bad("payload", e.to_string()))?;
    Ok(Job { job_id, task_id, challenge, nonce, deadline })
}

/// The job id of a frame: a non-empty string, or an integer as its decimal text.
fn read_job_id(obj: &Map<String, Value>) -> Result<String, ParseError> {
    match obj.get("job_id") {
        None => Err(ParseError::MissingField { job_id: None, field: "job_id" }),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID_BYTES => Ok(s.clone()),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Ok(n.to_string()),
        Some(other) => Err(ParseError::BadField {
            job_id: None,
            field: "job_id",
            reason: format!(
                "expected a non-empty string of at most {MAX_ID_BYTES} bytes, got {other}"
            ),
        }),
    }
}

/// A JSON integer >= 1 (an integral float such as `64.0` too).
fn positive_int(v: &Value) -> Option<u64> {
    let n = v.as_u64().or_else(|| {
        v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 1.0 && *f < 1e15).map(|f| f as u64)
    })?;
    (n >= 1).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Job, ParseError> {
        parse_job(&v.to_string(), 256)
    }

    #[test]
    fn a_job_parses_with_any_seed_and_defaults() {
        let job = parse(json!({"type": "job", "job_id": "j1", "task_id": "t1",
            "payload": {"seed": "héllo, not hex", "matrix_size": 64}}))
        .expect("job");
        assert_eq!(job.challenge, Challenge::new("héllo, not hex", 64, 1).expect("challenge"));
        assert_eq!(job.nonce, PyInt::from(0i64));
        assert_eq!(job.deadline, None);
        let job = parse(json!({"type": "job", "job_id": 17, "task_id": "t",
            "payload": {"seed": "ab", "matrix_size": 8, "iterations": 3, "nonce": "12", "deadline": 10.5}}))
        .expect("job");
        assert_eq!(job.job_id, "17");
        assert_eq!(job.challenge.iterations(), 3);
        assert_eq!(job.nonce, PyInt::from(12i64));
        assert_eq!(job.deadline, Some(SystemTime::UNIX_EPOCH + Duration::from_millis(10_500)));
    }

    #[test]
    fn errors_are_precise_and_echo_the_job_id_when_readable() {
        assert!(matches!(parse_job("{not json", 256), Err(ParseError::Json(_))));
        assert_eq!(parse_job("[1]", 256), Err(ParseError::NotAnObject));
        let e = parse(json!({"type": "hello", "job_id": "j"})).expect_err("unknown");
        assert_eq!(e, ParseError::UnknownType { job_id: Some("j".into()), kind: "hello".into() });
        let e = parse(json!({"type": "job", "job_id": "j", "task_id": "t",
            "payload": {"seed": "s", "matrix_size": 257}}))
        .expect_err("too large");
        assert_eq!(
            e,
            ParseError::TooLarge { job_id: Some("j".into()), matrix_size: 257, max: 256 }
        );
        assert_eq!(e.to_string(), "matrix_size 257 is over this worker's limit of 256");
        let e = parse(
            json!({"type": "job", "job_id": "j", "task_id": "t", "payload": {"matrix_size": 8}}),
        )
        .expect_err("no seed");
        assert_eq!(e, ParseError::MissingField { job_id: Some("j".into()), field: "payload.seed" });
        let e = parse(json!({"type": "job", "task_id": "t", "payload": {}})).expect_err("no id");
        assert_eq!(e.job_id(), None);
        for (payload, field) in [
            (json!({"seed": "s", "matrix_size": 0}), "payload.matrix_size"),
            (json!({"seed": "s", "matrix_size": 8, "iterations": 0}), "payload.iterations"),
            (json!({"seed": 5, "matrix_size": 8}), "payload.seed"),
            (json!({"seed": "s", "matrix_size": 8, "nonce": 1.5}), "payload.nonce"),
            (json!({"seed": "s", "matrix_size": 8, "deadline": "soon"}), "payload.deadline"),
        ] {
            let e =
                parse(json!({"type": "job", "job_id": "j", "task_id": "t", "payload": payload}))
                    .expect_err("bad field");
            assert!(matches!(e, ParseError::BadField { field: f, .. } if f == field), "{e:?}");
            assert_eq!(e.job_id(), Some("j"));
        }
        let e = parse(json!({"type": "job", "job_id": "j", "task_id": "t",
            "payload": {"challenge_type": "llm", "seed": "s", "matrix_size": 8}}))
        .expect_err("other challenge");
        assert!(matches!(e, ParseError::UnknownType { .. }));
    }

    #[test]
    fn answers_serialise_as_the_guide_shows() {
        let a = Answer::JobError { job_id: None, error: "bad".into() };
        assert_eq!(a.to_text(), r#"{"type":"job_error","job_id":null,"error":"bad"}"#);
        let a = Answer::JobResult {
            job_id: "j".into(),
            worker_address: "w".into(),
            result_hash: "r".into(),
            proof: String::new(),
            signature: "s".into(),
        };
        assert_eq!(
            a.to_text(),
            r#"{"type":"job_result","job_id":"j","worker_address":"w","result_hash":"r","proof":"","signature":"s"}"#
        );
    }
}
