//! A mandate's terms: what the customer consented to, in the shape of Moment's
//! `mandate_options` (`moment-api.md` §8.2, §8.5), checked by Moment's own rules, and the
//! arithmetic that enforces them before a charge reaches Moment. No I/O here.
//!
//! Dates people read (validity, limit windows) are days in Africa/Johannesburg (SAST, UTC+2,
//! no daylight saving): a charge at 23:30 UTC on the 31st is on the 1st.

use serde::{Deserialize, Serialize};
use time::{Date, Duration, Month, OffsetDateTime, UtcOffset, Weekday};

time::serde::format_description!(iso_date, Date, "[year]-[month]-[day]");

/// South Africa Standard Time: UTC+2 all year.
pub const SAST: UtcOffset = match UtcOffset::from_hms(2, 0, 0) {
    Ok(o) => o,
    Err(_) => panic!("a valid offset"),
};

/// The recurrences (type, interval) for which Moment shows Capitec Pay at checkout.
pub const CAPITEC_PAY: &[(Frequency, u32)] = &[
    (Frequency::Daily, 1),
    (Frequency::Weekly, 1),
    (Frequency::Weekly, 2),
    (Frequency::Monthly, 1),
    (Frequency::Monthly, 6),
    (Frequency::Yearly, 1),
];

/// Moment's `mandate_options`, as the merchant gives them and as they are sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Terms {
    #[serde(rename = "type", default)]
    pub kind: TermsType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<AmountRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recurrence: Option<Recurrence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_period: Option<ValidityPeriod>,
    /// The most successful payments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_occurrences: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_limits: Option<PeriodLimits>,
    /// For `installment` mandates: Moment's `terms` (`periodic` or `fixed`), sent as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub terms: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TermsType {
    #[default]
    OnDemand,
    Scheduled,
    Installment,
}

/// A fixed amount per charge, or bounds (either may be given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum AmountRule {
    Fixed(i64),
    Range {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 0)]
        min: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 0)]
        max: Option<i64>,
    },
}

impl AmountRule {
    /// The largest amount allowed, if bounded.
    pub fn max(self) -> Option<i64> {
        match self {
            Self::Fixed(a) => Some(a),
            Self::Range { max, .. } => max,
        }
    }

