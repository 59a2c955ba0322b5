//! The current period of a budget: when its usage started counting from zero and when it
//! starts again (`status.periodStart`, `status.resetsAt`). Pure: `now` is an argument.
//!
//! Boundaries are calendar boundaries in the budget's time zone, computed with jiff's
//! calendar arithmetic, so a period follows the local clock through DST changes:
//!
//! - `Daily`, `Weekly` (Monday) and `Monthly` (the 1st) start at the *first instant* of their
//!   local day. That is midnight, except on a day whose midnight falls into a DST gap
//!   (America/Havana, America/Santiago, Asia/Beirut, ...), where it is the instant the clocks
//!   jump (e.g. 01:00). A day is therefore 23 or 25 hours long on DST days, and a period of
//!   such a day is still `[00:00, next 00:00)` local.
//! - `Hourly` starts whenever the local clock reads `HH:00:00`. During a repeated hour (a DST
//!   fold, e.g. 02:00-03:00 twice in Europe/Berlin on 2026-10-25) that happens twice, so the
//!   repeated hour is two one-hour periods. An hour mark skipped by a gap is replaced by the
//!   instant of the jump. In half-hour zones (Asia/Kolkata) the boundaries are the local hours,
//!   i.e. at :30 UTC.
//! - `Never` starts at the budget's creation and has no end.
//!
//! An instant exactly on a boundary belongs to the period that starts there, and the periods
//! of a zone partition time: each ends where the next starts. Where the clocks go back across
//! a boundary (America/Goose_Bay, 1990-10-28: 00:01 back to 23:01 of the day before), the
//! period that has begun goes on; a fall back within one hour (Australia/Lord_Howe: 02:00
//! +11:00 back to 01:30 +10:30) keeps that hour one period, 90 minutes long.
//!
//! ```
//! use jiff::Timestamp;
//! use tokenbudget::api::ResetPeriod;
//! use tokenbudget::usage::period;
//!
//! let tz = period::parse_timezone("Europe/Berlin").unwrap();
//! let now: Timestamp = "2026-11-17T09:30:00Z".parse().unwrap();
//! let window = period::current(ResetPeriod::Monthly, &tz, now, now);
//! assert_eq!(window.period_start(), "2026-11-01T00:00:00+01:00");
//! assert_eq!(window.resets_at().as_deref(), Some("2026-12-01T00:00:00+01:00"));
//! assert!(window.contains(now));
//! ```

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan, Zoned};

use crate::api::ResetPeriod;

/// One period of a budget: `[start, end)`, in the budget's time zone. `end` is `None` for
/// `Never` (and, in theory, when the next boundary is past jiff's year 9999).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeriodWindow {
    pub start: Zoned,
    pub end: Option<Zoned>,
}

impl PeriodWindow {
    /// Whether `t` falls into this period: `start <= t < end`.
    pub fn contains(&self, t: Timestamp) -> bool {
        self.start.timestamp() <= t && self.end.as_ref().is_none_or(|end| t < end.timestamp())
    }

    /// `status.periodStart`: RFC 3339 with the zone's offset, e.g. `2026-11-01T00:00:00+01:00`.
    pub fn period_start(&self) -> String {
        rfc3339(&self.start)
    }

    /// `status.resetsAt`: RFC 3339 with the zone's offset; `None` for `Never`.
    pub fn resets_at(&self) -> Option<String> {
        self.end.as_ref().map(rfc3339)
    }
}

/// RFC 3339 with the offset in force at that instant in its zone, without the zone's name:
/// `2026-11-01T00:00:00+01:00` (`+00:00` for UTC). Fractional seconds only when there are any.
pub fn rfc3339(z: &Zoned) -> String {
    z.timestamp().display_with_offset(z.offset()).to_string()
}

/// The time zone of `spec.period.timezone`: an IANA name from jiff's bundled database (the
/// same look-up the operator's validation uses).
pub fn parse_timezone(name: &str) -> Result<TimeZone, UnknownTimeZone> {
    TimeZone::get(name).map_err(|_| UnknownTimeZone(name.into()))
}

/// A `spec.period.timezone` that is no IANA time zone.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IANA time zone such as \"Europe/Berlin\"")]
pub struct UnknownTimeZone(pub String);

