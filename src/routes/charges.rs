//! `/charges`: charge an active mandate, exactly once per idempotency key.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{
    ApiJson, List, Page, bad_query, check_currency, check_metadata, check_reference,
    idempotency_key, parse_id, request_hash,
};
use crate::app::AppState;
use crate::db::detached;
use crate::domain::Charge;
use crate::error::ApiError;
use crate::store::charges as store;
use crate::workflow::charges::{self as flow, ChargeRequest};

/// `POST /charges` body.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCharge {
    pub mandate_id: String,
    /// Minor units; the mandate's amount when absent.
    pub amount: Option<i64>,
    /// Must be the mandate's currency when given.
    pub currency: Option<String>,
    pub reference: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
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
        })
    }
}

/// `201` with the charge once Moment has answered, `202` while its outcome is unknown (it is
/// resent in the background under the same Moment key). A retry under the same
/// `Idempotency-Key` replays the first final answer with `Idempotent-Replayed: true`.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateCharge>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?
        .ok_or_else(|| ApiError::malformed("Idempotency-Key", "this header is required"))?;
    let hash = request_hash(&body);
    let req = body.check()?;
    let st = state.clone();
    let answer = detached(async move { flow::create(&st, req, key, hash).await }).await?;
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

pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Charge>, ApiError> {
    let id = parse_id(&id, "charge")?;
    let db = state.db.clone();
    let charge = detached(async move { store::by_id(&db, id).await }).await?;
    Ok(Json(charge.ok_or(ApiError::NotFound("charge"))?))
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

pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<List<Charge>>, ApiError> {
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
    let db = state.db.clone();
    let rows = detached(async move { store::list(&db, &filter).await }).await?;
    Ok(Json(List::new(rows, limit, |c| c.id)))
}
