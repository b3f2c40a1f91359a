//! Automatic probation (off by default): a device the farm quarantined by itself (a failed spot check or
//! Freivalds check, or its agent's notice) is given a readmission attempt once it has been quarantined for
//! the cool-down, through the same known-answer self-test an operator's `readmit` runs. A device that keeps
//! failing is not tested forever: at most [`ProbationPolicy::max_per_day`] attempts per device in any 24
//! hours, passed or failed. A device an operator quarantined stays out until the operator readmits it.
//!
//! [`Probation`] is the pure rule (which devices are due), [`FarmHandle::start_probation`] the task that
//! applies it to a running farm.

use super::{DeviceId, DeviceStatus, FarmHandle, Inner};
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Weak},
    time::{Duration, SystemTime},
};

/// Default time a device stays quarantined before its first automatic readmission attempt.
pub const DEFAULT_PROBATION_COOL_DOWN: Duration = Duration::from_secs(30 * 60);
/// Default most automatic readmission attempts per device in 24 hours.
pub const DEFAULT_PROBATION_MAX_PER_DAY: u32 = 3;
/// Prefix of the quarantine reasons an operator gave (never lifted automatically).
pub const OPERATOR_REASON_PREFIX: &str = "operator:";

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// When quarantined devices are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbationPolicy {
    /// Time quarantined before an attempt (and between attempts).
    pub cool_down: Duration,
    /// Attempts per device in any 24 hours.
    pub max_per_day: u32,
}

impl Default for ProbationPolicy {
    fn default() -> Self {
        Self { cool_down: DEFAULT_PROBATION_COOL_DOWN, max_per_day: DEFAULT_PROBATION_MAX_PER_DAY }
    }
}

/// The attempts made so far, and the rule that picks the devices due for one.
#[derive(Debug)]
pub struct Probation {
    policy: ProbationPolicy,
    attempts: HashMap<DeviceId, VecDeque<SystemTime>>,
}

impl Probation {
    /// No attempts yet.
    pub fn new(policy: ProbationPolicy) -> Self {
        Self { policy, attempts: HashMap::new() }
    }

    /// The devices of `devices` due for an attempt at `now`, each recorded as attempted: quarantined by the
    /// farm (not by an operator) for at least the cool-down, no attempt within the cool-down, fewer than
    /// `max_per_day` attempts in the last 24 hours.
    pub fn due(&mut self, now: SystemTime, devices: &[DeviceStatus]) -> Vec<DeviceId> {
        let mut due = Vec::new();
        for d in devices {
            let (Some(reason), Some(since_ms)) = (&d.quarantine_reason, d.quarantined_at_unix_ms)
            else {
                continue;
            };
            if reason.starts_with(OPERATOR_REASON_PREFIX) {
                continue;
            }
            let since = SystemTime::UNIX_EPOCH + Duration::from_millis(since_ms);
            if now.duration_since(since).unwrap_or_default() < self.policy.cool_down {
                continue;
            }
            let id = DeviceId { agent: d.agent_id, index: d.index };
            let attempts = self.attempts.entry(id).or_default();
            while attempts
                .front()
                .is_some_and(|t| now.duration_since(*t).unwrap_or_default() >= DAY)
            {
                attempts.pop_front();
            }
            let recent = attempts.back().is_some_and(|t| {
                now.duration_since(*t).unwrap_or_default() < self.policy.cool_down
            });
            if recent || attempts.len() >= self.policy.max_per_day as usize {
                continue;
            }
            attempts.push_back(now);
            due.push(id);
        }
        due
    }
}

/// The running probation task; dropping it stops it.
#[derive(Debug)]
pub struct ProbationTask(tokio::task::JoinHandle<()>);

impl Drop for ProbationTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl FarmHandle {
    /// Starts automatic probation on the current tokio runtime: quarantined devices are retried as
    /// `policy` says (see the [module docs](self)). The task holds no reference that keeps the farm up; it
    /// ends with the farm or when the answer is dropped.
    pub fn start_probation(&self, policy: ProbationPolicy) -> ProbationTask {
        let farm: Weak<Inner> = Arc::downgrade(&self.inner);
        let every =
            (policy.cool_down / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
        ProbationTask(tokio::spawn(async move {
            let mut probation = Probation::new(policy);
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = farm.upgrade() else { return };
                let farm = Self { inner };
                let Ok(devices) = farm.devices().await else { return };
                for device in probation.due(SystemTime::now(), &devices) {
                    match farm.readmit(device).await {
                        Ok(report) => {
                            tracing::info!(%device, seed = %report.seed, "probation: self-test passed, device readmitted");
                        }
                        Err(e) => tracing::warn!(%device, "probation: {e}"),
                    }
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quarantined(agent: u64, reason: &str, at: SystemTime) -> DeviceStatus {
        DeviceStatus {
            agent_id: agent,
            device: format!("agent{agent}/gpu0"),
            agent: "a".into(),
            name: "d".into(),
            kind: "cpu".into(),
            memory_bytes: 0,
            measured_ops_per_sec: 1.0,
            draining: false,
            quarantined: true,
            quarantine_reason: Some(reason.into()),
            host: "127.0.0.1:1".into(),
            index: 0,
            drained: false,
            quarantined_at_unix_ms: Some(
                u64::try_from(
                    at.duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_millis(),
                )
                .expect("ms"),
            ),
            shards_in_flight: 0,
            report: None,
            protocol_version: cpc_common::wire::PROTOCOL_VERSION,
        }
    }

    #[test]
    fn devices_are_retried_after_the_cool_down_at_most_the_daily_cap() {
        let minute = Duration::from_secs(60);
        let mut p = Probation::new(ProbationPolicy { cool_down: 10 * minute, max_per_day: 2 });
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let devices =
            [quarantined(1, "spot check failed", t0), quarantined(2, "operator: fan", t0)];
        assert!(p.due(t0 + 9 * minute, &devices).is_empty(), "cooling down");
        let first = t0 + 10 * minute;
        assert_eq!(
            p.due(first, &devices),
            [DeviceId { agent: 1, index: 0 }],
            "never the operator's"
        );
        assert!(p.due(first + 5 * minute, &devices).is_empty(), "an attempt cools down too");
        let second = first + 10 * minute;
        assert_eq!(p.due(second, &devices).len(), 1);
        assert!(p.due(second + 60 * minute, &devices).is_empty(), "two a day");
        // A day after the first attempt, one more is allowed.
        assert_eq!(p.due(first + DAY, &devices).len(), 1);
    }
}