/// The period that `now` falls into. `origin` is the budget's creation time, the start of a
/// `Never` period; the other kinds start at calendar boundaries in `tz` (see the module docs).
pub fn current(reset: ResetPeriod, tz: &TimeZone, now: Timestamp, origin: Timestamp) -> PeriodWindow {
    match reset {
        ResetPeriod::Never => PeriodWindow {
            start: origin.to_zoned(tz.clone()),
            end: None,
        },
        ResetPeriod::Hourly => hourly(tz, now),
        ResetPeriod::Daily | ResetPeriod::Weekly | ResetPeriod::Monthly => calendar(reset, tz, now),
    }
}

/// A period of whole local days: from the first instant of its first day to the first
/// instant of the next period's first day.
fn calendar(reset: ResetPeriod, tz: &TimeZone, now: Timestamp) -> PeriodWindow {
    let date = now.to_zoned(tz.clone()).date();
    // The first day of the period `n` periods after the one that starts on `first`.
    let step = |first: Date, n: i64| match reset {
        ResetPeriod::Weekly => first.checked_add((7 * n).days()).ok(),
        ResetPeriod::Monthly => first.checked_add(n.months()).ok(),
        _ => first.checked_add(n.days()).ok(),
    };
    let mut first = match reset {
        ResetPeriod::Weekly => {
            let back = i64::from(date.weekday().to_monday_zero_offset());
            date.checked_sub(back.days()).unwrap_or(date)
        }
        ResetPeriod::Monthly => date.first_of_month(),
        _ => date,
    };
    // Normally the period of `now`'s local date is the one. When the clocks go back across
    // midnight (America/Goose_Bay went from 00:01 back to 23:01 in 1990), the next period has
    // already begun while the local date is still the old one; stepping keeps the periods a
    // partition of time.
    for _ in 0..MAX_STEPS {
        let start = start_of_day(tz, first);
        let next = step(first, 1);
        let end = next.and_then(|d| start_of_day(tz, d));
        if let (Some(start), Some(earlier)) = (&start, step(first, -1))
            && start.timestamp() > now
        {
            first = earlier;
            continue;
        }
        if let (Some(end), Some(next)) = (&end, next)
            && end.timestamp() <= now
        {
            first = next;
            continue;
        }
        return PeriodWindow {
            // Missing only where jiff's range ends (year -9999).
            start: start.unwrap_or_else(|| now.to_zoned(tz.clone())),
            end,
        };
    }
    PeriodWindow {
        start: now.to_zoned(tz.clone()),
        end: None,
    }
}

/// The first instant of a local day: jiff's `start_of_day()` (midnight, or the end of a DST
/// gap that starts at midnight).
fn start_of_day(tz: &TimeZone, date: Date) -> Option<Zoned> {
    date.to_zoned(tz.clone()).ok()?.start_of_day().ok()
}

/// The local hour that `now` falls into, from the latest hour boundary at or before `now` to
/// the earliest one after it.
fn hourly(tz: &TimeZone, now: Timestamp) -> PeriodWindow {
    PeriodWindow {
        start: hour_start(tz, now).to_zoned(tz.clone()),
        end: next_hour_start(tz, now).map(|t| t.to_zoned(tz.clone())),
    }
}

/// At most this many time zone transitions (or periods) are stepped over looking for a
/// boundary: one is enough in every real zone, whose transitions are months apart.
const MAX_STEPS: usize = 8;

/// The latest hour boundary at or before `t`. Between two transitions the offset is fixed, so
/// the boundary is where the clock last read `HH:00:00`, unless a transition came after that:
/// then the transition, if it is a boundary itself, or else the hour goes on before it (in the
/// old offset).
fn hour_start(tz: &TimeZone, mut t: Timestamp) -> Timestamp {
    for _ in 0..MAX_STEPS {
        let mark = t.checked_sub(since_hour_mark(tz, t)).unwrap_or(t);
        let Some(transition) = last_transition_at_or_before(tz, t) else {
            return mark;
        };
        if mark >= transition || is_hour_boundary(tz, transition) {
            return mark.max(transition);
        }
        match transition.checked_sub(SignedDuration::from_nanos(1)) {
            Ok(before) => t = before,
            Err(_) => return transition,
        }
    }
    t
}

