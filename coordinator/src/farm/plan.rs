//! How a job is cut into shards: the pure rule, tested here without a network.
//!
//! [`split_rows`] gives each device rows in proportion to its measured throughput, never more rows than the
//! device says it holds at that size, and runs a small job whole on the fastest device (sharding it would
//! cost more than it saves). The scheduler (`schedule.rs`) plans every job with it and hands the units out.

use super::DeviceId;
use std::{ops::Range, time::Duration};

/// How jobs are split.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitPolicy {
    /// A job the fastest device would finish within this time runs whole on that device (sharding costs more
    /// than it saves).
    pub small_job: Duration,
    /// No shard is planned below this many rows (fewer devices are used instead), except the last rows.
    pub min_shard_rows: u32,
}

impl Default for SplitPolicy {
    fn default() -> Self {
        Self { small_job: Duration::from_millis(100), min_shard_rows: 16 }
    }
}

/// When the tail of a job is re-issued.
#[derive(Debug, Clone, PartialEq)]
pub struct StragglerPolicy {
    /// A shard is a straggler once it has run this many times its expected time (from the device's measured
    /// throughput) plus `grace`.
    pub factor: f64,
    /// Added to the expected time.
    pub grace: Duration,
}

impl Default for StragglerPolicy {
    fn default() -> Self {
        // A quarter second past twice its expected time: a silently dead agent costs a block task about that
        // much (its heartbeats take 1.5 s to be missed), while a shard merely slowed by a busy host rarely
        // runs that late.
        Self { factor: 2.0, grace: Duration::from_millis(250) }
    }
}

/// What [`split_rows`] needs of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceCapacity {
    /// The device.
    pub id: DeviceId,
    /// Measured throughput (2·rows·n² operations per second of a shard).
    pub ops_per_sec: f64,
    /// Most rows at this n the device holds (what it advertised, `DeviceAdvert::max_rows_at`).
    pub max_rows: u32,
}

/// One planned shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Which device.
    pub device: DeviceId,
    /// Which rows.
    pub rows: Range<u32>,
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// No device, or none with room for a single row.
    #[error("no device can hold a single row at n={0}")]
    NoCapacity(u32),
}

/// Operations of `rows` rows at size `n`: `2·rows·n²`.
pub fn shard_ops(n: u32, rows: u32) -> f64 {
    2.0 * f64::from(rows) * f64::from(n) * f64::from(n)
}

fn weight(d: &DeviceCapacity) -> f64 {
    if d.ops_per_sec.is_finite() && d.ops_per_sec > 0.0 { d.ops_per_sec } else { 1.0 }
}

