//! Registry throttling: a `429` holds back every probe of its registry until `Retry-After`
//! (or an exponential backoff when it names no time).

use std::time::Duration;

use tokio::time::Instant;

use super::{ProbeError, RegistryClient};

/// Longest throttle honoured from one `Retry-After` (a day), so that no answer overflows time.
const MAX_THROTTLE: Duration = Duration::from_secs(24 * 3600);
pub(super) struct Throttle {
    pub(super) until: Instant,
    /// `429`s in a row, for the backoff when the registry names no time.
    pub(super) strikes: u32,
}

impl RegistryClient {
    /// Waits while `registry` is throttled for at most `max_retry_after`; a longer throttle
    /// fails at once, without a request.
    pub(super) async fn wait_throttle(&self, registry: &str, name: &str) -> Result<(), ProbeError> {
        loop {
            let until = self
                .throttles
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(registry)
                .map(|t| t.until);
            let now = Instant::now();
            match until {
                Some(until) if until > now => {
                    let wait = until - now;
                    if wait > self.config.max_retry_after {
                        return Err(ProbeError::RateLimited {
                            image: name.to_owned(),
                            retry_after: Some(
                                Duration::from_secs(wait.as_secs_f64().ceil() as u64),
                            ),
                        });
                    }
                    tokio::time::sleep_until(until).await;
                }
                _ => return Ok(()),
            }
        }
    }

    /// A `429` from `registry`: throttles it for `retry_after`, or for 1, 2, 4 … 64 s after
    /// each 429 in a row when the registry named no time. Returns the wait.
    pub(super) fn throttle(&self, registry: &str, retry_after: Option<Duration>) -> Duration {
        let mut throttles = self.throttles.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let t = throttles.entry(registry.to_owned()).or_insert(Throttle {
            until: now,
            strikes: 0,
        });
        // One strike per throttle, not per answer: the requests in flight when the registry
        // started refusing all come back with a 429 at about the same time.
        if t.until <= now || t.strikes == 0 {
            t.strikes = t.strikes.saturating_add(1);
        }
        let wait = retry_after
            .unwrap_or_else(|| Duration::from_secs(1 << (t.strikes - 1).min(6)))
            .min(MAX_THROTTLE);
        t.until = t.until.max(now + wait);
        wait
    }

    pub(super) fn throttled(&self, registry: &str) -> bool {
        self.throttles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(registry)
            .is_some_and(|t| t.until > Instant::now())
    }

    /// An answer other than 429: the registry's backoff starts over.
    pub(super) fn unthrottle(&self, registry: &str) {
        let mut throttles = self.throttles.lock().unwrap_or_else(|p| p.into_inner());
        if throttles
            .get(registry)
            .is_some_and(|t| t.until <= Instant::now())
        {
            throttles.remove(registry);
        }
    }
}

/// `Retry-After`: seconds, or an HTTP date.
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a date in the past: no wait"
        );
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(90));
        let wait = parse_retry_after(&later).unwrap();
        assert!(
            wait > Duration::from_secs(80) && wait <= Duration::from_secs(90),
            "{wait:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
