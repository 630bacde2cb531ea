//! Capped exponential backoff with jitter for reconnecting to the coordinator, so that a fleet
//! of agents does not reconnect in lockstep after a coordinator restart.

use std::time::Duration;

/// An agent's first delay before reconnecting to the coordinator.
pub const RECONNECT_INITIAL: Duration = Duration::from_millis(500);
/// An agent's longest delay before reconnecting to the coordinator.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Delays of `initial * 2^n`, capped at `max`, each drawn uniformly from its upper half.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay (before jitter).
    fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay, given a random number in [0, 1).
    pub fn next_with(&mut self, random: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(random.clamp(0.0, 1.0))
    }

    /// The next delay, with random jitter.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(fastrand::f64())
    }

    /// Back to the initial delay (after a connection that worked).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_doubles_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(4));
        let highs: Vec<_> = (0..6).map(|_| b.next_with(1.0)).collect();
        assert_eq!(
            highs,
            [500, 1000, 2000, 4000, 4000, 4000].map(Duration::from_millis)
        );
        b.reset();
        assert_eq!(b.next_with(0.0), Duration::from_millis(250));
    }

    #[test]
    fn jitter_stays_within_the_upper_half() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..100 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
    }
}