    /// Whether `amount` keeps to the rule.
    pub fn allows(self, amount: i64) -> bool {
        match self {
            Self::Fixed(a) => amount == a,
            Self::Range { min, max } => {
                min.is_none_or(|m| amount >= m) && max.is_none_or(|m| amount <= m)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Frequency {
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recurrence {
    #[serde(rename = "type")]
    pub kind: Frequency,
    #[serde(default = "one")]
    #[schema(minimum = 1)]
    pub interval_count: u32,
    /// `{"days": ["mon"]}` for weekly; `{"type": "day_of_month", "days": [1], "adjustment":
    /// "nearest_weekday"}` for monthly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub on: Option<serde_json::Value>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidityPeriod {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "iso_date::option"
    )]
    #[schema(value_type = Option<String>, format = Date)]
    pub start_date: Option<Date>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "iso_date::option"
    )]
    #[schema(value_type = Option<String>, format = Date)]
    pub end_date: Option<Date>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PeriodLimits {
    pub period: Period,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_amount: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    Week,
    Month,
    Year,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub mode: WindowMode,
    /// For `cycle`: `{"day_of_month": 15}` (month) or `{"day_of_week": "mon"}` (week).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub anchor: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WindowMode {
    Calendar,
    Cycle,
}

/// A term broken by a request: which, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub detail: String,
}

fn invalid(field: &'static str, detail: impl Into<String>) -> Invalid {
    Invalid {
        field,
        detail: detail.into(),
    }
}

const WEEKDAYS: &[&str] = &["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Terms {
    /// Whether the terms count payments (`max_occurrences`, `period_limits`): then a charge is
    /// checked against them with its mandate locked, so that concurrent charges cannot pass
    /// a limit together.
    pub fn counts(&self) -> bool {
        self.max_occurrences.is_some() || self.period_limits.is_some()
    }

    /// The terms of a mandate created without any: `on_demand`, with the mandate's amount as
    /// the ceiling of every later charge (what Moment does with no `mandate_options`).
    pub fn ceiling(amount: i64) -> Self {
        Self {
            kind: TermsType::OnDemand,
            amount: Some(AmountRule::Range {
                min: None,
                max: Some(amount),
            }),
            recurrence: None,
            validity_period: None,
            max_occurrences: None,
            period_limits: None,
            terms: None,
        }
    }

    /// Moment's rules for `mandate_options`, and ours for the mandate's own `amount` (0, a
    /// card verification, or a first payment within the terms).
    pub fn check(&self, first_amount: i64) -> Result<(), Invalid> {
        // The objects sent to Moment as given: their text must be storable (no NUL).
        let free_form = [
            (
                "terms.recurrence.on",
                self.recurrence.as_ref().and_then(|r| r.on.as_ref()),
            ),
            (
                "terms.period_limits.window.anchor",
                self.period_limits
                    .as_ref()
                    .and_then(|l| l.window.as_ref())
                    .and_then(|w| w.anchor.as_ref()),
            ),
            ("terms.terms", self.terms.as_ref()),
        ];
        for (field, value) in free_form {
            if value.is_some_and(holds_nul) {
                return Err(invalid(field, "must not contain NUL characters"));
            }
        }
        match self.amount {
            Some(AmountRule::Fixed(a)) if a < 0 => {
                return Err(invalid("terms.amount", "must be at least 0"));
            }
            Some(AmountRule::Range {
                min: None,
                max: None,
            }) => {
                return Err(invalid("terms.amount", "give min, max or both"));
            }
            Some(AmountRule::Range { min, max }) => {
                if min.is_some_and(|m| m < 0) || max.is_some_and(|m| m < 0) {
                    return Err(invalid("terms.amount", "bounds must be at least 0"));
                }
                if let (Some(lo), Some(hi)) = (min, max)
                    && lo > hi
                {
                    return Err(invalid("terms.amount", "min must not exceed max"));
                }
            }
            _ => {}
        }
        if self.kind == TermsType::Scheduled && self.recurrence.is_none() {
            return Err(invalid(
                "terms.recurrence",
                "is required for a scheduled mandate",
            ));
        }
        if let Some(r) = &self.recurrence {
            check_recurrence(r)?;
        }
        if let Some(v) = self.validity_period
            && let (Some(start), Some(end)) = (v.start_date, v.end_date)
            && end <= start
        {
            return Err(invalid(
                "terms.validity_period.end_date",
                "must be after start_date",
            ));
        }
        if self.max_occurrences == Some(0) {
            return Err(invalid("terms.max_occurrences", "must be at least 1"));
        }
        match (self.kind, &self.terms) {
            (TermsType::Installment, None) => {
                return Err(invalid(
                    "terms.terms",
                    "is required for an installment mandate",
                ));
            }
            (TermsType::Installment, Some(t))
                if !matches!(t["type"].as_str(), Some("periodic" | "fixed")) =>
            {
                return Err(invalid("terms.terms.type", "must be periodic or fixed"));
            }
            (TermsType::Installment, Some(_)) => {}
            (_, Some(_)) => {
                return Err(invalid(
                    "terms.terms",
                    "only an installment mandate has installment terms",
                ));
            }
            _ => {}
        }
        if let Some(p) = &self.period_limits {
            if self.kind == TermsType::Installment {
                return Err(invalid(
                    "terms.period_limits",
                    "period limits do not apply to installment mandates",
                ));
            }
            if p.max_count.is_none() && p.max_amount.is_none() {
                return Err(invalid(
                    "terms.period_limits",
                    "give max_count, max_amount or both",
                ));
            }
            if p.max_count == Some(0) {
                return Err(invalid(
                    "terms.period_limits.max_count",
                    "must be at least 1",
                ));
            }
            if let (Some(limit), Some(max)) = (p.max_amount, self.amount.and_then(AmountRule::max))
                && limit < max
            {
                return Err(invalid(
                    "terms.period_limits.max_amount",
                    format!("must not be below the largest charge allowed ({max})"),
                ));
            }
            if let Some(w) = &p.window
                && w.mode == WindowMode::Cycle
            {
                anchor(p.period, w).map_err(|d| invalid("terms.period_limits.window.anchor", d))?;
            }
        }
        if first_amount > 0
            && let Some(rule) = self.amount
            && !rule.allows(first_amount)
        {
            return Err(invalid(
                "amount",
                "a first payment must keep to terms.amount (or be 0, a card verification)",
            ));
        }
        Ok(())
    }

    /// What only we can tell the merchant: terms that silently narrow Moment's checkout, for a
    /// mandate whose first payment is `first_amount`.
    pub fn warnings(&self, first_amount: i64) -> Vec<Warning> {
        let mut out = Vec::new();
        if first_amount == 0 {
            out.push(Warning {
                code: "card_only_verification".into(),
                message: "a mandate of amount 0 is a card verification: Moment's checkout offers \
                          cards only (no Capitec Pay or other methods)"
                    .into(),
            });
        }
        let supported = self
            .recurrence
            .as_ref()
            .is_some_and(|r| CAPITEC_PAY.contains(&(r.kind, r.interval_count)));
        if supported && self.kind == TermsType::OnDemand {
            out.push(Warning {
                code: "capitec_pay_scheduled_only".into(),
                message: "Moment's older pages offer Capitec Pay only for scheduled mandates; \
                          with an on_demand mandate it may be hidden at checkout (Moment's pages \
                          disagree)"
                    .into(),
            });
        }
        let capitec = self
            .recurrence
            .as_ref()
            .is_some_and(|r| CAPITEC_PAY.contains(&(r.kind, r.interval_count)));
        if !capitec && self.kind != TermsType::Installment {
            out.push(Warning {
                code: "capitec_pay_hidden".into(),
                message: "Moment shows Capitec Pay at checkout only for a recurrence of daily/1, \
                          weekly/1, weekly/2, monthly/1, monthly/6 or yearly/1; these terms hide it"
                    .into(),
            });
        }
        out
    }
}

/// Whether any key or text in `v` holds a NUL character, which Postgres cannot store.
fn holds_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

fn check_recurrence(r: &Recurrence) -> Result<(), Invalid> {
    if r.interval_count == 0 {
        return Err(invalid(
            "terms.recurrence.interval_count",
            "must be at least 1",
        ));
    }
    let Some(on) = &r.on else { return Ok(()) };
    let days = on.get("days").and_then(|d| d.as_array());
    match r.kind {
        Frequency::Weekly => {
            let ok = days.is_some_and(|d| {
                !d.is_empty()
                    && d.iter()
                        .all(|x| x.as_str().is_some_and(|s| WEEKDAYS.contains(&s)))
            });
            if !ok {
                return Err(invalid(
                    "terms.recurrence.on.days",
                    "weekly days are mon, tue, wed, thu, fri, sat, sun",
                ));
            }
        }
        Frequency::Monthly => {
            if on.get("type").and_then(|t| t.as_str()) != Some("day_of_month") {
                return Err(invalid("terms.recurrence.on.type", "must be day_of_month"));
            }
            let ok = days.is_some_and(|d| {
                !d.is_empty()
                    && d.iter()
                        .all(|x| x.as_i64().is_some_and(|n| (1..=31).contains(&n) || n == -1))
            });
            if !ok {
                return Err(invalid(
                    "terms.recurrence.on.days",
                    "days of the month are 1 to 31, or -1 for the last",
                ));
            }
            if let Some(a) = on.get("adjustment")
                && a.as_str() != Some("nearest_weekday")
            {
                return Err(invalid(
                    "terms.recurrence.on.adjustment",
                    "the one adjustment known is nearest_weekday",
                ));
            }
        }
        Frequency::Daily | Frequency::Yearly => {}
    }
    Ok(())
}

/// A cycle window's anchor: a day of the month (1 to 31, clamped to short months) or a day of
/// the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Anchor {
    DayOfMonth(u8),
    DayOfWeek(Weekday),
    None,
}

