//! How many cases the proptest fuzz targets of every crate run, so that CI and a long run share one knob.
//!
//! Each fuzz target sizes its case count for CI (the whole set adds well under a minute on two cores) and
//! passes that count to [`cases`]. Setting `CPC_FUZZ_CASES` replaces every target's count, for a long run
//! on purpose:
//!
//! ```sh
//! CPC_FUZZ_CASES=200000 cargo test -p cpc-common --test it fuzz
//! CPC_FUZZ_CASES=200000 cargo test -p cpc-coordinator --lib fuzz
//! CPC_FUZZ_CASES=200000 cargo test -p cpc-tests --lib fuzz
//! ```
//!
//! proptest's own `PROPTEST_CASES` is deliberately not used: the targets set their count explicitly, so an
//! environment that happens to set it cannot shrink or blow up CI.

/// The environment variable that sets every fuzz target's case count.
pub const CASES_ENV: &str = "CPC_FUZZ_CASES";

/// The case count for a fuzz target whose CI count is `ci_cases`: `CPC_FUZZ_CASES` when it is set to a
/// positive integer, else `ci_cases`.
///
/// # Panics
/// When `CPC_FUZZ_CASES` is set but is not a positive integer: a long run must not quietly run the CI count.
pub fn cases(ci_cases: u32) -> u32 {
    match std::env::var(CASES_ENV) {
        Err(_) => ci_cases,
        Ok(text) => match text.trim().parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => panic!("{CASES_ENV}={text:?} is not a positive integer"),
        },
    }
}
