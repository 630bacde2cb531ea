//! Maintenance windows: when a rollout may start new work. Written as
//! `[DAYS] HH:MM-HH:MM [ZONE]`, for example `Sat 02:00-04:00`, `Mon-Fri 22:00-06:00 Europe/Berlin`,
//! `Sat,Sun 00:00-24:00 +02:00`, or `03:00-04:00` (every day). Days are `Mon`…`Sun` (or full
//! names), lists with `,` and ranges with `-`, wrapping past Sunday (`Fri-Mon`). A window whose
//! end is before its start runs past midnight into the next day: `Sat 23:00-01:00` is
//! Saturday 23:00 to Sunday 01:00; one that ends when it starts is refused (`00:00-24:00` is
//! a whole day). The zone is UTC unless given: `UTC`, `Z`, an offset
//! (`+02:00`, `-0530`) or an IANA name, whose daylight-saving changes are followed. Several
//! windows may be given; new work starts only inside one of them, work in flight finishes.

use chrono::{
    DateTime, Datelike, Duration, FixedOffset, NaiveDate, NaiveTime, Offset, TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;

/// The zone a window is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    Fixed(FixedOffset),
    Named(Tz),
}

/// One maintenance window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Days the window starts on (Monday first); all seven when none were written.
    days: [bool; 7],
    start: NaiveTime,
    /// Minutes from the start to the end (1 ..= 24 h).
    length: Duration,
    zone: Zone,
    text: String,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn weekday(name: &str) -> Option<Weekday> {
    let lower = name.to_ascii_lowercase();
    let day = match lower.get(..3)? {
        "mon" => Weekday::Mon,
        "tue" => Weekday::Tue,
        "wed" => Weekday::Wed,
        "thu" => Weekday::Thu,
        "fri" => Weekday::Fri,
        "sat" => Weekday::Sat,
        "sun" => Weekday::Sun,
        _ => return None,
    };
    // `Mon` or the whole name, nothing in between.
    let full = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ][day.num_days_from_monday() as usize];
    (lower.len() == 3 || lower == full).then_some(day)
}

fn parse_days(text: &str) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    for part in text.split(',') {
        let part = part.trim();
        let (from, to) = part.split_once('-').unwrap_or((part, part));
        let bad = || format!("{part:?} is not a day or a range of days (Mon, Mon-Fri)");
        let from = weekday(from.trim()).ok_or_else(bad)?;
        let to = weekday(to.trim()).ok_or_else(bad)?;
        let mut day = from;
        loop {
            days[day.num_days_from_monday() as usize] = true;
            if day == to {
                break;
            }
            day = day.succ();
        }
    }
    Ok(days)
}

fn parse_time(text: &str, end: bool) -> Result<NaiveTime, String> {
    if end && text == "24:00" {
        return Ok(NaiveTime::MIN);
    }
    let (h, m) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not HH:MM"))?;
    let valid = h.len() == 2 && m.len() == 2;
    let (h, m) = (h.parse::<u32>(), m.parse::<u32>());
    match (valid, h, m) {
        (true, Ok(h), Ok(m)) => {
            NaiveTime::from_hms_opt(h, m, 0).ok_or_else(|| format!("{text:?} is not a time of day"))
        }
        _ => Err(format!("{text:?} is not HH:MM")),
    }
}

fn parse_zone(text: &str) -> Result<Zone, String> {
    if text.eq_ignore_ascii_case("utc") || text == "Z" {
        return Ok(Zone::Fixed(Utc.fix()));
    }
    if let Some(sign) = text.chars().next().filter(|c| *c == '+' || *c == '-') {
        let digits: String = text[1..].chars().filter(|c| *c != ':').collect();
        let bad = || format!("{text:?} is not a UTC offset (+HH:MM)");
        if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let hours: i32 = digits[..2].parse().map_err(|_| bad())?;
        let minutes: i32 = digits[2..].parse().map_err(|_| bad())?;
        if hours > 14 || minutes > 59 {
            return Err(bad());
        }
        let seconds = (hours * 60 + minutes) * 60 * if sign == '-' { -1 } else { 1 };
        return FixedOffset::east_opt(seconds)
            .map(Zone::Fixed)
            .ok_or_else(bad);
    }
    text.parse::<Tz>().map(Zone::Named).map_err(|_| {
        format!("{text:?} is not a time zone (UTC, +02:00, or a name like Europe/Berlin)")
    })
}

