//! Billing schedules: which local day, and which instant, each period of a subscription is
//! charged on. Pure arithmetic, no I/O.
//!
//! Period `n` (0-based) has a *nominal* day computed from `n` alone, never from the previous
//! period's actual date, so a late or retried payment never moves the anchor. The nominal day
//! may be *adjusted* off a weekend (`nearest_weekday`), and the charge instant is the adjusted
//! day at `charge_time` in a fixed UTC offset (ours is [`super::terms::SAST`], UTC+2:
//! Africa/Johannesburg has no daylight saving, so a fixed offset is exact).

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset, Weekday};

/// The most periods [`Schedule::periods_between`] returns, so a wide range stays cheap.
pub const MAX_PERIODS: usize = 10_000;

/// The length of one interval of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Day,
    Week,
    Month,
    Year,
}

/// Which day of its period a charge falls on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// Daily schedules.
    None,
    /// Weekly: this weekday.
    Weekday(Weekday),
    /// Monthly: 1 to 31 (29 to 31 clamp to the month's last day), or -1 for the last day.
    DayOfMonth(i8),
    /// Yearly: this month and day (29 February clamps to 28 February in common years).
    MonthDay(Month, u8),
}

/// When a subscription is charged: one charge per `every` `unit`s, on `anchor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub unit: Unit,
    /// The interval count, 1 to 1000.
    pub every: u32,
    pub anchor: Anchor,
    /// The first day that may be billed (local date).
    pub start: Date,
    /// The last day that may be billed, inclusive (local date), checked on nominal days.
    pub end: Option<Date>,
    /// At most this many periods.
    pub count: Option<u32>,
    /// The local time of day of each charge, e.g. 09:00.
    pub charge_time: Time,
    /// The billing time zone's offset (fixed).
    pub offset: UtcOffset,
    /// Moment's `adjustment: nearest_weekday`; see [`Schedule::day`].
    pub nearest_weekday: bool,
}

