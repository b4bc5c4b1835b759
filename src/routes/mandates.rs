//! `/mandates`: start a mandate, follow it, revoke it, and the customer's return from checkout.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};

use super::{
    ApiJson, Currency, List, MerchantErrors, Page, bad_query, check_currency, check_metadata,
    check_reference, check_text, idempotency_key, metadata_schema, parse_id, request_hash,
};
use crate::api::{MandateResponse, RevokeResponse, RevokedCharges};
use crate::domain::MandateStatus;
use crate::domain::terms::Terms;
use crate::error::{ApiError, Problem};
use crate::state::AppState;
use crate::store::mandates as store;
use crate::workflow::mandates::{self as flow, MandateRequest};

/// `POST /mandates` body.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "amount": 5000, "currency": "ZAR",
    "customer": {"name": "Thandi Example", "email": "thandi@example.com"},
    "return_url": "https://shop.example.com/subscribed", "reference": "sub_42",
    "metadata": {"plan": "gold"}
}))]
pub struct CreateMandate {
    /// Minor units (cents), at least 0.
    #[serde(deserialize_with = "super::whole_number")]
    #[schema(minimum = 0, maximum = 9223372036854775807i64)]
    pub amount: i64,
    #[schema(value_type = Currency)]
    pub currency: String,
    pub customer: Customer,
    /// Where the customer goes after checkout: an absolute http(s) URL.
    #[schema(
        format = "uri",
        max_length = 2048,
        pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://(([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*\.?|(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?([/?](?:[A-Za-z0-9._~:/?@!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)?(#(?:[A-Za-z0-9._~:/?@!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)?$"
    )]
    pub return_url: Option<String>,
    /// The merchant's own reference: 1 to 255 characters.
    #[schema(min_length = 1, max_length = 255, pattern = r"^[^\x00]*$")]
    pub reference: Option<String>,
    /// What the customer consents to, as Moment's `mandate_options`; without it, the mandate's
    /// `amount` is the ceiling of every charge (so an `amount` of 0, a card verification, needs
    /// terms saying what may later be charged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terms: Option<Terms>,
    #[serde(default)]
    #[schema(schema_with = metadata_schema)]
    pub metadata: BTreeMap<String, String>,
}