/// Splits rows `0..n` of one iteration over `devices`: contiguous ranges covering every row exactly once,
/// in proportion to throughput, each within its device's memory (a device gets several shards when the
/// others cannot hold the rest), the whole job on the fastest device when it is small.
pub fn split_rows(
    n: u32,
    devices: &[DeviceCapacity],
    policy: &SplitPolicy,
) -> Result<Vec<Assignment>, SplitError> {
    let mut usable: Vec<&DeviceCapacity> = devices.iter().filter(|d| d.max_rows > 0).collect();
    if usable.is_empty() || n == 0 {
        return Err(SplitError::NoCapacity(n));
    }
    // Fastest first, ties by id, so plans are deterministic.
    usable.sort_by(|a, b| weight(b).total_cmp(&weight(a)).then(a.id.cmp(&b.id)));
    let fastest = usable[0];
    let whole_secs = shard_ops(n, n) / weight(fastest);
    if whole_secs <= policy.small_job.as_secs_f64() || n <= policy.min_shard_rows.max(1) {
        let mut out = Vec::new();
        let mut r0 = 0;
        while r0 < n {
            let r1 = r0.saturating_add(fastest.max_rows).min(n);
            out.push(Assignment { device: fastest.id, rows: r0..r1 });
            r0 = r1;
        }
        return Ok(out);
    }
    // Use as many devices as keep every proportional share at or above the minimum.
    let min_rows = f64::from(policy.min_shard_rows.max(1));
    let mut k = usable.len();
    while k > 1 {
        let total: f64 = usable[..k].iter().map(|d| weight(d)).sum();
        if f64::from(n) * weight(usable[k - 1]) / total >= min_rows {
            break;
        }
        k -= 1;
    }
    let active = &usable[..k];
    let mut shares: Vec<Vec<u32>> = vec![Vec::new(); k];
    let mut remaining = n;
    while remaining > 0 {
        let round = water_fill(remaining, active);
        let given: u32 = round.iter().sum();
        if given == 0 {
            return Err(SplitError::NoCapacity(n));
        }
        for (i, rows) in round.into_iter().enumerate() {
            if rows > 0 {
                shares[i].push(rows);
            }
        }
        remaining -= given;
    }
    // Lay the shares out as contiguous ranges, round by round, fastest device first within a round.
    let rounds = shares.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::new();
    let mut r0 = 0;
    for round in 0..rounds {
        for (i, d) in active.iter().enumerate() {
            if let Some(&rows) = shares[i].get(round) {
                out.push(Assignment { device: d.id, rows: r0..r0 + rows });
                r0 += rows;
            }
        }
    }
    Ok(out)
}

