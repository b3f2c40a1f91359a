//! Fuzzing the coordinator's configuration file ([`super::config::ConfigFile::load`]) with proptest: an
//! operator's file may hold anything, and the coordinator must answer with a `ConfigError` naming the problem,
//! never a panic.
//!
//! Two targets: arbitrary bytes (and TOML token soup), and valid files with one key set to a value of any
//! TOML type, which must load exactly when the type fits, and otherwise fail naming the key. Case counts come
//! from [`cpc_common::fuzzing::cases`] (`CPC_FUZZ_CASES` for a long run).

use super::config::{ConfigError, ConfigFile};
use cpc_common::fuzzing;
use proptest::{collection::vec, prelude::*};
use toml::{Table, Value};

/// Writes `bytes` as a config file and loads it.
fn load(bytes: &[u8]) -> Result<ConfigFile, ConfigError> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("farm.toml");
    std::fs::write(&path, bytes).expect("the config file is written");
    ConfigFile::load(&path)
}

/// Checks that an error names the file, as the coordinator prints it.
fn check_error(e: &ConfigError) -> Result<(), TestCaseError> {
    let shown = e.to_string();
    prop_assert!(shown.contains("farm.toml"), "{}", shown);
    Ok(())
}

/// The type each key of the file takes.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Strings,
    Text,
    U32,
    U64,
}

const KEYS: [(&str, Shape); 13] = [
    ("nodes", Shape::Strings),
    ("identities", Shape::Strings),
    ("keystore", Shape::Text),
    ("data_dir", Shape::Text),
    ("matrix_size", Shape::U32),
    ("gas_price", Shape::U64),
    ("poll_interval_ms", Shape::U64),
    ("listen", Shape::Text),
    ("metrics", Shape::Text),
    ("compute", Shape::Text),
    ("max_validator_matrix_size", Shape::U32),
    ("scheduling", Shape::Text),
    ("io_threads", Shape::U32),
];

/// Whether `value` fits a key of `shape` (TOML integers are i64).
fn fits(shape: Shape, value: &Value) -> bool {
    match (shape, value) {
        (Shape::Strings, Value::Array(items)) => items.iter().all(Value::is_str),
        (Shape::Text, Value::String(_)) => true,
        (Shape::U32, Value::Integer(n)) => u32::try_from(*n).is_ok(),
        (Shape::U64, Value::Integer(n)) => *n >= 0,
        _ => false,
    }
}

fn any_toml() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<String>().prop_map(Value::String),
        any::<i64>().prop_map(Value::Integer),
        prop_oneof![Just(0i64), Just(-1), Just(i64::from(u32::MAX)), Just(i64::from(u32::MAX) + 1)]
            .prop_map(Value::Integer),
        any::<f64>().prop_map(Value::Float),
        any::<bool>().prop_map(Value::Boolean),
        prop::sample::select(vec!["1979-05-27T07:32:00Z", "1979-05-27", "07:32:00"])
            .prop_map(|d| d.parse().map_or(Value::Boolean(false), Value::Datetime)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec(("[a-z_]{1,12}", inner), 0..4)
                .prop_map(|entries| Value::Table(entries.into_iter().collect::<Table>())),
        ]
    })
}

/// A valid file, as a TOML table.
fn valid_file() -> impl Strategy<Value = Table> {
    let text = "[ -~]{0,30}";
    let validator =
        (text, text, prop::option::of(any::<bool>())).prop_map(|(url, identity, submit)| {
            let mut t = Table::new();
            t.insert("url".into(), Value::String(url));
            t.insert("identity".into(), Value::String(identity));
            if let Some(submit) = submit {
                t.insert("submit_to_l1".into(), Value::Boolean(submit));
            }
            Value::Table(t)
        });
    (
        vec(text, 0..3),
        vec(text, 0..3),
        prop::option::of(text),
        prop::option::of(1u32..=65_536),
        prop::option::of(0i64..=i64::MAX),
        vec(validator, 0..3),
    )
        .prop_map(|(nodes, identities, listen, matrix_size, gas_price, validators)| {
            let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
            let mut t = Table::new();
            t.insert("nodes".into(), strings(nodes));
            t.insert("identities".into(), strings(identities));
            if let Some(listen) = listen {
                t.insert("listen".into(), Value::String(listen));
            }
            if let Some(n) = matrix_size {
                t.insert("matrix_size".into(), Value::Integer(i64::from(n)));
            }
            if let Some(p) = gas_price {
                t.insert("gas_price".into(), Value::Integer(p));
            }
            if !validators.is_empty() {
                t.insert("validators".into(), Value::Array(validators));
            }
            t
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzzing::cases(600)))]

    /// Any bytes, or TOML token soup: a configuration or a `ConfigError` naming the file, never a panic.
    #[test]
    fn arbitrary_files_never_panic(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..300),
            any::<String>().prop_map(String::into_bytes),
            vec(
                prop::sample::select(vec![
                    "nodes", "matrix_size", "[[validators]]", "[validators]", "url", "identity", "=", " = ",
                    "\n", "\"", "\"\"\"", "'", "[", "]", "{", "}", ",", "99999999999999999999", "-1", "inf",
                    "nan", "1979-05-27T07:32:00Z", "true", "# c", "\\u0000", ".", "a.b.c",
                ]),
                0..40,
            )
            .prop_map(|tokens| tokens.concat().into_bytes()),
        ],
    ) {
        if let Err(e) = load(&bytes) {
            check_error(&e)?;
        }
    }

    /// A valid file loads; with one key set to any TOML value, it loads exactly when the value's type fits
    /// the key, and otherwise the error shows the key.
    #[test]
    fn a_value_of_the_wrong_type_is_named(
        file in valid_file(),
        which in 0..KEYS.len(),
        value in any_toml(),
    ) {
        let text = toml::to_string(&file).expect("a table serialises");
        prop_assert!(load(text.as_bytes()).is_ok(), "a valid file is refused:\n{}", text);

        let (key, shape) = KEYS[which];
        let mut edited = file.clone();
        edited.insert(key.to_owned(), value.clone());
        let text = toml::to_string(&edited).expect("a table serialises");
        match load(text.as_bytes()) {
            Ok(_) => prop_assert!(fits(shape, &value), "`{} = {}` was accepted", key, value),
            Err(e) => {
                check_error(&e)?;
                prop_assert!(!fits(shape, &value), "`{} = {}` was refused: {}", key, value, e);
                prop_assert!(e.to_string().contains(key), "the error does not name `{}`: {}", key, e);
            }
        }
    }
}
