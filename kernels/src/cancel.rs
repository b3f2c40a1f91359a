//! Cancelling a shard in flight: the caller (the agent, told by the coordinator that a shard is superseded)
//! sets a [`CancelToken`], and a backend that can stop early ([`crate::Backend::run_shard_cancellable`])
//! answers [`crate::BackendError::Cancelled`] instead of finishing. Plain `std` (an atomic flag, a mutex and a
//! condition variable), so that a backend's worker thread can wait on it without an async runtime, and poll
//! it in a busy loop for the price of one load ([`CancelToken::is_cancelled`]).

use std::{
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// A one-way flag: once cancelled, cancelled for ever. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct CancelToken {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The flag itself.
    cancelled: AtomicBool,
    /// Held by a sleeper from its check of the flag to its wait, and by [`CancelToken::cancel`] to notify,
    /// so that a cancel never falls between the two.
    lock: Mutex<()>,
    /// Notified once, when cancelled.
    changed: Condvar,
}

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels: every [`CancelToken::sleep`] in progress returns, and every later check sees it.
    pub fn cancel(&self) {
        let inner = &*self.inner;
        inner.cancelled.store(true, Ordering::Release);
        let _guard = inner.lock.lock().unwrap_or_else(PoisonError::into_inner);
        inner.changed.notify_all();
    }

    /// Whether [`CancelToken::cancel`] was called: one atomic load, cheap enough to poll while spinning.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
    }

    /// Blocks the calling thread for `duration` unless cancelled first; answers whether it was cancelled
    /// (`true`: it returned early, or the token was cancelled already).
    pub fn sleep(&self, duration: Duration) -> bool {
        let inner = &*self.inner;
        let deadline = Instant::now().checked_add(duration);
        let mut guard = inner.lock.lock().unwrap_or_else(PoisonError::into_inner);
        while !self.is_cancelled() {
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::MAX, // a duration past the end of time: wait for the cancel
            };
            if left.is_zero() {
                return false;
            }
            guard = inner
                .changed
                .wait_timeout(guard, left)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleep_ends_at_its_time_or_at_the_cancel() {
        let token = CancelToken::new();
        assert!(!token.is_cancelled());
        assert!(!token.sleep(Duration::from_millis(1)), "not cancelled: slept the whole time");
        let sleeper = {
            let token = token.clone();
            std::thread::spawn(move || token.sleep(Duration::from_secs(3600)))
        };
        token.cancel();
        assert!(sleeper.join().expect("sleeper"), "woken by the cancel, not by its hour");
        assert!(token.is_cancelled());
        assert!(token.sleep(Duration::from_secs(3600)), "cancelled already: returns at once");
    }
}