/// The customer, sent to Moment to open the checkout; never returned or logged.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    /// 1 to 200 characters once surrounding whitespace is trimmed.
    #[schema(
        pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]([^\x00]{0,198}[^\x00\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub name: String,
    /// An address of the common form: a local part of letters, digits and
    /// ``!#$%&'*+/=?^_`{|}~.-``, one `@`, and a domain of letter, digit and hyphen labels with
    /// at least one dot; at most 254 characters.
    #[schema(format = Email, max_length = 254, pattern = r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")]
    pub email: String,
}

impl CreateMandate {
    fn check(self) -> Result<MandateRequest, ApiError> {
        if self.amount < 0 {
            return Err(ApiError::invalid(
                "amount",
                "must be an integer number of minor units, at least 0",
            ));
        }
        check_currency("currency", &self.currency)?;
        let name = self.customer.name.trim();
        if name.is_empty() || name.chars().count() > 200 || name.contains('\0') {
            return Err(ApiError::invalid(
                "customer.name",
                "must be 1 to 200 characters",
            ));
        }
        if !plausible_email(&self.customer.email) {
            return Err(ApiError::invalid(
                "customer.email",
                "must be an e-mail address",
            ));
        }
        // Checked, then kept exactly as given (a trailing slash or `?next=/` included).
        if let Some(u) = &self.return_url {
            super::check_http_url("return_url", u)?;
        }
        let return_url = self.return_url.clone();
        check_reference(self.reference.as_deref())?;
        check_metadata(&self.metadata)?;
        let terms = match self.terms {
            Some(t) => {
                t.check(self.amount)
                    .map_err(|e| ApiError::invalid(e.field, e.detail))?;
                t
            }
            None if self.amount == 0 => {
                return Err(ApiError::invalid(
                    "terms",
                    "a card verification (amount 0) must say what may later be charged: give terms.amount",
                ));
            }
            None => Terms::ceiling(self.amount),
        };
        Ok(MandateRequest {
            terms,
            amount: self.amount,
            currency: self.currency,
            customer_name: name.to_owned(),
            customer_email: self.customer.email.trim().to_owned(),
            return_url,
            reference: self.reference,
            metadata: self.metadata,
        })
    }
}

/// One `@`, something on each side, a dot in the domain, no spaces; Moment checks the rest.
/// The form the document states for `customer.email`; Moment checks the rest.
fn plausible_email(email: &str) -> bool {
    const LOCAL: &str = "!#$%&'*+/=?^_`{|}~.-";
    match email.split_once('@') {
        Some((local, domain)) => {
            email.len() <= 254
                && !local.is_empty()
                && local
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || LOCAL.contains(c))
                && domain.split('.').count() >= 2
                && domain.split('.').all(|l| {
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        }
        None => false,
    }
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"))
}

/// Records the mandate and opens its Moment checkout. `303` to the checkout by default;
/// `201` with the mandate when the caller accepts `application/json`.
#[utoipa::path(
    post, path = "/mandates", tag = "mandates", operation_id = "createMandate", security(("api_key" = [])),
    request_body = CreateMandate,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and body give the same mandate (1 to 255 visible characters)",
         min_length = 1, max_length = 255, pattern = "^[!-~]+$"),
        ("Accept" = Option<String>, Header, description = "`application/json` for a 201 with the mandate instead of the 303 redirect"),
    ),
    responses(
        (status = 303, description = "Redirect to Moment's checkout; the body is the mandate", body = MandateResponse,
         headers(("Location" = String, description = "The checkout URL"))),
        (status = 201, description = "The mandate, pending, with its checkout_url (Accept: application/json)", body = MandateResponse,
         headers(("Location" = String, description = "The mandate: `/mandates/{id}`"), ("Idempotent-Replayed" = String, description = "`true` on a replay"))),
        (status = 200, description = "A replay for a mandate that ended without a checkout (expired because Moment could not be reached in time): the mandate as it is", body = MandateResponse,
         headers(("Idempotent-Replayed" = String, description = "`true`"))),
        MerchantErrors,
        (status = 409, description = "A request with this Idempotency-Key is still in progress", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field (see `field`), a key reused with another body, or Moment refused the session", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Moment or the database is unavailable; retry with the same Idempotency-Key", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateMandate>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let hash = request_hash(&body);
    let req = body.check()?;
    let out = flow::create(&state, req, key, hash).await?;
    let mandate = out.mandate;
    if mandate.status == MandateStatus::Failed {
        let reason = mandate
            .failure
            .as_ref()
            .and_then(|f| f.0["message"].as_str().map(str::to_owned));
        return Err(ApiError::MomentRejected(reason.unwrap_or_else(|| {
            "the checkout session could not be opened".into()
        })));
    }
    let mut resp = if wants_json(&headers) {
        let location = format!("/mandates/{}", mandate.id);
        (
            StatusCode::CREATED,
            [(header::LOCATION, location)],
            Json(MandateResponse::from(&mandate)),
        )
            .into_response()
    } else if mandate.checkout_url.is_none() && mandate.status != MandateStatus::Pending {
        // Settled without a checkout (expired because Moment could not be reached in time):
        // there is nowhere to send the customer, so the answer is the mandate as it is.
        (StatusCode::OK, Json(MandateResponse::from(&mandate))).into_response()
    } else {
        let checkout = mandate
            .checkout_url
            .as_deref()
            .ok_or(ApiError::MomentUnavailable)?;
        let mut resp = Json(MandateResponse::from(&mandate)).into_response();
        *resp.status_mut() = StatusCode::SEE_OTHER;
        let location = HeaderValue::try_from(checkout).map_err(|e| ApiError::Internal(e.into()))?;
        resp.headers_mut().insert(header::LOCATION, location);
        resp
    };
    if out.replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// One mandate.
#[utoipa::path(
    get, path = "/mandates/{id}", tag = "mandates", operation_id = "getMandate", security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "Mandate id")),
    responses(
        (status = 200, description = "The mandate, with its consent ledger", body = MandateResponse),
        MerchantErrors,
        (status = 404, description = "No such mandate", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<MandateResponse>, ApiError> {
    let id = parse_id(&id, "mandate")?;
    let mandate = store::by_id(&state.db, id).await?;
    let mandate = mandate.ok_or(ApiError::NotFound("mandate"))?;
    let mut conn = state.db.acquire().await?;
    let now = state.clock.now();
    let mut answer = MandateResponse::from(&mandate);
    answer.ledger = Some(crate::workflow::terms::ledger(&mut conn, &mandate, now).await?);
    Ok(Json(answer))
}

/// `GET /mandates` filters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    customer_id: Option<String>,
    reference: Option<String>,
    #[serde(flatten)]
    page: Page,
}

/// Mandates, newest first.
#[utoipa::path(
    get, path = "/mandates", tag = "mandates", operation_id = "listMandates", security(("api_key" = [])),
    params(
        ("status" = Option<MandateStatus>, Query, description = "Only mandates in this status"),
        ("customer_id" = Option<String>, Query, description = "Only this Moment customer's mandates", pattern = r"^[^\x00]*$"),
        ("reference" = Option<String>, Query, description = "Only mandates with this reference", pattern = r"^[^\x00]*$"),
        Page,
    ),
    responses(
        (status = 200, description = "A page of mandates", body = List<MandateResponse>),
        MerchantErrors,
    )
)]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<List<MandateResponse>>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let (limit, before) = q.page.parse()?;
    for (field, text) in [("customer_id", &q.customer_id), ("reference", &q.reference)] {
        if let Some(t) = text {
            check_text(field, t).map_err(|_| ApiError::malformed(field, "must not contain NUL"))?;
        }
    }
    let status = match q.status.as_deref() {
        Some(s) => Some(
            s.parse()
                .map_err(|_| ApiError::malformed("status", "not a mandate status"))?,
        ),
        None => None,
    };
    let filter = store::Filter {
        status,
        customer_id: q.customer_id,
        reference: q.reference,
        before,
        limit,
    };
    let rows = store::list(&state.db, &filter).await?;
    let rows = rows.iter().map(MandateResponse::from).collect();
    Ok(Json(List::new(rows, limit, |m| m.id)))
}