impl Window {
    /// Parses one window.
    pub fn parse(text: &str) -> Result<Self, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let times_at = words
            .iter()
            .position(|w| {
                w.contains(':')
                    && w.contains('-')
                    && w.chars().next().is_some_and(|c| c.is_ascii_digit())
            })
            .ok_or_else(|| format!("{text:?}: no HH:MM-HH:MM"))?;
        let days = match &words[..times_at] {
            [] => [true; 7],
            [days] => parse_days(days).map_err(|e| format!("{text:?}: {e}"))?,
            _ => {
                return Err(format!(
                    "{text:?}: write days without spaces (Mon-Fri or Sat,Sun)"
                ));
            }
        };
        let zone = match &words[times_at + 1..] {
            [] => Zone::Fixed(Utc.fix()),
            [zone] => parse_zone(zone).map_err(|e| format!("{text:?}: {e}"))?,
            _ => return Err(format!("{text:?}: one zone at most")),
        };
        let (start, end) = words[times_at]
            .split_once('-')
            .ok_or_else(|| format!("{text:?}: no HH:MM-HH:MM"))?;
        let start = parse_time(start, false).map_err(|e| format!("{text:?}: {e}"))?;
        let end_time = parse_time(end, true).map_err(|e| format!("{text:?}: {e}"))?;
        // `02:00-02:00` would be read as 24 hours; a whole day is written `00:00-24:00`.
        if end_time == start && end != "24:00" {
            return Err(format!(
                "{text:?}: starts and ends at the same time (a whole day is 00:00-24:00)"
            ));
        }
        let mut length = end_time.signed_duration_since(start);
        if length <= Duration::zero() {
            // Past midnight (or a whole day for `00:00-24:00`).
            length += Duration::days(1);
        }
        Ok(Self {
            days,
            start,
            length,
            zone,
            text: words.join(" "),
        })
    }

    /// The UTC instant of a local time in the window's zone: a time that falls in a
    /// daylight-saving gap moves to the first valid minute after it; one that occurs twice
    /// takes the earlier (`late`: the later) of the two.
    fn resolve(&self, local: chrono::NaiveDateTime, late: bool) -> Option<DateTime<Utc>> {
        let pick =
            |r: chrono::LocalResult<DateTime<Utc>>| if late { r.latest() } else { r.earliest() };
        match self.zone {
            Zone::Fixed(offset) => pick(
                offset
                    .from_local_datetime(&local)
                    .map(|t| t.with_timezone(&Utc)),
            ),
            Zone::Named(tz) => {
                // A gap lasts at most a few hours.
                (0..4 * 60).find_map(|m| {
                    let probe = local + Duration::minutes(m);
                    pick(
                        tz.from_local_datetime(&probe)
                            .map(|t| t.with_timezone(&Utc)),
                    )
                })
            }
        }
    }

    /// Where the window that starts on local `date` begins and ends, in UTC. Both ends are
    /// local wall-clock times, so a window keeps its written end on daylight-saving days.
    fn bounds(&self, date: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let local_start = date.and_time(self.start);
        let start = self.resolve(local_start, false)?;
        let end = self.resolve(local_start + self.length, true)?;
        Some((start, end))
    }

    fn local_date(&self, now: DateTime<Utc>) -> NaiveDate {
        match self.zone {
            Zone::Fixed(offset) => now.with_timezone(&offset).date_naive(),
            Zone::Named(tz) => now.with_timezone(&tz).date_naive(),
        }
    }

    /// Whether `now` is inside this window.
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        let today = self.local_date(now);
        // A window open now started today or, running past midnight, yesterday.
        [today.pred_opt(), Some(today)]
            .into_iter()
            .flatten()
            .any(|day| {
                self.days[day.weekday().num_days_from_monday() as usize]
                    && self
                        .bounds(day)
                        .is_some_and(|(start, end)| start <= now && now < end)
            })
    }

    /// The next start of this window after `now` (within eight days).
    pub fn next_start(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let today = self.local_date(now);
        (0..=8)
            .filter_map(|n| today.checked_add_signed(Duration::days(n)))
            .filter(|day| self.days[day.weekday().num_days_from_monday() as usize])
            .filter_map(|day| self.bounds(day).map(|(start, _)| start))
            .find(|start| *start > now)
    }
}

