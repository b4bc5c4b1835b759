//! `/subscriptions`: a mandate charged on a schedule by the service, and `/test-clock`, the
//! fast-forward of a service started with the test clock.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use super::{
    ApiJson, List, MerchantErrors, OptionalJson, Page, bad_query, check_metadata, check_reference,
    idempotency_key, metadata_schema, parse_id, request_hash,
};
use crate::api::SubscriptionResponse;
use crate::domain::SubscriptionStatus;
use crate::domain::schedule::Unit;
use crate::error::{ApiError, Problem};
use crate::state::AppState;
use crate::store::subscriptions as store;
use crate::workflow::scheduler::{self, Advanced};
use crate::workflow::schedules::CreateRequest;
use crate::workflow::subscriptions as flow;

time::serde::format_description!(iso_date, Date, "[year]-[month]-[day]");

/// An interval: every `count` `unit`s.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Interval {
    /// `day`, `week`, `month` or `year`.
    #[schema(value_type = String, pattern = "^(day|week|month|year)$")]
    pub unit: Unit,
    #[serde(deserialize_with = "super::small_whole")]
    #[schema(minimum = 1, maximum = 1000)]
    pub count: u32,
}

/// `POST /subscriptions` body.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "mandate_id": "01a20e0a-fb07-7569-a87f-9afae148c0ff", "amount": 9900,
    "interval": {"unit": "month", "count": 1}, "day_of_month": 31, "charge_time": "09:00"
}))]
pub struct CreateSubscription {
    #[schema(format = Uuid)]
    pub mandate_id: String,
    /// Minor units, within the mandate's terms; the mandate's fixed amount (or its own first
    /// amount) when absent.
    #[serde(default, deserialize_with = "super::optional_whole_number")]
    #[schema(minimum = 1, maximum = 9223372036854775807i64)]
    pub amount: Option<i64>,
    /// Only for a mandate without `terms.recurrence` (which otherwise sets the schedule).
    pub interval: Option<Interval>,
    /// Monthly: 1 to 31 (29 to 31 are the last day of shorter months) or -1 for the last
    /// day; the start date's day when absent.
    #[serde(default, deserialize_with = "super::optional_small_whole")]
    #[schema(minimum = -1, maximum = 31)]
    pub day_of_month: Option<i8>,
    /// Weekly: `mon` … `sun`; the start date's weekday when absent.
    #[schema(pattern = "^(mon|tue|wed|thu|fri|sat|sun)$")]
    pub weekday: Option<String>,
    /// The first day that may be billed (today when absent, in the billing time zone). A
    /// yearly schedule falls on its month and day.
    #[serde(default, with = "iso_date::option")]
    #[schema(value_type = Option<String>, format = Date)]
    pub start_date: Option<Date>,
    /// The last day that may be billed; the mandate's `validity_period.end_date` at most.
    #[serde(default, with = "iso_date::option")]
    #[schema(value_type = Option<String>, format = Date)]
    pub end_date: Option<Date>,
    /// At most this many periods.
    #[serde(default, deserialize_with = "super::optional_small_whole")]
    #[schema(minimum = 1, maximum = 4294967295i64)]
    pub count: Option<u32>,
    /// Local time of each charge, `HH:MM` (`BILLING_CHARGE_TIME` when absent).
    #[schema(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub charge_time: Option<String>,
    /// `nearest_weekday` (monthly): a charge on a weekend moves to the nearest weekday in
    /// its month.
    #[schema(pattern = "^nearest_weekday$")]
    pub adjustment: Option<String>,
    #[schema(min_length = 1, max_length = 255, pattern = r"^[^\x00]*$")]
    pub reference: Option<String>,
    #[serde(default)]
    #[schema(schema_with = metadata_schema)]
    pub metadata: BTreeMap<String, String>,
}

impl CreateSubscription {
    fn check(self) -> Result<CreateRequest, ApiError> {
        let mandate_id = self
            .mandate_id
            .parse()
            .map_err(|_| ApiError::invalid("mandate_id", "not a mandate id"))?;
        if self.count == Some(0) {
            return Err(ApiError::invalid("count", "must be at least 1"));
        }
        if let Some(d) = self.start_date {
            super::check_date("start_date", d)?;
        }
        check_reference(self.reference.as_deref())?;
        check_metadata(&self.metadata)?;
        Ok(CreateRequest {
            mandate_id,
            amount: self.amount,
            interval: self.interval.map(|i| (i.unit, i.count)),
            day_of_month: self.day_of_month,
            weekday: self.weekday,
            start_date: self.start_date,
            end_date: self.end_date,
            count: self.count,
            charge_time: self.charge_time,
            adjustment: self.adjustment,
            reference: self.reference,
            metadata: self.metadata,
        })
    }
}

