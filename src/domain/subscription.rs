//! Subscriptions: the schedule as stored and shown, which failures dunning retries, and the
//! preview of the next charges with the term that would stop each. No I/O here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use time::{Date, Month, OffsetDateTime, Time, UtcOffset, Weekday};
use uuid::Uuid;

use super::SubscriptionStatus;
use super::schedule::{Anchor, Schedule, Unit};
use super::terms::{self, Terms};

time::serde::format_description!(iso_date, Date, "[year]-[month]-[day]");

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// The schedule, resolved and stored whole: period n's day is computed from it alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleSpec {
    /// `day`, `week`, `month` or `year`.
    #[schema(value_type = String)]
    pub unit: Unit,
    /// Every this many units.
    pub every: u32,
    /// Monthly: 1 to 31 (29 to 31 are the last day of shorter months), or -1 for the last day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day_of_month: Option<i8>,
    /// Weekly: `mon` … `sun`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekday: Option<String>,
    /// Yearly: the month (1 to 12) and day of `start_date`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<u8>,
    #[serde(with = "iso_date")]
    #[schema(value_type = String, format = Date)]
    pub start_date: Date,
    #[serde(
        default,
        with = "iso_date::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = Date)]
    pub end_date: Option<Date>,
    /// At most this many periods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Local time of each charge, `HH:MM`.
    pub charge_time: String,
    /// `nearest_weekday` moves a charge off a weekend, within its month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjustment: Option<String>,
    /// The billing time zone's name and its UTC offset (`+02:00`).
    pub time_zone: String,
    pub utc_offset: String,
}

/// A weekday's three-letter name.
pub fn weekday_name(w: Weekday) -> &'static str {
    WEEKDAYS[w.number_days_from_monday() as usize]
}

/// A three-letter name's weekday.
pub fn weekday_of(name: &str) -> Option<Weekday> {
    WEEKDAYS
        .iter()
        .position(|w| *w == name)
        .map(|i| Weekday::Monday.nth_next(i as u8))
}

/// `HH:MM` as a time of day.
pub fn parse_time(text: &str) -> Option<Time> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    Time::from_hms(h.parse().ok()?, m.parse().ok()?, 0).ok()
}

/// `+HH:MM` as an offset.
pub fn format_offset(o: UtcOffset) -> String {
    let (h, m, _) = o.as_hms();
    let sign = if o.is_negative() { '-' } else { '+' };
    format!("{sign}{:02}:{:02}", h.abs(), m.abs())
}

impl ScheduleSpec {
    /// The arithmetic this spec stands for.
    pub fn schedule(&self) -> Result<Schedule, String> {
        let anchor = match self.unit {
            Unit::Day => Anchor::None,
            Unit::Week => Anchor::Weekday(
                self.weekday
                    .as_deref()
                    .and_then(weekday_of)
                    .ok_or("a weekly schedule needs a weekday, mon to sun")?,
            ),
            Unit::Month => Anchor::DayOfMonth(
                self.day_of_month
                    .ok_or("a monthly schedule needs day_of_month")?,
            ),
            Unit::Year => Anchor::MonthDay(
                self.month
                    .and_then(|m| Month::try_from(m).ok())
                    .ok_or("a yearly schedule needs a month")?,
                self.day.ok_or("a yearly schedule needs a day")?,
            ),
        };
        let offset = parse_offset(&self.utc_offset).ok_or("utc_offset must be +HH:MM")?;
        let s = Schedule {
            unit: self.unit,
            every: self.every,
            anchor,
            start: self.start_date,
            end: self.end_date,
            count: self.count,
            charge_time: parse_time(&self.charge_time).ok_or("charge_time must be HH:MM")?,
            offset,
            nearest_weekday: self.adjustment.as_deref() == Some("nearest_weekday"),
        };
        s.check()?;
        Ok(s)
    }
}

/// `+HH:MM` or `-HH:MM`.
pub fn parse_offset(text: &str) -> Option<UtcOffset> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let t = parse_time(rest)?;
    UtcOffset::from_hms(sign * t.hour() as i8, sign * t.minute() as i8, 0).ok()
}

