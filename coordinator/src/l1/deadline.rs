//! The deadline of each request to one node, following how fast that node answers.
//!
//! A fixed short deadline finds a hung node quickly, but it turns a node that is merely slow (busy with a
//! burst of submissions, or starved of CPU) into an unreachable one: every request times out, every caller
//! re-reads its state, and the extra requests slow the node down further. So the deadline follows the node
//! the way TCP's retransmission timeout follows a path: a smoothed answer time and its variation give
//! `srtt + 4·rttvar`, and at least `2·srtt` (a node that is steadily slow has little variation, and a
//! deadline just above its usual answer time would cut off every answer a little slower), never below a floor (which keeps a hung node that used to answer quickly found within
//! the floor) and never above a ceiling; a timeout doubles the deadline up to the ceiling, and the next
//! answer brings it back to what the answers say.

use std::{sync::Mutex, time::Duration};

/// An adaptive request deadline (shared by every caller of one node).
#[derive(Debug)]
pub struct AdaptiveDeadline {
    floor: Duration,
    ceiling: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Smoothed answer time, seconds (`None` before the first answer).
    srtt: Option<f64>,
    /// Smoothed variation of the answer time, seconds.
    rttvar: f64,
    /// The deadline after timeouts with no answer since (zero: none).
    backed_off: Duration,
}

impl AdaptiveDeadline {
    /// A deadline between `floor` and `ceiling` (`floor == ceiling`: a fixed one).
    pub fn new(floor: Duration, ceiling: Duration) -> Self {
        Self { floor, ceiling: ceiling.max(floor), state: Mutex::new(State::default()) }
    }

    /// The deadline for the next request.
    pub fn current(&self) -> Duration {
        let Ok(state) = self.state.lock() else { return self.ceiling };
        let from_answers = state.srtt.map_or(Duration::ZERO, |srtt| {
            Duration::from_secs_f64((srtt + 4.0 * state.rttvar).max(2.0 * srtt))
        });
        from_answers.max(state.backed_off).clamp(self.floor, self.ceiling)
    }

    /// A request was answered after `took`.
    pub fn answered(&self, took: Duration) {
        let Ok(mut state) = self.state.lock() else { return };
        let sample = took.as_secs_f64();
        // RFC 6298's gains: 1/8 for the mean, 1/4 for the variation.
        match state.srtt {
            None => {
                state.srtt = Some(sample);
                state.rttvar = sample / 2.0;
            }
            Some(srtt) => {
                state.rttvar = 0.75 * state.rttvar + 0.25 * (srtt - sample).abs();
                state.srtt = Some(0.875 * srtt + 0.125 * sample);
            }
        }
        state.backed_off = Duration::ZERO;
    }

    /// A request ran out of its deadline: the next one gets twice as long (up to the ceiling).
    pub fn timed_out(&self) {
        let doubled = self.current().saturating_mul(2).min(self.ceiling);
        if let Ok(mut state) = self.state.lock() {
            state.backed_off = doubled;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_quick_node_keeps_the_floor_so_a_hang_is_found_within_it() {
        let d = AdaptiveDeadline::new(MS(1000), MS(5000));
        assert_eq!(d.current(), MS(1000));
        for _ in 0..50 {
            d.answered(MS(5));
        }
        assert_eq!(d.current(), MS(1000));
    }

    #[test]
    fn a_slow_node_gets_a_deadline_that_covers_its_answers() {
        let d = AdaptiveDeadline::new(MS(1000), MS(5000));
        for _ in 0..20 {
            d.answered(MS(1500));
        }
        // Steady answers: little variation, and still room for one a good deal slower than usual.
        assert_eq!(d.current(), MS(3000));
    }

    #[test]
    fn timeouts_double_up_to_the_ceiling_and_an_answer_undoes_them() {
        let d = AdaptiveDeadline::new(MS(1000), MS(5000));
        d.timed_out();
        assert_eq!(d.current(), MS(2000));
        d.timed_out();
        assert_eq!(d.current(), MS(4000));
        d.timed_out();
        assert_eq!(d.current(), MS(5000));
        d.answered(MS(10));
        assert_eq!(d.current(), MS(1000));
    }

    #[test]
    fn a_fixed_deadline_stays_fixed() {
        let d = AdaptiveDeadline::new(MS(30_000), MS(30_000));
        d.timed_out();
        d.answered(MS(29_000));
        assert_eq!(d.current(), MS(30_000));
    }
}