impl Schedule {
    /// Whether the schedule makes sense; the error names the field in plain words. The other
    /// methods treat a schedule failing this as having no periods at all.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=1000).contains(&self.every) {
            return Err(format!(
                "the interval count must be between 1 and 1000, not {}",
                self.every
            ));
        }
        match (self.unit, self.anchor) {
            (Unit::Day, Anchor::None) | (Unit::Week, Anchor::Weekday(_)) => {}
            (Unit::Month, Anchor::DayOfMonth(d)) => {
                if d != -1 && !(1..=31).contains(&d) {
                    return Err(format!(
                        "the day of the month must be 1 to 31, or -1 for the last day, not {d}"
                    ));
                }
            }
            (Unit::Year, Anchor::MonthDay(month, d)) => {
                // Checked against a leap year (2000), so 29 February is a valid anchor.
                let last = time::util::days_in_month(month, 2000);
                if !(1..=last).contains(&d) {
                    return Err(format!(
                        "the day of the year must be 1 to {last} {month}, not {d} {month}"
                    ));
                }
            }
            (unit, anchor) => {
                return Err(format!(
                    "the anchor {anchor:?} does not fit a {unit:?} schedule"
                ));
            }
        }
        // Daily charges moved off a weekend would land on a neighbouring period's day (or
        // before it), so charges would no longer be strictly ordered.
        if self.nearest_weekday && self.unit == Unit::Day {
            return Err("the nearest weekday adjustment does not apply to daily schedules".into());
        }
        if self.end.is_some_and(|end| end < self.start) {
            return Err("the end date must not be before the start date".into());
        }
        if self.count == Some(0) {
            return Err("the number of periods must be at least 1".into());
        }
        Ok(())
    }

    /// The unadjusted billing day of period `n`, or `None` past the `time` crate's dates.
    /// Ignores `end` and `count`: it is where the period would fall.
    pub fn nominal_day(&self, n: u32) -> Option<Date> {
        if self.check().is_err() {
            return None;
        }
        let steps = i64::from(n) * i64::from(self.every);
        match self.anchor {
            Anchor::None => add_days(self.start, steps),
            Anchor::Weekday(weekday) => {
                let ahead = (i64::from(weekday.number_days_from_monday())
                    - i64::from(self.start.weekday().number_days_from_monday()))
                .rem_euclid(7);
                add_days(self.start, ahead + 7 * steps)
            }
            Anchor::DayOfMonth(d) => {
                let in_start_month = day_of_month(self.start.year(), self.start.month(), d)?;
                let first = month_index(self.start) + i64::from(in_start_month < self.start);
                let (year, month) = from_month_index(first + steps)?;
                day_of_month(year, month, d)
            }
            Anchor::MonthDay(month, d) => {
                let year = i64::from(self.start.year());
                let first = year + i64::from(clamped(year, month, d)? < self.start);
                clamped(first + steps, month, d)
            }
        }
    }

    /// The billing day of period `n`: its nominal day, moved off a weekend when
    /// `nearest_weekday` is set.
    ///
    /// This is OUR reading of Moment's `nearest_weekday`: a Saturday moves to the Friday
    /// before and a Sunday to the Monday after, but never into another month, so a Saturday
    /// the 1st moves to Monday the 3rd and a Sunday on the month's last day to the Friday
    /// before. Moment documents neither month edges nor public holidays; we ignore holidays.
    pub fn day(&self, n: u32) -> Option<Date> {
        self.adjusted(self.nominal_day(n)?)
    }

    /// The instant period `n` is charged: [`Schedule::day`] at `charge_time` in `offset`, or
    /// `None` once `count` periods are done, when the *nominal* day is after `end`, or past
    /// the `time` crate's dates. Because `end` is checked on the nominal day, an adjusted
    /// charge can land up to two days after `end` (and one day before `start`).
    pub fn at(&self, n: u32) -> Option<OffsetDateTime> {
        if self.count.is_some_and(|count| n >= count) {
            return None;
        }
        let nominal = self.nominal_day(n)?;
        if self.end.is_some_and(|end| nominal > end) {
            return None;
        }
        let day = self.adjusted(nominal)?;
        Some(PrimitiveDateTime::new(day, self.charge_time).assume_offset(self.offset))
    }

    /// The first period charged at or after `t`, or `None` if the schedule ends first.
    pub fn first_due_at_or_after(&self, t: OffsetDateTime) -> Option<u32> {
        let first = self.nominal_day(0)?;
        // A period charged at or after `t` has its adjusted day on or after t's local day,
        // and adjusting moves a day by at most two, so its nominal day is on or after `floor`.
        // Counting whole periods from the first nominal day to `floor` therefore never
        // overshoots the answer, and lands within a period or two of it.
        let target = local_day(t, self.offset);
        let floor = add_days(target, -2).unwrap_or(Date::MIN);
        let every = i64::from(self.every);
        let periods = match self.unit {
            Unit::Day => days_between(first, floor).div_euclid(every),
            Unit::Week => days_between(first, floor).div_euclid(7 * every),
            Unit::Month => (month_index(floor) - month_index(first)).div_euclid(every),
            Unit::Year => (i64::from(floor.year()) - i64::from(first.year())).div_euclid(every),
        };
        // Past u32::MAX periods nothing can be due.
        let mut n = u32::try_from(periods.max(0)).ok()?;
        loop {
            if self.at(n)? >= t {
                return Some(n);
            }
            n = n.checked_add(1)?;
        }
    }

    /// Every period charged in `[from, to)`, in order, at most [`MAX_PERIODS`] of them.
    pub fn periods_between(&self, from: OffsetDateTime, to: OffsetDateTime) -> Vec<u32> {
        let mut out = Vec::new();
        let Some(mut n) = self.first_due_at_or_after(from) else {
            return out;
        };
        while out.len() < MAX_PERIODS {
            match self.at(n) {
                Some(at) if at < to => out.push(n),
                _ => break,
            }
            match n.checked_add(1) {
                Some(next) => n = next,
                None => break,
            }
        }
        out
    }

    /// Up to `k` periods from `from_n` on, with their charge instants, while they exist.
    pub fn preview(&self, from_n: u32, k: usize) -> Vec<(u32, OffsetDateTime)> {
        (from_n..=u32::MAX)
            .take(k)
            .map_while(|n| self.at(n).map(|at| (n, at)))
            .collect()
    }

    fn adjusted(&self, nominal: Date) -> Option<Date> {
        if !self.nearest_weekday {
            return Some(nominal);
        }
        // (towards the nearest weekday, the other way when that leaves the month)
        let (near, far) = match nominal.weekday() {
            Weekday::Saturday => (-1, 2),
            Weekday::Sunday => (1, -2),
            _ => return Some(nominal),
        };
        let moved = add_days(nominal, near)?;
        if moved.month() == nominal.month() {
            Some(moved)
        } else {
            add_days(nominal, far)
        }
    }
}