/// A subscription, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Subscription {
    pub id: Uuid,
    pub mandate_id: Uuid,
    pub status: SubscriptionStatus,
    pub amount: i64,
    pub currency: String,
    pub schedule: Json<ScheduleSpec>,
    pub reference: Option<String>,
    pub metadata: Json<BTreeMap<String, String>>,
    pub request_hash: String,
    pub next_period: i32,
    pub next_charge_at: Option<OffsetDateTime>,
    pub notified_period: i32,
    pub open_charge_id: Option<Uuid>,
    pub dunning_period: Option<i32>,
    pub dunning_failures: i32,
    pub dunning_since: Option<OffsetDateTime>,
    pub retry_at: Option<OffsetDateTime>,
    pub last_failure: Option<Json<serde_json::Value>>,
    pub resume_at: Option<OffsetDateTime>,
    pub cancel_at_period_end: bool,
    pub lease_token: Option<Uuid>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// Decline codes that a retry cannot fix: the card is gone, or the customer or issuer has
/// said no for good.
const HARD_DECLINES: &[&str] = &[
    "lost_card",
    "stolen_card",
    "pickup_card",
    "fraudulent",
    "restricted_card",
    "expired_card",
    "invalid_account",
    "revocation_of_authorization",
    "stop_payment_order",
];

/// Whether dunning retries a charge that failed with `failure` (the charge's `failure`:
/// `{code, decline_code, message}` from Moment, or our own `{code, message}`). A soft decline
/// (`insufficient_funds`, a generic decline, an issuer not answering) is retried; a lost or
/// stolen card, an invalid payment method, a revoked mandate or a refusal by the mandate's
/// terms is not.
pub fn retryable(failure: Option<&serde_json::Value>) -> bool {
    let Some(f) = failure else { return true };
    let code = f["code"].as_str().unwrap_or("");
    let decline = f["decline_code"].as_str().unwrap_or("");
    if HARD_DECLINES.contains(&decline) {
        return false;
    }
    !(code.starts_with("mandate_")
        || code == "mandate-terms"
        || code.contains("payment_method")
        || code == "send_window_passed"
        || code.starts_with("moment_http_4"))
}

/// One charge of the preview: its period, when, and the term that would stop it, if any.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Upcoming {
    pub period: u32,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    pub amount: i64,
    /// Why the mandate's terms would refuse it, e.g. `period_limits.max_count: 1 a month
    /// already used`; null when it would pass.
    pub blocked_by: Option<String>,
}

/// What a mandate's terms count already, for a preview.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counting<'a> {
    /// Payments that count toward `max_occurrences`.
    pub used: i64,
    /// Payments that count toward the period limits, with their times.
    pub counted: &'a [(OffsetDateTime, i64)],
    /// The charges the mandate's other subscriptions are due to make, by time.
    pub others: &'a [(OffsetDateTime, i64)],
}

/// Another live subscription of the mandate, as a preview counts it.
#[derive(Debug, Clone)]
pub struct Sibling {
    pub schedule: Schedule,
    /// Its next period to charge.
    pub from: u32,
    pub amount: i64,
    /// A retry of a failed period waiting (`past_due`).
    pub retry_at: Option<OffsetDateTime>,
    /// When it resumes (`paused` with a `resume_at`): periods due before are not charged.
    pub resumes_at: Option<OffsetDateTime>,
}

/// The charges the mandate's other subscriptions are due to make up to `horizon`, by time:
/// each one's waiting retry and its periods from its next (from the first due once it
/// resumes, if paused; none before its retry, as the scheduler holds a period while a retry
/// waits), at most `each` periods of one, and the earliest `total` in all.
pub fn others_due(
    siblings: &[Sibling],
    horizon: OffsetDateTime,
    each: usize,
    total: usize,
) -> Vec<(OffsetDateTime, i64)> {
    let mut out = Vec::new();
    for s in siblings {
        out.extend(s.retry_at.filter(|t| *t <= horizon).map(|t| (t, s.amount)));
        let from = match s.resumes_at {
            Some(t) => match s.schedule.first_due_at_or_after(t) {
                Some(n) => n.max(s.from),
                None => continue,
            },
            None => s.from,
        };
        out.extend(
            (from..=u32::MAX)
                .map_while(|n| s.schedule.at(n))
                .take(each)
                .map(|at| s.retry_at.map_or(at, |r| at.max(r)))
                .take_while(|at| *at <= horizon)
                .map(|at| (at, s.amount)),
        );
    }
    out.sort_by_key(|(at, _)| *at);
    out.truncate(total);
    out
}

