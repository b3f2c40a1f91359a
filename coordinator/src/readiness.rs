//! What the coordinator's `/readyz` means: "this process can mine now".
//!
//! Kubernetes and load balancers act on `/readyz`, so it must not answer 200 while mining cannot
//! happen. Each part of the coordinator reports the one condition it knows (the L1 node pool whether a
//! node answers, the submitters whether their identity can pay for its next submission, the farm's
//! registry how many devices are usable), and [`Readiness::check`] answers whether every condition the
//! command asked for holds, or which do not. A condition nobody asked for (no L1 for `serve`, no device
//! in local compute mode) is not checked; an identity is unfunded only once a balance check said so.

use std::{
    collections::BTreeSet,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

/// The conditions of readiness and their current state (shared behind an `Arc`).
#[derive(Debug, Default)]
pub struct Readiness {
    device_required: AtomicBool,
    usable_devices: AtomicUsize,
    l1_required: AtomicBool,
    l1_reachable: AtomicBool,
    /// Identities whose last balance check found them unable to pay for a submission.
    unfunded: Mutex<BTreeSet<String>>,
}

impl Readiness {
    /// No condition yet: ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Readiness needs at least one usable (connected, not quarantined) device.
    pub fn require_device(&self) {
        self.device_required.store(true, Ordering::Relaxed);
    }

    /// The farm's registry: how many devices are usable now.
    pub fn set_usable_devices(&self, count: usize) {
        self.usable_devices.store(count, Ordering::Relaxed);
    }

    /// Whether a device is required (farm mode) and none is usable now: a block task superseded or
    /// failed meanwhile was missed for want of a device.
    pub fn lacks_device(&self) -> bool {
        self.device_required.load(Ordering::Relaxed)
            && self.usable_devices.load(Ordering::Relaxed) == 0
    }

    /// Readiness needs an L1 node that answers.
    pub fn require_l1(&self) {
        self.l1_required.store(true, Ordering::Relaxed);
    }

    /// The node pool: whether some node answered its last call.
    pub fn set_l1_reachable(&self, reachable: bool) {
        self.l1_reachable.store(reachable, Ordering::Relaxed);
    }

    /// A submitter: whether `identity` can pay for its next submission.
    pub fn set_funded(&self, identity: &str, funded: bool) {
        if let Ok(mut unfunded) = self.unfunded.lock() {
            if funded {
                unfunded.remove(identity);
            } else {
                unfunded.insert(identity.to_owned());
            }
        }
    }

    /// `Ok` when every required condition holds, else what is missing, for the `/readyz` body.
    pub fn check(&self) -> Result<(), String> {
        let mut missing = Vec::new();
        if self.l1_required.load(Ordering::Relaxed) && !self.l1_reachable.load(Ordering::Relaxed) {
            missing.push("no L1 node answers".to_owned());
        }
        if let Ok(unfunded) = self.unfunded.lock()
            && !unfunded.is_empty()
        {
            let names: Vec<&str> = unfunded.iter().map(String::as_str).collect();
            missing.push(format!("identities not funded: {}", names.join(", ")));
        }
        if self.device_required.load(Ordering::Relaxed)
            && self.usable_devices.load(Ordering::Relaxed) == 0
        {
            missing.push("no usable device connected".to_owned());
        }
        if missing.is_empty() { Ok(()) } else { Err(missing.join("; ")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_required_condition_holds() {
        let r = Readiness::new();
        assert_eq!(r.check(), Ok(()), "nothing required: ready");
        r.require_l1();
        r.require_device();
        r.set_funded("w1", false);
        r.set_funded("w2", false);
        let reason = r.check().expect_err("nothing holds yet");
        assert!(reason.contains("L1") && reason.contains("w1, w2") && reason.contains("device"));
        r.set_l1_reachable(true);
        r.set_usable_devices(1);
        r.set_funded("w1", true);
        assert_eq!(r.check(), Err("identities not funded: w2".to_owned()));
        r.set_funded("w2", true);
        assert_eq!(r.check(), Ok(()));
        r.set_funded("w1", false);
        assert!(r.check().is_err(), "an identity that ran dry makes it unready");
        r.set_funded("w1", true);
        r.set_l1_reachable(false);
        assert_eq!(r.check(), Err("no L1 node answers".to_owned()));
    }
}
