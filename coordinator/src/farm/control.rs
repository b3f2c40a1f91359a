//! What an operator does to a running farm, as methods of [`FarmHandle`]: ask its state, drain or resume a
//! device or a whole agent, quarantine a device, readmit one after its self-test. The admin API
//! (`crate::admin`) is the HTTP face of these; tests and other embedders call them directly.

use super::{
    DeviceId, DeviceStatus, FarmHandle,
    registry::{DeviceLookup, Lookup, OperatorDrain, Quarantine, Readmit},
    scheduler::InFlightByDevice,
    self_test::{self, SelfTestReport},
};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Why an operator's action was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The device or agent is not connected (see `cpc-coordinator farm status` for the names).
    #[error("{0}: see `cpc-coordinator farm status` for connected agents and devices")]
    NotFound(String),
    /// The name is neither `agentN` nor `agentN/gpuI`.
    #[error(
        "`{0}` names no device or agent: use `agentN/gpuI` for a device or `agentN` for every device of an agent, as `farm status` prints them"
    )]
    BadName(String),
    /// The action does not apply to the device's state (readmitting a device that is not quarantined).
    #[error("{0}")]
    Conflict(String),
    /// The device failed its known-answer self-test: it stays quarantined.
    #[error("self-test of {device} failed, the device stays quarantined: {reason}")]
    SelfTestFailed {
        /// The device.
        device: DeviceId,
        /// What went wrong.
        reason: String,
    },
    /// The farm has shut down.
    #[error("the farm has shut down")]
    Shutdown,
}

/// The farm as `farm status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FarmStatus {
    /// QUIC address agents dial.
    pub listen: String,
    /// The certificate's SHA-256 fingerprint.
    pub fingerprint: String,
    /// Every connected device, by agent and index.
    pub devices: Vec<DeviceStatus>,
}

/// A device or every device of one agent, as operators name them (`agent3/gpu0`, `agent3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One device.
    Device(DeviceId),
    /// Every device of one agent.
    Agent(u64),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Device(d) => d.fmt(f),
            Self::Agent(a) => write!(f, "agent{a}"),
        }
    }
}

impl std::str::FromStr for Target {
    type Err = ControlError;

    fn from_str(s: &str) -> Result<Self, ControlError> {
        let bad = || ControlError::BadName(s.to_owned());
        let (agent, device) = match s.split_once('/') {
            Some((agent, device)) => (agent, Some(device)),
            None => (s, None),
        };
        let agent: u64 =
            agent.strip_prefix("agent").and_then(|n| n.parse().ok()).ok_or_else(bad)?;
        match device {
            None => Ok(Self::Agent(agent)),
            Some(d) => {
                let index = d.strip_prefix("gpu").and_then(|n| n.parse().ok()).ok_or_else(bad)?;
                Ok(Self::Device(DeviceId { agent, index }))
            }
        }
    }
}

impl FarmHandle {
    /// Every connected device with its state and the shards it holds now.
    pub async fn status(&self) -> Result<FarmStatus, ControlError> {
        let mut devices = self.devices().await.map_err(|_| ControlError::Shutdown)?;
        let in_flight = self
            .inner
            .scheduler
            .send(InFlightByDevice)
            .await
            .map_err(|_| ControlError::Shutdown)?;
        for d in &mut devices {
            let id = DeviceId { agent: d.agent_id, index: d.index };
            d.shards_in_flight = in_flight.get(&id).copied().unwrap_or(0);
        }
        Ok(FarmStatus {
            listen: self.local_addr().to_string(),
            fingerprint: self.fingerprint().to_owned(),
            devices,
        })
    }

    /// Drains `target` (`drain`) or resumes it: a drained device finishes the shards it holds, its leaves
    /// accepted, and gets no new one until resumed. Answers the devices it applied to.
    pub async fn set_drained(
        &self,
        target: Target,
        drain: bool,
    ) -> Result<Vec<DeviceId>, ControlError> {
        self.inner
            .registry
            .send(OperatorDrain { target, drain })
            .await
            .map_err(|_| ControlError::Shutdown)?
            .map_err(ControlError::NotFound)
    }

    /// What the registry knows of `device`, which must be connected.
    async fn connected(&self, device: DeviceId) -> Result<DeviceLookup, ControlError> {
        self.inner
            .registry
            .send(Lookup { device })
            .await
            .map_err(|_| ControlError::Shutdown)?
            .ok_or_else(|| ControlError::NotFound(format!("{device} is not connected")))
    }

    /// Quarantines `device` on the operator's word: it gets no more shards, and the answers of those it
    /// holds are not accepted (their rows are computed elsewhere). Lifted by [`FarmHandle::readmit`].
    pub async fn quarantine(&self, device: DeviceId, reason: &str) -> Result<(), ControlError> {
        let found = self.connected(device).await?;
        if let Some(why) = found.quarantine_reason {
            return Err(ControlError::Conflict(format!("{device} is already quarantined: {why}")));
        }
        self.inner
            .registry
            .send(Quarantine {
                device,
                reason: format!("{} {reason}", super::probation::OPERATOR_REASON_PREFIX),
            })
            .await
            .map_err(|_| ControlError::Shutdown)
    }

    /// Lifts `device`'s quarantine once it passed the known-answer self-test ([`self_test`]); refuses with
    /// the test's reason otherwise, and the device stays quarantined.
    pub async fn readmit(&self, device: DeviceId) -> Result<SelfTestReport, ControlError> {
        let found = self.connected(device).await?;
        if found.quarantine_reason.is_none() {
            return Err(ControlError::Conflict(format!("{device} is not quarantined")));
        }
        let report = self_test::run(&found.conn, &found.advert)
            .await
            .map_err(|reason| ControlError::SelfTestFailed { device, reason })?;
        tracing::info!(%device, seed = %report.seed, "self-test passed");
        self.inner
            .registry
            .send(Readmit { device })
            .await
            .map_err(|_| ControlError::Shutdown)?
            .map_err(ControlError::Conflict)?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_as_status_prints_them() {
        let d: Target = "agent3/gpu1".parse().expect("device");
        assert_eq!(d, Target::Device(DeviceId { agent: 3, index: 1 }));
        assert_eq!(d.to_string(), "agent3/gpu1");
        assert_eq!("agent12".parse::<Target>().expect("agent"), Target::Agent(12));
        for bad in ["", "agent", "gpu0", "agent1/", "agent1/gpu", "agentx/gpu0", "node1/gpu0"] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }
}
