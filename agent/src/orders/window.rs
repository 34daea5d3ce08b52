//! The maintenance window: `"HH:MM-HH:MM"` of local wall-clock time in the site's IANA time
//! zone, possibly crossing midnight (`"22:00-04:00"`).
//!
//! Membership is decided on the wall clock of the instant, converted with the zone's rules
//! (`jiff::tz`), so a window keeps its local hours across daylight-saving changes: on the day
//! clocks go back, a local time inside the window that happens twice is inside both times, and
//! on the day they go forward, local times that do not exist are simply never seen. This module
//! parses and judges; it reads no clock (the instant is passed in).

use std::fmt;

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// A daily window of local time, `start` inclusive, `end` exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaintenanceWindow {
    /// Minutes after local midnight where the window opens (0 to 1439).
    start_minute: u16,
    /// Minutes after local midnight where it closes; before `start_minute` when the window
    /// crosses midnight.
    end_minute: u16,
}

/// Why a window specification was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    /// Start and end are the same time, which would be either nothing or all day.
    #[error("expected a window of nonzero length, found start = end ({0})")]
    Empty(String),
    /// Not `HH:MM-HH:MM` with valid hours and minutes.
    #[error("expected \"HH:MM-HH:MM\" (24-hour local times, e.g. \"22:00-04:00\")")]
    Syntax,
}

impl MaintenanceWindow {
    /// Parses `"HH:MM-HH:MM"` (two digits each, 24-hour clock).
    pub fn parse(text: &str) -> Result<MaintenanceWindow, WindowError> {
        let (start, end) = text.split_once('-').ok_or(WindowError::Syntax)?;
        let start_minute = parse_time(start)?;
        let end_minute = parse_time(end)?;
        if start_minute == end_minute {
            return Err(WindowError::Empty(start.to_string()));
        }
        Ok(MaintenanceWindow {
            start_minute,
            end_minute,
        })
    }

    /// Returns true if and only if the local wall-clock time of `now` in `zone` is inside the
    /// window.
    pub fn contains(&self, zone: &TimeZone, now: Timestamp) -> bool {
        let local = zone.to_datetime(now).time();
        // Hour and minute of a civil time are 0..24 and 0..60, so this cannot overflow.
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        if self.start_minute < self.end_minute {
            (self.start_minute..self.end_minute).contains(&minute)
        } else {
            minute >= self.start_minute || minute < self.end_minute
        }
    }

    /// Returns true if and only if the window crosses local midnight.
    pub fn crosses_midnight(&self) -> bool {
        self.end_minute < self.start_minute
    }
}

impl fmt::Display for MaintenanceWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start_minute / 60,
            self.start_minute % 60,
            self.end_minute / 60,
            self.end_minute % 60
        )
    }
}

fn parse_time(text: &str) -> Result<u16, WindowError> {
    let bytes = text.as_bytes();
    let [h1, h2, b':', m1, m2] = bytes else {
        return Err(WindowError::Syntax);
    };
    let digit = |byte: &u8| {
        byte.is_ascii_digit()
            .then(|| u16::from(byte - b'0'))
            .ok_or(WindowError::Syntax)
    };
    let hour = digit(h1)? * 10 + digit(h2)?;
    let minute = digit(m1)? * 10 + digit(m2)?;
    if hour > 23 || minute > 59 {
        return Err(WindowError::Syntax);
    }
    Ok(hour * 60 + minute)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_windows() {
        for ok in ["00:00-23:59", "22:00-04:00", "09:30-10:00"] {
            assert_eq!(MaintenanceWindow::parse(ok).unwrap().to_string(), ok);
        }
        assert!(
            MaintenanceWindow::parse("22:00-04:00")
                .unwrap()
                .crosses_midnight()
        );
        for bad in [
            "",
            "22:00",
            "9:00-10:00",
            "24:00-01:00",
            "22:60-23:00",
            "22:00-04:00 ",
            "aa:bb-cc:dd",
            "22:00_04:00",
            "+1:00-02:00",
            "22:00-22:00",
        ] {
            assert!(MaintenanceWindow::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn membership_in_utc_and_across_midnight() {
        let utc = TimeZone::UTC;
        let day = MaintenanceWindow::parse("09:00-17:00").unwrap();
        let night = MaintenanceWindow::parse("22:00-04:00").unwrap();
        let cases = [
            ("2026-05-04T08:59:59Z", false, false),
            ("2026-05-04T09:00:00Z", true, false),
            ("2026-05-04T16:59:59Z", true, false),
            ("2026-05-04T17:00:00Z", false, false),
            ("2026-05-04T21:59:59Z", false, false),
            ("2026-05-04T22:00:00Z", false, true),
            ("2026-05-04T23:59:59Z", false, true),
            ("2026-05-05T00:00:00Z", false, true),
            ("2026-05-05T03:59:59Z", false, true),
            ("2026-05-05T04:00:00Z", false, false),
        ];
        for (now, in_day, in_night) in cases {
            assert_eq!(day.contains(&utc, ts(now)), in_day, "day {now}");
            assert_eq!(night.contains(&utc, ts(now)), in_night, "night {now}");
        }
    }

    #[test]
    fn membership_follows_daylight_saving_time() {
        let new_york = TimeZone::get("America/New_York").unwrap();
        let night = MaintenanceWindow::parse("22:00-04:00").unwrap();
        // 02:30Z is 22:30 EDT in July (inside) but 21:30 EST in January (outside): a fixed
        // offset would get one of them wrong.
        assert!(night.contains(&new_york, ts("2026-07-15T02:30:00Z")));
        assert!(!night.contains(&new_york, ts("2026-01-15T02:30:00Z")));

        let early = MaintenanceWindow::parse("01:00-03:00").unwrap();
        // 2026-11-01: clocks go back at 02:00 EDT, so 01:30 happens twice; both are inside.
        assert!(early.contains(&new_york, ts("2026-11-01T05:30:00Z"))); // 01:30 EDT
        assert!(early.contains(&new_york, ts("2026-11-01T06:30:00Z"))); // 01:30 EST
        assert!(early.contains(&new_york, ts("2026-11-01T07:30:00Z"))); // 02:30 EST
        assert!(!early.contains(&new_york, ts("2026-11-01T08:30:00Z"))); // 03:30 EST
        // 2026-03-08: clocks go forward at 02:00 EST to 03:00 EDT.
        assert!(early.contains(&new_york, ts("2026-03-08T06:30:00Z"))); // 01:30 EST
        assert!(!early.contains(&new_york, ts("2026-03-08T07:30:00Z"))); // 03:30 EDT
    }
}