fn anchor(period: Period, w: &Window) -> Result<Anchor, String> {
    let a = w.anchor.as_ref();
    match period {
        Period::Month => a
            .and_then(|a| a.get("day_of_month"))
            .and_then(|d| d.as_u64())
            .filter(|d| (1..=31).contains(d))
            .map(|d| Anchor::DayOfMonth(d as u8))
            .ok_or_else(|| "a monthly cycle needs {\"day_of_month\": 1 to 31}".to_owned()),
        Period::Week => a
            .and_then(|a| a.get("day_of_week"))
            .and_then(|d| d.as_str())
            .and_then(|d| WEEKDAYS.iter().position(|w| *w == d))
            .map(|i| Anchor::DayOfWeek(Weekday::Monday.nth_next(i as u8)))
            .ok_or_else(|| "a weekly cycle needs {\"day_of_week\": \"mon\" … \"sun\"}".to_owned()),
        Period::Day | Period::Year => Ok(Anchor::None),
    }
}

/// Something the merchant should know about the terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Warning {
    pub code: String,
    pub message: String,
}

/// The SAST day of an instant.
pub fn sast_day(at: OffsetDateTime) -> Date {
    at.to_offset(SAST).date()
}

/// `day` clamped into `month` of `year` (31 becomes 30, 29 or 28).
fn clamped(year: i32, month: Month, day: u8) -> Date {
    let last = time::util::days_in_month(month, year);
    Date::from_calendar_date(year, month, day.min(last)).expect("a clamped day exists")
}

