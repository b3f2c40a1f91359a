//! Fuzzing the validator protocol parser ([`super::protocol::parse_job`]) with proptest: every text frame a
//! PoC validator sends goes through it, so no text may panic it, and its errors must name the field that is
//! wrong and echo the job id whenever the frame has a readable one.
//!
//! Three targets: arbitrary text (and JSON-looking token soup), arbitrary JSON values with job-shaped keys,
//! and valid jobs with exactly one field removed or replaced by an arbitrary value. Case counts come from
//! [`cpc_common::fuzzing::cases`] (`CPC_FUZZ_CASES` for a long run).

use super::protocol::{Answer, MAX_ID_BYTES, MAX_ITERATIONS, ParseError, parse_job};
use cpc_common::{fuzzing, synthetic::MAX_MATRIX_SIZE};
use proptest::{collection::vec, prelude::*};
use serde_json::{Map, Number, Value, json};

/// The farm's limit in these tests (the default is 8192; a small one makes `TooLarge` reachable).
const MAX_SIZE: u32 = 256;

/// Any JSON value, a few levels deep, with keys that a job has half of the time.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![Just(0.0), Just(1.0), Just(64.0), Just(-1.0), Just(1e15), Just(0.5)]
            .prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
        "[0-9]{1,40}".prop_map(Value::String),
        "(job|synthetic|llm|j1|t1)".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((key(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "type",
            "job_id",
            "task_id",
            "payload",
            "seed",
            "matrix_size",
            "iterations",
            "nonce",
            "deadline",
            "challenge_type",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ]
}

/// What `parse_job` should echo as the job id of `frame`: a non-empty string of at most `MAX_ID_BYTES`, or an
/// integer as its decimal text.
fn readable_job_id(frame: &Value) -> Option<String> {
    match frame.get("job_id")? {
        Value::String(s) if !s.is_empty() && s.len() <= MAX_ID_BYTES => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// Parses `text` and checks what holds for any frame: errors that are not about the JSON itself echo the
/// frame's readable job id, and the `job_error` answer is well-formed JSON carrying that id.
fn parse_checked(text: &str) -> Result<Result<super::protocol::Job, ParseError>, TestCaseError> {
    let parsed = parse_job(text, MAX_SIZE);
    let frame: Option<Value> = serde_json::from_str(text).ok();
    match (&parsed, &frame) {
        (Err(ParseError::Json(_)), Some(_)) => prop_assert!(false, "valid JSON called malformed"),
        (Err(e @ ParseError::Json(_)), None) => prop_assert_eq!(e.job_id(), None),
        (Err(ParseError::NotAnObject), Some(v)) => prop_assert!(!v.is_object()),
        (Err(e), Some(v)) => {
            let about_job_id = matches!(
                e,
                ParseError::MissingField { field: "job_id", .. }
                    | ParseError::BadField { field: "job_id", .. }
            );
            let expected = if about_job_id { None } else { readable_job_id(v) };
            prop_assert_eq!(e.job_id().map(str::to_owned), expected, "{}", e);
        }
        (Ok(job), Some(v)) => {
            prop_assert_eq!(Some(job.job_id.clone()), readable_job_id(v));
            prop_assert_eq!(Some(&json!(job.task_id)), v.get("task_id"));
            prop_assert!(job.challenge.matrix_size() <= MAX_SIZE);
            prop_assert!((1..=MAX_ITERATIONS).contains(&job.challenge.iterations()));
        }
        (_, None) => prop_assert!(false, "not JSON, yet {:?}", parsed),
    }
    if let Err(e) = &parsed {
        let answer: Value =
            serde_json::from_str(&Answer::parse_error(e).to_text()).expect("an answer is JSON");
        prop_assert_eq!(&answer["type"], "job_error");
        prop_assert_eq!(answer["job_id"].as_str(), e.job_id());
        let message = e.to_string();
        prop_assert_eq!(answer["error"].as_str(), Some(message.as_str()));
    }
    Ok(parsed)
}

/// A valid job frame's parts.
#[derive(Debug, Clone)]
struct ValidJob {
    job_id: Value,
    task_id: String,
    seed: String,
    matrix_size: u32,
    optional: Vec<(&'static str, Value)>,
}

impl ValidJob {
    fn frame(&self) -> Value {
        let mut payload = Map::new();
        payload.insert("seed".into(), json!(self.seed));
        payload.insert("matrix_size".into(), json!(self.matrix_size));
        for (k, v) in &self.optional {
            payload.insert((*k).to_owned(), v.clone());
        }
        json!({"type": "job", "job_id": self.job_id, "task_id": self.task_id, "payload": payload})
    }
}

fn valid_job() -> impl Strategy<Value = ValidJob> {
    let job_id = prop_oneof![
        "[a-zA-Z0-9-]{1,40}".prop_map(Value::String),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
    ];
    let optional = (
        prop::option::of(prop_oneof![
            (1u32..=MAX_ITERATIONS).prop_map(|n| json!(n)),
            (1u32..=MAX_ITERATIONS).prop_map(|n| json!(f64::from(n))),
        ]),
        prop::option::of(prop_oneof![
            any::<i64>().prop_map(|n| json!(n)),
            any::<i64>().prop_map(|n| json!(n.to_string())),
            any::<bool>().prop_map(|b| json!(b)),
            "[0-9]{20,60}".prop_map(|digits| json!(digits)),
        ]),
        prop::option::of(prop_oneof![(0.0f64..1e11).prop_map(|s| json!(s)), Just(Value::Null)]),
        prop::option::of(Just(json!("synthetic"))),
    )
        .prop_map(|(iterations, nonce, deadline, challenge_type)| {
            let mut out = Vec::new();
            out.extend(iterations.map(|v| ("iterations", v)));
            out.extend(nonce.map(|v| ("nonce", v)));
            out.extend(deadline.map(|v| ("deadline", v)));
            out.extend(challenge_type.map(|v| ("challenge_type", v)));
            out
        });
    (job_id, any::<String>(), any::<String>(), 1..=MAX_SIZE, optional).prop_map(
        |(job_id, task_id, seed, matrix_size, optional)| ValidJob {
            job_id,
            task_id,
            seed,
            matrix_size,
            optional,
        },
    )
}

/// Where a field lives in a job frame, and the name `parse_job` reports for it.
const FIELDS: [(&str, Option<&str>); 10] = [
    ("type", None),
    ("job_id", None),
    ("task_id", None),
    ("payload", None),
    ("payload.seed", Some("seed")),
    ("payload.matrix_size", Some("matrix_size")),
    ("payload.iterations", Some("iterations")),
    ("payload.nonce", Some("nonce")),
    ("payload.deadline", Some("deadline")),
    ("payload.challenge_type", Some("challenge_type")),
];

/// Sets (or with `None` removes) field `which` of `frame`.
fn edit(frame: &mut Value, which: usize, value: Option<Value>) {
    let (name, in_payload) = FIELDS[which % FIELDS.len()];
    let (target, key) = match in_payload {
        Some(key) => (&mut frame["payload"], key),
        None => (frame, name),
    };
    if let Value::Object(map) = target {
        match value {
            Some(v) => {
                map.insert(key.to_owned(), v);
            }
            None => {
                map.remove(key);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzzing::cases(1500)))]

    /// Any text, or JSON-looking token soup: an answer, never a panic.
    #[test]
    fn arbitrary_text_never_panics(
        text in prop_oneof![
            any::<String>(),
            vec(
                prop::sample::select(vec![
                    "{", "}", "[", "]", ":", ",", "\"type\"", "\"job\"", "\"job_id\"", "\"payload\"",
                    "\"seed\"", "\"matrix_size\"", "\"task_id\"", "1", "-0", "1e999", "64.0", "null",
                    "true", "\"", "\\u0000", "\\ud800", " ",
                ]),
                0..40,
            )
            .prop_map(|tokens| tokens.concat()),
        ],
    ) {
        // A job or an error: both are answers; `parse_checked` holds the assertions.
        let _parsed = parse_checked(&text)?;
    }

    /// Any JSON value with job-shaped keys: errors echo the readable job id, successes carry the frame's
    /// ids and stay in bounds.
    #[test]
    fn arbitrary_json_gets_a_precise_answer(value in any_json(), as_job in any::<bool>()) {
        let value = match (as_job, value) {
            (true, Value::Object(mut map)) => {
                map.insert("type".into(), json!("job"));
                Value::Object(map)
            }
            (_, other) => other,
        };
        let _parsed = parse_checked(&value.to_string())?;
    }

    /// A valid job parses to what it says; with one field removed or replaced by any value, the error (if
    /// any) is about that field, and the job id is echoed unless the job id is what is wrong.
    #[test]
    fn one_bad_field_is_the_error(
        job in valid_job(),
        which in any::<usize>(),
        replacement in prop::option::of(any_json()),
    ) {
        let frame = job.frame();
        let parsed = parse_checked(&frame.to_string())?;
        let ok = match parsed {
            Ok(ok) => ok,
            Err(e) => return Err(TestCaseError::fail(format!("valid job refused: {e}"))),
        };
        prop_assert_eq!(ok.challenge.seed(), job.seed.as_str());
        prop_assert_eq!(ok.challenge.matrix_size(), job.matrix_size);

        let mut mutated = frame.clone();
        edit(&mut mutated, which, replacement.clone());
        let (field, _) = FIELDS[which % FIELDS.len()];
        let Err(e) = parse_checked(&mutated.to_string())? else { return Ok(()) };
        let named = match &e {
            ParseError::MissingField { field, .. } | ParseError::BadField { field, .. } => *field,
            ParseError::TooLarge { .. } => "payload.matrix_size",
            ParseError::UnknownType { kind, .. } if kind.starts_with("job/") => "payload.challenge_type",
            ParseError::UnknownType { .. } => "type",
            ParseError::Json(_) | ParseError::NotAnObject => "",
        };
        // A payload replaced by another object is wrong in whichever of its fields comes first.
        let about_field = named == field || (field == "payload" && named.starts_with("payload."));
        prop_assert!(about_field, "{:?} after setting {} to {:?}", e, field, replacement);
        if field != "job_id" {
            prop_assert_eq!(e.job_id().map(str::to_owned), readable_job_id(&frame));
        }
    }
}

/// Nesting past serde_json's recursion limit is a JSON error, not a stack overflow.
#[test]
fn deep_nesting_is_a_json_error() {
    for open in ["[", "{\"a\":"] {
        let text = open.repeat(100_000);
        assert!(matches!(parse_job(&text, MAX_SIZE), Err(ParseError::Json(_))));
    }
    let within = format!("{}1{}", "[".repeat(120), "]".repeat(120));
    assert_eq!(parse_job(&within, MAX_SIZE), Err(ParseError::NotAnObject));
}

/// Numbers JSON allows but no integer type holds are bad fields, not panics or wrapped values.
#[test]
fn out_of_range_numbers_are_bad_fields() {
    for size in ["1e999", "-1e999", "18446744073709551616", "1e15", "65536.5"] {
        let text = format!(
            r#"{{"type":"job","job_id":"j","task_id":"t","payload":{{"seed":"s","matrix_size":{size}}}}}"#
        );
        let e = parse_job(&text, MAX_MATRIX_SIZE).expect_err(size);
        assert!(
            matches!(
                e,
                ParseError::BadField { field: "payload.matrix_size", .. }
                    | ParseError::TooLarge { .. }
            ),
            "{size}: {e:?}"
        );
    }
}
