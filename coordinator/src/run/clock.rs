//! Time as the cycle and the runner read it: the wall clock when serving, tokio's clock in
//! tests (where `tokio::time::pause` makes hours of deadlines pass in microseconds).

use ouroboros_shared::time_fmt::now_unix_ms;

/// Unix time in milliseconds.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The system's wall clock (maintenance windows and stored times are wall-clock times).
#[derive(Debug, Default, Clone, Copy)]
pub struct WallClock;

impl Clock for WallClock {
    fn now_ms(&self) -> i64 {
        now_unix_ms()
    }
}

/// Unix time that moves with tokio's clock from a start time: paused, it moves only when
/// tokio's time does (by `advance`, or by the runtime skipping to the next timer).
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base_ms: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// Reads `base_ms` now.
    pub fn starting_at(base_ms: i64) -> Self {
        Self {
            base_ms,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        self.base_ms + self.start.elapsed().as_millis() as i64
    }
}