/// Revokes an active mandate: no charge is accepted on it afterwards, and nothing of it is
/// sent to Moment again. Its charges never sent fail (`mandate_revoked`); those sent with the
/// outcome unknown are not resent and become `needs_review` unless Moment settles them.
/// Moment documents no API to cancel a mandate, so this is enforced here. Revoking a revoked
/// mandate answers it again.
#[utoipa::path(
    post, path = "/mandates/{id}/revoke", tag = "mandates", operation_id = "revokeMandate", security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "Mandate id")),
    responses(
        (status = 200, description = "The revoked mandate, and what became of its open charges", body = RevokeResponse),
        MerchantErrors,
        (status = 404, description = "No such mandate", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The mandate is not active", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RevokeResponse>, ApiError> {
    let id = parse_id(&id, "mandate")?;
    let revoked = flow::revoke(&state, id).await?;
    Ok(Json(RevokeResponse {
        mandate: MandateResponse::from(&revoked.mandate),
        charges: RevokedCharges {
            failed: revoked.failed,
            needs_review: revoked.needs_review,
            in_flight: revoked.in_flight,
            at_moment: revoked.at_moment,
        },
    }))
}

/// Where Moment sends the customer after checkout. The state comes from Moment (fetched
/// now), never from the query string; then the customer goes on to the merchant's page.
#[utoipa::path(
    get, path = "/mandates/{id}/return", tag = "mandates", operation_id = "returnFromCheckout", security(()),
    params(("id" = Uuid, Path, description = "Mandate id")),
    responses(
        (status = 303, description = "On to the mandate's return_url (or DEFAULT_RETURN_URL) with `mandate_id` and `status` added to its query",
         headers(("Location" = String))),
        (status = 200, description = "No return URL is known: the mandate's id and status", body = Object,
         example = json!({"mandate_id": "01a20e0a-fb07-7569-a87f-9afae148c0ff", "status": "active"})),
        (status = 400, description = "Not a mandate id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such mandate", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn customer_return(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "mandate")?;
    let mandate = flow::refresh(&state, id).await?;
    let target = mandate
        .return_url
        .clone()
        .or_else(|| state.settings.default_return_url.clone());
    let Some(target) = target else {
        return Ok(
            Json(serde_json::json!({ "mandate_id": mandate.id, "status": mandate.status }))
                .into_response(),
        );
    };
    let mut url = url::Url::parse(&target).map_err(|e| ApiError::Internal(e.into()))?;
    url.query_pairs_mut()
        .append_pair("mandate_id", &mandate.id.to_string())
        .append_pair("status", mandate.status.as_str());
    Ok(Redirect::to(url.as_str()).into_response())
}