/// The last year the preview shows charges in.
pub const LAST_PREVIEWED_YEAR: i32 = 8999;

/// The next `k` charges from period `from`, each held to `terms` as it would be on its day,
/// given what counts already, the previewed ones before it, and the other subscriptions'
/// charges due at or before it, each counted first (when the terms let it through).
pub fn preview(
    schedule: &Schedule,
    from: u32,
    k: usize,
    amount: i64,
    terms: &Terms,
    counting: Counting<'_>,
) -> Vec<Upcoming> {
    let mut taken: Vec<(OffsetDateTime, i64)> = counting.counted.to_vec();
    let mut used = counting.used;
    let mut others = counting.others.iter().copied().peekable();
    schedule
        .preview(from, k)
        .into_iter()
        // The terms' windows reach a year past a charge: none is shown from the year 9000 on,
        // where they would run past the calendar's end.
        .take_while(|(_, at)| at.year() <= LAST_PREVIEWED_YEAR)
        .map(|(period, at)| {
            while let Some((t, a)) = others.next_if(|(t, _)| *t <= at) {
                if blocked(terms, a, t, used, &taken).is_none() {
                    used += 1;
                    taken.push((t, a));
                }
            }
            let blocked_by = blocked(terms, amount, at, used, &taken);
            if blocked_by.is_none() {
                used += 1;
                taken.push((at, amount));
            }
            Upcoming {
                period,
                at,
                amount,
                blocked_by,
            }
        })
        .collect()
}