/// The local day of an instant in `offset` (a charge at 23:30 UTC on the 31st is on the 1st
/// at +02:00). Saturates at the `time` crate's first or last date rather than panic.
pub fn local_day(at: OffsetDateTime, offset: UtcOffset) -> Date {
    match at.checked_to_offset(offset) {
        Some(local) => local.date(),
        None if at.year() > 0 => Date::MAX,
        None => Date::MIN,
    }
}

/// `day` plus `days`, or `None` outside the `time` crate's dates.
fn add_days(day: Date, days: i64) -> Option<Date> {
    let julian = i64::from(day.to_julian_day()).checked_add(days)?;
    Date::from_julian_day(i32::try_from(julian).ok()?).ok()
}

fn days_between(from: Date, to: Date) -> i64 {
    i64::from(to.to_julian_day()) - i64::from(from.to_julian_day())
}

/// Months since year 0: month arithmetic without carrying years by hand.
fn month_index(day: Date) -> i64 {
    i64::from(day.year()) * 12 + i64::from(u8::from(day.month())) - 1
}

fn from_month_index(index: i64) -> Option<(i32, Month)> {
    let year = i32::try_from(index.div_euclid(12)).ok()?;
    let month = Month::try_from(u8::try_from(index.rem_euclid(12) + 1).ok()?).ok()?;
    Some((year, month))
}

/// `day` clamped into `month` of `year` (31 becomes 30, 29 or 28), if that date exists.
fn clamped(year: i64, month: Month, day: u8) -> Option<Date> {
    let year = i32::try_from(year).ok()?;
    let last = time::util::days_in_month(month, year);
    Date::from_calendar_date(year, month, day.min(last)).ok()
}

