//! What the merchant's API answers about mandates and charges, and what the OpenAPI document
//! shows of them. Built field by field from the stored rows (`domain::Mandate`, `Charge`),
//! which are not serialisable themselves: a new column reaches merchants only when it is
//! added here, on purpose.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{Charge, ChargeStatus, Mandate, MandateStatus};

/// A customer's authorisation for future charges (a `first_in_series` session at Moment).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Mandate, example = json!({
    "id": "01a20e0a-fb07-7569-a87f-9afae148c0ff", "status": "active", "amount": 5000,
    "currency": "ZAR", "reference": "sub_42", "metadata": {"plan": "gold"},
    "checkout_url": "https://checkout.momentpay.net/cktaoPzVYDN0rI7FH",
    "session_id": "ps_eLtQXMBUErQF5i", "customer_id": "cus_J17pnG25nuvKu",
    "payment_method_id": "pmt_izWG6Vcvy4VYiU", "payment_id": "pay_rOaZNqKZMFxsRb2NBL1cj",
    "failure": null, "created_at": "2026-11-24T10:00:00Z", "updated_at": "2026-11-24T10:02:13Z"
}))]
#[serde(deny_unknown_fields)]
pub struct MandateResponse {
    pub id: Uuid,
    pub status: MandateStatus,
    pub amount: i64,
    pub currency: String,
    pub reference: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// The Moment hosted checkout, once the session exists.
    pub checkout_url: Option<String>,
    pub session_id: Option<String>,
    pub customer_id: Option<String>,
    pub payment_method_id: Option<String>,
    /// The first payment, made at checkout.
    pub payment_id: Option<String>,
    /// Why the mandate failed or expired: Moment's problem details or `last_payment_error`.
    #[schema(value_type = Option<Object>)]
    pub failure: Option<Value>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<&Mandate> for MandateResponse {
    fn from(m: &Mandate) -> Self {
        Self {
            id: m.id,
            status: m.status,
            amount: m.amount,
            currency: m.currency.clone(),
            reference: m.reference.clone(),
            metadata: m.metadata.0.clone(),
            checkout_url: m.checkout_url.clone(),
            session_id: m.session_id.clone(),
            customer_id: m.customer_id.clone(),
            payment_method_id: m.payment_method_id.clone(),
            payment_id: m.payment_id.clone(),
            failure: m.failure.as_ref().map(|f| f.0.clone()),
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// One merchant-initiated payment under a mandate (a `next_in_series` session at Moment).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Charge, example = json!({
    "id": "01a20e0b-0060-7317-a692-c12c49da851e",
    "mandate_id": "01a20e0a-fb07-7569-a87f-9afae148c0ff", "status": "succeeded",
    "amount": 5000, "currency": "ZAR", "reference": "inv_2026_12", "metadata": {},
    "session_id": "ps_5xQW0SbeD6zWZS", "payment_id": "pay_57jhCV7dzCRpy9zH0hO6Y",
    "failure": null, "created_at": "2026-12-01T00:00:01Z", "updated_at": "2026-12-01T00:00:03Z"
}))]
#[serde(deny_unknown_fields)]
pub struct ChargeResponse {
    pub id: Uuid,
    pub mandate_id: Uuid,
    pub status: ChargeStatus,
    pub amount: i64,
    pub currency: String,
    pub reference: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub session_id: Option<String>,
    pub payment_id: Option<String>,
    /// Why the charge failed: Moment's `last_payment_error`, or its problem details.
    #[schema(value_type = Option<Object>)]
    pub failure: Option<Value>,
    /// Why the charge needs review (`{code, message}`), while it does.
    #[schema(value_type = Option<Object>)]
    #[serde(default)]
    pub review_reason: Option<Value>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<&Charge> for ChargeResponse {
    fn from(c: &Charge) -> Self {
        Self {
            id: c.id,
            mandate_id: c.mandate_id,
            status: c.status,
            amount: c.amount,
            currency: c.currency.clone(),
            reference: c.reference.clone(),
            metadata: c.metadata.0.clone(),
            session_id: c.session_id.clone(),
            payment_id: c.payment_id.clone(),
            failure: c.failure.as_ref().map(|f| f.0.clone()),
            review_reason: c.review_reason.as_ref().map(|r| r.0.clone()),
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// `POST /mandates/{id}/revoke`: the revoked mandate, and what became of its open charges.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = RevokedMandate)]
pub struct RevokeResponse {
    #[serde(flatten)]
    pub mandate: MandateResponse,
    pub charges: RevokedCharges,
}

/// The revoked mandate's open charges, by what became of them. Nothing of the mandate is sent
/// to Moment after the revocation.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokedCharges {
    /// Never sent to Moment: now `failed` with code `mandate_revoked`.
    pub failed: Vec<Uuid>,
    /// Sent with the outcome unknown: never sent again, `needs_review` unless Moment settles
    /// them by webhook or reconciliation.
    pub needs_review: Vec<Uuid>,
    /// Being sent at this very moment: the send completes (then `processing`, settled by
    /// Moment) or the charge ends as above.
    pub in_flight: Vec<Uuid>,
    /// Already at Moment (`processing`): Moment settles them.
    pub at_moment: Vec<Uuid>,
}