/// One round: `rows` in proportion to weight, each capped at its device's `max_rows`, the capped devices'
/// excess spread over the others; integer shares by largest remainder. Answers fewer than `rows` only when
/// every device is at its cap.
fn water_fill(rows: u32, devices: &[&DeviceCapacity]) -> Vec<u32> {
    let k = devices.len();
    let mut share = vec![0.0f64; k];
    let mut capped = vec![false; k];
    let mut left = f64::from(rows);
    loop {
        let total: f64 = (0..k).filter(|&i| !capped[i]).map(|i| weight(devices[i])).sum();
        if total <= 0.0 {
            break;
        }
        let mut newly = false;
        let open: Vec<usize> = (0..k).filter(|&i| !capped[i]).collect();
        for i in open {
            share[i] = left * weight(devices[i]) / total;
            if share[i] >= f64::from(devices[i].max_rows) {
                share[i] = f64::from(devices[i].max_rows);
                capped[i] = true;
                newly = true;
            }
        }
        if !newly {
            break;
        }
        left = f64::from(rows) - (0..k).filter(|&i| capped[i]).map(|i| share[i]).sum::<f64>();
        if left <= 0.0 {
            break;
        }
    }
    let mut out: Vec<u32> =
        share.iter().zip(devices).map(|(s, d)| (s.floor() as u32).min(d.max_rows)).collect();
    let mut given: u32 = out.iter().sum();
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| {
        (share[b] - share[b].floor()).total_cmp(&(share[a] - share[a].floor())).then(a.cmp(&b))
    });
    while given < rows {
        let mut progressed = false;
        for &i in &order {
            if given < rows && out[i] < devices[i].max_rows {
                out[i] += 1;
                given += 1;
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(index: u32, ops: f64, max_rows: u32) -> DeviceCapacity {
        DeviceCapacity { id: DeviceId { agent: 1, index }, ops_per_sec: ops, max_rows }
    }

    fn policy() -> SplitPolicy {
        SplitPolicy { small_job: Duration::ZERO, min_shard_rows: 1 }
    }

    fn check_cover(n: u32, plan: &[Assignment]) {
        let mut next = 0;
        for a in plan {
            assert_eq!(a.rows.start, next, "contiguous: {plan:?}");
            assert!(a.rows.end > a.rows.start, "non-empty: {plan:?}");
            next = a.rows.end;
        }
        assert_eq!(next, n, "covers 0..{n}: {plan:?}");
    }

    fn rows_of(plan: &[Assignment], index: u32) -> u32 {
        plan.iter().filter(|a| a.device.index == index).map(|a| a.rows.len() as u32).sum()
    }

    #[test]
    fn proportional_to_throughput() {
        let devices = [dev(0, 1e9, u32::MAX), dev(1, 3e9, u32::MAX)];
        let plan = split_rows(400, &devices, &policy()).expect("plan");
        check_cover(400, &plan);
        assert_eq!((rows_of(&plan, 0), rows_of(&plan, 1)), (100, 300));
        let three = [dev(0, 1.0, u32::MAX), dev(1, 1.0, u32::MAX), dev(2, 1.0, u32::MAX)];
        let plan = split_rows(512, &three, &policy()).expect("plan");
        check_cover(512, &plan);
        let counts: Vec<u32> = (0..3).map(|i| rows_of(&plan, i)).collect();
        assert_eq!(counts.iter().sum::<u32>(), 512);
        assert!(counts.iter().all(|&c| c == 170 || c == 171), "{counts:?}");
    }

    #[test]
    fn memory_cap_is_respected() {
        let devices = [dev(0, 1e9, 50), dev(1, 1e9, u32::MAX)];
        let plan = split_rows(400, &devices, &policy()).expect("plan");
        check_cover(400, &plan);
        assert_eq!((rows_of(&plan, 0), rows_of(&plan, 1)), (50, 350));
        for a in &plan {
            assert!(a.rows.len() as u32 <= devices[a.device.index as usize].max_rows);
        }
    }

    #[test]
    fn devices_too_small_get_several_shards() {
        let devices = [dev(0, 1e9, 30), dev(1, 1e9, 20)];
        let plan = split_rows(100, &devices, &policy()).expect("plan");
        check_cover(100, &plan);
        for a in &plan {
            assert!(a.rows.len() as u32 <= devices[a.device.index as usize].max_rows, "{plan:?}");
        }
        assert!(split_rows(100, &[dev(0, 1e9, 0)], &policy()).is_err());
        assert!(split_rows(100, &[], &policy()).is_err());
    }

    #[test]
    fn small_job_goes_whole_to_the_fastest() {
        let devices = [dev(0, 1e9, u32::MAX), dev(1, 5e12, u32::MAX), dev(2, 1e9, u32::MAX)];
        let policy = SplitPolicy { small_job: Duration::from_millis(100), min_shard_rows: 16 };
        let plan = split_rows(256, &devices, &policy).expect("plan");
        assert_eq!(
            plan,
            vec![Assignment { device: DeviceId { agent: 1, index: 1 }, rows: 0..256 }]
        );
        // Too few rows to be worth sharding.
        let plan =
            split_rows(8, &[dev(0, 1.0, u32::MAX), dev(1, 1.0, u32::MAX)], &policy).expect("plan");
        assert_eq!(plan.len(), 1);
    }

    #[test]
    fn minimum_shard_drops_the_slowest() {
        let devices = [dev(0, 1e9, u32::MAX), dev(1, 1e9, u32::MAX), dev(2, 1e6, u32::MAX)];
        let policy = SplitPolicy { small_job: Duration::ZERO, min_shard_rows: 16 };
        let plan = split_rows(1000, &devices, &policy).expect("plan");
        check_cover(1000, &plan);
        assert_eq!(rows_of(&plan, 2), 0, "{plan:?}");
    }

    #[test]
    fn any_mix_covers_every_row() {
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for _ in 0..500 {
            let n = 1 + next() % 3000;
            let k = 1 + next() % 12;
            let devices: Vec<_> =
                (0..k).map(|i| dev(i, f64::from(1 + next() % 1000), 1 + next() % 4000)).collect();
            let plan = split_rows(n, &devices, &policy()).expect("plan");
            check_cover(n, &plan);
            for a in &plan {
                assert!(a.rows.len() as u32 <= devices[a.device.index as usize].max_rows);
            }
        }
    }
}
