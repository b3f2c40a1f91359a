//! The process's life under a service manager: systemd's readiness and watchdog notifications
//! (`Type=notify`, `WatchdogSec=` in `deploy/systemd/`). Behind the `service` feature, so the protocol
//! itself stays free of I/O. Outside systemd (no `NOTIFY_SOCKET`, no `WATCHDOG_USEC`) every call does
//! nothing, so the binaries call them unconditionally.

use sd_notify::NotifyState;
use std::time::Duration;

/// Tells systemd the service is up (`READY=1`).
pub fn notify_ready() {
    notify(NotifyState::Ready);
}

/// Tells systemd the service is stopping (`STOPPING=1`), so a slow graceful stop is not a hang.
pub fn notify_stopping() {
    notify(NotifyState::Stopping);
}

fn notify(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// When systemd's watchdog is on for this process, pings it (`WATCHDOG=1`) at half its interval from a
/// task on the current tokio runtime, so a process whose runtime stops making progress is restarted.
pub fn spawn_watchdog() {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) {
        return;
    }
    let every = Duration::from_micros(usec / 2).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            notify(NotifyState::Watchdog);
        }
    });
}