/// A monthly anchor's day in `month` of `year`: -1 (no u8) is the last day.
fn day_of_month(year: i32, month: Month, anchor: i8) -> Option<Date> {
    clamped(i64::from(year), month, u8::try_from(anchor).unwrap_or(31))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::terms::SAST;
    use proptest::prelude::*;
    use time::Duration;
    use time::macros::{date, datetime, time};

    fn schedule(unit: Unit, every: u32, anchor: Anchor, start: Date) -> Schedule {
        Schedule {
            unit,
            every,
            anchor,
            start,
            end: None,
            count: None,
            charge_time: time!(09:00),
            offset: SAST,
            nearest_weekday: false,
        }
    }

    fn monthly(anchor: i8, start: Date) -> Schedule {
        schedule(Unit::Month, 1, Anchor::DayOfMonth(anchor), start)
    }

    /// The first `k` billing days, as `YYYY-MM-DD` separated by spaces.
    fn days(s: &Schedule, k: u32) -> String {
        let days: Vec<String> = (0..k).map(|n| s.day(n).unwrap().to_string()).collect();
        days.join(" ")
    }

    fn brute_first(s: &Schedule, t: OffsetDateTime) -> Option<u32> {
        (0u32..)
            .map_while(|n| s.at(n).map(|at| (n, at)))
            .find(|&(_, at)| at >= t)
            .map(|(n, _)| n)
    }

    #[test]
    fn monthly_on_the_31st_clamps_to_short_months_and_returns_to_the_31st() {
        assert_eq!(
            days(&monthly(31, date!(2026 - 01 - 15)), 12),
            "2026-01-31 2026-02-28 2026-03-31 2026-04-30 2026-05-31 2026-06-30 \
             2026-07-31 2026-08-31 2026-09-30 2026-10-31 2026-11-30 2026-12-31"
        );
        assert_eq!(
            days(&monthly(31, date!(2027 - 12 - 01)), 4),
            "2027-12-31 2028-01-31 2028-02-29 2028-03-31"
        );
    }

    #[test]
    fn minus_one_is_the_last_day_and_a_day_already_past_starts_next_month() {
        assert_eq!(
            days(&monthly(-1, date!(2027 - 12 - 15)), 5),
            "2027-12-31 2028-01-31 2028-02-29 2028-03-31 2028-04-30"
        );
        assert_eq!(days(&monthly(10, date!(2026 - 01 - 15)), 1), "2026-02-10");
        assert_eq!(days(&monthly(15, date!(2026 - 01 - 15)), 1), "2026-01-15");
    }

    #[test]
    fn a_quarterly_schedule_skips_two_months_each_time() {
        let fifteenth = Anchor::DayOfMonth(15);
        let s = schedule(Unit::Month, 3, fifteenth, date!(2026 - 01 - 20));
        assert_eq!(
            days(&s, 5),
            "2026-02-15 2026-05-15 2026-08-15 2026-11-15 2027-02-15"
        );
    }

    #[test]
    fn a_fortnightly_schedule_starts_on_the_first_anchor_weekday_on_or_after_start() {
        // 2026-12-03 is a Thursday.
        let monday = Anchor::Weekday(Weekday::Monday);
        let s = schedule(Unit::Week, 2, monday, date!(2026 - 12 - 03));
        assert_eq!(days(&s, 4), "2026-12-07 2026-12-21 2027-01-04 2027-01-18");
    }

    #[test]
    fn a_yearly_29_february_falls_on_the_28th_in_common_years_and_the_29th_in_leap_years() {
        let leap_day = Anchor::MonthDay(Month::February, 29);
        let s = schedule(Unit::Year, 1, leap_day, date!(2024 - 01 - 01));
        assert_eq!(
            days(&s, 8),
            "2024-02-29 2025-02-28 2026-02-28 2027-02-28 \
             2028-02-29 2029-02-28 2030-02-28 2031-02-28"
        );
        let late = schedule(Unit::Year, 1, leap_day, date!(2024 - 03 - 01));
        assert_eq!(days(&late, 2), "2025-02-28 2026-02-28");
    }

    #[test]
    fn nearest_weekday_moves_weekends_but_never_into_another_month() {
        let adjusted = |anchor, start| Schedule {
            nearest_weekday: true,
            ..monthly(anchor, start)
        };
        // Saturday 2026-12-05 moves to the Friday before, Sunday 2026-12-06 to the Monday after.
        let saturday = adjusted(5, date!(2026 - 12 - 01));
        assert_eq!(saturday.nominal_day(0), Some(date!(2026 - 12 - 05)));
        assert_eq!(days(&saturday, 1), "2026-12-04");
        assert_eq!(days(&adjusted(6, date!(2026 - 12 - 01)), 1), "2026-12-07");
        assert_eq!(days(&monthly(5, date!(2026 - 12 - 01)), 1), "2026-12-05");
        // Saturday 2026-08-01: the Friday before is in July, so the Monday after; the anchor
        // does not move, so September's charge is on Tuesday the 1st.
        assert_eq!(
            days(&adjusted(1, date!(2026 - 08 - 01)), 2),
            "2026-08-03 2026-09-01"
        );
        // Sunday 2026-05-31: the Monday after is in June, so the Friday before.
        assert_eq!(days(&adjusted(-1, date!(2026 - 05 - 01)), 1), "2026-05-29");
    }

    #[test]
    fn a_half_past_midnight_charge_in_johannesburg_is_the_previous_day_in_utc() {
        let s = Schedule {
            charge_time: time!(00:30),
            ..monthly(1, date!(2026 - 02 - 01))
        };
        let at = s.at(0).unwrap();
        assert_eq!(at, datetime!(2026-01-31 22:30 UTC));
        assert_eq!(local_day(at, SAST), date!(2026 - 02 - 01));
        assert_eq!(local_day(at, UtcOffset::UTC), date!(2026 - 01 - 31));
    }

    #[test]
    fn end_and_count_stop_the_schedule() {
        let base = monthly(31, date!(2026 - 01 - 15));
        let counted = Schedule {
            count: Some(3),
            ..base.clone()
        };
        assert!(counted.at(2).is_some());
        assert_eq!(counted.at(3), None);
        assert_eq!(counted.preview(1, 10).len(), 2);
        let ended = Schedule {
            end: Some(date!(2026 - 04 - 29)),
            ..base.clone()
        };
        assert_eq!(ended.at(2), Some(datetime!(2026-03-31 09:00 +2)));
        assert_eq!(ended.at(3), None);
        assert_eq!(ended.preview(0, 10).len(), 3);
        let april = datetime!(2026-04-01 0:00 UTC);
        assert_eq!(ended.first_due_at_or_after(april), None);
        let on_the_day = Schedule {
            end: Some(date!(2026 - 04 - 30)),
            ..base
        };
        assert_eq!(on_the_day.at(3), Some(datetime!(2026-04-30 09:00 +2)));
    }

    #[test]
    fn the_first_period_due_far_in_the_future_matches_a_linear_scan() {
        let start = date!(2026 - 01 - 15);
        let friday = Anchor::Weekday(Weekday::Friday);
        let schedules = [
            schedule(Unit::Day, 1, Anchor::None, start),
            schedule(Unit::Day, 7, Anchor::None, start),
            schedule(Unit::Week, 2, friday, start),
            Schedule {
                nearest_weekday: true,
                ..monthly(31, start)
            },
            schedule(Unit::Month, 5, Anchor::DayOfMonth(-1), start),
            schedule(Unit::Year, 1, Anchor::MonthDay(Month::February, 29), start),
        ];
        let t = datetime!(2091-03-01 05:00 UTC);
        for s in schedules {
            let want = brute_first(&s, t);
            assert!(want.is_some());
            assert_eq!(s.first_due_at_or_after(t), want, "{s:?}");
        }
    }

    #[test]
    fn check_names_the_field_that_is_wrong() {
        const FEB_30: Anchor = Anchor::MonthDay(Month::February, 30);
        let ok = Schedule {
            nearest_weekday: true,
            ..monthly(31, date!(2026 - 01 - 15))
        };
        assert_eq!(ok.check(), Ok(()));
        type Break = (fn(&mut Schedule), &'static str);
        let breaks: [Break; 7] = [
            (|s| s.every = 0, "interval"),
            (|s| s.anchor = Anchor::DayOfMonth(32), "day of the month"),
            (|s| s.anchor = Anchor::None, "anchor"),
            (|s| s.end = Some(date!(2026 - 01 - 14)), "end date"),
            (|s| s.count = Some(0), "number of periods"),
            (
                |s| (s.unit, s.anchor) = (Unit::Year, FEB_30),
                "day of the year",
            ),
            (
                |s| (s.unit, s.anchor) = (Unit::Day, Anchor::None),
                "nearest weekday",
            ),
        ];
        for (breaking, field) in breaks {
            let mut s = ok.clone();
            breaking(&mut s);
            let err = s.check().unwrap_err();
            assert!(err.contains(field), "{err}");
            assert_eq!(s.at(0), None);
        }
    }

    fn schedules_of(units: &'static [Unit]) -> impl Strategy<Value = Schedule> {
        (
            (proptest::sample::select(units), 1u32..=24, any::<bool>()),
            (0u8..7, 0i8..=31, 1u8..=12, 1u8..=31),
            (0i64..36_500, 0u8..24, 0u8..60, -12i8..=14),
            (
                proptest::option::of(1u32..400),
                proptest::option::of(0i64..5000),
            ),
        )
            .prop_map(
                |(
                    (unit, every, nearest),
                    (wd, mday, month, yday),
                    (start, h, m, o),
                    (count, end),
                )| {
                    let month = Month::try_from(month).unwrap();
                    let anchor = match unit {
                        Unit::Day => Anchor::None,
                        Unit::Week => Anchor::Weekday(Weekday::Monday.nth_next(wd)),
                        Unit::Month => Anchor::DayOfMonth(if mday == 0 { -1 } else { mday }),
                        Unit::Year => Anchor::MonthDay(
                            month,
                            yday.min(time::util::days_in_month(month, 2000)),
                        ),
                    };
                    let start = add_days(date!(2000 - 01 - 01), start).unwrap();
                    Schedule {
                        end: end.map(|d| add_days(start, d).unwrap()),
                        count,
                        charge_time: Time::from_hms(h, m, 0).unwrap(),
                        offset: UtcOffset::from_hms(o, 0, 0).unwrap(),
                        nearest_weekday: nearest && unit != Unit::Day,
                        ..schedule(unit, every, anchor, start)
                    }
                },
            )
    }

    fn schedules() -> impl Strategy<Value = Schedule> {
        schedules_of(&[Unit::Day, Unit::Week, Unit::Month, Unit::Year])
    }

    /// From a year before `start` to ten years after it, in minutes.
    const MINUTES: std::ops::Range<i64> = -525_600..5_256_000;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn charges_come_strictly_later_period_by_period(s in schedules()) {
            prop_assert_eq!(s.check(), Ok(()));
            let mut previous = None;
            for n in 0..60 {
                let Some(at) = s.at(n) else {
                    // Once a schedule has ended it stays ended.
                    prop_assert_eq!(s.at(n + 1), None);
                    break;
                };
                if let Some(p) = previous {
                    prop_assert!(p < at, "period {} at {} is not after {}", n, at, p);
                }
                previous = Some(at);
            }
        }

        #[test]
        fn monthly_nominal_days_fall_in_their_month_on_the_clamped_anchor(
            s in schedules_of(&[Unit::Month])
        ) {
            let Anchor::DayOfMonth(anchor) = s.anchor else { panic!() };
            let first = s.nominal_day(0).unwrap();
            prop_assert!(first >= s.start);
            prop_assert!(month_index(first) - month_index(s.start) <= 1);
            for n in 0..40u32 {
                let day = s.nominal_day(n).unwrap();
                let months = i64::from(n) * i64::from(s.every);
                prop_assert_eq!(month_index(day), month_index(first) + months);
                let last = time::util::days_in_month(day.month(), day.year());
                let want = u8::try_from(anchor).map_or(last, |a| a.min(last));
                prop_assert_eq!(day.day(), want);
            }
        }

        #[test]
        fn the_first_due_period_matches_a_linear_scan(s in schedules(), minutes in MINUTES) {
            let t = s.start.midnight().assume_utc() + Duration::minutes(minutes);
            prop_assert_eq!(s.first_due_at_or_after(t), brute_first(&s, t));
        }

        #[test]
        fn nearest_weekdays_are_weekdays_in_the_nominal_days_month(
            s in schedules_of(&[Unit::Week, Unit::Month, Unit::Year])
        ) {
            let s = Schedule { nearest_weekday: true, ..s };
            for n in 0..40 {
                let (nominal, day) = (s.nominal_day(n).unwrap(), s.day(n).unwrap());
                prop_assert!(!matches!(day.weekday(), Weekday::Saturday | Weekday::Sunday));
                prop_assert_eq!((day.year(), day.month()), (nominal.year(), nominal.month()));
                prop_assert!(days_between(nominal, day).abs() <= 2);
            }
        }

        #[test]
        fn periods_between_is_the_brute_force_filter(
            s in schedules(), a in MINUTES, len in 0i64..2_000_000
        ) {
            let base = s.start.midnight().assume_utc();
            let (from, to) = (base + Duration::minutes(a), base + Duration::minutes(a + len));
            let want: Vec<u32> = (0u32..)
                .map_while(|n| s.at(n).map(|at| (n, at)))
                .take_while(|&(_, at)| at < to)
                .filter(|&(_, at)| at >= from)
                .map(|(n, _)| n)
                .collect();
            prop_assert_eq!(s.periods_between(from, to), want);
        }
    }
}