/// Several windows; none means always open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Windows(pub Vec<Window>);

impl Windows {
    /// Parses windows separated by `;`. Empty or blank: none (always open). Otherwise every
    /// window between `;` must be there: `;;` is refused, not read as "always open".
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Windows::default());
        }
        text.split(';')
            .map(str::trim)
            .map(|t| {
                if t.is_empty() {
                    Err("an empty window (two `;` in a row, or one at an end)".to_owned())
                } else {
                    Window::parse(t)
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Windows)
    }

    /// Whether new work may start at `now`.
    pub fn open(&self, now: DateTime<Utc>) -> bool {
        self.0.is_empty() || self.0.iter().any(|w| w.contains(now))
    }

    /// When new work may start next: `now` when open, else the earliest window start.
    pub fn next_open(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.open(now) {
            return Some(now);
        }
        self.0.iter().filter_map(|w| w.next_start(now)).min()
    }
}

impl std::fmt::Display for Windows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let texts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&texts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn open(windows: &str, now: &str) -> bool {
        Windows::parse(windows).unwrap().open(at(now))
    }

    // 2026-11-28 is a Saturday.
    #[test]
    fn a_plain_window_is_open_inside_only() {
        let w = "Sat 02:00-04:00";
        assert!(!open(w, "2026-11-28T01:59:59Z"));
        assert!(open(w, "2026-11-28T02:00:00Z"));
        assert!(open(w, "2026-11-28T03:59:59Z"));
        assert!(!open(w, "2026-11-28T04:00:00Z"), "the end is not inside");
        assert!(!open(w, "2026-11-27T03:00:00Z"), "a Friday");
        assert!(!open(w, "2026-12-04T03:00:00Z"), "a Friday");
        assert!(open(w, "2026-12-05T03:00:00Z"), "the next Saturday");
    }

    #[test]
    fn windows_across_midnight_belong_to_the_day_they_start() {
        let w = "Sat 23:00-01:00";
        assert!(open(w, "2026-11-28T23:30:00Z"), "Saturday night");
        assert!(
            open(w, "2026-11-29T00:30:00Z"),
            "early Sunday, started Saturday"
        );
        assert!(!open(w, "2026-11-29T01:00:00Z"));
        assert!(
            !open(w, "2026-11-28T00:30:00Z"),
            "early Saturday: Friday's would be needed"
        );
        assert!(!open(w, "2026-11-29T23:30:00Z"), "Sunday night");
        // Every day, across midnight.
        let w = "22:00-06:00";
        assert!(open(w, "2026-11-25T23:00:00Z"));
        assert!(open(w, "2026-11-26T05:59:00Z"));
        assert!(!open(w, "2026-11-26T06:00:00Z"));
        // A whole day.
        assert!(open("Sun 00:00-24:00", "2026-11-29T23:59:59Z"));
        assert!(!open("Sun 00:00-24:00", "2026-11-30T00:00:00Z"));
        // Weekday ranges wrap past Sunday.
        assert!(
            open("Fri-Mon 12:00-13:00", "2026-11-30T12:30:00Z"),
            "Monday"
        );
        assert!(
            !open("Fri-Mon 12:00-13:00", "2026-12-01T12:30:00Z"),
            "Tuesday"
        );
    }

    #[test]
    fn several_windows_any_opens_and_none_means_always() {
        let w = "Sat 02:00-04:00; Wed 12:00-12:30";
        assert!(open(w, "2026-11-28T03:00:00Z"));
        assert!(open(w, "2026-11-25T12:15:00Z"));
        assert!(!open(w, "2026-11-25T12:45:00Z"));
        assert!(open("", "2026-11-25T12:45:00Z"), "no window: always open");
        let parsed = Windows::parse(w).unwrap();
        assert_eq!(
            parsed.next_open(at("2026-11-25T13:00:00Z")),
            Some(at("2026-11-28T02:00:00Z"))
        );
        assert_eq!(
            parsed.next_open(at("2026-11-25T11:00:00Z")),
            Some(at("2026-11-25T12:00:00Z"))
        );
        assert_eq!(
            parsed.next_open(at("2026-11-28T03:00:00Z")),
            Some(at("2026-11-28T03:00:00Z")),
            "open now"
        );
    }

    #[test]
    fn zones_offsets_and_daylight_saving() {
        // 02:00-04:00 at +02:00 is 00:00-02:00 UTC.
        assert!(open("Sat 02:00-04:00 +02:00", "2026-11-28T00:30:00Z"));
        assert!(!open("Sat 02:00-04:00 +02:00", "2026-11-28T02:30:00Z"));
        assert!(open("Sat 02:00-04:00 -0530", "2026-11-28T08:00:00Z"));
        // Berlin is UTC+1 in November and UTC+2 in July.
        let w = "Sat 02:00-04:00 Europe/Berlin";
        assert!(open(w, "2026-11-28T01:30:00Z"));
        assert!(!open(w, "2026-11-28T03:30:00Z"));
        assert!(open(w, "2026-07-04T00:30:00Z"));
        assert!(!open(w, "2026-07-04T02:30:00Z"));
        // Sunday 2026-03-29 02:00 does not exist in Berlin: the window starts at 03:00 CEST.
        let gap = Windows::parse("Sun 02:30-04:00 Europe/Berlin").unwrap();
        assert!(!gap.open(at("2026-03-29T00:45:00Z")));
        assert!(gap.open(at("2026-03-29T01:00:00Z")), "03:00 CEST");
        assert_eq!(
            gap.next_open(at("2026-03-28T12:00:00Z")),
            Some(at("2026-03-29T01:00:00Z"))
        );
        // Ends stay at their wall-clock time on daylight-saving days: 04:00 CEST is 02:00 UTC
        // on 2026-03-29, and 03:00 CET is 02:00 UTC on 2026-10-25 (fall back).
        assert!(
            !gap.open(at("2026-03-29T02:00:00Z")),
            "04:00 CEST is the end"
        );
        assert!(gap.open(at("2026-03-29T01:59:00Z")));
        let fall = Windows::parse("Sun 01:00-03:00 Europe/Berlin").unwrap();
        assert!(fall.open(at("2026-10-24T23:00:00Z")), "01:00 CEST");
        assert!(
            fall.open(at("2026-10-25T01:30:00Z")),
            "the second 02:30 (CET)"
        );
        assert!(
            !fall.open(at("2026-10-25T02:00:00Z")),
            "03:00 CET is the end"
        );
    }

    #[test]
    fn bad_windows_are_refused_naming_the_part() {
        for (text, says) in [
            ("Sat 2:00-04:00", "not HH:MM"),
            ("Sat 02:00-25:00", "not a time of day"),
            ("Caturday 02:00-04:00", "not a day"),
            ("Sat 02:00-04:00 Mars/Olympus", "not a time zone"),
            ("Sat 02:00-04:00 +25:00", "not a UTC offset"),
            ("Sat Sun 02:00-04:00", "without spaces"),
            ("Sat", "no HH:MM-HH:MM"),
            ("Sat 02:00-04:00 UTC extra", "one zone at most"),
            // Read as 24 hours before: a zero-length window is a mistake.
            ("Sat 02:00-02:00", "same time"),
            ("00:00-00:00", "same time"),
            // Read as "always open" before: an empty list item is a mistake.
            (";;", "empty window"),
            (";", "empty window"),
            ("Sat 02:00-04:00;", "empty window"),
            ("Sat 02:00-04:00;; Sun 02:00-04:00", "empty window"),
        ] {
            let e = Windows::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        assert_eq!(
            Windows::parse("sat,sun 02:00-04:00 utc")
                .unwrap()
                .to_string(),
            "sat,sun 02:00-04:00 utc"
        );
        assert!(Window::parse("Saturday-Sunday 02:00-04:00").is_ok());
        // Blank is none; a whole day is still 00:00-24:00.
        assert_eq!(Windows::parse("  "), Ok(Windows::default()));
        assert!(open("Sat 00:00-24:00", "2026-11-28T23:59:00Z"));
        assert!(open("Sat 12:00-24:00", "2026-11-28T23:59:00Z"));
    }
}
