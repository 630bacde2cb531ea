//! Waiting for convergence without fixed sleeps.
//!
//! The project forbids sleeping a fixed time and hoping the system has converged: a test polls
//! a condition with a deadline instead, and on timeout reports the last reason it was not met.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Calls `check` every `interval` until it returns `Ok`, or until `timeout` has passed.
///
/// `check` always runs at least once. On timeout the last error is returned, with the time
/// waited added as context.
pub fn eventually<T>(
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        let error = match check() {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(error).with_context(|| {
                format!(
                    "condition still unmet after {:.1?}",
                    now.duration_since(start)
                )
            });
        }
        thread::sleep(interval.min(deadline - now));
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn returns_first_success() {
        let mut calls = 0;
        let value = eventually(Duration::from_secs(5), Duration::from_millis(1), || {
            calls += 1;
            anyhow::ensure!(calls >= 3, "only {calls} calls");
            Ok(calls)
        });
        assert_eq!(value.ok(), Some(3));
    }

    #[test]
    fn returns_last_error_on_timeout() {
        let mut calls = 0;
        let result: anyhow::Result<()> =
            eventually(Duration::from_millis(30), Duration::from_millis(5), || {
                calls += 1;
                anyhow::bail!("attempt {calls}")
            });
        let message = format!("{:#}", result.expect_err("must time out"));
        assert!(message.contains(&format!("attempt {calls}")), "{message}");
        assert!(message.contains("still unmet"), "{message}");
    }
}
