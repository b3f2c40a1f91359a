//! Locating and loading the conformance vectors in `../shared/vectors`, for tests in every crate.
//!
//! Vectors are read from `CPC_VECTORS`, else from `shared/vectors` beside the repository. Where the folder
//! is absent a test says so loudly and skips, except under `CI=true`, where a missing folder is a failure:
//! CI must never pass by skipping conformance.

use serde_json::Value;
use std::path::PathBuf;

/// The vectors folder, if it exists. Panics under `CI=true` when it does not.
pub fn dir() -> Option<PathBuf> {
    let dir = std::env::var_os("CPC_VECTORS").map(PathBuf::from).unwrap_or_else(|| {
        // This crate sits at <repo>/common; the vectors at <repo>/../shared/vectors.
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("..")
            .join("shared")
            .join("vectors")
    });
    if dir.is_dir() {
        return Some(dir);
    }
    let msg = format!("conformance vectors not found at {} (set CPC_VECTORS)", dir.display());
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{msg}: CI must run every conformance test"
    );
    eprintln!("\n!!! SKIPPING CONFORMANCE: {msg} !!!\n");
    None
}

/// Parses `name` (e.g. `transactions.json`) from the vectors folder; `None` (after a loud message) if the
/// folder is absent. Panics when the folder exists but the file is missing or not JSON.
pub fn load(name: &str) -> Option<Value> {
    let path = dir()?.join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display())))
}

/// Names of every `*.json` file in the vectors folder.
pub fn all_files() -> Vec<String> {
    let Some(dir) = dir() else { return Vec::new() };
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect()
        })
        .unwrap_or_default();
    names.retain(|n| n.ends_with(".json"));
    names.sort();
    names
}
