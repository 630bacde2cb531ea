//! Timestamps: RFC 3339 for JSON, short relative ages for tables.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

/// RFC 3339 (UTC) for a Unix time in milliseconds; `None` for 0 (never).
pub fn rfc3339_ms(unix_ms: i64) -> Option<String> {
    if unix_ms == 0 {
        return None;
    }
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
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
        assert_eq!(age(1_000, 61_000), "1m ago");
        assert_eq!(age(1_000, 1_500), "0s ago");
        assert_eq!(age(0, 5), "never");
    }
}
