//! Cancelling a shard in flight: the caller (the agent, told by the coordinator that a shard is superseded)
//! sets a [`CancelToken`], and a backend that can stop early ([`crate::Backend::run_shard_cancellable`])
//! answers [`crate::BackendError::Cancelled`] instead of finishing. Plain `std` (a mutex and a condition
//! variable), so that a backend's worker thread can wait on it without an async runtime.

use std::{
    sync::{Arc, Condvar, Mutex, PoisonError},
    time::{Duration, Instant},
};

/// A one-way flag: once cancelled, cancelled for ever. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct CancelToken {
    inner: Arc<(Mutex<bool>, Condvar)>,
}

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels: every [`CancelToken::sleep`] in progress returns, and every later check sees it.
    pub fn cancel(&self) {
        let (flag, changed) = &*self.inner;
        *flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
        changed.notify_all();
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        *self.inner.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks the calling thread for `duration` unless cancelled first; answers whether it was cancelled
    /// (`true`: it returned early, or the token was cancelled already).
    pub fn sleep(&self, duration: Duration) -> bool {
        let (flag, changed) = &*self.inner;
        let deadline = Instant::now().checked_add(duration);
        let mut cancelled = flag.lock().unwrap_or_else(PoisonError::into_inner);
        while !*cancelled {
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::MAX, // a duration past the end of time: wait for the cancel
            };
            if left.is_zero() {
                return false;
            }
            cancelled = changed
                .wait_timeout(cancelled, left)
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
