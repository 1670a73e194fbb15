//! Budget windows: calendar days and months in a configured time zone, and
//! a sliding minute.
//!
//! Calendar windows start at local midnight (or the first instant after it
//! when a daylight-saving change skips midnight), so a day may last 23 or 25
//! hours. The clock caches the current day's bounds; the time-zone rules are
//! consulted once per day, not once per call.

use std::sync::Arc;

use arc_swap::ArcSwap;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};

use crate::BudgetError;

/// How a limit's window is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// The last 60 seconds, approximated by two fixed minutes weighted by
    /// how far the current one has run (the previous minute's count times
    /// the part of it still inside the sliding window, plus the current).
    Minute,
    /// The calendar day in the configured time zone.
    Day,
    /// The calendar month in the configured time zone.
    Month,
}

impl WindowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WindowKind::Minute => "minute",
            WindowKind::Day => "day",
            WindowKind::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<WindowKind> {
        match s {
            "minute" => Some(WindowKind::Minute),
            "day" => Some(WindowKind::Day),
            "month" => Some(WindowKind::Month),
            _ => None,
        }
    }
}

/// The bounds of one calendar day and its month, in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Calendar {
    /// `YYYYMMDD` of the local date.
    day: i64,
    day_start: i64,
    day_end: i64,
    /// `YYYYMM` of the local date.
    month: i64,
    month_end: i64,
}

/// One instant, with the windows it falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub unix_ms: i64,
    cal: Calendar,
}

impl Now {
    /// The window's index: minutes since the epoch, `YYYYMMDD`, `YYYYMM`.
    pub fn index(&self, w: WindowKind) -> i64 {
        match w {
            WindowKind::Minute => self.unix_ms.div_euclid(60_000),
            WindowKind::Day => self.cal.day,
            WindowKind::Month => self.cal.month,
        }
    }

    /// When the window ends (Unix seconds): the next minute boundary, the
    /// next local midnight, the first day of the next month.
    pub fn resets_at(&self, w: WindowKind) -> i64 {
        match w {
            WindowKind::Minute => (self.unix_ms.div_euclid(60_000) + 1) * 60,
            WindowKind::Day => self.cal.day_end,
            WindowKind::Month => self.cal.month_end,
        }
    }

    /// Whole seconds until the window resets, at least 1.
    pub fn seconds_until_reset(&self, w: WindowKind) -> u64 {
        let ms = self.resets_at(w) * 1000 - self.unix_ms;
        (ms.max(1) as u64).div_ceil(1000)
    }

    /// How far the current minute has run, in [0, 1).
    pub fn minute_elapsed(&self) -> f64 {
        self.unix_ms.rem_euclid(60_000) as f64 / 60_000.0
    }

    /// How long a counter of window `w` that starts now must be kept: to
    /// the end of its window and one more (the sliding minute reads the
    /// previous one).
    pub fn keep_for_ms(&self, w: WindowKind) -> u64 {
        let end_ms = self.resets_at(w) * 1000;
        let one_more = match w {
            WindowKind::Minute => 60_000,
            WindowKind::Day => 25 * 3_600_000,
            WindowKind::Month => 32 * 86_400_000,
        };
        (end_ms - self.unix_ms).max(0) as u64 + one_more
    }
}

/// The clock budgets are kept by: the configured time zone and a cache of
/// the current day's bounds.
#[derive(Debug)]
pub struct Clock {
    tz: TimeZone,
    tz_name: String,
    current: ArcSwap<Calendar>,
}

impl Clock {
    /// A clock in the IANA time zone `name` (`UTC`, `Europe/Berlin`, …).
    pub fn new(name: &str) -> Result<Clock, BudgetError> {
        let tz = TimeZone::get(name)
            .map_err(|e| BudgetError::Config(format!("time zone `{name}`: {e}")))?;
        let now = Timestamp::now().as_second();
        let cal = calendar(&tz, now)
            .map_err(|e| BudgetError::Config(format!("time zone `{name}`: {e}")))?;
        Ok(Clock {
            tz,
            tz_name: name.to_string(),
            current: ArcSwap::from_pointee(cal),
        })
    }

    pub fn time_zone(&self) -> &str {
        &self.tz_name
    }

    /// The instant `unix_ms` with its windows.
    pub fn at(&self, unix_ms: i64) -> Now {
        let secs = unix_ms.div_euclid(1000);
        let cached = **self.current.load();
        if secs >= cached.day_start && secs < cached.day_end {
            return Now {
                unix_ms,
                cal: cached,
            };
        }
        match calendar(&self.tz, secs) {
            Ok(cal) => {
                // Only move the cache forward; a lookup of the past (tests,
                // reports) does not disturb it.
                if secs >= cached.day_end {
                    self.current.store(Arc::new(cal));
                }
                Now { unix_ms, cal }
            }
            // Outside jiff's range (years beyond ±9999): one fixed window,
            // so limits still hold instead of resetting.
            Err(_) => Now {
                unix_ms,
                cal: Calendar {
                    day: i64::MAX,
                    day_start: i64::MIN,
                    day_end: i64::MAX / 1000,
                    month: i64::MAX,
                    month_end: i64::MAX / 1000,
                },
            },
        }
    }

    pub fn now(&self) -> Now {
        self.at(Timestamp::now().as_millisecond())
    }
}

