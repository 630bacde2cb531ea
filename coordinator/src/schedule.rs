//! When check cycles run: every `INTERVAL` seconds, or on a `CRON` schedule (standard five
//! fields, or six with seconds first). The next run is always computed from the end of the
//! previous one, so ticks missed while a cycle ran (or while the coordinator was down)
//! collapse into one run, and cycles never overlap.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Default `INTERVAL`, as in Ouroboros.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

/// A validated schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    Interval(Duration),
    Cron(Box<cron::Schedule>),
}

impl Schedule {
    /// `CRON` wins over `INTERVAL` when given, as in Ouroboros.
    pub fn from_options(interval_secs: u64, cron: Option<&str>) -> Result<Self, String> {
        match cron.map(str::trim).filter(|c| !c.is_empty()) {
            Some(expr) => parse_cron(expr).map(|s| Self::Cron(Box::new(s))),
            None if interval_secs == 0 => Err("--interval must be at least 1 second".into()),
            None => Ok(Self::Interval(Duration::from_secs(interval_secs))),
        }
    }

    /// In words, for messages: "checks every 300 s" or "checks on cron 0 4 * * *".
    pub fn describe(&self) -> String {
        match self {
            Self::Interval(every) => format!("checks every {} s", every.as_secs()),
            Self::Cron(schedule) => format!("checks on cron {schedule}"),
        }
    }

    /// The first run after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Interval(every) => chrono::Duration::from_std(*every)
                .ok()
                .and_then(|d| now.checked_add_signed(d)),
            Self::Cron(schedule) => schedule.after(&now).next(),
        }
    }

    /// How long to wait from `now` for the next run.
    pub fn wait_from(&self, now: DateTime<Utc>) -> Option<Duration> {
        self.next_after(now)
            .and_then(|next| (next - now).to_std().ok())
    }
}

/// Five fields (minute first) get a seconds field of 0; six fields are taken as they are.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    let fields = expr.split_whitespace().count();
    let full = match fields {
        5 => format!("0 {expr}"),
        6 => expr.to_owned(),
        n => {
            return Err(format!(
                "{expr:?} has {n} fields: use 5 (minute hour day month weekday) or 6 (seconds first)"
            ));
        }
    };
    full.parse::<cron::Schedule>().map_err(|e| {
        // The crate's message spans lines (the expression, a caret, the reason): keep the
        // reason, on one line.
        let reason = e
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "^" && *l != full)
            .collect::<Vec<_>>()
            .join(" ");
        format!("{expr:?} is not a cron expression: {reason}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, h, m, s).unwrap()
    }

    #[test]
    fn standard_five_field_cron_runs_on_the_minute() {
        let s = Schedule::from_options(300, Some("*/5 * * * *")).unwrap();
        assert_eq!(s.next_after(at(10, 1, 30)), Some(at(10, 5, 0)));
        assert_eq!(s.next_after(at(10, 5, 0)), Some(at(10, 10, 0)));
    }

    #[test]
    fn six_fields_have_seconds_first() {
        let s = Schedule::from_options(300, Some("30 0 3 * * *")).unwrap();
        assert_eq!(s.next_after(at(2, 0, 0)), Some(at(3, 0, 30)));
    }

    #[test]
    fn cron_wins_over_interval_and_bad_values_are_refused() {
        assert!(matches!(
            Schedule::from_options(10, Some("0 4 * * *")),
            Ok(Schedule::Cron(_))
        ));
        assert!(matches!(
            Schedule::from_options(10, Some("  ")),
            Ok(Schedule::Interval(d)) if d == Duration::from_secs(10)
        ));
        for bad in [
            "* * * *",
            "61 * * * *",
            "not cron at all x",
            "* * * * * * * *",
        ] {
            let e = Schedule::from_options(10, Some(bad)).unwrap_err();
            assert!(e.contains(bad), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        assert!(Schedule::from_options(0, None).is_err());
    }

    #[test]
    fn missed_ticks_collapse_into_one_run() {
        // A cycle that ran from 10:00 to 10:17 with a 5-minute interval: the next run is one
        // interval after it ended, not three catch-up runs.
        let s = Schedule::Interval(Duration::from_secs(300));
        assert_eq!(s.next_after(at(10, 17, 0)), Some(at(10, 22, 0)));
        let c = Schedule::from_options(0, Some("*/5 * * * *")).unwrap();
        assert_eq!(c.next_after(at(10, 17, 0)), Some(at(10, 20, 0)));
        assert_eq!(c.wait_from(at(10, 17, 0)), Some(Duration::from_secs(180)));
    }
}
