//! Spot checks: for every shard a device returns, fetch a few random rows from the device, check each row
//! hashes to the leaf it sent (or, for a shard it answered by its root, that the row's leaf and the Merkle
//! path the device shows with it give that root), and recompute a few of the row's elements on the CPU
//! from the definition (`cpc_kernels::cpu::c_elements`: the values of `Challenge::c_element`, O(n) per
//! distinct 16-column group on the CPU's fastest Philox path). A device that lies about a row, cannot
//! produce it, or computed it wrong fails, and the scheduler quarantines it.

use cpc_common::{
    hashing::{Digest32, sha256},
    merkle::root_from_path,
    quic::call,
    synthetic::Challenge,
    wire::{FetchRow, FetchRowProof, RowAnswer},
};
use rand::{SeedableRng as _, rngs::StdRng, seq::index::sample};
use std::time::Duration;

/// How hard every shard is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpotCheckConfig {
    /// Rows fetched and checked per shard (0: no checks, for benchmarks of the transport only).
    pub rows_per_shard: u32,
    /// Elements of each fetched row recomputed on the CPU (≥ n: the whole row).
    pub elements_per_row: u32,
    /// Seed of the row and column choice (none: the OS's randomness; set it for reproducible tests).
    pub seed: Option<u64>,
    /// Time one row fetch may take.
    pub fetch_timeout: Duration,
}

impl Default for SpotCheckConfig {
    fn default() -> Self {
        Self {
            rows_per_shard: 2,
            elements_per_row: 8,
            seed: None,
            fetch_timeout: Duration::from_secs(30),
        }
    }
}

/// The outcome of checking one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every checked row and element was right.
    Passed {
        /// Rows checked.
        rows: u32,
    },
    /// The device is wrong (or would not show its work).
    Failed {
        /// Rows checked and found right before the failure.
        passed: u32,
        /// What was wrong.
        reason: String,
    },
    /// The check could not be made (transport trouble): neither pass nor fail.
    Inconclusive(String),
}

/// The shard to check.
#[derive(Debug, Clone)]
pub(crate) struct ShardUnderCheck<'a> {
    pub(crate) shard_id: u64,
    pub(crate) challenge: &'a Challenge,
    pub(crate) iteration: u32,
    pub(crate) first_row: u32,
    pub(crate) answer: Committed<'a>,
}

/// What the device answered, that every fetched row must agree with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Committed<'a> {
    /// The leaf of every row.
    Leaves(&'a [Digest32]),
    /// The Merkle root of `rows` leaves (a whole iteration): rows come with their paths.
    Root {
        /// The root.
        root: Digest32,
        /// How many leaves it covers.
        rows: u32,
    },
}

impl Committed<'_> {
    fn rows(&self) -> usize {
        match self {
            Self::Leaves(leaves) => leaves.len(),
            Self::Root { rows, .. } => *rows as usize,
        }
    }
}

/// Checks one shard by fetching rows over `conn`.
pub(crate) async fn check_shard(
    conn: &quinn::Connection,
    shard: ShardUnderCheck<'_>,
    cfg: &SpotCheckConfig,
) -> Verdict {
    let rows = shard.answer.rows();
    let want = (cfg.rows_per_shard as usize).min(rows);
    if want == 0 {
        return Verdict::Passed { rows: 0 };
    }
    let mut rng = match cfg.seed {
        Some(seed) => {
            StdRng::seed_from_u64(seed ^ shard.shard_id.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        }
        None => StdRng::from_entropy(),
    };
    let n = shard.challenge.matrix_size();
    let mut passed = 0;
    for offset in sample(&mut rng, rows, want) {
        let row = shard.first_row + offset as u32;
        let with_path = matches!(shard.answer, Committed::Root { .. });
        let fetch = fetch_row(conn, shard.shard_id, row, with_path);
        let (values, path) = match tokio::time::timeout(cfg.fetch_timeout, fetch).await {
            Err(_) => return Verdict::Inconclusive(format!("fetching row {row} timed out")),
            Ok(Err(FetchError::Transport(e))) => return Verdict::Inconclusive(e),
            Ok(Err(FetchError::Refused(reason))) => {
                return Verdict::Failed {
                    passed,
                    reason: format!("row {row} not shown: {reason}"),
                };
            }
            Ok(Ok(values)) => values,
        };
        if values.len() != n as usize {
            return Verdict::Failed {
                passed,
                reason: format!("row {row} has {} values, not n={n}", values.len()),
            };
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let leaf = sha256(&bytes);
        let agrees = match shard.answer {
            Committed::Leaves(leaves) => leaves[offset] == leaf,
            Committed::Root { root, .. } => {
                root_from_path(&leaf, offset, rows, &path) == Some(root)
            }
        };
        if !agrees {
            return Verdict::Failed {
                passed,
                reason: match shard.answer {
                    Committed::Leaves(_) => {
                        format!("row {row} does not hash to the leaf the device sent")
                    }
                    Committed::Root { .. } => format!(
                        "row {row} and the Merkle path shown with it do not give the root the device \
                         sent"
                    ),
                },
            };
        }
        let cols: Vec<u32> = if cfg.elements_per_row >= n {
            (0..n).collect()
        } else {
            sample(&mut rng, n as usize, cfg.elements_per_row as usize)
                .into_iter()
                .map(|c| c as u32)
                .collect()
        };
        let (challenge, iteration) = (shard.challenge.clone(), shard.iteration);
        let recomputed = tokio::task::spawn_blocking(move || {
            let values = cpc_kernels::cpu::c_elements(&challenge, iteration, row, &cols);
            cols.into_iter().zip(values).collect::<Vec<_>>()
        })
        .await;
        let Ok(recomputed) = recomputed else {
            return Verdict::Inconclusive("CPU recomputation panicked".into());
        };
        for (col, want) in recomputed {
            let got = values[col as usize];
            if got != want {
                return Verdict::Failed {
                    passed,
                    reason: format!(
                        "C[{row}][{col}] of iteration {iteration} is {got}, the definition gives {want}"
                    ),
                };
            }
        }
        passed += 1;
    }
    Verdict::Passed { rows: passed }
}

enum FetchError {
    Transport(String),
    Refused(String),
}

/// Row `row` of the shard, with its Merkle path when `with_path` (empty otherwise).
async fn fetch_row(
    conn: &quinn::Connection,
    shard_id: u64,
    row: u32,
    with_path: bool,
) -> Result<(Vec<i32>, Vec<Digest32>), FetchError> {
    let t = |e: &dyn std::fmt::Display| FetchError::Transport(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| t(&e))?;
    let request = FetchRow { shard_id, row };
    let answer = if with_path {
        call(&mut send, &mut recv, FetchRowProof(request)).await
    } else {
        call(&mut send, &mut recv, request).await
    };
    match answer {
        Ok(Some(RowAnswer::Proof { values, path })) => Ok((values, path)),
        Ok(Some(RowAnswer::Row { .. })) if with_path => {
            Err(FetchError::Refused("the row came without its Merkle path".into()))
        }
        Ok(Some(RowAnswer::Row { values })) => Ok((values, Vec::new())),
        Ok(Some(RowAnswer::Unavailable { reason } | RowAnswer::Refused { reason })) => {
            Err(FetchError::Refused(reason))
        }
        Ok(None) => Err(FetchError::Transport("stream closed without an answer".into())),
        Err(cpc_common::quic::FrameIoError::Codec(e)) => {
            Err(FetchError::Refused(format!("undecodable answer: {e}")))
        }
        Err(e) => Err(t(&e)),
    }
}