/// Starts billing a mandate on a schedule: one charge per period, made by the service.
#[utoipa::path(
    post, path = "/subscriptions", tag = "subscriptions", operation_id = "createSubscription", security(("api_key" = [])),
    request_body = CreateSubscription,
    params(("Idempotency-Key" = String, Header, description = "Required: one key per subscription (1 to 255 visible characters)",
        min_length = 1, max_length = 255, pattern = "^[!-~]+$")),
    responses(
        (status = 201, description = "The subscription, `active`", body = SubscriptionResponse,
         headers(("Location" = String), ("Idempotent-Replayed" = String, description = "`true` on a replay"))),
        MerchantErrors,
        (status = 404, description = "No such mandate", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The mandate is not active", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field (see `field`), an amount outside the mandate's terms (`mandate-terms`), or the key used with another body", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateSubscription>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?
        .ok_or_else(|| ApiError::malformed("Idempotency-Key", "this header is required"))?;
    let hash = request_hash(&body);
    let req = body.check()?;
    let (s, replayed) = flow::create(&state, req, key, hash).await?;
    let body = flow::view(&state, &s).await?;
    let location = format!("/subscriptions/{}", s.id);
    let mut resp = (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response();
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

async fn found(state: &AppState, id: &str) -> Result<crate::domain::Subscription, ApiError> {
    let id = parse_id(id, "subscription")?;
    store::by_id(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound("subscription"))
}

/// One subscription, with the preview of its next 12 charges.
#[utoipa::path(
    get, path = "/subscriptions/{id}", tag = "subscriptions", operation_id = "getSubscription", security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "Subscription id")),
    responses(
        (status = 200, description = "The subscription and its preview", body = SubscriptionResponse),
        MerchantErrors,
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionResponse>, ApiError> {
    let s = found(&state, &id).await?;
    Ok(Json(flow::view(&state, &s).await?))
}

/// `GET /subscriptions` filters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    mandate_id: Option<String>,
    status: Option<String>,
    #[serde(flatten)]
    page: Page,
}

/// Subscriptions, newest first.
#[utoipa::path(
    get, path = "/subscriptions", tag = "subscriptions", operation_id = "listSubscriptions", security(("api_key" = [])),
    params(
        ("mandate_id" = Option<Uuid>, Query, description = "Only this mandate's subscriptions"),
        ("status" = Option<SubscriptionStatus>, Query, description = "Only subscriptions in this status"),
        Page,
    ),
    responses(
        (status = 200, description = "A page of subscriptions", body = List<SubscriptionResponse>),
        MerchantErrors,
    )
)]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<List<SubscriptionResponse>>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let (limit, before) = q.page.parse()?;
    let mandate_id = match q.mandate_id.as_deref() {
        Some(m) => Some(
            m.parse()
                .map_err(|_| ApiError::malformed("mandate_id", "not a mandate id"))?,
        ),
        None => None,
    };
    let status = match q.status.as_deref() {
        Some(s) => Some(
            s.parse()
                .map_err(|_| ApiError::malformed("status", "not a subscription status"))?,
        ),
        None => None,
    };
    let filter = store::Filter {
        mandate_id,
        status,
        before,
        limit,
    };
    let rows = store::list(&state.db, &filter).await?;
    let rows = rows.iter().map(SubscriptionResponse::from).collect();
    Ok(Json(List::new(rows, limit, |s| s.id)))
}

/// `POST /subscriptions/{id}/pause` body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Pause {
    /// Resume by itself then (the first period due from then on is charged).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub resume_at: Option<OffsetDateTime>,
}

/// Pauses billing and any dunning, until resumed or until `resume_at`.
#[utoipa::path(
    post, path = "/subscriptions/{id}/pause", tag = "subscriptions", operation_id = "pauseSubscription", security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "Subscription id")),
    request_body(content = Option<Pause>, description = "Optional: an empty body pauses until resumed"),
    responses(
        (status = 200, description = "The subscription, `paused`", body = SubscriptionResponse),
        MerchantErrors,
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The subscription is not active or past due", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`resume_at` is not in the future", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn pause(
    State(state): State<AppState>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<Pause>,
) -> Result<Json<SubscriptionResponse>, ApiError> {
    let id = parse_id(&id, "subscription")?;
    let resume_at = match body.resume_at {
        Some(t) => Some(super::check_instant("resume_at", t)?),
        None => None,
    };
    let s = flow::pause(&state, id, resume_at).await?;
    Ok(Json(flow::view(&state, &s).await?))
}

/// Resumes a paused subscription from its next period due: periods that fell due while it
/// was paused are not charged, and the schedule's anchor stays.
#[utoipa::path(
    post, path = "/subscriptions/{id}/resume", tag = "subscriptions", operation_id = "resumeSubscription", security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "Subscription id")),
    responses(
        (status = 200, description = "The subscription, `active` (or `finished` if no period is left)", body = SubscriptionResponse),
        MerchantErrors,
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The subscription is not paused", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionResponse>, ApiError> {
    let id = parse_id(&id, "subscription")?;
    let s = flow::resume(&state, id).await?;
    Ok(Json(flow::view(&state, &s).await?))
}

