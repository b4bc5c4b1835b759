//! The schedule a new subscription bills on: the mandate's recurrence when it has one (so that
//! the schedule and the consent cannot drift), else the request's interval and anchor, checked
//! and resolved to a `ScheduleSpec`.

use std::collections::BTreeMap;

use time::Date;
use uuid::Uuid;

use crate::domain::Mandate;
use crate::domain::schedule::Unit;
use crate::domain::subscription::{
    ScheduleSpec, format_offset, parse_time, weekday_name, weekday_of,
};
use crate::domain::terms::Frequency;
use crate::error::ApiError;
use crate::state::AppState;

/// A checked `POST /subscriptions`.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub mandate_id: Uuid,
    pub amount: Option<i64>,
    /// `(unit, count)`; only for a mandate without a recurrence.
    pub interval: Option<(Unit, u32)>,
    pub day_of_month: Option<i8>,
    pub weekday: Option<String>,
    pub start_date: Option<Date>,
    pub end_date: Option<Date>,
    pub count: Option<u32>,
    pub charge_time: Option<String>,
    pub adjustment: Option<String>,
    pub reference: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// The schedule for `req` on `mandate`: the mandate's recurrence when it has one (so that the
/// schedule and the consent cannot drift), else the request's interval and anchor.
pub fn resolve(
    state: &AppState,
    mandate: &Mandate,
    req: &CreateRequest,
    today: Date,
) -> Result<ScheduleSpec, ApiError> {
    let terms = mandate.terms();
    let (unit, every, mut day_of_month, mut weekday, mut adjustment) = match &terms.recurrence {
        Some(r) => {
            let unit = match r.kind {
                Frequency::Daily => Unit::Day,
                Frequency::Weekly => Unit::Week,
                Frequency::Monthly => Unit::Month,
                Frequency::Yearly => Unit::Year,
            };
            if req.interval.is_some_and(|i| i != (unit, r.interval_count)) {
                return Err(ApiError::invalid(
                    "interval",
                    "the mandate's terms set the schedule (terms.recurrence); leave interval out",
                ));
            }
            let on = r.on.as_ref();
            if on
                .and_then(|o| o["days"].as_array())
                .is_some_and(|d| d.len() > 1)
            {
                return Err(ApiError::invalid(
                    "mandate_id",
                    "the mandate's recurrence names several days a period; a subscription bills one",
                ));
            }
            let first = on.and_then(|o| o["days"].get(0));
            let dom = first.and_then(|d| d.as_i64()).map(|d| d as i8);
            let wd = first.and_then(|d| d.as_str()).map(str::to_owned);
            let adj = on.and_then(|o| o["adjustment"].as_str()).map(str::to_owned);
            (unit, r.interval_count, dom, wd, adj)
        }
        None => {
            let (unit, every) = req.interval.ok_or_else(|| {
                ApiError::invalid(
                    "interval",
                    "is required: the mandate's terms have no recurrence to follow",
                )
            })?;
            (unit, every, None, None, None)
        }
    };
    for (given, from_terms, field) in [
        (
            req.day_of_month.map(|d| d.to_string()),
            day_of_month.map(|d| d.to_string()),
            "day_of_month",
        ),
        (req.weekday.clone(), weekday.clone(), "weekday"),
        (req.adjustment.clone(), adjustment.clone(), "adjustment"),
    ] {
        if let (Some(g), Some(t)) = (&given, &from_terms)
            && g != t
        {
            return Err(ApiError::invalid(
                field,
                format!("the mandate's terms say {t}; leave {field} out or give the same"),
            ));
        }
    }
    day_of_month = day_of_month.or(req.day_of_month);
    weekday = weekday.or(req.weekday.clone());
    adjustment = adjustment.or(req.adjustment.clone());
    let start = req.start_date.unwrap_or(today);
    if start < today {
        return Err(ApiError::invalid("start_date", "must not be in the past"));
    }
    if let Some(from) = terms.validity_period.and_then(|v| v.start_date)
        && start < from
    {
        return Err(ApiError::invalid(
            "start_date",
            format!("must not be before the mandate's validity_period.start_date ({from})"),
        ));
    }
    let validity_end = terms.validity_period.and_then(|v| v.end_date);
    if let (Some(end), Some(limit)) = (req.end_date, validity_end)
        && end > limit
    {
        return Err(ApiError::invalid(
            "end_date",
            format!("must not be after the mandate's validity_period.end_date ({limit})"),
        ));
    }
    if req.end_date.is_some_and(|e| e < start) {
        return Err(ApiError::invalid(
            "end_date",
            "must not be before start_date",
        ));
    }
    let mut spec = ScheduleSpec {
        unit,
        every,
        day_of_month: None,
        weekday: None,
        month: None,
        day: None,
        start_date: start,
        end_date: req.end_date.or(validity_end),
        count: req.count,
        charge_time: match &req.charge_time {
            Some(t) => {
                parse_time(t).ok_or_else(|| ApiError::invalid("charge_time", "must be HH:MM"))?;
                t.clone()
            }
            None => {
                let t = state.settings.billing.charge_time;
                format!("{:02}:{:02}", t.hour(), t.minute())
            }
        },
        adjustment: None,
        time_zone: state.settings.billing.time_zone.clone(),
        utc_offset: format_offset(state.settings.billing.offset),
    };
    match unit {
        Unit::Day => {}
        Unit::Week => {
            let w = weekday.unwrap_or_else(|| weekday_name(start.weekday()).to_owned());
            if weekday_of(&w).is_none() {
                return Err(ApiError::invalid("weekday", "must be mon, tue, … or sun"));
            }
            spec.weekday = Some(w);
        }
        Unit::Month => {
            let d = day_of_month.unwrap_or(start.day() as i8);
            if !(d == -1 || (1..=31).contains(&d)) {
                return Err(ApiError::invalid(
                    "day_of_month",
                    "must be 1 to 31, or -1 for the last day",
                ));
            }
            spec.day_of_month = Some(d);
            spec.adjustment = adjustment;
        }
        Unit::Year => {
            spec.month = Some(u8::from(start.month()));
            spec.day = Some(start.day());
        }
    }
    if spec
        .adjustment
        .as_deref()
        .is_some_and(|a| a != "nearest_weekday")
    {
        return Err(ApiError::invalid(
            "adjustment",
            "the one adjustment is nearest_weekday",
        ));
    }
    if unit != Unit::Month && (req.day_of_month.is_some() || req.adjustment.is_some()) {
        return Err(ApiError::invalid(
            "day_of_month",
            "only a monthly schedule has a day of the month",
        ));
    }
    if unit != Unit::Week && req.weekday.is_some() {
        return Err(ApiError::invalid(
            "weekday",
            "only a weekly schedule has a weekday",
        ));
    }
    spec.schedule()
        .map_err(|e| ApiError::invalid("interval", e))?;
    Ok(spec)
}