fn start_of(date: Date, tz: &TimeZone) -> Result<i64, jiff::Error> {
    Ok(date.to_zoned(tz.clone())?.timestamp().as_second())
}

fn calendar(tz: &TimeZone, unix_secs: i64) -> Result<Calendar, jiff::Error> {
    let date = Timestamp::from_second(unix_secs)?
        .to_zoned(tz.clone())
        .date();
    let first = date.first_of_month();
    Ok(Calendar {
        day: date.year() as i64 * 10_000 + date.month() as i64 * 100 + date.day() as i64,
        day_start: start_of(date, tz)?,
        day_end: start_of(date.tomorrow()?, tz)?,
        month: date.year() as i64 * 100 + date.month() as i64,
        month_end: start_of(first.checked_add(1.month())?, tz)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tz: &str, rfc3339: &str) -> Now {
        let ts: Timestamp = rfc3339.parse().unwrap();
        Clock::new(tz).unwrap().at(ts.as_millisecond())
    }

    #[test]
    fn day_follows_the_local_calendar() {
        // 23:30 UTC on 21 Nov is already 22 Nov in Berlin (UTC+1).
        let berlin = at("Europe/Berlin", "2026-11-21T23:30:00Z");
        assert_eq!(berlin.index(WindowKind::Day), 20261122);
        let utc = at("UTC", "2026-11-21T23:30:00Z");
        assert_eq!(utc.index(WindowKind::Day), 20261121);
        // Berlin's 22 Nov ends at 23:00 UTC on the 22nd.
        let end: Timestamp = "2026-11-22T23:00:00Z".parse().unwrap();
        assert_eq!(berlin.resets_at(WindowKind::Day), end.as_second());
        // Half-hour zones.
        let kolkata = at("Asia/Kolkata", "2026-11-21T18:29:59Z");
        assert_eq!(kolkata.index(WindowKind::Day), 20261121);
        let kolkata = at("Asia/Kolkata", "2026-11-21T18:30:00Z");
        assert_eq!(kolkata.index(WindowKind::Day), 20261122);
    }

    #[test]
    fn daylight_saving_days_are_23_and_25_hours() {
        // New York: DST starts 8 March 2026, ends 1 November 2026.
        let spring = at("America/New_York", "2026-03-08T12:00:00Z");
        let start: Timestamp = "2026-03-08T05:00:00Z".parse().unwrap();
        assert_eq!(
            spring.resets_at(WindowKind::Day) - start.as_second(),
            23 * 3600
        );
        let autumn = at("America/New_York", "2026-11-01T12:00:00Z");
        let start: Timestamp = "2026-11-01T04:00:00Z".parse().unwrap();
        assert_eq!(
            autumn.resets_at(WindowKind::Day) - start.as_second(),
            25 * 3600
        );
    }

    #[test]
    fn month_boundaries_and_year_end() {
        let n = at("UTC", "2026-12-31T23:59:59Z");
        assert_eq!(n.index(WindowKind::Month), 202612);
        let jan: Timestamp = "2027-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(n.resets_at(WindowKind::Month), jan.as_second());
        assert_eq!(n.resets_at(WindowKind::Day), jan.as_second());
        assert_eq!(n.seconds_until_reset(WindowKind::Day), 1);
        let next = at("UTC", "2027-01-01T00:00:00Z");
        assert_eq!(next.index(WindowKind::Month), 202701);
        // Tokyo is already in January.
        let tokyo = at("Asia/Tokyo", "2026-12-31T15:00:00Z");
        assert_eq!(tokyo.index(WindowKind::Month), 202701);
        // Leap day.
        let leap = at("UTC", "2028-02-29T10:00:00Z");
        assert_eq!(leap.index(WindowKind::Day), 20280229);
        let mar: Timestamp = "2028-03-01T00:00:00Z".parse().unwrap();
        assert_eq!(leap.resets_at(WindowKind::Month), mar.as_second());
    }

    #[test]
    fn minutes_and_elapsed_fraction() {
        let n = at("UTC", "2026-11-22T10:15:45Z");
        assert_eq!(n.seconds_until_reset(WindowKind::Minute), 15);
        assert!((n.minute_elapsed() - 0.75).abs() < 1e-9);
        let prev = at("UTC", "2026-11-22T10:14:59Z");
        assert_eq!(
            prev.index(WindowKind::Minute) + 1,
            n.index(WindowKind::Minute)
        );
    }

    #[test]
    fn cache_follows_time_forward_and_answers_the_past() {
        let c = Clock::new("Europe/Paris").unwrap();
        let a: Timestamp = "2030-05-01T10:00:00Z".parse().unwrap();
        let b: Timestamp = "2030-05-02T10:00:00Z".parse().unwrap();
        let past: Timestamp = "2020-01-01T10:00:00Z".parse().unwrap();
        assert_eq!(c.at(a.as_millisecond()).index(WindowKind::Day), 20300501);
        assert_eq!(c.at(b.as_millisecond()).index(WindowKind::Day), 20300502);
        assert_eq!(c.at(past.as_millisecond()).index(WindowKind::Day), 20200101);
        assert_eq!(c.at(b.as_millisecond()).index(WindowKind::Day), 20300502);
    }

    #[test]
    fn unknown_time_zone_is_a_config_error() {
        let e = Clock::new("Mars/Olympus_Mons").unwrap_err();
        assert!(e.to_string().contains("Mars/Olympus_Mons"), "{e}");
    }
}
