//! When check cycles run: every `INTERVAL` seconds, or on a `CRON` schedule (standard five
//! fields, or six with seconds first). The next run is always computed from the end of the
//! previous one, so ticks missed while a cycle ran (or while the coordinator was down)
//! collapse into one run, and cycles never overlap.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Default `INTERVAL`, as in Ouroboros.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
/// Longest `INTERVAL`: 30 days. A longer one is a typo, not a schedule.
pub const MAX_INTERVAL_SECS: u64 = 30 * 24 * 3600;

/// A validated schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    Interval(Duration),
    Cron(Box<cron::Schedule>),
}

impl Schedule {
    /// `CRON` wins over `INTERVAL` when given, as in Ouroboros. A cron schedule must fire
    /// after `now`. The error names the option.
    pub fn from_options(
        interval_secs: u64,
        cron: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Self, String> {
        match cron.map(str::trim).filter(|c| !c.is_empty()) {
            Some(expr) => {
                let schedule = parse_cron(expr).map_err(|e| format!("--cron: {e}"))?;
                if schedule.after(&now).next().is_none() {
                    return Err(format!(
                        "--cron: {expr:?} never fires (no date matches every field)"
                    ));
                }
                Ok(Self::Cron(Box::new(schedule)))
            }
            None if !(1..=MAX_INTERVAL_SECS).contains(&interval_secs) => Err(format!(
                "--interval: {interval_secs} is not a number of seconds from 1 to {MAX_INTERVAL_SECS} (30 days)"
            )),
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
        let s = Schedule::from_options(300, Some("*/5 * * * *"), at(0, 0, 0)).unwrap();
        assert_eq!(s.next_after(at(10, 1, 30)), Some(at(10, 5, 0)));
        assert_eq!(s.next_after(at(10, 5, 0)), Some(at(10, 10, 0)));
    }

    #[test]
    fn six_fields_have_seconds_first() {
        let s = Schedule::from_options(300, Some("30 0 3 * * *"), at(0, 0, 0)).unwrap();
        assert_eq!(s.next_after(at(2, 0, 0)), Some(at(3, 0, 30)));
    }

    #[test]
    fn cron_wins_over_interval_and_bad_values_are_refused() {
        assert!(matches!(
            Schedule::from_options(10, Some("0 4 * * *"), at(0, 0, 0)),
            Ok(Schedule::Cron(_))
        ));
        assert!(matches!(
            Schedule::from_options(10, Some("  "), at(0, 0, 0)),
            Ok(Schedule::Interval(d)) if d == Duration::from_secs(10)
        ));
        for bad in [
            "* * * *",
            "61 * * * *",
            "not cron at all x",
            "* * * * * * * *",
        ] {
            let e = Schedule::from_options(10, Some(bad), at(0, 0, 0)).unwrap_err();
            assert!(e.starts_with("--cron: "), "{e}");
            assert!(e.contains(bad), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn intervals_from_one_second_to_thirty_days() {
        let now = at(0, 0, 0);
        assert!(matches!(
            Schedule::from_options(MAX_INTERVAL_SECS, None, now),
            Ok(Schedule::Interval(d)) if d.as_secs() == MAX_INTERVAL_SECS
        ));
        // Past the maximum, the wait used to overflow and quietly become the 5-minute default.
        for bad in [0, MAX_INTERVAL_SECS + 1, 99_999_999_999_999_999, u64::MAX] {
            let e = Schedule::from_options(bad, None, now).unwrap_err();
            assert!(e.starts_with("--interval: "), "{e}");
            assert!(e.contains(&bad.to_string()), "{e}");
        }
        // Every accepted interval has a next run.
        let longest = Schedule::from_options(MAX_INTERVAL_SECS, None, now).unwrap();
        assert!(longest.next_after(now).is_some());
    }

    #[test]
    fn a_cron_schedule_that_never_fires_is_refused_at_once() {
        let now = at(0, 0, 0);
        // Dates no month has, with or without seconds, with or without a weekday: the
        // crate looks no further than the year 2100, so the check ends, and quickly.
        let started = std::time::Instant::now();
        for never in [
            "0 0 31 2 *",
            "0 0 30 2 *",
            "* * 31 4,6,9,11 *",
            "* * * 31 2 *",
            "0 0 30 2 Mon",
        ] {
            let e = Schedule::from_options(300, Some(never), now).unwrap_err();
            assert!(e.contains("never fires"), "{e}");
            assert!(e.contains(never), "{e}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        // Rare is not never: 29 February, Friday the 13th.
        let leap = Schedule::from_options(300, Some("0 0 29 2 *"), now).unwrap();
        assert_eq!(
            leap.next_after(now),
            Some(Utc.with_ymd_and_hms(2028, 2, 29, 0, 0, 0).unwrap())
        );
        assert!(Schedule::from_options(300, Some("0 0 13 * Fri"), now).is_ok());
    }

    #[test]
    fn missed_ticks_collapse_into_one_run() {
        // A cycle that ran from 10:00 to 10:17 with a 5-minute interval: the next run is one
        // interval after it ended, not three catch-up runs.
        let s = Schedule::Interval(Duration::from_secs(300));
        assert_eq!(s.next_after(at(10, 17, 0)), Some(at(10, 22, 0)));
        let c = Schedule::from_options(0, Some("*/5 * * * *"), at(0, 0, 0)).unwrap();
        assert_eq!(c.next_after(at(10, 17, 0)), Some(at(10, 20, 0)));
        assert_eq!(c.wait_from(at(10, 17, 0)), Some(Duration::from_secs(180)));
    }
}
