//! The process's life under a service manager: systemd's readiness and watchdog notifications
//! (`Type=notify`, `WatchdogSec=` in `deploy/systemd/`), and the memory settings both binaries start
//! with. Behind the `service` feature, so the protocol itself stays free of I/O. Outside systemd (no
//! `NOTIFY_SOCKET`, no `WATCHDOG_USEC`) the notifications do nothing, so the binaries call them
//! unconditionally.

use sd_notify::NotifyState;
use std::time::Duration;

/// Turns transparent huge pages off for this process and the processes it starts (Linux; elsewhere it
/// does nothing), as the binaries' first step.
///
/// The binaries allocate with mimalloc, which asks for huge pages on the memory it reserves: each
/// thread's first small allocations then fault in, and zero, a 2 MiB page. An agent of a hundred
/// simulated devices (a thread each) held 43 MiB instead of 17, and in the first blocks of a
/// 100-agent farm bench, whose agents all did so at once, a block's results took up to 250 ms instead of
/// 6. Where the kernel gives huge pages only on request (`madvise`, the common default), none of our
/// memory was in them before mimalloc either. This is what mimalloc's own `MIMALLOC_ALLOW_THP=0` does;
/// that variable is read before `main` runs, so it cannot be set from here.
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl(PR_SET_THP_DISABLE) takes plain integers and only sets a flag on this process's
        // memory map (inherited across fork and exec); it touches no memory of ours.
        let set = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if set != 0 {
            tracing::debug!(
                "transparent huge pages stay on: prctl failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

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
