//! Which of the agent's devices are quarantined, and why: written by the device actors, read by every session
//! (to tell the coordinator) and by the metrics.

use crate::metrics as m;
use cpc_common::wire::MAX_QUARANTINE_REASON_BYTES;
use std::{collections::BTreeMap, sync::Arc};
use tokio::sync::watch;

/// Which of the agent's devices are quarantined, and why. The device actors write it; the sessions read it
/// (to tell the coordinator, on every connection) and so do the metrics. Clones share it.
#[derive(Debug, Clone)]
pub struct Health {
    tx: Arc<watch::Sender<BTreeMap<u32, String>>>,
}

impl Default for Health {
    fn default() -> Self {
        Self { tx: Arc::new(watch::Sender::new(BTreeMap::new())) }
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
