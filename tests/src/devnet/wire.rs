//! `POST /tx/send` bodies as FastAPI and the node's pydantic `Transaction` model read them, so that the
//! devnet answers malformed bodies with the node's status codes and error shapes.
//!
//! - Bytes that are not JSON: 400 `{"detail": "There was an error parsing the body"}`.
//! - JSON that fails the schema: 422 `{"detail": [{"type", "loc": ["body", field], "msg", "input"}, ...]}`,
//!   every error listed, as pydantic does.
//!
//! The model: `tx_type` (enum), `from_address` (str) and `amount`, `nonce` (int) required; `to_address`
//! (str or null), `fee`, `gas_price`, `gas_limit` (int, default 0), `signature`, `pub_key` (str, default
//! `""`) and `payload` (object, default `{}`) optional; unknown keys ignored. Integers are pydantic-lax
//! (`"5"`, `5.0` and `true` are integers). One difference: Python integers are unbounded and may be
//! negative, the devnet's are not (`amount`/`fee` fit u128, the rest u64), so a negative or oversized
//! number is a 422 here where the node would take it.

use cpc_common::{PyInt, Transaction, TxType};
use serde_json::{Map, Value, json};

/// The `tx_type` values the node's enum accepts.
pub const TX_TYPES: [&str; 9] = [
    "TRANSFER",
    "STAKE",
    "UNSTAKE",
    "POC_REWARD",
    "SUBMIT_RESULT",
    "UPDATE_VALIDATOR",
    "DELEGATE",
    "UNDELEGATE",
    "UNJAIL",
];

/// Why a body is not a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyError {
    /// Not JSON at all (HTTP 400).
    Unparseable,
    /// JSON that fails the model (HTTP 422); pydantic-shaped error entries.
    Invalid(Vec<Value>),
}

/// Parses and validates a `/tx/send` body.
pub fn parse_transaction(body: &[u8]) -> Result<Transaction, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError::Invalid(vec![error("missing", &[], "Field required", Value::Null)]));
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| BodyError::Unparseable)?;
    let Value::Object(obj) = value else {
        return Err(BodyError::Invalid(vec![error(
            "model_attributes_type",
            &[],
            "Input should be a valid dictionary or object to extract fields from",
            value,
        )]));
    };
    let mut errors = Vec::new();
    let mut v = Validator { obj: &obj, errors: &mut errors };
    let tx_type = v.tx_type();
    let from_address = v.string("from_address", None);
    let to_address = v.optional_string("to_address");
    let amount = v.int("amount", None, u128::MAX);
    let fee = v.int("fee", Some(0), u128::MAX);
    let nonce = v.int("nonce", None, u128::from(u64::MAX));
    let signature = v.string("signature", Some(""));
    let pub_key = v.string("pub_key", Some(""));
    let payload = v.payload();
    let gas_price = v.int("gas_price", Some(0), u128::from(u64::MAX));
    let gas_limit = v.int("gas_limit", Some(0), u128::from(u64::MAX));
    match (
        tx_type,
        from_address,
        to_address,
        amount,
        fee,
        nonce,
        signature,
        pub_key,
        payload,
        gas_price,
        gas_limit,
    ) {
        (
            Some(tx_type),
            Some(from_address),
            Some(to_address),
            Some(amount),
            Some(fee),
            Some(nonce),
            Some(signature),
            Some(pub_key),
            Some(payload),
            Some(gas_price),
            Some(gas_limit),
        ) if errors.is_empty() => Ok(Transaction {
            tx_type,
            from_address,
            to_address,
            amount,
            fee,
            nonce: u64::try_from(nonce).unwrap_or(u64::MAX),
            signature,
            pub_key,
            payload,
            gas_price: u64::try_from(gas_price).unwrap_or(u64::MAX),
            gas_limit: u64::try_from(gas_limit).unwrap_or(u64::MAX),
        }),
        _ => Err(BodyError::Invalid(errors)),
    }
}

/// One pydantic error entry, located under `body`.
pub fn error(kind: &str, loc: &[&str], msg: &str, input: Value) -> Value {
    let mut path = vec![Value::from("body")];
    path.extend(loc.iter().map(|s| Value::from(*s)));
    json!({"type": kind, "loc": path, "msg": msg, "input": input})
}

struct Validator<'a> {
    obj: &'a Map<String, Value>,
    errors: &'a mut Vec<Value>,
}

