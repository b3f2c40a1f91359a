//! How much of a node one coordinator may use: a cap on requests in flight, and a shared pause when the node
//! says it is overloaded (HTTP 429, honouring `Retry-After`). Every caller of one [`super::NodeClient`]
//! (the chain follower and every identity's submitter) shares its budget, so an overloaded node sees the
//! whole coordinator back off at once instead of hundreds of submitters retrying on their own.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Requests in flight to one node at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// Pause after a 429 without a `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Longest pause a `Retry-After` may ask for.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The shared budget of one node.
#[derive(Debug)]
pub struct RequestBudget {
    in_flight: Semaphore,
    paused_until: Mutex<Option<Instant>>,
}

impl Default for RequestBudget {
    fn default() -> Self {
        Self { in_flight: Semaphore::new(MAX_IN_FLIGHT), paused_until: Mutex::new(None) }
    }
}

impl RequestBudget {
    /// Waits out a pause, then for a slot.
    pub async fn permit(&self) -> Option<SemaphorePermit<'_>> {
        loop {
            let until = self.paused_until.lock().ok().and_then(|p| *p);
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t.into()).await,
                _ => break,
            }
        }
        self.in_flight.acquire().await.ok()
    }

    /// The node answered 429: every caller pauses for `retry_after` (or [`DEFAULT_RETRY_AFTER`]).
    pub fn overloaded(&self, retry_after: Option<Duration>) {
        let pause = retry_after.unwrap_or(DEFAULT_RETRY_AFTER).min(MAX_RETRY_AFTER);
        let until = Instant::now() + pause;
        if let Ok(mut p) = self.paused_until.lock()
            && p.is_none_or(|t| t < until)
        {
            *p = Some(until);
        }
        metrics::counter!("cpcfarm_l1_throttled_total").increment(1);
    }

    /// Whether a pause is in force now.
    pub fn paused(&self) -> bool {
        self.paused_until.lock().ok().and_then(|p| *p).is_some_and(|t| t > Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_every_caller_for_its_retry_after() {
        let budget = RequestBudget::default();
        assert!(!budget.paused());
        budget.overloaded(Some(Duration::from_secs(2)));
        assert!(budget.paused());
        let start = tokio::time::Instant::now();
        let permit = budget.permit().await;
        assert!(permit.is_some());
        assert!(start.elapsed() >= Duration::from_secs(2));
        assert!(!budget.paused());
    }

    #[tokio::test]
    async fn at_most_max_in_flight_permits_at_once() {
        let budget = RequestBudget::default();
        let mut held = Vec::new();
        for _ in 0..MAX_IN_FLIGHT {
            held.push(budget.permit().await.expect("permit"));
        }
        assert!(budget.in_flight.try_acquire().is_err());
        drop(held);
        assert!(budget.in_flight.try_acquire().is_ok());
    }
}
