//! Timestamps: RFC 3339 for JSON, short relative ages for tables.
//!
//! One date library in our own code: `chrono` (the cron schedule and time zones need it). The
//! `time` crate is in the tree only because rcgen and x509-parser speak it; it is used at that
//! boundary alone ([`crate::pki::Validity`]).

use chrono::{DateTime, SecondsFormat, Utc};

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// RFC 3339 (UTC) for a Unix time in milliseconds; `None` for 0 (never).
pub fn rfc3339_ms(unix_ms: i64) -> Option<String> {
    if unix_ms == 0 {
        return None;
    }
    DateTime::<Utc>::from_timestamp_millis(unix_ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// RFC 3339 (UTC) for a Unix time in seconds; `None` for 0.
pub fn rfc3339_secs(unix: i64) -> Option<String> {
    rfc3339_ms(unix.saturating_mul(1000))
}

/// "5s ago", "3m ago", "2h ago", "4d ago"; "never" for 0.
pub fn age(unix_ms: i64, now_unix_ms: i64) -> String {
    if unix_ms == 0 {
        return "never".to_owned();
    }
    let secs = (now_unix_ms - unix_ms).max(0) / 1000;
    match secs {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(rfc3339_ms(0), None);
        assert_eq!(rfc3339_ms(1_000).as_deref(), Some("1970-01-01T00:00:01Z"));
        assert_eq!(
            rfc3339_ms(1_500).as_deref(),
            Some("1970-01-01T00:00:01.500Z")
        );
        assert_eq!(
            rfc3339_secs(86_400).as_deref(),
            Some("1970-01-02T00:00:00Z")
        );
        assert_eq!(age(1_000, 61_000), "1m ago");
        assert_eq!(age(1_000, 1_500), "0s ago");
        assert_eq!(age(0, 5), "never");
    }
}
