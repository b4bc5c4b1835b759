//! `/events`: the event log, oldest first, with a cursor that never skips an event; each
//! event's deliveries; redelivery.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{MAX_LIMIT, MerchantErrors, bad_query, parse_id};
use crate::api::{AttemptResponse, EventResponse};
use crate::error::{ApiError, Problem};
use crate::state::AppState;
use crate::store::{deliveries, events as store};
use crate::workflow::outbound::EVENT_TYPES;

/// `GET /events` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// The `next_cursor` of the previous page (an event id): only events after it.
    #[param(value_type = Option<uuid::Uuid>)]
    pub after: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = Option<crate::routes::webhook_endpoints::EventType>)]
    pub kind: Option<String>,
    /// Only events about this mandate, charge or endpoint.
    #[param(value_type = Option<uuid::Uuid>)]
    pub resource_id: Option<String>,
    /// Events per page, 1 to 100 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
}

/// A page of events, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventPage {
    pub data: Vec<EventResponse>,
    /// The last event's id: pass it as `after` for what follows (null on an empty page: there
    /// is nothing newer yet, ask again with the same `after`).
    pub next_cursor: Option<String>,
}

/// Events, oldest first. An event appears once every transaction older than it has
/// committed, so a reader following `next_cursor` sees every event exactly once. Events are
/// kept `EVENT_RETENTION_DAYS` (30).
#[utoipa::path(
    get, path = "/events", tag = "events", operation_id = "listEvents", security(("api_key" = [])),
    params(EventQuery),
    responses(
        (status = 200, description = "A page of events", body = EventPage),
        MerchantErrors,
        (status = 404, description = "`after` names no event (it may be past EVENT_RETENTION_DAYS)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Json<EventPage>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let limit = match &q.limit {
        None => super::DEFAULT_LIMIT,
        Some(l) => l
            .parse()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::malformed("limit", format!("must be a number from 1 to {MAX_LIMIT}"))
            })?,
    };
    let uuid = |field: &str, v: &Option<String>| -> Result<Option<uuid::Uuid>, ApiError> {
        v.as_deref()
            .map(|s| {
                s.parse()
                    .map_err(|_| ApiError::malformed(field, "not an id returned by this API"))
            })
            .transpose()
    };
    if let Some(kind) = &q.kind
        && !EVENT_TYPES.contains(&kind.as_str())
    {
        return Err(ApiError::malformed("type", "not an event type"));
    }
    let after = uuid("after", &q.after)?;
    if let Some(a) = after
        && !store::exists(&state.db, a).await?
    {
        return Err(ApiError::NotFound(
            "event for `after` (it may be older than EVENT_RETENTION_DAYS; start again without it)",
        ));
    }
    let filter = store::Filter {
        kind: q.kind.clone(),
        resource_id: uuid("resource_id", &q.resource_id)?,
        after,
        limit,
    };
    let rows = store::list(&state.db, &filter).await?;
    let next_cursor = rows.last().map(|e| e.id.to_string());
    Ok(Json(EventPage {
        data: rows.iter().map(EventResponse::from).collect(),
        next_cursor,
    }))
}

/// One event.
#[utoipa::path(
    get, path = "/events/{id}", tag = "events", operation_id = "getEvent", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Event id")),
    responses(
        (status = 200, description = "The event", body = EventResponse),
        MerchantErrors,
        (status = 404, description = "No such event", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EventResponse>, ApiError> {
    let id = parse_id(&id, "event")?;
    let event = store::by_id(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    Ok(Json(EventResponse::from(&event)))
}

/// Every attempt to deliver the event, to each endpoint, oldest first.
#[utoipa::path(
    get, path = "/events/{id}/deliveries", tag = "events", operation_id = "listEventDeliveries", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Event id")),
    responses(
        (status = 200, description = "The event's delivery attempts", body = Vec<AttemptResponse>),
        MerchantErrors,
        (status = 404, description = "No such event", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<AttemptResponse>>, ApiError> {
    let id = parse_id(&id, "event")?;
    if !store::exists(&state.db, id).await? {
        return Err(ApiError::NotFound("event"));
    }
    let rows = deliveries::of_event(&state.db, id).await?;
    Ok(Json(rows.iter().map(AttemptResponse::from).collect()))
}

/// Sends the event again to every enabled endpoint that takes its type, delivered before or
/// not.
#[utoipa::path(
    post, path = "/events/{id}/redeliver", tag = "events", operation_id = "redeliverEvent", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Event id")),
    responses(
        (status = 202, description = "Queued: how many deliveries", body = Object, example = json!({"deliveries": 1})),
        MerchantErrors,
        (status = 404, description = "No such event", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn redeliver(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let id = parse_id(&id, "event")?;
    if !store::exists(&state.db, id).await? {
        return Err(ApiError::NotFound("event"));
    }
    let n = deliveries::redeliver(&state.db, id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "deliveries": n }))))
}
