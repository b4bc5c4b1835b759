//! `/webhook-endpoints`: where the service sends its events, signed with Standard Webhooks.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::{ApiJson, MerchantErrors, parse_id};
use crate::api::EndpointResponse;
use crate::error::{ApiError, Problem};
use crate::state::AppState;
use crate::store::{deliveries, webhook_endpoints as store};
use crate::workflow::outbound::{self, EVENT_TYPES, ROTATION_OVERLAP_SECS};

/// `POST /webhook-endpoints` body.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://shop.example.com/hooks/payments", "event_types": ["charge.succeeded", "charge.failed"]}))]
pub struct CreateEndpoint {
    /// An absolute http(s) URL.
    #[schema(
        format = "uri",
        max_length = 2048,
        pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://(([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*\.?|(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?([/?](?:[A-Za-z0-9._~:/?@!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)?(#(?:[A-Za-z0-9._~:/?@!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)?$"
    )]
    pub url: String,
    /// The event types to send (see `GET /events`); all when absent or null.
    #[schema(min_items = 1)]
    pub event_types: Option<Vec<EventType>>,
}

/// An event type an endpoint can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
pub enum EventType {
    #[serde(rename = "mandate.created")]
    MandateCreated,
    #[serde(rename = "mandate.active")]
    MandateActive,
    #[serde(rename = "mandate.failed")]
    MandateFailed,
    #[serde(rename = "mandate.expired")]
    MandateExpired,
    #[serde(rename = "mandate.cancelled")]
    MandateCancelled,
    #[serde(rename = "mandate.revoked")]
    MandateRevoked,
    #[serde(rename = "charge.created")]
    ChargeCreated,
    #[serde(rename = "charge.processing")]
    ChargeProcessing,
    #[serde(rename = "charge.succeeded")]
    ChargeSucceeded,
    #[serde(rename = "charge.failed")]
    ChargeFailed,
    #[serde(rename = "charge.needs_review")]
    ChargeNeedsReview,
    #[serde(rename = "subscription.created")]
    SubscriptionCreated,
    #[serde(rename = "subscription.updated")]
    SubscriptionUpdated,
    #[serde(rename = "subscription.paused")]
    SubscriptionPaused,
    #[serde(rename = "subscription.resumed")]
    SubscriptionResumed,
    #[serde(rename = "subscription.past_due")]
    SubscriptionPastDue,
    #[serde(rename = "subscription.cancelled")]
    SubscriptionCancelled,
    #[serde(rename = "subscription.finished")]
    SubscriptionFinished,
    #[serde(rename = "subscription.charge_upcoming")]
    SubscriptionChargeUpcoming,
    #[serde(rename = "dunning.retry_scheduled")]
    DunningRetryScheduled,
    #[serde(rename = "dunning.exhausted")]
    DunningExhausted,
    #[serde(rename = "webhook_endpoint.disabled")]
    WebhookEndpointDisabled,
}

impl EventType {
    /// The type's name, as events carry it.
    pub fn as_str(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// `PATCH /webhook-endpoints/{id}` body: what is given changes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    #[schema(
        format = "uri",
        max_length = 2048,
        pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://(([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*\.?|(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?([/?](?:[A-Za-z0-9._~:/?@!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)?(#(?:[A-Za-z0-9._~:/?@!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)?$"
    )]
    pub url: Option<String>,
    /// The event types to send; null for all.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<EventType>>, min_items = 1)]
    pub event_types: Option<Option<Vec<EventType>>>,
    /// `false` stops deliveries; `true` starts them again (and clears a failing streak).
    pub enabled: Option<bool>,
}

/// A field that is present, null included (absent stays `None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `POST /webhook-endpoints/{id}/recover` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recover {
    /// Resend every event since this time (RFC 3339) that the endpoint failed to get.
    #[schema(format = DateTime)]
    pub since: String,
}

/// An endpoint URL: absolute http(s). With a live Moment key, not an address inside the
/// service's own network (loopback, private, link-local, `localhost`): the service would
/// otherwise call those on a merchant's behalf.
fn check_url(state: &AppState, url: &str) -> Result<(), ApiError> {
    super::check_http_url("url", url)?;
    if state.moment.mode() == "live" && internal_host(url) {
        return Err(ApiError::invalid(
            "url",
            "must not be a loopback, private or link-local address",
        ));
    }
    Ok(())
}

fn internal_host(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return true;
    };
    match parsed.host() {
        Some(url::Host::Ipv4(ip)) => {
            ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified()
        }
        Some(url::Host::Ipv6(ip)) => ip.is_loopback() || ip.is_unspecified(),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost") || d.ends_with(".internal")
        }
        None => true,
    }
}

