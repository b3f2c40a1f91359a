//! Which of the agent's devices are quarantined, and why, and each device's counters (watchdog firings,
//! worker restarts, Xid errors) and NVML readings: written by the device actors and the NVML samplers, read by
//! every session (to tell the coordinator) and by the metrics.

use crate::metrics as m;
use cpc_common::wire::{DeviceReport, MAX_QUARANTINE_REASON_BYTES};
use cpc_kernels::gpu::GpuTelemetry;
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};
use tokio::sync::watch;

/// Which of the agent's devices are quarantined, and why. The device actors write it; the sessions read it
/// (to tell the coordinator, on every connection) and so do the metrics. Clones share it.
#[derive(Debug, Clone)]
pub struct Health {
    tx: Arc<watch::Sender<BTreeMap<u32, String>>>,
    /// Each started device's counters and last NVML readings.
    reports: Arc<Mutex<BTreeMap<u32, DeviceReport>>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(BTreeMap::new())),
            reports: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }
}

impl Health {
    /// Quarantines device `index` (the first reason stays); answers whether it was healthy until now.
    pub fn quarantine(&self, index: u32, reason: &str) -> bool {
        let newly = self.tx.send_if_modified(|map| {
            if map.contains_key(&index) {
                return false;
            }
            map.insert(index, truncate_reason(reason));
            true
        });
        if newly {
            m::devices_quarantined(self.tx.borrow().len());
        }
        newly
    }

    /// Why device `index` is quarantined, if it is.
    pub fn reason(&self, index: u32) -> Option<String> {
        self.tx.borrow().get(&index).cloned()
    }

    /// Every quarantined device with its reason.
    pub fn quarantined(&self) -> BTreeMap<u32, String> {
        self.tx.borrow().clone()
    }

    /// Starts counting for device `index` (all counters 0): it is reported from now on.
    pub fn register(&self, index: u32) {
        self.update(index, |_| ());
    }

    /// Counts a backend call of device `index` that outlived the watchdog.
    pub fn watchdog_fired(&self, index: u32) {
        self.update(index, |r| r.watchdog_firings += 1);
    }

    /// Counts a restart of device `index`'s worker; answers how many there were, this one included.
    pub fn restarted(&self, index: u32) -> u64 {
        let mut count = 0;
        self.update(index, |r| {
            r.restarts += 1;
            count = r.restarts;
        });
        count
    }

    /// Restarts of device `index`'s worker so far.
    pub fn restarts(&self, index: u32) -> u64 {
        self.reports.lock().map_or(0, |r| r.get(&index).map_or(0, |r| r.restarts))
    }

    /// Records an NVML sample of device `index`: UUID, temperature, power, Xid errors.
    pub fn sampled(&self, index: u32, t: &GpuTelemetry) {
        self.update(index, |r| {
            r.uuid = Some(t.uuid.clone());
            r.temperature_celsius = t.temperature_celsius;
            r.power_watts = t.power_watts;
            r.xid_errors = t.xid_errors_total;
            r.last_xid = t.last_xid;
        });
    }

    /// Every registered device's report, by index.
    pub fn reports(&self) -> BTreeMap<u32, DeviceReport> {
        self.reports.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn update(&self, index: u32, f: impl FnOnce(&mut DeviceReport)) {
        if let Ok(mut reports) = self.reports.lock() {
            f(reports
                .entry(index)
                .or_insert_with(|| DeviceReport { device: index, ..Default::default() }));
        }
    }

    /// Changes to come (the current map counts as unseen).
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<u32, String>> {
        let mut rx = self.tx.subscribe();
        rx.mark_changed();
        rx
    }
}

/// `reason` cut to [`MAX_QUARANTINE_REASON_BYTES`] at a character boundary.
fn truncate_reason(reason: &str) -> String {
    if reason.len() <= MAX_QUARANTINE_REASON_BYTES {
        return reason.to_owned();
    }
    let mut end = MAX_QUARANTINE_REASON_BYTES - 3;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &reason[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_QUARANTINE_REASON_BYTES);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= MAX_QUARANTINE_REASON_BYTES && cut.ends_with("..."), "{}", cut.len());
        assert_eq!(truncate_reason("short"), "short");
    }
}