impl Validator<'_> {
    fn missing(&mut self, field: &str) {
        let input = Value::Object(self.obj.clone());
        self.errors.push(error("missing", &[field], "Field required", input));
    }

    fn tx_type(&mut self) -> Option<TxType> {
        match self.obj.get("tx_type") {
            None => {
                self.missing("tx_type");
                None
            }
            Some(Value::String(s)) if TX_TYPES.contains(&s.as_str()) => s.parse().ok(),
            Some(other) => {
                let names: Vec<String> = TX_TYPES.iter().map(|t| format!("'{t}'")).collect();
                let (head, last) = names.split_at(names.len() - 1);
                let msg = format!("Input should be {} or {}", head.join(", "), last.join(""));
                let mut e = error("enum", &["tx_type"], &msg, other.clone());
                e["ctx"] = json!({"expected": format!("{} or {}", head.join(", "), last.join(""))});
                self.errors.push(e);
                None
            }
        }
    }

    /// pydantic's `string_type` error for `field`; `None` for the caller to return.
    fn not_a_string<T>(&mut self, field: &str, input: &Value) -> Option<T> {
        self.errors.push(error(
            "string_type",
            &[field],
            "Input should be a valid string",
            input.clone(),
        ));
        None
    }

    fn string(&mut self, field: &str, default: Option<&str>) -> Option<String> {
        match (self.obj.get(field), default) {
            (None, Some(d)) => Some(d.to_owned()),
            (None, None) => {
                self.missing(field);
                None
            }
            (Some(Value::String(s)), _) => Some(s.clone()),
            (Some(other), _) => self.not_a_string(field, other),
        }
    }

    fn optional_string(&mut self, field: &str) -> Option<Option<String>> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) => Some(Some(s.clone())),
            Some(other) => self.not_a_string(field, other),
        }
    }

    fn int(&mut self, field: &str, default: Option<u128>, max: u128) -> Option<u128> {
        let value = match (self.obj.get(field), default) {
            (None, Some(d)) => return Some(d),
            (None, None) => {
                self.missing(field);
                return None;
            }
            (Some(v), _) => v,
        };
        let Some(int) = PyInt::from_lax_json(value) else {
            let (kind, msg) = match value {
                Value::String(_) => (
                    "int_parsing",
                    "Input should be a valid integer, unable to parse string as an integer",
                ),
                Value::Number(_) => (
                    "int_from_float",
                    "Input should be a valid integer, got a number with a fractional part",
                ),
                _ => ("int_type", "Input should be a valid integer"),
            };
            self.errors.push(error(kind, &[field], msg, value.clone()));
            return None;
        };
        if int.as_str().starts_with('-') {
            let mut e = error(
                "greater_than_equal",
                &[field],
                "Input should be greater than or equal to 0",
                value.clone(),
            );
            e["ctx"] = json!({"ge": 0});
            self.errors.push(e);
            return None;
        }
        match int.as_str().parse::<u128>() {
            Ok(n) if n <= max => Some(n),
            _ => {
                let msg = format!("Input should be less than or equal to {max}");
                let mut e = error("less_than_equal", &[field], &msg, value.clone());
                e["ctx"] = json!({"le": max.to_string()});
                self.errors.push(e);
                None
            }
        }
    }

    fn payload(&mut self) -> Option<Value> {
        match self.obj.get("payload") {
            None => Some(Value::Object(Map::new())),
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                self.errors.push(error(
                    "dict_type",
                    &["payload"],
                    "Input should be a valid dictionary",
                    other.clone(),
                ));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(body: &str) -> Vec<(String, String)> {
        match parse_transaction(body.as_bytes()) {
            Err(BodyError::Invalid(errs)) => errs
                .iter()
                .map(|e| {
                    (
                        e["type"].as_str().unwrap_or("").to_owned(),
                        e["loc"][1].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect(),
            other => panic!("expected 422, got {other:?}"),
        }
    }

    #[test]
    fn unparseable_is_400_and_schema_failures_are_422() {
        assert_eq!(parse_transaction(b"{"), Err(BodyError::Unparseable));
        assert_eq!(parse_transaction(b"\xff\xfe"), Err(BodyError::Unparseable));
        assert_eq!(kinds(""), vec![("missing".into(), "".into())]);
        assert_eq!(kinds("[1]"), vec![("model_attributes_type".into(), "".into())]);
        assert_eq!(
            kinds("{}"),
            vec![
                ("missing".into(), "tx_type".into()),
                ("missing".into(), "from_address".into()),
                ("missing".into(), "amount".into()),
                ("missing".into(), "nonce".into())
            ]
        );
        assert_eq!(
            kinds(
                r#"{"tx_type":"NOPE","from_address":1,"amount":"x","nonce":-1,"payload":[],"fee":1.5}"#
            ),
            vec![
                ("enum".into(), "tx_type".into()),
                ("string_type".into(), "from_address".into()),
                ("int_parsing".into(), "amount".into()),
                ("int_from_float".into(), "fee".into()),
                ("greater_than_equal".into(), "nonce".into()),
                ("dict_type".into(), "payload".into())
            ]
        );
    }

    #[test]
    fn lax_integers_and_defaults_match_pydantic() {
        let tx = parse_transaction(
            br#"{"tx_type":"TRANSFER","from_address":"a","amount":"1000000000000000000000000000","nonce":2.0,"gas_price":true,"extra":1}"#,
        )
        .expect("valid");
        assert_eq!(tx.amount, 10u128.pow(27));
        assert_eq!(tx.nonce, 2);
        assert_eq!(tx.gas_price, 1);
        assert_eq!(tx.fee, 0);
        assert_eq!(tx.to_address, None);
        assert_eq!(tx.payload, json!({}));
        assert_eq!(tx.signature, "");
    }
}