fn check_types(types: &Option<Vec<EventType>>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(types) = types else { return Ok(None) };
    if types.is_empty() {
        return Err(ApiError::invalid(
            "event_types",
            "name at least one event type, or leave it out for all",
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for t in types {
        let name = t.as_str();
        debug_assert!(EVENT_TYPES.contains(&name.as_str()));
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(Some(out))
}

/// Creates an endpoint. The answer shows its signing secret, once.
#[utoipa::path(
    post, path = "/webhook-endpoints", tag = "webhook-endpoints", operation_id = "createWebhookEndpoint", security(("api_key" = [])),
    request_body = CreateEndpoint,
    responses(
        (status = 201, description = "The endpoint, with its `secret` (shown only here)", body = EndpointResponse),
        MerchantErrors,
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field (see `field`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateEndpoint>,
) -> Result<(StatusCode, Json<EndpointResponse>), ApiError> {
    check_url(&state, &body.url)?;
    let types = check_types(&body.event_types)?;
    let secret = outbound::new_secret();
    let ep = store::insert(
        &state.db,
        Uuid::now_v7(),
        &body.url,
        types.as_deref(),
        &secret,
    )
    .await?;
    tracing::info!(endpoint_id = %ep.id, "webhook endpoint created");
    let mut answer = EndpointResponse::from(&ep);
    answer.secret = Some(secret);
    Ok((StatusCode::CREATED, Json(answer)))
}

/// Every endpoint.
#[utoipa::path(
    get, path = "/webhook-endpoints", tag = "webhook-endpoints", operation_id = "listWebhookEndpoints", security(("api_key" = [])),
    responses(
        (status = 200, description = "The endpoints, oldest first", body = Vec<EndpointResponse>),
        MerchantErrors,
    )
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<EndpointResponse>>, ApiError> {
    let rows = store::list(&state.db).await?;
    Ok(Json(rows.iter().map(EndpointResponse::from).collect()))
}

/// One endpoint.
#[utoipa::path(
    get, path = "/webhook-endpoints/{id}", tag = "webhook-endpoints", operation_id = "getWebhookEndpoint", security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "The endpoint", body = EndpointResponse),
        MerchantErrors,
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EndpointResponse>, ApiError> {
    let id = parse_id(&id, "webhook endpoint")?;
    let ep = store::by_id(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound("webhook endpoint"))?;
    Ok(Json(EndpointResponse::from(&ep)))
}

/// Changes an endpoint's URL, event types, or whether it is enabled.
#[utoipa::path(
    patch, path = "/webhook-endpoints/{id}", tag = "webhook-endpoints", operation_id = "updateWebhookEndpoint", security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "Endpoint id")),
    request_body = UpdateEndpoint,
    responses(
        (status = 200, description = "The endpoint", body = EndpointResponse),
        MerchantErrors,
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field (see `field`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateEndpoint>,
) -> Result<Json<EndpointResponse>, ApiError> {
    let id = parse_id(&id, "webhook endpoint")?;
    if let Some(url) = &body.url {
        check_url(&state, url)?;
    }
    let types = match &body.event_types {
        None => None,
        Some(t) => Some(check_types(t)?),
    };
    let ep = store::update(
        &state.db,
        id,
        body.url.as_deref(),
        types.as_ref().map(|t| t.as_deref()),
        body.enabled,
    )
    .await?
    .ok_or(ApiError::NotFound("webhook endpoint"))?;
    if body.enabled == Some(false) {
        deliveries::fail_pending_of(&state.db, id).await?;
    }
    Ok(Json(EndpointResponse::from(&ep)))
}

/// Deletes an endpoint; nothing more is sent to it.
#[utoipa::path(
    delete, path = "/webhook-endpoints/{id}", tag = "webhook-endpoints", operation_id = "deleteWebhookEndpoint", security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses(
        (status = 204, description = "Deleted"),
        MerchantErrors,
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "webhook endpoint")?;
    if store::delete(&state.db, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("webhook endpoint"))
    }
}

/// A new signing secret, shown once; the old one keeps signing beside it for 24 hours.
#[utoipa::path(
    post, path = "/webhook-endpoints/{id}/rotate-secret", tag = "webhook-endpoints", operation_id = "rotateWebhookEndpointSecret", security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "The endpoint, with its new `secret` (shown only here)", body = EndpointResponse),
        MerchantErrors,
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn rotate(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EndpointResponse>, ApiError> {
    let id = parse_id(&id, "webhook endpoint")?;
    let secret = outbound::new_secret();
    let ep = store::rotate(&state.db, id, &secret, ROTATION_OVERLAP_SECS)
        .await?
        .ok_or(ApiError::NotFound("webhook endpoint"))?;
    let mut answer = EndpointResponse::from(&ep);
    answer.secret = Some(secret);
    Ok(Json(answer))
}

/// Resends every event since `since` that the endpoint failed to get.
#[utoipa::path(
    post, path = "/webhook-endpoints/{id}/recover", tag = "webhook-endpoints", operation_id = "recoverWebhookEndpoint", security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "Endpoint id")),
    request_body = Recover,
    responses(
        (status = 202, description = "Queued: how many deliveries", body = Object, example = json!({"deliveries": 12})),
        MerchantErrors,
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The endpoint is disabled", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`since` is not an RFC 3339 time", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn recover(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Recover>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let id = parse_id(&id, "webhook endpoint")?;
    let since =
        time::OffsetDateTime::parse(&body.since, &time::format_description::well_known::Rfc3339)
            .map_err(|_| ApiError::invalid("since", "must be an RFC 3339 time"))?;
    let since = super::check_instant("since", since)?;
    match store::by_id(&state.db, id).await? {
        None => return Err(ApiError::NotFound("webhook endpoint")),
        Some(ep) if !ep.enabled => {
            return Err(ApiError::Conflict(
                "the endpoint is disabled: enable it first".into(),
            ));
        }
        Some(_) => {}
    }
    let n = deliveries::recover(&state.db, id, since).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "deliveries": n }))))
}