/// `POST /subscriptions/{id}/cancel` body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    /// `true`: charge no further period, but cancel only when the next one comes due.
    #[serde(default)]
    pub at_period_end: bool,
}

/// Cancels now, or at the end of the current period.
#[utoipa::path(
    post, path = "/subscriptions/{id}/cancel", tag = "subscriptions", operation_id = "cancelSubscription", security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "Subscription id")),
    request_body(content = Option<Cancel>, description = "Optional: an empty body cancels now"),
    responses(
        (status = 200, description = "The subscription, `cancelled` (or with `cancel_at_period_end`)", body = SubscriptionResponse),
        MerchantErrors,
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The subscription is already cancelled or finished", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An unknown or invalid field (see `field`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<Cancel>,
) -> Result<Json<SubscriptionResponse>, ApiError> {
    let id = parse_id(&id, "subscription")?;
    let s = flow::cancel(&state, id, body.at_period_end).await?;
    Ok(Json(flow::view(&state, &s).await?))
}

/// `PATCH /subscriptions/{id}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSubscription {
    /// The amount of the next charges, within the mandate's terms.
    #[serde(deserialize_with = "super::whole_number")]
    #[schema(minimum = 1, maximum = 9223372036854775807i64)]
    pub amount: i64,
}

/// Changes the amount of the next charges.
#[utoipa::path(
    patch, path = "/subscriptions/{id}", tag = "subscriptions", operation_id = "updateSubscription", security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "Subscription id")),
    request_body = UpdateSubscription,
    responses(
        (status = 200, description = "The subscription", body = SubscriptionResponse),
        MerchantErrors,
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The subscription is cancelled or finished", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The amount is outside the mandate's terms", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateSubscription>,
) -> Result<Json<SubscriptionResponse>, ApiError> {
    let id = parse_id(&id, "subscription")?;
    if body.amount < 1 {
        return Err(ApiError::invalid("amount", "must be at least 1"));
    }
    let s = flow::set_amount(&state, id, body.amount).await?;
    Ok(Json(flow::view(&state, &s).await?))
}

/// `POST /test-clock/advance` body: where to move the clock, as an instant or a distance.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Advance {
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub to: Option<OffsetDateTime>,
    /// Days forward (when `to` is absent), 1 to 3660.
    #[serde(default, deserialize_with = "super::optional_small_whole")]
    #[schema(minimum = 1, maximum = 3660)]
    pub days: Option<u32>,
}

/// Fast-forwards the test clock shared by the service and the simulator, running every due
/// charge, retry and event in order on the way. Only on a service started with the test
/// clock (`dev`, the tests): `404` otherwise.
#[utoipa::path(
    post, path = "/test-clock/advance", tag = "subscriptions", operation_id = "advanceTestClock", security(("api_key" = [])),
    request_body = Advance,
    responses(
        (status = 200, description = "Where the clock stands, and what ran on the way", body = Advanced),
        MerchantErrors,
        (status = 404, description = "The service runs on the real clock", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Neither `to` nor `days`, or `to` not in the future", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn advance(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Advance>,
) -> Result<Json<Advanced>, ApiError> {
    if !state.clock.is_test() {
        return Err(ApiError::NotFound("test clock"));
    }
    let now = state.clock.now();
    let to = match body.to {
        Some(t) => Some(super::check_instant("to", t)?),
        None => None,
    };
    let to = match (to, body.days) {
        (Some(t), _) if t > now => t,
        (Some(_), _) => return Err(ApiError::invalid("to", "must be in the future")),
        (None, Some(d)) if (1..=3660).contains(&d) => super::check_instant(
            "days",
            now.checked_add(time::Duration::days(d.into())).unwrap_or(
                time::OffsetDateTime::new_utc(time::Date::MAX, time::Time::MIDNIGHT),
            ),
        )?,
        (None, _) => {
            return Err(ApiError::invalid("days", "give to, or days from 1 to 3660"));
        }
    };
    Ok(Json(scheduler::advance(&state, to).await?))
}

/// Where the test clock stands.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClockNow {
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub now: OffsetDateTime,
}

/// The test clock's time (`404` on the real clock).
#[utoipa::path(
    get, path = "/test-clock", tag = "subscriptions", operation_id = "getTestClock", security(("api_key" = [])),
    responses(
        (status = 200, description = "The test clock's time", body = ClockNow),
        MerchantErrors,
        (status = 404, description = "The service runs on the real clock", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn clock(State(state): State<AppState>) -> Result<Json<ClockNow>, ApiError> {
    if !state.clock.is_test() {
        return Err(ApiError::NotFound("test clock"));
    }
    Ok(Json(ClockNow {
        now: state.clock.now(),
    }))
}