/// The limit window holding the SAST day `day`: `[start, end)` as SAST days.
pub fn window(limits: &PeriodLimits, day: Date) -> (Date, Date) {
    let mode = limits
        .window
        .as_ref()
        .map_or(WindowMode::Calendar, |w| w.mode);
    let anchor = match (&limits.window, mode) {
        (Some(w), WindowMode::Cycle) => anchor(limits.period, w).unwrap_or(Anchor::None),
        _ => Anchor::None,
    };
    match (limits.period, anchor) {
        (Period::Day, _) => (day, day + Duration::days(1)),
        (Period::Week, a) => {
            let first = match a {
                Anchor::DayOfWeek(w) => w,
                _ => Weekday::Monday,
            };
            let back = (7 + day.weekday().number_days_from_monday() as i64
                - first.number_days_from_monday() as i64)
                % 7;
            let start = day - Duration::days(back);
            (start, start + Duration::days(7))
        }
        (Period::Month, Anchor::DayOfMonth(d)) => {
            let this = clamped(day.year(), day.month(), d);
            let (start_y, start_m) = if day >= this {
                (day.year(), day.month())
            } else if day.month() == Month::January {
                (day.year() - 1, Month::December)
            } else {
                (day.year(), day.month().previous())
            };
            let start = clamped(start_y, start_m, d);
            let (end_y, end_m) = if start_m == Month::December {
                (start_y + 1, Month::January)
            } else {
                (start_y, start_m.next())
            };
            (start, clamped(end_y, end_m, d))
        }
        (Period::Month, _) => {
            let start = clamped(day.year(), day.month(), 1);
            let end = if day.month() == Month::December {
                clamped(day.year() + 1, Month::January, 1)
            } else {
                clamped(day.year(), day.month().next(), 1)
            };
            (start, end)
        }
        (Period::Year, _) => (
            clamped(day.year(), Month::January, 1),
            clamped(day.year() + 1, Month::January, 1),
        ),
    }
}

