//! Python's `json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)`, byte for byte.
//!
//! The node hashes a transaction's payload with exactly that call, so a signer that serialises the payload
//! any other way produces a hash the node does not recognise. The rules reproduced here:
//!
//! - object keys sorted at every depth (by code point, as Python sorts `str`), no whitespace;
//! - every character outside printable ASCII escaped as `\uXXXX` (lower-case hex), characters above U+FFFF
//!   as a UTF-16 surrogate pair; `"` `\` `\n` `\r` `\t` `\b` `\f` with their short escapes;
//! - integers of any size printed as they are (the JSON is parsed with `arbitrary_precision`);
//! - floats printed as Python's `repr(float)`: shortest round-trip digits, exponent form outside
//!   `1e-4 <= |x| < 1e16`.

use serde_json::{Number, Value};
use std::fmt::Write as _;

/// Serialises `value` exactly as the node's `json.dumps(..., sort_keys=True, separators=(",", ":"))` does.
pub fn dumps_sorted(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_ascii_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Python sorts str keys by code point; Rust's `str` ordering is byte-wise UTF-8, which orders
            // code points identically.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_ascii_string(out, key);
                out.push(':');
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

/// Writes a JSON string literal with Python's `ensure_ascii=True` escaping.
pub fn write_ascii_string(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(ch),
            _ => {
                let mut units = [0u16; 2];
                for unit in ch.encode_utf16(&mut units) {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

fn write_number(out: &mut String, n: &Number) {
    let text = n.to_string();
    if is_integer_literal(&text) {
        out.push_str(&normalize_integer(&text));
    } else {
        match text.parse::<f64>() {
            Ok(f) => out.push_str(&python_float_repr(f)),
            // serde_json only hands us valid JSON numbers; keep the text if parsing ever disagrees.
            Err(_) => out.push_str(&text),
        }
    }
}

fn is_integer_literal(text: &str) -> bool {
    !text.contains(['.', 'e', 'E'])
}

/// Python's `str(int(text))`: drops a `-` on zero (JSON does not allow leading zeros otherwise).
fn normalize_integer(text: &str) -> String {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else if text.starts_with('-') {
        format!("-{trimmed}")
    } else {
        trimmed.to_owned()
    }
}

/// Python's `repr(float)` (`float_repr_style == "short"`).
pub fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    // `{:e}` gives the shortest round-trip digits as `d.ddddde<exp>`.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if f < 0.0 { "-" } else { "" };
    // Python's decpt: value = 0.d1d2... * 10^decpt.
    let decpt = exp + 1;
    let body = if -4 < decpt && decpt <= 16 {
        let n = digits.len() as i32;
        if decpt <= 0 {
            format!("0.{}{}", "0".repeat((-decpt) as usize), digits)
        } else if decpt >= n {
            format!("{}{}.0", digits, "0".repeat((decpt - n) as usize))
        } else {
            let (int_part, frac) = digits.split_at(decpt as usize);
            format!("{int_part}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let exp_sign = if exp < 0 { '-' } else { '+' };
        if rest.is_empty() {
            format!("{first}e{exp_sign}{:02}", exp.abs())
        } else {
            format!("{first}.{rest}e{exp_sign}{:02}", exp.abs())
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dumps(json: &str) -> String {
        dumps_sorted(&serde_json::from_str(json).expect("valid json"))
    }

    #[test]
    fn sorts_keys_at_every_depth_without_spaces() {
        assert_eq!(
            dumps(r#"{"b": 1, "a": {"z": [1, {"y": 2, "x": 3}], "c": null}}"#),
            r#"{"a":{"c":null,"z":[1,{"x":3,"y":2}]},"b":1}"#
        );
    }

    #[test]
    fn escapes_like_ensure_ascii() {
        assert_eq!(
            dumps(r#""é\"\\/\n\t\u0001 🚀\u007f""#),
            r#""\u00e9\"\\/\n\t\u0001 \ud83d\ude80\u007f""#
        );
    }

    #[test]
    fn integers_keep_every_digit() {
        assert_eq!(
            dumps("[1000000000000000000000000000000, -7, -0, 0]"),
            "[1000000000000000000000000000000,-7,0,0]"
        );
    }

    #[test]
    fn floats_print_as_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-300, "-2.5e-300"),
            (123456.789, "123456.789"),
            (1.5e300, "1.5e+300"),
        ];
        for (f, want) in cases {
            assert_eq!(python_float_repr(f), want, "{f}");
        }
        assert_eq!(dumps("[1.0, 2.50, 1E2]"), "[1.0,2.5,100.0]");
    }
}