/// The earliest hour boundary after `t`: where the clock next reads `HH:00:00`, unless a
/// transition comes first (see [`hour_start`]). `None` only at the end of jiff's range.
fn next_hour_start(tz: &TimeZone, mut t: Timestamp) -> Option<Timestamp> {
    for _ in 0..MAX_STEPS {
        let mark = t
            .checked_sub(since_hour_mark(tz, t))
            .ok()?
            .checked_add(SignedDuration::from_hours(1))
            .ok()?;
        let Some(transition) = tz.following(t).next().map(|tr| tr.timestamp()) else {
            return Some(mark);
        };
        if mark < transition {
            return Some(mark);
        }
        if is_hour_boundary(tz, transition) {
            return Some(transition);
        }
        t = transition;
    }
    None
}

/// How long ago, at `t`'s offset, the local clock read the full hour.
fn since_hour_mark(tz: &TimeZone, t: Timestamp) -> SignedDuration {
    let local = tz.to_datetime(t);
    SignedDuration::new(
        i64::from(local.minute()) * 60 + i64::from(local.second()),
        local.subsec_nanosecond(),
    )
}

fn last_transition_at_or_before(tz: &TimeZone, t: Timestamp) -> Option<Timestamp> {
    let after = t.checked_add(SignedDuration::from_nanos(1)).ok()?;
    tz.preceding(after).next().map(|tr| tr.timestamp())
}

