//! `/charges`: charge an active mandate, exactly once per idempotency key.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{
    ApiJson, Currency, List, MerchantErrors, Page, bad_query, check_currency, check_metadata,
    check_reference, idempotency_key, metadata_schema, parse_id, request_hash,
};
use crate::api::ChargeResponse;
use crate::domain::ChargeStatus;
use crate::error::{ApiError, Problem};
use crate::state::AppState;
use crate::store::charges as store;
use crate::workflow::charges::{self as flow, ChargeRequest};

/// `POST /charges` body.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "mandate_id": "01a20e0a-fb07-7569-a87f-9afae148c0ff", "amount": 5000,
    "reference": "inv_2026_12", "metadata": {"invoice": "2026-12"}
}))]
pub struct CreateCharge {
    #[schema(format = Uuid)]
    pub mandate_id: String,
    /// Minor units; the mandate's amount when absent.
    #[serde(default, deserialize_with = "super::optional_whole_number")]
    #[schema(minimum = 0, maximum = 9223372036854775807i64)]
    pub amount: Option<i64>,
    /// Must be the mandate's currency when given.
    #[schema(value_type = Option<Currency>)]
    pub currency: Option<String>,
    /// The merchant's own reference: 1 to 255 characters.
    #[schema(min_length = 1, max_length = 255, pattern = r"^[^\x00]*$")]
    pub reference: Option<String>,
    #[serde(default)]
    #[schema(schema_with = metadata_schema)]
    pub metadata: BTreeMap<String, String>,
    /// `true`: only answer whether the charge would pass the mandate's terms (`200`, or the
    /// `mandate-terms` problem it would get); nothing is recorded or sent, and no
    /// `Idempotency-Key` is needed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl CreateCharge {
    fn check(self) -> Result<ChargeRequest, ApiError> {
        let mandate_id = self
            .mandate_id
            .parse()
            .map_err(|_| ApiError::invalid("mandate_id", "not a mandate id"))?;
        if self.amount.is_some_and(|a| a < 0) {
            return Err(ApiError::invalid(
                "amount",
                "must be an integer number of minor units, at least 0",
            ));
        }
        if let Some(c) = &self.currency {
            check_currency("currency", c)?;
        }
        check_reference(self.reference.as_deref())?;
        check_metadata(&self.metadata)?;
        Ok(ChargeRequest {
            mandate_id,
            amount: self.amount,
            currency: self.currency,
            reference: self.reference,
            metadata: self.metadata,
            dry_run: self.dry_run,
            subscription: None,
        })
    }
}

/// `201` with the charge once Moment has answered, `202` while its outcome is unknown (it is
/// resent in the background under the same Moment key). A retry under the same
/// `Idempotency-Key` replays the first final answer with `Idempotent-Replayed: true`.
#[utoipa::path(
    post, path = "/charges", tag = "charges", operation_id = "createCharge", security(("api_key" = [])),
    request_body = CreateCharge,
    params(("Idempotency-Key" = String, Header, description = "Required: one key per charge; a retry with the same key and body never charges twice (1 to 255 visible characters)",
        min_length = 1, max_length = 255, pattern = "^[!-~]+$")),
    responses(
        (status = 201, description = "Moment has the charge: `processing`, then `succeeded` or `failed` by webhook", body = ChargeResponse,
         headers(("Location" = String), ("Idempotent-Replayed" = String, description = "`true` on a replay"))),
        (status = 200, description = "`dry_run`: the charge would pass the mandate's terms; nothing was recorded", body = Object,
         example = json!({"dry_run": true, "passes": true, "mandate_id": "01a20e0a-fb07-7569-a87f-9afae148c0ff", "amount": 5000, "currency": "ZAR"})),
        (status = 202, description = "Moment's answer is not known yet: `pending`, resent in the background under the same Moment key; or `needs_review`, when it can no longer be sent or learnt safely", body = ChargeResponse,
         headers(("Location" = String), ("Idempotent-Replayed" = String, description = "`true` on a replay"))),
        MerchantErrors,
        (status = 404, description = "No such mandate", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The mandate is not active, or a request with this key is still in progress", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field (see `field`), the key was used with another body, or the charge would break the mandate's terms (type `mandate-terms`, with `term`, `limit`, `used` and `requested`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable; retry with the same key", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateCharge>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    if key
        .as_deref()
        .is_some_and(|k| k.starts_with("subscription:"))
    {
        return Err(ApiError::malformed(
            "Idempotency-Key",
            "keys starting with subscription: are the scheduler's own",
        ));
    }
    let hash = request_hash(&body);
    let req = body.check()?;
    let answer = flow::create(&state, req, key, hash).await?;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::CREATED);
    let location = answer.body["id"]
        .as_str()
        .map(|id| format!("/charges/{id}"))
        .unwrap_or_default();
    let mut resp = (status, [(header::LOCATION, location)], Json(answer.body)).into_response();
    if answer.replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// One charge.
#[utoipa::path(
    get, path = "/charges/{id}", tag = "charges", operation_id = "getCharge", security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "Charge id")),
    responses(
        (status = 200, description = "The charge", body = ChargeResponse),
        MerchantErrors,
        (status = 404, description = "No such charge", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ChargeResponse>, ApiError> {
    let id = parse_id(&id, "charge")?;
    let charge = store::by_id(&state.db, id).await?;
    let charge = charge.ok_or(ApiError::NotFound("charge"))?;
    Ok(Json(ChargeResponse::from(&charge)))
}

/// `GET /charges` filters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    mandate_id: Option<String>,
    status: Option<String>,
    #[serde(flatten)]
    page: Page,
}

/// Charges, newest first.
#[utoipa::path(
    get, path = "/charges", tag = "charges", operation_id = "listCharges", security(("api_key" = [])),
    params(
        ("mandate_id" = Option<Uuid>, Query, description = "Only this mandate's charges"),
        ("status" = Option<ChargeStatus>, Query, description = "Only charges in this status"),
        Page,
    ),
    responses(
        (status = 200, description = "A page of charges", body = List<ChargeResponse>),
        MerchantErrors,
    )
)]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<List<ChargeResponse>>, ApiError> {
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
                .map_err(|_| ApiError::malformed("status", "not a charge status"))?,
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
    let rows = rows.iter().map(ChargeResponse::from).collect();
    Ok(Json(List::new(rows, limit, |c| c.id)))
}