/// The instant a SAST day begins.
pub fn sast_midnight(day: Date) -> OffsetDateTime {
    day.midnight().assume_offset(SAST)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    fn limits(period: Period, window: Option<serde_json::Value>) -> PeriodLimits {
        serde_json::from_value(serde_json::json!({
            "period": period, "max_count": 1,
            "window": window,
        }))
        .unwrap()
    }

    #[test]
    fn a_charge_at_half_past_eleven_utc_on_the_31st_is_on_the_1st_in_johannesburg() {
        assert_eq!(
            sast_day(datetime!(2026-01-31 23:30 UTC)),
            date!(2026 - 02 - 01)
        );
        assert_eq!(
            sast_day(datetime!(2026-01-31 21:59 UTC)),
            date!(2026 - 01 - 31)
        );
        let month = limits(Period::Month, None);
        assert_eq!(
            window(&month, sast_day(datetime!(2026-01-31 23:30 UTC))),
            (date!(2026 - 02 - 01), date!(2026 - 03 - 01))
        );
    }

    #[test]
    fn cycle_windows_clamp_their_anchor_to_short_months_and_leap_years() {
        let cycle = limits(
            Period::Month,
            Some(serde_json::json!({"mode": "cycle", "anchor": {"day_of_month": 31}})),
        );
        assert_eq!(
            window(&cycle, date!(2024 - 02 - 15)),
            (date!(2024 - 01 - 31), date!(2024 - 02 - 29))
        );
        assert_eq!(
            window(&cycle, date!(2024 - 02 - 29)),
            (date!(2024 - 02 - 29), date!(2024 - 03 - 31))
        );
        assert_eq!(
            window(&cycle, date!(2025 - 02 - 28)),
            (date!(2025 - 02 - 28), date!(2025 - 03 - 31))
        );
        assert_eq!(
            window(&cycle, date!(2026 - 01 - 05)),
            (date!(2025 - 12 - 31), date!(2026 - 01 - 31))
        );
        let fifteenth = limits(
            Period::Month,
            Some(serde_json::json!({"mode": "cycle", "anchor": {"day_of_month": 15}})),
        );
        assert_eq!(
            window(&fifteenth, date!(2026 - 12 - 20)),
            (date!(2026 - 12 - 15), date!(2027 - 01 - 15))
        );
    }

    #[test]
    fn calendar_weeks_start_on_monday_and_years_on_the_first() {
        let week = limits(Period::Week, None);
        // 2026-12-03 is a Thursday.
        assert_eq!(
            window(&week, date!(2026 - 12 - 03)),
            (date!(2026 - 11 - 30), date!(2026 - 12 - 07))
        );
        let year = limits(Period::Year, None);
        assert_eq!(
            window(&year, date!(2028 - 02 - 29)),
            (date!(2028 - 01 - 01), date!(2029 - 01 - 01))
        );
    }

    #[test]
    fn moments_rules_for_terms_are_checked_with_the_field_named() {
        let terms = |v: serde_json::Value| serde_json::from_value::<Terms>(v).unwrap();
        let cases = [
            (
                serde_json::json!({"type": "scheduled"}),
                0,
                "terms.recurrence",
            ),
            (
                serde_json::json!({"amount": {"min": 10, "max": 5}}),
                0,
                "terms.amount",
            ),
            (serde_json::json!({"amount": {}}), 0, "terms.amount"),
            (
                serde_json::json!({"amount": {"max": 5000}, "period_limits": {"period": "month", "max_amount": 100}}),
                0,
                "terms.period_limits.max_amount",
            ),
            (
                serde_json::json!({"validity_period": {"start_date": "2026-12-01", "end_date": "2026-11-01"}}),
                0,
                "terms.validity_period.end_date",
            ),
            (
                serde_json::json!({"type": "installment", "terms": {"type": "fixed"}, "period_limits": {"period": "month", "max_count": 1}}),
                0,
                "terms.period_limits",
            ),
            (
                serde_json::json!({"recurrence": {"type": "weekly", "interval_count": 1, "on": {"days": ["funday"]}}}),
                0,
                "terms.recurrence.on.days",
            ),
            (
                serde_json::json!({"amount": {"min": 100, "max": 200}}),
                50,
                "amount",
            ),
        ];
        for (v, first, field) in cases {
            assert_eq!(
                terms(v.clone()).check(first).unwrap_err().field,
                field,
                "{v}"
            );
        }
        let fine = terms(serde_json::json!({
            "type": "scheduled", "amount": {"min": 5000, "max": 15000},
            "recurrence": {"type": "monthly", "interval_count": 1,
                           "on": {"type": "day_of_month", "days": [1], "adjustment": "nearest_weekday"}},
            "max_occurrences": 12,
            "period_limits": {"period": "month", "max_count": 1, "max_amount": 15000}
        }));
        assert_eq!(fine.check(0), Ok(()));
        assert!(fine.warnings(5000).is_empty());
        assert_eq!(fine.warnings(0)[0].code, "card_only_verification");
        let on_demand = terms(serde_json::json!({
            "recurrence": {"type": "weekly", "interval_count": 1, "on": {"days": ["mon"]}}}));
        assert_eq!(
            on_demand.warnings(100)[0].code,
            "capitec_pay_scheduled_only"
        );
        let quarterly = terms(serde_json::json!({
            "type": "scheduled", "recurrence": {"type": "monthly", "interval_count": 3}}));
        assert_eq!(quarterly.warnings(100)[0].code, "capitec_pay_hidden");
    }
}