/// Whether the transition at `at` starts a new local hour: the clock then reads a full hour
/// (`02:00` again after a fall back), or it jumps into another hour (a spring forward).
/// A transition within one hour (`01:59` +11:00 back to `01:30` +10:30) does not.
fn is_hour_boundary(tz: &TimeZone, at: Timestamp) -> bool {
    let after = tz.to_datetime(at);
    let Ok(before) = at.checked_sub(SignedDuration::from_nanos(1)).map(|t| tz.to_datetime(t)) else {
        return true;
    };
    let on_the_hour = after.minute() == 0 && after.second() == 0 && after.subsec_nanosecond() == 0;
    on_the_hour || (before.date(), before.hour()) != (after.date(), after.hour())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ResetPeriod::{Daily, Hourly, Monthly, Never, Weekly};

    fn tz(name: &str) -> TimeZone {
        parse_timezone(name).unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// The period of `now` as (periodStart, resetsAt).
    fn window(reset: ResetPeriod, zone: &str, now: &str) -> (String, Option<String>) {
        let w = current(reset, &tz(zone), ts(now), ts("2020-01-01T00:00:00Z"));
        assert!(w.contains(ts(now)), "{now} not in {w:?}");
        (w.period_start(), w.resets_at())
    }

    fn is(start: &str, end: &str) -> (String, Option<String>) {
        (start.to_string(), Some(end.to_string()))
    }

    fn hours(w: &PeriodWindow) -> i64 {
        let end = w.end.as_ref().unwrap().timestamp();
        end.duration_since(w.start.timestamp()).as_secs() / 3600
    }

    #[test]
    fn each_kind_in_utc() {
        let now = "2026-07-15T13:45:12.5Z"; // a Wednesday
        assert_eq!(
            window(Hourly, "UTC", now),
            is("2026-07-15T13:00:00+00:00", "2026-07-15T14:00:00+00:00")
        );
        assert_eq!(
            window(Daily, "UTC", now),
            is("2026-07-15T00:00:00+00:00", "2026-07-16T00:00:00+00:00")
        );
        assert_eq!(
            window(Weekly, "UTC", now),
            is("2026-07-13T00:00:00+00:00", "2026-07-20T00:00:00+00:00")
        );
        assert_eq!(
            window(Monthly, "UTC", now),
            is("2026-07-01T00:00:00+00:00", "2026-08-01T00:00:00+00:00")
        );
    }

    #[test]
    fn boundaries_are_local() {
        // 23:30 UTC on the 31st is already the 1st (and a new hour, day, month) in Berlin.
        let now = "2026-08-31T23:30:00Z";
        let berlin = "Europe/Berlin";
        assert_eq!(
            window(Hourly, berlin, now),
            is("2026-09-01T01:00:00+02:00", "2026-09-01T02:00:00+02:00")
        );
        assert_eq!(
            window(Daily, berlin, now),
            is("2026-09-01T00:00:00+02:00", "2026-09-02T00:00:00+02:00")
        );
        assert_eq!(
            window(Monthly, berlin, now),
            is("2026-09-01T00:00:00+02:00", "2026-10-01T00:00:00+02:00")
        );
        // And still the 31st in New York.
        let ny = "America/New_York";
        assert_eq!(
            window(Daily, ny, now),
            is("2026-08-31T00:00:00-04:00", "2026-09-01T00:00:00-04:00")
        );
        assert_eq!(
            window(Monthly, ny, now),
            is("2026-08-01T00:00:00-04:00", "2026-09-01T00:00:00-04:00")
        );
    }

    #[test]
    fn the_api_example() {
        let w = window(Monthly, "Europe/Berlin", "2026-11-17T09:30:00Z");
        assert_eq!(w, is("2026-11-01T00:00:00+01:00", "2026-12-01T00:00:00+01:00"));
    }

    #[test]
    fn weekly_starts_on_monday() {
        let utc = "UTC";
        let week = is("2026-07-13T00:00:00+00:00", "2026-07-20T00:00:00+00:00");
        assert_eq!(window(Weekly, utc, "2026-07-13T00:00:00Z"), week); // Monday 00:00
        assert_eq!(window(Weekly, utc, "2026-07-19T23:59:59.999999999Z"), week); // Sunday
        let next = is("2026-07-20T00:00:00+00:00", "2026-07-27T00:00:00+00:00");
        assert_eq!(window(Weekly, utc, "2026-07-20T00:00:00Z"), next);
        // A week across a month and a year end.
        let across = is("2026-12-28T00:00:00+01:00", "2027-01-04T00:00:00+01:00");
        assert_eq!(window(Weekly, "Europe/Berlin", "2027-01-03T12:00:00Z"), across);
        // A week with the spring-forward Sunday is an hour shorter.
        let w = current(
            Weekly,
            &tz("Europe/Berlin"),
            ts("2026-03-27T12:00:00Z"),
            ts("2020-01-01T00:00:00Z"),
        );
        assert_eq!(w.period_start(), "2026-03-23T00:00:00+01:00");
        assert_eq!(w.resets_at().unwrap(), "2026-03-30T00:00:00+02:00");
        assert_eq!(hours(&w), 7 * 24 - 1);
    }

    #[test]
    fn month_ends_leap_day_and_year_end() {
        let utc = "UTC";
        assert_eq!(
            window(Monthly, utc, "2026-01-31T23:59:59Z"),
            is("2026-01-01T00:00:00+00:00", "2026-02-01T00:00:00+00:00")
        );
        assert_eq!(
            window(Monthly, utc, "2026-02-01T00:00:00Z"),
            is("2026-02-01T00:00:00+00:00", "2026-03-01T00:00:00+00:00")
        );
        // Leap year: February has 29 days; the 29th is in February's period.
        assert_eq!(
            window(Monthly, utc, "2028-02-29T12:00:00Z"),
            is("2028-02-01T00:00:00+00:00", "2028-03-01T00:00:00+00:00")
        );
        assert_eq!(
            window(Daily, utc, "2028-02-29T12:00:00Z"),
            is("2028-02-29T00:00:00+00:00", "2028-03-01T00:00:00+00:00")
        );
        assert_eq!(
            window(Daily, utc, "2026-02-28T12:00:00Z"),
            is("2026-02-28T00:00:00+00:00", "2026-03-01T00:00:00+00:00")
        );
        // December runs into January of the next year.
        assert_eq!(
            window(Monthly, "Europe/Berlin", "2026-12-31T22:59:59Z"),
            is("2026-12-01T00:00:00+01:00", "2027-01-01T00:00:00+01:00")
        );
        assert_eq!(
            window(Daily, "Europe/Berlin", "2026-12-31T22:59:59Z"),
            is("2026-12-31T00:00:00+01:00", "2027-01-01T00:00:00+01:00")
        );
        assert_eq!(
            window(Hourly, "Europe/Berlin", "2026-12-31T22:59:59Z"),
            is("2026-12-31T23:00:00+01:00", "2027-01-01T00:00:00+01:00")
        );
        // A month that starts in winter time and ends in summer time.
        let w = current(
            Monthly,
            &tz("Europe/Berlin"),
            ts("2026-03-15T00:00:00Z"),
            ts("2020-01-01T00:00:00Z"),
        );
        assert_eq!(w.period_start(), "2026-03-01T00:00:00+01:00");
        assert_eq!(w.resets_at().unwrap(), "2026-04-01T00:00:00+02:00");
        assert_eq!(hours(&w), 31 * 24 - 1);
    }

    #[test]
    fn an_instant_on_a_boundary_belongs_to_the_new_period() {
        let berlin = tz("Europe/Berlin");
        let origin = ts("2020-01-01T00:00:00Z");
        let boundary = ts("2026-11-30T23:00:00Z"); // 2026-12-01T00:00+01:00
        let before = boundary - jiff::SignedDuration::from_nanos(1);
        for reset in [Hourly, Daily, Monthly] {
            let old = current(reset, &berlin, before, origin);
            let new = current(reset, &berlin, boundary, origin);
            assert_eq!(new.start.timestamp(), boundary, "{reset:?}");
            assert_eq!(old.end.as_ref().unwrap().timestamp(), boundary, "{reset:?}");
            assert!(!old.contains(boundary) && new.contains(boundary), "{reset:?}");
            assert!(old.contains(before) && !new.contains(before), "{reset:?}");
        }
        // Monday 2026-11-30 00:00 in Berlin starts a week.
        let monday = ts("2026-11-29T23:00:00Z");
        assert_eq!(current(Weekly, &berlin, monday, origin).start.timestamp(), monday);
        let old = current(Weekly, &berlin, monday - jiff::SignedDuration::from_nanos(1), origin);
        assert_eq!(old.end.unwrap().timestamp(), monday);
    }

    #[test]
    fn never_starts_at_the_origin_and_does_not_end() {
        let origin = ts("2026-03-04T05:06:07Z");
        let w = current(Never, &tz("Europe/Berlin"), ts("2031-01-01T00:00:00Z"), origin);
        assert_eq!(w.period_start(), "2026-03-04T06:06:07+01:00");
        assert_eq!(w.resets_at(), None);
        assert_eq!(w.end, None);
        assert!(w.contains(origin));
        assert!(w.contains(ts("2099-01-01T00:00:00Z")));
        assert!(!w.contains(origin - jiff::SignedDuration::from_nanos(1)));
    }

    #[test]
    fn contains_is_half_open() {
        let w = current(
            Daily,
            &tz("UTC"),
            ts("2026-05-05T05:00:00Z"),
            ts("2020-01-01T00:00:00Z"),
        );
        assert!(w.contains(ts("2026-05-05T00:00:00Z")));
        assert!(w.contains(ts("2026-05-05T23:59:59.999999999Z")));
        assert!(!w.contains(ts("2026-05-06T00:00:00Z")));
        assert!(!w.contains(ts("2026-05-04T23:59:59.999999999Z")));
    }

    #[test]
    fn berlin_spring_forward() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC). The day has 23 hours.
        let berlin = "Europe/Berlin";
        let day = is("2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00");
        assert_eq!(window(Daily, berlin, "2026-03-28T23:00:00Z"), day);
        assert_eq!(window(Daily, berlin, "2026-03-29T12:00:00Z"), day);
        assert_eq!(window(Daily, berlin, "2026-03-29T21:59:59Z"), day);
        let w = current(
            Daily,
            &tz(berlin),
            ts("2026-03-29T12:00:00Z"),
            ts("2020-01-01T00:00:00Z"),
        );
        assert_eq!(hours(&w), 23);
        // The hour before the gap ends at the jump, which starts 03:00 CEST.
        assert_eq!(
            window(Hourly, berlin, "2026-03-29T00:30:00Z"),
            is("2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00")
        );
        assert_eq!(
            window(Hourly, berlin, "2026-03-29T01:00:00Z"),
            is("2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00")
        );
    }

    #[test]
    fn berlin_fall_back() {
        // 2026-10-25: 03:00 CEST goes back to 02:00 CET (01:00 UTC). The day has 25 hours.
        let berlin = "Europe/Berlin";
        let day = is("2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00");
        assert_eq!(window(Daily, berlin, "2026-10-24T22:00:00Z"), day);
        assert_eq!(window(Daily, berlin, "2026-10-25T00:30:00Z"), day);
        assert_eq!(window(Daily, berlin, "2026-10-25T01:30:00Z"), day);
        assert_eq!(window(Daily, berlin, "2026-10-25T22:59:59Z"), day);
        let w = current(
            Daily,
            &tz(berlin),
            ts("2026-10-25T12:00:00Z"),
            ts("2020-01-01T00:00:00Z"),
        );
        assert_eq!(hours(&w), 25);
        // 02:00-03:00 happens twice: two distinct one-hour periods.
        let first = window(Hourly, berlin, "2026-10-25T00:30:00Z"); // 02:30 CEST
        let second = window(Hourly, berlin, "2026-10-25T01:30:00Z"); // 02:30 CET
        assert_eq!(first, is("2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00"));
        assert_eq!(second, is("2026-10-25T02:00:00+01:00", "2026-10-25T03:00:00+01:00"));
        assert_eq!(
            window(Hourly, berlin, "2026-10-24T23:59:59Z"),
            is("2026-10-25T01:00:00+02:00", "2026-10-25T02:00:00+02:00")
        );
        // Exactly at the fold: the second 02:00 starts a new hour.
        assert_eq!(window(Hourly, berlin, "2026-10-25T01:00:00Z"), second);
    }

    #[test]
    fn new_york_spring_forward_and_fall_back() {
        let ny = "America/New_York";
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
        let spring = is("2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00");
        assert_eq!(window(Daily, ny, "2026-03-08T05:00:00Z"), spring);
        assert_eq!(window(Daily, ny, "2026-03-09T03:59:59Z"), spring);
        assert_eq!(
            window(Hourly, ny, "2026-03-08T06:59:59Z"),
            is("2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00")
        );
        assert_eq!(
            window(Hourly, ny, "2026-03-08T07:00:00Z"),
            is("2026-03-08T03:00:00-04:00", "2026-03-08T04:00:00-04:00")
        );
        // 2026-11-01: 02:00 EDT goes back to 01:00 EST (06:00 UTC); 01:00-02:00 twice.
        let fall = is("2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00");
        assert_eq!(window(Daily, ny, "2026-11-01T04:00:00Z"), fall);
        assert_eq!(window(Daily, ny, "2026-11-01T06:30:00Z"), fall);
        assert_eq!(window(Daily, ny, "2026-11-02T04:59:59Z"), fall);
        assert_eq!(
            window(Hourly, ny, "2026-11-01T05:30:00Z"),
            is("2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00")
        );
        assert_eq!(
            window(Hourly, ny, "2026-11-01T06:30:00Z"),
            is("2026-11-01T01:00:00-05:00", "2026-11-01T02:00:00-05:00")
        );
        assert_eq!(
            window(Monthly, ny, "2026-11-15T12:00:00Z"),
            is("2026-11-01T00:00:00-04:00", "2026-12-01T00:00:00-05:00")
        );
    }

    #[test]
    fn a_day_whose_midnight_does_not_exist_starts_at_the_jump() {
        // America/Sao_Paulo, 2015-10-18: 00:00 -03 jumped to 01:00 -02.
        assert_eq!(
            window(Daily, "America/Sao_Paulo", "2015-10-18T15:00:00Z"),
            is("2015-10-18T01:00:00-02:00", "2015-10-19T00:00:00-02:00")
        );
        // The day before ends at the jump.
        assert_eq!(
            window(Daily, "America/Sao_Paulo", "2015-10-18T02:59:59Z"),
            is("2015-10-17T00:00:00-03:00", "2015-10-18T01:00:00-02:00")
        );
        // America/Havana, 2026-03-08: 00:00 CST jumps to 01:00 CDT.
        assert_eq!(
            window(Daily, "America/Havana", "2026-03-08T12:00:00Z"),
            is("2026-03-08T01:00:00-04:00", "2026-03-09T00:00:00-04:00")
        );
        // America/Santiago, 2022-09-11: 00:00 -04 jumped to 01:00 -03.
        assert_eq!(
            window(Daily, "America/Santiago", "2022-09-11T12:00:00Z"),
            is("2022-09-11T01:00:00-03:00", "2022-09-12T00:00:00-03:00")
        );
        // Asia/Beirut, 2022-03-27: 00:00 EET jumped to 01:00 EEST.
        assert_eq!(
            window(Daily, "Asia/Beirut", "2022-03-27T12:00:00Z"),
            is("2022-03-27T01:00:00+03:00", "2022-03-28T00:00:00+03:00")
        );
        // A Monday without a midnight starts its week at the jump: Asia/Tehran, 2021-03-22.
        assert_eq!(
            window(Weekly, "Asia/Tehran", "2021-03-25T12:00:00Z"),
            is("2021-03-22T01:00:00+04:30", "2021-03-29T00:00:00+04:30")
        );
        // And a 1st without a midnight its month: Asia/Jerusalem, 1994-04-01.
        assert_eq!(
            window(Monthly, "Asia/Jerusalem", "1994-04-15T12:00:00Z"),
            is("1994-04-01T01:00:00+03:00", "1994-05-01T00:00:00+03:00")
        );
        assert_eq!(
            window(Monthly, "Asia/Jerusalem", "1994-03-31T12:00:00Z"),
            is("1994-03-01T00:00:00+02:00", "1994-04-01T01:00:00+03:00")
        );
    }

    #[test]
    fn fold_at_midnight_is_one_day() {
        // America/Havana, 2026-11-01: 01:00 CDT goes back to 00:00 CST; midnight happens twice and
        // the day starts at the first.
        let havana = "America/Havana";
        let day = is("2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00");
        assert_eq!(window(Daily, havana, "2026-11-01T04:30:00Z"), day);
        assert_eq!(window(Daily, havana, "2026-11-01T05:30:00Z"), day);
        // Hourly: the two 00:00 are two hours.
        assert_eq!(
            window(Hourly, havana, "2026-11-01T04:30:00Z"),
            is("2026-11-01T00:00:00-04:00", "2026-11-01T00:00:00-05:00")
        );
        assert_eq!(
            window(Hourly, havana, "2026-11-01T05:30:00Z"),
            is("2026-11-01T00:00:00-05:00", "2026-11-01T01:00:00-05:00")
        );
    }

    #[test]
    fn clocks_going_back_across_midnight() {
        // America/Goose_Bay, 1990-10-28: 00:01 -03 went back to 23:01 -04 on the 27th. The 28th
        // had begun, so its period goes on through the repeated hour of the 27th.
        let goose = "America/Goose_Bay";
        let day = is("1990-10-28T00:00:00-03:00", "1990-10-29T00:00:00-04:00");
        assert_eq!(window(Daily, goose, "1990-10-28T03:00:00Z"), day);
        assert_eq!(window(Daily, goose, "1990-10-28T03:30:00Z"), day); // 23:30 on the 27th
        assert_eq!(
            window(Daily, goose, "1990-10-28T02:59:59Z"),
            is("1990-10-27T00:00:00-03:00", "1990-10-28T00:00:00-03:00")
        );
        // Hourly: the jump back into hour 23 starts an hour (it is not on the full hour).
        assert_eq!(
            window(Hourly, goose, "1990-10-28T03:00:30Z"),
            is("1990-10-28T00:00:00-03:00", "1990-10-27T23:01:00-04:00")
        );
        assert_eq!(
            window(Hourly, goose, "1990-10-28T03:30:00Z"),
            is("1990-10-27T23:01:00-04:00", "1990-10-28T00:00:00-04:00")
        );
        // America/Argentina/Catamarca, 1991-03-03: 00:00 -02 went back two hours to 22:00 -04 on
        // the 2nd, so midnight first reads at 04:00 UTC and the 2nd lasts 26 hours.
        let catamarca = "America/Argentina/Catamarca";
        let day = is("1991-03-02T00:00:00-02:00", "1991-03-03T00:00:00-04:00");
        assert_eq!(window(Daily, catamarca, "1991-03-03T01:59:59Z"), day);
        assert_eq!(window(Daily, catamarca, "1991-03-03T02:30:00Z"), day);
        let w = current(
            Daily,
            &tz(catamarca),
            ts("1991-03-03T02:30:00Z"),
            ts("1990-01-01T00:00:00Z"),
        );
        assert_eq!(hours(&w), 26);
        assert_eq!(
            window(Hourly, catamarca, "1991-03-03T01:30:00Z"),
            is("1991-03-02T23:00:00-02:00", "1991-03-02T22:00:00-04:00")
        );
        assert_eq!(
            window(Hourly, catamarca, "1991-03-03T02:00:00Z"),
            is("1991-03-02T22:00:00-04:00", "1991-03-02T23:00:00-04:00")
        );
    }

    #[test]
    fn half_hour_zones_use_local_hours() {
        // Asia/Kolkata is +05:30: local hours start at :30 UTC.
        assert_eq!(
            window(Hourly, "Asia/Kolkata", "2026-07-15T10:29:59Z"),
            is("2026-07-15T15:00:00+05:30", "2026-07-15T16:00:00+05:30")
        );
        assert_eq!(
            window(Hourly, "Asia/Kolkata", "2026-07-15T10:30:00Z"),
            is("2026-07-15T16:00:00+05:30", "2026-07-15T17:00:00+05:30")
        );
        assert_eq!(
            window(Daily, "Asia/Kolkata", "2026-07-15T18:30:00Z"),
            is("2026-07-16T00:00:00+05:30", "2026-07-17T00:00:00+05:30")
        );
        // Asia/Kathmandu is +05:45.
        assert_eq!(
            window(Hourly, "Asia/Kathmandu", "2026-07-15T10:00:00Z"),
            is("2026-07-15T15:00:00+05:45", "2026-07-15T16:00:00+05:45")
        );
    }

    #[test]
    fn half_hour_dst_shift() {
        // Australia/Lord_Howe switches between +10:30 and +11:00. 2026-10-04 02:00 +10:30 jumps to
        // 02:30 +11:00, so local hour 02 is half an hour long and starts at the jump.
        let lh = "Australia/Lord_Howe";
        assert_eq!(
            window(Hourly, lh, "2026-10-03T15:29:59Z"),
            is("2026-10-04T01:00:00+10:30", "2026-10-04T02:30:00+11:00")
        );
        assert_eq!(
            window(Hourly, lh, "2026-10-03T15:30:00Z"),
            is("2026-10-04T02:30:00+11:00", "2026-10-04T03:00:00+11:00")
        );
        // 2026-04-05 02:00 +11:00 goes back to 01:30 +10:30: hour 01 lasts 90 minutes.
        let w = window(Hourly, lh, "2026-04-04T14:45:00Z"); // 01:45 +10:30, the second time
        assert_eq!(w, is("2026-04-05T01:00:00+11:00", "2026-04-05T02:00:00+10:30"));
    }

    #[test]
    fn parse_timezone_accepts_iana_names_only() {
        assert!(parse_timezone("Europe/Berlin").is_ok());
        assert!(parse_timezone("UTC").is_ok());
        let err = parse_timezone("Mars/Olympus").unwrap_err().to_string();
        assert!(err.contains("Mars/Olympus"), "{err}");
        assert!(parse_timezone("").is_err());
    }

    #[test]
    fn rfc3339_uses_the_offset_and_keeps_fractions() {
        let z = ts("2026-11-01T00:00:00.25Z").to_zoned(tz("America/New_York"));
        assert_eq!(rfc3339(&z), "2026-10-31T20:00:00.25-04:00");
        let utc = ts("2026-11-01T00:00:00Z").to_zoned(TimeZone::UTC);
        assert_eq!(rfc3339(&utc), "2026-11-01T00:00:00+00:00");
    }

    /// Around every transition of every zone from 1970 to 2030 (gaps and folds at and across
    /// midnight, half-hour shifts, whole skipped days, ...), every kind gives a period that
    /// contains `now`, and consecutive periods meet without gaps or overlaps.
    #[test]
    fn all_zones_around_transitions() {
        let origin = ts("1980-01-01T00:00:00Z");
        let from = ts("1970-01-01T00:00:00Z");
        let until = ts("2030-01-01T00:00:00Z");
        let offsets = [-1, 0, 1_800];
        let mut checked = 0;
        for name in jiff::tz::db().available() {
            let zone = tz(name.as_str());
            for tr in zone.following(from).take_while(|tr| tr.timestamp() < until) {
                for secs in offsets {
                    let now = tr.timestamp() + jiff::SignedDuration::from_secs(secs);
                    for reset in [Hourly, Daily, Weekly, Monthly] {
                        let w = current(reset, &zone, now, origin);
                        let end = w.end.as_ref().expect("periodic kinds end").timestamp();
                        let what = || format!("{name} {reset:?} at {now}: {w:?}");
                        assert!(w.contains(now), "{}", what());
                        // The next period starts where this one ends, and the previous one ends
                        // where this one starts.
                        assert_eq!(current(reset, &zone, end, origin).start.timestamp(), end, "{}", what());
                        let before = w.start.timestamp() - jiff::SignedDuration::from_nanos(1);
                        let prev = current(reset, &zone, before, origin);
                        assert_eq!(prev.end.map(|e| e.timestamp()), Some(w.start.timestamp()), "{}", what());
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }
}