fn blocked(
    terms: &Terms,
    amount: i64,
    at: OffsetDateTime,
    used: i64,
    taken: &[(OffsetDateTime, i64)],
) -> Option<String> {
    if terms.amount.is_some_and(|r| !r.allows(amount)) {
        return Some(format!("amount: {amount} is outside the mandate's terms"));
    }
    let day = terms::sast_day(at);
    if let Some(v) = terms.validity_period
        && (v.start_date.is_some_and(|d| day < d) || v.end_date.is_some_and(|d| day > d))
    {
        return Some(format!(
            "validity_period: the mandate is not valid on {day}"
        ));
    }
    if let Some(max) = terms.max_occurrences
        && used >= i64::from(max)
    {
        return Some(format!("max_occurrences: {max} of {max} used"));
    }
    let limits = terms.period_limits.as_ref()?;
    let (start, end) = terms::window(limits, day);
    let (from, to) = (terms::sast_midnight(start), terms::sast_midnight(end));
    let (n, sum) = taken
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .fold((0i64, 0i64), |(n, s), (_, a)| (n + 1, s.saturating_add(*a)));
    let period = serde_json::to_value(limits.period).ok();
    let period = period.as_ref().and_then(|p| p.as_str()).unwrap_or("period");
    if let Some(max) = limits.max_count
        && n >= i64::from(max)
    {
        return Some(format!(
            "period_limits.max_count: {max} a {period} already used"
        ));
    }
    if let Some(max) = limits.max_amount
        && sum.checked_add(amount).is_none_or(|total| total > max)
    {
        return Some(format!(
            "period_limits.max_amount: {sum} of {max} a {period} used"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, time};

    fn monthly(day: i8) -> Schedule {
        Schedule {
            unit: Unit::Month,
            every: 1,
            anchor: Anchor::DayOfMonth(day),
            start: date!(2026 - 12 - 01),
            end: None,
            count: None,
            charge_time: time!(09:00),
            offset: terms::SAST,
            nearest_weekday: false,
        }
    }

    #[test]
    fn an_amount_too_large_to_add_up_is_past_a_limit_on_the_total() {
        let terms: Terms = serde_json::from_value(serde_json::json!({
            "period_limits": {"period": "month", "max_amount": 15000}
        }))
        .unwrap();
        let at = time::macros::datetime!(2026-12-10 09:00 +2);
        let taken = [(at - time::Duration::days(1), 5000), (at, i64::MAX)];
        assert_eq!(
            blocked(&terms, i64::MAX, at, 0, &taken[..1]).as_deref(),
            Some("period_limits.max_amount: 5000 of 15000 a month used")
        );
        assert_eq!(
            blocked(&terms, 1, at, 0, &taken).as_deref(),
            Some("period_limits.max_amount: 9223372036854775807 of 15000 a month used")
        );
    }

    #[test]
    fn the_preview_names_the_term_that_stops_each_charge() {
        let terms: Terms = serde_json::from_value(serde_json::json!({
            "amount": {"max": 5000}, "max_occurrences": 3,
            "period_limits": {"period": "month", "max_count": 1}
        }))
        .unwrap();
        // One payment made: two more pass, then max_occurrences stops the rest.
        let s = monthly(31);
        let p = preview(
            &s,
            0,
            4,
            5000,
            &terms,
            Counting {
                used: 1,
                ..Counting::default()
            },
        );
        assert_eq!(
            p.iter().map(|u| u.blocked_by.clone()).collect::<Vec<_>>(),
            [
                None,
                None,
                Some("max_occurrences: 3 of 3 used".into()),
                Some("max_occurrences: 3 of 3 used".into())
            ]
        );
        let dec = s.at(0).unwrap();
        let p = preview(
            &s,
            0,
            2,
            5000,
            &terms,
            Counting {
                counted: &[(dec, 5000)],
                ..Counting::default()
            },
        );
        assert_eq!(
            p[0].blocked_by.as_deref(),
            Some("period_limits.max_count: 1 a month already used")
        );
        assert_eq!(p[1].blocked_by, None);
        assert_eq!(
            preview(&s, 0, 1, 6000, &terms, Counting::default())[0]
                .blocked_by
                .as_deref(),
            Some("amount: 6000 is outside the mandate's terms")
        );
    }

    #[test]
    fn the_preview_counts_the_mandates_other_subscriptions_first() {
        let terms: Terms = serde_json::from_value(serde_json::json!({
            "max_occurrences": 4, "period_limits": {"period": "month", "max_count": 1}
        }))
        .unwrap();
        // This subscription bills on the 15th; another on the same mandate bills on the 2nd
        // of January and February only, and a third at the same moment as this one in March.
        let s = monthly(15);
        let at = |d: time::Date| d.with_time(time!(07:00)).assume_utc();
        let others = [
            (at(date!(2027 - 01 - 02)), 100),
            (at(date!(2027 - 02 - 02)), 100),
            (s.at(3).unwrap(), 100),
        ];
        let p = preview(
            &s,
            0,
            6,
            500,
            &terms,
            Counting {
                others: &others,
                ..Counting::default()
            },
        );
        assert_eq!(
            p.iter().map(|u| u.blocked_by.clone()).collect::<Vec<_>>(),
            [
                None,
                Some("period_limits.max_count: 1 a month already used".into()),
                Some("period_limits.max_count: 1 a month already used".into()),
                // Four payments in all by March's: December's, and the other three (the one
                // due at the same moment counted first).
                Some("max_occurrences: 4 of 4 used".into()),
                Some("max_occurrences: 4 of 4 used".into()),
                Some("max_occurrences: 4 of 4 used".into()),
            ]
        );
        // Another subscription's charge that the terms refuse takes nothing.
        let capped: Terms = serde_json::from_value(serde_json::json!({
            "amount": {"max": 1000}, "period_limits": {"period": "month", "max_count": 1}
        }))
        .unwrap();
        let refused = [(at(date!(2027 - 01 - 02)), 5000)];
        let p = preview(
            &s,
            1,
            1,
            500,
            &capped,
            Counting {
                others: &refused,
                ..Counting::default()
            },
        );
        assert_eq!(p[0].blocked_by, None);
    }

    #[test]
    fn the_others_due_are_their_retries_and_their_periods_from_the_next_or_the_resumption() {
        let at = |d: time::Date| d.with_time(time!(07:00)).assume_utc();
        let siblings = [
            Sibling {
                schedule: monthly(2),
                from: 1,
                amount: 1,
                retry_at: None,
                resumes_at: None,
            },
            // A retry waiting: its period of 20 February is held until the retry.
            Sibling {
                schedule: monthly(20),
                from: 2,
                amount: 2,
                retry_at: Some(at(date!(2027 - 02 - 25))),
                resumes_at: None,
            },
            // Paused until 1 March: from its first period after.
            Sibling {
                schedule: monthly(10),
                from: 0,
                amount: 3,
                retry_at: None,
                resumes_at: Some(at(date!(2027 - 03 - 01))),
            },
            // Paused until 1 January, its next period in March: from March.
            Sibling {
                schedule: monthly(15),
                from: 3,
                amount: 4,
                retry_at: None,
                resumes_at: Some(at(date!(2027 - 01 - 01))),
            },
        ];
        let horizon = at(date!(2027 - 04 - 30));
        assert_eq!(
            others_due(&siblings, horizon, 400, 1000),
            [
                (at(date!(2027 - 01 - 02)), 1),
                (at(date!(2027 - 02 - 02)), 1),
                (at(date!(2027 - 02 - 25)), 2),
                (at(date!(2027 - 02 - 25)), 2),
                (at(date!(2027 - 03 - 02)), 1),
                (at(date!(2027 - 03 - 10)), 3),
                (at(date!(2027 - 03 - 15)), 4),
                (at(date!(2027 - 03 - 20)), 2),
                (at(date!(2027 - 04 - 02)), 1),
                (at(date!(2027 - 04 - 10)), 3),
                (at(date!(2027 - 04 - 15)), 4),
                (at(date!(2027 - 04 - 20)), 2),
            ]
        );
        // At most `each` periods of one (and its retry), and the earliest `total` in all.
        let capped = others_due(&siblings, horizon, 2, 1000);
        for (amount, n) in [(1, 2), (2, 3), (3, 2), (4, 2)] {
            assert_eq!(capped.iter().filter(|(_, a)| *a == amount).count(), n);
        }
        assert_eq!(
            others_due(&siblings, horizon, 400, 3),
            [
                (at(date!(2027 - 01 - 02)), 1),
                (at(date!(2027 - 02 - 02)), 1),
                (at(date!(2027 - 02 - 25)), 2),
            ]
        );
    }

    #[test]
    fn soft_declines_are_retried_and_hard_ones_are_not() {
        let f = |v: serde_json::Value| retryable(Some(&v));
        assert!(f(
            serde_json::json!({"code": "card_declined", "decline_code": "insufficient_funds"})
        ));
        assert!(f(
            serde_json::json!({"code": "card_declined", "decline_code": "generic_decline"})
        ));
        assert!(!f(
            serde_json::json!({"code": "card_declined", "decline_code": "lost_card"})
        ));
        assert!(!f(
            serde_json::json!({"code": "card_declined", "decline_code": "stolen_card"})
        ));
        assert!(!f(serde_json::json!({"code": "invalid_payment_method"})));
        assert!(!f(serde_json::json!({"code": "mandate_revoked"})));
        assert!(!f(serde_json::json!({"code": "mandate_max_occurrences"})));
        assert!(!f(serde_json::json!({"code": "mandate-terms"})));
    }

    #[test]
    fn schedule_text_round_trips() {
        assert_eq!(parse_time("09:00"), Some(time!(09:00)));
        assert_eq!(parse_time("9:00"), None);
        assert_eq!(parse_time("24:00"), None);
        assert_eq!(parse_offset("+02:00"), Some(terms::SAST));
        assert_eq!(format_offset(terms::SAST), "+02:00");
        assert_eq!(
            parse_offset("-03:30").map(format_offset).as_deref(),
            Some("-03:30")
        );
        assert_eq!(
            weekday_of(weekday_name(Weekday::Sunday)),
            Some(Weekday::Sunday)
        );
    }
}
